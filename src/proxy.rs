//! The request path, top to bottom: route, classify, plan, authorize at the origin,
//! then answer from the cache or relay the origin's answer.

mod access;
mod cached;
mod error;
mod fill;
mod forward;
mod grant;
mod lead;
mod peer;
mod plan;
mod region;
mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use tokio::sync::Semaphore;

use crate::body::ProxyBody;
use crate::cache::grants::Grants;
use crate::cache::{CacheKey, ChunkCache, ChunkRead, ChunkSource, ChunkWriter, ObjectId, ObjectMeta, PartMeta};
use crate::config::{AuthConfig, Config};
use crate::credentials::FillCredentials;
use crate::error::error_chain;
use crate::origin::{self, OriginBody, Route, Router};
use crate::peers::protocol::ChunkRequest;
use crate::peers::Peers;
use crate::s3::keys::VerifiedKeys;
use crate::s3::range::RangeRequest;
use crate::s3::response::{cacheable, meta_from_response, part_from_response, Asked};
use crate::s3::{self, ContentRange, Operation};
use crate::telemetry;
use access::{AccessLog, LoggedBody};
pub use cached::{Busy, ConnectionShare};
use cached::{CachedObject, ReadAheadBudget, Shape};
pub use error::ProxyError;
use fill::{Fill, FillAuth};
use lead::Lead;
use plan::{ColdGate, Entry, Plan, Release};
use region::{Advice, RegionGate};
use upstream::{Regional, Upstream};

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
    fill_permits: Arc<Semaphore>,
    read_ahead: usize,
    read_ahead_budget: Arc<ReadAheadBudget>,
    /// `cache.read_ahead_per_connection`.
    per_connection: u64,
    cold: ColdGate,
    cold_patience: Duration,
    /// The region's other nodes, when this one is not alone.
    peers: Option<Arc<Peers>>,
    /// With peers: one node of the region probes a cold object with a body.
    region_gate: Option<RegionGate>,
    /// Origin decisions served again without asking, when a mode is on.
    grants: Option<Arc<Grants>>,
    /// `verified_keys`: the access keys whose SigV4 is checked here.
    verified: Option<Arc<VerifiedKeys>>,
    /// Grants being asked about again in the background.
    revalidating: Arc<std::sync::Mutex<std::collections::HashSet<crate::cache::grants::GrantKey>>>,
    auth: AuthConfig,
    /// Turns of this node's gate held for other nodes probing (it owns the objects'
    /// metadata keys), with an id each.
    remote_turns: RemoteTurns,
}

type RemoteTurns = Arc<std::sync::Mutex<std::collections::HashMap<ObjectId, (u64, plan::ColdTurn)>>>;

impl Proxy {
    pub fn new(
        router: Router,
        cache: Arc<ChunkCache>,
        config: &Config,
        peers: Option<Arc<Peers>>,
        verified: Option<Arc<VerifiedKeys>>,
        credentials: Option<Arc<FillCredentials>>,
    ) -> Arc<Self> {
        let fill_permits = (config.cache.fill_memory / config.cache.chunk_size).max(1) as usize;
        Arc::new(Self {
            router,
            cache,
            credentials,
            fill_permits: Arc::new(Semaphore::new(fill_permits)),
            read_ahead: config.cache.read_ahead,
            read_ahead_budget: Arc::new(ReadAheadBudget::new(
                config.cache.read_ahead_memory,
                config.cache.chunk_size,
                config.cache.read_ahead_wait,
            )),
            per_connection: config.cache.read_ahead_per_connection,
            cold: ColdGate::default(),
            cold_patience: config.origin_client.first_byte_timeout,
            region_gate: peers.clone().map(|peers| RegionGate {
                peers,
                patience: config.origin_client.first_byte_timeout,
            }),
            peers,
            remote_turns: RemoteTurns::default(),
            grants: config.auth.grants().then(|| {
                let auth = &config.auth;
                Arc::new(Grants::new(auth.grant_ttl, auth.grant_memory, auth.grant_entries))
            }),
            auth: config.auth.clone(),
            revalidating: Arc::default(),
            verified,
        })
    }

    /// A new client connection's share of the read-ahead budget.
    pub fn connection_share(&self) -> ConnectionShare {
        ConnectionShare::new(self.per_connection)
    }

    /// The grant store, when a mode keeps grants.
    pub fn grants(&self) -> Option<&Arc<Grants>> {
        self.grants.as_ref()
    }

    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    /// The proxy's own read credentials, when it has any.
    pub fn credentials(&self) -> Option<&Arc<FillCredentials>> {
        self.credentials.as_ref()
    }

    pub fn peers(&self) -> Option<&Arc<Peers>> {
        self.peers.as_ref()
    }

    pub fn regions(&self) -> &[Arc<crate::origin::Region>] {
        self.router.regions()
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
            .get::<grant::Authorized>()
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
        // Route first: the Host decides whether the bucket is in the name or the path
        // (and a Host two readers could read two ways goes no further).
        forward::check_host(&request)?;
        // Read before hop-by-hop headers go: `Transfer-Encoding` is one of them.
        let body = carries_body(&request);
        // From here on the request is exactly what the origin will see: a header the
        // client names in `Connection` is not forwarded, so nothing may read it.
        forward::strip_hop_by_hop(request.headers_mut());
        let authority = forward::client_authority(&request).unwrap_or_default();
        let route = self.router.route(&authority)?;
        log.region.clone_from(&route.region.config.name);

        // Classify before anything reaches the origin: only object reads go on.
        let uri = request.uri();
        let object = s3::classify(
            request.method(),
            uri.path(),
            uri.query(),
            route.bucket_from_host.as_deref(),
        )?;
        log.bucket.clone_from(&object.bucket);
        log.key.clone_from(&object.key);
        log.operation = match object.operation {
            Operation::GetObject => "get",
            Operation::HeadObject => "head",
        };
        if body {
            return Err(ProxyError::UnexpectedBody(request.method().clone()));
        }
        // With presigned grants on, an expired or malformed presigned URL is refused
        // here, before any cache lookup, as the origin would refuse it.
        let window = match self.grants.is_some() && self.auth.presigned {
            true => s3::presign::check(&object.presign, std::time::SystemTime::now()).transpose()?,
            false => None,
        };
        let id = plan::object_id(&route, &object);
        let grant = self.asked(
            &s3::sigv4::Signed {
                method: request.method().as_str(),
                authority: &authority,
                path: uri.path(),
                query: uri.query().unwrap_or(""),
                headers: request.headers(),
            },
            &object,
            &id,
            window,
            route.region.config.signing_region.as_deref(),
        )?;

        // The client's own signed request, unchanged: the origin authorizes it.
        let probe = forward::origin_request(&request, route.region.client.origin(), &authority)?;
        // Parsed once: the plan serves it, and a relayed answer is checked against it.
        let range = s3::range::parse(request.headers().get(header::RANGE).and_then(|v| v.to_str().ok()));
        let asked = (range, object.part_number.is_some());

        // What must never be cached passes through before the cache is consulted.
        let plan = plan::plan(&request, &object, range, &route, self.credentials.as_ref());
        let answer = match plan {
            Err(reason) => self.relay(&route, probe, asked, Outcome::Bypass(reason)).await,
            Ok(plan) => {
                let plan = Plan { grant, ..plan };
                self.serve(&route, &authority, probe, plan, (object.operation, asked), request_id)
                    .await
            }
        };
        if let Ok((response, Outcome::Origin | Outcome::Bypass(_))) = &answer {
            self.observe(&id, response.status());
        }
        answer
    }

    /// An object read the cache may answer: HEAD, or GET (relayed when no one can
    /// sign its fills).
    async fn serve(
        &self,
        route: &Route,
        authority: &str,
        probe: Request<Empty<Bytes>>,
        plan: Plan,
        (operation, asked): (Operation, (RangeRequest, bool)),
        request_id: &str,
    ) -> Result<(Response<ProxyBody>, Outcome), ProxyError> {
        match (operation, plan.auth.clone()) {
            (Operation::HeadObject, _) => self.head(route, authority, probe, plan).await,
            (Operation::GetObject, Ok(auth)) => self.get(route, authority, probe, plan, auth, request_id).await,
            (Operation::GetObject, Err(reason)) => self.relay(route, probe, asked, Outcome::Bypass(reason)).await,
        }
    }

    /// Sends the client's request to the origin and relays the answer, once it is
    /// known to answer what was `asked` (a range, of a part or not).
    async fn relay(
        &self,
        route: &Route,
        probe: Request<Empty<Bytes>>,
        (range, part): (RangeRequest, bool),
        outcome: Outcome,
    ) -> Result<(Response<ProxyBody>, Outcome), ProxyError> {
        let response = route.region.client.send(probe, "relay").await?;
        if let Err(mismatch) = forward::answers(&response, range, part, None) {
            origin::poison(&response);
            return Err(mismatch);
        }
        Ok((forward::client_response(response), outcome))
    }

    /// GET: the origin authorizes the client's request (with `If-None-Match` on the
    /// cached ETag, so that it answers 304 instead of a body), then the cache answers.
    async fn get(
        &self,
        route: &Route,
        authority: &str,
        probe: Request<Empty<Bytes>>,
        plan: Plan,
        auth: FillAuth,
        request_id: &str,
    ) -> Result<(Response<ProxyBody>, Outcome), ProxyError> {
        let grant = plan.grant.as_ref();
        let mut cached = self.cache.meta(&plan.object).await;
        // A cold request probes alone; those behind it come back with its metadata
        // and probe cheaply, all at once; if its answer is not cacheable, at once too.
        let mut turn = None;
        let mut report = None;
        if cached.is_none() {
            match self.cold.enter(&plan.object, self.cold_patience).await {
                Entry::Turn(entered) => {
                    turn = Some(entered);
                    // This node's first: the region may know the object, or be probing it.
                    if let Some(gate) = &self.region_gate {
                        match gate.ask(&plan.object).await {
                            Advice::Known(meta) => {
                                self.cache.insert_meta(&plan.object, meta.clone());
                                cached = Some(meta);
                            }
                            Advice::Probe(told) => report = Some(told),
                            Advice::Alone => {}
                        }
                    }
                }
                Entry::Waited(Some(Release::Done)) => cached = self.cache.meta(&plan.object).await,
                Entry::Waited(_) => {}
            }
        }
        let part = match (plan.part, &cached) {
            (Some(number), Some(_)) => self.cache.part(&plan.object, number).await,
            _ => None,
        };
        // Ask for a 304 only when the cache could answer all of it (a part it has the
        // bounds of, checksums it has seen), and the client asked for no 304 itself.
        let answerable = cached
            .as_ref()
            .filter(|_| !plan.client_conditionals)
            .and_then(|meta| Some((meta, Shape::of(meta, part.as_ref(), plan.range, plan.checksum_mode)?)));
        // A live grant for this version answers without the origin, when the client's
        // own preconditions hold for it.
        let live = match &answerable {
            Some((meta, Ok(_))) if plan.preconditions_hold(meta) => self.live_grant(grant, &plan.object, &meta.etag),
            _ => None,
        };
        let answerable = match (answerable, live, grant) {
            (Some((meta, Ok(shape))), Some(live), Some(asked)) => {
                self.revalidate(route, probe, asked, &live);
                let object = self.cached_object(route, authority, &plan, auth, meta.clone());
                let (mut response, source) = object.respond(shape, plan.overrides, request_id, None).await?;
                response.extensions_mut().insert(grant::Authorized(live.kind.as_str()));
                return Ok((response, Outcome::of(source)));
            }
            (answerable, _, _) => answerable,
        };
        let condition = answerable
            .as_ref()
            .and_then(|(meta, _)| HeaderValue::from_str(&meta.etag).ok());
        // A likely hit reads its first chunk from the tiers while the origin decides:
        // nothing is sent before the origin's answer, and it is dropped on a refusal.
        let early = answerable.and_then(|(meta, shape)| {
            let first = shape.as_ref().ok()?.span?.0;
            let chunk_size = self.cache.chunk_size();
            let key = CacheKey::chunk(&plan.object, &meta.etag, chunk_size, first / chunk_size);
            let cache = self.cache.clone();
            Some(EarlyRead(tokio::spawn(async move { cache.peek(&key).await })))
        });
        let unconditional = condition.is_some().then(|| forward::copy(&probe));
        let asked_at = Instant::now();
        let mut response = self.probe(route, probe, condition.clone()).await?;
        let mut condition_added = condition.is_some();
        if let Some(unconditional) = unconditional
            .filter(|_| response.status() == StatusCode::NOT_MODIFIED && rewritten(&response, cached.as_ref()))
        {
            // Same ETag, another Last-Modified: rewritten with the same bytes, perhaps
            // with new metadata. Ask again without the condition to learn it.
            response = self.probe(route, unconditional, None).await?;
            condition_added = false;
        }
        // A stray answer is neither trusted nor relayed, and its connection never reused.
        let sent = condition.as_ref().filter(|_| condition_added);
        if let Err(mismatch) = forward::answers(&response, plan.range, plan.part.is_some(), sent) {
            origin::poison(&response);
            return Err(mismatch);
        }
        let origin_id = response
            .headers()
            .get(s3::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(request_id)
            .to_owned();
        let verdict = self.verdict(&plan, cached, part, &response, condition_added);
        if let Some(turn) = turn {
            turn.release(match verdict.learned {
                true => Release::Done,
                false => Release::GiveUp,
            });
        }
        let served_etag = match &verdict.serve {
            Some((meta, _)) => Some(meta.etag.clone()),
            None => response
                .headers()
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        self.record_grant(grant, &plan.object, response.status(), served_etag.as_deref(), asked_at);
        if let Some(report) = report {
            report.send(verdict.serve.as_ref().filter(|_| verdict.learned).map(|(meta, _)| meta));
        }
        metrics::counter!(telemetry::PROBES, "outcome" => verdict.probe.label()).increment(1);
        let Some((meta, part)) = verdict.serve else {
            return Ok((forward::client_response(response), Outcome::Origin));
        };
        let shape = match Shape::of(&meta, part.as_ref(), plan.range, plan.checksum_mode) {
            Some(shape) => shape?,
            // The cache cannot answer as the origin would (checksums it could not
            // read): the origin's own answer goes.
            None => return Ok((forward::client_response(response), Outcome::Origin)),
        };
        let object = self.cached_object(route, authority, &plan, auth, meta);
        let head = match verdict.probe {
            // A cold probe's body is the data: its first chunk streams to the client.
            Probe::Cold => self.lead(&object, &shape, response),
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
        let (response, source) = object.respond(shape, plan.overrides, &origin_id, head).await?;
        if matches!(verdict.probe, Probe::NotModified | Probe::SameEtag) {
            telemetry::hit_authorized("origin");
        }
        Ok((response, Outcome::of(source)))
    }

    /// The first chunk of a cold answer, streamed from the probe's own body: kept
    /// when the body carries that chunk whole, read once when it carries only part
    /// of it. `None` (the cache answers alone) when the body starts elsewhere than
    /// the answer, the chunk is already cached or arriving, or fill memory is full.
    fn lead(&self, object: &Arc<CachedObject>, shape: &Shape, response: Response<OriginBody>) -> Option<ChunkRead> {
        let (first, last) = shape.span?;
        let starts = match response.status() {
            StatusCode::OK => 0,
            _ => ContentRange::of(response.headers())?.first,
        };
        if starts != first {
            return None;
        }
        let chunk_size = self.cache.chunk_size();
        let index = first / chunk_size;
        let chunk_last = ((index + 1) * chunk_size).min(object.meta.size) - 1;
        let end = last.min(chunk_last);
        let permit = self.fill_permits.clone().try_acquire_owned().ok()?;
        let (writer, read) = if first % chunk_size == 0 && end == chunk_last {
            let key = object.key(index);
            // A chunk another node owns is its to fetch: this node drops the probe's
            // body (what was in flight is all it costs) and reads the chunk upstream.
            if !object.upstream.owns(&key) {
                return None;
            }
            let writer = self.cache.claim(&key)?;
            let read = writer.read();
            (writer, read)
        } else {
            let (writer, read) = ChunkWriter::unkept();
            (writer, read.starting_at(first - index * chunk_size))
        };
        let lead = Lead {
            writer,
            object: object.clone(),
            index,
            length: end - first + 1,
            permit,
        };
        tokio::spawn(lead.feed(response.into_body()));
        Some(read)
    }

    /// Sends the client's request to the origin, with `If-None-Match: condition`.
    async fn probe(
        &self,
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

    /// What the origin's answer to a probe means for the cache, decided once: what
    /// to serve from it (if anything), what was learned, and the probe's metric.
    fn verdict(
        &self,
        plan: &Plan,
        cached: Option<ObjectMeta>,
        part: Option<PartMeta>,
        response: &Response<OriginBody>,
        condition_added: bool,
    ) -> Verdict {
        let status = response.status();
        let headers = response.headers();
        let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok());
        let relay = |probe| Verdict {
            serve: None,
            learned: false,
            probe,
        };
        match status {
            // Authorized, and the cached version is current.
            StatusCode::NOT_MODIFIED if condition_added => Verdict {
                serve: cached.map(|meta| (meta, part)),
                learned: true,
                probe: Probe::NotModified,
            },
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
                let asked = Asked::of(plan.part, plan.range);
                let learned = plan
                    .learns
                    .then(|| meta_from_response(status, headers, asked, plan.checksum_mode))
                    .flatten();
                let cold = cached.is_none();
                let same = cached.filter(|meta| etag == Some(meta.etag.as_str()));
                let (meta, probe) = match (same, learned) {
                    // The same version (an origin that ignores the condition, or an
                    // unconditional probe): its body is dropped; what it says of the
                    // object refreshes the metadata.
                    (Some(old), Some(new)) => {
                        let meta = refreshed(&old, new);
                        if meta != old {
                            self.cache.insert_meta(&plan.object, meta.clone());
                        }
                        (meta, Probe::SameEtag)
                    }
                    // The same version, in an answer that tells no size (overrides,
                    // a 200 to a range or a part): served from the cache all the same.
                    (Some(old), None) if !plan.learns || cacheable(headers) => (old, Probe::SameEtag),
                    // Cold: the origin said yes; chunks are filled once for every
                    // client reading this object now.
                    (None, Some(new)) if cold => {
                        self.cache.insert_meta(&plan.object, new.clone());
                        (new, Probe::Cold)
                    }
                    // Changed: relay the new version; the next read caches it.
                    (_, Some(new)) => {
                        self.cache.insert_meta(&plan.object, new);
                        return relay(Probe::Changed);
                    }
                    // Not cacheable (SSE-C, `no-store`, no ETag or size): relayed,
                    // and nothing older is served in its place.
                    (_, None) => {
                        if !cold {
                            self.cache.remove_meta(&plan.object);
                        }
                        return relay(Probe::Uncacheable);
                    }
                };
                let part = match plan.part {
                    Some(number) => {
                        let learned = plan
                            .learns
                            .then(|| part_from_response(status, headers, plan.checksum_mode))
                            .flatten()
                            .filter(|learned| learned.etag == meta.etag && learned.last < meta.size)
                            // "The part is the whole object" holds only of an object that size.
                            .filter(|learned| !learned.whole || learned.last + 1 == meta.size);
                        if let Some(learned) = &learned {
                            self.cache.insert_part(&plan.object, number, learned.clone());
                        }
                        learned.or(part)
                    }
                    None => None,
                };
                // A part whose bounds the cache does not know is the origin's to answer:
                // never the whole object in its place.
                if plan.part.is_some() && part.is_none() {
                    return Verdict {
                        serve: None,
                        learned: true,
                        probe: Probe::Uncacheable,
                    };
                }
                Verdict {
                    serve: Some((meta, part)),
                    learned: true,
                    probe,
                }
            }
            StatusCode::NOT_FOUND => {
                if cached.is_some() {
                    self.cache.remove_meta(&plan.object);
                }
                relay(Probe::Refused)
            }
            _ => relay(Probe::Refused),
        }
    }

    /// HEAD: the origin's answer is relayed (it is the authorization anyway) and
    /// refreshes the metadata; `Range: bytes=0-0` also warms the whole object.
    async fn head(
        &self,
        route: &Route,
        authority: &str,
        probe: Request<Empty<Bytes>>,
        plan: Plan,
    ) -> Result<(Response<ProxyBody>, Outcome), ProxyError> {
        let response: Response<OriginBody> = route.region.client.send(probe, "probe").await?;
        let status = response.status();
        // A part's HEAD tells the part's length, never the object's.
        // (s3s-fs answers a ranged HEAD with 200 and the object's length.)
        let asked = Asked::of(None, plan.range);
        let learned = (plan.learns && plan.part.is_none())
            .then(|| meta_from_response(status, response.headers(), asked, plan.checksum_mode))
            .flatten();
        if let Some(new) = learned {
            let meta = match self.cache.meta(&plan.object).await {
                Some(old) if old.etag == new.etag => refreshed(&old, new),
                _ => new,
            };
            self.cache.insert_meta(&plan.object, meta.clone());
            let warm = plan.range == RangeRequest::One(s3::range::ByteRange::From { start: 0, end: Some(0) });
            match (warm, plan.auth.clone()) {
                // Warming has no client: no connection's share is drawn on.
                (true, Ok(auth)) => {
                    let plan = Plan { share: None, ..plan };
                    self.warm(self.cached_object(route, authority, &plan, auth, meta))
                }
                (true, Err(reason)) => tracing::debug!(reason, "not warming: no one can sign its fills"),
                (false, _) => {}
            }
        }
        Ok((forward::client_response(response), Outcome::Origin))
    }

    fn cached_object(
        &self,
        route: &Route,
        authority: &str,
        plan: &Plan,
        auth: FillAuth,
        meta: ObjectMeta,
    ) -> Arc<CachedObject> {
        let fill = Fill {
            region: route.region.clone(),
            authority: authority.to_owned(),
            auth,
            etag: meta.etag.clone(),
            size: meta.size,
            chunk_size: self.cache.chunk_size(),
            permits: self.fill_permits.clone(),
            crc: meta.checksums.as_ref().and_then(s3::full_object_crc),
        };
        let fill = Arc::new(fill);
        // With peers, chunks come from their owners; the request path does not know.
        let upstream: Arc<dyn Upstream> = match (&self.peers, peer::signer(&fill.auth)) {
            (Some(peers), Some(signer)) => Arc::new(Regional {
                template: ChunkRequest {
                    object: plan.object.clone(),
                    etag: meta.etag.clone(),
                    size: meta.size,
                    chunk_size: self.cache.chunk_size(),
                    index: 0,
                    authority: authority.to_owned(),
                    signer,
                    checksums: checksum_pairs(meta.checksums.as_ref()),
                },
                fill,
                peers: peers.clone(),
            }),
            _ => fill,
        };
        Arc::new(CachedObject {
            cache: self.cache.clone(),
            object: plan.object.clone(),
            meta,
            upstream,
            region: route.region.config.name.clone(),
            read_ahead: self.read_ahead,
            budget: self.read_ahead_budget.clone(),
            share: plan.share.clone(),
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

/// The object's checksum headers, as text pairs for a peer.
fn checksum_pairs(checksums: Option<&http::HeaderMap>) -> Vec<(String, String)> {
    checksums
        .into_iter()
        .flatten()
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect()
}

/// A read of a hit's first chunk from the tiers, started before the origin answers;
/// stopped if it is not wanted.
struct EarlyRead(tokio::task::JoinHandle<Option<ChunkRead>>);

impl EarlyRead {
    async fn take(mut self) -> Option<ChunkRead> {
        (&mut self.0).await.ok().flatten()
    }
}

impl Drop for EarlyRead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a probe's answer means, decided once.
struct Verdict {
    /// Serve this version (and part) from the cache, or relay the origin's answer.
    serve: Option<(ObjectMeta, Option<PartMeta>)>,
    /// The cache now holds the object's metadata (cold waiters may read it).
    learned: bool,
    probe: Probe,
}

/// What the origin said to a probe: `s3accel_probes_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
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
    fn label(self) -> &'static str {
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

/// The metadata of the same object version, refreshed by a newer answer: its
/// headers (a metadata-only change keeps the ETag), and the checksums it told, or
/// those already known.
fn refreshed(old: &ObjectMeta, new: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        checksums: new.checksums.or_else(|| old.checksums.clone()),
        ..new
    }
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

/// A GET or HEAD with a body is not something S3 clients send; refusing it keeps
/// the forwarded request free of a body we would have to drop.
fn carries_body<B: Body>(request: &Request<B>) -> bool {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0");
    let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
    (declared || chunked) && matches!(*request.method(), Method::GET | Method::HEAD)
}
