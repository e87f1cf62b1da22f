//! Inputs that do not come from counters: infections, actuator acknowledgements, the
//! operator (manual block and release), rule reloads and sensor health.

use std::collections::BTreeSet;

use super::effects::{apply_effect, release_owned, Owner};
use super::guard::{release_protected, retain_caps};
use super::{act, State};
use crate::rules::Rules;
use crate::rules::Via;
use crate::types::{Action, ActionId, AlertKind, Effect, Key, Nanos, Target, Verification};

pub(super) fn infected(
    state: &mut State,
    origin: &str,
    vm: String,
    file: &str,
    signature: &str,
    out: &mut Vec<Action>,
) {
    State::alert(
        out,
        AlertKind::Notice,
        format!("infected file {file:?} ({signature}) in vm {vm}"),
    );
    if !state.rules.isolate_infected {
        return;
    }
    let a = state.rules.actuators.clone();
    let id = state.id();
    let cut = Action::CutLink {
        id,
        vm: vm.clone(),
        via: a.libvirt,
    };
    apply_effect(
        state,
        Effect::LinkCut(vm.clone()),
        Owner::Infection,
        None,
        cut,
        out,
    );
    // The alert's origin is the AV agent watching this VM; it must now go through the hypervisor.
    let id = state.id();
    let av = Action::AvIsolate {
        id,
        vm: vm.clone(),
        av_agent: origin.to_string(),
        hypervisor_agent: a.hypervisor,
    };
    apply_effect(
        state,
        Effect::AvIsolated(vm, origin.to_string()),
        Owner::Infection,
        None,
        av,
        out,
    );
}

pub(super) fn on_result(
    state: &mut State,
    id: ActionId,
    ok: bool,
    error: Option<String>,
    now: Nanos,
    out: &mut Vec<Action>,
) {
    let pending = state.pending.remove(&id);
    if ok {
        return;
    }
    let why = error.unwrap_or_else(|| "no reason given".into());
    let Some((name, key)) = pending else {
        if id >= state.next_id {
            return; // Not an id this policy issued.
        }
        State::alert(
            out,
            AlertKind::DidNotTake,
            format!("action {id} failed: {why}"),
        );
        return;
    };
    State::alert(
        out,
        AlertKind::DidNotTake,
        format!("rule {name}: action {id} on {key} did not take: {why}"),
    );
    let Some(i) = state.rule_index(&name) else {
        return;
    };
    let Some(mut ks) = state.keys[i].remove(&key) else {
        return;
    };
    if ks.verify.is_some_and(|v| v.id == Some(id)) && ks.active {
        ks.verify = None;
        // No counter can judge what the actuator did not put in place: said, so that the
        // decision's record is not left waiting for a verdict (the ladder acts again).
        if let Some(effect) = ks.verifying.take() {
            let why = format!("the actuator did not put it in place ({why})");
            let outcome = Verification::NotVerifiable { why };
            out.push(Action::Verified { effect, outcome });
        }
        act(state, i, &key, &mut ks, now, out);
    }
    state.keys[i].insert(key, ks);
}

/// The operator's block: held by [`Owner::Operator`] beside whatever rule holds the target,
/// sent unless an identical or longer block is in place, let go at its TTL (a tick) or by a
/// manual release of the target.
pub(super) fn manual_block(
    state: &mut State,
    target: Target,
    ttl_ns: Nanos,
    out: &mut Vec<Action>,
) {
    if ttl_ns == 0 {
        let text = format!("manual block of {target} ignored: blocks always expire (ttl 0)");
        State::alert(out, AlertKind::Notice, text);
        return;
    }
    if let Target::Mac(m) = target {
        if state.rules.own_macs.contains(&m) {
            let text = format!("manual block of {target} ignored: one of our own MACs");
            State::alert(out, AlertKind::Notice, text);
            return;
        }
    }
    if let Some(entry) = state.protected_by(&target) {
        let text = format!("manual block of {target} ignored: {entry} is on the allowlist");
        State::alert(out, AlertKind::Protected, text);
        return;
    }
    let via = state.rules.actuators.default_block();
    if matches!(target, Target::Net(_)) && via != Via::Firewall {
        let text = format!("manual block of {target} ignored: a prefix is blocked by a firewall agent only, and none is named in [actuators] firewall");
        State::alert(out, AlertKind::Notice, text);
        return;
    }
    let until = state.now.saturating_add(ttl_ns);
    let id = state.id();
    let block = Action::Block {
        id,
        target,
        ttl_ns,
        via: state.rules.actuators.of(via).to_string(),
        firewall: via == Via::Firewall,
    };
    let effect = Effect::Blocked(target);
    let sent = apply_effect(
        state,
        effect.clone(),
        Owner::Operator,
        Some(until),
        block,
        out,
    );
    if let Some(es) = state.effects.get_mut(&effect) {
        es.manual_until = es.manual_until.max(until);
    }
    if sent.is_some() && !state.is_dry_run() {
        let why = "a block by hand: no rule's counter watches it".to_string();
        let outcome = Verification::NotVerifiable { why };
        out.push(Action::Verified { effect, outcome });
    }
}

pub(super) fn manual_release(state: &mut State, key: &Key, now: Nanos, out: &mut Vec<Action>) {
    for i in 0..state.keys.len() {
        let Some(mut ks) = state.keys[i].remove(key) else {
            continue;
        };
        let name = state.rules.rules[i].name.clone();
        release_owned(state, &Owner::Rule(name, key.clone()), &mut ks.owned, out);
        if let Some(id) = ks.verify.take().and_then(|v| v.id) {
            state.pending.remove(&id);
        }
        // The operator's word: start over, and give them a cool-down before acting again.
        ks.active = false;
        ks.acted = false;
        ks.level = 0;
        ks.calm_since = None;
        ks.exhausted_alerted = false;
        ks.last_action_at = Some(now);
        state.keys[i].insert(key.clone(), ks);
    }
    // The operator names what they see (a blocked address or MAC, a cut or quarantined VM):
    // release it whoever holds it. Each holder released owns nothing afterwards, so this ends.
    let concerned: Vec<Effect> = state
        .effects
        .keys()
        .filter(|e| concerns(e, key))
        .cloned()
        .collect();
    for effect in &concerned {
        let holders: Vec<Key> = state.effects.get(effect).map_or_else(Vec::new, |es| {
            es.owners
                .iter()
                .filter_map(|o| match o {
                    Owner::Rule(_, k) if k != key => Some(k.clone()),
                    _ => None,
                })
                .collect()
        });
        for holder in holders {
            manual_release(state, &holder, now, out);
        }
    }
    // What no rule holds: the operator's own blocks, an infected VM's isolation, what the
    // rules held before a restart.
    let restored: BTreeSet<Owner> = concerned
        .iter()
        .filter_map(|e| state.effects.get(e))
        .flat_map(|es| es.owners.iter())
        .filter(|o| matches!(o, Owner::Restored(_)))
        .cloned()
        .collect();
    for owner in [Owner::Operator, Owner::Infection]
        .into_iter()
        .chain(restored)
    {
        let mut held: Vec<Effect> = concerned
            .iter()
            .filter(|e| {
                state
                    .effects
                    .get(e)
                    .is_some_and(|es| es.owners.contains(&owner))
            })
            .cloned()
            .collect();
        release_owned(state, &owner, &mut held, out);
    }
}

/// Whether releasing `key` by hand should undo `effect`.
fn concerns(effect: &Effect, key: &Key) -> bool {
    match (effect, key) {
        (Effect::Blocked(t) | Effect::Throttled(t), key) => match (t, key) {
            (Target::Ip(a), Key::Remote(b)) => a == b,
            (Target::Mac(a), Key::Mac(b)) => a == b,
            (Target::Net(a), Key::Net(b)) => a == b,
            _ => false,
        },
        (Effect::LinkCut(v) | Effect::Quarantined(v) | Effect::AvIsolated(v, _), Key::Vm(w)) => {
            v == w
        }
        _ => false,
    }
}

pub(super) fn reload(state: &mut State, rules: Rules, out: &mut Vec<Action>) {
    let old_rules = std::mem::replace(&mut state.rules, rules);
    let mut old_keys = std::mem::take(&mut state.keys);
    let mut keys = Vec::with_capacity(state.rules.rules.len());
    for new in &state.rules.rules {
        let carried = old_rules
            .rules
            .iter()
            .position(|o| o.name == new.name && o.metric == new.metric && o.key == new.key)
            .map(|j| std::mem::take(&mut old_keys[j]));
        let mut map = carried.unwrap_or_default();
        for ks in map.values_mut() {
            ks.level = ks.level.min(new.ladder.len());
        }
        keys.push(map);
    }
    state.keys = keys;
    // Keys of rules that are gone: nobody will ever release what they hold, so release now.
    for (j, map) in old_keys.into_iter().enumerate() {
        let name = old_rules.rules[j].name.clone();
        for (key, mut ks) in map {
            release_owned(
                state,
                &Owner::Rule(name.clone(), key.clone()),
                &mut ks.owned,
                out,
            );
            if let Some(id) = ks.verify.and_then(|v| v.id) {
                state.pending.remove(&id);
            }
        }
    }
    retain_caps(state);
    // The file's allowlist may have grown.
    release_protected(state, out);
}

pub(super) fn health(
    state: &mut State,
    origin: String,
    events_lost: u64,
    map_full: u64,
    now: Nanos,
    out: &mut Vec<Action>,
) {
    let h = state.health.entry(origin.clone()).or_default();
    // Totals that went down mean the agent restarted: everything it reports is new.
    let lost = if events_lost >= h.events_lost {
        events_lost - h.events_lost
    } else {
        events_lost
    };
    let full = if map_full >= h.map_full {
        map_full - h.map_full
    } else {
        map_full
    };
    h.events_lost = events_lost;
    h.map_full = map_full;
    if lost > 0 || full > 0 {
        let text = format!("blind spot: sensor {origin} lost {lost} events and hit {full} full-map updates; attacks may go unseen");
        rate_limited_blind_spot(state, origin, text, now, out);
    }
}

/// One blind-spot alert per source per cool-down: a sensor losing events every second must
/// not bury the operator (the totals keep counting meanwhile).
pub(super) fn rate_limited_blind_spot(
    state: &mut State,
    source: String,
    text: String,
    now: Nanos,
    out: &mut Vec<Action>,
) {
    let cooldown = state.rules.blind_spot_cooldown_ns;
    let h = state.health.entry(source).or_default();
    if h.last_alert
        .is_none_or(|t| now.saturating_sub(t) >= cooldown)
    {
        h.last_alert = Some(now);
        State::alert(out, AlertKind::BlindSpot, text);
    }
}
