//! The sensor API: one handle over either back end.

use std::{net::IpAddr, sync::Arc};

use tokio::sync::broadcast;

use crate::{
    config::{Mode, SensorConfig},
    ebpf::EbpfSensor,
    error::SensorError,
    event::SensorEvent,
    iface,
    nsworker::NsWorker,
    preflight,
    procfs_backend::ProcSensor,
    readings::{Health, InterfaceCounters, RemoteConnections, Snapshot, SynSource},
};

pub(crate) enum Backend {
    Ebpf(EbpfSensor),
    Proc(ProcSensor),
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
            iface::get(name).map_err(|source| match source.kind() {
                // Absent, or a name no interface can have.
                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput => {
                    SensorError::UnknownInterface(name.clone())
                }
                _ => SensorError::Read {
                    what: "the interface list (RTM_GETLINK)",
                    source,
                },
            })?;
        }
        let (events, _) = broadcast::channel(cfg.event_capacity.max(1));
        let backend = match cfg.mode {
            Mode::Proc => Backend::Proc(ProcSensor::start(&cfg, None, events.clone())),
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
                    Backend::Proc(ProcSensor::start(&cfg, Some(e.to_string()), events.clone()))
                }
            },
        };
        Ok(Sensors {
            inner: Arc::new(backend),
            events,
        })
    }

    /// The eBPF back end; an error saying why there is none under /proc.
    pub(crate) fn ebpf(&self) -> Result<&EbpfSensor, SensorError> {
        match &*self.inner {
            Backend::Ebpf(s) => Ok(s),
            Backend::Proc(p) => Err(SensorError::NoFirewall(
                p.health()
                    .fallback_reason
                    .unwrap_or_else(|| "the /proc back end was chosen (--mode proc)".into()),
            )),
        }
    }

    pub fn mode(&self) -> Mode {
        match &*self.inner {
            Backend::Ebpf(_) => Mode::Ebpf,
            Backend::Proc(_) => Mode::Proc,
        }
    }

    /// Events from now on. A receiver that falls behind by more than
    /// [`SensorConfig::event_capacity`] events gets `RecvError::Lagged` with the number it
    /// missed.
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

    fn worker(&self) -> &NsWorker {
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
