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
                // This node's first: the region may know the object, or be probing it.
                let advice = match &self.region {
                    Some(region) => region.ask(object).await,
                    None => Advice::Alone,
                };
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
            Entry::Waited(Some(Release::Done)) => entered.cached = cache.meta(object).await,
            Entry::Waited(_) => {}
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
            Entry::Waited(Some(Release::Done)) => match cache.meta(object).await {
                Some(meta) => Held::Known(Box::new(meta)),
                None => Held::Unknown,
            },
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
                Some(_) => Release::Done,
                None => Release::GiveUp,
            });
        }
    }
}

impl Entered {
    /// Ends this request's turn, if it had one: the waiters go with the metadata
    /// (`learned`: the cache holds it), or probe at once; the region's owner is told
    /// `meta`.
    pub fn finish(self, learned: bool, meta: Option<&ObjectMeta>) {
        let Some((turn, report)) = self.turn else { return };
        turn.release(match learned {
            true => Release::Done,
            false => Release::GiveUp,
        });
        if let Some(report) = report {
            report.send(meta);
        }
    }
}
