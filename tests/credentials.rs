//! The proxy's own read credentials from every source, refreshed before they
//! expire, without a restart: against a real STS (moto's server) for web identity
//! and assumed roles, a container-credentials endpoint written here (it issues
//! keys that expire seconds later), a Secret directory swapped as kubelet swaps
//! it, and a `credential_process`. The origin accepts only the keys each source
//! issued, until they expire, so a fill signed with anything else fails. No secret
//! may appear in a log line, a metric or a readiness answer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use tokio::io::AsyncReadExt;

use crate::ops::{admin_get, captured_logs};
use crate::support::client::Call;
use crate::support::origin::ACCESS_KEY;
use crate::support::proxy::SMALL_CACHE;
use crate::support::sts::Moto;
use crate::support::{free_port, object_bytes, sha256_hex, TestClient, TestOrigin, TestProxy};

const MIB: usize = 1 << 20;
const BUCKET: &str = "weights";
const ROLE: &str = "arn:aws:iam::123456789012:role/s3-accel-reader";

/// An origin holding `model.bin` (`size` bytes); only issued keys read it, besides
/// the origin's own key, which the tests' clients sign with.
async fn origin_with(size: usize) -> (TestOrigin, Vec<u8>) {
    let origin = TestOrigin::honoring().await;
    origin.create_bucket(BUCKET).await;
    let data = object_bytes(14, size);
    origin.put(BUCKET, "model.bin", &data, &[]).await;
    (origin, data)
}

/// A boto3-style read of MiB `i`: its signature covers `Range`, so only the
/// proxy's own keys can fill it.
fn ranged(i: usize) -> Call {
    Call::get(&format!("/{BUCKET}/model.bin"), &TestOrigin::signing())
        .header("range", &format!("bytes={}-{}", i * MIB, (i + 1) * MIB - 1))
}

/// Reads MiB `i` through `address`: a 206 with exactly those bytes, or a panic.
async fn read_mib(client: &TestClient, address: SocketAddr, data: &[u8], i: usize) -> String {
    let reply = tokio::time::timeout(Duration::from_secs(30), client.send(address, &ranged(i)))
        .await
        .expect("no hang")
        .unwrap();
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT, "MiB {i}: {}", reply.text());
    assert_eq!(
        sha256_hex(&reply.body),
        sha256_hex(&data[i * MIB..(i + 1) * MIB]),
        "MiB {i}"
    );
    reply.header("x-s3-accel-cache").unwrap_or_default().to_owned()
}

/// The keys the origin saw on fills, other than its own (the clients').
fn fill_keys(origin: &TestOrigin) -> Vec<String> {
    origin
        .keys()
        .used_keys()
        .into_iter()
        .filter(|k| k != ACCESS_KEY)
        .collect()
}

/// No secret in `texts` (log lines, metrics, readiness answers).
fn assert_no_secret(texts: &[&str], secrets: &[String]) {
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        for text in texts {
            if let Some(at) = text.find(secret.as_str()) {
                let from = text[..at].rfind('\n').map_or(0, |n| n + 1);
                panic!("a secret is in the output: {}", &text[from..(at + 200).min(text.len())]);
            }
        }
    }
}

/// Appends what `pipe` says to `sink`, until it closes.
fn keep(mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static, sink: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut buffer = vec![0; 64 << 10];
        while let Ok(n @ 1..) = pipe.read(&mut buffer).await {
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
}

/// s3-accel as a process, configured by a file and the environment as a pod is,
/// its output kept.
struct Node {
    address: SocketAddr,
    admin: SocketAddr,
    logs: Arc<Mutex<String>>,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts the binary with `credentials` (the `[credentials]` tables) and `env`,
    /// once it listens. Nothing of the test machine's AWS setup leaks in.
    async fn start(origin: &TestOrigin, credentials: &str, env: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\norigin = \"{}\"\n\
             [cache]\ndir = \"{}\"\n{SMALL_CACHE}\n{credentials}\n",
            origin.url(),
            dir.path().join("cache").display()
        );
        let file = dir.path().join("s3-accel.toml");
        std::fs::write(&file, config).unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_s3-accel"));
        command
            .arg("--config")
            .arg(&file)
            .args(["--log-format", "json"])
            .env("HOME", dir.path())
            // As verbose as the AWS crates go: a secret they print is a secret logged.
            .env(
                "RUST_LOG",
                "debug,aws_config=trace,aws_sdk_sts=trace,aws_smithy_runtime=trace,aws_smithy_http_client=trace,hyper_util=info,h2=info",
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (name, _) in std::env::vars() {
            if name.starts_with("AWS_") || name == "S3_ACCEL_CONFIG" {
                command.env_remove(name);
            }
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        keep(child.stdout.take().unwrap(), logs.clone());
        keep(child.stderr.take().unwrap(), logs.clone());
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                return Self {
                    address,
                    admin: ([127, 0, 0, 1], admin_port).into(),
                    logs,
                    _child: child,
                    _dir: dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("s3-accel did not listen: {}", logs.lock().unwrap());
    }

    async fn admin(&self, path: &str) -> (StatusCode, String) {
        let reply = TestClient::default()
            .send(self.admin, &Call::get(path, &crate::support::Signing::Anonymous))
            .await
            .unwrap();
        (reply.status, reply.text().to_owned())
    }

    /// Waits (up to 30 s) for `/readyz` to say ready.
    async fn ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.admin("/readyz").await;
            if status == StatusCode::OK {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never ready: {body}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The log lines of refreshes that brought new keys.
    fn refreshes(&self) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|l| l.contains("fill credentials refreshed"))
            .map(str::to_owned)
            .collect()
    }
}

/// A projected service-account token, as kubelet writes it.
fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, token).unwrap();
    path
}

/// A node exchanging `token` at moto for keys of [`ROLE`], then `more` (tables).
async fn web_identity_node(origin: &TestOrigin, moto: &Moto, token: &Path, more: &str) -> Node {
    let credentials = format!(
        "[credentials]\nsource = \"web_identity\"\ntoken_file = \"{}\"\nrole_arn = \"{ROLE}\"\n{more}",
        token.display()
    );
    Node::start(origin, &credentials, &[("AWS_ENDPOINT_URL_STS", moto.url.clone())]).await
}

#[tokio::test]
async fn web_identity_keys_from_sts_sign_the_fills() {
    let (moto, (origin, data)) = tokio::join!(Moto::start(), origin_with(4 * MIB));
    moto.serve_keys_to(&origin, None);
    let dir = tempfile::tempdir().unwrap();
    let web_token = "eyJhbGciOiJSUzI1NiJ9.service-account-token-for-the-test";
    let token = token_file(dir.path(), web_token);
    let node = web_identity_node(&origin, &moto, &token, "").await;
    node.ready().await;
    let client = TestClient::default();
    for i in 0..4 {
        assert_eq!(read_mib(&client, node.address, &data, i).await, "miss");
    }
    // Cached: a re-read costs the origin no fill.
    let fills = origin.stats.fills();
    for i in 0..4 {
        assert_eq!(read_mib(&client, node.address, &data, i).await, "hit");
    }
    assert_eq!(origin.stats.fills(), fills);
    let keys = fill_keys(&origin);
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].starts_with("ASIA"), "an STS temporary key: {keys:?}");
    let secret = moto.secret(&keys[0]).await.expect("moto issued it");
    let (_, metrics) = node.admin("/metrics").await;
    assert!(
        metrics.contains("s3accel_credential_expiry_seconds{source=\"web_identity\"}"),
        "{metrics}"
    );
    assert_eq!(node.refreshes().len(), 1, "{}", node.logs());
    let (_, ready) = node.admin("/readyz").await;
    assert_no_secret(&[&node.logs(), &metrics, &ready], &[secret, web_token.into()]);
}

#[tokio::test]
async fn assumed_role_keys_rotate_before_they_expire() {
    // Web identity, then a role assumed with its keys for 6 s at a time: the
    // proxy must take new keys about every 3 s, while it reads.
    const LIFETIME: Duration = Duration::from_secs(6);
    let (moto, (origin, data)) = tokio::join!(Moto::start(), origin_with(24 * MIB));
    moto.serve_keys_to(&origin, Some(LIFETIME));
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "eyJhbGciOiJSUzI1NiJ9.another-service-account-token");
    let chained =
        "[credentials.assume_role]\nrole_arn = \"arn:aws:iam::123456789012:role/delegated\"\nduration = \"6s\"";
    let node = web_identity_node(&origin, &moto, &token, chained).await;
    node.ready().await;
    let client = TestClient::default();
    // 20 MiB, one every 600 ms: 12 s, two lifetimes.
    for i in 0..20 {
        assert_eq!(read_mib(&client, node.address, &data, i).await, "miss");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let keys = fill_keys(&origin);
    let refreshes = node.refreshes();
    println!(
        "{} fill keys over 12 s; refreshes logged:\n{}",
        keys.len(),
        refreshes.join("\n")
    );
    assert!(keys.len() >= 3, "keys rotated: {keys:?}\n{}", node.logs());
    // Every fill was signed with a key before its expiry: none was refused.
    assert!(origin.keys().expired.lock().unwrap().is_empty());
    assert!(origin.keys().unknown.lock().unwrap().is_empty());
    assert!(refreshes.len() >= 3, "{}", node.logs());
    let mut secrets = Vec::new();
    for key in &keys {
        secrets.push(moto.secret(key).await.expect("moto issued it"));
    }
    let (_, metrics) = node.admin("/metrics").await;
    assert_no_secret(&[&node.logs(), &metrics], &secrets);
}

/// A container-credentials endpoint (EKS Pod Identity's, CoreWeave's): each call
/// issues new keys that expire `lifetime` later, to a caller with the token.
struct Issuer {
    address: SocketAddr,
    /// The authorization token it accepts now.
    token: Arc<Mutex<String>>,
    calls: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    secrets: Arc<Mutex<Vec<String>>>,
}

impl Issuer {
    async fn start(origin: &TestOrigin, lifetime: Duration, token: &str) -> Self {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = Self {
            address: listener.local_addr().unwrap(),
            token: Arc::new(Mutex::new(token.to_owned())),
            calls: Arc::default(),
            refused: Arc::default(),
            secrets: Arc::default(),
        };
        let (keys, token, calls, refused, secrets) = (
            origin.keys().clone(),
            issuer.token.clone(),
            issuer.calls.clone(),
            issuer.refused.clone(),
            issuer.secrets.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (keys, token, calls, refused, secrets) = (
                    keys.clone(),
                    token.clone(),
                    calls.clone(),
                    refused.clone(),
                    secrets.clone(),
                );
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let authorized = request.headers().get("authorization").and_then(|v| v.to_str().ok())
                        == Some(token.lock().unwrap().as_str());
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    let body = if authorized {
                        let (access, secret) = (
                            format!("ASIACONTAINER{n:04}"),
                            format!("container-secret-{n}-{}", fastrand::u64(..)),
                        );
                        let expires = SystemTime::now() + lifetime;
                        keys.issue(&access, &secret, Some(expires));
                        secrets.lock().unwrap().push(secret.clone());
                        format!(
                            "{{\"AccessKeyId\":\"{access}\",\"SecretAccessKey\":\"{secret}\",\"Token\":\"container-session-{n}\",\"Expiration\":\"{}\"}}",
                            humantime::format_rfc3339_seconds(expires)
                        )
                    } else {
                        refused.fetch_add(1, Ordering::SeqCst);
                        String::new()
                    };
                    let status = if authorized {
                        StatusCode::OK
                    } else {
                        StatusCode::UNAUTHORIZED
                    };
                    let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    *response.status_mut() = status;
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        issuer
    }
}

#[tokio::test]
async fn container_endpoint_keys_are_refreshed_during_the_test() {
    const LIFETIME: Duration = Duration::from_secs(6);
    let (origin, data) = origin_with(20 * MIB).await;
    let issuer = Issuer::start(&origin, LIFETIME, "pod-identity-token-one").await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "pod-identity-token-one");
    let node = Node::start(
        &origin,
        "[credentials]\nsource = \"container\"",
        &[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("http://{}/v1/credentials", issuer.address),
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token.display().to_string()),
        ],
    )
    .await;
    node.ready().await;
    let client = TestClient::default();
    for i in 0..16 {
        if i == 8 {
            // The token rotates (kubelet rewrites it): the next refresh must read it.
            *issuer.token.lock().unwrap() = "pod-identity-token-two".into();
            token_file(dir.path(), "pod-identity-token-two");
        }
        assert_eq!(read_mib(&client, node.address, &data, i).await, "miss");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let keys = fill_keys(&origin);
    assert!(keys.len() >= 3, "keys rotated: {keys:?}\n{}", node.logs());
    assert!(keys.iter().all(|k| k.starts_with("ASIACONTAINER")), "{keys:?}");
    assert!(issuer.calls.load(Ordering::SeqCst) >= 3);
    // A refresh between the rotation of the token and of the file may be refused
    // once; the keys of after the rotation were fetched with the new token.
    assert!(issuer.refused.load(Ordering::SeqCst) <= 1);
    assert!(origin.keys().expired.lock().unwrap().is_empty());
    let (_, metrics) = node.admin("/metrics").await;
    let mut secrets = issuer.secrets.lock().unwrap().clone();
    secrets.extend(["pod-identity-token-one".to_owned(), "pod-identity-token-two".to_owned()]);
    secrets.extend((0..issuer.calls.load(Ordering::SeqCst)).map(|n| format!("container-session-{n}")));
    assert_no_secret(&[&node.logs(), &metrics], &secrets);
}

/// A Secret's directory as kubelet mounts it: each version in a directory of its
/// own, `..data` pointing at the current one, the key files pointing through it.
struct SecretDir {
    dir: tempfile::TempDir,
    versions: usize,
}

impl SecretDir {
    fn new(access: &str, secret: &str) -> Self {
        let mut dir = Self {
            dir: tempfile::tempdir().unwrap(),
            versions: 0,
        };
        dir.swap(access, secret);
        for file in ["accessKey", "secretKey"] {
            std::os::unix::fs::symlink(format!("..data/{file}"), dir.dir.path().join(file)).unwrap();
        }
        dir
    }

    /// Writes a new version and swaps `..data` to it in one rename.
    fn swap(&mut self, access: &str, secret: &str) {
        self.versions += 1;
        let name = format!("..2026_11_24_{:02}", self.versions);
        let version = self.dir.path().join(&name);
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("accessKey"), access).unwrap();
        std::fs::write(version.join("secretKey"), secret).unwrap();
        let staged = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&name, &staged).unwrap();
        std::fs::rename(&staged, self.dir.path().join("..data")).unwrap();
    }

    fn config(&self, poll: &str) -> String {
        format!(
            "origin = \"{{origin}}\"\n[credentials]\nsource = \"file\"\ndir = \"{}\"\npoll_interval = \"{poll}\"",
            self.dir.path().display()
        )
    }
}

async fn in_process(origin: &TestOrigin, config: &str) -> TestProxy {
    let config = config.replace("{origin}", &origin.url());
    TestProxy::start_in(tempfile::tempdir().unwrap(), &config, SMALL_CACHE).await
}

#[tokio::test]
async fn a_secret_directory_swapped_by_kubelet_is_taken_while_a_fill_completes() {
    // A slow origin: 1 MiB fills take about a second, so the read of 8 MiB spans
    // the swap, and the fills of its first chunks are in flight when the old key is
    // revoked.
    let origin = TestOrigin::start_with(s3_accel_testkit::OriginOptions {
        honor_conditionals: true,
        shaping: s3_accel_testkit::Shaping {
            per_connection: 1 << 20,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    origin.create_bucket(BUCKET).await;
    let data = object_bytes(15, 8 * MIB);
    origin.put(BUCKET, "model.bin", &data, &[]).await;
    origin.keys().issue("AKIASECRETONE", "secret-dir-key-one", None);
    let mut secret = SecretDir::new("AKIASECRETONE", "secret-dir-key-one");
    // Two chunks read ahead: the later chunks' fills start after the swap.
    let config = secret.config("100ms").replace("{origin}", &origin.url());
    let cache = format!("{SMALL_CACHE}\nread_ahead = 2");
    let proxy = TestProxy::start_in(tempfile::tempdir().unwrap(), &config, &cache).await;
    let whole = Call::get(&format!("/{BUCKET}/model.bin"), &TestOrigin::signing()).header("range", "bytes=0-");
    let reading = {
        let (client, address) = (proxy.client.clone(), proxy.address);
        tokio::spawn(async move { client.send(address, &whole).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    origin.keys().issue("AKIASECRETTWO", "secret-dir-key-two", None);
    secret.swap("AKIASECRETTWO", "secret-dir-key-two");
    // Taken within a poll or two; then the old key stops working.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(origin.stats.open_bodies.load(Ordering::SeqCst) > 0, "fills in flight");
    origin.keys().revoke("AKIASECRETONE");
    let reply = reading.await.unwrap();
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT, "{}", reply.text());
    assert_eq!(sha256_hex(&reply.body), sha256_hex(&data));
    assert_eq!(fill_keys(&origin), ["AKIASECRETONE", "AKIASECRETTWO"]);
    // The swap was taken by polling, not by a fill refused for the old key.
    assert!(origin.keys().unknown.lock().unwrap().is_empty());
    // Cached whole: a re-read costs the origin nothing.
    let fills = origin.stats.fills();
    let again = proxy
        .send(&Call::get(&format!("/{BUCKET}/model.bin"), &TestOrigin::signing()).header("range", "bytes=0-"))
        .await
        .unwrap();
    assert_eq!(sha256_hex(&again.body), sha256_hex(&data));
    assert_eq!(origin.stats.fills(), fills);
}

#[tokio::test]
async fn a_refused_key_is_refreshed_once_and_the_fill_sent_again() {
    let logs = captured_logs();
    let (origin, data) = origin_with(4 * MIB).await;
    origin.keys().issue("AKIAREFUSEDONE", "refused-key-one", None);
    // Polled hourly: only the origin's refusal can make the proxy read the new keys.
    let mut secret = SecretDir::new("AKIAREFUSEDONE", "refused-key-one");
    let proxy = in_process(&origin, &secret.config("1h")).await;
    let client = TestClient::default();
    // The first read of an object is its probe, with the client's signature.
    assert_eq!(read_mib(&client, proxy.address, &data, 0).await, "miss");
    origin.keys().issue("AKIAREFUSEDTWO", "refused-key-two", None);
    secret.swap("AKIAREFUSEDTWO", "refused-key-two");
    origin.keys().revoke("AKIAREFUSEDONE");
    assert_eq!(read_mib(&client, proxy.address, &data, 1).await, "miss");
    assert_eq!(read_mib(&client, proxy.address, &data, 1).await, "hit");
    let refused = origin.keys().unknown.lock().unwrap().clone();
    assert!(
        !refused.is_empty() && refused.iter().all(|k| k == "AKIAREFUSEDONE"),
        "{refused:?}"
    );
    assert_eq!(fill_keys(&origin), ["AKIAREFUSEDTWO"]);
    // Refused again with nothing newer to take: one more refresh, then an error to
    // the client, not a loop.
    origin.keys().revoke("AKIAREFUSEDTWO");
    let before = origin.stats.fills();
    let reply = proxy.send(&ranged(2)).await.unwrap();
    assert_ne!(reply.status, StatusCode::PARTIAL_CONTENT);
    assert!(
        origin.stats.fills() - before <= 2,
        "{} fills",
        origin.stats.fills() - before
    );
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert_no_secret(
        &[&logs, &metrics, reply.text()],
        &["refused-key-one".into(), "refused-key-two".into()],
    );
}

#[tokio::test]
async fn a_source_that_may_recover_leaves_the_node_not_ready_then_serves() {
    let logs = captured_logs();
    let (origin, data) = origin_with(2 * MIB).await;
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("credentials.json");
    let config = format!(
        "origin = \"{{origin}}\"\n[credentials]\nsource = \"process\"\ncommand = \"cat {}\"",
        output.display()
    );
    let proxy = in_process(&origin, &config).await;
    let (status, body) = admin_get(&proxy, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("fill credentials (source process): none valid"), "{body}");
    // Not ready is not down: a read is relayed, uncached, with the client's signature.
    let reply = proxy.send(&ranged(0)).await.unwrap();
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        reply.header("x-s3-accel-cache"),
        Some("bypass; reason=no_fill_credentials")
    );
    // Malformed output: still not ready, named.
    std::fs::write(&output, "{\"Version\": 1, \"AccessKeyId\": \"AKIAPROCESS\"").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = admin_get(&proxy, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    origin.keys().issue("AKIAPROCESS", "process-secret-key", None);
    std::fs::write(
        &output,
        "{\"Version\": 1, \"AccessKeyId\": \"AKIAPROCESS\", \"SecretAccessKey\": \"process-secret-key\"}",
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while admin_get(&proxy, "/readyz").await.0 != StatusCode::OK {
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = TestClient::default();
    for i in 0..2 {
        assert_eq!(read_mib(&client, proxy.address, &data, i).await, "miss");
        assert_eq!(read_mib(&client, proxy.address, &data, i).await, "hit");
    }
    assert_eq!(fill_keys(&origin), ["AKIAPROCESS"]);
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert_no_secret(&[&logs, &metrics], &["process-secret-key".into()]);
}
