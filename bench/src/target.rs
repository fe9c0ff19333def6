//! What the load is sent to: the origin itself, s3-accel, or nginx. The proxies
//! start afresh (an empty cache, a new process) for every run, so each run is
//! cold where its scenario says so and its peak memory is its own.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
    /// Several s3-accel processes on 127.0.0.x, peers of one region (region-herd).
    #[value(name = "s3-accel-region")]
    Region,
    /// The same processes, each caching alone (region-herd).
    #[value(name = "s3-accel-alone")]
    Alone,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "origin direct",
            Kind::S3Accel => "s3-accel",
            Kind::Nginx => "nginx",
            Kind::Region => "s3-accel, peers",
            Kind::Alone => "s3-accel, no peers",
        }
    }

    /// Whether this target is s3-accel, one process or several.
    pub fn is_s3_accel(self) -> bool {
        matches!(self, Kind::S3Accel | Kind::Region | Kind::Alone)
    }
}

/// The secret the bench's regions sign peer requests with.
pub const PEER_SECRET: &str = "the-bench-region-secret-of-32-bytes-or-more";

/// How one node of a region knows the others.
#[derive(Clone)]
pub struct PeerSettings {
    pub node: String,
    pub listen: SocketAddr,
    pub addresses: Vec<SocketAddr>,
    pub secret_file: PathBuf,
    /// Mutual TLS on the peer port: this node's certificate files.
    pub tls: Option<s3_accel::config::PeerTlsConfig>,
}

/// Where a run's peer TLS files are: the region's CA and one certificate per node.
fn tls_dir(dir: &Path) -> PathBuf {
    dir.join("peer-tls")
}

/// The files of a certificate for `node`, signed by the run's CA.
fn node_tls(dir: &Path, node: &str) -> s3_accel::config::PeerTlsConfig {
    let tls = tls_dir(dir);
    s3_accel::config::PeerTlsConfig {
        cert_file: tls.join(format!("{node}.crt")),
        key_file: tls.join(format!("{node}.key")),
        ca_file: tls.join("ca.crt"),
        reload_interval: Duration::from_secs(10),
        identity: s3_accel::config::PeerIdentity::Node,
    }
}

/// The certificate the bench reads peers' chunks with, as a reader node would.
pub fn reader_tls(dir: &Path) -> s3_accel::config::PeerTlsConfig {
    node_tls(dir, READER)
}

/// The node name of the bench's own peer requests.
pub const READER: &str = "bench-reader";

/// A CA for the run and a certificate (server and client use) for each of `nodes`.
fn issue_peer_certificates(dir: &Path, nodes: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(tls_dir(dir))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate()?)?;
    std::fs::write(tls_dir(dir).join("ca.crt"), ca.pem())?;
    for node in nodes {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec![node.clone()])?;
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let files = node_tls(dir, node);
        std::fs::write(&files.cert_file, params.signed_by(&key, &ca)?.pem())?;
        std::fs::write(&files.key_file, key.serialize_pem())?;
    }
    Ok(())
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
    /// The address its client and admin listeners bind (port chosen by the system).
    pub ip: IpAddr,
    /// A fixed admin port (a region's nodes are asked whether they formed).
    pub admin_port: u16,
    pub peers: Option<PeerSettings>,
    /// How many processes a region target starts.
    pub nodes: usize,
    /// s3-accel serves a presigned URL read again from a grant (`[auth]`).
    pub presigned_grants: bool,
    /// A region's peer port in mutual TLS.
    pub peer_tls: bool,
    /// `server.withdraw_grace` (none: 0 s, the bench's nodes stop at once).
    pub withdraw_grace: Option<&'static str>,
    /// `peers.restart_wait` (none: s3-accel's default).
    pub restart_wait: Option<&'static str>,
    /// `cache.admission` (none: s3-accel's default).
    pub admission: Option<&'static str>,
    /// Keys of `[origin_client]` (the origin budget), as TOML lines.
    pub origin_client: Option<&'a str>,
    /// The host it runs on, with `--hosts`.
    pub host: Option<&'static s3_accel_testkit::netns::Host>,
}

impl ProxySettings<'_> {
    /// s3-accel's configuration file for these settings.
    pub fn s3_accel_config(&self) -> String {
        let cache_dir = self.dir.join("cache");
        let peers = self.peers.as_ref().map_or(String::new(), |peers| {
            let list: Vec<String> = peers.addresses.iter().map(|a| format!("\"{a}\"")).collect();
            format!(
                "[peers]\nnode_name = \"{}\"\nlisten = \"{}\"\naddresses = [{}]\nsecret_file = \"{}\"\nrefresh = \"1s\"\n{}{}",
                peers.node,
                peers.listen,
                list.join(", "),
                peers.secret_file.display(),
                self.restart_wait.map_or(String::new(), |w| format!("restart_wait = \"{w}\"\n")),
                peers.tls.as_ref().map_or(String::new(), |tls| format!(
                    "[peers.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
                    tls.cert_file.display(),
                    tls.key_file.display(),
                    tls.ca_file.display()
                ))
            )
        });
        format!(
            "listen = \"{}\"\n\
         admin_listen = \"{}\"\n\
         origin = \"http://{}\"\n\
         [server]\n\
         withdraw_grace = \"{}\"\n\
         [cache]\n\
         dir = \"{}\"\n\
         memory = \"{}\"\n\
         disk = \"{}\"\n\
         chunk_size = \"{}\"\n\
         {}{}{}\
         [credentials]\n\
         access_key_id = \"{ACCESS_KEY}\"\n\
         secret_access_key = \"{SECRET_KEY}\"\n{peers}{}",
            SocketAddr::new(self.ip, 0),
            SocketAddr::new(self.ip, self.admin_port),
            self.origin,
            self.withdraw_grace.unwrap_or("0s"),
            cache_dir.display(),
            format_size(self.memory_cache),
            format_size(self.disk_cache),
            format_size(self.chunk_size),
            self.direct_io.map_or(String::new(), |d| format!("direct_io = {d}\n")),
            self.read_ahead.map_or(String::new(), |r| format!("read_ahead = {r}\n"))
                + &self
                    .admission
                    .map_or(String::new(), |a| format!("admission = \"{a}\"\n")),
            self.read_ahead_memory.map_or(String::new(), |m| format!(
                "read_ahead_memory = \"{}\"\n",
                format_size(m)
            )),
            match self.presigned_grants {
                true => "[auth]\ngrants = [\"presigned\"]\n",
                false => "",
            }
            .to_owned()
                + &self
                    .origin_client
                    .map_or(String::new(), |keys| format!("[origin_client]\n{keys}\n")),
        )
    }
}

pub enum Target {
    Direct(SocketAddr),
    S3Accel(S3Accel),
    Nginx(Nginx),
    /// A region's nodes (peers or not), each client sent to one of them in turn.
    Nodes(Vec<S3Accel>),
}

impl Target {
    pub async fn start(kind: Kind, settings: &ProxySettings<'_>) -> anyhow::Result<Self> {
        Ok(match kind {
            Kind::Direct => Target::Direct(settings.origin),
            Kind::S3Accel => Target::S3Accel(S3Accel::start(settings).await?),
            Kind::Nginx => Target::Nginx(Nginx::start(settings).await?),
            Kind::Region | Kind::Alone => Target::Nodes(start_nodes(settings, kind == Kind::Region).await?),
        })
    }

    /// Where clients connect: client `i` to the `i % len`-th.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        match self {
            Target::Direct(address) => vec![*address],
            Target::S3Accel(accel) => vec![accel.address],
            Target::Nginx(nginx) => vec![nginx.address],
            Target::Nodes(nodes) => nodes.iter().map(|n| n.address).collect(),
        }
    }

    /// The peer listeners of a region's nodes.
    pub fn peer_addresses(&self) -> Vec<SocketAddr> {
        match self {
            Target::Nodes(nodes) => nodes.iter().filter_map(|n| n.peer).collect(),
            _ => Vec::new(),
        }
    }

    /// The peak resident memory of the proxy's processes so far, summed.
    pub fn peak_rss(&self) -> Option<u64> {
        match self {
            Target::Direct(_) => None,
            Target::S3Accel(accel) => accel.child.id().and_then(peak_rss),
            Target::Nginx(nginx) => Some(nginx.pids().into_iter().filter_map(peak_rss).sum()),
            // Per node: each node's memory is bounded by its own configuration.
            Target::Nodes(nodes) => nodes.iter().filter_map(|n| n.child.id().and_then(peak_rss)).max(),
        }
    }

    /// CPU seconds (user and system) the target's s3-accel processes used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        match self {
            Target::S3Accel(accel) => accel.child.id().and_then(cpu_seconds),
            Target::Nodes(nodes) => nodes.iter().map(|n| n.child.id().and_then(cpu_seconds)).sum(),
            Target::Direct(_) | Target::Nginx(_) => None,
        }
    }

    pub async fn stop(self) {
        match self {
            Target::Direct(_) => {}
            Target::S3Accel(accel) => accel.stop().await,
            Target::Nginx(nginx) => nginx.stop().await,
            Target::Nodes(nodes) => {
                futures_util::future::join_all(nodes.into_iter().map(S3Accel::stop)).await;
            }
        }
    }
}

/// `settings.nodes` s3-accel processes on 127.0.0.1, 127.0.0.2, ..., each with a
/// cache of its own; with `peers`, one region, returned once every node sees all.
async fn start_nodes(settings: &ProxySettings<'_>, peers: bool) -> anyhow::Result<Vec<S3Accel>> {
    let count = settings.nodes.max(1);
    let hosts = crate::hosts::get();
    let ip = |i: usize| match hosts {
        Some(hosts) => IpAddr::V4(hosts.nodes[i].address),
        None => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8)),
    };
    // On hosts of their own, every node has the same ports; on loopback, free ones.
    let free = |ip: IpAddr, fixed: u16| -> anyhow::Result<u16> {
        match hosts {
            Some(_) => Ok(fixed),
            None => Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port()),
        }
    };
    let peer_addresses = (0..count)
        .map(|i| Ok(SocketAddr::new(ip(i), free(ip(i), crate::hosts::PEER_PORT)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let secret_file = settings.dir.join("peer-key");
    std::fs::write(&secret_file, format!("{PEER_SECRET}\n"))?;
    let tls = peers && settings.peer_tls;
    if tls {
        let names: Vec<String> = (0..count)
            .map(|i| format!("node-{i}"))
            .chain([READER.to_owned()])
            .collect();
        issue_peer_certificates(settings.dir, &names)?;
    }
    let mut nodes = Vec::with_capacity(count);
    for (i, &listen) in peer_addresses.iter().enumerate() {
        let dir = settings.dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&dir)?;
        let admin_port = free(IpAddr::V4(Ipv4Addr::LOCALHOST), crate::hosts::ADMIN_PORT)?;
        let node = ProxySettings {
            dir: &dir,
            ip: ip(i),
            admin_port,
            host: hosts.map(|hosts| &hosts.nodes[i]),
            peers: peers.then(|| PeerSettings {
                node: format!("node-{i}"),
                listen,
                addresses: peer_addresses.clone(),
                secret_file: secret_file.clone(),
                tls: tls.then(|| node_tls(settings.dir, &format!("node-{i}"))),
            }),
            ..*settings
        };
        nodes.push(S3Accel::start(&node).await?);
    }
    if peers {
        for node in &nodes {
            node.formed(count).await?;
        }
    }
    Ok(nodes)
}

/// Whether the admin listener at `admin` answers `/readyz` with 200 now.
pub async fn ready_at(admin: SocketAddr) -> bool {
    let asked = tokio::time::timeout(Duration::from_millis(500), admin_get(admin, "/readyz")).await;
    matches!(asked, Ok(Ok(answer)) if answered_ok(&answer))
}

/// Whether an admin answer's status line says 200.
fn answered_ok(answer: &str) -> bool {
    answer.lines().next().is_some_and(|status| status.contains(" 200 "))
}

/// The body of an admin endpoint (HTTP/1.0, read to the end).
async fn admin_get(admin: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text)
}

/// s3-accel in a child process: this binary run with `--proxy-config`.
pub struct S3Accel {
    pub address: SocketAddr,
    /// Its peer listener, in a region.
    pub peer: Option<SocketAddr>,
    /// Its admin listener (`/readyz`).
    pub admin: SocketAddr,
    child: Child,
    config_path: PathBuf,
    host: Option<&'static s3_accel_testkit::netns::Host>,
}

impl S3Accel {
    async fn start(settings: &ProxySettings<'_>) -> anyhow::Result<Self> {
        let config = settings.s3_accel_config();
        let config_path = settings.dir.join("s3-accel.toml");
        std::fs::write(&config_path, config)?;
        let (address, child) = Self::launch(&config_path, settings.host).await?;
        Ok(Self {
            address,
            peer: settings.peers.as_ref().map(|p| p.listen),
            admin: SocketAddr::new(settings.ip, settings.admin_port),
            child,
            config_path,
            host: settings.host,
        })
    }

    /// Sends SIGTERM and waits for the process to end: how long it took, and how it
    /// ended.
    pub async fn terminate(&mut self) -> anyhow::Result<(Duration, std::process::ExitStatus)> {
        let started = std::time::Instant::now();
        let pid = self.child.id().context("the node runs")?;
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .context("the node did not stop within 60 s of SIGTERM")??;
        Ok((started.elapsed(), status))
    }

    /// Starts it again on the same configuration (its disk, its name).
    pub async fn relaunch(&mut self) -> anyhow::Result<()> {
        let (address, child) = Self::launch(&self.config_path, self.host).await?;
        (self.address, self.child) = (address, child);
        Ok(())
    }

    /// Waits until its `/readyz` is 200 and names `count` members.
    pub async fn formed(&self, count: usize) -> anyhow::Result<()> {
        let formed = format!("peers: {count} members");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = admin_get(self.admin, "/readyz").await.unwrap_or_default();
            if answered_ok(&ready) && ready.contains(&formed) {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the region's node at {} did not see {count} members within 30 s",
                self.admin
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn launch(
        config_path: &Path,
        host: Option<&'static s3_accel_testkit::netns::Host>,
    ) -> anyhow::Result<(SocketAddr, Child)> {
        let mut command = match host {
            Some(host) => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", &host.namespace])
                    .arg(std::env::current_exe()?);
                command
            }
            None => Command::new(std::env::current_exe()?),
        };
        let mut child = command
            .arg("--proxy-config")
            .arg(config_path)
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
        Ok((address, child))
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
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces): utime and stime are the
    // 14th and 15th of the line, the 12th and 13th after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / per_second.max(1) as f64)
}

fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
