//! Hits without an origin round trip, opt-in: grants recorded from the origin's
//! decisions, served for a bounded window, and never to another principal.

use http::StatusCode;
use s3_accel_testkit::access::{READER_KEY, READER_SECRET};

use crate::ops::{admin_get, admin_post, sample};
use crate::support::client::Call;
use crate::support::signing::sign_request;
use crate::support::{get, object_bytes, outcome, sha256_hex, Credentials, Signing, TestOrigin, TestProxy};

const SMALL: &str = "memory = \"64MiB\"\ndisk = \"0\"\nchunk_size = \"1MiB\"";

async fn proxy_with(origin: &TestOrigin, auth: &str) -> TestProxy {
    TestProxy::start_in(
        tempfile::tempdir().unwrap(),
        &format!("origin = \"{}\"\n[auth]\n{auth}", origin.url()),
        SMALL,
    )
    .await
}

/// A presigned URL for `path` on `proxy`, made once: its request-target, to be sent
/// again byte for byte.
fn presigned(proxy: &TestProxy, path: &str, credentials: &Credentials) -> String {
    presigned_for("GET", proxy, path, credentials)
}

fn presigned_for(method: &str, proxy: &TestProxy, path: &str, credentials: &Credentials) -> String {
    let host = proxy.address.to_string();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{host}{path}"))
        .header("host", &host)
        .body(())
        .unwrap();
    sign_request(&mut request, &Signing::Presigned(credentials.clone()));
    request.uri().path_and_query().unwrap().to_string()
}

fn url(target: &str) -> Call {
    Call::get(target, &Signing::Anonymous)
}

async fn origin_with(bucket: &str, key: &str, size: usize) -> (TestOrigin, Vec<u8>) {
    let origin = TestOrigin::honoring().await;
    origin.create_bucket(bucket).await;
    let data = object_bytes(41, size);
    origin.put(bucket, key, &data, &[]).await;
    (origin, data)
}

#[tokio::test]
async fn a_presigned_url_read_again_is_served_without_the_origin() {
    let (origin, data) = origin_with("models", "m.bin", 3 << 20).await;
    let logs = crate::ops::captured_logs();
    let proxy = proxy_with(&origin, "grants = [\"presigned\"]").await;
    let target = presigned(&proxy, "/models/m.bin", &TestOrigin::credentials());
    let first = get(&proxy, url(&target)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(&first.body[..], &data[..]);
    origin.stats.settled().await;
    let requests = origin.stats.requests();
    for _ in 0..3 {
        let again = get(&proxy, url(&target)).await;
        assert_eq!(&again.body[..], &data[..]);
        assert_eq!(outcome(&again), "hit");
    }
    assert_eq!(
        origin.stats.requests(),
        requests,
        "the same URL again: no origin request"
    );
    // The access log names what authorized each answer.
    let logged = |reply: &crate::support::Reply| {
        let id = reply.header("x-amz-request-id").unwrap().to_owned();
        let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        logs.lines()
            .find(|line| line.contains("\"target\":\"access\"") && line.contains(&id))
            .map(str::to_owned)
    };
    let again = get(&proxy, url(&target)).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let line = logged(&again).expect("an access log line");
    assert!(line.contains("\"authorized\":\"presigned\""), "{line}");
    let line = logged(&first).expect("an access log line");
    assert!(line.contains("\"authorized\":\"origin\""), "{line}");
    // Another URL for the same object (another key's) is the origin's to decide.
    origin.policy().set_readable("models", true);
    let other = presigned(&proxy, "/models/m.bin", &Credentials::new(READER_KEY, READER_SECRET));
    assert_ne!(other, target);
    let reply = get(&proxy, url(&other)).await;
    assert_eq!(&reply.body[..], &data[..]);
    assert_eq!(origin.stats.requests(), requests + 1);
    // SSE-C: never cached, grants or not; every such read is the origin's.
    for _ in 0..2 {
        let before = origin.stats.requests();
        let sse_c = url(&target)
            .unsigned_header("x-amz-server-side-encryption-customer-algorithm", "AES256")
            .unsigned_header(
                "x-amz-server-side-encryption-customer-key",
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            )
            .unsigned_header(
                "x-amz-server-side-encryption-customer-key-md5",
                "zNHFy8JFGCOTOKE+dRdFWg==",
            );
        let reply = get(&proxy, sse_c).await;
        assert_eq!(outcome(&reply), "bypass; reason=sse_c");
        assert_eq!(origin.stats.requests(), before + 1);
    }
    let requests = origin.stats.requests();
    assert_eq!(outcome(&get(&proxy, url(&target)).await), "hit");
    assert_eq!(origin.stats.requests(), requests, "the grant still serves");
    // A flush: every URL asks the origin again.
    let (status, _) = admin_post(&proxy, "/admin/grants/flush").await;
    assert_eq!(status, StatusCode::OK);
    get(&proxy, url(&target)).await;
    assert_eq!(origin.stats.requests(), requests + 1);
}

#[tokio::test]
async fn another_key_a_private_bucket_and_an_expired_url_never_get_a_cached_byte() {
    let (origin, data) = origin_with("models", "m.bin", 2 << 20).await;
    origin.put("models", "other.bin", &data, &[]).await;
    origin.policy().set_readable("models", true);
    let proxy = proxy_with(&origin, "grants = [\"presigned\"]").await;
    let reader = Credentials::new(READER_KEY, READER_SECRET);
    let target = presigned(&proxy, "/models/m.bin", &reader);
    assert_eq!(&get(&proxy, url(&target)).await.body[..], &data[..]);
    let requests = origin.stats.requests();
    assert_eq!(outcome(&get(&proxy, url(&target)).await), "hit");
    assert_eq!(origin.stats.requests(), requests);

    // A key the origin does not know, on the granted object: the origin's 403.
    let stranger = presigned(&proxy, "/models/m.bin", &Credentials::new("AKIASTRANGER", "nope"));
    let reply = get(&proxy, url(&stranger)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(!reply.body.windows(16).any(|w| w == &data[..16]), "no cached byte");

    // A HEAD's presigned URL sent as a GET: another grant key (the method is in
    // it), so the origin decides, and refuses the signature.
    let head = presigned_for("HEAD", &proxy, "/models/m.bin", &reader);
    let requests = origin.stats.requests();
    let reply = get(&proxy, url(&head)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "a HEAD signature reused on GET");
    assert_eq!(origin.stats.requests(), requests + 1, "the origin decided");
    origin.policy().set_readable("models", true);
    assert_eq!(&get(&proxy, url(&target)).await.body[..], &data[..]);

    // The bucket is made private for the reader. Its next forwarded request is
    // refused, and from then on no grant of the bucket is served.
    origin.policy().set_readable("models", false);
    let elsewhere = presigned(&proxy, "/models/other.bin", &reader);
    assert_eq!(get(&proxy, url(&elsewhere)).await.status, StatusCode::FORBIDDEN);
    let reply = get(&proxy, url(&target)).await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "a granted URL after its bucket's 403"
    );

    // An expired URL, and one whose scope is malformed: refused here, the origin
    // never asked.
    let requests = origin.stats.requests();
    let refusals = || async {
        let (_, metrics) = admin_get(&proxy, "/metrics").await;
        sample(&metrics, "s3accel_local_refusals_total", "reason=\"expired\"").unwrap_or(0.0)
    };
    let refused_before = refusals().await;
    let fresh = presigned(&proxy, "/models/m.bin", &TestOrigin::credentials());
    let date = fresh.split("X-Amz-Date=").nth(1).unwrap()[..16].to_owned();
    let expired = fresh
        .replace(&date, "20200101T000000Z")
        .replace(&format!("%2F{}%2F", &date[..8]), "%2F20200101%2F");
    let reply = get(&proxy, url(&expired)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.text().contains("<Code>AccessDenied</Code>"), "{}", reply.text());
    assert!(reply.text().contains("Request has expired"), "{}", reply.text());
    let bad_scope = fresh.replace("%2Fs3%2Faws4_request", "%2Fsts%2Faws4_request");
    let reply = get(&proxy, url(&bad_scope)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.text().contains("AuthorizationQueryParametersError"),
        "{}",
        reply.text()
    );
    assert_eq!(origin.stats.requests(), requests, "refused before the origin");
    assert!(refusals().await > refused_before, "local refusals are counted");
}

#[tokio::test]
async fn anonymous_grants_serve_unsigned_reads_of_public_buckets_only() {
    let (origin, data) = origin_with("public", "p.bin", 2 << 20).await;
    origin.create_bucket("private").await;
    origin.put("private", "p.bin", &data, &[]).await;
    origin.policy().set_public("public", true);
    let proxy = proxy_with(
        &origin,
        "grants = [\"anonymous\", \"presigned\"]\nanonymous_buckets = [\"public\", \"private\"]",
    )
    .await;
    let unsigned = url("/public/p.bin");
    assert_eq!(&get(&proxy, unsigned.clone()).await.body[..], &data[..]);
    let requests = origin.stats.requests();
    assert_eq!(outcome(&get(&proxy, unsigned.clone()).await), "hit");
    assert_eq!(
        origin.stats.requests(),
        requests,
        "an unsigned read again: no origin request"
    );
    // A signed read of the same object never uses the anonymous grant.
    let signed = Call::get("/public/p.bin", &Signing::Header(TestOrigin::credentials()));
    assert_eq!(&get(&proxy, signed).await.body[..], &data[..]);
    assert_eq!(origin.stats.requests(), requests + 1);
    // A presigned grant of a private bucket never serves an unsigned read: the
    // origin refuses it (the bucket is listed, but the origin decides).
    let target = presigned(&proxy, "/private/p.bin", &TestOrigin::credentials());
    assert_eq!(&get(&proxy, url(&target)).await.body[..], &data[..]);
    let reply = get(&proxy, url("/private/p.bin")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_grant_past_half_its_ttl_is_renewed_in_the_background_and_sees_a_change() {
    use std::time::Duration;
    let (origin, data) = origin_with("models", "m.bin", 1 << 20).await;
    origin.put("models", "n.bin", &data, &[]).await;
    origin.policy().set_readable("models", true);
    let proxy = proxy_with(&origin, "grants = [\"presigned\"]\ngrant_ttl = \"4s\"").await;
    let target = presigned(&proxy, "/models/m.bin", &Credentials::new(READER_KEY, READER_SECRET));
    assert_eq!(&get(&proxy, url(&target)).await.body[..], &data[..]);
    origin.stats.settled().await;
    // Past half the TTL: served at once from the grant, and asked about again in
    // the background (the origin answers 304: the grant is renewed).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let requests = origin.stats.requests();
    let reply = get(&proxy, url(&target)).await;
    assert_eq!((&reply.body[..], outcome(&reply)), (&data[..], "hit"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(origin.stats.requests(), requests + 1, "one background probe");
    // The key loses its access. Past the first grant's TTL, the renewed grant still
    // serves (the documented window); once it has lapsed, the origin's 403.
    origin.policy().set_readable("models", false);
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let reply = get(&proxy, url(&target)).await;
    assert_eq!(reply.status, StatusCode::OK, "served by the renewed grant");
    tokio::time::sleep(Duration::from_millis(4100)).await;
    assert_eq!(get(&proxy, url(&target)).await.status, StatusCode::FORBIDDEN);

    // Overwritten: the cached version is served until the background probe sees
    // the change; after it, the new version.
    let target = presigned(&proxy, "/models/n.bin", &TestOrigin::credentials());
    assert_eq!(&get(&proxy, url(&target)).await.body[..], &data[..]);
    let new = object_bytes(43, 1 << 20);
    origin.put("models", "n.bin", &new, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = get(&proxy, url(&target)).await;
    assert_eq!(&stale.body[..], &data[..], "within the window: the cached version");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = get(&proxy, url(&target)).await;
    assert_eq!(&fresh.body[..], &new[..], "after the background probe saw the change");
}

#[tokio::test]
async fn verified_keys_are_checked_here_and_served_from_the_origins_earlier_yes() {
    use crate::support::origin::{ACCESS_KEY, SECRET_KEY};
    let (origin, data) = origin_with("models", "m.bin", 2 << 20).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("verified-keys");
    std::fs::write(
        &keys,
        format!("{ACCESS_KEY} {SECRET_KEY}\n{READER_KEY} {READER_SECRET}\n"),
    )
    .unwrap();
    let proxy = proxy_with(
        &origin,
        &format!(
            "grants = [\"verified_keys\"]\nverified_keys_file = \"{}\"\nverified_keys_reload = \"100ms\"",
            keys.display()
        ),
    )
    .await;
    let signed = |credentials: Credentials| Call::get("/models/m.bin", &Signing::Header(credentials));
    // The origin's yes to the key, then every request the key signs for the object
    // (each with its own signature) is a hit without the origin.
    assert_eq!(
        &get(&proxy, signed(TestOrigin::credentials())).await.body[..],
        &data[..]
    );
    origin.stats.settled().await;
    let requests = origin.stats.requests();
    for _ in 0..3 {
        let reply = get(&proxy, signed(TestOrigin::credentials())).await;
        assert_eq!((&reply.body[..], outcome(&reply)), (&data[..], "hit"));
    }
    assert_eq!(
        origin.stats.requests(),
        requests,
        "verified here, granted by the origin earlier"
    );
    // A forged signature with a known key id: refused here.
    let forged = get(&proxy, signed(Credentials::new(ACCESS_KEY, "not-the-secret"))).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(forged.text().contains("SignatureDoesNotMatch"), "{}", forged.text());
    assert_eq!(origin.stats.requests(), requests, "refused before the origin");
    // Another verified key on the granted object: its own grant, which it has not:
    // the origin decides (and refuses).
    let other = get(&proxy, signed(Credentials::new(READER_KEY, READER_SECRET))).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert_eq!(origin.stats.requests(), requests + 1);
    // The key is removed from the file: at the next read it is no longer verified
    // here, and the origin authorizes it again.
    std::fs::write(&keys, format!("{READER_KEY} {READER_SECRET}\n")).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let requests = origin.stats.requests();
    assert_eq!(
        &get(&proxy, signed(TestOrigin::credentials())).await.body[..],
        &data[..]
    );
    assert_eq!(
        origin.stats.requests(),
        requests + 1,
        "a revoked key goes to the origin"
    );
}

/// Hostile-client finding 6: a grant serves only what the origin would. A client
/// asking for a version with `If-Match` (boto3 on every part) is served from the
/// grant only when the cached version is that one; `If-Unmodified-Since` is the
/// origin's to answer; and an anonymous grant never serves `response-*` overrides,
/// which S3 refuses to anonymous requests.
#[tokio::test]
async fn grants_honor_the_clients_preconditions_and_anonymous_reads_take_no_overrides() {
    let (origin, data) = origin_with("models", "m.bin", 2 << 20).await;
    origin.policy().set_public("models", true);
    let proxy = proxy_with(
        &origin,
        "grants = [\"presigned\", \"anonymous\"]\nanonymous_buckets = [\"models\"]",
    )
    .await;
    let target = presigned(&proxy, "/models/m.bin", &TestOrigin::credentials());
    let first = get(&proxy, url(&target)).await;
    let old_etag = first.header("etag").unwrap().to_owned();
    assert_eq!(outcome(&get(&proxy, url(&target)).await), "hit");

    // Overwritten within the grant window.
    let new_data = object_bytes(42, 2 << 20);
    origin.put("models", "m.bin", &new_data, &[]).await;
    let new_etag = origin
        .send(&Call::head("/models/m.bin", &TestOrigin::signing()))
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    assert_ne!(new_etag, old_etag);
    origin.stats.settled().await;
    let requests = origin.stats.requests();
    // The cached version, asked for by its ETag: the grant serves it.
    let same = get(&proxy, url(&target).unsigned_header("if-match", &old_etag)).await;
    assert_eq!(outcome(&same), "hit");
    assert_eq!(origin.stats.requests(), requests);
    // The new version, asked for by its ETag: the origin answers, with its bytes.
    let newer = get(&proxy, url(&target).unsigned_header("if-match", &new_etag)).await;
    assert_eq!(newer.status, StatusCode::OK);
    assert_eq!(newer.header("etag"), Some(new_etag.as_str()));
    assert_eq!(
        sha256_hex(&newer.body),
        sha256_hex(&new_data),
        "never the cached version"
    );
    assert!(origin.stats.requests() > requests);

    // If-Unmodified-Since goes to the origin.
    let before = origin.stats.requests();
    let dated = url(&target).unsigned_header("if-unmodified-since", "Mon, 01 Jan 2024 00:00:00 GMT");
    get(&proxy, dated).await;
    assert!(
        origin.stats.requests() > before,
        "the origin decides If-Unmodified-Since"
    );

    // Anonymous: a grant for the plain read, never for one with overrides.
    let plain = Call::get("/models/m.bin", &Signing::Anonymous);
    get(&proxy, plain.clone()).await;
    assert_eq!(outcome(&get(&proxy, plain).await), "hit");
    origin.stats.settled().await;
    let before = origin.stats.requests();
    let overridden = Call::get("/models/m.bin?response-content-type=text%2Fplain", &Signing::Anonymous);
    get(&proxy, overridden).await;
    assert_eq!(
        origin.stats.requests(),
        before + 1,
        "the origin decides anonymous overrides"
    );
    let _ = data;
}
