//! Request classification: any method, path, query and Host bucket is accepted or
//! refused, never a panic; what is accepted is an object read with a bounded key.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use s3_accel::s3::{classify, Operation};

fuzz_target!(|input: (u8, &str, Option<&str>, Option<&str>)| {
    let (method, path, query, bucket) = input;
    let method = match method % 4 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::PUT,
        _ => Method::DELETE,
    };
    if let Ok(object) = classify(&method, path, query, bucket) {
        assert!(matches!(object.operation, Operation::GetObject | Operation::HeadObject));
        assert!(method == Method::GET || method == Method::HEAD);
        assert!(!object.bucket.is_empty() && !object.key.is_empty());
        assert!(object.key.len() <= 1024);
    }
});
