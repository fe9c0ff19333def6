//! The S3 protocol surface: request classification, signatures, ranges, error
//! documents, request ids, and which headers belong to an object.

pub mod auth;
pub mod classify;
pub mod range;
pub mod xml;

use http::{HeaderMap, HeaderName, HeaderValue};

pub use classify::{classify, ObjectRequest, Operation, RequestError, ResourceType};

/// A fresh request id in S3's shape: 16 upper-case hex digits.
pub fn new_request_id() -> String {
    format!("{:016X}", fastrand::u64(..))
}

/// The name of the header every response carries.
pub const REQUEST_ID: &str = "x-amz-request-id";

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

/// The `response-*` overrides of a query, as the headers they set on this response.
pub fn response_overrides(query: Option<&str>) -> Vec<(HeaderName, HeaderValue)> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter_map(|(name, value)| {
            let header = name.strip_prefix("response-")?;
            if !matches!(
                header,
                "cache-control"
                    | "content-disposition"
                    | "content-encoding"
                    | "content-language"
                    | "content-type"
                    | "expires"
            ) {
                return None;
            }
            let value = classify::decode(&value.replace('+', "%20")).ok()?;
            Some((
                HeaderName::from_bytes(header.as_bytes()).ok()?,
                HeaderValue::from_str(&value).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_decoded_headers() {
        let overrides = response_overrides(Some("versionId=1&response-content-type=text%2Fplain&response-content-disposition=attachment%3B+filename%3Da.txt&response-x=1"));
        assert_eq!(overrides.len(), 2);
        assert_eq!(
            overrides[0],
            (http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))
        );
        assert_eq!(overrides[1].1, "attachment; filename=a.txt");
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
