//! TCP connection tracker on the `sock:inet_sock_set_state` tracepoint.
//!
//! A connection counts as open from its transition into ESTABLISHED to its transition out of
//! it. The tracker keys each socket by its kernel address so that a close is only counted for
//! an open it saw: connections older than the tracker never make a count negative.
//! Half-open connections (SYN floods) never reach this tracepoint; see `traffic::count_syn`.

use core::net::Ipv6Addr;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_probe_read_kernel,
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap},
    programs::TracePointContext,
    EbpfContext,
};
use aya_log_ebpf::{debug, info};
use vespa_common::{
    Addr, ConnEvent, RemoteConns, SensorConfig, ThresholdEvent, EVENT_CONN_CLOSE, EVENT_CONN_OPEN,
    EVENT_CONN_THRESHOLD, STAT_TRACEPOINT_RUNS, STAT_UNTRACKED_CLOSES,
};

use crate::common::{atomic_add, atomic_sub, bump, config, emit, header, now_ns, update_failed};

/// Per remote address: established now, opened and closed in total. Size set at load time
/// (default 65,536 addresses).
#[map(name = "CONN_BY_REMOTE")]
static CONN_BY_REMOTE: LruHashMap<Addr, RemoteConns> = LruHashMap::with_max_entries(65536, 0);

/// Open sockets the tracker saw become ESTABLISHED: kernel socket address -> open time (ns).
/// A plain (preallocated) hash, not an LRU: evicting an open socket would leave its remote's
/// count one too high forever, while refusing a new one when full (counted as a map update
/// failure) only leaves that connection uncounted, in both directions.
#[map(name = "OPEN_SOCKETS")]
static OPEN_SOCKETS: HashMap<u64, u64> = HashMap::with_max_entries(131072, 0);

/// The watched namespace's `struct net`, learned from the first socket whose namespace inode
/// matched: later sockets are recognised by one pointer comparison instead of a second read.
/// (The namespace cannot go away while the agent lives in it, so the pointer stays its own.)
#[map(name = "WATCHED_NET")]
static WATCHED_NET: Array<u64> = Array::with_max_entries(1, 0);

const TCP_ESTABLISHED: i32 = 1;
const EEXIST: i32 = 17;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

// Field offsets in /sys/kernel/tracing/events/sock/inet_sock_set_state/format; stable since
// the tracepoint gained `protocol` (Linux 4.16).
const OFF_SKADDR: usize = 8;
const OFF_OLDSTATE: usize = 16;
const OFF_NEWSTATE: usize = 20;
const OFF_SPORT: usize = 24;
const OFF_DPORT: usize = 26;
const OFF_FAMILY: usize = 28;
const OFF_PROTOCOL: usize = 30;
const OFF_SADDR: usize = 32;
const OFF_DADDR: usize = 36;
const OFF_SADDR_V6: usize = 40;
const OFF_DADDR_V6: usize = 56;

#[tracepoint]
pub fn vespa_sock_state(ctx: TracePointContext) -> u32 {
    bump(STAT_TRACEPOINT_RUNS);
    let base = ctx.as_ptr() as *const u8;
    // SAFETY: this program is attached to sock:inet_sock_set_state only, whose record has
    // these int fields at these offsets (see the format file); aligned single loads.
    let (old, new) = unsafe {
        (
            core::ptr::read_volatile(base.add(OFF_OLDSTATE) as *const i32),
            core::ptr::read_volatile(base.add(OFF_NEWSTATE) as *const i32),
        )
    };
    // Most transitions (SYN_SENT, FIN_WAIT*, TIME_WAIT...) are not ours: leave before
    // reading the rest of the record.
    let opening = new == TCP_ESTABLISHED && old != TCP_ESTABLISHED;
    let closing = old == TCP_ESTABLISHED && new != TCP_ESTABLISHED;
    if !opening && !closing {
        return 0;
    }
    // SAFETY: as above, for every field Record::read loads.
    let rec = unsafe { Record::read(&ctx) };
    if rec.protocol != IPPROTO_TCP || (rec.family != AF_INET && rec.family != AF_INET6) {
        return 0;
    }
    let cfg = config();
    if opening {
        if ours(&ctx, rec.skaddr, &cfg) {
            opened(&ctx, &rec, &cfg);
        }
    } else {
        closed(&ctx, &rec, &cfg);
    }
    0
}

/// Whether the socket at `sk` belongs to the network namespace the tracker watches (always,
/// when it watches every namespace). A socket whose namespace cannot be read is not ours.
#[inline(always)]
fn ours(ctx: &TracePointContext, sk: u64, cfg: &SensorConfig) -> bool {
    if cfg.netns_inum == 0 {
        return true;
    }
    // SAFETY: bpf_probe_read_kernel validates the source address and returns an error
    // instead of faulting; the offsets come from the running kernel's BTF (sock_common.skc_net,
    // net.ns.inum) and `sk` is the tracepoint's live socket.
    let Ok(net) = (unsafe { bpf_probe_read_kernel((sk + cfg.sk_net_offset as u64) as *const u64) })
    else {
        debug!(ctx, "socket {:x}: namespace unreadable, not tracked", sk);
        return false;
    };
    if net == WATCHED_NET.get(0).copied().unwrap_or(0) {
        return true;
    }
    // SAFETY: as above.
    let inum = unsafe { bpf_probe_read_kernel((net + cfg.net_inum_offset as u64) as *const u32) };
    let ours = inum == Ok(cfg.netns_inum);
    if let Some(p) = WATCHED_NET.get_ptr_mut(0).filter(|_| ours) {
        // SAFETY: a pointer from a successful array lookup; an aligned 8-byte store is
        // atomic, and every CPU stores the same value.
        unsafe { *p = net };
        info!(
            ctx,
            "namespace {} is struct net {:x}: recognised by address from now on",
            cfg.netns_inum,
            net
        );
    } else if !ours {
        debug!(
            ctx,
            "socket {:x}: namespace {} is not the watched {}, not tracked",
            sk,
            inum.unwrap_or(0),
            cfg.netns_inum
        );
    }
    ours
}

struct Record {
    skaddr: u64,
    oldstate: i32,
    newstate: i32,
    sport: u16,
    dport: u16,
    family: u16,
    protocol: u16,
    local: Addr,
    remote: Addr,
}

impl Record {
    /// # Safety
    /// `ctx` must be an `inet_sock_set_state` tracepoint context.
    #[inline(always)]
    unsafe fn read(ctx: &TracePointContext) -> Record {
        let base = ctx.as_ptr() as *const u8;
        // SAFETY: caller guarantees the layout. Every read is a single naturally aligned load
        // at a constant offset from the context pointer, the only form of context access the
        // verifier accepts (no pointer arithmetic on ctx, no byte-wise copies).
        unsafe {
            let u16_at = |off: usize| core::ptr::read_volatile(base.add(off) as *const u16);
            let u32_at = |off: usize| core::ptr::read_volatile(base.add(off) as *const u32);
            let u64_at = |off: usize| core::ptr::read_volatile(base.add(off) as *const u64);
            let v6_at = |off: usize| {
                let (hi, lo) = (u64_at(off), u64_at(off + 8));
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&hi.to_ne_bytes());
                bytes[8..].copy_from_slice(&lo.to_ne_bytes());
                Addr { bytes }
            };
            let family = u16_at(OFF_FAMILY);
            let (local, remote) = if family == AF_INET {
                (
                    Addr::from_v4(u32_at(OFF_SADDR).to_ne_bytes()),
                    Addr::from_v4(u32_at(OFF_DADDR).to_ne_bytes()),
                )
            } else {
                (v6_at(OFF_SADDR_V6), v6_at(OFF_DADDR_V6))
            };
            Record {
                skaddr: u64_at(OFF_SKADDR),
                oldstate: u32_at(OFF_OLDSTATE) as i32,
                newstate: u32_at(OFF_NEWSTATE) as i32,
                sport: u16_at(OFF_SPORT),
                dport: u16_at(OFF_DPORT),
                family,
                protocol: u16_at(OFF_PROTOCOL),
                local,
                remote,
            }
        }
    }
}

#[inline(always)]
fn remote_entry(ctx: &TracePointContext, addr: &Addr) -> Option<*mut RemoteConns> {
    if let Some(e) = CONN_BY_REMOTE.get_ptr_mut(addr) {
        return Some(e);
    }
    // Losing the insert race to another CPU is fine: the lookup below finds its entry.
    let inserted = CONN_BY_REMOTE.insert(addr, &RemoteConns::default(), BPF_NOEXIST as u64);
    let e = CONN_BY_REMOTE.get_ptr_mut(addr);
    if e.is_none() {
        update_failed(ctx, "CONN_BY_REMOTE", inserted.err().unwrap_or(0));
    }
    e
}

#[inline(always)]
fn opened(ctx: &TracePointContext, rec: &Record, cfg: &SensorConfig) {
    let now = now_ns();
    // Only the first transition into ESTABLISHED of a socket counts. EEXIST means seen;
    // anything else is a full table.
    if let Err(e) = OPEN_SOCKETS.insert(&rec.skaddr, &now, BPF_NOEXIST as u64) {
        if e != -EEXIST {
            update_failed(ctx, "OPEN_SOCKETS", e);
        }
        return;
    }
    let Some(e) = remote_entry(ctx, &rec.remote) else {
        return;
    };
    // SAFETY: `e` points to a live LRU-hash value; all concurrent updates of the counters are
    // atomic; `over_threshold` is a flag where a lost race only repeats or skips one event.
    let established = unsafe {
        atomic_add(&raw mut (*e).opened, 1);
        atomic_add(&raw mut (*e).established, 1) + 1
    };
    if cfg.conn_events != 0 {
        emit(ctx, conn_event(rec, EVENT_CONN_OPEN, now, now, 0), false);
    }
    if cfg.conn_threshold != 0 && established > cfg.conn_threshold {
        // SAFETY: as above.
        let fire = unsafe {
            let flag = &raw mut (*e).over_threshold;
            if *flag == 0 {
                *flag = 1;
                true
            } else {
                false
            }
        };
        if fire {
            info!(
                ctx,
                "remote {:i}: {} established connections, over the threshold of {}",
                Ipv6Addr::from(rec.remote.bytes).to_canonical(),
                established,
                cfg.conn_threshold
            );
            emit(
                ctx,
                ThresholdEvent {
                    header: header(
                        EVENT_CONN_THRESHOLD,
                        core::mem::size_of::<ThresholdEvent>(),
                        now,
                    ),
                    addr: rec.remote,
                    value: established,
                    threshold: cfg.conn_threshold,
                    ifindex: 0,
                    _pad: 0,
                },
                true,
            );
        }
    }
}

#[inline(always)]
fn closed(ctx: &TracePointContext, rec: &Record, cfg: &SensorConfig) {
    let now = now_ns();
    // The open time is only needed for the close event's duration: without events, the
    // removal alone tells whether the socket was counted (one hash operation, not two).
    let opened_ns = if cfg.conn_events != 0 {
        // SAFETY: a value from a successful lookup, copied out at once.
        let found = (unsafe { OPEN_SOCKETS.get(&rec.skaddr) }).copied();
        if found.is_some() {
            let _ = OPEN_SOCKETS.remove(&rec.skaddr);
        }
        found
    } else {
        OPEN_SOCKETS.remove(&rec.skaddr).ok().map(|_| 0)
    };
    let Some(opened_ns) = opened_ns else {
        // Only sockets that were opened in the watched namespace are in the table: the
        // namespace is read only for the rare close it does not know.
        if ours(ctx, rec.skaddr, cfg) {
            bump(STAT_UNTRACKED_CLOSES);
            debug!(
                ctx,
                "socket {:x}: closed, opened before the tracker, not counted", rec.skaddr
            );
        }
        return;
    };
    let Some(e) = remote_entry(ctx, &rec.remote) else {
        return;
    };
    // SAFETY: as in `opened`.
    let established = unsafe {
        atomic_add(&raw mut (*e).closed, 1);
        let before = atomic_sub(&raw mut (*e).established, 1);
        if before == 0 {
            // The remote's entry was evicted (LRU) and recreated since the open: undo rather
            // than wrap around.
            atomic_add(&raw mut (*e).established, 1);
            0
        } else {
            before - 1
        }
    };
    if established <= cfg.conn_threshold {
        // SAFETY: as in `opened`.
        unsafe { (*e).over_threshold = 0 };
    }
    if cfg.conn_events != 0 {
        emit(
            ctx,
            conn_event(
                rec,
                EVENT_CONN_CLOSE,
                now,
                opened_ns,
                now.saturating_sub(opened_ns),
            ),
            false,
        );
    }
}

#[inline(always)]
fn conn_event(rec: &Record, kind: u32, now: u64, opened_ns: u64, duration_ns: u64) -> ConnEvent {
    ConnEvent {
        header: header(kind, core::mem::size_of::<ConnEvent>(), now),
        local: rec.local,
        remote: rec.remote,
        local_port: rec.sport,
        remote_port: rec.dport,
        family: rec.family,
        _pad: 0,
        old_state: rec.oldstate as u32,
        new_state: rec.newstate as u32,
        opened_ns,
        duration_ns,
    }
}

/// Does nothing: the benchmarks' baseline for the cost of the tracepoint itself.
#[tracepoint]
pub fn vespa_tp_noop(_ctx: TracePointContext) -> u32 {
    0
}
