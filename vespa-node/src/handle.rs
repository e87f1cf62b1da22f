//! [`NodeHandle`]: what the program embedding a node (and an agent's background work) holds
//! while the node runs.
//!
//! A handle reaches the node's state only through its owners: delivery for raising alerts,
//! the call router for verbs and counters, the life cycle for stopping.

use std::sync::Arc;

use vespa_proto::AlertBody;

use crate::delivery::{Delivery, QueueFull};
use crate::lifecycle::Life;
use crate::routing::words;
use crate::routing::Router;
use crate::stats::Stats;
use crate::util::now_ns;
use crate::verbs::{NodeVerb, Verb, VerbResult};

/// A cheap handle on a running node: raise alerts, read counters, call verbs.
#[derive(Clone)]
pub struct NodeHandle {
    delivery: Arc<Delivery>,
    router: Arc<Router>,
    life: Arc<Life>,
}

impl NodeHandle {
    /// A handle over a node's owners.
    pub(crate) fn new(delivery: Arc<Delivery>, router: Arc<Router>, life: Arc<Life>) -> Self {
        NodeHandle {
            delivery,
            router,
            life,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.delivery.name()
    }

    /// Raises an alert originating here; returns its sequence number. Never waits: when the
    /// queue is full the alert is dropped, counted and later reported ([`QueueFull`]).
    pub fn raise(&self, body: AlertBody) -> Result<u64, QueueFull> {
        self.delivery.raise(body, now_ns())
    }

    /// As [`raise`](Self::raise), for something that happened at `timestamp_ns` (Unix
    /// nanoseconds), e.g. a kernel event: the alert carries that time rather than now, so
    /// latency measured from the alert's timestamp starts at the event itself.
    pub fn raise_at(&self, body: AlertBody, timestamp_ns: u64) -> Result<u64, QueueFull> {
        self.delivery.raise(body, timestamp_ns)
    }

    /// The node's counters.
    pub fn stats(&self) -> Stats {
        self.router.stats()
    }

    /// Calls `verb` at `node`: this node, or any node below it (as `call <node> <verb> ...`,
    /// routed down the tree). The reply comes back as it would over the network.
    pub async fn call(&self, node: &str, verb: impl Verb) -> VerbResult {
        let (verb, args) = if node == self.name() {
            words(verb)
        } else {
            let (name, args) = words(verb);
            words(NodeVerb::Call {
                node: node.to_string(),
                verb: name,
                args,
            })
        };
        self.call_words(verb, args).await
    }

    /// Runs a call's words at this node as if they came over the network: the way for words
    /// typed by an operator, which the node parses like any other call.
    pub async fn call_words(&self, verb: String, args: Vec<String>) -> VerbResult {
        self.router.clone().dispatch(verb, args).await
    }

    /// Completes when the node starts stopping; background producers end then.
    pub async fn stopping(&self) {
        self.life.producers_stopped().await
    }

    /// Asks the node to destroy itself and its subtree.
    pub fn destroy(&self) {
        self.life.request_destroy();
    }
}
