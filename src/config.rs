//! Configuration: the TOML file, CLI flags over it, machine-derived defaults, and
//! validation into a [`Config`] whose errors name the offending key.

mod auth;
mod credentials;
mod file;
pub mod machine;
mod peers;
pub mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

pub use auth::AuthConfig;
pub use credentials::{AssumeRole, CredentialSource, CredentialsConfig};
use file::ConfigFile;
pub use peers::{Discovery, PeerIdentity, PeerTlsConfig, PeersConfig};
use units::{parse_duration, parse_size};

use crate::s3::Endpoint;

/// The server's flags. Each overrides the config file key named in its help.
#[derive(Debug, Default, Clone, Args)]
pub struct Cli {
    /// TOML config file (see config/s3-accel.toml for every key).
    #[arg(long, env = "S3_ACCEL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the S3 listener [key: listen] [default: 0.0.0.0:8080].
    #[arg(long)]
    pub listen: Option<String>,
    /// Address of the admin listener (/metrics, /healthz, /readyz) [key: admin_listen] [default: 0.0.0.0:9090].
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// PEM certificate chain for TLS on the S3 listener [key: tls.cert_file].
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the S3 listener [key: tls.key_file].
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Send every Host to this origin, e.g. https://object.ord1.example.com [key: origin].
    #[arg(long)]
    pub origin: Option<String>,
    /// A name clients reach this accelerator by, with --origin (also `<bucket>.<NAME>`,
    /// virtual-hosted); other names are refused; repeatable [key: domains].
    #[arg(long = "domain", value_name = "NAME")]
    pub domains: Vec<String>,
    /// Cache directory on NVMe [key: cache.dir].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Memory tier size, e.g. 4GiB [key: cache.memory].
    #[arg(long, value_name = "SIZE")]
    pub memory_cache: Option<String>,
    /// Disk tier size, e.g. 500GiB [key: cache.disk].
    #[arg(long, value_name = "SIZE")]
    pub disk_cache: Option<String>,
    /// Cache chunk size, e.g. 8MiB [key: cache.chunk_size].
    #[arg(long, value_name = "SIZE")]
    pub chunk_size: Option<String>,
    /// Log format: `human` or `json`.
    #[arg(long, default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,
}

/// A configuration that has passed validation.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The admin listener: /metrics, /healthz, /readyz.
    pub admin_listen: SocketAddr,
    pub server: ServerConfig,
    pub cache: CacheConfig,
    pub origin_client: OriginClientConfig,
    pub regions: Vec<RegionConfig>,
    /// Where the proxy's read credentials come from, for fills the client's own
    /// signature cannot make.
    pub credentials: CredentialsConfig,
    /// TLS on the S3 listener; plain HTTP (and h2c) without it.
    pub tls: Option<TlsConfig>,
    /// The region's other nodes, one cache with this one; `None`: caches alone.
    pub peers: Option<PeersConfig>,
    /// Hits served without the origin, opt-in.
    pub auth: AuthConfig,
    /// Who may pin, and for how long.
    pub pins: PinsConfig,
    /// What origin fills may take, this node's and the region's.
    pub origin_budget: OriginBudgetConfig,
}

/// Bounds on origin fills (`[origin_client]`'s `max_fills`, `max_fill_bytes_per_sec`
/// and their `region_` twins). A node keeps its own bounds and its share of the
/// region's (split evenly among the members; alone, it is the region).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OriginBudgetConfig {
    pub node: crate::fetch::origin_budget::Limits,
    pub region: crate::fetch::origin_budget::Limits,
}

#[derive(Debug, Clone)]
pub struct PinsConfig {
    /// The longest lease a pin may ask for (renewed, it lasts as long as needed).
    pub max_lease: Duration,
    /// A bearer token that lets a pin change come from the network (a CronJob, an
    /// init container); without it, pins change from loopback only.
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// How often the files are checked for a new certificate (SIGHUP reloads at once).
    pub reload_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// A client must send its whole request head within this time.
    pub header_read_timeout: Duration,
    /// On SIGTERM, in-flight requests get this long to finish.
    pub drain_timeout: Duration,
    /// On SIGTERM, how long the node keeps serving, `/readyz` 503, before it stops
    /// accepting: the time a load balancer, kube-proxy or a BGP speaker needs to stop
    /// sending it new connections.
    pub withdraw_grace: Duration,
    pub keep_alive: bool,
    pub max_concurrent_streams: u32,
    /// A response whose client takes no bytes for this long is cut, with its
    /// connection, and its memory returned.
    pub send_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// h2 keep-alive pings, every this often; a ping unanswered for as long closes
    /// the connection.
    pub keep_alive_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub memory: u64,
    pub disk: u64,
    pub chunk_size: u64,
    /// O_DIRECT for the disk tier; `None`: whenever the cache directory's
    /// filesystem takes it.
    pub direct_io: Option<bool>,
    /// Chunks a large GET keeps in flight ahead of the byte being sent.
    pub read_ahead: usize,
    /// Cap on bytes being downloaded from origins at once, all requests together.
    pub fill_memory: u64,
    /// Cap on chunk bytes held for responses (read ahead of the byte being sent, or
    /// waiting for a slow client), all responses together.
    pub read_ahead_memory: u64,
    /// Of `read_ahead_memory`, what the responses of one connection (all the
    /// streams of an h2 connection together) may hold.
    pub read_ahead_per_connection: u64,
    /// How long a response waits for room in `read_ahead_memory` before it is
    /// answered 503 SlowDown.
    pub read_ahead_wait: Duration,
    /// Memory for copies of chunks other nodes of the region own (hot chunks stay
    /// local), taken from `memory`; 0 without peers.
    pub peer_copies: u64,
    /// Cached metadata not checked for this long is checked again by a HEAD signed
    /// with the fill credentials (what a 304 cannot show: an object rewritten with
    /// the same bytes and other headers). Zero: never.
    pub metadata_max_age: Duration,
    /// Disk for pinned chunks, apart from the disk tier (0: pins are refused).
    pub pinned: u64,
    /// What the disk tier takes and keeps.
    pub admission: crate::cache::Admission,
}

#[derive(Debug, Clone)]
pub struct OriginClientConfig {
    pub connect_timeout: Duration,
    /// Until the origin's response head arrives.
    pub first_byte_timeout: Duration,
    /// Longest silence allowed between two pieces of an origin body.
    pub body_idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Connections open to all origins together (idle or busy); a request past it
    /// waits up to `connect_timeout` for one to come free.
    pub max_connections: usize,
    /// Extra PEM roots trusted for origin TLS, on top of the system and webpki roots.
    pub ca_file: Option<PathBuf>,
}

/// One regional origin and the hostnames that select it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionConfig {
    pub name: String,
    pub origin: Endpoint,
    /// Lower-case hostnames (no port). With `auto` addressing, `<bucket>.<host>` selects
    /// this region too, in virtual-hosted style.
    pub hosts: Vec<String>,
    pub addressing: Addressing,
    /// Set by the `--origin` shortcut: any Host no other region claims comes here.
    pub catch_all: bool,
    /// SigV4 region for fills the proxy signs: the key, else `AWS_REGION`, else
    /// (when `None`) the credential scope of the client's request.
    pub signing_region: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// Virtual-hosted style when the Host is `<bucket>.<host>`, path style otherwise.
    Auto,
    /// Path style only.
    Path,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("`{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// The flag's value when given, else the file's, each with the name to blame.
fn pick<'a>(cli: Option<&'a str>, flag: &'a str, file: Option<&'a str>, key: &'a str) -> Option<(&'a str, &'a str)> {
    cli.map(|v| (v, flag)).or(file.map(|v| (v, key)))
}

fn size_or(value: Option<(&str, &str)>, default: impl FnOnce() -> u64) -> Result<u64, ConfigError> {
    match value {
        Some((text, key)) => parse_size(text).map_err(|reason| invalid(key, reason)),
        None => Ok(default()),
    }
}

fn duration_or(value: Option<&str>, key: &str, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        Some(text) => parse_duration(text).map_err(|reason| invalid(key, reason)),
        None => Ok(default),
    }
}

impl Config {
    /// Reads `--config` (when given) and applies the flags over it.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => Self::read_file(path)?,
            None => ConfigFile::default(),
        };
        Self::from_parts(file, cli)
    }

    /// Parses a config file's text alone, as if no flag were given.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let file = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            source,
        })?;
        Self::from_parts(file, &Cli::default())
    }

    fn read_file(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    fn from_parts(file: ConfigFile, cli: &Cli) -> Result<Self, ConfigError> {
        let address = |value: Option<(&str, &str)>, default: u16| match value {
            Some((text, key)) => text
                .parse::<SocketAddr>()
                .map_err(|e| invalid(key, format!("`{text}` is not an address like 0.0.0.0:{default}: {e}"))),
            None => Ok(SocketAddr::from(([0, 0, 0, 0], default))),
        };
        let listen = address(
            pick(cli.listen.as_deref(), "--listen", file.listen.as_deref(), "listen"),
            8080,
        )?;
        let admin_listen = address(
            pick(
                cli.admin_listen.as_deref(),
                "--admin-listen",
                file.admin_listen.as_deref(),
                "admin_listen",
            ),
            9090,
        )?;

        let server = ServerConfig {
            header_read_timeout: duration_or(
                file.server.header_read_timeout.as_deref(),
                "server.header_read_timeout",
                Duration::from_secs(30),
            )?,
            drain_timeout: duration_or(
                file.server.drain_timeout.as_deref(),
                "server.drain_timeout",
                Duration::from_secs(30),
            )?,
            withdraw_grace: duration_or(
                file.server.withdraw_grace.as_deref(),
                "server.withdraw_grace",
                Duration::from_secs(5),
            )?,
            keep_alive: file.server.keep_alive.unwrap_or(true),
            max_concurrent_streams: file.server.max_concurrent_streams.unwrap_or(256),
            send_timeout: duration_or(
                file.server.send_timeout.as_deref(),
                "server.send_timeout",
                Duration::from_secs(30),
            )?,
            idle_timeout: duration_or(
                file.server.idle_timeout.as_deref(),
                "server.idle_timeout",
                Duration::from_secs(60),
            )?,
            keep_alive_interval: duration_or(
                file.server.keep_alive_interval.as_deref(),
                "server.keep_alive_interval",
                Duration::from_secs(20),
            )?,
        };
        if server.max_concurrent_streams == 0 {
            return Err(invalid("server.max_concurrent_streams", "must be at least 1"));
        }

        let cache = Self::cache_config(&file, cli)?;
        let origin_client = Self::origin_client_config(&file)?;
        let regions = Self::regions(&file, cli)?;
        let credentials = credentials::credentials_config(&file.credentials)?;
        let tls = Self::tls(&file, cli)?;
        let peers = file.peers.as_ref().map(peers::peers_config).transpose()?;
        let auth = auth::auth_config(&file.auth)?;
        let pins = PinsConfig {
            max_lease: duration_or(
                file.pins.max_lease.as_deref(),
                "pins.max_lease",
                Duration::from_secs(7 * 86400),
            )?,
            token_file: file.pins.token_file.as_ref().map(PathBuf::from),
        };
        if pins.max_lease.is_zero() {
            return Err(invalid("pins.max_lease", "must be longer than 0s"));
        }
        let origin_budget = Self::origin_budget(&file)?;
        Ok(Self {
            listen,
            admin_listen,
            server,
            cache,
            origin_client,
            regions,
            credentials,
            tls,
            peers,
            auth,
            pins,
            origin_budget,
        })
    }

    fn origin_budget(file: &ConfigFile) -> Result<OriginBudgetConfig, ConfigError> {
        let section = &file.origin_client;
        let limits = |(fills_key, fills): (&str, Option<usize>), (rate_key, rate): (&str, Option<&str>)| {
            if fills == Some(0) {
                return Err(invalid(fills_key, "must be at least 1 (leave it out for no bound)"));
            }
            let bytes_per_sec = match rate {
                None => None,
                Some(text) => match parse_size(text).map_err(|reason| invalid(rate_key, reason))? {
                    0 => return Err(invalid(rate_key, "must be more than 0 (leave it out for no bound)")),
                    rate => Some(rate),
                },
            };
            Ok(crate::fetch::origin_budget::Limits { fills, bytes_per_sec })
        };
        Ok(OriginBudgetConfig {
            node: limits(
                ("origin_client.max_fills", section.max_fills),
                (
                    "origin_client.max_fill_bytes_per_sec",
                    section.max_fill_bytes_per_sec.as_deref(),
                ),
            )?,
            region: limits(
                ("origin_client.region_max_fills", section.region_max_fills),
                (
                    "origin_client.region_max_fill_bytes_per_sec",
                    section.region_max_fill_bytes_per_sec.as_deref(),
                ),
            )?,
        })
    }

    fn cache_config(file: &ConfigFile, cli: &Cli) -> Result<CacheConfig, ConfigError> {
        let dir = match (&cli.cache_dir, &file.cache.dir) {
            (Some(dir), _) => dir.clone(),
            (None, Some(dir)) if dir.trim().is_empty() => return Err(invalid("cache.dir", "must not be empty")),
            (None, Some(dir)) => PathBuf::from(dir),
            (None, None) => machine::default_cache_dir(),
        };
        let chunk_key = pick(
            cli.chunk_size.as_deref(),
            "--chunk-size",
            file.cache.chunk_size.as_deref(),
            "cache.chunk_size",
        );
        let chunk_size = size_or(chunk_key, || 8 << 20)?;
        if !(1 << 20..=256 << 20).contains(&chunk_size) {
            let key = chunk_key.map_or("cache.chunk_size", |(_, key)| key);
            return Err(invalid(key, "must be between 1MiB and 256MiB"));
        }
        let memory_key = pick(
            cli.memory_cache.as_deref(),
            "--memory-cache",
            file.cache.memory.as_deref(),
            "cache.memory",
        );
        let memory = size_or(memory_key, machine::default_memory_cache)?;
        let disk_key = pick(
            cli.disk_cache.as_deref(),
            "--disk-cache",
            file.cache.disk.as_deref(),
            "cache.disk",
        );
        let disk = size_or(disk_key, || {
            // A filesystem too full for a useful disk tier gets none rather than a tiny one.
            Some(machine::default_disk_cache(&dir))
                .filter(|&d| d >= 16 * chunk_size)
                .unwrap_or(0)
        })?;
        // Two chunks: one being served while the next is filled. Zero disables the tier.
        if memory < 2 * chunk_size {
            let key = memory_key.map_or("cache.memory", |(_, key)| key);
            return Err(invalid(
                key,
                format!("must hold at least two chunks ({})", units::format_size(2 * chunk_size)),
            ));
        }
        if disk != 0 && disk < 16 * chunk_size {
            let key = disk_key.map_or("cache.disk", |(_, key)| key);
            return Err(invalid(
                key,
                format!(
                    "must be 0 (no disk tier) or at least 16 chunks ({})",
                    units::format_size(16 * chunk_size)
                ),
            ));
        }
        let read_ahead = file.cache.read_ahead.unwrap_or(8);
        if !(1..=64).contains(&read_ahead) {
            return Err(invalid("cache.read_ahead", "must be between 1 and 64"));
        }
        let fill_memory = size_or(
            file.cache.fill_memory.as_deref().map(|v| (v, "cache.fill_memory")),
            // A lone reader keeps `read_ahead` fills in flight, however small `memory`.
            || {
                let floor = (read_ahead as u64 + 1).max(4) * chunk_size;
                (memory / 4).clamp(floor, (1 << 30u64).max(floor))
            },
        )?;
        if fill_memory < chunk_size {
            return Err(invalid("cache.fill_memory", "must hold at least one chunk"));
        }
        let read_ahead_memory = size_or(
            file.cache
                .read_ahead_memory
                .as_deref()
                .map(|v| (v, "cache.read_ahead_memory")),
            // Half is for reading ahead: a lone reader's whole read-ahead fits in it,
            // and the other half is for the chunks clients wait for.
            || {
                let floor = 2 * (read_ahead as u64 + 1) * chunk_size;
                (memory / 8).clamp(floor, (512 << 20u64).max(floor))
            },
        )?;
        if !(chunk_size..=1 << 40).contains(&read_ahead_memory) {
            return Err(invalid(
                "cache.read_ahead_memory",
                "must hold at least one chunk, and at most 1TiB",
            ));
        }
        let read_ahead_per_connection = size_or(
            file.cache
                .read_ahead_per_connection
                .as_deref()
                .map(|v| (v, "cache.read_ahead_per_connection")),
            || ((read_ahead as u64 + 1) * chunk_size).min(read_ahead_memory),
        )?;
        if !(chunk_size..=read_ahead_memory).contains(&read_ahead_per_connection) {
            return Err(invalid(
                "cache.read_ahead_per_connection",
                "must hold at least one chunk, and at most cache.read_ahead_memory",
            ));
        }
        let read_ahead_wait = duration_or(
            file.cache.read_ahead_wait.as_deref(),
            "cache.read_ahead_wait",
            Duration::from_secs(5),
        )?;
        // An eighth of the memory tier for copies of chunks other nodes own: enough for
        // a hot chunk's readers to stay local, never enough to crowd out what this
        // node owns.
        let peer_copies = match &file.peers {
            None => 0,
            Some(_) => size_or(
                file.cache.peer_copies.as_deref().map(|v| (v, "cache.peer_copies")),
                || memory / 8,
            )?,
        };
        if peer_copies > memory / 2 {
            return Err(invalid("cache.peer_copies", "must be at most half of cache.memory"));
        }
        // Off unless set: pinned chunks take disk besides the tier, which a node sized
        // for the tier alone may not have.
        let pinned = size_or(file.cache.pinned.as_deref().map(|v| (v, "cache.pinned")), || 0)?;
        if pinned != 0 && pinned < 2 * chunk_size {
            return Err(invalid(
                "cache.pinned",
                format!(
                    "must be 0 (no pins) or hold at least two chunks ({})",
                    units::format_size(2 * chunk_size)
                ),
            ));
        }
        let direct_io = file.cache.direct_io;
        let metadata_max_age = duration_or(
            file.cache.metadata_max_age.as_deref(),
            "cache.metadata_max_age",
            Duration::from_secs(60),
        )?;
        Ok(CacheConfig {
            dir,
            memory,
            disk,
            chunk_size,
            direct_io,
            read_ahead,
            fill_memory,
            read_ahead_memory,
            read_ahead_per_connection,
            read_ahead_wait,
            peer_copies,
            metadata_max_age,
            pinned,
            admission: match file.cache.admission.as_deref() {
                None => crate::cache::Admission::default(),
                Some(text) => crate::cache::Admission::parse(text).map_err(|e| invalid("cache.admission", e))?,
            },
        })
    }

    fn origin_client_config(file: &ConfigFile) -> Result<OriginClientConfig, ConfigError> {
        let section = &file.origin_client;
        let config = OriginClientConfig {
            connect_timeout: duration_or(
                section.connect_timeout.as_deref(),
                "origin_client.connect_timeout",
                Duration::from_secs(5),
            )?,
            first_byte_timeout: duration_or(
                section.first_byte_timeout.as_deref(),
                "origin_client.first_byte_timeout",
                Duration::from_secs(30),
            )?,
            body_idle_timeout: duration_or(
                section.body_idle_timeout.as_deref(),
                "origin_client.body_idle_timeout",
                Duration::from_secs(60),
            )?,
            pool_idle_timeout: duration_or(
                section.pool_idle_timeout.as_deref(),
                "origin_client.pool_idle_timeout",
                Duration::from_secs(90),
            )?,
            pool_max_idle_per_host: section.pool_max_idle_per_host.unwrap_or(256),
            max_connections: match section.max_connections {
                Some(0) => return Err(invalid("origin_client.max_connections", "must be at least 1")),
                Some(n) => n,
                None => 1024,
            },
            ca_file: section.ca_file.as_ref().map(PathBuf::from),
        };
        for (key, value) in [
            ("origin_client.connect_timeout", config.connect_timeout),
            ("origin_client.first_byte_timeout", config.first_byte_timeout),
            ("origin_client.body_idle_timeout", config.body_idle_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        if let Some(path) = &config.ca_file {
            if !path.is_file() {
                return Err(invalid(
                    "origin_client.ca_file",
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        Ok(config)
    }

    fn tls(file: &ConfigFile, cli: &Cli) -> Result<Option<TlsConfig>, ConfigError> {
        let cert = cli.tls_cert.clone().map(|p| (p, "--tls-cert")).or(file
            .tls
            .cert_file
            .clone()
            .map(|p| (PathBuf::from(p), "tls.cert_file")));
        let key = cli.tls_key.clone().map(|p| (p, "--tls-key")).or(file
            .tls
            .key_file
            .clone()
            .map(|p| (PathBuf::from(p), "tls.key_file")));
        let reload_interval = duration_or(
            file.tls.reload_interval.as_deref(),
            "tls.reload_interval",
            Duration::from_secs(10),
        )?;
        match (cert, key) {
            (None, None) => Ok(None),
            (Some((cert_file, cert_key)), Some((key_file, key_key))) => {
                for (path, key) in [(&cert_file, cert_key), (&key_file, key_key)] {
                    if !path.is_file() {
                        return Err(invalid(key, format!("{} is not a readable file", path.display())));
                    }
                }
                Ok(Some(TlsConfig {
                    cert_file,
                    key_file,
                    reload_interval,
                }))
            }
            (Some((_, key)), None) | (None, Some((_, key))) => {
                Err(invalid(key, "a certificate and a key go together: set both"))
            }
        }
    }

    fn regions(file: &ConfigFile, cli: &Cli) -> Result<Vec<RegionConfig>, ConfigError> {
        let env_region = std::env::var("AWS_REGION").ok().filter(|v| !v.is_empty());
        let domains_key = if cli.domains.is_empty() { "domains" } else { "--domain" };
        let domains = if cli.domains.is_empty() {
            file.domains.clone().unwrap_or_default()
        } else {
            cli.domains.clone()
        };
        let domains = domains
            .iter()
            .map(|d| normalize_host(d, domains_key))
            .collect::<Result<Vec<_>, _>>()?;

        let shortcut = pick(cli.origin.as_deref(), "--origin", file.origin.as_deref(), "origin");
        if let Some((url, key)) = shortcut {
            if cli.origin.is_none() && !file.regions.is_empty() {
                return Err(invalid("origin", "set either `origin` or `[[regions]]`, not both"));
            }
            let origin = Endpoint::parse(url).map_err(|reason| invalid(key, reason))?;
            return Ok(vec![RegionConfig {
                name: "default".into(),
                origin,
                hosts: domains,
                addressing: Addressing::Auto,
                catch_all: true,
                signing_region: file.signing_region.clone().or(env_region),
            }]);
        }
        if file.regions.is_empty() {
            return Err(invalid(
                "origin",
                "no origin configured: pass --origin URL or add [[regions]] to the config file",
            ));
        }
        if !domains.is_empty() {
            return Err(invalid(
                domains_key,
                "domains apply to the `origin` shortcut; with [[regions]], list hostnames in each region's `hosts`",
            ));
        }

        let mut regions: Vec<RegionConfig> = Vec::new();
        for (i, section) in file.regions.iter().enumerate() {
            let key = |field: &str| format!("regions[{i}].{field}");
            if section.name.trim().is_empty() {
                return Err(invalid(&key("name"), "must not be empty"));
            }
            if regions.iter().any(|r| r.name == section.name) {
                return Err(invalid(
                    &key("name"),
                    format!("region `{}` is defined twice", section.name),
                ));
            }
            let origin = Endpoint::parse(&section.origin).map_err(|reason| invalid(&key("origin"), reason))?;
            if section.hosts.is_empty() {
                return Err(invalid(
                    &key("hosts"),
                    "list at least one hostname that selects this region",
                ));
            }
            let hosts = section
                .hosts
                .iter()
                .map(|h| normalize_host(h, &key("hosts")))
                .collect::<Result<Vec<_>, _>>()?;
            for host in &hosts {
                if let Some(other) = regions.iter().find(|r| r.hosts.contains(host)) {
                    return Err(invalid(
                        &key("hosts"),
                        format!("`{host}` is already a host of region `{}`", other.name),
                    ));
                }
            }
            let addressing = match section.addressing.as_deref() {
                None | Some("auto") => Addressing::Auto,
                Some("path") => Addressing::Path,
                Some(other) => {
                    return Err(invalid(
                        &key("addressing"),
                        format!("`{other}` is not one of `auto`, `path`"),
                    ))
                }
            };
            regions.push(RegionConfig {
                name: section.name.clone(),
                origin,
                hosts,
                addressing,
                catch_all: false,
                signing_region: section.signing_region.clone().or_else(|| env_region.clone()),
            });
        }
        Ok(regions)
    }
}

fn normalize_host(text: &str, key: &str) -> Result<String, ConfigError> {
    let host = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !valid {
        return Err(invalid(
            key,
            format!("`{text}` is not a hostname (no scheme, port or path)"),
        ));
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_key(result: Result<Config, ConfigError>) -> String {
        match result {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid-key error, got {other:?}"),
        }
    }

    #[test]
    fn origin_shortcut_with_defaults() {
        let config = Config::from_toml("origin = \"http://127.0.0.1:9000\"").unwrap();
        assert_eq!(config.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.cache.chunk_size, 8 << 20);
        assert!(config.cache.memory >= 16 << 20);
        assert_eq!(config.cache.read_ahead, 8);
        assert_eq!(config.cache.direct_io, None, "probed at start unless set");
        let forced = Config::from_toml("origin = \"http://127.0.0.1:9000\"\n[cache]\ndirect_io = false").unwrap();
        assert_eq!(forced.cache.direct_io, Some(false));
        let region = &config.regions[0];
        assert!(region.catch_all);
        assert_eq!(
            region.origin,
            Endpoint {
                tls: false,
                host: "127.0.0.1".into(),
                port: 9000
            }
        );
    }

    #[test]
    fn cli_overrides_file() {
        let file: ConfigFile = toml::from_str("origin = \"http://a:1\"\ncache.chunk_size = \"4MiB\"").unwrap();
        let cli = Cli {
            origin: Some("https://b".into()),
            chunk_size: Some("16MiB".into()),
            domains: vec!["S3.Local".into()],
            ..Cli::default()
        };
        let config = Config::from_parts(file, &cli).unwrap();
        assert_eq!(config.cache.chunk_size, 16 << 20);
        assert_eq!(
            config.regions[0].origin,
            Endpoint {
                tls: true,
                host: "b".into(),
                port: 443
            }
        );
        assert_eq!(config.regions[0].hosts, vec!["s3.local".to_string()]);
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = "origin = \"http://a:1\"\n";
        assert_eq!(
            error_key(Config::from_toml(&format!("{base}cache.chunk_size = \"huge\""))),
            "cache.chunk_size"
        );
        assert_eq!(
            error_key(Config::from_toml(&format!("{base}cache.chunk_size = \"1GiB\""))),
            "cache.chunk_size"
        );
        assert_eq!(
            error_key(Config::from_toml(&format!("{base}listen = \"nowhere\""))),
            "listen"
        );
        assert_eq!(
            error_key(Config::from_toml(&format!("{base}server.drain_timeout = \"later\""))),
            "server.drain_timeout"
        );
        assert_eq!(
            error_key(Config::from_toml(&format!(
                "{base}origin_client.connect_timeout = \"0s\""
            ))),
            "origin_client.connect_timeout"
        );
        assert_eq!(error_key(Config::from_toml("origin = \"ftp://a\"")), "origin");
        assert_eq!(error_key(Config::from_toml("origin = \"http://a/prefix\"")), "origin");
        assert_eq!(error_key(Config::from_toml("")), "origin");
        let cli = Cli {
            origin: Some("http://a".into()),
            memory_cache: Some("1KiB".into()),
            ..Cli::default()
        };
        assert_eq!(
            error_key(Config::from_parts(ConfigFile::default(), &cli)),
            "--memory-cache"
        );
    }

    #[test]
    fn peers_are_configured_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("keys");
        std::fs::write(&secret, "a-region-secret-of-at-least-32-bytes\n").unwrap();
        let with = |peers: &str| {
            Config::from_toml(&format!(
                "origin = \"http://a\"\n[peers]\nnode_name = \"n1\"\nsecret_file = \"{}\"\n{peers}",
                secret.display()
            ))
        };
        let config = with("addresses = [\"127.0.0.2:9091\"]").unwrap().peers.unwrap();
        assert_eq!(config.node_name, "n1");
        assert_eq!(config.listen, "0.0.0.0:9091".parse().unwrap());
        assert_eq!(
            config.discovery,
            Discovery::Addresses(vec!["127.0.0.2:9091".parse().unwrap()])
        );
        let config = with("service = \"s3-accel-peers.ns.svc:9091\"").unwrap().peers.unwrap();
        assert_eq!(
            config.discovery,
            Discovery::Service {
                name: "s3-accel-peers.ns.svc".into(),
                port: 9091
            }
        );
        assert_eq!(error_key(with("service = \"no-port\"")), "peers.service");
        let addresses = "addresses = []\n";
        let config = with(addresses).unwrap().peers.unwrap();
        assert_eq!(
            (config.connect_timeout, config.stall_timeout),
            (Duration::from_millis(500), Duration::from_millis(1500))
        );
        let config = with(&format!("{addresses}stall_timeout = \"3s\""))
            .unwrap()
            .peers
            .unwrap();
        assert_eq!(config.stall_timeout, Duration::from_secs(3));
        for key in ["stall_timeout", "connect_timeout"] {
            assert_eq!(
                error_key(with(&format!("{addresses}{key} = \"0s\""))),
                format!("peers.{key}")
            );
        }
        assert_eq!(error_key(with("")), "peers.service", "one way to find the peers");
        assert_eq!(error_key(with("addresses = [\"nowhere\"]")), "peers.addresses");
        assert_eq!(
            error_key(Config::from_toml(
                "origin = \"http://a\"\n[peers]\nnode_name = \"n\"\naddresses = []"
            )),
            "peers.secret_file"
        );
        assert!(Config::from_toml("origin = \"http://a\"").unwrap().peers.is_none());
    }

    #[test]
    fn grant_modes_are_opt_in_and_bounded() {
        let with = |auth: &str| Config::from_toml(&format!("origin = \"http://a\"\n[auth]\n{auth}"));
        let off = Config::from_toml("origin = \"http://a\"").unwrap().auth;
        assert!(!off.grants(), "no grants unless a mode is on");
        let on = with("grants = [\"presigned\"]").unwrap().auth;
        assert!(on.presigned && on.grants());
        assert_eq!(on.grant_ttl, Duration::from_secs(30));
        let anonymous = with("grants = [\"anonymous\"]\nanonymous_buckets = [\"p\"]")
            .unwrap()
            .auth;
        assert_eq!(anonymous.anonymous_buckets, vec!["p".to_string()]);
        assert!(!anonymous.presigned);
        assert_eq!(error_key(with("grants = [\"anonymous\"]")), "auth.anonymous_buckets");
        assert_eq!(error_key(with("grants = [\"everyone\"]")), "auth.grants");
        assert_eq!(
            error_key(with("grants = [\"presigned\"]\ngrant_ttl = \"301s\"")),
            "auth.grant_ttl"
        );
        assert_eq!(
            error_key(with("grants = [\"presigned\"]\ngrant_ttl = \"0s\"")),
            "auth.grant_ttl"
        );
        assert!(with("grants = [\"presigned\"]\ngrant_ttl = \"300s\"").is_ok());
        assert_eq!(
            error_key(with("grants = [\"verified_keys\"]")),
            "auth.verified_keys_file"
        );
        let verified = with("grants = [\"verified_keys\"]\nverified_keys_file = \"/k\"")
            .unwrap()
            .auth;
        assert_eq!(verified.verified_keys.as_deref(), Some(std::path::Path::new("/k")));
        assert!(verified.grants());
    }

    #[test]
    fn copies_of_other_nodes_chunks_take_an_eighth_of_memory_only_with_peers() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("keys");
        std::fs::write(&secret, "a-region-secret-of-at-least-32-bytes\n").unwrap();
        let with = |peers: bool, copies: &str| {
            let peers = match peers {
                true => format!(
                    "[peers]\nnode_name = \"n1\"\nsecret_file = \"{}\"\naddresses = []\n",
                    secret.display()
                ),
                false => String::new(),
            };
            Config::from_toml(&format!(
                "origin = \"http://a\"\n{peers}[cache]\nmemory = \"1GiB\"\n{copies}"
            ))
        };
        assert_eq!(with(true, "").unwrap().cache.peer_copies, 128 << 20);
        assert_eq!(with(false, "").unwrap().cache.peer_copies, 0, "no peers, no copies");
        assert_eq!(
            with(true, "peer_copies = \"64MiB\"").unwrap().cache.peer_copies,
            64 << 20
        );
        assert_eq!(error_key(with(true, "peer_copies = \"600MiB\"")), "cache.peer_copies");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = Config::from_toml("origin = \"http://a\"\n[cache]\nchunksize = \"8MiB\"").unwrap_err();
        let text = format!("{:#}", anyhow::Error::from(err));
        assert!(text.contains("chunksize"), "{text}");
    }

    #[test]
    fn regions_validate_hosts_and_addressing() {
        let two = r#"
            [[regions]]
            name = "ord1"
            origin = "https://object.ord1.example.com"
            hosts = ["accel-object.ord1.example.com"]
            [[regions]]
            name = "lga1"
            origin = "https://object.lga1.example.com"
            hosts = ["ACCEL-object.lga1.example.com"]
            addressing = "path"
        "#;
        let config = Config::from_toml(two).unwrap();
        assert_eq!(config.regions.len(), 2);
        assert_eq!(
            config.regions[1].hosts,
            vec!["accel-object.lga1.example.com".to_string()]
        );
        assert_eq!(config.regions[1].addressing, Addressing::Path);

        let clash = two.replace("ACCEL-object.lga1", "accel-object.ord1");
        assert_eq!(error_key(Config::from_toml(&clash)), "regions[1].hosts");
        let bad_style = two.replace("\"path\"", "\"sideways\"");
        assert_eq!(error_key(Config::from_toml(&bad_style)), "regions[1].addressing");
        let both = format!("origin = \"http://a\"\n{two}");
        assert_eq!(error_key(Config::from_toml(&both)), "origin");
    }
}
