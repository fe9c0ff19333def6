//! The wiring: one s3-accel (cache, origin clients, proxy, listeners) bound,
//! then run until shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::server::Front;
use crate::{admin, cache, credentials, error, fetch, grants, herd, origin, peers, proxy, s3, server, telemetry, tls};

mod region;

/// A bound, not yet running s3-accel.
pub struct App {
    server: server::Server,
    peer_server: Option<server::Server>,
    admin: admin::AdminServer,
    cache: Arc<cache::ChunkCache>,
    certificate: Option<(Arc<tls::ReloadableCert>, std::time::Duration)>,
    /// Set when `shutdown` comes (`/readyz` answers 503), and how long the node
    /// then keeps serving before it stops accepting.
    withdrawing: (Arc<std::sync::atomic::AtomicBool>, std::time::Duration),
    /// The region, told when this node stops.
    peers: Option<Arc<peers::Peers>>,
}

impl App {
    /// Opens (and recovers) the cache, builds the origin clients, binds the listener.
    pub async fn bind(config: &Config) -> io::Result<Self> {
        // The recorder first: foyer takes its metric handles when the cache opens.
        telemetry::prometheus();
        let cache = cache::ChunkCache::open(&config.cache)
            .await
            .map_err(|e| io::Error::other(error::error_chain(&e)))?;
        let cache = Arc::new(cache);
        let router = origin::Router::new(config)?;
        let peers = match &config.peers {
            Some(peers) => Some(
                peers::Peers::start(peers, cache.disk_capacity())
                    .map_err(|e| io::Error::other(error::error_chain(&e)))?,
            ),
            None => None,
        };
        let pins = crate::pins::Pins::new(cache.clone(), peers.clone(), &config.pins);
        let origin_budget = origin_budget(config, peers.as_ref());
        tokio::spawn(pins.clone().sync());
        let verified = verified_keys(config)?;
        let credentials = credentials::FillCredentials::start(&config.credentials).await;
        let grants = grants::Granting::new(&config.auth, verified);
        let node = admin::Node {
            cache: cache.clone(),
            regions: router.regions().to_vec(),
            grants: grants.as_ref().map(|grants| grants.store().clone()),
            credentials: credentials.clone(),
            peers: peers.clone(),
            pins: pins.clone(),
            origin_budget: origin_budget.clone(),
            withdrawing: Arc::default(),
        };
        let withdrawing = (node.withdrawing.clone(), config.server.withdraw_grace);
        if let Some(grants) = &node.grants {
            tokio::spawn(admin::flush_on_hangup(grants.clone()));
        }
        let fills = fetch::Fills::new(origin_budget.clone(), cache.clone());
        // One herd for the node: its own requests, and the turns it holds for others.
        let patience = config.origin_client.first_byte_timeout;
        let region = peers
            .clone()
            .map(|peers| -> Arc<dyn herd::Region> { Arc::new(region::RegionGate { peers, patience }) });
        let herd = Arc::new(herd::Herd::new(patience, region));
        let peer_server = match (&config.peers, &peers) {
            (Some(listen), Some(peers)) => {
                let owner = peers::server::PeerServer {
                    peers: peers.clone(),
                    cache: cache.clone(),
                    regions: router.regions().to_vec(),
                    credentials: credentials.clone(),
                    fills: fills.clone(),
                    cold: Arc::new(region::OwnedGates {
                        herd: herd.clone(),
                        cache: cache.clone(),
                    }),
                    pins: pins.clone(),
                };
                let front = Front::Peers(Arc::new(owner));
                let tls = peers.tls.as_ref().map(|tls| tls.acceptor()).transpose()?;
                // Answers under way to peers get PEERS_DRAIN once clients have drained
                // (their connections end then: nothing serves while the cache closes).
                let mut server_config = config.server.clone();
                server_config.drain_timeout = server_config.drain_timeout.min(PEERS_DRAIN);
                Some(server::Server::bind(listen.listen, front, server_config, tls).await?)
            }
            _ => None,
        };
        let parts = proxy::Parts {
            router,
            cache: cache.clone(),
            peers: peers.clone(),
            herd,
            grants,
            credentials,
            fills,
        };
        let proxy = proxy::Proxy::new(parts, config);
        let admin = admin::AdminServer::bind(config.admin_listen, node).await?;
        let (acceptor, certificate) = match &config.tls {
            Some(tls) => {
                let certificate = tls::ReloadableCert::load(tls)?;
                (
                    Some(tls::acceptor(certificate.clone())?),
                    Some((certificate, tls.reload_interval)),
                )
            }
            None => (None, None),
        };
        let server =
            server::Server::bind(config.listen, Front::Clients(proxy), config.server.clone(), acceptor).await?;
        Ok(Self {
            server,
            peer_server,
            admin,
            cache,
            certificate,
            withdrawing,
            peers,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.server.local_addr()
    }

    pub fn admin_addr(&self) -> io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// The peer listener's address, when the node has peers.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_server.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then drains, then flushes and closes the
    /// cache so that what was written survives a restart.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let admin = tokio::spawn(self.admin.run());
        // Peers keep being answered while clients drain; then the peer listener
        // stops too, before the cache closes (a peer does not find this boot half
        // there: it finds it gone, and waits for the next).
        let (stop_peers, peers_stop) = tokio::sync::oneshot::channel::<()>();
        let peer_server = self.peer_server.map(|server| {
            tokio::spawn(server.run(async move {
                let _ = peers_stop.await;
            }))
        });
        let watch = self
            .certificate
            .map(|(certificate, interval)| tokio::spawn(certificate.watch(interval)));
        // Withdrawn first: `/readyz` fails at once, and the node goes on serving
        // while load balancers and routes stop sending it new connections.
        let (withdrawing, grace) = self.withdrawing;
        let peers = self.peers;
        let withdrawn = async move {
            shutdown.await;
            withdrawing.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!(grace = ?grace, "withdrawing: /readyz fails; serving until the grace ends");
            // Its peers wait for it rather than fill its share from the origin (told
            // within the grace, or within a second when the grace is shorter).
            let told = async move {
                if let Some(peers) = peers {
                    peers.announce_leaving().await;
                }
            };
            tokio::join!(told, tokio::time::sleep(grace));
        };
        self.server.run(withdrawn).await;
        let _ = stop_peers.send(());
        if let Some(peer_server) = peer_server {
            let _ = peer_server.await;
        }
        self.cache.close().await;
        admin.abort();
        if let Some(watch) = watch {
            watch.abort();
        }
    }
}

/// How long chunk answers under way to peers may take to finish once clients have
/// drained (deploy/checks.py counts it in the pod's grace period).
const PEERS_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The access keys whose SigV4 is checked here (`auth.verified_keys_file`), read
/// again as the file changes.
fn verified_keys(config: &Config) -> io::Result<Option<Arc<s3::keys::VerifiedKeys>>> {
    let keys = match &config.auth.verified_keys {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                io::Error::other(format!("cannot read auth.verified_keys_file {}: {e}", path.display()))
            })?;
            let keys = Arc::new(
                s3::keys::VerifiedKeys::from_text(&text)
                    .map_err(|e| io::Error::other(format!("auth.verified_keys_file {}: {e}", path.display())))?,
            );
            tokio::spawn(keys.clone().watch(path.clone(), config.auth.verified_keys_reload, text));
            Some(keys)
        }
        None => None,
    };
    Ok(keys)
}

/// The origin budget: the node's bounds (its fills within the fill memory) and its
/// share of the region's, the part of the keys it owns (alone, all of it).
fn origin_budget(config: &Config, peers: Option<&Arc<peers::Peers>>) -> Arc<fetch::origin_budget::OriginBudget> {
    let slots = fetch::budget::fill_slots(config.cache.fill_memory, config.cache.chunk_size);
    let bounds = config.origin_budget;
    let share: fetch::origin_budget::Share = match peers {
        Some(peers) => {
            let peers = peers.clone();
            Box::new(move || peers.members().share())
        }
        None => Box::new(|| 1.0),
    };
    let region = (bounds.region != Default::default()).then_some((bounds.region, share));
    fetch::origin_budget::OriginBudget::new(bounds.node, slots, region, config.cache.chunk_size)
}
