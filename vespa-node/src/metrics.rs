//! The spools of a process's nodes as Prometheus series, for every binary that serves
//! metrics (`vespa-agent run --metrics`, the orchestrator's `/metrics`).
//!
//! A collector over the nodes' handles, read at scrape time from their [`Stats`](crate::Stats)
//! like the other node counters, so the series can never drift from what `stats` answers.
//! The handles are added as the nodes are built ([`SpoolCollector::add`]), after the registry
//! that holds the collector was made; a node without a spool has no series.
//!
//! Every series is labelled `node`. Counters count since the process started (the spool's
//! file outlives it, its counters do not); gauges are what the file holds now.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::spool::SpoolStats;
use crate::util::lock;
use crate::NodeHandle;

type Labels = Vec<(&'static str, String)>;

/// What each series reads from a spool's stats.
type Read = fn(&SpoolStats) -> u64;

/// Gauges: (name, help, value).
const GAUGES: [(&str, &str, Read); 4] = [
    (
        "vespa_spool_alerts",
        "Unacknowledged alerts the node's spool holds (sent again after a restart).",
        |s| s.unacked as u64,
    ),
    (
        "vespa_spool_bytes",
        "Bytes of unacknowledged alerts the node's spool holds (at most vespa_spool_max_bytes).",
        |s| s.unacked_bytes,
    ),
    (
        "vespa_spool_max_bytes",
        "The spool's budget of unacknowledged bytes (spool_max_bytes): past it, new alerts are dropped.",
        |s| s.max_bytes,
    ),
    (
        "vespa_spool_file_bytes",
        "Size of the spool's file (the acknowledged prefix is dropped as it grows).",
        |s| s.bytes,
    ),
];

/// Counters (without `_total`, which the encoder adds): (name, help, value).
const COUNTERS: [(&str, &str, Read); 7] = [
    (
        "vespa_spool_written",
        "Alerts written to the spool since the process started.",
        |s| s.appended,
    ),
    (
        "vespa_spool_acknowledged",
        "Alerts of the spool acknowledged (their acknowledgement written) since the process started.",
        |s| s.acked,
    ),
    (
        "vespa_spool_overflow",
        "Alerts refused because the spool was at its budget (dropped, also in vespa_node_queue_overflow_total, reported upstream).",
        |s| s.refused,
    ),
    (
        "vespa_spool_failures",
        "Failed writes, syncs and compactions of the spool (alerts then wait in memory only).",
        |s| s.failures,
    ),
    (
        "vespa_spool_syncs",
        "fdatasync calls of the spool (one per batch of alerts).",
        |s| s.syncs,
    ),
    (
        "vespa_spool_reloaded",
        "Unacknowledged alerts read back from the spool at start and sent again.",
        |s| s.reloaded_at_start,
    ),
    (
        "vespa_spool_damaged",
        "Damaged records of the spool skipped when it was read at start.",
        |s| s.damaged_at_start,
    ),
];

/// The spools of the nodes added, as Prometheus series (cheap to clone: the clones share
/// the list, so a registry can hold one while the nodes are added to another).
#[derive(Clone, Default)]
pub struct SpoolCollector {
    nodes: Arc<Mutex<Vec<NodeHandle>>>,
}

impl std::fmt::Debug for SpoolCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = lock(&self.nodes)
            .iter()
            .map(|h| h.name().to_string())
            .collect();
        f.debug_struct("SpoolCollector")
            .field("nodes", &names)
            .finish()
    }
}

impl SpoolCollector {
    /// Adds a node (one without a spool adds no series).
    pub fn add(&self, node: NodeHandle) {
        lock(&self.nodes).push(node);
    }

    /// Each node's name and spool stats, for the nodes that keep a spool.
    fn spools(&self) -> Vec<(String, SpoolStats)> {
        let nodes = lock(&self.nodes).clone();
        nodes
            .iter()
            .filter_map(|h| {
                let s = h.stats();
                s.spool.map(|sp| (s.node, sp))
            })
            .collect()
    }
}

fn encode_all<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    ty: MetricType,
    series: &[(Labels, M)],
) -> Result<(), std::fmt::Error> {
    let mut desc = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, m) in series {
        m.encode(desc.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for SpoolCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let spools = self.spools();
        if spools.is_empty() {
            return Ok(());
        }
        let label = |node: &String| -> Labels { vec![("node", node.clone())] };
        for (name, help, read) in GAUGES {
            let series: Vec<(Labels, ConstGauge)> = spools
                .iter()
                .map(|(n, s)| {
                    (
                        label(n),
                        ConstGauge::new(i64::try_from(read(s)).unwrap_or(i64::MAX)),
                    )
                })
                .collect();
            encode_all(&mut enc, (name, help), MetricType::Gauge, &series)?;
        }
        for (name, help, read) in COUNTERS {
            let series: Vec<(Labels, ConstCounter)> = spools
                .iter()
                .map(|(n, s)| (label(n), ConstCounter::new(read(s))))
                .collect();
            encode_all(&mut enc, (name, help), MetricType::Counter, &series)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;
    use vespa_proto::{AlertBody, Psk};

    use super::*;
    use crate::{AgentKind, Hooks, Node, NodeSpec, Role, Security};

    fn render(r: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, r).expect("encode");
        out
    }

    fn agent(name: &str, spool: Option<std::path::PathBuf>) -> Node {
        // A master it never reaches: what it raises stays unacknowledged.
        let master = crate::MasterAddr {
            name: "HO".into(),
            addr: "127.0.0.1:9".parse().expect("addr"),
        };
        let mut spec = NodeSpec::new(
            name,
            Role::Agent(AgentKind::Bandwidth),
            Some(master),
            Security::Psk(Psk::random()),
        );
        spec.spool = spool;
        Node::new(spec, Hooks::default()).expect("node")
    }

    /// What an agent raised is in its spool's series, labelled by node; a node without a
    /// spool adds none, and nodes added after the registry was made are still scraped.
    #[test]
    fn a_nodes_spool_is_in_the_metrics_by_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let collector = SpoolCollector::default();
        let mut r = Registry::default();
        r.register_collector(Box::new(collector.clone()));
        assert!(!render(&r).contains("vespa_spool"), "no node yet");

        let with = agent("a1", Some(crate::spool::file_of(dir.path(), "a1")));
        let without = agent("a2", None);
        collector.add(with.handle());
        collector.add(without.handle());
        for i in 0..3 {
            with.handle()
                .raise(AlertBody::Text(format!("alert {i}")))
                .expect("raised");
        }
        let text = render(&r);
        for line in [
            "vespa_spool_alerts{node=\"a1\"} 3",
            "vespa_spool_written_total{node=\"a1\"} 3",
            "vespa_spool_acknowledged_total{node=\"a1\"} 0",
            "vespa_spool_overflow_total{node=\"a1\"} 0",
            "vespa_spool_damaged_total{node=\"a1\"} 0",
            "vespa_spool_max_bytes{node=\"a1\"} 67108864",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        let bytes: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("vespa_spool_bytes{node=\"a1\"} "))
            .and_then(|v| v.parse().ok())
            .expect("vespa_spool_bytes of a1");
        assert!(bytes > 0, "{text}");
        assert!(!text.contains("node=\"a2\""), "{text}");
    }
}
