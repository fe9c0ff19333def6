//! Where the chunks the local tiers do not hold come from, behind one interface: the
//! origin (a fill) today; a region's owner peer, then the origin, with peers. The
//! request path asks for chunks and never learns which.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use http_body_util::BodyExt;

use super::fill::{Fill, FillError};
use crate::body::BoxError;
use crate::cache::{CacheKey, ChunkSink};
use crate::peers::auth::{PEER_DATE, PEER_SIGNATURE};
use crate::peers::client::PeerError;
use crate::peers::protocol::{chunk_reply, ChunkRequest, CHUNK_PATH, CHUNK_REPLY};
use crate::peers::Peers;
use crate::telemetry;

pub trait Upstream: Send + Sync {
    /// Fetches chunk `index` of the object version, pushing its bytes to `sink` as
    /// they arrive, and returns it whole once it is checked. The cache runs the
    /// future in a task of its own, so a client that goes away does not cancel it.
    fn fetch(self: Arc<Self>, index: u64, sink: ChunkSink) -> BoxFuture<'static, Result<Bytes, FillError>>;

    /// Whether chunk `index` is checked whole against the object's checksum before
    /// it is kept (its readers' last bytes then wait for the check).
    fn checks(&self, index: u64) -> bool;

    /// Checks chunk `index`, whole, wherever its bytes came from (a fill, a peer, a
    /// cold probe's body).
    fn verify(&self, index: u64, chunk: &Bytes) -> Result<(), FillError>;

    /// Whether this node keeps chunk `key` on its disk too, or in memory only (a
    /// copy of a chunk another node owns: repeated reads stay local, the region's
    /// disks hold each chunk once).
    fn owns(&self, key: &CacheKey) -> bool;
}

impl Upstream for Fill {
    fn fetch(self: Arc<Self>, index: u64, sink: ChunkSink) -> BoxFuture<'static, Result<Bytes, FillError>> {
        Fill::fetch(&self, index, sink, 0).boxed()
    }

    fn checks(&self, index: u64) -> bool {
        Fill::checks(self, index)
    }

    fn verify(&self, index: u64, chunk: &Bytes) -> Result<(), FillError> {
        Fill::verify(self, index, chunk)
    }

    fn owns(&self, _key: &CacheKey) -> bool {
        true
    }
}

/// Chunks from the region: the owner first (which serves from its tiers or fills
/// once for the whole region), then the next node in line, then the origin from
/// where they left off. A peer that fails is ejected for a while; a client never
/// sees a peer's failure, only, at worst, a chunk filled twice.
pub struct Regional {
    pub fill: Arc<Fill>,
    pub peers: Arc<Peers>,
    /// The chunk requests of this object version, but for their index.
    pub template: ChunkRequest,
}

/// How long an owner may take to start answering: longer than its own wait for the
/// origin's first byte (it may be filling), so that a slow origin does not eject it.
const PEER_FIRST_BYTE: Duration = Duration::from_secs(35);
/// Longest silence in the middle of a peer's answer: longer than the origin's.
const PEER_IDLE: Duration = Duration::from_secs(65);
/// Owner, then the next in line: a third would be a fill anyway.
const PEERS_TRIED: usize = 2;

impl Upstream for Regional {
    fn fetch(self: Arc<Self>, index: u64, sink: ChunkSink) -> BoxFuture<'static, Result<Bytes, FillError>> {
        async move {
            let request = ChunkRequest {
                index,
                ..self.template.clone()
            };
            let members = self.peers.members();
            let mut pushed = 0;
            let mut tried = 0;
            // Why this node fills a chunk it does not own, if it comes to that.
            let mut fallback = None;
            for member in members.ranked(request.key().stable_hash()) {
                // This node is next in line: it fills.
                let Some(address) = member.address else { break };
                if tried == PEERS_TRIED {
                    break;
                }
                let node = &member.hello.node;
                if self.peers.is_ejected(node) {
                    fallback = fallback.or(Some("ejected"));
                    continue;
                }
                tried += 1;
                match from_peer(&self.peers, address, &request, &sink, &mut pushed).await {
                    Ok(()) => {
                        telemetry::peer_request("reader", "ok");
                        let chunk = sink.assemble();
                        if let Err(error) = self.fill.verify(index, &chunk) {
                            // Bytes that are not the object's: this read is cut, and
                            // the retry goes elsewhere.
                            self.peers.eject(node);
                            return Err(error);
                        }
                        return Ok(chunk);
                    }
                    Err(PeerFailure::Changed) => return Err(FillError::Changed),
                    // The owner answered, but could not fill: the origin decides here.
                    Err(PeerFailure::Refused(status)) => {
                        telemetry::peer_request("reader", "refused");
                        fallback = Some("refused");
                        tracing::debug!(node, %status, "an owner could not serve a chunk; filling here");
                        break;
                    }
                    Err(PeerFailure::Broken(error)) => {
                        telemetry::peer_request("reader", "failed");
                        fallback = Some("failed");
                        tracing::warn!(node, error = %crate::error::error_chain(&*error), "a peer failed a chunk; trying the next");
                        self.peers.eject(node);
                    }
                }
            }
            if let Some(reason) = fallback {
                telemetry::peer_fallback(reason);
            }
            Fill::fetch(&self.fill, index, sink, pushed).await
        }
        .boxed()
    }

    fn checks(&self, index: u64) -> bool {
        self.fill.checks(index)
    }

    fn verify(&self, index: u64, chunk: &Bytes) -> Result<(), FillError> {
        self.fill.verify(index, chunk)
    }

    fn owns(&self, key: &CacheKey) -> bool {
        self.peers.owns(key.stable_hash())
    }
}

/// Why a peer did not deliver a chunk.
enum PeerFailure {
    /// The object changed at the origin (the owner's fill got a 412).
    Changed,
    /// The owner answered and could not serve it (its fill failed, or it will not
    /// fill for this object): not the peer's fault.
    Refused(http::StatusCode),
    /// The peer could not be reached, stalled, or broke the exchange: ejected.
    Broken(BoxError),
}

/// Streams the chunk from a peer into `sink`, past the `pushed` bytes already there.
async fn from_peer(
    peers: &Peers,
    address: std::net::SocketAddr,
    request: &ChunkRequest,
    sink: &ChunkSink,
    pushed: &mut u64,
) -> Result<(), PeerFailure> {
    let asked = std::time::Instant::now();
    let answer = peers.client.chunk(address, request, PEER_FIRST_BYTE).await;
    let outcome = match &answer {
        Ok(_) => "ok",
        Err(PeerError::Status(_)) => "refused",
        Err(_) => "failed",
    };
    metrics::histogram!(telemetry::PEER_SECONDS, "outcome" => outcome).record(asked.elapsed().as_secs_f64());
    let response = match answer {
        Ok(response) => response,
        Err(PeerError::Status(http::StatusCode::PRECONDITION_FAILED)) => return Err(PeerFailure::Changed),
        Err(PeerError::Status(status)) => return Err(PeerFailure::Refused(status)),
        Err(error) => return Err(PeerFailure::Broken(error.into())),
    };
    let broken = |error: BoxError| PeerFailure::Broken(error);
    let expected = request.length();
    // The answer must be signed for this request and this length by a node holding
    // the region's key: nothing else on the network can pass for an owner.
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let signed = chunk_reply(&request.encode(), expected);
    if let Err(refused) = peers.keys.current().verify(
        (CHUNK_REPLY, CHUNK_PATH, &signed),
        header(PEER_DATE),
        header(PEER_SIGNATURE),
        now,
    ) {
        return Err(broken(
            format!("the peer's answer is not signed for this chunk: {refused}").into(),
        ));
    }
    let declared = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared != Some(expected) {
        return Err(broken(
            format!("the peer declared {declared:?} bytes for a {expected}-byte chunk").into(),
        ));
    }
    let mut body = response.into_body();
    let mut got = 0u64;
    loop {
        let frame = match tokio::time::timeout(PEER_IDLE, body.frame()).await {
            Err(_) => return Err(broken("the peer went silent".into())),
            Ok(None) => break,
            Ok(Some(frame)) => frame.map_err(|e| broken(e.into()))?,
        };
        if let Ok(data) = frame.into_data() {
            let at = got;
            got += data.len() as u64;
            if got > expected {
                return Err(broken("the peer sent more than the chunk".into()));
            }
            if got > *pushed {
                sink.push(data.slice((*pushed).saturating_sub(at) as usize..));
                *pushed = got;
            }
            telemetry::peer_bytes("in", data.len() as u64);
        }
    }
    if got != expected {
        return Err(broken(format!("the peer sent {got} of {expected} bytes").into()));
    }
    Ok(())
}
