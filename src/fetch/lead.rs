//! A cold probe's body as data: its first chunk's bytes stream to the client as they
//! arrive and, when they are a whole chunk, are kept in the cache, so that a cold
//! read's first byte leaves one origin round trip after the request and a small miss
//! costs one round trip and one body. The chunks after it come from fills started at
//! once; the probe's body is cut where they take over.

use std::sync::Arc;

use http::{Response, StatusCode};
use http_body_util::BodyExt;

use super::origin_budget::Turn;
use super::{FillError, Fills, Upstream};
use crate::cache::{CacheKey, ChunkRead, ChunkWriter, ObjectId};
use crate::origin::OriginBody;
use crate::s3::ContentRange;
use crate::telemetry;

/// The object version a cold probe's body is of: how its chunks are named, where
/// they come from (and are checked), and the region counted.
pub struct Cold<'a> {
    pub object: &'a ObjectId,
    pub etag: &'a str,
    pub size: u64,
    pub upstream: &'a Arc<dyn Upstream>,
    pub region: &'a str,
    /// The reader's priority, for its turn in the origin budget.
    pub priority: super::Priority,
}

/// The first chunk of a cold answer of bytes `first..=last`, streamed from the
/// probe's own body: kept when the body carries that chunk whole, read once when
/// it carries only part of it. `None` (the cache answers alone) when the body
/// starts elsewhere than the answer, the chunk is already cached or arriving, or
/// fill memory is full.
pub fn start(
    fills: &Fills,
    cold: Cold<'_>,
    (first, last): (u64, u64),
    response: Response<OriginBody>,
) -> Option<ChunkRead> {
    let starts = match response.status() {
        StatusCode::OK => 0,
        _ => ContentRange::of(response.headers())?.first,
    };
    if starts != first {
        return None;
    }
    let cache = &fills.cache;
    let chunk_size = cache.chunk_size();
    let index = first / chunk_size;
    let chunk_last = ((index + 1) * chunk_size).min(cold.size) - 1;
    let end = last.min(chunk_last);
    let whole = first % chunk_size == 0 && end == chunk_last;
    let key = CacheKey::chunk(cold.object, cold.etag, chunk_size, index);
    // A chunk another node owns is its to fetch: this node drops the probe's body
    // (what was in flight is all it costs) and reads the chunk upstream.
    if whole && !cold.upstream.owns(&key) {
        return None;
    }
    let permit = fills.budget.try_turn(end - first + 1, cold.priority)?;
    let (writer, read) = if whole {
        let Some(writer) = cache.claim(&key) else {
            // Cached or arriving meanwhile: the probe's body brings nothing.
            permit.unused();
            return None;
        };
        let read = writer.read();
        (writer, read)
    } else {
        let (writer, read) = ChunkWriter::unkept();
        (writer, read.starting_at(first - index * chunk_size))
    };
    let lead = Lead {
        writer,
        upstream: cold.upstream.clone(),
        region: cold.region.to_owned(),
        index,
        length: end - first + 1,
        permit,
    };
    tokio::spawn(lead.feed(response.into_body()));
    Some(read)
}

/// What the probe's body is fed into.
struct Lead {
    writer: ChunkWriter,
    /// Where the object's chunks come from: how the body's chunk is checked.
    upstream: Arc<dyn Upstream>,
    region: String,
    /// The chunk the body starts in.
    index: u64,
    /// Bytes of the body that chunk takes.
    length: u64,
    /// Its share of the fill memory, held while the chunk arrives.
    permit: Turn,
}

impl Lead {
    /// Reads the first `length` bytes of `body` into the writer, then drops the body
    /// (closing its connection if more was coming). Runs in a task of its own, paced
    /// by the origin, not by the client.
    async fn feed(self, mut body: OriginBody) {
        let Self {
            writer,
            upstream,
            region,
            index,
            length,
            permit,
        } = self;
        let mut got = 0;
        while got < length {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let take = (length - got).min(data.len() as u64);
                        writer.sink().push(data.slice(..take as usize));
                        got += take;
                    }
                }
                Some(Err(error)) => return writer.fail(Arc::new(FillError::Body(error))),
                None => break,
            }
        }
        drop(body);
        if got != length {
            return writer.fail(Arc::new(FillError::Length { got, expected: length }));
        }
        if !writer.keeps() {
            return writer.done();
        }
        // Checked as a fill is, before it is kept.
        let whole = writer.sink().assemble();
        let crc = match upstream.verify(index, &whole) {
            Ok(crc) => crc,
            Err(error) => {
                tracing::warn!(%error, "a cold probe's body is not the object's; not cached");
                return writer.fail(Arc::new(error));
            }
        };
        metrics::counter!(telemetry::ORIGIN_FILL_BYTES, "region" => region).increment(length);
        writer.finish(whole, crc);
        drop(permit);
    }
}
