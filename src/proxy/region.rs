//! The region's cold gate: of all the nodes whose clients read an object nobody in
//! the region knows yet, one probes the origin with a body; the others wait for
//! what it learns and probe with a condition (a 304: no body). The gate for an
//! object is on the node that owns its metadata key; each node's own gate lets one
//! of its requests ask.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::cache::{CacheKey, ObjectId, ObjectMeta};
use crate::peers::client::PeerError;
use crate::peers::protocol::{ObjectNote, COLD_PATH, LEARNED_PATH};
use crate::peers::Peers;

/// How long telling an owner what was learned may take.
const TELL_TIMEOUT: Duration = Duration::from_secs(5);

pub struct RegionGate {
    pub peers: Arc<Peers>,
    /// How long the owner may make a reader wait for another node's probe.
    pub patience: Duration,
}

/// What the owner of an object's gate said to a node about to probe it cold.
pub enum Advice {
    /// The region knows the object: probe with a condition.
    Known(ObjectMeta),
    /// No node is probing it: probe it, then tell the owner what was learned.
    Probe(Report),
    /// Decide alone (this node holds the gate, or its owner could not say).
    Alone,
}

impl RegionGate {
    pub async fn ask(&self, object: &ObjectId) -> Advice {
        let members = self.peers.members();
        let Some(owner) = members.ranked(CacheKey::meta(object).stable_hash()).first().copied() else {
            return Advice::Alone;
        };
        // This node holds the gate: its own is the region's.
        let Some(address) = owner.address else {
            return Advice::Alone;
        };
        let node = &owner.hello.node;
        if self.peers.is_ejected(node) {
            return Advice::Alone;
        }
        let note = ObjectNote {
            object: object.clone(),
            meta: None,
        };
        let wait = self.patience + Duration::from_secs(5);
        match self.peers.client.post(address, COLD_PATH, note.encode(), wait).await {
            Ok((StatusCode::OK, body)) => match ObjectMeta::from_bytes(&body) {
                Some(meta) => Advice::Known(meta),
                None => Advice::Alone,
            },
            Ok((StatusCode::ACCEPTED, _)) => Advice::Probe(Report(Some((self.peers.clone(), address, object.clone())))),
            Ok(_) => Advice::Alone,
            Err(error) => {
                tracing::warn!(node, error = %crate::error::error_chain(&error), "the owner of an object's gate did not answer");
                if matches!(error, PeerError::Unreachable(_)) {
                    self.peers.eject(node);
                }
                Advice::Alone
            }
        }
    }
}

/// The duty to tell the owner of an object's gate what a probe learned: dropped
/// untold (the probe failed), it tells the owner that nothing was, and the other
/// nodes probe as they would.
pub struct Report(Option<(Arc<Peers>, SocketAddr, ObjectId)>);

impl Report {
    /// Tells the owner (in the background) the object's metadata, or that the
    /// origin's answer could not be cached.
    pub fn send(mut self, meta: Option<&ObjectMeta>) {
        self.tell(meta.map(ObjectMeta::to_bytes));
    }

    fn tell(&mut self, meta: Option<Vec<u8>>) {
        let Some((peers, owner, object)) = self.0.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let note = ObjectNote { object, meta };
        runtime.spawn(async move {
            if let Err(error) = peers.client.post(owner, LEARNED_PATH, note.encode(), TELL_TIMEOUT).await {
                tracing::debug!(%owner, error = %crate::error::error_chain(&error), "telling an object's gate what was learned");
            }
        });
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        self.tell(None);
    }
}
