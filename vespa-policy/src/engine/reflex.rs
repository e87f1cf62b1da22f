//! The kernel reflex's blocks, adopted as the policy's own.
//!
//! A rule with `reflex = true` has the firewall agent's kernel block a source by itself the
//! moment it crosses the rule's `above`; the alert that says so ([`AlertBody::ReflexBlock`])
//! makes the block the rule's action for that source: held by the rule (listed, released when
//! calm, verified), and a step of its ladder. When the ladder's next rung is a block, the
//! kernel took it: the policy sends the firewall that block with the rung's TTL (the agent
//! refreshes its entry, so both agree on the TTL) and the next offence climbs further. On any
//! other rung (a throttle, a cut link, the top) the kernel's block is held with its own TTL and
//! the rung is taken as for any offence.
//!
//! [`AlertBody::ReflexBlock`]: crate::AlertBody::ReflexBlock

use super::effects::{apply_effect, Owner};
use super::{evaluate, place, with_key, KeyState, State};
use crate::rules::Step;
use crate::types::{Action, AlertKind, Effect, Key, Nanos, ReflexCause, Target};

/// A block the kernel placed by itself, as a rule adopts it.
pub(super) struct KernelBlock {
    pub(super) target: Target,
    pub(super) cause: ReflexCause,
    /// The value that crossed the threshold.
    pub(super) value: u64,
    /// Its TTL in the kernel (0: until released).
    pub(super) ttl_ns: Nanos,
}

/// Adopts the block the kernel placed on `k.target` for each reflex rule of its cause's
/// metric. Nothing happens without a firewall actuator or such a rule here (the rule may run
/// at another node); a protected target is released (the firewall should never have dropped
/// it).
pub(super) fn adopt(
    state: &mut State,
    origin: &str,
    k: KernelBlock,
    now: Nanos,
    out: &mut Vec<Action>,
) {
    let Some(firewall) = state.rules.actuators.firewall.clone() else {
        return;
    };
    let rules: Vec<usize> = (0..state.rules.rules.len())
        .filter(|&i| {
            let r = &state.rules.rules[i];
            r.reflex.is_some() && r.metric == k.cause.metric()
        })
        .collect();
    if rules.is_empty() {
        return;
    }
    let target = k.target;
    if let Some(entry) = state.protected_by(&target) {
        let text = format!("the kernel reflex of {origin} blocked {target}, but {entry} is on the allowlist: released");
        State::alert(out, AlertKind::Protected, text);
        if !state.effects.contains_key(&Effect::Blocked(target)) {
            let release = Action::Release {
                id: state.id(),
                target,
                via: firewall,
                firewall: true,
            };
            state.emit(out, release);
        }
        return;
    }
    let key = match target {
        Target::Ip(ip) => Key::Remote(ip),
        Target::Net(p) => Key::Net(p),
        Target::Mac(_) => {
            let text = format!("the kernel reflex of {origin} blocked {target}: a reflex block is by address, this one is not adopted and ends at its TTL");
            State::alert(out, AlertKind::Notice, text);
            return;
        }
    };
    for i in rules {
        let rule = &state.rules.rules[i];
        let key = rule.key_of(&key).into_owned();
        let window = rule.window_ns;
        with_key(state, i, &key, Some(origin), now, out, |state, ks, out| {
            ks.window.push(now, k.value, window);
            take(state, i, &key, ks, &k, &firewall, out);
        });
    }
}

/// The kernel's block as rule `i`'s action for `key` (see the module's documentation).
fn take(
    state: &mut State,
    i: usize,
    key: &Key,
    ks: &mut KeyState,
    k: &KernelBlock,
    firewall: &str,
    out: &mut Vec<Action>,
) {
    let now = state.now;
    // An offence the rule already acted on (it blocked the source's MAC, say) keeps its rung.
    let fresh = !(ks.active && ks.acted && !ks.owned.is_empty());
    ks.active = true;
    ks.calm_since = None;
    ks.last_offence_at = now;
    ks.spared = false;
    let rung_ttl = match state.rules.rules[i].ladder.get(ks.level) {
        Some(Step::Block { ttl_ns, .. }) if fresh => Some(*ttl_ns),
        _ => None,
    };
    let ttl_ns = rung_ttl.unwrap_or(k.ttl_ns);
    let block = Action::Block {
        id: state.id(),
        target: k.target,
        ttl_ns,
        via: firewall.to_string(),
        firewall: true,
    };
    let expires = (ttl_ns > 0).then(|| now.saturating_add(ttl_ns));
    if rung_ttl.is_some() {
        ks.level += 1;
        ks.acted = true;
        place(state, i, key, ks, block, expires, out);
    } else {
        let effect = Effect::Blocked(k.target);
        let name = state.rules.rules[i].name.clone();
        let owner = Owner::Rule(name, key.clone());
        apply_effect(state, effect.clone(), owner, expires, block, out);
        if !ks.owned.contains(&effect) {
            ks.owned.push(effect);
        }
        if fresh {
            ks.acted = false;
        }
        evaluate(state, i, key, ks, now, out);
    }
}
