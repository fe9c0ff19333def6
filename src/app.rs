//! The wiring: one s3-accel (cache, origin clients, proxy, listeners) bound,
//! then run until shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::{admin, cache, error, origin, proxy, server, telemetry, tls};

/// A bound, not yet running s3-accel.
pub struct App {
    server: server::Server,
    admin: admin::AdminServer,
    cache: Arc<cache::ChunkCache>,
    certificate: Option<(Arc<tls::ReloadableCert>, std::time::Duration)>,
}

impl App {
    /// Opens (and recovers) the cache, builds the origin clients, binds the listener.
    pub async fn bind(config: &Config) -> io::Result<Self> {
        // The recorder first: foyer takes its metric handles when the cache opens.
        telemetry::prometheus();
        let cache = cache::ChunkCache::open(&config.cache)
            .await
            .map_err(|e| io::Error::other(error::error_chain(&e)))?;
        let cache = Arc::new(cache);
        let router = origin::Router::new(config)?;
        let proxy = proxy::Proxy::new(router, cache.clone(), config);
        let admin = admin::AdminServer::bind(config.admin_listen, proxy.clone()).await?;
        let (acceptor, certificate) = match &config.tls {
            Some(tls) => {
                let certificate = tls::ReloadableCert::load(tls)?;
                (
                    Some(tls::acceptor(certificate.clone())?),
                    Some((certificate, tls.reload_interval)),
                )
            }
            None => (None, None),
        };
        let server = server::Server::bind(config.listen, proxy, config.server.clone(), acceptor).await?;
        Ok(Self {
            server,
            admin,
            cache,
            certificate,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.server.local_addr()
    }

    pub fn admin_addr(&self) -> io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Serves until `shutdown` completes, then drains, then flushes and closes the
    /// cache so that what was written survives a restart.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let admin = tokio::spawn(self.admin.run());
        let watch = self
            .certificate
            .map(|(certificate, interval)| tokio::spawn(certificate.watch(interval)));
        self.server.run(shutdown).await;
        self.cache.close().await;
        admin.abort();
        if let Some(watch) = watch {
            watch.abort();
        }
    }
}
