//! The request path, top to bottom, one stage per module:
//!
//! 1. [`admit`]: the Host is checked and routed, the request classified; it becomes
//!    one `ObjectRead`, or a refusal.
//! 2. [`plan`]: what the cache may do with it (the grant it would be served from
//!    included), or why it passes through uncached.
//! 3. [`authorize`]: the origin authorizes the client's own request (a 304 when the
//!    cache holds the version); its answer is checked, then decided on once.
//! 4. [`respond`]: the cache answers (a head from metadata, a body from chunks), or
//!    [`relay`] passes the origin's answer on.
//!
//! Beside the path, in modules of their own: the cold herd (`crate::herd`), grants
//! (`crate::grants`), the chunk sources (`crate::fetch`, `crate::peers::upstream`);
//! here, the access log.

mod access;
mod admit;
mod authorize;
mod error;
mod freshen;
mod plan;
mod relay;
mod respond;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty};

use crate::body::ProxyBody;
use crate::cache::{ChunkCache, ChunkSource, ObjectMeta, PartMeta};
use crate::config::Config;
use crate::credentials::FillCredentials;
use crate::error::error_chain;
use crate::fetch::budget::ReadAheadBudget;
pub use crate::fetch::budget::{Busy, ConnectionShare};
use crate::fetch::{lead, Fill, FillAuth, Fills, Priority};
use crate::grants::{self, Granting};
use crate::herd::{Entered, Herd};
use crate::origin::{OriginBody, Router};
use crate::peers::{upstream as regional, Peers};
use crate::s3::range::RangeRequest;
use crate::s3::response::{meta_from_response, Asked};
use crate::s3::sigv4::Signed;
use crate::s3::{self, Operation};
use crate::telemetry;
use access::{AccessLog, LoggedBody};
use admit::ObjectRead;
use authorize::{Probe, Verdict};
pub use error::ProxyError;
use plan::Plan;
use respond::{CachedObject, EarlyRead, Shape};

/// How a request was answered, for the `x-s3-accel-cache` header and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Authorized by the origin, served from chunks the cache already knew of.
    Hit,
    /// Authorized by the origin, served from chunks filled for it (or being filled).
    Miss,
    /// The origin's own answer, relayed (errors, changed objects, HEAD).
    Origin,
    /// Never cached: relayed as is, with the reason.
    Bypass(&'static str),
}

impl Outcome {
    /// A cached answer's outcome, by where its first chunk came from.
    fn of(source: ChunkSource) -> Self {
        match source {
            ChunkSource::Memory | ChunkSource::Disk => Self::Hit,
            ChunkSource::Filled | ChunkSource::Coalesced => Self::Miss,
        }
    }

    fn header_value(self) -> HeaderValue {
        match self {
            Self::Hit => HeaderValue::from_static("hit"),
            Self::Miss => HeaderValue::from_static("miss"),
            Self::Origin => HeaderValue::from_static("origin"),
            Self::Bypass(reason) => HeaderValue::from_str(&format!("bypass; reason={reason}")).expect("ascii reason"),
        }
    }
}

/// Response header naming the cache outcome (like a CDN's `X-Cache`).
pub const CACHE_HEADER: &str = "x-s3-accel-cache";

/// The proxy: everything a request needs, shared by all connections.
pub struct Proxy {
    router: Router,
    cache: Arc<ChunkCache>,
    credentials: Option<Arc<FillCredentials>>,
    fills: Arc<Fills>,
    read_ahead: usize,
    read_ahead_budget: Arc<ReadAheadBudget>,
    /// `cache.read_ahead_per_connection`.
    per_connection: u64,
    /// Of the requests for a cold object, one (in the node, in the region) probes
    /// with a body.
    herd: Arc<Herd>,
    /// The region's other nodes, when this one is not alone.
    peers: Option<Arc<Peers>>,
    /// Origin decisions served again without asking, when a mode is on.
    grants: Option<Arc<Granting>>,
    /// When each object's metadata was last checked past the probe's 304.
    freshen: freshen::Freshen,
}

/// What the request path works with, as `App` built it.
pub struct Parts {
    pub router: Router,
    pub cache: Arc<ChunkCache>,
    pub peers: Option<Arc<Peers>>,
    pub herd: Arc<Herd>,
    pub grants: Option<Arc<Granting>>,
    pub credentials: Option<Arc<FillCredentials>>,
    /// Fill memory and whole-object checks, shared with the peer listener's fills.
    pub fills: Arc<Fills>,
}

impl Proxy {
    pub fn new(parts: Parts, config: &Config) -> Arc<Self> {
        let cache = &config.cache;
        Arc::new(Self {
            router: parts.router,
            cache: parts.cache,
            credentials: parts.credentials,
            fills: parts.fills,
            freshen: freshen::Freshen::new(cache.metadata_max_age),
            read_ahead: cache.read_ahead,
            read_ahead_budget: Arc::new(ReadAheadBudget::new(
                cache.read_ahead_memory,
                cache.chunk_size,
                cache.read_ahead_wait,
            )),
            per_connection: cache.read_ahead_per_connection,
            herd: parts.herd,
            peers: parts.peers,
            grants: parts.grants,
        })
    }

    /// A new client connection's share of the read-ahead budget.
    pub fn connection_share(&self) -> ConnectionShare {
        ConnectionShare::new(self.per_connection)
    }

    /// Answers one client request. Never fails: errors become S3 error responses.
    pub async fn handle<B: Body>(&self, request: Request<B>) -> Response<ProxyBody> {
        let request_id = s3::new_request_id();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let mut log = AccessLog {
            method: method.to_string(),
            range: request
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            started: Some(Instant::now()),
            operation: "other",
            ..AccessLog::default()
        };
        let mut response = match self.forward(request, &request_id, &mut log).await {
            Ok((mut response, outcome)) => {
                response.headers_mut().insert(CACHE_HEADER, outcome.header_value());
                log.relayed = matches!(outcome, Outcome::Origin | Outcome::Bypass(_));
                response
            }
            Err(error) => {
                if let Some(reason) = error.refusal() {
                    metrics::counter!(telemetry::LOCAL_REFUSALS, "reason" => reason).increment(1);
                    log.operation = "refused";
                }
                let (status, _) = error.status_and_code();
                if status.is_server_error() {
                    tracing::warn!(request_id, error = error_chain(&error), "request failed");
                }
                let mut response = error.into_response(&request_id, &path, &method);
                response
                    .headers_mut()
                    .insert(CACHE_HEADER, HeaderValue::from_static("error"));
                response
            }
        };
        if !response.headers().contains_key(s3::REQUEST_ID) {
            if let Ok(id) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(s3::REQUEST_ID, id);
            }
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        log.request_id = header(s3::REQUEST_ID).unwrap_or(request_id);
        log.cache = header(CACHE_HEADER).unwrap_or_else(|| "error".into());
        log.authorized = response
            .extensions()
            .get::<grants::Authorized>()
            .map_or("origin", |authorized| authorized.0);
        log.status = response.status().as_u16();
        let declared = match (method == Method::HEAD, response.status()) {
            (true, _) | (_, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) => Some(0),
            _ => header(header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse().ok()),
        };
        response.map(|body| LoggedBody::new(body, log, declared).boxed_unsync())
    }

    async fn forward<B: Body>(
        &self,
        mut request: Request<B>,
        request_id: &str,
        log: &mut AccessLog,
    ) -> Result<(Response<ProxyBody>, Outcome), ProxyError> {
        // Admit first: only an object read, routed by a Host read one way, goes on.
        let presigned = self.grants.as_ref().is_some_and(|grants| grants.presigned());
        let read = admit::admit(&mut request, &self.router, presigned, log)?;
        // The grant the request would be served from is part of its plan.
        let grant = match &self.grants {
            Some(grants) => grants.asked(&signed(&request, &read.authority), &read.for_grants())?,
            None => None,
        };
        // The client's own signed request, unchanged: the origin authorizes it.
        let probe = relay::origin_request(&request, read.route.region.client.origin(), &read.authority)?;
        // What must never be cached passes through before the cache is consulted.
        let answer = match plan::plan(&request, &read, grant, self.credentials.as_ref()) {
            Err(reason) => self.relay(&read, probe, Outcome::Bypass(reason)).await,
            Ok(plan) => match (read.object.operation, plan.auth.clone()) {
                (Operation::HeadObject, _) => self.head(&read, probe, plan).await,
                (Operation::GetObject, Ok(auth)) => self.get(&read, probe, plan, auth, request_id).await,
                // No one can sign its fills: relayed.
                (Operation::GetObject, Err(reason)) => self.relay(&read, probe, Outcome::Bypass(reason)).await,
            },
        };
        if let (Some(grants), Ok((response, Outcome::Origin | Outcome::Bypass(_)))) = (&self.grants, &answer) {
            grants.observe(&read.id, response.status());
        }
        answer
    }

    /// Sends the client's request to the origin and relays the answer, once it is
    /// known to answer what was asked (a range, of a part or not).
    async fn relay(
        &self,
        read: &ObjectRead,
        probe: Request<Empty<Bytes>>,
        outcome: Outcome,
    ) -> Result<(Response<ProxyBody>, Outcome), ProxyError> {
        let response = read.route.region.client.send(probe, "relay").await?;
        let (range, part) = read.asked();
        authorize::check(&response, range, part, None)?;
        Ok((relay::client_response(response), outcome))
    }

    /// GET: the origin authorizes the client's request (with `If-None-Match` on the
    /// cached ETag, so that it answers 304 instead of a body), then the cache answers.
    async fn get(
        &self,
        read: &ObjectRead,
        probe: Request<Empty<Bytes>>,
        plan: Plan,
        auth: FillAuth,
        request_id: &str,
    ) -> Result<(Response<ProxyBody>, Outcome), ProxyError> {
        // A cold request probes alone (in its node, then its region); those behind it
        // come back with its metadata and probe cheaply, all at once.
        let mut herd = self.herd.enter(&self.cache, &plan.object).await;
        // What a 304 cannot show (the same bytes rewritten with other headers) is
        // checked now and then, in the background.
        match herd.cached.is_some() {
            true => self
                .freshen
                .maybe(&self.cache, &plan.object, || self.metadata_check(read, &plan)),
            // About to be learned from the origin: as fresh as a check.
            false => self.freshen.learned(&plan.object),
        }
        let part = match (plan.part, &herd.cached) {
            (Some(number), Some(_)) => self.cache.part(&plan.object, number).await,
            _ => None,
        };
        let answerable = answerable(&plan, herd.cached.as_ref(), part.as_ref());
        // A live grant for this version answers without the origin.
        if let Some(served) = self.serve_granted(read, &probe, &plan, &auth, answerable.as_ref(), request_id) {
            return served.await;
        }
        let condition = answerable
            .as_ref()
            .and_then(|(meta, _)| HeaderValue::from_str(&meta.etag).ok());
        // A likely hit reads its first chunk from the tiers while the origin decides:
        // nothing is sent before the origin's answer, and it is dropped on a refusal.
        let early =
            answerable.and_then(|(meta, shape)| EarlyRead::start(&self.cache, &plan.object, meta, &shape.ok()?));
        let asked_at = Instant::now();
        let (response, added) = authorize::ask(&read.route, probe, condition.as_ref(), herd.cached.as_ref()).await?;
        authorize::check(
            &response,
            plan.range,
            plan.part.is_some(),
            condition.as_ref().filter(|_| added),
        )?;
        let origin_id = s3::request_id_of(response.headers()).unwrap_or(request_id).to_owned();
        // Decided once, written once; the herd, the grant and the metric follow from it.
        let verdict = authorize::decide(&plan, herd.cached.take(), part, &response, added);
        authorize::apply(&verdict, &plan.object, &self.cache);
        self.settle(herd, &verdict, &plan, &response, asked_at);
        self.answer(read, &plan, auth, verdict, response, early, &origin_id)
            .await
    }

    /// A HEAD of the object signed with the fill credentials, when they are valid.
    fn metadata_check(&self, read: &ObjectRead, plan: &Plan) -> Option<freshen::Check> {
        let credentials = self.credentials.as_ref().filter(|c| c.current().is_some())?;
        let region = &read.route.region;
        Some(freshen::Check {
            region: region.clone(),
            authority: read.authority.clone(),
            target: plan.object_target.clone(),
            credentials: credentials.clone(),
            signing_region: region
                .config
                .signing_region
                .clone()
                .or_else(|| read.auth.region().map(str::to_owned))
                .unwrap_or_else(|| "us-east-1".to_owned()),
        })
    }

    /// A hit a live grant answers without the origin, when the client's own
    /// preconditions hold for the cached version. The origin is asked again in the
    /// background.
    fn serve_granted<'a>(
        &'a self,
        read: &'a ObjectRead,
        probe: &Request<Empty<Bytes>>,
        plan: &'a Plan,
        auth: &FillAuth,
        answerable: Option<&(&ObjectMeta, Result<Shape, ProxyError>)>,
        request_id: &'a str,
    ) -> Option<impl std::future::Future<Output = Result<(Response<ProxyBody>, Outcome), ProxyError>> + 'a> {
        let (meta, shape) = match answerable? {
            (meta, Ok(shape)) if plan.preconditions_hold(meta) => (*meta, shape.clone()),
            _ => return None,
        };
        let (grants, asked) = (self.grants.as_ref()?, plan.grant.as_ref()?);
        let live = grants.live(asked, &plan.object, &meta.etag)?;
        grants.revalidate((&read.route.region, &self.cache), || relay::copy(probe), asked, &live);
        let object = self.cached_object(read, plan, auth.clone(), meta.clone());
        Some(async move {
            let (mut response, source) = object.respond(shape, plan.overrides.clone(), request_id, None).await?;
            response.extensions_mut().insert(grants::Authorized(live.kind.as_str()));
            Ok((response, Outcome::of(source)))
        })
    }

    /// What follows from the verdict besides the answer: the cold turn released with
    /// what was learned, the grant recorded, the region told, the probe counted.
    fn settle(
        &self,
        herd: Entered,
        verdict: &Verdict,
        plan: &Plan,
        response: &Response<OriginBody>,
        asked_at: Instant,
    ) {
        herd.finish(verdict.learned.as_ref());
        let served_etag = match &verdict.serve {
            Some((meta, _)) => Some(meta.etag.as_str()),
            None => response.headers().get(header::ETAG).and_then(|v| v.to_str().ok()),
        };
        if let Some(grants) = &self.grants {
            grants.record(
                plan.grant.as_ref(),
                &plan.object,
                response.status(),
                served_etag,
                asked_at,
            );
        }
        metrics::counter!(telemetry::PROBES, "outcome" => verdict.probe.label()).increment(1);
    }

    /// The answer: the origin's own (relayed), or the cache's, its first chunk from
    /// the probe's body (cold), the early read (current), or the tiers.
    #[allow(clippy::too_many_arguments)]
    async fn answer(
        &self,
        read: &ObjectRead,
        plan: &Plan,
        auth: FillAuth,
        verdict: Verdict,
        response: Response<OriginBody>,
        early: Option<EarlyRead>,
        origin_id: &str,
    ) -> Result<(Response<ProxyBody>, Outcome), ProxyError> {
        let authorized_hit = verdict.authorized_hit();
        let Some((meta, part)) = verdict.serve else {
            return Ok((relay::client_response(response), Outcome::Origin));
        };
        let shape = match Shape::of(&meta, part.as_ref(), plan.range, plan.checksum_mode) {
            Some(shape) => shape?,
            // The cache cannot answer as the origin would (checksums it could not
            // read): the origin's own answer goes.
            None => return Ok((relay::client_response(response), Outcome::Origin)),
        };
        let object = self.cached_object(read, plan, auth, meta);
        let head = match verdict.probe {
            // A cold probe's body is the data: its first chunk streams to the client.
            Probe::Cold => {
                let span = shape.span;
                span.and_then(|span| lead::start(&self.fills, object.cold(), span, response))
            }
            // The early read was of the version the cache held: good for that version only.
            Probe::NotModified | Probe::SameEtag => {
                drop(response);
                match early {
                    Some(early) => early.take().await,
                    None => None,
                }
            }
            Probe::Changed | Probe::Uncacheable | Probe::Refused => None,
        };
        let (response, source) = object.respond(shape, plan.overrides.clone(), origin_id, head).await?;
        if authorized_hit {
            telemetry::hit_authorized("origin");
        }
        Ok((response, Outcome::of(source)))
    }

    /// HEAD: the origin's answer is relayed (it is the authorization anyway) and
    /// refreshes the metadata; `Range: bytes=0-0` also warms the whole object.
    async fn head(
        &self,
        read: &ObjectRead,
        probe: Request<Empty<Bytes>>,
        plan: Plan,
    ) -> Result<(Response<ProxyBody>, Outcome), ProxyError> {
        let response: Response<OriginBody> = read.route.region.client.send(probe, "probe").await?;
        let status = response.status();
        // A part's HEAD tells the part's length, never the object's.
        // (s3s-fs answers a ranged HEAD with 200 and the object's length.)
        let asked = Asked::of(None, plan.range);
        let learned = (plan.learns && plan.part.is_none())
            .then(|| meta_from_response(status, response.headers(), asked, plan.checksum_mode))
            .flatten();
        if let Some(new) = learned {
            let meta = match self.cache.meta(&plan.object).await {
                Some(old) if old.etag == new.etag => authorize::refreshed(&old, new),
                _ => new,
            };
            self.cache.insert_meta(&plan.object, meta.clone());
            let warm = plan.range == RangeRequest::One(s3::range::ByteRange::From { start: 0, end: Some(0) });
            match (warm, plan.auth.clone()) {
                // Warming has no client: no connection's share is drawn on.
                (true, Ok(auth)) => {
                    let plan = Plan {
                        share: None,
                        priority: Priority::Background,
                        ..plan
                    };
                    self.warm(self.cached_object(read, &plan, auth, meta))
                }
                (true, Err(reason)) => tracing::debug!(reason, "not warming: no one can sign its fills"),
                (false, _) => {}
            }
        }
        Ok((relay::client_response(response), Outcome::Origin))
    }

    /// The object as the cache answers it: its chunks from the tiers, else from the
    /// region's owner of each (with peers), else from the origin.
    fn cached_object(&self, read: &ObjectRead, plan: &Plan, auth: FillAuth, meta: ObjectMeta) -> Arc<CachedObject> {
        let version = (meta.etag.clone(), meta.size, meta.checksums.as_ref());
        let fill = Fill::new(
            &read.route.region,
            read.authority.clone(),
            auth,
            &plan.object,
            version,
            &self.fills,
        );
        let begun = fill.begun;
        // With peers, chunks come from their owners; the request path does not know.
        let upstream = regional::upstream(self.peers.as_ref(), fill, &plan.object, meta.checksums.as_ref());
        Arc::new(CachedObject {
            begun,
            cache: self.cache.clone(),
            object: plan.object.clone(),
            meta,
            upstream,
            region: read.route.region.config.name.clone(),
            read_ahead: self.read_ahead,
            budget: self.read_ahead_budget.clone(),
            share: plan.share.clone(),
            priority: plan.priority,
            origin_budget: self.fills.budget.clone(),
        })
    }

    /// Fills every chunk of `object` in the background, `read_ahead` at a time.
    fn warm(&self, object: Arc<CachedObject>) {
        tokio::spawn(async move {
            let started = Instant::now();
            match object.clone().warm_all().await {
                Ok(()) => tracing::info!(
                    key = object.object.key,
                    size = object.meta.size,
                    seconds = started.elapsed().as_secs_f64(),
                    "warmed"
                ),
                Err(error) => tracing::warn!(key = object.object.key, error = error_chain(&error), "warming failed"),
            }
        });
    }
}

/// What the cache could answer of `plan` from `cached`, when it could answer all of
/// it (a part it has the bounds of, checksums it has seen) and the client asked for
/// no 304 itself: only then does the probe ask for a 304. A part it does not know
/// the bounds of is never answered with the whole object: some origins (Garage)
/// answer a 304 for the object's ETag even for a part past the last one.
fn answerable<'a>(
    plan: &Plan,
    cached: Option<&'a ObjectMeta>,
    part: Option<&PartMeta>,
) -> Option<(&'a ObjectMeta, Result<Shape, ProxyError>)> {
    let meta = cached.filter(|_| !plan.client_conditionals)?;
    if plan.part.is_some() && part.is_none() {
        return None;
    }
    Some((meta, Shape::of(meta, part, plan.range, plan.checksum_mode)?))
}

/// The parts of the client's request its signature covers.
fn signed<'a, B>(request: &'a Request<B>, authority: &'a str) -> Signed<'a> {
    let uri = request.uri();
    Signed {
        method: request.method().as_str(),
        authority,
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers: request.headers(),
    }
}
