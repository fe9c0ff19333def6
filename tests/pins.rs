//! Pins with leases, through the binary's `pin` and `prefetch --pin-for` against
//! s3-accel's admin API: what is pinned stays through eviction pressure and a
//! restart, ends with its lease, is held region-wide by the chunks' owners, and bad
//! input pins nothing.

use std::process::Output;
use std::time::Duration;

use http::StatusCode;

use crate::ops::admin_get;
use crate::support::client::Call;
use crate::support::origin::{ACCESS_KEY, SECRET_KEY};
use crate::support::{object_bytes, sha256_hex, Signing, TestOrigin, TestProxy};

pub(crate) const BUCKET: &str = "models";
pub(crate) const MIB: usize = 1 << 20;
/// The model: two shards, 6 MiB and a bit.
pub(crate) const MODEL: [usize; 2] = [4 * MIB + 7, 2 * MIB];
/// A dataset streamed once: 80 MiB, more than twice what the tiers hold.
pub(crate) const SCAN: usize = 40;

/// A small cache (1 MiB chunks, 4 MiB of memory, 32 MiB of disk: two blocks) with
/// room for 8 MiB of pins. The disk tier a plain FIFO: whatever is not pinned, a scan
/// evicts.
const CACHE: &str =
    "memory = \"4MiB\"\ndisk = \"32MiB\"\nchunk_size = \"1MiB\"\npinned = \"8MiB\"\ndirect_io = false\nadmission = \"all\"";

pub(crate) async fn origin() -> (TestOrigin, Vec<Vec<u8>>) {
    let origin = TestOrigin::honoring().await;
    origin.create_bucket(BUCKET).await;
    let mut model = Vec::new();
    for (i, size) in MODEL.iter().enumerate() {
        let data = object_bytes(60 + i as u64, *size);
        origin.put(BUCKET, &format!("llama/shard-{i}"), &data, &[]).await;
        model.push(data);
    }
    for i in 0..SCAN {
        origin
            .put(
                BUCKET,
                &format!("scan/part-{i}"),
                &object_bytes(80 + i as u64, 2 * MIB),
                &[],
            )
            .await;
    }
    (origin, model)
}

/// Runs `s3-accel <args>` with the origin's keys in the environment.
async fn tool(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_s3-accel"));
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") || name.starts_with("S3_ACCEL") {
            command.env_remove(name);
        }
    }
    command
        .env("HOME", home.path())
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the tool ends")
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `/admin/pins` of `proxy`, parsed.
async fn pins(proxy: &TestProxy) -> serde_json::Value {
    let (status, body) = admin_get(proxy, "/admin/pins").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn ids(pins: &serde_json::Value) -> Vec<String> {
    pins["pins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

pub(crate) fn read(key: &str) -> Call {
    Call::get(
        &format!("/{BUCKET}/{key}"),
        &Signing::Presigned(TestOrigin::credentials()),
    )
}

/// Reads `key` through `proxy`: it must be exactly `data`.
pub(crate) async fn reads(proxy: &TestProxy, key: &str, data: &[u8]) {
    let reply = proxy.send(&read(key)).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{key}: {}", reply.text());
    assert_eq!(sha256_hex(&reply.body), sha256_hex(data), "{key}");
}

/// Streams the whole scan set through `proxy` once: 80 MiB through tiers of 36.
pub(crate) async fn scan(proxy: &TestProxy) {
    for i in 0..SCAN {
        let reply = proxy.send(&read(&format!("scan/part-{i}"))).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }
}

/// Origin body bytes `work` cost.
pub(crate) async fn origin_bytes<F: std::future::Future<Output = ()>>(origin: &TestOrigin, work: F) -> u64 {
    origin.stats.settled().await;
    let before = origin.stats.body_bytes();
    work.await;
    origin.stats.settled().await;
    origin.stats.body_bytes() - before
}

#[tokio::test]
async fn bad_pins_are_refused_with_their_reason_and_pin_nothing() {
    let (origin, _) = origin().await;
    let proxy = TestProxy::start_in(
        tempfile::tempdir().unwrap(),
        &format!("origin = \"{}\"\n[pins]\nmax_lease = \"2h\"", origin.url()),
        CACHE,
    )
    .await;
    let admin = format!("http://{}", proxy.admin);
    let endpoint = format!("http://{}", proxy.address);
    let pin = |target: &'static str, lease: &'static str| {
        let (admin, origin) = (admin.clone(), origin.url());
        async move {
            tool(&[
                "pin",
                target,
                "--for",
                lease,
                "--admin",
                &admin,
                "--origin-endpoint",
                &origin,
            ])
            .await
        }
    };
    let refused = |output: &Output, why: &str| {
        let text = text(output);
        assert_eq!(output.status.code(), Some(2), "{text}");
        assert!(text.contains(why), "expected `{why}`: {text}");
    };
    refused(&pin("s3://models/nothing-here/", "1h").await, "lists nothing");
    refused(
        &pin("s3://models/llama/", "3h").await,
        "longer than pins.max_lease (2h)",
    );
    refused(&pin("s3://models/llama/", "soon").await, "lease `soon`");
    // 86 MiB and a bit: more than the 8 MiB of cache.pinned.
    refused(&pin("s3://models/", "1h").await, "8MiB of cache.pinned (8MiB) is free");
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest.txt");
    std::fs::write(&manifest, "llama/shard-0\nllama/missing\n").unwrap();
    let output = tool(&[
        "pin",
        "s3://models/",
        "--manifest",
        manifest.to_str().unwrap(),
        "--for",
        "1h",
        "--admin",
        &admin,
        "--endpoint",
        &endpoint,
    ])
    .await;
    refused(&output, "s3://models/llama/missing does not exist: nothing pinned");
    let listed = pins(&proxy).await;
    assert!(ids(&listed).is_empty(), "half-pinned: {listed}");
    assert_eq!(listed["free"], 8 * MIB as u64, "{listed}");

    // A pin change from another address than loopback, without the token, is
    // refused (the admin listener answers the cluster).
    let (status, _) = admin_get(&proxy, "/admin/pins").await;
    assert_eq!(status, StatusCode::OK, "anyone may list");
}

#[tokio::test]
async fn a_pinned_model_stays_through_a_scan_and_a_restart_and_leaves_with_its_lease() {
    let (origin, model) = origin().await;
    let config = format!("origin = \"{}\"", origin.url());
    let proxy = TestProxy::start_in(tempfile::tempdir().unwrap(), &config, CACHE).await;
    let admin = format!("http://{}", proxy.admin);
    // Warmed and pinned at once, for an hour.
    let output = tool(&[
        "prefetch",
        "s3://models/llama/",
        "--pin-for",
        "1h",
        "--admin",
        &admin,
        "--endpoint",
        &format!("http://{}", proxy.address),
        "--origin-endpoint",
        &origin.url(),
        "--no-progress",
    ])
    .await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("pinned for 1h"), "{}", text(&output));
    let total: u64 = MODEL.iter().sum::<usize>() as u64;
    let listed = pins(&proxy).await;
    assert_eq!(ids(&listed), ["s3://models/llama/"], "{listed}");
    assert_eq!(listed["pins"][0]["bytes"], total, "{listed}");
    // The store writes in the background: wait until it holds the whole model.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pins(&proxy).await["pinned"] != total {
        assert!(std::time::Instant::now() < deadline, "{}", pins(&proxy).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A dataset twice the tiers streamed once: the model costs the origin nothing,
    // while what was not pinned is gone (the pressure was real).
    scan(&proxy).await;
    let model_cost = origin_bytes(&origin, async {
        for (i, data) in model.iter().enumerate() {
            reads(&proxy, &format!("llama/shard-{i}"), data).await;
        }
    })
    .await;
    // (A hit's authorization by the origin costs a few KiB of body, cut off.)
    // No chunk of it came from the origin (a chunk is 1 MiB).
    assert!(
        model_cost < MIB as u64 / 2,
        "a pinned model was evicted by a scan: {model_cost} bytes"
    );
    let scan_cost = origin_bytes(&origin, async {
        proxy.send(&read("scan/part-0")).await.unwrap();
    })
    .await;
    assert!(
        scan_cost > MIB as u64 / 2,
        "the scan's first part was still cached: {scan_cost}"
    );
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    assert!(metrics.contains("s3accel_pinned_bytes"), "{metrics}");

    // A restart: the pin and its chunks are still there.
    let dir = proxy.stop().await;
    let proxy = TestProxy::start_in(dir, &config, CACHE).await;
    assert_eq!(pins(&proxy).await["pinned"], total);
    let model_cost = origin_bytes(&origin, async {
        for (i, data) in model.iter().enumerate() {
            reads(&proxy, &format!("llama/shard-{i}"), data).await;
        }
    })
    .await;
    assert!(
        model_cost < MIB as u64 / 2,
        "a pinned model was lost in a restart: {model_cost} bytes"
    );

    // Renewed for 2 s and not again: it ends, and its room is free.
    let admin = format!("http://{}", proxy.admin);
    let renewed = tool(&[
        "pin",
        "s3://models/llama/",
        "--for",
        "2s",
        "--admin",
        &admin,
        "--origin-endpoint",
        &origin.url(),
    ])
    .await;
    assert!(renewed.status.success(), "{}", text(&renewed));
    assert!(pins(&proxy).await["pins"][0]["expires_in"].as_u64().unwrap() <= 2);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let listed = pins(&proxy).await;
    assert!(ids(&listed).is_empty(), "{listed}");
    assert_eq!(listed["pinned"], 0, "an expired pin's chunks are kept: {listed}");
    assert_eq!(listed["free"], 8 * MIB as u64);
    // And a scan now evicts the model as anything else.
    scan(&proxy).await;
    let model_cost = origin_bytes(&origin, async {
        reads(&proxy, "llama/shard-0", &model[0]).await;
    })
    .await;
    assert!(
        model_cost >= MODEL[0] as u64,
        "the model stayed after its pin ended: {model_cost}"
    );

    // A pin ended by name.
    let pinned = tool(&[
        "pin",
        "s3://models/llama/",
        "--for",
        "1h",
        "--name",
        "llama-serving",
        "--admin",
        &admin,
        "--origin-endpoint",
        &origin.url(),
    ])
    .await;
    assert!(pinned.status.success(), "{}", text(&pinned));
    assert_eq!(ids(&pins(&proxy).await), ["llama-serving"]);
    let listed = tool(&["pin", "--list", "--admin", &admin]).await;
    assert!(text(&listed).contains("llama-serving"), "{}", text(&listed));
    let ended = tool(&["pin", "--unpin", "llama-serving", "--admin", &admin]).await;
    assert!(ended.status.success(), "{}", text(&ended));
    assert!(ids(&pins(&proxy).await).is_empty());
    let again = tool(&["pin", "--unpin", "llama-serving", "--admin", &admin]).await;
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(
        text(&again).contains("no pin `llama-serving` is in force"),
        "{}",
        text(&again)
    );
}

/// Three nodes, each with 16 MiB for pins and 24 MiB of tiers (a plain FIFO).
const REGION_CACHE: &str = "memory = \"8MiB\"\ndisk = \"16MiB\"\nchunk_size = \"1MiB\"\npinned = \"16MiB\"\ndirect_io = false\nadmission = \"all\"";

#[tokio::test]
async fn a_pin_taken_by_one_node_is_held_by_every_owner_of_the_region() {
    use crate::peers::Region;
    let (origin, _) = origin().await;
    let size = 24 * MIB;
    let data = object_bytes(70, size);
    origin.put(BUCKET, "model.bin", &data, &[]).await;
    for i in SCAN..2 * SCAN {
        origin
            .put(
                BUCKET,
                &format!("scan/part-{i}"),
                &object_bytes(80 + i as u64, 2 * MIB),
                &[],
            )
            .await;
    }
    let region = Region::start_cached(&origin, 3, REGION_CACHE).await;
    let admin = format!("http://{}", region.nodes[0].admin);

    // More than a node's share fits: refused by the region, held by none.
    let output = tool(&[
        "pin",
        "s3://models/",
        "--for",
        "1h",
        "--admin",
        &admin,
        "--origin-endpoint",
        &origin.url(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("507"), "{}", text(&output));
    for node in &region.nodes {
        assert!(ids(&pins(node).await).is_empty());
    }

    let output = tool(&[
        "pin",
        "s3://models/model.bin",
        "--for",
        "1h",
        "--admin",
        &admin,
        "--origin-endpoint",
        &origin.url(),
    ])
    .await;
    assert!(output.status.success(), "{}", text(&output));
    for node in &region.nodes {
        assert_eq!(
            ids(&pins(node).await),
            ["s3://models/model.bin"],
            "every node holds the pin"
        );
    }
    // Warmed through another node: each chunk's owner fills and pins it.
    reads(&region.nodes[1], "model.bin", &data).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let held = loop {
        let mut held = Vec::new();
        for node in &region.nodes {
            held.push(pins(node).await["pinned"].as_u64().unwrap());
        }
        if held.iter().sum::<u64>() == size as u64 || std::time::Instant::now() > deadline {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("pinned bytes by node: {held:?}");
    assert_eq!(
        held.iter().sum::<u64>(),
        size as u64,
        "each chunk pinned once, by its owner: {held:?}"
    );
    assert!(held.iter().all(|&h| h > 0), "every owner keeps its share: {held:?}");

    // 160 MiB streamed through the region (about 53 MiB a node, its tiers hold 24):
    // the model costs the origin nothing on any node.
    for i in 0..2 * SCAN {
        let node = &region.nodes[i % 3];
        let reply = node.send(&read(&format!("scan/part-{i}"))).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }
    let cost = origin_bytes(&origin, async {
        for node in &region.nodes {
            reads(node, "model.bin", &data).await;
        }
    })
    .await;
    assert!(
        cost < MIB as u64 / 2,
        "a pinned chunk was evicted on its owner: {cost} bytes"
    );
    let cost = origin_bytes(&origin, async {
        region.nodes[0].send(&read("scan/part-0")).await.unwrap();
    })
    .await;
    assert!(
        cost > MIB as u64 / 2,
        "the scan's first part stayed: no pressure ({cost})"
    );
}
