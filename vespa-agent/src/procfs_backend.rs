//! Fallback back end: polls /proc once a second, like VESPA 2014, behind the same API.
//!
//! It sees only the current network namespace, cannot count SYN packets (it reports sockets
//! in SYN_RECV instead) and detects threshold crossings one polling interval late.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::broadcast;

use crate::{
    clock::monotonic_ns,
    config::SensorConfig,
    error::SensorError,
    event::SensorEvent,
    iface,
    nsworker::NsWorker,
    procfs,
    readings::{Health, InterfaceCounters, RemoteConnections, SynSource},
};

pub(crate) struct ProcSensor {
    cfg: SensorConfig,
    reason: Option<String>,
    /// /proc/net/tcp is per namespace: the one this sensor started in.
    netns: Option<u32>,
    conn_threshold: Arc<AtomicU64>,
    /// Lives in the sensors' namespace: reads /proc/thread-self/net and polls for events.
    worker: NsWorker,
}

const POLL: Duration = Duration::from_secs(1);

impl ProcSensor {
    pub(crate) fn start(
        cfg: &SensorConfig,
        reason: Option<String>,
        events: broadcast::Sender<SensorEvent>,
    ) -> ProcSensor {
        let conn_threshold = Arc::new(AtomicU64::new(cfg.conn_threshold));
        let mut poller = Poller {
            cfg: cfg.clone(),
            threshold: conn_threshold.clone(),
            events,
            known: BTreeMap::new(),
            over: BTreeSet::new(),
        };
        let worker = NsWorker::spawn("vespa-proc-poll", POLL, move || poller.poll());
        ProcSensor {
            cfg: cfg.clone(),
            reason,
            netns: crate::netns::current_inode().ok(),
            conn_threshold,
            worker,
        }
    }

    pub(crate) fn set_conn_threshold(&self, v: u64) {
        self.conn_threshold.store(v, Ordering::Relaxed);
    }

    pub(crate) fn interfaces(&self) -> Result<Vec<InterfaceCounters>, SensorError> {
        let cfg = self.cfg.clone();
        self.worker.run(move || {
            let lines = procfs::read_net_dev().map_err(|source| SensorError::Read {
                what: "/proc/net/dev",
                source,
            })?;
            let index: std::collections::HashMap<String, u32> = iface::list()
                .unwrap_or_default()
                .into_iter()
                .map(|i| (i.name, i.ifindex))
                .collect();
            Ok(lines
                .into_iter()
                .filter(|l| cfg.wants(&l.name))
                .filter_map(|l| {
                    let ifindex = *index.get(&l.name)?;
                    Some(InterfaceCounters {
                        name: l.name,
                        ifindex,
                        rx_bytes: l.rx_bytes,
                        rx_packets: l.rx_packets,
                        tx_bytes: l.tx_bytes,
                        tx_packets: l.tx_packets,
                    })
                })
                .collect())
        })
    }

    pub(crate) fn connections(&self) -> Result<Vec<RemoteConnections>, SensorError> {
        Ok(merge_proc_tcp(self.worker.run(read_tcp)?).0)
    }

    pub(crate) fn syn_sources(&self) -> Result<Vec<SynSource>, SensorError> {
        Ok(merge_proc_tcp(self.worker.run(read_tcp)?).1)
    }

    pub(crate) fn worker(&self) -> &NsWorker {
        &self.worker
    }

    pub(crate) fn health(&self) -> Health {
        Health {
            mode: "proc".into(),
            fallback_reason: self.reason.clone(),
            tracked_netns: self.netns,
            attached_interfaces: self
                .interfaces()
                .map(|v| v.into_iter().map(|i| i.name).collect())
                .unwrap_or_default(),
            ..Health::default()
        }
    }
}

fn read_tcp() -> Result<BTreeMap<IpAddr, procfs::TcpCounts>, SensorError> {
    procfs::read_net_tcp().map_err(|source| SensorError::Read {
        what: "/proc/net/tcp",
        source,
    })
}

/// /proc's sockets per remote address as the API's two tables: remotes with established
/// connections, and sources with half-open (SYN_RECV) sockets.
fn merge_proc_tcp(
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

/// Emits interface and threshold events from successive polls.
struct Poller {
    cfg: SensorConfig,
    threshold: Arc<AtomicU64>,
    events: broadcast::Sender<SensorEvent>,
    known: BTreeMap<String, u32>,
    over: BTreeSet<IpAddr>,
}

impl Poller {
    fn poll(&mut self) {
        let now: BTreeMap<String, u32> = iface::list()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| self.cfg.wants(&i.name))
            .map(|i| (i.name, i.ifindex))
            .collect();
        for (name, &ifindex) in &now {
            if !self.known.contains_key(name) {
                let _ = self.events.send(SensorEvent::InterfaceAttached {
                    name: name.clone(),
                    ifindex,
                });
            }
        }
        for (name, &ifindex) in &self.known {
            if !now.contains_key(name) {
                let _ = self.events.send(SensorEvent::InterfaceDetached {
                    name: name.clone(),
                    ifindex,
                });
            }
        }
        self.known = now;
        let thr = self.threshold.load(Ordering::Relaxed);
        if thr == 0 {
            return;
        }
        if let Ok(map) = read_tcp() {
            let ts = monotonic_ns();
            for (addr, c) in &map {
                if c.established > thr && self.over.insert(*addr) {
                    let _ = self.events.send(SensorEvent::ConnThreshold {
                        timestamp_ns: ts,
                        addr: *addr,
                        established: c.established,
                        threshold: thr,
                    });
                }
            }
            self.over
                .retain(|a| map.get(a).is_some_and(|c| c.established > thr));
        }
    }
}
