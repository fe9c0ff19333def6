//! One access-log line per request, written when its body ends (or is abandoned),
//! so that it carries the bytes really sent and the whole duration. Credentials,
//! signatures, presign query values and SSE-C keys are never in it: it has the path
//! (no query) and no header.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ProxyBody};
use crate::telemetry;

#[derive(Debug, Default)]
pub struct AccessLog {
    pub method: String,
    /// The metric's closed label: `get`, `head`, `refused` (here, before the
    /// origin), or `other` (a read that failed otherwise).
    pub operation: &'static str,
    pub region: String,
    pub bucket: String,
    pub key: String,
    pub range: String,
    pub status: u16,
    pub cache: String,
    /// What authorized the answer: `origin`, or the grant (`presigned`,
    /// `anonymous`, `verified`) that served it without the origin.
    pub authorized: &'static str,
    pub request_id: String,
    /// The body is the origin's, relayed: its bytes count as served from the origin.
    pub relayed: bool,
    pub started: Option<Instant>,
}

/// A response body that writes the access log when it ends.
pub struct LoggedBody {
    inner: ProxyBody,
    log: Option<AccessLog>,
    bytes: u64,
    /// The body's declared length: hyper stops polling a body once it has sent
    /// that many bytes, so a body that reached it is complete even if it never
    /// said it had ended.
    declared: Option<u64>,
}

impl LoggedBody {
    pub fn new(inner: ProxyBody, log: AccessLog, declared: Option<u64>) -> Self {
        Self {
            inner,
            log: Some(log),
            bytes: 0,
            declared,
        }
    }

    fn finish(&mut self, outcome: &'static str) {
        let Some(log) = self.log.take() else { return };
        let duration_ms = log.started.map_or(0.0, |s| s.elapsed().as_secs_f64() * 1e3);
        tracing::info!(
            target: "access",
            method = log.method,
            region = log.region,
            bucket = log.bucket,
            key = log.key,
            range = log.range,
            status = log.status,
            bytes = self.bytes,
            cache = log.cache,
            authorized = log.authorized,
            body = outcome,
            duration_ms,
            request_id = log.request_id,
        );
        let cache = log.cache.split(';').next().unwrap_or("").to_owned();
        let region = log.region;
        let labels = [
            ("region", region.clone()),
            ("operation", log.operation.to_owned()),
            ("status", log.status.to_string()),
            ("cache", cache),
        ];
        metrics::counter!(telemetry::REQUESTS, &labels).increment(1);
        if log.relayed && self.bytes > 0 {
            metrics::counter!(telemetry::RESPONSE_BYTES, "region" => region, "source" => "origin")
                .increment(self.bytes);
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish("cut"),
            Poll::Ready(None) => self.finish("complete"),
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

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let outcome = if self.inner.is_end_stream() || self.declared == Some(self.bytes) {
            "complete"
        } else {
            "abandoned"
        };
        self.finish(outcome);
    }
}
