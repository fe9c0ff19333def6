//! What the load is sent to: the origin itself, s3-accel, or nginx. The proxies
//! start afresh (an empty cache, a new process) for every run, so each run is
//! cold where its scenario says so and its peak memory is its own.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use s3_accel::config::units::format_size;
use s3_accel_testkit::origin::{ACCESS_KEY, SECRET_KEY};

use crate::nginx::Nginx;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum)]
pub enum Kind {
    /// The origin directly: what a workload gets without an accelerator.
    Direct,
    /// s3-accel.
    #[value(name = "s3-accel")]
    S3Accel,
    /// nginx with proxy_cache, slice and proxy_cache_lock.
    Nginx,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "origin direct",
            Kind::S3Accel => "s3-accel",
            Kind::Nginx => "nginx",
        }
    }
}

/// What a proxy is started with.
pub struct ProxySettings<'a> {
    pub origin: SocketAddr,
    pub chunk_size: u64,
    pub memory_cache: u64,
    pub disk_cache: u64,
    pub direct_io: Option<bool>,
    pub read_ahead: Option<usize>,
    pub read_ahead_memory: Option<u64>,
    /// A fresh directory of this run, deleted with it.
    pub dir: &'a Path,
}

impl ProxySettings<'_> {
    /// s3-accel's configuration file for these settings.
    pub fn s3_accel_config(&self) -> String {
        let cache_dir = self.dir.join("cache");
        format!(
            "listen = \"127.0.0.1:0\"\n\
         admin_listen = \"127.0.0.1:0\"\n\
         origin = \"http://{}\"\n\
         [cache]\n\
         dir = \"{}\"\n\
         memory = \"{}\"\n\
         disk = \"{}\"\n\
         chunk_size = \"{}\"\n\
         {}{}{}\
         [credentials]\n\
         access_key_id = \"{ACCESS_KEY}\"\n\
         secret_access_key = \"{SECRET_KEY}\"\n",
            self.origin,
            cache_dir.display(),
            format_size(self.memory_cache),
            format_size(self.disk_cache),
            format_size(self.chunk_size),
            self.direct_io.map_or(String::new(), |d| format!("direct_io = {d}\n")),
            self.read_ahead.map_or(String::new(), |r| format!("read_ahead = {r}\n")),
            self.read_ahead_memory.map_or(String::new(), |m| format!(
                "read_ahead_memory = \"{}\"\n",
                format_size(m)
            )),
        )
    }
}

pub enum Target {
    Direct(SocketAddr),
    S3Accel(S3Accel),
    Nginx(Nginx),
}

impl Target {
    pub async fn start(kind: Kind, settings: &ProxySettings<'_>) -> anyhow::Result<Self> {
        Ok(match kind {
            Kind::Direct => Target::Direct(settings.origin),
            Kind::S3Accel => Target::S3Accel(S3Accel::start(settings).await?),
            Kind::Nginx => Target::Nginx(Nginx::start(settings).await?),
        })
    }

    pub fn address(&self) -> SocketAddr {
        match self {
            Target::Direct(address) => *address,
            Target::S3Accel(accel) => accel.address,
            Target::Nginx(nginx) => nginx.address,
        }
    }

    /// The peak resident memory of the proxy's processes so far, summed.
    pub fn peak_rss(&self) -> Option<u64> {
        match self {
            Target::Direct(_) => None,
            Target::S3Accel(accel) => accel.child.id().and_then(peak_rss),
            Target::Nginx(nginx) => Some(nginx.pids().into_iter().filter_map(peak_rss).sum()),
        }
    }

    pub async fn stop(self) {
        match self {
            Target::Direct(_) => {}
            Target::S3Accel(accel) => accel.stop().await,
            Target::Nginx(nginx) => nginx.stop().await,
        }
    }
}

/// s3-accel in a child process: this binary run with `--proxy-config`.
pub struct S3Accel {
    pub address: SocketAddr,
    child: Child,
}

impl S3Accel {
    async fn start(settings: &ProxySettings<'_>) -> anyhow::Result<Self> {
        let config = settings.s3_accel_config();
        let config_path = settings.dir.join("s3-accel.toml");
        std::fs::write(&config_path, config)?;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--proxy-config")
            .arg(&config_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting s3-accel")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("s3-accel did not start within 30 s")??
            .context("s3-accel exited before listening")?;
        let address = line
            .strip_prefix(crate::proxy::LISTENING)
            .and_then(|rest| rest.trim().parse().ok())
            .with_context(|| format!("s3-accel said {line:?}"))?;
        Ok(Self { address, child })
    }

    /// Closes its stdin, which drains and stops it; killed if that takes over 10 s.
    async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// `VmHWM` of a process: the most resident memory it has had.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
