//! The DaemonSet peers of a region as one cache: who they are ([`membership`]),
//! which of them owns each key ([`placement`]), what travels between them
//! ([`protocol`]) and how both ends sign and check it ([`auth`], [`wire`]); the
//! reader's side ([`client`], and [`upstream`]: chunks from their owner, then the
//! origin) and the owner's ([`server`]).

pub mod auth;
pub mod client;
pub mod departures;
pub mod membership;
pub mod placement;
pub mod protocol;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::{Discovery, PeersConfig};
use auth::{KeyRing, PeerKeys};
use client::{PeerClient, PeerTimeouts};
use membership::{Discover, Fixed, Members};
use protocol::Hello;

/// How often the peer key file is read again (a Secret's update reaches the pod
/// within about a minute).
const KEY_RELOAD: Duration = Duration::from_secs(10);

/// How long a peer that failed is left alone the first time.
const EJECTION: Duration = Duration::from_secs(1);
/// The longest a peer that keeps failing is left alone between two tries.
const MAX_EJECTION: Duration = Duration::from_secs(30);

/// How long a peer may take to hear that this node stops.
const LEAVING_TIMEOUT: Duration = Duration::from_secs(1);

/// This node's view of its region, shared by the request path and the peer listener.
pub struct Peers {
    pub hello: Hello,
    pub keys: Arc<KeyRing>,
    pub client: PeerClient,
    /// Mutual TLS on the peer port, when `peers.tls` is set.
    pub tls: Option<Arc<tls::PeerTls>>,
    members: watch::Receiver<Arc<Members>>,
    /// Whether the first discovery round has run: until then this node does not
    /// know the region, and would fill alone what its owners hold.
    discovered: Arc<AtomicBool>,
    /// Peers that failed a request lately.
    ejected: Ejections,
    /// Owners that said they are stopping, and how long to wait for them.
    departures: Arc<departures::Departures>,
}

/// Peers left alone after failures, by node name: until when, and after how many
/// failures in a row.
#[derive(Default)]
struct Ejections(Mutex<HashMap<String, (Instant, u32)>>);

impl Ejections {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, u32)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A failure of `node` at `now`: how many in a row and how long it is left
    /// alone, or `None` when it already is (requests sent before its ejection fail
    /// together: one failure, not many).
    fn eject(&self, node: &str, now: Instant) -> Option<(u32, Duration)> {
        let mut map = self.map();
        let strikes = match map.get(node) {
            Some((until, _)) if *until > now => return None,
            Some((_, strikes)) => strikes.saturating_add(1),
            None => 1,
        };
        let wait = EJECTION.saturating_mul(1 << (strikes - 1).min(16)).min(MAX_EJECTION);
        map.insert(node.to_owned(), (now + wait, strikes));
        Some((strikes, wait))
    }

    /// Whether `node` had failures (now forgotten).
    fn recovered(&self, node: &str) -> bool {
        self.map().remove(node).is_some()
    }

    fn holds(&self, node: &str, now: Instant) -> bool {
        self.map().get(node).is_some_and(|(until, _)| *until > now)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error("cannot read peers.secret_file {path}")]
    Secret {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Keys(#[from] auth::PeerKeyError),
    #[error("peers.service: cannot start DNS discovery")]
    Dns(#[source] std::io::Error),
    #[error("peers.tls: cannot load the peer certificate or CA")]
    Tls(#[source] std::io::Error),
}

impl Peers {
    /// Reads the keys and starts keeping the member list current.
    pub fn start(config: &PeersConfig, disk_capacity: u64) -> Result<Arc<Self>, PeersError> {
        let secret = std::fs::read_to_string(&config.secret_file).map_err(|source| PeersError::Secret {
            path: config.secret_file.display().to_string(),
            source,
        })?;
        let keys = Arc::new(KeyRing::new(PeerKeys::from_text(&secret)?));
        tokio::spawn(keys.clone().watch(config.secret_file.clone(), KEY_RELOAD, secret));
        let tls = config
            .tls
            .as_ref()
            .map(|files| tls::PeerTls::load(files, &config.node_name))
            .transpose()
            .map_err(PeersError::Tls)?;
        if let Some(tls) = &tls {
            tokio::spawn(tls.clone().watch());
        }
        metrics::gauge!(crate::telemetry::PEER_TLS).set(if tls.is_some() { 1.0 } else { 0.0 });
        let timeouts = PeerTimeouts {
            connect: config.connect_timeout,
            stall: config.stall_timeout,
        };
        let client = PeerClient::new(keys.clone(), tls.as_ref(), timeouts).map_err(PeersError::Tls)?;
        let hello = Hello {
            node: config.node_name.clone(),
            boot_id: format!("{:016x}", fastrand::u64(..)),
            disk_capacity,
        };
        let discover: Arc<dyn Discover> = match &config.discovery {
            Discovery::Addresses(addresses) => Arc::new(Fixed(addresses.clone())),
            Discovery::Service { name, port } => {
                Arc::new(membership::ServiceRecords::new(name, *port).map_err(PeersError::Dns)?)
            }
        };
        let alone = Members::new(vec![membership::Member {
            address: None,
            hello: hello.clone(),
        }]);
        let (sender, members) = watch::channel(Arc::new(alone));
        let discovered = Arc::new(AtomicBool::new(false));
        let departures = Arc::new(departures::Departures::new(config.restart_wait));
        tokio::spawn(membership::watch_members(
            discover,
            client.clone(),
            membership::Roster::new(hello.clone(), config.leave_after, departures.clone()),
            config.refresh,
            sender,
            discovered.clone(),
        ));
        Ok(Arc::new(Self {
            hello,
            keys,
            client,
            tls,
            members,
            discovered,
            ejected: Ejections::default(),
            departures,
        }))
    }

    /// Whether the region has been looked for once since this node started.
    pub fn discovered(&self) -> bool {
        self.discovered.load(Ordering::SeqCst)
    }

    pub fn members(&self) -> Arc<Members> {
        self.members.borrow().clone()
    }

    /// Whether this node owns the key of this stable hash.
    pub fn owns(&self, key_hash: u64) -> bool {
        let members = self.members();
        members
            .ranked(key_hash)
            .first()
            .is_none_or(|owner| owner.address.is_none())
    }

    /// Leaves `node` alone for a while after a failure (a client must not wait on a
    /// dead peer twice): a second at first, twice as
    /// long after each failure of the request that tries it again, at most
    /// [`MAX_EJECTION`]; a success forgets its failures ([`recovered`](Self::recovered)).
    pub fn eject(&self, node: &str) {
        if let Some((strikes, wait)) = self.ejected.eject(node, Instant::now()) {
            tracing::warn!(node, strikes, seconds = wait.as_secs_f64(), "peer ejected");
            metrics::counter!(crate::telemetry::PEER_EJECTIONS).increment(1);
        }
    }

    /// `node` served a request: its next failure is ejected for the shortest time.
    pub fn recovered(&self, node: &str) {
        if self.ejected.recovered(node) {
            tracing::info!(node, "peer serves again");
        }
    }

    /// `hello`'s node says it is stopping (it got SIGTERM): readers wait for it.
    /// Only a member's current boot is taken (not this node, not a stale replay).
    pub fn said_leaving(&self, hello: &Hello) {
        let member = self
            .members()
            .members
            .iter()
            .any(|m| m.address.is_some() && m.hello.node == hello.node && m.hello.boot_id == hello.boot_id);
        if member {
            tracing::info!(node = hello.node, "peer is stopping; readers wait for it to come back");
            self.departures.said(&hello.node, &hello.boot_id, Instant::now());
        }
    }

    /// Whether `node` said it is stopping and is still waited for.
    pub fn leaving(&self, node: &str) -> bool {
        self.departures.leaving(node, Instant::now())
    }

    /// Whether `node` is waited for now (it said it stops, and was found down less
    /// than `restart_wait` ago).
    pub fn waited_for(&self, node: &str) -> bool {
        self.departures.waited_for(node, Instant::now())
    }

    /// Waits for `node`, which said it is stopping and was found down, to come back
    /// under a new boot: `true` once it has, `false` if it was not said to be
    /// stopping, its time (`peers.restart_wait` from when it was first found down)
    /// is up, or it still answers under the boot that said it stops (alive: the
    /// failure was any peer's). One prober per node, in a task of its own.
    pub async fn returned(self: &Arc<Self>, node: &str) -> bool {
        let ended = match self.departures.wait(node, Instant::now()) {
            departures::Wait::NotAwaited => return false,
            departures::Wait::Probe(probing) => departures::outcome(probing).await,
            departures::Wait::Start {
                boot_id,
                deadline,
                outcome,
            } => {
                let probing = outcome.subscribe();
                let (peers, node) = (self.clone(), node.to_owned());
                tracing::info!(node, boot_id, "a stopping peer is down; waiting for it");
                tokio::spawn(async move {
                    let hello = || {
                        let (peers, node) = (peers.clone(), node.clone());
                        async move { peers.boot_of(&node).await }
                    };
                    match departures::probe(hello, &boot_id, deadline, outcome).await {
                        departures::Return::Back => tracing::info!(node, "a stopping peer is back"),
                        // Heard, so no longer counted down (`boot_of`).
                        departures::Return::Alive => {}
                        departures::Return::Gone => {
                            tracing::warn!(
                                node,
                                "a stopping peer did not come back in peers.restart_wait; filling its chunks elsewhere"
                            );
                            peers.departures.gone(&node, &boot_id);
                        }
                    }
                });
                departures::outcome(probing).await
            }
        };
        ended == departures::Return::Back
    }

    /// Where `node` is now, as the members know it.
    pub fn address_of(&self, node: &str) -> Option<std::net::SocketAddr> {
        self.members().members.iter().find(|m| m.hello.node == node)?.address
    }

    /// The boot `node` answers its hello under, at the address the members know now.
    async fn boot_of(&self, node: &str) -> Option<String> {
        let address = self.address_of(node)?;
        match self.client.hello(address).await {
            Ok(hello) if hello.node == node => {
                self.departures.heard(node, &hello.boot_id);
                Some(hello.boot_id)
            }
            _ => None,
        }
    }

    /// Tells every member this node is stopping (at SIGTERM), waiting at most a
    /// second for them.
    pub async fn announce_leaving(&self) {
        let body = self.hello.encode().into_bytes();
        let members = self.members();
        let told = members.members.iter().filter_map(|m| m.address).map(|address| {
            let body = body.clone();
            async move {
                if let Err(error) = self.client.post(address, protocol::LEAVING_PATH, body, LEAVING_TIMEOUT).await {
                    tracing::debug!(%address, error = %crate::error::error_chain(&error), "telling a peer this node stops");
                }
            }
        });
        futures_util::future::join_all(told).await;
    }

    /// Whether `node` is left alone now. Once its time is up, the next request
    /// tries it (its failures are kept until one succeeds).
    pub fn is_ejected(&self, node: &str) -> bool {
        self.ejected.holds(node, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_failing_again_is_left_alone_longer_until_it_serves() {
        let ejections = Ejections::default();
        let now = Instant::now();
        assert_eq!(ejections.eject("n1", now), Some((1, Duration::from_secs(1))));
        assert_eq!(ejections.eject("n1", now), None, "failures of one moment count once");
        assert!(ejections.holds("n1", now));
        let later = now + Duration::from_secs(1);
        assert!(!ejections.holds("n1", later), "tried again once its time is up");
        assert_eq!(ejections.eject("n1", later), Some((2, Duration::from_secs(2))));
        let mut at = later;
        for _ in 0..10 {
            at += Duration::from_secs(60);
            ejections.eject("n1", at);
        }
        assert_eq!(
            ejections.eject("n1", at + Duration::from_secs(60)).unwrap().1,
            MAX_EJECTION
        );
        assert!(ejections.recovered("n1"));
        assert_eq!(
            ejections.eject("n1", at + Duration::from_secs(120)),
            Some((1, Duration::from_secs(1)))
        );
        assert!(!ejections.holds("n2", now), "another node is untouched");
    }
}
