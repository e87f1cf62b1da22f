//! Decisions by hand: what an operator blocks, lists and deletes, and the sources they
//! protect (the allowlist), whichever way they ask.
//!
//! Two doors lead here and both end in [`Decisions`], so they accept, refuse and answer
//! alike: the HTTP API (`/api/v1/decisions`, `/api/v1/allowlist`, with the bearer token;
//! [`crate::http::v1`]) and the VO's own verbs through the tree (`policy_decisions`,
//! `policy_block`, ... of [`vespa_proto::verbs::VoVerb`], for an operator's key;
//! [`verbs`]). `vespa-orchestrator decisions` and `allowlist` ([`cli`]) use either
//! ([`crate::client`]).
//!
//! [`Decisions`] holds nothing of its own: the policy ([`PolicyControl`]) is the record of
//! what is in force, and a block added here is the policy's `ManualBlock`, a deletion its
//! release, which sends the actuators' release wherever the block was placed (the HOs' fast
//! paths in other processes too, through [`RemoteDrivers`]).
//!
//! A request of several blocks (an import) is all or nothing: every entry is checked first
//! (target, time-to-live, reason, not protected by the allowlist) and any bad one refuses the
//! whole request, each problem named by its line or entry; then the entries are placed in
//! order, and if the policy refuses one, those this request placed before it are released
//! again. Imports are bounded ([`MAX_IMPORT_BYTES`], [`MAX_ENTRIES`]).

pub mod cli;
pub mod format;
pub mod history;
pub mod verbs;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vespa_node::NodeHandle;
use vespa_proto::verbs::{BlockEntry, Target, Word};

use crate::control::{ActiveAction, AllowEntry, Operator, PolicyControl, PolicyError};
use crate::ledger::{Decision, DecisionId, Ledger, Query, Story};
use crate::policy_driver::{merge_releases, RemoteDrivers};

/// Time-to-live of a block asked without one.
pub const DEFAULT_TTL_S: u64 = 600;
/// Longest block by hand (a day): longer ones belong in the policy's rules.
pub const MAX_TTL_S: u64 = 86_400;
/// Most entries in one request (an import).
pub const MAX_ENTRIES: usize = 100_000;
/// Largest import (text or JSON), in bytes.
pub const MAX_IMPORT_BYTES: usize = 1 << 20;
/// Longest reason or note, in bytes.
pub const MAX_NOTE: usize = 256;
/// Problems listed in a refusal; the rest are counted.
pub const MAX_LISTED: usize = 20;
/// Entries placed between two yields to the runtime (the policy's queue drains meanwhile).
const YIELD_EVERY: usize = 256;

/// Where an entry of a request came from, for messages: a line of a text list, or the n-th
/// entry of a JSON list or of a call's words (both from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Line n of a text list.
    Line(usize),
    /// Entry n of a list.
    Entry(usize),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Line(n) => write!(f, "line {n}"),
            Place::Entry(n) => write!(f, "entry {n}"),
        }
    }
}

/// One block asked for, and where it was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Its line or entry number.
    pub at: Place,
    /// What to block, how long, why.
    pub entry: BlockEntry,
}

impl Placed {
    /// The entries of a list, numbered from 1.
    pub fn numbered(entries: Vec<BlockEntry>) -> Vec<Item> {
        entries
            .into_iter()
            .enumerate()
            .map(|(i, entry)| {
                Ok(Placed {
                    at: Place::Entry(i + 1),
                    entry,
                })
            })
            .collect()
    }
}

/// An entry of a request, or what is wrong with it (its line or entry named).
pub type Item = Result<Placed, String>;

/// The decisions in force: `GET /api/v1/decisions`, `policy_decisions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// Whether the VO's policy only logs its reactions.
    pub dry_run: bool,
    /// Oldest first; each with the key `delete` takes.
    pub actions: Vec<ActiveAction>,
    /// HOs running fast-path rules in other processes that did not answer (`HO: why`): the
    /// list lacks what they hold.
    pub unreachable: Vec<String>,
}

impl Listing {
    /// The targets blocked, oldest first, each once (the VO and an HO may both hold one).
    pub fn blocked(&self) -> Vec<&ActiveAction> {
        let mut seen = HashSet::new();
        self.actions
            .iter()
            .filter(|a| a.action == "block" && seen.insert(a.target.as_str()))
            .collect()
    }
}

/// What a request of blocks did: `POST /api/v1/decisions`, `policy_block`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    /// The key of each block placed, in the request's order (the key `delete` takes).
    pub added: Vec<String>,
    /// Entries that repeated an earlier entry's target (the first one counted).
    pub duplicates: usize,
}

/// A request refused before anything was applied: each problem with its line or entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refused {
    /// `line 3 (10.0.0.300): ...`, at most [`MAX_LISTED`] of them.
    pub problems: Vec<String>,
    /// How many there were in all.
    pub total: usize,
}

impl Refused {
    /// Collects problems, keeping the first [`MAX_LISTED`].
    pub fn push(&mut self, problem: String) {
        if self.problems.len() < MAX_LISTED {
            self.problems.push(problem);
        }
        self.total += 1;
    }

    /// `Err(self)` when there was any problem.
    pub fn result(self) -> Result<(), Refused> {
        if self.total == 0 {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.total == 1 { "" } else { "s" };
        write!(f, "{} problem{s}, nothing was applied:", self.total)?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        if self.total > self.problems.len() {
            write!(f, "\n  ... and {} more", self.total - self.problems.len())?;
        }
        Ok(())
    }
}

impl From<Refused> for PolicyError {
    fn from(r: Refused) -> Self {
        PolicyError::Invalid(r.to_string())
    }
}

/// Whether a protection of `allowed` makes a block of `target` pointless: the same address
/// or MAC, or an address or prefix inside an allowed prefix.
pub fn protected_by(allowed: &Target, target: &Target) -> bool {
    match (allowed, target) {
        (Target::Net(p), Target::Ip(ip)) => p.contains(*ip),
        (Target::Net(p), Target::Net(q)) => q.len >= p.len && p.contains(q.addr),
        (a, t) => a == t,
    }
}

/// A reason or note: at most [`MAX_NOTE`] bytes, no control characters (it goes to logs).
pub fn check_note(note: &str) -> Result<(), String> {
    if note.len() > MAX_NOTE {
        return Err(format!(
            "longer than {MAX_NOTE} bytes ({} bytes)",
            note.len()
        ));
    }
    if note.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(())
}

/// The operator's decisions over the VO's policy (and the HOs' of other processes).
#[derive(Clone)]
pub struct Decisions {
    policy: Arc<dyn PolicyControl>,
    remote: RemoteDrivers,
    /// The decision ledger, for history and a decision's story.
    ledger: Option<Ledger>,
    /// Who asks, for the ledger's record of blocks and releases.
    who: Operator,
}

/// Decisions in force and ended: `GET /api/v1/decisions?all=true` or `?since=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Oldest first (the newest [`crate::ledger::MAX_LISTED`]).
    pub decisions: Vec<Decision>,
}

/// Most decisions in one page of `policy_history`.
pub const PAGE_ROWS: usize = 256;
/// Most bytes of rows (decisions, or a story's lines) in one page through the tree: with
/// every text of a row at its bound a row is a few tens of KiB, so a page stays far below the
/// tree's 1 MiB frame whatever the ledger holds.
pub const PAGE_BYTES: usize = 256 << 10;

/// A page of the history through the tree (`policy_history`): the newest decisions below the
/// page's `before`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// Oldest first.
    pub decisions: Vec<Decision>,
    /// The `before` of the next (older) page; `None`: this was the last.
    pub next: Option<DecisionId>,
}

/// A page of a decision's story through the tree (`policy_show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoryPage {
    /// The decision and the story's lines from the page's `from`.
    #[serde(flatten)]
    pub story: Story,
    /// The `from` of the rest of the story; `None`: this was the end.
    pub next: Option<u64>,
}

/// How many of `rows` fit [`PAGE_BYTES`] (at least one: a single row is bounded).
fn fitting<T: Serialize>(rows: impl Iterator<Item = T>) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for r in rows {
        bytes += serde_json::to_vec(&r).map_or(PAGE_BYTES, |v| v.len() + 1);
        if n > 0 && bytes > PAGE_BYTES {
            break;
        }
        n += 1;
    }
    n
}

impl Decisions {
    /// Decisions over `policy`, with the fast-path HOs `remote` of other processes.
    pub fn new(policy: Arc<dyn PolicyControl>, remote: RemoteDrivers) -> Decisions {
        Decisions {
            policy,
            remote,
            ledger: None,
            who: Operator::unknown(),
        }
    }

    /// With the decision ledger, for [`Decisions::history`] and [`Decisions::show`].
    pub fn with_ledger(mut self, ledger: Option<Ledger>) -> Decisions {
        self.ledger = ledger;
        self
    }

    /// Blocks and releases recorded as asked by `identity`.
    pub fn by(mut self, identity: String) -> Decisions {
        self.who.identity = identity;
        self
    }

    fn no_ledger() -> PolicyError {
        PolicyError::Unavailable(
            "this orchestrator keeps no decision ledger (run --ledger PATH or [settings] ledger): only what is in force is known".into(),
        )
    }

    /// The decisions of the ledger, ended ones too unless `q.in_force_only`.
    pub async fn history(&self, q: &Query) -> Result<History, PolicyError> {
        let ledger = self.ledger.as_ref().ok_or_else(Self::no_ledger)?;
        let decisions = ledger
            .list(q)
            .await
            .map_err(|e| PolicyError::Unavailable(format!("{e:#}")))?;
        Ok(History { decisions })
    }

    /// A page of [`Decisions::history`] (the same query, `q.before` and [`PAGE_ROWS`] added):
    /// what the tree's `policy_history` answers, bounded to [`PAGE_BYTES`].
    pub async fn history_page(
        &self,
        q: &Query,
        before: Option<DecisionId>,
    ) -> Result<HistoryPage, PolicyError> {
        let q = Query {
            before,
            limit: Some(PAGE_ROWS),
            ..q.clone()
        };
        let mut decisions = self.history(&q).await?.decisions;
        let full = decisions.len() >= PAGE_ROWS;
        let keep = fitting(decisions.iter().rev());
        let trimmed = keep < decisions.len();
        decisions.drain(..decisions.len() - keep);
        let next = match decisions.first() {
            Some(d) if full || trimmed => Some(d.id),
            _ => None,
        };
        Ok(HistoryPage { decisions, next })
    }

    /// A page of [`Decisions::show`]: the decision and its story's lines from `from`, bounded
    /// to [`PAGE_BYTES`] (what the tree's `policy_show` answers).
    pub async fn show_page(&self, id: DecisionId, from: u64) -> Result<StoryPage, PolicyError> {
        let mut story = self.show(id).await?;
        let from = usize::try_from(from)
            .unwrap_or(usize::MAX)
            .min(story.events.len());
        story.events.drain(..from);
        let keep = fitting(story.events.iter());
        let next = (keep < story.events.len()).then_some((from + keep) as u64);
        story.events.truncate(keep);
        Ok(StoryPage { story, next })
    }

    /// Decision `id` and its story.
    pub async fn show(&self, id: DecisionId) -> Result<Story, PolicyError> {
        let ledger = self.ledger.as_ref().ok_or_else(Self::no_ledger)?;
        ledger
            .show(id)
            .await
            .map_err(|e| PolicyError::Unavailable(format!("{e:#}")))?
            .ok_or_else(|| PolicyError::NotFound(format!("no decision {id} in the ledger")))
    }

    /// What is in force: this process's drivers' actions and those of the remote HOs.
    pub async fn list(&self, vo: &NodeHandle) -> Listing {
        let mut actions = self.policy.active_actions();
        let (remote, unreachable) = self.remote.actions(vo).await;
        actions.extend(remote);
        actions.sort_by_key(|a| a.since_unix_s);
        Listing {
            dry_run: self.policy.dry_run(),
            actions,
            unreachable,
        }
    }

    /// Blocks every entry (`default_ttl_s` for those without a TTL, else
    /// [`DEFAULT_TTL_S`]), all or nothing: see the module's description. An `Err` item (a
    /// line that did not parse) refuses the request, with the problems of the other items.
    pub async fn add(
        &self,
        entries: Vec<Item>,
        default_ttl_s: Option<u64>,
    ) -> Result<Added, PolicyError> {
        let (orders, duplicates) = self.check(entries, default_ttl_s)?;
        let before: HashSet<String> = self
            .policy
            .active_actions()
            .into_iter()
            .map(|a| a.key)
            .collect();
        let mut added = Vec::with_capacity(orders.len());
        for (i, (p, ttl_s)) in orders.iter().enumerate() {
            if i > 0 && i % YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
            let target = p.entry.target.to_string();
            let who = Operator {
                identity: self.who.identity.clone(),
                reason: p.entry.reason.clone(),
            };
            match self.policy.block_as(&target, *ttl_s, &who) {
                Ok(key) => added.push(key),
                Err(e) => {
                    let undone = self.undo(&added, &before);
                    let message = format!("{} ({target}): {e}; nothing was applied{undone}", p.at);
                    tracing::warn!(%message, "decisions by hand refused");
                    return Err(same_kind(e, message));
                }
            }
        }
        for (p, ttl_s) in orders.iter().take(MAX_LISTED) {
            let reason = p.entry.reason.as_deref().unwrap_or("-");
            tracing::info!(target = %p.entry.target, ttl_s, reason, "decision by hand: block");
        }
        if orders.len() > MAX_LISTED {
            tracing::info!(
                count = orders.len(),
                "decisions by hand: blocks placed (the first {MAX_LISTED} logged)"
            );
        }
        Ok(Added { added, duplicates })
    }

    /// The entries checked, with their TTL, the duplicates dropped (and counted); a refusal
    /// lists every problem.
    fn check(
        &self,
        entries: Vec<Item>,
        default_ttl_s: Option<u64>,
    ) -> Result<(Vec<(Placed, u64)>, usize), PolicyError> {
        if entries.is_empty() {
            return Err(PolicyError::Invalid("no entry to block".into()));
        }
        if entries.len() > MAX_ENTRIES {
            return Err(PolicyError::Invalid(format!(
                "{} entries: at most {MAX_ENTRIES} in one request",
                entries.len()
            )));
        }
        let allowlist: Vec<(Target, AllowEntry)> = self
            .policy
            .allowlist()
            .into_iter()
            .filter_map(|a| Target::parse_word(&a.target).ok().map(|t| (t, a)))
            .collect();
        let mut refused = Refused::default();
        let mut seen = HashSet::new();
        let mut duplicates = 0;
        let mut orders = Vec::with_capacity(entries.len());
        for item in entries {
            let p = match item {
                Ok(p) => p,
                Err(problem) => {
                    refused.push(problem);
                    continue;
                }
            };
            let t = p.entry.target;
            let problem = |why: String| format!("{} ({t}): {why}", p.at);
            let ttl_s = p.entry.ttl_s.or(default_ttl_s).unwrap_or(DEFAULT_TTL_S);
            if ttl_s == 0 || ttl_s > MAX_TTL_S {
                refused.push(problem(format!(
                    "ttl_s must be between 1 and {MAX_TTL_S} seconds (found {ttl_s})"
                )));
            }
            if let Some(Err(why)) = p.entry.reason.as_deref().map(check_note) {
                refused.push(problem(format!("reason {why}")));
            }
            if let Some((_, a)) = allowlist.iter().find(|(a, _)| protected_by(a, &t)) {
                let note = a
                    .note
                    .as_deref()
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default();
                refused.push(problem(format!(
                    "protected by the allowlist ({} from {}{note})",
                    a.target, a.origin
                )));
            }
            if seen.insert(t) {
                orders.push((p, ttl_s));
            } else {
                duplicates += 1;
            }
        }
        refused.result()?;
        Ok((orders, duplicates))
    }

    /// Releases the blocks of `added` that were not in force before (`before`: the keys);
    /// says what it did, for the refusal's message.
    fn undo(&self, added: &[String], before: &HashSet<String>) -> String {
        if added.is_empty() {
            return String::new();
        }
        let new: Vec<&String> = added.iter().filter(|k| !before.contains(*k)).collect();
        let failed: Vec<String> = new
            .iter()
            .filter_map(|k| self.policy.release(k).err().map(|e| format!("{k}: {e}")))
            .collect();
        let kept = added.len() - new.len();
        let mut out = format!(
            " (of the {} block(s) this request placed before it, {} were released again",
            added.len(),
            new.len()
        );
        if kept > 0 {
            out.push_str(&format!(" and {kept} were in force before and stay"));
        }
        if !failed.is_empty() {
            out.push_str(&format!("; releasing failed for {}", failed.join(", ")));
        }
        out.push(')');
        out
    }

    /// Undoes the decision `key` (a key from the listing, or a target: every decision on it)
    /// wherever it is held; says what was done.
    pub async fn delete(&self, vo: &NodeHandle, key: &str) -> Result<String, PolicyError> {
        let key = normalise_key(key)?;
        let mut results = vec![self.policy.release_as(&key, &self.who)];
        results.extend(self.remote.release(vo, &key).await);
        let result = merge_releases(results)?;
        tracing::info!(%key, %result, "decision by hand: delete");
        Ok(result)
    }

    /// The protected sources.
    pub fn allowlist(&self) -> Vec<AllowEntry> {
        self.policy.allowlist()
    }

    /// Protects `target`; returns it as the policy keeps it.
    pub fn allow(&self, target: &Target, note: Option<&str>) -> Result<String, PolicyError> {
        let note = note.map(str::trim).filter(|n| !n.is_empty());
        if let Some(Err(why)) = note.map(check_note) {
            return Err(PolicyError::Invalid(format!("note {why}")));
        }
        let t = target.to_string();
        self.policy.allow(&t, note)?;
        tracing::info!(target = %t, note = note.unwrap_or("-"), "allowlist by hand: allow");
        Ok(t)
    }

    /// Removes the protection of `target` added by hand; returns it.
    pub fn disallow(&self, target: &Target) -> Result<String, PolicyError> {
        let t = target.to_string();
        self.policy.disallow(&t)?;
        tracing::info!(target = %t, "allowlist by hand: disallow");
        Ok(t)
    }
}

/// A key as the policy knows it: a target in its one spelling (`10.0.0.5/24` is
/// `10.0.0.0/24`, a MAC in lower case), anything else (a VM's name) as given, trimmed.
pub fn normalise_key(key: &str) -> Result<String, PolicyError> {
    let key = key.trim();
    if key.is_empty() {
        return Err(PolicyError::Invalid("an empty key".into()));
    }
    Ok(Target::parse_word(key).map_or_else(|_| key.to_string(), |t| t.to_string()))
}

/// `e`'s kind with another message.
fn same_kind(e: PolicyError, message: String) -> PolicyError {
    match e {
        PolicyError::Unavailable(_) => PolicyError::Unavailable(message),
        PolicyError::Invalid(_) => PolicyError::Invalid(message),
        PolicyError::NotFound(_) => PolicyError::NotFound(message),
        PolicyError::ActuatorFailed(_) => PolicyError::ActuatorFailed(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allowed_prefix_covers_its_addresses_and_longer_prefixes() {
        let t = |s: &str| Target::parse_word(s).expect("target");
        assert!(protected_by(&t("10.0.0.0/8"), &t("10.1.2.3")));
        assert!(protected_by(&t("10.0.0.0/8"), &t("10.1.0.0/16")));
        assert!(protected_by(&t("10.0.0.0/8"), &t("10.0.0.0/8")));
        assert!(
            !protected_by(&t("10.0.0.0/8"), &t("0.0.0.0/0")),
            "wider: not covered"
        );
        assert!(!protected_by(&t("10.0.0.0/8"), &t("11.0.0.1")));
        assert!(!protected_by(&t("10.0.0.0/8"), &t("::ffff:10.0.0.1")));
        assert!(protected_by(&t("2001:db8::/32"), &t("2001:db8:1::/64")));
        assert!(protected_by(&t("10.0.0.1"), &t("10.0.0.1")));
        assert!(!protected_by(&t("10.0.0.1"), &t("10.0.0.0/24")));
        assert!(protected_by(
            &t("AA:BB:CC:DD:EE:FF"),
            &t("aa:bb:cc:dd:ee:ff")
        ));
    }

    #[test]
    fn keys_are_spelt_as_the_policy_spells_them() {
        assert_eq!(normalise_key(" 10.0.0.5/24 "), Ok("10.0.0.0/24".into()));
        assert_eq!(
            normalise_key("AA-BB-CC-DD-EE-FF"),
            Ok("aa:bb:cc:dd:ee:ff".into())
        );
        assert_eq!(normalise_key("web vm"), Ok("web vm".into()));
        assert!(normalise_key("  ").is_err());
    }

    #[test]
    fn notes_are_short_single_lines() {
        assert!(check_note("ssh scan from the lab").is_ok());
        assert!(check_note("two\nlines").is_err());
        assert!(check_note(&"x".repeat(MAX_NOTE + 1)).is_err());
    }
}
