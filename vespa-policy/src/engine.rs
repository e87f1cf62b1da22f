//! The state machine: `step(state, input, now) -> actions`.
//!
//! **No I/O and no clock.** Everything that happens comes in as an [`Input`], time is the
//! caller's `now`, and every map is ordered, so a recorded input stream replays to the same
//! actions (same ids, same order).
//!
//! The counters' side is here (windows, hysteresis, ladders, verification); what is in place
//! and who holds it is `effects`; what keeps a rule from acting (the allowlist, the caps) is
//! `guard`; the kernel reflex's blocks are adopted in `reflex`; the other inputs (infections,
//! acknowledgements, the operator, reloads, sensor health) are `control`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::rules::{KeyKind, Rules, Step, Via};
use crate::types::{
    Action, ActionId, AlertBody, AlertKind, Effect, Input, Key, Mac, Metric, Nanos, Target,
    Verification,
};
use crate::window::Window;

mod control;
mod effects;
mod guard;
mod reflex;
use control::{
    health, infected, manual_block, manual_release, on_result, rate_limited_blind_spot, reload,
};
pub use effects::InPlace;
use effects::{
    apply_effect, end_manual_holds, forget_expired, release_owned, rule_holds, EffectState, Owner,
};
use guard::{allow, capped, disallow, record_placed, topology_allow, CapState};
pub use guard::{AllowOrigin, Allowed, MAX_ALLOWED_BY_HAND};

#[derive(Debug, Clone, Copy)]
struct Verify {
    deadline: Nanos,
    since: Nanos,
    id: Option<ActionId>,
}

/// One key under one rule.
#[derive(Debug, Clone, Default)]
struct KeyState {
    window: Window,
    /// The agent that last reported this key (a `Connections` list zeroes only its own keys).
    source: Option<String>,
    /// Above `above` and not yet calm again (hysteresis).
    active: bool,
    /// This offence has had its action.
    acted: bool,
    /// The next ladder step.
    level: usize,
    calm_since: Option<Nanos>,
    last_action_at: Option<Nanos>,
    last_offence_at: Nanos,
    verify: Option<Verify>,
    /// The effect `verify` is about (the placement it checks).
    verifying: Option<Effect>,
    exhausted_alerted: bool,
    /// The allowlist spared this offence (alerted once; nothing is tried until it ends).
    spared: bool,
    owned: Vec<Effect>,
}

impl KeyState {
    /// Nothing worth remembering: dropped so that memory follows the keys in trouble.
    fn idle(&self, now: Nanos, cooldown: Nanos) -> bool {
        !self.active
            && self.owned.is_empty()
            && self.level == 0
            && self.verify.is_none()
            && self.window.is_empty()
            && self
                .last_action_at
                .is_none_or(|t| now.saturating_sub(t) >= cooldown)
    }
}

#[derive(Debug, Clone, Default)]
struct HealthSeen {
    events_lost: u64,
    map_full: u64,
    last_alert: Option<Nanos>,
}

/// The policy's whole memory, and the one record of what it has in place: callers list
/// [`State::effects`] (with when each started and who holds it) instead of keeping a copy.
#[derive(Debug, Clone)]
pub struct State {
    rules: Rules,
    dry_run_override: Option<bool>,
    now: Nanos,
    next_id: ActionId,
    /// Per rule (same index as `rules.rules`).
    keys: Vec<BTreeMap<Key, KeyState>>,
    /// What is in place, with its holders (the operator's manual blocks included).
    effects: BTreeMap<Effect, EffectState>,
    /// The effects the current step undid, with the rules that held them (one step only).
    undone: BTreeMap<Effect, BTreeSet<String>>,
    /// Actions awaiting verification, for matching an `ActionResult`.
    pending: BTreeMap<ActionId, (String, Key)>,
    neighbours: BTreeMap<IpAddr, (Mac, Option<String>)>,
    health: BTreeMap<String, HealthSeen>,
    /// The operator's protections (`Input::Allow`), kept across reloads, with their notes.
    allow_operator: BTreeMap<Target, Option<String>>,
    /// The tree's own machines and controllers (`Input::TopologyAllow`).
    allow_topology: Vec<(Target, String)>,
    /// Per rule name: its recent blocks and cap alerts.
    caps: BTreeMap<String, CapState>,
}

impl State {
    pub fn new(rules: Rules) -> State {
        State {
            keys: vec![BTreeMap::new(); rules.rules.len()],
            rules,
            dry_run_override: None,
            now: 0,
            next_id: 1,
            effects: BTreeMap::new(),
            undone: BTreeMap::new(),
            pending: BTreeMap::new(),
            neighbours: BTreeMap::new(),
            health: BTreeMap::new(),
            allow_operator: BTreeMap::new(),
            allow_topology: Vec::new(),
            caps: BTreeMap::new(),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    pub fn is_dry_run(&self) -> bool {
        self.dry_run_override.unwrap_or(self.rules.dry_run)
    }

    /// Keys tracked across all rules.
    pub fn tracked_keys(&self) -> usize {
        self.keys.iter().map(BTreeMap::len).sum()
    }

    /// The next ladder step of `key` under rule `rule` (0 when unknown).
    pub fn level(&self, rule: &str, key: &Key) -> usize {
        self.rule_index(rule)
            .and_then(|i| self.keys[i].get(key))
            .map_or(0, |k| k.level)
    }

    fn rule_index(&self, name: &str) -> Option<usize> {
        self.rules.rules.iter().position(|r| r.name == name)
    }

    fn emit(&mut self, out: &mut Vec<Action>, action: Action) {
        if self.is_dry_run() && action.is_actuator() {
            out.push(Action::DryRun(Box::new(action)));
        } else {
            out.push(action);
        }
    }

    fn alert(out: &mut Vec<Action>, kind: AlertKind, text: String) {
        out.push(Action::Alert { kind, text });
    }

    fn id(&mut self) -> ActionId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

/// Feeds one input to the policy and returns what to do, in order.
///
/// `now` is the caller's monotonic time; a `now` older than one already seen is treated as
/// that one (time never goes backwards inside the policy).
pub fn step(state: &mut State, input: Input, now: Nanos) -> Vec<Action> {
    let now = now.max(state.now);
    state.now = now;
    state.undone.clear();
    let mut out = Vec::new();
    match input {
        Input::Alert { origin, body, .. } => on_alert(state, origin, body, now, &mut out),
        Input::Sample { key, metric, value } => {
            sample(state, &key, metric, value, None, now, &mut out)
        }
        Input::Tick => tick(state, now, &mut out),
        Input::ActionResult { id, ok, error } => on_result(state, id, ok, error, now, &mut out),
        Input::ManualBlock { target, ttl_ns } => manual_block(state, target, ttl_ns, &mut out),
        Input::ManualRelease { key } => manual_release(state, &key, now, &mut out),
        Input::SetDryRun(on) => state.dry_run_override = Some(on),
        Input::Reload(rules) => reload(state, *rules, &mut out),
        Input::Neighbour { ip, mac, vm } => {
            state.neighbours.insert(ip, (mac, vm));
        }
        Input::Health {
            origin,
            events_lost,
            map_full,
        } => health(state, origin, events_lost, map_full, now, &mut out),
        Input::Allow { target, note } => allow(state, target, note, &mut out),
        Input::Disallow { target } => disallow(state, &target),
        Input::TopologyAllow(entries) => topology_allow(state, entries, &mut out),
        Input::Restore(r) => effects::restore(state, *r),
    }
    out
}

fn on_alert(state: &mut State, origin: String, body: AlertBody, now: Nanos, out: &mut Vec<Action>) {
    match body {
        AlertBody::ConnThreshold {
            addr, established, ..
        } => sample(
            state,
            &Key::Remote(addr),
            Metric::Established,
            established,
            Some(&origin),
            now,
            out,
        ),
        AlertBody::SynThreshold {
            addr,
            syns_in_second,
            ..
        } => sample(
            state,
            &Key::Remote(addr),
            Metric::SynRate,
            syns_in_second,
            Some(&origin),
            now,
            out,
        ),
        AlertBody::Bandwidth {
            iface,
            rx_bytes,
            tx_bytes,
        } => {
            let key = Key::Iface(format!("{origin}:{iface}"));
            sample(
                state,
                &key,
                Metric::RxBytes,
                rx_bytes,
                Some(&origin),
                now,
                out,
            );
            sample(
                state,
                &key,
                Metric::TxBytes,
                tx_bytes,
                Some(&origin),
                now,
                out,
            );
        }
        AlertBody::Connections {
            per_remote,
            truncated,
        } => connections(state, &origin, &per_remote, truncated, now, out),
        AlertBody::Infected {
            vm,
            file,
            signature,
        } => infected(state, &origin, vm, &file, &signature, out),
        AlertBody::ReflexBlock {
            target,
            cause,
            value,
            ttl_s,
            ..
        } => {
            let ttl_ns = ttl_s.saturating_mul(crate::types::SECOND);
            let kernel = reflex::KernelBlock {
                target,
                cause,
                value,
                ttl_ns,
            };
            reflex::adopt(state, &origin, kernel, now, out)
        }
        // Already shown to operators by the VO; the policy learns failures from ActionResult.
        AlertBody::ActuatorFailed { .. } | AlertBody::Text(_) => {}
    }
}

/// A connections table: one sample per key of each rule on established connections per
/// remote (addresses aggregated to one prefix add up), and 0 for the keys a complete table
/// no longer lists.
fn connections(
    state: &mut State,
    origin: &str,
    per_remote: &[(IpAddr, u64)],
    truncated: bool,
    now: Nanos,
    out: &mut Vec<Action>,
) {
    for i in 0..state.rules.rules.len() {
        let rule = &state.rules.rules[i];
        if rule.metric != Metric::Established || rule.key != KeyKind::Remote {
            continue;
        }
        let mut per_key: BTreeMap<Key, u64> = BTreeMap::new();
        for (ip, n) in per_remote {
            let sum = per_key
                .entry(rule.key_of(&Key::Remote(*ip)).into_owned())
                .or_default();
            *sum = sum.saturating_add(*n);
        }
        // A complete list holds every remote the agent sees: one it no longer lists has
        // none. A truncated one says nothing of the remotes it leaves out.
        let gone: Vec<Key> = if truncated {
            Vec::new()
        } else {
            state.keys[i]
                .iter()
                .filter(|(key, ks)| {
                    !per_key.contains_key(key) && ks.source.as_deref() == Some(origin)
                })
                .map(|(key, _)| key.clone())
                .collect()
        };
        let zeroes = gone.into_iter().map(|key| (key, 0));
        for (key, n) in per_key.into_iter().chain(zeroes) {
            sample_rule(state, i, &key, n, Some(origin), now, out);
        }
    }
}

fn key_matches(kind: KeyKind, key: &Key) -> bool {
    matches!(
        (kind, key),
        (KeyKind::Remote, Key::Remote(_) | Key::Net(_))
            | (KeyKind::Vm, Key::Vm(_))
            | (KeyKind::Iface, Key::Iface(_))
            | (KeyKind::Mac, Key::Mac(_))
    )
}

fn sample(
    state: &mut State,
    key: &Key,
    metric: Metric,
    value: u64,
    source: Option<&str>,
    now: Nanos,
    out: &mut Vec<Action>,
) {
    for i in 0..state.rules.rules.len() {
        let rule = &state.rules.rules[i];
        if rule.metric != metric || !key_matches(rule.key, key) {
            continue;
        }
        let key = rule.key_of(key);
        sample_rule(state, i, &key, value, source, now, out);
    }
}

/// One sample of rule `i`'s metric for `key` (already the rule's key: aggregated).
fn sample_rule(
    state: &mut State,
    i: usize,
    key: &Key,
    value: u64,
    source: Option<&str>,
    now: Nanos,
    out: &mut Vec<Action>,
) {
    let window = state.rules.rules[i].window_ns;
    with_key(state, i, key, source, now, out, |state, ks, out| {
        ks.window.push(now, value, window);
        evaluate(state, i, key, ks, now, out);
    });
}

/// Runs `f` on rule `i`'s state of `key`, tracked first if new (up to the rule's `max_keys`:
/// beyond, a blind-spot alert and `f` does not run), dropped afterwards when idle.
fn with_key(
    state: &mut State,
    i: usize,
    key: &Key,
    source: Option<&str>,
    now: Nanos,
    out: &mut Vec<Action>,
    f: impl FnOnce(&mut State, &mut KeyState, &mut Vec<Action>),
) {
    let rule = &state.rules.rules[i];
    let cooldown = rule.cooldown_ns;
    if !state.keys[i].contains_key(key) {
        if state.keys[i].len() >= rule.max_keys {
            let text = format!(
                "rule {}: {} keys tracked, new keys such as {key} are ignored",
                rule.name, rule.max_keys
            );
            let source = format!("policy rule {}", rule.name);
            rate_limited_blind_spot(state, source, text, now, out);
            return;
        }
        state.keys[i].insert(key.clone(), KeyState::default());
    }
    // The rule's map is taken out meanwhile (nothing `f` calls touches keys), so the key's
    // state is updated in place rather than removed and re-inserted.
    let mut map = std::mem::take(&mut state.keys[i]);
    if let Some(ks) = map.get_mut(key) {
        if let Some(src) = source {
            if ks.source.as_deref() != Some(src) {
                ks.source = Some(src.to_string());
            }
        }
        f(state, ks, out);
        if ks.idle(now, cooldown) {
            map.remove(key);
        }
    }
    state.keys[i] = map;
}

fn tick(state: &mut State, now: Nanos, out: &mut Vec<Action>) {
    forget_expired(state, now);
    end_manual_holds(state, now, out);
    for i in 0..state.keys.len() {
        let cooldown = state.rules.rules[i].cooldown_ns;
        let mut map = std::mem::take(&mut state.keys[i]);
        map.retain(|key, ks| {
            evaluate(state, i, key, ks, now, out);
            !ks.idle(now, cooldown)
        });
        state.keys[i] = map;
    }
}

/// Applies rule `i` to one key. `state.keys[i]` is out of `state` meanwhile (see `sample`):
/// nothing here may look keys up.
fn evaluate(
    state: &mut State,
    i: usize,
    key: &Key,
    ks: &mut KeyState,
    now: Nanos,
    out: &mut Vec<Action>,
) {
    let rule = &state.rules.rules[i];
    let (above, below, window, how) = (rule.above, rule.below, rule.window_ns, rule.aggregate);
    let (calm_ns, cooldown, forget, verify_max) = (
        rule.calm_ns,
        rule.cooldown_ns,
        rule.forget_ns,
        rule.verify_max,
    );
    // Verification looks at the samples since the action, read before the window drops them.
    let verified_value = ks
        .verify
        .filter(|v| now >= v.deadline)
        .map(|v| ks.window.current_since(how, v.since, now));
    ks.window.prune(now, window);
    let value = ks.window.aggregate(how, now, window);
    if value > above {
        ks.calm_since = None;
        ks.last_offence_at = now;
        // A crossing, or still above with nothing in place any more (a block expired), unless
        // the allowlist spared this offence.
        if !ks.active || (ks.owned.is_empty() && !ks.spared) {
            ks.active = true;
            ks.acted = false;
        }
    } else if value < below {
        if ks.active || !ks.owned.is_empty() {
            let since = *ks.calm_since.get_or_insert(now);
            if now - since >= calm_ns {
                // Calm before the deadline: it took. Said before the release ends the record.
                if let (Some(v), Some(effect)) = (ks.verify, ks.verifying.take()) {
                    let value = ks.window.current_since(how, v.since, now);
                    let outcome = Verification::Passed {
                        value,
                        max: verify_max,
                    };
                    out.push(Action::Verified { effect, outcome });
                }
                let owner = Owner::Rule(state.rules.rules[i].name.clone(), key.clone());
                release_owned(state, &owner, &mut ks.owned, out);
                if let Some(id) = ks.verify.take().and_then(|v| v.id) {
                    state.pending.remove(&id);
                }
                ks.active = false;
                ks.acted = false;
                ks.calm_since = None;
                ks.exhausted_alerted = false;
                ks.spared = false;
            }
        }
    } else {
        ks.calm_since = None;
    }

    let mut force = false;
    if let Some(v) = ks.verify.filter(|v| now >= v.deadline) {
        ks.verify = None;
        if let Some(id) = v.id {
            state.pending.remove(&id);
        }
        let current = verified_value.unwrap_or(0);
        let failed = ks.active && current > verify_max;
        if let Some(effect) = ks.verifying.take() {
            let outcome = if failed {
                Verification::Failed {
                    value: current,
                    max: verify_max,
                }
            } else {
                Verification::Passed {
                    value: current,
                    max: verify_max,
                }
            };
            out.push(Action::Verified { effect, outcome });
        }
        if failed {
            let name = &state.rules.rules[i].name;
            State::alert(out, AlertKind::DidNotTake, format!("rule {name}: action on {key} did not take: {current} > {verify_max} after the deadline"));
            ks.acted = false;
            force = true;
        }
    }

    let cooled = ks
        .last_action_at
        .is_none_or(|t| now.saturating_sub(t) >= cooldown);
    // Never act while calming down: a cool-down that ends after the traffic dropped is no offence.
    if ks.active && !ks.acted && (force || (cooled && ks.calm_since.is_none())) {
        act(state, i, key, ks, now, out);
    }

    if !ks.active
        && ks.owned.is_empty()
        && ks.level > 0
        && now.saturating_sub(ks.last_offence_at) >= forget
    {
        ks.level = 0;
    }
}

/// Takes the next applicable rung of rule `i`'s ladder for `key`. A block or throttle of a
/// protected target is not proposed (an alert says so, once per offence); one a cap forbids
/// waits (an alert at most once a minute) and is tried again at the next evaluation.
fn act(
    state: &mut State,
    i: usize,
    key: &Key,
    ks: &mut KeyState,
    now: Nanos,
    out: &mut Vec<Action>,
) {
    let name = state.rules.rules[i].name.clone();
    ks.acted = true;
    loop {
        let Some(rung) = state.rules.rules[i].ladder.get(ks.level).cloned() else {
            if !ks.exhausted_alerted {
                ks.exhausted_alerted = true;
                State::alert(
                    out,
                    AlertKind::LadderExhausted,
                    format!(
                        "rule {name}: {key} still offending and the ladder has no further step"
                    ),
                );
            }
            return;
        };
        let a = state.rules.actuators.clone();
        let (expires, action) = match rung {
            Step::Block { ttl_ns, via } => {
                let Some(target) = block_target(state, key) else {
                    ks.level += 1;
                    continue;
                };
                let effect = Effect::Blocked(target);
                if !allowed_to(state, i, key, ks, &effect, now, out) {
                    return;
                }
                let action = Action::Block {
                    id: state.id(),
                    target,
                    ttl_ns,
                    via: a.of(via).to_string(),
                    firewall: via == Via::Firewall,
                };
                (Some(now.saturating_add(ttl_ns)), action)
            }
            Step::Throttle { rate, ttl_ns } => {
                let Some(target) = block_target(state, key) else {
                    ks.level += 1;
                    continue;
                };
                let effect = Effect::Throttled(target);
                if !allowed_to(state, i, key, ks, &effect, now, out) {
                    return;
                }
                let action = Action::Throttle {
                    id: state.id(),
                    target,
                    rate,
                    ttl_ns,
                    via: a.firewall.clone().unwrap_or_default(),
                };
                (Some(now.saturating_add(ttl_ns)), action)
            }
            Step::CutLink => {
                let Some(vm) = vm_of(state, key) else {
                    ks.level += 1;
                    continue;
                };
                let id = state.id();
                (
                    None,
                    Action::CutLink {
                        id,
                        vm,
                        via: a.libvirt,
                    },
                )
            }
            Step::Migrate => {
                let Some(vm) = vm_of(state, key) else {
                    ks.level += 1;
                    continue;
                };
                let id = state.id();
                (
                    None,
                    Action::Migrate {
                        id,
                        vm,
                        to: a.quarantine,
                        via: a.libvirt,
                    },
                )
            }
        };
        ks.level += 1;
        place(state, i, key, ks, action, expires, out);
        return;
    }
}

/// Whether rule `i` may put `effect` (a block or a throttle) in place for `key`: not when its
/// target is protected (the offence is spared, with an alert), nor when a cap forbids a new
/// one (tried again later, alerted at most once a minute). A new one counts towards the caps.
fn allowed_to(
    state: &mut State,
    i: usize,
    key: &Key,
    ks: &mut KeyState,
    effect: &Effect,
    now: Nanos,
    out: &mut Vec<Action>,
) -> bool {
    let (verb, target) = match effect {
        Effect::Throttled(t) => ("throttle", t),
        Effect::Blocked(t) => ("block", t),
        _ => return true,
    };
    if let Some(entry) = state.protected_by(target) {
        ks.spared = true;
        let name = &state.rules.rules[i].name;
        let text = format!(
            "rule {name}: would have {verb}ed {target} ({key}), but {entry} is on the allowlist: not {verb}ed"
        );
        State::alert(out, AlertKind::Protected, text);
        return false;
    }
    let name = &state.rules.rules[i].name;
    if rule_holds(state, effect, name) {
        return true; // renewed or escalated: the rule holds no more than before
    }
    if capped(state, i, key, verb, now, out) {
        ks.acted = false;
        return false;
    }
    if !state.effects.contains_key(effect) {
        record_placed(state, i, now); // a new entry in the agent's table
    }
    true
}

/// Puts the effect of `action` in place for rule `i`'s `key` until `expires` (sending
/// `action` unless an identical effect is), and starts its verification.
fn place(
    state: &mut State,
    i: usize,
    key: &Key,
    ks: &mut KeyState,
    action: Action,
    expires: Option<Nanos>,
    out: &mut Vec<Action>,
) {
    let Some(effect) = action.effect() else {
        return;
    };
    let now = state.now;
    let name = state.rules.rules[i].name.clone();
    let verify_ns = state.rules.rules[i].verify_ns;
    let owner = Owner::Rule(name.clone(), key.clone());
    let emitted = apply_effect(state, effect.clone(), owner, expires, action, out);
    if !ks.owned.contains(&effect) {
        ks.owned.push(effect.clone());
    }
    ks.last_action_at = Some(now);
    if verify_ns > 0 && !state.is_dry_run() {
        if let Some(id) = emitted {
            state.pending.insert(id, (name, key.clone()));
        }
        ks.verify = Some(Verify {
            deadline: now.saturating_add(verify_ns),
            since: now,
            id: emitted,
        });
        ks.verifying = Some(effect);
    } else if verify_ns == 0 && emitted.is_some() && !state.is_dry_run() {
        let why = format!("rule {name} does not verify (verify_s = 0)");
        let outcome = Verification::NotVerifiable { why };
        out.push(Action::Verified { effect, outcome });
    }
}

/// The attacker, never us: its MAC when the neighbour view knows one that is not ours, else
/// its address. (2014 blocked the monitored host's own MAC.) The neighbour view only holds
/// on-link addresses, so a remote behind a router is blocked by IP, not by the router's MAC.
fn block_target(state: &State, key: &Key) -> Option<Target> {
    let own = |m: &Mac| state.rules.own_macs.contains(m);
    match key {
        Key::Remote(ip) => match state.neighbours.get(ip) {
            Some((mac, _)) if !own(mac) => Some(Target::Mac(*mac)),
            _ => Some(Target::Ip(*ip)),
        },
        Key::Net(p) => Some(Target::Net(*p)),
        Key::Mac(mac) if !own(mac) => Some(Target::Mac(*mac)),
        Key::Mac(_) | Key::Vm(_) | Key::Iface(_) => None,
    }
}

/// The VM behind a key, when it is one of ours.
fn vm_of(state: &State, key: &Key) -> Option<String> {
    match key {
        Key::Vm(vm) => Some(vm.clone()),
        Key::Remote(ip) => state.neighbours.get(ip).and_then(|(_, vm)| vm.clone()),
        Key::Mac(mac) => state
            .neighbours
            .values()
            .find(|(m, vm)| m == mac && vm.is_some())
            .and_then(|(_, vm)| vm.clone()),
        Key::Iface(_) | Key::Net(_) => None,
    }
}
