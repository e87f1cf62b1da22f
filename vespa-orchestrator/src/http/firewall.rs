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

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vespa_node::{AgentKind, Role};
use vespa_proto::verbs::{FirewallVerb, Target, Word};

use super::{call_node, ApiState};

/// Blocks per firewall in an answer (the busiest).
pub const MAX_BLOCKS: usize = 100;

/// One block in force, as its firewall agent lists it (`status_hackers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The agent's id of the block (`release_hackers <id>` on that agent).
    pub id: u64,
    /// The blocked source: an address, a prefix or a MAC.
    #[serde(serialize_with = "text", deserialize_with = "target")]
    pub target: Target,
    /// Time left before it stops dropping; `None`: until released.
    pub expires_in_ms: Option<u64>,
    /// Placed by the kernel's reflex.
    pub reflex: bool,
    /// Packets it dropped.
    pub packets: u64,
    /// Bytes it dropped.
    pub bytes: u64,
    /// From its insertion to its first dropped packet, both kernel times.
    pub first_drop_after_ns: Option<u64>,
}

/// A firewall's totals since its tables were created (`firewall_stats`), which continue
/// across agent restarts when the tables are pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Packets dropped by blocks, at tc and XDP.
    pub dropped_packets: u64,
    /// Bytes dropped by blocks.
    pub dropped_bytes: u64,
    /// Packets dropped by source throttles.
    pub throttled_packets: u64,
    /// Bytes dropped by source throttles.
    pub throttled_bytes: u64,
    /// Packets of protected sources that matched a block and passed.
    pub protected_passed: u64,
    /// Reflex blocks refused because the source is protected.
    pub reflex_protected: u64,
    /// Reflex blocks refused because the cap was reached or the table was full.
    pub reflex_capped: u64,
    /// Packets dropped at XDP (also in `dropped_packets`).
    pub xdp_dropped_packets: u64,
    /// Reflex blocks placed.
    pub reflex_placed: u64,
    /// Blocks in the kernel.
    pub blocks: u64,
    /// Address and prefix blocks the kernel can hold.
    pub block_capacity: u64,
    /// Throttles in force.
    pub throttles: u64,
    /// Protected sources.
    pub allowed: u64,
    /// The reflex's settings.
    pub reflex: Reflex,
}

/// The kernel reflex's settings (0: that cause is off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reflex {
    /// SYNs per second from one source that make the kernel block it.
    pub syn_per_sec: u64,
    /// Established connections from one remote that make the kernel block it.
    pub conn: u64,
    /// The reflex blocks' time-to-live (`None`: until released).
    #[serde(default)]
    pub ttl: Option<std::time::Duration>,
    /// Reflex blocks at once at most.
    pub max: u64,
    /// IPv6 sources are blocked as this prefix (0: the address).
    pub v6_prefix: u8,
}

/// One firewall agent's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirewallReport {
    /// The agent's node.
    pub node: String,
    /// Its totals, when it answered `firewall_stats`.
    pub totals: Option<Totals>,
    /// Its busiest blocks (at most [`MAX_BLOCKS`]), most packets first.
    pub blocks: Vec<Block>,
    /// How many blocks it listed (more than `blocks` holds when it had more than
    /// [`MAX_BLOCKS`]).
    pub blocks_listed: usize,
    /// What could not be read, one sentence per verb.
    pub errors: Vec<String>,
}

fn text<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn target<'de, D: Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
    let s = String::deserialize(d)?;
    Target::parse_word(&s).map_err(serde::de::Error::custom)
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
    let totals = match stats
        .and_then(|r| serde_json::from_str::<Totals>(&r).map_err(|e| format!("bad reply: {e}")))
    {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(format!("firewall_stats: {e}"));
            None
        }
    };
    let blocks_listed = blocks.len();
    // Most packets first; the agent's order (oldest first) among equals.
    blocks.sort_by_key(|b| std::cmp::Reverse(b.packets));
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
        assert!(r.blocks.windows(2).all(|w| w[0].packets >= w[1].packets));
        assert_eq!(
            Some(r.blocks[0].packets),
            (0..250).map(|i| (i * 7) % 500).max()
        );
        let t = r.totals.expect("totals");
        assert_eq!((t.dropped_packets, t.block_capacity), (1200, 65536));
        assert_eq!(t.reflex.ttl, Some(std::time::Duration::from_secs(30)));
        // The answer speaks of targets as text, as the agent did.
        let json = serde_json::to_value(&r.blocks[0]).unwrap();
        assert!(json["target"].as_str().unwrap().starts_with("10.0."));
        assert!(json.get("created_ns").is_none());
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
            "packets":1,"bytes":1,"first_drop_after_ns":null}]"#;
        let r = report("fw", Ok(bad.into()), Ok(STATS.into()));
        assert!(r.blocks.is_empty());
        assert!(r.errors[0].contains("invalid block target"), "{r:?}");
    }
}
