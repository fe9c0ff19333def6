//! The request path's one error type, mapped to status and S3 code in one place.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::body::ProxyBody;
use crate::cache::ChunkError;
use crate::error::error_chain;
use crate::origin::{OriginError, UnknownHost};
use crate::s3::{self, RequestError};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// 405 MethodNotAllowed; 400 InvalidURI, KeyTooLongError, InvalidArgument: not an
    /// object read, refused before the origin sees it
    #[error(transparent)]
    Request(#[from] RequestError),
    /// 400 InvalidRequest: the Host names no configured region
    #[error(transparent)]
    UnknownHost(#[from] UnknownHost),
    /// 400 InvalidRequest: two Host headers, a Host with userinfo, a Host that
    /// disagrees with an absolute-form target
    #[error("invalid Host: {0}")]
    BadHost(&'static str),
    /// 400 InvalidRequest: a GET or HEAD that carries a body
    #[error("a {0} request must not carry a body")]
    UnexpectedBody(Method),
    /// 503 ServiceUnavailable when the origin is unreachable or silent; 502 when it
    /// breaks off the exchange
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// 502 BadGateway: the origin's answer is not the answer to the request sent
    /// (another range, a 206 to a whole read, a 304 for another version): a stray
    /// response, whose connection is never reused
    #[error("the origin's answer does not match the request: {0}")]
    OriginMismatch(&'static str),
    /// 416 InvalidRange: the range starts past the end of the (cached) object
    #[error("the range {requested} is not satisfiable for an object of {size} bytes")]
    InvalidRange { requested: String, size: u64 },
    /// 503 SlowDown: a chunk could not be filled from the origin, even on a retry
    #[error("a chunk could not be filled from the origin; retry")]
    Fill(#[source] ChunkError),
    /// 503 SlowDown: no room in `cache.read_ahead_memory` (or the connection's
    /// share of it) within `cache.read_ahead_wait`
    #[error("the accelerator is busy; retry")]
    Busy(#[from] crate::proxy::Busy),
    /// 403 AccessDenied for an expired presigned URL, 400
    /// AuthorizationQueryParametersError for a malformed one (with `presigned` grants
    /// on, refused before any cache lookup, as S3 would)
    #[error(transparent)]
    Presign(#[from] crate::s3::presign::PresignError),
    /// With `verified_keys` on, a request signed with one of those keys whose
    /// signature does not check: 403 SignatureDoesNotMatch, RequestTimeTooSkewed or
    /// AccessDenied (expired); 400 AuthorizationHeaderMalformed
    #[error(transparent)]
    Signature(#[from] crate::s3::sigv4::SigV4Error),
}

impl ProxyError {
    /// The status and S3 error code a client sees.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Request(RequestError::MethodNotAllowed { .. }) => {
                (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed")
            }
            Self::Request(RequestError::InvalidUri { .. }) => (StatusCode::BAD_REQUEST, "InvalidURI"),
            Self::Request(RequestError::KeyTooLong { .. }) => (StatusCode::BAD_REQUEST, "KeyTooLongError"),
            Self::Request(RequestError::InvalidArgument { .. }) => (StatusCode::BAD_REQUEST, "InvalidArgument"),
            Self::UnknownHost(_) => (StatusCode::BAD_REQUEST, "InvalidRequest"),
            Self::UnexpectedBody(_) => (StatusCode::BAD_REQUEST, "InvalidRequest"),
            Self::BadHost(_) => (StatusCode::BAD_REQUEST, "InvalidRequest"),
            Self::Origin(OriginError::Unreachable { .. } | OriginError::Timeout { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
            Self::Origin(OriginError::Protocol { .. }) => (StatusCode::BAD_GATEWAY, "BadGateway"),
            Self::OriginMismatch(_) => (StatusCode::BAD_GATEWAY, "BadGateway"),
            Self::InvalidRange { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "InvalidRange"),
            Self::Fill(_) | Self::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "SlowDown"),
            Self::Presign(crate::s3::presign::PresignError::Expired) => (StatusCode::FORBIDDEN, "AccessDenied"),
            Self::Presign(crate::s3::presign::PresignError::Malformed(_)) => {
                (StatusCode::BAD_REQUEST, "AuthorizationQueryParametersError")
            }
            Self::Signature(error) => {
                use crate::s3::sigv4::SigV4Error;
                match error {
                    SigV4Error::Skewed => (StatusCode::FORBIDDEN, "RequestTimeTooSkewed"),
                    SigV4Error::Expired => (StatusCode::FORBIDDEN, "AccessDenied"),
                    SigV4Error::Scope(_) | SigV4Error::Malformed(_) => {
                        (StatusCode::BAD_REQUEST, "AuthorizationHeaderMalformed")
                    }
                    SigV4Error::Mismatch | SigV4Error::UnknownKey | SigV4Error::NotSigV4 => {
                        (StatusCode::FORBIDDEN, "SignatureDoesNotMatch")
                    }
                }
            }
        }
    }

    /// Why the request was refused here, before the origin or the cache saw it
    /// (`s3accel_local_refusals_total{reason}`); `None` for the origin's errors and
    /// the cache's.
    pub fn refusal(&self) -> Option<&'static str> {
        use crate::s3::presign::PresignError;
        match self {
            Self::Request(RequestError::MethodNotAllowed { .. }) => Some("method"),
            Self::Request(RequestError::InvalidUri { .. }) => Some("uri"),
            Self::Request(RequestError::KeyTooLong { .. }) => Some("key"),
            Self::Request(RequestError::InvalidArgument { .. }) => Some("argument"),
            Self::UnknownHost(_) | Self::BadHost(_) => Some("host"),
            Self::UnexpectedBody(_) => Some("body"),
            Self::Presign(PresignError::Expired) => Some("expired"),
            Self::Presign(PresignError::Malformed(_)) => Some("malformed"),
            Self::Signature(_) => Some("signature"),
            Self::Origin(_) | Self::OriginMismatch(_) | Self::InvalidRange { .. } | Self::Fill(_) | Self::Busy(_) => {
                None
            }
        }
    }

    /// The `<Message>` a client reads: the whole chain for what it sent wrong, the
    /// error alone for what went wrong here or at the origin (the chain, in the log,
    /// names internal addresses a client has no business seeing).
    fn client_message(&self) -> String {
        match self {
            Self::Origin(OriginError::Unreachable { .. }) => "the origin could not be reached; retry".into(),
            Self::Origin(OriginError::Timeout { .. }) => "the origin sent no response head in time; retry".into(),
            Self::Origin(OriginError::Protocol { .. }) => "the origin broke off the exchange; retry".into(),
            Self::OriginMismatch(_) | Self::Fill(_) | Self::Busy(_) => self.to_string(),
            Self::Request(_)
            | Self::UnknownHost(_)
            | Self::BadHost(_)
            | Self::UnexpectedBody(_)
            | Self::InvalidRange { .. }
            | Self::Presign(_)
            | Self::Signature(_) => error_chain(self),
        }
    }

    /// Elements an S3 client expects beside Code and Message for this error.
    fn extra_elements(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Request(RequestError::MethodNotAllowed { method, resource }) => {
                vec![
                    ("Method", method.clone()),
                    ("ResourceType", resource.as_str().to_owned()),
                ]
            }
            Self::Request(RequestError::InvalidArgument { name, .. }) => vec![("ArgumentName", name.clone())],
            Self::UnknownHost(UnknownHost { host, .. }) => vec![("HostId", host.clone())],
            Self::InvalidRange { requested, size } => vec![
                ("RangeRequested", requested.clone()),
                ("ActualObjectSize", size.to_string()),
            ],
            _ => Vec::new(),
        }
    }

    /// The S3 error response. HEAD responses carry no body; `resource` is the
    /// request's path.
    pub fn into_response(self, request_id: &str, resource: &str, method: &Method) -> Response<ProxyBody> {
        let (status, code) = self.status_and_code();
        let message = self.client_message();
        let body = if *method == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(s3::xml::error_body(
                code,
                &message,
                resource,
                request_id,
                &self.extra_elements(),
            ))
        };
        let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed_unsync());
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert(s3::REQUEST_ID, id);
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        if let Self::InvalidRange { size, .. } = &self {
            if let Ok(range) = HeaderValue::from_str(&format!("bytes */{size}")) {
                headers.insert(header::CONTENT_RANGE, range);
            }
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::ResourceType;

    #[tokio::test]
    async fn method_not_allowed_is_s3_xml_with_allow() {
        let error = ProxyError::from(RequestError::MethodNotAllowed {
            method: "PUT".into(),
            resource: ResourceType::Object,
        });
        let response = error.into_response("REQ1", "/b/k", &Method::PUT);
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
        assert_eq!(response.headers()[s3::REQUEST_ID], "REQ1");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = std::str::from_utf8(&body).unwrap();
        assert!(body.contains("<Code>MethodNotAllowed</Code>"), "{body}");
        assert!(
            body.contains("<Method>PUT</Method><ResourceType>OBJECT</ResourceType>"),
            "{body}"
        );
        assert!(body.contains("<RequestId>REQ1</RequestId>"), "{body}");
    }

    #[tokio::test]
    async fn head_errors_have_no_body() {
        let error = ProxyError::from(UnknownHost {
            host: "nowhere".into(),
            catch_all: false,
        });
        let response = error.into_response("REQ2", "/b/k", &Method::HEAD);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(response.into_body().collect().await.unwrap().to_bytes().is_empty());
    }
}
