//! The verbs every node answers, those of an HO that runs fast-path rules, and the VO's
//! decisions by hand.

use std::fmt;

use super::words::{word_args, OnOff, Target, Word};

crate::verbs! {
    /// The verbs every node answers (the 2014 `Node` methods, plus the runtime's own).
    pub enum NodeVerb {
        /// list this node's verbs
        Help "help" {},
        /// this node's registered children (JSON)
        ListSlaves "list_slaves" {},
        /// the path from this node down to <name> (JSON list of names)
        FindNode "find_node" { name: String },
        /// run <verb> on <node> in this node's subtree, routed down the tree
        Call "call" { node: String, verb: String, args: Vec<String> },
        /// delivery counters, queue state and per-origin sequence numbers (JSON)
        Stats "stats" {},
        /// alerts processed here, oldest first (JSON; the VO keeps them)
        GetAlerts "get_alerts" { from_index: Option<u64> },
        /// orderly shutdown of this node and its whole subtree
        Destroy "destroy" [Command] {},
    }
}

crate::verbs! {
    /// The verbs of a horizontal orchestrator that runs fast-path rules: the VO's API reaches
    /// its policy driver through them when another process runs it.
    pub enum HoVerb {
        /// the reactions this HO's fast-path rules hold (JSON list)
        PolicyActions "policy_actions" {},
        /// undo what this HO's rules hold against <key> (JSON Ok/Err)
        PolicyRelease "policy_release" [Command] { key: String },
        /// switch this HO's rules to dry-run or back (JSON Ok/Err)
        PolicyDryRun "policy_dry_run" [Command] { enabled: OnOff },
        /// protect <target> (address, prefix or MAC) from this HO's rules; the rest is a note
        /// (JSON Ok/Err)
        PolicyAllow "policy_protect" [Command] { target: String, note: Vec<String> },
        /// remove a protection added with policy_protect (JSON Ok/Err)
        PolicyDisallow "policy_unprotect" [Command] { target: String },
    }
}

crate::verbs! {
    /// The verbs of the VO for an operator's decisions by hand (`vespa-orchestrator decisions`
    /// and `allowlist` through the tree): answered over the same policy as the HTTP API's
    /// `/api/v1/decisions` and `/api/v1/allowlist`, with the same JSON.
    pub enum VoVerb {
        /// the decisions in force, wherever their rule runs (JSON: dry_run, actions,
        /// unreachable)
        PolicyDecisions "policy_decisions" {},
        /// the decision ledger's history: decisions placed or ended at or after <since> (Unix
        /// seconds; 0: all) and those in force, newest first by pages, each of ids below
        /// [before] (JSON: decisions oldest first, next: the `before` of the next page or
        /// null)
        PolicyHistory "policy_history" { since: u64, before: Option<u64> },
        /// decision <id> of the ledger and its story from line [from] (JSON: decision,
        /// events, next: the `from` of the rest of the story or null)
        PolicyShow "policy_show" { id: u64, from: Option<u64> },
        /// block by hand, all or nothing; each entry is target[,ttl_s[,reason]] (JSON Ok/Err)
        PolicyBlock "policy_block" [Command] { entries: Vec<BlockEntry> },
        /// undo the decision <key> (or every decision on a target), wherever it is held
        /// (JSON Ok/Err)
        PolicyDelete "policy_delete" [Command] { key: String },
        /// the protected sources: configured, automatic and added by hand (JSON list)
        PolicyAllowlist "policy_allowlist" {},
        /// protect a source (address, prefix or MAC) from blocks; [note] says why (JSON Ok/Err)
        PolicyAllow "policy_allow" [Command] { target: Target, note: Option<String> },
        /// remove a protection added by hand (JSON Ok/Err)
        PolicyDisallow "policy_disallow" [Command] { target: Target },
    }
}

/// One block asked by hand: what, for how long (`None`: the default), and why. As a word:
/// `target[,ttl_s[,reason]]` (`10.0.0.9`, `10.0.0.0/24,600`, `aa:bb:cc:dd:ee:ff,,port scan`);
/// the reason is everything after the second comma.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockEntry {
    /// The address, prefix or MAC address.
    pub target: Target,
    /// Seconds; `None` for the default of whoever carries it out.
    pub ttl_s: Option<u64>,
    /// Why (free text, logged).
    pub reason: Option<String>,
}

impl fmt::Display for BlockEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.target)?;
        match (self.ttl_s, &self.reason) {
            (None, None) => Ok(()),
            (Some(t), None) => write!(f, ",{t}"),
            (t, Some(r)) => {
                write!(f, ",")?;
                if let Some(t) = t {
                    write!(f, "{t}")?;
                }
                write!(f, ",{r}")
            }
        }
    }
}

impl Word for BlockEntry {
    const PLACEHOLDER: Option<&'static str> = Some("target[,ttl_s[,reason]]");
    fn parse_word(word: &str) -> Result<Self, String> {
        let mut parts = word.splitn(3, ',');
        let target = Target::parse_word(parts.next().unwrap_or_default())?;
        let ttl_s = match parts.next().map(str::trim) {
            None | Some("") => None,
            Some(t) => Some(
                t.parse::<u64>()
                    .map_err(|_| format!("{t:?} is not a time-to-live in whole seconds"))?,
            ),
        };
        let reason = parts
            .next()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_string);
        Ok(BlockEntry {
            target,
            ttl_s,
            reason,
        })
    }
    fn to_word(&self) -> String {
        self.to_string()
    }
}

word_args!(BlockEntry);
