//! One node's cold gate: of the requests for an object this node does not know,
//! one holds the turn to probe; the others wait and are released with a status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::cache::{ObjectId, ObjectMeta};

/// Lets one cold request per object ask the origin first, so that the others wait
/// for its metadata and then probe cheaply (a 304) instead of each starting a body.
/// The first releases the others with a status (pingora's cache lock), so that a
/// herd of requests that will never be cached is not made to probe one at a time.
#[derive(Default)]
pub struct ColdGate {
    probes: Probes,
}

type Probes = Arc<Mutex<HashMap<ObjectId, watch::Receiver<Option<Release>>>>>;

/// How the request holding the turn let go of it.
#[derive(Debug, Clone, PartialEq)]
pub enum Release {
    /// The object's metadata, learned: probe with a condition. Handed over, not
    /// read back from the cache, where a chunk filled meanwhile may have evicted it
    /// (the waiter would then probe with a body, as if nobody had).
    Done(Arc<ObjectMeta>),
    /// The origin's answer is not cacheable (a denial, `no-store`, overrides...):
    /// everyone probes at once, as they would without a cache.
    GiveUp,
    /// The holder went away without an answer (an error, a cancelled request):
    /// one waiter takes the turn.
    Dangling,
}

/// Where a cold request stands after the gate.
pub enum Entry {
    /// This request probes first; the others wait until the turn is released.
    Turn(ColdTurn),
    /// Another request probed first and released the turn so (or this one ran out
    /// of patience: `None`).
    Waited(Option<Release>),
}

/// The turn to probe first (held by a request here, or, for the owner of an
/// object's metadata, on behalf of another node of the region).
pub struct ColdTurn {
    probes: Probes,
    object: ObjectId,
    release: watch::Sender<Option<Release>>,
}

impl ColdGate {
    /// Takes the turn for `object`, or waits (at most `patience`) for whoever holds it.
    pub async fn enter(&self, object: &ObjectId, patience: Duration) -> Entry {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let mut waiting = {
                let mut probes = self.probes.lock().expect("cold gate");
                match probes.get(object) {
                    Some(receiver) => receiver.clone(),
                    None => {
                        let (release, receiver) = watch::channel(None);
                        probes.insert(object.clone(), receiver);
                        return Entry::Turn(ColdTurn {
                            probes: self.probes.clone(),
                            object: object.clone(),
                            release,
                        });
                    }
                }
            };
            let status = match tokio::time::timeout_at(deadline, waiting.wait_for(Option::is_some)).await {
                Err(_) => return Entry::Waited(None),
                Ok(Ok(status)) => status.clone(),
                Ok(Err(_)) => None,
            };
            match status {
                // The holder went away without an answer: try for the turn again.
                Some(Release::Dangling) | None => continue,
                released => return Entry::Waited(released),
            }
        }
    }
}

impl ColdTurn {
    /// Lets the waiters go with `status`.
    pub fn release(self, status: Release) {
        self.finish(status);
    }

    fn finish(&self, status: Release) {
        let mut probes = self.probes.lock().expect("cold gate");
        if probes
            .get(&self.object)
            .is_some_and(|receiver| receiver.same_channel(&self.release.subscribe()))
        {
            probes.remove(&self.object);
        }
        drop(probes);
        self.release.send_if_modified(|current| {
            let first = current.is_none();
            if first {
                *current = Some(status);
            }
            first
        });
    }
}

impl Drop for ColdTurn {
    fn drop(&mut self) {
        self.finish(Release::Dangling);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> ObjectId {
        ObjectId {
            origin: "o".into(),
            bucket: "b".into(),
            key: "k".into(),
            version_id: None,
        }
    }

    fn learned() -> Release {
        Release::Done(Arc::new(ObjectMeta {
            size: 7,
            etag: "\"e\"".into(),
            headers: http::HeaderMap::new(),
            checksums: None,
        }))
    }

    #[tokio::test]
    async fn one_cold_probe_at_a_time_per_object() {
        let gate = ColdGate::default();
        let patience = Duration::from_secs(5);
        let Entry::Turn(first) = gate.enter(&object(), patience).await else {
            panic!("the first request takes the turn");
        };
        let second = tokio::time::timeout(Duration::from_millis(50), gate.enter(&object(), patience)).await;
        assert!(second.is_err(), "the second cold request waits for the first");
        drop(first);
        let Entry::Turn(third) = gate.enter(&object(), patience).await else {
            panic!("a dangling turn is taken again");
        };
        third.release(learned());
        assert!(gate.probes.lock().unwrap().is_empty(), "no entry left behind");
    }

    #[tokio::test]
    async fn waiters_are_released_with_the_status() {
        for status in [learned(), Release::GiveUp] {
            let gate = ColdGate::default();
            let patience = Duration::from_secs(5);
            let Entry::Turn(turn) = gate.enter(&object(), patience).await else {
                panic!("first");
            };
            let object = object();
            let waiters = futures_util::future::join_all((0..8).map(|_| gate.enter(&object, patience)));
            let release = async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                turn.release(status.clone());
            };
            let (entries, ()) = tokio::join!(waiters, release);
            for entry in entries {
                assert!(matches!(&entry, Entry::Waited(Some(s)) if *s == status), "{status:?}");
            }
            assert!(gate.probes.lock().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn a_dangling_turn_passes_to_one_waiter() {
        let gate = ColdGate::default();
        let patience = Duration::from_secs(5);
        let Entry::Turn(turn) = gate.enter(&object(), patience).await else {
            panic!("first");
        };
        let object = object();
        let waiters = futures_util::future::join_all((0..4).map(|_| gate.enter(&object, Duration::from_millis(300))));
        let drop_it = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(turn);
        };
        let (entries, ()) = tokio::join!(waiters, drop_it);
        let turns = entries.iter().filter(|e| matches!(e, Entry::Turn(_))).count();
        assert_eq!(turns, 1, "exactly one waiter takes the turn over");
        // The others wait for the new holder, which never releases: they run out of patience.
        assert_eq!(entries.iter().filter(|e| matches!(e, Entry::Waited(None))).count(), 3);
    }
}
