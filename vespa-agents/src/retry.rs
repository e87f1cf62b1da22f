//! Exponential backoff with jitter, shared by every actuator.
//!
//! An actuator call that fails with a transient error (daemon unreachable, HTTP 5xx) is
//! retried a bounded number of times; whatever error remains is returned to the caller, typed.
//! Nothing here panics, and nothing retries forever.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;

use crate::error::Transient;

/// How often and how patiently to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, including the first (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry; doubled each time, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, 100 ms then 200 ms then 400 ms (each jittered): about 1 s of patience.
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// A single attempt.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            attempts: 1,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    /// The delay before retry number `retry` (1-based): "equal jitter", i.e. uniformly in
    /// [d/2, d] where d = base * 2^(retry-1) capped at `max_delay`, so concurrent callers that
    /// failed together do not retry in lock step.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let d = exp.min(self.max_delay);
        if d.is_zero() {
            return d;
        }
        let half = d / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }
}

/// Counts the retries an agent made (exposed in its `status`, and used by tests to prove a
/// failure was retried).
#[derive(Debug, Default)]
pub struct RetryStats {
    retries: AtomicU64,
    failures: AtomicU64,
}

impl RetryStats {
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    /// Operations that failed for good (after their retries).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// Runs `op` until it succeeds, fails with a permanent error, or `policy.attempts` are spent.
/// `op` receives the attempt number (1-based).
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    stats: &RetryStats,
    what: &str,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Transient + std::error::Error + 'static,
{
    let attempts = policy.attempts.max(1);
    let mut attempt = 1;
    loop {
        match op(attempt).await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && attempt < attempts => {
                let delay = policy.delay(attempt);
                tracing::warn!(what, attempt, of = attempts, retry_in_ms = delay.as_millis() as u64, error = ?crate::error::chain(&e), "actuator call failed; retrying");
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => {
                tracing::warn!(what, attempt, transient = e.is_transient(), error = ?crate::error::chain(&e), "actuator call failed");
                stats.failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[derive(Debug, thiserror::Error)]
    #[error("boom (transient: {0})")]
    struct Boom(bool);
    impl Transient for Boom {
        fn is_transient(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn delays_grow_and_stay_within_jitter_bounds() {
        let p = RetryPolicy {
            attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(800),
        };
        for _ in 0..100 {
            let d1 = p.delay(1);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
                "{d1:?}"
            );
            let d3 = p.delay(3);
            assert!(
                d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
                "{d3:?}"
            );
            let d9 = p.delay(9);
            assert!(
                d9 >= Duration::from_millis(400) && d9 <= Duration::from_millis(800),
                "capped: {d9:?}"
            );
        }
        assert_eq!(RetryPolicy::none().delay(1), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_then_returned() {
        let stats = RetryStats::default();
        let calls = AtomicU32::new(0);
        let r: Result<(), Boom> = retry(&RetryPolicy::default(), &stats, "t", |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Err(Boom(true)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), 4);
        assert_eq!((stats.retries(), stats.failures()), (3, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried_and_success_stops() {
        let stats = RetryStats::default();
        let calls = AtomicU32::new(0);
        let r: Result<(), Boom> = retry(&RetryPolicy::default(), &stats, "t", |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Err(Boom(false)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        let r: Result<u32, Boom> = retry(&RetryPolicy::default(), &stats, "t", |n| async move {
            if n < 3 {
                Err(Boom(true))
            } else {
                Ok(n)
            }
        })
        .await;
        assert_eq!(r.expect("third attempt succeeds"), 3);
    }
}
