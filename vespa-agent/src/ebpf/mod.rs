//! eBPF back end: loads the kernel programs, attaches them to interfaces as they come and
//! go, reads the maps on demand and turns ring-buffer records into [`SensorEvent`]s.
//!
//! One job per module: `load` (the object, the programs' configuration, the tracepoint),
//! `attach` (the classifiers on one interface), `hotplug` (following the interfaces),
//! `maps` (reading the counters and tables), `records` (the ring buffer and its records),
//! `kernel_log` (the programs' own log, when asked), `addr` (the kernel's address form),
//! `firewall` (the firewall's tables: blocks, throttles, allowlist, reflex, reaping).
//! This module holds the running state they share and answers the [`crate::Sensors`] verbs.

mod addr;
mod attach;
mod firewall;
mod hotplug;
mod kernel_log;
mod load;
mod maps;
mod records;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::fd::{AsRawFd, BorrowedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread,
    time::Duration,
};

use aya::Ebpf;
use tokio::sync::broadcast;
use vespa_common::{
    STAT_EVENTS_LOST, STAT_MAP_UPDATE_FAILED, STAT_TRACEPOINT_RUNS, STAT_UNTRACKED_CLOSES,
};

pub(crate) use firewall::Tables as FirewallTables;
pub use load::{attach_counters_baseline, attach_noop, attach_tracepoint_noop, attach_xdp_noop};

use self::{
    attach::Attached,
    load::{MAX_BIG_IFINDEX_INTERFACES, PROG_EGRESS, PROG_INGRESS, PROG_SOCK_STATE},
    maps::Maps,
};
use crate::{
    config::SensorConfig,
    error::SensorError,
    event::SensorEvent,
    nsworker::NsWorker,
    readings::{Health, InterfaceCounters, MapFill, RemoteConnections, SynSource},
};

/// The object and what is attached, behind one lock: map reads, attach and detach take
/// turns.
struct Inner {
    ebpf: Ebpf,
    attached: BTreeMap<u32, Attached>,
    maps: Maps,
    fw: firewall::Tables,
}

/// What the verbs, the hot-plug thread and the ring-buffer thread share.
struct Shared {
    cfg: SensorConfig,
    /// The namespace the tracker watches (0: every one).
    netns_inum: u32,
    inner: Mutex<Inner>,
    stop: AtomicBool,
    events: broadcast::Sender<SensorEvent>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent (they live in the
        // kernel), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct EbpfSensor {
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
    ns: NsWorker,
}

impl EbpfSensor {
    pub(crate) fn start(
        cfg: &SensorConfig,
        events: broadcast::Sender<SensorEvent>,
    ) -> Result<EbpfSensor, SensorError> {
        // The tracepoint is attached by now: connections are tracked from here on.
        let loaded = load::load(cfg)?;
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            netns_inum: loaded.kernel_config.netns_inum,
            inner: Mutex::new(Inner {
                ebpf: loaded.ebpf,
                attached: BTreeMap::new(),
                maps: loaded.maps,
                fw: loaded.fw,
            }),
            stop: AtomicBool::new(false),
            events,
        });
        // Explicitly configured interfaces must attach now; the rest is best effort.
        shared.reconcile(true)?;
        // Loading read the kernel's BTF twice (aya's relocations, the tracker's offsets): some
        // 10 MB of buffers, freed by now but kept by glibc's heap. Give them back once.
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim has no preconditions; it only releases free heap memory.
        unsafe {
            libc::malloc_trim(0);
        }

        let mut sensor = EbpfSensor {
            shared: shared.clone(),
            threads: Vec::new(),
            ns: NsWorker::spawn("vespa-netns", Duration::from_secs(3600), || {}),
        };
        let s = shared.clone();
        let ring = loaded.ring;
        sensor.threads.push(spawn("vespa-ringbuf", move || {
            records::read_events(ring, &s.stop, &s.events)
        }));
        let s = shared.clone();
        sensor
            .threads
            .push(spawn("vespa-netlink", move || s.watch_links()));
        if let Some(logger) = loaded.logger {
            let s = shared.clone();
            sensor.threads.push(spawn("vespa-ebpf-log", move || {
                kernel_log::forward(logger, &s.stop)
            }));
        }
        tracing::info!(
            interfaces = ?sensor.shared.lock().attached.values().map(|a| a.name.clone()).collect::<Vec<_>>(),
            "eBPF sensors attached"
        );
        Ok(sensor)
    }

    pub(crate) fn worker(&self) -> &NsWorker {
        &self.ns
    }

    pub(crate) fn interfaces(&self) -> Result<Vec<InterfaceCounters>, SensorError> {
        let inner = self.shared.lock();
        inner
            .attached
            .iter()
            .map(|(&ifindex, a)| {
                let s = inner.maps.read_stats(ifindex)?;
                Ok(InterfaceCounters {
                    name: a.name.clone(),
                    ifindex,
                    rx_bytes: s.rx_bytes,
                    rx_packets: s.rx_packets,
                    tx_bytes: s.tx_bytes,
                    tx_packets: s.tx_packets,
                })
            })
            .collect()
    }

    pub(crate) fn connections(&self) -> Result<Vec<RemoteConnections>, SensorError> {
        self.shared.lock().maps.connections()
    }

    pub(crate) fn connections_of(&self, addr: IpAddr) -> Result<RemoteConnections, SensorError> {
        self.shared.lock().maps.connections_of(addr)
    }

    pub(crate) fn syn_sources(&self) -> Result<Vec<SynSource>, SensorError> {
        self.shared.lock().maps.syn_sources()
    }

    pub(crate) fn health(&self) -> Health {
        let inner = self.shared.lock();
        let maps = &inner.maps;
        // A classifier runs once per packet: its run count is the packets it counted.
        let (mut ingress_runs, mut egress_runs) = (0, 0);
        for &ifindex in inner.attached.keys() {
            if let Ok(s) = maps.read_stats(ifindex) {
                ingress_runs += s.rx_packets;
                egress_runs += s.tx_packets;
            }
        }
        let (remotes, open) = maps.connection_fill();
        let cfg = &self.shared.cfg;
        let fill = |used, capacity: u32| MapFill {
            used,
            capacity: capacity as u64,
        };
        Health {
            mode: "ebpf".into(),
            fallback_reason: None,
            events_lost: maps.stat(STAT_EVENTS_LOST),
            map_update_failures: maps.stat(STAT_MAP_UPDATE_FAILED),
            untracked_closes: maps.stat(STAT_UNTRACKED_CLOSES),
            tracked_netns: (self.shared.netns_inum != 0).then_some(self.shared.netns_inum),
            program_runs: BTreeMap::from([
                (PROG_INGRESS.to_string(), ingress_runs),
                (PROG_EGRESS.to_string(), egress_runs),
                (PROG_SOCK_STATE.to_string(), maps.stat(STAT_TRACEPOINT_RUNS)),
            ]),
            map_fill: BTreeMap::from([
                ("CONN_BY_REMOTE".to_string(), fill(remotes, cfg.max_remotes)),
                // Every tracked open socket is counted once in its remote's `established`.
                (
                    "OPEN_SOCKETS".to_string(),
                    MapFill {
                        used: open,
                        capacity: load::open_capacity(cfg),
                    },
                ),
                (
                    "SYN_BY_SOURCE".to_string(),
                    fill(maps.syn_fill(), cfg.max_syn_sources),
                ),
                (
                    "IFACE_STATS_BIG".to_string(),
                    fill(maps.big_ifindex_fill(), MAX_BIG_IFINDEX_INTERFACES),
                ),
            ]),
            attached_interfaces: inner.attached.values().map(|a| a.name.clone()).collect(),
        }
    }

    /// Runs `f` on the firewall's tables (under the lock map reads and attaching share).
    pub(crate) fn firewall<R>(
        &self,
        f: impl FnOnce(&mut firewall::Tables) -> Result<R, SensorError>,
    ) -> Result<R, SensorError> {
        f(&mut self.shared.lock().fw)
    }

    /// Changes the in-kernel thresholds without reloading.
    pub(crate) fn set_thresholds(&self, conn: u64, syn_per_sec: u64) -> Result<(), SensorError> {
        self.shared.lock().maps.set_thresholds(conn, syn_per_sec)
    }
}

impl Drop for EbpfSensor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // On the namespace worker: the legacy clsact cleanup runs `tc` in our namespace.
        let shared = self.shared.clone();
        self.ns.run(move || {
            let mut inner = shared.lock();
            let ifindexes: Vec<u32> = inner.attached.keys().copied().collect();
            let keep = shared.cfg.keep_enforcing_on_exit;
            for ifindex in ifindexes {
                shared.detach(&mut inner, ifindex, false, keep);
            }
        });
        match (
            &self.shared.cfg.pin_dir,
            self.shared.cfg.keep_enforcing_on_exit,
        ) {
            (Some(dir), true) => {
                tracing::info!(pins = %dir.display(), "programs left attached and tables pinned: blocks stay in force until they expire or the next agent takes over");
            }
            (Some(dir), false) => {
                load::unpin_all(dir);
                tracing::info!("eBPF sensors detached, firewall tables unpinned");
            }
            (None, _) => tracing::info!("eBPF sensors detached"),
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawning a sensor thread")
}

/// Waits up to `timeout` for `fd` to become readable (netlink socket, ring buffer).
fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and nfds is 1.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}
