//! SigV4/SigV2 authorization, in a header or a presigned query: reading what a
//! signature covers never panics, and only a SigV4 signature covers anything.
#![no_main]

use http::{header, HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use s3_accel::s3::auth::ClientAuth;

fuzz_target!(|input: (&[u8], Option<&str>)| {
    let (authorization, query) = input;
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(authorization) {
        headers.insert(header::AUTHORIZATION, value);
    }
    // The presign parameters as classification hands them over.
    let presign = s3_accel::s3::classify(&Method::GET, "/bucket/key", query, None)
        .map(|request| request.presign)
        .unwrap_or_default();
    let auth = ClientAuth::of(&headers, &presign);
    for name in ["host", "range", "if-match", "x-amz-date"] {
        if auth.covers(name) {
            assert!(matches!(auth, ClientAuth::V4 { .. }));
        }
    }
    let _ = auth.region();
    let _ = s3_accel::s3::checksums(&headers);
});
