//! tc classifiers: per-interface byte/packet counters and the per-source SYN counter.
//!
//! Attached with TCX (or clsact on kernels without it) on ingress and egress of each
//! monitored interface. They never drop or modify a packet: the return value is always
//! `TC_ACT_UNSPEC` ("no opinion"), so other programs on the same hook keep working.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_UNSPEC},
    macros::{classifier, map},
    maps::{LruHashMap, PerCpuHashMap},
    programs::TcContext,
};
use vespa_common::{
    Addr, IfaceCounters, IfaceKey, SynCounter, ThresholdEvent, DIR_EGRESS, DIR_INGRESS,
    EVENT_SYN_THRESHOLD, STAT_EGRESS_RUNS, STAT_INGRESS_RUNS, STAT_MAP_UPDATE_FAILED,
};

use crate::common::{atomic_add, bump, config, emit, header, now_ns};

/// Interfaces x directions; user space sizes it from the number of interfaces it may attach.
#[map(name = "IFACE_COUNTERS")]
static IFACE_COUNTERS: PerCpuHashMap<IfaceKey, IfaceCounters> =
    PerCpuHashMap::with_max_entries(4096, 0);

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
    bump(STAT_INGRESS_RUNS);
    count(&ctx, DIR_INGRESS);
    count_syn(&ctx, ETH_HLEN);
    TC_ACT_UNSPEC
}

/// Ingress on raw-IP devices (tun, wireguard): the packet starts at the IP header.
#[classifier]
pub fn vespa_ingress_l3(ctx: TcContext) -> i32 {
    bump(STAT_INGRESS_RUNS);
    count(&ctx, DIR_INGRESS);
    count_syn(&ctx, 0);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn vespa_egress(ctx: TcContext) -> i32 {
    bump(STAT_EGRESS_RUNS);
    count(&ctx, DIR_EGRESS);
    TC_ACT_UNSPEC
}

/// Does nothing: the baseline the benchmarks compare our classifiers with.
#[classifier]
pub fn vespa_tc_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[inline(always)]
fn count(ctx: &TcContext, direction: u32) {
    // SAFETY: ctx.skb wraps the __sk_buff the kernel passed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let key = IfaceKey { ifindex, direction };
    let len = ctx.len() as u64;
    match IFACE_COUNTERS.get_ptr_mut(&key) {
        Some(c) => {
            // SAFETY: per-CPU value from a successful lookup; only this CPU writes it.
            unsafe {
                (*c).bytes += len;
                (*c).packets += 1;
            }
        }
        None => {
            let first = IfaceCounters { bytes: len, packets: 1 };
            // Another CPU may have inserted the key meanwhile: BPF_NOEXIST fails then, and
            // the packet is added to this CPU's (now existing) slot instead.
            if IFACE_COUNTERS.insert(&key, &first, BPF_NOEXIST as u64).is_err() {
                match IFACE_COUNTERS.get_ptr_mut(&key) {
                    // SAFETY: as above.
                    Some(c) => unsafe {
                        (*c).bytes += len;
                        (*c).packets += 1;
                    },
                    None => bump(STAT_MAP_UPDATE_FAILED),
                }
            }
        }
    }
}

#[inline(always)]
fn count_syn(ctx: &TcContext, l3: usize) {
    let Some((src, flags)) = tcp_source_and_flags(ctx, l3) else { return };
    if flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN {
        return;
    }
    let now = now_ns();
    let entry = match SYN_BY_SOURCE.get_ptr_mut(&src) {
        Some(e) => e,
        None => {
            let fresh = SynCounter { total: 0, window_start_ns: now, window_count: 0, alerted_window_ns: 0 };
            let _ = SYN_BY_SOURCE.insert(&src, &fresh, BPF_NOEXIST as u64);
            match SYN_BY_SOURCE.get_ptr_mut(&src) {
                Some(e) => e,
                None => {
                    bump(STAT_MAP_UPDATE_FAILED);
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
        let threshold = config().syn_per_sec_threshold;
        let window = (*entry).window_start_ns;
        if threshold != 0 && in_window > threshold && (*entry).alerted_window_ns != window {
            (*entry).alerted_window_ns = window;
            // SAFETY (read): ctx.skb wraps the kernel's __sk_buff.
            let ifindex = (*ctx.skb.skb).ifindex;
            emit(ThresholdEvent {
                header: header(EVENT_SYN_THRESHOLD, core::mem::size_of::<ThresholdEvent>(), now),
                addr: src,
                value: in_window,
                threshold,
                ifindex,
                _pad: 0,
            });
        }
    }
}

/// Source address and TCP flags of an IPv4/IPv6 TCP packet (first fragment, no IPv6
/// extension headers), or None for anything else.
#[inline(always)]
fn tcp_source_and_flags(ctx: &TcContext, l3: usize) -> Option<(Addr, u8)> {
    // SAFETY: ctx.skb wraps the kernel's __sk_buff; `protocol` is in network byte order.
    let proto = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    match proto {
        ETH_P_IP => {
            let vihl: u8 = ctx.load(l3).ok()?;
            if vihl >> 4 != 4 || ctx.load::<u8>(l3 + 9).ok()? != IPPROTO_TCP {
                return None;
            }
            // Later fragments carry no TCP header.
            let frag: u16 = u16::from_be(ctx.load(l3 + 6).ok()?);
            if frag & 0x1fff != 0 {
                return None;
            }
            let saddr: [u8; 4] = ctx.load(l3 + 12).ok()?;
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if ihl < 20 {
                return None;
            }
            let flags: u8 = ctx.load(l3 + ihl + 13).ok()?;
            Some((Addr::from_v4(saddr), flags))
        }
        ETH_P_IPV6 => {
            if ctx.load::<u8>(l3 + 6).ok()? != IPPROTO_TCP {
                return None;
            }
            let saddr: [u8; 16] = ctx.load(l3 + 8).ok()?;
            let flags: u8 = ctx.load(l3 + 40 + 13).ok()?;
            Some((Addr { bytes: saddr }, flags))
        }
        _ => None,
    }
}
