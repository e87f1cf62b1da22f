//! tc classifiers: per-interface byte/packet counters and the per-source SYN counter.
//!
//! Attached with TCX (or clsact on kernels without it) on ingress and egress of each
//! monitored interface. They never modify a packet, and drop only what the firewall
//! (`firewall.rs`) blocks or throttles on ingress; otherwise the return value is
//! `TC_ACT_UNSPEC` ("no opinion"), so other programs on the same hook keep working.

use core::net::Ipv6Addr;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, map},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::TcContext,
};
use aya_log_ebpf::info;
use vespa_common::{
    Addr, IfaceStats, SynCounter, ThresholdEvent, EVENT_SYN_THRESHOLD, IFACE_ARRAY_SLOTS,
};

use crate::{
    common::{atomic_add, config, emit, header, now_ns, update_failed},
    firewall::{self, Verdict},
};

/// Counters of interfaces with ifindex < IFACE_ARRAY_SLOTS, indexed by ifindex.
#[map(name = "IFACE_STATS")]
static IFACE_STATS: PerCpuArray<IfaceStats> = PerCpuArray::with_max_entries(IFACE_ARRAY_SLOTS, 0);

/// Counters of interfaces with larger ifindexes, keyed by ifindex.
#[map(name = "IFACE_STATS_BIG")]
static IFACE_STATS_BIG: PerCpuHashMap<u32, IfaceStats> = PerCpuHashMap::with_max_entries(1024, 0);

/// SYN-without-ACK packets per source address. Bounded LRU: a spoofed flood evicts old
/// sources instead of filling kernel memory.
#[map(name = "SYN_BY_SOURCE")]
static SYN_BY_SOURCE: LruHashMap<Addr, SynCounter> = LruHashMap::with_max_entries(65536, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;
const NS_PER_SEC: u64 = 1_000_000_000;

/// Ingress on Ethernet-framed devices (veth, tap, bridges, physical NICs, lo).
#[classifier]
pub fn vespa_ingress(ctx: TcContext) -> i32 {
    count(&ctx, true);
    if firewall_drops(&ctx, true) {
        return TC_ACT_SHOT;
    }
    count_syn(&ctx, ETH_HLEN, true);
    TC_ACT_UNSPEC
}

/// What `vespa_ingress` did before the firewall: the counters and the SYN count, with no
/// verdict and no reflex. Never attached by the sensors: the benchmarks' baseline for what
/// the firewall costs the traffic it does not block.
#[classifier]
pub fn vespa_ingress_counters(ctx: TcContext) -> i32 {
    count(&ctx, true);
    count_syn(&ctx, ETH_HLEN, false);
    TC_ACT_UNSPEC
}

/// Ingress on raw-IP devices (tun, wireguard): the packet starts at the IP header.
#[classifier]
pub fn vespa_ingress_l3(ctx: TcContext) -> i32 {
    count(&ctx, true);
    if firewall_drops(&ctx, false) {
        return TC_ACT_SHOT;
    }
    count_syn(&ctx, 0, true);
    TC_ACT_UNSPEC
}

/// Whether the firewall drops the packet (`l2`: Ethernet device).
#[inline(always)]
fn firewall_drops(ctx: &TcContext, l2: bool) -> bool {
    // SAFETY: ctx.skb wraps the kernel's __sk_buff; `protocol` is in network byte order.
    let proto = unsafe { u16::from_be((*ctx.skb.skb).protocol as u16) };
    firewall::verdict(ctx.data(), ctx.data_end(), l2, proto, ctx.len() as u64) == Verdict::Drop
}

#[classifier]
pub fn vespa_egress(ctx: TcContext) -> i32 {
    count(&ctx, false);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn count(ctx: &TcContext, ingress: bool) {
    let Some(s) = stats(ctx) else { return };
    let len = ctx.len() as u64;
    // SAFETY: per-CPU value from a successful lookup; only this CPU writes it.
    unsafe {
        if ingress {
            (*s).rx_bytes += len;
            (*s).rx_packets += 1;
        } else {
            (*s).tx_bytes += len;
            (*s).tx_packets += 1;
        }
    }
}

/// Does nothing: the baseline the benchmarks compare our classifiers with.
#[classifier]
pub fn vespa_tc_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// This CPU's counters of the packet's interface. The common case is one array lookup,
/// which the verifier inlines into an address computation.
#[inline(always)]
fn stats(ctx: &TcContext) -> Option<*mut IfaceStats> {
    // SAFETY: ctx.skb wraps the __sk_buff the kernel passed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if ifindex < IFACE_ARRAY_SLOTS {
        return IFACE_STATS.get_ptr_mut(ifindex);
    }
    if let Some(s) = IFACE_STATS_BIG.get_ptr_mut(&ifindex) {
        return Some(s);
    }
    // Another CPU may insert the key meanwhile: BPF_NOEXIST fails then and the lookup
    // below finds this CPU's (zeroed) slot of the existing entry.
    let inserted = IFACE_STATS_BIG.insert(&ifindex, &IfaceStats::default(), BPF_NOEXIST as u64);
    let s = IFACE_STATS_BIG.get_ptr_mut(&ifindex);
    if s.is_none() {
        update_failed(ctx, "IFACE_STATS_BIG", inserted.err().unwrap_or(0));
    }
    s
}

/// Counts a SYN-without-ACK per source and raises the threshold event; `reflex`: the
/// firewall's reflex sees the count too.
#[inline(always)]
fn count_syn(ctx: &TcContext, l3: usize, reflex: bool) {
    let Some((src, flags)) = tcp_source_and_flags(ctx, l3) else {
        return;
    };
    if flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN {
        return;
    }
    let now = now_ns();
    let entry = match SYN_BY_SOURCE.get_ptr_mut(&src) {
        Some(e) => e,
        None => {
            let fresh = SynCounter {
                total: 0,
                window_start_ns: now,
                window_count: 0,
                alerted_window_ns: 0,
            };
            let inserted = SYN_BY_SOURCE.insert(&src, &fresh, BPF_NOEXIST as u64);
            match SYN_BY_SOURCE.get_ptr_mut(&src) {
                Some(e) => e,
                None => {
                    update_failed(ctx, "SYN_BY_SOURCE", inserted.err().unwrap_or(0));
                    return;
                }
            }
        }
    };
    // SAFETY: `entry` points into a live LRU-hash value; concurrent writers on other CPUs
    // only use atomic operations on the counters, and the window fields tolerate races
    // (at worst one window is restarted twice).
    unsafe {
        atomic_add(&raw mut (*entry).total, 1);
        if now.wrapping_sub((*entry).window_start_ns) >= NS_PER_SEC {
            (*entry).window_start_ns = now;
            (*entry).window_count = 0;
        }
        let in_window = atomic_add(&raw mut (*entry).window_count, 1) + 1;
        // The reflex has a threshold of its own; once it blocks, the source's packets are
        // dropped before they reach this count.
        if reflex {
            firewall::reflex(ctx, &src, EVENT_SYN_THRESHOLD, in_window);
        }
        let threshold = config().syn_per_sec_threshold;
        let window = (*entry).window_start_ns;
        if threshold != 0 && in_window > threshold && (*entry).alerted_window_ns != window {
            (*entry).alerted_window_ns = window;
            // SAFETY (read): ctx.skb wraps the kernel's __sk_buff.
            let ifindex = (*ctx.skb.skb).ifindex;
            info!(
                ctx,
                "source {:i}: {} SYNs this second on ifindex {}, over the threshold of {}",
                Ipv6Addr::from(src.bytes).to_canonical(),
                in_window,
                ifindex,
                threshold
            );
            emit(
                ctx,
                ThresholdEvent {
                    header: header(
                        EVENT_SYN_THRESHOLD,
                        core::mem::size_of::<ThresholdEvent>(),
                        now,
                    ),
                    addr: src,
                    value: in_window,
                    threshold,
                    ifindex,
                    _pad: 0,
                },
                true,
            );
        }
    }
}

/// Source address and TCP flags of an IPv4/IPv6 TCP packet (first fragment, no IPv6
/// extension headers), or None for anything else. Direct packet access: the headers of a SYN
/// are always in the linear part of the buffer, and bounds are checked against data_end.
#[inline(always)]
fn tcp_source_and_flags(ctx: &TcContext, l3: usize) -> Option<(Addr, u8)> {
    // SAFETY: ctx.skb wraps the kernel's __sk_buff; `protocol` is in network byte order.
    let proto = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    let (data, end) = (ctx.data(), ctx.data_end());
    let ip = data + l3;
    match proto {
        ETH_P_IP => {
            if ip + 20 > end {
                return None;
            }
            // SAFETY: [ip, ip + 20) is inside the packet (checked above).
            let (vihl, frag, protocol, saddr) = unsafe {
                (
                    *(ip as *const u8),
                    u16::from_be(core::ptr::read_unaligned((ip + 6) as *const u16)),
                    *((ip + 9) as *const u8),
                    core::ptr::read_unaligned((ip + 12) as *const [u8; 4]),
                )
            };
            // Later fragments carry no TCP header.
            if vihl >> 4 != 4 || protocol != IPPROTO_TCP || frag & 0x1fff != 0 {
                return None;
            }
            let ihl = ((vihl & 0x0f) as usize) * 4;
            let flags_at = ip + ihl + 13;
            if ihl < 20 || flags_at + 1 > end {
                return None;
            }
            // SAFETY: flags_at is inside the packet (checked above).
            Some((Addr::from_v4(saddr), unsafe { *(flags_at as *const u8) }))
        }
        ETH_P_IPV6 => {
            if ip + 40 + 14 > end {
                return None;
            }
            // SAFETY: [ip, ip + 54) is inside the packet (checked above).
            unsafe {
                if *((ip + 6) as *const u8) != IPPROTO_TCP {
                    return None;
                }
                let saddr = core::ptr::read_unaligned((ip + 8) as *const [u8; 16]);
                Some((Addr { bytes: saddr }, *((ip + 40 + 13) as *const u8)))
            }
        }
        _ => None,
    }
}
