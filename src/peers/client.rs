//! Requests to peers: signed, over plain HTTP/1.1 on the peer port, with short
//! timeouts (a dead peer must cost a client little: the next in line, or the
//! origin, serves instead).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::auth::{KeyRing, PeerAuthError};
use super::protocol::{ChunkRequest, Hello, CHUNK_PATH, HELLO_PATH, PEER_SOURCE};
use super::wire;

/// How long a peer may take to connect: peers are in one region, a few hops away.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a peer may take to answer a hello, or to start answering a chunk (an
/// owner filling from the origin answers once the origin's first bytes are in).
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("the peer could not be reached")]
    Unreachable(#[source] hyper_util::client::legacy::Error),
    #[error("the peer did not answer in time")]
    Timeout,
    #[error("the peer answered {0}")]
    Status(StatusCode),
    #[error("the peer's hello does not read, or is not signed with the region's key")]
    BadHello,
    #[error("reading the peer's answer")]
    Body(#[source] hyper::Error),
    #[error("the peer's answer is not signed for this request: {0}")]
    Unsigned(#[source] PeerAuthError),
    #[error("the peer's answer is longer than any answer can be")]
    TooLong,
    #[error("the peer declared {declared:?} bytes for a {expected}-byte chunk")]
    Length { declared: Option<u64>, expected: u64 },
}

/// An owner's answer to a chunk request, its head checked: signed for the request
/// by a node holding the region's key, declaring the chunk's length and its tag's.
pub struct PeerChunk {
    /// Where the owner found the chunk (`memory`, `disk`, `fill`, `coalesced`).
    pub source: String,
    /// The chunk's bytes, then their tag: the reader's to count and check.
    pub body: Incoming,
    /// What the tag must be, once fed the chunk's bytes.
    pub tag: wire::BodyTag,
}

#[derive(Clone)]
pub struct PeerClient {
    http: Client<HttpConnector, Full<Bytes>>,
    keys: Arc<KeyRing>,
}

impl PeerClient {
    pub fn new(keys: Arc<KeyRing>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self { http, keys }
    }

    fn request(&self, method: Method, address: SocketAddr, path: &str, body: Vec<u8>) -> Request<Full<Bytes>> {
        let mut headers = http::HeaderMap::new();
        wire::sign_request(&mut headers, &self.keys.current(), method.as_str(), path, &body);
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{address}{path}"))
            .body(Full::new(Bytes::from(body)))
            .expect("a valid peer request");
        *request.headers_mut() = headers;
        request
    }

    /// Who the peer at `address` is.
    pub async fn hello(&self, address: SocketAddr) -> Result<Hello, PeerError> {
        let mut request = self.request(Method::GET, address, HELLO_PATH, Vec::new());
        let nonce = wire::nonce();
        request
            .headers_mut()
            .insert(wire::PEER_NONCE, http::HeaderValue::from_str(&nonce).expect("hex"));
        let answer = async {
            let response = self.http.request(request).await.map_err(PeerError::Unreachable)?;
            if response.status() != StatusCode::OK {
                return Err(PeerError::Status(response.status()));
            }
            let (parts, body) = response.into_parts();
            let body = whole(body).await?;
            // Only a node holding the region's key may claim a name and a weight.
            wire::verify_hello(&parts.headers, &self.keys.current(), &nonce, &body).map_err(|_| PeerError::BadHello)?;
            Hello::decode(std::str::from_utf8(&body).map_err(|_| PeerError::BadHello)?).ok_or(PeerError::BadHello)
        };
        tokio::time::timeout(HELLO_TIMEOUT, answer)
            .await
            .map_err(|_| PeerError::Timeout)?
    }

    /// Posts `body` to `path` on the peer at `address`: the status and body of its
    /// answer, within `timeout`, once the answer is known to be the owner's answer
    /// to this request (signed for it, whole) and no longer than an answer can be.
    pub async fn post(
        &self,
        address: SocketAddr,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), PeerError> {
        let asked = body.clone();
        let request = self.request(Method::POST, address, path, body);
        let answer = async {
            let response = self.http.request(request).await.map_err(PeerError::Unreachable)?;
            let (parts, body) = response.into_parts();
            let body = whole(body).await?;
            let answer = (parts.status.as_u16(), &body[..]);
            wire::verify_answer(&parts.headers, &self.keys.current(), path, &asked, answer)
                .map_err(PeerError::Unsigned)?;
            Ok((parts.status, body))
        };
        tokio::time::timeout(timeout, answer)
            .await
            .map_err(|_| PeerError::Timeout)?
    }

    /// Asks the peer at `address` for a chunk; its answer, once its head comes
    /// (within `first_byte`) and is checked.
    pub async fn chunk(
        &self,
        address: SocketAddr,
        chunk: &ChunkRequest,
        first_byte: Duration,
    ) -> Result<PeerChunk, PeerError> {
        let asked = chunk.encode();
        let request = self.request(Method::POST, address, CHUNK_PATH, asked.clone());
        let response = tokio::time::timeout(first_byte, self.http.request(request))
            .await
            .map_err(|_| PeerError::Timeout)?
            .map_err(PeerError::Unreachable)?;
        if response.status() != StatusCode::OK {
            return Err(PeerError::Status(response.status()));
        }
        // The chunk's blocks, each with its tag.
        let expected = wire::tagged_length(chunk.length());
        wire::verify_chunk(response.headers(), &self.keys.current(), &asked, expected).map_err(PeerError::Unsigned)?;
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared != Some(expected) {
            return Err(PeerError::Length { declared, expected });
        }
        let source = response
            .headers()
            .get(PEER_SOURCE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(PeerChunk {
            source,
            body: response.into_body(),
            tag: wire::BodyTag::checking(&self.keys.current(), &asked),
        })
    }
}

/// A hello's or a whole answer's body, read to its end: at most an answer's length
/// (a peer cannot make this node hold more).
async fn whole(body: Incoming) -> Result<Bytes, PeerError> {
    match Limited::new(body, wire::MAX_ANSWER_BYTES).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(error) => Err(match error.downcast::<hyper::Error>() {
            Ok(error) => PeerError::Body(*error),
            Err(_) => PeerError::TooLong,
        }),
    }
}
