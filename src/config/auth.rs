//! `[auth]`: the opt-in ways to serve a hit without asking the origin, each inside a
//! bounded window. Off by default: every request is authorized by the origin.

use std::time::Duration;

use super::file::AuthSection;
use super::{duration_or, invalid, parse_size, ConfigError};

/// The longest a grant may be served.
const MAX_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Presigned URLs reused byte for byte are served from a grant.
    pub presigned: bool,
    /// Unsigned reads of these buckets are served from a grant.
    pub anonymous_buckets: Vec<String>,
    pub grant_ttl: Duration,
    /// Memory for grants, least recently used first out.
    pub grant_memory: u64,
    /// Grants held at most.
    pub grant_entries: u64,
    /// `verified_keys`: the file of access keys whose SigV4 s3-accel verifies.
    pub verified_keys: Option<std::path::PathBuf>,
    /// How often that file is read again.
    pub verified_keys_reload: Duration,
}

impl AuthConfig {
    /// Whether any mode keeps grants.
    pub fn grants(&self) -> bool {
        self.presigned || !self.anonymous_buckets.is_empty() || self.verified_keys.is_some()
    }
}

pub(super) fn auth_config(section: &AuthSection) -> Result<AuthConfig, ConfigError> {
    let mut config = AuthConfig {
        grant_ttl: duration_or(section.grant_ttl.as_deref(), "auth.grant_ttl", Duration::from_secs(30))?,
        grant_memory: match &section.grant_memory {
            Some(text) => parse_size(text).map_err(|reason| invalid("auth.grant_memory", reason))?,
            None => 64 << 20,
        },
        grant_entries: section.grant_entries.unwrap_or(1_000_000),
        verified_keys_reload: duration_or(
            section.verified_keys_reload.as_deref(),
            "auth.verified_keys_reload",
            Duration::from_secs(10),
        )?,
        ..AuthConfig::default()
    };
    for mode in section.grants.iter().flatten() {
        match mode.as_str() {
            "presigned" => config.presigned = true,
            "anonymous" => {
                config.anonymous_buckets = section.anonymous_buckets.clone().unwrap_or_default();
                if config.anonymous_buckets.is_empty() {
                    return Err(invalid(
                        "auth.anonymous_buckets",
                        "list the public-read buckets `anonymous` grants serve",
                    ));
                }
            }
            "verified_keys" => match &section.verified_keys_file {
                Some(path) => config.verified_keys = Some(path.into()),
                None => {
                    return Err(invalid(
                        "auth.verified_keys_file",
                        "name the file of access keys `verified_keys` verifies",
                    ))
                }
            },
            other => {
                return Err(invalid(
                    "auth.grants",
                    format!("`{other}` is not a mode: presigned, anonymous, verified_keys"),
                ))
            }
        }
    }
    if config.grant_ttl.is_zero() || config.grant_ttl > MAX_TTL {
        return Err(invalid("auth.grant_ttl", "must be between 1s and 300s"));
    }
    if config.grants() && config.grant_ttl > Duration::from_secs(60) {
        tracing::warn!(
            ttl = ?config.grant_ttl,
            "auth.grant_ttl is over 60 s: a revoked key or an overwritten object may be served that long"
        );
    }
    if config.grant_entries == 0 {
        return Err(invalid("auth.grant_entries", "must be at least 1"));
    }
    if config.grant_memory < 1 << 20 {
        return Err(invalid("auth.grant_memory", "must be at least 1MiB"));
    }
    Ok(config)
}
