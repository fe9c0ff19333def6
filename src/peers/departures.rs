//! Owners that said they are stopping. A node told SIGTERM tells its peers at once
//! (`POST /peer/v1/leaving`): in a rollout it comes back in seconds under its name,
//! its disk intact. A reader whose chunk's owner has stopped answering then waits
//! for it (one prober per owner, `peers.restart_wait` at most from when it was
//! first found down) instead of filling the owner's share from the origin; an owner
//! that does not come back in time is treated as any dead peer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long a departure is remembered while its node still answers (a drain longer
/// than this is no restart to wait for).
const REMEMBERED: Duration = Duration::from_secs(600);
/// How often a prober asks a stopped owner whether it is back.
const PROBE_EVERY: Duration = Duration::from_millis(200);

#[derive(Default)]
pub struct Departures(Mutex<HashMap<String, Departure>>);

struct Departure {
    /// The boot that said it is stopping: a hello from another boot is the return.
    boot_id: String,
    said: Instant,
    /// When a reader first found it down: the wait is counted from there.
    down: Option<Instant>,
    /// The round of probing under way, if any: its outcome.
    probing: Option<watch::Receiver<Option<bool>>>,
}

/// What a reader waiting for an owner learns.
pub enum Wait {
    /// The node was never said to be leaving, or its time is up: treat it as failed.
    NotAwaited,
    /// Wait on this round of probing: `true` once the node answers a hello again.
    Probe(watch::Receiver<Option<bool>>),
    /// Start this round of probing until `deadline`, telling its outcome here.
    Start {
        boot_id: String,
        deadline: Instant,
        outcome: watch::Sender<Option<bool>>,
    },
}

impl Departures {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Departure>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `node`, in its boot `boot_id`, said it is stopping.
    pub fn said(&self, node: &str, boot_id: &str, now: Instant) {
        self.map().insert(
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
    pub fn leaving(&self, node: &str, now: Instant, restart_wait: Duration) -> bool {
        let mut map = self.map();
        match map.get(node) {
            Some(departure) if awaited(departure, now, restart_wait) => true,
            Some(_) => {
                map.remove(node);
                false
            }
            None => false,
        }
    }

    /// A reader found `node` down: what to wait on.
    pub fn wait(&self, node: &str, now: Instant, restart_wait: Duration) -> Wait {
        let mut map = self.map();
        let Some(departure) = map.get_mut(node) else {
            return Wait::NotAwaited;
        };
        if !awaited(departure, now, restart_wait) {
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
            deadline: down + restart_wait,
            outcome,
        }
    }

    /// `node` answered under boot `boot_id`: a new boot is back for good.
    pub fn answered(&self, node: &str, boot_id: &str) {
        let mut map = self.map();
        if map.get(node).is_some_and(|d| d.boot_id != boot_id) {
            map.remove(node);
        }
    }

    /// `node`'s time is up: it is any dead peer now.
    pub fn gone(&self, node: &str) {
        self.map().remove(node);
    }
}

/// Still worth waiting for: found down less than `restart_wait` ago, or not found
/// down yet and said lately.
fn awaited(departure: &Departure, now: Instant, restart_wait: Duration) -> bool {
    match departure.down {
        Some(down) => now < down + restart_wait,
        None => !restart_wait.is_zero() && now < departure.said + REMEMBERED,
    }
}

/// Asks `hello` every [`PROBE_EVERY`] until it answers (`true`) or `deadline`
/// passes (`false`), and tells `outcome`.
pub async fn probe<F, Fut>(mut hello: F, deadline: Instant, outcome: watch::Sender<Option<bool>>) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let back = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        if tokio::time::timeout(left, hello()).await.unwrap_or(false) {
            break true;
        }
        tokio::time::sleep(PROBE_EVERY.min(deadline.saturating_duration_since(Instant::now()))).await;
    };
    let _ = outcome.send(Some(back));
    back
}

/// Waits on a round of probing: whether the node is back.
pub async fn outcome(mut probing: watch::Receiver<Option<bool>>) -> bool {
    match probing.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopping_owner_is_waited_for_restart_wait_from_when_it_was_found_down() {
        let departures = Departures::default();
        let wait = Duration::from_secs(15);
        let t0 = Instant::now();
        assert!(!departures.leaving("n1", t0, wait), "never said");
        departures.said("n1", "boot-1", t0);
        assert!(
            departures.leaving("n1", t0 + Duration::from_secs(60), wait),
            "still draining"
        );
        let first = departures.wait("n1", t0 + Duration::from_secs(60), wait);
        let Wait::Start { deadline, .. } = &first else {
            panic!("the first reader starts the probe")
        };
        assert_eq!(*deadline, t0 + Duration::from_secs(75));
        assert!(
            matches!(
                departures.wait("n1", t0 + Duration::from_secs(61), wait),
                Wait::Probe(_)
            ),
            "later readers wait on the same probe"
        );
        // The same boot answering is not the return (it may still be draining).
        departures.answered("n1", "boot-1");
        assert!(departures.leaving("n1", t0 + Duration::from_secs(62), wait));
        assert!(
            !departures.leaving("n1", t0 + Duration::from_secs(75), wait),
            "its time is up"
        );
        assert!(matches!(
            departures.wait("n1", t0 + Duration::from_secs(76), wait),
            Wait::NotAwaited
        ));
        // A new boot is back for good.
        departures.said("n2", "boot-1", t0);
        departures.answered("n2", "boot-2");
        assert!(!departures.leaving("n2", t0, wait));
        // Zero: never waited for.
        departures.said("n3", "boot-1", t0);
        assert!(!departures.leaving("n3", t0, Duration::ZERO));
        drop(first);
    }

    #[tokio::test]
    async fn a_probe_ends_when_the_node_answers_or_its_time_is_up() {
        let (outcome, waiting) = watch::channel(None);
        let mut tries = 0;
        let back = probe(
            || {
                tries += 1;
                let answers = tries == 3;
                async move { answers }
            },
            Instant::now() + Duration::from_secs(5),
            outcome,
        )
        .await;
        assert!(back && super::outcome(waiting).await);
        let (outcome, waiting) = watch::channel(None);
        let back = probe(|| async { false }, Instant::now() + Duration::from_millis(300), outcome).await;
        assert!(!back && !super::outcome(waiting).await);
    }
}
