//! The TOML file as written by an operator: every key optional, unknown keys refused.

use serde::Deserialize;

/// Mirror of `config/s3-accel.toml`. Values stay text here so that a bad one is
/// reported with its key when it is converted into [`super::Config`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub origin: Option<String>,
    pub signing_region: Option<String>,
    pub domains: Option<Vec<String>>,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub cache: CacheSection,
    #[serde(default)]
    pub origin_client: OriginClientSection,
    #[serde(default)]
    pub credentials: CredentialsSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub regions: Vec<RegionSection>,
    /// Absent: this node caches alone.
    pub peers: Option<PeersSection>,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub pins: PinsSection,
}

/// Pins: who may change them from the network, and the longest lease.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinsSection {
    pub max_lease: Option<String>,
    pub token_file: Option<String>,
}

/// Opt-in ways to serve a hit without asking the origin.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// `presigned`, `anonymous`.
    pub grants: Option<Vec<String>>,
    pub grant_ttl: Option<String>,
    pub grant_memory: Option<String>,
    pub grant_entries: Option<u64>,
    pub anonymous_buckets: Option<Vec<String>>,
    pub verified_keys_file: Option<String>,
    pub verified_keys_reload: Option<String>,
}

/// The DaemonSet peers of a region, one cache.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersSection {
    pub node_name: Option<String>,
    pub listen: Option<String>,
    /// `host:port` of each peer (tests, bare metal).
    pub addresses: Option<Vec<String>>,
    /// The headless Service whose A records are the peers, `name:port`.
    pub service: Option<String>,
    pub secret_file: Option<String>,
    pub refresh: Option<String>,
    pub connect_timeout: Option<String>,
    pub stall_timeout: Option<String>,
    pub leave_after: Option<String>,
    pub restart_wait: Option<String>,
    /// Mutual TLS on the peer port.
    pub tls: Option<PeerTlsSection>,
}

/// `[peers.tls]`: this node's certificate (its node name in the SAN) and the
/// region's CA, PEM files as a cert-manager `Certificate` writes them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsSection {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub ca_file: Option<String>,
    pub reload_interval: Option<String>,
    /// `node` (each certificate names its node) or `region` (one for the region's nodes).
    pub identity: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub header_read_timeout: Option<String>,
    pub drain_timeout: Option<String>,
    pub withdraw_grace: Option<String>,
    pub keep_alive: Option<bool>,
    pub max_concurrent_streams: Option<u32>,
    pub send_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub keep_alive_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    pub dir: Option<String>,
    pub memory: Option<String>,
    pub disk: Option<String>,
    pub chunk_size: Option<String>,
    pub direct_io: Option<bool>,
    pub read_ahead: Option<usize>,
    pub fill_memory: Option<String>,
    pub read_ahead_memory: Option<String>,
    pub read_ahead_per_connection: Option<String>,
    pub read_ahead_wait: Option<String>,
    pub peer_copies: Option<String>,
    pub metadata_max_age: Option<String>,
    pub pinned: Option<String>,
    pub admission: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginClientSection {
    pub connect_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub body_idle_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_host: Option<usize>,
    pub max_connections: Option<usize>,
    pub ca_file: Option<String>,
    pub max_fill_bytes_per_sec: Option<String>,
    pub max_fills: Option<usize>,
    pub region_max_fill_bytes_per_sec: Option<String>,
    pub region_max_fills: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub reload_interval: Option<String>,
}

/// The proxy's own read credentials, for fills a client's signature cannot make:
/// where they come from (`source`) and that source's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsSection {
    /// `static` (the default), `file`, `web_identity`, `container`, `process`.
    pub source: Option<String>,
    // static; `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`
    // when absent.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    // file
    pub dir: Option<String>,
    pub poll_interval: Option<String>,
    // web_identity; `AWS_WEB_IDENTITY_TOKEN_FILE` / `AWS_ROLE_ARN` /
    // `AWS_ROLE_SESSION_NAME` when absent.
    pub token_file: Option<String>,
    pub role_arn: Option<String>,
    pub session_name: Option<String>,
    // process
    pub command: Option<String>,
    /// STS's signing region (web_identity, assume_role).
    pub sts_region: Option<String>,
    /// A role assumed with the source's credentials; its keys sign fills.
    pub assume_role: Option<AssumeRoleSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssumeRoleSection {
    pub role_arn: Option<String>,
    pub session_name: Option<String>,
    pub external_id: Option<String>,
    pub duration: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSection {
    pub name: String,
    pub origin: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub addressing: Option<String>,
    pub signing_region: Option<String>,
}
