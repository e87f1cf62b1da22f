//! The 2014 sensor agents (bandwidth, connections) on top of the host sensors.
//!
//! The sensors live in `vespa-agent` (eBPF with a /proc fallback); these agents reach them
//! through [`SensorSource`], which `vespa-agent` implements over its `Sensors` handle, so
//! this crate never links the eBPF loader.
//!
//! Verbs: [`SensorVerb`] (`interfaces`, `recv_bytes [iface]`, `trans_bytes [iface]`,
//! `get_mac [iface]`, `connections`, `mac_of <ip>`, `connections_of <ip>`). Pushed alerts, as the 2014 `launch()` loops did,
//! every `sample_interval`: bandwidth agents send one `Bandwidth` alert per interface,
//! connections agents one `Connections` alert; connections agents also forward the sensors'
//! threshold events (`ConnThreshold`, `SynThreshold`) the moment they happen.
//!
//! Everything here is derived from watched traffic, so it is bounded: a `Connections` sample
//! names the [`SAMPLE_TOP`] busiest remotes and sums up the rest, and remotes that hold no
//! connection any more (the kernel table remembers them until it evicts them) are left out
//! of the sample and of the `connections` verb's answer. However many addresses an attacker
//! rotates through, the sample stays a few kilobytes and the threshold events, one small
//! alert per remote, keep flowing behind it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use vespa_proto::AlertBody;

use vespa_node::{Agent, AgentKind, NodeHandle, VerbResult};
use vespa_proto::verbs::SensorVerb;

/// Byte counters of one interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IfaceBytes {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received and sent (0 where the source does not count packets).
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// Established TCP connections with one remote address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteCount {
    /// The remote address.
    pub addr: IpAddr,
    /// Established connections.
    pub established: u64,
}

/// A threshold crossing, as the sensors saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdAlert {
    /// What crossed.
    pub body: AlertBody,
    /// When the sensors saw it (Unix nanoseconds; for the eBPF sensors, the kernel event's
    /// own time), or `None`: the alert is stamped when raised.
    pub at_unix_ns: Option<u64>,
}

/// What the sensor agents need from the host sensors. Methods may read the kernel (maps,
/// netlink, /proc) and are called from `spawn_blocking`.
pub trait SensorSource: Send + Sync + 'static {
    /// Counters of every monitored interface.
    fn interfaces(&self) -> Result<Vec<IfaceBytes>, String>;
    /// The hardware address of `iface`.
    fn mac(&self, iface: &str) -> Result<String, String>;
    /// Established connections per remote address, busiest first.
    fn connections(&self) -> Result<Vec<RemoteCount>, String>;
    /// Established connections with `addr`.
    fn connections_of(&self, addr: IpAddr) -> Result<RemoteCount, String>;
    /// Threshold crossings from now on, already as alert bodies. Called once per agent.
    fn threshold_alerts(&self) -> mpsc::Receiver<ThresholdAlert>;
    /// The MAC address of a neighbour (ARP/NDP table), e.g. of a remote that crossed a
    /// threshold: the address an SDN block needs. Default: unknown.
    fn mac_of(&self, ip: IpAddr) -> Result<Option<String>, String> {
        let _ = ip;
        Ok(None)
    }
    /// The VM an interface belongs to (a VM's tap device), when known: the bandwidth agent
    /// names it in its samples, so the VO can chart traffic per VM. Default: not known.
    fn vm_of(&self, iface: &str) -> Option<String> {
        let _ = iface;
        None
    }
    /// The sensors' own health: (events lost, map update failures, maps at capacity).
    /// Default: not known.
    fn health(&self) -> Option<(u64, u64, u64)> {
        None
    }
}

/// Remotes a `Connections` sample names; the rest are summed up (about 5 KiB of sample).
pub const SAMPLE_TOP: usize = 256;

/// A `Connections` sample of `remotes`: the `top` busiest with at least one established
/// connection, busiest first (ties by address, so a sample is deterministic), and totals for
/// the other remotes that hold connections.
pub fn connections_sample(remotes: Vec<RemoteCount>, top: usize) -> AlertBody {
    let mut live = held(remotes);
    live.sort_unstable_by(|a, b| b.established.cmp(&a.established).then(a.addr.cmp(&b.addr)));
    let rest = live.split_off(top.min(live.len()));
    AlertBody::Connections {
        per_remote: live.into_iter().map(|r| (r.addr, r.established)).collect(),
        rest_remotes: rest.len() as u64,
        rest_established: rest.iter().map(|r| r.established).sum(),
    }
}

/// `get_mac` without an interface on an agent that monitors every interface: the MAC of the
/// first monitored interface that has one, in the order `interfaces` lists them (loopback's
/// is all zeros, so a host's `lo` never answers for it), as 2014 answered for its one
/// interface.
fn first_mac(src: &dyn SensorSource) -> Result<String, String> {
    let all = src.interfaces()?;
    for i in &all {
        match src.mac(&i.name) {
            Ok(mac) if mac.split(':').any(|b| b != "00") => return Ok(mac),
            _ => {}
        }
    }
    Err(format!(
        "no monitored interface has a hardware address (monitored: {}); usage: get_mac <iface>",
        all.iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The remotes that hold at least one connection.
fn held(remotes: Vec<RemoteCount>) -> Vec<RemoteCount> {
    remotes.into_iter().filter(|r| r.established > 0).collect()
}

/// A bandwidth or connections agent.
pub struct SensorAgent {
    kind: AgentKind,
    source: Arc<dyn SensorSource>,
    /// Interfaces sampled and the default of `recv_bytes`/`get_mac` (empty: every one).
    interfaces: Vec<String>,
    sample_interval: Duration,
}

impl SensorAgent {
    /// `kind` must be [`AgentKind::Bandwidth`] or [`AgentKind::Connections`].
    pub fn new(
        kind: AgentKind,
        source: Arc<dyn SensorSource>,
        interfaces: Vec<String>,
        sample_interval: Duration,
    ) -> SensorAgent {
        SensorAgent {
            kind,
            source,
            interfaces,
            sample_interval,
        }
    }

    fn selected(&self, all: Vec<IfaceBytes>) -> Vec<IfaceBytes> {
        if self.interfaces.is_empty() {
            all
        } else {
            all.into_iter()
                .filter(|i| self.interfaces.contains(&i.name))
                .collect()
        }
    }
}

/// Runs blocking sensor work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("sensor task failed: {e}"))?
}

fn json<T: Serialize>(v: &T) -> VerbResult {
    serde_json::to_string(v).map_err(|e| e.to_string())
}

impl SensorAgent {
    /// `recv_bytes`/`trans_bytes`: one interface's number, or every selected interface as
    /// JSON.
    async fn bytes(&self, iface: Option<String>, rx: bool) -> VerbResult {
        let src = self.source.clone();
        let all = blocking(move || src.interfaces()).await?;
        let pick = |i: &IfaceBytes| if rx { i.rx_bytes } else { i.tx_bytes };
        match iface {
            Some(name) => all
                .iter()
                .find(|i| i.name == name)
                .map(|i| pick(i).to_string())
                .ok_or_else(|| format!("unknown interface {name:?}")),
            None => {
                let map: std::collections::BTreeMap<&str, u64> = all
                    .iter()
                    .filter(|i| self.interfaces.is_empty() || self.interfaces.contains(&i.name))
                    .map(|i| (i.name.as_str(), pick(i)))
                    .collect();
                json(&map)
            }
        }
    }
}

impl Agent for SensorAgent {
    type Verb = SensorVerb;

    async fn call(&self, verb: SensorVerb) -> VerbResult {
        let src = self.source.clone();
        match verb {
            SensorVerb::Interfaces {} => json(&blocking(move || src.interfaces()).await?),
            SensorVerb::RecvBytes { iface } => self.bytes(iface, true).await,
            SensorVerb::TransBytes { iface } => self.bytes(iface, false).await,
            SensorVerb::GetMac { iface } => {
                match iface.or_else(|| self.interfaces.first().cloned()) {
                    Some(name) => blocking(move || src.mac(&name)).await,
                    None => blocking(move || first_mac(&*src)).await,
                }
            }
            SensorVerb::Connections {} => json(&held(blocking(move || src.connections()).await?)),
            SensorVerb::MacOf { ip } => {
                Ok(blocking(move || src.mac_of(ip)).await?.unwrap_or_default())
            }
            SensorVerb::ConnectionsOf { ip } => {
                json(&blocking(move || src.connections_of(ip)).await?)
            }
        }
    }

    fn start(&self, node: NodeHandle) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        if !self.sample_interval.is_zero() {
            let (kind, src, node2, every) = (
                self.kind,
                self.source.clone(),
                node.clone(),
                self.sample_interval,
            );
            let ifaces = self.interfaces.clone();
            let me = SensorAgent {
                kind,
                source: src.clone(),
                interfaces: ifaces,
                sample_interval: every,
            };
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut last_health = (0, 0, 0);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = node2.stopping() => return,
                    }
                    me.sample(&node2).await;
                    if kind == AgentKind::Connections {
                        me.report_health(&node2, &mut last_health).await;
                    }
                }
            }));
        }
        if self.kind == AgentKind::Connections {
            let mut rx = self.source.threshold_alerts();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        ev = rx.recv() => match ev {
                            Some(ThresholdAlert { body, at_unix_ns: Some(at) }) => { let _ = node.raise_at(body, at); }
                            Some(ThresholdAlert { body, at_unix_ns: None }) => { let _ = node.raise(body); }
                            None => return,
                        },
                        _ = node.stopping() => return,
                    }
                }
            }));
        }
        tasks
    }
}

impl SensorAgent {
    /// Raises a SensorHealth alert when the sensors' loss counters moved since the last one
    /// (the policy turns any increase into a blind-spot alert).
    async fn report_health(&self, node: &NodeHandle, last: &mut (u64, u64, u64)) {
        let src = self.source.clone();
        let Ok(Some(h)) = blocking(move || Ok(src.health())).await else {
            return;
        };
        if h != *last {
            *last = h;
            let (events_lost, map_update_failures, maps_full) = h;
            let _ = node.raise(AlertBody::SensorHealth {
                events_lost,
                map_update_failures,
                maps_full,
            });
        }
    }

    async fn sample(&self, node: &NodeHandle) {
        let src = self.source.clone();
        match self.kind {
            AgentKind::Connections => match blocking(move || src.connections()).await {
                Ok(c) => {
                    let _ = node.raise(connections_sample(c, SAMPLE_TOP));
                }
                Err(e) => {
                    tracing::warn!(node = %node.name(), error = ?e.to_string(), "reading connections failed")
                }
            },
            _ => match blocking(move || src.interfaces()).await {
                Ok(all) => {
                    for i in self.selected(all) {
                        let vm = self.source.vm_of(&i.name);
                        let _ = node.raise(AlertBody::Bandwidth {
                            iface: i.name,
                            rx_bytes: i.rx_bytes,
                            tx_bytes: i.tx_bytes,
                            vm,
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(node = %node.name(), error = ?e.to_string(), "reading interface counters failed")
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(i: u32, established: u64) -> RemoteCount {
        let [a, b, c, d] = i.to_be_bytes();
        let addr = IpAddr::from([
            0x2001,
            0xdb8,
            0,
            0,
            u16::from(a),
            u16::from(b),
            u16::from(c),
            u16::from(d),
        ]);
        RemoteCount { addr, established }
    }

    #[test]
    fn a_sample_names_the_busiest_remotes_and_sums_up_the_rest() {
        // 64,000 remotes of one /64 that each connected once and left, three that hold
        // connections, and one flooding.
        let mut all: Vec<RemoteCount> = (0..64_000).map(|i| remote(i, 0)).collect();
        all.extend([
            remote(70_001, 2),
            remote(70_002, 1),
            remote(70_003, 1),
            remote(70_000, 120),
        ]);
        let body = connections_sample(all, 2);
        assert_eq!(
            body,
            AlertBody::Connections {
                per_remote: vec![(remote(70_000, 0).addr, 120), (remote(70_001, 0).addr, 2)],
                rest_remotes: 2,
                rest_established: 2,
            }
        );
    }

    #[test]
    fn a_sample_of_any_number_of_remotes_fits_well_inside_a_frame() {
        let all: Vec<RemoteCount> = (0..100_000)
            .map(|i| remote(i, u64::from(i % 7) + 1))
            .collect();
        let alert = vespa_proto::Alert {
            origin: "Agent_Connections".into(),
            seq: u64::MAX,
            path: vec!["Agent_Connections".into()],
            timestamp_ns: u64::MAX,
            body: connections_sample(all, SAMPLE_TOP),
        };
        assert!(
            alert.sealed_len() < 8 * 1024,
            "{} bytes",
            alert.sealed_len()
        );
    }

    /// Interfaces `lo` (no hardware address) then `eth0`, in that order.
    struct TwoIfaces;

    impl SensorSource for TwoIfaces {
        fn interfaces(&self) -> Result<Vec<IfaceBytes>, String> {
            Ok(["lo", "eth0"]
                .into_iter()
                .map(|n| IfaceBytes {
                    name: n.into(),
                    rx_bytes: 0,
                    tx_bytes: 0,
                    rx_packets: 0,
                    tx_packets: 0,
                })
                .collect())
        }
        fn mac(&self, iface: &str) -> Result<String, String> {
            match iface {
                "lo" => Ok("00:00:00:00:00:00".into()),
                "eth0" => Ok("52:54:00:12:34:56".into()),
                _ => Err(format!("unknown interface {iface:?}")),
            }
        }
        fn connections(&self) -> Result<Vec<RemoteCount>, String> {
            Ok(Vec::new())
        }
        fn connections_of(&self, addr: IpAddr) -> Result<RemoteCount, String> {
            Ok(RemoteCount {
                addr,
                established: 0,
            })
        }
        fn threshold_alerts(&self) -> mpsc::Receiver<ThresholdAlert> {
            mpsc::channel(1).1
        }
    }

    #[tokio::test]
    async fn get_mac_without_an_interface_answers_for_the_first_monitored_one_with_a_mac() {
        let agent = |ifaces: &[&str]| {
            SensorAgent::new(
                AgentKind::Bandwidth,
                Arc::new(TwoIfaces),
                ifaces.iter().map(|s| s.to_string()).collect(),
                Duration::ZERO,
            )
        };
        let get_mac = |iface: Option<&str>| SensorVerb::GetMac {
            iface: iface.map(str::to_string),
        };
        // Every interface monitored: lo has no hardware address, eth0 answers.
        assert_eq!(
            agent(&[]).call(get_mac(None)).await.as_deref(),
            Ok("52:54:00:12:34:56")
        );
        // The topology's first interface, whatever it is; a named one always.
        assert_eq!(
            agent(&["lo", "eth0"]).call(get_mac(None)).await.as_deref(),
            Ok("00:00:00:00:00:00")
        );
        assert_eq!(
            agent(&[]).call(get_mac(Some("lo"))).await.as_deref(),
            Ok("00:00:00:00:00:00")
        );
    }
}
