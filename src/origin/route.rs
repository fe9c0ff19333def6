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

/// A Host no region serves, or one the origin could read as another bucket than
/// s3-accel would (an unconfigured name under the catch-all region).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", match .catch_all {
    false => format!("no region is served under host `{}`", .host),
    true => format!(
        "host `{}` is not one of this accelerator's names: an origin could read its first label as a bucket; \
         use an IP address, or list the name in `domains`", .host
    ),
})]
pub struct UnknownHost {
    pub host: String,
    /// A catch-all region would have taken it, but the name is not configured.
    pub catch_all: bool,
}

pub struct Router {
    regions: Vec<Arc<Region>>,
}

impl Router {
    /// Builds one pooled origin client per configured region.
    pub fn new(config: &Config) -> io::Result<Self> {
        let tls = tls_config(config.origin_client.ca_file.as_deref())?;
        let resolver = super::connect::resolver()?;
        let cap = super::connect::ConnectionCap::new(config.origin_client.max_connections);
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
                    cap.clone(),
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
        let Some(host) = hostname(authority) else {
            return Err(UnknownHost {
                host: authority.to_owned(),
                catch_all: false,
            });
        };
        let configs = self.regions.iter().map(|r| &r.config);
        match match_host(configs, &host) {
            Found::Region(index, bucket_from_host) => Ok(Route {
                region: self.regions[index].clone(),
                bucket_from_host,
            }),
            Found::Unconfigured => Err(UnknownHost { host, catch_all: true }),
            Found::Nothing => Err(UnknownHost { host, catch_all: false }),
        }
    }
}

/// The host part of an authority, lower-cased, without its port: `name[:port]` or
/// `[v6][:port]`, and nothing else. `None` for anything an origin could read
/// otherwise than this: a trailing dot (`b.accel.test.` is not `b.accel.test` to
/// every origin), an empty port, text after `]`, a second colon.
pub fn hostname(authority: &str) -> Option<String> {
    let port_ok = |port: Option<&str>| port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let host = match authority.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            if !port_ok(after.strip_prefix(':')) || !(after.is_empty() || after.starts_with(':')) {
                return None;
            }
            host
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if !port_ok(port) || host.ends_with('.') {
                return None;
            }
            host
        }
    };
    Some(host.to_ascii_lowercase())
}

/// What a Host selects.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// A region (by index), and the bucket the Host names, if any.
    Region(usize, Option<String>),
    /// Only the catch-all region would take it, and it is a name no one configured:
    /// s3-accel would read the bucket from the path, an origin that serves buckets
    /// as `<bucket>.<its domain>` (or the whole Host as a bucket) from the Host, and
    /// two readings of one request must never share a cache entry.
    Unconfigured,
    Nothing,
}

/// Finds the region for `host`: an exact hostname first, then the longest
/// `<bucket>.<hostname>` suffix, then the catch-all region, for IP addresses only
/// (no origin reads a bucket from an IP address).
fn match_host<'a>(regions: impl Iterator<Item = &'a RegionConfig> + Clone, host: &str) -> Found {
    if host.is_empty() {
        return Found::Nothing;
    }
    if let Some(index) = regions.clone().position(|r| r.hosts.iter().any(|h| h == host)) {
        return Found::Region(index, None);
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
        return Found::Region(index, Some(bucket.to_owned()));
    }
    match regions.clone().position(|r| r.catch_all) {
        Some(index) if host.parse::<std::net::IpAddr>().is_ok() => Found::Region(index, None),
        Some(_) => Found::Unconfigured,
        None => Found::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::Endpoint;

    fn region(name: &str, hosts: &[&str], addressing: Addressing, catch_all: bool) -> RegionConfig {
        RegionConfig {
            name: name.into(),
            origin: Endpoint {
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
        assert_eq!(hostname("Accel.Example.com:8080").as_deref(), Some("accel.example.com"));
        assert_eq!(hostname("[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(hostname("[::1]").as_deref(), Some("::1"));
        assert_eq!(hostname("127.0.0.1").as_deref(), Some("127.0.0.1"));
        // What an origin could read otherwise is no hostname at all.
        for bad in [
            "example.com.",
            "b.accel.test.:80",
            "[::1]junk",
            "[::1]:",
            "a:",
            "a:1:2",
            "a:x",
            "[::1",
        ] {
            assert_eq!(hostname(bad), None, "{bad}");
        }
    }

    #[test]
    fn regions_by_host_and_bucket_subdomain() {
        let regions = [
            region("ord1", &["accel-object.ord1.example.com"], Addressing::Auto, false),
            region("lga1", &["accel-object.lga1.example.com"], Addressing::Path, false),
        ];
        let m = |host: &str| match_host(regions.iter(), host);
        assert_eq!(m("accel-object.ord1.example.com"), Found::Region(0, None));
        assert_eq!(
            m("my.bucket.accel-object.ord1.example.com"),
            Found::Region(0, Some("my.bucket".into()))
        );
        assert_eq!(m("accel-object.lga1.example.com"), Found::Region(1, None));
        assert_eq!(
            m("b.accel-object.lga1.example.com"),
            Found::Nothing,
            "path-only region takes no bucket subdomains"
        );
        assert_eq!(m("object.ord1.example.com"), Found::Nothing);
        assert_eq!(m("xaccel-object.ord1.example.com"), Found::Nothing);
        assert_eq!(m("127.0.0.1"), Found::Nothing, "no catch-all region");
        assert_eq!(m(""), Found::Nothing);
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
        assert_eq!(m("b.s3.example.com"), Found::Region(0, Some("b".into())));
        assert_eq!(m("b.example.com"), Found::Region(0, Some("b".into())));
        assert_eq!(m("127.0.0.1"), Found::Region(0, None));
        assert_eq!(m("::1"), Found::Region(0, None));
        assert_eq!(m("s3.example.com"), Found::Region(0, None));
    }

    #[test]
    fn the_catch_all_takes_no_name_an_origin_could_read_as_a_bucket() {
        let regions = [region("default", &["accel.test"], Addressing::Auto, true)];
        let m = |host: &str| match_host(regions.iter(), host);
        // An origin serving `obj.test` virtual-hosted reads `evil.obj.test` as bucket
        // `evil`; s3-accel, not knowing `obj.test`, would read the path's bucket.
        assert_eq!(m("evil.obj.test"), Found::Unconfigured);
        assert_eq!(
            m("localhost"),
            Found::Unconfigured,
            "a whole Host can be a bucket (CNAME style)"
        );
        assert_eq!(m("10.0.0.7"), Found::Region(0, None));
        assert_eq!(m("models.accel.test"), Found::Region(0, Some("models".into())));
    }
}
