//! s3-accel as the bench runs it: a child process of the bench binary, so its
//! memory is its own. It prints its address on stdout and stops when the bench
//! closes its stdin, or on SIGTERM.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use tokio::io::AsyncReadExt;

use s3_accel::{App, Config};

/// The line the child prints once it listens: `LISTENING <address>`.
pub const LISTENING: &str = "LISTENING";

pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let config = Config::from_toml(&text).map_err(|e| anyhow::anyhow!(s3_accel::error::error_chain(&e)))?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let app = App::bind(&config).await.context("starting s3-accel")?;
            let address = app.local_addr()?;
            let mut stdout = std::io::stdout();
            writeln!(stdout, "{LISTENING} {address}")?;
            stdout.flush()?;
            // SIGTERM as in a pod (region-rollout), or the bench closing stdin.
            let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            app.run(async move {
                tokio::select! {
                    () = stdin_closed() => {}
                    _ = terminate.recv() => {}
                }
            })
            .await;
            Ok(())
        })
}

async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0u8; 64];
    while matches!(stdin.read(&mut buffer).await, Ok(n) if n > 0) {}
}
