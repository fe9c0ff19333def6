//! The herd and the peers, bridged (neither knows the other): the region's cold
//! gate over the peer wire. [`herd::Region`] asks the node that owns an object's
//! metadata key, [`herd::Report`] tells it what a probe learned, and on the owner's
//! side [`ColdOwner`] answers with this node's herd.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::cache::{CacheKey, ChunkCache, ObjectId, ObjectMeta};
use crate::herd::{self, Advice, Held, Herd};
use crate::peers::client::PeerError;
use crate::peers::protocol::{ObjectNote, COLD_PATH, LEARNED_PATH};
use crate::peers::server::{Cold, ColdOwner};
use crate::peers::Peers;

/// How long telling an owner what was learned may take.
const TELL_TIMEOUT: Duration = Duration::from_secs(5);

pub struct RegionGate {
    pub peers: Arc<Peers>,
    /// How long the owner may make a reader wait for another node's probe.
    pub patience: Duration,
}

impl herd::Region for RegionGate {
    fn ask<'a>(&'a self, object: &'a ObjectId) -> BoxFuture<'a, Advice> {
        self.ask(object).boxed()
    }
}

impl RegionGate {
    async fn ask(&self, object: &ObjectId) -> Advice {
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
            tracing::debug!(node, "the owner of an object's gate is ejected: deciding alone");
            return Advice::Alone;
        }
        let note = ObjectNote {
            object: object.clone(),
            meta: None,
        };
        let wait = self.patience + Duration::from_secs(5);
        match self.peers.client.post(address, COLD_PATH, note.encode(), wait).await {
            Ok((StatusCode::OK, body)) => match ObjectMeta::from_bytes(&body) {
                Some(meta) => Advice::Known(Box::new(meta)),
                None => Advice::Alone,
            },
            Ok((StatusCode::ACCEPTED, _)) => {
                Advice::Probe(Box::new(Report(Some((self.peers.clone(), address, object.clone())))))
            }
            Ok((status, _)) => {
                tracing::debug!(node, %status, "the owner of an object's gate says decide alone");
                Advice::Alone
            }
            Err(error) => {
                tracing::warn!(node, error = %crate::error::error_chain(&error), "the owner of an object's gate did not answer");
                // An answer that is not the owner's (altered on the way, or too long)
                // is not used: this node decides alone. Only an owner that cannot be
                // reached is ejected; its chunk answers are checked on their own.
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

impl herd::Report for Report {
    /// Tells the owner (in the background) the object's metadata, or that the
    /// origin's answer could not be cached.
    fn send(mut self: Box<Self>, meta: Option<&ObjectMeta>) {
        self.tell(meta.map(ObjectMeta::to_bytes));
    }
}

impl Report {
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

/// This node's herd, answering for the objects whose gates it owns.
pub struct OwnedGates {
    pub herd: Arc<Herd>,
    pub cache: Arc<ChunkCache>,
}

impl ColdOwner for OwnedGates {
    fn hold<'a>(&'a self, object: &'a ObjectId) -> BoxFuture<'a, Cold> {
        async move {
            match self.herd.hold(&self.cache, object).await {
                Held::Known(meta) => Cold::Known(meta),
                Held::Yours => Cold::Yours,
                Held::Unknown => Cold::Unknown,
            }
        }
        .boxed()
    }

    fn told(&self, object: &ObjectId, meta: Option<ObjectMeta>) {
        self.herd.told(&self.cache, object, meta);
    }
}
