//! eBPF back end: loads the kernel programs, attaches them to interfaces as they come and
//! go, reads the maps on demand and turns ring-buffer records into [`SensorEvent`]s.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, AsRawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread,
    time::Duration,
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType, TracePoint,
    },
    Ebpf, EbpfLoader,
};
use tokio::sync::broadcast;
use vespa_common::{
    Addr, ConnEvent, EventHeader, IfaceStats, RemoteConns, SynCounter, ThresholdEvent,
    EVENT_CONN_CLOSE, EVENT_CONN_OPEN, EVENT_CONN_THRESHOLD, EVENT_SYN_THRESHOLD,
    IFACE_ARRAY_SLOTS, MAX_EVENT_SIZE, STAT_EVENTS_LOST, STAT_MAP_UPDATE_FAILED,
    STAT_TRACEPOINT_RUNS, STAT_UNTRACKED_CLOSES,
};

use crate::{
    iface,
    nsworker::NsWorker,
    sensor::{
        addr_of, ip_of, wanted, Health, InterfaceCounters, MapFill, RemoteConnections,
        SensorConfig, SensorError, SensorEvent, SynSource,
    },
};

/// The kernel object, built by build.rs from `vespa-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vespa.bpf.o"));

const PROG_INGRESS: &str = "vespa_ingress";
const PROG_INGRESS_L3: &str = "vespa_ingress_l3";
const PROG_EGRESS: &str = "vespa_egress";
const PROG_NOOP: &str = "vespa_tc_noop";
const PROG_SOCK_STATE: &str = "vespa_sock_state";
/// Interfaces with ifindex >= IFACE_ARRAY_SLOTS that can be counted at once.
const MAX_BIG_IFINDEX_INTERFACES: u32 = 1024;

/// How classifiers are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TcMode {
    /// TCX links on Linux 6.6+, a clsact qdisc and filters before that.
    #[default]
    Auto,
    /// clsact qdisc + tc filters (netlink), as on kernels without TCX.
    Netlink,
}

struct Attached {
    name: String,
    links: Vec<SchedClassifierLink>,
    /// We added the clsact qdisc (netlink mode) and remove it on detach if it is empty.
    clsact_ours: bool,
}

struct Inner {
    ebpf: Ebpf,
    attached: BTreeMap<u32, Attached>,
    stats: PerCpuArray<MapData, IfaceStats>,
    stats_big: PerCpuHashMap<MapData, u32, IfaceStats>,
    conns: HashMap<MapData, Addr, RemoteConns>,
    syns: HashMap<MapData, Addr, SynCounter>,
    health: PerCpuArray<MapData, u64>,
    config: Array<MapData, vespa_common::SensorConfig>,
}

impl Inner {
    /// One interface's counters summed over CPUs.
    fn read_stats(&self, ifindex: u32) -> Result<IfaceStats, SensorError> {
        let per_cpu = if ifindex < IFACE_ARRAY_SLOTS {
            self.stats.get(&ifindex, 0)
        } else {
            match self.stats_big.get(&ifindex, 0) {
                Err(aya::maps::MapError::KeyNotFound) => return Ok(IfaceStats::default()),
                other => other,
            }
        }
        .map_err(|e| read_err("IFACE_STATS", e))?;
        Ok(per_cpu
            .iter()
            .fold(IfaceStats::default(), |a, v| IfaceStats {
                rx_bytes: a.rx_bytes + v.rx_bytes,
                rx_packets: a.rx_packets + v.rx_packets,
                tx_bytes: a.tx_bytes + v.tx_bytes,
                tx_packets: a.tx_packets + v.tx_packets,
            }))
    }

    fn reset_stats(&mut self, ifindex: u32) {
        if ifindex < IFACE_ARRAY_SLOTS {
            let zeros = aya::util::nr_cpus().ok().and_then(|n| {
                aya::maps::PerCpuValues::try_from(vec![IfaceStats::default(); n]).ok()
            });
            if let Some(z) = zeros {
                let _ = self.stats.set(ifindex, z, 0);
            }
        } else {
            let _ = self.stats_big.remove(&ifindex);
        }
    }
}

struct Shared {
    cfg: SensorConfig,
    /// The namespace the tracker watches (0: every one).
    netns_inum: u32,
    tc_mode: TcMode,
    inner: Mutex<Inner>,
    stop: AtomicBool,
    events: broadcast::Sender<SensorEvent>,
}

pub(crate) struct EbpfSensor {
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
    ns: NsWorker,
}

fn load_err(e: impl std::fmt::Display) -> SensorError {
    SensorError::Load(e.to_string())
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<T, SensorError> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| load_err(format!("map {name} missing from the object")))?;
    T::try_from(map).map_err(|e| load_err(format!("map {name}: {e}")))
}

/// The kernel programs' configuration. Unless every namespace is wanted, the tracker is told
/// the calling thread's network namespace and where to find a socket's namespace (offsets
/// from the kernel's BTF); without BTF it tracks every namespace and says so.
fn kernel_config(cfg: &SensorConfig) -> vespa_common::SensorConfig {
    let mut k = vespa_common::SensorConfig {
        conn_threshold: cfg.conn_threshold,
        syn_per_sec_threshold: cfg.syn_per_sec_threshold,
        conn_events: cfg.conn_events as u32,
        ..Default::default()
    };
    if !cfg.all_netns {
        match (
            crate::netns::current_inode(),
            crate::btf::NetnsOffsets::from_kernel(),
        ) {
            (Ok(inum), Ok(off)) => {
                (k.netns_inum, k.sk_net_offset, k.net_inum_offset) =
                    (inum, off.sk_net, off.net_inum)
            }
            (Err(e), _) => {
                tracing::warn!(error = %e, "cannot tell this network namespace: tracking connections of every namespace")
            }
            (_, Err(e)) => {
                tracing::warn!(error = %e, "no socket layout from BTF: tracking connections of every namespace")
            }
        }
    }
    k
}

impl EbpfSensor {
    pub(crate) fn start(
        cfg: &SensorConfig,
        events: broadcast::Sender<SensorEvent>,
    ) -> Result<EbpfSensor, SensorError> {
        let tc_mode = cfg.tc_mode;
        if OBJECT.is_empty() {
            return Err(SensorError::Unavailable(
                "this binary was built without the kernel programs".into(),
            ));
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("CONN_BY_REMOTE", cfg.max_remotes.max(1))
            .map_max_entries("OPEN_SOCKETS", cfg.max_sockets.max(1))
            .map_max_entries("SYN_BY_SOURCE", cfg.max_syn_sources.max(1))
            .map_max_entries("IFACE_STATS_BIG", MAX_BIG_IFINDEX_INTERFACES)
            .map_max_entries(
                "EVENTS",
                cfg.ring_buffer_bytes.next_power_of_two().max(4096),
            )
            .load(OBJECT)
            .map_err(load_err)?;
        for name in [PROG_INGRESS, PROG_INGRESS_L3, PROG_EGRESS] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|e| load_err(format!("{name}: {e}")))?;
        }
        let mut config: Array<MapData, vespa_common::SensorConfig> = take(&mut ebpf, "CONFIG")?;
        let kcfg = kernel_config(cfg);
        config.set(0, kcfg, 0).map_err(load_err)?;
        let ring: RingBuf<MapData> = take(&mut ebpf, "EVENTS")?;
        let inner = Inner {
            stats: take(&mut ebpf, "IFACE_STATS")?,
            stats_big: take(&mut ebpf, "IFACE_STATS_BIG")?,
            conns: take(&mut ebpf, "CONN_BY_REMOTE")?,
            syns: take(&mut ebpf, "SYN_BY_SOURCE")?,
            health: take(&mut ebpf, "STATS")?,
            config,
            attached: BTreeMap::new(),
            ebpf,
        };
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            netns_inum: kcfg.netns_inum,
            tc_mode,
            inner: Mutex::new(inner),
            stop: AtomicBool::new(false),
            events,
        });

        // Tracepoint first: connections are tracked from here on.
        {
            let mut inner = shared.lock();
            let tp: &mut TracePoint = inner
                .ebpf
                .program_mut(PROG_SOCK_STATE)
                .ok_or_else(|| load_err("tracepoint program missing"))?
                .try_into()
                .map_err(load_err)?;
            tp.load()
                .map_err(|e| load_err(format!("{PROG_SOCK_STATE}: {e}")))?;
            tp.attach("sock", "inet_sock_set_state")
                .map_err(|e| load_err(format!("attaching sock:inet_sock_set_state: {e}")))?;
        }
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
        sensor
            .threads
            .push(spawn("vespa-ringbuf", move || s.read_events(ring)));
        let s = shared.clone();
        sensor
            .threads
            .push(spawn("vespa-netlink", move || s.watch_links()));
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
                let s = inner.read_stats(ifindex)?;
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
        let inner = self.shared.lock();
        inner
            .conns
            .iter()
            .map(|item| {
                item.map(|(k, v)| remote(ip_of(&k), &v))
                    .map_err(|e| read_err("CONN_BY_REMOTE", e))
            })
            .collect()
    }

    pub(crate) fn connections_of(&self, addr: IpAddr) -> Result<RemoteConnections, SensorError> {
        let inner = self.shared.lock();
        match inner.conns.get(&addr_of(addr), 0) {
            Ok(v) => Ok(remote(addr, &v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(RemoteConnections {
                addr,
                established: 0,
                opened: Some(0),
                closed: Some(0),
            }),
            Err(e) => Err(read_err("CONN_BY_REMOTE", e)),
        }
    }

    pub(crate) fn syn_sources(&self) -> Result<Vec<SynSource>, SensorError> {
        let inner = self.shared.lock();
        inner
            .syns
            .iter()
            .map(|item| {
                item.map(|(k, v)| SynSource {
                    addr: ip_of(&k),
                    syns: v.total,
                })
                .map_err(|e| read_err("SYN_BY_SOURCE", e))
            })
            .collect()
    }

    pub(crate) fn health(&self) -> Health {
        let inner = self.shared.lock();
        let stat = |slot: u32| {
            inner
                .health
                .get(&slot, 0)
                .map(|v| v.iter().sum::<u64>())
                .unwrap_or(0)
        };
        // A classifier runs once per packet: its run count is the packets it counted.
        let (mut ingress_runs, mut egress_runs) = (0, 0);
        for &ifindex in inner.attached.keys() {
            if let Ok(s) = inner.read_stats(ifindex) {
                ingress_runs += s.rx_packets;
                egress_runs += s.tx_packets;
            }
        }
        let (mut remotes, mut open) = (0u64, 0u64);
        for (_, v) in inner.conns.iter().flatten() {
            remotes += 1;
            open += v.established;
        }
        let syn_sources = inner.syns.keys().flatten().count() as u64;
        let cfg = &self.shared.cfg;
        Health {
            mode: "ebpf".into(),
            fallback_reason: None,
            events_lost: stat(STAT_EVENTS_LOST),
            map_update_failures: stat(STAT_MAP_UPDATE_FAILED),
            untracked_closes: stat(STAT_UNTRACKED_CLOSES),
            tracked_netns: (self.shared.netns_inum != 0).then_some(self.shared.netns_inum),
            program_runs: BTreeMap::from([
                (PROG_INGRESS.to_string(), ingress_runs),
                (PROG_EGRESS.to_string(), egress_runs),
                (PROG_SOCK_STATE.to_string(), stat(STAT_TRACEPOINT_RUNS)),
            ]),
            map_fill: BTreeMap::from([
                (
                    "CONN_BY_REMOTE".to_string(),
                    MapFill {
                        used: remotes,
                        capacity: cfg.max_remotes as u64,
                    },
                ),
                // Every tracked open socket is counted once in its remote's `established`.
                (
                    "OPEN_SOCKETS".to_string(),
                    MapFill {
                        used: open,
                        capacity: cfg.max_sockets as u64,
                    },
                ),
                (
                    "SYN_BY_SOURCE".to_string(),
                    MapFill {
                        used: syn_sources,
                        capacity: cfg.max_syn_sources as u64,
                    },
                ),
                (
                    "IFACE_STATS_BIG".to_string(),
                    MapFill {
                        used: inner.stats_big.keys().flatten().count() as u64,
                        capacity: MAX_BIG_IFINDEX_INTERFACES as u64,
                    },
                ),
            ]),
            attached_interfaces: inner.attached.values().map(|a| a.name.clone()).collect(),
        }
    }

    /// Changes the in-kernel thresholds without reloading.
    pub(crate) fn set_thresholds(&self, conn: u64, syn_per_sec: u64) -> Result<(), SensorError> {
        let mut inner = self.shared.lock();
        let mut k = inner.config.get(&0, 0).map_err(load_err)?;
        k.conn_threshold = conn;
        k.syn_per_sec_threshold = syn_per_sec;
        inner.config.set(0, k, 0).map_err(load_err)
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
            for ifindex in ifindexes {
                shared.detach(&mut inner, ifindex, false);
            }
        });
        tracing::info!("eBPF sensors detached");
    }
}

fn remote(addr: IpAddr, v: &RemoteConns) -> RemoteConnections {
    RemoteConnections {
        addr,
        established: v.established,
        opened: Some(v.opened),
        closed: Some(v.closed),
    }
}

fn read_err(what: &'static str, e: aya::maps::MapError) -> SensorError {
    SensorError::Read {
        what,
        source: std::io::Error::other(e.to_string()),
    }
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier, SensorError> {
    ebpf.program_mut(name)
        .ok_or_else(|| load_err(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(load_err)
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawning a sensor thread")
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent (they live in the
        // kernel), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches to every wanted interface not yet attached and forgets vanished ones.
    /// With `strict`, failing to attach an explicitly configured interface is an error.
    fn reconcile(&self, strict: bool) -> Result<(), SensorError> {
        let present = iface::list().map_err(|source| SensorError::Read {
            what: "the interface list (RTM_GETLINK)",
            source,
        })?;
        let mut inner = self.lock();
        let gone: Vec<u32> = inner
            .attached
            .iter()
            .filter(|(ifindex, a)| {
                !present
                    .iter()
                    .any(|i| i.ifindex == **ifindex && i.name == a.name)
            })
            .map(|(i, _)| *i)
            .collect();
        for ifindex in gone {
            self.detach(&mut inner, ifindex, true);
        }
        for i in present.iter().filter(|i| wanted(&self.cfg, &i.name)) {
            if inner.attached.contains_key(&i.ifindex) {
                continue;
            }
            match self.attach(&mut inner, i) {
                Ok(()) => {
                    tracing::debug!(iface = %i.name, ifindex = i.ifindex, "attached");
                    let _ = self.events.send(SensorEvent::InterfaceAttached {
                        name: i.name.clone(),
                        ifindex: i.ifindex,
                    });
                }
                Err(e) if strict && !self.cfg.interfaces.is_empty() => return Err(e),
                // Interfaces can vanish between listing and attaching; the next pass retries.
                Err(e) => {
                    tracing::warn!(iface = %i.name, error = %e, "could not attach; will retry")
                }
            }
        }
        Ok(())
    }

    fn attach(&self, inner: &mut Inner, i: &iface::Interface) -> Result<(), SensorError> {
        let attach_err = |reason: String| SensorError::Attach {
            iface: i.name.clone(),
            reason,
        };
        let mut clsact_ours = false;
        if self.tc_mode == TcMode::Netlink {
            match aya::programs::tc::qdisc_add_clsact(&i.name) {
                Ok(()) => clsact_ours = true,
                Err(aya::programs::tc::TcError::NetlinkError(e))
                    if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(attach_err(format!("adding clsact qdisc: {e}"))),
            }
        }
        let ingress = if i.ethernet {
            PROG_INGRESS
        } else {
            PROG_INGRESS_L3
        };
        let mut links = Vec::new();
        for (prog, dir) in [
            (ingress, TcAttachType::Ingress),
            (PROG_EGRESS, TcAttachType::Egress),
        ] {
            let p = classifier(&mut inner.ebpf, prog)?;
            let res = match self.tc_mode {
                // First in the TCX chain, so a program before us that ends the chain (pass or
                // drop) cannot hide packets from the counters.
                TcMode::Auto if has_tcx() => p
                    .attach_with_options(
                        &i.name,
                        dir,
                        TcAttachOptions::TcxOrder(tcx_first(&i.name, dir)),
                    )
                    .or_else(|_| {
                        p.attach_with_options(
                            &i.name,
                            dir,
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                    }),
                // Legacy tc stops at the first classifier that matches, so we go first (our
                // programs return TC_ACT_UNSPEC: "continue") and see every packet while the
                // filters behind us still decide. If priority 1 is taken, the kernel picks.
                _ => p
                    .attach_with_options(
                        &i.name,
                        dir,
                        TcAttachOptions::Netlink(NlOptions {
                            priority: 1,
                            ..Default::default()
                        }),
                    )
                    .or_else(|_| {
                        p.attach_with_options(
                            &i.name,
                            dir,
                            TcAttachOptions::Netlink(NlOptions::default()),
                        )
                    }),
            }
            .and_then(|id| p.take_link(id));
            match res {
                Ok(link) => links.push(link),
                Err(e) => {
                    drop(links);
                    if clsact_ours {
                        remove_clsact(&i.name);
                    }
                    return Err(attach_err(format!("{prog} ({dir:?}): {e}")));
                }
            }
        }
        // Counters start at attach (an ifindex may have been counted for a previous device).
        inner.reset_stats(i.ifindex);
        inner.attached.insert(
            i.ifindex,
            Attached {
                name: i.name.clone(),
                links,
                clsact_ours,
            },
        );
        Ok(())
    }

    fn detach(&self, inner: &mut Inner, ifindex: u32, vanished: bool) {
        let Some(a) = inner.attached.remove(&ifindex) else {
            return;
        };
        drop(a.links);
        if a.clsact_ours && !vanished {
            remove_clsact(&a.name);
        }
        inner.reset_stats(ifindex);
        tracing::debug!(iface = %a.name, ifindex, "detached");
        let _ = self.events.send(SensorEvent::InterfaceDetached {
            name: a.name,
            ifindex,
        });
    }

    /// Reconciles on every RTM_NEWLINK/RTM_DELLINK, and every `rescan_interval` anyway.
    fn watch_links(&self) {
        use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr as NlAddr};
        let sock = Socket::new(NETLINK_ROUTE).and_then(|mut s| {
            s.bind(&NlAddr::new(0, libc::RTMGRP_LINK as u32))?;
            s.set_non_blocking(true)?;
            Ok(s)
        });
        let sock = match sock {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no netlink link notifications; rescanning interfaces periodically");
                None
            }
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut last_scan = monotonic_ns();
        while !self.stop.load(Ordering::Relaxed) {
            let woke = match &sock {
                Some(s) => wait_readable(
                    s.as_fd(),
                    self.cfg.rescan_interval.min(Duration::from_millis(250)),
                ),
                None => {
                    thread::sleep(Duration::from_millis(250));
                    false
                }
            };
            if let (true, Some(s)) = (woke, &sock) {
                while s.recv(&mut &mut buf[..], 0).is_ok_and(|n| n > 0) {}
            }
            let now = monotonic_ns();
            if woke || now.saturating_sub(last_scan) >= self.cfg.rescan_interval.as_nanos() as u64 {
                last_scan = now;
                if let Err(e) = self.reconcile(false) {
                    tracing::warn!(error = %e, "interface rescan failed");
                }
            }
        }
    }

    fn read_events(&self, mut ring: RingBuf<MapData>) {
        while !self.stop.load(Ordering::Relaxed) {
            // Threshold events wake us at once; per-connection events are produced without a
            // wake-up and collected here at least every POLL (see `emit` in vespa-ebpf).
            const POLL: Duration = Duration::from_millis(50);
            wait_readable(ring.as_fd(), POLL);
            while let Some(item) = ring.next() {
                match decode_event(&item) {
                    Some(ev) => {
                        if let SensorEvent::ConnThreshold {
                            addr,
                            established,
                            threshold,
                            ..
                        } = &ev
                        {
                            tracing::warn!(%addr, established, threshold, "connection threshold crossed");
                        } else if let SensorEvent::SynThreshold {
                            addr,
                            syns_in_second,
                            threshold,
                            ..
                        } = &ev
                        {
                            tracing::warn!(%addr, syns_in_second, threshold, "SYN rate threshold crossed");
                        }
                        let _ = self.events.send(ev);
                    }
                    None => {
                        tracing::warn!(len = item.len(), "malformed ring-buffer record dropped")
                    }
                }
            }
        }
    }
}

fn remove_clsact(name: &str) {
    // Only remove the qdisc we created, and only when nobody else put a filter on it.
    let has = |dir: &str| {
        std::process::Command::new("tc")
            .args(["filter", "show", "dev", name, dir])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(true)
    };
    if !has("ingress") && !has("egress") {
        let _ = std::process::Command::new("tc")
            .args(["qdisc", "del", "dev", name, "clsact"])
            .status();
    }
}

/// Position before whatever runs first on the hook now (or anywhere on an empty hook).
fn tcx_first(ifname: &str, dir: TcAttachType) -> LinkOrder {
    match SchedClassifier::query_tcx(ifname, dir) {
        Ok((_, progs)) => match progs.first() {
            Some(p) => {
                // SAFETY: the id was just returned by the kernel for a program attached to
                // this hook. Should that program detach before we attach, the kernel rejects
                // the anchor (ENOENT) and the caller retries at the end of the chain.
                let id = unsafe { aya::programs::ProgramId::new(p.id()) };
                LinkOrder::before_program_id(id)
            }
            None => LinkOrder::default(),
        },
        Err(_) => LinkOrder::default(),
    }
}

/// TCX (multi-program tc links) arrived in Linux 6.6.
fn has_tcx() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and nfds is 1.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns` and of event timestamps.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// A CLOCK_MONOTONIC time (an event's timestamp) on the Unix-epoch clock, through the
/// current offset between the two (exact up to the microseconds between the two reads, and
/// to any clock step since the event).
pub fn monotonic_to_unix_ns(t: u64) -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    unix.saturating_sub(monotonic_ns().saturating_sub(t))
}

/// Reads a `T` from the front of a record whose length was checked by the caller.
fn read_record<T: Copy>(b: &[u8]) -> Option<T> {
    if b.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the slice holds at least size_of::<T>() bytes and T is a plain #[repr(C)]
    // integer struct (vespa-common), valid for any bit pattern; read_unaligned copes with the
    // ring buffer's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record; None for anything malformed or of an unknown kind.
pub(crate) fn decode_event(b: &[u8]) -> Option<SensorEvent> {
    let h: EventHeader = read_record(b)?;
    if h.size as usize > b.len() || h.size as usize > MAX_EVENT_SIZE {
        return None;
    }
    let sock = |a: &Addr, port: u16| SocketAddr::new(ip_of(a), port);
    match h.kind {
        EVENT_CONN_OPEN | EVENT_CONN_CLOSE => {
            let e: ConnEvent = read_record(b)?;
            // The tracepoint converts both ports to host byte order (ntohs).
            let (local, remote) = (sock(&e.local, e.local_port), sock(&e.remote, e.remote_port));
            Some(if h.kind == EVENT_CONN_OPEN {
                SensorEvent::ConnOpened {
                    timestamp_ns: h.timestamp_ns,
                    local,
                    remote,
                    old_state: e.old_state.into(),
                }
            } else {
                SensorEvent::ConnClosed {
                    timestamp_ns: h.timestamp_ns,
                    local,
                    remote,
                    new_state: e.new_state.into(),
                    duration_ns: e.duration_ns,
                }
            })
        }
        EVENT_CONN_THRESHOLD => {
            let e: ThresholdEvent = read_record(b)?;
            Some(SensorEvent::ConnThreshold {
                timestamp_ns: h.timestamp_ns,
                addr: ip_of(&e.addr),
                established: e.value,
                threshold: e.threshold,
            })
        }
        EVENT_SYN_THRESHOLD => {
            let e: ThresholdEvent = read_record(b)?;
            Some(SensorEvent::SynThreshold {
                timestamp_ns: h.timestamp_ns,
                addr: ip_of(&e.addr),
                syns_in_second: e.value,
                threshold: e.threshold,
                ifindex: e.ifindex,
            })
        }
        _ => None,
    }
}

/// Loads the no-op classifier on its own and attaches it to `iface`: the benchmarks' baseline
/// for the cost of the tc hook itself. Dropping the returned value detaches it.
pub fn attach_noop(iface_name: &str) -> Result<impl Drop, SensorError> {
    let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(load_err)?;
    let mut links = Vec::new();
    {
        let p = classifier(&mut ebpf, PROG_NOOP)?;
        p.load().map_err(load_err)?;
        for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
            let id = p.attach(iface_name, dir).map_err(|e| SensorError::Attach {
                iface: iface_name.into(),
                reason: e.to_string(),
            })?;
            links.push(p.take_link(id).map_err(load_err)?);
        }
    }
    Ok(NoopGuard {
        _links: links,
        _ebpf: ebpf,
    })
}

/// Loads the no-op tracepoint program on `sock:inet_sock_set_state`: the benchmarks'
/// baseline for the cost of the tracepoint itself. Dropping the value detaches it.
pub fn attach_tracepoint_noop() -> Result<impl Drop, SensorError> {
    let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(load_err)?;
    {
        let tp: &mut TracePoint = ebpf
            .program_mut("vespa_tp_noop")
            .ok_or_else(|| load_err("vespa_tp_noop missing"))?
            .try_into()
            .map_err(load_err)?;
        tp.load().map_err(load_err)?;
        tp.attach("sock", "inet_sock_set_state").map_err(load_err)?;
    }
    Ok(NoopGuard {
        _links: Vec::new(),
        _ebpf: ebpf,
    })
}

struct NoopGuard {
    _links: Vec<SchedClassifierLink>,
    _ebpf: Ebpf,
}

impl Drop for NoopGuard {
    fn drop(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_decoded_and_garbage_rejected() {
        let ev = ThresholdEvent {
            header: EventHeader {
                kind: EVENT_CONN_THRESHOLD,
                size: 56,
                timestamp_ns: 42,
            },
            addr: Addr::from_v4([10, 0, 0, 9]),
            value: 101,
            threshold: 100,
            ifindex: 0,
            _pad: 0,
        };
        // SAFETY: ThresholdEvent is a plain #[repr(C)] struct without implicit padding.
        let bytes = unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), 56) };
        assert_eq!(
            decode_event(bytes),
            Some(SensorEvent::ConnThreshold {
                timestamp_ns: 42,
                addr: "10.0.0.9".parse().unwrap(),
                established: 101,
                threshold: 100
            })
        );
        assert_eq!(decode_event(&bytes[..20]), None, "truncated");
        let mut unknown = bytes.to_vec();
        unknown[0] = 99;
        assert_eq!(decode_event(&unknown), None, "unknown kind");
        let mut oversized = bytes.to_vec();
        oversized[4] = 200;
        assert_eq!(decode_event(&oversized), None, "size beyond the record");
        assert_eq!(decode_event(&[]), None);
    }
}
