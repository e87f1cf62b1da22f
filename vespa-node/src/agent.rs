//! The plug-in point of agents: what an agent brings to its node.
//!
//! An agent (the sensor agents of [`crate::sensor_agent`]; the libvirt, SDN and ClamAV agents
//! in their own crates) gives its node a [`VerbTable`] and, optionally, background work that
//! raises alerts through a [`NodeHandle`]. The node calls [`AgentVerbs::verbs`] once when it is
//! built and [`AgentVerbs::start`] once when it runs.

use crate::handle::NodeHandle;
use crate::verbs::VerbTable;

/// What an agent brings to its node: its verbs, and background work that raises alerts.
pub trait AgentVerbs: Send + Sync + 'static {
    /// The agent's verbs (called once, when the node starts).
    fn verbs(&self) -> VerbTable;

    /// Starts background work (periodic samples, event forwarding). It raises alerts through
    /// `node` and must end when [`NodeHandle::stopping`] completes; the runtime waits for the
    /// returned tasks before it flushes the node's queue. Default: none.
    fn start(&self, node: NodeHandle) -> Vec<tokio::task::JoinHandle<()>> {
        let _ = node;
        Vec::new()
    }
}
