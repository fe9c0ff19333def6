//! Whole-object checks. A chunk has no checksum of its own at the origin; the
//! object has one (its full-object CRC). Each chunk's CRC, as the chunk is filled
//! or fetched here, is tallied by object version; once every chunk of a version has
//! been seen, the tallies combine into the object's CRC (no byte read twice) and are
//! compared with the origin's. A version that does not add up is dropped whole:
//! which chunk is wrong cannot be told, and the next read fills again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::origin_budget::OriginBudget;
use crate::cache::{ChunkCache, ObjectId};
use crate::s3::Crc;

/// What every fill of this node draws on: the origin budget (which bounds the fill
/// memory too), the cache the chunks go to, and the tallies of the versions being
/// filled.
pub struct Fills {
    /// Gives fills their turns, by priority.
    pub budget: Arc<OriginBudget>,
    pub cache: Arc<ChunkCache>,
    pub ledger: Ledger,
}

impl Fills {
    pub fn new(budget: Arc<OriginBudget>, cache: Arc<ChunkCache>) -> Arc<Self> {
        Arc::new(Self {
            budget,
            cache,
            ledger: Ledger::default(),
        })
    }
}

/// The versions tallied at once: past this, the least recently tallied is
/// forgotten (it is then never checked, as if it had been read elsewhere).
const MAX_VERSIONS: usize = 4096;
/// The chunk CRCs held at once, over all versions (16 bytes each).
const MAX_SLOTS: usize = 1 << 20;

/// One object version, as tallied.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    pub object: ObjectId,
    pub etag: String,
}

/// The CRCs seen of one version's chunks.
struct Tally {
    /// What the version was said to be when the tally began (size, chunk size,
    /// full-object CRC): a fill that says otherwise starts the tally afresh.
    shape: (u64, u64, Crc),
    crcs: Vec<Option<Crc>>,
    seen: usize,
    touched: u64,
}

#[derive(Default)]
pub struct Ledger {
    state: Mutex<Tallies>,
}

#[derive(Default)]
struct Tallies {
    versions: HashMap<Version, Tally>,
    slots: usize,
    clock: u64,
}

/// What a chunk's CRC told of its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Chunks of the version are still to be seen.
    Pending,
    /// Every chunk has been seen, and together they are the object.
    Whole,
    /// Every chunk has been seen, and together they are not the object.
    Mismatch,
}

impl Ledger {
    /// Tallies `crc`, chunk `index`'s, of `version` (`size` bytes in chunks of
    /// `chunk_size`, whose full-object CRC is `expected`). A chunk seen again (filled
    /// again after an eviction) counts with its newest bytes.
    pub fn tally(
        &self,
        version: &Version,
        (size, chunk_size): (u64, u64),
        expected: Crc,
        index: u64,
        crc: Crc,
    ) -> Verdict {
        let chunks = size.div_ceil(chunk_size.max(1));
        if chunks > MAX_SLOTS as u64 || index >= chunks || crc.algorithm != expected.algorithm {
            return Verdict::Pending;
        }
        let chunks = chunks as usize;
        let shape = (size, chunk_size, expected);
        let tally = {
            // A panic elsewhere while it was held leaves nothing half-written here.
            let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            state.clock += 1;
            let touched = state.clock;
            if state.versions.get(version).is_some_and(|tally| tally.shape != shape) {
                state.remove(version);
            }
            if !state.versions.contains_key(version) {
                state.make_room(chunks);
                state.slots += chunks;
                let tally = Tally {
                    shape,
                    crcs: vec![None; chunks],
                    seen: 0,
                    touched,
                };
                state.versions.insert(version.clone(), tally);
            }
            let Some(tally) = state.versions.get_mut(version) else {
                return Verdict::Pending;
            };
            tally.touched = touched;
            if tally.crcs[index as usize].replace(crc).is_none() {
                tally.seen += 1;
            }
            if tally.seen < chunks {
                return Verdict::Pending;
            }
            match state.remove(version) {
                Some(tally) => tally,
                None => return Verdict::Pending,
            }
        };
        // Combined outside the lock: other fills tally meanwhile.
        let last = size - (chunks as u64 - 1) * chunk_size;
        let whole = tally
            .crcs
            .iter()
            .enumerate()
            .map(|(i, crc)| (*crc, if i + 1 == chunks { last } else { chunk_size }))
            .try_fold(None, |whole: Option<Crc>, (crc, length)| {
                let crc = crc?;
                Some(Some(match whole {
                    None => crc,
                    Some(whole) => whole.then(crc, length),
                }))
            })
            .flatten();
        match whole == Some(expected) {
            true => Verdict::Whole,
            false => Verdict::Mismatch,
        }
    }

    /// Forgets what was tallied of `version` (its chunks were dropped: CRCs seen
    /// before must not count with chunks filled after).
    pub fn forget(&self, version: &Version) {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(version);
    }
}

impl Tallies {
    fn remove(&mut self, version: &Version) -> Option<Tally> {
        let tally = self.versions.remove(version)?;
        self.slots -= tally.crcs.len();
        Some(tally)
    }

    /// Forgets the least recently tallied versions until `chunks` more slots fit.
    fn make_room(&mut self, chunks: usize) {
        while !self.versions.is_empty() && (self.versions.len() >= MAX_VERSIONS || self.slots + chunks > MAX_SLOTS) {
            let oldest = self
                .versions
                .iter()
                .min_by_key(|(_, tally)| tally.touched)
                .map(|(version, _)| version.clone())
                .expect("not empty");
            self.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(key: &str) -> Version {
        Version {
            object: ObjectId {
                origin: "http://origin".into(),
                bucket: "b".into(),
                key: key.into(),
                version_id: None,
            },
            etag: "\"e\"".into(),
        }
    }

    #[test]
    fn chunks_tally_to_the_object_whatever_their_order() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let chunk_size = 4096u64;
        let expected = Crc::of(Crc::DEFAULT, &data);
        let crcs: Vec<Crc> = data
            .chunks(chunk_size as usize)
            .map(|c| Crc::of(Crc::DEFAULT, c))
            .collect();
        let ledger = Ledger::default();
        let shape = (data.len() as u64, chunk_size);
        let v = version("a");
        assert_eq!(ledger.tally(&v, shape, expected, 2, crcs[2]), Verdict::Pending);
        assert_eq!(ledger.tally(&v, shape, expected, 0, crcs[0]), Verdict::Pending);
        // A chunk seen twice counts once.
        assert_eq!(ledger.tally(&v, shape, expected, 0, crcs[0]), Verdict::Pending);
        assert_eq!(ledger.tally(&v, shape, expected, 1, crcs[1]), Verdict::Whole);
        // One flipped byte in the middle chunk: the whole does not add up.
        let mut bad = data[4096..8192].to_vec();
        bad[100] ^= 4;
        let w = version("b");
        assert_eq!(ledger.tally(&w, shape, expected, 0, crcs[0]), Verdict::Pending);
        assert_eq!(
            ledger.tally(&w, shape, expected, 1, Crc::of(Crc::DEFAULT, &bad)),
            Verdict::Pending
        );
        assert_eq!(ledger.tally(&w, shape, expected, 2, crcs[2]), Verdict::Mismatch);
        // Tallied and done: nothing is held.
        assert_eq!(ledger.state.lock().unwrap().slots, 0);
        // A fill that says the version is another size starts afresh (and never
        // panics on a slot that is not there).
        assert_eq!(ledger.tally(&v, shape, expected, 0, crcs[0]), Verdict::Pending);
        assert_eq!(
            ledger.tally(&v, (100_000, 4096), expected, 20, crcs[0]),
            Verdict::Pending
        );
        assert_eq!(ledger.tally(&v, shape, expected, 1, crcs[1]), Verdict::Pending);
        // Forgotten: CRCs seen before a drop do not count after it.
        ledger.forget(&v);
        assert_eq!(ledger.state.lock().unwrap().slots, 0);
    }

    #[test]
    fn the_ledger_is_bounded() {
        let ledger = Ledger::default();
        let crc = Crc::of(Crc::DEFAULT, b"x");
        for i in 0..MAX_VERSIONS + 10 {
            ledger.tally(&version(&i.to_string()), (8, 4), crc, 0, crc);
        }
        let state = ledger.state.lock().unwrap();
        assert_eq!(state.versions.len(), MAX_VERSIONS);
        assert_eq!(state.slots, 2 * MAX_VERSIONS);
        assert!(!state.versions.contains_key(&version("0")), "the oldest went first");
    }
}
