//! A pooled HTTP client for one regional origin, with connect, first-byte and
//! body-idle timeouts so that nothing waits on a dead origin forever.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hickory_resolver::TokioResolver;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{capture_connection, CaptureConnection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::IdleTimeoutBody;
use super::connect::{https_connector, ConnectionCap, OriginConnector};
use crate::config::OriginClientConfig;
use crate::s3::Endpoint;
use crate::telemetry;

/// The body of an origin response as the proxy relays it.
pub type OriginBody = IdleTimeoutBody<Incoming>;

/// The connection an origin response came on, kept in the response's extensions so
/// that a caller who finds the answer is not the one it asked for can make sure the
/// connection is never used again: an origin that sent bytes past a response's end
/// has the next request on that connection answered by them.
#[derive(Clone)]
struct OriginConnection(CaptureConnection);

/// Never reuses the connection `response` came on (its framing cannot be trusted);
/// the response itself should be dropped, which closes it.
pub fn poison<B>(response: &Response<B>) {
    if let Some(OriginConnection(capture)) = response.extensions().get() {
        if let Some(connected) = capture.connection_metadata().as_ref() {
            connected.poison();
        }
    }
}

/// Why the origin gave no usable response head.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("cannot reach origin {origin}")]
    Unreachable {
        origin: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("origin {origin} sent no response head within {timeout:?}")]
    Timeout { origin: String, timeout: Duration },
    #[error("origin {origin} broke off the exchange")]
    Protocol {
        origin: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
}

/// The `<Code>` of an origin's error answer (its first 8 KiB, within 5 s), or `""`.
pub async fn error_code(response: Response<OriginBody>) -> String {
    use http_body_util::BodyExt;
    let body = http_body_util::Limited::new(response.into_body(), 8 << 10);
    match tokio::time::timeout(Duration::from_secs(5), body.collect()).await {
        Ok(Ok(body)) => crate::s3::xml::error_code(&String::from_utf8_lossy(&body.to_bytes()))
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

pub struct OriginClient {
    region: Arc<str>,
    origin: Endpoint,
    /// The origin's `host:port`, the pool's key for every request.
    authority: http::uri::Authority,
    /// Unix seconds of the last response head from this origin (0: never).
    last_reached: AtomicU64,
    client: Client<HttpsConnector<OriginConnector>, Empty<Bytes>>,
    first_byte_timeout: Duration,
    body_idle_timeout: Duration,
}

impl OriginClient {
    pub fn new(
        region: &str,
        origin: &Endpoint,
        config: &OriginClientConfig,
        tls: rustls::ClientConfig,
        resolver: Arc<TokioResolver>,
        cap: ConnectionCap,
    ) -> io::Result<Self> {
        let connector = https_connector(region, origin, tls, resolver, config.connect_timeout, cap)?;
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            // Never retry on our own: the client's signed request is its to retry.
            .retry_canceled_requests(false)
            .build(connector);
        let authority = match origin.host.contains(':') {
            true => format!("[{}]:{}", origin.host, origin.port),
            false => format!("{}:{}", origin.host, origin.port),
        };
        Ok(Self {
            region: region.into(),
            origin: origin.clone(),
            authority: authority
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("origin {origin}: {e}")))?,
            last_reached: AtomicU64::new(0),
            client,
            first_byte_timeout: config.first_byte_timeout,
            body_idle_timeout: config.body_idle_timeout,
        })
    }

    pub fn origin(&self) -> &Endpoint {
        &self.origin
    }

    /// Points `request` at the origin itself, its Host (the authority the client
    /// signed) kept as a header: connections are pooled per origin, never per Host a
    /// client chose.
    fn address(&self, request: &mut Request<Empty<Bytes>>) {
        if !request.headers().contains_key(http::header::HOST) {
            if let Some(host) = request
                .uri()
                .authority()
                .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
            {
                request.headers_mut().insert(http::header::HOST, host);
            }
        }
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(match self.origin.tls {
            true => http::uri::Scheme::HTTPS,
            false => http::uri::Scheme::HTTP,
        });
        parts.authority = Some(self.authority.clone());
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }

    /// Whether the origin sent a response head within `window`.
    pub fn reached_within(&self, window: Duration) -> bool {
        let last = self.last_reached.load(Ordering::Relaxed);
        last != 0 && unix_seconds().saturating_sub(last) <= window.as_secs()
    }

    /// Sends `request` (whose URI carries the origin's scheme and the client's authority)
    /// and waits for the response head. `kind` labels the metrics: probe, fill, relay.
    pub async fn send(
        &self,
        mut request: Request<Empty<Bytes>>,
        kind: &'static str,
    ) -> Result<Response<OriginBody>, OriginError> {
        self.address(&mut request);
        let capture = capture_connection(&mut request);
        let started = Instant::now();
        let origin = || self.origin.to_string();
        let result = match tokio::time::timeout(self.first_byte_timeout, self.client.request(request)).await {
            Err(_) => Err(OriginError::Timeout {
                origin: origin(),
                timeout: self.first_byte_timeout,
            }),
            Ok(Err(source)) if source.is_connect() => Err(OriginError::Unreachable {
                origin: origin(),
                source,
            }),
            Ok(Err(source)) => Err(OriginError::Protocol {
                origin: origin(),
                source,
            }),
            Ok(Ok(response)) => Ok(response),
        };
        let region = self.region.to_string();
        match &result {
            Ok(response) => {
                self.last_reached.store(unix_seconds(), Ordering::Relaxed);
                let status = response.status().as_u16().to_string();
                metrics::counter!(telemetry::ORIGIN_REQUESTS, "region" => region.clone(), "kind" => kind, "status" => status).increment(1);
                metrics::histogram!(telemetry::ORIGIN_SECONDS, "region" => region, "kind" => kind)
                    .record(started.elapsed().as_secs_f64());
            }
            Err(error) => {
                let label = match error {
                    OriginError::Unreachable { .. } => "unreachable",
                    OriginError::Timeout { .. } => "timeout",
                    OriginError::Protocol { .. } => "protocol",
                };
                metrics::counter!(telemetry::ORIGIN_ERRORS, "region" => region, "kind" => kind, "error" => label)
                    .increment(1);
            }
        }
        let mut response = result?.map(|body| IdleTimeoutBody::new(body, self.body_idle_timeout));
        response.extensions_mut().insert(OriginConnection(capture));
        Ok(response)
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
