//! Authorization by the origin: the client's own request goes to the origin (with
//! `If-None-Match` on the cached ETag, so that a yes costs a 304), its answer is
//! checked to be an answer to what was asked, and what it means for the cache is
//! decided once ([`decide`], pure) and then written ([`apply`]).

use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;

use super::error::ProxyError;
use super::plan::Plan;
use super::relay;
use crate::cache::{ChunkCache, ObjectId, ObjectMeta, PartMeta};
use crate::origin::{self, OriginBody, Route};
use crate::s3::range::{self, RangeRequest};
use crate::s3::response::{cacheable, meta_from_response, part_from_response, Asked};
use crate::s3::ContentRange;
use crate::telemetry;

/// Sends the probe, with `If-None-Match: condition` when the cache holds a version
/// it could answer from. A 304 that shows the object was rewritten with the same
/// bytes (same ETag, another Last-Modified) is asked again without the condition,
/// to learn the new metadata. Returns the answer, and whether the condition went.
pub async fn ask(
    route: &Route,
    probe: Request<Empty<Bytes>>,
    condition: Option<&HeaderValue>,
    cached: Option<&ObjectMeta>,
) -> Result<(Response<OriginBody>, bool), ProxyError> {
    let unconditional = condition.is_some().then(|| relay::copy(&probe));
    let response = send(route, probe, condition.cloned()).await?;
    match unconditional {
        Some(again) if response.status() == StatusCode::NOT_MODIFIED && rewritten(&response, cached) => {
            Ok((send(route, again, None).await?, false))
        }
        _ => Ok((response, condition.is_some())),
    }
}

async fn send(
    route: &Route,
    mut probe: Request<Empty<Bytes>>,
    condition: Option<HeaderValue>,
) -> Result<Response<OriginBody>, ProxyError> {
    if let Some(etag) = condition {
        probe.headers_mut().insert(header::IF_NONE_MATCH, etag);
    }
    let started = Instant::now();
    let response = route.region.client.send(probe, "probe").await?;
    metrics::histogram!(telemetry::PROBE_SECONDS).record(started.elapsed().as_secs_f64());
    Ok(response)
}

/// Whether a 304 shows the object was rewritten since its metadata was stored: its
/// Last-Modified differs (an origin that sends none cannot tell).
fn rewritten(response: &Response<OriginBody>, cached: Option<&ObjectMeta>) -> bool {
    let last_modified = |headers: &http::HeaderMap| headers.get(header::LAST_MODIFIED).cloned();
    match (
        last_modified(response.headers()),
        cached.and_then(|meta| last_modified(&meta.headers)),
    ) {
        (Some(now), Some(stored)) => now != stored,
        _ => false,
    }
}

/// Refuses a stray answer: one that is not the origin's answer to a GET of `range`
/// (of a part, when `part`). A 206 must carry the range asked for, a 304 the ETag it
/// was asked about (`condition`). A stray answer (another request's, read from a
/// connection whose framing went wrong) is neither trusted nor relayed, and its
/// connection is never reused.
pub fn check<B>(
    response: &Response<B>,
    range: RangeRequest,
    part: bool,
    condition: Option<&HeaderValue>,
) -> Result<(), ProxyError> {
    answers(response, range, part, condition).inspect_err(|_| origin::poison(response))
}

fn answers<B>(
    response: &Response<B>,
    range: RangeRequest,
    part: bool,
    condition: Option<&HeaderValue>,
) -> Result<(), ProxyError> {
    let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
    let length: Option<u64> = header(header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
    match response.status() {
        StatusCode::PARTIAL_CONTENT => {
            let Some(content_range) = ContentRange::of(response.headers()) else {
                return Err(ProxyError::OriginMismatch("a 206 without a readable Content-Range"));
            };
            let ContentRange { first, last, size } = content_range;
            if length.is_some_and(|length| length != content_range.length()) {
                return Err(ProxyError::OriginMismatch(
                    "a Content-Length that is not its Content-Range's",
                ));
            }
            match range {
                RangeRequest::Whole if !part => Err(ProxyError::OriginMismatch("a 206 to a read of the whole object")),
                RangeRequest::One(asked) if range::resolve(asked, size) != Some((first, last)) => Err(
                    ProxyError::OriginMismatch("a Content-Range that is not the range asked for"),
                ),
                _ => Ok(()),
            }
        }
        StatusCode::NOT_MODIFIED => match (condition, response.headers().get(header::ETAG)) {
            (Some(asked), Some(etag)) if asked != etag => Err(ProxyError::OriginMismatch("a 304 for another ETag")),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// What a probe's answer means, decided once: what to serve, what the cache learns,
/// and the probe's metric all follow from it.
pub struct Verdict {
    /// Serve this version (and part) from the cache, or relay the origin's answer.
    pub serve: Option<(ObjectMeta, Option<PartMeta>)>,
    /// The object's metadata, learned (or confirmed) by this answer: cold waiters
    /// go on with it.
    pub learned: Option<ObjectMeta>,
    pub probe: Probe,
    /// What the answer changes in the cache, written by [`apply`].
    writes: Writes,
}

/// The cache writes a verdict carries, in the order they are made.
#[derive(Default)]
struct Writes {
    /// The object's metadata to store.
    store: Option<ObjectMeta>,
    /// The object's metadata to forget (it is gone, or no longer cacheable).
    forget: bool,
    part: Option<(u16, PartMeta)>,
}

/// What the origin said to a probe: `s3accel_probes_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// 304 to the cache's condition: the cached version is current.
    NotModified,
    /// 200/206 of the cached version (its body dropped).
    SameEtag,
    /// The first answer about an object: its metadata is learned.
    Cold,
    /// Another version: relayed, and cached from the next read.
    Changed,
    /// An answer that must not be cached (SSE-C, `no-store`, no ETag or size).
    Uncacheable,
    /// A denial, an error, or any other status: relayed.
    Refused,
}

impl Probe {
    pub fn label(self) -> &'static str {
        match self {
            Self::NotModified => "not_modified",
            Self::SameEtag => "same_etag",
            Self::Cold => "cold",
            Self::Changed => "changed",
            Self::Uncacheable => "uncacheable",
            Self::Refused => "refused",
        }
    }
}

impl Verdict {
    fn relay(probe: Probe, writes: Writes) -> Self {
        Self {
            serve: None,
            learned: None,
            probe,
            writes,
        }
    }

    /// Whether the cache serves this answer's bytes as a hit the origin authorized.
    pub fn authorized_hit(&self) -> bool {
        matches!(self.probe, Probe::NotModified | Probe::SameEtag)
    }
}

/// What the origin's answer to a probe means, given what the cache held (`cached`,
/// `part`) and whether the cache's condition went with the probe.
pub fn decide(
    plan: &Plan,
    cached: Option<ObjectMeta>,
    part: Option<PartMeta>,
    response: &Response<OriginBody>,
    condition_added: bool,
) -> Verdict {
    match response.status() {
        // Authorized, and the cached version is current.
        StatusCode::NOT_MODIFIED if condition_added => Verdict {
            learned: cached.clone(),
            serve: cached.map(|meta| (meta, part)),
            probe: Probe::NotModified,
            writes: Writes::default(),
        },
        StatusCode::OK | StatusCode::PARTIAL_CONTENT => decide_body(plan, cached, part, response),
        StatusCode::NOT_FOUND => {
            let writes = Writes {
                forget: cached.is_some(),
                ..Writes::default()
            };
            Verdict::relay(Probe::Refused, writes)
        }
        _ => Verdict::relay(Probe::Refused, Writes::default()),
    }
}

/// A 200 or 206: the cached version again, a cold object's first answer, another
/// version, or an answer that must not be cached.
fn decide_body(
    plan: &Plan,
    cached: Option<ObjectMeta>,
    part: Option<PartMeta>,
    response: &Response<OriginBody>,
) -> Verdict {
    let (status, headers) = (response.status(), response.headers());
    let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok());
    let asked = Asked::of(plan.part, plan.range);
    let learned = plan
        .learns
        .then(|| meta_from_response(status, headers, asked, plan.checksum_mode))
        .flatten();
    let cold = cached.is_none();
    let same = cached.filter(|meta| etag == Some(meta.etag.as_str()));
    let mut writes = Writes::default();
    let (meta, probe) = match (same, learned) {
        // The same version (an origin that ignores the condition, or an
        // unconditional probe): its body is dropped; what it says of the
        // object refreshes the metadata.
        (Some(old), Some(new)) => {
            let meta = refreshed(&old, new);
            if meta != old {
                writes.store = Some(meta.clone());
            }
            (meta, Probe::SameEtag)
        }
        // The same version, in an answer that tells no size (overrides,
        // a 200 to a range or a part): served from the cache all the same.
        (Some(old), None) if !plan.learns || cacheable(headers) => (old, Probe::SameEtag),
        // Cold: the origin said yes; chunks are filled once for every
        // client reading this object now.
        (None, Some(new)) if cold => {
            writes.store = Some(new.clone());
            (new, Probe::Cold)
        }
        // Changed: relay the new version; the next read caches it.
        (_, Some(new)) => {
            writes.store = Some(new);
            return Verdict::relay(Probe::Changed, writes);
        }
        // Not cacheable (SSE-C, `no-store`, no ETag or size): relayed,
        // and nothing older is served in its place.
        (_, None) => {
            writes.forget = !cold;
            return Verdict::relay(Probe::Uncacheable, writes);
        }
    };
    let part = plan.part.and_then(|number| {
        let learned = learned_part(plan, response, &meta);
        if let Some(learned) = &learned {
            writes.part = Some((number, learned.clone()));
        }
        learned.or(part)
    });
    // A part whose bounds the cache does not know is the origin's to answer:
    // never the whole object in its place.
    if plan.part.is_some() && part.is_none() {
        return Verdict {
            serve: None,
            learned: Some(meta),
            probe: Probe::Uncacheable,
            writes,
        };
    }
    Verdict {
        learned: Some(meta.clone()),
        serve: Some((meta, part)),
        probe,
        writes,
    }
}

/// The bounds of the part asked for, from an answer about version `meta`: only
/// when they lie inside it, and "the part is the whole object" only of an object
/// that size.
fn learned_part(plan: &Plan, response: &Response<OriginBody>, meta: &ObjectMeta) -> Option<PartMeta> {
    plan.learns
        .then(|| part_from_response(response.status(), response.headers(), plan.checksum_mode))
        .flatten()
        .filter(|learned| learned.etag == meta.etag && learned.last < meta.size)
        .filter(|learned| !learned.whole || learned.last + 1 == meta.size)
}

/// Writes what `verdict` changes in the cache.
pub fn apply(verdict: &Verdict, object: &ObjectId, cache: &ChunkCache) {
    if let Some(meta) = &verdict.writes.store {
        cache.insert_meta(object, meta.clone());
    }
    if verdict.writes.forget {
        cache.remove_meta(object);
    }
    if let Some((number, part)) = &verdict.writes.part {
        cache.insert_part(object, *number, part.clone());
    }
}

/// The metadata of the same object version, refreshed by a newer answer: its
/// headers (a metadata-only change keeps the ETag), and the checksums it told, or
/// those already known.
pub fn refreshed(old: &ObjectMeta, new: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        checksums: new.checksums.or_else(|| old.checksums.clone()),
        ..new
    }
}
