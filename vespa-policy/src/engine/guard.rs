//! What keeps a rule from acting: the allowlist (sources never blocked nor throttled) and the
//! caps (blocks a rule may hold at once, and place per minute).
//!
//! The allowlist has three origins: the rules file's `[allowlist]` (replaced by a reload),
//! the tree's own machines and controllers ([`Input::TopologyAllow`](crate::Input), given by
//! the driver) and the operator's entries ([`Input::Allow`](crate::Input)), which are state
//! and survive reloads. A target is protected when it shares an address with an entry (a
//! prefix that contains a protected address is protected), or when the neighbour view puts
//! it at a protected MAC (or a protected address at its MAC). Nothing protected is proposed,
//! and an entry that arrives releases what is held against it. A cap never evicts: the
//! offender waits, and an alert says so.

use std::collections::{BTreeSet, VecDeque};

use super::effects::{held_by_rule, release_owned, Owner};
use super::State;
use crate::types::{Action, AlertKind, Effect, Key, Nanos, Target, SECOND};

/// Operator entries held at most (each is checked against every block proposed).
pub const MAX_ALLOWED_BY_HAND: usize = 4096;

/// Where a protection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AllowOrigin {
    /// The rules file's `[allowlist] targets`.
    Config,
    /// A machine or controller of the tree, added automatically.
    Topology,
    /// Added by hand ([`crate::Input::Allow`]).
    Operator,
}

impl AllowOrigin {
    /// `config`, `topology` or `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            AllowOrigin::Config => "config",
            AllowOrigin::Topology => "topology",
            AllowOrigin::Operator => "operator",
        }
    }
}

/// One protected source, as callers list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed<'a> {
    pub target: Target,
    pub origin: AllowOrigin,
    /// Why it is there: the machine or controller, or the operator's note.
    pub note: Option<&'a str>,
}

/// A rule's record for its caps.
#[derive(Debug, Clone, Default)]
pub(super) struct CapState {
    /// When its last new blocks and throttles were placed (within the last minute).
    placed: VecDeque<Nanos>,
    alerted_at: Option<Nanos>,
}

const MINUTE: Nanos = 60 * SECOND;

impl State {
    /// Every protection, configured first, then automatic, then the operator's; a target
    /// protected twice is listed under each origin.
    pub fn allowlist(&self) -> impl Iterator<Item = Allowed<'_>> {
        let config = self.rules.allowlist.iter().map(|t| Allowed {
            target: *t,
            origin: AllowOrigin::Config,
            note: None,
        });
        let topology = self.allow_topology.iter().map(|(t, note)| Allowed {
            target: *t,
            origin: AllowOrigin::Topology,
            note: Some(note.as_str()),
        });
        let operator = self.allow_operator.iter().map(|(t, note)| Allowed {
            target: *t,
            origin: AllowOrigin::Operator,
            note: note.as_deref(),
        });
        config.chain(topology).chain(operator)
    }

    /// The targets protected, each once (what a firewall agent is told to `allow`).
    pub fn allowed_targets(&self) -> BTreeSet<Target> {
        self.allowlist().map(|a| a.target).collect()
    }

    /// The entry that protects `target`, if any: one sharing an address with it, directly or
    /// through the neighbour view (a MAC and the addresses at it are one machine).
    pub fn protected_by(&self, target: &Target) -> Option<Target> {
        let mut names = vec![*target];
        match target {
            Target::Mac(m) => names.extend(
                self.neighbours
                    .iter()
                    .filter(|(_, (mac, _))| mac == m)
                    .map(|(ip, _)| Target::Ip(*ip)),
            ),
            Target::Ip(ip) => names.extend(self.neighbours.get(ip).map(|(m, _)| Target::Mac(*m))),
            Target::Net(p) => names.extend(
                self.neighbours
                    .iter()
                    .filter(|(ip, _)| p.contains(**ip))
                    .map(|(_, (m, _))| Target::Mac(*m)),
            ),
        }
        self.allowlist()
            .map(|a| a.target)
            .find(|entry| names.iter().any(|n| overlap(entry, n)))
    }
}

/// Whether two targets name a common source: the same MAC, or address ranges that meet.
fn overlap(a: &Target, b: &Target) -> bool {
    match (a, b) {
        (Target::Mac(x), Target::Mac(y)) => x == y,
        (Target::Ip(x), Target::Ip(y)) => x == y,
        (Target::Ip(ip), Target::Net(p)) | (Target::Net(p), Target::Ip(ip)) => p.contains(*ip),
        (Target::Net(p), Target::Net(q)) => p.overlaps(q),
        (Target::Mac(_), _) | (_, Target::Mac(_)) => false,
    }
}

pub(super) fn allow(
    state: &mut State,
    target: Target,
    note: Option<String>,
    out: &mut Vec<Action>,
) {
    if !state.allow_operator.contains_key(&target)
        && state.allow_operator.len() >= MAX_ALLOWED_BY_HAND
    {
        let text =
            format!("allowlist: {target} not added: {MAX_ALLOWED_BY_HAND} entries by hand already");
        State::alert(out, AlertKind::Notice, text);
        return;
    }
    state.allow_operator.insert(target, note);
    release_protected(state, out);
}

/// The operator's entry goes; offences it spared are judged again at their next evaluation.
pub(super) fn disallow(state: &mut State, target: &Target) {
    if state.allow_operator.remove(target).is_none() {
        return;
    }
    let mut keys = std::mem::take(&mut state.keys);
    for map in &mut keys {
        for ks in map.values_mut().filter(|ks| ks.spared) {
            ks.spared = false;
            ks.acted = false;
        }
    }
    state.keys = keys;
}

pub(super) fn topology_allow(
    state: &mut State,
    entries: Vec<(Target, String)>,
    out: &mut Vec<Action>,
) {
    state.allow_topology = entries;
    release_protected(state, out);
}

/// Releases every block and throttle of a target that is now protected, whoever holds it;
/// the offences of the rules that held them are spared.
pub(super) fn release_protected(state: &mut State, out: &mut Vec<Action>) {
    let hit: Vec<(Effect, Target)> = state
        .effects
        .keys()
        .filter_map(|e| match e {
            Effect::Blocked(t) | Effect::Throttled(t) => {
                state.protected_by(t).map(|entry| (e.clone(), entry))
            }
            _ => None,
        })
        .collect();
    for (effect, entry) in hit {
        let owners: Vec<Owner> = state
            .effects
            .get(&effect)
            .map_or_else(Vec::new, |es| es.owners.iter().cloned().collect());
        State::alert(
            out,
            AlertKind::Protected,
            format!("{effect:?} released: {entry} is on the allowlist"),
        );
        for owner in owners {
            if let Owner::Rule(name, key) = &owner {
                if let Some(i) = state.rule_index(name) {
                    if let Some(ks) = state.keys[i].get_mut(key) {
                        ks.owned.retain(|e| *e != effect);
                        ks.spared = true;
                        if let Some(id) = ks.verify.take().and_then(|v| v.id) {
                            state.pending.remove(&id);
                        }
                    }
                }
            }
            release_owned(state, &owner, &mut vec![effect.clone()], out);
        }
    }
}

/// Whether rule `i` has reached a cap for a new `verb` (block or throttle) of `key`; alerts
/// at most once a minute per rule.
pub(super) fn capped(
    state: &mut State,
    i: usize,
    key: &Key,
    verb: &str,
    now: Nanos,
    out: &mut Vec<Action>,
) -> bool {
    let rule = &state.rules.rules[i];
    let (name, max, per_min) = (rule.name.clone(), rule.max_blocks, rule.max_blocks_per_min);
    if max.is_none() && per_min.is_none() {
        return false;
    }
    let held = held_by_rule(state, &name);
    let cs = state.caps.entry(name.clone()).or_default();
    while cs
        .placed
        .front()
        .is_some_and(|t| now.saturating_sub(*t) >= MINUTE)
    {
        cs.placed.pop_front();
    }
    let why = match (max, per_min) {
        (Some(m), _) if held >= m => format!("{held} blocks and throttles held (max_blocks = {m})"),
        (_, Some(m)) if cs.placed.len() >= m => {
            format!(
                "{} placed in the last minute (max_blocks_per_min = {m})",
                cs.placed.len()
            )
        }
        _ => return false,
    };
    if cs
        .alerted_at
        .is_none_or(|t| now.saturating_sub(t) >= MINUTE)
    {
        cs.alerted_at = Some(now);
        let text = format!("rule {name}: cap reached, {why}: {key} not {verb}ed (nothing is evicted; alerted at most once a minute)");
        State::alert(out, AlertKind::CapReached, text);
    }
    true
}

/// Counts a new block or throttle of rule `i` towards its per-minute cap.
pub(super) fn record_placed(state: &mut State, i: usize, now: Nanos) {
    let rule = &state.rules.rules[i];
    if rule.max_blocks_per_min.is_some() {
        let name = rule.name.clone();
        state.caps.entry(name).or_default().placed.push_back(now);
    }
}

/// Forgets the caps' record of rules that no longer exist.
pub(super) fn retain_caps(state: &mut State) {
    let names: BTreeSet<&str> = state.rules.rules.iter().map(|r| r.name.as_str()).collect();
    state.caps.retain(|name, _| names.contains(name.as_str()));
}
