//! The cache: reads come from chunks the origin was asked for once, and every read
//! is still authorized by the origin.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;

use crate::support::client::Call;
use crate::support::origin::{ACCESS_KEY, SECRET_KEY};
use crate::support::{get, object_bytes, outcome, sha256_hex, Credentials, Signing, TestOrigin, TestProxy};

const BUCKET: &str = "models";
const CHUNK: usize = 1 << 20;
use crate::support::proxy::SMALL_CACHE as MEMORY_ONLY;

fn with_credentials(toml: &str) -> String {
    format!("{toml}\n[credentials]\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n")
}

/// An origin with one object of `size` bytes at `models/weights.bin`.
async fn origin_with_object(honor: bool, size: usize) -> (TestOrigin, Vec<u8>) {
    let origin = if honor {
        TestOrigin::honoring().await
    } else {
        TestOrigin::start(&[]).await
    };
    origin.create_bucket(BUCKET).await;
    let data = object_bytes(size as u64, size);
    origin
        .put(
            BUCKET,
            "weights.bin",
            &data,
            &[("content-type", "application/x-safetensors")],
        )
        .await;
    (origin, data)
}

async fn proxy_for(origin: &TestOrigin, toml: &str, cache: &str) -> TestProxy {
    TestProxy::start_in(
        tempfile::tempdir().unwrap(),
        &format!("origin = \"{}\"\n{toml}", origin.url()),
        cache,
    )
    .await
}

fn target() -> String {
    format!("/{BUCKET}/weights.bin")
}

#[tokio::test]
async fn miss_then_hit_is_byte_exact_and_the_hit_costs_no_origin_body() {
    let size = 5 * CHUNK + CHUNK / 2;
    let (origin, data) = origin_with_object(true, size).await;
    let proxy = proxy_for(&origin, "", MEMORY_ONLY).await;

    let cold = get(
        &proxy,
        Call::get(&target(), &Signing::Presigned(TestOrigin::credentials())),
    )
    .await;
    assert_eq!(cold.status, StatusCode::OK);
    assert_eq!(outcome(&cold), "miss");
    assert_eq!(sha256_hex(&cold.body), sha256_hex(&data));
    assert_eq!(
        origin.stats.fills(),
        5,
        "one fill per chunk after the first, which came in the probe's body"
    );
    assert_eq!(cold.header("content-type"), Some("application/x-safetensors"));

    let bytes_before = origin.stats.body_bytes();
    let warm = get(
        &proxy,
        Call::get(&target(), &Signing::Presigned(TestOrigin::credentials())),
    )
    .await;
    assert_eq!(outcome(&warm), "hit");
    assert_eq!(sha256_hex(&warm.body), sha256_hex(&data));
    assert_eq!(origin.stats.body_bytes(), bytes_before, "a hit sends no origin body");
    assert_eq!(origin.stats.fills(), 5);

    // Ranges across chunk boundaries, open, suffix and clamped, from the chunks.
    for range in [
        format!("bytes={}-{}", CHUNK - 10, CHUNK + 10),
        format!("bytes={}-", 2 * CHUNK - 1),
        "bytes=-1000".into(),
        format!("bytes=5-{}", 10 * CHUNK),
        "bytes=0-0".into(),
    ] {
        let call =
            Call::get(&target(), &Signing::Presigned(TestOrigin::credentials())).unsigned_header("range", &range);
        let proxied = get(&proxy, call.clone()).await;
        let direct = origin.send(&call).await;
        assert_eq!(outcome(&proxied), "hit", "{range}");
        assert_eq!(proxied.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            proxied.header("content-range"),
            direct.header("content-range"),
            "{range}"
        );
        assert_eq!(
            proxied.header("content-length"),
            direct.header("content-length"),
            "{range}"
        );
        assert_eq!(sha256_hex(&proxied.body), sha256_hex(&direct.body), "{range}");
    }
    assert_eq!(origin.stats.fills(), 5, "ranges are read from the cached chunks");
}

#[tokio::test]
async fn origins_that_ignore_conditions_still_serve_hits_from_the_cache() {
    let (origin, data) = origin_with_object(false, 3 * CHUNK).await;
    let proxy = proxy_for(&origin, "", MEMORY_ONLY).await;
    let signing = Signing::Presigned(TestOrigin::credentials());
    assert_eq!(outcome(&get(&proxy, Call::get(&target(), &signing)).await), "miss");
    let fills = origin.stats.fills();
    let warm = get(&proxy, Call::get(&target(), &signing)).await;
    assert_eq!(outcome(&warm), "hit");
    assert_eq!(sha256_hex(&warm.body), sha256_hex(&data));
    assert_eq!(
        origin.stats.fills(),
        fills,
        "the probe's body was dropped, nothing refilled"
    );
}

#[tokio::test]
async fn a_cold_herd_fetches_the_object_once() {
    let size = 64 << 20;
    let (origin, data) = origin_with_object(true, size).await;
    let proxy = proxy_for(&origin, "", "memory = \"256MiB\"\ndisk = \"0\"\nchunk_size = \"8MiB\"").await;
    let expected = sha256_hex(&data);
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (client, address) = (proxy.client.clone(), proxy.address);
            tokio::spawn(async move {
                client
                    .send(
                        address,
                        &Call::get(&target(), &Signing::Presigned(TestOrigin::credentials())),
                    )
                    .await
            })
        })
        .collect();
    for client in clients {
        let reply = client.await.unwrap().unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(sha256_hex(&reply.body), expected);
    }
    let origin_bytes = origin.stats.body_bytes();
    println!(
        "herd: 32 clients, {size} byte object, origin sent {origin_bytes} body bytes in {} fills",
        origin.stats.fills()
    );
    assert!(
        origin_bytes <= (size + (8 << 20)) as u64,
        "origin sent {origin_bytes} bytes for a {size}-byte object"
    );
    assert_eq!(origin.stats.fills(), 7, "the first chunk came in the probe's body");
}

#[tokio::test]
async fn an_overwritten_object_is_never_served_stale_or_mixed() {
    for honor in [true, false] {
        let (origin, old) = origin_with_object(honor, 3 * CHUNK).await;
        let proxy = proxy_for(&origin, "", MEMORY_ONLY).await;
        let signing = Signing::Presigned(TestOrigin::credentials());
        assert_eq!(
            sha256_hex(&get(&proxy, Call::get(&target(), &signing)).await.body),
            sha256_hex(&old)
        );

        let new = object_bytes(99, 3 * CHUNK);
        origin.put(BUCKET, "weights.bin", &new, &[]).await;
        let after = get(&proxy, Call::get(&target(), &signing)).await;
        assert_eq!(sha256_hex(&after.body), sha256_hex(&new), "honor={honor}");
        let range = format!("bytes={}-{}", CHUNK - 5, 2 * CHUNK + 5);
        let ranged = get(&proxy, Call::get(&target(), &signing).unsigned_header("range", &range)).await;
        assert_eq!(
            &ranged.body[..],
            &new[CHUNK - 5..=2 * CHUNK + 5],
            "honor={honor}: {}",
            outcome(&ranged)
        );
        let again = get(&proxy, Call::get(&target(), &signing)).await;
        assert_eq!(outcome(&again), "hit", "honor={honor}");
        assert_eq!(sha256_hex(&again.body), sha256_hex(&new), "honor={honor}");
    }
}

#[tokio::test]
async fn denied_clients_get_no_cached_byte() {
    let (origin, data) = origin_with_object(true, 2 * CHUNK).await;
    let proxy = proxy_for(&origin, "", MEMORY_ONLY).await;
    let warm = get(
        &proxy,
        Call::get(&target(), &Signing::Presigned(TestOrigin::credentials())),
    )
    .await;
    assert_eq!(sha256_hex(&warm.body), sha256_hex(&data));
    let denied = [
        Signing::Header(Credentials::new(ACCESS_KEY, "not-the-secret")),
        Signing::Presigned(Credentials::new(ACCESS_KEY, "not-the-secret")),
        Signing::Anonymous,
    ];
    for signing in denied {
        for range in [None, Some("bytes=0-99")] {
            let mut call = Call::get(&target(), &signing);
            if let Some(range) = range {
                call = call.unsigned_header("range", range);
            }
            let reply = get(&proxy, call).await;
            assert_eq!(reply.status, StatusCode::FORBIDDEN, "{signing:?} {range:?}");
            assert_eq!(outcome(&reply), "origin");
            assert!(
                !reply.body.windows(64).any(|w| w == &data[..64]),
                "object bytes in a denial"
            );
        }
    }
}

#[tokio::test]
async fn sse_c_and_multi_range_requests_are_never_cached() {
    let (origin, data) = origin_with_object(true, CHUNK).await;
    let proxy = proxy_for(&origin, "", MEMORY_ONLY).await;
    let sse_c = Call::get(&target(), &Signing::Presigned(TestOrigin::credentials()))
        .unsigned_header("x-amz-server-side-encryption-customer-algorithm", "AES256")
        .unsigned_header(
            "x-amz-server-side-encryption-customer-key",
            "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=",
        )
        .unsigned_header(
            "x-amz-server-side-encryption-customer-key-md5",
            "4nNQLhzDFm1e+hOCdLaZ5A==",
        );
    for _ in 0..2 {
        assert_eq!(outcome(&get(&proxy, sse_c.clone()).await), "bypass; reason=sse_c");
    }
    let multi =
        Call::get(&target(), &Signing::Presigned(TestOrigin::credentials())).unsigned_header("range", "bytes=0-1,5-6");
    assert_eq!(outcome(&get(&proxy, multi).await), "bypass; reason=multi_range");
    assert_eq!(origin.stats.fills(), 0);
    // Nothing was learned from them: the first ordinary read is a miss.
    let plain = get(
        &proxy,
        Call::get(&target(), &Signing::Presigned(TestOrigin::credentials())),
    )
    .await;
    assert_eq!(outcome(&plain), "miss");
    assert_eq!(sha256_hex(&plain.body), sha256_hex(&data));
}

#[tokio::test]
async fn a_warm_cache_survives_a_restart() {
    // What fits in the flushers' buffers (2 × 2 × 4 chunks) even when the disk does
    // not keep up: foyer drops a write that finds both of a flusher's buffers full,
    // and a 32-chunk burst lost a chunk now and then on a slow CI disk.
    let chunks = 8;
    let (origin, data) = origin_with_object(true, chunks * CHUNK).await;
    let cache = "memory = \"64MiB\"\ndisk = \"256MiB\"\nchunk_size = \"1MiB\"";
    let toml = format!("origin = \"{}\"", origin.url());
    let proxy = TestProxy::start_in(tempfile::tempdir().unwrap(), &toml, cache).await;
    let signing = Signing::Presigned(TestOrigin::credentials());
    assert_eq!(outcome(&get(&proxy, Call::get(&target(), &signing)).await), "miss");
    let dir = proxy.stop().await;

    let proxy = TestProxy::start_in(dir, &toml, cache).await;
    let (bytes, fills) = (origin.stats.body_bytes(), origin.stats.fills());
    let warm = get(&proxy, Call::get(&target(), &signing)).await;
    assert_eq!(sha256_hex(&warm.body), sha256_hex(&data));
    let refilled = origin.stats.fills() - fills;
    println!("restart: {} of {chunks} chunks survived", chunks as u64 - refilled);
    assert_eq!(outcome(&warm), "hit", "the metadata survived");
    assert_eq!(refilled, 0, "every chunk survived the restart");
    assert_eq!(
        origin.stats.body_bytes(),
        bytes,
        "a warm GET after a restart costs no origin body bytes"
    );
}

#[tokio::test]
async fn a_fill_killed_midway_leaves_no_waiter_hanging_and_nothing_poisoned() {
    let (origin, data) = origin_with_object(true, 4 * CHUNK).await;
    let proxy = proxy_for(&origin, "", MEMORY_ONLY).await;
    let expected = sha256_hex(&data);
    let call = Call::get(&target(), &Signing::Presigned(TestOrigin::credentials()));

    // One round of fills dies: every waiter retries once and gets the right bytes.
    origin.stats.cut_fills.store(1, Ordering::SeqCst);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (client, address, call) = (proxy.client.clone(), proxy.address, call.clone());
            tokio::spawn(
                async move { tokio::time::timeout(Duration::from_secs(30), client.send(address, &call)).await },
            )
        })
        .collect();
    for client in clients {
        let reply = client.await.unwrap().expect("no waiter hangs").unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(sha256_hex(&reply.body), expected);
    }

    // Every fill dies before its first byte: a clean 503 SlowDown. (A HEAD first: a
    // cold GET's first chunk would come in its probe's body.)
    let (other, other_data) = origin_with_object(true, 4 * CHUNK).await;
    let proxy = proxy_for(&other, "", MEMORY_ONLY).await;
    get(
        &proxy,
        Call::head(&target(), &Signing::Presigned(TestOrigin::credentials())),
    )
    .await;
    other.stats.fail_fills.store(1000, Ordering::SeqCst);
    let reply = get(&proxy, call.clone()).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.xml("Code").as_deref(), Some("SlowDown"));
    other.stats.fail_fills.store(0, Ordering::SeqCst);
    // Every fill dies mid-chunk, with the first bytes streamed: the response is cut.
    other.stats.cut_fills.store(1000, Ordering::SeqCst);
    let cut = tokio::time::timeout(Duration::from_secs(30), proxy.send(&call))
        .await
        .expect("no hang");
    assert!(cut.is_err(), "a fill that dies mid-chunk cuts its readers");
    // With the first chunk cached, the failure comes mid-body: the response is cut.
    other.stats.cut_fills.store(0, Ordering::SeqCst);
    get(&proxy, call.clone().unsigned_header("range", "bytes=0-0")).await;
    other.stats.cut_fills.store(1000, Ordering::SeqCst);
    let cut = tokio::time::timeout(Duration::from_secs(30), proxy.send(&call))
        .await
        .expect("no hang");
    assert!(
        cut.is_err(),
        "a failed later chunk must cut the response, got {:?}",
        cut.map(|r| r.status)
    );
    // Nothing was poisoned: once the origin behaves, the object reads whole.
    other.stats.cut_fills.store(0, Ordering::SeqCst);
    let healed = get(&proxy, call).await;
    assert_eq!(sha256_hex(&healed.body), sha256_hex(&other_data));
}

#[tokio::test]
async fn head_with_range_0_0_warms_the_whole_object() {
    let (origin, data) = origin_with_object(true, 5 * CHUNK).await;
    let proxy = proxy_for(&origin, &with_credentials(""), MEMORY_ONLY).await;
    let call = Call::head(&target(), &TestOrigin::signing()).header("range", "bytes=0-0");
    let head = get(&proxy, call.clone()).await;
    // S3 answers 206 here, s3s-fs 200: either way it is the origin's answer, relayed.
    assert_eq!(head.status, origin.send(&call).await.status);
    assert!(head.status.is_success());
    for _ in 0..100 {
        if origin.stats.fills() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(origin.stats.fills(), 5, "warming filled every chunk");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bytes = origin.stats.body_bytes();
    let warm = get(
        &proxy,
        Call::get(&target(), &Signing::Presigned(TestOrigin::credentials())),
    )
    .await;
    assert_eq!(outcome(&warm), "hit");
    assert_eq!(sha256_hex(&warm.body), sha256_hex(&data));
    assert_eq!(origin.stats.body_bytes(), bytes);
}

#[tokio::test]
async fn boto3_style_ranged_reads_need_the_proxy_credentials() {
    let (origin, data) = origin_with_object(true, 3 * CHUNK).await;
    // boto3 signs Range and If-Match: without credentials of its own, the proxy relays.
    let proxy = proxy_for(&origin, "", MEMORY_ONLY).await;
    let etag = origin
        .send(&Call::head(&target(), &TestOrigin::signing()))
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    let part = |range: &str| {
        Call::get(&target(), &TestOrigin::signing())
            .header("range", range)
            .header("if-match", &etag)
    };
    let reply = get(&proxy, part("bytes=0-1048575")).await;
    assert_eq!(outcome(&reply), "bypass; reason=no_fill_credentials");
    assert_eq!(&reply.body[..], &data[..CHUNK]);

    // With read credentials, the proxy signs its fills and caches.
    let proxy = proxy_for(&origin, &with_credentials(""), MEMORY_ONLY).await;
    for (round, expected) in [(0, "miss"), (1, "hit")] {
        for i in 0..3 {
            let range = if i == 2 {
                format!("bytes={}-", i * CHUNK)
            } else {
                format!("bytes={}-{}", i * CHUNK, (i + 1) * CHUNK - 1)
            };
            let reply = get(&proxy, part(&range)).await;
            assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT, "{range}: {}", reply.text());
            assert_eq!(&reply.body[..], &data[i * CHUNK..(i + 1) * CHUNK], "{range}");
            if round == 1 || i == 0 {
                assert_eq!(outcome(&reply), expected, "round {round} {range}");
            }
        }
    }
    // A stale If-Match (another version) is the origin's 412, not cached bytes.
    let stale = get(
        &proxy,
        Call::get(&target(), &TestOrigin::signing()).header("if-match", "\"0000\""),
    )
    .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
}

#[tokio::test]
async fn response_overrides_apply_to_one_response_only() {
    let (origin, _) = origin_with_object(true, CHUNK).await;
    let proxy = proxy_for(&origin, "", MEMORY_ONLY).await;
    let signing = Signing::Presigned(TestOrigin::credentials());
    get(&proxy, Call::get(&target(), &signing)).await;
    let overridden = get(
        &proxy,
        Call::get(&format!("{}?response-content-type=text%2Fplain", target()), &signing),
    )
    .await;
    assert_eq!(outcome(&overridden), "hit");
    assert_eq!(overridden.header("content-type"), Some("text/plain"));
    let plain = get(&proxy, Call::get(&target(), &signing)).await;
    assert_eq!(plain.header("content-type"), Some("application/x-safetensors"));
}

/// An object rewritten with the same bytes and other headers keeps its ETag, so the
/// probe's 304 says "current" and the cache would serve the old `x-amz-meta-*`
/// forever. With fill credentials, metadata older than `cache.metadata_max_age` is
/// checked by a HEAD of their own, in the background: the new headers are served
/// within about that bound, and the bytes are still a hit.
#[tokio::test]
async fn metadata_rewritten_behind_the_same_etag_is_refreshed_within_its_max_age() {
    let origin = TestOrigin::honoring().await;
    origin.create_bucket(BUCKET).await;
    let data = object_bytes(41, CHUNK);
    origin
        .put(BUCKET, "labelled.bin", &data, &[("x-amz-meta-color", "red")])
        .await;
    // An age the steps up to the second read stay within on a loaded machine.
    let cache = format!("{MEMORY_ONLY}\nmetadata_max_age = \"4s\"");
    let proxy = proxy_for(&origin, &with_credentials(""), &cache).await;
    let read = || {
        Call::get(
            &format!("/{BUCKET}/labelled.bin"),
            &Signing::Presigned(TestOrigin::credentials()),
        )
    };
    let first = get(&proxy, read()).await;
    assert_eq!(first.header("x-amz-meta-color"), Some("red"));
    // The same bytes, no user metadata: the same ETag.
    origin.put(BUCKET, "labelled.bin", &data, &[]).await;
    let direct = origin.send(&read()).await;
    assert_eq!(
        direct.header("etag"),
        first.header("etag"),
        "the rewrite keeps the ETag"
    );
    assert_eq!(direct.header("x-amz-meta-color"), None);
    let heads = || {
        origin
            .stats
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.starts_with("HEAD "))
            .count()
    };
    // Within the maximum age: the probe's 304 is all there is, and it says current.
    let stale = get(&proxy, read()).await;
    assert_eq!(outcome(&stale), "hit");
    assert_eq!(stale.header("x-amz-meta-color"), Some("red"), "checked before its age");
    let heads_before = heads();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reply = get(&proxy, read()).await;
        assert_eq!(sha256_hex(&reply.body), sha256_hex(&data));
        if reply.header("x-amz-meta-color").is_none() {
            assert_eq!(outcome(&reply), "hit", "the bytes are still the cache's");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old metadata is still served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(heads() > heads_before, "a HEAD of the proxy's own checked it");
}
