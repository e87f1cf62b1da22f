//! The antivirus agent's direct path to the hypervisor agent.
//!
//! The 2014 antivirus agent reached the hypervisor agent directly while its VM was isolated:
//! siblings are not reachable by routing down the tree, so [`TreeRelay`] connects to the node
//! at its topology address, with the tree's key, and calls the verb there. With per-node
//! keys a node proves its own name only to its master, so the relay connects to its master
//! and has it route `call <node> <verb>` down to the hypervisor agent (which must then be in
//! the master's subtree: place both agents under the same HO).

use std::sync::Arc;
use std::time::Duration;

use vespa_node::{Client, Security, Topology};
use vespa_proto::verbs::{LibvirtVerb, NodeVerb, Verb};

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
            let named = |n: &str| {
                self.topology
                    .node(n)
                    .ok_or_else(|| format!("no node named {n:?} in the topology"))
            };
            let via = match &self.security {
                Security::Keys(_) => {
                    let me = named(&self.me)?;
                    named(me.master.as_deref().unwrap_or(&me.name))?
                }
                _ => named(node)?,
            };
            let addr = self.topology.listen_addr(via);
            let mut client = Client::connect(
                addr,
                &self.security,
                &self.me,
                Some(&via.name),
                Duration::from_secs(5),
            )
            .await
            .map_err(|e| format!("reaching {} at {addr}: {e}", via.name))?;
            let (name, words) = if via.name == node {
                (verb.name().to_string(), verb.args())
            } else {
                let routed = NodeVerb::Call {
                    node: node.to_string(),
                    verb: verb.name().to_string(),
                    args: verb.args(),
                };
                (routed.name().to_string(), routed.args())
            };
            let args: Vec<&str> = words.iter().map(String::as_str).collect();
            let reply = client
                .call(&name, &args)
                .await
                .map_err(|e| format!("{node} {}: {e}", verb.name()))?;
            client.close().await;
            reply
        })
    }
}
