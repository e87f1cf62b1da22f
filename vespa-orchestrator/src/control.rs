//! What the API asks of the VO's policy, as a trait: the API ([`crate::http`]) calls it and
//! the policy driver ([`crate::policy_driver`]) implements it, so the driver never depends on
//! the API. The API must not wait for the policy, nor know how its actions are carried out.
//!
//! Until a policy is plugged in, [`NoPolicy`] answers every read with "nothing" and every
//! mutation with [`PolicyError::Unavailable`] (HTTP 503), so an operator learns at once that
//! nothing would happen rather than getting a silent success.

use serde::{Deserialize, Serialize};

/// One reaction currently in force (a blocked address, a cut VM link, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveAction {
    /// The key `release` takes to undo it.
    pub key: String,
    /// What was done (`block`, `cut_link`, `migrate`, ...).
    pub action: String,
    /// What it was done to (an address, a VM).
    pub target: String,
    /// The actuator agent that carries it out.
    pub actuator: String,
    /// When it started (seconds since the Unix epoch).
    pub since_unix_s: u64,
    /// When it ends by itself, if it has a TTL.
    pub expires_unix_s: Option<u64>,
    /// True when the policy only logged it (dry-run mode): nothing was asked of an actuator.
    pub dry_run: bool,
    /// Its id in the decision ledger (`decisions show <id>`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<i64>,
    /// The policy's verification by counters as the ledger recorded it: `passed`, `failed`,
    /// `not_verifiable`; absent until the policy has said (or without a ledger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<String>,
    /// The HO whose fast-path rule holds it; `null` when the VO's policy (or a manual block)
    /// does.
    pub at: Option<String>,
}

/// Who asks for a block or a release, for the decision ledger's record: an API token's id
/// (`token:<hash>`, never the token) or an operator key's name through the tree
/// (`key:<name>`), with the reason they gave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    /// `token:<hash>`, `key:<name>`, or `operator` when not known.
    pub identity: String,
    /// Their reason (a block list's reason column), if any.
    pub reason: Option<String>,
}

impl Operator {
    /// An operator known only as one.
    pub fn unknown() -> Operator {
        Operator {
            identity: "operator".into(),
            reason: None,
        }
    }
}

/// A protected source: the policy never proposes to block or throttle it, and firewall
/// agents never drop it, whoever asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowEntry {
    /// An address, a prefix (`10.0.0.0/24`) or a MAC address, as `allow` takes it.
    pub target: String,
    /// Where it comes from: `config` (the policy file's `[allowlist]`), `topology` (a
    /// machine, controller or gateway of the tree, added automatically) or `operator`.
    pub origin: String,
    /// Why it is there (free text; for `topology`, which machine or controller).
    pub note: Option<String>,
}

/// Why a policy operation was refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum PolicyError {
    /// No policy is loaded, or it cannot act now (503).
    #[error("{0}")]
    Unavailable(String),
    /// The request is well-formed JSON but makes no sense to the policy: bad rules text,
    /// an unparsable target, a TTL out of range (400).
    #[error("{0}")]
    Invalid(String),
    /// `release` of a key with no active action (404).
    #[error("{0}")]
    NotFound(String),
    /// The actuator was asked and failed (502).
    #[error("{0}")]
    ActuatorFailed(String),
}

/// The VO's policy as the API sees it (with the fast-path rules of the HOs the same process
/// runs, see `PolicySet`). Implementations must not block: the API calls these
/// on its request tasks (anything slow goes through the tree asynchronously and is reported
/// by `active_actions` later).
pub trait PolicyControl: Send + Sync + 'static {
    /// The reactions in force, oldest first.
    fn active_actions(&self) -> Vec<ActiveAction>;
    /// The rules as loaded (TOML text); `None` when no policy is loaded.
    fn rules_text(&self) -> Option<String>;
    /// Whether reactions are only logged.
    fn dry_run(&self) -> bool;
    /// Turns dry-run mode on or off.
    fn set_dry_run(&self, enabled: bool) -> Result<(), PolicyError>;
    /// Replaces the rules with `text` (validated first: bad rules leave the old ones).
    fn reload(&self, text: &str) -> Result<(), PolicyError>;
    /// Undoes the active action `key` (e.g. unblocks an address); returns what was done.
    fn release(&self, key: &str) -> Result<String, PolicyError>;
    /// Blocks `target` by hand for `ttl_s` seconds; returns the new action's key.
    fn block(&self, target: &str, ttl_s: u64) -> Result<String, PolicyError>;
    /// [`PolicyControl::block`], recording `who` asked (the decision ledger's operator).
    fn block_as(&self, target: &str, ttl_s: u64, _who: &Operator) -> Result<String, PolicyError> {
        self.block(target, ttl_s)
    }
    /// [`PolicyControl::release`], recording `who` asked.
    fn release_as(&self, key: &str, _who: &Operator) -> Result<String, PolicyError> {
        self.release(key)
    }
    /// The protected sources, configured, automatic and added by hand.
    fn allowlist(&self) -> Vec<AllowEntry> {
        Vec::new()
    }
    /// Protects `target` (address, prefix or MAC) from now on; `note` says why.
    fn allow(&self, _target: &str, _note: Option<&str>) -> Result<(), PolicyError> {
        Err(PolicyError::Unavailable(NO_POLICY.into()))
    }
    /// Removes a protection added by hand (configured and automatic ones stay: `NotFound`
    /// for those, with the reason).
    fn disallow(&self, _target: &str) -> Result<(), PolicyError> {
        Err(PolicyError::Unavailable(NO_POLICY.into()))
    }
}

/// The stand-in until a policy is wired in: reads are empty, mutations answer 503.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPolicy;

const NO_POLICY: &str =
    "no policy is loaded in this orchestrator: nothing can be blocked, released or reloaded";

impl PolicyControl for NoPolicy {
    fn active_actions(&self) -> Vec<ActiveAction> {
        Vec::new()
    }
    fn rules_text(&self) -> Option<String> {
        None
    }
    fn dry_run(&self) -> bool {
        false
    }
    fn set_dry_run(&self, _: bool) -> Result<(), PolicyError> {
        Err(PolicyError::Unavailable(NO_POLICY.into()))
    }
    fn reload(&self, _: &str) -> Result<(), PolicyError> {
        Err(PolicyError::Unavailable(NO_POLICY.into()))
    }
    fn release(&self, _: &str) -> Result<String, PolicyError> {
        Err(PolicyError::Unavailable(NO_POLICY.into()))
    }
    fn block(&self, _: &str, _: u64) -> Result<String, PolicyError> {
        Err(PolicyError::Unavailable(NO_POLICY.into()))
    }
}
