//! s3-accel itself, in-process on 127.0.0.1:0.

use std::net::SocketAddr;

use s3_accel::{App, Config};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::client::{Call, Reply, TestClient};

/// `[cache]` keys for a small memory-only cache of 1 MiB chunks.
pub const SMALL_CACHE: &str = "memory = \"64MiB\"\ndisk = \"0\"\nchunk_size = \"1MiB\"";

pub struct TestProxy {
    pub address: SocketAddr,
    /// The admin listener: /metrics, /healthz, /readyz.
    pub admin: SocketAddr,
    /// The peer listener, when the proxy has peers.
    pub peer: Option<SocketAddr>,
    pub client: TestClient,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    _cache_dir: tempfile::TempDir,
}

impl TestProxy {
    /// Starts the proxy with `toml` (top-level keys first, tables after) plus a
    /// loopback listener and a private cache directory.
    pub async fn start(toml: &str) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), toml, "memory = \"64MiB\"\ndisk = \"0\"").await
    }

    /// Starts the proxy on `cache_dir`, with `cache` as the keys of its `[cache]` table.
    pub async fn start_in(cache_dir: tempfile::TempDir, toml: &str, cache: &str) -> Self {
        let text = format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{toml}\n[cache]\ndir = \"{}\"\n{cache}\n",
            cache_dir.path().display()
        );
        Self::start_config(cache_dir, &text).await
    }

    async fn start_config(cache_dir: tempfile::TempDir, text: &str) -> Self {
        let mut config = Config::from_toml(text).unwrap_or_else(|e| panic!("test config: {e:?}\n{text}"));
        // Stopped at once unless the test is about withdrawal.
        if !text.contains("withdraw_grace") {
            config.server.withdraw_grace = std::time::Duration::ZERO;
        }
        let app = App::bind(&config).await.unwrap();
        let address = app.local_addr().unwrap();
        let admin = app.admin_addr().unwrap();
        let peer = app.peer_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        Self {
            address,
            admin,
            peer,
            client: TestClient::default(),
            shutdown: Some(tx),
            task,
            _cache_dir: cache_dir,
        }
    }

    /// A proxy from a whole configuration text (its cache directory is the caller's).
    pub async fn from_config(text: &str) -> Self {
        Self::start_config(tempfile::tempdir().unwrap(), text).await
    }

    /// A proxy that sends every Host to `origin_url`.
    pub async fn for_origin(origin_url: &str) -> Self {
        Self::start(&format!("origin = \"{origin_url}\"")).await
    }

    pub async fn send(&self, call: &Call) -> Result<Reply, String> {
        self.client.send(self.address, call).await
    }

    /// Starts a graceful shutdown; the returned handle ends when the drain does.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn stopped(self) {
        self.task.await.unwrap();
    }

    /// Shuts down gracefully (which closes the cache) and hands back the cache directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.begin_shutdown();
        self.task.await.unwrap();
        self._cache_dir
    }
}
