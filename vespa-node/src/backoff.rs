//! Reconnect delays: exponential, capped, with jitter.
//!
//! After a master restarts every child reconnects at once; without jitter they would all
//! retry in lock-step forever. "Equal jitter" keeps at least half the nominal delay (so a
//! dead master is not hammered) and randomises the other half.

use std::time::Duration;

use rand::Rng;

/// Delay state for one uplink.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `min`, doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            current: min,
        }
    }

    /// The next delay: uniformly in [nominal/2, nominal], then the nominal delay doubles.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = nominal / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }

    /// Back to `min` (after a connection that worked).
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let nominal = [100u64, 200, 400, 800, 800, 800];
        for n in nominal {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(n / 2) && d <= Duration::from_millis(n),
                "{d:?} outside [{}, {n}] ms",
                n / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_retries() {
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| Backoff::new(Duration::from_millis(1000), Duration::from_secs(1)).next_delay())
            .collect();
        assert!(
            delays.len() > 1,
            "twenty children must not all retry at the same instant"
        );
    }
}
