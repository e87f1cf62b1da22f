//! Verbs: what a node can be asked to do by a `Call`.
//!
//! The 2014 nodes ran whatever method of the node object had the name a peer sent. Here a
//! call's words are parsed once into a typed verb of `vespa_proto::verbs`: the runtime's own
//! ([`NodeVerb`]: `help`, `list_slaves`, `find_node`, `call`, `stats`, `get_alerts`,
//! `destroy`) first, else the verbs of the node's agent ([`crate::Agent::Verb`]); words that
//! parse as neither are an error reply, never a lookup of code by name. An agent's verb can
//! never shadow a built-in one: the built-ins are parsed first.
//!
//! The typed `ListSlaves` and `FindNode` messages of vespa-proto carry no call id; a node
//! answers them like `Call`s of `list_slaves`/`find_node` with a `Reply` of id 0. Callers that
//! need to match replies use `Call` (ids are per connection).

use std::future::Future;
use std::pin::Pin;

pub use vespa_proto::verbs::{NodeVerb, Verb, VerbDoc, VerbError};

/// A verb's outcome: the reply text (often JSON), or an error description.
pub type VerbResult = Result<String, String>;

/// A boxed verb future.
pub type VerbFuture = Pin<Box<dyn Future<Output = VerbResult> + Send + 'static>>;

/// Who made a call, as the node established it: what an agent may record of the caller
/// (the VO's decisions by hand name the key that asked). Only the key a handshake proved is
/// an identity; with the tree's shared key every holder can claim any name, so none is
/// given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFrom {
    /// This process, through its [`crate::NodeHandle`].
    Local,
    /// The node's master: the call entered the tree above and was checked there.
    Master,
    /// A connection whose handshake proved the key of `name` (per-node keys): an operator's
    /// is `operator:<name>`, the node's own key its own name, a child's its name.
    Key(String),
    /// A connection with the tree's shared key (whatever name it gave).
    SharedKey,
}

/// An agent's verbs with its kind erased: what call routing asks of the node's agent. Made
/// from an [`crate::Agent`] by [`crate::AgentRef`]; the words are parsed by the agent kind's
/// own parser.
pub(crate) trait AgentVerbs: Send + Sync {
    /// The agent's verbs, as `help` lists them.
    fn docs(&self) -> Vec<VerbDoc>;
    /// Parses `verb` and its words as one of the agent's verbs and starts it, for `from`.
    fn call(&self, verb: &str, args: &[String], from: CallFrom) -> Result<VerbFuture, VerbError>;
}

/// The `help` reply: one verb per line, the runtime's first, then the agent's.
pub(crate) fn help_text(node: &str, agent: &[VerbDoc]) -> String {
    let mut docs = NodeVerb::docs();
    docs.extend(agent.iter().cloned());
    format!("verbs of {node}:\n{}", vespa_proto::verbs::listing(&docs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_the_builtins_then_the_agent() {
        let agent = vec![VerbDoc {
            name: "echo",
            usage: "<text>".into(),
            help: "says it back".into(),
            permission: vespa_proto::verbs::Permission::Read,
        }];
        let help = help_text("n", &agent);
        assert!(help.starts_with("verbs of n:\n  help "), "{help}");
        assert!(
            help.contains("echo <text>") && help.contains("find_node <name>"),
            "{help}"
        );
        assert!(
            help.find("destroy").unwrap() < help.find("echo").unwrap(),
            "{help}"
        );
    }
}
