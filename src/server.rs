//! The S3 listener: accepts connections (TLS when configured), serves HTTP/1.1 and
//! h2 on each (h2c in plain text, ALPN under TLS), and drains in-flight requests on
//! shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig;
use crate::proxy::Proxy;

pub struct Server {
    listener: TcpListener,
    proxy: Arc<Proxy>,
    config: ServerConfig,
    tls: Option<TlsAcceptor>,
    front: Front,
}

/// Whom a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// S3 clients.
    Clients,
    /// The region's other nodes (signed peer requests only).
    Peers,
}

impl Server {
    pub async fn bind(
        address: SocketAddr,
        proxy: Arc<Proxy>,
        config: ServerConfig,
        tls: Option<TlsAcceptor>,
        front: Front,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("binding {address}: {e}")))?;
        Ok(Self {
            listener,
            proxy,
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
            .max_concurrent_streams(self.config.max_concurrent_streams);
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();
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
                proxy: self.proxy.clone(),
                builder: builder.clone(),
                tls: self.tls.clone(),
                handshake_timeout: self.config.header_read_timeout,
                front: self.front,
            };
            tokio::spawn(connection.serve(stream, peer, graceful.watcher()));
        }
        drop(self.listener);
        tracing::info!(drain_timeout = ?self.config.drain_timeout, "shutting down: draining in-flight requests");
        if tokio::time::timeout(self.config.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("drain time ran out; closing the remaining connections");
        }
    }
}

/// One accepted connection.
struct Connection {
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    front: Front,
}

impl Connection {
    async fn serve(self, stream: TcpStream, peer: SocketAddr, watcher: hyper_util::server::graceful::Watcher) {
        let (proxy, front) = (self.proxy.clone(), self.front);
        let service = service_fn(move |request| {
            let proxy = proxy.clone();
            async move {
                Ok::<_, Infallible>(match front {
                    Front::Clients => proxy.handle(request).await,
                    Front::Peers => proxy.handle_peer(request).await,
                })
            }
        });
        let result = match &self.tls {
            None => {
                watcher
                    .watch(
                        self.builder
                            .serve_connection(TokioIo::new(stream), service)
                            .into_owned(),
                    )
                    .await
            }
            Some(acceptor) => match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    watcher
                        .watch(self.builder.serve_connection(TokioIo::new(tls), service).into_owned())
                        .await
                }
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            },
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}
