//! A cold probe's body as data: its first chunk's bytes stream to the client as they
//! arrive and, when they are a whole chunk, are kept in the cache, so that a cold
//! read's first byte leaves one origin round trip after the request and a small miss
//! costs one round trip and one body. The chunks after it come from fills started at
//! once; the probe's body is cut where they take over.

use std::sync::Arc;

use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;

use super::cached::CachedObject;
use super::fill::FillError;
use crate::cache::ChunkWriter;
use crate::origin::OriginBody;
use crate::telemetry;

/// What the probe's body is fed into.
pub struct Lead {
    pub writer: ChunkWriter,
    /// The object, and the chunk of it the body starts in.
    pub object: Arc<CachedObject>,
    pub index: u64,
    /// Bytes of the body that chunk takes.
    pub length: u64,
    /// Its share of the fill memory, held while the chunk arrives.
    pub permit: OwnedSemaphorePermit,
}

impl Lead {
    /// Reads the first `length` bytes of `body` into the writer, then drops the body
    /// (closing its connection if more was coming). Runs in a task of its own, paced
    /// by the origin, not by the client.
    pub async fn feed(self, mut body: OriginBody) {
        let Self {
            writer,
            object,
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
        if let Err(error) = object.upstream.verify(index, &whole) {
            tracing::warn!(%error, "a cold probe's body is not the object's; not cached");
            return writer.fail(Arc::new(error));
        }
        metrics::counter!(telemetry::ORIGIN_FILL_BYTES, "region" => object.region.clone()).increment(length);
        writer.finish(whole);
        drop(permit);
    }
}
