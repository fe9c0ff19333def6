//! Which requests are object reads: an allow-list of methods and query parameters.
//! Everything else is refused before the origin sees it.

use http::{HeaderName, HeaderValue, Method};

/// The two operations s3-accel serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    GetObject,
    HeadObject,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GetObject => "GetObject",
            Self::HeadObject => "HeadObject",
        }
    }
}

/// What a refused request addressed, for `<ResourceType>` in MethodNotAllowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceType {
    Service,
    Bucket,
    Object,
}

impl ResourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "SERVICE",
            Self::Bucket => "BUCKET",
            Self::Object => "OBJECT",
        }
    }
}

/// Why a request is not an object read s3-accel will forward.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{method} is not allowed on this {}: s3-accel serves only GET and HEAD of objects", resource.as_str().to_lowercase())]
    MethodNotAllowed { method: String, resource: ResourceType },
    #[error("the request-target does not decode: {reason}")]
    InvalidUri { reason: &'static str },
    #[error("the object key is {length} bytes long; at most 1024 are allowed")]
    KeyTooLong { length: usize },
    #[error("{message}")]
    InvalidArgument { name: String, message: String },
}

/// An accepted object read, the one parse of its path and query that the rest of the
/// request path uses. Names are decoded for checks and logs; the raw request-target
/// is what travels to the origin, and the raw key what names the cached object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRequest {
    pub operation: Operation,
    pub bucket: String,
    pub key: String,
    /// The key as the client encoded it: `+` means different things to different
    /// origins, so the cache keeps it raw.
    pub raw_key: String,
    /// The raw `versionId` value, as the client encoded it.
    pub version_id: Option<String>,
    pub part_number: Option<u16>,
    /// The `response-*` overrides, as the headers they set on this response (which
    /// then differs from the stored object's).
    pub overrides: Vec<(HeaderName, HeaderValue)>,
    /// The presign parameters (`X-Amz-*`, SigV2's), decoded: what a presigned
    /// signature covers is read from them.
    pub presign: Vec<(String, String)>,
}

const RESPONSE_OVERRIDES: [&str; 6] = [
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
];

/// Classifies a request. `bucket_from_host` is the bucket named by a virtual-hosted
/// Host header, when routing found one; the path then holds the whole key.
pub fn classify(
    method: &Method,
    path: &str,
    query: Option<&str>,
    bucket_from_host: Option<&str>,
) -> Result<ObjectRequest, RequestError> {
    let (bucket, key, raw_key) = split_path(path, bucket_from_host)?;
    let resource = match (bucket.is_empty(), key.is_empty()) {
        (true, _) => ResourceType::Service,
        (false, true) => ResourceType::Bucket,
        (false, false) => ResourceType::Object,
    };
    let not_allowed = || RequestError::MethodNotAllowed {
        method: method.as_str().to_owned(),
        resource,
    };
    let operation = match *method {
        Method::GET => Operation::GetObject,
        Method::HEAD => Operation::HeadObject,
        _ => return Err(not_allowed()),
    };
    if resource != ResourceType::Object {
        return Err(not_allowed());
    }
    if key.len() > 1024 {
        return Err(RequestError::KeyTooLong { length: key.len() });
    }

    let mut request = ObjectRequest {
        operation,
        bucket,
        key,
        raw_key,
        version_id: None,
        part_number: None,
        overrides: Vec::new(),
        presign: Vec::new(),
    };
    let mut seen: Vec<String> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(raw_name)?;
        if seen.contains(&name) {
            return Err(RequestError::InvalidArgument {
                message: format!("query parameter `{name}` is given twice"),
                name,
            });
        }
        match name.as_str() {
            "versionId" => request.version_id = Some(raw_value.to_owned()),
            "partNumber" => request.part_number = Some(parse_part_number(&decode(raw_value)?)?),
            "x-id" => {
                let value = decode(raw_value)?;
                if value != operation.as_str() {
                    return Err(not_allowed());
                }
            }
            n if RESPONSE_OVERRIDES.contains(&n) => request.overrides.push(response_override(n, raw_value)?),
            // Presign parameters; `s3::auth` reads what they sign.
            n if n == "Signature" || is_presign_parameter(n) => {
                request.presign.push((name.clone(), decode(raw_value)?))
            }
            // A listing, a subresource (?acl, ?tagging, ?uploads...) or anything unknown.
            _ => return Err(not_allowed()),
        }
        seen.push(name);
    }
    Ok(request)
}

fn is_presign_parameter(name: &str) -> bool {
    name.get(..6)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("x-amz-"))
        || matches!(name, "AWSAccessKeyId" | "Expires")
}

/// `response-content-type=...` as the header it sets. A query encodes a space as `+`.
fn response_override(name: &str, raw_value: &str) -> Result<(HeaderName, HeaderValue), RequestError> {
    let value = decode(&raw_value.replace('+', "%20"))?;
    let header = name.strip_prefix("response-").expect("a response override");
    match (HeaderName::from_bytes(header.as_bytes()), HeaderValue::from_str(&value)) {
        (Ok(header), Ok(value)) => Ok((header, value)),
        _ => Err(RequestError::InvalidArgument {
            name: name.to_owned(),
            message: format!("`{name}` is not a valid header value"),
        }),
    }
}

fn parse_part_number(value: &str) -> Result<u16, RequestError> {
    match value.parse::<u16>() {
        Ok(n @ 1..=10000) => Ok(n),
        _ => Err(RequestError::InvalidArgument {
            name: "partNumber".into(),
            message: format!("Part number must be an integer between 1 and 10000, inclusive (got `{value}`)"),
        }),
    }
}

/// Splits a raw path into decoded bucket and key, and the raw key. Empty segments
/// are kept: `/b//k` is key `/k`.
fn split_path(path: &str, bucket_from_host: Option<&str>) -> Result<(String, String, String), RequestError> {
    let path = path.strip_prefix('/').ok_or(RequestError::InvalidUri {
        reason: "the path does not start with `/`",
    })?;
    let (bucket, raw_key) = match bucket_from_host {
        Some(bucket) => (bucket.to_owned(), path),
        None => {
            let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
            (decode(bucket)?, key)
        }
    };
    Ok((bucket, decode(raw_key)?, raw_key.to_owned()))
}

/// Strict percent-decoding: every `%` must start a two-digit hex escape, and the
/// result must be UTF-8. `+` stays `+`, as it does in S3 paths.
pub fn decode(raw: &str) -> Result<String, RequestError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(byte) if bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit() => out.push(byte),
                _ => {
                    return Err(RequestError::InvalidUri {
                        reason: "a `%` is not followed by two hex digits",
                    })
                }
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| RequestError::InvalidUri {
        reason: "the decoded path is not UTF-8",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn get(path: &str, query: Option<&str>) -> Result<ObjectRequest, RequestError> {
        classify(&Method::GET, path, query, None)
    }

    fn is_405(result: Result<ObjectRequest, RequestError>) -> bool {
        matches!(result, Err(RequestError::MethodNotAllowed { .. }))
    }

    #[test]
    fn raw_keys_follow_the_bucket() {
        let raw = |path: &str, bucket: Option<&str>| classify(&Method::GET, path, None, bucket).unwrap().raw_key;
        assert_eq!(raw("/b/dir/a%20b", None), "dir/a%20b");
        assert_eq!(raw("/b//k", None), "/k");
        assert_eq!(raw("/dir/a+b", Some("b")), "dir/a+b");
    }

    #[test]
    fn path_style_object_reads() {
        let r = get("/bucket/dir/a%20b+c.bin", None).unwrap();
        assert_eq!((r.bucket.as_str(), r.key.as_str()), ("bucket", "dir/a b+c.bin"));
        assert_eq!(r.operation, Operation::GetObject);
        let r = classify(&Method::HEAD, "/b//k", None, None).unwrap();
        assert_eq!(
            (r.bucket.as_str(), r.key.as_str(), r.operation),
            ("b", "/k", Operation::HeadObject)
        );
        let r = get("/b/%E2%9C%93", None).unwrap();
        assert_eq!(r.key, "✓");
    }

    #[test]
    fn overrides_are_decoded_headers_and_presign_parameters_kept() {
        let query = "versionId=1&response-content-type=text%2Fplain&response-content-disposition=attachment%3B+filename%3Da.txt&X-Amz-Expires=60";
        let r = get("/b/k%2Bx", Some(query)).unwrap();
        assert_eq!(r.overrides.len(), 2);
        assert_eq!(
            r.overrides[0],
            (http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))
        );
        assert_eq!(r.overrides[1].1, "attachment; filename=a.txt");
        assert_eq!(r.presign, [("X-Amz-Expires".to_owned(), "60".to_owned())]);
        assert_eq!((r.key.as_str(), r.raw_key.as_str()), ("k+x", "k%2Bx"));
        assert!(get("/b/k", Some("response-x=1")).is_err(), "not an override S3 knows");
        assert!(matches!(
            get("/b/k", Some("response-content-type=a%0Ab")),
            Err(RequestError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn virtual_hosted_object_reads() {
        let r = classify(&Method::GET, "/dir/key", None, Some("bucket")).unwrap();
        assert_eq!((r.bucket.as_str(), r.key.as_str()), ("bucket", "dir/key"));
        assert!(is_405(classify(&Method::GET, "/", None, Some("bucket"))));
    }

    #[test]
    fn allowed_query_parameters() {
        let r = get(
            "/b/k",
            Some("versionId=v%2B1&partNumber=3&response-content-type=text%2Fplain&x-id=GetObject"),
        )
        .unwrap();
        assert_eq!(r.version_id.as_deref(), Some("v%2B1"));
        assert_eq!(r.part_number, Some(3));
        assert_eq!(r.overrides.len(), 1);
        let presigned = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a%2Fb&X-Amz-Date=20261123T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=ff";
        assert!(get("/b/k", Some(presigned)).is_ok());
        assert!(get("/b/k", Some("AWSAccessKeyId=a&Expires=1&Signature=s")).is_ok());
        assert!(get("/b/k", Some("&")).is_ok());
    }

    #[test]
    fn listings_subresources_and_writes_are_refused() {
        assert!(is_405(get("/", None)));
        assert!(is_405(get("/bucket", None)));
        assert!(is_405(get("/bucket/", Some("list-type=2"))));
        for sub in [
            "acl",
            "tagging",
            "uploads",
            "uploadId=1",
            "versions",
            "torrent",
            "attributes",
            "legal-hold",
            "retention",
            "x-id=PutObject",
        ] {
            assert!(is_405(get("/b/k", Some(sub))), "?{sub}");
        }
        for method in [
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
            Method::from_bytes(b"COPY").unwrap(),
        ] {
            let err = classify(&method, "/b/k", None, None).unwrap_err();
            assert_eq!(
                err,
                RequestError::MethodNotAllowed {
                    method: method.to_string(),
                    resource: ResourceType::Object
                }
            );
        }
        let err = classify(&Method::DELETE, "/b", None, None).unwrap_err();
        assert_eq!(
            err,
            RequestError::MethodNotAllowed {
                method: "DELETE".into(),
                resource: ResourceType::Bucket
            }
        );
    }

    #[test]
    fn malformed_requests_are_400() {
        assert!(matches!(get("/b/%zz", None), Err(RequestError::InvalidUri { .. })));
        assert!(matches!(get("/b/%4", None), Err(RequestError::InvalidUri { .. })));
        assert!(matches!(get("/b/%FF%FE", None), Err(RequestError::InvalidUri { .. })));
        assert!(matches!(
            get("/b/k", Some("%G0=1")),
            Err(RequestError::InvalidUri { .. })
        ));
        assert!(matches!(get("b/k", None), Err(RequestError::InvalidUri { .. })));
        let long = format!("/b/{}", "k".repeat(1025));
        assert_eq!(get(&long, None), Err(RequestError::KeyTooLong { length: 1025 }));
        assert!(get(&format!("/b/{}", "k".repeat(1024)), None).is_ok());
        assert!(matches!(
            get("/b/k", Some("partNumber=0")),
            Err(RequestError::InvalidArgument { .. })
        ));
        assert!(matches!(
            get("/b/k", Some("partNumber=x")),
            Err(RequestError::InvalidArgument { .. })
        ));
        assert!(matches!(
            get("/b/k", Some("versionId=1&versionId=2")),
            Err(RequestError::InvalidArgument { .. })
        ));
    }

    fn encode(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() || b"-_.~/+".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    proptest! {
        /// Any key encoded the way SDKs encode it comes back exactly.
        #[test]
        fn encoded_keys_round_trip(key in "[^\u{0}]{1,200}", bucket in "[a-z0-9][a-z0-9.-]{2,62}") {
            let path = format!("/{bucket}/{}", encode(key.as_bytes()));
            let r = get(&path, None).unwrap();
            prop_assert_eq!(r.bucket, bucket);
            prop_assert_eq!(r.key, key);
        }

        /// Arbitrary targets never panic, and anything accepted is a GET of a non-empty key.
        #[test]
        fn arbitrary_targets_are_classified_without_panic(path in "/[ -~]{0,64}", query in proptest::option::of("[ -~]{0,64}")) {
            if let Ok(r) = get(&path, query.as_deref()) {
                prop_assert!(!r.bucket.is_empty() && !r.key.is_empty());
                prop_assert!(r.key.len() <= 1024);
            }
        }

        /// No method other than GET and HEAD is ever accepted.
        #[test]
        fn only_get_and_head(method in "[A-Z]{1,10}") {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let accepted = classify(&method, "/b/k", None, None).is_ok();
            prop_assert_eq!(accepted, method == Method::GET || method == Method::HEAD);
        }
    }
}
