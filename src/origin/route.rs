//! Host header → regional origin, and the bucket when the Host names one
//! (virtual-hosted style).

use std::io;
use std::sync::Arc;

use super::client::OriginClient;
use super::connect::tls_config;
use crate::config::{Addressing, Config, RegionConfig};

/// A regional origin and the client that talks to it.
pub struct Region {
    pub config: RegionConfig,
    pub client: OriginClient,
}

/// Where a request goes.
#[derive(Clone)]
pub struct Route {
    pub region: Arc<Region>,
    /// The bucket named by the Host header (virtual-hosted style), if any.
    pub bucket_from_host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no region is served under host `{host}`")]
pub struct UnknownHost {
    pub host: String,
}

pub struct Router {
    regions: Vec<Arc<Region>>,
}

impl Router {
    /// Builds one pooled origin client per configured region.
    pub fn new(config: &Config) -> io::Result<Self> {
        let tls = tls_config(config.origin_client.ca_file.as_deref())?;
        let resolver = super::connect::resolver()?;
        let regions = config
            .regions
            .iter()
            .map(|region| {
                let client = OriginClient::new(
                    &region.name,
                    &region.origin,
                    &config.origin_client,
                    tls.clone(),
                    resolver.clone(),
                )?;
                Ok(Arc::new(Region {
                    config: region.clone(),
                    client,
                }))
            })
            .collect::<io::Result<_>>()?;
        Ok(Self { regions })
    }

    pub fn regions(&self) -> &[Arc<Region>] {
        &self.regions
    }

    /// Routes by the request's Host (or `:authority`), port included or not.
    pub fn route(&self, authority: &str) -> Result<Route, UnknownHost> {
        let host = hostname(authority);
        let configs = self.regions.iter().map(|r| &r.config);
        match match_host(configs, &host) {
            Some((index, bucket_from_host)) => Ok(Route {
                region: self.regions[index].clone(),
                bucket_from_host,
            }),
            None => Err(UnknownHost { host }),
        }
    }
}

/// The host part of an authority, lower-cased, without port or trailing dot.
pub fn hostname(authority: &str) -> String {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => authority.rsplit_once(':').map_or(authority, |(host, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                host
            } else {
                authority
            }
        }),
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Finds the region for `host`: an exact hostname first, then the longest
/// `<bucket>.<hostname>` suffix, then the catch-all region.
fn match_host<'a>(
    regions: impl Iterator<Item = &'a RegionConfig> + Clone,
    host: &str,
) -> Option<(usize, Option<String>)> {
    if host.is_empty() {
        return None;
    }
    if let Some(index) = regions.clone().position(|r| r.hosts.iter().any(|h| h == host)) {
        return Some((index, None));
    }
    let mut best: Option<(usize, &str, usize)> = None;
    for (index, region) in regions
        .clone()
        .enumerate()
        .filter(|(_, r)| r.addressing == Addressing::Auto)
    {
        for domain in &region.hosts {
            let Some(bucket) = host
                .strip_suffix(domain.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
            else {
                continue;
            };
            if !bucket.is_empty() && best.is_none_or(|(_, _, len)| domain.len() > len) {
                best = Some((index, bucket, domain.len()));
            }
        }
    }
    if let Some((index, bucket, _)) = best {
        return Some((index, Some(bucket.to_owned())));
    }
    regions.clone().position(|r| r.catch_all).map(|index| (index, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OriginUrl;

    fn region(name: &str, hosts: &[&str], addressing: Addressing, catch_all: bool) -> RegionConfig {
        RegionConfig {
            name: name.into(),
            origin: OriginUrl {
                tls: true,
                host: format!("object.{name}.example.com"),
                port: 443,
            },
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            addressing,
            catch_all,
            signing_region: None,
        }
    }

    #[test]
    fn hostnames_drop_ports_and_case() {
        assert_eq!(hostname("Accel.Example.com:8080"), "accel.example.com");
        assert_eq!(hostname("[::1]:8080"), "::1");
        assert_eq!(hostname("127.0.0.1"), "127.0.0.1");
        assert_eq!(hostname("example.com."), "example.com");
    }

    #[test]
    fn regions_by_host_and_bucket_subdomain() {
        let regions = [
            region("ord1", &["accel-object.ord1.example.com"], Addressing::Auto, false),
            region("lga1", &["accel-object.lga1.example.com"], Addressing::Path, false),
        ];
        let m = |host: &str| match_host(regions.iter(), host);
        assert_eq!(m("accel-object.ord1.example.com"), Some((0, None)));
        assert_eq!(
            m("my.bucket.accel-object.ord1.example.com"),
            Some((0, Some("my.bucket".into())))
        );
        assert_eq!(m("accel-object.lga1.example.com"), Some((1, None)));
        assert_eq!(
            m("b.accel-object.lga1.example.com"),
            None,
            "path-only region takes no bucket subdomains"
        );
        assert_eq!(m("object.ord1.example.com"), None);
        assert_eq!(m("xaccel-object.ord1.example.com"), None);
        assert_eq!(m(""), None);
    }

    #[test]
    fn catch_all_takes_the_rest_and_longest_domain_wins() {
        let regions = [region(
            "default",
            &["example.com", "s3.example.com"],
            Addressing::Auto,
            true,
        )];
        let m = |host: &str| match_host(regions.iter(), host);
        assert_eq!(m("b.s3.example.com"), Some((0, Some("b".into()))));
        assert_eq!(m("b.example.com"), Some((0, Some("b".into()))));
        assert_eq!(m("127.0.0.1"), Some((0, None)));
        assert_eq!(m("s3.example.com"), Some((0, None)));
    }
}
