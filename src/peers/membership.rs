//! Who the region's nodes are: the peer addresses (a fixed list, or the ready
//! endpoints of a headless Service), each asked who it is (`GET /peer/v1/hello`: its
//! node name, boot id and disk tier), looked up again every few seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::client::PeerClient;
use super::placement::{self, Node};
use super::protocol::Hello;

/// One node of the region, and where to reach it (`None`: this node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub address: Option<SocketAddr>,
    pub hello: Hello,
}

/// The region as this node sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Members {
    pub members: Vec<Member>,
    /// Placement's view of the same members, index for index.
    pub nodes: Vec<Node>,
    /// Of the member list: two nodes with the same fingerprint place keys alike.
    pub fingerprint: u64,
}

impl Members {
    pub fn new(mut members: Vec<Member>) -> Self {
        members.sort_by(|a, b| a.hello.node.cmp(&b.hello.node));
        members.dedup_by(|a, b| a.hello.node == b.hello.node);
        // Weight: the disk tier; a node without one still owns a small share, and
        // none claims more than a petabyte's.
        let nodes: Vec<Node> = members
            .iter()
            .map(|m| Node::new(m.hello.node.clone(), m.hello.disk_capacity.clamp(1 << 30, 1 << 50)))
            .collect();
        let fingerprint = placement::fingerprint(&nodes);
        Self {
            members,
            nodes,
            fingerprint,
        }
    }

    /// The members in the order to ask them for a key: the owner first.
    pub fn ranked(&self, key_hash: u64) -> Vec<&Member> {
        placement::ranked(&self.nodes, key_hash)
            .into_iter()
            .filter_map(|node| self.members.iter().find(|m| m.hello.node == node.name))
            .collect()
    }
}

/// Where the peer addresses come from: one small trait, so that an EndpointSlice
/// watcher can be added beside DNS and the fixed list.
pub trait Discover: Send + Sync {
    fn addresses(&self) -> BoxFuture<'_, std::io::Result<Vec<SocketAddr>>>;
}

/// A fixed list of peers.
pub struct Fixed(pub Vec<SocketAddr>);

impl Discover for Fixed {
    fn addresses(&self) -> BoxFuture<'_, std::io::Result<Vec<SocketAddr>>> {
        let addresses = self.0.clone();
        Box::pin(async move { Ok(addresses) })
    }
}

/// The ready endpoints of a headless Service: its A records, looked up afresh each
/// time (the resolver keeps no cache; a truncated answer is asked again over TCP).
pub struct ServiceRecords {
    resolver: hickory_resolver::TokioResolver,
    name: String,
    port: u16,
}

impl ServiceRecords {
    pub fn new(name: &str, port: u16) -> std::io::Result<Self> {
        let mut builder = hickory_resolver::TokioResolver::builder_tokio()
            .map_err(|e| std::io::Error::other(format!("reading the system DNS configuration: {e}")))?;
        builder.options_mut().cache_size = 0;
        let resolver = builder
            .build()
            .map_err(|e| std::io::Error::other(format!("starting the DNS resolver: {e}")))?;
        Ok(Self {
            resolver,
            name: name.to_owned(),
            port,
        })
    }
}

impl Discover for ServiceRecords {
    fn addresses(&self) -> BoxFuture<'_, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move {
            let found = self
                .resolver
                .lookup_ip(self.name.as_str())
                .await
                .map_err(|e| std::io::Error::other(format!("looking up {}: {e}", self.name)))?;
            let mut addresses: Vec<SocketAddr> = found
                .iter()
                .filter(|ip| ip.is_ipv4())
                .map(|ip| SocketAddr::new(ip, self.port))
                .collect();
            addresses.sort_unstable();
            addresses.dedup();
            Ok(addresses)
        })
    }
}

/// Keeps `members` current: every `refresh`, the addresses are discovered and each
/// is asked who it is; a peer that does not answer is not a member until it does.
pub async fn watch_members(
    discover: Arc<dyn Discover>,
    client: PeerClient,
    me: Hello,
    refresh: Duration,
    members: watch::Sender<Arc<Members>>,
) {
    loop {
        let addresses = match discover.addresses().await {
            Ok(addresses) => addresses,
            Err(error) => {
                tracing::warn!(%error, "peer discovery failed; keeping the last members");
                tokio::time::sleep(refresh).await;
                continue;
            }
        };
        let hellos = futures_util::future::join_all(addresses.iter().map(|address| client.hello(*address))).await;
        let mut found = vec![Member {
            address: None,
            hello: me.clone(),
        }];
        for (address, hello) in addresses.iter().zip(hellos) {
            match hello {
                // This node, under one of its own addresses.
                Ok(hello) if hello.node == me.node => {}
                Ok(hello) => found.push(Member {
                    address: Some(*address),
                    hello,
                }),
                Err(error) => tracing::debug!(%address, error = %error, "a peer did not say hello"),
            }
        }
        let current = Members::new(found);
        crate::telemetry::peer_members(current.members.len(), current.fingerprint);
        members.send_if_modified(|old| {
            let changed = **old != current;
            if changed {
                tracing::info!(
                    members = current.members.len(),
                    fingerprint = format!("{:016x}", current.fingerprint),
                    "region members"
                );
                *old = Arc::new(current);
            }
            changed
        });
        tokio::time::sleep(refresh).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_round_trip() {
        let hello = Hello {
            node: "gpu-node-01".into(),
            boot_id: "b-1".into(),
            disk_capacity: 7 << 40,
        };
        assert_eq!(Hello::decode(&hello.encode()), Some(hello));
        assert_eq!(Hello::decode("node\t\nboot_id\tx\ndisk_capacity\t1\n"), None);
        assert_eq!(Hello::decode("node\ta\nboot_id\tx\n"), None);
    }

    #[tokio::test]
    async fn a_service_name_resolves_to_its_a_records() {
        let records = ServiceRecords::new("localhost", 9091).unwrap();
        let found = records.addresses().await.unwrap();
        assert!(found.contains(&"127.0.0.1:9091".parse().unwrap()), "{found:?}");
        assert!(found.iter().all(|a| a.is_ipv4() && a.port() == 9091));
    }

    #[test]
    fn members_are_one_list_whatever_the_order() {
        let member = |node: &str| Member {
            address: None,
            hello: Hello {
                node: node.into(),
                boot_id: "b".into(),
                disk_capacity: 1 << 40,
            },
        };
        let a = Members::new(vec![member("b"), member("a"), member("c")]);
        let b = Members::new(vec![member("c"), member("b"), member("a"), member("a")]);
        assert_eq!(a, b);
        assert_eq!(a.ranked(42).len(), 3);
        assert_eq!(a.ranked(42)[0].hello.node, b.ranked(42)[0].hello.node);
    }
}
