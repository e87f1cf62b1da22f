//! The kernel object and how it is loaded: map sizes from the configuration, the verifier's
//! verdict on each program, the programs' configuration map, the tracepoint.

use aya::{
    programs::{BtfTracePoint, Program, ProgramError, SchedClassifier, TracePoint, Xdp},
    Btf, Ebpf, EbpfLoader,
};

use super::{
    firewall,
    kernel_log::{self, KernelLogger},
    maps::{self, Maps},
};
use crate::{config::SensorConfig, error::SensorError};

/// The kernel object, built by build.rs from `vespa-ebpf`.
pub(super) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vespa.bpf.o"));

pub(super) const PROG_INGRESS: &str = "vespa_ingress";
pub(super) const PROG_INGRESS_L3: &str = "vespa_ingress_l3";
/// The benchmarks' baseline: `vespa_ingress` without the firewall.
const PROG_INGRESS_COUNTERS: &str = "vespa_ingress_counters";
pub(super) const PROG_EGRESS: &str = "vespa_egress";
pub(super) const PROG_NOOP: &str = "vespa_tc_noop";
pub(super) const PROG_SOCK_STATE: &str = "vespa_sock_state";
pub(super) const PROG_TP_NOOP: &str = "vespa_tp_noop";
pub(super) const PROG_BTF_NOOP: &str = "vespa_btf_noop";
pub(super) const PROG_XDP: &str = "vespa_xdp";
pub(super) const PROG_XDP_NOOP: &str = "vespa_xdp_noop";

/// The maps pinned with `--pin-dir`: what must outlive an agent (the firewall, the interface
/// counters). The connection tables are not: the tracker's tracepoint stops with the agent,
/// so closes it misses meanwhile would leave counts too high.
pub(super) const PINNED: [&str; 12] = [
    "FW_CONFIG",
    "FW_STATS",
    "FW_COUNTS",
    "FW_BLOCK_IP",
    "FW_BLOCK_MAC",
    "FW_ALLOW_IP",
    "FW_ALLOW_MAC",
    "FW_THROTTLE_IP",
    "FW_THROTTLE_MAC",
    "FW_THROTTLE_DEV",
    "IFACE_STATS",
    "IFACE_STATS_BIG",
];

/// Interfaces with ifindex >= IFACE_ARRAY_SLOTS that can be counted at once.
pub(super) const MAX_BIG_IFINDEX_INTERFACES: u32 = 1024;

/// The tracepoint the connection tracker (and its no-op baselines) runs on: BTF-typed
/// (`tp_btf`) for the tracker, classic (`sock:…`) for the older baseline.
const TRACEPOINT: (&str, &str) = ("sock", "inet_sock_set_state");

/// A loaded object: the programs (classifiers loaded, tracepoint attached), the maps user
/// space reads, and the event ring buffer.
pub(super) struct Loaded {
    pub(super) ebpf: Ebpf,
    pub(super) maps: Maps,
    /// The firewall's tables.
    pub(super) fw: firewall::Tables,
    pub(super) ring: aya::maps::RingBuf<aya::maps::MapData>,
    /// The configuration the programs were given.
    pub(super) kernel_config: vespa_common::SensorConfig,
    /// The programs' log, when they log.
    pub(super) logger: Option<KernelLogger>,
}

/// Loads the object sized for `cfg`, loads the classifiers (attached later, per interface),
/// configures the programs and attaches the tracker: connections are tracked from here on.
pub(super) fn load(cfg: &SensorConfig) -> Result<Loaded, SensorError> {
    if OBJECT.is_empty() {
        return Err(SensorError::Unavailable(
            "this binary was built without the kernel programs".into(),
        ));
    }
    let log_level = kernel_log::level(cfg);
    let layout = crate::btf::Btf::from_kernel()
        .and_then(|btf| crate::btf::sock_layout(&btf))
        .map_err(|e| {
            SensorError::Unavailable(format!("the connection tracker's socket layout: {e}"))
        })?;
    let mut loader = EbpfLoader::new();
    loader
        .override_global(aya_log::LEVEL, &log_level, true)
        .override_global("SOCK_LAYOUT", &layout, true)
        .map_max_entries("CONN_BY_REMOTE", cfg.max_remotes.max(1))
        .map_max_entries("OPEN_SOCKETS", open_sets(cfg))
        .map_max_entries("OPEN_SOCKETS_MORE", open_overflow(cfg))
        .map_max_entries("SYN_BY_SOURCE", cfg.max_syn_sources.max(1))
        .map_max_entries("IFACE_STATS_BIG", MAX_BIG_IFINDEX_INTERFACES)
        .map_max_entries(
            "EVENTS",
            cfg.ring_buffer_bytes.next_power_of_two().max(4096),
        );
    loader.map_max_entries("FW_BLOCK_IP", cfg.max_blocks.max(1));
    let pins: Vec<(&'static str, std::path::PathBuf)> = match &cfg.pin_dir {
        Some(dir) => {
            crate::preflight::ensure_bpffs(dir)?;
            std::fs::create_dir_all(dir).map_err(|source| SensorError::Pin {
                path: dir.clone(),
                source,
            })?;
            PINNED.iter().map(|m| (*m, dir.join(m))).collect()
        }
        None => Vec::new(),
    };
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    if log_level == 0 {
        // Nothing is written to the log buffer: one page instead of aya-log's 128 KiB of
        // locked kernel memory.
        loader.map_max_entries("AYA_LOGS", 4096);
    }
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|e| SensorError::Load(e.into()))?;
    let logger = kernel_log::take(&mut ebpf, cfg)?;
    for name in [PROG_INGRESS, PROG_INGRESS_L3, PROG_EGRESS] {
        classifier(&mut ebpf, name)?
            .load()
            .map_err(program_error(name))?;
    }
    if cfg.xdp {
        program::<Xdp>(&mut ebpf, PROG_XDP)?
            .load()
            .map_err(program_error(PROG_XDP))?;
    }
    let fw = firewall::Tables::take(&mut ebpf, cfg.max_blocks.max(1))?;
    let mut maps = Maps::take(&mut ebpf)?;
    let kernel_config = kernel_config(cfg);
    maps.configure(kernel_config)?;
    let ring = maps::take(&mut ebpf, "EVENTS")?;
    attach_btf_tracepoint(&mut ebpf, PROG_SOCK_STATE)?;
    Ok(Loaded {
        ebpf,
        maps,
        fw,
        ring,
        kernel_config,
        logger,
    })
}

/// The kernel programs' configuration. Unless every namespace is wanted, the tracker is told
/// the calling thread's network namespace; if that cannot be told, it tracks every namespace
/// and says so.
fn kernel_config(cfg: &SensorConfig) -> vespa_common::SensorConfig {
    let mut k = vespa_common::SensorConfig {
        conn_threshold: cfg.conn_threshold,
        syn_per_sec_threshold: cfg.syn_per_sec_threshold,
        conn_events: cfg.conn_events as u32,
        open_sets_mask: open_sets(cfg) - 1,
        ..Default::default()
    };
    if !cfg.all_netns {
        match crate::netns::current_inode() {
            Ok(inum) => k.netns_inum = inum,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell this network namespace: tracking connections of every namespace")
            }
        }
    }
    k
}

/// Removes the pins of `dir` (maps and links) and the directory when nothing else is in it:
/// what a normal stop without `--keep-enforcing-on-exit` leaves behind is nothing.
pub(super) fn unpin_all(dir: &std::path::Path) {
    for m in PINNED {
        let _ = std::fs::remove_file(dir.join(m));
    }
    if let Ok(links) = std::fs::read_dir(dir.join("links")) {
        for l in links.flatten() {
            let _ = std::fs::remove_file(l.path());
        }
    }
    let _ = std::fs::remove_dir(dir.join("links"));
    let _ = std::fs::remove_dir(dir);
}

/// Sets of the open-socket table: `--max-sockets` slots (rounded up to a power of two) in
/// sets of four.
fn open_sets(cfg: &SensorConfig) -> u32 {
    cfg.max_sockets.max(4).next_power_of_two() / 4
}

/// Entries of the hash that takes the sockets whose set is full: a quarter of the slots.
fn open_overflow(cfg: &SensorConfig) -> u32 {
    open_sets(cfg)
}

/// Open sockets the tracker can hold: the slots of every set and the overflow hash.
pub(super) fn open_capacity(cfg: &SensorConfig) -> u64 {
    4 * u64::from(open_sets(cfg)) + u64::from(open_overflow(cfg))
}

/// The program `name` of the object, as a `T` (a classifier, an XDP program, a tracepoint).
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, SensorError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(SensorError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(program_error(name))
}

/// What a failure of the program `name` (its type, its load) is reported as.
fn program_error(name: &'static str) -> impl Fn(ProgramError) -> SensorError {
    move |source| SensorError::Program {
        what: name.into(),
        source: source.into(),
    }
}

/// The classifier `name` of the object.
pub(super) fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, SensorError> {
    program(ebpf, name)
}

/// Loads the BTF-typed tracepoint program `name` and attaches it to `inet_sock_set_state`.
fn attach_btf_tracepoint(ebpf: &mut Ebpf, name: &'static str) -> Result<(), SensorError> {
    let btf = Btf::from_sys_fs().map_err(|e| {
        SensorError::Unavailable(format!("reading the kernel's BTF for {name}: {e}"))
    })?;
    let tp = program::<BtfTracePoint>(ebpf, name)?;
    tp.load(TRACEPOINT.1, &btf).map_err(program_error(name))?;
    tp.attach().map_err(|source| SensorError::Program {
        what: format!("attaching tp_btf/{}", TRACEPOINT.1),
        source: source.into(),
    })?;
    Ok(())
}

/// Loads the tracepoint program `name` and attaches it to `sock:inet_sock_set_state`.
fn attach_tracepoint(ebpf: &mut Ebpf, name: &'static str) -> Result<(), SensorError> {
    let tp = program::<TracePoint>(ebpf, name)?;
    tp.load().map_err(program_error(name))?;
    let (category, event) = TRACEPOINT;
    tp.attach(category, event)
        .map_err(|source| SensorError::Program {
            what: format!("attaching {category}:{event}"),
            source: source.into(),
        })?;
    Ok(())
}

/// Loads the no-op classifier on its own and attaches it to `iface`: the benchmarks' baseline
/// for the cost of the tc hook itself. Dropping the returned value detaches it.
pub fn attach_noop(iface_name: &str) -> Result<impl Drop, SensorError> {
    attach_alone(iface_name, PROG_NOOP, PROG_NOOP)
}

/// Loads the counting classifiers as they were before the firewall (`vespa_ingress_counters`
/// on ingress: counters and SYN count, no verdict, no reflex; `vespa_egress`) in an object of
/// their own and attaches them to `iface`: the benchmarks' baseline for what the firewall
/// costs the traffic it does not block. Dropping the returned value detaches them.
pub fn attach_counters_baseline(iface_name: &str) -> Result<impl Drop, SensorError> {
    attach_alone(iface_name, PROG_INGRESS_COUNTERS, PROG_EGRESS)
}

/// Loads the object on its own (maps at their default sizes, the programs' configuration
/// zero) and attaches the classifier `ingress` on ingress and `egress` on egress of `iface`.
fn attach_alone(
    iface_name: &str,
    ingress: &'static str,
    egress: &'static str,
) -> Result<NoopGuard, SensorError> {
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .map_err(|e| SensorError::Load(e.into()))?;
    let mut links = Vec::new();
    for (name, dir) in [
        (ingress, aya::programs::TcAttachType::Ingress),
        (egress, aya::programs::TcAttachType::Egress),
    ] {
        let p = classifier(&mut ebpf, name)?;
        if p.fd().is_err() {
            p.load().map_err(program_error(name))?;
        }
        let attach = |source: ProgramError| SensorError::Attach {
            iface: iface_name.into(),
            what: format!("{name} ({dir:?})"),
            source: source.into(),
        };
        let id = p.attach(iface_name, dir).map_err(attach)?;
        links.push(p.take_link(id).map_err(attach)?);
    }
    Ok(NoopGuard {
        _links: links,
        _ebpf: ebpf,
    })
}

/// Loads a no-op program on `inet_sock_set_state`: the benchmarks' baseline for the cost of
/// the hook itself, BTF-typed (`btf`, the tracker's) or the classic tracepoint. Dropping the
/// value detaches it.
pub fn attach_tracepoint_noop(btf: bool) -> Result<impl Drop, SensorError> {
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .map_err(|e| SensorError::Load(e.into()))?;
    if btf {
        attach_btf_tracepoint(&mut ebpf, PROG_BTF_NOOP)?;
    } else {
        attach_tracepoint(&mut ebpf, PROG_TP_NOOP)?;
    }
    Ok(NoopGuard {
        _links: Vec::new(),
        _ebpf: ebpf,
    })
}

/// Loads the no-op XDP program and attaches it to `iface` in driver mode: the benchmarks'
/// baseline for the cost of an XDP program itself. Dropping the value detaches it.
pub fn attach_xdp_noop(iface_name: &str) -> Result<impl Drop, SensorError> {
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .map_err(|e| SensorError::Load(e.into()))?;
    let xdp = program::<Xdp>(&mut ebpf, PROG_XDP_NOOP)?;
    xdp.load().map_err(program_error(PROG_XDP_NOOP))?;
    xdp.attach(iface_name, aya::programs::XdpMode::Driver)
        .map_err(|source| SensorError::Attach {
            iface: iface_name.into(),
            what: PROG_XDP_NOOP.into(),
            source: source.into(),
        })?;
    Ok(NoopGuard {
        _links: Vec::new(),
        _ebpf: ebpf,
    })
}

struct NoopGuard {
    _links: Vec<aya::programs::tc::SchedClassifierLink>,
    _ebpf: Ebpf,
}

impl Drop for NoopGuard {
    fn drop(&mut self) {}
}
