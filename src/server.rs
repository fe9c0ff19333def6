//! The S3 listener: accepts connections (TLS when configured), serves HTTP/1.1 and
//! h2 on each (h2c in plain text, ALPN under TLS), cuts clients that stop taking
//! bytes, closes idle connections, and drains in-flight requests on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::body::{BoxError, ProxyBody};
use crate::config::ServerConfig;
use crate::peers::server::PeerServer;
use crate::proxy::{ConnectionShare, Proxy};
use crate::telemetry;

pub struct Server {
    listener: TcpListener,
    config: ServerConfig,
    tls: Option<TlsAcceptor>,
    front: Front,
}

/// Whom a listener serves, and with what.
#[derive(Clone)]
pub enum Front {
    /// S3 clients.
    Clients(Arc<Proxy>),
    /// The region's other nodes (signed peer requests only).
    Peers(Arc<PeerServer>),
}

impl Server {
    pub async fn bind(
        address: SocketAddr,
        front: Front,
        config: ServerConfig,
        tls: Option<TlsAcceptor>,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("binding {address}: {e}")))?;
        Ok(Self {
            listener,
            config,
            tls,
            front,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting and gives in-flight
    /// requests `drain_timeout` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_read_timeout)
            .keep_alive(self.config.keep_alive);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.config.max_concurrent_streams)
            // Dead connections answer no ping; live ones cost one frame a period.
            .keep_alive_interval(Some(self.config.keep_alive_interval))
            .keep_alive_timeout(self.config.keep_alive_interval)
            // The "rapid reset" pattern (streams opened and reset at once) ends the
            // connection after this many; so do streams this server had to reset.
            .max_pending_accept_reset_streams(Some(20))
            .max_local_error_reset_streams(Some(256));
        let builder = Arc::new(builder);
        // Connections watch `stop` and hold a clone of `alive` until they end.
        let (stop, stopped) = watch::channel(false);
        let (alive, mut all_ended) = mpsc::channel::<()>(1);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.as_mut() => break,
            };
            let _ = stream.set_nodelay(true);
            let connection = Connection {
                builder: builder.clone(),
                tls: self.tls.clone(),
                config: self.config.clone(),
                front: self.front.clone(),
                stop: stopped.clone(),
                _alive: alive.clone(),
            };
            tokio::spawn(connection.serve(stream, peer));
        }
        drop(self.listener);
        tracing::info!(drain_timeout = ?self.config.drain_timeout, "shutting down: draining in-flight requests");
        let _ = stop.send(true);
        drop(alive);
        if tokio::time::timeout(self.config.drain_timeout, all_ended.recv())
            .await
            .is_err()
        {
            tracing::warn!("drain time ran out; closing the remaining connections");
        }
    }
}

/// One accepted connection.
struct Connection {
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
    config: ServerConfig,
    front: Front,
    /// Becomes `true` when the server shuts down.
    stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

impl Connection {
    async fn serve(self, stream: TcpStream, peer: SocketAddr) {
        match self.tls.clone() {
            None => self.drive(TokioIo::new(stream), peer).await,
            Some(acceptor) => {
                match tokio::time::timeout(self.config.header_read_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => self.drive(TokioIo::new(tls), peer).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
    }

    /// Serves the connection until it ends, the server stops, its client stops
    /// taking bytes for `send_timeout` (cut: everything it held is let go), or it
    /// has had no request in flight for `idle_timeout` (closed gracefully).
    async fn drive<I>(mut self, io: I, peer: SocketAddr)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let front = self.front.clone();
        let clients = matches!(front, Front::Clients(_));
        let share = match &front {
            Front::Clients(proxy) => proxy.connection_share(),
            // Peers draw on no client's share.
            Front::Peers(_) => ConnectionShare::new(0),
        };
        let watch = Arc::new(Watch::new(share));
        let service = {
            let watch = watch.clone();
            service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                let (front, watch) = (front.clone(), watch.clone());
                let guard = watch.begin();
                async move {
                    let response = match front {
                        Front::Clients(proxy) => {
                            request.extensions_mut().insert(watch.share.clone());
                            proxy.handle(request).await
                        }
                        Front::Peers(peers) => peers.handle(request).await,
                    };
                    Ok::<_, Infallible>(response.map(|body| guard.watch(body).boxed_unsync()))
                }
            })
        };
        let connection = self.builder.serve_connection(io, service).into_owned();
        let mut connection = std::pin::pin!(connection);
        let limit = self.config.send_timeout.min(self.config.idle_timeout);
        let mut tick = tokio::time::interval((limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Once closing gracefully, a connection gets `drain_timeout` to finish when the
        // server stops, `send_timeout` when it was idle.
        let mut closing: Option<(tokio::time::Instant, Duration)> = None;
        let result = loop {
            tokio::select! {
                result = connection.as_mut() => break result,
                changed = self.stop.changed(), if closing.is_none() => {
                    if changed.is_err() || *self.stop.borrow() {
                        connection.as_mut().graceful_shutdown();
                        closing = Some((tokio::time::Instant::now(), self.config.drain_timeout));
                    }
                }
                _ = tick.tick() => {
                    if watch.stalled(self.config.send_timeout) {
                        telemetry::client_cut("send_timeout");
                        tracing::debug!(%peer, send_timeout = ?self.config.send_timeout, "client took no bytes; cut");
                        return;
                    }
                    if closing.is_some_and(|(since, limit)| since.elapsed() > limit) {
                        return;
                    }
                    // Peers' connections are closed by their own pools, never under them.
                    if closing.is_none() && clients && watch.idle_for() >= self.config.idle_timeout {
                        telemetry::client_cut("idle");
                        connection.as_mut().graceful_shutdown();
                        closing = Some((tokio::time::Instant::now(), self.config.send_timeout));
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// What one connection's responses are doing: whether each waits on its client.
struct Watch {
    share: ConnectionShare,
    opened: Instant,
    responses: Mutex<Vec<Weak<Progress>>>,
    /// Requests whose responses are not done.
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` of the last request's start or response's end.
    last_active: AtomicU64,
}

/// One response's last hand-over: milliseconds after the connection opened at which
/// it handed its head or a frame to the connection, which has not asked for more
/// since; `IDLE` while the response is the one being waited for (or done).
struct Progress(AtomicU64);

const IDLE: u64 = u64::MAX;

impl Watch {
    fn new(share: ConnectionShare) -> Self {
        Self {
            share,
            opened: Instant::now(),
            responses: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            last_active: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn begin(self: &Arc<Self>) -> Begun {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.last_active.store(self.now(), Ordering::Relaxed);
        Begun(Some(self.clone()))
    }

    /// Whether a response has waited on its client longer than `limit`.
    fn stalled(&self, limit: Duration) -> bool {
        let now = self.now();
        let limit = limit.as_millis() as u64;
        let mut responses = self.responses.lock().expect("responses");
        responses.retain(|progress| progress.strong_count() > 0);
        responses.iter().filter_map(Weak::upgrade).any(|progress| {
            let handed = progress.0.load(Ordering::Relaxed);
            handed != IDLE && now.saturating_sub(handed) > limit
        })
    }

    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(self.now().saturating_sub(self.last_active.load(Ordering::Relaxed)))
    }
}

/// A request in flight on a connection, until its response is watched (or dropped).
struct Begun(Option<Arc<Watch>>);

impl Begun {
    /// `body`, watched: its hand-overs are recorded, and its end ends the request.
    fn watch(mut self, body: ProxyBody) -> Watched {
        let watch = self.0.take().expect("watched once");
        let progress = Arc::new(Progress(AtomicU64::new(watch.now())));
        watch
            .responses
            .lock()
            .expect("responses")
            .push(Arc::downgrade(&progress));
        Watched {
            inner: body,
            progress,
            watch,
        }
    }
}

impl Drop for Begun {
    fn drop(&mut self) {
        if let Some(watch) = self.0.take() {
            end(&watch);
        }
    }
}

fn end(watch: &Watch) {
    watch.in_flight.fetch_sub(1, Ordering::SeqCst);
    watch.last_active.store(watch.now(), Ordering::Relaxed);
}

/// A response body whose hand-overs to the connection are recorded.
struct Watched {
    inner: ProxyBody,
    progress: Arc<Progress>,
    watch: Arc<Watch>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        // Asked for more: the client took what it had (or the connection has room).
        self.progress.0.store(IDLE, Ordering::Relaxed);
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            let now = self.watch.now();
            self.progress.0.store(now, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        end(&self.watch);
    }
}
