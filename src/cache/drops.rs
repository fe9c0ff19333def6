//! Versions dropped while chunks of them were still arriving or on their way to
//! disk. A fill that began before its version was found wrong must not store its
//! chunk after the drop (it would be a hit of a version the cache no longer vouches
//! for): each drop takes the next epoch, and a writer remembers the epoch it was
//! claimed at. And until a removal has settled (foyer hands out an entry on its way
//! to disk even after it was removed, until the write lands), the version is not
//! read from the tiers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Dropped versions remembered; beyond that the oldest is forgotten, and writers
/// claimed before it treat every version as dropped (a chunk not kept, never one
/// kept wrongly).
const REMEMBERED: usize = 16384;

#[derive(Default)]
pub(super) struct Drops {
    state: Mutex<Dropped>,
}

#[derive(Default)]
struct Dropped {
    epoch: u64,
    /// A version's key prefix, and the epoch and time of its last drop.
    versions: HashMap<Bytes, (u64, Instant)>,
    /// The newest epoch forgotten.
    floor: u64,
    /// Versions whose removal has not settled, with how many removals are under way.
    settling: HashMap<Bytes, usize>,
}

impl Drops {
    fn state(&self) -> std::sync::MutexGuard<'_, Dropped> {
        // Plain data, consistent after every statement: a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The epoch a writer claimed now compares against.
    pub fn now(&self) -> u64 {
        self.state().epoch
    }

    /// Version `prefix` is dropped.
    pub fn record(&self, prefix: Bytes) {
        let mut state = self.state();
        state.epoch += 1;
        let epoch = state.epoch;
        state.versions.insert(prefix, (epoch, Instant::now()));
        if state.versions.len() > REMEMBERED {
            let oldest = state
                .versions
                .iter()
                .min_by_key(|(_, (epoch, _))| *epoch)
                .map(|(prefix, (epoch, _))| (prefix.clone(), *epoch));
            if let Some((prefix, epoch)) = oldest {
                state.versions.remove(&prefix);
                state.floor = state.floor.max(epoch);
            }
        }
    }

    /// A removal of version `prefix`'s entries begins.
    pub fn unsettle(&self, prefix: &Bytes) {
        *self.state().settling.entry(prefix.clone()).or_default() += 1;
    }

    /// A removal of version `prefix`'s entries has settled.
    pub fn settle(&self, prefix: &[u8]) {
        let mut state = self.state();
        if let Some(count) = state.settling.get_mut(prefix) {
            *count -= 1;
            if *count == 0 {
                state.settling.remove(prefix);
            }
        }
    }

    /// The epoch a read of version `prefix` compares with afterwards, or `None`
    /// while a removal of it is settling (it is not read from the tiers then).
    pub fn read_from(&self, prefix: &[u8]) -> Option<u64> {
        let state = self.state();
        (!state.settling.contains_key(prefix)).then_some(state.epoch)
    }

    /// Whether a removal of version `prefix` is still settling.
    pub fn settling(&self, prefix: &[u8]) -> bool {
        self.state().settling.contains_key(prefix)
    }

    /// Whether version `prefix` was dropped after `epoch`.
    pub fn since(&self, prefix: &[u8], epoch: u64) -> bool {
        let state = self.state();
        state.floor > epoch || state.versions.get(prefix).is_some_and(|(dropped, _)| *dropped > epoch)
    }

    /// Whether version `prefix` was dropped less than `lately` ago.
    pub fn within(&self, prefix: &[u8], lately: Duration) -> bool {
        self.state()
            .versions
            .get(prefix)
            .is_some_and(|(_, at)| at.elapsed() < lately)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_counts_only_for_writers_claimed_before_it() {
        let drops = Drops::default();
        let before = drops.now();
        drops.record(Bytes::from_static(b"v1"));
        assert!(drops.since(b"v1", before));
        assert!(!drops.since(b"v2", before), "another version is untouched");
        assert!(!drops.since(b"v1", drops.now()), "a fill claimed after the drop stores");
    }

    #[test]
    fn a_version_settles_when_its_last_removal_does() {
        let drops = Drops::default();
        let v1 = Bytes::from_static(b"v1");
        drops.unsettle(&v1);
        drops.unsettle(&v1);
        drops.settle(&v1);
        assert!(drops.settling(&v1), "one removal is still under way");
        drops.settle(&v1);
        assert!(!drops.settling(&v1));
    }

    #[test]
    fn a_forgotten_drop_still_stops_writers_older_than_it() {
        let drops = Drops::default();
        let before = drops.now();
        for n in 0..=REMEMBERED {
            drops.record(Bytes::from(format!("v{n}")));
        }
        assert!(
            drops.since(b"v0", before),
            "forgotten, and still dropped for an old writer"
        );
        assert!(!drops.since(b"v0", drops.now()));
    }
}
