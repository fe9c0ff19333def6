//! The DaemonSet peers of a region as one cache: who they are ([`membership`]),
//! which of them owns each key ([`placement`]), what travels between them
//! ([`protocol`]) and how both ends sign and check it ([`auth`], [`wire`]); the
//! reader's side ([`client`], and [`upstream`]: chunks from their owner, then the
//! origin) and the owner's ([`server`]).

pub mod auth;
pub mod client;
pub mod membership;
pub mod placement;
pub mod protocol;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::{Discovery, PeersConfig};
use auth::{KeyRing, PeerKeys};
use client::PeerClient;
use membership::{Discover, Fixed, Members};
use protocol::Hello;

/// How often the peer key file is read again (a Secret's update reaches the pod
/// within about a minute).
const KEY_RELOAD: Duration = Duration::from_secs(10);

/// How long a peer that failed is left alone.
const EJECTION: Duration = Duration::from_secs(10);

/// This node's view of its region, shared by the request path and the peer listener.
pub struct Peers {
    pub hello: Hello,
    pub keys: Arc<KeyRing>,
    pub client: PeerClient,
    /// Mutual TLS on the peer port, when `peers.tls` is set.
    pub tls: Option<Arc<tls::PeerTls>>,
    members: watch::Receiver<Arc<Members>>,
    /// Peers that failed a request lately, by node name, and until when.
    ejected: Mutex<HashMap<String, Instant>>,
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
        let client = PeerClient::new(keys.clone(), tls.as_ref()).map_err(PeersError::Tls)?;
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
        tokio::spawn(membership::watch_members(
            discover,
            client.clone(),
            hello.clone(),
            config.refresh,
            sender,
        ));
        Ok(Arc::new(Self {
            hello,
            keys,
            client,
            tls,
            members,
            ejected: Mutex::default(),
        }))
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

    /// Leaves `node` alone for a while: a client must not wait on a dead peer twice.
    pub fn eject(&self, node: &str) {
        tracing::warn!(node, seconds = EJECTION.as_secs(), "peer ejected");
        metrics::counter!(crate::telemetry::PEER_EJECTIONS).increment(1);
        self.ejected
            .lock()
            .expect("ejected peers")
            .insert(node.to_owned(), Instant::now() + EJECTION);
    }

    pub fn is_ejected(&self, node: &str) -> bool {
        let mut ejected = self.ejected.lock().expect("ejected peers");
        match ejected.get(node) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                ejected.remove(node);
                false
            }
            None => false,
        }
    }
}
