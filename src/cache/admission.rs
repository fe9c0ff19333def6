//! What the disk tier takes and keeps (`cache.admission`). The memory tier is
//! S3-FIFO (a one-hit chunk leaves first); the disk tier is a log of blocks,
//! reclaimed oldest first. Without a rule, a one-pass scan rewrites the whole log and
//! flushes the hot set from it. With one, a frequency sketch of chunk lookups decides:
//! - `second-hit` (the default): until the disk tier has taken its size once, every
//!   filled chunk is written (a new node warms whole, and what it read survives a
//!   restart); from then on a chunk is written only when asked for a second time (a
//!   second fill, or a hit in memory). When a block is reclaimed, the chunks looked
//!   up again since they were written are written anew. A scan never reaches a full
//!   disk; the hot set stays on it.
//! - `frequency`: every filled chunk is written, and kept as with `second-hit`. A
//!   scan passes through the log, and rewrites of the hot set make room for it.
//! - `all`: every chunk written, none kept past its block (plain FIFO).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use foyer::{Statistics, StorageFilterCondition, StorageFilterResult};

use super::disk::DiskHealth;

/// `cache.admission`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Admission {
    All,
    Frequency,
    #[default]
    SecondHit,
}

impl Admission {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "all" => Ok(Self::All),
            "frequency" => Ok(Self::Frequency),
            "second-hit" => Ok(Self::SecondHit),
            other => Err(format!("`{other}` is not one of all, frequency, second-hit")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Frequency => "frequency",
            Self::SecondHit => "second-hit",
        }
    }
}

/// How often each chunk was looked up lately: a count-min sketch of 4-bit-like
/// saturating counters (at most 15), halved every `10 x width` lookups so that old
/// popularity fades.
#[derive(Debug)]
pub struct Sketch {
    rows: [Vec<AtomicU8>; 4],
    mask: u64,
    touches: AtomicU64,
    aging: AtomicU32,
}

const MAX_COUNT: u8 = 15;

impl Sketch {
    /// A sketch for about `entries` chunks.
    pub fn new(entries: u64) -> Self {
        let width = (entries.max(256) * 4).next_power_of_two();
        let row = || (0..width).map(|_| AtomicU8::new(0)).collect::<Vec<_>>();
        Self {
            rows: [row(), row(), row(), row()],
            mask: width - 1,
            touches: AtomicU64::new(0),
            aging: AtomicU32::new(0),
        }
    }

    fn slots(&self, hash: u64) -> [usize; 4] {
        // Four indexes from one 64-bit hash (double hashing).
        let (a, b) = (hash, hash.rotate_left(32) | 1);
        std::array::from_fn(|i| (a.wrapping_add(b.wrapping_mul(i as u64)) & self.mask) as usize)
    }

    /// Counts one lookup of `hash`; its count after it.
    pub fn touch(&self, hash: u64) -> u8 {
        let slots = self.slots(hash);
        let least = self.count(hash);
        // Conservative update: only the counters at the minimum grow.
        for (row, slot) in self.rows.iter().zip(slots) {
            let _ = row[slot].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c == least && c < MAX_COUNT).then_some(c + 1)
            });
        }
        let touches = self.touches.fetch_add(1, Ordering::Relaxed) + 1;
        if touches.is_multiple_of(10 * (self.mask + 1)) {
            self.age();
        }
        least.saturating_add(1).min(MAX_COUNT)
    }

    pub fn count(&self, hash: u64) -> u8 {
        self.rows
            .iter()
            .zip(self.slots(hash))
            .map(|(row, slot)| row[slot].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    fn age(&self) {
        self.aging.fetch_add(1, Ordering::Relaxed);
        for row in &self.rows {
            for counter in row {
                let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c / 2));
            }
        }
    }
}

/// foyer's admission filter: nothing when the disk tier is out of service; with
/// `second-hit`, once the tier has taken its size, only chunks asked for twice.
#[derive(Debug)]
pub struct Admit {
    pub health: Arc<DiskHealth>,
    pub sketch: Arc<Sketch>,
    pub rule: Admission,
    /// The disk tier's size, and the bytes admitted so far.
    pub capacity: u64,
    pub admitted: Arc<AtomicU64>,
}

impl Admit {
    pub fn new(health: Arc<DiskHealth>, sketch: Arc<Sketch>, rule: Admission, capacity: u64) -> Self {
        Self {
            health,
            sketch,
            rule,
            capacity,
            admitted: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Whether the tier has taken its size (from then on, the second-hit rule).
    pub fn full(admitted: &AtomicU64, capacity: u64) -> bool {
        admitted.load(Ordering::Relaxed) >= capacity
    }
}

impl StorageFilterCondition for Admit {
    fn filter(&self, _: &Arc<Statistics>, hash: u64, size: usize) -> StorageFilterResult {
        let admitted = !self.health.is_out()
            && match self.rule {
                Admission::All | Admission::Frequency => true,
                Admission::SecondHit => !Self::full(&self.admitted, self.capacity) || self.sketch.count(hash) >= 2,
            };
        if admitted {
            self.admitted.fetch_add(size as u64, Ordering::Relaxed);
        }
        match admitted {
            true => StorageFilterResult::Admit,
            false => StorageFilterResult::Reject,
        }
    }
}

/// foyer's reinsertion filter, asked for each chunk of a block being reclaimed:
/// kept (written anew) when it was looked up again since it was first asked for.
#[derive(Debug)]
pub struct Keep {
    pub health: Arc<DiskHealth>,
    pub sketch: Arc<Sketch>,
    pub rule: Admission,
}

impl StorageFilterCondition for Keep {
    fn filter(&self, _: &Arc<Statistics>, hash: u64, _: usize) -> StorageFilterResult {
        let kept = !self.health.is_out()
            && match self.rule {
                Admission::All => false,
                Admission::Frequency | Admission::SecondHit => self.sketch.count(hash) >= 2,
            };
        match kept {
            true => StorageFilterResult::Admit,
            false => StorageFilterResult::Reject,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sketch_counts_lookups_and_forgets_old_ones() {
        let sketch = Sketch::new(256);
        assert_eq!(sketch.count(42), 0);
        assert_eq!(sketch.touch(42), 1);
        assert_eq!(sketch.touch(42), 2);
        assert_eq!(sketch.count(42), 2);
        assert_eq!(sketch.count(43), 0, "another key is not counted");
        for _ in 0..100 {
            sketch.touch(7);
        }
        assert_eq!(sketch.count(7), MAX_COUNT, "saturates");
        // Many lookups of other keys age the counts.
        let width = sketch.mask + 1;
        for i in 0..10 * width {
            sketch.touch(1_000_000 + i);
        }
        assert!(sketch.count(7) < MAX_COUNT, "{}", sketch.count(7));
    }

    #[test]
    fn second_hit_admits_what_was_asked_for_twice_and_frequency_keeps_it() {
        let health = Arc::new(DiskHealth::default());
        let sketch = Arc::new(Sketch::new(256));
        let stats = Arc::new(Statistics::new(foyer::Throttle::default()));
        // A full disk tier: the second-hit rule applies.
        let admit = |rule| {
            let admit = Admit::new(health.clone(), sketch.clone(), rule, 1 << 20);
            admit.admitted.store(1 << 20, Ordering::Relaxed);
            admit
        };
        let keep = |rule| Keep {
            health: health.clone(),
            sketch: sketch.clone(),
            rule,
        };
        sketch.touch(1);
        let filling = Admit::new(health.clone(), sketch.clone(), Admission::SecondHit, 2 << 20);
        assert!(filling.filter(&stats, 1, 1 << 20).is_admitted(), "room left: taken");
        assert!(filling.filter(&stats, 1, 1 << 20).is_admitted(), "room left: taken");
        assert!(filling.filter(&stats, 1, 1 << 20).is_rejected(), "full: asked for once");
        assert!(admit(Admission::SecondHit).filter(&stats, 1, 0).is_rejected());
        assert!(admit(Admission::Frequency).filter(&stats, 1, 0).is_admitted());
        assert!(
            keep(Admission::Frequency).filter(&stats, 1, 0).is_rejected(),
            "read once"
        );
        sketch.touch(1);
        assert!(admit(Admission::SecondHit).filter(&stats, 1, 0).is_admitted());
        assert!(
            keep(Admission::Frequency).filter(&stats, 1, 0).is_admitted(),
            "read again"
        );
        assert!(keep(Admission::All).filter(&stats, 1, 0).is_rejected(), "plain FIFO");
        health.fail("full".into());
        assert!(
            admit(Admission::All).filter(&stats, 1, 0).is_rejected(),
            "out of service"
        );
        assert!(keep(Admission::Frequency).filter(&stats, 1, 0).is_rejected());
    }
}
