//! SigV4 checked locally, for access keys the operator gives s3-accel
//! (`verified_keys`): who signed is verified here; what they may read is still
//! the origin's to say. Header-signed and presigned requests, as S3 clients send
//! them. No crate verifies S3 SigV4 standalone (`aws-sigv4` signs; s3s keeps its
//! verifier private): this builds the canonical request and the string to sign,
//! and takes the signing key and signature from `aws-sigv4`'s public primitives.

use std::time::{Duration, SystemTime};

use aws_sigv4::sign::v4::{calculate_signature, generate_signing_key};
use http::header::HeaderMap;

use super::presign::parse_amz_date;
use super::signature::{Signature, MAX_EXPIRES, SIGV4_ALGORITHM};

/// The clock skew a header-signed request may have, as S3 allows.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// What a request says of its signature, before it is checked.
struct Claimed<'a> {
    access_key: &'a str,
    scope_date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
    amz_date: &'a str,
    payload_hash: &'a str,
    /// Presigned: the URL's lifetime in seconds.
    expires: Option<u64>,
    security_token: Option<&'a str>,
}

/// A signature checked against the key's secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key: String,
    /// The session token it was signed with (temporary keys), if any.
    pub session_token: Option<String>,
    /// A presigned URL's own end.
    pub expires: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    #[error("the request is not signed with SigV4")]
    NotSigV4,
    #[error("the access key is not one s3-accel verifies")]
    UnknownKey,
    #[error("the signature does not read: {0}")]
    Malformed(&'static str),
    #[error("the credential scope is not this endpoint's: {0}")]
    Scope(&'static str),
    #[error("the request's date is too far from now")]
    Skewed,
    #[error("the presigned URL has expired")]
    Expired,
    #[error("the signature does not match")]
    Mismatch,
}

/// The parts of a request a signature covers.
pub struct Signed<'a> {
    pub method: &'a str,
    /// The path as the client sent it (percent-encoded).
    pub path: &'a str,
    /// The query as the client sent it.
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    /// The request's authority: what `host` stands for in an HTTP/2 request.
    pub authority: &'a str,
}

/// Checks `request`'s SigV4 signature (header or presigned) with the secret
/// `secret_of` gives for its access key, for `region` (any, when `None`) and the
/// service `s3`, at `now`.
pub fn verify(
    request: &Signed<'_>,
    secret_of: impl Fn(&str) -> Option<String>,
    region: Option<&str>,
    now: SystemTime,
) -> Result<Verified, SigV4Error> {
    let params = query_params(request.query);
    let claimed = claim(request, &params)?;
    if claimed.scope_date != claimed.amz_date.get(..8).unwrap_or("") {
        return Err(SigV4Error::Scope("its date is not that of X-Amz-Date"));
    }
    if region.is_some_and(|region| claimed.region != region) {
        return Err(SigV4Error::Scope("another region"));
    }
    if claimed.service != "s3" || claimed.terminator != "aws4_request" {
        return Err(SigV4Error::Scope("another service"));
    }
    let (signed_at, expires) = window(&claimed, now)?;
    let secret = secret_of(claimed.access_key).ok_or(SigV4Error::UnknownKey)?;
    let scope = format!(
        "{}/{}/{}/{}",
        claimed.scope_date, claimed.region, claimed.service, claimed.terminator
    );
    let key = generate_signing_key(&secret, signed_at, claimed.region, claimed.service);
    // The path as SigV4 encodes it; then, as S3 (and s3s) also accept, the path as
    // the client sent it, for clients that encode it otherwise.
    let encoded: Vec<String> = request
        .path
        .split('/')
        .map(|segment| encode(&decode(segment)))
        .collect();
    let encoded = encoded.join("/");
    let mut paths = vec![encoded.as_str()];
    if request.path != encoded {
        paths.push(request.path);
    }
    let mut matched = false;
    for path in paths {
        let canonical = canonical_request(request.method, path, &params, request, &claimed)?;
        let string_to_sign = format!(
            "{SIGV4_ALGORITHM}\n{}\n{scope}\n{}",
            claimed.amz_date,
            hex_sha256(canonical.as_bytes())
        );
        let expected = calculate_signature(key.as_ref(), string_to_sign.as_bytes());
        // Constant time: a mismatch says nothing of how much matched.
        matched |= aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), claimed.signature.as_bytes())
            .is_ok();
    }
    if !matched {
        return Err(SigV4Error::Mismatch);
    }
    Ok(Verified {
        session_token: claimed.security_token.map(str::to_owned),
        access_key: claimed.access_key.to_owned(),
        expires,
    })
}

/// When the request was signed, and (presigned) when it stops being good: refused
/// when too far from `now`, or expired.
fn window(claimed: &Claimed<'_>, now: SystemTime) -> Result<(SystemTime, Option<SystemTime>), SigV4Error> {
    let signed_at = parse_amz_date(claimed.amz_date).ok_or(SigV4Error::Malformed("X-Amz-Date"))?;
    let skew = match now.duration_since(signed_at) {
        Ok(ago) => ago,
        Err(ahead) => ahead.duration(),
    };
    let expires = match claimed.expires {
        Some(seconds) => {
            if signed_at > now + MAX_SKEW {
                return Err(SigV4Error::Skewed);
            }
            let end = signed_at + Duration::from_secs(seconds);
            if now >= end {
                return Err(SigV4Error::Expired);
            }
            Some(end)
        }
        None if skew > MAX_SKEW => return Err(SigV4Error::Skewed),
        None => None,
    };
    Ok((signed_at, expires))
}

/// The query's parameters, percent-decoded, in order.
fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

fn claim<'a>(request: &Signed<'a>, params: &'a [(String, String)]) -> Result<Claimed<'a>, SigV4Error> {
    let Signature::V4(claim) = Signature::of(request.headers, params) else {
        return Err(SigV4Error::NotSigV4);
    };
    let (credential, signed_headers, signature, amz_date, payload_hash, expires) = match claim.presigned {
        None => (
            claim.credential.ok_or(SigV4Error::Malformed("Credential"))?,
            claim.signed_headers.ok_or(SigV4Error::Malformed("SignedHeaders"))?,
            claim.signature.ok_or(SigV4Error::Malformed("Signature"))?,
            claim.amz_date.ok_or(SigV4Error::Malformed("x-amz-date"))?,
            claim
                .payload_hash
                .ok_or(SigV4Error::Malformed("x-amz-content-sha256"))?,
            None,
        ),
        Some(presign) => {
            if presign.algorithm != Some(SIGV4_ALGORITHM) {
                return Err(SigV4Error::Malformed("X-Amz-Algorithm"));
            }
            let expires: u64 = presign
                .expires
                .and_then(|v| v.parse().ok())
                .filter(|e| (1..=MAX_EXPIRES).contains(e))
                .ok_or(SigV4Error::Malformed("X-Amz-Expires"))?;
            (
                claim.credential.ok_or(SigV4Error::Malformed("X-Amz-Credential"))?,
                claim
                    .signed_headers
                    .ok_or(SigV4Error::Malformed("X-Amz-SignedHeaders"))?,
                claim.signature.expect("a presigned query is named by its signature"),
                claim.amz_date.ok_or(SigV4Error::Malformed("X-Amz-Date"))?,
                claim.payload_hash.unwrap_or("UNSIGNED-PAYLOAD"),
                Some(expires),
            )
        }
    };
    let mut scope = credential.split('/');
    let mut part = || {
        scope
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(SigV4Error::Malformed("Credential"))
    };
    let claimed = Claimed {
        access_key: part()?,
        scope_date: part()?,
        region: part()?,
        service: part()?,
        terminator: part()?,
        signed_headers,
        signature,
        amz_date,
        payload_hash,
        expires,
        security_token: claim.security_token,
    };
    if scope.next().is_some() {
        return Err(SigV4Error::Malformed("Credential"));
    }
    Ok(claimed)
}

fn canonical_request(
    method: &str,
    path: &str,
    params: &[(String, String)],
    request: &Signed<'_>,
    claimed: &Claimed<'_>,
) -> Result<String, SigV4Error> {
    let mut query: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| claimed.expires.is_none() || k != "X-Amz-Signature")
        .map(|(k, v)| (encode(k), encode(v)))
        .collect();
    query.sort();
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let names: Vec<&str> = claimed.signed_headers.split(';').collect();
    if names.iter().any(|n| n.is_empty() || *n != n.to_ascii_lowercase()) || !names.contains(&"host") {
        return Err(SigV4Error::Malformed("SignedHeaders"));
    }
    let mut headers = String::new();
    for name in &names {
        let values: Vec<String> = request
            .headers
            .get_all(*name)
            .iter()
            .map(|v| {
                let text = String::from_utf8_lossy(v.as_bytes());
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .collect();
        let values = match (values.is_empty(), *name) {
            (true, "host") if !request.authority.is_empty() => vec![request.authority.to_owned()],
            (true, _) => return Err(SigV4Error::Malformed("a signed header is missing")),
            (false, _) => values,
        };
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    Ok(format!(
        "{method}\n{path}\n{}\n{headers}\n{}\n{}",
        query.join("&"),
        claimed.signed_headers,
        claimed.payload_hash
    ))
}

/// SigV4's URI encoding: everything but the unreserved characters, `%XX` uppercase.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Percent-decoding (`+` stays `+`: SigV4 clients encode a space as `%20`).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_sha256(data: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{header, HeaderValue};

    const KEY: &str = "AKIAVERIFIED";
    const SECRET: &str = "verified/secret+key=for-tests";
    const HOST: &str = "accel.example:8080";
    const PATH: &str = "/models/llama/a%20b%2Bc.bin";
    /// Signed by botocore 1.43.11 (`S3SigV4Auth`, region `default`) at this time.
    const SIGNED_AT: &str = "20261124T034150Z";
    const BOTOCORE_HEADER_SIGNATURE: &str = "a82d5248a03710353ca9b8ae6c12c26e254cc554dda7e416ba9e1db5aadc1c16";
    /// `S3SigV4QueryAuth`, 600 s, same time.
    const BOTOCORE_PRESIGNED_QUERY: &str = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAVERIFIED%2F20261124%2Fdefault%2Fs3%2Faws4_request&X-Amz-Date=20261124T034150Z&X-Amz-Expires=600&X-Amz-SignedHeaders=host&X-Amz-Signature=6a05bf21d20c8735cf0061074dc4871b08c64942efa4727a59c41162f60e6f07";

    fn secrets(key: &str) -> Option<String> {
        (key == KEY).then(|| SECRET.to_owned())
    }

    fn at(offset: i64) -> SystemTime {
        let signed = parse_amz_date(SIGNED_AT).unwrap();
        match offset >= 0 {
            true => signed + Duration::from_secs(offset as u64),
            false => signed - Duration::from_secs(offset.unsigned_abs()),
        }
    }

    /// botocore's header-signed GET, as it reached the proxy.
    fn header_signed() -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", HOST),
            ("range", "bytes=0-99"),
            ("x-amz-checksum-mode", "ENABLED"),
            ("x-amz-date", SIGNED_AT),
            (
                "x-amz-content-sha256",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={KEY}/20261124/default/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-checksum-mode;x-amz-content-sha256;x-amz-date, \
             Signature={BOTOCORE_HEADER_SIGNATURE}"
        );
        headers.insert(header::AUTHORIZATION, authorization.parse().unwrap());
        headers
    }

    fn check(
        method: &str,
        path: &str,
        query: &str,
        headers: &HeaderMap,
        region: &str,
        now: SystemTime,
    ) -> Result<Verified, SigV4Error> {
        let request = Signed {
            method,
            path,
            query,
            headers,
            authority: HOST,
        };
        verify(&request, secrets, Some(region), now)
    }

    #[test]
    fn botocore_signatures_verify() {
        let headers = header_signed();
        let query = "versionId=v%2B1&partNumber=2";
        let verified = check("GET", PATH, query, &headers, "default", at(60)).unwrap();
        assert_eq!(
            (verified.access_key.as_str(), verified.expires, verified.session_token),
            (KEY, None, None)
        );
        let mut host_only = HeaderMap::new();
        host_only.insert("host", HeaderValue::from_static(HOST));
        let verified = check("GET", PATH, BOTOCORE_PRESIGNED_QUERY, &host_only, "default", at(60)).unwrap();
        assert_eq!(verified.expires, Some(at(600)));
        // HTTP/2: no Host header, the authority stands for it.
        let verified = check(
            "GET",
            PATH,
            BOTOCORE_PRESIGNED_QUERY,
            &HeaderMap::new(),
            "default",
            at(60),
        );
        assert!(verified.is_ok());
    }

    #[test]
    fn aws_sigv4_signatures_verify() {
        use s3_accel_testkit::{sign_request, Credentials, Signing};
        for path in ["/models/m.bin", "/b/a%20b%2Bc%E2%82%AC.bin", "/b/dir/%7Euser/x"] {
            for signing in [
                Signing::Header(Credentials::new(KEY, SECRET)),
                Signing::Presigned(Credentials::new(KEY, SECRET)),
            ] {
                let mut request = http::Request::builder()
                    .uri(format!("http://{HOST}{path}?versionId=3"))
                    .header("host", HOST)
                    .body(())
                    .unwrap();
                sign_request(&mut request, &signing);
                let signed = Signed {
                    method: "GET",
                    path: request.uri().path(),
                    query: request.uri().query().unwrap_or(""),
                    headers: request.headers(),
                    authority: HOST,
                };
                let result = verify(&signed, secrets, Some("default"), SystemTime::now());
                assert!(result.is_ok(), "{path} {signing:?}: {result:?}");
            }
        }
    }

    #[test]
    fn known_bad_requests_are_refused() {
        let query = "versionId=v%2B1&partNumber=2";
        let good = header_signed();
        let with = |change: &dyn Fn(&mut HeaderMap)| {
            let mut headers = good.clone();
            change(&mut headers);
            headers
        };
        let authorization = good[header::AUTHORIZATION].to_str().unwrap().to_owned();
        let set_authorization = |from: &str, to: &str| {
            let value = authorization.replace(from, to);
            move |h: &mut HeaderMap| {
                h.insert(header::AUTHORIZATION, value.parse().unwrap());
            }
        };
        let tampered = set_authorization("Signature=a8", "Signature=b8");
        let other_region = set_authorization("/default/", "/us-east-1/");
        let other_service = set_authorization("/s3/", "/sts/");
        let other_day = set_authorization("/20261124/", "/20261123/");
        let unknown_key = set_authorization(KEY, "AKIASOMEONEELSE");
        let cases: Vec<(&str, &str, HeaderMap, &str, SystemTime, SigV4Error)> = vec![
            (
                "tampered signature",
                "GET",
                with(&tampered),
                PATH,
                at(60),
                SigV4Error::Mismatch,
            ),
            (
                "another region's scope",
                "GET",
                with(&other_region),
                PATH,
                at(60),
                SigV4Error::Scope("another region"),
            ),
            (
                "another service",
                "GET",
                with(&other_service),
                PATH,
                at(60),
                SigV4Error::Scope("another service"),
            ),
            (
                "a scope date that is not X-Amz-Date's",
                "GET",
                with(&other_day),
                PATH,
                at(60),
                SigV4Error::Scope("its date is not that of X-Amz-Date"),
            ),
            (
                "a key s3-accel does not verify",
                "GET",
                with(&unknown_key),
                PATH,
                at(60),
                SigV4Error::UnknownKey,
            ),
            (
                "signed 16 minutes ago",
                "GET",
                good.clone(),
                PATH,
                at(16 * 60),
                SigV4Error::Skewed,
            ),
            (
                "signed 16 minutes ahead",
                "GET",
                good.clone(),
                PATH,
                at(-16 * 60),
                SigV4Error::Skewed,
            ),
            (
                "a HEAD signature on a GET",
                "HEAD",
                good.clone(),
                PATH,
                at(60),
                SigV4Error::Mismatch,
            ),
            (
                "another object",
                "GET",
                good.clone(),
                "/models/llama/other.bin",
                at(60),
                SigV4Error::Mismatch,
            ),
            (
                "another range",
                "GET",
                with(&|h| {
                    h.insert("range", HeaderValue::from_static("bytes=0-999"));
                }),
                PATH,
                at(60),
                SigV4Error::Mismatch,
            ),
            (
                "a signed header removed",
                "GET",
                with(&|h| {
                    h.remove("range");
                }),
                PATH,
                at(60),
                SigV4Error::Malformed("a signed header is missing"),
            ),
            (
                "SigV2",
                "GET",
                with(&|h| {
                    h.insert(header::AUTHORIZATION, HeaderValue::from_static("AWS AKIAVERIFIED:abc="));
                }),
                PATH,
                at(60),
                SigV4Error::NotSigV4,
            ),
            (
                "unsigned",
                "GET",
                with(&|h| {
                    h.remove(header::AUTHORIZATION);
                }),
                PATH,
                at(60),
                SigV4Error::NotSigV4,
            ),
        ];
        for (why, method, headers, path, now, refused) in cases {
            assert_eq!(
                check(method, path, query, &headers, "default", now),
                Err(refused),
                "{why}"
            );
        }
        assert_eq!(
            check("GET", PATH, "versionId=v%2B2&partNumber=2", &good, "default", at(60)),
            Err(SigV4Error::Mismatch),
            "another query"
        );
        let mut host = HeaderMap::new();
        host.insert("host", HeaderValue::from_static(HOST));
        let presigned = |query: &str, now| check("GET", PATH, query, &host, "default", now);
        assert_eq!(presigned(BOTOCORE_PRESIGNED_QUERY, at(600)), Err(SigV4Error::Expired));
        let longer = BOTOCORE_PRESIGNED_QUERY.replace("X-Amz-Expires=600", "X-Amz-Expires=6000");
        assert_eq!(
            presigned(&longer, at(60)),
            Err(SigV4Error::Mismatch),
            "a lifetime stretched"
        );
        let forever = BOTOCORE_PRESIGNED_QUERY.replace("X-Amz-Expires=600", "X-Amz-Expires=604801");
        assert_eq!(presigned(&forever, at(60)), Err(SigV4Error::Malformed("X-Amz-Expires")));
        assert_eq!(
            presigned(BOTOCORE_PRESIGNED_QUERY, at(-16 * 60)),
            Err(SigV4Error::Skewed)
        );
        assert_eq!(
            check("GET", PATH, BOTOCORE_PRESIGNED_QUERY, &host, "us-east-1", at(60)),
            Err(SigV4Error::Scope("another region")),
            "this endpoint's signing region"
        );
    }
}
