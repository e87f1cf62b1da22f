//! Fast-path drivers of HOs that another process runs, reached through the tree.
//!
//! Every HO with a driver answers these verbs for it: `policy_actions`, `policy_release
//! <key>`, `policy_dry_run <on|off>`, and `policy_protect <target> [note]` / `policy_unprotect
//! <target>` for the operator's allowlist. The VO's API calls them down the tree for the HOs
//! its own process does not run, so one API lists and releases every reaction, and protects a
//! source from every rule, wherever it runs. Replies are JSON: the actions, or a `Result` of the driver's answer, so a refusal
//! keeps its kind (and its HTTP status) across the hop.

use std::sync::Arc;
use std::time::Duration;

use vespa_node::{Agent, NodeHandle, VerbResult};
use vespa_proto::verbs::{HoVerb, OnOff};

use super::PolicyDriver;
use crate::control::{ActiveAction, PolicyControl, PolicyError};

/// How long the VO waits for a remote HO's answer.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(5);

/// An HO's driver, as verbs of the HO's node.
pub struct HoPolicyVerbs(pub PolicyDriver);

impl Agent for HoPolicyVerbs {
    type Verb = HoVerb;

    async fn call(&self, verb: HoVerb) -> VerbResult {
        let json = match verb {
            HoVerb::PolicyActions {} => serde_json::to_string(&self.0.active_actions()),
            HoVerb::PolicyRelease { key } => serde_json::to_string(&self.0.release(&key)),
            HoVerb::PolicyDryRun { enabled } => {
                serde_json::to_string(&self.0.set_dry_run(enabled.0))
            }
            HoVerb::PolicyAllow { target, note } => {
                let note = (!note.is_empty()).then(|| note.join(" "));
                serde_json::to_string(&self.0.allow(&target, note.as_deref()))
            }
            HoVerb::PolicyDisallow { target } => serde_json::to_string(&self.0.disallow(&target)),
        };
        json.map_err(|e| e.to_string())
    }
}

/// The HOs that run rules of this policy in other processes.
#[derive(Debug, Clone, Default)]
pub struct RemoteDrivers {
    hos: Arc<Vec<String>>,
}

impl RemoteDrivers {
    /// The HOs named, reached through the VO.
    pub fn new(hos: Vec<String>) -> RemoteDrivers {
        RemoteDrivers { hos: Arc::new(hos) }
    }

    /// What each HO holds, and a sentence per HO that did not answer.
    pub async fn actions(&self, vo: &NodeHandle) -> (Vec<ActiveAction>, Vec<String>) {
        let (mut actions, mut unreachable) = (Vec::new(), Vec::new());
        for (ho, reply) in self.ask(vo, HoVerb::PolicyActions {}).await {
            match reply.and_then(|r| {
                serde_json::from_str::<Vec<ActiveAction>>(&r).map_err(|e| format!("bad reply: {e}"))
            }) {
                Ok(a) => actions.extend(a),
                Err(e) => unreachable.push(format!("{ho}: {e}")),
            }
        }
        (actions, unreachable)
    }

    /// Each HO's release of `key`; an HO that does not answer is `Unavailable`.
    pub async fn release(&self, vo: &NodeHandle, key: &str) -> Vec<Result<String, PolicyError>> {
        let key = key.to_string();
        self.ask(vo, HoVerb::PolicyRelease { key })
            .await
            .into_iter()
            .map(|(ho, r)| decode(&ho, r))
            .collect()
    }

    /// Switches every HO's dry-run mode; the first refusal, naming its HO.
    pub async fn set_dry_run(&self, vo: &NodeHandle, enabled: bool) -> Result<(), PolicyError> {
        let enabled = OnOff(enabled);
        self.ask(vo, HoVerb::PolicyDryRun { enabled })
            .await
            .into_iter()
            .try_for_each(|(ho, r)| decode(&ho, r))
    }

    /// Protects `target` from every HO's rules; the first refusal, naming its HO.
    pub async fn allow(
        &self,
        vo: &NodeHandle,
        target: &str,
        note: Option<&str>,
    ) -> Result<(), PolicyError> {
        let verb = HoVerb::PolicyAllow {
            target: target.to_string(),
            note: note.map(|n| vec![n.to_string()]).unwrap_or_default(),
        };
        self.ask(vo, verb)
            .await
            .into_iter()
            .try_for_each(|(ho, r)| decode(&ho, r))
    }

    /// Removes the operator's protection of `target` from every HO; an HO that does not hold
    /// it (it restarted since) is no refusal.
    pub async fn disallow(&self, vo: &NodeHandle, target: &str) -> Result<(), PolicyError> {
        let verb = HoVerb::PolicyDisallow {
            target: target.to_string(),
        };
        self.ask(vo, verb)
            .await
            .into_iter()
            .try_for_each(|(ho, r)| match decode::<()>(&ho, r) {
                Err(PolicyError::NotFound(_)) => Ok(()),
                other => other,
            })
    }

    /// Calls `verb` on every HO at once, through the VO.
    async fn ask(&self, vo: &NodeHandle, verb: HoVerb) -> Vec<(String, Result<String, String>)> {
        let calls = self.hos.iter().map(|ho| {
            let (vo, ho, verb) = (vo.clone(), ho.clone(), verb.clone());
            async move {
                let r = match tokio::time::timeout(REMOTE_TIMEOUT, vo.call(&ho, verb)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {REMOTE_TIMEOUT:?}")),
                };
                (ho, r)
            }
        });
        futures_util::future::join_all(calls).await
    }
}

/// A remote driver's JSON `Result`, or `Unavailable` naming the HO when there is none.
fn decode<T: serde::de::DeserializeOwned>(
    ho: &str,
    reply: Result<String, String>,
) -> Result<T, PolicyError> {
    let unavailable = |e: String| {
        PolicyError::Unavailable(format!("{ho} (fast-path rules in another process): {e}"))
    };
    let text = reply.map_err(unavailable)?;
    serde_json::from_str::<Result<T, PolicyError>>(&text)
        .map_err(|e| unavailable(format!("bad reply: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_answer_keeps_its_kind_and_a_missing_one_names_the_ho() {
        let ok = serde_json::to_string(&Ok::<String, PolicyError>(
            "fl release_hackers 10.0.0.9".into(),
        ))
        .unwrap();
        assert_eq!(
            decode::<String>("HO_PH", Ok(ok)),
            Ok("fl release_hackers 10.0.0.9".into())
        );
        let nf = serde_json::to_string(&Err::<String, PolicyError>(PolicyError::NotFound(
            "nothing held".into(),
        )))
        .unwrap();
        assert_eq!(
            decode::<String>("HO_PH", Ok(nf)),
            Err(PolicyError::NotFound("nothing held".into()))
        );
        match decode::<String>("HO_PH", Err("no answer within 5s".into())) {
            Err(PolicyError::Unavailable(m)) => assert!(
                m.starts_with("HO_PH (fast-path rules in another process): no answer"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(decode::<String>("HO_PH", Ok("<html>".into())), Err(PolicyError::Unavailable(m)) if m.contains("bad reply"))
        );
    }

    #[test]
    fn releases_merge_what_was_done_before_refusals() {
        let nf = || Err(PolicyError::NotFound("no".into()));
        assert_eq!(
            crate::policy_driver::merge_releases([nf(), Ok("a".into()), Ok("b".into())]),
            Ok("a; b".into())
        );
        assert_eq!(
            crate::policy_driver::merge_releases([
                nf(),
                Err(PolicyError::Unavailable("down".into()))
            ]),
            Err(PolicyError::Unavailable("down".into()))
        );
        assert_eq!(crate::policy_driver::merge_releases([nf(), nf()]), nf());
    }
}
