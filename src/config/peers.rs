//! `[peers]`: this node's name, the peer listener, where the other peers are, and
//! the secret their requests are signed with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::file::{PeerTlsSection, PeersSection};
use super::{duration_or, invalid, ConfigError};

#[derive(Debug, Clone)]
pub struct PeersConfig {
    /// This node's identity in placement: `peers.node_name`, else `$NODE_NAME` (the
    /// Kubernetes node, from the downward API), else the host name.
    pub node_name: String,
    /// The peer listener: peer requests only, never client requests.
    pub listen: SocketAddr,
    pub discovery: Discovery,
    /// One or two keys, one per line (the signing key first); read when the node
    /// starts.
    pub secret_file: PathBuf,
    /// How often the members are looked up again.
    pub refresh: Duration,
    /// How long a peer may take to accept a connection.
    pub connect_timeout: Duration,
    /// How long a peer may send nothing, in the middle of an answer or on a
    /// connection that goes silent, before the chunk is taken elsewhere.
    pub stall_timeout: Duration,
    /// How long a member may go unheard (gone from discovery, or not answering its
    /// hello) before it leaves the ring; until then its chunks go to the next in line
    /// while it fails, and come back to it, still on its disk, when it answers.
    pub leave_after: Duration,
    /// How long readers wait for an owner that said it is stopping (SIGTERM) to come
    /// back, before its chunks are filled elsewhere (from the origin); it stays a
    /// member meanwhile, whatever `leave_after` says. Zero: never.
    pub restart_wait: Duration,
    /// Mutual TLS on the peer port; `None`: plain HTTP (the network is trusted).
    pub tls: Option<PeerTlsConfig>,
}

/// `[peers.tls]`.
#[derive(Debug, Clone)]
pub struct PeerTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The region's CA: every peer's certificate must be signed by it.
    pub ca_file: PathBuf,
    /// How often the files are checked for new ones.
    pub reload_interval: Duration,
    pub identity: PeerIdentity,
}

/// What a peer's certificate proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerIdentity {
    /// Which node it is: its SAN holds the node's name, and a peer whose hello
    /// claims another name is no member (certificates issued per node).
    Node,
    /// That it is a node of the region: signed by the region's CA (one certificate
    /// shared by the region's pods, as a Kubernetes Secret gives a DaemonSet).
    Region,
}

/// Where the peers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// A fixed list (tests, bare metal).
    Addresses(Vec<SocketAddr>),
    /// The A records of a headless Service: its ready endpoints.
    Service { name: String, port: u16 },
}

pub(super) fn peers_config(section: &PeersSection) -> Result<PeersConfig, ConfigError> {
    let node_name = match &section.node_name {
        Some(name) => name.trim().to_owned(),
        None => std::env::var("NODE_NAME")
            .ok()
            .filter(|n| !n.trim().is_empty())
            .or_else(host_name)
            .unwrap_or_default(),
    };
    if node_name.is_empty() {
        return Err(invalid("peers.node_name", "must not be empty (set it, or $NODE_NAME)"));
    }
    let listen = match &section.listen {
        Some(text) => text.parse().map_err(|e| {
            invalid(
                "peers.listen",
                format!("`{text}` is not an address like 0.0.0.0:9091: {e}"),
            )
        })?,
        None => SocketAddr::from(([0, 0, 0, 0], 9091)),
    };
    let discovery = match (&section.addresses, &section.service) {
        (Some(addresses), None) => Discovery::Addresses(
            addresses
                .iter()
                .map(|a| {
                    a.parse().map_err(|e| {
                        invalid(
                            "peers.addresses",
                            format!("`{a}` is not an address like 10.0.0.2:9091: {e}"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        (None, Some(service)) => {
            let (name, port) = service
                .rsplit_once(':')
                .and_then(|(name, port)| Some((name, port.parse::<u16>().ok()?)))
                .filter(|(name, _)| !name.is_empty())
                .ok_or_else(|| invalid("peers.service", format!("`{service}` is not `name:port`")))?;
            Discovery::Service {
                name: name.to_owned(),
                port,
            }
        }
        _ => {
            return Err(invalid(
                "peers.service",
                "set either peers.service (a headless Service) or peers.addresses, not both",
            ))
        }
    };
    let secret_file = PathBuf::from(
        section
            .secret_file
            .as_deref()
            .ok_or_else(|| invalid("peers.secret_file", "peer requests are signed: a secret is required"))?,
    );
    if secret_file.as_os_str().is_empty() {
        return Err(invalid("peers.secret_file", "must not be empty"));
    }
    let positive = |value: Option<&str>, key: &'static str, default: Duration| {
        let duration = duration_or(value, key, default)?;
        match duration.is_zero() {
            true => Err(invalid(key, "must be greater than zero")),
            false => Ok(duration),
        }
    };
    Ok(PeersConfig {
        node_name,
        listen,
        discovery,
        secret_file,
        refresh: duration_or(section.refresh.as_deref(), "peers.refresh", Duration::from_secs(5))?,
        connect_timeout: positive(
            section.connect_timeout.as_deref(),
            "peers.connect_timeout",
            Duration::from_millis(500),
        )?,
        stall_timeout: positive(
            section.stall_timeout.as_deref(),
            "peers.stall_timeout",
            Duration::from_millis(1500),
        )?,
        leave_after: positive(
            section.leave_after.as_deref(),
            "peers.leave_after",
            Duration::from_secs(30),
        )?,
        restart_wait: duration_or(
            section.restart_wait.as_deref(),
            "peers.restart_wait",
            Duration::from_secs(15),
        )?,
        tls: section.tls.as_ref().map(peer_tls).transpose()?,
    })
}

fn peer_tls(section: &PeerTlsSection) -> Result<PeerTlsConfig, ConfigError> {
    let file = |value: &Option<String>, key: &'static str| match value.as_deref().map(str::trim) {
        Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => Err(invalid(key, "a PEM file is required with [peers.tls]")),
    };
    Ok(PeerTlsConfig {
        cert_file: file(&section.cert_file, "peers.tls.cert_file")?,
        key_file: file(&section.key_file, "peers.tls.key_file")?,
        ca_file: file(&section.ca_file, "peers.tls.ca_file")?,
        reload_interval: duration_or(
            section.reload_interval.as_deref(),
            "peers.tls.reload_interval",
            Duration::from_secs(10),
        )?,
        identity: match section.identity.as_deref().unwrap_or("node") {
            "node" => PeerIdentity::Node,
            "region" => PeerIdentity::Region,
            other => {
                return Err(invalid(
                    "peers.tls.identity",
                    format!("`{other}` is neither `node` nor `region`"),
                ))
            }
        },
    })
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_owned()).filter(|n| !n.is_empty())
}
