//! Relaying: the client's signed request as the origin gets it, and the origin's
//! answer as the client gets it. Only hop-by-hop headers change; everything the
//! client signed travels as is.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Empty};

use super::error::ProxyError;
use crate::body::ProxyBody;
use crate::origin::OriginBody;
use crate::s3::Endpoint;
use crate::s3::RequestError;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named).chain([&header::UPGRADE]) {
        headers.remove(name);
    }
}

/// The request to send the origin: same method, same raw request-target, same
/// headers (Host included), minus hop-by-hop ones; the connector dials the origin.
pub fn origin_request<B>(
    client: &Request<B>,
    origin: &Endpoint,
    authority: &str,
) -> Result<Request<Empty<Bytes>>, ProxyError> {
    let target = client
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let scheme = if origin.tls { Scheme::HTTPS } else { Scheme::HTTP };
    let uri = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(target)
        .build()
        .map_err(|_| RequestError::InvalidUri {
            reason: "the Host header is not a valid authority",
        })?;
    let mut request = Request::new(Empty::new());
    *request.method_mut() = client.method().clone();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    *headers = client.headers().clone();
    strip_hop_by_hop(headers);
    if client.version() == Version::HTTP_2 && !headers.contains_key(header::HOST) {
        // h2 clients sign `:authority` as `host`; an HTTP/1.1 origin needs it as Host.
        if let Ok(host) = HeaderValue::from_str(authority) {
            headers.insert(header::HOST, host);
        }
    }
    Ok(request)
}

/// A second copy of an origin request (bodies are empty: nothing to share).
pub fn copy(request: &Request<Empty<Bytes>>) -> Request<Empty<Bytes>> {
    let mut copy = Request::new(Empty::new());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// The origin's response as the client gets it: status, headers and body unchanged
/// but for hop-by-hop headers, streamed. (`Proxy::handle` adds a request id when the
/// origin sent none.)
pub fn client_response(origin: Response<OriginBody>) -> Response<ProxyBody> {
    let (mut parts, body) = origin.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::admit::client_authority;

    #[test]
    fn hop_by_hop_headers_go_signed_ones_stay() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        headers.insert("x-private", "1".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert(header::RANGE, "bytes=0-9".parse().unwrap());
        headers.insert("x-amz-date", "20261123T000000Z".parse().unwrap());
        headers.insert(header::AUTHORIZATION, "AWS4-HMAC-SHA256 ...".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["authorization", "range", "x-amz-date"]);
    }

    #[test]
    fn origin_request_keeps_the_raw_target_and_host() {
        let client = Request::get("/b/a%2Bb+c//d?versionId=x%3D&X-Amz-Signature=ab")
            .header(header::HOST, "accel-object.ord1.example.com:8080")
            .header(header::RANGE, "bytes=0-1")
            .body(())
            .unwrap();
        let origin = Endpoint {
            tls: true,
            host: "object.ord1.example.com".into(),
            port: 443,
        };
        let authority = client_authority(&client).unwrap();
        let request = origin_request(&client, &origin, &authority).unwrap();
        assert_eq!(
            request.uri().to_string(),
            "https://accel-object.ord1.example.com:8080/b/a%2Bb+c//d?versionId=x%3D&X-Amz-Signature=ab"
        );
        assert_eq!(request.headers()[header::HOST], "accel-object.ord1.example.com:8080");
        assert_eq!(request.headers()[header::RANGE], "bytes=0-1");
    }
}
