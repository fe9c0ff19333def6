//! What operators rely on: metrics that count what happened, health and readiness,
//! and logs that never hold a secret.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use http::StatusCode;

use crate::support::client::Call;
use crate::support::origin::{ACCESS_KEY, SECRET_KEY};
use crate::support::proxy::SMALL_CACHE;
use crate::support::{fault, object_bytes, sha256_hex, Credentials, Signing, TestClient, TestOrigin, TestProxy};

const MIB: usize = 1 << 20;

pub(crate) async fn admin_get(proxy: &TestProxy, path: &str) -> (StatusCode, String) {
    let reply = TestClient::default()
        .send(proxy.admin, &Call::get(path, &Signing::Anonymous))
        .await
        .unwrap();
    (reply.status, reply.text().to_owned())
}

pub(crate) async fn admin_post(proxy: &TestProxy, path: &str) -> (StatusCode, String) {
    let reply = TestClient::default()
        .send(proxy.admin, &Call::new(http::Method::POST, path, &Signing::Anonymous))
        .await
        .unwrap();
    (reply.status, reply.text().to_owned())
}

/// The value of the sample `name{labels}` (labels in Prometheus' sorted order).
pub(crate) fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn metrics_count_a_miss_and_a_hit_with_their_bytes() {
    let origin = TestOrigin::honoring().await;
    origin.create_bucket("metered").await;
    let data = object_bytes(5, 3 * MIB);
    origin.put("metered", "k", &data, &[]).await;
    let config = format!(
        "[[regions]]\nname = \"metrics-test\"\norigin = \"{}\"\nhosts = [\"accel.metrics.test\"]",
        origin.url()
    );
    let proxy = TestProxy::start_in(tempfile::tempdir().unwrap(), &config, SMALL_CACHE).await;
    let host = format!("accel.metrics.test:{}", proxy.address.port());
    for expected in ["miss", "hit"] {
        let reply = proxy
            .send(&Call::get("/metered/k", &Signing::Presigned(TestOrigin::credentials())).host(&host))
            .await
            .unwrap();
        assert_eq!(reply.header("x-s3-accel-cache"), Some(expected));
        assert_eq!(sha256_hex(&reply.body), sha256_hex(&data));
    }
    let (status, metrics) = admin_get(&proxy, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let requests = |cache: &str| {
        sample(
            &metrics,
            "s3accel_requests_total",
            &format!("region=\"metrics-test\",operation=\"get\",status=\"200\",cache=\"{cache}\""),
        )
    };
    assert_eq!(requests("miss"), Some(1.0), "{metrics}");
    assert_eq!(requests("hit"), Some(1.0));
    assert_eq!(
        sample(&metrics, "s3accel_origin_fill_bytes_total", "region=\"metrics-test\""),
        Some((3 * MIB) as f64)
    );
    assert_eq!(
        sample(
            &metrics,
            "s3accel_origin_requests_total",
            "region=\"metrics-test\",kind=\"fill\",status=\"206\""
        ),
        Some(2.0),
        "the first of three chunks came in the cold probe's body"
    );
    assert_eq!(
        sample(
            &metrics,
            "s3accel_origin_requests_total",
            "region=\"metrics-test\",kind=\"probe\",status=\"304\""
        ),
        Some(1.0)
    );
    // The miss was served from chunks just filled (origin), the hit from memory.
    let served = |source: &str| {
        sample(
            &metrics,
            "s3accel_response_bytes_total",
            &format!("region=\"metrics-test\",source=\"{source}\""),
        )
    };
    assert_eq!(served("origin"), Some((3 * MIB) as f64), "{metrics}");
    assert_eq!(served("memory"), Some((3 * MIB) as f64));
    assert!(sample(&metrics, "s3accel_cache_capacity_bytes", "tier=\"memory\"").unwrap() > 0.0);
    assert!(metrics.contains("# HELP s3accel_probes_total"), "metrics are described");
    assert!(metrics.contains("foyer_"), "foyer's own metrics are bridged in");
}

#[tokio::test]
async fn health_and_readiness() {
    let origin = TestOrigin::start(&[]).await;
    let proxy = TestProxy::for_origin(&origin.url()).await;
    assert_eq!(admin_get(&proxy, "/healthz").await.0, StatusCode::OK);
    assert_eq!(
        admin_get(&proxy, "/readyz").await.0,
        StatusCode::OK,
        "an origin that answers (even 403) is reachable"
    );
    assert_eq!(admin_get(&proxy, "/nope").await.0, StatusCode::NOT_FOUND);

    let down = TestProxy::for_origin(&format!("http://{}", fault::refusing().await)).await;
    assert_eq!(admin_get(&down, "/healthz").await.0, StatusCode::OK);
    let (status, body) = admin_get(&down, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("default"), "{body}");

    // One of two regions down: still ready (the other serves), and the body says which.
    let config = format!(
        "[[regions]]\nname = \"up\"\norigin = \"{}\"\nhosts = [\"up.test\"]\n\
         [[regions]]\nname = \"down\"\norigin = \"http://{}\"\nhosts = [\"down.test\"]\n",
        origin.url(),
        fault::refusing().await
    );
    let split = TestProxy::start(&config).await;
    let (status, body) = admin_get(&split, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("down") && !body.contains("up ("), "{body}");
}

/// Everything this test binary logs, from the moment the capture is installed.
pub(crate) fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            // s3s and s3s-fs are the in-process origin, not s3-accel: they log requests whole.
            .with_env_filter(s3_accel::telemetry::log_filter(Some("trace,s3s=off,s3s_fs=off")))
            .json()
            .with_writer(move || Capture(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_reaches_the_logs() {
    let logs = captured_logs();
    let origin = TestOrigin::honoring().await;
    origin.create_bucket("secrets").await;
    origin.put("secrets", "k", &object_bytes(1, 2 * MIB), &[]).await;
    let config = format!(
        "origin = \"{}\"\n[credentials]\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"",
        origin.url()
    );
    let proxy = TestProxy::start_in(tempfile::tempdir().unwrap(), &config, SMALL_CACHE).await;
    let sse_key = "c2VjcmV0LXNzZS1jLWtleS1ub2JvZHktbXVzdC1zZWU=";
    let presigned_secret = "presign-secret-for-the-log-test";
    let mut request_ids = Vec::new();
    let calls = [
        Call::get(
            "/secrets/k",
            &Signing::Presigned(Credentials::new(ACCESS_KEY, SECRET_KEY)),
        ),
        Call::get(
            "/secrets/k",
            &Signing::Presigned(Credentials::new(ACCESS_KEY, presigned_secret)),
        ),
        Call::get("/secrets/k", &TestOrigin::signing()).header("range", "bytes=0-99"),
        Call::get("/secrets/k", &TestOrigin::signing())
            .header("x-amz-server-side-encryption-customer-algorithm", "AES256")
            .header("x-amz-server-side-encryption-customer-key", sse_key),
        Call::head("/secrets/k", &TestOrigin::signing()).header("range", "bytes=0-0"),
    ];
    for call in &calls {
        let reply = proxy.send(call).await.unwrap();
        request_ids.push(reply.header("x-amz-request-id").unwrap().to_owned());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    for id in &request_ids {
        assert!(logs.contains(id.as_str()), "the access log has request {id}");
    }
    for secret in [
        SECRET_KEY,
        presigned_secret,
        sse_key,
        "X-Amz-Signature",
        "Signature=",
        "AWS4-HMAC-SHA256",
        "X-Amz-Credential",
    ] {
        let line = logs.lines().find(|l| l.contains(secret)).unwrap_or("");
        assert!(
            !logs.contains(secret),
            "`{secret}` is in the logs: {}",
            &line[..line.len().min(400)]
        );
    }
}

mod tls {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    use hyper_util::rt::TokioExecutor;

    type TlsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

    fn certificate() -> (String, String, rustls::pki_types::CertificateDer<'static>) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let der = certified.cert.der().clone();
        (certified.cert.pem(), certified.signing_key.serialize_pem(), der)
    }

    /// A client that trusts only `root`, offering h2 and HTTP/1.1.
    fn client_trusting(root: &rustls::pki_types::CertificateDer<'static>) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_all_versions()
            .build();
        Client::builder(TokioExecutor::new()).build(connector)
    }

    async fn get(client: &TlsClient, port: u16, path: &str) -> Result<(http::Version, Vec<u8>), String> {
        let mut request = http::Request::get(format!("https://localhost:{port}{path}"))
            .header("host", format!("localhost:{port}"))
            .body(())
            .unwrap();
        crate::support::signing::sign_request(&mut request, &Signing::Presigned(TestOrigin::credentials()));
        let (mut parts, ()) = request.into_parts();
        parts.headers.remove("host");
        let response = client
            .request(http::Request::from_parts(parts, Empty::new()))
            .await
            .map_err(|e| format!("{e:?}"))?;
        let version = response.version();
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_bytes()
            .to_vec();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        Ok((version, body))
    }

    #[tokio::test]
    async fn tls_with_h2_and_a_certificate_reload_that_drops_no_connection() {
        let origin = TestOrigin::honoring().await;
        origin.create_bucket("tls-bucket").await;
        let data = object_bytes(9, MIB + 17);
        origin.put("tls-bucket", "k", &data, &[]).await;
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (pem, key, first_root) = certificate();
        std::fs::write(&cert_file, pem).unwrap();
        std::fs::write(&key_file, key).unwrap();
        let config = format!(
            "origin = \"{}\"\ndomains = [\"localhost\"]\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nreload_interval = \"100ms\"",
            origin.url(),
            cert_file.display(),
            key_file.display()
        );
        let proxy = TestProxy::start_in(tempfile::tempdir().unwrap(), &config, SMALL_CACHE).await;
        let port = proxy.address.port();

        let first = client_trusting(&first_root);
        let (version, body) = get(&first, port, "/tls-bucket/k").await.unwrap();
        assert_eq!(version, http::Version::HTTP_2, "h2 negotiated by ALPN");
        assert_eq!(sha256_hex(&body), sha256_hex(&data));

        // A new certificate on disk: new handshakes get it...
        let (pem, key, second_root) = certificate();
        std::fs::write(&key_file, key).unwrap();
        std::fs::write(&cert_file, pem).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let second = client_trusting(&second_root);
        let (_, body) = get(&second, port, "/tls-bucket/k")
            .await
            .expect("the new certificate is served");
        assert_eq!(sha256_hex(&body), sha256_hex(&data));
        assert!(
            get(&client_trusting(&first_root), port, "/tls-bucket/k").await.is_err(),
            "new handshakes no longer get the old certificate"
        );
        // ...and the connection opened before the reload is still served.
        let (_, body) = get(&first, port, "/tls-bucket/k")
            .await
            .expect("the open connection survives the reload");
        assert_eq!(sha256_hex(&body), sha256_hex(&data));
    }
}

/// The access-log line of the request whose key (unique to the test) is `key`.
fn access_line(logs: &Arc<Mutex<Vec<u8>>>, key: &str, request_id: Option<&str>) -> String {
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    logs.lines()
        .filter(|l| l.contains("\"target\":\"access\"") && l.contains(&format!("\"key\":\"{key}\"")))
        .find(|l| request_id.is_none_or(|id| l.contains(id)))
        .unwrap_or_else(|| panic!("no access line for {key} {request_id:?}"))
        .to_owned()
}

#[tokio::test]
async fn the_access_log_says_how_each_body_ended() {
    let logs = captured_logs();
    let origin = TestOrigin::honoring().await;
    origin.create_bucket("bodies").await;
    for key in ["cached", "cut", "left"] {
        origin.put("bodies", key, &object_bytes(3, 16 * MIB), &[]).await;
    }
    let proxy = TestProxy::start_in(
        tempfile::tempdir().unwrap(),
        &format!("origin = \"{}\"", origin.url()),
        SMALL_CACHE,
    )
    .await;
    let presigned = Signing::Presigned(TestOrigin::credentials());
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(200));

    // Complete: a miss, a hit, and the origin's own answer relayed.
    for expected in ["miss", "hit"] {
        let reply = proxy.send(&Call::get("/bodies/cached", &presigned)).await.unwrap();
        assert_eq!(reply.header("x-s3-accel-cache"), Some(expected));
        settle().await;
        let line = access_line(&logs, "cached", reply.header("x-amz-request-id"));
        assert!(line.contains("\"body\":\"complete\""), "{expected}: {line}");
    }
    let missing = proxy.send(&Call::get("/bodies/missing", &presigned)).await.unwrap();
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    settle().await;
    assert!(access_line(&logs, "missing", None).contains("\"body\":\"complete\""));

    // Cut: the first chunk is cached, every later fill dies.
    proxy
        .send(&Call::get("/bodies/cut", &presigned).unsigned_header("range", "bytes=0-0"))
        .await
        .unwrap();
    origin.stats.cut_fills.store(1000, std::sync::atomic::Ordering::SeqCst);
    assert!(proxy.send(&Call::get("/bodies/cut", &presigned)).await.is_err());
    origin.stats.cut_fills.store(0, std::sync::atomic::Ordering::SeqCst);
    settle().await;
    let line = access_line(&logs, "cut", None);
    let cut = String::from_utf8_lossy(&logs.lock().unwrap())
        .lines()
        .filter(|l| l.contains("\"key\":\"cut\""))
        .any(|l| l.contains("\"body\":\"cut\""));
    assert!(cut, "{line}");

    // Abandoned: the client reads the head and goes away.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut request = http::Request::get(format!("http://{}/bodies/left", proxy.address))
        .header("host", proxy.address.to_string())
        .body(())
        .unwrap();
    s3_accel_testkit::sign_request(&mut request, &TestOrigin::signing());
    let response = client
        .request(request.map(|()| http_body_util::Empty::new()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    drop(client);
    for _ in 0..50 {
        settle().await;
        let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        if logs
            .lines()
            .any(|l| l.contains("\"key\":\"left\"") && l.contains("\"target\":\"access\""))
        {
            break;
        }
    }
    let line = access_line(&logs, "left", None);
    assert!(line.contains("\"body\":\"abandoned\""), "{line}");
}
