//! Fallback back end: polls /proc once a second, like VESPA 2014, behind the same API.
//!
//! It sees only the current network namespace, cannot count SYN packets (it reports sockets
//! in SYN_RECV instead) and detects threshold crossings one polling interval late.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use tokio::sync::broadcast;

use crate::{
    iface, procfs,
    sensor::{merge_proc_tcp, wanted, Health, InterfaceCounters, RemoteConnections, SensorConfig, SensorError, SensorEvent, SynSource},
};

pub(crate) struct ProcSensor {
    cfg: SensorConfig,
    reason: Option<String>,
    conn_threshold: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    poller: Option<thread::JoinHandle<()>>,
}

const POLL: Duration = Duration::from_secs(1);

impl ProcSensor {
    pub(crate) fn start(cfg: &SensorConfig, reason: Option<String>, events: broadcast::Sender<SensorEvent>) -> ProcSensor {
        let stop = Arc::new(AtomicBool::new(false));
        let conn_threshold = Arc::new(AtomicU64::new(cfg.conn_threshold));
        let poller = {
            let (cfg, stop, thr) = (cfg.clone(), stop.clone(), conn_threshold.clone());
            thread::Builder::new()
                .name("vespa-proc-poll".into())
                .spawn(move || poll_loop(&cfg, &thr, &stop, &events))
                .ok()
        };
        ProcSensor { cfg: cfg.clone(), reason, conn_threshold, stop, poller }
    }

    pub(crate) fn set_conn_threshold(&self, v: u64) {
        self.conn_threshold.store(v, Ordering::Relaxed);
    }

    pub(crate) fn interfaces(&self) -> Result<Vec<InterfaceCounters>, SensorError> {
        let lines = procfs::read_net_dev().map_err(|source| SensorError::Read { what: "/proc/net/dev", source })?;
        Ok(lines
            .into_iter()
            .filter(|l| wanted(&self.cfg, &l.name))
            .filter_map(|l| {
                let ifindex = iface::get(&l.name).ok()?.ifindex;
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
    }

    pub(crate) fn connections(&self) -> Result<Vec<RemoteConnections>, SensorError> {
        Ok(merge_proc_tcp(read_tcp()?).0)
    }

    pub(crate) fn syn_sources(&self) -> Result<Vec<SynSource>, SensorError> {
        Ok(merge_proc_tcp(read_tcp()?).1)
    }

    pub(crate) fn health(&self) -> Health {
        Health {
            mode: "proc".into(),
            fallback_reason: self.reason.clone(),
            attached_interfaces: self.interfaces().map(|v| v.into_iter().map(|i| i.name).collect()).unwrap_or_default(),
            ..Health::default()
        }
    }
}

impl Drop for ProcSensor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.poller.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

fn read_tcp() -> Result<BTreeMap<IpAddr, procfs::TcpCounts>, SensorError> {
    procfs::read_net_tcp().map_err(|source| SensorError::Read { what: "/proc/net/tcp", source })
}

/// Emits interface and threshold events from successive polls.
fn poll_loop(cfg: &SensorConfig, threshold: &AtomicU64, stop: &AtomicBool, events: &broadcast::Sender<SensorEvent>) {
    let mut known: BTreeMap<String, u32> = BTreeMap::new();
    let mut over: BTreeSet<IpAddr> = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        let now: BTreeMap<String, u32> = iface::list()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| wanted(cfg, &i.name))
            .map(|i| (i.name, i.ifindex))
            .collect();
        for (name, &ifindex) in &now {
            if !known.contains_key(name) {
                let _ = events.send(SensorEvent::InterfaceAttached { name: name.clone(), ifindex });
            }
        }
        for (name, &ifindex) in &known {
            if !now.contains_key(name) {
                let _ = events.send(SensorEvent::InterfaceDetached { name: name.clone(), ifindex });
            }
        }
        known = now;
        let thr = threshold.load(Ordering::Relaxed);
        if thr > 0 {
            if let Ok(map) = read_tcp() {
                let ts = crate::ebpf::monotonic_ns();
                for (addr, c) in &map {
                    if c.established > thr && over.insert(*addr) {
                        let _ = events.send(SensorEvent::ConnThreshold {
                            timestamp_ns: ts,
                            addr: *addr,
                            established: c.established,
                            threshold: thr,
                        });
                    }
                }
                over.retain(|a| map.get(a).is_some_and(|c| c.established > thr));
            }
        }
        thread::park_timeout(POLL);
    }
}
