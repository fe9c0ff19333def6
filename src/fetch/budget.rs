//! The memory a node's chunks in flight may take, bounded by configuration however
//! many clients read or how slowly: fill slots (chunks being downloaded, over all
//! requests: the origin budget's bound) and the read-ahead budget (chunks held for
//! responses).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cache::CacheKey;

/// Fill memory as slots of one chunk each: `fill_memory / chunk_size`, at least one.
pub fn fill_slots(fill_memory: u64, chunk_size: u64) -> usize {
    (fill_memory / chunk_size).max(1) as usize
}

/// Chunk bytes held for responses, all responses together, in KiB: memory stays
/// bounded by configuration however many clients read, or how slowly. A chunk is
/// counted once however many responses hold it (they share its bytes), at its own
/// length (a small object's chunk is small). A response's first chunk is taken
/// from the whole budget; the chunks it reads ahead must also fit in a part of it,
/// so that a crowd reading ahead never keeps a new response from its first byte.
/// The responses of one connection hold at most their connection's share.
pub struct ReadAheadBudget {
    total: Arc<Semaphore>,
    ahead: Arc<Semaphore>,
    /// How long a first chunk waits for room before the answer is 503 SlowDown.
    wait: Duration,
    /// Chunks held by responses now, each counted once.
    held: Mutex<HashMap<CacheKey, Weak<Charge>>>,
}

/// One connection's share of the budget, in KiB (every stream of an h2 connection
/// draws on the same one).
#[derive(Clone)]
pub struct ConnectionShare(Arc<Semaphore>);

impl ConnectionShare {
    pub fn new(bytes: u64) -> Self {
        Self(Arc::new(Semaphore::new(kib(bytes))))
    }
}

fn kib(bytes: u64) -> usize {
    bytes.div_ceil(1024) as usize
}

/// The budget held for one chunk, returned when the last response holding the
/// chunk's bytes lets go of them.
pub struct Charge {
    key: CacheKey,
    budget: Arc<ReadAheadBudget>,
    _permits: Vec<OwnedSemaphorePermit>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        let mut held = self.budget.held.lock().expect("held chunks");
        // Only this charge's own entry: a new charge for the key may have replaced it.
        if held.get(&self.key).is_some_and(|weak| weak.strong_count() == 0) {
            held.remove(&self.key);
        }
    }
}

/// A response's hold on a chunk: the chunk's charge (shared), and the part of its
/// connection's share it draws (its own).
pub struct Held {
    _charge: Arc<Charge>,
    _share: Option<OwnedSemaphorePermit>,
}

/// No room in the budget within `cache.read_ahead_wait`.
#[derive(Debug, thiserror::Error)]
#[error("no room for the response within {0:?} (cache.read_ahead_memory is held by other responses)")]
pub struct Busy(pub Duration);

impl ReadAheadBudget {
    /// `bytes` of budget for chunks of `chunk_size` (which it must hold at least once),
    /// half of it at most for chunks read ahead of the one a client waits for.
    pub fn new(bytes: u64, chunk_size: u64, wait: Duration) -> Self {
        let bytes = bytes.max(chunk_size);
        let ahead = (bytes / 2).max(chunk_size);
        Self {
            total: Arc::new(Semaphore::new(kib(bytes))),
            ahead: Arc::new(Semaphore::new(kib(ahead))),
            wait,
            held: Mutex::default(),
        }
    }

    /// Room for chunk `key` of `bytes`: the response's own part of its connection's
    /// `share`, and the chunk's charge on the whole budget, shared with the responses
    /// already holding it. `ahead` for a chunk read ahead of the one the client waits
    /// for. Waits `wait` at most for a chunk a client waits for; a chunk read ahead
    /// waits as long as its response lives.
    pub async fn reserve(
        self: &Arc<Self>,
        key: &CacheKey,
        bytes: u64,
        ahead: bool,
        share: Option<&ConnectionShare>,
    ) -> Result<Arc<Held>, Busy> {
        let need = kib(bytes) as u32;
        let take = |semaphore: &Arc<Semaphore>| semaphore.clone().acquire_many_owned(need);
        let reserved = async {
            // Every holder draws on its own connection's share, shared chunk or not: a
            // connection's responses never hold more than it, whoever filled them.
            let share = match share {
                Some(share) => Some(take(&share.0).await.expect("a share is never closed")),
                None => None,
            };
            if let Some(charge) = self.held(key) {
                return Held {
                    _charge: charge,
                    _share: share,
                };
            }
            let mut permits = Vec::with_capacity(2);
            if ahead {
                permits.push(take(&self.ahead).await.expect("the read-ahead budget is never closed"));
            }
            permits.push(take(&self.total).await.expect("the read-ahead budget is never closed"));
            let mut held = self.held.lock().expect("held chunks");
            // Another response may have taken the chunk meanwhile: share its charge, and
            // give these permits back.
            let charge = match held.get(key).and_then(Weak::upgrade) {
                Some(charge) => charge,
                None => {
                    let charge = Arc::new(Charge {
                        key: key.clone(),
                        budget: self.clone(),
                        _permits: permits,
                    });
                    held.insert(key.clone(), Arc::downgrade(&charge));
                    charge
                }
            };
            Held {
                _charge: charge,
                _share: share,
            }
        };
        let held = match ahead {
            true => reserved.await,
            false => tokio::time::timeout(self.wait, reserved)
                .await
                .map_err(|_| Busy(self.wait))?,
        };
        Ok(Arc::new(held))
    }

    fn held(&self, key: &CacheKey) -> Option<Arc<Charge>> {
        self.held.lock().expect("held chunks").get(key).and_then(Weak::upgrade)
    }
}

/// A chunk slice handed to a client, holding its chunk's share of the read-ahead
/// budget until the last reference to it (hyper's, once written) is gone.
pub struct Budgeted {
    bytes: Bytes,
    _held: Option<Arc<Held>>,
}

impl Budgeted {
    pub fn new(bytes: Bytes, held: Option<Arc<Held>>) -> Self {
        Self { bytes, _held: held }
    }
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}
