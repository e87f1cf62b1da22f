//! A policy that only keeps books: blocks by target, an allowlist with a configured entry,
//! every mutation logged. It stands for the VO's policy where the driver in main does not yet
//! do something (prefixes, the allowlist), so the API and the command line can be tested
//! against the contract of [`PolicyControl`] itself.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use vespa_orchestrator::control::{ActiveAction, AllowEntry, Operator, PolicyControl, PolicyError};

/// A block on this target fails as an unreachable actuator would.
pub const FAILING: &str = "10.6.6.6";

/// The books.
pub struct Ledger {
    blocks: Mutex<BTreeMap<String, ActiveAction>>,
    allow: Mutex<Vec<AllowEntry>>,
    log: Mutex<Vec<String>>,
    who: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("lock")
}

impl Default for Ledger {
    /// Empty, but for one configured protection: 192.0.2.0/24 (the tree's own network).
    fn default() -> Self {
        Ledger {
            blocks: Mutex::default(),
            allow: Mutex::new(vec![AllowEntry {
                target: "192.0.2.0/24".into(),
                origin: "config".into(),
                note: Some("the tree's own machines".into()),
            }]),
            log: Mutex::default(),
            who: Mutex::default(),
        }
    }
}

impl Ledger {
    /// Every mutation so far, `block 10.0.0.9 600`, `release 10.0.0.9`, `allow ...`.
    pub fn log(&self) -> Vec<String> {
        lock(&self.log).clone()
    }

    /// Who asked each block and release, in order (`block 10.0.0.1 by key:operator:alice`).
    pub fn who(&self) -> Vec<String> {
        lock(&self.who).clone()
    }

    /// The targets blocked now, sorted.
    pub fn blocked(&self) -> Vec<String> {
        lock(&self.blocks).keys().cloned().collect()
    }

    /// The TTL a target's block was placed with.
    pub fn ttl_of(&self, target: &str) -> Option<u64> {
        lock(&self.blocks)
            .get(target)
            .and_then(|a| a.expires_unix_s.map(|e| e - a.since_unix_s))
    }

    fn note(&self, s: String) {
        lock(&self.log).push(s);
    }
}

impl PolicyControl for Ledger {
    fn active_actions(&self) -> Vec<ActiveAction> {
        lock(&self.blocks).values().cloned().collect()
    }
    fn rules_text(&self) -> Option<String> {
        Some(String::new())
    }
    fn dry_run(&self) -> bool {
        false
    }
    fn set_dry_run(&self, _: bool) -> Result<(), PolicyError> {
        Ok(())
    }
    fn reload(&self, _: &str) -> Result<(), PolicyError> {
        Ok(())
    }
    fn release(&self, key: &str) -> Result<String, PolicyError> {
        match lock(&self.blocks).remove(key) {
            Some(a) => {
                self.note(format!("release {key}"));
                Ok(format!("{} release_hackers {key}", a.actuator))
            }
            None => Err(PolicyError::NotFound(format!(
                "nothing is held against {key}"
            ))),
        }
    }
    fn block_as(&self, target: &str, ttl_s: u64, who: &Operator) -> Result<String, PolicyError> {
        lock(&self.who).push(format!("block {target} by {}", who.identity));
        self.block(target, ttl_s)
    }
    fn release_as(&self, key: &str, who: &Operator) -> Result<String, PolicyError> {
        lock(&self.who).push(format!("release {key} by {}", who.identity));
        self.release(key)
    }
    fn block(&self, target: &str, ttl_s: u64) -> Result<String, PolicyError> {
        if target == FAILING {
            return Err(PolicyError::ActuatorFailed("controller unreachable".into()));
        }
        self.note(format!("block {target} {ttl_s}"));
        let now = 1_000_000;
        lock(&self.blocks).insert(
            target.to_string(),
            ActiveAction {
                key: target.to_string(),
                action: "block".into(),
                target: target.to_string(),
                actuator: "fw".into(),
                since_unix_s: now,
                expires_unix_s: Some(now + ttl_s),
                dry_run: false,
                at: None,
                decision: None,
                verification: None,
            },
        );
        Ok(target.to_string())
    }
    fn allowlist(&self) -> Vec<AllowEntry> {
        lock(&self.allow).clone()
    }
    fn allow(&self, target: &str, note: Option<&str>) -> Result<(), PolicyError> {
        self.note(format!("allow {target} {}", note.unwrap_or("-")));
        let mut allow = lock(&self.allow);
        allow.retain(|a| a.target != target || a.origin != "operator");
        allow.push(AllowEntry {
            target: target.to_string(),
            origin: "operator".into(),
            note: note.map(str::to_string),
        });
        Ok(())
    }
    fn disallow(&self, target: &str) -> Result<(), PolicyError> {
        let mut allow = lock(&self.allow);
        match allow.iter().position(|a| a.target == target) {
            Some(i) if allow[i].origin == "operator" => {
                allow.remove(i);
                drop(allow);
                self.note(format!("disallow {target}"));
                Ok(())
            }
            Some(i) => Err(PolicyError::NotFound(format!(
                "{target} is protected by {} and stays",
                allow[i].origin
            ))),
            None => Err(PolicyError::NotFound(format!("{target} is not protected"))),
        }
    }
}
