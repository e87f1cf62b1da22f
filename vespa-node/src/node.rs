//! A node: its state, how it takes alerts, and its life cycle.
//!
//! ## Delivery guarantee
//!
//! **An alert is acknowledged to a child only once the VO has processed it.** Each hop keeps
//! an alert in its [`Outbox`] until its master acknowledges it, and an HO passes the VO's
//! `Ack` down to the child the alert came from instead of acknowledging on receipt (ack
//! chaining). So until the VO has processed an alert, the origin still holds it:
//! - a cut link, a dead HO or a dead VO loses nothing: the origin (and any live hop) re-sends
//!   after reconnecting, and every hop de-duplicates ([`crate::dedup`]);
//! - the VO processes each alert once: it journals it (if configured) before acknowledging,
//!   and rebuilds its de-duplication table from the journal after a restart (without a
//!   journal, a restarted VO may process again the few alerts the old one processed but whose
//!   ack died with it);
//! - an HO keeps no state that matters for delivery: killed and restarted, it starts empty
//!   and the children's re-sends refill it.
//!
//! What is not covered: the origin's own queue is in memory, so alerts an agent raised and the
//! VO has not yet processed die with the agent if it is killed (SIGTERM flushes first); a full
//! origin queue drops new alerts, counts them (`queue_overflow`) and reports the count in an
//! alert once there is room again; HO alert handlers run again for alerts re-sent after the HO
//! itself restarted (they run once per hop per process lifetime).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vespa_proto::{Alert, AlertBody, Message};

use crate::config::{Role, Settings, Topology};
use crate::dedup::{Dedup, Verdict};
use crate::error::NodeError;
use crate::journal::Journal;
use crate::outbox::Outbox;
use crate::session::Session;
use crate::stats::{inc, Counters, Stats};
use crate::transport::Security;
use crate::verbs::{AgentVerbs, VerbTable};

/// Where a node's master is.
#[derive(Debug, Clone)]
pub struct MasterAddr {
    /// The master's node name (checked against the name it proves in the handshake).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Its name.
    pub name: String,
    /// What it is.
    pub role: Role,
    /// Its master (`None` for the VO).
    pub master: Option<MasterAddr>,
    /// Tunables.
    pub settings: Settings,
    /// VO: alert journal file.
    pub journal: Option<PathBuf>,
    /// Link protection.
    pub security: Security,
    /// How long a stopping node waits for its master to acknowledge its queue.
    pub flush_timeout: Duration,
}

impl NodeSpec {
    /// A spec with default settings.
    pub fn new(name: &str, role: Role, master: Option<MasterAddr>, security: Security) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            role,
            master,
            settings: Settings::default(),
            journal: None,
            security,
            flush_timeout: Duration::from_secs(5),
        }
    }

    /// The spec of node `name` of a validated topology.
    pub fn from_topology(topo: &Topology, name: &str, security: Security) -> Option<NodeSpec> {
        let def = topo.node(name)?;
        let master = def
            .master
            .as_deref()
            .and_then(|m| topo.node(m))
            .map(|m| MasterAddr {
                name: m.name.clone(),
                addr: topo.listen_addr(m),
            });
        let mut spec = NodeSpec::new(name, def.role, master, security);
        spec.settings = topo.settings.clone();
        spec.journal = def.journal.clone();
        Some(spec)
    }
}

/// Called for every new alert at every hop (after de-duplication; path includes this hop).
/// Must be quick: it runs on the connection's task.
pub type AlertHandler = Arc<dyn Fn(&Alert) + Send + Sync>;

/// What the embedding program adds to a node.
#[derive(Default, Clone)]
pub struct Hooks {
    /// The agent behind an agent node.
    pub agent: Option<Arc<dyn AgentVerbs>>,
    /// Alert handlers (the VO's policy, tests, ...).
    pub alert_handlers: Vec<AlertHandler>,
}

/// How a node's `run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The shutdown future completed (SIGINT/SIGTERM).
    Shutdown,
    /// A `destroy` came from the master or a caller.
    Destroyed,
}

/// The alert could not be queued: the queue is full (counted and reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("alert dropped: the outgoing queue is full")]
pub struct QueueFull;

/// Per-hop routing state, under one lock so "judge, then queue" is atomic per origin.
#[derive(Default)]
pub(crate) struct Hop {
    pub dedup: Dedup,
    /// The connection each origin's alerts last came through (where its acks go).
    pub routes: HashMap<Arc<str>, Weak<Session>>,
}

impl Hop {
    fn route(&mut self, origin: &Arc<str>, from: &Arc<Session>) {
        match self.routes.get(origin) {
            Some(w) if std::ptr::eq(w.as_ptr(), Arc::as_ptr(from)) => {}
            _ => {
                self.routes.insert(origin.clone(), Arc::downgrade(from));
            }
        }
    }
}

/// Alerts kept for `get_alerts`.
pub(crate) struct Recent {
    pub next_index: u64,
    pub alerts: VecDeque<Alert>,
    pub cap: usize,
}

/// The state shared by a node's tasks.
pub(crate) struct Inner {
    pub name: String,
    pub spec: NodeSpec,
    pub counters: Counters,
    /// Alerts for the master; `None` at the root.
    pub outbox: Option<Arc<Outbox>>,
    pub hop: Mutex<Hop>,
    /// Last sequence number this node gave its own alerts (numbering and queueing happen
    /// under this lock so the queue holds them in order).
    pub own_seq: Mutex<u64>,
    pub overflow_unreported: AtomicU64,
    pub recent: Mutex<Recent>,
    pub journal: Option<Mutex<Journal>>,
    pub handlers: Vec<AlertHandler>,
    pub verbs: VerbTable,
    pub sessions: Mutex<BTreeMap<u64, Arc<Session>>>,
    pub sessions_changed: Notify,
    pub uplink: Mutex<Option<Arc<Session>>>,
    pub next_session: AtomicU64,
    /// Ends background producers (agents' samplers).
    pub producers_stop: CancellationToken,
    /// Stops accepting connections.
    pub accept_stop: CancellationToken,
    /// Closes every connection (the last step of stopping).
    pub closing: CancellationToken,
    pub destroy: CancellationToken,
    pub destroyed: AtomicBool,
    /// Where `call` found nodes below this one: target -> child name.
    pub route_cache: Mutex<HashMap<String, String>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A node, ready to [`run`](Node::run).
pub struct Node {
    pub(crate) inner: Arc<Inner>,
    agent: Option<Arc<dyn AgentVerbs>>,
}

/// A cheap handle on a running node: raise alerts, read counters, call verbs.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) inner: Arc<Inner>,
}

impl Node {
    /// Builds a node (opens the VO's journal, if any). Nothing runs until [`Node::run`].
    pub fn new(spec: NodeSpec, hooks: Hooks) -> Result<Node, NodeError> {
        let mut hop = Hop::default();
        let mut recent = Recent {
            next_index: 0,
            alerts: VecDeque::new(),
            cap: spec.settings.keep_alerts,
        };
        let journal = match (&spec.journal, spec.master.is_none()) {
            (Some(path), true) => {
                let (j, old) = Journal::open(path)?;
                for a in old {
                    let (_, key) = hop.dedup.accept(&a.origin, a.seq);
                    hop.dedup.mark_acked(&key, a.seq);
                    push_recent(&mut recent, &a);
                }
                Some(Mutex::new(j))
            }
            _ => None,
        };
        let outbox = spec
            .master
            .as_ref()
            .map(|_| Arc::new(Outbox::new(spec.settings.queue_capacity)));
        let verbs = hooks.agent.as_ref().map(|a| a.verbs()).unwrap_or_default();
        let closing = CancellationToken::new();
        // Numbering from the wall clock keeps a restarted origin above its old numbers.
        let own_seq = Mutex::new(now_ns());
        let inner = Inner {
            name: spec.name.clone(),
            counters: Counters::default(),
            outbox,
            hop: Mutex::new(hop),
            own_seq,
            overflow_unreported: AtomicU64::new(0),
            recent: Mutex::new(recent),
            journal,
            handlers: hooks.alert_handlers,
            verbs,
            sessions: Mutex::new(BTreeMap::new()),
            sessions_changed: Notify::new(),
            uplink: Mutex::new(None),
            next_session: AtomicU64::new(1),
            producers_stop: CancellationToken::new(),
            accept_stop: CancellationToken::new(),
            closing,
            destroy: CancellationToken::new(),
            destroyed: AtomicBool::new(false),
            route_cache: Mutex::new(HashMap::new()),
            spec,
        };
        Ok(Node {
            inner: Arc::new(inner),
            agent: hooks.agent,
        })
    }

    /// A handle for raising alerts and reading counters while the node runs.
    pub fn handle(&self) -> NodeHandle {
        NodeHandle {
            inner: self.inner.clone(),
        }
    }

    /// Runs the node until `shutdown` completes or a `destroy` arrives, then stops in order:
    /// stop accepting and producing, (on destroy) tell the children and wait for them to go,
    /// wait up to `flush_timeout` for the master to acknowledge the queue, close every
    /// connection in order.
    ///
    /// `listener` accepts children and operators' calls (bind it with
    /// [`crate::launch::bind`], or any `127.0.0.1:0` socket in tests).
    pub async fn run(
        self,
        listener: Option<tokio::net::TcpListener>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<Exit, NodeError> {
        let inner = self.inner;
        let listen_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let mut tasks = Vec::new();
        if let Some(l) = listener {
            tasks.push(tokio::spawn(crate::server::accept_loop(inner.clone(), l)));
        }
        if let Some(master) = inner.spec.master.clone() {
            tasks.push(tokio::spawn(crate::uplink::uplink_loop(
                inner.clone(),
                master,
                listen_addr,
            )));
        }
        let producers = match &self.agent {
            Some(agent) => agent.start(NodeHandle {
                inner: inner.clone(),
            }),
            None => Vec::new(),
        };
        tracing::info!(node = %inner.name, role = %inner.spec.role, listen = ?listen_addr, master = ?inner.spec.master.as_ref().map(|m| &m.name), "node running");

        let exit = tokio::select! {
            _ = shutdown => Exit::Shutdown,
            _ = inner.destroy.cancelled() => Exit::Destroyed,
        };
        tracing::info!(node = %inner.name, reason = ?exit, "node stopping");
        inner.producers_stop.cancel();
        for p in producers {
            let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
        }
        if exit == Exit::Destroyed {
            inner.accept_stop.cancel();
            inner.destroy_children().await;
        }
        inner.accept_stop.cancel();
        if let Some(outbox) = &inner.outbox {
            if tokio::time::timeout(inner.spec.flush_timeout, outbox.wait_empty())
                .await
                .is_err()
            {
                tracing::warn!(node = %inner.name, unacknowledged = outbox.len(), "stopping with alerts the master has not acknowledged");
            }
        }
        inner.closing.cancel();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
        inner.wait_sessions_closed(Duration::from_secs(2)).await;
        if let Some(j) = &inner.journal {
            lock(j).flush();
        }
        let st = inner.stats();
        let own = st.origins.get(&inner.name).cloned().unwrap_or_default();
        tracing::info!(
            node = %inner.name,
            alerts_raised = st.alerts_raised,
            first_seq = own.first,
            last_seq = own.highest,
            unacknowledged = st.queue_len,
            queue_overflow = st.queue_overflow,
            alerts_processed = st.alerts_processed,
            duplicates_dropped = st.duplicates_dropped,
            "node stopped"
        );
        Ok(exit)
    }
}

fn push_recent(r: &mut Recent, a: &Alert) {
    if r.cap == 0 {
        r.next_index += 1;
        return;
    }
    if r.alerts.len() == r.cap {
        r.alerts.pop_front();
    }
    r.alerts.push_back(a.clone());
    r.next_index += 1;
}

impl Inner {
    fn new_alert(&self, seq: u64, body: AlertBody, timestamp_ns: u64) -> Alert {
        Alert {
            origin: self.name.clone(),
            seq,
            path: vec![self.name.clone()],
            timestamp_ns,
            body,
        }
    }

    /// Raises an alert at this node (see [`NodeHandle::raise_at`]).
    pub fn raise(&self, body: AlertBody, timestamp_ns: u64) -> Result<u64, QueueFull> {
        let mut seq = lock(&self.own_seq);
        let Some(outbox) = &self.outbox else {
            *seq += 1;
            let alert = self.new_alert(*seq, body, timestamp_ns);
            inc(&self.counters.alerts_raised);
            self.process_at_root(alert, None);
            return Ok(*seq);
        };
        let Some(slot) = outbox.try_reserve() else {
            let n = self.counters.queue_overflow.fetch_add(1, Ordering::Relaxed) + 1;
            self.overflow_unreported.fetch_add(1, Ordering::Relaxed);
            if n == 1 || n.is_multiple_of(1000) {
                tracing::warn!(node = %self.name, dropped_total = n, capacity = outbox.capacity(), "outgoing alert queue full: alert dropped (counted in queue_overflow, reported upstream when there is room)");
            }
            return Err(QueueFull);
        };
        let unreported = self.overflow_unreported.load(Ordering::Relaxed);
        if unreported > 0 {
            if let Some(report_slot) = outbox.try_reserve() {
                self.overflow_unreported
                    .fetch_sub(unreported, Ordering::Relaxed);
                *seq += 1;
                let text = format!(
                    "{unreported} alert(s) dropped at {}: outgoing queue full (capacity {})",
                    self.name,
                    outbox.capacity()
                );
                self.queue_own(
                    outbox,
                    report_slot,
                    self.new_alert(*seq, AlertBody::Text(text), now_ns()),
                );
            }
        }
        *seq += 1;
        let alert = self.new_alert(*seq, body, timestamp_ns);
        self.queue_own(outbox, slot, alert);
        Ok(*seq)
    }

    fn queue_own(&self, outbox: &Outbox, slot: crate::outbox::Slot, alert: Alert) {
        inc(&self.counters.alerts_raised);
        inc(&self.counters.alerts_forwarded);
        self.run_handlers(&alert);
        let key = lock(&self.hop).dedup.accept(&alert.origin, alert.seq).1;
        let seq = alert.seq;
        outbox.push(slot, key, seq, Message::Alert(alert));
    }

    fn run_handlers(&self, alert: &Alert) {
        for h in &self.handlers {
            h(alert);
        }
    }

    /// The root takes a new alert: journal, recent list, handlers; then it is acknowledged.
    /// Returns the interned origin when `from` should be sent an ack.
    fn process_at_root(&self, mut alert: Alert, from: Option<&Arc<Session>>) {
        let mut hop = lock(&self.hop);
        let (verdict, key) = hop.dedup.accept(&alert.origin, alert.seq);
        if let Some(from) = from {
            hop.route(&key, from);
        }
        let seq = alert.seq;
        if verdict != Verdict::New {
            drop(hop);
            inc(&self.counters.duplicates_dropped);
            if let Some(from) = from {
                from.acks.put(key, seq);
            }
            return;
        }
        if from.is_some() {
            alert.path.push(self.name.clone());
        }
        if let Some(j) = &self.journal {
            lock(j).append(&alert);
        }
        hop.dedup.mark_acked(&key, seq);
        push_recent(&mut lock(&self.recent), &alert);
        drop(hop);
        inc(&self.counters.alerts_processed);
        self.run_handlers(&alert);
        if let Some(from) = from {
            from.acks.put(key, seq);
        }
    }

    /// An alert from a child (already checked to be well-formed).
    pub async fn on_alert(&self, mut alert: Alert, from: &Arc<Session>) {
        inc(&self.counters.alerts_received);
        let Some(outbox) = &self.outbox else {
            self.process_at_root(alert, Some(from));
            return;
        };
        // Reserve room first (this is where backpressure waits), then judge and queue under
        // one lock, so two overlapping connections of one child cannot queue an origin's
        // alerts out of order.
        let slot = tokio::select! {
            s = outbox.reserve() => s,
            _ = from.cancel.cancelled() => return,
        };
        let mut hop = lock(&self.hop);
        let (verdict, key) = hop.dedup.accept(&alert.origin, alert.seq);
        hop.route(&key, from);
        let seq = alert.seq;
        match verdict {
            Verdict::New => {
                alert.path.push(self.name.clone());
                if !self.handlers.is_empty() {
                    self.run_handlers(&alert);
                }
                outbox.push(slot, key, seq, Message::Alert(alert));
                drop(hop);
                inc(&self.counters.alerts_forwarded);
            }
            Verdict::Duplicate { acked } => {
                drop(hop);
                drop(slot);
                inc(&self.counters.duplicates_dropped);
                // Still in our queue: the master's ack will be passed down when it comes.
                if acked {
                    from.acks.put(key, seq);
                }
            }
        }
    }

    /// `Ack { origin, seq }` from the master: free the queue and pass it down the route.
    pub fn on_ack(&self, origin: &str, seq: u64) {
        inc(&self.counters.acks_received);
        if let Some(o) = &self.outbox {
            o.ack(origin, seq);
        }
        let mut hop = lock(&self.hop);
        hop.dedup.mark_acked(origin, seq);
        let route = hop
            .routes
            .get_key_value(origin)
            .and_then(|(k, w)| w.upgrade().map(|s| (k.clone(), s)));
        drop(hop);
        if let Some((key, session)) = route {
            session.acks.put(key, seq);
        }
    }

    /// Called by a writer before it sends acks: alerts must be in the journal first.
    pub fn before_acks(&self) {
        if let Some(j) = &self.journal {
            lock(j).flush();
        }
    }

    /// Registered children and their connections.
    pub fn children(&self) -> Vec<(crate::session::ChildInfo, Arc<Session>)> {
        lock(&self.sessions)
            .values()
            .filter_map(|s| s.child_info().map(|c| (c, s.clone())))
            .collect()
    }

    pub fn request_destroy(&self) {
        self.destroyed.store(true, Ordering::Relaxed);
        self.destroy.cancel();
    }

    /// Sends `Destroy` to every child and waits (bounded) until they have all left.
    async fn destroy_children(&self) {
        let kids = self.children();
        for (info, s) in &kids {
            tracing::info!(node = %self.name, child = %info.name, "destroying child");
            let _ = s.ctl.send(Message::Destroy).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let changed = self.sessions_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.children().is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let left: Vec<String> = self.children().into_iter().map(|(c, _)| c.name).collect();
                tracing::warn!(node = %self.name, ?left, "children still connected after destroy");
                return;
            }
        }
    }

    async fn wait_sessions_closed(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.sessions_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if lock(&self.sessions).is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    pub fn stats(&self) -> Stats {
        let (len, cap) = self
            .outbox
            .as_ref()
            .map_or((0, 0), |o| (o.len(), o.capacity()));
        let children = self.children().into_iter().map(|(c, _)| c.name).collect();
        let origins = lock(&self.hop).dedup.snapshot();
        let up = lock(&self.uplink).is_some();
        self.counters.snapshot(
            &self.name,
            self.spec.role.as_str(),
            len,
            cap,
            up,
            children,
            origins,
        )
    }

    /// `get_alerts [from_index]`: JSON `{"first", "next", "alerts"}`, at most 2,000 alerts.
    pub fn get_alerts(&self, from: u64) -> String {
        let r = lock(&self.recent);
        let first = r.next_index - r.alerts.len() as u64;
        let skip = from.saturating_sub(first) as usize;
        let alerts: Vec<&Alert> = r.alerts.iter().skip(skip).take(2000).collect();
        let next = first + (skip + alerts.len()) as u64;
        serde_json::json!({ "first": first, "next": next.max(from.min(r.next_index)), "alerts": alerts }).to_string()
    }
}

impl NodeHandle {
    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Raises an alert originating here; returns its sequence number. Never waits: when the
    /// queue is full the alert is dropped, counted and later reported ([`QueueFull`]).
    pub fn raise(&self, body: AlertBody) -> Result<u64, QueueFull> {
        self.inner.raise(body, now_ns())
    }

    /// As [`raise`](Self::raise), for something that happened at `timestamp_ns` (Unix
    /// nanoseconds), e.g. a kernel event: the alert carries that time rather than now, so
    /// latency measured from the alert's timestamp starts at the event itself.
    pub fn raise_at(&self, body: AlertBody, timestamp_ns: u64) -> Result<u64, QueueFull> {
        self.inner.raise(body, timestamp_ns)
    }

    /// The node's counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Runs a verb here as if called over the network (`call <node> ...` routes down).
    pub async fn call(&self, verb: &str, args: Vec<String>) -> crate::verbs::VerbResult {
        crate::routing::dispatch(self.inner.clone(), verb.to_string(), args).await
    }

    /// Completes when the node starts stopping; background producers end then.
    pub async fn stopping(&self) {
        self.inner.producers_stop.cancelled().await
    }

    /// Asks the node to destroy itself and its subtree.
    pub fn destroy(&self) {
        self.inner.request_destroy();
    }
}
