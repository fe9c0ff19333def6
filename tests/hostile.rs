//! Hostile clients and a faulty origin: each attack that once broke a promise
//! (wrong bytes, a node hung, unbounded growth), kept closed. Every test also checks
//! that an honest client is still served, byte-exact.

use http::StatusCode;
use s3_accel_testkit::OriginOptions;

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
    for (bucket, key, data) in [("models", "llama/w.bin", &victim), ("evil", "models/llama/w.bin", &attacker)] {
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
    for host in [format!("evil.obj.test:{port}"), "evil.obj.test".into(), format!("localhost:{port}")] {
        for condition in [Some("\"x\""), None] {
            let mut call = Call::get("/models/llama/w.bin", &Signing::Anonymous).host(&host);
            if let Some(etag) = condition {
                call = call.header("if-none-match", etag);
            }
            let reply = get(&proxy, call).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{host}: {}", reply.text());
            assert_eq!(reply.xml("Code").as_deref(), Some("InvalidRequest"));
            assert_eq!(reply.xml("RequestId").as_deref(), reply.header("x-amz-request-id"));
            assert!(reply.text().contains("domains"), "the refusal names the fix: {}", reply.text());
        }
    }
    assert_eq!(origin.stats.requests(), requests, "nothing refused reaches the origin");
    // (Metrics are the process's: other tests may add refusals, never take any.)
    assert!(refusals().await >= refused_before + 6.0, "each refusal is counted");

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
    assert_eq!(reply.header("x-amz-checksum-crc32"), None, "the origin was not asked for them");

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
    let requests = get(&proxy, Call::get("/bucket/o.bin", &TestOrigin::signing()).unsigned_header("connection", "host")).await;
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
    let head = get(&proxy, Call::head("/bucket/o.bin", &TestOrigin::signing()).header("range", "bytes=0-99")).await;
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
    let proxy = TestProxy::start_in(tempfile::tempdir().unwrap(), &format!("origin = \"{}\"", origin.url()), SMALL).await;
    let lines = || async { admin_get(&proxy, "/metrics").await.1.lines().count() };
    // One of each first, so that the label sets a refusal uses exist.
    let method = |i: usize| http::Method::from_bytes(format!("MADEUP{i:034}").as_bytes()).unwrap();
    let reply = get(&proxy, Call::new(method(0), "/b/k", &Signing::Anonymous)).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let before = lines().await;
    let requests = origin.stats.requests();
    for i in 1..=500 {
        let reply = get(&proxy, Call::new(method(i), "/b/k", &Signing::Anonymous)).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    }
    assert_eq!(origin.stats.requests(), requests, "refused before the origin");
    let after = lines().await;
    // (Other tests in this process add their own series meanwhile: a few dozen.)
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
    let connections = origin.stats.connections.load(std::sync::atomic::Ordering::SeqCst);
    let calls = (1..=300).map(|port| {
        let call = Call::get("/pool/k", &Signing::Anonymous).host(&format!("127.0.0.1:{port}"));
        let proxy = &proxy;
        async move { get(proxy, call).await }
    });
    let replies = futures_util::future::join_all(calls).await;
    for reply in &replies {
        // Unsigned: the origin refuses them; what matters is how they travelled.
        assert!(reply.status == StatusCode::FORBIDDEN || reply.status == StatusCode::OK, "{}", reply.status);
    }
    let opened = origin.stats.connections.load(std::sync::atomic::Ordering::SeqCst) - connections;
    assert!(opened <= 8, "{opened} origin connections for 300 Host ports, cap 8");
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    let open = sample(&metrics, "s3accel_origin_connections", "region=\"pool-test\"").unwrap();
    assert!((1.0..=8.0).contains(&open), "{open} open");
    // Signed reads still verify at the origin (the Host the client signed travels).
    let signed = get(&proxy, Call::get("/pool/k", &TestOrigin::signing())).await;
    assert_eq!(sha256_hex(&signed.body), sha256_hex(&data));
}
