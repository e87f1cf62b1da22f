//! The standalone counters exporter: Prometheus/OpenMetrics text at `/metrics`.
//!
//! Names follow node_exporter with a `vespa_` prefix (`vespa_network_receive_bytes_total`
//! and friends); per-address series are capped at the top N addresses plus one `other`
//! series holding the rest, so a scan from a /16 cannot blow up the scraper's memory.

use std::{future::Future, net::IpAddr, sync::Arc};

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

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
    let mut out: Vec<(Labels, u64)> = items
        .iter()
        .take(n)
        .map(|i| (vec![(key, addr(i).to_string())], value(i)))
        .collect();
    if items.len() > n {
        out.push((
            vec![(key, OTHER.to_string())],
            items[n..].iter().map(&value).sum(),
        ));
    }
    out
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
            "Runs of each kernel program.",
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
