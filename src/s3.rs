//! The S3 protocol surface: request classification, signatures, ranges, error
//! documents, request ids, and which headers belong to an object.

pub mod auth;
pub mod classify;
pub mod crc;
pub mod endpoint;
pub mod keys;
pub mod presign;
pub mod range;
pub mod response;
pub mod signature;
pub mod sigv4;
pub mod xml;

use http::{HeaderMap, HeaderName};

pub use classify::{classify, ObjectRequest, Operation, RequestError, ResourceType};
pub use crc::Crc;
pub use endpoint::Endpoint;
pub use response::{ContentRange, ObjectMeta, PartMeta};

/// A fresh request id in S3's shape: 16 upper-case hex digits.
pub fn new_request_id() -> String {
    format!("{:016X}", fastrand::u64(..))
}

/// The name of the header every response carries.
pub const REQUEST_ID: &str = "x-amz-request-id";

/// The request id a response carries, when it carries a readable one.
pub fn request_id_of(headers: &HeaderMap) -> Option<&str> {
    headers.get(REQUEST_ID).and_then(|v| v.to_str().ok())
}

const SSE_C_PREFIX: &str = "x-amz-server-side-encryption-customer-";

/// Whether a request or response uses customer-provided keys (SSE-C): such bytes
/// are only ever for a client that holds the key.
pub fn is_sse_c(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| name.as_str().starts_with(SSE_C_PREFIX))
}

/// Headers that describe the object itself, and so may be stored and replayed to
/// any client the origin authorizes. Per-request headers (Content-Length, ranges,
/// request ids, checksums) are not among them.
pub fn is_object_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "last-modified"
            | "accept-ranges"
            | "content-type"
            | "cache-control"
            | "content-disposition"
            | "content-encoding"
            | "content-language"
            | "expires"
            | "x-amz-version-id"
            | "x-amz-storage-class"
            | "x-amz-server-side-encryption"
            | "x-amz-server-side-encryption-aws-kms-key-id"
            | "x-amz-server-side-encryption-bucket-key-enabled"
            | "x-amz-tagging-count"
            | "x-amz-website-redirect-location"
            | "x-amz-replication-status"
            | "x-amz-restore"
            | "x-amz-missing-meta"
            | "x-amz-object-lock-mode"
            | "x-amz-object-lock-retain-until-date"
            | "x-amz-object-lock-legal-hold"
    ) || name.starts_with("x-amz-meta-")
}

/// Whether a request asks for the object's checksums (`x-amz-checksum-mode: ENABLED`,
/// which botocore and the AWS SDKs send on every GetObject by default).
pub fn checksum_mode(headers: &HeaderMap) -> bool {
    headers
        .get("x-amz-checksum-mode")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"enabled"))
}

/// The checksum headers S3 sends on whole-object and part answers, with the length
/// in bytes of each algorithm's digest.
const CHECKSUMS: [(&str, usize); 5] = [
    ("x-amz-checksum-crc32", 4),
    ("x-amz-checksum-crc32c", 4),
    ("x-amz-checksum-crc64nvme", 8),
    ("x-amz-checksum-sha1", 20),
    ("x-amz-checksum-sha256", 32),
];
const CHECKSUM_TYPE: &str = "x-amz-checksum-type";

/// A checksum header s3-accel cannot check and so must not store or replay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the origin sent a checksum header s3-accel cannot read: {0}")]
pub struct UnreadableChecksum(pub String);

/// The `x-amz-checksum-*` headers of a response, checked: each a known algorithm
/// whose value is base64 of that algorithm's digest (with `-N` for a composite of N
/// parts), and `x-amz-checksum-type` FULL_OBJECT or COMPOSITE. One that does not
/// read is an error: the response is then relayed, never replayed from the cache.
pub fn checksums(headers: &HeaderMap) -> Result<HeaderMap, UnreadableChecksum> {
    let mut found = HeaderMap::new();
    for (name, value) in headers {
        let text = name.as_str();
        if !text.starts_with("x-amz-checksum-") || text == "x-amz-checksum-mode" {
            continue;
        }
        let readable = match CHECKSUMS.iter().find(|(n, _)| *n == text) {
            Some((_, digest)) => value.to_str().is_ok_and(|v| is_checksum_value(v, *digest)),
            None => text == CHECKSUM_TYPE && matches!(value.as_bytes(), b"FULL_OBJECT" | b"COMPOSITE"),
        };
        if !readable || found.contains_key(name) {
            return Err(UnreadableChecksum(text.to_owned()));
        }
        found.insert(name.clone(), value.clone());
    }
    Ok(found)
}

/// The object's own CRC, from stored checksums, as S3 writes it (see [`Crc::full_object`]).
pub fn full_object_crc(checksums: &HeaderMap) -> Option<(crc_fast::CrcAlgorithm, String)> {
    Crc::full_object(checksums).map(|crc| (crc.algorithm, crc.base64()))
}

/// `data`'s CRC as S3 writes it: base64 of the big-endian digest.
pub fn crc_of(algorithm: crc_fast::CrcAlgorithm, data: &[u8]) -> String {
    Crc::of(algorithm, data).base64()
}

/// Base64 (padded) of `digest` bytes, optionally followed by `-<parts>`.
fn is_checksum_value(value: &str, digest: usize) -> bool {
    let (encoded, parts) = match value.split_once('-') {
        Some((encoded, parts)) => (encoded, Some(parts)),
        None => (value, None),
    };
    use base64::Engine;
    let body_ok = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .is_ok_and(|decoded| decoded.len() == digest);
    let parts_ok = parts.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    body_ok && parts_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_read_strictly() {
        let mut headers = HeaderMap::new();
        headers.insert("x-amz-checksum-crc32", "AAAAAA==".parse().unwrap());
        headers.insert("x-amz-checksum-crc64nvme", "ABCDEFGHIJI=".parse().unwrap());
        headers.insert(
            "x-amz-checksum-sha256",
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".parse().unwrap(),
        );
        headers.insert("x-amz-checksum-type", "FULL_OBJECT".parse().unwrap());
        headers.insert("x-amz-checksum-mode", "ENABLED".parse().unwrap());
        headers.insert("content-type", "text/plain".parse().unwrap());
        let found = checksums(&headers).unwrap();
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(!found.contains_key("x-amz-checksum-mode"));

        let mut composite = HeaderMap::new();
        composite.insert("x-amz-checksum-crc32c", "AAAAAA==-12".parse().unwrap());
        composite.insert("x-amz-checksum-type", "COMPOSITE".parse().unwrap());
        assert_eq!(checksums(&composite).unwrap().len(), 2);

        for (name, value) in [
            ("x-amz-checksum-crc32", "AAAA"),
            ("x-amz-checksum-crc32", "AAAAAAA="),
            ("x-amz-checksum-crc32", "AA*AAA=="),
            ("x-amz-checksum-crc32", "AAAAAA==-"),
            ("x-amz-checksum-sha1", "AAAAAA=="),
            ("x-amz-checksum-type", "PARTIAL"),
            ("x-amz-checksum-xxhash128", "AAAAAA=="),
        ] {
            let mut bad = HeaderMap::new();
            bad.insert(HeaderName::from_static(name), value.parse().unwrap());
            assert!(checksums(&bad).is_err(), "{name}: {value}");
        }
        assert!(checksums(&HeaderMap::new()).unwrap().is_empty());
    }

    #[test]
    fn crcs_are_written_as_s3_writes_them() {
        // Known values of "123456789" (the CRC check string).
        let check = b"123456789";
        assert_eq!(crc_of(crc_fast::CrcAlgorithm::Crc32IsoHdlc, check), "y/Q5Jg==");
        assert_eq!(crc_of(crc_fast::CrcAlgorithm::Crc32Iscsi, check), "4waSgw==");
        let mut checksums = HeaderMap::new();
        checksums.insert("x-amz-checksum-crc32", "y/Q5Jg==".parse().unwrap());
        let (algorithm, value) = full_object_crc(&checksums).unwrap();
        assert_eq!(crc_of(algorithm, check), value);
        checksums.insert("x-amz-checksum-type", "COMPOSITE".parse().unwrap());
        assert!(
            full_object_crc(&checksums).is_none(),
            "a composite checks parts, not the bytes"
        );
    }

    #[test]
    fn object_headers_exclude_per_request_ones() {
        for stored in ["content-type", "x-amz-meta-owner", "last-modified", "x-amz-version-id"] {
            assert!(is_object_header(&HeaderName::from_static(stored)), "{stored}");
        }
        for not in [
            "content-length",
            "content-range",
            "etag",
            "x-amz-request-id",
            "x-amz-checksum-crc32",
            "x-amz-mp-parts-count",
            "date",
        ] {
            assert!(!is_object_header(&HeaderName::from_static(not)), "{not}");
        }
    }
}
