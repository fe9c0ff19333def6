//! Chunk fills: one chunk-aligned ranged GET to the origin, with `If-Match` on the
//! ETag the client was authorized for, signed by whoever may sign it.

use std::sync::Arc;

use super::check::{Fills, Verdict, Version};
use super::origin_budget::Urgent;
use crate::body::BoxError;
use crate::cache::{ChunkSink, ObjectId};
use crate::credentials::{FillCredentials, Snapshot};
use crate::origin::{error_code, poison, sign_s3, OriginBody, OriginError, Region, SignError};
use crate::s3::auth::ClientAuth;
use crate::s3::{ContentRange, Crc};
use crate::telemetry;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};

/// Counts a fill in `s3accel_fills_in_flight` while it lives.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        metrics::gauge!(telemetry::FILLS_IN_FLIGHT).increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::FILLS_IN_FLIGHT).decrement(1.0);
    }
}

/// Who signs a fill.
#[derive(Clone)]
pub enum FillAuth {
    /// The client's own request, reused: its signature covers neither `Range` nor
    /// `If-Match` (presigned URLs, anonymous and SigV2 requests, header-signed GETs
    /// without a Range).
    Client { target: PathAndQuery, headers: HeaderMap },
    /// The proxy's read credentials, as they are when each request is signed.
    Proxy {
        target: PathAndQuery,
        credentials: Arc<FillCredentials>,
        region: String,
    },
}

/// A request's priority for its fills, meant for this node (`background`:
/// prefetch's reads wait behind live ones). It travels on to the origin with the
/// client's other headers, which ignores it: a client that signed it keeps its
/// signature.
pub const PRIORITY_HEADER: header::HeaderName = header::HeaderName::from_static("x-s3-accel-priority");

/// Headers a fill removes from the client's request or sets itself (`Range`,
/// `If-Match`): a client signature that covers any of them cannot sign a fill.
const FILL_CHANGES: [header::HeaderName; 5] = [
    header::RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
];

/// Why a fill can be made, or why not: the reason is a bypass counter's label.
/// `part` says the target names a part, which a fill (a range of the object) must
/// not: only an unsigned request's target can lose its `partNumber`.
pub fn fill_auth(
    method: &Method,
    target: &PathAndQuery,
    (headers, auth): (&HeaderMap, &ClientAuth),
    object_target: PathAndQuery,
    part: bool,
    credentials: Option<&Arc<FillCredentials>>,
    signing_region: Option<&str>,
) -> Result<FillAuth, &'static str> {
    // The signature covers the method (a HEAD's can only be reused when there is
    // none), the query, and every header it lists.
    let reusable = auth.is_anonymous()
        || (*method == Method::GET && !part && !FILL_CHANGES.iter().any(|name| auth.covers(name.as_str())));
    if reusable {
        let mut headers = headers.clone();
        for name in FILL_CHANGES {
            headers.remove(name);
        }
        let target = if part { object_target } else { target.clone() };
        return Ok(FillAuth::Client { target, headers });
    }
    // Credentials that expired (a source down for longer than their lifetime) are
    // none: the client is served, uncached, as if the proxy had none.
    match credentials.filter(|c| c.current().is_some()) {
        Some(credentials) => {
            let region = signing_region.or(auth.region()).unwrap_or("us-east-1").to_owned();
            Ok(FillAuth::Proxy {
                target: object_target,
                credentials: credentials.clone(),
                region,
            })
        }
        None => Err("no_fill_credentials"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FillError {
    #[error("the object changed at the origin during the fill (412 on If-Match)")]
    Changed,
    #[error("the origin answered {0} to a chunk fill")]
    Status(StatusCode),
    #[error("the origin sent {got} bytes for a {expected}-byte chunk")]
    Length { got: u64, expected: u64 },
    #[error("the object's bytes do not match its stored checksum {expected}")]
    Checksum { expected: String },
    /// Each chunk as it came, but together not the object: every chunk of the
    /// version is dropped.
    #[error("the object's chunks do not add up to its full-object checksum {expected}")]
    ObjectChecksum { expected: String },
    /// The version was found wrong by another read since this one began: it reads
    /// no more of it.
    #[error("the object's chunks were found not to add up to its full-object checksum during this read")]
    Dropped,
    #[error("the origin answered a fill of bytes {first}-{last}/{size} with Content-Range {got:?}")]
    Range {
        first: u64,
        last: u64,
        size: u64,
        got: Option<String>,
    },
    #[error(transparent)]
    Origin(#[from] OriginError),
    #[error("reading a chunk from the origin")]
    Body(#[source] BoxError),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("no valid fill credentials")]
    NoCredentials,
    #[error("the origin refused the fill credentials ({0}) and no newer ones came")]
    Rejected(String),
    #[error("building the fill request")]
    Request(#[source] http::Error),
}

/// Everything needed to fill any chunk of one object version.
pub struct Fill {
    pub region: Arc<Region>,
    pub authority: String,
    pub auth: FillAuth,
    pub object: ObjectId,
    pub etag: String,
    pub size: u64,
    pub chunk_size: u64,
    /// The fill memory, the cache, the tallies of whole-object checks.
    pub fills: Arc<Fills>,
    /// The object's full-object CRC, when the origin gave one: a one-chunk object's
    /// fill is checked against it before it is kept, a larger one's chunks once
    /// they have all been seen.
    pub crc: Option<Crc>,
    /// The cache's drop epoch when this read of the version began: a chunk of it
    /// fetched after the version was dropped is neither kept nor served.
    pub begun: u64,
}

impl Fill {
    /// The fill of version `(etag, size, checksums)` of `object`, which `authority`
    /// names at `region`'s origin, drawing on `fills`.
    pub fn new(
        region: &Arc<Region>,
        authority: String,
        auth: FillAuth,
        object: &ObjectId,
        (etag, size, checksums): (String, u64, Option<&HeaderMap>),
        fills: &Arc<Fills>,
    ) -> Arc<Self> {
        Arc::new(Self {
            region: region.clone(),
            authority,
            auth,
            object: object.clone(),
            etag,
            size,
            chunk_size: fills.cache.chunk_size(),
            fills: fills.clone(),
            crc: checksums.and_then(Crc::full_object),
            begun: fills.cache.drop_epoch(),
        })
    }

    /// Inclusive byte range of chunk `index`.
    pub fn chunk_range(&self, index: u64) -> (u64, u64) {
        let start = index * self.chunk_size;
        (start, (start + self.chunk_size).min(self.size) - 1)
    }

    /// Whether a chunk's readers wait for its check before its last bytes: when
    /// the object's full-object CRC is known (the chunk that completes the object
    /// may show the whole is wrong).
    pub fn checks(&self, _index: u64) -> bool {
        self.crc.is_some()
    }

    /// Chunk `index`'s CRC (kept beside it, and checked when it is read back),
    /// once it is checked against the object's: a one-chunk object at once, a
    /// larger one when its last chunk is seen here (then, on a mismatch, every
    /// chunk of the version is dropped).
    pub fn verify(&self, index: u64, chunk: &Bytes) -> Result<Crc, FillError> {
        if self.fills.cache.dropped_since(&self.object, &self.etag, self.begun) {
            return Err(FillError::Dropped);
        }
        let Some(expected) = self.crc else {
            return Ok(Crc::of(Crc::DEFAULT, chunk));
        };
        let crc = Crc::of(expected.algorithm, chunk);
        if self.size <= self.chunk_size {
            return match crc == expected {
                true => Ok(crc),
                false => Err(FillError::Checksum {
                    expected: expected.base64(),
                }),
            };
        }
        let version = Version {
            object: self.object.clone(),
            etag: self.etag.clone(),
        };
        match self
            .fills
            .ledger
            .tally(&version, (self.size, self.chunk_size), expected, index, crc)
        {
            Verdict::Pending => Ok(crc),
            Verdict::Whole => {
                telemetry::object_checked("ok");
                Ok(crc)
            }
            Verdict::Mismatch => {
                telemetry::object_checked("mismatch");
                tracing::error!(
                    bucket = self.object.bucket,
                    key = self.object.key,
                    etag = self.etag,
                    "an object's chunks do not add up to its full-object CRC; dropping every chunk of it"
                );
                self.fills.cache.drop_version(&self.object, &self.etag, self.size);
                Err(FillError::ObjectChecksum {
                    expected: expected.base64(),
                })
            }
        }
    }

    /// Fetches chunk `index` from its byte `skip` on (the sink has the bytes before,
    /// checked, from a peer that failed midway), pushing them to `sink` as they
    /// arrive, and returns the chunk whole with its CRC once it is checked. It waits
    /// for its turn in the origin budget at `urgent`'s priority. The future owns what it
    /// needs: the cache runs it in a task of its own, so a client that goes away
    /// does not cancel it.
    pub fn fetch(
        self: &Arc<Self>,
        index: u64,
        sink: ChunkSink,
        skip: u64,
        urgent: Urgent,
    ) -> impl std::future::Future<Output = Result<(Bytes, Crc), FillError>> + Send + 'static {
        let fill = self.clone();
        async move {
            let (start, last) = fill.chunk_range(index);
            let bytes = (last + 1).saturating_sub(start + skip);
            let turn = fill.fills.budget.turn(urgent, bytes).await;
            if fill.fills.cache.dropped_since(&fill.object, &fill.etag, fill.begun) {
                turn.unused();
                return Err(FillError::Dropped);
            }
            let _in_flight = InFlight::start();
            // Only what the sink does not have yet: a peer that died at 99 % costs 1 %.
            let first = start + skip;
            if first <= last {
                fill.receive(first, last, &sink).await?;
            }
            let chunk = sink.assemble();
            let crc = fill.verify(index, &chunk)?;
            drop(turn);
            Ok((chunk, crc))
        }
    }

    /// Fills bytes `first..=last` into `sink`, checked as they come.
    async fn receive(&self, first: u64, last: u64, sink: &ChunkSink) -> Result<(), FillError> {
        let response = self.send(first, last).await?;
        let checked = self.check(&response, first, last);
        if checked.is_err() {
            poison(&response);
        }
        checked?;
        let mut body = response.into_body();
        let expected = last - first + 1;
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(FillError::Body)?;
            if let Ok(data) = frame.into_data() {
                got += data.len() as u64;
                if got > expected {
                    return Err(FillError::Length { got, expected });
                }
                sink.push(data);
            }
        }
        if got != expected {
            return Err(FillError::Length { got, expected });
        }
        let region = self.region.config.name.clone();
        metrics::counter!(telemetry::ORIGIN_FILL_BYTES, "region" => region).increment(expected);
        Ok(())
    }

    /// Whether `response` is the answer to a fill of bytes `first..=last` of this
    /// object version: the status, the range, the length and the ETag.
    fn check<B>(&self, response: &http::Response<B>, first: u64, last: u64) -> Result<(), FillError> {
        let expected = last - first + 1;
        let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
        match response.status() {
            // The bytes asked for, of the object of the size the cache knows:
            // anything else (a stray response, another chunk's) is not stored.
            StatusCode::PARTIAL_CONTENT => {
                let asked = ContentRange {
                    first,
                    last,
                    size: self.size,
                };
                // Exactly as this node would write it: no other spelling is taken.
                if header(header::CONTENT_RANGE) != Some(asked.to_string().as_str()) {
                    return Err(FillError::Range {
                        first,
                        last,
                        size: self.size,
                        got: header(header::CONTENT_RANGE).map(str::to_owned),
                    });
                }
            }
            // An origin may answer a range covering the whole object with 200.
            StatusCode::OK if first == 0 && expected == self.size => {}
            StatusCode::PRECONDITION_FAILED => return Err(FillError::Changed),
            status => return Err(FillError::Status(status)),
        }
        if let Some(length) = header(header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok()) {
            if length != expected {
                return Err(FillError::Length { got: length, expected });
            }
        }
        if response
            .headers()
            .get(header::ETAG)
            .is_some_and(|etag| etag.as_bytes() != self.etag.as_bytes())
        {
            return Err(FillError::Changed);
        }
        Ok(())
    }

    /// Sends the fill of bytes `first..=last`. The proxy's keys, refused by the
    /// origin as expired, unknown or not matching, are refreshed once and the fill
    /// sent once more with the new ones.
    async fn send(&self, first: u64, last: u64) -> Result<http::Response<OriginBody>, FillError> {
        let (request, signed) = self.request(first, last, None)?;
        let response = self.region.client.send(request, "fill").await?;
        let (FillAuth::Proxy { credentials, .. }, Some(generation)) = (&self.auth, signed) else {
            return Ok(response);
        };
        if response.status() != StatusCode::FORBIDDEN {
            return Ok(response);
        }
        let code = error_code(response).await;
        if !CREDENTIAL_CODES.contains(&code.as_str()) {
            return Err(FillError::Status(StatusCode::FORBIDDEN));
        }
        metrics::counter!(telemetry::CREDENTIAL_REJECTIONS, "code" => code.clone()).increment(1);
        tracing::warn!(source = credentials.source(), %code, "the origin refused the fill credentials; refreshing them");
        let fresh = credentials
            .rejected(generation)
            .await
            .ok_or(FillError::Rejected(code))?;
        let (request, _) = self.request(first, last, Some(fresh))?;
        Ok(self.region.client.send(request, "fill").await?)
    }

    /// The fill request, and the generation of the proxy's keys that signed it
    /// (`keys`, or the current ones), if they did.
    fn request(
        &self,
        first: u64,
        last: u64,
        keys: Option<Snapshot>,
    ) -> Result<(Request<Empty<Bytes>>, Option<u64>), FillError> {
        let target = match &self.auth {
            FillAuth::Client { target, .. } | FillAuth::Proxy { target, .. } => target,
        };
        let uri = Uri::builder()
            .scheme(self.region.client.origin().scheme())
            .authority(self.authority.as_str())
            .path_and_query(target.clone())
            .build()
            .map_err(FillError::Request)?;
        let mut request = Request::get(uri).body(Empty::new()).map_err(FillError::Request)?;
        let headers = request.headers_mut();
        if let FillAuth::Client { headers: client, .. } = &self.auth {
            *headers = client.clone();
        }
        headers.insert(
            header::HOST,
            HeaderValue::from_str(&self.authority).map_err(|e| FillError::Request(e.into()))?,
        );
        headers.insert(
            header::RANGE,
            HeaderValue::from_str(&format!("bytes={first}-{last}")).expect("digits"),
        );
        headers.insert(
            header::IF_MATCH,
            HeaderValue::from_str(&self.etag).map_err(|e| FillError::Request(e.into()))?,
        );
        let mut generation = None;
        if let FillAuth::Proxy {
            credentials, region, ..
        } = &self.auth
        {
            let keys = keys.or_else(|| credentials.current()).ok_or(FillError::NoCredentials)?;
            sign_s3(&mut request, &keys.keys, region)?;
            generation = Some(keys.generation);
        }
        Ok((request, generation))
    }
}

/// The S3 error codes of an origin refusing the keys themselves (not the access
/// they grant): new keys may succeed where these failed.
const CREDENTIAL_CODES: [&str; 4] = [
    "ExpiredToken",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
];
