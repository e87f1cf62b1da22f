//! The verbs every node answers, and those of an HO that runs fast-path rules.

use super::words::OnOff;

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
        PolicyAllow "policy_allow" [Command] { target: String, note: Vec<String> },
        /// remove a protection added with policy_allow (JSON Ok/Err)
        PolicyDisallow "policy_disallow" [Command] { target: String },
    }
}
