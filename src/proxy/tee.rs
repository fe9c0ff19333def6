//! A cold probe's body as data: relayed to its client as it arrives and, when it is
//! exactly one chunk of the object (a whole object of one chunk, or a chunk-aligned
//! range), kept in the cache once it is whole and checked, so a small miss costs
//! one origin round trip and one body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use crate::cache::Arriving;
use crate::origin::OriginBody;
use crate::{telemetry, BoxError};

/// The chunk a probe's body carries, and what it must be to be kept.
pub struct Keep {
    pub arriving: Arriving,
    pub length: u64,
    /// The object's full-object CRC, checked when the chunk is the whole object.
    pub crc: Option<(crc_fast::CrcAlgorithm, String)>,
    pub region: String,
    /// Its share of the fill memory, held while the chunk is gathered.
    pub _permit: OwnedSemaphorePermit,
}

/// The origin's body, relayed, and gathered into a chunk on the way.
pub struct TeeBody {
    inner: OriginBody,
    keep: Option<(Keep, BytesMut)>,
    /// `s3accel_response_bytes_total{source="origin"}` of the region.
    sent: metrics::Counter,
}

impl TeeBody {
    pub fn new(inner: OriginBody, keep: Keep) -> Self {
        let buffer = BytesMut::with_capacity(keep.length as usize);
        let sent = metrics::counter!(telemetry::RESPONSE_BYTES, "region" => keep.region.clone(), "source" => "origin");
        Self {
            inner,
            keep: Some((keep, buffer)),
            sent,
        }
    }

    /// Stores the gathered chunk if it is whole and its checksum (if known) holds.
    fn finish(&mut self) {
        let Some((keep, buffer)) = self.keep.take() else { return };
        if buffer.len() as u64 != keep.length {
            return;
        }
        if let Some((algorithm, stored)) = &keep.crc {
            if crate::s3::crc_of(*algorithm, &buffer) != *stored {
                tracing::warn!("a cold probe's body does not match the object's checksum; not cached");
                return;
            }
        }
        metrics::counter!(telemetry::ORIGIN_FILL_BYTES, "region" => keep.region.clone()).increment(keep.length);
        keep.arriving.store(buffer.freeze());
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent.increment(data.len() as u64);
                    let overflow = self
                        .keep
                        .as_ref()
                        .is_some_and(|(keep, buffer)| (buffer.len() + data.len()) as u64 > keep.length);
                    match (&mut self.keep, overflow) {
                        // More than the chunk: not what was expected, keep nothing.
                        (_, true) => self.keep = None,
                        (Some((_, buffer)), false) => buffer.extend_from_slice(data),
                        (None, false) => {}
                    }
                }
                // hyper stops polling once Content-Length bytes are out.
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            // A body cut short is never kept: the client's response is cut too.
            Poll::Ready(Some(Err(_))) => self.keep = None,
            Poll::Ready(None) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
