//! A node: the owners of its state put together, and its life from start to stop.
//!
//! A node's state is split by owner, each with its own module and private fields:
//! - [`crate::delivery`]: alerts (the queue for the master, de-duplication and ack routes, own
//!   sequence numbers, overflow, the VO's journal, recent alerts, alert handlers) and the
//!   delivery guarantee documented there;
//! - `peers`: live connections (children, callers, the uplink) and their counters;
//! - `lifecycle`: the stop signals;
//! - `routing`: the agent's verbs, the route cache, and answering calls.
//!
//! The tasks of a running node (the accept loop in `server`, the link to the master in
//! `uplink`, one reader and one writer per connection in `session`) are handed the owners
//! they use; [`NodeHandle`] is a handle over the same owners. This module only builds them
//! ([`Node::new`]) and runs the start and stop sequence ([`Node::run`]).

use std::sync::Arc;
use std::time::Duration;

use crate::agent::AgentRef;
use crate::delivery::Delivery;
use crate::error::NodeError;
use crate::lifecycle::Life;
use crate::peers::Peers;
use crate::routing::Router;
use crate::server::Server;
use crate::uplink::Uplink;

pub use crate::delivery::{AlertHandler, QueueFull};
pub use crate::handle::NodeHandle;
pub use crate::spec::{MasterAddr, NodeSpec};

/// What the embedding program adds to a node.
#[derive(Default, Clone)]
pub struct Hooks {
    /// The agent behind an agent node (or the verbs an HO adds for its fast path).
    pub agent: Option<AgentRef>,
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

/// A node, ready to [`run`](Node::run).
pub struct Node {
    spec: Arc<NodeSpec>,
    delivery: Arc<Delivery>,
    peers: Arc<Peers>,
    router: Arc<Router>,
    life: Arc<Life>,
    agent: Option<AgentRef>,
}

impl Node {
    /// Builds a node (opens the VO's journal, if any). Nothing runs until [`Node::run`].
    pub fn new(spec: NodeSpec, hooks: Hooks) -> Result<Node, NodeError> {
        let delivery = Arc::new(Delivery::new(&spec, hooks.alert_handlers)?);
        let peers = Arc::new(Peers::new());
        let life = Arc::new(Life::new());
        let router = Arc::new(Router::new(
            &spec,
            hooks.agent.as_ref().map(AgentRef::verbs),
            delivery.clone(),
            peers.clone(),
            life.clone(),
        ));
        Ok(Node {
            spec: Arc::new(spec),
            delivery,
            peers,
            router,
            life,
            agent: hooks.agent,
        })
    }

    /// A handle for raising alerts and reading counters while the node runs.
    pub fn handle(&self) -> NodeHandle {
        NodeHandle::new(
            self.delivery.clone(),
            self.router.clone(),
            self.life.clone(),
        )
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
        let spec = &self.spec;
        let name = &spec.name;
        let listen_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let mut tasks = Vec::new();
        let (delivery, life) = (self.delivery.clone(), self.life.clone());
        tasks.push(tokio::spawn(async move {
            delivery.run_journal(life.closed()).await
        }));
        let (delivery, life) = (self.delivery.clone(), self.life.clone());
        tasks.push(tokio::spawn(async move {
            delivery.run_spool(life.closed()).await
        }));
        if let Some(l) = listener {
            let server = Arc::new(Server::new(
                spec.clone(),
                self.delivery.clone(),
                self.peers.clone(),
                self.router.clone(),
                self.life.clone(),
            ));
            tasks.push(tokio::spawn(server.accept_loop(l)));
        }
        if let Some(uplink) = Uplink::new(
            spec.clone(),
            listen_addr,
            self.delivery.clone(),
            self.peers.clone(),
            self.router.clone(),
            self.life.clone(),
        ) {
            tasks.push(tokio::spawn(uplink.run()));
        }
        let producers = match &self.agent {
            Some(agent) => agent.start(self.handle()),
            None => Vec::new(),
        };
        tracing::info!(node = %name, role = %spec.role, listen = ?listen_addr, master = ?spec.master.as_ref().map(|m| &m.name), "node running");

        let exit = tokio::select! {
            _ = shutdown => Exit::Shutdown,
            _ = self.life.destroy_requested() => Exit::Destroyed,
        };
        tracing::info!(node = %name, reason = ?exit, "node stopping");
        self.life.stop_producers();
        for p in producers {
            let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
        }
        if exit == Exit::Destroyed {
            self.life.stop_accepting();
            self.peers.destroy_children(name).await;
        }
        self.life.stop_accepting();
        self.delivery.drain(spec.flush_timeout).await;
        self.life.close();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
        self.peers.wait_closed(Duration::from_secs(2)).await;
        self.delivery.flush_journal();
        self.delivery.flush_spool();
        let st = self.router.stats();
        let own = st.origins.get(name).cloned().unwrap_or_default();
        tracing::info!(
            node = %name,
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
