//! Owners that said they are stopping. A node told SIGTERM tells its peers at once
//! (`POST /peer/v1/leaving`): in a rollout it comes back in seconds under its name,
//! its disk intact. A reader whose chunk's owner has stopped answering then waits
//! for it (one prober per owner, `peers.restart_wait` at most from when it was
//! first found down) instead of filling the owner's share from the origin, and asks
//! it once more when it is back. An owner that does not come back in time is any
//! dead peer; one that still answers under the same boot is alive (still draining)
//! and failed that chunk as any peer may.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long a departure is remembered while its node is not found down (a drain
/// longer than this is no restart to wait for).
const REMEMBERED: Duration = Duration::from_secs(600);
/// How many boots that did not come back are remembered.
const GONE_REMEMBERED: usize = 256;
/// How often a prober asks a stopped owner whether it is back.
const PROBE_EVERY: Duration = Duration::from_millis(200);

pub struct Departures {
    map: Mutex<HashMap<String, Departure>>,
    /// Boots that stopped and did not come back in time, newest last: a notice of
    /// theirs seen again (a replay, a retry) is not waited for twice.
    gone: Mutex<std::collections::VecDeque<(String, String)>>,
    /// Stopped nodes that came back under a new boot, and when: members still, even
    /// before discovery lists them again.
    returned: Mutex<HashMap<String, Instant>>,
    /// `peers.restart_wait`; zero: nothing is waited for.
    restart_wait: Duration,
}

struct Departure {
    /// The boot that said it is stopping: a hello from another boot is the return.
    boot_id: String,
    said: Instant,
    /// When it was first found down (by a reader, or by a membership refresh it
    /// did not answer): the wait is counted from there.
    down: Option<Instant>,
    /// The round of probing under way, if any.
    probing: Option<watch::Receiver<Option<Return>>>,
}

/// How a round of probing ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Return {
    /// A new boot answers: back, with its disk.
    Back,
    /// The same boot answers: alive (still draining); not a restart to wait for.
    Alive,
    /// Nothing answered within the wait.
    Gone,
}

/// What a reader that found a stopping owner down does.
pub enum Wait {
    /// The node was never said to be stopping, or its time is up: a failed peer.
    NotAwaited,
    /// Wait on the round of probing under way.
    Probe(watch::Receiver<Option<Return>>),
    /// Start a round of probing for a boot other than `boot_id`, until `deadline`,
    /// telling its outcome on `outcome`.
    Start {
        boot_id: String,
        deadline: Instant,
        outcome: watch::Sender<Option<Return>>,
    },
}

impl Departures {
    pub fn new(restart_wait: Duration) -> Self {
        Self {
            map: Mutex::default(),
            gone: Mutex::default(),
            returned: Mutex::default(),
            restart_wait,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Departure>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `node`, in its boot `boot_id`, said it is stopping. Said again (a retry, a
    /// replay), it changes nothing.
    pub fn said(&self, node: &str, boot_id: &str, now: Instant) {
        if self.restart_wait.is_zero() {
            return;
        }
        let key = (node.to_owned(), boot_id.to_owned());
        if self.gone.lock().unwrap_or_else(|p| p.into_inner()).contains(&key) {
            return;
        }
        let mut map = self.map();
        if map.get(node).is_some_and(|d| d.boot_id == boot_id) {
            return;
        }
        map.insert(
            node.to_owned(),
            Departure {
                boot_id: boot_id.to_owned(),
                said: now,
                down: None,
                probing: None,
            },
        );
    }

    /// Whether `node` said it is stopping and may still be waited for.
    pub fn leaving(&self, node: &str, now: Instant) -> bool {
        let mut map = self.map();
        match map.get(node) {
            Some(departure) if self.awaited(departure, now) => true,
            Some(_) => {
                map.remove(node);
                false
            }
            None => false,
        }
    }

    /// Whether `node` is waited for now (found down, its time not up): it stays a
    /// member meanwhile.
    pub fn waited_for(&self, node: &str, now: Instant) -> bool {
        self.map()
            .get(node)
            .and_then(|d| d.down)
            .is_some_and(|down| now < down + self.restart_wait)
    }

    /// Whether `node` came back from a restart less than `within` ago.
    pub fn returned_within(&self, node: &str, now: Instant, within: Duration) -> bool {
        self.returned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .is_some_and(|at| now.saturating_duration_since(*at) < within)
    }

    /// A reader found `node` down: what to wait on.
    pub fn wait(&self, node: &str, now: Instant) -> Wait {
        let mut map = self.map();
        let Some(departure) = map.get_mut(node) else {
            return Wait::NotAwaited;
        };
        if !self.awaited(departure, now) {
            map.remove(node);
            return Wait::NotAwaited;
        }
        let down = *departure.down.get_or_insert(now);
        if let Some(probing) = departure.probing.as_ref().filter(|p| p.borrow().is_none()) {
            return Wait::Probe(probing.clone());
        }
        let (outcome, probing) = watch::channel(None);
        departure.probing = Some(probing);
        Wait::Start {
            boot_id: departure.boot_id.clone(),
            deadline: down + self.restart_wait,
            outcome,
        }
    }

    /// The roster asked `node`, which said it is stopping, and it did not answer:
    /// found down (the wait for its restart counts from now), whether or not a
    /// reader has needed it yet.
    pub fn found_down(&self, node: &str, now: Instant) {
        let mut map = self.map();
        if let Some(departure) = map.get_mut(node) {
            if self.awaited(departure, now) {
                departure.down.get_or_insert(now);
            }
        }
    }

    /// `node` answered a hello under boot `boot_id`: a new boot is back for good;
    /// the stopping boot is alive, not down (a failure while it drains does not
    /// spend the wait for its restart).
    pub fn heard(&self, node: &str, boot_id: &str) {
        let mut map = self.map();
        match map.get_mut(node) {
            Some(departure) if departure.boot_id != boot_id => {
                map.remove(node);
                let mut returned = self.returned.lock().unwrap_or_else(|p| p.into_inner());
                returned.retain(|_, at| at.elapsed() < REMEMBERED);
                returned.insert(node.to_owned(), Instant::now());
            }
            Some(departure) => {
                departure.down = None;
                departure.probing = None;
            }
            None => {}
        }
    }

    /// `node`'s boot `boot_id` did not come back in time: any dead peer now.
    pub fn gone(&self, node: &str, boot_id: &str) {
        let mut map = self.map();
        if map.get(node).is_some_and(|d| d.boot_id == boot_id) {
            map.remove(node);
        }
        let mut gone = self.gone.lock().unwrap_or_else(|p| p.into_inner());
        gone.push_back((node.to_owned(), boot_id.to_owned()));
        if gone.len() > GONE_REMEMBERED {
            gone.pop_front();
        }
    }

    /// Still worth waiting for: found down less than `restart_wait` ago, or not found
    /// down yet and said lately.
    fn awaited(&self, departure: &Departure, now: Instant) -> bool {
        match departure.down {
            Some(down) => now < down + self.restart_wait,
            None => !self.restart_wait.is_zero() && now < departure.said + REMEMBERED,
        }
    }
}

/// Asks `hello` (the boot that answers, if any) every [`PROBE_EVERY`] until a boot
/// answers or `deadline` passes, and tells `outcome`.
pub async fn probe<F, Fut>(
    mut hello: F,
    boot_id: &str,
    deadline: Instant,
    outcome: watch::Sender<Option<Return>>,
) -> Return
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let ended = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Return::Gone;
        }
        match tokio::time::timeout(left, hello()).await {
            Ok(Some(boot)) if boot != boot_id => break Return::Back,
            Ok(Some(_)) => break Return::Alive,
            _ => {}
        }
        tokio::time::sleep(PROBE_EVERY.min(deadline.saturating_duration_since(Instant::now()))).await;
    };
    let _ = outcome.send(Some(ended));
    ended
}

/// Waits on a round of probing: how it ended (gone, if its prober is).
pub async fn outcome(mut probing: watch::Receiver<Option<Return>>) -> Return {
    match probing.wait_for(Option::is_some).await {
        Ok(ended) => ended.unwrap_or(Return::Gone),
        Err(_) => Return::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopping_owner_is_waited_for_restart_wait_from_when_it_was_found_down() {
        let departures = Departures::new(Duration::from_secs(15));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!departures.leaving("n1", t0), "never said");
        departures.said("n1", "boot-1", t0);
        assert!(departures.leaving("n1", at(60)), "still draining");
        assert!(!departures.waited_for("n1", at(60)), "not found down yet");
        let first = departures.wait("n1", at(60));
        let Wait::Start { deadline, .. } = &first else {
            panic!("the first reader starts the probe")
        };
        assert_eq!(*deadline, at(75));
        assert!(departures.waited_for("n1", at(61)));
        assert!(
            matches!(departures.wait("n1", at(61)), Wait::Probe(_)),
            "later readers wait on the same probe"
        );
        // Said again (a retry, a replay): the wait under way is not reset.
        departures.said("n1", "boot-1", at(62));
        assert!(!departures.leaving("n1", at(75)), "its time is up");
        assert!(matches!(departures.wait("n1", at(76)), Wait::NotAwaited));
        assert!(!departures.waited_for("n1", at(76)));
        drop(first);
    }

    #[test]
    fn the_same_boot_answering_is_alive_and_a_new_boot_is_back() {
        let departures = Departures::new(Duration::from_secs(15));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        departures.said("n1", "boot-1", t0);
        let _probe = departures.wait("n1", at(1));
        // A glitch while it drains does not spend the wait for its restart.
        departures.heard("n1", "boot-1");
        assert!(departures.leaving("n1", at(30)));
        assert!(matches!(departures.wait("n1", at(30)), Wait::Start { deadline, .. } if deadline == at(45)));
        // An old prober's verdict does not remove a newer boot's departure.
        departures.heard("n1", "boot-2");
        assert!(!departures.leaving("n1", at(31)), "a new boot is back for good");
        departures.said("n1", "boot-2", at(32));
        departures.gone("n1", "boot-1");
        assert!(departures.leaving("n1", at(33)));
        // A boot that did not come back is not waited for again (a replayed notice).
        departures.gone("n1", "boot-2");
        departures.said("n1", "boot-2", at(34));
        assert!(!departures.leaving("n1", at(34)));
        // Zero: never waited for.
        let never = Departures::new(Duration::ZERO);
        never.said("n3", "boot-1", t0);
        assert!(!never.leaving("n3", t0));
    }

    #[tokio::test]
    async fn a_probe_ends_when_a_boot_answers_or_its_time_is_up() {
        let (outcome, waiting) = watch::channel(None);
        let mut tries = 0;
        let hello = || {
            tries += 1;
            let boot = (tries == 3).then(|| "boot-2".to_owned());
            async move { boot }
        };
        let ended = probe(hello, "boot-1", Instant::now() + Duration::from_secs(5), outcome).await;
        assert_eq!((ended, super::outcome(waiting).await), (Return::Back, Return::Back));
        let (outcome, waiting) = watch::channel(None);
        let same = || async { Some("boot-1".to_owned()) };
        assert_eq!(
            probe(same, "boot-1", Instant::now() + Duration::from_secs(5), outcome).await,
            Return::Alive
        );
        assert_eq!(super::outcome(waiting).await, Return::Alive);
        let (outcome, waiting) = watch::channel(None);
        let none = || async { None };
        let deadline = Instant::now() + Duration::from_millis(300);
        assert_eq!(probe(none, "boot-1", deadline, outcome).await, Return::Gone);
        assert_eq!(super::outcome(waiting).await, Return::Gone);
    }
}
