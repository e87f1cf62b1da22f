//! TCP connection tracker on the BTF-typed tracepoint `inet_sock_set_state` (`tp_btf`).
//!
//! A connection counts as open from its transition into ESTABLISHED to its transition out of
//! it. The tracker marks each socket it counted as open (`open_sockets`), so that a close is
//! only counted for an open it saw: connections older than the tracker never make a count
//! negative. Half-open connections (SYN floods) never reach this tracepoint; see
//! `traffic::count_syn`.
//!
//! The program gets the socket as a BTF-typed pointer and loads what it needs (protocol,
//! family, addresses, namespace, cookie) straight from it, at offsets the agent finds in the
//! kernel's BTF and writes into `SOCK_LAYOUT` before loading it. The classic tracepoint
//! (`sock:inet_sock_set_state`) would hand over a record with the addresses already copied,
//! but the kernel fills that record on every state change, for every socket, before the
//! program even looks at the states; its hook costs more than this one's.

use core::{ffi::c_void, net::Ipv6Addr, ptr};

use aya_ebpf::{
    helpers::bpf_skc_to_tcp_sock,
    macros::{btf_tracepoint, map, tracepoint},
    maps::LruHashMap,
    programs::{BtfTracePointContext, TracePointContext},
    EbpfContext,
};
use aya_log_ebpf::{debug, info};
use vespa_common::{
    Addr, ConnEvent, RemoteConns, SensorConfig, SockLayout, ThresholdEvent, EVENT_CONN_CLOSE,
    EVENT_CONN_OPEN, EVENT_CONN_THRESHOLD, STAT_TRACEPOINT_RUNS, STAT_UNTRACKED_CLOSES,
};

use crate::{
    common::{atomic_add, atomic_sub, bump, config, emit, header, now_ns, update_failed},
    firewall, open_sockets,
};

/// Per remote address: established now, opened and closed in total. Size set at load time
/// (default 65,536 addresses).
#[map(name = "CONN_BY_REMOTE")]
static CONN_BY_REMOTE: LruHashMap<Addr, RemoteConns> = LruHashMap::with_max_entries(65536, 0);

/// Where the program finds the socket's fields: written by the agent before loading, from
/// the running kernel's BTF. Read-only, so the verifier knows every offset as a constant and
/// checks each load against the kernel's types.
#[unsafe(no_mangle)]
static SOCK_LAYOUT: SockLayout = SockLayout {
    family: 0,
    daddr: 0,
    rcv_saddr: 0,
    v6_daddr: 0,
    v6_rcv_saddr: 0,
    dport: 0,
    sport: 0,
    net: 0,
    net_inum: 0,
    protocol: 0,
    cookie: 0,
    _pad: 0,
};

/// One field's offset from [`SOCK_LAYOUT`]: a volatile load, so that the compiler does not
/// fold the placeholder and the verifier reads the value the agent wrote.
macro_rules! offset {
    ($field:ident) => {
        read_offset(&raw const SOCK_LAYOUT.$field)
    };
}

#[inline(always)]
fn read_offset(field: *const u32) -> u32 {
    // SAFETY: `field` points into SOCK_LAYOUT (see `offset!`): aligned, never written.
    unsafe { ptr::read_volatile(field) }
}

/// What an open socket keeps when no per-connection events are wanted (its opening time is
/// then never used, and not taken).
const OPEN_UNTIMED: u64 = 1;

const TCP_ESTABLISHED: i32 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn vespa_sock_state(ctx: BtfTracePointContext) -> i32 {
    // The tracepoint's arguments: (const struct sock *sk, int oldstate, int newstate).
    let (old, new): (i32, i32) = (ctx.arg(1), ctx.arg(2));
    // Most transitions (SYN_SENT, FIN_WAIT*, TIME_WAIT...) are not ours: leave before
    // touching the socket or any map, the run counter included.
    let opening = new == TCP_ESTABLISHED && old != TCP_ESTABLISHED;
    let closing = old == TCP_ESTABLISHED && new != TCP_ESTABLISHED;
    if !opening && !closing {
        return 0;
    }
    bump(STAT_TRACEPOINT_RUNS);
    let sk: *mut c_void = ctx.arg(0);
    // SAFETY: `sk` is the tracepoint's socket; the offsets are the kernel's.
    let sock = unsafe {
        // The tracepoint also fires for SCTP and MPTCP sockets.
        if load::<u16>(sk.cast(), offset!(protocol)) != IPPROTO_TCP {
            return 0;
        }
        Sock::read(sk, old, new)
    };
    if sock.family != AF_INET && sock.family != AF_INET6 {
        return 0;
    }
    let cfg = config();
    if opening {
        if ours(&ctx, &sock, &cfg) {
            opened(&ctx, &sock, &cfg);
        }
    } else {
        closed(&ctx, &sock, &cfg);
    }
    0
}

/// Loads a `T` at `off` bytes into the kernel object at `p`.
///
/// # Safety
/// `p` must be a BTF-typed kernel pointer with a `T` at `off` (the verifier checks the
/// access against the kernel's BTF and turns it into a load that cannot fault).
#[inline(always)]
unsafe fn load<T>(p: *const u8, off: u32) -> T {
    // SAFETY: forwarded to the caller.
    unsafe { ptr::read_volatile(p.add(off as usize).cast::<T>()) }
}

/// What every counted transition needs: the socket, its family and its remote address. The
/// local end and the ports are read only for events.
struct Sock {
    sk: *mut c_void,
    oldstate: i32,
    newstate: i32,
    family: u16,
    remote: Addr,
}

impl Sock {
    /// # Safety
    /// `sk` must be the tracepoint's socket, a TCP socket.
    #[inline(always)]
    unsafe fn read(sk: *mut c_void, oldstate: i32, newstate: i32) -> Sock {
        let p = sk.cast::<u8>().cast_const();
        // SAFETY: forwarded to the caller; the offsets are the kernel's.
        unsafe {
            let family: u16 = load(p, offset!(family));
            let remote = if family == AF_INET {
                Addr::from_v4(load::<u32>(p, offset!(daddr)).to_ne_bytes())
            } else {
                v6_at(p, offset!(v6_daddr))
            };
            Sock {
                sk,
                oldstate,
                newstate,
                family,
                remote,
            }
        }
    }

    #[inline(always)]
    fn ptr(&self) -> *const u8 {
        self.sk.cast::<u8>().cast_const()
    }

    /// The socket's cookie; 0 if it was never given one (so never marked open).
    #[inline(always)]
    fn cookie(&self) -> u64 {
        // SAFETY: as in `read`.
        unsafe { load(self.ptr(), offset!(cookie)) }
    }

    /// The local address.
    #[inline(always)]
    fn local(&self) -> Addr {
        // SAFETY: as in `read`.
        unsafe {
            if self.family == AF_INET {
                Addr::from_v4(load::<u32>(self.ptr(), offset!(rcv_saddr)).to_ne_bytes())
            } else {
                v6_at(self.ptr(), offset!(v6_rcv_saddr))
            }
        }
    }

    /// (local, remote) ports in host order. The local one is read from `inet_sport`, past
    /// `struct sock`, through the `struct tcp_sock` the kernel vouches for; unlike
    /// `skc_num`, it is still set when the socket has just closed.
    #[inline(always)]
    fn ports(&self) -> (u16, u16) {
        // SAFETY: as in `read`; the helper returns the socket as a `struct tcp_sock *`, or
        // null if it is not one.
        unsafe {
            let tcp = bpf_skc_to_tcp_sock(self.sk).cast::<u8>().cast_const();
            let local = if tcp.is_null() {
                0
            } else {
                u16::from_be(load(tcp, offset!(sport)))
            };
            (local, u16::from_be(load(self.ptr(), offset!(dport))))
        }
    }
}

/// An IPv6 address (`struct in6_addr`) at `off` in the socket.
///
/// # Safety
/// As for [`load`].
#[inline(always)]
unsafe fn v6_at(p: *const u8, off: u32) -> Addr {
    // SAFETY: forwarded to the caller; two loads inside the 16-byte address.
    let (hi, lo) = unsafe { (load::<u64>(p, off), load::<u64>(p, off + 8)) };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_ne_bytes());
    bytes[8..].copy_from_slice(&lo.to_ne_bytes());
    Addr { bytes }
}

/// Whether the socket belongs to the network namespace the tracker watches (always, when it
/// watches every namespace): its `struct net`'s inode number against the watched one.
#[inline(always)]
fn ours<C: EbpfContext>(ctx: &C, sock: &Sock, cfg: &SensorConfig) -> bool {
    if cfg.netns_inum == 0 {
        return true;
    }
    // SAFETY: the socket's `skc_net.net` and that namespace's `ns.inum`, at the kernel's
    // offsets; loads the verifier guards (a null `net` reads 0: not ours).
    let inum: u32 = unsafe {
        let net: *const u8 = load(sock.ptr(), offset!(net));
        load(net, offset!(net_inum))
    };
    let ours = inum == cfg.netns_inum;
    if !ours {
        debug!(
            ctx,
            "socket to {:i}: namespace {} is not the watched {}, not tracked",
            Ipv6Addr::from(sock.remote.bytes).to_canonical(),
            inum,
            cfg.netns_inum
        );
    }
    ours
}

#[inline(always)]
fn remote_entry<C: EbpfContext>(ctx: &C, addr: &Addr) -> Option<*mut RemoteConns> {
    if let Some(e) = CONN_BY_REMOTE.get_ptr_mut(addr) {
        return Some(e);
    }
    // Losing the insert race to another CPU is fine: the lookup below finds its entry.
    let inserted = CONN_BY_REMOTE.insert(
        addr,
        &RemoteConns::default(),
        aya_ebpf::bindings::BPF_NOEXIST as u64,
    );
    let e = CONN_BY_REMOTE.get_ptr_mut(addr);
    if e.is_none() {
        update_failed(ctx, "CONN_BY_REMOTE", inserted.err().unwrap_or(0));
    }
    e
}

#[inline(always)]
fn opened<C: EbpfContext>(ctx: &C, sock: &Sock, cfg: &SensorConfig) {
    let now = if cfg.conn_events != 0 {
        now_ns()
    } else {
        OPEN_UNTIMED
    };
    // Only the first transition into ESTABLISHED of a socket counts (a second one could only
    // follow a close, which unmarks it).
    let cookie = open_sockets::cookie(sock.sk);
    match open_sockets::mark(cookie, cfg.open_sets_mask, now) {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            update_failed(ctx, "OPEN_SOCKETS", e);
            return;
        }
    }
    let Some(e) = remote_entry(ctx, &sock.remote) else {
        return;
    };
    // SAFETY: `e` points to a live LRU-hash value; all concurrent updates of the counters are
    // atomic. The opens are `established + closed` (see `RemoteConns::opened`).
    let established = unsafe { atomic_add(&raw mut (*e).established, 1) + 1 };
    // The firewall's reflex, when its connection threshold is set: the remote is blocked in
    // the kernel by the connection that crosses it.
    firewall::reflex(ctx, &sock.remote, EVENT_CONN_THRESHOLD, established);
    if cfg.conn_events != 0 {
        emit(ctx, conn_event(sock, EVENT_CONN_OPEN, now, now, 0), false);
    }
    if cfg.conn_threshold != 0 && established > cfg.conn_threshold {
        // Stamped like the open event that crossed, when there is one.
        let at = if cfg.conn_events != 0 { now } else { now_ns() };
        crossed(ctx, e, &sock.remote, established, cfg.conn_threshold, at);
    }
}

/// `remote` has `established` connections, over `threshold`, since the open at `now`: on the
/// crossing itself (not on every connection above it), says so at once.
#[inline(always)]
fn crossed<C: EbpfContext>(
    ctx: &C,
    e: *mut RemoteConns,
    remote: &Addr,
    established: u64,
    threshold: u64,
    now: u64,
) {
    // SAFETY: `e` points to a live LRU-hash value; `over_threshold` is a flag where a lost
    // race only repeats or skips one event.
    let first = unsafe {
        let flag = &raw mut (*e).over_threshold;
        let first = *flag == 0;
        if first {
            *flag = 1;
        }
        first
    };
    if !first {
        return;
    }
    info!(
        ctx,
        "remote {:i}: {} established connections, over the threshold of {}",
        Ipv6Addr::from(remote.bytes).to_canonical(),
        established,
        threshold
    );
    emit(
        ctx,
        ThresholdEvent {
            header: header(
                EVENT_CONN_THRESHOLD,
                core::mem::size_of::<ThresholdEvent>(),
                now,
            ),
            addr: *remote,
            value: established,
            threshold,
            ifindex: 0,
            _pad: 0,
        },
        true,
    );
}

#[inline(always)]
fn closed<C: EbpfContext>(ctx: &C, sock: &Sock, cfg: &SensorConfig) {
    let cookie = sock.cookie();
    let kept = match open_sockets::take(cookie, cfg.open_sets_mask) {
        Some(v) => v,
        None => {
            // Not in its set: a socket of another namespace, one opened before the tracker,
            // or one whose set was full. Only the watched namespace's sockets are marked, so
            // the namespace is read (and the hash searched) only for these rarer closes.
            if !ours(ctx, sock, cfg) {
                return;
            }
            let Some(v) = open_sockets::take_overflow(cookie) else {
                bump(STAT_UNTRACKED_CLOSES);
                debug!(
                    ctx,
                    "socket to {:i}: closed, opened before the tracker, not counted",
                    Ipv6Addr::from(sock.remote.bytes).to_canonical()
                );
                return;
            };
            v
        }
    };
    let Some(e) = remote_entry(ctx, &sock.remote) else {
        return;
    };
    // SAFETY: as in `opened`.
    let established = unsafe {
        let before = atomic_sub(&raw mut (*e).established, 1);
        if before == 0 {
            // The remote's entry was evicted (LRU) and recreated since the open: undo rather
            // than wrap around, and leave the new entry's counts as they were.
            atomic_add(&raw mut (*e).established, 1);
            0
        } else {
            atomic_add(&raw mut (*e).closed, 1);
            before - 1
        }
    };
    if established <= cfg.conn_threshold {
        // SAFETY: as in `crossed`; written only when set, so that closes below the
        // threshold leave the entry's cache line to other CPUs' atomics.
        unsafe {
            if (*e).over_threshold != 0 {
                (*e).over_threshold = 0;
            }
        }
    }
    if cfg.conn_events != 0 {
        let now = now_ns();
        let opened_ns = if kept == OPEN_UNTIMED { 0 } else { kept };
        let duration = if opened_ns == 0 {
            0
        } else {
            now.saturating_sub(opened_ns)
        };
        emit(
            ctx,
            conn_event(sock, EVENT_CONN_CLOSE, now, opened_ns, duration),
            false,
        );
    }
}

#[inline(always)]
fn conn_event(sock: &Sock, kind: u32, now: u64, opened_ns: u64, duration_ns: u64) -> ConnEvent {
    let (local_port, remote_port) = sock.ports();
    ConnEvent {
        header: header(kind, core::mem::size_of::<ConnEvent>(), now),
        local: sock.local(),
        remote: sock.remote,
        local_port,
        remote_port,
        family: sock.family,
        _pad: 0,
        old_state: sock.oldstate as u32,
        new_state: sock.newstate as u32,
        opened_ns,
        duration_ns,
    }
}

/// Does nothing: the benchmarks' baseline for the cost of the tracker's hook itself.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn vespa_btf_noop(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// Does nothing on the classic tracepoint `sock:inet_sock_set_state`: the benchmarks'
/// baseline for the hook the tracker used before.
#[tracepoint]
pub fn vespa_tp_noop(_ctx: TracePointContext) -> u32 {
    0
}
