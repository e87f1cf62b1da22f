//! The policy driver: everything around [`vespa_policy::step`] that touches the world.
//!
//! ```text
//! node's alert handler ──► channel ──► driver task ──► step(&mut State, input, now) ──► actions
//!        (sync, never waits)            │  ▲ Tick every 250 ms                          │
//!                                       │  └──── ActionResult ◄── actuator replies ◄────┤
//!                                       └── `call <agent> <verb> args` down the tree ◄──┘
//! ```
//!
//! **Invariant: the policy does no I/O; the driver does.** `step` stays a pure function of
//! its state, its input and the `now` it is given (nanoseconds on the driver's monotonic
//! clock). The driver owns the [`State`] behind a mutex, converts alerts into [`Input`]s,
//! asks agents for neighbour MACs (`mac_of`), sends ticks, executes actuator actions
//! through its node's [`NodeHandle`] (routed down the tree), feeds the replies back as
//! [`Input::ActionResult`], logs [`Action::DryRun`] records and raises the policy's own
//! [`Action::Alert`]s as alerts of kind `Text` (so they show in the VO's `/get_alerts`).
//!
//! **Where it runs.** The VO's driver ([`PolicyDriver::new`]) runs the rules without `at`.
//! A horizontal orchestrator's driver ([`PolicyDriver::new_at`]) runs the rules whose `at`
//! names it (the fast path, [`placement`]): it sees only its own subtree's alerts, its calls
//! go down its own subtree, and every action it sends is also raised as a `Text` alert
//! (`fast path at HO_PH: ...`) that climbs to the VO with the alerts that caused it.
//! Infections and sensor health stay the VO's: an HO's driver feeds its rules only the
//! counters (threshold crossings, connection tables, interface bytes).
//!
//! **The firewall agent follows the policy** ([`firewall`]): the kernel reflex of the rules
//! with `reflex = true` and the allowlist (the file's, the topology's machines and
//! controllers, the operator's) are pushed to `[actuators] firewall` at start and whenever
//! they change, retried with backoff until it takes them.
//!
//! **What is in place is the policy's.** Every block, cut link or isolation, with when it was
//! placed, when it expires, whether it was only recorded in dry-run and who holds it (rules,
//! an infection, the operator's manual block), is read from the policy's [`State`]; the
//! driver only turns the policy's clock into Unix seconds for the API. A manual block is an
//! [`Input::ManualBlock`] like any other input, so a recorded input stream replays it too.
//!
//! It also serves the HTTP API's [`PolicyControl`]: reads take the mutex briefly, mutations
//! step the policy under it and hand the resulting actions to the driver task; nothing in
//! the API path waits for an actuator. [`PolicySet`] puts the VO's driver and those of the
//! HOs in the same process behind the one API.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
// The policy's clock is tokio's monotonic one (std's outside tests), so tests in paused
// time drive ticks, TTLs and calm periods without waiting for them.
use tokio::time::Instant;
use vespa_node::{AgentKind, AlertHandler, NodeHandle, Role, Topology};
use vespa_policy::{
    step, Action, Input, KeyKind, Mac, ReflexSetting, Rules, State, Target, DEFAULT_RULES,
};
use vespa_proto::verbs::SensorVerb;
use vespa_proto::{Alert, AlertBody};

use crate::control::{PolicyControl, PolicyError};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use record::Why;

mod api;
mod convert;
mod firewall;
mod order;
pub mod placement;
mod reconcile;
mod record;
mod remote;
mod set;
mod vms;

pub use convert::{call_of, health_input, to_policy_body, ActuatorCall};
use convert::{is_counter, target_arg};
pub use remote::{HoPolicyVerbs, RemoteDrivers};
pub(crate) use set::merge_releases;
pub use set::PolicySet;

/// How often time is fed to the policy (releases, verification deadlines, TTLs).
pub const TICK: Duration = Duration::from_millis(250);
/// Alerts waiting for the driver task at most; beyond, they are dropped and counted.
const QUEUE: usize = 8192;
/// How long an actuator call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Actuator calls a driver has in flight at most (half what one connection carries).
pub const CALLS_IN_FLIGHT: usize = 32;
/// How long a `mac_of` question may take (it delays the alert that asked).
const MAC_TIMEOUT: Duration = Duration::from_millis(250);
/// Remotes whose MAC was asked about, remembered at most (then forgotten all at once).
const MAX_ASKED: usize = 65_536;
/// New remotes of one connections table asked about at most (the rest at the next table).
const MAX_ASK_PER_TABLE: usize = 16;
/// Block timings kept for [`PolicyDriver::block_timings`].
const MAX_TIMINGS: usize = 4096;

fn busy() -> PolicyError {
    PolicyError::Unavailable("the policy driver is busy or stopped; try again".into())
}

/// Wall-clock nanoseconds since the Unix epoch.
fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The timeline of one block request, for the closed-loop benchmark. All times are Unix
/// nanoseconds (wall clock).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlockTiming {
    /// The action id.
    pub id: u64,
    /// The blocked address or MAC.
    pub target: String,
    /// The timestamp of the alert that caused it: for a threshold alert the kernel event's
    /// time, otherwise when the agent raised it (0 for ticks and manual blocks).
    pub alert_raised_ns: u64,
    /// When the deciding node's handler (the VO's, or a fast-path HO's) saw that alert.
    pub alert_seen_ns: u64,
    /// When the block request left that node (`call <sdn> block_hackers ...` sent).
    pub sent_ns: u64,
    /// When the SDN agent's reply arrived (0 until then).
    pub acked_ns: u64,
    /// Whether the SDN agent reported success.
    pub ok: bool,
}

/// The actuator names of `rules` as this topology can reach them: a name the topology does
/// not know is replaced by the topology's only agent of the matching kind, if there is
/// exactly one (so the embedded rules work with any tree that has one SDN controller).
fn resolve_actuators(rules: &mut Rules, topo: Option<&Topology>) {
    let Some(topo) = topo else { return };
    let unique = |want: &dyn Fn(AgentKind) -> bool| {
        let found: Vec<&str> = topo
            .nodes
            .iter()
            .filter(|n| matches!(n.role, Role::Agent(k) if want(k)))
            .map(|n| n.name.as_str())
            .collect();
        (found.len() == 1).then(|| found[0].to_string())
    };
    let a = &mut rules.actuators;
    let sdn = |k| {
        matches!(
            k,
            AgentKind::ControllerFloodlight | AgentKind::ControllerPox | AgentKind::ControllerOsken
        )
    };
    for (slot, want) in [
        (&mut a.sdn, &sdn as &dyn Fn(AgentKind) -> bool),
        (&mut a.libvirt, &|k| k == AgentKind::Libvirt),
        (&mut a.av, &|k| k == AgentKind::Av),
    ] {
        if topo.node(slot).is_none() {
            if let Some(name) = unique(want) {
                tracing::info!(configured = %slot, using = %name, "policy actuator not in the topology: using its only agent of that kind");
                *slot = name;
            }
        }
    }
    // The firewall: a name the topology lacks falls back to its only firewall agent; none
    // named, on a host with a firewall agent and no SDN controller agent at all (a plain KVM
    // host), blocks go to the firewall rather than to a controller that is not there.
    let firewall = unique(&|k| k == AgentKind::Firewall);
    let no_sdn = !topo
        .nodes
        .iter()
        .any(|n| matches!(n.role, Role::Agent(k) if sdn(k)));
    match (&a.firewall, firewall) {
        (Some(fw), Some(only)) if topo.node(fw).is_none() => {
            tracing::info!(configured = %fw, using = %only, "policy firewall not in the topology: using its only firewall agent");
            a.firewall = Some(only);
        }
        (None, Some(only)) if no_sdn => {
            tracing::info!(using = %only, "no SDN controller agent in the topology: blocks go to its firewall agent");
            a.firewall = Some(only);
        }
        _ => {}
    }
}

/// Whether a rule of `all` placed elsewhere than `at` has a kernel reflex.
fn reflex_elsewhere(all: &Rules, at: Option<&str>) -> bool {
    all.rules
        .iter()
        .any(|r| r.reflex.is_some() && r.at.as_deref() != at)
}

/// Parses `text` and checks it against `topology`: actuator names the topology does not know
/// fall back to its only agent of the kind, and every rule's `at` must name an HO whose
/// subtree holds the rule's sensors and actuators ([`placement::check`]). This is the whole
/// policy; each driver keeps its share ([`Rules::placed_at`]).
pub fn load_rules(text: &str, topology: Option<&Topology>) -> Result<Rules, PolicyError> {
    let mut rules = Rules::from_toml(text).map_err(|e| PolicyError::Invalid(e.to_string()))?;
    resolve_actuators(&mut rules, topology);
    if let Some(topo) = topology {
        placement::check(&rules, topo).map_err(PolicyError::Invalid)?;
    }
    Ok(rules)
}

/// What the driver task is asked to do.
enum Event {
    /// An alert processed at the driver's node, with when the handler saw it.
    Alert(Arc<Alert>, Instant, u64),
    /// Actions to execute (from an API mutation), with why (for the decision ledger).
    Run(Vec<Action>, Why),
    /// An actuator's reply to a policy action.
    Result {
        id: u64,
        ok: bool,
        error: Option<String>,
    },
    /// What a firewall agent protects on its own: its host's gateways, its `protect`
    /// parameter (learned by [`firewall::learn_protections`]).
    Protects {
        agent: String,
        entries: Vec<(Target, String)>,
    },
}

/// What the mutex guards. The policy's state is the whole record of what is in place (manual
/// blocks included); the driver keeps no copy of it.
struct Core {
    state: State,
    rules_text: String,
    /// Whether a rule this driver does not run (one placed at another node) has a kernel
    /// reflex: the VO's driver then leaves the reflex to that rule's driver.
    reflex_elsewhere: bool,
    /// Each firewall agent's own protections, as it last listed them.
    learned: std::collections::BTreeMap<String, Vec<(Target, String)>>,
}

struct Inner {
    core: Mutex<Core>,
    /// The policy's clock: nanoseconds since then are its `now`.
    started: Instant,
    /// The same moment on the Unix clock, to show the policy's times to the API.
    started_unix_ns: u64,
    tx: mpsc::Sender<Event>,
    rx: Mutex<Option<mpsc::Receiver<Event>>>,
    /// The node the driver runs at, once started.
    node: OnceLock<NodeHandle>,
    /// The HO this driver runs the fast-path rules of; `None` for the VO's driver.
    at: Option<String>,
    /// Whether any rule is loaded (an HO's handler ignores alerts while none is).
    has_rules: AtomicBool,
    /// Whether a rule keyed by remote address may need a neighbour's MAC (`mac_of`).
    wants_macs: AtomicBool,
    metrics: Option<Arc<Metrics>>,
    topology: Option<Arc<Topology>>,
    timings: Mutex<std::collections::VecDeque<BlockTiming>>,
    /// Actuator calls in flight at once: a node answers at most 64 calls per connection, so
    /// a burst of actions (a 10,000-line import) waits its turn instead of being refused.
    calls: std::sync::Arc<tokio::sync::Semaphore>,
    dropped: AtomicU64,
    policy_file: Option<PathBuf>,
    /// What the firewall agent should hold ([`firewall`]'s task follows it).
    firewall: watch::Sender<firewall::Wanted>,
    /// The decision ledger, and the node name its rows carry ([`record`]).
    ledger: OnceLock<Ledger>,
    ledger_node: OnceLock<String>,
    /// Reconciliation's hook and the policy calls on their way ([`reconcile`]).
    reconciler: Arc<reconcile::Reconciler>,
    /// Calls about one effect sent in the order decided.
    order: Arc<order::Order>,
    /// Which neighbours are this hypervisor's VMs ([`vms`]).
    vms: vms::Vms,
}

/// A policy driver, the VO's or an HO's (cheap to clone).
#[derive(Clone)]
pub struct PolicyDriver {
    inner: Arc<Inner>,
}

impl PolicyDriver {
    /// The VO's driver: the rules of `rules_text` (TOML) without `at`, started in dry-run
    /// when `dry_run`. `topology` lets actuator names missing from it fall back to its only
    /// agent of the matching kind, and checks every rule's `at` against it; `metrics`
    /// receives the actuator acknowledgement times; `policy_file` is what SIGHUP re-reads.
    pub fn new(
        rules_text: &str,
        dry_run: bool,
        topology: Option<&Topology>,
        metrics: Option<Arc<Metrics>>,
        policy_file: Option<PathBuf>,
    ) -> Result<PolicyDriver, PolicyError> {
        Self::build(None, rules_text, dry_run, topology, metrics, policy_file)
    }

    /// The driver of horizontal orchestrator `at` (the fast path): the rules of `rules_text`
    /// placed there. Start it on that HO's node; it serves no API of its own ([`PolicySet`]
    /// puts it behind the VO's when one process hosts both).
    pub fn new_at(
        at: &str,
        rules_text: &str,
        dry_run: bool,
        topology: &Topology,
        policy_file: Option<PathBuf>,
    ) -> Result<PolicyDriver, PolicyError> {
        Self::new_at_with_metrics(at, rules_text, dry_run, topology, None, policy_file)
    }

    /// As [`PolicyDriver::new_at`], counting its reconciliation in `metrics`
    /// (`vespa_decisions_drift_total`, `vespa_reconcile_pass_seconds`). Its policy alerts
    /// and actuator times are not counted there: the VO counts an HO's policy alerts as they
    /// arrive, and `vo_to_actuator_ack` is the VO's stage.
    pub fn new_at_with_metrics(
        at: &str,
        rules_text: &str,
        dry_run: bool,
        topology: &Topology,
        metrics: Option<Arc<Metrics>>,
        policy_file: Option<PathBuf>,
    ) -> Result<PolicyDriver, PolicyError> {
        Self::build(
            Some(at.to_string()),
            rules_text,
            dry_run,
            Some(topology),
            metrics,
            policy_file,
        )
    }

    /// The metrics of what only the VO's driver counts (its own policy alerts, the
    /// `vo_to_actuator_ack` stage); `None` for an HO's driver.
    fn vo_metrics(&self) -> Option<&Arc<Metrics>> {
        self.inner
            .metrics
            .as_ref()
            .filter(|_| self.inner.at.is_none())
    }

    fn build(
        at: Option<String>,
        rules_text: &str,
        dry_run: bool,
        topology: Option<&Topology>,
        metrics: Option<Arc<Metrics>>,
        policy_file: Option<PathBuf>,
    ) -> Result<PolicyDriver, PolicyError> {
        let topology = topology.map(|t| Arc::new(t.clone()));
        let all = load_rules(rules_text, topology.as_deref())?;
        let reflex_elsewhere = reflex_elsewhere(&all, at.as_deref());
        let mut state = State::new(all.placed_at(at.as_deref()));
        if dry_run {
            step(&mut state, Input::SetDryRun(true), 0);
        }
        if let Some(topo) = &topology {
            let entries = firewall::topology_entries(topo);
            step(&mut state, Input::TopologyAllow(entries), 0);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let core = Core {
            state,
            rules_text: rules_text.to_string(),
            reflex_elsewhere,
            learned: Default::default(),
        };
        let d = PolicyDriver {
            inner: Arc::new(Inner {
                core: Mutex::new(core),
                started: Instant::now(),
                started_unix_ns: unix_ns(),
                tx,
                rx: Mutex::new(Some(rx)),
                node: OnceLock::new(),
                at,
                has_rules: AtomicBool::new(false),
                wants_macs: AtomicBool::new(false),
                metrics,
                topology,
                timings: Mutex::new(Default::default()),
                calls: std::sync::Arc::new(tokio::sync::Semaphore::new(CALLS_IN_FLIGHT)),
                dropped: AtomicU64::new(0),
                policy_file,
                firewall: watch::Sender::new(firewall::Wanted::default()),
                ledger: OnceLock::new(),
                ledger_node: OnceLock::new(),
                reconciler: Default::default(),
                order: Default::default(),
                vms: Default::default(),
            }),
        };
        d.rules_changed(d.core().state.rules());
        d.sync_firewall();
        Ok(d)
    }

    /// What the firewall agent should hold from this driver, from the policy's state: the
    /// reflex of its rules (off in dry-run, and at the VO when no rule anywhere has one) and,
    /// at the VO, the allowlist.
    fn wanted(&self) -> firewall::Wanted {
        let core = self.core();
        let rules = core.state.rules();
        let vo = self.inner.at.is_none();
        let reflex = match rules.reflex() {
            Some(_) if core.state.is_dry_run() => Some(ReflexSetting::OFF),
            Some(r) => Some(r),
            None if vo && !core.reflex_elsewhere => Some(ReflexSetting::OFF),
            None => None,
        };
        firewall::Wanted {
            agent: rules.actuators.firewall.clone(),
            reflex,
            allow: vo.then(|| core.state.allowed_targets()),
        }
    }

    /// Tells the firewall task what is wanted now (it pushes the difference).
    fn sync_firewall(&self) {
        let want = self.wanted();
        self.inner.firewall.send_if_modified(|w| {
            let changed = *w != want;
            *w = want;
            changed
        });
    }

    fn rules_changed(&self, rules: &Rules) {
        self.inner
            .has_rules
            .store(!rules.rules.is_empty(), Ordering::Relaxed);
        self.inner.wants_macs.store(
            rules.rules.iter().any(|r| r.key == KeyKind::Remote),
            Ordering::Relaxed,
        );
    }

    /// Whether a rule keyed by remote address may need a neighbour's MAC (and its VM).
    fn wants_macs(&self) -> bool {
        self.inner.wants_macs.load(Ordering::Relaxed)
    }

    /// The HO whose fast-path rules this driver runs (`None`: the VO's driver).
    pub fn at(&self) -> Option<&str> {
        self.inner.at.as_deref()
    }

    /// The names of the rules this driver runs.
    pub fn rule_names(&self) -> Vec<String> {
        self.core()
            .state
            .rules()
            .rules
            .iter()
            .map(|r| r.name.clone())
            .collect()
    }

    /// Reads the rules from `path`, or the embedded defaults when `None`.
    pub fn load_rules_text(path: Option<&Path>) -> anyhow::Result<String> {
        match path {
            None => Ok(DEFAULT_RULES.to_string()),
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading the policy {}: {e}", p.display())),
        }
    }

    fn now(&self) -> u64 {
        self.inner.started.elapsed().as_nanos() as u64
    }

    /// A time of the policy's (its `now`) as Unix seconds, for the API.
    fn unix_s(&self, policy_ns: u64) -> u64 {
        self.inner.started_unix_ns.saturating_add(policy_ns) / vespa_policy::SECOND
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.inner.core)
    }

    /// The alert handler to put in the hooks of the driver's node (the VO, or the HO of
    /// [`PolicyDriver::new_at`]). It only copies the alert into a bounded queue (the node's
    /// connection tasks must never wait for the policy).
    pub fn handler(&self) -> AlertHandler {
        let me = self.clone();
        Arc::new(move |a: &Arc<Alert>| {
            // The policy's own alerts come back through the node's handlers: not for it. An
            // HO's driver takes only counters, and nothing while it has no rule.
            let wanted = match me.inner.at {
                None => !matches!(a.body, AlertBody::Text(_) | AlertBody::Policy { .. }),
                Some(_) => is_counter(&a.body) && me.inner.has_rules.load(Ordering::Relaxed),
            };
            if !wanted {
                return;
            }
            let ev = Event::Alert(a.clone(), Instant::now(), unix_ns());
            if me.inner.tx.try_send(ev).is_err() {
                let n = me.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_multiple_of(1000) {
                    tracing::warn!(node = %me.node_name(), dropped_total = n, "policy driver queue full: alert not seen by the policy");
                }
            }
        })
    }

    /// The driver's node: the HO it runs at, else the VO once started (`VO` before).
    fn node_name(&self) -> &str {
        self.inner
            .at
            .as_deref()
            .or_else(|| self.inner.node.get().map(NodeHandle::name))
            .unwrap_or("VO")
    }

    /// Starts the driver task on its node, the VO or the HO it runs at (once; later calls do
    /// nothing). Call it from inside a tokio runtime.
    pub fn start(&self, node: NodeHandle) {
        if let Some(at) = &self.inner.at {
            debug_assert_eq!(at, node.name(), "an HO's driver runs at that HO");
        }
        if self.inner.node.set(node.clone()).is_err() {
            return;
        }
        let Some(rx) = lock(&self.inner.rx).take() else {
            return;
        };
        let who = match &self.inner.at {
            None => "policy DidNotTake".to_string(),
            Some(at) => format!("policy DidNotTake at {at}"),
        };
        let wanted = self.inner.firewall.subscribe();
        tokio::spawn(firewall::keep_in_step(node.clone(), wanted, who));
        if let (None, Some(topo)) = (&self.inner.at, &self.inner.topology) {
            // The VO's allowlist also holds what every firewall agent protects on its own.
            for agent in firewall::agents(topo) {
                let tx = self.inner.tx.clone();
                tokio::spawn(firewall::learn_protections(node.clone(), agent, tx));
            }
        }
        tokio::spawn(reconcile::run(self.clone(), node.clone()));
        tokio::spawn(vms::run(self.clone(), node.clone()));
        let me = self.clone();
        tokio::spawn(async move { me.run(rx, node).await });
        if let Some(path) = self.inner.policy_file.clone() {
            let me = self.clone();
            tokio::spawn(async move { me.reload_on_sighup(path).await });
        }
    }

    async fn reload_on_sighup(self, path: PathBuf) {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP: the policy reloads through the API only");
            return;
        };
        while hup.recv().await.is_some() {
            match std::fs::read_to_string(&path) {
                Ok(text) => match self.reload(&text) {
                    Ok(()) => {
                        tracing::info!(node = %self.node_name(), path = %path.display(), "SIGHUP: policy reloaded")
                    }
                    Err(e) => {
                        tracing::error!(node = %self.node_name(), path = %path.display(), error = %e, "SIGHUP: policy not reloaded, the old rules stay")
                    }
                },
                Err(e) => {
                    tracing::error!(node = %self.node_name(), path = %path.display(), error = %e, "SIGHUP: cannot read the policy, the old rules stay")
                }
            }
        }
    }

    async fn run(self, mut rx: mpsc::Receiver<Event>, node: NodeHandle) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut asked: HashSet<(String, IpAddr)> = HashSet::new();
        loop {
            tokio::select! {
                _ = node.stopping() => break,
                _ = tick.tick() => {
                    let actions = self.step(Input::Tick);
                    self.execute(&node, actions, None, &Why::Tick);
                    if let Some(l) = self.ledger() {
                        l.expire(unix_ns() / vespa_policy::SECOND, "TTL: removed by the actuator's reaper");
                    }
                }
                ev = rx.recv() => match ev {
                    None => break,
                    Some(Event::Alert(alert, seen, seen_unix)) => {
                        self.learn_neighbours(&node, &alert, &mut asked).await;
                        let input = health_input(&alert.origin, &alert.body).unwrap_or_else(|| Input::Alert {
                            origin: alert.origin.clone(),
                            path: alert.path.clone(),
                            timestamp_ns: alert.timestamp_ns,
                            body: to_policy_body(&alert.body),
                        });
                        let actions = self.step(input);
                        let why = if actions.is_empty() { Why::Tick } else { record::cause_of(&alert) };
                        self.execute(&node, actions, Some((seen, alert.timestamp_ns, seen_unix)), &why);
                    }
                    Some(Event::Run(actions, why)) => self.execute(&node, actions, None, &why),
                    Some(Event::Result { id, ok, error }) => {
                        let actions = self.step(Input::ActionResult { id, ok, error });
                        self.execute(&node, actions, None, &Why::Result);
                    }
                    Some(Event::Protects { agent, entries }) => {
                        let actions = self.learned(agent, entries);
                        self.execute(&node, actions, None, &Why::Allowlist);
                    }
                },
            }
        }
        tracing::debug!(node = %node.name(), "policy driver stopped");
    }

    /// For connection alerts, asks the origin agent once per new remote for its MAC, so the
    /// policy blocks the MAC (it survives an address change) rather than the address.
    async fn learn_neighbours(
        &self,
        node: &NodeHandle,
        alert: &Alert,
        asked: &mut HashSet<(String, IpAddr)>,
    ) {
        if !self.wants_macs() {
            return; // no rule would use it (all of them run elsewhere, say): nobody asked
        }
        let remotes: Vec<IpAddr> = match &alert.body {
            AlertBody::ConnThreshold { addr, .. } => vec![*addr],
            AlertBody::Connections { per_remote, .. } => {
                // The busiest new remotes first, a few per table: a host's first table can
                // list thousands, and each question delays the alerts behind it.
                let mut fresh: Vec<&(IpAddr, u64)> = per_remote
                    .iter()
                    .filter(|(ip, _)| !asked.contains(&(alert.origin.clone(), *ip)))
                    .collect();
                fresh.sort_by_key(|r| std::cmp::Reverse(r.1));
                fresh
                    .into_iter()
                    .take(MAX_ASK_PER_TABLE)
                    .map(|(ip, _)| *ip)
                    .collect()
            }
            _ => return,
        };
        for ip in remotes {
            if asked.len() >= MAX_ASKED {
                asked.clear();
            }
            if !asked.insert((alert.origin.clone(), ip)) {
                continue;
            }
            let ask = node.call(&alert.origin, SensorVerb::MacOf { ip });
            let reply = tokio::time::timeout(MAC_TIMEOUT, ask).await;
            match reply {
                Ok(Ok(text)) => match text.trim().parse::<Mac>() {
                    Ok(mac) => {
                        tracing::debug!(%ip, %mac, origin = ?alert.origin, "neighbour learnt");
                        self.step(self.inner.vms.neighbour(ip, mac));
                    }
                    Err(_) => {
                        tracing::debug!(%ip, origin = ?alert.origin, "neighbour MAC unknown: blocks go by address")
                    }
                },
                // A failing or slow agent is not asked again for this alert: each question
                // delays the policy, ticks included.
                Ok(Err(e)) => {
                    tracing::debug!(%ip, origin = ?alert.origin, error = ?e.to_string(), "mac_of failed: blocks go by address");
                    break;
                }
                Err(_) => {
                    tracing::debug!(%ip, origin = ?alert.origin, "mac_of timed out: blocks go by address");
                    break;
                }
            }
        }
    }

    /// Steps the policy under the mutex, on the driver's clock.
    /// Records what `agent` protects on its own and gives the policy the whole automatic
    /// allowlist again (the topology's, then every agent's); a block of a source now
    /// protected is released.
    fn learned(&self, agent: String, entries: Vec<(Target, String)>) -> Vec<Action> {
        let now = self.now();
        let actions = {
            let mut core = self.core();
            let mut all = self
                .inner
                .topology
                .as_deref()
                .map(firewall::topology_entries)
                .unwrap_or_default();
            core.learned.insert(agent, entries);
            for (t, note) in core.learned.values().flatten() {
                if !all.iter().any(|(seen, _)| seen == t) {
                    all.push((*t, note.clone()));
                }
            }
            step(&mut core.state, Input::TopologyAllow(all), now)
        };
        self.sync_firewall();
        actions
    }

    fn step(&self, input: Input) -> Vec<Action> {
        let now = self.now();
        step(&mut self.core().state, input, now)
    }

    /// What an HO raises when its fast path acts: the call, and the rules behind it (those
    /// that held the effect, also when the action undoes it).
    fn fast_path_note(&self, at: &str, action: &Action) -> Option<String> {
        let (agent, call) = call_of(action)?;
        let rules = action
            .effect()
            .map(|e| self.core().state.rules_behind(&e).join(", "));
        let why = rules
            .filter(|r| !r.is_empty())
            .map(|r| format!(" (rule {r})"))
            .unwrap_or_default();
        Some(format!("fast path at {at}: {call} on {agent}{why}"))
    }

    /// Carries out `actions` in order: actuator calls are sent at once (each on its own task,
    /// its reply fed back as an `ActionResult`), alerts are raised at the driver's node (and
    /// climb to the VO), dry-run records are logged. At an HO every call sent is also raised
    /// as a fast-path alert. `cause` is (when the node saw the alert, its raise time, the
    /// same in Unix ns). With a ledger, each effect placed or undone is written first
    /// ([`record`]): the call's task sends once its row is committed.
    fn execute(
        &self,
        node: &NodeHandle,
        actions: Vec<Action>,
        cause: Option<(Instant, u64, u64)>,
        why: &Why,
    ) {
        let decided = Instant::now();
        let here = node.name();
        for action in actions {
            match &action {
                Action::Alert { kind, text } => {
                    tracing::warn!(node = here, ?kind, text = ?text, "policy alert");
                    if let Some(m) = self.vo_metrics() {
                        m.on_policy_alert(*kind);
                    }
                    // Typed, so the VO counts an HO's alerts by kind as it counts its own
                    // (an HO's driver counts none; the VO's counts its own above).
                    let _ = node.raise(AlertBody::Policy {
                        kind: crate::metrics::policy_alert_kind(*kind).to_string(),
                        at: self.inner.at.clone(),
                        text: text.clone(),
                    });
                    continue;
                }
                Action::Verified { effect, outcome } => {
                    tracing::info!(node = here, ?effect, verification = %outcome.detail(), "policy verification");
                    self.record_verification(effect, outcome);
                    continue;
                }
                Action::DryRun(inner) => {
                    tracing::info!(node = here, action = ?inner, "policy (dry-run): would do");
                    let _ = self.record(&action, why);
                    continue;
                }
                _ => {}
            }
            let Some(id) = action.id() else { continue };
            let Some((via, call)) = call_of(&action) else {
                continue;
            };
            let recorded = self.record(&action, why);
            let verb = call.name();
            let sent_ns = unix_ns();
            // A block's timeline; "sent" is logged by the call's task, once its ledger row is
            // written (the closed loop's figure includes the write).
            let timing = match &action {
                Action::Block { target, .. } => {
                    let (raised, seen) = cause.map_or((0, 0), |(_, r, u)| (r, u));
                    let t = BlockTiming {
                        id,
                        target: target_arg(target),
                        alert_raised_ns: raised,
                        alert_seen_ns: seen,
                        sent_ns,
                        acked_ns: 0,
                        ok: false,
                    };
                    let mut ts = lock(&self.inner.timings);
                    if ts.len() == MAX_TIMINGS {
                        ts.pop_front();
                    }
                    ts.push_back(t);
                    Some((target_arg(target), raised, seen))
                }
                _ => {
                    tracing::info!(node = here, id, %via, call = ?call, "policy action sent");
                    None
                }
            };
            let note = self
                .inner
                .at
                .as_deref()
                .and_then(|at| self.fast_path_note(at, &action));
            let start = cause.map_or(decided, |(seen, _, _)| seen);
            let flying = self.inner.reconciler.on_its_way(action.effect());
            let mut line = self.inner.order.join(action.effect());
            let me = self.clone();
            let handle = node.clone();
            tokio::spawn(async move {
                let _flying = flying;
                let here = handle.name();
                // Written before sent: a ledger that cannot write is logged, the call still goes.
                let recorded = match recorded {
                    Some(mut r) => {
                        let written =
                            std::mem::replace(&mut r.written, crate::ledger::Written::none());
                        if let Err(e) = written.wait().await {
                            tracing::error!(node = here, id, error = %e, "decision not recorded in the ledger; sending anyway");
                        }
                        Some(r)
                    }
                    None => None,
                };
                let sent_ns = match &timing {
                    Some((target, raised, seen)) => {
                        let sent_ns = unix_ns();
                        tracing::info!(node = here, id, %target, %via, alert_raised_ns = raised, alert_seen_ns = seen, sent_ns, "policy block sent");
                        let mut ts = lock(&me.inner.timings);
                        if let Some(t) = ts.iter_mut().rev().find(|t| t.id == id) {
                            t.sent_ns = sent_ns;
                        }
                        sent_ns
                    }
                    None => sent_ns,
                };
                // After the previous call about the same effect, and before taking a place
                // among the calls in flight (which that call may be waiting for).
                line.wait().await;
                // Closed only with the driver: then nothing is sent.
                let Ok(_turn) = me.inner.calls.clone().acquire_owned().await else {
                    return;
                };
                let reply = match tokio::time::timeout(CALL_TIMEOUT, call.send(&handle, &via)).await
                {
                    Ok(r) => r,
                    Err(_) => Err(format!(
                        "{via} did not answer {verb} within {CALL_TIMEOUT:?}"
                    )),
                };
                // Ended: the next call about this effect may go.
                drop(line);
                if let Some(m) = me.vo_metrics() {
                    m.observe_actuator_ack(start.elapsed().as_secs_f64());
                }
                let acked_ns = unix_ns();
                if timing.is_some() {
                    let mut ts = lock(&me.inner.timings);
                    if let Some(t) = ts.iter_mut().rev().find(|t| t.id == id) {
                        t.acked_ns = acked_ns;
                        t.ok = reply.is_ok();
                    }
                }
                match &reply {
                    Ok(text) => {
                        tracing::info!(node = here, id, %via, verb, sent_ns, acked_ns, reply = ?text.trim(), "policy action done")
                    }
                    Err(e) => {
                        tracing::warn!(node = here, id, %via, verb, sent_ns, acked_ns, error = ?e.to_string(), "policy action failed")
                    }
                }
                if let Some(r) = &recorded {
                    let (ok, text) = match &reply {
                        Ok(t) => (true, t.as_str()),
                        Err(e) => (false, e.as_str()),
                    };
                    r.ledger.reply(r.id, &r.subject, r.undo, ok, text);
                }
                let (ok, error) = match reply {
                    Ok(_) => (true, None),
                    Err(e) => (false, Some(e)),
                };
                if me
                    .inner
                    .tx
                    .send(Event::Result { id, ok, error })
                    .await
                    .is_err()
                {
                    tracing::debug!(id, "policy driver gone: result dropped");
                }
            });
            // After the call left: the fast path's reaction does not wait for the report.
            if let Some(note) = note {
                let _ = node.raise(AlertBody::Text(note));
            }
        }
    }

    /// Hands actions decided outside the driver task (API mutations) to it.
    fn run_later(&self, actions: Vec<Action>, why: Why) -> Result<(), PolicyError> {
        if actions.is_empty() {
            return Ok(());
        }
        if self.inner.node.get().is_none() {
            return Err(PolicyError::Unavailable(format!(
                "{} is not running yet",
                self.node_name()
            )));
        }
        self.inner
            .tx
            .try_send(Event::Run(actions, why))
            .map_err(|_| busy())
    }

    /// A place in the driver task's queue, taken before a mutation whose actions must reach
    /// it (once the policy holds a change, its calls must be sent).
    fn slot(&self) -> Result<mpsc::Permit<'_, Event>, PolicyError> {
        self.inner.tx.try_reserve().map_err(|_| busy())
    }

    /// As [`PolicyDriver::run_later`], for a change that holds whether or not its immediate
    /// actions could be queued (the policy retries them on its next tick).
    fn run_soon(&self, actions: Vec<Action>, why: Why, what: &str) -> Result<(), PolicyError> {
        self.run_later(actions, why).or_else(|e| match e {
            PolicyError::Unavailable(m) => {
                tracing::warn!(node = %self.node_name(), error = %m, "{what}; its immediate actions could not be queued");
                Ok(())
            }
            e => Err(e),
        })
    }

    /// The timelines of the last block requests (oldest first).
    pub fn block_timings(&self) -> Vec<BlockTiming> {
        lock(&self.inner.timings).iter().cloned().collect()
    }

    /// Alerts the policy never saw because its queue was full.
    pub fn alerts_dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
