//! Verbs: what a node can be asked to do by a `Call`.
//!
//! The 2014 nodes ran whatever method of the node object had the name a peer sent. Here a
//! node answers only the built-in verbs of [`BUILTIN`] and the entries of its agent's
//! [`VerbTable`]; any other name is an error reply, never a lookup of code by name.
//!
//! The typed `ListSlaves` and `FindNode` messages of vespa-proto carry no call id; a node
//! answers them like `Call`s of `list_slaves`/`find_node` with a `Reply` of id 0. Callers that
//! need to match replies use `Call` (ids are per connection).
//!
//! Agents plug in through [`crate::AgentVerbs`], whose [`VerbTable`] is a table of named
//! handlers (each takes the call's arguments and answers text, JSON text for structured
//! replies, or an error message). This module names the verbs and holds the tables; the
//! runtime's call routing answers them (the built-ins itself, the rest from the agent's table).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

/// A verb's outcome: the reply text (often JSON), or an error description.
pub type VerbResult = Result<String, String>;

/// A boxed verb future.
pub type VerbFuture = Pin<Box<dyn Future<Output = VerbResult> + Send + 'static>>;

type Handler = Arc<dyn Fn(Vec<String>) -> VerbFuture + Send + Sync>;

/// How `help` describes a verb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerbInfo {
    /// The verb.
    pub name: String,
    /// Its arguments, e.g. `[iface]` or `<ip>`.
    pub usage: String,
    /// One sentence.
    pub help: String,
}

/// The verbs every node answers (the 2014 `Node` methods, plus the runtime's own).
pub const BUILTIN: [(&str, &str, &str); 7] = [
    ("help", "", "list this node's verbs"),
    ("list_slaves", "", "this node's registered children (JSON)"),
    (
        "find_node",
        "<name>",
        "the path from this node down to <name> (JSON list of names)",
    ),
    (
        "call",
        "<node> <verb> [args...]",
        "run <verb> on <node> in this node's subtree, routed down the tree",
    ),
    (
        "stats",
        "",
        "delivery counters, queue state and per-origin sequence numbers (JSON)",
    ),
    (
        "get_alerts",
        "[from_index]",
        "alerts processed here, oldest first (JSON; the VO keeps them)",
    ),
    (
        "destroy",
        "",
        "orderly shutdown of this node and its whole subtree",
    ),
];

/// True when `name` is one of the runtime's own verbs ([`BUILTIN`]).
pub fn is_builtin(name: &str) -> bool {
    BUILTIN.iter().any(|(b, _, _)| *b == name)
}

/// A fixed table of named handlers.
#[derive(Clone, Default)]
pub struct VerbTable {
    verbs: BTreeMap<String, (VerbInfo, Handler)>,
}

impl VerbTable {
    /// An empty table.
    pub fn new() -> VerbTable {
        VerbTable::default()
    }

    /// Adds an asynchronous verb. Names of built-in verbs cannot be taken over.
    pub fn add<F, Fut>(&mut self, name: &str, usage: &str, help: &str, f: F) -> &mut Self
    where
        F: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = VerbResult> + Send + 'static,
    {
        if is_builtin(name) {
            tracing::warn!(
                verb = name,
                "an agent verb cannot replace a built-in verb; ignored"
            );
            return self;
        }
        let info = VerbInfo {
            name: name.into(),
            usage: usage.into(),
            help: help.into(),
        };
        let handler: Handler = Arc::new(move |args| Box::pin(f(args)));
        self.verbs.insert(name.to_string(), (info, handler));
        self
    }

    /// Adds a verb that answers at once (quick, non-blocking work only; anything that may
    /// block — a file, a daemon — belongs in [`add`](Self::add) with `spawn_blocking`).
    pub fn add_sync<F>(&mut self, name: &str, usage: &str, help: &str, f: F) -> &mut Self
    where
        F: Fn(Vec<String>) -> VerbResult + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.add(name, usage, help, move |args| {
            let f = f.clone();
            async move { f(args) }
        })
    }

    /// Starts the verb `name`, if the table has it.
    pub fn call(&self, name: &str, args: Vec<String>) -> Option<VerbFuture> {
        self.verbs.get(name).map(|(_, h)| h(args))
    }

    /// The verbs, by name.
    pub fn infos(&self) -> impl Iterator<Item = &VerbInfo> {
        self.verbs.values().map(|(i, _)| i)
    }

    /// True when the table has no verb.
    pub fn is_empty(&self) -> bool {
        self.verbs.is_empty()
    }
}

/// The `help` reply: one verb per line, built-ins first.
pub(crate) fn help_text(node: &str, table: &VerbTable) -> String {
    let mut out = format!("verbs of {node}:\n");
    let builtin = BUILTIN
        .iter()
        .map(|(n, u, h)| (n.to_string(), u.to_string(), h.to_string()));
    let agent = table
        .infos()
        .map(|i| (i.name.clone(), i.usage.clone(), i.help.clone()));
    for (name, usage, help) in builtin.chain(agent) {
        let head = if usage.is_empty() {
            name
        } else {
            format!("{name} {usage}")
        };
        out.push_str(&format!("  {head:<34} {help}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn table_dispatches_known_verbs_only() {
        let mut t = VerbTable::new();
        t.add_sync("echo", "<text>", "says it back", |args| Ok(args.join(" ")));
        t.add_sync("help", "", "impostor", |_| Ok("pwned".into()));
        assert_eq!(
            t.call("echo", vec!["a".into(), "b".into()])
                .expect("known")
                .await,
            Ok("a b".into())
        );
        assert!(t.call("rm_rf", vec![]).is_none());
        assert!(
            t.call("help", vec![]).is_none(),
            "built-in names cannot be taken over"
        );
        let help = help_text("n", &t);
        assert!(
            help.contains("echo <text>") && help.contains("find_node <name>"),
            "{help}"
        );
    }
}
