//! What the policy has put in place, and the whole record of it: who holds each effect, since
//! when, until when, whether it was only recorded (dry-run). Callers list this record rather
//! than keep their own copy, so what the API shows is what the policy will undo.
//!
//! An effect is undone only when its last holder lets go: two remote addresses behind one MAC
//! share one block, an infection and a ladder share one cut link, a rule's block and the
//! operator's block of the same address are one block.

use std::collections::BTreeSet;

use super::State;
use crate::types::{Action, ActionId, AlertKind, Effect, Key, Nanos, Rate, Target};

/// Who holds an effect.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Owner {
    /// A rule, for one of its keys.
    Rule(String, Key),
    /// A rule's decision from before a restart ([`crate::Input::Restore`]), by the rule's
    /// name: held until its expiry or a manual release. Beside the rules, so that holders
    /// list rule names first, as before the restart.
    Restored(String),
    /// An infected VM's isolation.
    Infection,
    /// A manual block, until [`EffectState::manual_until`].
    Operator,
}

impl Owner {
    /// The holder's name as callers see it: the rule's, `infection` or `operator`.
    fn name(&self) -> &str {
        match self {
            Owner::Rule(name, _) | Owner::Restored(name) => name,
            Owner::Infection => "infection",
            Owner::Operator => "operator",
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct EffectState {
    pub(super) owners: BTreeSet<Owner>,
    /// Every rule that held it since it was placed: its undo names them too (an HO's
    /// fast-path alert says which rule a release comes from after the rule let go).
    rules: BTreeSet<String>,
    /// When it was placed (recorded, in dry-run), on the caller's clock.
    since: Nanos,
    /// When the actuator's own reaper removes it (blocks only).
    expires_at: Option<Nanos>,
    /// The TTL last sent (blocks and throttles): identical when its TTL is not longer.
    ttl_ns: Option<Nanos>,
    /// The rate last sent (throttles): another rate is sent again.
    rate: Option<Rate>,
    /// The agent that carries it out (and undoes it), and whether it is a firewall agent.
    via: String,
    firewall: bool,
    /// Recorded in dry-run: nothing was actually done.
    dry: bool,
    /// When the operator's hold ends (the longest manual block's TTL); meaningful while
    /// [`Owner::Operator`] holds it.
    pub(super) manual_until: Nanos,
}

/// One effect in place (or recorded, in dry-run), as callers list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InPlace<'a> {
    pub effect: &'a Effect,
    /// When it was placed, on the caller's clock (`step`'s `now`).
    pub since: Nanos,
    /// When the actuator's own reaper removes it (blocks and throttles).
    pub expires_at: Option<Nanos>,
    /// Only recorded in dry-run: no actuator was asked.
    pub dry: bool,
    /// Who holds it, each once: rule names, `infection`, `operator`.
    pub holders: Vec<&'a str>,
    /// The agent that carries it out.
    pub via: &'a str,
    /// A throttle's rate.
    pub rate: Option<Rate>,
}

impl EffectState {
    fn holders(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.owners.iter().map(Owner::name).collect();
        names.dedup();
        names
    }
}

impl State {
    /// Everything in place (or recorded, in dry-run), in the effects' order.
    pub fn effects(&self) -> impl Iterator<Item = InPlace<'_>> {
        self.effects.iter().map(|(effect, es)| InPlace {
            effect,
            since: es.since,
            expires_at: es.expires_at,
            dry: es.dry,
            holders: es.holders(),
            via: &es.via,
            rate: es.rate,
        })
    }

    /// Who holds `effect`, each once: rule names, `infection` for an infected VM's isolation,
    /// `operator` for a manual block. Empty when the effect is not in place.
    pub fn holders(&self, effect: &Effect) -> Vec<&str> {
        self.effects
            .get(effect)
            .map_or_else(Vec::new, EffectState::holders)
    }

    /// The rules behind `effect`: those that held it since it was placed, while it is in
    /// place or when the last step undid it (the action to undo it names them too). Empty for
    /// what only the operator or an infection held.
    pub fn rules_behind(&self, effect: &Effect) -> Vec<&str> {
        let rules = match self.effects.get(effect) {
            Some(es) => Some(&es.rules),
            None => self.undone.get(effect),
        };
        rules.map_or_else(Vec::new, |r| r.iter().map(String::as_str).collect())
    }

    /// Targets currently blocked (including dry-run records).
    pub fn active_blocks(&self) -> Vec<Target> {
        self.effects
            .keys()
            .filter_map(|e| {
                if let Effect::Blocked(t) = e {
                    Some(*t)
                } else {
                    None
                }
            })
            .collect()
    }
}

/// Records `effect` for `owner` and emits `action` unless an identical effect is already in
/// place (deduplication). A longer block on an already blocked target is not identical, nor is
/// the operator's block that would end later, nor a throttle at another rate. What is in place
/// stays with the agent that placed it: a longer block goes there too.
pub(super) fn apply_effect(
    state: &mut State,
    effect: Effect,
    owner: Owner,
    expires: Option<Nanos>,
    mut action: Action,
    out: &mut Vec<Action>,
) -> Option<ActionId> {
    let dry = state.is_dry_run();
    let (ttl_ns, rate) = match &action {
        Action::Block { ttl_ns, .. } => (Some(*ttl_ns), None),
        Action::Throttle { ttl_ns, rate, .. } => (Some(*ttl_ns), Some(*rate)),
        _ => (None, None),
    };
    let rule = match &owner {
        Owner::Rule(name, _) => Some(name.clone()),
        Owner::Infection | Owner::Operator | Owner::Restored(_) => None,
    };
    if let Some(es) = state.effects.get_mut(&effect) {
        // The operator's TTL counts from when they ask: asking again extends the block. A
        // rule's ladder is compared by TTL (two keys behind one MAC send one block).
        let longer = if owner == Owner::Operator {
            expires > es.expires_at
        } else {
            matches!((es.ttl_ns, ttl_ns), (Some(old), Some(new)) if new > old)
        };
        let other_rate = rate.is_some() && rate != es.rate;
        es.owners.insert(owner);
        es.rules.extend(rule);
        // Identical: same effect, no longer TTL, same rate, and not a dry record about to
        // become real.
        if !longer && !other_rate && (es.dry == dry || !es.dry) {
            return None;
        }
        es.expires_at = expires.max(es.expires_at);
        es.ttl_ns = ttl_ns.max(es.ttl_ns);
        es.rate = rate.or(es.rate);
        es.dry &= dry;
        send_through(&mut action, &es.via, es.firewall);
    } else {
        let (via, firewall) = match &action {
            Action::Block { via, firewall, .. } => (via.clone(), *firewall),
            Action::Throttle { via, .. } => (via.clone(), true),
            other => (other.via().unwrap_or_default().to_string(), false),
        };
        state.effects.insert(
            effect,
            EffectState {
                owners: BTreeSet::from([owner]),
                rules: rule.into_iter().collect(),
                since: state.now,
                expires_at: expires,
                ttl_ns,
                rate,
                via,
                firewall,
                dry,
                manual_until: 0,
            },
        );
    }
    let id = action.id();
    state.emit(out, action);
    id
}

/// Puts back an effect from before a restart, as [`crate::Input::Restore`] says; nothing is
/// sent. One already in place (given twice) only gains the holders.
pub(super) fn restore(state: &mut State, r: crate::types::Restored) {
    if r.expires_at.is_some_and(|t| t <= state.now) {
        return;
    }
    let mut owners = BTreeSet::new();
    let mut rules = BTreeSet::new();
    for h in &r.holders {
        owners.insert(match h.as_str() {
            "operator" => Owner::Operator,
            "infection" => Owner::Infection,
            name => {
                rules.insert(name.to_string());
                Owner::Restored(name.to_string())
            }
        });
    }
    if owners.is_empty() {
        owners.insert(Owner::Restored("restored".into()));
    }
    let manual_until = if owners.contains(&Owner::Operator) {
        // A manual block always has a TTL; one recorded without is held a day.
        r.expires_at
            .unwrap_or(state.now.saturating_add(86_400 * crate::SECOND))
    } else {
        0
    };
    if let Some(es) = state.effects.get_mut(&r.effect) {
        es.owners.extend(owners);
        es.rules.extend(rules);
        es.manual_until = es.manual_until.max(manual_until);
        return;
    }
    state.effects.insert(
        r.effect,
        EffectState {
            owners,
            rules,
            since: r.since.min(state.now),
            expires_at: r.expires_at,
            ttl_ns: r.ttl_ns,
            rate: r.rate,
            via: r.via,
            firewall: r.firewall,
            dry: r.dry,
            manual_until,
        },
    );
}

/// Points a block or a throttle at the agent that holds what it renews.
fn send_through(action: &mut Action, agent: &str, is_firewall: bool) {
    match action {
        Action::Block { via, firewall, .. } => {
            *via = agent.to_string();
            *firewall = is_firewall;
        }
        Action::Throttle { via, .. } => *via = agent.to_string(),
        _ => {}
    }
}

fn held_by(es: &EffectState, rule: &str) -> bool {
    es.owners
        .iter()
        .any(|o| matches!(o, Owner::Rule(r, _) if r == rule))
}

/// Whether rule `name` holds `effect` (for any of its keys).
pub(super) fn rule_holds(state: &State, effect: &Effect, name: &str) -> bool {
    state
        .effects
        .get(effect)
        .is_some_and(|es| held_by(es, name))
}

/// Blocks and throttles that rule `name` holds (for any of its keys).
pub(super) fn held_by_rule(state: &State, name: &str) -> usize {
    state
        .effects
        .iter()
        .filter(|(e, es)| {
            matches!(e, Effect::Blocked(_) | Effect::Throttled(_)) && held_by(es, name)
        })
        .count()
}

/// Lets `owner` go of `owned`; effects without owners left are undone.
pub(super) fn release_owned(
    state: &mut State,
    owner: &Owner,
    owned: &mut Vec<Effect>,
    out: &mut Vec<Action>,
) {
    for effect in owned.drain(..) {
        let Some(es) = state.effects.get_mut(&effect) else {
            continue;
        };
        es.owners.remove(owner);
        if !es.owners.is_empty() {
            continue;
        }
        let (dry, via, firewall) = (es.dry, es.via.clone(), es.firewall);
        if let Some(es) = state.effects.remove(&effect) {
            state.undone.insert(effect.clone(), es.rules);
        }
        let a = state.rules.actuators.clone();
        let action = match &effect {
            Effect::Blocked(target) => Action::Release {
                id: state.id(),
                target: *target,
                via,
                firewall,
            },
            Effect::Throttled(target) => Action::Unthrottle {
                id: state.id(),
                target: *target,
                via,
            },
            Effect::LinkCut(vm) => Action::ConnectLink {
                id: state.id(),
                vm: vm.clone(),
                via,
            },
            Effect::AvIsolated(vm, av) => Action::AvConnect {
                id: state.id(),
                vm: vm.clone(),
                av_agent: av.clone(),
            },
            Effect::Quarantined(vm) => {
                State::alert(
                    out,
                    AlertKind::Notice,
                    format!(
                        "vm {vm} stays on quarantine host {}: migrate it back by hand",
                        a.quarantine
                    ),
                );
                continue;
            }
        };
        if dry {
            out.push(Action::DryRun(Box::new(action)));
        } else {
            if state.is_dry_run() {
                State::alert(
                    out,
                    AlertKind::Notice,
                    format!("dry-run: {effect:?} was really done and is left in place"),
                );
            }
            state.emit(out, action);
        }
    }
}

/// Blocks whose TTL ran out were removed by the controller's reaper: forget them, for every
/// holder. A key above the threshold again with nothing in place is a repeated offence.
pub(super) fn forget_expired(state: &mut State, now: Nanos) {
    let expired: Vec<Effect> = state
        .effects
        .iter()
        .filter(|(_, s)| s.expires_at.is_some_and(|t| t <= now))
        .map(|(e, _)| e.clone())
        .collect();
    for effect in expired {
        let Some(es) = state.effects.remove(&effect) else {
            continue;
        };
        for owner in es.owners {
            if let Owner::Rule(name, key) = owner {
                if let Some(ks) = state
                    .rule_index(&name)
                    .and_then(|i| state.keys[i].get_mut(&key))
                {
                    ks.owned.retain(|e| *e != effect);
                }
            }
        }
    }
}

/// The operator lets go of manual blocks whose TTL ran out. One that outlives them (a rule
/// sent a longer block since) stays while a rule holds it and is released when none does.
pub(super) fn end_manual_holds(state: &mut State, now: Nanos, out: &mut Vec<Action>) {
    let mut ended: Vec<Effect> = state
        .effects
        .iter()
        .filter(|(_, s)| s.owners.contains(&Owner::Operator) && s.manual_until <= now)
        .map(|(e, _)| e.clone())
        .collect();
    release_owned(state, &Owner::Operator, &mut ended, out);
}
