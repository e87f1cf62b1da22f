//! Per-origin de-duplication, kept at every hop.
//!
//! Delivery is at least once (a child re-sends whatever its master had not acknowledged when
//! a connection broke), so a hop must recognise what it already took. For each origin it keeps
//! the highest sequence number taken. That is enough, with no window of out-of-order numbers,
//! because of how alerts travel:
//! - one origin's alerts reach a hop over one child link, and each link carries them in
//!   increasing order (queues are FIFO; sealed frames cannot be reordered or dropped unnoticed);
//! - a connection starts with the oldest alert its sender still holds, and everything older
//!   was acknowledged, i.e. already taken here or beyond.
//!
//! So when a hop has taken `seq`, it has taken every earlier one that will ever come, and
//! anything at or below the watermark is a duplicate. Two connections of the same child can
//! overlap for a moment (the old one not yet noticed dead); both carry increasing runs of the
//! same queue, so the argument holds for their union.
//!
//! Origins number their alerts from the wall clock at start-up (nanoseconds), so a restarted
//! origin continues above its previous numbers; this assumes its clock does not step back
//! across the restart by more than the restart took.
//!
//! Besides the watermark each origin records what the next hop acknowledged, so that a
//! duplicate can be acknowledged at once when it is already safe further up.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// What a hop knows about one origin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginState {
    /// Highest sequence number taken.
    pub highest: u64,
    /// Highest sequence number the next hop acknowledged (the root: processed).
    pub acked: u64,
    /// Alerts taken (duplicates excluded).
    pub count: u64,
    /// First sequence number taken since this hop started.
    pub first: u64,
}

/// The verdict on an incoming alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Never seen: process and forward it.
    New,
    /// Seen before; `acked` says whether the next hop already acknowledged it.
    Duplicate {
        /// Whether it can be acknowledged right away.
        acked: bool,
    },
}

/// The table of one hop.
#[derive(Debug, Default)]
pub struct Dedup {
    /// Keyed by origin; the value keeps its own copy of the key so a hit can hand it out.
    origins: HashMap<Arc<str>, (Arc<str>, OriginState)>,
}

impl Dedup {
    /// An empty table.
    pub fn new() -> Dedup {
        Dedup::default()
    }

    /// Judges `seq` from `origin` and, if new, records it. Also returns the interned origin
    /// name so queues can share it.
    pub fn accept(&mut self, origin: &str, seq: u64) -> (Verdict, Arc<str>) {
        if let Some((key, st)) = self.origins.get_mut(origin) {
            if seq <= st.highest {
                return (
                    Verdict::Duplicate {
                        acked: seq <= st.acked,
                    },
                    key.clone(),
                );
            }
            st.highest = seq;
            st.count += 1;
            return (Verdict::New, key.clone());
        }
        let key: Arc<str> = Arc::from(origin);
        self.origins.insert(
            key.clone(),
            (
                key.clone(),
                OriginState {
                    highest: seq,
                    acked: 0,
                    count: 1,
                    first: seq,
                },
            ),
        );
        (Verdict::New, key)
    }

    /// Sets `origin`'s state outright (the VO, from its journal at start).
    pub fn restore(&mut self, origin: &str, state: OriginState) {
        let key: Arc<str> = Arc::from(origin);
        self.origins.insert(key.clone(), (key, state));
    }

    /// Records that the next hop acknowledged `origin` up to `seq`.
    pub fn mark_acked(&mut self, origin: &str, seq: u64) {
        if let Some((_, st)) = self.origins.get_mut(origin) {
            st.acked = st.acked.max(seq);
        }
    }

    /// Every origin's state, by name.
    pub fn snapshot(&self) -> BTreeMap<String, OriginState> {
        self.origins
            .iter()
            .map(|(k, (_, v))| (k.to_string(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resent_alerts_are_duplicates_and_acked_ones_say_so() {
        let mut d = Dedup::new();
        assert_eq!(d.accept("a", 10).0, Verdict::New);
        assert_eq!(d.accept("a", 11).0, Verdict::New);
        assert_eq!(d.accept("a", 11).0, Verdict::Duplicate { acked: false });
        d.mark_acked("a", 10);
        assert_eq!(d.accept("a", 10).0, Verdict::Duplicate { acked: true });
        assert_eq!(d.accept("a", 11).0, Verdict::Duplicate { acked: false });
        assert_eq!(d.accept("b", 1).0, Verdict::New, "origins are independent");
        let snap = d.snapshot();
        assert_eq!(
            snap["a"],
            OriginState {
                highest: 11,
                acked: 10,
                count: 2,
                first: 10
            }
        );
    }

    #[test]
    fn a_restarted_origin_continues_above_its_old_numbers() {
        let mut d = Dedup::new();
        d.accept("a", 1_000);
        assert_eq!(
            d.accept("a", 5_000).0,
            Verdict::New,
            "gaps (dropped at the origin, or a restart) are fine"
        );
    }
}
