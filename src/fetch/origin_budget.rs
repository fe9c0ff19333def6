//! The origin budget: how many fills this node sends the origin at once and how
//! many bytes a second they may bring, given out by priority. A client waiting on a
//! chunk comes first, then read-ahead, then warming (prefetch, pins); within a
//! priority, first come first served. With peers, each node takes the share of the
//! region's bounds that it owns of the keys (every origin fill of a chunk happens
//! at its owner).
//!
//! Bytes are a token bucket charged a fill's whole length when it is let go (a
//! fill streams once started: it cannot be paused halfway). Warming is let go only
//! when a chunk's worth of tokens stays after it, and never takes the fill slots
//! kept for live reads: a client that comes while prefetch runs finds room at once.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::cache::CacheKey;
use crate::telemetry;

/// Who waits for a fill, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// A client waits for this chunk now.
    Client = 0,
    /// A response will want this chunk soon (its read-ahead).
    ReadAhead = 1,
    /// No one waits: prefetch, pins, warming.
    Background = 2,
}

impl Priority {
    pub const ALL: [Self; 3] = [Self::Client, Self::ReadAhead, Self::Background];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::ReadAhead => "read-ahead",
            Self::Background => "background",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == text)
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Client,
            1 => Self::ReadAhead,
            _ => Self::Background,
        }
    }
}

/// Bounds on origin fills; `None`: unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Fills sent at once.
    pub fills: Option<usize>,
    pub bytes_per_sec: Option<u64>,
}

/// This node's share of the region now (with peers: the part of the keys it owns).
pub type Share = Box<dyn Fn() -> f64 + Send + Sync>;

/// One node's origin budget.
pub struct OriginBudget {
    node: Limits,
    region: Option<(Limits, Share)>,
    chunk_size: u64,
    state: Mutex<State>,
    /// The priority of each chunk being fetched now (from the origin here, or from
    /// its owner), which a reader that comes to wait for it raises.
    urgency: Mutex<Urgency>,
}

#[derive(Default)]
struct Urgency {
    chunks: std::collections::HashMap<CacheKey, Weak<AtomicU8>>,
    /// The size at which the map is next swept of fetches that ended.
    next_sweep: usize,
}

/// The priority of one chunk's fetch, shared by everything that fetches it (a
/// reader asking the owner, its fill if it comes to that) and raised by readers
/// that come to wait for it.
#[derive(Clone)]
pub struct Urgent(Arc<AtomicU8>);

impl Urgent {
    /// Its priority now.
    pub fn get(&self) -> Priority {
        Priority::from_u8(self.0.load(Ordering::Relaxed))
    }
}

struct State {
    running: usize,
    tokens: f64,
    refilled: Instant,
    /// In arrival order.
    waiting: Vec<Waiter>,
    arrivals: u64,
    /// When the wake-up set for the tokens the first in line needs comes.
    timer: Option<Instant>,
}

struct Waiter {
    arrival: u64,
    priority: Urgent,
    bytes: u64,
    since: Instant,
    grant: oneshot::Sender<Turn>,
}

impl Waiter {
    fn priority(&self) -> Priority {
        self.priority.get()
    }
}

/// A fill's leave to go to the origin; its slot is given back when dropped.
pub struct Turn {
    budget: Arc<OriginBudget>,
    /// Bytes charged to the bucket, given back by [`Turn::unused`].
    charged: f64,
}

impl Turn {
    /// The turn was not used: its bytes go back to the bucket.
    pub fn unused(self) {
        self.budget.state.lock().expect("origin budget").tokens += self.charged;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.budget.state.lock().expect("origin budget").running -= 1;
        self.budget.pump();
    }
}

/// The bounds in force now: the node's, and its share of the region's.
#[derive(Debug, Clone, Copy)]
struct Now {
    fills: usize,
    bytes_per_sec: Option<u64>,
    /// The bucket's size: a second of the rate, and at least two chunks.
    burst: f64,
    chunk_size: u64,
}

impl Now {
    /// Fill slots `priority` may take: warming leaves a quarter (at least one) to live
    /// reads.
    fn slots(&self, priority: Priority) -> usize {
        match priority {
            Priority::Background if self.fills >= 2 => self.fills - (self.fills / 4).max(1),
            _ => self.fills,
        }
    }

    /// Tokens there must be to let a fill of `bytes` go: warming leaves a chunk's
    /// worth behind it.
    fn needs(&self, priority: Priority, bytes: u64) -> f64 {
        let headroom = match priority {
            Priority::Background => self.chunk_size,
            _ => 0,
        };
        ((bytes + headroom) as f64).min(self.burst)
    }
}

impl OriginBudget {
    /// `node`'s bounds (its fills at most `fill_slots`, what the fill memory holds),
    /// and the region's with this node's share of it.
    pub fn new(node: Limits, fill_slots: usize, region: Option<(Limits, Share)>, chunk_size: u64) -> Arc<Self> {
        let node = Limits {
            fills: Some(node.fills.map_or(fill_slots, |n| n.min(fill_slots)).max(1)),
            ..node
        };
        Arc::new(Self {
            node,
            region,
            chunk_size,
            state: Mutex::new(State {
                running: 0,
                tokens: 0.0,
                refilled: Instant::now(),
                waiting: Vec::new(),
                arrivals: 0,
                timer: None,
            }),
            urgency: Mutex::default(),
        })
        .filled()
    }

    /// Starts with a full bucket.
    fn filled(self: Arc<Self>) -> Arc<Self> {
        let burst = self.now().burst;
        self.state.lock().expect("origin budget").tokens = burst;
        self
    }

    fn now(&self) -> Now {
        let mut fills = self.node.fills.unwrap_or(usize::MAX);
        let mut rate = self.node.bytes_per_sec;
        if let Some((region, share)) = &self.region {
            let share = share().clamp(0.0, 1.0);
            if let Some(total) = region.fills {
                // (A hair over, so that 22 × 15/22 is 15, not 14.999.)
                fills = fills.min(((total as f64 * share + 1e-9) as usize).max(1));
            }
            if let Some(total) = region.bytes_per_sec {
                let share = ((total as f64 * share) as u64).max(1);
                rate = Some(rate.map_or(share, |rate| rate.min(share)));
            }
        }
        let burst = rate.map_or(f64::INFINITY, |rate| (rate as f64).max(2.0 * self.chunk_size as f64));
        Now {
            fills,
            bytes_per_sec: rate,
            burst,
            chunk_size: self.chunk_size,
        }
    }

    /// The priority of the fetch of chunk `key` (at least `priority`: a fetch of it
    /// already waiting at a lower one is raised), shared with whatever fetches it.
    pub fn urgency(self: &Arc<Self>, key: &CacheKey, priority: Priority) -> Urgent {
        let (cell, raised) = {
            let mut urgency = self.urgency.lock().expect("urgency");
            match urgency.chunks.get(key).and_then(Weak::upgrade) {
                Some(cell) => {
                    let raised = cell.fetch_min(priority as u8, Ordering::Relaxed) > priority as u8;
                    (cell, raised)
                }
                None => {
                    let cell = Arc::new(AtomicU8::new(priority as u8));
                    urgency.chunks.insert(key.clone(), Arc::downgrade(&cell));
                    if urgency.chunks.len() >= urgency.next_sweep {
                        urgency.chunks.retain(|_, cell| cell.strong_count() > 0);
                        urgency.next_sweep = (urgency.chunks.len() * 2).max(1024);
                    }
                    (cell, false)
                }
            }
        };
        if raised {
            self.pump();
        }
        Urgent(cell)
    }

    /// Waits for the turn of a fill of `bytes` at `priority` (which a later reader
    /// may raise).
    pub async fn turn(self: &Arc<Self>, priority: Urgent, bytes: u64) -> Turn {
        let (grant, granted) = oneshot::channel();
        {
            let mut state = self.state.lock().expect("origin budget");
            state.arrivals += 1;
            let waiter = Waiter {
                arrival: state.arrivals,
                priority,
                bytes,
                since: Instant::now(),
                grant,
            };
            state.waiting.push(waiter);
        }
        self.pump();
        granted.await.expect("a waiter is dropped only once its receiver is")
    }

    /// A turn at once, at `priority`, for bytes already on their way (a cold
    /// probe's body), if no fill as urgent waits and its turn would be given now
    /// (a slot, and the bucket, which it may leave a bucket in debt at most).
    pub fn try_turn(self: &Arc<Self>, bytes: u64, priority: Priority) -> Option<Turn> {
        let now = self.now();
        let mut state = self.state.lock().expect("origin budget");
        state.waiting.retain(|w| !w.grant.is_closed());
        let ahead = state.waiting.iter().any(|w| w.priority() <= priority);
        if ahead || state.running >= now.slots(priority) {
            return None;
        }
        state.refill(&now);
        if now.bytes_per_sec.is_some() && state.tokens < now.needs(priority, 1) {
            return None;
        }
        state.running += 1;
        let charged = match now.bytes_per_sec {
            Some(_) => {
                let charged = (bytes as f64).min(state.tokens + now.burst);
                state.tokens -= charged;
                charged
            }
            None => 0.0,
        };
        Some(Turn {
            budget: self.clone(),
            charged,
        })
    }

    /// A reader now waits at `priority` for chunk `key`: its fetch, if it waits for
    /// its turn (here, or at its owner) at a lower priority, waits at this one from
    /// now on.
    pub fn raise(self: &Arc<Self>, key: &CacheKey, priority: Priority) {
        let cell = self
            .urgency
            .lock()
            .expect("urgency")
            .chunks
            .get(key)
            .and_then(Weak::upgrade);
        if cell.is_some_and(|cell| cell.fetch_min(priority as u8, Ordering::Relaxed) > priority as u8) {
            self.pump();
        }
    }

    /// Lets go every fill whose turn it is, most urgent first; stops at the first that
    /// must wait (nothing less urgent passes it), and sets a wake-up when it waits
    /// for tokens.
    fn pump(self: &Arc<Self>) {
        let now = self.now();
        let mut granted = Vec::new();
        let mut wake = None;
        {
            let mut state = self.state.lock().expect("origin budget");
            state.refill(&now);
            state.waiting.retain(|w| !w.grant.is_closed());
            while let Some(at) = state.first_in_line() {
                let waiter = &state.waiting[at];
                let priority = waiter.priority();
                if state.running >= now.slots(priority) {
                    break;
                }
                if let Some(rate) = now.bytes_per_sec {
                    let needs = now.needs(priority, waiter.bytes);
                    if state.tokens < needs {
                        wake = Some(Duration::from_secs_f64((needs - state.tokens) / rate as f64));
                        break;
                    }
                    state.tokens -= waiter.bytes as f64;
                }
                state.running += 1;
                granted.push(state.waiting.swap_remove(at));
            }
            // A wake-up set for later than this one is overtaken (a more urgent fill
            // came, which needs fewer tokens); one set sooner, and still to come, stands.
            let due = wake.map(|after| Instant::now() + after);
            match (due, state.timer) {
                (Some(due), Some(set)) if set <= due && set > Instant::now() => wake = None,
                (Some(due), _) => state.timer = Some(due),
                (None, _) => {}
            }
            let waiting = |p: Priority| state.waiting.iter().filter(|w| w.priority() == p).count();
            for priority in Priority::ALL {
                metrics::gauge!(telemetry::FILLS_WAITING, "priority" => priority.as_str())
                    .set(waiting(priority) as f64);
            }
        }
        metrics::gauge!(telemetry::ORIGIN_BUDGET_FILLS).set(now.fills as f64);
        metrics::gauge!(telemetry::ORIGIN_BUDGET_RATE).set(now.bytes_per_sec.map_or(0.0, |r| r as f64));
        for waiter in granted {
            let seconds = waiter.since.elapsed().as_secs_f64();
            metrics::histogram!(telemetry::FILL_WAIT_SECONDS, "priority" => waiter.priority().as_str()).record(seconds);
            let turn = Turn {
                budget: self.clone(),
                charged: if now.bytes_per_sec.is_some() {
                    waiter.bytes as f64
                } else {
                    0.0
                },
            };
            // A waiter gone meanwhile: its turn goes back, which lets the next one go.
            if let Err(turn) = waiter.grant.send(turn) {
                turn.unused();
            }
        }
        if let Some(after) = wake {
            let budget = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                if let Some(budget) = Weak::upgrade(&budget) {
                    let mut state = budget.state.lock().expect("origin budget");
                    if state.timer.is_some_and(|due| due <= Instant::now()) {
                        state.timer = None;
                    }
                    drop(state);
                    budget.pump();
                }
            });
        }
    }
}

/// What `/admin/origin-budget` shows.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    /// Fills this node may send at once now; `null` bytes: unbounded.
    pub fills: usize,
    pub bytes_per_sec: Option<u64>,
    pub running: usize,
    /// Fills waiting for their turn, by priority.
    pub waiting: std::collections::BTreeMap<&'static str, usize>,
}

impl OriginBudget {
    pub fn status(&self) -> Status {
        let now = self.now();
        let state = self.state.lock().expect("origin budget");
        Status {
            fills: now.fills,
            bytes_per_sec: now.bytes_per_sec,
            running: state.running,
            waiting: Priority::ALL
                .into_iter()
                .map(|p| (p.as_str(), state.waiting.iter().filter(|w| w.priority() == p).count()))
                .collect(),
        }
    }
}

impl State {
    fn refill(&mut self, now: &Now) {
        let at = Instant::now();
        if let Some(rate) = now.bytes_per_sec {
            let gained = at.duration_since(self.refilled).as_secs_f64() * rate as f64;
            self.tokens = (self.tokens + gained).min(now.burst);
        }
        self.refilled = at;
    }

    /// The most urgent waiter, the first come of its priority.
    fn first_in_line(&self) -> Option<usize> {
        (0..self.waiting.len()).min_by_key(|&at| (self.waiting[at].priority(), self.waiting[at].arrival))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn budget(fills: usize, bytes_per_sec: Option<u64>) -> Arc<OriginBudget> {
        let limits = Limits {
            fills: Some(fills),
            bytes_per_sec,
        };
        OriginBudget::new(limits, 64, None, MIB)
    }

    /// Queues a fill at `priority` that records its turn in `order` and returns it.
    fn queue(
        budget: &Arc<OriginBudget>,
        name: &'static str,
        priority: Priority,
        order: &Arc<Mutex<Vec<&'static str>>>,
    ) -> tokio::task::JoinHandle<Turn> {
        let (budget, order) = (budget.clone(), order.clone());
        tokio::spawn(async move {
            let turn = budget.turn(anonymous(priority), MIB).await;
            order.lock().unwrap().push(name);
            turn
        })
    }

    /// Chunk `index` of an object of 1 MiB chunks.
    fn chunk_key(index: u64) -> CacheKey {
        let object = crate::cache::ObjectId {
            origin: "http://origin".into(),
            bucket: "b".into(),
            key: "k".into(),
            version_id: None,
        };
        CacheKey::chunk(&object, "\"e\"", MIB, index)
    }

    /// The priority of a fill no reader can raise.
    fn anonymous(priority: Priority) -> Urgent {
        Urgent(Arc::new(AtomicU8::new(priority as u8)))
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn the_most_urgent_waiter_goes_first_whoever_came_first() {
        let budget = budget(1, None);
        let order = Arc::default();
        let first = budget.turn(anonymous(Priority::Background), MIB).await;
        let background = queue(&budget, "background", Priority::Background, &order);
        settle().await;
        let ahead = queue(&budget, "read-ahead", Priority::ReadAhead, &order);
        settle().await;
        let client = queue(&budget, "client", Priority::Client, &order);
        settle().await;
        assert!(order.lock().unwrap().is_empty(), "one slot, held");
        drop(first);
        drop(client.await.unwrap());
        drop(ahead.await.unwrap());
        drop(background.await.unwrap());
        assert_eq!(*order.lock().unwrap(), ["client", "read-ahead", "background"]);
    }

    #[tokio::test]
    async fn warming_leaves_slots_to_live_reads() {
        let budget = budget(4, None);
        let order = Arc::default();
        let mut warming: Vec<_> = (0..4)
            .map(|_| queue(&budget, "background", Priority::Background, &order))
            .collect();
        settle().await;
        assert_eq!(
            order.lock().unwrap().len(),
            3,
            "a quarter of the slots is kept for live reads"
        );
        let client = budget.turn(anonymous(Priority::Client), MIB).await;
        drop(client);
        let last = warming.pop().unwrap();
        let held: Vec<Turn> = futures_util::future::join_all(warming)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        drop(held);
        drop(last.await.unwrap());
    }

    #[tokio::test]
    async fn a_raised_fill_goes_before_the_warming_ahead_of_it() {
        let budget = budget(1, None);
        let order = Arc::default();
        let first = budget.turn(anonymous(Priority::Client), MIB).await;
        let warm = queue(&budget, "warm", Priority::Background, &order);
        let key = chunk_key(3);
        let raised = {
            let (budget, order, key) = (budget.clone(), order.clone(), key.clone());
            tokio::spawn(async move {
                let urgency = budget.urgency(&key, Priority::Background);
                let turn = budget.turn(urgency, MIB).await;
                order.lock().unwrap().push("raised");
                turn
            })
        };
        settle().await;
        budget.raise(&key, Priority::Client);
        drop(first);
        drop(raised.await.unwrap());
        drop(warm.await.unwrap());
        assert_eq!(*order.lock().unwrap(), ["raised", "warm"]);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_a_second_bound_the_fills() {
        // 4 MiB/s: a full bucket (4 MiB) at once, then a chunk every quarter second.
        let budget = budget(64, Some(4 * MIB));
        let started = Instant::now();
        for _ in 0..12 {
            drop(budget.turn(anonymous(Priority::Client), MIB).await);
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1990) && took < Duration::from_millis(2100),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn warming_waits_while_clients_use_the_bytes() {
        let budget = budget(64, Some(4 * MIB));
        let order: Arc<Mutex<Vec<&str>>> = Arc::default();
        // The bucket is emptied by live reads; warming and a client then wait for it.
        for _ in 0..4 {
            drop(budget.turn(anonymous(Priority::Client), MIB).await);
        }
        let warm = queue(&budget, "warm", Priority::Background, &order);
        settle().await;
        let client = queue(&budget, "client", Priority::Client, &order);
        drop(client.await.unwrap());
        drop(warm.await.unwrap());
        assert_eq!(*order.lock().unwrap(), ["client", "warm"]);
    }

    #[tokio::test]
    async fn a_client_joining_a_warming_fill_lets_it_go_at_once() {
        let budget = budget(4, None);
        // Warming holds the three slots it may take; a fourth warming fill waits.
        let held: Vec<Turn> =
            futures_util::future::join_all((0..3).map(|_| budget.turn(anonymous(Priority::Background), MIB))).await;
        let key = chunk_key(7);
        let waiting = {
            let (budget, key) = (budget.clone(), key.clone());
            tokio::spawn(async move { budget.turn(budget.urgency(&key, Priority::Background), MIB).await })
        };
        settle().await;
        assert!(!waiting.is_finished(), "warming left the last slot to live reads");
        // A client asks for the same chunk: the fill is the client's now, and goes.
        let _client = budget.urgency(&key, Priority::Client);
        let turn = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(turn.is_ok(), "the raised fill still waits");
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_does_not_wait_for_the_wake_up_set_for_warming() {
        let budget = budget(64, Some(4 * MIB));
        for _ in 0..4 {
            drop(budget.turn(anonymous(Priority::Client), MIB).await);
        }
        // Warming needs two chunks of tokens (half a second); a client one (a quarter).
        let order = Arc::default();
        let warm = queue(&budget, "warm", Priority::Background, &order);
        settle().await;
        let asked = Instant::now();
        drop(budget.turn(anonymous(Priority::Client), MIB).await);
        let waited = asked.elapsed();
        assert!(waited <= Duration::from_millis(260), "{waited:?}");
        drop(warm.await.unwrap());
    }

    #[tokio::test]
    async fn a_cold_probes_body_leaves_the_bucket_a_bucket_in_debt_at_most() {
        let bucket = budget(64, Some(4 * MIB));
        // 40 MiB of probe bodies against a bucket of 4 MiB: the first takes the bucket
        // into debt, the next find no tokens and are refused.
        let first = bucket.try_turn(40 * MIB, Priority::Client).expect("a full bucket");
        assert!(bucket.try_turn(MIB, Priority::Client).is_none(), "no tokens left");
        drop(first);
        let tokens = bucket.state.lock().unwrap().tokens;
        assert!(tokens >= -4.0 * MIB as f64 - 1.0, "{tokens}");
        // With warming waiting, a client's probe still goes; a background one does not.
        let budget = budget(4, None);
        let order = Arc::default();
        let held: Vec<Turn> =
            futures_util::future::join_all((0..3).map(|_| budget.turn(anonymous(Priority::Background), MIB))).await;
        let waiting = queue(&budget, "warm", Priority::Background, &order);
        settle().await;
        assert!(budget.try_turn(MIB, Priority::Background).is_none());
        let turn = budget
            .try_turn(MIB, Priority::Client)
            .expect("a live read's probe goes");
        drop((turn, held));
        drop(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn a_node_takes_its_share_of_the_region() {
        let share = Arc::new(Mutex::new(0.25));
        let current = share.clone();
        let region = Limits {
            fills: Some(8),
            bytes_per_sec: Some(400 * MIB),
        };
        let node = Limits {
            fills: None,
            bytes_per_sec: Some(300 * MIB),
        };
        let budget = OriginBudget::new(
            node,
            64,
            Some((region, Box::new(move || *current.lock().unwrap()))),
            MIB,
        );
        assert_eq!((budget.now().fills, budget.now().bytes_per_sec), (2, Some(100 * MIB)));
        *share.lock().unwrap() = 1.0;
        assert_eq!(
            (budget.now().fills, budget.now().bytes_per_sec),
            (8, Some(300 * MIB)),
            "the node's own bound holds too"
        );
        *share.lock().unwrap() = 1.0 / 16.0;
        assert_eq!(budget.now().fills, 1, "every member fills at least one chunk at a time");
    }
}
