//! The VO's verbs for decisions by hand ([`VoVerb`]), so that an operator with a key of the
//! tree (`vespa-orchestrator decisions --operator NAME`, or `call VO policy_decisions`) does
//! what the HTTP API does with its token, over the same [`Decisions`]. Replies are the API's
//! JSON: a read as it is, a mutation as a `Result` whose error keeps its kind
//! ([`PolicyError`]), so the command line says the same thing whichever way it came.
//!
//! The mutations are `Command` verbs: the node lets only an operator (or its master chain,
//! which the VO has not) call them. The ledger records who asked by the key the handshake
//! proved ([`identity`]), as the API records a token's id.
//!
//! The ledger's reads come in pages (`policy_history`, `policy_show`), each under
//! [`super::PAGE_BYTES`], so a reply fits the tree's frame whatever the ledger holds; the
//! command line asks page after page and prints the whole as the API's answer would be.

use std::sync::OnceLock;

use vespa_node::{Agent, CallFrom, NodeHandle, VerbResult};
use vespa_proto::verbs::VoVerb;

use super::{Decisions, Placed};
use crate::control::PolicyError;
use crate::ledger::{DecisionId, Query};

/// The ledger's operator for a call through the tree: `key:` and the name of the key the
/// handshake proved (`key:operator:alice` for `keygen --operator alice`, `key:VO` for a tool
/// holding the VO's own key), `key:shared` for the tree's shared key (every holder may give
/// any name: none is recorded as an identity).
pub fn identity(from: &CallFrom) -> String {
    match from {
        CallFrom::Key(name) => format!("key:{}", crate::ledger::bounded(name, 100)),
        CallFrom::SharedKey => "key:shared".into(),
        CallFrom::Master => "key:master".into(),
        CallFrom::Local => "key:local".into(),
    }
}

/// The VO's decision verbs over `Decisions`.
pub struct VoPolicyVerbs {
    decisions: Decisions,
    /// The VO, once it runs (to ask the HOs of other processes).
    vo: OnceLock<NodeHandle>,
}

impl VoPolicyVerbs {
    /// Verbs over `decisions`.
    pub fn new(decisions: Decisions) -> VoPolicyVerbs {
        VoPolicyVerbs {
            decisions,
            vo: OnceLock::new(),
        }
    }

    fn vo(&self) -> Result<&NodeHandle, PolicyError> {
        self.vo
            .get()
            .ok_or_else(|| PolicyError::Unavailable("the VO is not running yet".into()))
    }
}

impl Agent for VoPolicyVerbs {
    type Verb = VoVerb;

    fn start(&self, node: NodeHandle) -> Vec<tokio::task::JoinHandle<()>> {
        let _ = self.vo.set(node);
        Vec::new()
    }

    async fn call(&self, verb: VoVerb) -> VerbResult {
        self.call_from(verb, CallFrom::Local).await
    }

    async fn call_from(&self, verb: VoVerb, from: CallFrom) -> VerbResult {
        let d = &self.decisions.clone().by(identity(&from));
        let json = match verb {
            VoVerb::PolicyHistory { since, before } => {
                let q = Query {
                    since: (since > 0).then_some(since),
                    ..Query::default()
                };
                let before = before.map(|b| DecisionId::try_from(b).unwrap_or(DecisionId::MAX));
                serde_json::to_string(&d.history_page(&q, before).await)
            }
            VoVerb::PolicyShow { id, from } => {
                let id = DecisionId::try_from(id).unwrap_or(DecisionId::MAX);
                serde_json::to_string(&d.show_page(id, from.unwrap_or(0)).await)
            }
            VoVerb::PolicyDecisions {} => match self.vo() {
                Ok(vo) => serde_json::to_string(&d.list(vo).await),
                Err(e) => return Err(e.to_string()),
            },
            VoVerb::PolicyBlock { entries } => {
                serde_json::to_string(&d.add(Placed::numbered(entries), None).await)
            }
            VoVerb::PolicyDelete { key } => {
                let r = match self.vo() {
                    Ok(vo) => d.delete(vo, &key).await,
                    Err(e) => Err(e),
                };
                serde_json::to_string(&r)
            }
            VoVerb::PolicyAllowlist {} => serde_json::to_string(&d.allowlist()),
            VoVerb::PolicyAllow { target, note } => {
                serde_json::to_string(&d.allow(&target, note.as_deref()))
            }
            VoVerb::PolicyDisallow { target } => serde_json::to_string(&d.disallow(&target)),
        };
        json.map_err(|e| e.to_string())
    }
}
