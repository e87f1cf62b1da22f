//! The standalone counters exporter: Prometheus/OpenMetrics text at `/metrics`.
//!
//! Names follow node_exporter with a `vespa_` prefix (`vespa_network_receive_bytes_total`
//! and friends); per-address series are capped at the top N addresses plus one `other`
//! series holding the rest, so a scan from a /16 cannot blow up the scraper's memory.
//!
//! With the eBPF sensors the kernel firewall is exported too (`vespa_firewall_*`): its totals
//! as counters, read from the firewall's tables, which outlive the agent when pinned, so they
//! continue across restarts (Prometheus sees no reset); its table fill as gauges; and the
//! drop counters of the busiest blocks (top N by packets, the rest as `target="other"`).

use std::{future::Future, net::IpAddr, sync::Arc};

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use vespa_agents::firewall::{BlockInfo, FirewallBackend as _, FirewallStats};

use crate::Sensors;

/// Label value of the series that aggregates every address beyond the top N.
pub const OTHER: &str = "other";

/// The VM a host device belongs to (from the libvirt agent's tap map), if any.
pub type VmLookup = std::sync::Arc<dyn Fn(&str) -> Option<VmLabel> + Send + Sync>;

/// A VM's name and UUID, as labels of its tap device's series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmLabel {
    pub name: String,
    pub uuid: String,
}

struct SensorCollector {
    sensors: Sensors,
    top_n: usize,
    vm_of: Option<VmLookup>,
}

impl std::fmt::Debug for SensorCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SensorCollector")
            .field("sensors", &self.sensors)
            .field("top_n", &self.top_n)
            .finish()
    }
}

impl std::fmt::Debug for Sensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sensors")
            .field("mode", &self.mode())
            .finish()
    }
}

type Labels = Vec<(&'static str, String)>;

/// Labelled values of one metric family.
type Series = Vec<(Labels, u64)>;

fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    series: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut desc = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, metric) in series {
        metric.encode(desc.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    family(
        enc,
        name,
        help,
        MetricType::Counter,
        series.into_iter().map(|(l, v)| (l, ConstCounter::new(v))),
    )
}

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, i64)>,
) -> Result<(), std::fmt::Error> {
    family(
        enc,
        name,
        help,
        MetricType::Gauge,
        series.into_iter().map(|(l, v)| (l, ConstGauge::new(v))),
    )
}

/// The first `n` items as labelled series, the rest summed into one `other` series.
pub fn top_n_with_other<T>(
    items: &[T],
    n: usize,
    key: &'static str,
    addr: impl Fn(&T) -> IpAddr,
    value: impl Fn(&T) -> u64,
) -> Vec<(Labels, u64)> {
    top_n_labelled(
        items,
        n,
        |i| vec![(key, addr(i).to_string())],
        vec![(key, OTHER.to_string())],
        value,
    )
}

/// The first `n` items as series labelled by `labels`, the rest summed into one series
/// labelled `other`.
fn top_n_labelled<T>(
    items: &[T],
    n: usize,
    labels: impl Fn(&T) -> Labels,
    other: Labels,
    value: impl Fn(&T) -> u64,
) -> Vec<(Labels, u64)> {
    let mut out: Vec<(Labels, u64)> = items
        .iter()
        .take(n)
        .map(|i| (labels(i), value(i)))
        .collect();
    if items.len() > n {
        out.push((other, items[n..].iter().map(&value).sum()));
    }
    out
}

/// The per-block series of `blocks`: packets and bytes dropped by the `n` blocks that dropped
/// the most packets, labelled by target and whether the reflex placed it, and by the rest
/// summed as `target="other"`.
fn block_series(blocks: &[BlockInfo], n: usize) -> (Series, Series) {
    let mut busiest: Vec<&BlockInfo> = blocks.iter().collect();
    // Busiest first; equal counts in the order the kernel placed them, so the series chosen
    // do not flap between scrapes.
    busiest.sort_by(|a, b| {
        b.packets
            .cmp(&a.packets)
            .then(a.created_ns.cmp(&b.created_ns))
    });
    let labels = |b: &&BlockInfo| {
        vec![
            ("target", b.target.to_string()),
            ("reflex", b.reflex.to_string()),
        ]
    };
    let other = || vec![("target", OTHER.to_string())];
    (
        top_n_labelled(&busiest, n, labels, other(), |b| b.packets),
        top_n_labelled(&busiest, n, labels, other(), |b| b.bytes),
    )
}

/// The kernel firewall's series: totals (counters that continue across agent restarts when
/// the tables are pinned), table fill, and the busiest blocks' drop counters.
fn firewall(
    enc: &mut DescriptorEncoder,
    stats: &FirewallStats,
    blocks: &[BlockInfo],
    top_n: usize,
) -> Result<(), std::fmt::Error> {
    let totals: [(&str, &str, u64); 9] = [
        ("vespa_firewall_dropped_packets", "Packets dropped by the firewall's blocks (tc and XDP), since its tables were created (pinned tables outlive the agent).", stats.dropped_packets),
        ("vespa_firewall_dropped_bytes", "Bytes dropped by the firewall's blocks (tc and XDP), since its tables were created.", stats.dropped_bytes),
        ("vespa_firewall_xdp_dropped_packets", "Packets dropped by blocks at XDP (also counted in vespa_firewall_dropped_packets_total).", stats.xdp_dropped_packets),
        ("vespa_firewall_throttled_packets", "Packets dropped by source throttles (the kernel's policer at tc ingress).", stats.throttled_packets),
        ("vespa_firewall_throttled_bytes", "Bytes dropped by source throttles.", stats.throttled_bytes),
        ("vespa_firewall_protected_passed_packets", "Packets of protected sources that matched a block and passed.", stats.protected_passed),
        ("vespa_firewall_reflex_placed", "Blocks the kernel's reflex placed.", stats.reflex_placed),
        ("vespa_firewall_reflex_protected", "Reflex blocks not placed because the source is protected.", stats.reflex_protected),
        ("vespa_firewall_reflex_capped", "Reflex blocks not placed because the reflex's cap was reached or the table was full.", stats.reflex_capped),
    ];
    for (name, help, v) in totals {
        counters(enc, name, help, [(vec![], v)])?;
    }
    let fill: [(&str, &str, u64); 4] = [
        (
            "vespa_firewall_blocks",
            "Blocks in the kernel (expired ones until reaped, within a second).",
            stats.blocks,
        ),
        (
            "vespa_firewall_block_capacity",
            "Address and prefix blocks the kernel table holds at most (--max-blocks).",
            stats.block_capacity,
        ),
        (
            "vespa_firewall_throttles",
            "Throttles in force (sources and devices).",
            stats.throttles,
        ),
        (
            "vespa_firewall_allowlist_entries",
            "Protected sources (the topology's and the operator's).",
            stats.allowed,
        ),
    ];
    for (name, help, v) in fill {
        gauges(enc, name, help, [(vec![], v as i64)])?;
    }
    let (packets, bytes) = block_series(blocks, top_n);
    counters(
        enc,
        "vespa_firewall_block_dropped_packets",
        "Packets dropped per block (top N by packets, labelled by target and whether the kernel's reflex placed it; the rest as target=\"other\").",
        packets,
    )?;
    counters(
        enc,
        "vespa_firewall_block_dropped_bytes",
        "Bytes dropped per block (the same blocks as vespa_firewall_block_dropped_packets_total).",
        bytes,
    )
}

impl Collector for SensorCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = match self.sensors.snapshot() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "scrape: reading the sensors failed");
                return gauges(
                    &mut enc,
                    "vespa_sensor_up",
                    "1 when the sensors could be read.",
                    [(vec![], 0)],
                );
            }
        };
        gauges(
            &mut enc,
            "vespa_sensor_up",
            "1 when the sensors could be read.",
            [(vec![], 1)],
        )?;
        let dev = |i: &crate::InterfaceCounters| vec![("device", i.name.clone())];
        let ifs = &snap.interfaces;
        let macs = self.sensors.interface_info().unwrap_or_default();
        counters(
            &mut enc,
            "vespa_network_receive_bytes",
            "Bytes received per interface.",
            ifs.iter().map(|i| (dev(i), i.rx_bytes)),
        )?;
        counters(
            &mut enc,
            "vespa_network_receive_packets",
            "Packets received per interface.",
            ifs.iter().map(|i| (dev(i), i.rx_packets)),
        )?;
        counters(
            &mut enc,
            "vespa_network_transmit_bytes",
            "Bytes sent per interface.",
            ifs.iter().map(|i| (dev(i), i.tx_bytes)),
        )?;
        counters(
            &mut enc,
            "vespa_network_transmit_packets",
            "Packets sent per interface.",
            ifs.iter().map(|i| (dev(i), i.tx_packets)),
        )?;
        gauges(
            &mut enc,
            "vespa_network_info",
            "Interface metadata (always 1); a VM's tap device also carries vm and vm_uuid.",
            ifs.iter().map(|i| {
                let mac = macs
                    .iter()
                    .find(|m| m.ifindex == i.ifindex)
                    .map(|m| m.mac.clone())
                    .unwrap_or_default();
                let mut labels = vec![
                    ("device", i.name.clone()),
                    ("address", mac),
                    ("ifindex", i.ifindex.to_string()),
                ];
                // A VM's tap device: join on `device` to get any counter per VM.
                if let Some(vm) = self.vm_of.as_ref().and_then(|f| f(&i.name)) {
                    labels.push(("vm", vm.name));
                    labels.push(("vm_uuid", vm.uuid));
                }
                (labels, 1)
            }),
        )?;

        let conns = &snap.connections;
        let n = self.top_n;
        gauges(
            &mut enc,
            "vespa_tcp_connections_established",
            "Established TCP connections per remote address (top N by count, the rest as remote=\"other\").",
            top_n_with_other(conns, n, "remote", |c| c.addr, |c| c.established).into_iter().map(|(l, v)| (l, v as i64)),
        )?;
        if snap.health.mode == "ebpf" {
            counters(
                &mut enc,
                "vespa_tcp_connections_opened",
                "TCP connections opened per remote address since the tracker started.",
                top_n_with_other(conns, n, "remote", |c| c.addr, |c| c.opened.unwrap_or(0)),
            )?;
            counters(
                &mut enc,
                "vespa_tcp_connections_closed",
                "TCP connections closed per remote address since the tracker started.",
                top_n_with_other(conns, n, "remote", |c| c.addr, |c| c.closed.unwrap_or(0)),
            )?;
            counters(&mut enc, "vespa_tcp_syn_received", "SYN-without-ACK packets received per source address (top N, the rest as source=\"other\").", top_n_with_other(&snap.syn_sources, n, "source", |s| s.addr, |s| s.syns))?;
        } else {
            gauges(
                &mut enc,
                "vespa_tcp_half_open",
                "Sockets in SYN_RECV per source address (/proc fallback).",
                top_n_with_other(&snap.syn_sources, n, "source", |s| s.addr, |s| s.syns)
                    .into_iter()
                    .map(|(l, v)| (l, v as i64)),
            )?;
        }
        gauges(
            &mut enc,
            "vespa_tcp_remote_addresses",
            "Remote addresses currently tracked.",
            [(vec![], conns.len() as i64)],
        )?;

        let h = &snap.health;
        let netns = h
            .tracked_netns
            .map_or_else(|| "all".to_string(), |n| n.to_string());
        gauges(&mut enc, "vespa_sensor_info", "Sensor back end in use (ebpf or proc) and the network namespace whose connections are counted (inode number, or all).", [(vec![("mode", h.mode.clone()), ("netns", netns)], 1)])?;
        counters(
            &mut enc,
            "vespa_ebpf_events_lost",
            "Ring-buffer events lost because the buffer was full.",
            [(vec![], h.events_lost)],
        )?;
        counters(
            &mut enc,
            "vespa_ebpf_map_update_failures",
            "Kernel map updates that failed.",
            [(vec![], h.map_update_failures)],
        )?;
        counters(
            &mut enc,
            "vespa_ebpf_untracked_closes",
            "Connections closed whose opening predates the tracker.",
            [(vec![], h.untracked_closes)],
        )?;
        counters(
            &mut enc,
            "vespa_ebpf_program_runs",
            "Runs of each kernel program (the tracker's: the transitions into or out of ESTABLISHED it looked at).",
            h.program_runs
                .iter()
                .map(|(p, v)| (vec![("program", p.clone())], *v)),
        )?;
        gauges(
            &mut enc,
            "vespa_ebpf_map_entries",
            "Entries in use per kernel map.",
            h.map_fill
                .iter()
                .map(|(m, f)| (vec![("map", m.clone())], f.used as i64)),
        )?;
        gauges(
            &mut enc,
            "vespa_ebpf_map_capacity",
            "Capacity of each kernel map.",
            h.map_fill
                .iter()
                .map(|(m, f)| (vec![("map", m.clone())], f.capacity as i64)),
        )?;
        if h.mode == "ebpf" {
            let read = self
                .sensors
                .firewall()
                .map_err(|e| e.to_string())
                .and_then(|fw| {
                    // The blocks before the totals: a drop counted in its block before the
                    // first read is in the totals by the second, so no block shows more
                    // drops than the total.
                    let blocks = fw.blocks()?;
                    Ok((fw.stats()?, blocks))
                });
            match read {
                Ok((stats, blocks)) => firewall(&mut enc, &stats, &blocks, self.top_n)?,
                Err(e) => tracing::warn!(error = %e, "scrape: reading the firewall failed"),
            }
        }
        Ok(())
    }
}

/// A registry that reads `sensors` on every scrape.
pub fn registry(sensors: Sensors, top_n: usize) -> Registry {
    registry_with_vms(sensors, top_n, None)
}

/// As [`registry`], labelling VM tap devices with their VM through `vm_of`.
pub fn registry_with_vms(sensors: Sensors, top_n: usize, vm_of: Option<VmLookup>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(SensorCollector {
        sensors,
        top_n,
        vm_of,
    }));
    r
}

/// Renders one scrape as text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a collector.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

async fn metrics(State(reg): State<Arc<Registry>>) -> impl IntoResponse {
    let body = tokio::task::spawn_blocking(move || render(&reg))
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn index() -> &'static str {
    "VESPA agent exporter. Metrics at /metrics.\n"
}

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .with_state(Arc::new(registry));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use vespa_proto::verbs::{Target, Word as _};

    fn block(target: &str, packets: u64, reflex: bool, created_ns: u64) -> BlockInfo {
        BlockInfo {
            target: Target::parse_word(target).expect("target"),
            expires_in_ms: None,
            reflex,
            packets,
            bytes: packets * 100,
            first_drop_after_ns: None,
            created_ns,
        }
    }

    /// A collector of fixed firewall readings.
    #[derive(Debug)]
    struct Fixed(FirewallStats, Vec<BlockInfo>, usize);

    impl Collector for Fixed {
        fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            firewall(&mut enc, &self.0, &self.1, self.2)
        }
    }

    fn scrape(stats: FirewallStats, blocks: Vec<BlockInfo>, top_n: usize) -> String {
        let mut r = Registry::default();
        r.register_collector(Box::new(Fixed(stats, blocks, top_n)));
        render(&r)
    }

    #[test]
    fn the_busiest_blocks_are_series_and_the_rest_is_other() {
        let blocks = vec![
            block("10.0.0.1", 5, false, 1),
            block("10.0.0.0/24", 70, true, 2),
            block("52:54:00:00:00:07", 5, false, 3),
            block("2001:db8::/64", 40, false, 4),
        ];
        let (packets, bytes) = block_series(&blocks, 2);
        let l = |t: &str, r: &str| vec![("target", t.to_string()), ("reflex", r.to_string())];
        assert_eq!(
            packets,
            [
                (l("10.0.0.0/24", "true"), 70),
                (l("2001:db8::/64", "false"), 40),
                (vec![("target", OTHER.to_string())], 10),
            ]
        );
        assert_eq!(bytes[0].1, 7000);
        assert_eq!(bytes[2].1, 1000, "the same blocks in both families");
        // Equal counts keep the kernel's order: the older block first.
        let (packets, _) = block_series(&blocks, 3);
        assert_eq!(packets[2].0, l("10.0.0.1", "false"));
        assert_eq!(packets[3].1, 5);
        // No `other` when every block has its series.
        assert_eq!(block_series(&blocks, 4).0.len(), 4);
        assert!(block_series(&[], 20).0.is_empty());
    }

    #[test]
    fn the_firewall_totals_are_counters_and_its_fill_gauges() {
        let stats = FirewallStats {
            dropped_packets: 1234,
            dropped_bytes: 98765,
            xdp_dropped_packets: 34,
            throttled_packets: 7,
            throttled_bytes: 700,
            protected_passed: 3,
            reflex_placed: 2,
            reflex_protected: 1,
            reflex_capped: 9,
            blocks: 3,
            block_capacity: 65536,
            throttles: 1,
            allowed: 4,
            ..FirewallStats::default()
        };
        let blocks = vec![
            block("10.0.0.1", 1000, false, 1),
            block("10.0.0.2", 200, true, 2),
            block("10.0.0.3", 34, false, 3),
        ];
        let text = scrape(stats, blocks, 1);
        for line in [
            "# TYPE vespa_firewall_dropped_packets counter",
            "vespa_firewall_dropped_packets_total 1234",
            "vespa_firewall_dropped_bytes_total 98765",
            "vespa_firewall_xdp_dropped_packets_total 34",
            "vespa_firewall_throttled_packets_total 7",
            "vespa_firewall_throttled_bytes_total 700",
            "vespa_firewall_protected_passed_packets_total 3",
            "vespa_firewall_reflex_placed_total 2",
            "vespa_firewall_reflex_protected_total 1",
            "vespa_firewall_reflex_capped_total 9",
            "# TYPE vespa_firewall_blocks gauge",
            "vespa_firewall_blocks 3",
            "vespa_firewall_block_capacity 65536",
            "vespa_firewall_throttles 1",
            "vespa_firewall_allowlist_entries 4",
            "# TYPE vespa_firewall_block_dropped_packets counter",
            "vespa_firewall_block_dropped_packets_total{target=\"10.0.0.1\",reflex=\"false\"} 1000",
            "vespa_firewall_block_dropped_packets_total{target=\"other\"} 234",
            "vespa_firewall_block_dropped_bytes_total{target=\"10.0.0.1\",reflex=\"false\"} 100000",
            "vespa_firewall_block_dropped_bytes_total{target=\"other\"} 23400",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from:\n{text}"
            );
        }
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("vespa_firewall_block_dropped_packets_total"))
                .count(),
            2,
            "top 1 and other"
        );
    }
}
