//! The cold herd: of all the requests for an object nobody knows yet, one probes
//! the origin with a body; the others wait for what it learns and probe with a
//! condition (a 304, no body). Two gates, one API:
//!
//! - this node's own ([`gate`]): one request of this node takes the turn;
//! - the region's: the request with the turn asks the node that owns the object's
//!   metadata key ([`Region`], spoken over the peer wire by the layer that wires
//!   both), which answers with the metadata, gives the turn to this node (which then
//!   reports what it learned), or leaves it to decide alone.
//!
//! [`Herd::enter`] gives a request the metadata, or its turn; [`Entered::finish`]
//! releases the waiters with what was learned. The owner's side ([`Herd::hold`],
//! [`Herd::told`]) holds a turn of this node's gate for another node.

mod gate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::cache::{ChunkCache, ObjectId, ObjectMeta};
pub use gate::{ColdGate, ColdTurn, Entry, Release};

/// The region's gate, as this node reaches it.
pub trait Region: Send + Sync {
    /// Asks the owner of `object`'s gate, this node's turn in hand.
    fn ask<'a>(&'a self, object: &'a ObjectId) -> BoxFuture<'a, Advice>;
}

/// What the owner of an object's gate said to a node about to probe it cold.
pub enum Advice {
    /// The region knows the object: probe with a condition.
    Known(Box<ObjectMeta>),
    /// No node is probing it: probe it, then report what was learned.
    Probe(Box<dyn Report>),
    /// Decide alone (this node holds the gate, or its owner could not say).
    Alone,
}

/// The turn, unless a probe that ended between the cache's miss and the gate left
/// the object's metadata in the cache: then the turn is let go with it (its waiters
/// go on with it too), and it is the answer.
async fn turn_or_learned(cache: &ChunkCache, object: &ObjectId, turn: ColdTurn) -> Result<ColdTurn, ObjectMeta> {
    match cache.meta(object).await {
        Some(meta) => {
            turn.release(Release::Done(Arc::new(meta.clone())));
            Err(meta)
        }
        None => Ok(turn),
    }
}

impl Advice {
    fn label(&self) -> &'static str {
        match self {
            Self::Known(_) => "known",
            Self::Probe(_) => "probe",
            Self::Alone => "alone",
        }
    }
}

/// The duty to tell the owner of an object's gate what a probe learned; dropped
/// unsent, it tells the owner that nothing was.
pub trait Report: Send {
    fn send(self: Box<Self>, meta: Option<&ObjectMeta>);
}

/// Both gates, and the turns this node holds for other nodes.
pub struct Herd {
    gate: ColdGate,
    /// How long a request waits for another's probe: as long as a probe may take.
    patience: Duration,
    region: Option<Arc<dyn Region>>,
    /// Turns of this node's gate held for other nodes probing (this node owns the
    /// objects' metadata keys), with an id each.
    held: Arc<Mutex<HashMap<ObjectId, (u64, ColdTurn)>>>,
}

/// Where a request stands after entering the herd.
pub struct Entered {
    /// The object's metadata, when the cache (or the region) knows it.
    pub cached: Option<ObjectMeta>,
    turn: Option<(ColdTurn, Option<Box<dyn Report>>)>,
}

/// What the owner of an object's gate answers a node about to probe it cold.
pub enum Held {
    /// The object's metadata.
    Known(Box<ObjectMeta>),
    /// The asker's turn: this node holds it until told what was learned.
    Yours,
    /// No metadata to give, and no turn: the asker decides alone.
    Unknown,
}

impl Herd {
    pub fn new(patience: Duration, region: Option<Arc<dyn Region>>) -> Self {
        Self {
            gate: ColdGate::default(),
            patience,
            region,
            held: Arc::default(),
        }
    }

    /// The metadata `cache` holds for `object`; when it holds none, this request's
    /// turn to probe (after asking the region), or the metadata whoever probed first
    /// learned.
    pub async fn enter(&self, cache: &ChunkCache, object: &ObjectId) -> Entered {
        let mut entered = Entered {
            cached: cache.meta(object).await,
            turn: None,
        };
        if entered.cached.is_some() {
            return entered;
        }
        match self.gate.enter(object, self.patience).await {
            Entry::Turn(turn) => {
                let turn = match turn_or_learned(cache, object, turn).await {
                    Ok(turn) => turn,
                    Err(meta) => {
                        entered.cached = Some(meta);
                        return entered;
                    }
                };
                // This node's first: the region may know the object, or be probing it.
                let advice = match &self.region {
                    Some(region) => region.ask(object).await,
                    None => Advice::Alone,
                };
                tracing::debug!(
                    origin = object.origin,
                    key = object.key,
                    advice = advice.label(),
                    "cold: this node's turn"
                );
                let report = match advice {
                    Advice::Known(meta) => {
                        cache.insert_meta(object, (*meta).clone());
                        entered.cached = Some(*meta);
                        None
                    }
                    Advice::Probe(report) => Some(report),
                    Advice::Alone => None,
                };
                entered.turn = Some((turn, report));
            }
            Entry::Waited(Some(Release::Done(meta))) => entered.cached = Some(Arc::unwrap_or_clone(meta)),
            Entry::Waited(other) => {
                tracing::debug!(origin = object.origin, key = object.key, released = ?other, "cold: waited, and probes alone")
            }
        }
        entered
    }

    /// Another node is about to probe `object` cold, and this node holds the
    /// object's gate: the metadata when it knows it (once any probe under way here
    /// ends), or the turn, held for the asker until it tells what it learned (or,
    /// silent, for as long as a probe may take).
    pub async fn hold(&self, cache: &ChunkCache, object: &ObjectId) -> Held {
        if let Some(meta) = cache.meta(object).await {
            return Held::Known(Box::new(meta));
        }
        match self.gate.enter(object, self.patience).await {
            Entry::Turn(turn) => {
                let turn = match turn_or_learned(cache, object, turn).await {
                    Ok(turn) => turn,
                    Err(meta) => return Held::Known(Box::new(meta)),
                };
                tracing::debug!(origin = object.origin, key = object.key, "cold: a peer's turn");
                let id = fastrand::u64(..);
                self.held.lock().expect("held turns").insert(object.clone(), (id, turn));
                // An asker that never tells lets the turn go when a probe would have
                // timed out (dropped, the turn passes to one waiter).
                let (held, patience, object) = (self.held.clone(), self.patience, object.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(patience).await;
                    let mut held = held.lock().expect("held turns");
                    if held.get(&object).is_some_and(|(turn, _)| *turn == id) {
                        held.remove(&object);
                    }
                });
                Held::Yours
            }
            Entry::Waited(Some(Release::Done(meta))) => Held::Known(Box::new(Arc::unwrap_or_clone(meta))),
            Entry::Waited(_) => Held::Unknown,
        }
    }

    /// What the probe of a node given the turn learned: the waiters here (and the
    /// nodes they answer for) go on with it.
    pub fn told(&self, cache: &ChunkCache, object: &ObjectId, meta: Option<ObjectMeta>) {
        if let Some(meta) = &meta {
            cache.insert_meta(object, meta.clone());
        }
        let turn = self.held.lock().expect("held turns").remove(object);
        if let Some((_, turn)) = turn {
            turn.release(match meta {
                Some(meta) => Release::Done(Arc::new(meta)),
                None => Release::GiveUp,
            });
        }
    }
}

impl Entered {
    /// Ends this request's turn, if it had one: the waiters go with the metadata
    /// `learned`, or (nothing learned) probe at once; the region's owner is told.
    pub fn finish(self, learned: Option<&ObjectMeta>) {
        let Some((turn, report)) = self.turn else { return };
        turn.release(match learned {
            Some(meta) => Release::Done(Arc::new(meta.clone())),
            None => Release::GiveUp,
        });
        if let Some(report) = report {
            report.send(learned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> ObjectId {
        ObjectId {
            origin: "http://origin:9000".into(),
            bucket: "models".into(),
            key: "model.bin".into(),
            version_id: None,
        }
    }

    fn meta() -> ObjectMeta {
        ObjectMeta {
            size: 3 << 20,
            etag: "\"e-1\"".into(),
            headers: http::HeaderMap::new(),
            checksums: None,
        }
    }

    async fn cache(dir: &std::path::Path) -> ChunkCache {
        let config = crate::cache::test_config(dir);
        ChunkCache::open(&crate::config::CacheConfig { disk: 0, ..config })
            .await
            .unwrap()
    }

    /// The metadata a probe learned reaches the requests that waited for it even when
    /// the cache no longer holds it (evicted by the chunks filled meanwhile): they
    /// probe with a condition, never with a body as if nobody had probed.
    #[tokio::test]
    async fn waiters_go_on_with_what_was_learned_though_the_cache_lost_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path()).await;
        let (herd, object) = (Herd::new(Duration::from_secs(5), None), object());
        let first = herd.enter(&cache, &object).await;
        assert!(first.cached.is_none() && first.turn.is_some(), "the first probes");
        let waiter = herd.enter(&cache, &object);
        let probe = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            cache.insert_meta(&object, meta());
            cache.remove_meta(&object);
            first.finish(Some(&meta()));
        };
        let (waited, ()) = tokio::join!(waiter, probe);
        assert_eq!(waited.cached, Some(meta()));
        assert!(waited.turn.is_none(), "a waiter does not probe first");

        // The same on the owner's side, for another node's request.
        let (owner, other) = (
            Herd::new(Duration::from_secs(5), None),
            ObjectId {
                key: "other".into(),
                ..object
            },
        );
        assert!(matches!(owner.hold(&cache, &other).await, Held::Yours));
        let asker = owner.hold(&cache, &other);
        let told = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            owner.told(&cache, &other, Some(meta()));
            cache.remove_meta(&other);
        };
        let (held, ()) = tokio::join!(asker, told);
        assert!(matches!(held, Held::Known(m) if *m == meta()));
    }
}
