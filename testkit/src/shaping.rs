//! Emulating a far region on loopback: a delay per round trip and bandwidth caps
//! per connection and in total, applied to response bodies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How far away the origin seems. The default is loopback as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Shaping {
    /// One round trip: added once when a connection opens (the handshake) and
    /// once before every answer (request out, first byte back).
    pub rtt: Duration,
    /// Body bytes per second on each connection; 0 for no cap.
    pub per_connection: u64,
    /// Body bytes per second over all connections together; 0 for no cap.
    pub total: u64,
}

impl Shaping {
    pub fn is_unshaped(&self) -> bool {
        *self == Self::default()
    }
}

/// Bytes a pacer lets through ahead of its schedule, so that frames of a few
/// KiB are not each held for a timer tick.
const BURST: Duration = Duration::from_millis(2);

/// A virtual clock for one byte rate: each reservation moves the time at which
/// the link is free again, and the sender waits until its bytes have "left".
#[derive(Debug)]
pub struct Pacer {
    rate: u64,
    free_at: Mutex<Instant>,
}

impl Pacer {
    /// A pacer for `rate` bytes per second; `None` when the rate is uncapped.
    pub fn new(rate: u64) -> Option<Arc<Self>> {
        (rate > 0).then(|| {
            Arc::new(Self {
                rate,
                free_at: Mutex::new(Instant::now()),
            })
        })
    }

    /// Reserves `bytes` on the link and returns when they may be sent, or `None`
    /// when they may be sent now.
    pub fn reserve(&self, bytes: usize) -> Option<Instant> {
        let now = Instant::now();
        let mut free_at = self.free_at.lock().unwrap();
        let start = (*free_at).max(now);
        *free_at = start + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        (*free_at > now + BURST).then_some(*free_at - BURST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pacer_holds_bytes_to_its_rate() {
        let pacer = Pacer::new(1_000_000).unwrap();
        // 1 KB at 1 MB/s is 1 ms: within the burst, sent at once.
        assert_eq!(pacer.reserve(1_000), None);
        // The next 99 KB take until 100 ms; the sender waits for 98 ms of it.
        let start = Instant::now();
        let due = pacer.reserve(99_000).expect("ahead of the schedule");
        assert_eq!(due - start, Duration::from_millis(98));
        // An idle link does not bank its unused time.
        tokio::time::advance(Duration::from_secs(10)).await;
        let due = pacer.reserve(500_000).unwrap();
        assert_eq!(due - Instant::now(), Duration::from_millis(498));
    }

    #[test]
    fn no_rate_no_pacer() {
        assert!(Pacer::new(0).is_none());
    }
}
