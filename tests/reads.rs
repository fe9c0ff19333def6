//! What real clients send: checksum mode, part reads, ranges s3-accel does not
//! parse, signed conditionals, metadata-only changes, and herds that will never be
//! cacheable.

use std::time::{Duration, Instant};

use http::StatusCode;
use s3_accel_testkit::{OriginOptions, Shaping};

use crate::support::client::Call;
use crate::support::origin::ACCESS_KEY;
use crate::support::proxy::SMALL_CACHE;
use crate::support::{get, object_bytes, outcome, sha256_hex, Credentials, Reply, Signing, TestOrigin, TestProxy};
use s3_accel_testkit::crc32_base64;

const BUCKET: &str = "models";
const CHUNK: usize = 1 << 20;

async fn proxy_for(origin: &TestOrigin, toml: &str) -> TestProxy {
    TestProxy::start_in(
        tempfile::tempdir().unwrap(),
        &format!("origin = \"{}\"\n{toml}", origin.url()),
        SMALL_CACHE,
    )
    .await
}

#[tokio::test]
async fn a_herd_that_will_never_be_cached_probes_at_once() {
    let rtt = Duration::from_millis(250);
    let origin = TestOrigin::start_with(OriginOptions {
        honor_conditionals: true,
        shaping: Shaping {
            rtt,
            ..Shaping::default()
        },
        ..OriginOptions::default()
    })
    .await;
    origin.create_bucket(BUCKET).await;
    origin.put(BUCKET, "secret.bin", &object_bytes(1, 1000), &[]).await;
    let proxy = proxy_for(&origin, "").await;
    // 32 clients with a wrong secret (403), then 32 asking for a missing key (404).
    let denied = Signing::Header(Credentials::new(ACCESS_KEY, "not-the-secret"));
    for (target, signing, status) in [
        (format!("/{BUCKET}/secret.bin"), denied, StatusCode::FORBIDDEN),
        (
            format!("/{BUCKET}/missing.bin"),
            TestOrigin::signing(),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let started = Instant::now();
        let clients: Vec<_> = (0..32)
            .map(|_| {
                let (client, address) = (proxy.client.clone(), proxy.address);
                let call = Call::get(&target, &signing);
                tokio::spawn(async move { client.send(address, &call).await })
            })
            .collect();
        for client in clients {
            let reply = client.await.unwrap().unwrap();
            assert_eq!(reply.status, status, "{target}");
            assert_eq!(outcome(&reply), "origin");
        }
        let elapsed = started.elapsed();
        println!("denied herd: 32 GETs of {target} ({status}) in {elapsed:?}, origin rtt {rtt:?}");
        // One round trip to connect and one to answer, for all of them at once; a herd
        // probing one at a time would take at least 32 round trips (8 s).
        assert!(elapsed < rtt * 12, "the herd took {elapsed:?}: it was serialized");
    }
}

fn presigned() -> Signing {
    Signing::Presigned(TestOrigin::credentials())
}

fn with_credentials(toml: &str) -> String {
    format!(
        "{toml}\n[credentials]\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{}\"\n",
        crate::support::origin::SECRET_KEY
    )
}

/// An honoring origin with `models/<key>` of `size` bytes, stored with headers.
async fn origin_with(key: &str, size: usize, headers: &[(&str, &str)]) -> (TestOrigin, Vec<u8>) {
    let origin = TestOrigin::honoring().await;
    origin.create_bucket(BUCKET).await;
    let data = object_bytes(size as u64 + 7, size);
    origin.put(BUCKET, key, &data, headers).await;
    (origin, data)
}

/// What botocore does with a checksum it is sent: the body must match it.
fn verify_crc32(reply: &Reply) {
    if let Some(sent) = reply.header("x-amz-checksum-crc32") {
        assert_eq!(
            sent,
            crc32_base64(&reply.body),
            "the client's own checksum validation fails"
        );
    }
}

/// An honoring origin with `models/weights.bin` of `size` bytes, stored with its CRC32.
async fn origin_with_crc(size: usize, seed: u64) -> (TestOrigin, Vec<u8>, String) {
    let data = object_bytes(seed, size);
    let crc = crc32_base64(&data);
    let origin = TestOrigin::honoring().await;
    origin.create_bucket(BUCKET).await;
    origin
        .put(BUCKET, "weights.bin", &data, &[("x-amz-checksum-crc32", &crc)])
        .await;
    (origin, data, crc)
}

#[tokio::test]
async fn checksum_mode_reads_are_cached_and_carry_the_origins_checksums() {
    let (origin, data, crc) = origin_with_crc(3 * CHUNK + 5, 5).await;
    let proxy = proxy_for(&origin, &with_credentials("")).await;
    let target = format!("/{BUCKET}/weights.bin");
    // botocore's get_object: header-signed, checksum mode signed, no Range.
    let boto3 = Call::get(&target, &TestOrigin::signing()).header("x-amz-checksum-mode", "ENABLED");
    let direct = origin.send(&boto3).await;
    assert_eq!(direct.header("x-amz-checksum-crc32"), Some(crc.as_str()));

    let cold = get(&proxy, boto3.clone()).await;
    assert_eq!(outcome(&cold), "miss");
    assert_eq!(sha256_hex(&cold.body), sha256_hex(&data));
    assert_eq!(cold.header("x-amz-checksum-crc32"), Some(crc.as_str()));
    verify_crc32(&cold);

    let bytes = origin.stats.body_bytes();
    let warm = get(&proxy, boto3.clone()).await;
    assert_eq!(outcome(&warm), "hit");
    assert_eq!(sha256_hex(&warm.body), sha256_hex(&data));
    assert_eq!(warm.header("x-amz-checksum-crc32"), Some(crc.as_str()));
    verify_crc32(&warm);
    assert_eq!(
        origin.stats.body_bytes(),
        bytes,
        "a checksum-mode re-read costs no origin body"
    );

    // A range carries no checksum; a read that did not ask for checksums gets none.
    let ranged = get(&proxy, boto3.clone().header("range", "bytes=0-99")).await;
    assert_eq!((outcome(&ranged), ranged.status), ("hit", StatusCode::PARTIAL_CONTENT));
    assert!(ranged.header("x-amz-checksum-crc32").is_none());
    assert_eq!(&ranged.body[..], &data[..100]);
    let plain = get(&proxy, Call::get(&target, &presigned())).await;
    assert_eq!(outcome(&plain), "hit");
    assert!(plain.header("x-amz-checksum-crc32").is_none());
    assert_eq!(origin.stats.body_bytes(), bytes);
}

#[tokio::test]
async fn checksums_not_yet_seen_are_learned_before_a_whole_object_is_served() {
    let size = 2 * CHUNK;
    let (origin, data, crc) = origin_with_crc(size, 6).await;
    let proxy = proxy_for(&origin, "").await;
    let target = format!("/{BUCKET}/weights.bin");
    // A ranged read first: the cache holds the object, but not its checksums.
    let whole_range = format!("bytes=0-{}", size - 1);
    let first = get(
        &proxy,
        Call::get(&target, &presigned()).unsigned_header("range", &whole_range),
    )
    .await;
    assert_eq!(outcome(&first), "miss");
    let checked = Call::get(&target, &presigned()).unsigned_header("x-amz-checksum-mode", "ENABLED");
    let learned = get(&proxy, checked.clone()).await;
    assert_eq!(
        learned.header("x-amz-checksum-crc32"),
        Some(crc.as_str()),
        "never answered without it"
    );
    verify_crc32(&learned);
    assert_eq!(
        outcome(&learned),
        "hit",
        "the chunks were cached; only the checksum was learned"
    );
    let bytes = origin.stats.body_bytes();
    let warm = get(&proxy, checked).await;
    assert_eq!(warm.header("x-amz-checksum-crc32"), Some(crc.as_str()));
    assert_eq!(sha256_hex(&warm.body), sha256_hex(&data));
    assert_eq!(origin.stats.body_bytes(), bytes, "once learned, a 304 is enough");

    // An object stored without checksums: in checksum mode the origin says there are
    // none, and the cache answers so.
    origin.put(BUCKET, "plain.bin", &data, &[]).await;
    let plain = format!("/{BUCKET}/plain.bin");
    let call = Call::get(&plain, &presigned()).unsigned_header("x-amz-checksum-mode", "ENABLED");
    assert_eq!(outcome(&get(&proxy, call.clone()).await), "miss");
    let bytes = origin.stats.body_bytes();
    let warm = get(&proxy, call).await;
    assert_eq!(outcome(&warm), "hit");
    assert!(warm.headers.keys().all(|k| !k.as_str().starts_with("x-amz-checksum-")));
    assert_eq!(origin.stats.body_bytes(), bytes);
}

#[tokio::test]
async fn part_reads_are_ranges_of_the_cached_object() {
    let parts = [(3 * CHUNK / 2) as u64, (3 * CHUNK / 2) as u64, (CHUNK / 3) as u64];
    let size = parts.iter().sum::<u64>() as usize;
    let (origin, data) = origin_with("model.bin", size, &[]).await;
    origin.set_parts(BUCKET, "model.bin", &parts);
    // The CRT signs its part reads in headers: fills need the proxy's credentials.
    let proxy = proxy_for(&origin, &with_credentials("")).await;
    let part = |n: u32| {
        Call::get(&format!("/{BUCKET}/model.bin?partNumber={n}"), &TestOrigin::signing())
            .header("x-amz-checksum-mode", "ENABLED")
    };
    for n in 1..=3 {
        let direct = origin.send(&part(n)).await;
        assert_eq!(direct.status, StatusCode::PARTIAL_CONTENT);
        for expected in ["miss", "hit"] {
            origin.stats.settled().await;
            let bytes = origin.stats.body_bytes();
            let reply = get(&proxy, part(n)).await;
            assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT, "part {n}: {}", reply.text());
            if n == 1 || expected == "hit" {
                // (Part 2's first chunk was filled for part 1: its first read may hit.)
                assert_eq!(outcome(&reply), expected, "part {n}");
            }
            for name in [
                "content-range",
                "content-length",
                "x-amz-mp-parts-count",
                "x-amz-checksum-crc32",
                "etag",
            ] {
                assert_eq!(reply.header(name), direct.header(name), "part {n}: {name}");
            }
            assert_eq!(sha256_hex(&reply.body), sha256_hex(&direct.body), "part {n}");
            verify_crc32(&reply);
            if expected == "hit" {
                assert_eq!(
                    origin.stats.body_bytes(),
                    bytes,
                    "part {n}: a re-read costs no origin body"
                );
            }
        }
    }
    // The object's own length was never taken from a part's.
    let whole = get(&proxy, Call::get(&format!("/{BUCKET}/model.bin"), &presigned())).await;
    assert_eq!(outcome(&whole), "hit");
    assert_eq!(whole.header("content-length"), Some(size.to_string().as_str()));
    assert_eq!(sha256_hex(&whole.body), sha256_hex(&data));
    // Past the last part: the origin's answer, unchanged.
    let past = get(&proxy, part(4)).await;
    assert_eq!(
        (past.status, outcome(&past)),
        (StatusCode::RANGE_NOT_SATISFIABLE, "origin")
    );
    // A part of an object not stored in parts: part 1 is the whole object.
    origin.put(BUCKET, "single.bin", &data[..CHUNK], &[]).await;
    let single = |n: u32| Call::get(&format!("/{BUCKET}/single.bin?partNumber={n}"), &TestOrigin::signing());
    for expected in ["miss", "hit"] {
        let reply = get(&proxy, single(1)).await;
        assert_eq!(
            (reply.status, outcome(&reply)),
            (origin.send(&single(1)).await.status, expected)
        );
        assert_eq!(&reply.body[..], &data[..CHUNK]);
    }
}

#[tokio::test]
async fn a_part_past_the_last_is_the_origins_error_even_from_an_origin_that_answers_304_first() {
    // Garage answers If-None-Match on the object before it looks at partNumber.
    let origin = TestOrigin::start_with(s3_accel_testkit::origin::OriginOptions {
        honor_conditionals: true,
        conditionals_before_parts: true,
        ..Default::default()
    })
    .await;
    origin.create_bucket(BUCKET).await;
    let data = object_bytes(31, CHUNK);
    origin.put(BUCKET, "single.bin", &data, &[]).await;
    let proxy = proxy_for(&origin, &with_credentials("")).await;
    let whole = get(&proxy, Call::get(&format!("/{BUCKET}/single.bin"), &presigned())).await;
    assert_eq!(sha256_hex(&whole.body), sha256_hex(&data));
    let part = |n: u32| Call::get(&format!("/{BUCKET}/single.bin?partNumber={n}"), &TestOrigin::signing());
    let direct = origin.send(&part(2)).await;
    assert_eq!(direct.status, StatusCode::RANGE_NOT_SATISFIABLE, "{}", direct.text());
    for _ in 0..2 {
        let reply = get(&proxy, part(2)).await;
        assert_eq!(
            (reply.status, outcome(&reply)),
            (direct.status, "origin"),
            "the whole object was served for a part past the last: {}",
            reply.body.len()
        );
    }
}

/// Garage answers part 1 of an object uploaded in one piece as a part: 206, with
/// Content-Range and `x-amz-mp-parts-count: 1` (S3 answers 200, the object). The
/// cache answers as the origin does, miss and hit alike.
#[tokio::test]
async fn part_one_of_a_single_piece_object_is_answered_as_the_origin_answers_it() {
    let origin = TestOrigin::start_with(s3_accel_testkit::origin::OriginOptions {
        honor_conditionals: true,
        single_part_as_part: true,
        conditionals_before_parts: true,
        ..Default::default()
    })
    .await;
    origin.create_bucket(BUCKET).await;
    let data = object_bytes(32, 2 * CHUNK + 5);
    origin.put(BUCKET, "single.bin", &data, &[]).await;
    let proxy = proxy_for(&origin, &with_credentials("")).await;
    origin.put(BUCKET, "known.bin", &data, &[]).await;
    // `single.bin` cold; `known.bin` once its whole read cached it (the part's bounds
    // still unknown).
    let whole = get(&proxy, Call::get(&format!("/{BUCKET}/known.bin"), &presigned())).await;
    assert_eq!(sha256_hex(&whole.body), sha256_hex(&data));
    for key in ["single.bin", "known.bin"] {
        let part = Call::get(&format!("/{BUCKET}/{key}?partNumber=1"), &TestOrigin::signing())
            .header("x-amz-checksum-mode", "ENABLED");
        let direct = origin.send(&part).await;
        assert_eq!(direct.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(direct.header("x-amz-mp-parts-count"), Some("1"));
        for expected in ["miss", "hit"] {
            let reply = get(&proxy, part.clone()).await;
            assert_eq!(reply.status, direct.status, "{key}, {expected}");
            if key == "single.bin" {
                assert_eq!(outcome(&reply), expected);
            }
            for name in [
                "content-range",
                "content-length",
                "x-amz-mp-parts-count",
                "etag",
                "x-amz-checksum-crc32",
            ] {
                assert_eq!(reply.header(name), direct.header(name), "{key}, {expected}: {name}");
            }
            assert_eq!(sha256_hex(&reply.body), sha256_hex(&data));
        }
    }
}

/// ceph/s3-tests' `test_multipart_get_part` against an origin that answers as
/// Garage does (a 304 with no header at all, conditionals before parts): for each
/// part a HEAD then a GET, each asserting `PartsCount`; then all again, from the
/// cache. Every answer carries the origin's `x-amz-mp-parts-count`.
#[tokio::test]
async fn part_heads_then_gets_carry_the_parts_count_from_an_origin_that_answers_304_bare() {
    let origin = TestOrigin::start_with(s3_accel_testkit::origin::OriginOptions {
        honor_conditionals: true,
        conditionals_before_parts: true,
        single_part_as_part: true,
        bare_not_modified: true,
        ..Default::default()
    })
    .await;
    origin.create_bucket(BUCKET).await;
    let parts = [
        5 * CHUNK as u64 / 2,
        5 * CHUNK as u64 / 2,
        5 * CHUNK as u64 / 2,
        CHUNK as u64,
    ];
    let size = parts.iter().sum::<u64>() as usize;
    let data = object_bytes(33, size);
    origin.put(BUCKET, "multi.bin", &data, &[]).await;
    origin.set_parts(BUCKET, "multi.bin", &parts);
    let proxy = proxy_for(&origin, &with_credentials("")).await;
    let target = |n: u32| format!("/{BUCKET}/multi.bin?partNumber={n}");
    for round in ["cold", "cached"] {
        for n in 1..=parts.len() as u32 {
            // botocore asks for checksums on both.
            let head = Call::head(&target(n), &TestOrigin::signing()).header("x-amz-checksum-mode", "ENABLED");
            let get_part = Call::get(&target(n), &TestOrigin::signing()).header("x-amz-checksum-mode", "ENABLED");
            for call in [head, get_part] {
                let direct = origin.send(&call).await;
                assert_eq!(direct.header("x-amz-mp-parts-count"), Some("4"));
                let reply = get(&proxy, call.clone()).await;
                assert_eq!(reply.status, direct.status, "{round}, part {n}: {}", reply.text());
                for name in [
                    "x-amz-mp-parts-count",
                    "content-range",
                    "content-length",
                    "etag",
                    "x-amz-checksum-crc32",
                ] {
                    assert_eq!(
                        reply.header(name),
                        direct.header(name),
                        "{round}, part {n}, {}: {name} ({})",
                        call.method,
                        outcome(&reply)
                    );
                }
                assert_eq!(sha256_hex(&reply.body), sha256_hex(&direct.body));
                if round == "cached" && call.method == http::Method::GET {
                    assert_eq!(outcome(&reply), "hit", "part {n}");
                }
            }
        }
    }
}

#[tokio::test]
async fn ranges_s3_accel_does_not_parse_get_the_origins_answer() {
    let (origin, _) = origin_with("weights.bin", CHUNK, &[]).await;
    let proxy = proxy_for(&origin, "").await;
    let target = format!("/{BUCKET}/weights.bin");
    get(&proxy, Call::get(&target, &presigned())).await;
    for range in ["bytes=5-1", "items=0-1", "bytes=abc", "bytes=--1", "bytes 0-1"] {
        let call = Call::get(&target, &presigned()).unsigned_header("range", range);
        let direct = origin.send(&call).await;
        let proxied = get(&proxy, call).await;
        assert_eq!(outcome(&proxied), "bypass; reason=unparsed_range", "{range}");
        assert_eq!(proxied.status, direct.status, "{range}");
        assert_eq!(sha256_hex(&proxied.body), sha256_hex(&direct.body), "{range}");
    }
}

#[tokio::test]
async fn a_metadata_only_change_is_seen_on_the_next_get() {
    for honor in [true, false] {
        let origin = if honor {
            TestOrigin::honoring().await
        } else {
            TestOrigin::start(&[]).await
        };
        origin.create_bucket(BUCKET).await;
        let data = object_bytes(9, 2 * CHUNK);
        let old = [("content-type", "text/plain"), ("x-amz-meta-owner", "team-a")];
        origin.put(BUCKET, "weights.bin", &data, &old).await;
        let proxy = proxy_for(&origin, "").await;
        let target = format!("/{BUCKET}/weights.bin");
        let first = get(&proxy, Call::get(&target, &presigned())).await;
        assert_eq!(first.header("x-amz-meta-owner"), Some("team-a"));
        // Same bytes (same ETag), new metadata, a second later (Last-Modified has seconds).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let new = [("content-type", "application/json"), ("x-amz-meta-owner", "team-b")];
        origin.put(BUCKET, "weights.bin", &data, &new).await;
        let direct = origin.send(&Call::get(&target, &presigned())).await;
        assert_eq!(direct.header("etag"), first.header("etag"), "same bytes, same ETag");
        for _ in 0..2 {
            let after = get(&proxy, Call::get(&target, &presigned())).await;
            assert_eq!(outcome(&after), "hit", "honor={honor}: the chunks are still good");
            for name in ["x-amz-meta-owner", "content-type", "last-modified"] {
                assert_eq!(after.header(name), direct.header(name), "honor={honor}: {name}");
            }
            assert_eq!(sha256_hex(&after.body), sha256_hex(&data));
        }
    }
}

#[tokio::test]
async fn signed_conditionals_never_break_a_fill() {
    let (origin, data) = origin_with("weights.bin", 3 * CHUNK, &[]).await;
    let target = format!("/{BUCKET}/weights.bin");
    // Conditions the origin answers 200 to, signed as boto3 signs every header.
    let conditions = [
        ("if-none-match", "\"00000000000000000000000000000000\""),
        ("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT"),
        ("if-unmodified-since", "Fri, 01 Jan 2100 00:00:00 GMT"),
    ];
    for (toml, expected) in [
        ("", "bypass; reason=no_fill_credentials"),
        (&with_credentials("")[..], ""),
    ] {
        let proxy = proxy_for(&origin, toml).await;
        for (round, (name, value)) in conditions.iter().enumerate() {
            if round == 1 {
                // Partly cached: the first chunk is in, the rest must be filled.
                get(
                    &proxy,
                    Call::get(&target, &presigned()).unsigned_header("range", "bytes=0-0"),
                )
                .await;
            }
            let call = Call::get(&target, &TestOrigin::signing()).header(name, value);
            let reply = get(&proxy, call).await;
            assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.text());
            assert_eq!(sha256_hex(&reply.body), sha256_hex(&data), "{name}");
            if !expected.is_empty() {
                assert_eq!(outcome(&reply), expected, "{name}");
            } else {
                assert!(matches!(outcome(&reply), "hit" | "miss"), "{name}: {}", outcome(&reply));
            }
        }
    }
}

#[tokio::test]
async fn outcomes_say_where_the_bytes_came_from() {
    let (origin, data) = origin_with("weights.bin", 2 * CHUNK, &[]).await;
    let proxy = proxy_for(&origin, &with_credentials("")).await;
    let target = format!("/{BUCKET}/weights.bin");
    // A HEAD teaches the metadata, not the bytes: the next GET is a miss.
    let head = get(&proxy, Call::head(&target, &presigned())).await;
    assert_eq!(outcome(&head), "origin");
    let first = get(&proxy, Call::get(&target, &presigned())).await;
    assert_eq!(outcome(&first), "miss");
    let second = get(&proxy, Call::get(&target, &presigned())).await;
    assert_eq!(outcome(&second), "hit");
    assert_eq!(sha256_hex(&second.body), sha256_hex(&data));
    // s3-accel's own errors say so too.
    origin.stats.fail_fills.store(1000, std::sync::atomic::Ordering::SeqCst);
    origin.put(BUCKET, "other.bin", &data, &[]).await;
    // (A HEAD first: a cold GET's first chunk would come in its probe's body.)
    get(&proxy, Call::head(&format!("/{BUCKET}/other.bin"), &presigned())).await;
    let failed = get(&proxy, Call::get(&format!("/{BUCKET}/other.bin"), &presigned())).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(outcome(&failed), "error");
}

#[tokio::test]
async fn a_small_miss_costs_one_round_trip_and_one_body() {
    let size = CHUNK / 3;
    let (origin, data) = origin_with("small.bin", size, &[]).await;
    origin.put(BUCKET, "herd.bin", &data, &[]).await;
    let proxy = proxy_for(&origin, "").await;
    let call = |key: &str| Call::get(&format!("/{BUCKET}/{key}"), &presigned());

    let (requests, bytes) = (origin.stats.requests(), origin.stats.body_bytes());
    let cold = get(&proxy, call("small.bin")).await;
    assert_eq!((cold.status, outcome(&cold)), (StatusCode::OK, "miss"));
    assert_eq!(sha256_hex(&cold.body), sha256_hex(&data));
    assert_eq!(origin.stats.requests() - requests, 1, "one round trip");
    assert_eq!(origin.stats.body_bytes() - bytes, size as u64, "one body");
    let bytes = origin.stats.body_bytes();
    let warm = get(&proxy, call("small.bin")).await;
    assert_eq!(outcome(&warm), "hit", "the probe's body was kept");
    assert_eq!(sha256_hex(&warm.body), sha256_hex(&data));
    assert_eq!(origin.stats.body_bytes(), bytes);

    // A herd of a cold small object: one body, no fill.
    let (bytes, fills) = (origin.stats.body_bytes(), origin.stats.fills());
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (client, address, call) = (proxy.client.clone(), proxy.address, call("herd.bin"));
            tokio::spawn(async move { client.send(address, &call).await })
        })
        .collect();
    for client in clients {
        let reply = client.await.unwrap().unwrap();
        assert_eq!(sha256_hex(&reply.body), sha256_hex(&data));
    }
    assert_eq!(origin.stats.fills(), fills, "no fill: the probe's body was the chunk");
    assert_eq!(origin.stats.body_bytes() - bytes, size as u64, "one body for the herd");
}

#[tokio::test]
async fn a_chunk_aligned_cold_range_is_kept_and_a_cut_one_is_not() {
    let (origin, data) = origin_with("parts.bin", 3 * CHUNK + 100, &[]).await;
    let proxy = proxy_for(&origin, &with_credentials("")).await;
    let etag = origin
        .send(&Call::head(&format!("/{BUCKET}/parts.bin"), &TestOrigin::signing()))
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    // boto3's part: Range and If-Match, signed.
    let part = |first: usize, last: usize| {
        Call::get(&format!("/{BUCKET}/parts.bin"), &TestOrigin::signing())
            .header("range", &format!("bytes={first}-{last}"))
            .header("if-match", &etag)
    };
    let bytes = origin.stats.body_bytes();
    let cold = get(&proxy, part(CHUNK, 2 * CHUNK - 1)).await;
    assert_eq!((cold.status, outcome(&cold)), (StatusCode::PARTIAL_CONTENT, "miss"));
    assert_eq!(&cold.body[..], &data[CHUNK..2 * CHUNK]);
    assert_eq!(origin.stats.body_bytes() - bytes, CHUNK as u64, "the part's body, once");
    let warm = get(&proxy, part(CHUNK, 2 * CHUNK - 1)).await;
    assert_eq!(outcome(&warm), "hit");
    assert_eq!(origin.stats.body_bytes() - bytes, CHUNK as u64);

    // The origin cuts a cold probe's body: the response goes on from a fill of the
    // chunk (the same version: If-Match), which is what is kept.
    origin.put(BUCKET, "cut.bin", &data, &[]).await;
    let cut_part = Call::get(&format!("/{BUCKET}/cut.bin"), &TestOrigin::signing())
        .header("range", &format!("bytes=0-{}", CHUNK - 1))
        .header("if-match", &etag);
    origin.stats.cut_fills.store(1, std::sync::atomic::Ordering::SeqCst);
    let (requests, fills) = (origin.stats.requests(), origin.stats.fills());
    let resumed = get(&proxy, cut_part.clone()).await;
    assert_eq!(&resumed.body[..], &data[..CHUNK]);
    assert_eq!(
        (origin.stats.requests() - requests, origin.stats.fills() - fills),
        (2, 2),
        "the probe (cut) and one fill"
    );
    let warm = get(&proxy, cut_part.clone()).await;
    assert_eq!((outcome(&warm), &warm.body[..]), ("hit", &data[..CHUNK]));
    // Cut again where it resumes: the response is cut, nothing is kept, and the next
    // read is whole.
    origin.put(BUCKET, "cut-twice.bin", &data, &[]).await;
    let cut_twice = Call::get(&format!("/{BUCKET}/cut-twice.bin"), &TestOrigin::signing())
        .header("range", &format!("bytes=0-{}", CHUNK - 1))
        .header("if-match", &etag);
    origin.stats.cut_fills.store(2, std::sync::atomic::Ordering::SeqCst);
    let cut = tokio::time::timeout(Duration::from_secs(30), proxy.send(&cut_twice))
        .await
        .expect("no hang");
    assert!(cut.is_err(), "a probe and a fill cut: a cut response");
    let healed = get(&proxy, cut_twice).await;
    assert_eq!(&healed.body[..], &data[..CHUNK]);
    assert_eq!(outcome(&healed), "miss", "nothing was kept from the cut bodies");
}

#[tokio::test]
async fn a_head_refreshes_the_metadata_without_fill_credentials() {
    let (origin, data) = origin_with("weights.bin", 2 * CHUNK, &[]).await;
    let proxy = proxy_for(&origin, "").await;
    let target = format!("/{BUCKET}/weights.bin");
    // boto3's HEAD: header-signed, and the proxy has no credentials of its own.
    let head = get(&proxy, Call::head(&target, &TestOrigin::signing())).await;
    assert_eq!((head.status, outcome(&head)), (StatusCode::OK, "origin"));
    // The GET after it probes with the learned ETag (a 304, no body) and fills.
    let bytes = origin.stats.body_bytes();
    let read = get(&proxy, Call::get(&target, &presigned())).await;
    assert_eq!(outcome(&read), "miss");
    assert_eq!(sha256_hex(&read.body), sha256_hex(&data));
    assert_eq!(
        origin.stats.body_bytes() - bytes,
        data.len() as u64,
        "no probe body to drop"
    );
}
