//! The sensor API: one handle over either back end.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::{ebpf::EbpfSensor, iface, preflight, procfs};

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    /// eBPF cannot be used here; the message says why and what to do.
    #[error("eBPF sensors unavailable: {0}")]
    Unavailable(String),
    #[error("unknown interface {0:?} (not present in this network namespace)")]
    UnknownInterface(String),
    #[error("loading the kernel programs failed: {0}")]
    Load(String),
    #[error("attaching to {iface} failed: {reason}")]
    Attach { iface: String, reason: String },
    #[error("reading {what} failed: {source}")]
    Read {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Which back end to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// eBPF when it can be loaded, /proc otherwise (with a warning saying why).
    Auto,
    /// Kernel programs only; an error if they cannot be loaded.
    Ebpf,
    /// The 2014 method: /proc/net/dev and /proc/net/tcp{,6}.
    Proc,
}

/// Sensor settings; the defaults suit a hypervisor.
#[derive(Debug, Clone)]
pub struct SensorConfig {
    pub mode: Mode,
    /// Interfaces to monitor; empty means every interface, including ones created later.
    pub interfaces: Vec<String>,
    /// Interfaces never monitored (applies to the "every interface" case).
    pub exclude: Vec<String>,
    /// Remote addresses tracked for connections (LRU; oldest forgotten first).
    pub max_remotes: u32,
    /// Sockets tracked between open and close (both ends count when both are local).
    pub max_sockets: u32,
    /// Source addresses tracked for SYN counts (LRU).
    pub max_syn_sources: u32,
    /// Established connections from one remote address that raise an event; 0 = off.
    pub conn_threshold: u64,
    /// SYNs per second from one source that raise an event; 0 = off.
    pub syn_per_sec_threshold: u64,
    /// Send an event for every connection open and close (not only threshold crossings).
    pub conn_events: bool,
    /// Track the TCP connections of every network namespace of the host (containers',
    /// other agents' test namespaces...), not only the agent's own. The /proc back end always
    /// sees its own namespace only.
    pub all_netns: bool,
    pub ring_buffer_bytes: u32,
    /// How often the interface list is reconciled even without a netlink notification.
    pub rescan_interval: Duration,
    /// How tc classifiers are attached (TCX links where available, or clsact + filters).
    pub tc_mode: crate::ebpf::TcMode,
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            mode: Mode::Auto,
            interfaces: Vec::new(),
            exclude: Vec::new(),
            max_remotes: 65_536,
            max_sockets: 131_072,
            max_syn_sources: 65_536,
            conn_threshold: 100,
            syn_per_sec_threshold: 200,
            conn_events: true,
            all_netns: false,
            ring_buffer_bytes: 1 << 20,
            rescan_interval: Duration::from_secs(5),
            tc_mode: crate::ebpf::TcMode::Auto,
        }
    }
}

/// Byte and packet counters of one interface. eBPF counters start when the agent attaches;
/// /proc counters when the device was created. Rates come from differences either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfaceCounters {
    pub name: String,
    pub ifindex: u32,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// TCP connections with one remote address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteConnections {
    pub addr: IpAddr,
    pub established: u64,
    /// Connections opened and closed since the tracker started (None under /proc).
    pub opened: Option<u64>,
    pub closed: Option<u64>,
}

/// SYN-without-ACK packets from one source (eBPF), or half-open sockets from it (/proc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SynSource {
    pub addr: IpAddr,
    /// eBPF: SYN packets seen since the source entered the table. /proc: sockets in SYN_RECV.
    pub syns: u64,
}

/// The sensor's own health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    pub mode: String,
    /// Why eBPF is not in use (fallback mode only).
    pub fallback_reason: Option<String>,
    pub events_lost: u64,
    pub map_update_failures: u64,
    pub untracked_closes: u64,
    /// The network namespace whose connections are tracked (its inode number); None: every
    /// namespace of the host.
    pub tracked_netns: Option<u32>,
    pub program_runs: BTreeMap<String, u64>,
    /// Map name -> entries in use and capacity.
    pub map_fill: BTreeMap<String, MapFill>,
    pub attached_interfaces: Vec<String>,
}

/// Everything at one instant, as `vespa-agent counters --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub interfaces: Vec<InterfaceCounters>,
    pub connections: Vec<RemoteConnections>,
    pub syn_sources: Vec<SynSource>,
    pub health: Health,
}

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    Unknown,
}

impl From<u32> for TcpState {
    fn from(v: u32) -> Self {
        use TcpState::*;
        match v {
            1 => Established,
            2 => SynSent,
            3 => SynRecv,
            4 => FinWait1,
            5 => FinWait2,
            6 => TimeWait,
            7 => Close,
            8 => CloseWait,
            9 => LastAck,
            10 => Listen,
            11 => Closing,
            12 => NewSynRecv,
            _ => Unknown,
        }
    }
}

/// Entries in use and capacity of one kernel map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MapFill {
    pub used: u64,
    pub capacity: u64,
}

/// Something the sensors noticed, as it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SensorEvent {
    /// A TCP connection entered ESTABLISHED (`old_state` is SYN_SENT or SYN_RECV).
    ConnOpened {
        timestamp_ns: u64,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
        old_state: TcpState,
    },
    /// A TCP connection left ESTABLISHED for `new_state`, after `duration_ns`.
    ConnClosed {
        timestamp_ns: u64,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
        new_state: TcpState,
        duration_ns: u64,
    },
    /// A remote address has more established connections than the threshold.
    ConnThreshold {
        timestamp_ns: u64,
        addr: IpAddr,
        established: u64,
        threshold: u64,
    },
    /// A source sent more SYNs within one second than the threshold.
    SynThreshold {
        timestamp_ns: u64,
        addr: IpAddr,
        syns_in_second: u64,
        threshold: u64,
        ifindex: u32,
    },
    InterfaceAttached {
        name: String,
        ifindex: u32,
    },
    InterfaceDetached {
        name: String,
        ifindex: u32,
    },
}

pub(crate) enum Backend {
    Ebpf(EbpfSensor),
    Proc(crate::procfs_backend::ProcSensor),
}

/// Handle over the running sensors. Cheap to clone; dropping the last clone detaches every
/// kernel program and stops the background threads.
#[derive(Clone)]
pub struct Sensors {
    inner: Arc<Backend>,
    events: broadcast::Sender<SensorEvent>,
}

impl Sensors {
    /// Starts the sensors in the current network namespace.
    pub fn start(cfg: SensorConfig) -> Result<Sensors, SensorError> {
        for name in &cfg.interfaces {
            iface::get(name).map_err(|_| SensorError::UnknownInterface(name.clone()))?;
        }
        let (events, _) = broadcast::channel(65_536);
        let backend = match cfg.mode {
            Mode::Proc => Backend::Proc(crate::procfs_backend::ProcSensor::start(
                &cfg,
                None,
                events.clone(),
            )),
            Mode::Ebpf => {
                preflight::check_ebpf()?;
                Backend::Ebpf(EbpfSensor::start(&cfg, events.clone())?)
            }
            Mode::Auto => match preflight::check_ebpf()
                .and_then(|()| EbpfSensor::start(&cfg, events.clone()))
            {
                Ok(s) => Backend::Ebpf(s),
                Err(e) => {
                    tracing::warn!(reason = %e, "eBPF sensors unavailable, falling back to /proc polling (2014 method)");
                    Backend::Proc(crate::procfs_backend::ProcSensor::start(
                        &cfg,
                        Some(e.to_string()),
                        events.clone(),
                    ))
                }
            },
        };
        Ok(Sensors {
            inner: Arc::new(backend),
            events,
        })
    }

    pub fn mode(&self) -> Mode {
        match &*self.inner {
            Backend::Ebpf(_) => Mode::Ebpf,
            Backend::Proc(_) => Mode::Proc,
        }
    }

    /// Events from now on. A receiver that falls behind by more than 65,536 events gets
    /// `RecvError::Lagged` with the number it missed.
    pub fn subscribe(&self) -> broadcast::Receiver<SensorEvent> {
        self.events.subscribe()
    }

    pub fn interfaces(&self) -> Result<Vec<InterfaceCounters>, SensorError> {
        match &*self.inner {
            Backend::Ebpf(s) => s.interfaces(),
            Backend::Proc(s) => s.interfaces(),
        }
    }

    /// Established connections per remote address, most connections first.
    pub fn connections(&self) -> Result<Vec<RemoteConnections>, SensorError> {
        let mut v = match &*self.inner {
            Backend::Ebpf(s) => s.connections()?,
            Backend::Proc(s) => s.connections()?,
        };
        v.sort_by(|a, b| b.established.cmp(&a.established).then(a.addr.cmp(&b.addr)));
        Ok(v)
    }

    /// Connections with one remote address (a single map lookup under eBPF).
    pub fn connections_of(&self, addr: IpAddr) -> Result<RemoteConnections, SensorError> {
        match &*self.inner {
            Backend::Ebpf(s) => s.connections_of(addr),
            Backend::Proc(s) => Ok(s
                .connections()?
                .into_iter()
                .find(|c| c.addr == addr)
                .unwrap_or(RemoteConnections {
                    addr,
                    established: 0,
                    opened: None,
                    closed: None,
                })),
        }
    }

    pub fn syn_sources(&self) -> Result<Vec<SynSource>, SensorError> {
        let mut v = match &*self.inner {
            Backend::Ebpf(s) => s.syn_sources()?,
            Backend::Proc(s) => s.syn_sources()?,
        };
        v.sort_by(|a, b| b.syns.cmp(&a.syns).then(a.addr.cmp(&b.addr)));
        Ok(v)
    }

    /// Changes the thresholds at run time (in the kernel under eBPF, in the poller under /proc).
    pub fn set_thresholds(&self, conn: u64, syn_per_sec: u64) -> Result<(), SensorError> {
        match &*self.inner {
            Backend::Ebpf(s) => s.set_thresholds(conn, syn_per_sec),
            Backend::Proc(s) => {
                s.set_conn_threshold(conn);
                Ok(())
            }
        }
    }

    pub fn health(&self) -> Health {
        match &*self.inner {
            Backend::Ebpf(s) => s.health(),
            Backend::Proc(s) => s.health(),
        }
    }

    pub fn snapshot(&self) -> Result<Snapshot, SensorError> {
        Ok(Snapshot {
            interfaces: self.interfaces()?,
            connections: self.connections()?,
            syn_sources: self.syn_sources()?,
            health: self.health(),
        })
    }

    fn interface(&self, name: &str) -> Result<InterfaceCounters, SensorError> {
        self.interfaces()?
            .into_iter()
            .find(|i| i.name == name)
            .ok_or_else(|| SensorError::UnknownInterface(name.to_string()))
    }

    /// Bytes received on an interface (the 2014 `recv_bytes`).
    pub fn rx_bytes(&self, name: &str) -> Result<u64, SensorError> {
        Ok(self.interface(name)?.rx_bytes)
    }

    /// Bytes sent on an interface (the 2014 `trans_bytes`).
    pub fn tx_bytes(&self, name: &str) -> Result<u64, SensorError> {
        Ok(self.interface(name)?.tx_bytes)
    }

    /// Hardware address of an interface (the 2014 `get_mac`).
    pub fn get_mac(&self, name: &str) -> Result<String, SensorError> {
        self.interface_info()?
            .into_iter()
            .find(|i| i.name == name)
            .map(|i| i.mac)
            .ok_or_else(|| SensorError::UnknownInterface(name.to_string()))
    }

    /// The MAC address the sensors' namespace has learnt for `ip` (neighbour table), if any.
    pub fn mac_of(&self, ip: IpAddr) -> Result<Option<String>, SensorError> {
        self.worker()
            .run(move || iface::neighbour_mac(ip))
            .map_err(|source| SensorError::Read {
                what: "the neighbour table (RTM_GETNEIGH)",
                source,
            })
    }

    fn worker(&self) -> &crate::nsworker::NsWorker {
        match &*self.inner {
            Backend::Ebpf(s) => s.worker(),
            Backend::Proc(s) => s.worker(),
        }
    }

    /// Every interface of the sensors' namespace (name, index, MAC, kernel statistics),
    /// monitored or not.
    pub fn interface_info(&self) -> Result<Vec<iface::Interface>, SensorError> {
        self.worker()
            .run(iface::list)
            .map_err(|source| SensorError::Read {
                what: "the interface list (RTM_GETLINK)",
                source,
            })
    }

    /// Waits until an interface is being monitored (attached under eBPF; present under /proc).
    pub async fn wait_attached(&self, name: &str) {
        let mut rx = self.subscribe();
        loop {
            if self.health().attached_interfaces.iter().any(|n| n == name) {
                return;
            }
            match rx.recv().await {
                Ok(SensorEvent::InterfaceAttached { name: n, .. }) if n == name => return,
                Err(broadcast::error::RecvError::Closed) => return,
                _ => {}
            }
        }
    }
}

/// Converts the kernel's 16-byte address (IPv4-mapped for IPv4) to an `IpAddr`.
pub(crate) fn ip_of(a: &vespa_common::Addr) -> IpAddr {
    IpAddr::V6(std::net::Ipv6Addr::from(a.bytes)).to_canonical()
}

pub(crate) fn addr_of(ip: IpAddr) -> vespa_common::Addr {
    match ip {
        IpAddr::V4(v4) => vespa_common::Addr::from_v4(v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => vespa_common::Addr::from_v4(v4.octets()),
            None => vespa_common::Addr { bytes: v6.octets() },
        },
    }
}

/// Whether an interface is to be monitored under `cfg`.
pub(crate) fn wanted(cfg: &SensorConfig, name: &str) -> bool {
    if cfg.interfaces.is_empty() {
        !cfg.exclude.iter().any(|e| e == name)
    } else {
        cfg.interfaces.iter().any(|i| i == name)
    }
}

pub(crate) fn merge_proc_tcp(
    map: BTreeMap<IpAddr, procfs::TcpCounts>,
) -> (Vec<RemoteConnections>, Vec<SynSource>) {
    let conns = map
        .iter()
        .filter(|(_, c)| c.established > 0)
        .map(|(a, c)| RemoteConnections {
            addr: *a,
            established: c.established,
            opened: None,
            closed: None,
        })
        .collect();
    let syns = map
        .iter()
        .filter(|(_, c)| c.syn_recv > 0)
        .map(|(a, c)| SynSource {
            addr: *a,
            syns: c.syn_recv,
        })
        .collect();
    (conns, syns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_the_kernel_form() {
        for s in ["10.1.2.3", "::1", "2001:db8::7", "::ffff:10.0.0.1"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(ip_of(&addr_of(ip)), ip.to_canonical());
        }
    }

    #[test]
    fn interface_selection() {
        let mut cfg = SensorConfig::default();
        assert!(wanted(&cfg, "eth0"));
        cfg.exclude = vec!["lo".into()];
        assert!(!wanted(&cfg, "lo"));
        cfg.interfaces = vec!["vnet0".into()];
        assert!(wanted(&cfg, "vnet0") && !wanted(&cfg, "eth0"));
    }
}
