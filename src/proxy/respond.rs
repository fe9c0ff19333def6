//! Answering a GET from the cache: the response head from stored metadata, the body
//! from chunks, several chunks in flight ahead of the byte being sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{stream, FutureExt, StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{HeaderName, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use tokio::sync::mpsc;

use super::error::ProxyError;
use crate::body::{first_frames, frames_of, BoxError, ProxyBody};
use crate::cache::{
    CacheKey, ChunkCache, ChunkError, ChunkRead, ChunkSource, Dangling, ObjectId, ObjectMeta, PartMeta,
};
use crate::fetch::budget::{Budgeted, ConnectionShare, Held, ReadAheadBudget};
use crate::fetch::origin_budget::OriginBudget;
use crate::fetch::{lead, FillError, Priority, Upstream};
use crate::s3::range::{self, RangeRequest};
use crate::s3::{ContentRange, REQUEST_ID};
use crate::telemetry;

/// The head of an answer from the cache: status, the span of the object it
/// carries, and the headers that depend on what was asked (range, part, checksums).
#[derive(Debug, Clone)]
pub struct Shape {
    pub status: StatusCode,
    /// Inclusive; `None` for an empty object.
    pub span: Option<(u64, u64)>,
    pub headers: HeaderMap,
}

impl Shape {
    /// How S3 answers `range` (or part `part`) of `meta`, checksums included when
    /// asked for: the object's on a whole-object answer, the part's on a part
    /// answer, none on a range. `None` when the cache does not know enough to
    /// answer as the origin would (a part or checksums it has not seen).
    pub fn of(
        meta: &ObjectMeta,
        part: Option<&PartMeta>,
        range: RangeRequest,
        checksum_mode: bool,
    ) -> Option<Result<Self, ProxyError>> {
        let size = meta.size;
        let mut headers = HeaderMap::new();
        let content_range = |first: u64, last: u64| ContentRange { first, last, size }.header_value();
        let checksums = |known: Option<&HeaderMap>| match (checksum_mode, known) {
            (false, _) => Some(HeaderMap::new()),
            (true, known) => known.cloned(),
        };
        let shape = match (part, range) {
            (Some(part), _) => {
                if part.etag != meta.etag || part.last >= size {
                    return None;
                }
                headers = checksums(part.checksums.as_ref())?;
                if let Some(count) = &part.parts_count {
                    headers.insert("x-amz-mp-parts-count", count.clone());
                }
                let status = if part.whole {
                    StatusCode::OK
                } else {
                    headers.insert(header::CONTENT_RANGE, content_range(part.first, part.last));
                    StatusCode::PARTIAL_CONTENT
                };
                Self {
                    status,
                    span: Some((part.first, part.last)),
                    headers,
                }
            }
            (None, RangeRequest::One(requested)) => match range::resolve(requested, size) {
                Some((first, last)) => {
                    headers.insert(header::CONTENT_RANGE, content_range(first, last));
                    Self {
                        status: StatusCode::PARTIAL_CONTENT,
                        span: Some((first, last)),
                        headers,
                    }
                }
                None => {
                    return Some(Err(ProxyError::InvalidRange {
                        requested: requested.to_string(),
                        size,
                    }))
                }
            },
            (None, RangeRequest::Whole | RangeRequest::Multiple | RangeRequest::Unparsed) => Self {
                status: StatusCode::OK,
                span: (size > 0).then(|| (0, size - 1)),
                headers: checksums(meta.checksums.as_ref())?,
            },
        };
        Some(Ok(shape))
    }
}

/// Chunks a background read (prefetch) reads ahead at most.
const BACKGROUND_READ_AHEAD: usize = 2;

/// Whether a response's client waits for a chunk its read-ahead has not brought.
#[derive(Default)]
struct Wanted {
    waiting: AtomicBool,
    notify: tokio::sync::Notify,
}

/// One object version being served from the cache.
pub struct CachedObject {
    pub cache: Arc<ChunkCache>,
    pub object: ObjectId,
    pub meta: ObjectMeta,
    /// Where chunks the tiers do not hold come from.
    pub upstream: Arc<dyn Upstream>,
    /// The region's name, for metrics.
    pub region: String,
    pub read_ahead: usize,
    pub budget: Arc<ReadAheadBudget>,
    /// The client connection's share of the budget (`None`: warming, no client).
    pub share: Option<ConnectionShare>,
    /// Who waits for this response's chunks: a client (`Client`; its read-ahead is
    /// `ReadAhead`), or no one (`Background`: prefetch, warming).
    pub priority: Priority,
    /// The origin budget, where a fill the client comes to wait for is raised.
    pub origin_budget: Arc<OriginBudget>,
    /// The cache's drop epoch when this response began: if the version is found
    /// wrong and dropped after it, the response is cut at its next chunk's end.
    pub begun: u64,
}

impl CachedObject {
    /// Whether the version was found wrong and dropped since this response began.
    fn dropped(&self) -> bool {
        self.cache.dropped_since(&self.object, &self.meta.etag, self.begun)
    }

    /// What a cold probe's body needs to be this object's first chunk.
    pub fn cold(&self) -> lead::Cold<'_> {
        lead::Cold {
            object: &self.object,
            etag: &self.meta.etag,
            size: self.meta.size,
            upstream: &self.upstream,
            region: &self.region,
            priority: self.priority,
        }
    }

    pub fn key(&self, index: u64) -> CacheKey {
        CacheKey::chunk(&self.object, &self.meta.etag, self.cache.chunk_size(), index)
    }

    /// The length of chunk `index`: a chunk's, or less for the object's last one.
    fn chunk_length(&self, index: u64) -> u64 {
        let chunk_size = self.cache.chunk_size();
        self.meta.size.saturating_sub(index * chunk_size).clamp(1, chunk_size)
    }

    /// Chunk `index`, from the tiers or the one fill bringing it in (at `priority`
    /// if it is filled: `self.priority`, or the read-ahead's).
    async fn read(self: Arc<Self>, index: u64, priority: Priority) -> ChunkRead {
        let (key, upstream) = (self.key(index), self.upstream.clone());
        let memory_only = !upstream.owns(&key);
        // The chunk's priority exists from now on, and lives as long as its fetch: a
        // client that reaches the chunk before its fetch waits for a turn raises it.
        let urgent = self.origin_budget.urgency(&key, priority);
        self.cache
            .chunk(key, memory_only, move |sink| upstream.fetch(index, sink, urgent))
            .await
    }

    /// The client now waits for chunk `index`: a fill of it still waiting for its
    /// turn (as read-ahead, or as another response's warming) goes as a client's.
    fn wanted_now(&self, index: u64) {
        if self.priority == Priority::Client {
            self.origin_budget.raise(&self.key(index), Priority::Client);
        }
    }

    /// The response `shape` describes. Waits for the first bytes, so that a fill
    /// that fails outright is a clean 503 rather than a cut body; says where the
    /// first chunk came from (a hit is a response whose first bytes were cached).
    /// `head` is the first chunk when it is already at hand: read from a tier while
    /// the origin decided, or arriving in a cold probe's body.
    pub async fn respond(
        self: Arc<Self>,
        shape: Shape,
        overrides: Vec<(HeaderName, HeaderValue)>,
        request_id: &str,
        head: Option<ChunkRead>,
    ) -> Result<(Response<ProxyBody>, ChunkSource), ProxyError> {
        let (body, source) = match shape.span {
            None => (
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
                ChunkSource::Memory,
            ),
            Some((first, last)) => self.clone().body(first, last, head).await?,
        };
        let mut response = Response::new(body);
        *response.status_mut() = shape.status;
        let headers = response.headers_mut();
        headers.clone_from(&self.meta.headers);
        let length = shape.span.map_or(0, |(first, last)| last - first + 1);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if let Ok(etag) = HeaderValue::from_str(&self.meta.etag) {
            headers.insert(header::ETAG, etag);
        }
        for (name, value) in shape.headers.iter().chain(overrides.iter().map(|(n, v)| (n, v))) {
            headers.insert(name.clone(), value.clone());
        }
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert(REQUEST_ID, id);
        }
        Ok((response, source))
    }

    /// Fills every chunk of the object, `read_ahead` at a time (warming).
    pub async fn warm_all(self: Arc<Self>) -> Result<(), ChunkError> {
        let (chunk_size, size) = (self.cache.chunk_size(), self.meta.size);
        let this = self.clone();
        let mut chunks = stream::iter(0..size.div_ceil(chunk_size))
            .map(move |index| {
                let this = this.clone();
                async move {
                    let read = this.clone().read(index, Priority::Background).await;
                    let length = (size - index * chunk_size).min(chunk_size);
                    let mut bytes = this.bytes(index, 0, length, read, None);
                    while bytes.next().await.transpose()?.is_some() {}
                    Ok::<_, ChunkError>(())
                }
            })
            .buffer_unordered(self.read_ahead);
        while let Some(chunk) = chunks.next().await {
            chunk?;
        }
        Ok(())
    }

    /// Bytes `from..to` of chunk `index` as they arrive, each holding `held`. A
    /// read that fails is resumed once from a new fill (unless the object changed);
    /// one that fails again ends in an error, never short.
    fn bytes(
        self: Arc<Self>,
        index: u64,
        from: u64,
        to: u64,
        read: ChunkRead,
        held: Option<Arc<Held>>,
    ) -> stream::BoxStream<'static, Result<Bytes, ChunkError>> {
        let labels = [
            ("region", self.region.clone()),
            ("source", read.source.tier().to_owned()),
        ];
        let piece = Piece {
            sent: metrics::counter!(telemetry::RESPONSE_BYTES, &labels),
            object: self,
            index,
            at: from,
            to,
            read,
            retried: false,
            reached: false,
            held,
        };
        stream::unfold(Some(piece), |piece| async move {
            let mut piece = piece?;
            match piece.next().await? {
                Ok(bytes) => Some((Ok(bytes), Some(piece))),
                Err(error) => Some((Err(error), None)),
            }
        })
        .boxed()
    }

    /// Starts the read-ahead of chunks `head + 1..=tail` (their parts `span` gives):
    /// a task takes each chunk's budget in order and starts its read, `read_ahead`
    /// chunks at most ahead of the client; a chunk `wanted` now is taken from the
    /// whole budget, as a first chunk is, within `read_ahead_wait`.
    fn start_read_ahead(
        self: &Arc<Self>,
        (head_index, tail_index): (u64, u64),
        span: impl Fn(u64) -> (u64, u64) + Send + 'static,
        wanted: Arc<Wanted>,
    ) -> mpsc::Receiver<tokio::task::JoinHandle<stream::BoxStream<'static, Result<Bytes, ChunkError>>>> {
        // A background read (prefetch) holds little of the read-ahead memory: its
        // fills may wait long behind live ones, and live reads need the room.
        let depth = match self.priority {
            Priority::Background => self.read_ahead.min(BACKGROUND_READ_AHEAD),
            _ => self.read_ahead,
        };
        let (ahead, chunks) = mpsc::channel(depth);
        if tail_index > head_index {
            let this = self.clone();
            tokio::spawn(async move {
                for index in head_index + 1..=tail_index {
                    let (from, to) = span(index);
                    let (key, length) = (this.key(index), this.chunk_length(index));
                    let share = this.share.as_ref();
                    // The chunk's memory, and whether the client already waits for it.
                    let (charge, wanted_now) = loop {
                        tokio::select! {
                            () = ahead.closed() => return,
                            charge = this.budget.reserve(&key, length, true, share) => break (charge.ok(), false),
                            () = wanted.notify.notified() => {
                                // A wake-up left from an earlier wait: not wanted now.
                                if !wanted.waiting.load(Ordering::SeqCst) {
                                    continue;
                                }
                                match this.budget.reserve(&key, length, false, share).await {
                                    Ok(charge) => break (Some(charge), true),
                                    Err(busy) => {
                                        telemetry::budget_waited("cut");
                                        let cut = stream::once(async move { Err(ChunkError::new(busy)) }).boxed();
                                        let _ = ahead.send(tokio::spawn(async move { cut })).await;
                                        return;
                                    }
                                }
                            }
                        }
                    };
                    let this = this.clone();
                    let priority = match wanted_now {
                        true => this.priority,
                        false => this.priority.max(Priority::ReadAhead),
                    };
                    let chunk = tokio::spawn(async move {
                        let read = this.clone().read(index, priority).await;
                        this.bytes(index, from, to, read, charge)
                    });
                    if ahead.send(chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
        chunks
    }

    async fn body(
        self: Arc<Self>,
        first: u64,
        last: u64,
        head: Option<ChunkRead>,
    ) -> Result<(ProxyBody, ChunkSource), ProxyError> {
        let chunk_size = self.cache.chunk_size();
        let (head_index, tail_index) = (first / chunk_size, last / chunk_size);
        // The part of chunk `index` inside [first, last].
        let span = move |index: u64| {
            let start = index * chunk_size;
            (first.saturating_sub(start), (last - start + 1).min(chunk_size))
        };
        // The chunk the client waits for first takes its budget before any read-ahead
        // does (the semaphores are fair), and is read in this task: no hop before the
        // first byte. (The whole chunk's length even for a few bytes of it: a slice
        // keeps the whole chunk's memory alive.)
        let (from, to) = span(head_index);
        let charge = self
            .budget
            .reserve(
                &self.key(head_index),
                self.chunk_length(head_index),
                false,
                self.share.as_ref(),
            )
            .await
            .inspect_err(|_| telemetry::budget_waited("busy"))?;
        // The read-ahead runs on its own, not when the client's connection asks for
        // more: a task takes each later chunk's budget in order and starts its read,
        // `read_ahead` chunks at most ahead of the client.
        // When the client waits for a chunk the read-ahead has not reached (its part
        // of the budget is held by others), that chunk is wanted now: it is taken
        // from the whole budget, as a first chunk is, within `read_ahead_wait`.
        let wanted = Arc::new(Wanted::default());
        let mut chunks = self.start_read_ahead((head_index, tail_index), span, wanted.clone());
        let read = match head {
            Some(read) => read,
            None => self.clone().read(head_index, self.priority).await,
        };
        let source = read.source;
        let mut head = self.bytes(head_index, from, to, read, Some(charge));
        let first_bytes = match head.next().await {
            Some(Ok(bytes)) => bytes,
            Some(Err(error)) => return Err(ProxyError::Fill(error)),
            None => Bytes::new(),
        };
        let rest = stream::poll_fn(move |cx| {
            let next = chunks.poll_recv(cx);
            wanted.waiting.store(next.is_pending(), Ordering::SeqCst);
            if next.is_pending() {
                wanted.notify.notify_one();
            }
            next
        })
        .then(|chunk| {
            chunk.map(|joined| match joined {
                Ok(bytes) => bytes,
                Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
                // Cancelled (the runtime is shutting down): the response is cut.
                Err(_) => stream::once(async { Err(ChunkError::new(Dangling)) }).boxed(),
            })
        })
        .flatten();
        let frames = first_frames(first_bytes)
            .map(Ok)
            .chain(head)
            .chain(rest)
            .flat_map(|piece| match piece {
                Ok(bytes) => stream::iter(frames_of(bytes).map(Ok)).left_stream(),
                Err(error) => stream::once(std::future::ready(Err(error))).right_stream(),
            })
            .map_ok(Frame::data)
            .map_err(|error| -> BoxError { Box::new(error) });
        Ok((StreamBody::new(frames).boxed_unsync(), source))
    }
}

/// Where one response is in one chunk.
struct Piece {
    object: Arc<CachedObject>,
    index: u64,
    /// Offsets in the chunk: the next byte wanted, and the end (exclusive).
    at: u64,
    to: u64,
    read: ChunkRead,
    retried: bool,
    /// The client's stream came to this chunk (it waits for it now).
    reached: bool,
    held: Option<Arc<Held>>,
    /// `s3accel_response_bytes_total` of the region and tier.
    sent: metrics::Counter,
}

impl Piece {
    async fn next(&mut self) -> Option<Result<Bytes, ChunkError>> {
        if !self.reached {
            self.reached = true;
            self.object.wanted_now(self.index);
        }
        while self.at < self.to {
            let error = match self.read.next().await {
                Some(Ok((start, bytes))) => {
                    let end = (start + bytes.len() as u64).min(self.to);
                    if start > self.at {
                        break;
                    }
                    if end <= self.at {
                        continue;
                    }
                    // A chunk checked whole against the object's checksum is known good
                    // only once it is all in, and only while its version stands (only such
                    // a version can be found wrong and dropped; a response that began
                    // before goes no further, hits or not): its last bytes wait for both,
                    // so that a bad one ends in a cut response, never a complete one.
                    let checked = match end == self.to && self.object.upstream.checks(self.index) {
                        true => self.read.finished().await.and_then(|()| match self.object.dropped() {
                            true => Err(ChunkError::new(FillError::Dropped)),
                            false => Ok(()),
                        }),
                        false => Ok(()),
                    };
                    match checked {
                        Ok(()) => {
                            let piece = bytes.slice((self.at - start) as usize..(end - start) as usize);
                            self.at = end;
                            self.sent.increment(piece.len() as u64);
                            return Some(Ok(Bytes::from_owner(Budgeted::new(piece, self.held.clone()))));
                        }
                        Err(error) => error,
                    }
                }
                Some(Err(error)) => error,
                None => break,
            };
            // A fill that failed is tried once more, from where this response is:
            // every fill of a chunk is of one version (If-Match), so the bytes agree.
            // Not when the version itself is wrong: another fill cannot mend what
            // this response already sent.
            if self.retried || settled(&error) {
                return Some(Err(error));
            }
            tracing::debug!(error = %crate::error::error_chain(&error), index = self.index, at = self.at, "chunk fill failed; retrying once");
            self.retried = true;
            self.read = self.object.clone().read(self.index, self.object.priority).await;
        }
        (self.at < self.to).then(|| {
            Err(ChunkError::new(ShortChunk {
                index: self.index,
                at: self.at,
                to: self.to,
            }))
        })
    }
}

/// Whether a failed fill says the version this response serves is gone or wrong.
fn settled(error: &ChunkError) -> bool {
    error.fill_error::<FillError>().is_some_and(|e| {
        matches!(
            e,
            FillError::Changed | FillError::ObjectChecksum { .. } | FillError::Dropped
        )
    })
}

/// A chunk's bytes that stopped before the end a response needs (never expected:
/// fills check their length).
#[derive(Debug, thiserror::Error)]
#[error("chunk {index} ended at byte {at}, before byte {to}")]
struct ShortChunk {
    index: u64,
    at: u64,
    to: u64,
}

/// A read of a hit's first chunk from the tiers, started before the origin answers;
/// stopped if it is not wanted.
pub struct EarlyRead {
    read: tokio::task::JoinHandle<Option<ChunkRead>>,
    cache: Arc<ChunkCache>,
    object: ObjectId,
    etag: String,
    /// The cache's drop epoch when the read began: a version dropped since is not
    /// served from it.
    begun: u64,
}

impl EarlyRead {
    /// Reads the first chunk `shape` answers from, of version `meta` of `object`.
    pub fn start(cache: &Arc<ChunkCache>, object: &ObjectId, meta: &ObjectMeta, shape: &Shape) -> Option<Self> {
        let first = shape.span?.0;
        let chunk_size = cache.chunk_size();
        let key = CacheKey::chunk(object, &meta.etag, chunk_size, first / chunk_size);
        let begun = cache.drop_epoch();
        let reader = cache.clone();
        Some(Self {
            read: tokio::spawn(async move { reader.peek(&key).await }),
            cache: cache.clone(),
            object: object.clone(),
            etag: meta.etag.clone(),
            begun,
        })
    }

    pub async fn take(mut self) -> Option<ChunkRead> {
        let read = (&mut self.read).await.ok().flatten()?;
        let dropped = self.cache.dropped_since(&self.object, &self.etag, self.begun);
        (!dropped).then_some(read)
    }
}

impl Drop for EarlyRead {
    fn drop(&mut self) {
        self.read.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::response::{meta_from_response, part_from_response, Asked};

    fn meta(size: u64, checksums: Option<HeaderMap>) -> ObjectMeta {
        ObjectMeta {
            size,
            etag: "\"e-2\"".into(),
            headers: HeaderMap::new(),
            checksums,
        }
    }

    #[test]
    fn parts_are_learned_from_their_bounds_never_as_the_object() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, "\"e-2\"".parse().unwrap());
        headers.insert(header::CONTENT_LENGTH, "100".parse().unwrap());
        headers.insert(header::CONTENT_RANGE, "bytes 100-199/250".parse().unwrap());
        headers.insert("x-amz-mp-parts-count", "2".parse().unwrap());
        headers.insert("x-amz-checksum-crc32", "AAAAAA==-2".parse().unwrap());
        let part = part_from_response(StatusCode::PARTIAL_CONTENT, &headers, true).unwrap();
        assert_eq!((part.first, part.last, part.whole), (100, 199, false));
        assert_eq!(part.parts_count.as_ref().unwrap(), "2");
        let object = meta_from_response(StatusCode::PARTIAL_CONTENT, &headers, Asked::Part(2), true).unwrap();
        assert_eq!(object.size, 250, "the object's size, not the part's");
        assert_eq!(object.checksums, None, "the part's checksums are not the object's");
        // A 200 to a part is the whole object only for part 1 of a single-PUT object.
        let mut whole = headers.clone();
        whole.remove(header::CONTENT_RANGE);
        assert!(
            meta_from_response(StatusCode::OK, &whole, Asked::Part(1), false).is_none(),
            "an ETag of parts (-2): the length may be a part's"
        );
        whole.insert(header::ETAG, "\"single\"".parse().unwrap());
        assert!(meta_from_response(StatusCode::OK, &whole, Asked::Part(2), false).is_none());
        assert_eq!(
            meta_from_response(StatusCode::OK, &whole, Asked::Part(1), false).map(|m| m.size),
            Some(100)
        );

        let shape = Shape::of(&meta(250, None), Some(&part), RangeRequest::Whole, true)
            .unwrap()
            .unwrap();
        assert_eq!(
            (shape.status, shape.span),
            (StatusCode::PARTIAL_CONTENT, Some((100, 199)))
        );
        assert_eq!(shape.headers[header::CONTENT_RANGE], "bytes 100-199/250");
        assert_eq!(shape.headers["x-amz-checksum-crc32"], "AAAAAA==-2");
        assert_eq!(shape.headers["x-amz-mp-parts-count"], "2");
        let plain = Shape::of(&meta(250, None), Some(&part), RangeRequest::Whole, false)
            .unwrap()
            .unwrap();
        assert!(!plain.headers.contains_key("x-amz-checksum-crc32"));

        for bad in ["bytes 200-100/250", "bytes 100-250/250", "bytes 1-2", "junk"] {
            headers.insert(header::CONTENT_RANGE, bad.parse().unwrap());
            assert!(
                part_from_response(StatusCode::PARTIAL_CONTENT, &headers, true).is_none(),
                "{bad}"
            );
        }
        let mut other = part.clone();
        other.etag = "\"other\"".into();
        assert!(Shape::of(&meta(250, None), Some(&other), RangeRequest::Whole, false).is_none());
    }

    #[test]
    fn checksums_go_on_whole_answers_only_and_only_when_known() {
        let mut known = HeaderMap::new();
        known.insert("x-amz-checksum-crc64nvme", "AAAAAAAAAAA=".parse().unwrap());
        let whole = Shape::of(&meta(10, Some(known.clone())), None, RangeRequest::Whole, true)
            .unwrap()
            .unwrap();
        assert_eq!(whole.headers, known);
        let ranged = RangeRequest::One(range::ByteRange::From { start: 0, end: Some(9) });
        let ranged = Shape::of(&meta(10, Some(known)), None, ranged, true).unwrap().unwrap();
        assert!(ranged.headers.get("x-amz-checksum-crc64nvme").is_none());
        assert!(
            Shape::of(&meta(10, None), None, RangeRequest::Whole, true).is_none(),
            "unknown checksums: the origin must answer"
        );
        assert!(Shape::of(&meta(10, None), None, RangeRequest::Whole, false).is_some());
    }
}
