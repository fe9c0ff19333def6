//! The admin listener, apart from the S3 one: `/metrics` (Prometheus text),
//! `/healthz` (the process answers) and `/readyz` (cache open, origins reachable).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::cache::grants::Grants;
use crate::cache::ChunkCache;
use crate::credentials::FillCredentials;
use crate::origin::Region;
use crate::peers::Peers;
use crate::telemetry;

/// An origin answered this recently: ready without asking it again.
const RECENT: Duration = Duration::from_secs(30);
/// An admin client sends its request head within this time.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// An admin connection lasts at most this long.
const ADMIN_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

pub struct AdminServer {
    listener: TcpListener,
    node: Node,
}

/// What the admin listener reports on and acts on: the node's parts, as `App`
/// built them.
pub struct Node {
    pub cache: Arc<ChunkCache>,
    pub regions: Vec<Arc<Region>>,
    pub grants: Option<Arc<Grants>>,
    pub credentials: Option<Arc<FillCredentials>>,
    pub peers: Option<Arc<Peers>>,
    pub pins: Arc<crate::pins::Pins>,
    pub origin_budget: Arc<crate::fetch::origin_budget::OriginBudget>,
    /// Set on SIGTERM: the node is being taken out of rotation.
    pub withdrawing: Arc<std::sync::atomic::AtomicBool>,
}

impl AdminServer {
    pub async fn bind(address: SocketAddr, node: Node) -> io::Result<Self> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("binding the admin listener {address}: {e}")))?;
        telemetry::prometheus();
        Ok(Self { listener, node })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped.
    pub async fn run(self) {
        let state = Arc::new(self);
        loop {
            let Ok((stream, peer)) = state.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let state = state.clone();
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(state.answer(request, peer).await) }
            });
            tokio::spawn(async move {
                // A scrape or a probe is one short request: a client that sends its head
                // slowly, or keeps a connection for long, is let go.
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                    .keep_alive(false);
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(ADMIN_CONNECTION_TIMEOUT, connection).await;
            });
        }
    }

    async fn answer<B>(&self, request: Request<B>, peer: SocketAddr) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if request.uri().path() == PINS {
            return self.pins(request, peer).await;
        }
        if request.uri().path() == GRANTS_FLUSH {
            // The admin listener is open to the cluster for scrapes; what changes the
            // node is taken from the node itself (kubectl exec, port-forward) only.
            if !peer.ip().to_canonical().is_loopback() {
                return text(
                    StatusCode::FORBIDDEN,
                    "admin changes are taken from loopback only (kubectl exec or port-forward)\n".into(),
                );
            }
            return match (request.method(), self.node.grants.as_ref()) {
                (&Method::POST, Some(grants)) => {
                    flush(grants, "admin endpoint");
                    text(StatusCode::OK, "grants flushed\n".into())
                }
                (&Method::POST, None) => text(StatusCode::OK, "no grants are kept (auth.grants is off)\n".into()),
                _ => text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n".into()),
            };
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match request.uri().path() {
            "/metrics" => {
                self.node.cache.publish_gauges();
                if let Some(grants) = self.node.grants.as_ref() {
                    metrics::gauge!(telemetry::GRANTS).set(grants.len() as f64);
                    metrics::gauge!(telemetry::GRANT_DROPS).set(grants.drops_held() as f64);
                }
                if let Some(credentials) = self.node.credentials.as_ref() {
                    credentials.publish_gauges();
                }
                let mut response = text(StatusCode::OK, telemetry::prometheus().render());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4".parse().expect("static"),
                );
                response
            }
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            ORIGIN_BUDGET => {
                let status = self.node.origin_budget.status();
                json(
                    StatusCode::OK,
                    serde_json::to_string_pretty(&status).expect("JSON") + "\n",
                )
            }
            "/readyz" => self.readiness().await,
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz, /readyz, /admin/pins, /admin/origin-budget\n".into(),
            ),
        }
    }

    /// `/admin/pins`: GET lists (as `/metrics`, to anyone who reaches the admin
    /// port); POST pins or renews, DELETE `?id=` unpins, from loopback or with the
    /// bearer token of `pins.token_file`.
    async fn pins<B>(&self, request: Request<B>, peer: SocketAddr) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let pins = &self.node.pins;
        let method = request.method().clone();
        if method == Method::GET || method == Method::HEAD {
            return json(StatusCode::OK, pins.list());
        }
        if method != Method::POST && method != Method::DELETE {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET, POST or DELETE\n".into());
        }
        if !pins.allowed(request.headers(), peer) {
            return text(
                StatusCode::FORBIDDEN,
                "pin changes are taken from loopback, or with the bearer token of pins.token_file\n".into(),
            );
        }
        let answer = match method {
            Method::DELETE => {
                let id = request.uri().query().and_then(|q| url_query(q, "id"));
                match id {
                    Some(id) => pins.unpin(&id).await,
                    None => return text(StatusCode::BAD_REQUEST, "DELETE /admin/pins?id=<pin>\n".into()),
                }
            }
            _ => {
                let body = match http_body_util::Limited::new(request.into_body(), 64 << 10)
                    .collect()
                    .await
                {
                    Ok(body) => body.to_bytes(),
                    Err(_) => {
                        return text(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "a pin request is at most 64 KiB\n".into(),
                        )
                    }
                };
                match serde_json::from_slice::<crate::pins::PinRequest>(&body) {
                    Ok(asked) => pins.pin(asked).await,
                    Err(error) => return text(StatusCode::BAD_REQUEST, format!("not a pin request: {error}\n")),
                }
            }
        };
        match answer {
            Ok(pin) => json(StatusCode::OK, serde_json::to_string_pretty(&pin).expect("JSON") + "\n"),
            Err(refusal) => text(refusal.status, format!("{}\n", refusal.message)),
        }
    }

    /// Ready when the cache is open (it is, once the server runs) and at least one
    /// region's origin has answered recently or answers now (any HTTP status will do):
    /// one region's outage must not take a node that serves several out of rotation.
    /// The body names the regions that did not answer.
    async fn readiness(&self) -> Response<Full<Bytes>> {
        // Shutting down: out of rotation at once, though it still serves for a while.
        if self.node.withdrawing.load(std::sync::atomic::Ordering::SeqCst) {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "withdrawing: shutting down (serving until server.withdraw_grace ends)\n".into(),
            );
        }
        let mut unreachable = Vec::new();
        for region in &self.node.regions {
            let client = &region.client;
            if client.reached_within(RECENT) {
                continue;
            }
            let origin = client.origin();
            let uri: Result<Uri, _> = format!("{}/", origin).parse();
            let reached = match uri.map(|uri| Request::head(uri).body(Empty::new())) {
                Ok(Ok(request)) => client.send(request, "readiness").await.is_ok(),
                _ => false,
            };
            if !reached {
                unreachable.push(format!("{} ({origin})", region.config.name));
            }
        }
        let regions = self.node.regions.len();
        let list = unreachable.join(", ");
        // A disk tier out of service is a slower node, not one to take out of rotation.
        let disk = match self.node.cache.disk_health().degraded() {
            Some(reason) => format!("disk: degraded ({reason})\n"),
            None => String::new(),
        };
        // The region as this node sees it (a node alone still serves).
        let disk = match &self.node.peers {
            Some(peers) => {
                let members = peers.members();
                // Ready either way; an operator sees which (and `s3accel_peer_tls`).
                let tls = match peers.tls {
                    Some(_) => "peer TLS: on (mutual)",
                    None => "peer TLS: off (the peer network is unprotected)",
                };
                format!(
                    "{disk}peers: {} members, ring {:016x}\n{tls}\n",
                    members.members.len(),
                    members.fingerprint
                )
            }
            None => disk,
        };
        // Until it has looked for its region once, a node would fill alone what the
        // region's owners hold.
        if self.node.peers.as_ref().is_some_and(|peers| !peers.discovered()) {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("peers: looking for the region (first discovery under way)\n{disk}"),
            );
        }
        // Without valid keys of its own, the node relays every read a client signed
        // over its Range (boto3, the aws CLI): out of rotation until they come.
        if let Some(reason) = self.node.credentials.as_ref().and_then(|c| c.unready()) {
            let origins = match unreachable.is_empty() {
                true => String::new(),
                false => format!("origins not reachable: {list}\n"),
            };
            return text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n{origins}{disk}"));
        }
        match unreachable.len() {
            0 => text(StatusCode::OK, format!("ready\n{disk}")),
            n if n < regions => text(StatusCode::OK, format!("ready; origins not reachable: {list}\n{disk}")),
            _ => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("origins not reachable: {list}\n{disk}"),
            ),
        }
    }
}

/// Pins: listed, taken and ended here.
const PINS: &str = "/admin/pins";

/// The value of `name` in a query string, percent-decoded.
fn url_query(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| {
            percent_encoding::percent_decode_str(&value.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = text(status, body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().expect("static"));
    response
}

/// The origin budget in force now (this node's share of the region's) and the
/// fills waiting for their turn.
const ORIGIN_BUDGET: &str = "/admin/origin-budget";

/// Drops every grant: the next request of each client is authorized by the origin.
const GRANTS_FLUSH: &str = "/admin/grants/flush";

pub fn flush(grants: &crate::cache::grants::Grants, why: &'static str) {
    grants.flush();
    metrics::counter!(telemetry::GRANT_FLUSHES).increment(1);
    tracing::info!(why, "grants flushed");
}

/// Flushes the grants on every SIGHUP, for as long as the task lives.
pub async fn flush_on_hangup(grants: Arc<crate::cache::grants::Grants>) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hangup.recv().await.is_some() {
        flush(&grants, "SIGHUP");
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
