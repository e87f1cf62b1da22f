//! The driver as the HTTP API sees it ([`PolicyControl`]): what is in place, read from the
//! policy's state with its times turned into Unix seconds, and the operator's mutations, each
//! one step of the policy whose actions go to the driver task. Nothing here waits for an
//! actuator.

use vespa_policy::{Action, Effect, Input, Target};

use super::convert::{call_of, parse_key, parse_target, target_arg};
use super::{load_rules, Event, PolicyDriver};
use crate::control::{ActiveAction, PolicyControl, PolicyError};

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
                ActiveAction {
                    key: target.clone(),
                    action: action.to_string(),
                    target,
                    actuator: p.via.to_string(),
                    since_unix_s: self.unix_s(p.since),
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
        tracing::info!(enabled, "policy dry-run set");
        Ok(())
    }

    fn reload(&self, text: &str) -> Result<(), PolicyError> {
        let rules = load_rules(text, self.inner.topology.as_deref())?.placed_at(self.at());
        self.rules_changed(&rules);
        let actions = self.step(Input::Reload(Box::new(rules)));
        self.core().rules_text = text.to_string();
        self.run_later(actions).or_else(|e| match e {
            // Reloaded all the same; the actions are the policy's to retry on its next tick.
            PolicyError::Unavailable(m) => {
                tracing::warn!(node = %self.node_name(), error = %m, "policy reloaded; its immediate actions could not be queued");
                Ok(())
            }
            e => Err(e),
        })
    }

    fn release(&self, key: &str) -> Result<String, PolicyError> {
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
        self.run_later(actions)?;
        Ok(if done.is_empty() {
            format!("{n} dry-run record(s) released for {k}")
        } else {
            done.join("; ")
        })
    }

    fn block(&self, target: &str, ttl_s: u64) -> Result<String, PolicyError> {
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
        let slot = self.inner.tx.try_reserve().map_err(|_| {
            PolicyError::Unavailable("the policy driver is busy or stopped; try again".into())
        })?;
        let actions = self.step(Input::ManualBlock {
            target: t,
            ttl_ns: ttl_s * vespa_policy::SECOND,
        });
        slot.send(Event::Run(actions));
        Ok(target_arg(&t))
    }
}
