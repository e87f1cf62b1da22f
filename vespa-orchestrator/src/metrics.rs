//! The VO's metrics: its delivery counters, alerts by kind, and the closed-loop latency,
//! served as `/metrics` by the HTTP API ([`crate::http`]) and fed by the API's alert view
//! and the policy driver, neither of which needs the other.
//!
//! The node counters (`vespa_node_*{node}`) are read from the [`Stats`](vespa_node::Stats) of
//! every node of the process (the VO's, the HOs' it runs) on every scrape (a collector, like
//! the agent's exporter), so they can never drift from what `stats` answers.
//! Alerts by kind and the latency histogram are updated as the VO processes alerts.
//!
//! `vespa_closed_loop_seconds{stage}` measures the loop from an event to its reaction:
//! - `kernel_to_vo`: from the alert's timestamp to the VO processing it. A threshold alert
//!   carries the kernel event's own time (`bpf_ktime_get_ns` at the crossing connection's
//!   state change, moved by the agent from CLOCK_MONOTONIC to the Unix clock); other alerts
//!   are stamped when raised (a sample taken, a scan's result). The VO subtracts the stamp
//!   from its own clock, so the figure is exact on one host (the default topology) and
//!   includes clock offset across hosts. Alerts stamped in the future (clock step) are not
//!   observed.
//! - `vo_to_actuator_ack`: from the VO deciding to act to the actuator's acknowledgement,
//!   observed by the policy through [`Metrics::observe_actuator_ack`].
//!
//! `vespa_decisions_drift_total{node,actuator,kind}` counts what reconciliation found different
//! between what the policy has in place and what an actuator holds (`missing`: wanted, not
//! held, re-applied; `stray`: held with VESPA's mark, not wanted, removed; `adopted`: held and
//! wanted but unknown to the agent's book, recorded there again), and
//! `vespa_reconcile_pass_seconds{node,actuator}` how long each pass over one actuator took
//! ([`crate::policy_driver`]'s reconciliation), for every driver of the process: the VO's and
//! those of the HOs it runs share one `Metrics`. A process that runs HOs without the VO serves
//! these, its nodes' counters and the HOs' spools ([`vespa_node::metrics`]) on `run --metrics ADDR`
//! ([`Metrics::process_registry`], [`serve`]); the VO's process on its API's `/metrics`.
//!
//! `vespa_policy_alerts_total{kind}` counts the alerts the policy raises of its own
//! (`did_not_take`: a verification failed or an actuator refused; `blind_spot`: a sensor lost
//! events or filled a map; ...), wherever the rule runs: the VO's driver counts its own as it
//! raises them, and an HO's fast-path alerts are counted when they reach the VO (their typed
//! body, [`AlertBody::Policy`], names the kind and the HO; a kind this VO does not know is not
//! counted, so a peer cannot add series). Every kind's series exists from the start at 0, so
//! an alerting rule sees the first one as an increase.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use vespa_node::NodeHandle;
use vespa_policy::AlertKind;
use vespa_proto::{Alert, AlertBody};

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// The `stage` label of the event-to-kernel-alert-at-VO part of the loop.
pub const STAGE_KERNEL_TO_VO: &str = "kernel_to_vo";
/// The `stage` label of the decision-to-actuator-acknowledgement part of the loop.
pub const STAGE_VO_TO_ACTUATOR_ACK: &str = "vo_to_actuator_ack";

/// Every kind of alert the policy raises, as `vespa_policy_alerts_total`'s `kind` label.
pub const POLICY_ALERT_KINDS: [AlertKind; 6] = [
    AlertKind::DidNotTake,
    AlertKind::LadderExhausted,
    AlertKind::BlindSpot,
    AlertKind::Notice,
    AlertKind::Protected,
    AlertKind::CapReached,
];

/// The `kind` label of a policy alert. Fixed names: alerting rules use them.
pub fn policy_alert_kind(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::DidNotTake => "did_not_take",
        AlertKind::LadderExhausted => "ladder_exhausted",
        AlertKind::BlindSpot => "blind_spot",
        AlertKind::Notice => "notice",
        AlertKind::Protected => "protected",
        AlertKind::CapReached => "cap_reached",
    }
}

/// 100 µs to ~6.5 s, doubling: loopback hops are sub-millisecond, actuators take seconds.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// The outputs' counters (`[[output]]`, [`crate::outputs`]), by `output` name: events
/// delivered, dropped (queue full, or refused for good), failed attempts, and the queue's
/// depth. Cheap to clone into each output's task and feeder.
#[derive(Clone, Default)]
pub struct OutputMetrics {
    sent: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    failures: Family<Labels, Counter>,
    depth: Family<Labels, Gauge>,
}

/// One output's series, looked up once: the feeders and the task update them without
/// touching the families' locks.
#[derive(Clone, Debug)]
pub struct OutputCounters {
    /// `vespa_output_sent_total{output}`.
    pub sent: Counter,
    /// `vespa_output_dropped_total{output}`.
    pub dropped: Counter,
    /// `vespa_output_failures_total{output}`.
    pub failures: Counter,
    /// `vespa_output_queue_depth{output}`.
    pub depth: Gauge,
}

impl OutputCounters {
    /// Sets the queue depth gauge.
    pub fn set_depth(&self, n: usize) {
        self.depth.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

impl OutputMetrics {
    fn labels(output: &str) -> Labels {
        vec![("output", output.to_string())]
    }

    /// The series of `output` (created at 0 if new).
    pub fn counters(&self, output: &str) -> OutputCounters {
        let l = Self::labels(output);
        OutputCounters {
            sent: self.sent.get_or_create(&l).clone(),
            dropped: self.dropped.get_or_create(&l).clone(),
            failures: self.failures.get_or_create(&l).clone(),
            depth: self.depth.get_or_create(&l).clone(),
        }
    }

    /// (sent, dropped, failures, depth) of `output`, for tests and logs.
    pub fn get(&self, output: &str) -> (u64, u64, u64, i64) {
        let l = Self::labels(output);
        (
            self.sent.get_or_create(&l).get(),
            self.dropped.get_or_create(&l).get(),
            self.failures.get_or_create(&l).get(),
            self.depth.get_or_create(&l).get(),
        )
    }

    fn register_in(&self, r: &mut Registry) {
        r.register(
            "vespa_output_sent",
            "Events (alerts, decisions) an output delivered.",
            self.sent.clone(),
        );
        r.register(
            "vespa_output_dropped",
            "Events an output dropped: its queue was full (it is down or slow), or the destination refused them for good.",
            self.dropped.clone(),
        );
        r.register(
            "vespa_output_failures",
            "Failed delivery attempts of an output (each followed by a retry after a backoff).",
            self.failures.clone(),
        );
        r.register(
            "vespa_output_queue_depth",
            "Events waiting in an output's queue.",
            self.depth.clone(),
        );
    }
}

/// The metrics the VO updates as it goes. Cheap to clone into alert handlers and policies.
#[derive(Clone)]
pub struct Metrics {
    alerts_by_kind: Family<Labels, Counter>,
    policy_alerts: Family<Labels, Counter>,
    closed_loop: HistogramFamily,
    outputs: OutputMetrics,
    drift: Family<Labels, Counter>,
    reconcile: HistogramFamily,
    spools: vespa_node::metrics::SpoolCollector,
    nodes: NodeCollector,
}

/// The `kind` labels of `vespa_decisions_drift_total`. Fixed names: alerting rules use them.
pub const DRIFT_KINDS: [&str; 3] = ["missing", "stray", "adopted"];

/// 1 ms to ~65 s, doubling: a pass lists an actuator page by page and may send thousands of
/// calls.
fn pass_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            alerts_by_kind: Family::default(),
            policy_alerts: Family::default(),
            closed_loop: Family::new_with_constructor(latency_histogram),
            outputs: OutputMetrics::default(),
            drift: Family::default(),
            reconcile: Family::new_with_constructor(pass_histogram),
            spools: Default::default(),
            nodes: NodeCollector::default(),
        }
    }
}

impl Metrics {
    /// The outputs' counters ([`crate::outputs::Outputs::start`] takes them).
    pub fn outputs(&self) -> OutputMetrics {
        self.outputs.clone()
    }

    /// Adds a node of this process, whose counters (`vespa_node_*`) and spool (an HO's; the
    /// VO keeps a journal) are then in the scrapes.
    pub fn add_node(&self, node: NodeHandle) {
        self.spools.add(node.clone());
        self.nodes.add(node);
    }

    /// Counts an alert processed at the VO and observes its `kernel_to_vo` latency.
    pub fn on_alert(&self, alert: &Alert) {
        self.alerts_by_kind
            .get_or_create(&vec![("kind", alert.body.kind().to_string())])
            .inc();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        if let Some(ns) = now.checked_sub(alert.timestamp_ns) {
            self.observe(STAGE_KERNEL_TO_VO, ns as f64 / 1e9);
        }
        // An HO's fast-path policy alert (the VO's own are counted by its driver).
        if let AlertBody::Policy {
            kind, at: Some(_), ..
        } = &alert.body
        {
            if let Some(k) = POLICY_ALERT_KINDS
                .into_iter()
                .find(|k| policy_alert_kind(*k) == kind)
            {
                self.on_policy_alert(k);
            }
        }
    }

    /// Observes the time from the VO's decision to the actuator's acknowledgement (for the
    /// policy: call it when an actuator call returns).
    pub fn observe_actuator_ack(&self, seconds: f64) {
        self.observe(STAGE_VO_TO_ACTUATOR_ACK, seconds);
    }

    /// Counts an alert the VO's policy raised (for the driver: call it as it raises one).
    pub fn on_policy_alert(&self, kind: AlertKind) {
        self.policy_alerts
            .get_or_create(&vec![("kind", policy_alert_kind(kind).to_string())])
            .inc();
    }

    /// Counts `n` differences of `kind` (one of [`DRIFT_KINDS`]) that `node`'s driver found
    /// on `actuator`.
    pub fn on_drift(&self, node: &str, actuator: &str, kind: &'static str, n: u64) {
        self.drift
            .get_or_create(&vec![
                ("node", node.to_string()),
                ("actuator", actuator.to_string()),
                ("kind", kind.to_string()),
            ])
            .inc_by(n);
    }

    /// Observes one reconciliation pass of `node`'s driver over `actuator`, and makes its
    /// drift series exist.
    pub fn on_reconcile_pass(&self, node: &str, actuator: &str, seconds: f64) {
        for kind in DRIFT_KINDS {
            self.on_drift(node, actuator, kind, 0);
        }
        self.reconcile
            .get_or_create(&vec![
                ("node", node.to_string()),
                ("actuator", actuator.to_string()),
            ])
            .observe(seconds);
    }

    fn observe(&self, stage: &str, seconds: f64) {
        self.closed_loop
            .get_or_create(&vec![("stage", stage.to_string())])
            .observe(seconds);
    }

    /// A registry with these metrics and the counters of the node behind `vo`.
    pub fn registry(&self, vo: NodeHandle) -> Registry {
        let mut r = Registry::default();
        r.register(
            "vespa_vo_alerts",
            "Alerts processed at the VO, by body kind.",
            self.alerts_by_kind.clone(),
        );
        r.register(
            "vespa_policy_alerts",
            "Alerts the VO's policy raised of its own, by kind (did_not_take: a verification failed or an actuator refused; blind_spot: a sensor lost events or filled a map; ...).",
            self.policy_alerts.clone(),
        );
        for kind in POLICY_ALERT_KINDS {
            let _ = self
                .policy_alerts
                .get_or_create(&vec![("kind", policy_alert_kind(kind).to_string())]);
        }
        r.register(
            "vespa_closed_loop_seconds",
            "Closed-loop latency per stage: kernel_to_vo (alert timestamp to VO processing), vo_to_actuator_ack (decision to actuator acknowledgement)",
            self.closed_loop.clone(),
        );
        // Both stages exist from the start, so a dashboard sees a zero series, not a gap.
        for stage in [STAGE_KERNEL_TO_VO, STAGE_VO_TO_ACTUATOR_ACK] {
            let _ = self
                .closed_loop
                .get_or_create(&vec![("stage", stage.to_string())]);
        }
        self.outputs.register_in(&mut r);
        self.register_process(&mut r);
        self.nodes.add(vo);
        r
    }

    /// A registry for a process that runs no VO (HOs alone, `run --metrics`): every policy
    /// driver's reconciliation (each HO's) and the nodes' spools.
    pub fn process_registry(&self) -> Registry {
        let mut r = Registry::default();
        self.register_process(&mut r);
        r
    }

    /// What every orchestrator process has, whether or not it runs the VO.
    fn register_process(&self, r: &mut Registry) {
        r.register(
            "vespa_decisions_drift",
            "Differences reconciliation found between what the policy has in place and what an actuator holds, by reconciling node (the VO or an HO), actuator and kind (missing: re-applied; stray: removed; adopted: recorded in the agent's book again).",
            self.drift.clone(),
        );
        r.register(
            "vespa_reconcile_pass_seconds",
            "Time of one reconciliation pass over one actuator (listing, comparison, corrections).",
            self.reconcile.clone(),
        );
        r.register_collector(Box::new(self.spools.clone()));
        r.register_collector(Box::new(self.nodes.clone()));
    }
}

/// Renders one scrape as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a collector.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

/// Serves `registry` at `/metrics` on `listener` until `stop` (`run --metrics`, for a process
/// without the VO's HTTP API).
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::response::IntoResponse as _;
    let registry = std::sync::Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    render(&registry),
                )
                    .into_response()
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

/// Reads the [`vespa_node::Stats`] of the process's nodes (the VO's, its HOs') at scrape
/// time, one series per node under each family.
#[derive(Clone, Default)]
struct NodeCollector(Arc<Mutex<Vec<NodeHandle>>>);

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.nodes().iter().map(|h| h.name().to_string()).collect();
        f.debug_tuple("NodeCollector").field(&names).finish()
    }
}

impl NodeCollector {
    fn nodes(&self) -> Vec<NodeHandle> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Adds `node` unless a node of that name is there.
    fn add(&self, node: NodeHandle) {
        let mut nodes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !nodes.iter().any(|n| n.name() == node.name()) {
            nodes.push(node);
        }
    }
}

/// One family, a series per (labels, value).
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    ty: MetricType,
    series: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut desc = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, metric) in series {
        metric.encode(desc.encode_family(&labels)?)?;
    }
    Ok(())
}

/// What each node counter reads from a node's stats: (name, help, value).
type NodeRead = (&'static str, &'static str, fn(&vespa_node::Stats) -> u64);

const NODE_COUNTERS: [NodeRead; 10] = [
    (
        "vespa_node_alerts_processed",
        "New alerts processed at the root (the VO).",
        |s| s.alerts_processed,
    ),
    (
        "vespa_node_alerts_received",
        "Alerts received from children, duplicates included.",
        |s| s.alerts_received,
    ),
    (
        "vespa_node_alerts_raised",
        "Alerts this node raised itself.",
        |s| s.alerts_raised,
    ),
    (
        "vespa_node_duplicates_dropped",
        "Alerts received again and dropped (at-least-once delivery).",
        |s| s.duplicates_dropped,
    ),
    (
        "vespa_node_acks_received",
        "Acks received from the master.",
        |s| s.acks_received,
    ),
    (
        "vespa_node_queue_overflow",
        "Alerts lost because the outgoing queue was full.",
        |s| s.queue_overflow,
    ),
    (
        "vespa_node_oversized",
        "Alerts whose body this node replaced by an Oversized note (too large to send).",
        |s| s.oversized,
    ),
    (
        "vespa_node_reconnects",
        "Connections to the master re-established.",
        |s| s.reconnects,
    ),
    (
        "vespa_node_connection_errors",
        "Connections that ended with an error.",
        |s| s.connection_errors,
    ),
    ("vespa_node_calls_served", "Calls answered.", |s| {
        s.calls_served
    }),
];

const NODE_GAUGES: [NodeRead; 2] = [
    ("vespa_node_children", "Registered children.", |s| {
        s.children.len() as u64
    }),
    (
        "vespa_node_queue_length",
        "Alerts waiting for the master's ack.",
        |s| s.queue_len as u64,
    ),
];

/// A node's journal (the VO keeps one): (name, help, value).
type JournalRead = (
    &'static str,
    &'static str,
    fn(&vespa_node::JournalStats) -> u64,
);

const JOURNAL_GAUGES: [JournalRead; 3] = [
    (
        "vespa_journal_writable",
        "1 while the journal writes, 0 while it cannot (alerts are then neither processed nor acknowledged).",
        |j| u64::from(j.writable),
    ),
    (
        "vespa_journal_pending",
        "Alerts waiting to be written to the journal.",
        |j| j.pending as u64,
    ),
    ("vespa_journal_bytes", "Size of the journal file.", |j| {
        j.bytes
    }),
];

fn gauge(v: u64) -> ConstGauge {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats: Vec<vespa_node::Stats> = self.nodes().iter().map(NodeHandle::stats).collect();
        if stats.is_empty() {
            return Ok(());
        }
        let label = |s: &vespa_node::Stats| -> Labels { vec![("node", s.node.clone())] };
        for (name, help, read) in NODE_COUNTERS {
            let series = stats.iter().map(|s| (label(s), ConstCounter::new(read(s))));
            family(&mut enc, (name, help), MetricType::Counter, series)?;
        }
        for (name, help, read) in NODE_GAUGES {
            let series = stats.iter().map(|s| (label(s), gauge(read(s))));
            family(&mut enc, (name, help), MetricType::Gauge, series)?;
        }
        let journals: Vec<(Labels, &vespa_node::JournalStats)> = stats
            .iter()
            .filter_map(|s| Some((label(s), s.journal.as_ref()?)))
            .collect();
        if journals.is_empty() {
            return Ok(());
        }
        family(
            &mut enc,
            (
                "vespa_journal_failures",
                "Failed journal writes (each attempt), compactions and alerts that could not be encoded.",
            ),
            MetricType::Counter,
            journals
                .iter()
                .map(|(l, j)| (l.clone(), ConstCounter::new(j.failures))),
        )?;
        for (name, help, read) in JOURNAL_GAUGES {
            let series = journals.iter().map(|(l, j)| (l.clone(), gauge(read(j))));
            family(&mut enc, (name, help), MetricType::Gauge, series)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use vespa_node::{Hooks, Node, NodeSpec, Role, Security};

    use super::*;

    fn vo(journal: Option<std::path::PathBuf>) -> Node {
        let mut spec = NodeSpec::new(
            "VO",
            Role::Vo,
            None,
            Security::Psk(vespa_proto::Psk::random()),
        );
        spec.journal = journal;
        Node::new(spec, Hooks::default()).expect("VO")
    }

    #[test]
    fn the_journal_is_in_the_metrics_of_a_vo_that_keeps_one() {
        let dir = tempfile::tempdir().expect("dir");
        let with = vo(Some(dir.path().join("vo.journal")));
        let text = render(&Metrics::default().registry(with.handle()));
        for line in [
            "vespa_journal_writable{node=\"VO\"} 1",
            "vespa_journal_failures_total{node=\"VO\"} 0",
            "vespa_journal_pending{node=\"VO\"} 0",
            "vespa_journal_bytes{node=\"VO\"} 16",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        let without = render(&Metrics::default().registry(vo(None).handle()));
        assert!(!without.contains("vespa_journal"), "{without}");
    }

    #[test]
    fn the_policys_alerts_are_counted_by_kind_from_zero() {
        let m = Metrics::default();
        let node = vo(None);
        let before = render(&m.registry(node.handle()));
        for kind in POLICY_ALERT_KINDS {
            let line = format!(
                "vespa_policy_alerts_total{{kind=\"{}\"}} 0",
                policy_alert_kind(kind)
            );
            assert!(before.lines().any(|l| l == line), "{line} in:\n{before}");
        }
        m.on_policy_alert(AlertKind::DidNotTake);
        m.on_policy_alert(AlertKind::DidNotTake);
        m.on_policy_alert(AlertKind::BlindSpot);
        let after = render(&m.registry(node.handle()));
        for line in [
            "vespa_policy_alerts_total{kind=\"did_not_take\"} 2",
            "vespa_policy_alerts_total{kind=\"blind_spot\"} 1",
            "vespa_policy_alerts_total{kind=\"cap_reached\"} 0",
        ] {
            assert!(after.lines().any(|l| l == line), "{line} in:\n{after}");
        }
    }

    /// An HO's policy alerts reach the VO as typed bodies and are counted there by kind; the
    /// VO's own (`at: None`, its driver counted them) and kinds it does not know are not.
    #[test]
    fn an_hos_policy_alerts_are_counted_at_the_vo() {
        let m = Metrics::default();
        let node = vo(None);
        let alert = |kind: &str, at: Option<&str>| Alert {
            origin: at.unwrap_or("VO").into(),
            seq: 1,
            path: vec![],
            timestamp_ns: 0,
            body: AlertBody::Policy {
                kind: kind.into(),
                at: at.map(Into::into),
                text: "x".into(),
            },
        };
        m.on_alert(&alert("did_not_take", Some("HO_PH")));
        m.on_alert(&alert("cap_reached", Some("HO_VM")));
        m.on_alert(&alert("did_not_take", None));
        m.on_alert(&alert("made_up", Some("HO_PH")));
        let text = render(&m.registry(node.handle()));
        for line in [
            "vespa_policy_alerts_total{kind=\"did_not_take\"} 1",
            "vespa_policy_alerts_total{kind=\"cap_reached\"} 1",
            "vespa_vo_alerts_total{kind=\"policy\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(!text.contains("made_up"), "{text}");
    }
}
