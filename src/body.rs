//! The body types every layer streams: what the proxy sends, and the error a body
//! may fail with.

use bytes::Bytes;

/// The error type of bodies streamed through the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body the proxy sends.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
