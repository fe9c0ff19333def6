//! Bytes as they arrive: a cold read's first byte leaves before its first chunk could
//! have been filled, a late joiner streams the chunk being filled, and a fill that
//! dies cuts every reader streaming it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use s3_accel_testkit::{OriginOptions, Shaping};

use crate::support::client::Call;
use crate::support::{get, object_bytes, outcome, sha256_hex, Signing, TestOrigin, TestProxy};

const BUCKET: &str = "models";
const MIB: usize = 1 << 20;

/// An origin `rtt` away whose connections each carry `per_connection` bytes/s, with
/// one object of `size` bytes.
async fn shaped_origin(rtt: Duration, per_connection: u64, size: usize) -> (TestOrigin, Vec<u8>) {
    let origin = TestOrigin::start_with(OriginOptions {
        honor_conditionals: true,
        shaping: Shaping {
            rtt,
            per_connection,
            total: 0,
        },
        ..OriginOptions::default()
    })
    .await;
    origin.create_bucket(BUCKET).await;
    let data = object_bytes(size as u64, size);
    origin.put(BUCKET, "object.bin", &data, &[]).await;
    (origin, data)
}

async fn proxy_for(origin: &TestOrigin, cache: &str) -> TestProxy {
    TestProxy::start_in(
        tempfile::tempdir().unwrap(),
        &format!("origin = \"{}\"", origin.url()),
        cache,
    )
    .await
}

fn read() -> Call {
    Call::get(
        &format!("/{BUCKET}/object.bin"),
        &Signing::Presigned(TestOrigin::credentials()),
    )
}

/// A body read to its end: its bytes, when its first bytes came, when it ended, or
/// the error that cut it (with the bytes it had delivered).
struct Read {
    bytes: Vec<u8>,
    first_byte: Option<Instant>,
    ended: Instant,
    cut: Option<String>,
}

async fn read_body(mut body: Incoming) -> Read {
    let (mut bytes, mut first_byte) = (Vec::new(), None);
    let cut = loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    first_byte.get_or_insert_with(Instant::now);
                    bytes.extend_from_slice(&data);
                }
            }
            Some(Err(error)) => break Some(format!("{error:?}")),
            None => break None,
        }
    };
    Read {
        bytes,
        first_byte,
        ended: Instant::now(),
        cut,
    }
}

#[tokio::test]
async fn a_cold_reads_first_byte_leaves_before_its_first_chunk_could_be_filled() {
    let (rtt, per_connection, chunk) = (Duration::from_millis(20), 16_000_000, 8 * MIB);
    let (origin, data) = shaped_origin(rtt, per_connection, 64 * MIB).await;
    let proxy = proxy_for(&origin, "memory = \"256MiB\"\ndisk = \"0\"\nchunk_size = \"8MiB\"").await;

    let started = Instant::now();
    let response = proxy.client.open(proxy.address, &read()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-s3-accel-cache"], "miss");
    let body = read_body(response.into_body()).await;
    assert_eq!(body.cut, None);
    assert_eq!(sha256_hex(&body.bytes), sha256_hex(&data));
    // A fill of the first chunk takes a round trip and 8 MiB at 16 MB/s: 544 ms.
    let one_fill = rtt + Duration::from_secs_f64(chunk as f64 / per_connection as f64);
    let first_byte = body.first_byte.unwrap() - started;
    println!(
        "cold 64 MiB: first byte after {first_byte:?} (a fill: {one_fill:?}), whole after {:?}",
        body.ended - started
    );
    assert!(
        first_byte < one_fill,
        "the first byte came after {first_byte:?}, as late as a fill ({one_fill:?})"
    );
    // The probe's body was the first chunk, cut where the fills took over.
    origin.stats.settled().await;
    let sent = origin.stats.body_bytes();
    assert!(
        sent <= data.len() as u64 + data.len() as u64 / 100,
        "the origin sent {sent} bytes for a {}-byte object",
        data.len()
    );
    assert_eq!(origin.stats.fills(), 7, "the chunks after the first");
    let warm = get(&proxy, read()).await;
    assert_eq!((outcome(&warm), sha256_hex(&warm.body)), ("hit", sha256_hex(&data)));
}

#[tokio::test]
async fn a_late_joiner_streams_the_chunk_being_filled() {
    // One 4 MiB chunk at 4 MB/s: about a second in, streamed by the cold probe.
    let (origin, data) = shaped_origin(Duration::from_millis(10), 4_000_000, 4 * MIB).await;
    let proxy = proxy_for(&origin, "memory = \"64MiB\"\ndisk = \"0\"\nchunk_size = \"4MiB\"").await;

    let first = proxy.client.open(proxy.address, &read()).await.unwrap();
    let mut first = first.into_body();
    let mut had = Vec::new();
    while had.len() < MIB / 2 {
        let frame = first.frame().await.unwrap().unwrap();
        had.extend_from_slice(frame.data_ref().unwrap());
    }
    let first = tokio::spawn(read_body(first));
    // The second client joins a quarter of the way in.
    let second = proxy.client.open(proxy.address, &read()).await.unwrap();
    assert_eq!(second.headers()["x-s3-accel-cache"], "miss");
    let second = read_body(second.into_body()).await;
    let mut first = first.await.unwrap();
    had.append(&mut first.bytes);
    assert_eq!((first.cut.as_deref(), second.cut.as_deref()), (None, None));
    assert_eq!(sha256_hex(&had), sha256_hex(&data));
    assert_eq!(sha256_hex(&second.bytes), sha256_hex(&data));
    let joined = second.first_byte.unwrap();
    println!(
        "late joiner: its first byte {:?} before the fill ended",
        first.ended.saturating_duration_since(joined)
    );
    assert!(
        joined < first.ended,
        "the joiner's first byte waited for the whole chunk"
    );
    assert_eq!(
        (origin.stats.fills(), origin.stats.body_bytes()),
        (0, data.len() as u64),
        "one body for both: the probe's"
    );
}

#[tokio::test]
async fn a_fill_cut_mid_chunk_cuts_every_streaming_reader_and_poisons_nothing() {
    let (origin, data) = shaped_origin(Duration::ZERO, 8_000_000, 2 * MIB).await;
    let proxy = proxy_for(&origin, "memory = \"64MiB\"\ndisk = \"0\"\nchunk_size = \"1MiB\"").await;
    // The metadata first, so that the reads below fill every chunk.
    get(
        &proxy,
        Call::head(
            &format!("/{BUCKET}/object.bin"),
            &Signing::Presigned(TestOrigin::credentials()),
        ),
    )
    .await;
    origin.stats.cut_fills.store(1000, Ordering::SeqCst);
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (client, address) = (proxy.client.clone(), proxy.address);
            tokio::spawn(async move {
                let response = client.open(address, &read()).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                tokio::time::timeout(Duration::from_secs(30), read_body(response.into_body()))
                    .await
                    .expect("no reader hangs")
            })
        })
        .collect();
    for reader in readers {
        let read = reader.await.unwrap();
        assert!(read.cut.is_some(), "a reader saw a clean end of a cut fill");
        assert!(!read.bytes.is_empty(), "the reader was streaming when the fill died");
        assert!(read.bytes.len() < data.len());
        assert_eq!(read.bytes[..], data[..read.bytes.len()], "what came was right");
    }
    origin.stats.cut_fills.store(0, Ordering::SeqCst);
    let healed = get(&proxy, read()).await;
    assert_eq!(
        (outcome(&healed), sha256_hex(&healed.body)),
        ("miss", sha256_hex(&data)),
        "nothing of the cut fills was kept"
    );
}
