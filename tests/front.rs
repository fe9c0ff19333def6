//! The transparent front: through s3-accel, every accepted request looks exactly as
//! it does against the origin directly; everything else is refused before the origin.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::support::client::Call;
use crate::support::{fault, object_bytes, sha256_hex, Credentials, Reply, Signing, TestOrigin, TestProxy};

const BUCKET: &str = "bucket";
/// Raw (percent-encoded) keys: spaces, `+`, unicode, an empty segment, an empty object.
const KEYS: [&str; 6] = [
    "plain.bin",
    "dir/with%20space.txt",
    "a+b.txt",
    "unicod%C3%A9/%E2%9C%93.txt",
    "dir//double",
    "empty",
];

struct Fixture {
    origin: TestOrigin,
    proxy: TestProxy,
}

async fn fixture() -> Fixture {
    let origin = TestOrigin::start(&["accel.test"]).await;
    origin.create_bucket(BUCKET).await;
    for (i, key) in KEYS.iter().enumerate() {
        let len = if *key == "empty" { 0 } else { 3_000 + i * 77_777 };
        let data = object_bytes(i as u64, len);
        origin
            .put(
                BUCKET,
                key,
                &data,
                &[("content-type", "application/x-test"), ("x-amz-meta-owner", "team-a")],
            )
            .await;
    }
    let proxy = TestProxy::start(&format!("origin = \"{}\"\ndomains = [\"accel.test\"]", origin.url())).await;
    Fixture { origin, proxy }
}

/// What must be equal between a direct and a proxied response: status, every
/// end-to-end header but the per-request ones, and the body's hash.
fn comparable(reply: &Reply) -> (u16, Vec<(String, String)>, String) {
    let mut headers: Vec<(String, String)> = reply
        .headers
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "date" | "x-amz-request-id" | "x-amz-id-2" | "connection" | "keep-alive" | "x-s3-accel-cache"
            )
        })
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("<bytes>").to_owned()))
        .collect();
    headers.sort();
    (reply.status.as_u16(), headers, sha256_hex(&reply.body))
}

async fn assert_same(f: &Fixture, call: &Call) -> Reply {
    let direct = f.origin.send(call).await;
    let proxied = f.proxy.send(call).await.unwrap_or_else(|e| panic!("{call:?}: {e}"));
    assert_eq!(
        comparable(&proxied),
        comparable(&direct),
        "{call:?}\nproxied: {}\ndirect: {}",
        proxied.text(),
        direct.text()
    );
    assert!(
        proxied.header("x-amz-request-id").is_some_and(|id| !id.is_empty()),
        "{call:?}: no request id"
    );
    proxied
}

#[tokio::test]
async fn read_matrix_is_identical_through_the_proxy() {
    let f = fixture().await;
    let ranges = [
        None,
        Some("bytes=0-99"),
        Some("bytes=100-"),
        Some("bytes=-500"),
        Some("bytes=0-999999999"),
        Some("bytes=99999999-"),
        Some("bytes=junk"),
    ];
    let signings = [TestOrigin::signing(), Signing::Presigned(TestOrigin::credentials())];
    let mut statuses = std::collections::BTreeSet::new();
    for key in KEYS {
        for signing in &signings {
            for method in [Method::GET, Method::HEAD] {
                for range in ranges {
                    let mut call = Call::new(method.clone(), &format!("/{BUCKET}/{key}"), signing);
                    if let Some(range) = range {
                        // boto3 signs Range; a presigned URL cannot cover it.
                        call = match signing {
                            Signing::Header(_) => call.header("range", range),
                            _ => call.unsigned_header("range", range),
                        };
                    }
                    let reply = assert_same(&f, &call).await;
                    statuses.insert(reply.status.as_u16());
                }
            }
        }
    }
    // The matrix really exercised full reads, ranges and unsatisfiable ranges.
    for expected in [200, 206, 416] {
        assert!(statuses.contains(&expected), "no {expected} in {statuses:?}");
    }
}

#[tokio::test]
async fn bodies_are_the_origin_bytes() {
    let f = fixture().await;
    for (i, key) in KEYS.iter().enumerate() {
        let reply = f
            .proxy
            .send(&Call::get(&format!("/{BUCKET}/{key}"), &TestOrigin::signing()))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{key}: {}", reply.text());
        let len = if *key == "empty" { 0 } else { 3_000 + i * 77_777 };
        assert_eq!(
            sha256_hex(&reply.body),
            sha256_hex(&object_bytes(i as u64, len)),
            "{key}"
        );
        assert_eq!(reply.header("x-amz-meta-owner"), Some("team-a"));
    }
    // A range costs the origin exactly the range: the front forwards, it does not widen.
    let before = f.origin.stats.body_bytes();
    let ranged = Call::get(&format!("/{BUCKET}/plain.bin"), &TestOrigin::signing()).header("range", "bytes=10-19");
    let reply = f.proxy.send(&ranged).await.unwrap();
    assert_eq!(f.origin.stats.body_bytes() - before, 10);
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&reply.body[..], &object_bytes(0, 3_000)[10..20]);
    assert_eq!(reply.header("content-range"), Some("bytes 10-19/3000"));
}

#[tokio::test]
async fn query_variants_match_the_origin() {
    let f = fixture().await;
    for query in [
        "partNumber=1",
        "response-content-type=text%2Fplain&response-cache-control=no-cache",
        "x-id=GetObject",
    ] {
        assert_same(
            &f,
            &Call::get(&format!("/{BUCKET}/plain.bin?{query}"), &TestOrigin::signing()),
        )
        .await;
    }
}

#[tokio::test]
async fn denials_and_missing_objects_pass_through() {
    let f = fixture().await;
    let wrong = Signing::Header(Credentials::new(crate::support::origin::ACCESS_KEY, "not-the-secret"));
    let cases = [
        (
            Call::get(&format!("/{BUCKET}/plain.bin"), &wrong),
            StatusCode::FORBIDDEN,
        ),
        (
            Call::get(
                &format!("/{BUCKET}/plain.bin"),
                &Signing::Presigned(Credentials::new("AKIAUNKNOWN", "x")),
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            Call::get(&format!("/{BUCKET}/plain.bin"), &Signing::Anonymous),
            StatusCode::FORBIDDEN,
        ),
        (
            Call::get(&format!("/{BUCKET}/no-such-key"), &TestOrigin::signing()),
            StatusCode::NOT_FOUND,
        ),
        (
            Call::get("/no-such-bucket/key", &TestOrigin::signing()),
            StatusCode::NOT_FOUND,
        ),
        (
            Call::head(&format!("/{BUCKET}/no-such-key"), &TestOrigin::signing()),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (call, status) in cases {
        let reply = assert_same(&f, &call).await;
        assert_eq!(reply.status, status, "{call:?}: {}", reply.text());
    }
}

#[tokio::test]
async fn virtual_hosted_style_reaches_the_same_object() {
    let f = fixture().await;
    let host = format!("{BUCKET}.accel.test:{}", f.proxy.address.port());
    let reply = f
        .proxy
        .send(&Call::get("/plain.bin", &TestOrigin::signing()).host(&host))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(sha256_hex(&reply.body), sha256_hex(&object_bytes(0, 3_000)));
    // A bucket-level request in virtual-hosted style is a listing: refused.
    let before = f.origin.stats.requests();
    let reply = f
        .proxy
        .send(&Call::get("/", &TestOrigin::signing()).host(&host))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(f.origin.stats.requests(), before);
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let f = fixture().await;
    let reply = f
        .proxy
        .send(&Call::get(&format!("/{BUCKET}/plain.bin"), &TestOrigin::signing()).h2())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(sha256_hex(&reply.body), sha256_hex(&object_bytes(0, 3_000)));
}

#[tokio::test]
async fn every_other_verb_is_refused_before_the_origin() {
    let f = fixture().await;
    let signing = TestOrigin::signing();
    let refused = [
        (Method::PUT, format!("/{BUCKET}/plain.bin")),
        (Method::PUT, format!("/{BUCKET}/copy?x-id=CopyObject")),
        (Method::POST, format!("/{BUCKET}/big?uploads")),
        (Method::PUT, format!("/{BUCKET}/big?partNumber=1&uploadId=abc")),
        (Method::DELETE, format!("/{BUCKET}/plain.bin")),
        (Method::DELETE, format!("/{BUCKET}")),
        (Method::POST, format!("/{BUCKET}?delete")),
        (Method::PUT, "/new-bucket".to_string()),
        (Method::GET, "/".to_string()),
        (Method::GET, format!("/{BUCKET}")),
        (Method::GET, format!("/{BUCKET}/?list-type=2&prefix=dir")),
        (Method::GET, format!("/{BUCKET}?versions")),
        (Method::GET, format!("/{BUCKET}/plain.bin?acl")),
        (Method::GET, format!("/{BUCKET}/plain.bin?tagging")),
        (Method::GET, format!("/{BUCKET}/plain.bin?attributes")),
        (Method::GET, format!("/{BUCKET}/big?uploadId=abc")),
        (Method::HEAD, format!("/{BUCKET}")),
        (Method::OPTIONS, format!("/{BUCKET}/plain.bin")),
        (Method::PATCH, format!("/{BUCKET}/plain.bin")),
    ];
    let before = f.origin.stats.requests();
    for (method, target) in refused {
        let reply = f
            .proxy
            .send(&Call::new(method.clone(), &target, &signing))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {target}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD"), "{method} {target}");
        if method != Method::HEAD {
            assert_eq!(reply.header("content-type"), Some("application/xml"));
            assert_eq!(
                reply.xml("Code").as_deref(),
                Some("MethodNotAllowed"),
                "{method} {target}"
            );
            assert_eq!(reply.xml("Method").as_deref(), Some(method.as_str()));
            assert_eq!(reply.xml("RequestId").as_deref(), reply.header("x-amz-request-id"));
        }
    }
    let copy =
        Call::new(Method::PUT, &format!("/{BUCKET}/copy"), &signing).header("x-amz-copy-source", "/bucket/plain.bin");
    assert_eq!(
        f.proxy.send(&copy).await.unwrap().status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        f.origin.stats.requests(),
        before,
        "the origin saw a refused request: {:?}",
        f.origin.stats.log.lock().unwrap()
    );
    // Nothing was lost: the object a refused DELETE named is still there.
    let reply = f
        .proxy
        .send(&Call::get(&format!("/{BUCKET}/plain.bin"), &signing))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn malformed_requests_are_400_before_the_origin() {
    let f = fixture().await;
    let long_key = "k".repeat(1025);
    let cases = [
        (format!("/{BUCKET}/bad%zzescape"), "InvalidURI"),
        (format!("/{BUCKET}/%FF%FEnot-utf8"), "InvalidURI"),
        (format!("/{BUCKET}/{long_key}"), "KeyTooLongError"),
        (format!("/{BUCKET}/plain.bin?partNumber=abc"), "InvalidArgument"),
        (
            format!("/{BUCKET}/plain.bin?versionId=1&versionId=2"),
            "InvalidArgument",
        ),
    ];
    let before = f.origin.stats.requests();
    for (target, code) in cases {
        let reply = f.proxy.send(&Call::get(&target, &TestOrigin::signing())).await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{target}");
        assert_eq!(reply.xml("Code").as_deref(), Some(code), "{target}: {}", reply.text());
        assert_eq!(reply.xml("RequestId").as_deref(), reply.header("x-amz-request-id"));
    }
    assert_eq!(f.origin.stats.requests(), before);
}

#[tokio::test]
async fn hosts_select_regions_and_unknown_hosts_are_refused() {
    let origin = TestOrigin::start(&[]).await;
    origin.create_bucket(BUCKET).await;
    let data = object_bytes(7, 10_000);
    origin.put(BUCKET, "k", &data, &[]).await;
    let config = format!(
        "[[regions]]\nname = \"ord1\"\norigin = \"{}\"\nhosts = [\"accel-object.ord1.test\"]\n\
         [[regions]]\nname = \"lga1\"\norigin = \"http://{}\"\nhosts = [\"accel-object.lga1.test\"]\n",
        origin.url(),
        fault::refusing().await
    );
    let proxy = TestProxy::start(&config).await;
    let port = proxy.address.port();
    let reply = proxy
        .send(
            &Call::get(&format!("/{BUCKET}/k"), &TestOrigin::signing()).host(&format!("accel-object.ord1.test:{port}")),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(sha256_hex(&reply.body), sha256_hex(&data));
    // The other region's origin is down: that host, and only that one, fails.
    let reply = proxy
        .send(
            &Call::get(&format!("/{BUCKET}/k"), &TestOrigin::signing()).host(&format!("accel-object.lga1.test:{port}")),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let before = origin.stats.requests();
    let reply = proxy
        .send(&Call::get(&format!("/{BUCKET}/k"), &TestOrigin::signing()).host("elsewhere.test"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.xml("Code").as_deref(), Some("InvalidRequest"));
    assert!(
        reply.xml("Message").unwrap().contains("elsewhere.test"),
        "{}",
        reply.text()
    );
    assert_eq!(origin.stats.requests(), before);
}

#[tokio::test]
async fn unreachable_origin_is_a_quick_503() {
    let proxy = TestProxy::for_origin(&format!("http://{}", fault::refusing().await)).await;
    let started = Instant::now();
    let reply = proxy
        .send(&Call::get(&format!("/{BUCKET}/k"), &TestOrigin::signing()))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.xml("Code").as_deref(), Some("ServiceUnavailable"));
    assert_eq!(reply.xml("RequestId").as_deref(), reply.header("x-amz-request-id"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn silent_origin_times_out_with_503() {
    let config = format!(
        "origin = \"http://{}\"\n[origin_client]\nfirst_byte_timeout = \"300ms\"",
        fault::silent().await
    );
    let proxy = TestProxy::start(&config).await;
    let started = Instant::now();
    let reply = proxy
        .send(&Call::get(&format!("/{BUCKET}/k"), &TestOrigin::signing()))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        reply.xml("Message").unwrap().contains("no response head"),
        "{}",
        reply.text()
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(10),
        "took {elapsed:?}"
    );
}

#[tokio::test]
async fn origin_reset_mid_body_cuts_the_relayed_response() {
    let proxy = TestProxy::for_origin(&format!("http://{}", fault::truncating(1 << 20, 64 << 10).await)).await;
    // Several ranges are never cached: the origin's body is relayed as it comes.
    let call = Call::get(&format!("/{BUCKET}/k"), &TestOrigin::signing()).header("range", "bytes=0-1,5-6");
    let error = proxy
        .send(&call)
        .await
        .expect_err("a truncated origin body must not look complete");
    assert!(error.contains("body failed"), "{error}");
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let origin = fault::slow(Duration::from_millis(600), b"slow but complete").await;
    let mut proxy = TestProxy::for_origin(&format!("http://{origin}")).await;
    let address = proxy.address;
    let client = proxy.client.clone();
    let in_flight = tokio::spawn(async move {
        client
            .send(address, &Call::get(&format!("/{BUCKET}/k"), &Signing::Anonymous))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Stopped accepting...
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "still accepting after shutdown began"
    );
    // ...but the request already in flight completes.
    let reply = in_flight.await.unwrap().unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(&reply.body[..], b"slow but complete");
    assert_eq!(reply.header("x-amz-request-id"), Some("SLOWORIGIN"));
    tokio::time::timeout(Duration::from_secs(5), proxy.stopped())
        .await
        .expect("drain finished");
}

/// On SIGTERM a node leaves rotation before it stops: `/readyz` answers 503 at once
/// while new connections are still served (a load balancer or a route needs time to
/// stop sending them), and only after `server.withdraw_grace` does it stop accepting.
#[tokio::test]
async fn shutdown_withdraws_from_rotation_before_it_stops_accepting() {
    let origin = TestOrigin::start(&[]).await;
    origin.create_bucket(BUCKET).await;
    let data = object_bytes(41, 100_000);
    origin.put(BUCKET, "k", &data, &[]).await;
    let grace = Duration::from_millis(1500);
    let mut proxy = TestProxy::start(&format!(
        "origin = \"{}\"\n[server]\nwithdraw_grace = \"{}ms\"",
        origin.url(),
        grace.as_millis()
    ))
    .await;
    let (status, _) = crate::ops::admin_get(&proxy, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let call = Call::get(&format!("/{BUCKET}/k"), &Signing::Presigned(TestOrigin::credentials()));
    let began = Instant::now();
    proxy.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, ready) = crate::ops::admin_get(&proxy, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert!(ready.contains("withdrawing"), "{ready}");
    // Still serving, on a new connection, while it is withdrawn.
    let reply = crate::support::TestClient::default()
        .send(proxy.address, &call)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(sha256_hex(&reply.body), sha256_hex(&data));
    assert!(began.elapsed() < grace, "the check came too late to mean anything");
    // Then no longer accepting.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(proxy.address).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting long after the grace");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(began.elapsed() >= grace, "stopped accepting before the grace ended");
    tokio::time::timeout(Duration::from_secs(5), proxy.stopped())
        .await
        .expect("drain finished");
}

/// Every `.toml` under `dir`, at any depth.
fn toml_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(toml_files(&path));
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
    found
}

/// The examples in config/ and the ConfigMaps in deploy/ are configs the binary accepts.
#[tokio::test]
async fn every_shipped_config_file_loads() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let files: Vec<_> = ["config", "deploy"]
        .iter()
        .flat_map(|dir| toml_files(&root.join(dir)))
        .collect();
    // The components' snippets (credentials, peer TLS) are appended to a region's
    // config, as their kustomization.yaml says; the Secret directory is a stand-in here.
    let secret_dir = tempfile::tempdir().unwrap();
    std::fs::write(secret_dir.path().join("accessKey"), "AKIASNIPPET").unwrap();
    std::fs::write(secret_dir.path().join("secretKey"), "snippet-secret").unwrap();
    let region = root.join("deploy/kubernetes/overlays/ord1/s3-accel.toml");
    for path in &files {
        let snippet = ["deploy/kubernetes/credentials", "deploy/kubernetes/peer-tls"]
            .iter()
            .any(|component| path.starts_with(root.join(component)));
        let loaded = if snippet {
            let snippet = std::fs::read_to_string(path).unwrap().replace(
                "/var/run/secrets/s3-accel/keys",
                &secret_dir.path().display().to_string(),
            );
            let text = format!("{}\n{snippet}", std::fs::read_to_string(&region).unwrap());
            s3_accel::Config::from_toml(&text)
        } else {
            let cli = s3_accel::Cli {
                config: Some(path.clone()),
                ..Default::default()
            };
            s3_accel::Config::load(&cli)
        };
        loaded.unwrap_or_else(|e| panic!("{}: {}", path.display(), s3_accel::error::error_chain(&e)));
    }
    assert!(
        files.iter().any(|p| p.starts_with(root.join("config"))),
        "no config file in config/"
    );
}

/// Sends `head` (a request head, CRLF-terminated) as raw bytes and reads the answer
/// until the server closes.
async fn raw_exchange(address: std::net::SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn ambiguous_hosts_are_refused_before_the_origin() {
    let origin = TestOrigin::start(&[]).await;
    origin.create_bucket(BUCKET).await;
    origin.put(BUCKET, "k", &object_bytes(1, 100), &[]).await;
    let proxy = TestProxy::for_origin(&origin.url()).await;
    let host = proxy.address.to_string();
    let before = origin.stats.requests();
    for (what, head) in [
        (
            "two Host headers",
            format!("GET /{BUCKET}/k HTTP/1.1\r\nHost: {host}\r\nHost: evil.test\r\nConnection: close\r\n\r\n"),
        ),
        (
            "userinfo",
            format!("GET /{BUCKET}/k HTTP/1.1\r\nHost: user@{host}\r\nConnection: close\r\n\r\n"),
        ),
        (
            "an absolute target naming another host",
            format!("GET http://other.test/{BUCKET}/k HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        ),
    ] {
        let answer = raw_exchange(proxy.address, &head).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
        assert!(answer.contains("<Code>InvalidRequest</Code>"), "{what}: {answer}");
        assert!(answer.contains("x-s3-accel-cache: error"), "{what}: {answer}");
    }
    assert_eq!(origin.stats.requests(), before, "nothing reached the origin");
    // One plain Host still works, as does an absolute target that agrees with it.
    let answer = raw_exchange(
        proxy.address,
        &format!("GET http://{host}/{BUCKET}/k HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 403"),
        "an unsigned read, the origin's answer: {answer}"
    );
}
