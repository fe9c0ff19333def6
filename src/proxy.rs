//! The request path, top to bottom: route, classify, plan, authorize at the origin,
//! then answer from the cache or relay the origin's answer.

mod access;
mod cached;
mod fill;
mod forward;
mod plan;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use tokio::sync::Semaphore;

use crate::cache::{ChunkCache, ObjectMeta};
use crate::config::{Config, ProxyCredentials};
use crate::error::{error_chain, ProxyError};
use crate::origin::{OriginBody, Route, Router};
use crate::s3::{self, Operation};
use crate::telemetry;
use crate::ProxyBody;
use access::{AccessLog, LoggedBody};
use cached::{meta_from_response, CachedObject};
use fill::Fill;
use plan::{ColdGate, Plan};

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
    credentials: Option<Arc<ProxyCredentials>>,
    fill_permits: Arc<Semaphore>,
    read_ahead: usize,
    cold: ColdGate,
    cold_patience: Duration,
}

impl Proxy {
    pub fn new(router: Router, cache: Arc<ChunkCache>, config: &Config) -> Arc<Self> {
        let fill_permits = (config.cache.fill_memory / config.cache.chunk_size).max(1) as usize;
        Arc::new(Self {
            router,
            cache,
            credentials: config.credentials.clone().map(Arc::new),
            fill_permits: Arc::new(Semaphore::new(fill_permits)),
            read_ahead: config.cache.read_ahead,
            cold: ColdGate::default(),
            cold_patience: config.origin_client.first_byte_timeout,
        })
    }

    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
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
            ..AccessLog::default()
        };
        let mut response = match self.forward(request, &request_id, &mut log).await {
            Ok((mut response, outcome)) => {
                response.headers_mut().insert(CACHE_HEADER, outcome.header_value());
                log.relayed = matches!(outcome, Outcome::Origin | Outcome::Bypass(_));
                response
            }
            Err(error) => {
                let (status, _) = error.status_and_code();
                if status.is_server_error() {
                    tracing::warn!(request_id, error = error_chain(&error), "request failed");
                }
                error.into_response(&request_id, &path, &method)
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
        log.status = response.status().as_u16();
        response.map(|body| LoggedBody::new(body, log).boxed_unsync())
    }

    async fn forward<B: Body>(
        &self,
        request: Request<B>,
        request_id: &str,
        log: &mut AccessLog,
    ) -> Result<(Response<ProxyBody>, Outcome), ProxyError> {
        // Route first: the Host decides whether the bucket is in the name or the path.
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
        if carries_body(&request) {
            return Err(ProxyError::UnexpectedBody(request.method().clone()));
        }

        // The client's own signed request, unchanged: the origin authorizes it.
        let probe = forward::origin_request(&request, route.region.client.origin(), &authority)?;

        // What must never be cached passes through before the cache is consulted.
        let plan = match plan::plan(&request, &object, &route, self.credentials.as_ref()) {
            Ok(plan) => plan,
            Err(reason) => return self.relay(&route, probe, Outcome::Bypass(reason)).await,
        };
        match object.operation {
            Operation::HeadObject => self.head(&route, &authority, probe, plan).await,
            Operation::GetObject => self.get(&route, &authority, probe, plan, request_id).await,
        }
    }

    /// Sends the client's request to the origin and relays the answer.
    async fn relay(
        &self,
        route: &Route,
        probe: Request<Empty<Bytes>>,
        outcome: Outcome,
    ) -> Result<(Response<ProxyBody>, Outcome), ProxyError> {
        let response = route.region.client.send(probe, "relay").await?;
        Ok((forward::client_response(response), outcome))
    }

    /// GET: the origin authorizes the client's request (with `If-None-Match` on the
    /// cached ETag, so that it answers 304 instead of a body), then the cache answers.
    async fn get(
        &self,
        route: &Route,
        authority: &str,
        mut probe: Request<Empty<Bytes>>,
        plan: Plan,
        request_id: &str,
    ) -> Result<(Response<ProxyBody>, Outcome), ProxyError> {
        let mut cached = self.cache.meta(&plan.object).await;
        // A cold request probes alone; those behind it come back with its metadata
        // and probe cheaply, all at once (the turn is not held past that).
        let mut turn = None;
        if cached.is_none() {
            let entered = self.cold.enter(&plan.object, self.cold_patience).await;
            if entered.waited {
                cached = self.cache.meta(&plan.object).await;
            }
            if cached.is_none() {
                turn = Some(entered);
            }
        }
        let condition_added = match &cached {
            Some(meta) if !plan.client_conditionals => HeaderValue::from_str(&meta.etag)
                .map(|etag| probe.headers_mut().insert(header::IF_NONE_MATCH, etag))
                .is_ok(),
            _ => false,
        };
        let probe_started = Instant::now();
        let response = route.region.client.send(probe, "probe").await?;
        metrics::histogram!(telemetry::PROBE_SECONDS).record(probe_started.elapsed().as_secs_f64());
        let origin_id = response
            .headers()
            .get(s3::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(request_id)
            .to_owned();
        let status = response.status();
        let etag = response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let served = match (status, cached) {
            // Authorized, and the cached version is current.
            (StatusCode::NOT_MODIFIED, Some(meta)) if condition_added => Some((meta, Outcome::Hit)),
            // An origin that ignores the condition: same version, drop its body.
            (StatusCode::OK | StatusCode::PARTIAL_CONTENT, Some(meta))
                if etag.as_deref() == Some(meta.etag.as_str()) =>
            {
                Some((meta, Outcome::Hit))
            }
            (StatusCode::OK | StatusCode::PARTIAL_CONTENT, cached) => {
                let learned = plan
                    .learns
                    .then(|| meta_from_response(status, response.headers()))
                    .flatten();
                match (learned, cached) {
                    // Cold: the origin said yes; its body is dropped and chunks are
                    // filled once for every client reading this object now.
                    (Some(meta), None) => {
                        self.cache.insert_meta(&plan.object, meta.clone());
                        Some((meta, Outcome::Miss))
                    }
                    // Changed: relay the new version; the next read caches it.
                    (Some(meta), Some(_)) => {
                        self.cache.insert_meta(&plan.object, meta);
                        None
                    }
                    (None, Some(_)) if plan.learns => {
                        self.cache.remove_meta(&plan.object);
                        None
                    }
                    (None, _) => None,
                }
            }
            (StatusCode::NOT_FOUND, Some(_)) => {
                self.cache.remove_meta(&plan.object);
                None
            }
            _ => None,
        };
        drop(turn);
        let probe_outcome = match (&served, status) {
            (Some((_, Outcome::Miss)), _) => "cold",
            (Some(_), StatusCode::NOT_MODIFIED) => "not_modified",
            (Some(_), _) => "same_etag",
            (None, StatusCode::OK | StatusCode::PARTIAL_CONTENT) => "changed",
            (None, _) => "refused",
        };
        metrics::counter!(telemetry::PROBES, "outcome" => probe_outcome).increment(1);
        let Some((meta, outcome)) = served else {
            return Ok((forward::client_response(response), Outcome::Origin));
        };
        drop(response);
        let object = self.cached_object(route, authority, &plan, meta);
        let response = object.respond(plan.range, plan.overrides, &origin_id).await?;
        Ok((response, outcome))
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
        if let Some(meta) = plan
            .learns
            .then(|| meta_from_response(status, response.headers()))
            .flatten()
        {
            self.cache.insert_meta(&plan.object, meta.clone());
            let warm =
                plan.range == s3::range::RangeRequest::One(s3::range::ByteRange::From { start: 0, end: Some(0) });
            if warm {
                self.warm(self.cached_object(route, authority, &plan, meta));
            }
        }
        Ok((forward::client_response(response), Outcome::Origin))
    }

    fn cached_object(&self, route: &Route, authority: &str, plan: &Plan, meta: ObjectMeta) -> Arc<CachedObject> {
        let fill = Fill {
            region: route.region.clone(),
            authority: authority.to_owned(),
            auth: plan.auth.clone(),
            etag: meta.etag.clone(),
            size: meta.size,
            chunk_size: self.cache.chunk_size(),
            permits: self.fill_permits.clone(),
        };
        Arc::new(CachedObject {
            cache: self.cache.clone(),
            object: plan.object.clone(),
            meta,
            fill: Arc::new(fill),
            read_ahead: self.read_ahead,
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
