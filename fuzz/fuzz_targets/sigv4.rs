//! SigV4 as s3-accel verifies it for `verified_keys`: any request (path, query,
//! Authorization and date headers) is verified or refused, never a panic.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use s3_accel::s3::sigv4::{verify, Signed};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(5, '\n');
    let (path, query, authorization, date, content) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("authorization", authorization),
        ("x-amz-date", date),
        ("x-amz-content-sha256", content),
        ("host", "accel.example"),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    let request = Signed {
        method: "GET",
        path,
        query,
        headers: &headers,
        authority: "accel.example",
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_795_489_200);
    let _ = verify(&request, |_| Some("secret".to_owned()), Some("default"), now);
});
