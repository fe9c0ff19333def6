//! Answering a GET from the cache: the response head from stored metadata, the body
//! from chunks, several chunks in flight ahead of the byte being sent.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{stream, StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{HeaderName, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use super::fill::{Fill, FillError};
use crate::cache::{CacheKey, ChunkCache, ChunkError, ChunkSource, ObjectId, ObjectMeta};
use crate::error::ProxyError;
use crate::s3::range::{self, RangeRequest};
use crate::s3::{self, REQUEST_ID};
use crate::telemetry;
use crate::{BoxError, ProxyBody};

/// The metadata worth keeping from an origin's 200 or 206, or `None` when the
/// response must not be cached (SSE-C, `no-store`, no ETag, no size).
pub fn meta_from_response(status: StatusCode, headers: &HeaderMap) -> Option<ObjectMeta> {
    let text = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if s3::is_sse_c(headers) || text(header::CACHE_CONTROL).is_some_and(|v| v.to_ascii_lowercase().contains("no-store"))
    {
        return None;
    }
    let etag = text(header::ETAG)?.to_owned();
    let size = match status {
        StatusCode::OK => text(header::CONTENT_LENGTH)?.parse().ok()?,
        // Content-Range: bytes 0-0/1234
        StatusCode::PARTIAL_CONTENT => text(header::CONTENT_RANGE)?.rsplit_once('/')?.1.parse().ok()?,
        _ => return None,
    };
    let mut stored = HeaderMap::new();
    for (name, value) in headers {
        if s3::is_object_header(name) {
            stored.append(name.clone(), value.clone());
        }
    }
    Some(ObjectMeta {
        size,
        etag,
        headers: stored,
    })
}

/// One object version being served from the cache.
pub struct CachedObject {
    pub cache: Arc<ChunkCache>,
    pub object: ObjectId,
    pub meta: ObjectMeta,
    pub fill: Arc<Fill>,
    pub read_ahead: usize,
}

impl CachedObject {
    /// Chunk `index`, from the cache or one coalesced fill. A failed fill fails its
    /// waiters once; they try once more, then give up.
    async fn chunk(self: Arc<Self>, index: u64) -> Result<(Bytes, ChunkSource), ChunkError> {
        let key = CacheKey::chunk(&self.object, &self.meta.etag, self.cache.chunk_size(), index);
        match self.cache.chunk(key.clone(), || self.fill.fetch(index)).await {
            Ok(found) => Ok(found),
            Err(error)
                if error
                    .fill_error::<FillError>()
                    .is_some_and(|e| matches!(e, FillError::Changed)) =>
            {
                Err(error)
            }
            Err(error) => {
                tracing::debug!(error = %crate::error::error_chain(&error), index, "chunk fill failed; retrying once");
                self.cache.chunk(key, || self.fill.fetch(index)).await
            }
        }
    }

    /// The response to a GET of `range`. Waits for the first chunk, so that a fill
    /// that fails outright is a clean 503 rather than a cut body.
    pub async fn respond(
        self: Arc<Self>,
        range: RangeRequest,
        overrides: Vec<(HeaderName, HeaderValue)>,
        request_id: &str,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let size = self.meta.size;
        let (status, span) = match range {
            RangeRequest::One(requested) => match range::resolve(requested, size) {
                Some(span) => (StatusCode::PARTIAL_CONTENT, Some(span)),
                None => {
                    return Err(ProxyError::InvalidRange {
                        requested: requested.to_string(),
                        size,
                    })
                }
            },
            RangeRequest::Whole | RangeRequest::Multiple => (StatusCode::OK, (size > 0).then(|| (0, size - 1))),
        };
        let body = match span {
            None => http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
            Some((first, last)) => self.clone().body(first, last).await?,
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.clone_from(&self.meta.headers);
        let length = span.map_or(0, |(first, last)| last - first + 1);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if let Ok(etag) = HeaderValue::from_str(&self.meta.etag) {
            headers.insert(header::ETAG, etag);
        }
        if let (StatusCode::PARTIAL_CONTENT, Some((first, last))) = (status, span) {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {first}-{last}/{size}")).expect("digits"),
            );
        }
        for (name, value) in overrides {
            headers.insert(name, value);
        }
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert(REQUEST_ID, id);
        }
        Ok(response)
    }

    /// Fills every chunk of the object, `read_ahead` at a time (warming).
    pub async fn warm_all(self: Arc<Self>) -> Result<(), ChunkError> {
        let count = self.meta.size.div_ceil(self.cache.chunk_size());
        let this = self.clone();
        let mut chunks = stream::iter(0..count)
            .map(move |index| this.clone().chunk(index))
            .buffer_unordered(self.read_ahead);
        while let Some(chunk) = chunks.next().await {
            chunk?;
        }
        Ok(())
    }

    async fn body(self: Arc<Self>, first: u64, last: u64) -> Result<ProxyBody, ProxyError> {
        let chunk_size = self.cache.chunk_size();
        let this = self.clone();
        let mut chunks = stream::iter(first / chunk_size..=last / chunk_size)
            .map(move |index| {
                let this = this.clone();
                async move {
                    let (bytes, source) = this.chunk(index).await?;
                    // The part of chunk `index` inside [first, last].
                    let start = index * chunk_size;
                    let from = first.saturating_sub(start) as usize;
                    let to = ((last - start + 1).min(bytes.len() as u64)) as usize;
                    Ok::<_, ChunkError>((bytes.slice(from..to), source))
                }
            })
            // Polled together: the chunks after the first are filled while it is.
            .buffered(self.read_ahead);
        let head = match chunks.next().await {
            Some(Ok(head)) => head,
            Some(Err(error)) => return Err(ProxyError::Fill(error)),
            None => (Bytes::new(), ChunkSource::Memory),
        };
        let region = self.fill.region.config.name.clone();
        let frames = stream::once(async move { Ok(head) })
            .chain(chunks)
            .map_ok(move |(bytes, source)| {
                let labels = [("region", region.clone()), ("source", source.tier().to_owned())];
                metrics::counter!(telemetry::RESPONSE_BYTES, &labels).increment(bytes.len() as u64);
                Frame::data(bytes)
            })
            .map_err(|error| -> BoxError { Box::new(error) });
        Ok(StreamBody::new(frames).boxed_unsync())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_learned_only_from_cacheable_answers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, "\"abc\"".parse().unwrap());
        headers.insert(header::CONTENT_LENGTH, "1".parse().unwrap());
        headers.insert(header::CONTENT_RANGE, "bytes 0-0/1234".parse().unwrap());
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        headers.insert("x-amz-meta-owner", "a".parse().unwrap());
        headers.insert(REQUEST_ID, "R".parse().unwrap());
        let meta = meta_from_response(StatusCode::PARTIAL_CONTENT, &headers).unwrap();
        assert_eq!(meta.size, 1234);
        assert_eq!(meta.headers.len(), 2, "only object headers: {:?}", meta.headers);
        assert_eq!(meta_from_response(StatusCode::OK, &headers).unwrap().size, 1);
        assert!(meta_from_response(StatusCode::NOT_FOUND, &headers).is_none());

        let mut sse_c = headers.clone();
        sse_c.insert(
            "x-amz-server-side-encryption-customer-algorithm",
            "AES256".parse().unwrap(),
        );
        assert!(meta_from_response(StatusCode::OK, &sse_c).is_none());
        let mut no_store = headers.clone();
        no_store.insert(header::CACHE_CONTROL, "private, No-Store".parse().unwrap());
        assert!(meta_from_response(StatusCode::OK, &no_store).is_none());
        headers.remove(header::ETAG);
        assert!(meta_from_response(StatusCode::OK, &headers).is_none());
    }
}
