//! Hostile clients and a faulty origin: each attack that once broke a promise
//! (wrong bytes, a node hung, unbounded growth), kept closed. Every test also checks
//! that an honest client is still served, byte-exact.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::StatusCode;
use s3_accel_testkit::OriginOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ops::{admin_get, sample};
use crate::support::client::Call;
use crate::support::framing::{Fault, FramingOrigin};
use crate::support::{get, object_bytes, outcome, sha256_hex, Signing, TestOrigin, TestProxy};

const SMALL: &str = "memory = \"64MiB\"\ndisk = \"0\"\nchunk_size = \"1MiB\"";

/// Finding 1: an origin serving `<bucket>.obj.test` virtual-hosted reads
/// `Host: evil.obj.test` + `/models/llama/w.bin` as bucket `evil`, key
/// `models/llama/w.bin`; s3-accel, which does not know `obj.test`, would read bucket
/// `models`. Such a Host is refused before the origin and the cache, so the victim's
/// object can never be cached with the attacker's bytes.
#[tokio::test]
async fn a_host_the_origin_reads_as_another_bucket_is_refused_and_the_victim_gets_its_bytes() {
    let origin = TestOrigin::start_with(OriginOptions {
        domains: vec!["obj.test".into()],
        honor_conditionals: true,
        ..OriginOptions::default()
    })
    .await;
    let victim = object_bytes(1, 3 << 20);
    let attacker = object_bytes(2, 3 << 20);
    for (bucket, key, data) in [
        ("models", "llama/w.bin", &victim),
        ("evil", "models/llama/w.bin", &attacker),
    ] {
        origin.create_bucket(bucket).await;
        origin.put(bucket, key, data, &[]).await;
        origin.policy().set_public(bucket, true);
    }
    let proxy = TestProxy::start_in(
        tempfile::tempdir().unwrap(),
        &format!(
            "origin = \"{}\"\n[auth]\ngrants = [\"anonymous\"]\nanonymous_buckets = [\"models\"]",
            origin.url()
        ),
        SMALL,
    )
    .await;
    let refusals = || async {
        let (_, metrics) = admin_get(&proxy, "/metrics").await;
        sample(&metrics, "s3accel_local_refusals_total", "reason=\"host\"").unwrap_or(0.0)
    };
    let requests = origin.stats.requests();
    let refused_before = refusals().await;
    let port = proxy.address.port();
    for host in [
        format!("evil.obj.test:{port}"),
        "evil.obj.test".into(),
        format!("localhost:{port}"),
        // A trailing dot: an origin may read it otherwise than s3-accel would.
        format!("127.0.0.1.:{port}"),
    ] {
        for condition in [Some("\"x\""), None] {
            let mut call = Call::get("/models/llama/w.bin", &Signing::Anonymous).host(&host);
            if let Some(etag) = condition {
                call = call.header("if-none-match", etag);
            }
            let reply = get(&proxy, call).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{host}: {}", reply.text());
            assert_eq!(reply.xml("Code").as_deref(), Some("InvalidRequest"));
            assert_eq!(reply.xml("RequestId").as_deref(), reply.header("x-amz-request-id"));
            assert!(
                reply.text().contains("host `"),
                "the refusal names the Host: {}",
                reply.text()
            );
        }
    }
    assert_eq!(origin.stats.requests(), requests, "nothing refused reaches the origin");
    // (Metrics are the process's: other tests may add refusals, never take any.)
    assert!(refusals().await >= refused_before + 8.0, "each refusal is counted");

    // The victim, on its own Host, gets its own bytes: from the origin, then from
    // the cache (the anonymous grant), never the attacker's.
    for expected in ["miss", "hit"] {
        let reply = get(&proxy, Call::get("/models/llama/w.bin", &Signing::Anonymous)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(outcome(&reply), expected);
        assert_eq!(sha256_hex(&reply.body), sha256_hex(&victim));
    }
}

fn fill_credentials() -> String {
    use crate::support::origin::{ACCESS_KEY, SECRET_KEY};
    format!("[credentials]\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n")
}

/// Finding 5: a header named in `Connection` is not forwarded, so the plan must not
/// read it either. A HEAD "in checksum mode" whose `Connection` hides the mode gets
/// an answer without checksums, which must not be recorded as "the object has none".
#[tokio::test]
async fn a_header_hidden_by_connection_is_not_read_by_the_plan() {
    let data = object_bytes(5, 300_000);
    let origin = FramingOrigin::start(data.clone()).await;
    origin.set(Fault::ChecksumsWhenAsked);
    let config = format!("origin = \"{}\"\n{}", origin.url(), fill_credentials());
    let proxy = TestProxy::start_in(tempfile::tempdir().unwrap(), &config, SMALL).await;
    let checked = || Call::get("/bucket/o.bin", &TestOrigin::signing()).header("x-amz-checksum-mode", "ENABLED");
    let crc = s3_accel_testkit::crc32_base64(&data);
    let first = get(&proxy, checked()).await;
    assert_eq!(first.header("x-amz-checksum-crc32"), Some(crc.as_str()));

    let hidden = Call::head("/bucket/o.bin", &TestOrigin::signing())
        .unsigned_header("x-amz-checksum-mode", "ENABLED")
        .unsigned_header("connection", "x-amz-checksum-mode");
    let reply = get(&proxy, hidden).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("x-amz-checksum-crc32"),
        None,
        "the origin was not asked for them"
    );

    let again = get(&proxy, checked()).await;
    assert_eq!(outcome(&again), "hit");
    assert_eq!(sha256_hex(&again.body), sha256_hex(&data));
    assert_eq!(
        again.header("x-amz-checksum-crc32"),
        Some(crc.as_str()),
        "the known checksums were not overwritten"
    );

    // A Connection header that names Host would forward a request without the Host
    // it was routed by: refused.
    let requests = get(
        &proxy,
        Call::get("/bucket/o.bin", &TestOrigin::signing()).unsigned_header("connection", "host"),
    )
    .await;
    assert_eq!(requests.status, StatusCode::BAD_REQUEST, "{}", requests.text());
}

/// Finding 8: an origin that answers a range with 200 and only the range's bytes
/// must not leave a truncated object in the cache, served as whole later.
#[tokio::test]
async fn a_range_answered_with_200_never_sets_the_objects_size() {
    let data = object_bytes(8, 3 << 20);
    let origin = FramingOrigin::start(data.clone()).await;
    let config = format!("origin = \"{}\"\n{}", origin.url(), fill_credentials());
    let proxy = TestProxy::start_in(tempfile::tempdir().unwrap(), &config, SMALL).await;
    origin.set(Fault::RangeAsWhole);
    let ranged = Call::get("/bucket/o.bin", &TestOrigin::signing()).header("range", "bytes=0-99");
    let reply = get(&proxy, ranged).await;
    assert_ne!(outcome(&reply), "miss", "a 200 to a range is not cached");
    let head = get(
        &proxy,
        Call::head("/bucket/o.bin", &TestOrigin::signing()).header("range", "bytes=0-99"),
    )
    .await;
    assert_ne!(head.status, StatusCode::PARTIAL_CONTENT);
    origin.set(Fault::None);
    for _ in 0..2 {
        let whole = get(&proxy, Call::get("/bucket/o.bin", &TestOrigin::signing())).await;
        assert_eq!(whole.status, StatusCode::OK);
        assert_eq!(whole.body.len(), data.len(), "the whole object, not the range");
        assert_eq!(sha256_hex(&whole.body), sha256_hex(&data));
    }
}

/// Finding 3: every metric label comes from a closed set. Made-up methods (each
/// refused with 405, no origin contact) once each made a series of their own.
#[tokio::test]
async fn made_up_methods_add_no_metric_series() {
    let origin = TestOrigin::start(&[]).await;
    let proxy = TestProxy::start_in(
        tempfile::tempdir().unwrap(),
        &format!("origin = \"{}\"", origin.url()),
        SMALL,
    )
    .await;
    let lines = || async { admin_get(&proxy, "/metrics").await.1.lines().count() };
    // One of each first, so that the label sets a refusal uses exist.
    let method = |i: usize| http::Method::from_bytes(format!("MADEUP{i:034}").as_bytes()).unwrap();
    let reply = get(&proxy, Call::new(method(0), "/b/k", &Signing::Anonymous)).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let before = lines().await;
    let requests = origin.stats.requests();
    for i in 1..=2_000 {
        let reply = get(&proxy, Call::new(method(i), "/b/k", &Signing::Anonymous)).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    }
    assert_eq!(origin.stats.requests(), requests, "refused before the origin");
    let after = lines().await;
    // (Other tests in this process add their own series meanwhile: a few dozen.)
    eprintln!("2,000 made-up methods: /metrics went from {before} to {after} lines");
    assert!(after < before + 100, "/metrics grew from {before} to {after} lines");
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    assert!(
        metrics.contains("operation=\"refused\""),
        "refusals are counted as such"
    );
    assert!(!metrics.contains("MADEUP"), "no made-up method is a label");
}

/// Finding 4: origin connections are pooled per origin, whatever Host the client
/// sent: Hosts that differ only by port once left a connection each.
#[tokio::test]
async fn hosts_that_differ_by_port_share_the_origins_connections() {
    let origin = TestOrigin::honoring().await;
    origin.create_bucket("pool").await;
    let data = object_bytes(4, 1000);
    origin.put("pool", "k", &data, &[]).await;
    let config = format!(
        "[[regions]]\nname = \"pool-test\"\norigin = \"{}\"\nhosts = [\"127.0.0.1\"]\n[origin_client]\nmax_connections = 8",
        origin.url()
    );
    let proxy = TestProxy::start_in(tempfile::tempdir().unwrap(), &config, SMALL).await;
    let connections = || origin.stats.connections.load(std::sync::atomic::Ordering::SeqCst);
    // One after another: one connection, reused whatever the port.
    let before = connections();
    for port in 1..=300 {
        let call = Call::get("/pool/k", &Signing::Anonymous).host(&format!("127.0.0.1:{port}"));
        get(&proxy, call).await;
    }
    let opened = connections() - before;
    assert!(
        opened <= 2,
        "{opened} origin connections for 300 Host ports, one at a time"
    );
    eprintln!("300 Host ports, one at a time: {opened} origin connection(s) opened");
    // All at once: no more than the cap.
    let before = connections();
    let calls = (1..=300).map(|port| {
        let call = Call::get("/pool/k", &Signing::Anonymous).host(&format!("127.0.0.1:{port}"));
        let proxy = &proxy;
        async move { get(proxy, call).await }
    });
    let replies = futures_util::future::join_all(calls).await;
    for reply in &replies {
        // Unsigned: the origin refuses them; what matters is how they travelled.
        assert!(
            reply.status == StatusCode::FORBIDDEN || reply.status == StatusCode::OK,
            "{}",
            reply.status
        );
    }
    let opened = connections() - before;
    assert!(
        opened <= 8,
        "{opened} origin connections for 300 Host ports at once, cap 8"
    );
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    let open = sample(&metrics, "s3accel_origin_connections", "region=\"pool-test\"").unwrap();
    assert!((1.0..=8.0).contains(&open), "{open} open");
    // Signed reads still verify at the origin (the Host the client signed travels).
    let signed = get(&proxy, Call::get("/pool/k", &TestOrigin::signing())).await;
    assert_eq!(sha256_hex(&signed.body), sha256_hex(&data));
}

/// A client that sends a GET and never reads: a small receive buffer, nothing read.
async fn stalled(address: SocketAddr, target: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(address).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// A public bucket of warm objects behind a proxy with `server` and `cache` keys.
struct Warm {
    _origin: TestOrigin,
    proxy: TestProxy,
    /// The region's name, this test's own (metrics are the process's).
    region: String,
    objects: Vec<(String, Vec<u8>)>,
}

impl Warm {
    async fn start(server: &str, cache: &str, objects: &[(&str, usize)]) -> Self {
        let origin = TestOrigin::honoring().await;
        origin.create_bucket("hot").await;
        origin.policy().set_public("hot", true);
        let mut stored = Vec::new();
        for (i, (key, size)) in objects.iter().enumerate() {
            let data = object_bytes(100 + i as u64, *size);
            origin.put("hot", key, &data, &[]).await;
            stored.push((format!("/hot/{key}"), data));
        }
        static REGIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let region = format!("hostile-{}", REGIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        let config = format!(
            "{server}\n[[regions]]\nname = \"{region}\"\norigin = \"{}\"\nhosts = [\"127.0.0.1\"]",
            origin.url()
        );
        let proxy = TestProxy::start_in(tempfile::tempdir().unwrap(), &config, cache).await;
        let warm = Self {
            _origin: origin,
            proxy,
            region,
            objects: stored,
        };
        for (target, data) in &warm.objects {
            let reply = get(&warm.proxy, Call::get(target, &Signing::Anonymous)).await;
            assert_eq!(sha256_hex(&reply.body), sha256_hex(data), "{target}");
        }
        warm
    }

    fn target(&self, key: &str) -> &str {
        &self
            .objects
            .iter()
            .find(|(t, _)| t.ends_with(&format!("/{key}")))
            .unwrap()
            .0
    }

    /// Reads `key` as an honest client: byte-exact, from the cache, within `limit`;
    /// returns how long it took.
    async fn healthy(&self, key: &str, limit: Duration) -> Duration {
        let (target, data) = self
            .objects
            .iter()
            .find(|(t, _)| t.ends_with(&format!("/{key}")))
            .unwrap();
        let started = Instant::now();
        let reply = tokio::time::timeout(limit, self.proxy.send(&Call::get(target, &Signing::Anonymous)))
            .await
            .unwrap_or_else(|_| panic!("{target}: no answer within {limit:?}"))
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{target}: {}", reply.text());
        assert_eq!(outcome(&reply), "hit");
        assert_eq!(sha256_hex(&reply.body), sha256_hex(data));
        started.elapsed()
    }
}

/// Finding 2: clients that send a GET for a warm large object and never read once
/// held the node's whole read-ahead memory, and every cached read waited behind
/// them. Responses reading the same chunks share them, a small object counts its
/// own size, and honest clients of other objects are served at once.
#[tokio::test]
async fn clients_that_stop_reading_do_not_hold_up_anyone_else() {
    let warm = Warm::start(
        "",
        SMALL,
        &[("big.bin", 24 << 20), ("tiny", 11), ("other.bin", 3 << 20)],
    )
    .await;
    let address = warm.proxy.address;
    let mut stalled_clients = Vec::new();
    for count in [24, 256] {
        while stalled_clients.len() < count {
            stalled_clients.push(stalled(address, warm.target("big.bin")).await);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tiny = warm.healthy("tiny", Duration::from_secs(10)).await;
        let other = warm.healthy("other.bin", Duration::from_secs(10)).await;
        eprintln!("{count} stalled readers: an 11-byte hit took {tiny:?}, a 3 MiB hit {other:?}");
    }
    drop(stalled_clients);
}

/// An h2 client that asks with its flow-control window shut: each answer gets its
/// head out, never a byte of its body. Its streams stay open while it lives.
struct ShutWindow {
    connection: tokio::task::JoinHandle<Result<(), h2::Error>>,
    /// The answers' statuses, in the order asked.
    statuses: Vec<StatusCode>,
    _bodies: Vec<h2::RecvStream>,
}

impl ShutWindow {
    async fn ask(address: SocketAddr, targets: &[&str]) -> Self {
        let tcp = TcpStream::connect(address).await.unwrap();
        let (mut client, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        let connection = tokio::spawn(connection);
        let mut pending = Vec::new();
        for target in targets {
            client = client.ready().await.unwrap();
            let request = http::Request::get(format!("http://{address}{target}"))
                .body(())
                .unwrap();
            pending.push(client.send_request(request, true).unwrap().0);
        }
        let (mut statuses, mut bodies) = (Vec::new(), Vec::new());
        for response in pending {
            let response = tokio::time::timeout(Duration::from_secs(10), response)
                .await
                .expect("every stream is answered, at least with its head")
                .unwrap();
            statuses.push(response.status());
            bodies.push(response.into_body());
        }
        Self {
            connection,
            statuses,
            _bodies: bodies,
        }
    }

    /// Whether the server closed the connection within `limit`.
    async fn cut_within(self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.connection).await.is_ok()
    }
}

/// A wait for read-ahead memory ends in 503 SlowDown, never a hang; a client that
/// takes no bytes for `server.send_timeout` is cut, and what it held is returned.
#[tokio::test]
async fn a_wait_for_memory_ends_in_slowdown_and_stalled_clients_are_cut() {
    let cache = format!("{SMALL}\nread_ahead = 2\nread_ahead_memory = \"4MiB\"\nread_ahead_wait = \"300ms\"");
    let mut objects: Vec<(String, usize)> = (0..8).map(|i| (format!("d{i}"), 6 << 20)).collect();
    objects.push(("victim".into(), 2 << 20));
    let objects: Vec<(&str, usize)> = objects.iter().map(|(k, s)| (k.as_str(), *s)).collect();
    let warm = Warm::start("[server]\nsend_timeout = \"2s\"", &cache, &objects).await;
    let cuts = || async {
        let (_, metrics) = admin_get(&warm.proxy, "/metrics").await;
        sample(&metrics, "s3accel_client_cuts_total", "reason=\"send_timeout\"").unwrap_or(0.0)
    };
    let cuts_before = cuts().await;
    // Clients of other objects that take no bytes hold the 4 MiB (a first chunk
    // of 1 MiB each, and what they read ahead), until one is answered SlowDown.
    let mut stalled_clients = Vec::new();
    for i in 0..8 {
        let stalled = ShutWindow::ask(warm.proxy.address, &[warm.target(&format!("d{i}"))]).await;
        let status = stalled.statuses[0];
        stalled_clients.push(stalled);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
    }
    let answered = stalled_clients.len();
    assert!(
        (2..8).contains(&answered),
        "{answered} stalled clients before the budget was held"
    );
    let started = Instant::now();
    let busy = get(&warm.proxy, Call::get(warm.target("victim"), &Signing::Anonymous)).await;
    assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE, "{}", busy.text());
    assert_eq!(busy.xml("Code").as_deref(), Some("SlowDown"));
    assert_eq!(busy.xml("RequestId").as_deref(), busy.header("x-amz-request-id"));
    assert!(busy.header("retry-after").is_some());
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    // The stalled clients are cut, and the memory they held serves the next client.
    for stalled in stalled_clients {
        assert!(
            stalled.cut_within(Duration::from_secs(15)).await,
            "a stalled client is cut"
        );
    }
    assert!(cuts().await >= cuts_before + (answered - 1) as f64);
    warm.healthy("victim", Duration::from_secs(5)).await;
    // So does an HTTP/1.1 client that stops reading (its socket full).
    let mut stalled = stalled(warm.proxy.address, warm.target("d5")).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        stalled.read_to_end(&mut received).await
    })
    .await;
    assert!(read.is_ok(), "an HTTP/1.1 client that stops reading is cut");
    assert!(received.len() < 6 << 20, "cut short: {} bytes", received.len());
}

/// An h2 connection that opens many streams with a shut flow-control window holds
/// at most its connection's share, and is cut after `send_timeout`.
#[tokio::test]
async fn an_h2_connection_with_a_shut_window_is_bounded_and_cut() {
    let cache = format!("{SMALL}\nread_ahead = 2\nread_ahead_wait = \"300ms\"");
    let objects: Vec<(String, usize)> = (0..12).map(|i| (format!("w{i}"), 3 << 20)).collect();
    let mut objects: Vec<(&str, usize)> = objects.iter().map(|(k, s)| (k.as_str(), *s)).collect();
    objects.push(("victim", 2 << 20));
    let warm = Warm::start("[server]\nsend_timeout = \"2s\"", &cache, &objects).await;
    let targets: Vec<String> = (0..12).map(|i| warm.target(&format!("w{i}")).to_owned()).collect();
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    let stalled = ShutWindow::ask(warm.proxy.address, &targets).await;
    let served = stalled.statuses.iter().filter(|s| **s == StatusCode::OK).count();
    for status in &stalled.statuses {
        assert!(
            matches!(*status, StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE),
            "{status}"
        );
    }
    // Its share (read_ahead + 1 chunks of 1 MiB) holds three first chunks at most.
    assert!((1..=3).contains(&served), "{served} streams got their first chunk");
    warm.healthy("victim", Duration::from_secs(5)).await;
    assert!(
        stalled.cut_within(Duration::from_secs(15)).await,
        "the connection is cut after send_timeout"
    );
}

/// The h2 "rapid reset" pattern (streams opened and reset at once, thousands of
/// them) and slowloris headers cost an honest client nothing.
#[tokio::test]
async fn rapid_resets_and_slowloris_headers_do_not_starve_an_honest_client() {
    let warm = Warm::start(
        "[server]\nheader_read_timeout = \"1s\"",
        SMALL,
        &[("tiny", 11), ("other.bin", 3 << 20)],
    )
    .await;
    let address = warm.proxy.address;
    let target = format!("http://{address}{}", warm.target("other.bin"));
    let flood = tokio::spawn(async move {
        let tcp = TcpStream::connect(address).await.unwrap();
        let Ok((mut client, connection)) = h2::client::handshake(tcp).await else {
            return 0;
        };
        let connection = tokio::spawn(connection);
        let mut sent = 0;
        for _ in 0..5_000 {
            client = match client.ready().await {
                Ok(client) => client,
                Err(_) => break,
            };
            let request = http::Request::get(&target).body(()).unwrap();
            let Ok((_, mut stream)) = client.send_request(request, false) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            sent += 1;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
        sent
    });
    let mut slow = TcpStream::connect(address).await.unwrap();
    slow.write_all(b"GET /hot/tiny HTTP/1.1\r\n").await.unwrap();
    let slowloris = tokio::spawn(async move {
        let started = Instant::now();
        for i in 0..50 {
            if slow.write_all(format!("x-slow-{i}: a\r\n").as_bytes()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
        started.elapsed()
    });
    for _ in 0..5 {
        warm.healthy("tiny", Duration::from_secs(5)).await;
        warm.healthy("other.bin", Duration::from_secs(5)).await;
    }
    let sent = flood.await.unwrap();
    assert!(sent > 0);
    let closed_after = slowloris.await.unwrap();
    assert!(
        closed_after < Duration::from_secs(5),
        "a slowloris head is cut after header_read_timeout: {closed_after:?}"
    );
    warm.healthy("other.bin", Duration::from_secs(5)).await;
}

/// 10,000 reads of keys that do not exist (each a 404 from the origin, with
/// anonymous grants on): nothing grows past its bound, and an honest client is served.
#[tokio::test]
async fn ten_thousand_random_keys_grow_nothing_unbounded() {
    let warm = Warm::start(
        "[auth]\ngrants = [\"anonymous\"]\nanonymous_buckets = [\"hot\"]\n[origin_client]\nmax_connections = 16",
        SMALL,
        &[("tiny", 11)],
    )
    .await;
    let lines = || async { admin_get(&warm.proxy, "/metrics").await.1.lines().count() };
    let before = lines().await;
    let proxy = &warm.proxy;
    let reads = futures_util::stream::iter(0..10_000u32).map(|i| async move {
        let target = format!("/hot/missing/{:08x}{i}", fastrand::u32(..));
        get(proxy, Call::get(&target, &Signing::Anonymous)).await.status
    });
    let statuses: Vec<StatusCode> = reads.buffer_unordered(32).collect().await;
    assert!(statuses.iter().all(|s| *s == StatusCode::NOT_FOUND));
    let after = lines().await;
    assert!(after < before + 100, "/metrics grew from {before} to {after} lines");
    let (_, metrics) = admin_get(proxy, "/metrics").await;
    let open = sample(
        &metrics,
        "s3accel_origin_connections",
        &format!("region=\"{}\"", warm.region),
    )
    .unwrap_or(0.0);
    assert!(open <= 16.0, "{open} origin connections");
    // Each 404 drops the object's grants: the drop times are kept, within their bound.
    // (The gauge is the process's: another test's scrape may set it in between.)
    let mut drops = 0.0;
    for _ in 0..5 {
        let (_, metrics) = admin_get(proxy, "/metrics").await;
        drops = metrics
            .lines()
            .find_map(|line| line.strip_prefix("s3accel_grant_drops "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        if drops >= 10_000.0 {
            break;
        }
    }
    assert!((10_000.0..=100_000.0).contains(&drops), "{drops} grant drops held");
    warm.healthy("tiny", Duration::from_secs(5)).await;
}

/// This machine's first IPv4 address that is not loopback, if it has one.
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let output = std::process::Command::new("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).lines().find_map(|line| {
        let address = line.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
        let ip: std::net::IpAddr = address.split('/').next()?.parse().ok()?;
        (!ip.is_loopback()).then_some(ip)
    })
}

/// Finding 9: the admin listener (open to the cluster for scrapes) takes changes
/// from loopback only, and a 503 names no internal origin address.
#[tokio::test]
async fn admin_changes_come_from_loopback_only_and_errors_name_no_origin() {
    let dir = tempfile::tempdir().unwrap();
    let dead = crate::support::fault::refusing().await.to_string();
    let config = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"0.0.0.0:0\"\norigin = \"http://{dead}\"\n\
         [origin_client]\nconnect_timeout = \"200ms\"\n[auth]\ngrants = [\"presigned\"]\n\
         [cache]\ndir = \"{}\"\n{SMALL}\n",
        dir.path().display()
    );
    let proxy = TestProxy::from_config(&config).await;
    let reply = get(&proxy, Call::get("/b/k", &TestOrigin::signing())).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !reply.text().contains(&dead),
        "the origin's address stays inside: {}",
        reply.text()
    );
    assert_eq!(reply.xml("RequestId").as_deref(), reply.header("x-amz-request-id"));

    let (status, _) = crate::ops::admin_post(&proxy, "/admin/grants/flush").await;
    assert_eq!(status, StatusCode::OK, "from loopback");
    let Some(ip) = non_loopback_address() else {
        eprintln!("SKIPPED the non-loopback half: this machine has no address but loopback");
        return;
    };
    let mut stream = TcpStream::connect((ip, proxy.admin.port())).await.unwrap();
    stream
        .write_all(b"POST /admin/grants/flush HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "from {ip}: {answer}");
    let (status, _) = admin_get(&proxy, "/healthz").await;
    assert_eq!(status, StatusCode::OK, "reads stay open");
}

/// Finding 9: an idle connection (h2c or HTTP/1.1) is closed after
/// `server.idle_timeout`; one with a request in flight is not.
#[tokio::test]
async fn idle_connections_are_closed() {
    let warm = Warm::start("[server]\nidle_timeout = \"1s\"", SMALL, &[("tiny", 11)]).await;
    let tcp = TcpStream::connect(warm.proxy.address).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    client = client.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}{}", warm.proxy.address, warm.target("tiny")))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let mut body = response.await.unwrap().into_body();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        body.flow_control().release_capacity(data.len()).unwrap();
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(closed.is_ok(), "an idle h2 connection is closed");

    let mut idle = TcpStream::connect(warm.proxy.address).await.unwrap();
    let mut nothing = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut nothing)).await;
    assert!(closed.is_ok(), "an idle HTTP/1.1 connection is closed");
    warm.healthy("tiny", Duration::from_secs(5)).await;
}

/// Withdrawal: keep-alive connections idle at SIGTERM stay open (a client may still
/// use them) until `server.withdraw_grace` ends, then are closed: HTTP/1.1 by
/// closing the socket, h2 with a GOAWAY; the node then exits.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed_when_the_grace_ends() {
    let grace = Duration::from_millis(1500);
    let mut warm = Warm::start(
        "[server]\nwithdraw_grace = \"1500ms\"\nidle_timeout = \"60s\"",
        SMALL,
        &[("tiny", 11)],
    )
    .await;
    let address = warm.proxy.address;
    let target = warm.target("tiny").to_owned();
    // An h2 connection that has read once.
    let tcp = TcpStream::connect(address).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let mut h2 = tokio::spawn(connection);
    client = client.ready().await.unwrap();
    let request = http::Request::get(format!("http://{address}{target}"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let mut body = response.await.unwrap().into_body();
    while let Some(data) = body.data().await {
        body.flow_control().release_capacity(data.unwrap().len()).unwrap();
    }
    // An HTTP/1.1 connection that has read once, kept alive.
    let mut http1 = TcpStream::connect(address).await.unwrap();
    let ask = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    http1.write_all(ask.as_bytes()).await.unwrap();
    let answer = read_answer(&mut http1).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    let began = Instant::now();
    warm.proxy.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Inside the grace: both still open, and the HTTP/1.1 one still serves.
    assert!(!h2.is_finished(), "the h2 connection was closed inside the grace");
    http1.write_all(ask.as_bytes()).await.unwrap();
    let answer = read_answer(&mut http1).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "served inside the grace: {answer}");
    assert!(began.elapsed() < grace, "the check came too late to mean anything");
    // At the grace's end: closed, both.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), http1.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "an idle HTTP/1.1 connection is closed when the grace ends"
    );
    assert!(began.elapsed() >= grace, "closed before the grace ended");
    let ended = tokio::time::timeout(Duration::from_secs(10), &mut h2).await;
    assert!(
        ended.is_ok(),
        "an idle h2 connection is closed (GOAWAY) when the grace ends"
    );
    tokio::time::timeout(Duration::from_secs(10), warm.proxy.stopped())
        .await
        .expect("the node stops once its connections are closed");
}

/// One HTTP/1.1 answer with a Content-Length body, read whole from `stream`.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("an answer in 10 s")
            .unwrap();
        assert!(read > 0, "closed mid-answer: {text}");
        answer.extend_from_slice(&buffer[..read]);
    }
}

/// A GET or HEAD that carries a body (declared, or chunked) is refused before the
/// origin: nothing S3 clients send, and nothing to forward.
#[tokio::test]
async fn a_read_with_a_body_is_refused_before_the_origin() {
    let warm = Warm::start("", SMALL, &[("tiny", 11)]).await;
    let address = warm.proxy.address;
    let requests = warm._origin.stats.requests();
    for framing in [
        "Content-Length: 5\r\n\r\nhello",
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let request = format!("GET /hot/tiny HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{framing}");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{framing}: {answer}");
        assert!(answer.contains("<Code>InvalidRequest</Code>"), "{answer}");
    }
    assert_eq!(
        warm._origin.stats.requests(),
        requests,
        "nothing refused reaches the origin"
    );
    warm.healthy("tiny", Duration::from_secs(5)).await;
}
