//! The owner's side of the peer wire: who this node is, the cold gate of the
//! objects whose metadata keys it owns, and the chunks it owns, served from its
//! tiers or filled from the origin once for the whole region. A peer's request is
//! never passed on to another peer. Every request must be signed with the region's
//! key; an unsigned or stale one gets 403 and nothing else.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{stream, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};

use super::auth::PeerKeys;
use super::protocol::{
    ChunkRequest, Hello, ObjectNote, Signer, CHUNK_PATH, COLD_PATH, DROP_PATH, HELLO_PATH, LEARNED_PATH, LEAVING_PATH,
    MAX_REQUEST_BYTES, PEER_SOURCE, PINS_ALL_PATH, PINS_PATH,
};
use super::{wire, Peers};
use crate::body::{first_frames, BoxError, ProxyBody};
use crate::cache::{ChunkCache, ChunkRead, ObjectId, ObjectMeta};
use crate::credentials::FillCredentials;
use crate::fetch::check::Version;
use crate::fetch::{Fill, FillAuth, FillError, Fills};
use crate::origin::Region;
use crate::telemetry;

/// The cold gates this node holds for the region (the herd's, which the peers do
/// not know: whoever wires both bridges them).
pub trait ColdOwner: Send + Sync {
    /// Another node is about to probe `object` cold: the metadata, or its turn.
    fn hold<'a>(&'a self, object: &'a ObjectId) -> BoxFuture<'a, Cold>;
    /// What the probe of the node given the turn learned.
    fn told(&self, object: &ObjectId, meta: Option<ObjectMeta>);
}

/// What the owner of an object's gate answers a node about to probe it cold.
pub enum Cold {
    /// The object's metadata (200).
    Known(Box<ObjectMeta>),
    /// The asker's turn (202): the owner holds it until told what was learned.
    Yours,
    /// Neither (404): the asker decides alone.
    Unknown,
}

/// The most chunks a peer's drop may name (a 16 TiB object of 16 MiB chunks).
const MAX_DROPPED_CHUNKS: u64 = 1 << 20;

/// What the peer listener serves from: this node's view of the region, its cache,
/// its origins and fill memory, and the gates it holds.
pub struct PeerServer {
    pub peers: Arc<Peers>,
    pub cache: Arc<ChunkCache>,
    pub regions: Vec<Arc<Region>>,
    pub credentials: Option<Arc<FillCredentials>>,
    pub fills: Arc<Fills>,
    pub cold: Arc<dyn ColdOwner>,
    pub pins: Arc<crate::pins::Pins>,
}

fn status(status: StatusCode) -> Response<ProxyBody> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response
}

fn answer(body: Bytes) -> Response<ProxyBody> {
    Response::new(Full::new(body).map_err(|never| match never {}).boxed_unsync())
}

/// A whole answer to the request to `path` with body `request`, signed for it.
fn signed((code, body): (StatusCode, Bytes), path: &str, request: &[u8], keys: &PeerKeys) -> Response<ProxyBody> {
    let mut response = answer(body.clone());
    *response.status_mut() = code;
    wire::sign_answer(response.headers_mut(), keys, path, request, (code.as_u16(), &body));
    response
}

impl PeerServer {
    /// Answers one request on the peer listener.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ProxyBody>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let peers = &self.peers;
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return status(StatusCode::PAYLOAD_TOO_LARGE),
        };
        let path = parts.uri.path();
        let (keys, now) = (peers.keys.current(), wire::now());
        if let Err(refused) = wire::verify_request(&parts.headers, &keys, parts.method.as_str(), path, &body) {
            tracing::warn!(path, reason = %refused, "peer request refused");
            telemetry::peer_request("owner", "refused");
            return status(StatusCode::FORBIDDEN);
        }
        match (&parts.method, path) {
            (&Method::GET, HELLO_PATH) => {
                // The answer is signed too: only a node holding the region's key can
                // claim a name and a share of the keys.
                let hello = Bytes::from(peers.hello.encode());
                let nonce = parts.headers.get(wire::PEER_NONCE).and_then(|v| v.to_str().ok());
                let mut response = answer(hello.clone());
                wire::sign_hello(response.headers_mut(), &keys, nonce, &hello);
                response
            }
            (&Method::POST, COLD_PATH) => match ObjectNote::decode(&body) {
                Ok(note) => signed(self.serve_cold(note.object).await, path, &body, &peers.keys.current()),
                Err(_) => status(StatusCode::BAD_REQUEST),
            },
            (&Method::POST, LEARNED_PATH) => match ObjectNote::decode(&body) {
                Ok(note) => signed(self.learned(note), path, &body, &keys),
                Err(_) => status(StatusCode::BAD_REQUEST),
            },
            (&Method::POST, DROP_PATH) => match ChunkRequest::decode(&body) {
                Ok(version) => signed(self.drop_version(version), path, &body, &keys),
                Err(_) => status(StatusCode::BAD_REQUEST),
            },
            (&Method::POST, LEAVING_PATH) => match std::str::from_utf8(&body).ok().and_then(Hello::decode) {
                Some(hello) => {
                    peers.said_leaving(&hello);
                    signed((StatusCode::OK, Bytes::new()), path, &body, &keys)
                }
                None => status(StatusCode::BAD_REQUEST),
            },
            (&Method::POST, PINS_PATH) => match serde_json::from_slice(&body) {
                Ok(pin) => {
                    let answer = match self.pins.accept(pin) {
                        Ok(_) => (StatusCode::OK, Bytes::new()),
                        Err(refusal) => (refusal.status, Bytes::from(refusal.message)),
                    };
                    signed(answer, path, &body, &keys)
                }
                Err(_) => status(StatusCode::BAD_REQUEST),
            },
            (&Method::POST, PINS_ALL_PATH) => {
                signed((StatusCode::OK, Bytes::from(self.pins.table())), path, &body, &keys)
            }
            (&Method::POST, CHUNK_PATH) => match ChunkRequest::decode(&body) {
                Ok(chunk) => {
                    let mut response = self.serve_chunk(chunk, &body).await;
                    // The keys in force now (they may have rotated during the fill).
                    wire::sign_chunk(response.headers_mut(), &peers.keys.current(), &body, now);
                    response
                }
                Err(error) => {
                    tracing::warn!(%error, "a peer's chunk request");
                    status(StatusCode::BAD_REQUEST)
                }
            },
            _ => status(StatusCode::NOT_FOUND),
        }
    }

    /// Another node is about to probe `object` cold: this node holds the object's
    /// gate. It answers with the metadata when it knows it (once any probe under way
    /// here ends), or gives the asker the turn and holds it for it until it tells
    /// what it learned (or, silent, for as long as a probe may take).
    async fn serve_cold(&self, object: ObjectId) -> (StatusCode, Bytes) {
        match self.cold.hold(&object).await {
            Cold::Known(meta) => (StatusCode::OK, Bytes::from(meta.to_bytes())),
            Cold::Yours => (StatusCode::ACCEPTED, Bytes::new()),
            Cold::Unknown => (StatusCode::NOT_FOUND, Bytes::new()),
        }
    }

    /// What the probe of a node given the turn learned: the waiters here (and the
    /// nodes they answer for) go on with it.
    fn learned(&self, note: ObjectNote) -> (StatusCode, Bytes) {
        let meta = note.meta.as_deref().and_then(ObjectMeta::from_bytes);
        self.cold.told(&note.object, meta);
        (StatusCode::OK, Bytes::new())
    }

    /// A reader found that a version's chunks do not add up to the object: this
    /// node's chunks of it go too (which one is wrong cannot be told).
    fn drop_version(&self, version: ChunkRequest) -> (StatusCode, Bytes) {
        if version.chunk_size != self.cache.chunk_size() {
            return (StatusCode::CONFLICT, Bytes::new());
        }
        if version.size.div_ceil(version.chunk_size) > MAX_DROPPED_CHUNKS {
            return (StatusCode::BAD_REQUEST, Bytes::new());
        }
        tracing::warn!(
            bucket = version.object.bucket,
            key = version.object.key,
            etag = version.etag,
            "a peer found an object's chunks do not add up to its checksum; dropping them here"
        );
        self.fills.ledger.forget(&Version {
            object: version.object.clone(),
            etag: version.etag.clone(),
        });
        self.cache.drop_version(&version.object, &version.etag, version.size);
        (StatusCode::OK, Bytes::new())
    }

    /// A chunk this node owns (or is next in line for), from its tiers or one fill,
    /// followed by its tag for the request `asked` (the chunk request's body).
    async fn serve_chunk(&self, chunk: ChunkRequest, asked: &[u8]) -> Response<ProxyBody> {
        if chunk.chunk_size != self.cache.chunk_size() {
            // Another chunk size makes other keys: the reader fills for itself.
            return status(StatusCode::CONFLICT);
        }
        let Some(region) = self
            .regions
            .iter()
            .find(|region| region.client.origin().to_string() == chunk.object.origin)
        else {
            return status(StatusCode::NOT_FOUND);
        };
        let auth = match self.fill_auth(&chunk.signer) {
            Ok(auth) => auth,
            Err(refused) => return status(refused),
        };
        let checksums = header_map(&chunk.checksums).unwrap_or_default();
        let version = (chunk.etag.clone(), chunk.size, Some(&checksums));
        let fill = Fill::new(
            region,
            chunk.authority.clone(),
            auth,
            &chunk.object,
            version,
            &self.fills,
        );
        let (index, priority, key) = (chunk.index, chunk.priority, chunk.key());
        // The chunk's priority, from now on and as long as its fetch lives: a fill of
        // it already waiting at a lower one waits at this one now.
        let urgent = self.fills.budget.urgency(&key, priority);
        let mut read = self
            .cache
            .chunk(key, false, move |sink| fill.fetch(index, sink, 0, urgent))
            .await;
        let source = read.source;
        // The first bytes before the head: a fill that fails outright is a clean 502,
        // and the reader goes on to the next in line. A fill still waiting for its turn
        // in the origin budget is a 429 before the reader's patience ends: the reader
        // asks again, and finds the fill under way.
        let Ok(first) = tokio::time::timeout(super::protocol::busy_after(priority), read.next()).await else {
            telemetry::peer_request("owner", "busy");
            return status(StatusCode::TOO_MANY_REQUESTS);
        };
        let first = match first {
            Some(Ok((0, first))) => first,
            // The object changed at the origin: the reader relays that verdict.
            Some(Err(error))
                if error
                    .fill_error::<FillError>()
                    .is_some_and(|e| matches!(e, FillError::Changed)) =>
            {
                return status(StatusCode::PRECONDITION_FAILED);
            }
            _ => {
                telemetry::peer_request("owner", "failed");
                return status(StatusCode::BAD_GATEWAY);
            }
        };
        telemetry::peer_request("owner", "ok");
        let length = chunk.length();
        // In TLS the channel authenticates every byte; without it, the tags do.
        let tag = self
            .peers
            .tls
            .is_none()
            .then(|| wire::BodyTag::signing(&self.peers.keys.current(), asked));
        let tagged = wire::tagged_length(length, tag.is_some());
        let body = chunk_body(first, read, length, tag);
        let mut response = Response::new(body);
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(tagged));
        response
            .headers_mut()
            .insert(PEER_SOURCE, HeaderValue::from_static(source.as_str()));
        response
    }

    /// Who signs a fill for a reader: this node's own credentials (valid ones), or
    /// the reader's client's request as it travelled; else the status to answer.
    fn fill_auth(&self, signer: &Signer) -> Result<FillAuth, StatusCode> {
        match signer {
            Signer::Proxy { target, region } => match (
                self.credentials.as_ref().filter(|c| c.current().is_some()),
                PathAndQuery::try_from(target.as_str()),
            ) {
                (Some(credentials), Ok(target)) => Ok(FillAuth::Proxy {
                    target,
                    credentials: credentials.clone(),
                    region: region.clone(),
                }),
                _ => Err(StatusCode::FORBIDDEN),
            },
            Signer::Client { target, headers } => {
                match (PathAndQuery::try_from(target.as_str()), header_map(headers)) {
                    (Ok(target), Some(headers)) => Ok(FillAuth::Client { target, headers }),
                    _ => Err(StatusCode::BAD_REQUEST),
                }
            }
        }
    }
}

fn header_map(pairs: &[(String, String)]) -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_str(value).ok()?,
        );
    }
    Some(headers)
}

/// A chunk's answer to a peer: `first`, then the rest of `read`, checked to line up
/// and end at the chunk's `length`, in blocks each followed by its `tag` (when there
/// is one).
fn chunk_body(first: Bytes, read: ChunkRead, length: u64, tag: Option<wire::BodyTag>) -> ProxyBody {
    let pieces = first_frames(first)
        .scan(0u64, |at, bytes| {
            let piece = (*at, bytes);
            *at += piece.1.len() as u64;
            std::future::ready(Some(Ok::<_, BoxError>(piece)))
        })
        .chain(stream::unfold(read, |mut read| async move {
            let next = read.next().await?;
            Some((next.map_err(|e| -> BoxError { Box::new(e) }), read))
        }));
    let mut tagging = Tagging { tag, sent: 0, length };
    let body = pieces
        // Cut at block boundaries first, so that no block's tag is computed before
        // the bytes ahead of it are sent (a whole chunk from memory is one piece).
        .flat_map(|piece| stream::iter(at_blocks(piece)))
        .map(move |piece| tagging.frames(piece))
        .flat_map(|frames| match frames {
            Ok(frames) => stream::iter(frames.into_iter().map(|bytes| Ok(Frame::data(bytes)))).left_stream(),
            Err(error) => stream::once(std::future::ready(Err(error))).right_stream(),
        });
    StreamBody::new(body).boxed_unsync()
}

/// A piece of a chunk (at its offset), cut where tag blocks end.
fn at_blocks(piece: Result<(u64, Bytes), BoxError>) -> Vec<Result<(u64, Bytes), BoxError>> {
    let Ok((mut at, mut bytes)) = piece else {
        return vec![piece];
    };
    let mut parts = Vec::with_capacity(1);
    while !bytes.is_empty() {
        let block_left = wire::TAG_BLOCK - at % wire::TAG_BLOCK;
        let part = bytes.split_to(block_left.min(bytes.len() as u64) as usize);
        parts.push(Ok((at, part.clone())));
        at += part.len() as u64;
    }
    parts
}

/// Cuts a chunk's pieces into tagged blocks as they go (or passes them on, untagged).
struct Tagging {
    tag: Option<wire::BodyTag>,
    /// Bytes of the chunk sent so far.
    sent: u64,
    length: u64,
}

impl Tagging {
    /// The frames that carry `piece` (the piece at its offset in the chunk), with a
    /// tag after each block it ends.
    fn frames(&mut self, piece: Result<(u64, Bytes), BoxError>) -> Result<Vec<Bytes>, BoxError> {
        let (at, mut bytes) = piece?;
        // The pieces of one read are contiguous and end at the chunk's end; a gap or
        // an overrun would be a bug, and is a cut, never wrong bytes.
        if at != self.sent || at + bytes.len() as u64 > self.length {
            return Err("a peer chunk's pieces do not line up".into());
        }
        telemetry::peer_bytes("out", bytes.len() as u64);
        let Some(tag) = self.tag.as_mut() else {
            self.sent += bytes.len() as u64;
            return Ok(vec![bytes]);
        };
        let mut frames = Vec::with_capacity(4);
        while !bytes.is_empty() {
            let block_left = wire::TAG_BLOCK - self.sent % wire::TAG_BLOCK;
            let part = bytes.split_to(block_left.min(bytes.len() as u64) as usize);
            self.sent += part.len() as u64;
            tag.update(&part);
            frames.push(part);
            if self.sent.is_multiple_of(wire::TAG_BLOCK) || self.sent == self.length {
                frames.push(tag.tag());
            }
        }
        Ok(frames)
    }
}
