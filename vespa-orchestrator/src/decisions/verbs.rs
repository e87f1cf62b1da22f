//! The VO's verbs for decisions by hand ([`VoVerb`]), so that an operator with a key of the
//! tree (`vespa-orchestrator decisions --operator NAME`, or `call VO policy_decisions`) does
//! what the HTTP API does with its token, over the same [`Decisions`]. Replies are the API's
//! JSON: a read as it is, a mutation as a `Result` whose error keeps its kind
//! ([`PolicyError`]), so the command line says the same thing whichever way it came.
//!
//! The mutations are `Command` verbs: the node lets only an operator (or its master chain,
//! which the VO has not) call them.

use std::sync::OnceLock;

use vespa_node::{Agent, NodeHandle, VerbResult};
use vespa_proto::verbs::VoVerb;

use super::{Decisions, Placed};
use crate::control::PolicyError;

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
        let d = &self.decisions;
        let json = match verb {
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
