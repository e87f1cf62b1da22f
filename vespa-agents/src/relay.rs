//! The antivirus agent's direct path to the hypervisor agent.
//!
//! The 2014 antivirus agent reached the hypervisor agent directly while its VM was isolated:
//! siblings are not reachable by routing down the tree, so [`TreeRelay`] connects to the node
//! at its topology address, with the tree's key, and calls the verb there.

use std::sync::Arc;
use std::time::Duration;

use vespa_node::{Client, Security, Topology};
use vespa_proto::verbs::{LibvirtVerb, Verb};

use crate::clamav::{RelayFuture, VmRelay};

/// Calls a verb on another node by connecting to it directly.
pub struct TreeRelay {
    /// Where every node listens.
    pub topology: Arc<Topology>,
    /// The tree's key.
    pub security: Security,
    /// The name this process presents in the handshake.
    pub me: String,
}

impl VmRelay for TreeRelay {
    fn call<'a>(&'a self, node: &'a str, verb: LibvirtVerb) -> RelayFuture<'a> {
        Box::pin(async move {
            let def = self
                .topology
                .node(node)
                .ok_or_else(|| format!("no node named {node:?} in the topology"))?;
            let addr = self.topology.listen_addr(def);
            let mut client = Client::connect(
                addr,
                &self.security,
                &self.me,
                Some(node),
                Duration::from_secs(5),
            )
            .await
            .map_err(|e| format!("reaching {node} at {addr}: {e}"))?;
            let args = verb.args();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let reply = client
                .call(verb.name(), &args)
                .await
                .map_err(|e| format!("{node} {}: {e}", verb.name()))?;
            client.close().await;
            reply
        })
    }
}
