//! The driver as the HTTP API sees it ([`PolicyControl`]): what is in place, read from the
//! policy's state with its times turned into Unix seconds, and the operator's mutations, each
//! one step of the policy whose actions go to the driver task. Nothing here waits for an
//! actuator.

use vespa_policy::{Action, AllowOrigin, Effect, Input, Target, MAX_ALLOWED_BY_HAND};

use super::convert::{call_of, parse_key, parse_target, target_arg};
use super::record::Why;
use super::{load_rules, reflex_elsewhere, Event, PolicyDriver};
use crate::control::{ActiveAction, AllowEntry, Operator, PolicyControl, PolicyError};
use crate::ledger::Subject;

/// An operator's note is kept to this many characters.
const MAX_NOTE: usize = 200;

impl PolicyControl for PolicyDriver {
    fn active_actions(&self) -> Vec<ActiveAction> {
        let core = self.core();
        let mut out: Vec<ActiveAction> = core
            .state
            .effects()
            .map(|p| {
                let (action, target) = match p.effect {
                    Effect::Blocked(t) => ("block", target_arg(t)),
                    Effect::Throttled(t) => ("throttle", target_arg(t)),
                    Effect::LinkCut(vm) => ("cut_link", vm.clone()),
                    Effect::Quarantined(vm) => ("migrate", vm.clone()),
                    Effect::AvIsolated(vm, _) => ("av_isolate", vm.clone()),
                };
                // The ledger knows the decision's id and, for what was restored at start, its
                // true start (the policy's clock begins at the start).
                let recorded = self.ledger().and_then(|l| {
                    l.in_force(&Subject {
                        node: self.ledger_node(),
                        kind: action.to_string(),
                        target: target.clone(),
                    })
                });
                ActiveAction {
                    key: target.clone(),
                    action: action.to_string(),
                    target,
                    actuator: p.via.to_string(),
                    since_unix_s: recorded
                        .as_ref()
                        .map_or_else(|| self.unix_s(p.since), |r| r.placed_at),
                    decision: recorded.as_ref().map(|r| r.id),
                    verification: recorded.and_then(|r| r.verification),
                    expires_unix_s: p.expires_at.map(|x| self.unix_s(x)),
                    dry_run: p.dry,
                    at: self.inner.at.clone(),
                }
            })
            .collect();
        out.sort_by_key(|x| x.since_unix_s);
        out
    }

    fn rules_text(&self) -> Option<String> {
        Some(self.core().rules_text.clone())
    }

    fn dry_run(&self) -> bool {
        self.core().state.is_dry_run()
    }

    fn set_dry_run(&self, enabled: bool) -> Result<(), PolicyError> {
        self.step(Input::SetDryRun(enabled));
        self.sync_firewall();
        tracing::info!(enabled, "policy dry-run set");
        Ok(())
    }

    fn reload(&self, text: &str) -> Result<(), PolicyError> {
        let all = load_rules(text, self.inner.topology.as_deref())?;
        let rules = all.placed_at(self.at());
        self.rules_changed(&rules);
        let actions = self.step(Input::Reload(Box::new(rules)));
        {
            let mut core = self.core();
            core.rules_text = text.to_string();
            core.reflex_elsewhere = reflex_elsewhere(&all, self.at());
        }
        self.sync_firewall();
        self.run_soon(actions, Why::Reload, "policy reloaded")
    }

    fn release(&self, key: &str) -> Result<String, PolicyError> {
        self.release_as(key, &Operator::unknown())
    }

    fn release_as(&self, key: &str, who: &Operator) -> Result<String, PolicyError> {
        let k = parse_key(key);
        let actions = self.step(Input::ManualRelease { key: k.clone() });
        let done: Vec<String> = actions
            .iter()
            .filter_map(|a| call_of(a).map(|(node, call)| format!("{node} {call}")))
            .collect();
        if done.is_empty() && !actions.iter().any(|a| matches!(a, Action::DryRun(_))) {
            return Err(PolicyError::NotFound(format!(
                "nothing is held against {k}"
            )));
        }
        let n = actions.len();
        self.run_later(actions, Why::Operator(who.clone()))?;
        Ok(if done.is_empty() {
            format!("{n} dry-run record(s) released for {k}")
        } else {
            done.join("; ")
        })
    }

    fn allowlist(&self) -> Vec<AllowEntry> {
        self.core()
            .state
            .allowlist()
            .map(|a| AllowEntry {
                target: a.target.bare(),
                origin: a.origin.as_str().to_string(),
                note: a.note.map(str::to_string),
            })
            .collect()
    }

    fn allow(&self, target: &str, note: Option<&str>) -> Result<(), PolicyError> {
        let t = parse_target(target).map_err(PolicyError::Invalid)?;
        let by_hand = self
            .core()
            .state
            .allowlist()
            .filter(|a| a.origin == AllowOrigin::Operator)
            .map(|a| a.target)
            .collect::<Vec<Target>>();
        if by_hand.len() >= MAX_ALLOWED_BY_HAND && !by_hand.contains(&t) {
            return Err(PolicyError::Invalid(format!(
                "the allowlist holds {MAX_ALLOWED_BY_HAND} entries added by hand already: delete one first"
            )));
        }
        let note = note
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| n.chars().take(MAX_NOTE).collect());
        // Once running, the slot first: the releases of what the entry protects must reach
        // the driver task (before, nothing is in place).
        let slot = match self.inner.node.get() {
            Some(_) => Some(self.slot()?),
            None => None,
        };
        let actions = self.step(Input::Allow { target: t, note });
        if let Some(slot) = slot {
            slot.send(Event::Run(actions, Why::Allowlist));
        }
        self.sync_firewall();
        tracing::info!(node = %self.node_name(), target = %t.bare(), "allowlist: added by hand");
        Ok(())
    }

    fn disallow(&self, target: &str) -> Result<(), PolicyError> {
        let t = parse_target(target).map_err(PolicyError::Invalid)?;
        let origins: Vec<AllowOrigin> = self
            .core()
            .state
            .allowlist()
            .filter(|a| a.target == t)
            .map(|a| a.origin)
            .collect();
        if !origins.contains(&AllowOrigin::Operator) {
            let t = t.bare();
            return Err(PolicyError::NotFound(match origins.first() {
                Some(AllowOrigin::Config) => format!("{t} is in the policy file's [allowlist]: remove it there and reload"),
                Some(_) => format!("{t} is a machine or controller of the topology: it is protected as long as it is there"),
                None => format!("{t} is not on the allowlist"),
            }));
        }
        self.step(Input::Disallow { target: t });
        self.sync_firewall();
        tracing::info!(node = %self.node_name(), target = %t.bare(), "allowlist: removed by hand");
        Ok(())
    }

    fn block(&self, target: &str, ttl_s: u64) -> Result<String, PolicyError> {
        self.block_as(target, ttl_s, &Operator::unknown())
    }

    fn block_as(&self, target: &str, ttl_s: u64, who: &Operator) -> Result<String, PolicyError> {
        let t = parse_target(target).map_err(PolicyError::Invalid)?;
        if ttl_s == 0 || ttl_s > 30 * 86_400 {
            return Err(PolicyError::Invalid(format!(
                "ttl_s {ttl_s} out of range (1 s to 30 days)"
            )));
        }
        {
            let core = self.core();
            let rules = core.state.rules();
            if let Target::Mac(m) = t {
                if rules.own_macs.contains(&m) {
                    return Err(PolicyError::Invalid(format!(
                        "{m} is one of the VO side's own MACs (own_macs): never blocked"
                    )));
                }
            }
            if let Some(entry) = core.state.protected_by(&t) {
                return Err(PolicyError::Invalid(format!(
                    "{} is protected by the allowlist entry {}: never blocked",
                    t.bare(),
                    entry.bare()
                )));
            }
            if matches!(t, Target::Net(_)) && rules.actuators.firewall.is_none() {
                return Err(PolicyError::Invalid(format!(
                    "{} is a prefix: only a firewall agent blocks prefixes, and the policy names none ([actuators] firewall)",
                    t.bare()
                )));
            }
        }
        if self.inner.node.get().is_none() {
            return Err(PolicyError::Unavailable(format!(
                "{} is not running yet",
                self.node_name()
            )));
        }
        // The slot first: once the policy holds the block, its call must reach the driver task.
        let slot = self.slot()?;
        let actions = self.step(Input::ManualBlock {
            target: t,
            ttl_ns: ttl_s * vespa_policy::SECOND,
        });
        slot.send(Event::Run(actions, Why::Operator(who.clone())));
        Ok(target_arg(&t))
    }
}
