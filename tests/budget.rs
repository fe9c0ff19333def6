//! The origin budget: fills a second and at once, given out by priority (a client,
//! then read-ahead, then background reads such as prefetch's), measured by the
//! origin's fills over time and in the order they came.

use std::time::{Duration, Instant};

use http::StatusCode;

use crate::ops::admin_get;
use crate::pins::{read, BUCKET, MIB};
use crate::support::{object_bytes, sha256_hex, TestOrigin, TestProxy};

async fn origin_with(objects: &[(&str, usize)]) -> (TestOrigin, Vec<Vec<u8>>) {
    let origin = TestOrigin::honoring().await;
    origin.create_bucket(BUCKET).await;
    let mut data = Vec::new();
    for (i, (key, size)) in objects.iter().enumerate() {
        let bytes = object_bytes(70 + i as u64, *size);
        origin.put(BUCKET, key, &bytes, &[]).await;
        data.push(bytes);
    }
    (origin, data)
}

/// A node with 1 MiB chunks and `budget` as its `[origin_client]` keys.
async fn node(origin: &TestOrigin, budget: &str) -> TestProxy {
    TestProxy::start_in(
        tempfile::tempdir().unwrap(),
        &format!("origin = \"{}\"\n[origin_client]\n{budget}", origin.url()),
        "memory = \"256MiB\"\ndisk = \"0\"\nchunk_size = \"1MiB\"",
    )
    .await
}

#[tokio::test]
async fn fills_keep_to_the_bytes_a_second_they_are_given() {
    const SIZE: usize = 24 * MIB;
    let (origin, data) = origin_with(&[("big.bin", SIZE)]).await;
    let proxy = node(&origin, "max_fill_bytes_per_sec = \"8MiB\"").await;
    let stats = origin.stats.clone();
    let started = Instant::now();
    let reading = tokio::spawn({
        let client = proxy.client.clone();
        let address = proxy.address;
        async move { client.digest(address, &read("big.bin")).await }
    });
    let mut worst = f64::NEG_INFINITY;
    while !reading.is_finished() {
        let (elapsed, fills) = (started.elapsed().as_secs_f64(), stats.fills());
        // The bucket (8 chunks), 8 a second, and one more for a fill that arrived
        // as the sample was taken.
        let allowed = 8.0 + 8.0 * elapsed + 1.0;
        worst = worst.max(fills as f64 - allowed);
        assert!(
            fills as f64 <= allowed,
            "{fills} fills after {elapsed:.2} s: more than 8 MiB/s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    let (status, hash, length) = reading.await.unwrap().unwrap();
    assert_eq!(
        (status, hash, length),
        (StatusCode::OK, sha256_hex(&data[0]), SIZE as u64)
    );
    println!(
        "a cold 24 MiB read at 8 MiB/s took {took:.2?} in {} fills; they stayed {:.1} chunks under the bound at worst",
        origin.stats.fills(),
        -worst
    );
    // The bucket, then 8 a second: 23 fills (the first chunk may come in the cold
    // probe's body) cannot all be in before 15/8 s.
    assert!(took >= Duration::from_millis(1800), "{took:?}: the budget did not hold");

    // A re-read is all hits: the budget never sends a client around the cache.
    origin.stats.settled().await;
    let before = origin.stats.body_bytes();
    let again = proxy.send(&read("big.bin")).await.unwrap();
    assert_eq!(sha256_hex(&again.body), sha256_hex(&data[0]));
    assert!(
        origin.stats.body_bytes() - before < MIB as u64 / 8,
        "a re-read filled again"
    );
}

#[tokio::test]
async fn a_client_read_goes_before_a_prefetch_already_waiting() {
    let (origin, data) = origin_with(&[("warm.bin", 48 * MIB), ("live.bin", 6 * MIB)]).await;
    // Two fills at once (background takes one at most), 16 MiB a second.
    let proxy = node(&origin, "max_fills = 2\nmax_fill_bytes_per_sec = \"16MiB\"").await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest.txt");
    std::fs::write(&manifest, "warm.bin\n").unwrap();
    let endpoint = format!("http://{}", proxy.address);
    let warming = tokio::spawn(async move {
        let args = [
            "s3://models/",
            "--manifest",
            manifest.to_str().unwrap(),
            "--endpoint",
            &endpoint,
        ];
        crate::prefetch::prefetch(&args).await
    });
    // The prefetch is under way, its read-ahead waiting for turns (the bucket is
    // drained: it waits for tokens).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, status) = admin_get(&proxy, "/admin/origin-budget").await;
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        if origin.stats.fills() >= 6 && status["waiting"]["background"].as_u64() >= Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the prefetch never waited for its turn: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = origin.stats.fill_paths.lock().unwrap().len();
    let live = proxy.send(&read("live.bin")).await.unwrap();
    assert_eq!(sha256_hex(&live.body), sha256_hex(&data[1]));
    let output = warming.await.unwrap();
    let text = crate::prefetch::stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("prefetch: 1 objects, 50331648 bytes"), "{text}");
    // What the prefetch warmed is the object: a re-read is all hits, byte-exact.
    origin.stats.settled().await;
    let before = origin.stats.body_bytes();
    let again = proxy.send(&read("warm.bin")).await.unwrap();
    assert_eq!(sha256_hex(&again.body), sha256_hex(&data[0]));
    assert!(
        origin.stats.body_bytes() - before < MIB as u64 / 8,
        "the prefetch did not warm it"
    );

    let paths = origin.stats.fill_paths.lock().unwrap().clone();
    let live_at: Vec<usize> = (0..paths.len()).filter(|&i| paths[i].ends_with("/live.bin")).collect();
    let last = *live_at.last().unwrap();
    // Fills of the prefetch that reached the origin after the live read was asked
    // for and before its last fill: those let go while its cold probe went (FIFO:
    // 8 here, the prefetch's read-ahead waiting before it).
    let passed = paths[asked..=last].iter().filter(|p| p.ends_with("/warm.bin")).count();
    let after = paths[last..].iter().filter(|p| p.ends_with("/warm.bin")).count();
    println!(
        "the live read, asked for after fill {asked}, had its {} fills at {:?} of {}; {passed} prefetch fills went \
         before them, {after} after",
        live_at.len(),
        live_at,
        paths.len()
    );
    assert!(after > 0, "the prefetch was over before the live read: no contention");
    assert!(
        passed <= 3,
        "{passed} prefetch fills went before the live read's: {:?}",
        &paths[asked..=last]
    );
}

#[tokio::test]
async fn each_node_takes_its_share_of_the_regions_budget() {
    use crate::peers::{origin_with_model, Region};
    let size = 24 << 20;
    let (origin, data) = origin_with_model(41, size).await;
    let region = Region::start_cached(
        &origin,
        3,
        "memory = \"128MiB\"\ndisk = \"0\"\nchunk_size = \"1MiB\"\n\
         [origin_client]\nregion_max_fill_bytes_per_sec = \"30MiB\"\nregion_max_fills = 9",
    )
    .await;
    let reply = region.nodes[0]
        .client
        .digest(region.nodes[0].address, &crate::peers::read("model.bin"))
        .await;
    assert_eq!(reply, Ok((StatusCode::OK, sha256_hex(&data), size as u64)));
    let (mut rates, mut fills) = (Vec::new(), Vec::new());
    for node in &region.nodes {
        let (status, text) = admin_get(node, "/admin/origin-budget").await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let budget: serde_json::Value = serde_json::from_str(&text).unwrap();
        rates.push(budget["bytes_per_sec"].as_f64().unwrap());
        fills.push(budget["fills"].as_f64().unwrap());
    }
    println!("shares of 30 MiB/s: {rates:?} bytes/s, of 9 fills: {fills:?}");
    let total: f64 = rates.iter().sum();
    assert!(
        (total - (30 << 20) as f64).abs() < 16.0,
        "the shares add up to {total}, not the region's 30 MiB/s"
    );
    assert!(rates.iter().all(|&rate| rate < (20 << 20) as f64), "{rates:?}");
    // Three nodes of the same disk own a third of the keys each.
    assert_eq!(fills, [3.0; 3], "each node's share of 9 fills");
}
