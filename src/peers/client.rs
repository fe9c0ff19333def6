//! Requests to peers: signed, over HTTP/1.1 on the peer port (in mutual TLS when
//! `peers.tls` is set), with short timeouts (a dead peer must cost a client little:
//! the next in line, or the origin, serves instead).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};

use super::auth::{KeyRing, PeerAuthError};
use super::protocol::{ChunkRequest, Hello, CHUNK_PATH, HELLO_PATH, PEER_SOURCE};
use super::tls::{self, PeerTls};
use super::wire;

/// How long a peer may take to answer a hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a peer may take: to accept a connection (`peers.connect_timeout`: peers
/// are in one region, a few hops away), and to show it is alive (`peers.stall_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct PeerTimeouts {
    pub connect: Duration,
    /// A peer whose chunk answer sends nothing for half this long is asked whether
    /// it is alive (a hello, which must come back within this long): one that does not
    /// answer is given up for that chunk, one that does is waited for (an owner
    /// filling from a slow origin sends nothing until the origin's bytes come). And
    /// the kernel breaks a peer connection on which nothing, request bytes or
    /// keepalive probes (sent after a second of silence), has been acknowledged for
    /// this long: a vanished host (a cut cable, a hung kernel, a partition) costs
    /// seconds, not the origin's timeouts.
    pub stall: Duration,
}

impl Default for PeerTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_millis(500),
            stall: Duration::from_millis(1500),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("the peer could not be reached")]
    Unreachable(#[source] hyper_util::client::legacy::Error),
    #[error("the peer did not answer in time")]
    Timeout,
    #[error("the peer went silent and does not answer a hello")]
    Silent,
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
    #[error("TLS with the peer failed")]
    Tls(#[source] std::io::Error),
    #[error("the peer's certificate does not name {node}, the node its hello claims")]
    NotNamed { node: String },
}

/// An owner's answer to a chunk request, its head checked: signed for the request
/// by a node holding the region's key, declaring the chunk's length and its tag's.
pub struct PeerChunk {
    /// Where the owner found the chunk (`memory`, `disk`, `fill`, `coalesced`).
    pub source: String,
    /// The chunk's bytes, then their tag: the reader's to count and check.
    pub body: Incoming,
    /// What each block's tag must be, once fed the block's bytes (`None` in TLS:
    /// the answer has no tags).
    pub tag: Option<wire::BodyTag>,
}

#[derive(Clone)]
pub struct PeerClient {
    transport: Transport,
    keys: Arc<KeyRing>,
    timeouts: PeerTimeouts,
}

/// How requests reach peers: plain HTTP, or mutual TLS.
#[derive(Clone)]
enum Transport {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls {
        http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
        /// For hellos: any member's certificate (the answer names the member).
        hello: tokio_rustls::TlsConnector,
        /// The node each address's hello named, checked against its certificate:
        /// every other request's certificate must name it too.
        names: Arc<RwLock<HashMap<SocketAddr, String>>>,
        /// Whether certificates name their node (else they only show the region).
        per_node: bool,
    },
}

/// The server name a request to a member's address must find in its certificate:
/// the node its hello named.
struct MemberNames(Arc<RwLock<HashMap<SocketAddr, String>>>);

impl hyper_rustls::ResolveServerName for MemberNames {
    fn resolve(&self, uri: &http::Uri) -> Result<ServerName<'static>, Box<dyn std::error::Error + Sync + Send>> {
        let address: SocketAddr = uri.authority().ok_or("no authority")?.as_str().parse()?;
        let names = self.0.read().unwrap_or_else(|p| p.into_inner());
        let node = names.get(&address).ok_or("no hello from this address yet")?;
        Ok(ServerName::try_from(node.clone())?)
    }
}

impl PeerClient {
    /// A client signing with `keys`, in mutual TLS with `tls` when it is set.
    pub fn new(keys: Arc<KeyRing>, tls: Option<&Arc<PeerTls>>, timeouts: PeerTimeouts) -> std::io::Result<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeouts.connect));
        connector.set_nodelay(true);
        // Keepalive times are whole seconds to the kernel; the user timeout (in
        // milliseconds) decides when unacknowledged probes or bytes break it.
        connector.set_keepalive(Some(Duration::from_secs(1)));
        connector.set_keepalive_interval(Some(Duration::from_secs(1)));
        connector.set_keepalive_retries(Some(timeouts.stall.as_secs().max(1) as u32 + 1));
        connector.set_tcp_user_timeout(Some(timeouts.stall));
        let builder = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .clone();
        let transport = match tls {
            None => Transport::Plain(builder.build(connector)),
            Some(tls) => {
                connector.enforce_http(false);
                let names = Arc::new(RwLock::new(HashMap::new()));
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls.client_config(false)?)
                    .https_only()
                    .with_server_name_resolver(MemberNames(names.clone()))
                    .enable_http1()
                    .wrap_connector(connector);
                Transport::Tls {
                    http: builder.build(https),
                    hello: tokio_rustls::TlsConnector::from(Arc::new(tls.client_config(true)?)),
                    names,
                    per_node: tls.per_node(),
                }
            }
        };
        Ok(Self {
            transport,
            keys,
            timeouts,
        })
    }

    pub fn timeouts(&self) -> PeerTimeouts {
        self.timeouts
    }

    /// Whether requests to peers go in mutual TLS.
    pub fn is_protected(&self) -> bool {
        matches!(self.transport, Transport::Tls { .. })
    }

    fn send(&self, request: Request<Full<Bytes>>) -> ResponseFuture {
        match &self.transport {
            Transport::Plain(http) => http.request(request),
            Transport::Tls { http, .. } => http.request(request),
        }
    }

    fn request(&self, method: Method, address: SocketAddr, path: &str, body: Vec<u8>) -> Request<Full<Bytes>> {
        let mut headers = http::HeaderMap::new();
        wire::sign_request(&mut headers, &self.keys.current(), method.as_str(), path, &body);
        let scheme = match self.transport {
            Transport::Plain(_) => "http",
            Transport::Tls { .. } => "https",
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{scheme}://{address}{path}"))
            .body(Full::new(Bytes::from(body)))
            .expect("a valid peer request");
        *request.headers_mut() = headers;
        request
    }

    /// Who the peer at `address` is.
    pub async fn hello(&self, address: SocketAddr) -> Result<Hello, PeerError> {
        self.hello_within(address, HELLO_TIMEOUT).await
    }

    /// Whether the peer at `address` answers a hello within the stall timeout:
    /// asked of a peer that has sent nothing for a while, to tell one waiting on
    /// its origin (alive, worth waiting for) from one that is gone.
    pub async fn answers(&self, address: SocketAddr) -> bool {
        self.hello_within(address, self.timeouts.stall).await.is_ok()
    }

    /// Waits for `step` (a peer's answer, or its next bytes) as long as the peer at
    /// `address` shows it is alive: after half the stall timeout without them, it
    /// must answer a hello within the stall timeout, and again after each such wait. A
    /// peer that does not is gone, or hung: the caller goes elsewhere, seconds after
    /// it went quiet.
    pub async fn patiently<T>(
        &self,
        address: SocketAddr,
        step: impl std::future::Future<Output = T>,
    ) -> Result<T, PeerError> {
        let quiet = self.timeouts.stall / 2;
        tokio::pin!(step);
        loop {
            tokio::select! {
                done = &mut step => return Ok(done),
                () = tokio::time::sleep(quiet) => {}
            }
            // The bytes may come while the hello is out: whichever is first.
            tokio::select! {
                done = &mut step => return Ok(done),
                alive = self.answers(address) => {
                    if !alive {
                        return Err(PeerError::Silent);
                    }
                }
            }
        }
    }

    async fn hello_within(&self, address: SocketAddr, timeout: Duration) -> Result<Hello, PeerError> {
        let mut request = self.request(Method::GET, address, HELLO_PATH, Vec::new());
        let nonce = wire::nonce();
        request
            .headers_mut()
            .insert(wire::PEER_NONCE, http::HeaderValue::from_str(&nonce).expect("hex"));
        let answer = async {
            let (response, certificate) = match &self.transport {
                Transport::Plain(http) => (http.request(request).await.map_err(PeerError::Unreachable)?, None),
                Transport::Tls { hello, .. } => {
                    let (response, certificate) =
                        tls_exchange(hello, (address, self.timeouts.connect), request).await?;
                    (response, Some(certificate))
                }
            };
            if response.status() != StatusCode::OK {
                return Err(PeerError::Status(response.status()));
            }
            let (parts, body) = response.into_parts();
            let body = whole(body).await?;
            // Only a node holding the region's key may claim a name and a weight.
            wire::verify_hello(&parts.headers, &self.keys.current(), &nonce, &body).map_err(|_| PeerError::BadHello)?;
            let hello = Hello::decode(std::str::from_utf8(&body).map_err(|_| PeerError::BadHello)?)
                .ok_or(PeerError::BadHello)?;
            // And, in TLS with certificates per node, only the node its certificate
            // names: a node of the region cannot pass for another.
            if let (Some(certificate), Transport::Tls { names, per_node, .. }) = (certificate, &self.transport) {
                if *per_node && !tls::names(&certificate, &hello.node) {
                    return Err(PeerError::NotNamed { node: hello.node });
                }
                names
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(address, hello.node.clone());
            }
            Ok(hello)
        };
        tokio::time::timeout(timeout, answer)
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
            let response = self.send(request).await.map_err(PeerError::Unreachable)?;
            let (parts, body) = response.into_parts();
            let body = whole(body).await?;
            let answer = (parts.status.as_u16(), &body[..]);
            wire::verify_answer(&parts.headers, &self.keys.current(), path, &asked, answer)
                .map_err(PeerError::Unsigned)?;
            Ok((parts.status, body))
        };
        // Not asked to show it is alive: a cold gate holds its asker, silent, while
        // another node probes (a vanished peer's connection is broken by the kernel).
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
        let response = tokio::time::timeout(first_byte, self.patiently(address, self.send(request)))
            .await
            .map_err(|_| PeerError::Timeout)??
            .map_err(PeerError::Unreachable)?;
        if response.status() != StatusCode::OK {
            return Err(PeerError::Status(response.status()));
        }
        // The chunk's blocks, each with its tag (in TLS, the chunk alone).
        let tagged = !self.is_protected();
        let expected = wire::tagged_length(chunk.length(), tagged);
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
            tag: tagged.then(|| wire::BodyTag::checking(&self.keys.current(), &asked)),
        })
    }
}

/// One request in TLS on a connection of its own, and the certificate the peer
/// presented (signed by the region's CA; which node it names is the caller's to check).
async fn tls_exchange(
    connector: &tokio_rustls::TlsConnector,
    (address, connect_timeout): (SocketAddr, Duration),
    request: Request<Full<Bytes>>,
) -> Result<(http::Response<Incoming>, CertificateDer<'static>), PeerError> {
    let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| PeerError::Timeout)?
        .map_err(PeerError::Tls)?;
    let _ = tcp.set_nodelay(true);
    let stream = connector
        .connect(ServerName::IpAddress(address.ip().into()), tcp)
        .await
        .map_err(PeerError::Tls)?;
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|certificate| certificate.clone().into_owned())
        .ok_or_else(|| PeerError::Tls(std::io::Error::other("the peer presented no certificate")))?;
    // On a connection of its own: the target in origin form, as a pooled client sends it.
    let mut request = request;
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    *request.uri_mut() = target.parse().map_err(|e| PeerError::Tls(std::io::Error::other(e)))?;
    request.headers_mut().insert(
        http::header::HOST,
        http::HeaderValue::from_str(&address.to_string()).expect("an address"),
    );
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(PeerError::Body)?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(PeerError::Body)?;
    Ok((response, certificate))
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
