//! The driver and its decision ledger ([`crate::ledger`]): every effect an action places or
//! undoes is written before the call leaves, the actuator's answer after; at start the
//! effects the ledger holds in force for this driver's node are put back into the policy
//! (`Input::Restore`), so a restarted orchestrator lists them, and a release sends the undo
//! to the agent that placed them.
//!
//! The driver's task only queues rows (no I/O there); the call's own task waits for its row
//! to be committed, then sends. A ledger that cannot write is logged and counted, and the
//! call is sent anyway: protecting the host comes before recording it.

use sha2::{Digest, Sha256};
use vespa_policy::{step, Action, Effect, Input, Rate, Restored, Target, Verification, SECOND};
use vespa_proto::AlertBody;

use super::convert::{parse_target, target_arg};
use super::PolicyDriver;
use crate::control::Operator;
use crate::ledger::{
    bounded, Cause, Decider, Decision, DecisionId, Ledger, NewDecision, Subject, Written,
};

/// Why the driver is carrying out a batch of actions: the input the policy stepped on.
#[derive(Debug, Clone)]
pub(crate) enum Why {
    /// An alert, and whether it was the kernel reflex's block.
    Alert { cause: Cause, reflex: bool },
    /// Time passed: calm periods, TTLs.
    Tick,
    /// An operator's block or release.
    Operator(Operator),
    /// The allowlist grew (by hand, or what the agents protect).
    Allowlist,
    /// The rules were reloaded.
    Reload,
    /// An actuator answered.
    Result,
}

/// What execute recorded for one action: the call's task waits on `written`, then reports
/// the reply against `id`.
pub(crate) struct Recorded {
    pub(crate) id: DecisionId,
    pub(crate) subject: Subject,
    pub(crate) undo: bool,
    pub(crate) written: Written,
    pub(crate) ledger: Ledger,
}

/// The ledger's kind and target of an action's effect, and whether the action undoes it.
fn kind_target(action: &Action) -> Option<(&'static str, String, bool)> {
    Some(match action {
        Action::Block { target, .. } => ("block", target_arg(target), false),
        Action::Release { target, .. } => ("block", target_arg(target), true),
        Action::Throttle { target, .. } => ("throttle", target_arg(target), false),
        Action::Unthrottle { target, .. } => ("throttle", target_arg(target), true),
        Action::CutLink { vm, .. } => ("cut_link", vm.clone(), false),
        Action::ConnectLink { vm, .. } => ("cut_link", vm.clone(), true),
        Action::Migrate { vm, .. } => ("migrate", vm.clone(), false),
        Action::AvIsolate { vm, .. } => ("av_isolate", vm.clone(), false),
        Action::AvConnect { vm, .. } => ("av_isolate", vm.clone(), true),
        Action::Alert { .. } | Action::DryRun(_) | Action::Verified { .. } => return None,
    })
}

/// The ledger's kind and target of an effect.
fn effect_subject(effect: &Effect) -> (&'static str, String) {
    match effect {
        Effect::Blocked(t) => ("block", target_arg(t)),
        Effect::Throttled(t) => ("throttle", target_arg(t)),
        Effect::LinkCut(vm) => ("cut_link", vm.clone()),
        Effect::Quarantined(vm) => ("migrate", vm.clone()),
        Effect::AvIsolated(vm, _) => ("av_isolate", vm.clone()),
    }
}

/// The alert a decision came from, briefly (the ledger bounds it again).
pub(crate) fn cause_of(alert: &vespa_proto::Alert) -> Why {
    let summary = match &alert.body {
        AlertBody::ConnThreshold {
            addr,
            established,
            threshold,
        } => format!("{addr}: {established} established connections (threshold {threshold})"),
        AlertBody::SynThreshold {
            addr,
            syns_in_second,
            threshold,
        } => format!("{addr}: {syns_in_second} SYNs in a second (threshold {threshold})"),
        AlertBody::ReflexBlock {
            target,
            cause,
            value,
            ..
        } => format!(
            "kernel reflex blocked {}: {} {value}",
            bounded(target, 64),
            bounded(cause, 16)
        ),
        AlertBody::Infected { .. } => "infected file found".to_string(),
        AlertBody::Connections { per_remote, .. } => {
            format!("connections table of {} remotes", per_remote.len())
        }
        AlertBody::Bandwidth { .. } => "interface bytes".to_string(),
        _ => "alert".to_string(),
    };
    let summary = match &alert.body {
        AlertBody::Infected { vm, signature, .. } => format!(
            "infected file in vm {} ({})",
            bounded(vm, 64),
            bounded(signature, 64)
        ),
        _ => summary,
    };
    Why::Alert {
        cause: Cause {
            origin: bounded(&alert.origin, crate::ledger::MAX_NAME),
            seq: alert.seq,
            kernel_ns: alert.timestamp_ns,
            summary,
        },
        reflex: matches!(alert.body, AlertBody::ReflexBlock { .. }),
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl PolicyDriver {
    /// This driver's ledger, if it has one.
    pub(crate) fn ledger(&self) -> Option<&Ledger> {
        self.inner.ledger.get()
    }

    /// The node this driver decides for, as the ledger names it.
    pub(crate) fn ledger_node(&self) -> String {
        self.inner
            .ledger_node
            .get()
            .cloned()
            .unwrap_or_else(|| self.node_name().to_string())
    }

    /// Records what the policy's verification by counters found about `effect` with the
    /// decision in force for it (the column and a `verified` line of its story).
    pub(crate) fn record_verification(&self, effect: &Effect, outcome: &Verification) {
        let Some(ledger) = self.ledger() else {
            return;
        };
        let (kind, target) = effect_subject(effect);
        let subject = Subject {
            node: self.ledger_node(),
            kind: kind.to_string(),
            target,
        };
        if ledger
            .verified(&subject, outcome.outcome(), &outcome.detail())
            .is_none()
        {
            tracing::debug!(
                ?effect,
                outcome = outcome.outcome(),
                "verification of a decision the ledger does not hold in force: not recorded"
            );
        }
    }

    /// Records `action` (an actuator action, or a dry-run record of one) before it is sent:
    /// a placement opens or renews a decision, an undo ends it with the reason `why` gives.
    pub(crate) fn record(&self, action: &Action, why: &Why) -> Option<Recorded> {
        let ledger = self.ledger()?.clone();
        let (dry, action) = match action {
            Action::DryRun(inner) => (true, inner.as_ref()),
            a => (false, a),
        };
        let (kind, target, undo) = kind_target(action)?;
        let subject = Subject {
            node: self.ledger_node(),
            kind: kind.to_string(),
            target,
        };
        if undo {
            let reason = self.end_reason(&ledger, &subject, why);
            let (id, written) = ledger.end(&subject, &reason)?;
            return Some(Recorded {
                id,
                subject,
                undo,
                written,
                ledger,
            });
        }
        let now_s = super::unix_ns() / SECOND;
        let (ttl_s, rate) = match action {
            Action::Block { ttl_ns, .. } => ((*ttl_ns > 0).then_some(*ttl_ns / SECOND), None),
            Action::Throttle { ttl_ns, rate, .. } => (
                (*ttl_ns > 0).then_some(*ttl_ns / SECOND),
                Some(rate.to_string()),
            ),
            _ => (None, None),
        };
        let firewall = match action {
            Action::Block { firewall, .. } => *firewall,
            Action::Throttle { .. } => true,
            _ => false,
        };
        let decider = self.decider(action, why);
        let cause = match why {
            Why::Alert { cause, .. } => Some(cause.clone()),
            _ => None,
        };
        let (id, written) = ledger.place(NewDecision {
            node: subject.node.clone(),
            kind: subject.kind.clone(),
            target: subject.target.clone(),
            actuator: action.via().unwrap_or_default().to_string(),
            actuator_firewall: firewall,
            decider,
            cause,
            placed_at: now_s,
            ttl_s,
            expires_at: ttl_s.map(|t| now_s + t),
            rate,
            dry_run: dry,
        });
        Some(Recorded {
            id,
            subject,
            undo,
            written,
            ledger,
        })
    }

    /// Who decided `action`: the operator who asked, the reflex, the rules behind its effect,
    /// or an infection.
    fn decider(&self, action: &Action, why: &Why) -> Decider {
        if let Why::Operator(op) = why {
            return Decider::Operator {
                identity: op.identity.clone(),
                reason: op.reason.clone(),
            };
        }
        let core = self.core();
        let rules = action
            .effect()
            .map(|e| core.state.rules_behind(&e).join(", "))
            .unwrap_or_default();
        if rules.is_empty() {
            let holders = action
                .effect()
                .map(|e| core.state.holders(&e).join(", "))
                .unwrap_or_default();
            if holders.contains("operator") {
                return Decider::Operator {
                    identity: "operator".into(),
                    reason: None,
                };
            }
            return Decider::Infection;
        }
        let policy_sha256 = sha256_hex(&core.rules_text);
        match why {
            Why::Alert { reflex: true, .. } => Decider::Reflex {
                rules,
                policy_sha256,
            },
            _ => Decider::Rule {
                rules,
                policy_sha256,
            },
        }
    }

    fn end_reason(&self, ledger: &Ledger, subject: &Subject, why: &Why) -> String {
        match why {
            Why::Operator(op) => format!("released by operator {}", op.identity),
            Why::Tick => match ledger.in_force(subject) {
                Some(f) if f.decided_by == "operator" => "the operator's TTL ran out".into(),
                _ => "calm: the rule released it".into(),
            },
            Why::Allowlist => "protected by the allowlist".into(),
            Why::Reload => "its rule is gone (policy reloaded)".into(),
            Why::Alert { cause, .. } => format!(
                "released by the policy on an alert from {} (seq {})",
                cause.origin, cause.seq
            ),
            Why::Result => "released by the policy after an actuator's answer".into(),
        }
    }

    /// Whether this driver's node ever placed `effect`, in force or ended, as its ledger
    /// says: reconciliation's "did VESPA cut this link?". `false` without a ledger, or when
    /// it cannot be read (then nothing is undone).
    pub(super) async fn ledger_placed(&self, effect: &Effect) -> bool {
        let (Some(ledger), Some(node)) = (self.inner.ledger.get(), self.inner.ledger_node.get())
        else {
            return false;
        };
        let (kind, target) = effect_subject(effect);
        let about = Subject {
            node: node.clone(),
            kind: kind.into(),
            target,
        };
        match ledger.last(&about).await {
            Ok(found) => found.is_some(),
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "decision ledger unreadable: reconciliation leaves the entry");
                false
            }
        }
    }

    /// Whether this driver's node placed `effect` and, as its ledger says, may still hold it:
    /// the latest decision about it has no expiry or one still to come. Reconciliation's "is
    /// this unwanted throttle VESPA's?": one whose time is over would have been ended by the
    /// kernel, so a throttle still held is someone else's. `false` without a ledger, or when
    /// it cannot be read (then nothing is undone).
    pub(super) async fn ledger_may_hold(&self, effect: &Effect) -> bool {
        let (Some(ledger), Some(node)) = (self.inner.ledger.get(), self.inner.ledger_node.get())
        else {
            return false;
        };
        let (kind, target) = effect_subject(effect);
        let about = Subject {
            node: node.clone(),
            kind: kind.into(),
            target,
        };
        let now_s = super::unix_ns() / SECOND;
        match ledger.last(&about).await {
            Ok(found) => found.is_some_and(|d| d.expires_at.is_none_or(|at| at > now_s)),
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "decision ledger unreadable: reconciliation leaves the entry");
                false
            }
        }
    }

    /// Attaches `ledger` to this driver, deciding as `node`, and puts back into the policy
    /// what the ledger holds in force for it: before [`PolicyDriver::start`]. What expired
    /// while the orchestrator was down is ended in the ledger (`expired while down`), not
    /// restored. Returns how many effects were restored.
    pub async fn attach_ledger(&self, ledger: Ledger, node: &str) -> anyhow::Result<usize> {
        let rows = ledger.to_restore(node).await?;
        let _ = self.inner.ledger_node.set(node.to_string());
        let _ = self.inner.ledger.set(ledger.clone());
        let now_s = super::unix_ns() / SECOND;
        let mut restored = 0;
        for d in rows {
            let subject = Subject {
                node: d.node.clone(),
                kind: d.kind.clone(),
                target: d.target.clone(),
            };
            if d.expires_at.is_some_and(|t| t <= now_s) {
                let _ = ledger.end(&subject, "expired while down");
                continue;
            }
            let Some(r) = self.restored(&d) else {
                tracing::warn!(id = d.id, kind = %d.kind, target = %d.target, "decision ledger: a decision in force cannot be restored (unknown kind or target); left open");
                continue;
            };
            step(
                &mut self.core().state,
                Input::Restore(Box::new(r)),
                self.now(),
            );
            ledger.note(
                d.id,
                &subject,
                "restored",
                "put back into the policy at the orchestrator's start",
            );
            restored += 1;
        }
        ledger
            .flush()
            .await
            .map_err(|e| anyhow::anyhow!("decision ledger {}: {e}", ledger.location()))?;
        if restored > 0 {
            tracing::info!(
                node,
                restored,
                location = ledger.location(),
                "decisions in force restored from the ledger"
            );
        }
        Ok(restored)
    }

    /// A ledger row as the policy's `Restore` input, its Unix times on the driver's clock.
    fn restored(&self, d: &Decision) -> Option<Restored> {
        let target = || parse_target(&d.target).ok();
        let effect = match d.kind.as_str() {
            "block" => Effect::Blocked(target()?),
            "throttle" => Effect::Throttled(target()?),
            "cut_link" => Effect::LinkCut(d.target.clone()),
            "migrate" => Effect::Quarantined(d.target.clone()),
            "av_isolate" => Effect::AvIsolated(d.target.clone(), d.actuator.clone()),
            _ => return None,
        };
        if let (Effect::Blocked(Target::Net(_)), false) = (&effect, d.actuator_firewall) {
            return None;
        }
        let started = self.inner.started_unix_ns;
        let on_clock = |unix_s: u64| (unix_s * SECOND).saturating_sub(started);
        let holders = match d.decided_by.as_str() {
            "operator" => vec!["operator".to_string()],
            "infection" => vec!["infection".to_string()],
            _ => d
                .rules
                .as_deref()
                .unwrap_or_default()
                .split(", ")
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect(),
        };
        Some(Restored {
            effect,
            via: d.actuator.clone(),
            firewall: d.actuator_firewall,
            holders,
            since: on_clock(d.placed_at),
            expires_at: d.expires_at.map(on_clock),
            ttl_ns: d.ttl_s.map(|t| t * SECOND),
            rate: d.rate.as_deref().and_then(|r| r.parse::<Rate>().ok()),
            dry: d.dry_run,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::PolicyControl;
    use crate::ledger::Query;

    fn placed(target: &str, decider: Decider, placed_at: u64, ttl: Option<u64>) -> NewDecision {
        NewDecision {
            node: "VO".into(),
            kind: "block".into(),
            target: target.into(),
            actuator: "Agent_FW".into(),
            actuator_firewall: true,
            decider,
            cause: None,
            placed_at,
            ttl_s: ttl,
            expires_at: ttl.map(|t| placed_at + t),
            rate: None,
            dry_run: false,
        }
    }

    #[tokio::test]
    async fn what_the_ledger_holds_in_force_is_restored_and_what_expired_is_ended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(&dir.path().join("l.db")).await.expect("open");
        let now = super::super::unix_ns() / SECOND;
        let rule = Decider::Rule {
            rules: "syn-flood".into(),
            policy_sha256: "0".repeat(64),
        };
        let op = Decider::Operator {
            identity: "token:abc".into(),
            reason: None,
        };
        let (live, _) = ledger.place(placed("192.0.2.1", rule.clone(), now - 100, Some(600)));
        let (manual, _) = ledger.place(placed("192.0.2.2", op, now - 50, Some(3600)));
        let (gone, _) = ledger.place(placed("192.0.2.3", rule, now - 700, Some(600)));
        let (cut, _) = ledger.place(NewDecision {
            kind: "cut_link".into(),
            target: "vm-1".into(),
            actuator: "Agent_Libvirt".into(),
            actuator_firewall: false,
            ..placed("vm-1", Decider::Infection, now - 10, None)
        });
        ledger.flush().await.expect("flush");

        let d = PolicyDriver::new(vespa_policy::DEFAULT_RULES, false, None, None, None)
            .expect("driver");
        let n = d.attach_ledger(ledger.clone(), "VO").await.expect("attach");
        assert_eq!(n, 3);
        let listed = d.active_actions();
        let by_target = |t: &str| listed.iter().find(|a| a.target == t).cloned();
        let l = by_target("192.0.2.1").expect("the rule's block");
        assert_eq!((l.decision, l.since_unix_s), (Some(live), now - 100));
        assert_eq!(l.actuator, "Agent_FW");
        assert_eq!(
            l.expires_unix_s.map(|e| e.abs_diff(now + 500) <= 1),
            Some(true)
        );
        assert_eq!(
            by_target("192.0.2.2").and_then(|a| a.decision),
            Some(manual)
        );
        assert_eq!(by_target("vm-1").and_then(|a| a.decision), Some(cut));
        assert!(by_target("192.0.2.3").is_none(), "expired while down");
        let h = ledger.list(&Query::default()).await.expect("list");
        let ended = h.iter().find(|x| x.id == gone).expect("row");
        assert_eq!(ended.end_reason.as_deref(), Some("expired while down"));
        let story = ledger.show(live).await.expect("show").expect("found");
        assert_eq!(
            story.events.last().map(|e| e.kind.as_str()),
            Some("restored")
        );
        assert_eq!(
            d.core().state.holders(&Effect::Blocked(Target::Ip(
                "192.0.2.2".parse().expect("ip")
            ))),
            ["operator"]
        );
    }
}
