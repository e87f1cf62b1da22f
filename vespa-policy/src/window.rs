//! A sliding window of samples for one (rule, key).

use std::collections::VecDeque;

use crate::rules::Aggregate;
use crate::types::{Nanos, SECOND};

/// Samples newer than the window, plus the newest older one (a rate needs a starting point).
#[derive(Debug, Clone, Default)]
pub(crate) struct Window {
    samples: VecDeque<(Nanos, u64)>,
}

/// A bound on samples kept per key, whatever the sample rate: memory stays bounded even if
/// an agent floods one key (the aggregate then covers the most recent samples only).
const MAX_SAMPLES: usize = 256;

impl Window {
    pub(crate) fn push(&mut self, now: Nanos, value: u64, window: Nanos) {
        self.samples.push_back((now, value));
        if self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.prune(now, window);
    }

    /// Drops samples older than the window, keeping the newest of those for rates.
    pub(crate) fn prune(&mut self, now: Nanos, window: Nanos) {
        // Early in time (now < window) everything is inside.
        let Some(start) = now.checked_sub(window) else {
            return;
        };
        while self.samples.len() >= 2 && self.samples[1].0 <= start {
            self.samples.pop_front();
        }
        // A lone sample from before the window is no starting point for anything.
        if self.samples.len() == 1 && self.samples[0].0 <= start {
            self.samples.clear();
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The window's value at `now`, 0 without samples inside it: no data means no offence,
    /// so a key whose agent stopped reporting it drifts to calm (lost data is reported
    /// separately as a blind spot, not guessed at here).
    pub(crate) fn aggregate(&self, how: Aggregate, now: Nanos, window: Nanos) -> u64 {
        self.aggregate_since(how, now.checked_sub(window), now)
    }

    /// The value now, from samples after `since`: the newest one for gauges, the rate across
    /// them for totals; 0 without any. Used by verification, which asks "has it stopped?",
    /// not "was it high at some point in the window?".
    pub(crate) fn current_since(&self, how: Aggregate, since: Nanos, now: Nanos) -> u64 {
        match how {
            Aggregate::Max | Aggregate::Mean => self
                .samples
                .iter()
                .rev()
                .find(|(t, _)| *t > since && *t <= now)
                .map_or(0, |(_, v)| *v),
            Aggregate::Rate => self.aggregate_since(how, Some(since), now),
        }
    }

    /// Like [`Window::aggregate`] but over samples taken after `since` only, so that a
    /// verification is not fooled by samples from before the action.
    /// `since: None` means from the beginning of time.
    pub(crate) fn aggregate_since(&self, how: Aggregate, since: Option<Nanos>, now: Nanos) -> u64 {
        let after = |t: Nanos| since.is_none_or(|s| t > s);
        let inside = || {
            self.samples
                .iter()
                .filter(move |(t, _)| after(*t) && *t <= now)
        };
        match how {
            Aggregate::Max => inside().map(|(_, v)| *v).max().unwrap_or(0),
            Aggregate::Mean => {
                let (n, sum) =
                    inside().fold((0u128, 0u128), |(n, s), (_, v)| (n + 1, s + u128::from(*v)));
                sum.checked_div(n)
                    .map_or(0, |mean| u64::try_from(mean).unwrap_or(u64::MAX))
            }
            Aggregate::Rate => {
                // From the last sample at or before `since` (or the first inside) to the newest.
                let first = self
                    .samples
                    .iter()
                    .rev()
                    .find(|(t, _)| !after(*t))
                    .or_else(|| inside().next());
                let last = inside().next_back();
                match (first, last) {
                    (Some(&(t0, v0)), Some(&(t1, v1))) if t1 > t0 => {
                        // A counter that went down was reset: count from zero.
                        let delta = if v1 >= v0 { v1 - v0 } else { v1 };
                        let per_sec = u128::from(delta) * u128::from(SECOND) / u128::from(t1 - t0);
                        u64::try_from(per_sec).unwrap_or(u64::MAX)
                    }
                    _ => 0,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates() {
        let mut w = Window::default();
        for (t, v) in [(1, 10), (2, 30), (3, 20)] {
            w.push(t * SECOND, v, 10 * SECOND);
        }
        let now = 3 * SECOND;
        assert_eq!(w.aggregate(Aggregate::Max, now, 10 * SECOND), 30);
        assert_eq!(w.aggregate(Aggregate::Mean, now, 10 * SECOND), 20);
        assert_eq!(
            w.aggregate(Aggregate::Max, 20 * SECOND, 10 * SECOND),
            0,
            "old samples fall out"
        );
        let mut bytes = Window::default();
        for t in 0..=4 {
            bytes.push(t * SECOND, t * 1000, 2 * SECOND);
        }
        assert_eq!(
            bytes.aggregate(Aggregate::Rate, 4 * SECOND, 2 * SECOND),
            1000
        );
    }
}
