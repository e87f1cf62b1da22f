//! `GET /api/v1/firewall`: the kernel firewalls of the tree, as their agents report them.
//!
//! The VO has no access to any host's kernel: for each `agent_firewall` node of the topology
//! the API asks the agent itself, down the tree, for `status_hackers` (its blocks with their
//! drop counters) and `firewall_stats` (its totals). Every agent is asked at once, each call
//! bounded by the API's call timeout; an agent that does not answer, or answers something
//! else than its verbs' JSON, is listed with the reason and without what is missing. What
//! comes back is bounded: a reply is at most one frame of the tree, and of each agent's
//! blocks the answer keeps the [`MAX_BLOCKS`] that dropped the most packets, saying how many
//! there were.

use serde::{Deserialize, Serialize};
use vespa_node::{AgentKind, Role};
use vespa_proto::verbs::{BlockInfo, FirewallStats, FirewallVerb};

use super::{call_node, ApiState};

/// Blocks per firewall in an answer (the busiest).
pub const MAX_BLOCKS: usize = 100;

/// One block in force, as its firewall agent lists it (`status_hackers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The agent's id of the block (`release_hackers <id>` on that agent).
    pub id: u64,
    /// The block and its drop counters.
    #[serde(flatten)]
    pub block: BlockInfo,
}

/// One firewall agent's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirewallReport {
    /// The agent's node.
    pub node: String,
    /// Its totals, when it answered `firewall_stats`.
    pub totals: Option<FirewallStats>,
    /// Its busiest blocks (at most [`MAX_BLOCKS`]), most packets first.
    pub blocks: Vec<Block>,
    /// How many blocks it listed (more than `blocks` holds when it had more than
    /// [`MAX_BLOCKS`]).
    pub blocks_listed: usize,
    /// What could not be read, one sentence per verb.
    pub errors: Vec<String>,
}

/// The report of `node` from its two answers.
pub fn report(
    node: &str,
    status: Result<String, String>,
    stats: Result<String, String>,
) -> FirewallReport {
    let mut errors = Vec::new();
    let mut blocks = match status
        .and_then(|r| serde_json::from_str::<Vec<Block>>(&r).map_err(|e| format!("bad reply: {e}")))
    {
        Ok(b) => b,
        Err(e) => {
            errors.push(format!("status_hackers: {e}"));
            Vec::new()
        }
    };
    let totals = match stats.and_then(|r| {
        serde_json::from_str::<FirewallStats>(&r).map_err(|e| format!("bad reply: {e}"))
    }) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(format!("firewall_stats: {e}"));
            None
        }
    };
    let blocks_listed = blocks.len();
    // Most packets first; the agent's order (oldest first) among equals.
    blocks.sort_by_key(|b| std::cmp::Reverse(b.block.packets));
    blocks.truncate(MAX_BLOCKS);
    FirewallReport {
        node: node.to_string(),
        totals,
        blocks,
        blocks_listed,
        errors,
    }
}

/// The firewall agents of the topology, in its order.
fn firewall_nodes(state: &ApiState) -> Vec<String> {
    state
        .topology
        .nodes
        .iter()
        .filter(|n| n.role == Role::Agent(AgentKind::Firewall))
        .map(|n| n.name.clone())
        .collect()
}

/// Every firewall agent's report, asked through the tree all at once.
pub async fn reports(state: &ApiState) -> Vec<FirewallReport> {
    let asks = firewall_nodes(state).into_iter().map(|node| async move {
        let (status, stats) = tokio::join!(
            call_node(state, &node, FirewallVerb::StatusHackers {}),
            call_node(state, &node, FirewallVerb::FirewallStats {}),
        );
        report(&node, status, stats)
    });
    futures_util::future::join_all(asks).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = r#"{"dropped_packets":1200,"dropped_bytes":250000,"throttled_packets":0,
        "throttled_bytes":0,"protected_passed":4,"reflex_protected":0,"reflex_capped":0,
        "xdp_dropped_packets":0,"reflex_placed":1,"blocks":2,"block_capacity":65536,
        "throttles":0,"allowed":3,"reflex":{"syn_per_sec":50,"conn":0,
        "ttl":{"secs":30,"nanos":0},"max":16,"v6_prefix":64}}"#;

    fn listed(n: usize) -> String {
        let blocks: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                serde_json::json!({ "id": i + 1, "target": format!("10.0.{}.{}", i / 256, i % 256),
                "expires_in_ms": null, "reflex": i == 3, "packets": (i * 7) % 500,
                "bytes": 100 * ((i * 7) % 500), "first_drop_after_ns": 1200, "created_ns": i })
            })
            .collect();
        serde_json::to_string(&blocks).unwrap()
    }

    #[test]
    fn the_busiest_blocks_are_kept_and_the_rest_counted() {
        let r = report("fw", Ok(listed(250)), Ok(STATS.into()));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.blocks_listed, 250);
        assert_eq!(r.blocks.len(), MAX_BLOCKS);
        assert!(r
            .blocks
            .windows(2)
            .all(|w| w[0].block.packets >= w[1].block.packets));
        assert_eq!(
            Some(r.blocks[0].block.packets),
            (0..250).map(|i| (i * 7) % 500).max()
        );
        let t = r.totals.expect("totals");
        assert_eq!((t.dropped_packets, t.block_capacity), (1200, 65536));
        assert_eq!(t.reflex.ttl, Some(std::time::Duration::from_secs(30)));
        // The answer speaks of targets as text, as the agent did.
        let json = serde_json::to_value(&r.blocks[0]).unwrap();
        assert!(json["target"].as_str().unwrap().starts_with("10.0."));
    }

    #[test]
    fn what_an_agent_did_not_answer_is_named_and_the_rest_kept() {
        let r = report(
            "fw",
            Err("fw did not answer status_hackers within 5s".into()),
            Ok(STATS.into()),
        );
        assert_eq!(
            r.errors,
            ["status_hackers: fw did not answer status_hackers within 5s"]
        );
        assert!(r.totals.is_some() && r.blocks.is_empty());

        let r = report("fw", Ok("<html>".into()), Ok("{}".into()));
        assert_eq!(r.errors.len(), 2);
        assert!(
            r.errors[0].starts_with("status_hackers: bad reply"),
            "{r:?}"
        );
        assert!(
            r.errors[1].starts_with("firewall_stats: bad reply")
                && r.errors[1].contains("missing field"),
            "{r:?}"
        );
        // A target that is none is a bad reply, not a row.
        let bad = r#"[{"id":1,"target":"<script>","expires_in_ms":null,"reflex":false,
            "packets":1,"bytes":1,"first_drop_after_ns":null,"created_ns":1}]"#;
        let r = report("fw", Ok(bad.into()), Ok(STATS.into()));
        assert!(r.blocks.is_empty());
        assert!(r.errors[0].contains("invalid block target"), "{r:?}");
    }
}
