//! Chunks from the region, as an [`Upstream`]: the owner first (which serves from
//! its tiers or fills once for the whole region), then the next node in line, then
//! the origin from where they left off.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use http::header::{self, HeaderMap};
use http_body_util::BodyExt;

use super::client::{PeerChunk, PeerError};
use super::protocol::{ChunkRequest, Signer, DROP_PATH};
use super::{wire, Peers};
use crate::body::BoxError;
use crate::cache::{CacheKey, ChunkSink, ObjectId};
use crate::fetch::{Fill, FillAuth, FillError, Priority, Upstream, Urgent};
use crate::s3::Crc;
use crate::telemetry;

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

/// Where an object version's chunks come from: with peers, the region (when the
/// fill's signer can travel to an owner); alone, the origin.
pub fn upstream(
    peers: Option<&Arc<Peers>>,
    fill: Arc<Fill>,
    object: &ObjectId,
    checksums: Option<&HeaderMap>,
) -> Arc<dyn Upstream> {
    let (Some(peers), Some(signer)) = (peers, signer(&fill.auth)) else {
        return fill;
    };
    Arc::new(Regional {
        template: ChunkRequest {
            object: object.clone(),
            etag: fill.etag.clone(),
            size: fill.size,
            chunk_size: fill.chunk_size,
            index: 0,
            authority: fill.authority.clone(),
            signer,
            checksums: checksum_pairs(checksums),
            priority: Priority::Client,
        },
        fill,
        peers: peers.clone(),
    })
}

/// How long an owner may take to start answering: longer than its own wait for the
/// origin's first byte (it may be filling), so that a slow origin does not eject it.
const PEER_FIRST_BYTE: Duration = Duration::from_secs(35);
/// Longest silence in the middle of a live peer's answer: longer than the origin's.
const PEER_IDLE: Duration = Duration::from_secs(65);
/// Owner, then the next in line: a third would be a fill anyway.
const PEERS_TRIED: usize = 2;

impl Upstream for Regional {
    fn fetch(
        self: Arc<Self>,
        index: u64,
        sink: ChunkSink,
        urgent: Urgent,
    ) -> BoxFuture<'static, Result<(Bytes, Crc), FillError>> {
        async move {
            let fetched = self.through_region(index, &sink, &urgent).await;
            if matches!(fetched, Err(FillError::ObjectChecksum { .. })) {
                self.drop_everywhere();
            }
            fetched
        }
        .boxed()
    }

    fn checks(&self, index: u64) -> bool {
        self.fill.checks(index)
    }

    fn verify(&self, index: u64, chunk: &Bytes) -> Result<Crc, FillError> {
        let checked = self.fill.verify(index, chunk);
        if matches!(checked, Err(FillError::ObjectChecksum { .. })) {
            self.drop_everywhere();
        }
        checked
    }

    fn owns(&self, key: &CacheKey) -> bool {
        self.peers.owns(key.stable_hash())
    }
}

impl Regional {
    /// Chunk `index` from its owner, else the next in line, else the origin.
    async fn through_region(&self, index: u64, sink: &ChunkSink, urgent: &Urgent) -> Result<(Bytes, Crc), FillError> {
        let mut request = ChunkRequest {
            index,
            ..self.template.clone()
        };
        // A version dropped here lately may still be held by an owner the drop has
        // not reached (it goes in the background): its chunks come from the origin.
        let fill = &self.fill;
        if fill.fills.cache.dropped_within(&fill.object, &fill.etag, DROP_REACH) {
            return Fill::fetch(fill, index, sink.clone(), 0, urgent.clone()).await;
        }
        let members = self.peers.members();
        let mut pushed = 0;
        let mut tried = 0;
        // Why this node fills a chunk it does not own, if it comes to that.
        let mut fallback = None;
        for (rank, member) in members.ranked(request.key().stable_hash()).into_iter().enumerate() {
            // This node is next in line: it fills.
            let Some(address) = member.address else { break };
            if tried == PEERS_TRIED {
                break;
            }
            let node = &member.hello.node;
            // The owner, if it said it is stopping, is waited for rather than skipped
            // once found down (the next in line is not: one wait per chunk at most).
            let leaving = rank == 0 && self.peers.leaving(node);
            if self.peers.is_ejected(node) && !(leaving && self.peers.waited_for(node)) {
                fallback = fallback.or(Some("ejected"));
                continue;
            }
            tried += 1;
            let mut fetched = from_peer(&self.peers, address, &mut request, urgent, (sink, &mut pushed)).await;
            // Stopped for a restart: once it is back (with its disk), it is asked once
            // more, at the address it has now.
            if matches!(fetched, Err(PeerFailure::Broken(_))) && leaving && self.peers.returned(node).await {
                if let Some(address) = self.peers.address_of(node) {
                    fetched = from_peer(&self.peers, address, &mut request, urgent, (sink, &mut pushed)).await;
                }
            }
            match fetched {
                Ok(()) => {
                    telemetry::peer_request("reader", "ok");
                    self.peers.recovered(node);
                    let chunk = sink.assemble();
                    return match self.fill.verify(index, &chunk) {
                        Ok(crc) => Ok((chunk, crc)),
                        Err(error) => {
                            // The owner's own bytes are not the object's: left alone for
                            // a while; the retry goes elsewhere.
                            self.peers.eject(node);
                            Err(error)
                        }
                    };
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
        Fill::fetch(&self.fill, index, sink.clone(), pushed, urgent.clone()).await
    }

    /// Tells every node of the region to drop this version (its chunks do not add
    /// up to the object), in the background.
    fn drop_everywhere(&self) {
        let body = self.template.encode();
        for member in &self.peers.members().members {
            let Some(address) = member.address else { continue };
            let (peers, body) = (self.peers.clone(), body.clone());
            tokio::spawn(async move {
                if let Err(error) = peers.client.post(address, DROP_PATH, body, DROP_TIMEOUT).await {
                    tracing::warn!(%address, error = %crate::error::error_chain(&error), "telling a peer to drop a version");
                }
            });
        }
    }
}

/// How long a peer may take to say it dropped a version.
const DROP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after a drop here the version's chunks are not asked of peers: longer
/// than every peer's drop may take.
const DROP_REACH: Duration = Duration::from_secs(30);

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

/// How long a reader asks again an owner that says its origin budget keeps the
/// chunk waiting (429), by priority: past it, the reader fills the chunk itself.
fn busy_patience(priority: Priority) -> Duration {
    match priority {
        Priority::Background => Duration::from_secs(300),
        _ => Duration::from_secs(60),
    }
}

/// The chunk from a peer into `sink` (see [`from_peer_once`]), asked again (at the
/// chunk's priority then) while the peer says the chunk's fill waits for its turn
/// in its origin budget: its fill goes on meanwhile, and the next ask finds it
/// under way. A 429 sooner than an owner says it is not an owner's: refused.
async fn from_peer(
    peers: &Peers,
    address: std::net::SocketAddr,
    request: &mut ChunkRequest,
    urgent: &Urgent,
    (sink, pushed): (&ChunkSink, &mut u64),
) -> Result<(), PeerFailure> {
    let first = std::time::Instant::now();
    loop {
        request.priority = urgent.get();
        let asked = std::time::Instant::now();
        match from_peer_once(peers, address, request, sink, pushed).await {
            Err(PeerFailure::Refused(http::StatusCode::TOO_MANY_REQUESTS))
                if asked.elapsed() >= super::protocol::busy_after(request.priority) / 2
                    && first.elapsed() < busy_patience(request.priority) =>
            {
                telemetry::peer_request("reader", "busy");
                tokio::time::sleep(Duration::from_millis(fastrand::u64(50..250))).await;
            }
            outcome => return outcome,
        }
    }
}

/// Streams the chunk from a peer into `sink`, past the `pushed` bytes already there,
/// a block at a time, each once its tag shows it is the owner's answer to this
/// request: no byte of a block is used before (a byte changed on the way is a
/// broken exchange, never a byte served).
async fn from_peer_once(
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
    let PeerChunk { mut body, tag, .. } = match answer {
        Ok(chunk) => chunk,
        Err(PeerError::Status(http::StatusCode::PRECONDITION_FAILED)) => return Err(PeerFailure::Changed),
        Err(PeerError::Status(status)) => return Err(PeerFailure::Refused(status)),
        Err(error) => return Err(PeerFailure::Broken(error.into())),
    };
    let broken = |error: BoxError| PeerFailure::Broken(error);
    let mut blocks = Blocks {
        tag,
        pending: BytesMut::new(),
        got: 0,
        length: request.length(),
    };
    loop {
        let next = peers.client.patiently(address, body.frame());
        let frame = match tokio::time::timeout(PEER_IDLE, next).await {
            Err(_) => return Err(broken("the peer sent nothing for too long".into())),
            Ok(Err(silent)) => return Err(broken(silent.into())),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(frame))) => frame.map_err(|e| broken(e.into()))?,
        };
        if let Ok(data) = frame.into_data() {
            telemetry::peer_bytes("in", data.len() as u64);
            for (at, block) in blocks.accept(data).map_err(broken)? {
                let end = at + block.len() as u64;
                if end > *pushed {
                    sink.push(block.slice((*pushed).saturating_sub(at) as usize..));
                    *pushed = end;
                }
            }
        }
    }
    if blocks.got != blocks.length || !blocks.pending.is_empty() {
        return Err(broken(
            format!("the peer sent {} of {} bytes", blocks.got, blocks.length).into(),
        ));
    }
    Ok(())
}

/// A chunk answer's bytes as they arrive, given out a checked block at a time (in
/// TLS, as they arrive: the channel checked them).
struct Blocks {
    tag: Option<wire::BodyTag>,
    /// Received, not yet checked.
    pending: BytesMut,
    /// Bytes of the chunk checked so far.
    got: u64,
    length: u64,
}

impl Blocks {
    /// Takes `data`, the answer's next bytes: the chunk's bytes now usable, each at
    /// its offset in the chunk. In TLS, `data` itself, not copied; with tags, the
    /// blocks it completes, once their tags check.
    fn accept(&mut self, data: Bytes) -> Result<Vec<(u64, Bytes)>, BoxError> {
        if self.tag.is_none() {
            let at = self.got;
            self.got += data.len() as u64;
            if self.got > self.length {
                return Err("the peer sent more than the chunk".into());
            }
            return Ok(vec![(at, data)]);
        }
        self.pending.extend_from_slice(&data);
        let mut blocks = Vec::new();
        while let Some(block) = self.next_checked()? {
            blocks.push((self.got - block.len() as u64, block));
        }
        Ok(blocks)
    }

    /// The next block, once it and its tag are in and the tag checks.
    fn next_checked(&mut self) -> Result<Option<Bytes>, BoxError> {
        let left = self.length - self.got;
        if left == 0 {
            return match self.pending.is_empty() {
                true => Ok(None),
                false => Err("the peer sent more than the chunk".into()),
            };
        }
        let Some(tag) = self.tag.as_mut() else {
            return Ok(None);
        };
        let block = wire::TAG_BLOCK.min(left) as usize;
        if self.pending.len() < block + wire::BODY_TAG_LEN {
            return Ok(None);
        }
        let bytes = self.pending.split_to(block).freeze();
        let sent = self.pending.split_to(wire::BODY_TAG_LEN);
        tag.update(&bytes);
        if !tag.matches(&sent) {
            metrics::counter!(telemetry::CORRUPT_CHUNKS, "found" => "peer").increment(1);
            return Err("a block of the chunk does not match its tag".into());
        }
        self.got += block as u64;
        Ok(Some(bytes))
    }
}

/// What a reader tells an owner about who may sign its fill: `None` when the
/// signer cannot travel (a header value that is not text).
pub fn signer(auth: &FillAuth) -> Option<Signer> {
    match auth {
        FillAuth::Proxy { target, region, .. } => Some(Signer::Proxy {
            target: target.as_str().to_owned(),
            region: region.clone(),
        }),
        FillAuth::Client { target, headers } => Some(Signer::Client {
            target: target.as_str().to_owned(),
            headers: headers
                .iter()
                .filter(|(name, _)| *name != header::HOST)
                .map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
                .collect::<Option<_>>()?,
        }),
    }
}

/// The object's checksum headers, as text pairs for a peer.
fn checksum_pairs(checksums: Option<&HeaderMap>) -> Vec<(String, String)> {
    checksums
        .into_iter()
        .flatten()
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect()
}
