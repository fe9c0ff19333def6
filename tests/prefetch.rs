//! `s3-accel prefetch`, the binary, against the in-process origin and a local
//! s3-accel: it lists a prefix at the origin, reads every object through the
//! accelerator, and leaves them cached; its summary counts what happened, and a
//! missing object is named and fails the run.

use std::process::Output;

use crate::support::origin::{ACCESS_KEY, SECRET_KEY};
use crate::support::{object_bytes, TestOrigin, TestProxy};

const BUCKET: &str = "models";

/// Sizes of the objects under `llama/`: whole chunks, odd tails, a small one.
const SIZES: [usize; 5] = [3 << 20, (1 << 20) + 7, 5000, 2 << 20, (4 << 20) + 1];

async fn origin_with_model() -> (TestOrigin, u64) {
    let origin = TestOrigin::honoring().await;
    origin.create_bucket(BUCKET).await;
    for (i, size) in SIZES.iter().enumerate() {
        let data = object_bytes(30 + i as u64, *size);
        origin
            .put(BUCKET, &format!("llama/shard-{i}.safetensors"), &data, &[])
            .await;
    }
    // Outside the prefix: never read.
    origin
        .put(BUCKET, "other/big.bin", &object_bytes(40, 8 << 20), &[])
        .await;
    (origin, SIZES.iter().sum::<usize>() as u64)
}

/// Runs the binary's prefetch with the origin's keys in the environment, as a
/// user's shell has them.
pub(crate) async fn prefetch(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_s3-accel"));
    command.arg("prefetch").args(args).arg("--no-progress");
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    command
        .env("HOME", home.path())
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    tokio::time::timeout(std::time::Duration::from_secs(120), command.output())
        .await
        .expect("prefetch ends")
        .unwrap()
}

pub(crate) fn stdout(output: &Output) -> String {
    format!(
        "{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn a_prefix_prefetched_is_cached_and_a_second_run_is_all_hits() {
    let (origin, total) = origin_with_model().await;
    let proxy = TestProxy::for_origin(&origin.url()).await;
    let endpoint = format!("http://{}", proxy.address);
    let args = [
        "s3://models/llama/",
        "--endpoint",
        &endpoint,
        "--origin-endpoint",
        &origin.url(),
    ];

    let dry = prefetch(&[&args[..], &["--dry-run"]].concat()).await;
    let text = stdout(&dry);
    assert!(dry.status.success(), "{text}");
    assert_eq!(text.matches("s3://models/llama/shard-").count(), SIZES.len(), "{text}");
    assert!(text.contains(&format!("would read 5 objects, {total} bytes")), "{text}");
    assert!(!text.contains("other/big.bin"), "{text}");
    assert_eq!(origin.stats.fills(), 0, "a dry run reads nothing");

    let first = prefetch(&args).await;
    let text = stdout(&first);
    assert!(first.status.success(), "{text}");
    assert!(text.contains(&format!("prefetch: 5 objects, {total} bytes")), "{text}");
    assert!(text.contains("prefetch: cache: miss 5"), "{text}");
    assert!(text.contains("prefetch: 0 failed"), "{text}");
    println!("{text}");

    origin.stats.settled().await;
    let before = origin.stats.body_bytes();
    let second = prefetch(&args).await;
    let text = stdout(&second);
    assert!(second.status.success(), "{text}");
    assert!(text.contains("prefetch: cache: hit 5"), "{text}");
    let origin_bytes = origin.stats.body_bytes() - before;
    assert!(
        origin_bytes * 100 < total,
        "the second run cost the origin {origin_bytes} of {total} bytes"
    );
}

#[tokio::test]
async fn one_prefetch_through_one_node_warms_the_whole_region() {
    use crate::peers::{every_node_serves, origin_with_model, Region, BUCKET};
    let size = 12 << 20;
    let (origin, data) = origin_with_model(33, size).await;
    let region = Region::start(&origin, 3).await;
    let output = prefetch(&[
        &format!("s3://{BUCKET}/"),
        "--endpoint",
        &format!("http://{}", region.nodes[0].address),
        "--origin-endpoint",
        &origin.url(),
    ])
    .await;
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("prefetch: cache: miss 1"), "{text}");
    origin.stats.settled().await;
    let before = origin.stats.body_bytes();
    // Every node serves the model from the region: owners hold its chunks.
    every_node_serves(&region, &data, "after one prefetch").await;
    let sent = origin.stats.body_bytes() - before;
    assert!(
        sent * 100 < size as u64,
        "the region's reads cost the origin {sent} bytes"
    );
}

#[tokio::test]
async fn a_missing_object_is_named_and_fails_the_run() {
    let (origin, _) = origin_with_model().await;
    let proxy = TestProxy::for_origin(&origin.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest.txt");
    std::fs::write(
        &manifest,
        "s3://models/llama/shard-2.safetensors\nllama/missing.safetensors\n",
    )
    .unwrap();
    let output = prefetch(&[
        "s3://models/",
        "--manifest",
        manifest.to_str().unwrap(),
        "--endpoint",
        &format!("http://{}", proxy.address),
    ])
    .await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAILED s3://models/llama/missing.safetensors: 404 Not Found NoSuchKey"),
        "{text}"
    );
    assert!(text.contains("prefetch: 1 objects, 5000 bytes"), "{text}");
    assert!(text.contains("prefetch: 1 failed"), "{text}");
    // A prefix without an origin to list it at: a usage error, nothing read.
    let output = prefetch(&["s3://models/llama/", "--endpoint", &format!("http://{}", proxy.address)]).await;
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(stdout(&output).contains("--origin-endpoint"));
}

#[tokio::test]
async fn a_slowed_down_prefetch_backs_off_and_warms_everything() {
    let (origin, total) = origin_with_model().await;
    let proxy = TestProxy::for_origin(&origin.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest.txt");
    let keys: Vec<String> = (0..SIZES.len())
        .map(|i| format!("llama/shard-{i}.safetensors"))
        .collect();
    std::fs::write(&manifest, keys.join("\n")).unwrap();
    // The origin throttles: its next 3 GETs are 503 SlowDown.
    origin
        .stats
        .slow_down_gets
        .store(3, std::sync::atomic::Ordering::SeqCst);
    let args = [
        "s3://models/",
        "--manifest",
        manifest.to_str().unwrap(),
        "--endpoint",
        &format!("http://{}", proxy.address),
        "--concurrency",
        "1",
    ];
    let output = prefetch(&args).await;
    let text = stdout(&output);
    println!("{text}");
    assert!(output.status.success(), "{text}");
    assert!(text.contains("503 Service Unavailable SlowDown; again in"), "{text}");
    assert!(text.contains("prefetch: slowed down 3 times (503)"), "{text}");
    assert!(text.contains(&format!("prefetch: 5 objects, {total} bytes")), "{text}");
    assert!(text.contains("prefetch: 0 failed"), "{text}");
    // Everything was warmed: a second run is all hits.
    let again = prefetch(&args).await;
    let text = stdout(&again);
    assert!(text.contains("prefetch: cache: hit 5"), "{text}");
    assert!(!text.contains("slowed down"), "{text}");
}
