//! Reconciliation: what each actuator holds compared with what the policy has in place, and
//! the difference made good.
//!
//! The policy's [`State`](vespa_policy::State) is what VESPA wants in force (rebuilt at start
//! from the decision ledger once there is one). At the driver's start and then every
//! `[reconcile] every_s` of the policy file (60 s by default), each driver lists, for every
//! actuator it uses, what that actuator holds with VESPA's mark, and compares it
//! ([`diff::compare`]) with its effects carried out there (not dry-run):
//!
//! - held and wanted: in force, nothing is sent; an SDN block whose flows the switches hold
//!   but the agent's book lost (a restarted agent) is `adopt_block`ed, so its release and
//!   its time-to-live work again (`adopted`);
//! - wanted and not held: placed again with the call [`call_of`] builds, for the time the
//!   policy still wants it (`missing`); an effect placed in the last [`SETTLE`] is not judged,
//!   its own call may still be on its way;
//! - held with VESPA's mark, not wanted and placed by nobody's call: removed (`stray`): an
//!   SDN flow whose cookie the agent's book does not know (a previous agent's, or added
//!   behind its back) by its cookie (`drop_flows`); a kernel reflex block the policy has not
//!   adopted, once `[reconcile] reflex_grace_s` has passed since reconciliation first saw it
//!   (its alert may still be on its way), by its target. A block an operator asked of the
//!   agent directly (in the SDN agent's book, or a kernel block the reflex did not place) is
//!   the operator's and stays. A VM's link found down that the policy does not want is
//!   reconnected only if VESPA cut it (the decision ledger's answer, `ledger_placed`);
//!   otherwise it is counted and raised, and left. A kernel throttle or an AV agent's
//!   isolation nobody wants is VESPA's only by the ledger too (their actuators keep no mark
//!   of who asked; a throttle only while the ledger's decision has time left, since the
//!   kernel ends VESPA's at its expiry): otherwise the operator's, left and not counted;
//! - held otherwise than wanted (`stale`): a throttle at another rate, an AV agent routed
//!   through another hypervisor agent, is placed again as the policy wants it (`missing`);
//! - quarantines are judged from the source hypervisor's `list_vms`: a wanted one whose VM
//!   still runs there is migrated again; one nobody wants whose VM VESPA quarantined (the
//!   ledger) and that does not run there is counted once per run and left, since releasing a
//!   quarantine never migrates back. A VM that does not run here has no live link: its cut
//!   link is not judged. An infected VM's isolation is its cut link (on the libvirt agent,
//!   held by the infection, so never a stray) and its AV agent's route (`status`); the VO
//!   reconciles every AV agent, since an infection isolates through the one that found it.
//!
//! Each kind of listing goes through one step, [`PolicyDriver::judge`]: the actuator's rows
//! turned into [`Held`] entries against what the policy wants there, and compared.
//!
//! Strays are only removed by a driver that is alone on its actuators: the VO's when no rule
//! is placed at an HO. With a fast path, the VO's and the HOs' drivers share actuators and
//! none of them can tell the other's blocks from strays, so they re-apply and adopt what
//! they want and leave the rest. In dry-run nothing is reconciled (nothing would be sent).
//!
//! Every difference is counted in `vespa_decisions_drift_total{node,actuator,kind}` and each pass
//! that finds any raises one `Text` alert per actuator, bounded, naming a few of them. The
//! calls share the driver's bound on calls in flight, are retried with backoff, and a pass
//! holds the policy's mutex only to copy what it wants, never across a call.

mod diff;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::time::Instant;
use vespa_node::backoff::Backoff;
use vespa_node::{AgentKind, NodeHandle, Role};
use vespa_policy::{Action, Effect, Rate, Rules, Target};
use vespa_proto::verbs::{
    AvVerb, BlockInfo, BlockSelector, FirewallVerb, HeldFlow, LibvirtVerb, Page, SdnVerb, Shaped,
    ThrottleInfo,
};
use vespa_proto::AlertBody;

use super::convert::{call_of, wire_rate, wire_target, wire_ttl, ActuatorCall};
use super::vms::Vm;
use super::{PolicyDriver, CALL_TIMEOUT, TICK};
use diff::{compare, Held, Plan};

/// An effect placed this recently is not judged missing: its own call may still be queued.
pub const SETTLE: Duration = Duration::from_secs(5);
/// The first retry after a listing failed (an agent not connected yet); doubles up to the
/// period.
const RETRY_MIN: Duration = Duration::from_secs(1);
/// Pages asked of one actuator in one pass at most (2,000 rows each): beyond, the pass stops
/// there and says so.
const MAX_PAGES: usize = 64;
/// Attempts of one call (listing or correction) within a pass.
const ATTEMPTS: u32 = 3;
/// Targets an alert names at most.
const EXAMPLES: usize = 5;
/// Effects remembered as recently sent at most.
const MAX_FLYING: usize = 65_536;
/// Characters of an error an alert quotes at most.
const MAX_ERROR: usize = 200;

/// What reconciliation keeps between passes.
#[derive(Default)]
pub(super) struct Reconciler {
    /// The effects whose policy calls are on their way (queued behind the bound on calls
    /// in flight, or sent), and when the last one ended: an actuator listed meanwhile may or
    /// may not show them yet, so a pass judges neither their absence nor their presence.
    flying: Mutex<HashMap<Effect, (u32, Option<Instant>)>>,
}

impl Reconciler {
    fn flying(&self) -> std::sync::MutexGuard<'_, HashMap<Effect, (u32, Option<Instant>)>> {
        self.flying.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks a policy call about `effect` on its way until the guard drops (its reply came).
    pub(super) fn on_its_way(self: &Arc<Self>, effect: Option<Effect>) -> Flying {
        if let Some(e) = &effect {
            self.flying().entry(e.clone()).or_default().0 += 1;
        }
        Flying {
            of: self.clone(),
            effect,
        }
    }

    /// Whether a call about `e` was on its way at any time since `since`.
    fn busy(&self, e: &Effect, since: Instant) -> bool {
        self.flying()
            .get(e)
            .is_some_and(|(n, done)| *n > 0 || done.is_some_and(|d| d >= since))
    }

    /// Forgets calls that ended before `before`.
    fn forget(&self, before: Instant) {
        self.flying()
            .retain(|_, (n, done)| *n > 0 || done.is_some_and(|d| d >= before));
    }
}

/// A policy call on its way (see [`Reconciler::on_its_way`]).
pub(super) struct Flying {
    of: Arc<Reconciler>,
    effect: Option<Effect>,
}

impl Drop for Flying {
    fn drop(&mut self) {
        if let Some(e) = self.effect.take() {
            let mut flying = self.of.flying();
            if let Some(entry) = flying.get_mut(&e) {
                entry.0 = entry.0.saturating_sub(1);
                entry.1 = Some(Instant::now());
            }
            // With reconciliation off nothing forgets: ended calls are kept this many at
            // most (a pass then merely judges a few more effects too fresh).
            if flying.len() > MAX_FLYING {
                flying.retain(|_, (n, _)| *n > 0);
            }
        }
    }
}

/// How one actuator is listed and corrected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sdn,
    Firewall,
    Libvirt,
    Av,
}

fn kind_of(role: Role) -> Option<Kind> {
    match role {
        Role::Agent(
            AgentKind::ControllerOsken | AgentKind::ControllerFloodlight | AgentKind::ControllerPox,
        ) => Some(Kind::Sdn),
        Role::Agent(AgentKind::Firewall) => Some(Kind::Firewall),
        Role::Agent(AgentKind::Libvirt) => Some(Kind::Libvirt),
        Role::Agent(AgentKind::Av) => Some(Kind::Av),
        _ => None,
    }
}

/// What is remembered from pass to pass: when each unadopted reflex block was first seen,
/// since when each actuator's listing has been failing, and the quarantines left in place
/// already counted (by libvirt agent and VM).
#[derive(Default)]
struct Memory {
    reflex_seen: HashMap<(String, Target), Instant>,
    failing_since: HashMap<String, Instant>,
    quarantine_told: HashSet<(String, String)>,
}

/// The actuator one pass lists, when, and whether the driver is alone on it.
struct Listing<'a> {
    actuator: &'a str,
    /// The driver's clock when the pass began listing it.
    listed: u64,
    alone: bool,
}

/// What one pass over one actuator did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub missing: usize,
    pub stray: usize,
    pub adopted: usize,
    pub in_force: usize,
    /// Strays counted but left (a link VESPA did not cut, an entry without a target).
    pub left: usize,
    pub failed: usize,
    first_error: Option<String>,
    /// A second listing of the actuator that failed (a firewall agent's throttles, from an
    /// agent older than `throttle_list`): what the first found is still corrected, and the
    /// failure is raised as a listing's.
    unlisted: Option<String>,
    examples: Vec<String>,
}

/// What the policy wants on one actuator, by key.
struct Wanted<K> {
    /// Each key, with whether it is too fresh to judge.
    fresh: BTreeMap<K, bool>,
    /// The time the policy still wants each (None: until released).
    left: BTreeMap<K, Option<u64>>,
    /// Keys undone while the actuator was listed, their release on its way.
    releasing: Vec<K>,
    /// The rate the policy last sent for each (throttles).
    rates: BTreeMap<K, Rate>,
}

/// One correction to send.
struct Fix {
    call: ActuatorCall,
    what: String,
}

impl PolicyDriver {
    /// The period and the reflex grace of the loaded policy (a reload changes them).
    fn reconcile_settings(&self) -> (Duration, Duration) {
        let core = self.core();
        let r = core.state.rules();
        (
            Duration::from_nanos(r.reconcile_every_ns),
            Duration::from_nanos(r.reflex_grace_ns),
        )
    }

    /// The actuators this driver reconciles, with their kinds: those its effects went
    /// through, and at the VO those the policy names and every AV agent; only agents of the
    /// topology.
    fn actuators(&self) -> Vec<(String, Kind)> {
        let Some(topo) = self.inner.topology.as_deref() else {
            return Vec::new();
        };
        let mut names: Vec<String> = {
            let core = self.core();
            let mut n: Vec<String> = core.state.effects().map(|e| e.via.to_string()).collect();
            if self.inner.at.is_none() {
                let a = &core.state.rules().actuators;
                n.extend([a.sdn.clone(), a.libvirt.clone()]);
                n.extend(a.firewall.clone());
                // An infection isolates through the AV agent that found it, any of them.
                n.extend(
                    topo.nodes
                        .iter()
                        .filter(|d| d.role == Role::Agent(AgentKind::Av))
                        .map(|d| d.name.clone()),
                );
            }
            n
        };
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let kind = kind_of(topo.node(&name)?.role)?;
                Some((name, kind))
            })
            .collect()
    }

    /// Whether this driver alone acts on its actuators: the VO's, with no rule placed at an
    /// HO. Read from the policy text each pass (a reload may place rules).
    fn alone(&self) -> bool {
        if self.inner.at.is_some() {
            return false;
        }
        let text = self.core().rules_text.clone();
        Rules::from_toml(&text).is_ok_and(|r| r.placements().is_empty())
    }

    /// Reconciles every actuator once; false when some actuator could not be listed.
    async fn reconcile_once(&self, node: &NodeHandle, mem: &mut Memory) -> bool {
        if self.core().state.is_dry_run() {
            tracing::debug!(node = %self.node_name(), "dry-run: nothing reconciled");
            return true;
        }
        let alone = self.alone();
        let (every, grace) = self.reconcile_settings();
        let mut all_listed = true;
        let pass_started = Instant::now();
        for (actuator, kind) in self.actuators() {
            let started = Instant::now();
            let (out, unlisted) = match self
                .reconcile_actuator(node, &actuator, kind, alone, grace, mem)
                .await
            {
                Ok(out) => {
                    let unlisted = out.unlisted.clone();
                    (Some(out), unlisted)
                }
                Err(e) => (None, Some(e)),
            };
            if let Some(out) = out {
                let secs = started.elapsed().as_secs_f64();
                if let Some(m) = &self.inner.metrics {
                    let me = self.node_name();
                    m.on_reconcile_pass(me, &actuator, secs);
                    m.on_drift(me, &actuator, "missing", out.missing as u64);
                    m.on_drift(me, &actuator, "stray", out.stray as u64);
                    m.on_drift(me, &actuator, "adopted", out.adopted as u64);
                }
                tracing::info!(node = %self.node_name(), %actuator, seconds = secs, in_force = out.in_force, missing = out.missing, stray = out.stray, adopted = out.adopted, left = out.left, failed = out.failed, "reconciled");
                if let Some(text) = summary(&actuator, &out) {
                    self.raise_reconcile(node, &text);
                }
            }
            match unlisted {
                None => {
                    mem.failing_since.remove(&actuator);
                }
                Some(e) => {
                    all_listed = false;
                    let since = *mem.failing_since.entry(actuator.clone()).or_insert(started);
                    tracing::debug!(node = %self.node_name(), %actuator, error = ?e, "cannot list the actuator for reconciliation");
                    // An agent not connected yet is normal at start: raised once it has
                    // failed for a whole period.
                    if since.elapsed() >= every && since.elapsed() < every + every {
                        let text = format!(
                            "reconciliation of {actuator}: cannot list what it holds for {} s: {}",
                            since.elapsed().as_secs(),
                            bounded(&e)
                        );
                        self.raise_reconcile(node, &text);
                    }
                }
            }
        }
        self.inner.reconciler.forget(pass_started);
        all_listed
    }

    fn raise_reconcile(&self, node: &NodeHandle, text: &str) {
        tracing::warn!(node = %self.node_name(), text = ?text, "reconciliation found drift");
        let shown = match &self.inner.at {
            None => format!("policy Drift: {text}"),
            Some(at) => format!("policy Drift at {at}: {text}"),
        };
        let _ = node.raise(AlertBody::Text(shown));
    }

    /// The effects carried out on `actuator` (not dry-run) as `key` turns them into keys:
    /// each key with whether it is fresh (placed within [`SETTLE`] of `listed`, or expiring)
    /// and the time the policy still wants it (None: until released).
    fn wanted_on<K: Ord + Clone>(
        &self,
        actuator: &str,
        listed: u64,
        key: impl Fn(&Effect) -> Option<K>,
    ) -> Wanted<K> {
        let now = self.now();
        let settle = SETTLE.as_nanos() as u64;
        let core = self.core();
        let mut fresh = BTreeMap::new();
        let mut left = BTreeMap::new();
        let mut rates = BTreeMap::new();
        let listed_at = self.inner.started + Duration::from_nanos(listed);
        // Undone while listed, their release on its way: whatever is held of them is the
        // release's to remove.
        let mut releasing = Vec::new();
        for (e, (n, done)) in self.inner.reconciler.flying().iter() {
            let busy = *n > 0 || done.is_some_and(|d| d >= listed_at);
            if let Some(k) = key(e).filter(|_| busy && core.state.holders(e).is_empty()) {
                releasing.push(k);
            }
        }
        for e in core.state.effects() {
            if e.dry || e.via != actuator {
                continue;
            }
            let Some(k) = key(e.effect) else { continue };
            let remaining = e.expires_at.map(|at| at.saturating_sub(now));
            let is_fresh = e.since.saturating_add(settle) > listed
                || remaining == Some(0)
                || self.inner.reconciler.busy(e.effect, listed_at);
            fresh.insert(k.clone(), is_fresh);
            if let Some(r) = e.rate {
                rates.insert(k.clone(), r);
            }
            left.insert(k, remaining);
        }
        Wanted {
            fresh,
            left,
            releasing,
            rates,
        }
    }

    /// One listing of `actuator` judged against the policy: what it wants there (its effects
    /// that `key` turns into keys), each listed row turned into a [`Held`] by `held` (given
    /// what is wanted), and the plan [`compare`] makes of them. What is being released is
    /// spared here, whatever `held` says: its release removes it.
    fn judge<R, K: Ord + Clone>(
        &self,
        actuator: &str,
        listed: u64,
        rows: Vec<R>,
        key: impl Fn(&Effect) -> Option<K>,
        mut held: impl FnMut(R, &Wanted<K>) -> Held<K>,
    ) -> (Wanted<K>, Plan<K>) {
        let wanted = self.wanted_on(actuator, listed, key);
        let held = rows
            .into_iter()
            .map(|r| {
                let mut h = held(r, &wanted);
                h.spare |= h.key.as_ref().is_some_and(|k| wanted.releasing.contains(k));
                h
            })
            .collect();
        let plan = compare(&wanted.fresh, held);
        (wanted, plan)
    }

    /// The calls that place `plan.reapply` again, as the policy would send them (`action`
    /// builds its action from the key and the time the policy still wants it).
    fn reapply<K: Ord>(
        plan: &Plan<K>,
        wanted: &Wanted<K>,
        fixes: &mut Vec<Fix>,
        action: impl Fn(&K, Option<u64>) -> Option<Action>,
        what: impl Fn(&K) -> String,
    ) {
        for k in &plan.reapply {
            let left = wanted.left.get(k).copied().flatten();
            if let Some((_, call)) = action(k, left).as_ref().and_then(call_of) {
                fixes.push(Fix {
                    call,
                    what: what(k),
                });
            }
        }
    }

    /// Keeps among `plan`'s strays those VESPA placed, as the decision ledger says of the
    /// effect `effect` names (for an actuator that cannot tell VESPA's entries from an
    /// operator's): ever placed, or with `current` placed and with its time not over. The
    /// others are the operator's: spared, neither counted nor touched.
    async fn keep_vespas<K>(
        &self,
        plan: &mut Plan<K>,
        current: bool,
        effect: impl Fn(&K) -> Effect,
    ) {
        let mut kept = Vec::new();
        for h in std::mem::take(&mut plan.remove) {
            let Some(e) = h.key.as_ref().map(&effect) else {
                plan.spared += 1;
                continue;
            };
            let vespas = if current {
                self.ledger_may_hold(&e).await
            } else {
                self.ledger_placed(&e).await
            };
            if vespas {
                kept.push(h);
            } else {
                plan.spared += 1;
            }
        }
        plan.remove = kept;
    }

    async fn reconcile_actuator(
        &self,
        node: &NodeHandle,
        actuator: &str,
        kind: Kind,
        alone: bool,
        grace: Duration,
        mem: &mut Memory,
    ) -> Result<Outcome, String> {
        let listed = self.now();
        let mut fixes = Vec::new();
        let mut out = Outcome::default();
        let at = Listing {
            actuator,
            listed,
            alone,
        };
        match kind {
            Kind::Sdn => {
                self.reconcile_flows(node, &at, &mut fixes, &mut out)
                    .await?
            }
            Kind::Firewall => {
                self.reconcile_kernel_blocks(node, &at, grace, mem, &mut fixes, &mut out)
                    .await?;
                if let Err(e) = self
                    .reconcile_throttles(node, &at, &mut fixes, &mut out)
                    .await
                {
                    out.unlisted = Some(format!("throttles: {e}"));
                }
            }
            Kind::Libvirt => {
                let vms = vms(node, actuator).await?;
                self.reconcile_links(&at, &vms, &mut fixes, &mut out).await;
                self.reconcile_quarantines(&at, &vms, mem, &mut fixes, &mut out)
                    .await;
            }
            Kind::Av => self.reconcile_av(node, &at, &mut fixes, &mut out).await?,
        }
        self.send_fixes(node, actuator, fixes, &mut out).await;
        Ok(out)
    }

    /// An SDN agent's VESPA-cookie flows: a block the agent's book knows that no decision
    /// holds was asked of the agent directly (an operator's `block_hackers`), not a stray; a
    /// cookie nobody's book knows is one.
    async fn reconcile_flows(
        &self,
        node: &NodeHandle,
        at: &Listing<'_>,
        fixes: &mut Vec<Fix>,
        out: &mut Outcome,
    ) -> Result<(), String> {
        let rows: Vec<HeldFlow> = list(node, at.actuator, |after| {
            ActuatorCall::Sdn(SdnVerb::VespaFlows { after })
        })
        .await?;
        let (wanted, plan) = self.judge(
            at.actuator,
            at.listed,
            rows,
            |e| match e {
                Effect::Blocked(t @ (Target::Ip(_) | Target::Mac(_))) => Some(*t),
                _ => None,
            },
            |r, wanted| {
                let key = r.target.and_then(|t| t.to_string().parse::<Target>().ok());
                let by_hand = r.known && key.is_some_and(|k| !wanted.fresh.contains_key(&k));
                Held {
                    spare: !at.alone || by_hand,
                    key,
                    id: Some(r.id),
                    known: r.known,
                    stale: false,
                }
            },
        );
        reapply_blocks(at.actuator, false, &plan, &wanted, fixes);
        for (id, t) in &plan.adopt {
            let ttl = wanted.left.get(t).copied().flatten().map(wire_ttl);
            fixes.push(Fix {
                call: ActuatorCall::Sdn(SdnVerb::AdoptBlock {
                    id: *id,
                    target: wire_target(t),
                    ttl,
                }),
                what: format!("adopted {}", t.bare()),
            });
        }
        for h in &plan.remove {
            let Some(id) = h.id else {
                out.left += 1;
                continue;
            };
            let shown = h.key.map_or_else(|| format!("#{id}"), |t| t.bare());
            fixes.push(Fix {
                call: ActuatorCall::Sdn(SdnVerb::DropFlows { id }),
                what: format!("stray {shown}"),
            });
        }
        out.count(&plan);
        Ok(())
    }

    /// The kernel's blocks: only the reflex's are VESPA's when unwanted (any other entry was
    /// asked of the agent directly, an operator's), and a reflex block is given
    /// `reflex_grace_s` for its alert to reach the policy before it is a stray.
    async fn reconcile_kernel_blocks(
        &self,
        node: &NodeHandle,
        at: &Listing<'_>,
        grace: Duration,
        mem: &mut Memory,
        fixes: &mut Vec<Fix>,
        out: &mut Outcome,
    ) -> Result<(), String> {
        let rows: Vec<BlockInfo> = list(node, at.actuator, |after| {
            ActuatorCall::Firewall(FirewallVerb::Blocks { after })
        })
        .await?;
        let now = Instant::now();
        let mut seen = HashMap::new();
        let (wanted, plan) = self.judge(
            at.actuator,
            at.listed,
            rows,
            |e| match e {
                Effect::Blocked(t) => Some(*t),
                _ => None,
            },
            |r, wanted| {
                let key = r.target.to_string().parse::<Target>().ok();
                let unwanted = key.is_some_and(|k| !wanted.fresh.contains_key(&k));
                let young = match key {
                    Some(t) if r.reflex && unwanted => {
                        let k = (at.actuator.to_string(), t);
                        let first = mem.reflex_seen.get(&k).copied().unwrap_or(now);
                        seen.insert(k, first);
                        now.duration_since(first) < grace
                    }
                    _ => false,
                };
                Held {
                    spare: !at.alone || young || !r.reflex && unwanted,
                    key,
                    id: None,
                    known: true,
                    stale: false,
                }
            },
        );
        mem.reflex_seen.retain(|(a, _), _| a != at.actuator);
        mem.reflex_seen.extend(seen);
        reapply_blocks(at.actuator, true, &plan, &wanted, fixes);
        for h in &plan.remove {
            let Some(t) = h.key else {
                out.left += 1;
                continue;
            };
            fixes.push(Fix {
                call: ActuatorCall::Firewall(FirewallVerb::ReleaseHackers {
                    which: Some(BlockSelector::Target(wire_target(&t))),
                }),
                what: format!("stray {}", t.bare()),
            });
        }
        out.count(&plan);
        Ok(())
    }

    /// The kernel's source throttles. The kernel keeps no mark of who asked for a throttle
    /// (the reflex never throttles), so an unwanted one is VESPA's only when the decision
    /// ledger says VESPA throttled that source and its time is not over
    /// ([`PolicyDriver::ledger_may_hold`]); any other, and every device throttle, is the
    /// operator's. One held at another rate than the policy's is placed again at the
    /// policy's rate (counted missing).
    async fn reconcile_throttles(
        &self,
        node: &NodeHandle,
        at: &Listing<'_>,
        fixes: &mut Vec<Fix>,
        out: &mut Outcome,
    ) -> Result<(), String> {
        let rows: Vec<ThrottleInfo> = list(node, at.actuator, |after| {
            ActuatorCall::Firewall(FirewallVerb::ThrottleList { after })
        })
        .await?;
        let (wanted, mut plan) = self.judge(
            at.actuator,
            at.listed,
            rows,
            |e| match e {
                Effect::Throttled(t) => Some(*t),
                _ => None,
            },
            |r, wanted| {
                let key = match &r.target {
                    Shaped::Source(t) => t.to_string().parse::<Target>().ok(),
                    Shaped::Device(_) => None,
                };
                let stale = key
                    .and_then(|k| wanted.rates.get(&k))
                    .is_some_and(|want| wire_rate(*want) != r.rate);
                Held {
                    spare: !at.alone || key.is_none(),
                    key,
                    id: None,
                    known: true,
                    stale,
                }
            },
        );
        self.keep_vespas(&mut plan, true, |t| Effect::Throttled(*t))
            .await;
        Self::reapply(
            &plan,
            &wanted,
            fixes,
            |t, left| {
                Some(Action::Throttle {
                    id: 0,
                    target: *t,
                    rate: *wanted.rates.get(t)?,
                    ttl_ns: left.map_or(0, |ns| ns.max(1)),
                    via: at.actuator.to_string(),
                })
            },
            |t| format!("missing throttle of {}", t.bare()),
        );
        for h in &plan.remove {
            let Some(t) = h.key else { continue };
            let action = Action::Unthrottle {
                id: 0,
                target: t,
                via: at.actuator.to_string(),
            };
            if let Some((_, call)) = call_of(&action) {
                fixes.push(Fix {
                    call,
                    what: format!("stray throttle of {}", t.bare()),
                });
            }
        }
        out.count(&plan);
        Ok(())
    }

    /// Cut links: a VM's link found down that the policy does not want is reconnected only if
    /// VESPA cut it (the decision ledger's answer) and only by the driver alone on the
    /// hypervisor; otherwise it is counted and left. A VM that does not run here (shut off,
    /// or quarantined away) has no live link: a wanted cut of it is not judged.
    async fn reconcile_links(
        &self,
        at: &Listing<'_>,
        vms: &[Vm],
        fixes: &mut Vec<Fix>,
        out: &mut Outcome,
    ) {
        let rows: Vec<&Vm> = vms
            .iter()
            .filter(|v| !v.runs_here() || v.interfaces.iter().any(|i| !i.link_up))
            .collect();
        let (wanted, plan) = self.judge(
            at.actuator,
            at.listed,
            rows,
            |e| match e {
                Effect::LinkCut(vm) => Some(vm.clone()),
                _ => None,
            },
            |v, wanted| {
                let here = v.runs_here();
                Held {
                    // Not running here: held as far as anyone can tell when wanted, else
                    // not about links at all.
                    key: (here || wanted.fresh.contains_key(&v.name)).then(|| v.name.clone()),
                    spare: !here,
                    id: None,
                    known: true,
                    stale: false,
                }
            },
        );
        Self::reapply(
            &plan,
            &wanted,
            fixes,
            |vm, _| {
                Some(Action::CutLink {
                    id: 0,
                    vm: vm.clone(),
                    via: at.actuator.to_string(),
                })
            },
            |vm| format!("missing cut link of {vm}"),
        );
        for h in &plan.remove {
            let Some(vm) = &h.key else {
                out.left += 1;
                continue;
            };
            // Only what VESPA cut is VESPA's to reconnect, and only by the driver alone on
            // the hypervisor.
            if !at.alone || !self.ledger_placed(&Effect::LinkCut(vm.clone())).await {
                out.left += 1;
                out.examples
                    .push(format!("link of {vm} down, not cut by VESPA: left"));
                continue;
            }
            let action = Action::ConnectLink {
                id: 0,
                vm: vm.clone(),
                via: at.actuator.to_string(),
            };
            if let Some((_, call)) = call_of(&action) {
                fixes.push(Fix {
                    call,
                    what: format!("stray cut link of {vm}"),
                });
            }
        }
        out.count(&plan);
    }

    /// Quarantines, as far as the source hypervisor can tell: a quarantined VM does not run
    /// here (migrated away, it is shut off here if it was defined here, or gone). A wanted
    /// quarantine whose VM runs here is migrated again to the policy's quarantine host. A VM
    /// VESPA quarantined (the ledger's answer) that the policy no longer wants and that does
    /// not run here is counted and left, once per orchestrator run: the policy never migrates
    /// a VM back (its release asks the operator to), and nothing here tells a VM on the
    /// quarantine host from one merely shut off.
    async fn reconcile_quarantines(
        &self,
        at: &Listing<'_>,
        vms: &[Vm],
        mem: &mut Memory,
        fixes: &mut Vec<Fix>,
        out: &mut Outcome,
    ) {
        let away: Vec<&Vm> = vms.iter().filter(|v| !v.runs_here()).collect();
        let to = self.core().state.rules().actuators.quarantine.clone();
        let (wanted, mut plan) = self.judge(
            at.actuator,
            at.listed,
            away,
            |e| match e {
                Effect::Quarantined(vm) => Some(vm.clone()),
                _ => None,
            },
            |v, _| Held {
                spare: false,
                key: Some(v.name.clone()),
                id: None,
                known: true,
                stale: false,
            },
        );
        // A wanted VM this hypervisor does not know at all does not run here either.
        let known: HashSet<&str> = vms.iter().map(|v| v.name.as_str()).collect();
        let before = plan.reapply.len();
        plan.reapply.retain(|vm| known.contains(vm.as_str()));
        plan.in_force += before - plan.reapply.len();
        // Said already this run: still left, not counted again (nor asked of the ledger).
        let told = |vm: &String| {
            mem.quarantine_told
                .contains(&(at.actuator.to_string(), vm.clone()))
        };
        let (again, new): (Vec<_>, Vec<_>) = std::mem::take(&mut plan.remove)
            .into_iter()
            .partition(|h| h.key.as_ref().is_some_and(told));
        plan.remove = new;
        self.keep_vespas(&mut plan, false, |vm| Effect::Quarantined(vm.clone()))
            .await;
        let still: HashSet<(String, String)> = again
            .iter()
            .chain(&plan.remove)
            .filter_map(|h| Some((at.actuator.to_string(), h.key.clone()?)))
            .collect();
        mem.quarantine_told.retain(|(a, _)| a != at.actuator);
        mem.quarantine_told.extend(still);
        Self::reapply(
            &plan,
            &wanted,
            fixes,
            |vm, _| {
                Some(Action::Migrate {
                    id: 0,
                    vm: vm.clone(),
                    to: to.clone(),
                    via: at.actuator.to_string(),
                })
            },
            |vm| format!("quarantined {vm} runs here: migrated again to {to}"),
        );
        for h in &plan.remove {
            if let Some(vm) = &h.key {
                out.left += 1;
                out.examples.push(format!(
                    "{vm} quarantined by VESPA, no longer wanted, not running here: left (migrate it back by hand)"
                ));
            }
        }
        out.count(&plan);
    }

    /// AV isolations: what the AV agent holds is its route to its VM (`status`). The cut link
    /// that isolates the VM is an effect of its own (`LinkCut`, held by the infection),
    /// reconciled on the libvirt agent like any cut link. An isolation nobody wants is undone
    /// (`connect_warning`) only if VESPA placed it (the ledger's answer): an operator may have
    /// told the agent directly.
    async fn reconcile_av(
        &self,
        node: &NodeHandle,
        at: &Listing<'_>,
        fixes: &mut Vec<Fix>,
        out: &mut Outcome,
    ) -> Result<(), String> {
        let routed = av_route(node, at.actuator).await?;
        let through = self.core().state.rules().actuators.hypervisor.clone();
        let rows: Vec<AvRoute> = routed.into_iter().filter(|s| s.via.is_some()).collect();
        let (wanted, mut plan) = self.judge(
            at.actuator,
            at.listed,
            rows,
            |e| match e {
                Effect::AvIsolated(vm, av) if av == at.actuator => Some(vm.clone()),
                _ => None,
            },
            |s, _| Held {
                spare: !at.alone,
                stale: s.via.as_deref() != Some(through.as_str()),
                key: Some(s.vm),
                id: None,
                known: true,
            },
        );
        self.keep_vespas(&mut plan, false, |vm| {
            Effect::AvIsolated(vm.clone(), at.actuator.to_string())
        })
        .await;
        Self::reapply(
            &plan,
            &wanted,
            fixes,
            |vm, _| {
                Some(Action::AvIsolate {
                    id: 0,
                    vm: vm.clone(),
                    av_agent: at.actuator.to_string(),
                    hypervisor_agent: through.clone(),
                })
            },
            |vm| format!("missing isolation of {vm}"),
        );
        for h in &plan.remove {
            let Some(vm) = &h.key else { continue };
            let action = Action::AvConnect {
                id: 0,
                vm: vm.clone(),
                av_agent: at.actuator.to_string(),
            };
            if let Some((_, call)) = call_of(&action) {
                fixes.push(Fix {
                    call,
                    what: format!("stray isolation of {vm}"),
                });
            }
        }
        out.count(&plan);
        Ok(())
    }

    /// Sends `fixes`, at most the driver's calls in flight at once (shared with the policy's
    /// own calls), each retried with backoff; failures are counted in `out`.
    async fn send_fixes(
        &self,
        node: &NodeHandle,
        actuator: &str,
        fixes: Vec<Fix>,
        out: &mut Outcome,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        for fix in fixes {
            if out.examples.len() < EXAMPLES {
                out.examples.push(fix.what.clone());
            }
            // Closed only with the driver: then nothing more is sent.
            let Ok(turn) = self.inner.calls.clone().acquire_owned().await else {
                break;
            };
            let (node, agent) = (node.clone(), actuator.to_string());
            tasks.spawn(async move {
                let _turn = turn;
                let r = send(&node, &agent, fix.call).await;
                (fix.what, r)
            });
            // Reap as we go, so a pass of 10,000 calls keeps few finished tasks around.
            while let Some(done) = tasks.try_join_next() {
                note(done, out);
            }
        }
        while let Some(done) = tasks.join_next().await {
            note(done, out);
        }
    }
}

/// The blocks of `plan.reapply`, as the policy would send them, for the time it still wants
/// them.
fn reapply_blocks(
    actuator: &str,
    firewall: bool,
    plan: &Plan<Target>,
    wanted: &Wanted<Target>,
    fixes: &mut Vec<Fix>,
) {
    PolicyDriver::reapply(
        plan,
        wanted,
        fixes,
        |t, left| {
            Some(Action::Block {
                id: 0,
                target: *t,
                // 0: until released, as the policy's own; a block with a time left never goes
                // out as "until released" by rounding down.
                ttl_ns: left.map_or(0, |ns| ns.max(1)),
                via: actuator.to_string(),
                firewall,
            })
        },
        |t| format!("missing {}", t.bare()),
    );
}

fn note(done: Result<(String, Result<String, String>), tokio::task::JoinError>, out: &mut Outcome) {
    let err = match done {
        Ok((_, Ok(_))) => return,
        Ok((what, Err(e))) => format!("{what}: {e}"),
        Err(e) => format!("task: {e}"),
    };
    out.failed += 1;
    out.first_error.get_or_insert(err);
}

impl Outcome {
    /// Adds one listing's plan (an actuator may be listed for several kinds of effect).
    fn count<K>(&mut self, plan: &Plan<K>) {
        self.missing += plan.reapply.len();
        self.stray += plan.remove.len();
        self.adopted += plan.adopt.len();
        self.in_force += plan.in_force;
    }
}

/// One alert's text for a pass that found drift (None: nothing differed).
fn summary(actuator: &str, out: &Outcome) -> Option<String> {
    if out.missing + out.stray + out.adopted == 0 {
        return None;
    }
    let mut text = format!(
        "reconciliation of {actuator}: {} missing (re-applied), {} stray ({} removed), {} adopted into the agent's book, {} in force",
        out.missing,
        out.stray,
        out.stray - out.left.min(out.stray),
        out.adopted,
        out.in_force
    );
    if out.failed > 0 {
        let first = out.first_error.as_deref().unwrap_or("");
        text.push_str(&format!(
            "; {} corrections failed, first: {}",
            out.failed,
            bounded(first)
        ));
    }
    if !out.examples.is_empty() {
        let shown: Vec<String> = out
            .examples
            .iter()
            .take(EXAMPLES)
            .map(|e| bounded(e))
            .collect();
        text.push_str(&format!("; e.g. {}", shown.join(", ")));
    }
    Some(text)
}

/// `s` cut to [`MAX_ERROR`] characters.
fn bounded(s: &str) -> String {
    let mut t: String = s.chars().take(MAX_ERROR).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

/// One call with a deadline, tried [`ATTEMPTS`] times with backoff (a migration once).
async fn send(node: &NodeHandle, agent: &str, call: ActuatorCall) -> Result<String, String> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut last = String::new();
    // A migration that timed out may still be under way (the agent does not cancel it): it
    // is not asked again within the pass; the next pass sees where the VM runs.
    let attempts = match &call {
        ActuatorCall::Libvirt(LibvirtVerb::Migrate { .. }) => 1,
        _ => ATTEMPTS,
    };
    for attempt in 1..=attempts {
        let verb = call.name();
        match tokio::time::timeout(CALL_TIMEOUT, call.clone().send(node, agent)).await {
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("{agent} did not answer {verb} within {CALL_TIMEOUT:?}"),
        }
        if attempt < attempts {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
    Err(last)
}

/// Every row of a paged listing (`vespa_flows`, `blocks`), at most [`MAX_PAGES`] pages.
async fn list<T: DeserializeOwned, C: Clone + PartialEq + DeserializeOwned>(
    node: &NodeHandle,
    agent: &str,
    verb: impl Fn(Option<C>) -> ActuatorCall,
) -> Result<Vec<T>, String> {
    let mut rows = Vec::new();
    let mut after = None;
    for _ in 0..MAX_PAGES {
        let reply = send(node, agent, verb(after.clone())).await?;
        let page: Page<T, C> = serde_json::from_str(&reply)
            .map_err(|e| format!("{agent} answered a listing that is not one: {e}"))?;
        rows.extend(page.rows);
        match page.next {
            // A cursor that does not move would loop: the listing ends there.
            Some(n) if after.as_ref() != Some(&n) => after = Some(n),
            _ => return Ok(rows),
        }
    }
    Err(format!(
        "{agent} holds more than {MAX_PAGES} pages of entries: not reconciled"
    ))
}

/// The VMs of a libvirt agent (`list_vms`).
async fn vms(node: &NodeHandle, agent: &str) -> Result<Vec<Vm>, String> {
    let reply = send(node, agent, ActuatorCall::Libvirt(LibvirtVerb::ListVms {})).await?;
    super::vms::parse(&reply).map_err(|e| format!("{agent} answered {e}"))
}

/// An AV agent's `status` reply, read for its route.
fn parse_av_status(reply: &str) -> Result<AvRoute, String> {
    #[derive(serde::Deserialize)]
    struct Route {
        route: String,
        agent: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Status {
        vm: String,
        route: Route,
    }
    let s: Status = serde_json::from_str(reply).map_err(|e| e.to_string())?;
    let via = match s.route.route.as_str() {
        "direct" => None,
        "via_hypervisor" => Some(s.route.agent.ok_or("a route through no agent")?),
        other => return Err(format!("an unknown route {other:?}")),
    };
    Ok(AvRoute { vm: s.vm, via })
}

/// An AV agent's route to its VM: the hypervisor agent it goes through (None: it reaches
/// the VM directly).
struct AvRoute {
    vm: String,
    via: Option<String>,
}

/// What an AV agent's `status` says of its route: one row, for the one VM it protects.
async fn av_route(node: &NodeHandle, agent: &str) -> Result<Vec<AvRoute>, String> {
    let reply = send(node, agent, ActuatorCall::Av(AvVerb::Status {})).await?;
    let route = parse_av_status(&reply)
        .map_err(|e| format!("{agent} answered status with something else: {e}"))?;
    Ok(vec![route])
}

/// The reconciliation task of a driver: a first pass once the driver runs, then one every
/// period; an actuator that cannot be listed (an agent not connected yet) is tried again
/// sooner, from one second doubling up to the period.
pub(super) async fn run(driver: PolicyDriver, node: NodeHandle) {
    let mut mem = Memory::default();
    let mut retry = Backoff::new(RETRY_MIN, Duration::from_secs(3600));
    // The driver's first tick first: the start's own inputs are in the state.
    tokio::select! {
        _ = node.stopping() => return,
        _ = tokio::time::sleep(TICK) => {}
    }
    loop {
        let (every, _) = driver.reconcile_settings();
        let wait = if every.is_zero() {
            // Off; a reload may turn it on.
            Duration::from_secs(1)
        } else if driver.reconcile_once(&node, &mut mem).await {
            retry.reset();
            every
        } else {
            retry.next_delay().min(every)
        };
        tokio::select! {
            _ = node.stopping() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `list_vms` as the libvirt agent answers it (`VmInfo`, its interfaces' `link_up`).
    #[test]
    fn a_vm_runs_here_unless_it_is_shut_off_or_crashed() {
        let reply = r#"[
            {"name":"a","uuid":"u1","state":"running","interfaces":[{"mac":"52:54:00:00:00:01","bridge":"br0","link_up":false,"tap":"vnet0"}]},
            {"name":"b","uuid":"u2","state":"shutoff","interfaces":[{"mac":"52:54:00:00:00:02","bridge":"br0","link_up":true,"tap":null}]},
            {"name":"c","uuid":"u3","state":"paused","interfaces":[]},
            {"name":"d","uuid":"u4","state":"crashed","interfaces":[]}
        ]"#;
        let vms = super::super::vms::parse(reply).expect("list_vms");
        let here: Vec<(&str, bool)> = vms
            .iter()
            .map(|v| (v.name.as_str(), v.runs_here()))
            .collect();
        assert_eq!(here, [("a", true), ("b", false), ("c", true), ("d", false)]);
        assert!(!vms[0].interfaces[0].link_up);
    }

    /// `status` as the AV agent answers it (its `Route`, tagged by `route`).
    #[test]
    fn the_av_agents_route_is_read_from_its_status() {
        let isolated = r#"{"vm":"web","clamd":"unix:/run/clamd","route":{"route":"via_hypervisor","agent":"HY"},"analyzed":3}"#;
        let r = parse_av_status(isolated).expect("status");
        assert_eq!((r.vm.as_str(), r.via.as_deref()), ("web", Some("HY")));
        let direct = r#"{"vm":"web","route":{"route":"direct"}}"#;
        assert_eq!(parse_av_status(direct).expect("status").via, None);
        assert!(parse_av_status(r#"{"vm":"web","route":{"route":"sideways"}}"#).is_err());
        assert!(parse_av_status("PONG").is_err());
    }

    /// A throttle's rate as the firewall agent lists it compares with the policy's as the
    /// driver sends it.
    #[test]
    fn a_listed_throttle_reads_back_with_the_rate_the_policy_sent() {
        let row = r#"{"id":4,"target":"198.51.100.7","rate":"1000pps","expires_in_ms":5000,"passed_packets":1,"passed_bytes":2,"dropped_packets":3,"dropped_bytes":4}"#;
        let t: ThrottleInfo = serde_json::from_str(row).expect("row");
        assert_eq!(t.rate, wire_rate(Rate::Packets(1000)));
        assert_ne!(t.rate, wire_rate(Rate::Packets(2000)));
        assert_eq!(
            t.target,
            Shaped::Source(wire_target(&"198.51.100.7".parse::<Target>().expect("ip")))
        );
        let dev: ThrottleInfo = serde_json::from_str(&row.replace("198.51.100.7", "dev:vnet3"))
            .expect("a device's row");
        assert_eq!(dev.target, Shaped::Device("vnet3".into()));
    }
}
