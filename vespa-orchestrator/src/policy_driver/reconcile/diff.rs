//! The comparison at the heart of reconciliation, pure: what the policy wants on one actuator
//! against what the actuator holds, into what to adopt, re-apply and remove. No I/O, no clock:
//! the caller says which wanted entries are too fresh to judge and which held ones to spare.

use std::collections::{BTreeMap, BTreeSet};

/// One entry an actuator holds with VESPA's mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held<K> {
    /// What it applies to (None: the actuator could not say, e.g. a flow whose match is not
    /// one VESPA writes; such an entry is never wanted).
    pub key: Option<K>,
    /// The actuator's id of it (an SDN block id, the cookie's low half), when it has one.
    pub id: Option<u64>,
    /// Whether the agent's book knows it (its release and its reaper work). An actuator
    /// without a book of its own (the kernel firewall) says true.
    pub known: bool,
    /// Not to be removed even when not wanted (a kernel reflex block the policy may still
    /// adopt): neither counted nor touched.
    pub spare: bool,
    /// Held, but not as the policy wants it (a throttle at another rate, an AV agent routed
    /// through another hypervisor agent): when wanted, it is placed again over itself.
    pub stale: bool,
}

/// What to do about one actuator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<K> {
    /// Held and wanted but unknown to the agent's book: recorded there (id, key).
    pub adopt: Vec<(u64, K)>,
    /// Wanted and not held, or held stale: placed again.
    pub reapply: Vec<K>,
    /// Held and not wanted (or held twice: the copies beyond the one kept): removed.
    pub remove: Vec<Held<K>>,
    /// Held, wanted and known: nothing to do.
    pub in_force: usize,
    /// Held, not wanted, spared.
    pub spared: usize,
    /// Held stale and wanted: among `reapply` (the new placement replaces it).
    pub replaced: usize,
}

/// Compares `wanted` (each with whether it is fresh: placed so recently that its own call may
/// still be on its way, so that its absence proves nothing) with `held`.
///
/// Per key: a wanted key held at least once is in force; the copy kept is one the book knows
/// if any (else the lowest id, adopted into the book), the other copies are removed. A wanted
/// key not held is re-applied unless fresh, and so is one whose kept copy is stale. A held key
/// not wanted is removed unless spared.
pub fn compare<K: Ord + Clone>(wanted: &BTreeMap<K, bool>, held: Vec<Held<K>>) -> Plan<K> {
    let mut plan = Plan {
        adopt: Vec::new(),
        reapply: Vec::new(),
        remove: Vec::new(),
        in_force: 0,
        spared: 0,
        replaced: 0,
    };
    let mut by_key: BTreeMap<K, Vec<Held<K>>> = BTreeMap::new();
    for h in held {
        match h.key.clone() {
            Some(k) if wanted.contains_key(&k) => by_key.entry(k).or_default().push(h),
            _ if h.spare => plan.spared += 1,
            _ => plan.remove.push(h),
        }
    }
    let mut seen = BTreeSet::new();
    for (key, mut copies) in by_key {
        // The book's copy first, then by id: the one kept is stable from pass to pass.
        copies.sort_by_key(|h| (!h.known, h.id));
        let mut copies = copies.into_iter();
        if let Some(kept) = copies.next() {
            match (kept.known, kept.id) {
                // Placed again as wanted: the new placement is in the book.
                _ if kept.stale && wanted.get(&key) == Some(&false) => {
                    plan.replaced += 1;
                    plan.reapply.push(key.clone());
                }
                (false, Some(id)) => plan.adopt.push((id, key.clone())),
                _ => plan.in_force += 1,
            }
        }
        plan.remove.extend(copies);
        seen.insert(key);
    }
    plan.reapply.extend(
        wanted
            .iter()
            .filter(|(k, fresh)| !**fresh && !seen.contains(*k))
            .map(|(k, _)| k.clone()),
    );
    plan.reapply.sort();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn held(key: u8, id: u64, known: bool) -> Held<u8> {
        Held {
            key: Some(key),
            id: Some(id),
            known,
            spare: false,
            stale: false,
        }
    }

    #[test]
    fn held_and_wanted_is_kept_missing_is_reapplied_stray_is_removed() {
        let wanted = BTreeMap::from([(1, false), (2, false), (3, true)]);
        let spare = Held {
            spare: true,
            ..held(9, 9, true)
        };
        let plan = compare(
            &wanted,
            vec![
                held(1, 10, true),
                held(4, 40, true),
                spare,
                held(1, 11, false),
            ],
        );
        assert_eq!(plan.in_force, 1);
        assert!(plan.adopt.is_empty());
        assert_eq!(
            plan.reapply,
            vec![2],
            "3 is fresh: its own call may be on its way"
        );
        assert_eq!(plan.remove, vec![held(4, 40, true), held(1, 11, false)]);
        assert_eq!(plan.spared, 1);
    }

    #[test]
    fn a_copy_the_book_lost_is_adopted_once() {
        let wanted = BTreeMap::from([(1, false)]);
        let plan = compare(&wanted, vec![held(1, 12, false), held(1, 11, false)]);
        assert_eq!(plan.adopt, vec![(11, 1)]);
        assert_eq!(plan.remove, vec![held(1, 12, false)]);
        assert_eq!(plan.in_force, 0);
    }

    #[test]
    fn an_entry_without_a_key_is_never_wanted() {
        let wanted = BTreeMap::from([(1, false)]);
        let unknown = Held {
            key: None,
            id: Some(5),
            known: false,
            spare: false,
            stale: false,
        };
        let plan = compare(&wanted, vec![unknown.clone()]);
        assert_eq!(plan.remove, vec![unknown]);
        assert_eq!(plan.reapply, vec![1]);
    }

    #[test]
    fn a_stale_entry_is_placed_again_unless_its_own_call_is_on_its_way() {
        let stale = |key| Held {
            stale: true,
            ..held(key, 0, true)
        };
        let wanted = BTreeMap::from([(1, false), (2, true)]);
        let plan = compare(&wanted, vec![stale(1), stale(2), stale(3)]);
        assert_eq!(plan.reapply, vec![1], "2 is fresh: not judged");
        assert_eq!(plan.replaced, 1);
        assert_eq!(plan.in_force, 1);
        assert_eq!(
            plan.remove,
            vec![stale(3)],
            "unwanted: removed, stale or not"
        );
    }

    proptest! {
        /// Whatever is held: after the plan, every wanted key that is not fresh is held
        /// exactly once (kept, adopted or re-applied), nothing unwanted stays unless spared,
        /// and every held entry is accounted for exactly once.
        #[test]
        fn the_plan_leaves_exactly_what_is_wanted(
            wanted in proptest::collection::btree_map(0u8..20, any::<bool>(), 0..20),
            held_raw in proptest::collection::vec((proptest::option::of(0u8..30), 0u64..50, any::<bool>(), any::<bool>(), any::<bool>()), 0..60),
        ) {
            let held: Vec<Held<u8>> = held_raw
                .iter()
                .map(|&(key, id, known, spare, stale)| Held { key, id: Some(id), known, spare, stale })
                .collect();
            let plan = compare(&wanted, held.clone());
            prop_assert_eq!(plan.in_force + plan.adopt.len() + plan.remove.len() + plan.spared + plan.replaced, held.len());
            let mut after: BTreeMap<u8, usize> = BTreeMap::new();
            for h in &held {
                if let Some(k) = h.key {
                    *after.entry(k).or_default() += 1;
                }
            }
            for r in &plan.remove {
                if let Some(k) = r.key {
                    *after.entry(k).or_default() -= 1;
                }
            }
            for k in &plan.reapply {
                // A stale copy kept is replaced by the new placement, not joined by it.
                let n = after.entry(*k).or_default();
                if *n == 0 {
                    *n += 1;
                }
            }
            prop_assert_eq!(plan.reapply.len(), wanted.iter().filter(|(k, f)| !**f && {
                let copies: Vec<&Held<u8>> = held.iter().filter(|h| h.key == Some(**k)).collect();
                copies.is_empty() || {
                    let mut c = copies.clone();
                    c.sort_by_key(|h| (!h.known, h.id));
                    c[0].stale
                }
            }).count());
            for (k, fresh) in &wanted {
                let n = after.get(k).copied().unwrap_or(0);
                if *fresh {
                    prop_assert!(n <= 1);
                } else {
                    prop_assert_eq!(n, 1, "key {}", k);
                }
            }
            for h in &held {
                if let Some(k) = h.key {
                    if !wanted.contains_key(&k) && !h.spare {
                        prop_assert_eq!(after.get(&k).copied().unwrap_or(0), held.iter().filter(|o| o.key == Some(k) && o.spare).count());
                    }
                }
            }
        }
    }
}
