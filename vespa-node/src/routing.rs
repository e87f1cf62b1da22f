//! Calls: answering a verb at this node, and routing a call down the tree to the node it
//! names.
//!
//! Every call a node answers, from a connection or from its own handle, comes through
//! [`Router::dispatch`], which is the one seam between the runtime's verbs and an agent's: the
//! words are parsed as a [`NodeVerb`] first and answered by the runtime ([`Router::builtin`]);
//! a name that is not one is parsed as a verb of the node's agent ([`Router::agent_verb`]);
//! a name in neither is an error reply.
//!
//! A node started from a topology routes by it: `call <node> <verb> ...` goes to the child
//! whose subtree (in the topology) holds the target, as the same `call`, hop by hop, and the
//! reply comes back up the same way; what a child says about itself never changes where a
//! call goes. A node built without a topology knows only its direct children (they
//! registered); to reach a node further down, `find_node` asks the children that can have
//! children, concurrently, and the answer (which child leads there) is cached.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vespa_proto::verbs::{permission_of, Permission};
use vespa_proto::{Message, NodeKind};

use crate::config::Role;
use crate::delivery::Delivery;
use crate::lifecycle::Life;
use crate::peers::Peers;
use crate::session::{Session, MAX_CALLS_IN_FLIGHT};
use crate::spec::{ChildSpec, NodeSpec};
use crate::stats::{get, inc, Stats};
use crate::util::lock;
use crate::verbs::{
    help_text, AgentVerbs, CallFrom, NodeVerb, Verb, VerbError, VerbFuture, VerbResult,
};

/// Where a call came from, which decides which verbs it may call ([`Permission`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// This node's master: the call entered the tree above and was checked there.
    Master,
    /// A registered child: it may read and call `Node` verbs, never a `Command`.
    Child,
    /// An operator (with per-node keys: the handshake proved an operator's name, or this
    /// node's own; with the shared key: every connection that did not register).
    Operator,
    /// A connection that proved some other node's key and did not register: it may read.
    Peer,
}

impl Caller {
    fn may(self, p: Permission) -> bool {
        match self {
            Caller::Master | Caller::Operator => true,
            Caller::Child | Caller::Peer => p <= Permission::Node,
        }
    }
}

/// The verb a call finally runs and the node it runs at (`None`: here): the call itself, or
/// for `call <node> <verb> ...` the verb it carries, however deeply nested.
fn carried(verb: &str, args: &[String]) -> (Option<String>, String) {
    match NodeVerb::parse(verb, args) {
        Ok(NodeVerb::Call { node, verb, args }) => match carried(&verb, &args) {
            (None, v) => (Some(node), v),
            inner => inner,
        },
        _ => (None, verb.to_string()),
    }
}

/// Answers and routes the calls of one node.
pub(crate) struct Router {
    name: String,
    role: Role,
    call_timeout: Duration,
    /// The verbs of the node's agent (none for most HOs and the VO).
    agent: Option<Arc<dyn AgentVerbs>>,
    /// The topology's children of this node, if it has a topology.
    children: Option<BTreeMap<String, ChildSpec>>,
    /// Where `call` found nodes below this one: target -> child name.
    route_cache: Mutex<HashMap<String, String>>,
    /// Calls answered.
    calls_served: AtomicU64,
    /// Calls refused for the caller's standing.
    calls_refused: AtomicU64,
    delivery: Arc<Delivery>,
    peers: Arc<Peers>,
    life: Arc<Life>,
}

impl Router {
    /// The router of the node `spec` describes, answering the built-ins from the node's state
    /// and any other verb from `verbs`.
    pub fn new(
        spec: &NodeSpec,
        agent: Option<Arc<dyn AgentVerbs>>,
        delivery: Arc<Delivery>,
        peers: Arc<Peers>,
        life: Arc<Life>,
    ) -> Router {
        Router {
            name: spec.name.clone(),
            role: spec.role,
            call_timeout: spec.settings.call_timeout,
            agent,
            children: spec.children.clone(),
            route_cache: Mutex::new(HashMap::new()),
            calls_served: AtomicU64::new(0),
            calls_refused: AtomicU64::new(0),
            delivery,
            peers,
            life,
        }
    }

    /// Answers a call that came over `session`: `Call`, or the typed `ListSlaves` and
    /// `FindNode`, which carry no id and are answered like `Call`s of `list_slaves` and
    /// `find_node` with a `Reply` of id 0. Other messages are not calls and are left alone.
    /// `from` is who the connection's handshake says called, for the agent.
    pub fn answer(
        self: &Arc<Self>,
        session: &Arc<Session>,
        caller: Caller,
        from: CallFrom,
        msg: Message,
    ) {
        let (id, (verb, args)) = match msg {
            Message::Call { id, verb, args } => (id, (verb, args)),
            Message::ListSlaves => (0, words(NodeVerb::ListSlaves {})),
            Message::FindNode { name } => (0, words(NodeVerb::FindNode { name })),
            _ => return,
        };
        let need = self.needed(&verb, &args);
        if !caller.may(need) {
            inc(&self.calls_refused);
            tracing::warn!(node = %self.name, from = ?session.peer_name, peer = %session.peer_addr, ?caller, verb = ?verb, "call refused: only the master chain or an operator may call it");
            let refusal = format!(
                "{verb} may only be called by {}'s master chain or an operator",
                self.name
            );
            let reply = Message::Reply {
                id,
                result: Err(refusal),
            };
            if session.ctl.try_send(reply).is_err() {
                session.cancel.cancel();
            }
            return;
        }
        let Ok(slot) = session.calls.clone().try_acquire_owned() else {
            inc(&self.calls_refused);
            let busy = format!(
                "{} is answering {MAX_CALLS_IN_FLIGHT} calls of this connection already; call again once some have been answered",
                self.name
            );
            // The reader must not wait on a peer that does not read its replies: with the
            // reply channel full, the peer loses its connection instead.
            if session
                .ctl
                .try_send(Message::Reply {
                    id,
                    result: Err(busy),
                })
                .is_err()
            {
                session.cancel.cancel();
            }
            return;
        };
        self.spawn_call(session.clone(), id, verb, args, from, slot);
    }

    /// Answers `Call { id, .. }` from `session` on a task of its own (a slow verb, or one
    /// routed down the tree, must not stop the connection's reader).
    fn spawn_call(
        self: &Arc<Self>,
        session: Arc<Session>,
        id: u64,
        verb: String,
        args: Vec<String>,
        from: CallFrom,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        inc(&self.calls_served);
        let router = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let parsed = NodeVerb::parse(&verb, &args);
            let destroy = matches!(parsed, Ok(NodeVerb::Destroy {}));
            let result = router.clone().answer_parsed(parsed, verb, args, from).await;
            let _ = session.ctl.send(Message::Reply { id, result }).await;
            if destroy {
                router.life.request_destroy();
            }
        });
    }

    /// Runs one verb at this node. `destroy` only answers here; the caller starts it after
    /// the reply is on its way.
    pub fn dispatch(self: Arc<Self>, verb: String, args: Vec<String>) -> VerbFuture {
        self.dispatch_from(verb, args, CallFrom::Local)
    }

    /// [`Router::dispatch`] for a call from `from`.
    fn dispatch_from(
        self: Arc<Self>,
        verb: String,
        args: Vec<String>,
        from: CallFrom,
    ) -> VerbFuture {
        let parsed = NodeVerb::parse(&verb, &args);
        Box::pin(self.answer_parsed(parsed, verb, args, from))
    }

    /// Answers words already tried as a built-in verb: the built-in, else the agent's verb.
    async fn answer_parsed(
        self: Arc<Self>,
        parsed: Result<NodeVerb, VerbError>,
        verb: String,
        args: Vec<String>,
        from: CallFrom,
    ) -> VerbResult {
        match parsed {
            Ok(v) => self.builtin(v, from).await,
            Err(e) if e.is_unknown() => self.agent_verb(&verb, &args, from).await,
            Err(e) => Err(e.to_string()),
        }
    }

    /// The runtime's own verbs.
    async fn builtin(self: Arc<Self>, verb: NodeVerb, from: CallFrom) -> VerbResult {
        match verb {
            NodeVerb::Help {} => {
                let agent = self.agent.as_ref().map(|a| a.docs()).unwrap_or_default();
                Ok(help_text(&self.name, &agent))
            }
            NodeVerb::ListSlaves {} => {
                let kids: Vec<_> = self.peers.children().into_iter().map(|(c, _)| c).collect();
                serde_json::to_string(&kids).map_err(|e| e.to_string())
            }
            NodeVerb::FindNode { name } => self
                .find_node(&name)
                .await
                .and_then(|p| serde_json::to_string(&p).map_err(|e| e.to_string())),
            NodeVerb::Call { node, verb, args } => self.call(node, verb, args, from).await,
            NodeVerb::Stats {} => serde_json::to_string(&self.stats()).map_err(|e| e.to_string()),
            NodeVerb::GetAlerts { from_index } => {
                Ok(self.delivery.get_alerts(from_index.unwrap_or(0)))
            }
            NodeVerb::Destroy {} => Ok(format!("destroying {} and its subtree", self.name)),
        }
    }

    /// A verb of the node's agent, or an error naming the verb.
    async fn agent_verb(&self, verb: &str, args: &[String], from: CallFrom) -> VerbResult {
        let no_verb = || format!("{} has no verb {verb:?} (`help` lists them)", self.name);
        let Some(agent) = &self.agent else {
            return Err(no_verb());
        };
        match agent.call(verb, args, from) {
            Ok(fut) => fut.await,
            Err(e) if e.is_unknown() => Err(no_verb()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The node's counters, as the `stats` verb reports them.
    pub fn stats(&self) -> Stats {
        let mut st = Stats::new(&self.name, self.role.as_str());
        self.delivery.report(&mut st);
        self.peers.report(&mut st);
        st.calls_served = get(&self.calls_served);
        st.calls_refused = get(&self.calls_refused);
        st
    }

    /// The path from this node down to `target`, this node first.
    async fn find_node(&self, target: &str) -> Result<Vec<String>, String> {
        if target == self.name {
            return Ok(vec![self.name.clone()]);
        }
        let kids = self.peers.children();
        if kids.iter().any(|(c, _)| c.name == target) {
            return Ok(vec![self.name.clone(), target.to_string()]);
        }
        let below = match &self.children {
            Some(_) => Some(self.next_hop(target)?),
            None => None,
        };
        let timeout = self.call_timeout;
        let asks = kids
            .iter()
            .filter(|(c, _)| match below {
                Some(next) => c.name == next,
                None => c.kind != NodeKind::Agent,
            })
            .map(|(c, s)| async move {
                let (verb, args) = words(NodeVerb::FindNode {
                    name: target.to_string(),
                });
                let reply = s.call(&verb, args, timeout).await;
                (c.name.clone(), reply)
            });
        for (child, reply) in futures_util::future::join_all(asks).await {
            if let Ok(json) = reply {
                let below: Vec<String> = serde_json::from_str(&json)
                    .map_err(|e| format!("bad find_node reply from {child}: {e}"))?;
                if self.children.is_none() {
                    lock(&self.route_cache).insert(target.to_string(), child);
                }
                let mut path = vec![self.name.clone()];
                path.extend(below);
                return Ok(path);
            }
        }
        Err(format!("no node named {target:?} below {}", self.name))
    }

    /// `call <node> <verb> [args...]`.
    /// `from` called: it reaches this node's agent as it is (further down, the child sees
    /// this node, its master).
    async fn call(
        self: Arc<Self>,
        target: String,
        verb: String,
        rest: Vec<String>,
        from: CallFrom,
    ) -> VerbResult {
        if target == self.name {
            return self.dispatch_from(verb, rest, from).await;
        }
        let timeout = self.call_timeout;
        if self.children.is_some() {
            let next = self.next_hop(&target)?;
            let via = self.peers.child(next).ok_or_else(|| {
                format!(
                    "{next} (on the way from {} to {target}) is not connected",
                    self.name
                )
            })?;
            if next == target {
                return via.call(&verb, rest, timeout).await;
            }
            let (verb, args) = words(NodeVerb::Call {
                node: target,
                verb,
                args: rest,
            });
            return via.call(&verb, args, timeout).await;
        }
        if let Some(s) = self.peers.child(&target) {
            return s.call(&verb, rest, timeout).await;
        }
        let cached = lock(&self.route_cache).get(&target).cloned();
        let via = match cached.and_then(|c| self.peers.child(&c)) {
            Some(s) => s,
            None => {
                let path = self.find_node(&target).await?;
                let next = path.get(1).ok_or_else(|| format!("no route to {target}"))?;
                self.peers
                    .child(next)
                    .ok_or_else(|| format!("{next} disconnected"))?
            }
        };
        let (verb, args) = words(NodeVerb::Call {
            node: target,
            verb,
            args: rest,
        });
        via.call(&verb, args, timeout).await
    }
}

impl Router {
    /// The permission a call needs: what its verb's name needs in any family, and for a verb
    /// of this node's own agent what the agent says.
    fn needed(&self, verb: &str, args: &[String]) -> Permission {
        let (at, verb) = carried(verb, args);
        let mine = at.as_deref().is_none_or(|n| n == self.name);
        let agent = self.agent.as_ref().filter(|_| mine).and_then(|a| {
            a.docs()
                .into_iter()
                .find(|d| d.name == verb)
                .map(|d| d.permission)
        });
        permission_of(&verb).max(agent.unwrap_or(Permission::Read))
    }

    /// The child of this node whose subtree in the topology holds `target`.
    fn next_hop(&self, target: &str) -> Result<&str, String> {
        self.children
            .iter()
            .flatten()
            .find(|(_, c)| c.subtree.contains(target))
            .map(|(name, _)| name.as_str())
            .ok_or_else(|| format!("no node named {target:?} below {}", self.name))
    }
}

/// A verb as the words a `Call` carries.
pub(crate) fn words(verb: impl Verb) -> (String, Vec<String>) {
    (verb.name().to_string(), verb.args())
}
