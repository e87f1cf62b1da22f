//! The firewall: blocks and throttles enforced where packets enter the host (tc ingress, and
//! XDP where asked), and the kernel's reflex, which blocks a source by itself the moment it
//! crosses a threshold.
//!
//! Tables, all written by user space (the firewall agent) except where the reflex inserts:
//! - `FW_BLOCK_IP` (LPM trie of source prefixes) and `FW_BLOCK_MAC` (source MACs): matching
//!   packets are dropped until the entry's `expires_ns` (kernel time), so an expired block
//!   stops dropping without user space, which only reaps it. Each entry counts its drops.
//! - `FW_ALLOW_IP` / `FW_ALLOW_MAC`: protected sources, never dropped or throttled, and never
//!   blocked by the reflex, whatever the block tables say.
//! - `FW_THROTTLE_IP` / `FW_THROTTLE_MAC` (by source): a GCRA policer per entry, on ingress.
//! - `FW_THROTTLE_DEV` (by interface): the record of the device throttles, which are shaped
//!   by a qdisc on the device (user space puts it there), not by these programs: a TCP
//!   stream through a policer that drops whole 64 KiB segments collapses far below the
//!   rate, while a shaper delays and it runs at the rate.
//! - `FW_CONFIG`: which tables hold entries (the rest are not looked up) and the reflex's
//!   settings; `FW_STATS` per-CPU totals; `FW_COUNTS` the reflex's insert count.
//!
//! An empty firewall costs one array read per packet.

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    helpers::bpf_map_lookup_elem,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray},
    programs::XdpContext,
};
use vespa_common::{
    Addr, BlockEntry, EventHeader, FirewallConfig, MacKey, ReflexEvent, ThrottleEntry,
    BLOCK_REFLEX, EVENT_REFLEX_BLOCK, FW_ACTIVE_ALLOW_IP, FW_ACTIVE_ALLOW_MAC, FW_ACTIVE_BLOCK_IP,
    FW_ACTIVE_BLOCK_MAC, FW_ACTIVE_THROTTLE_IP, FW_ACTIVE_THROTTLE_MAC, FW_COUNT_REFLEX_INSERTED,
    FW_COUNT_SLOTS, FW_STAT_ALLOWED, FW_STAT_BLOCK_BYTES, FW_STAT_BLOCK_PACKETS,
    FW_STAT_REFLEX_CAPPED, FW_STAT_REFLEX_PROTECTED, FW_STAT_SLOTS, FW_STAT_THROTTLE_BYTES,
    FW_STAT_THROTTLE_PACKETS, FW_STAT_XDP_PACKETS,
};

use crate::common::{atomic_add, emit, now_ns};

#[map(name = "FW_CONFIG")]
static FW_CONFIG: Array<FirewallConfig> = Array::with_max_entries(1, 0);

#[map(name = "FW_STATS")]
static FW_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FW_STAT_SLOTS, 0);

#[map(name = "FW_COUNTS")]
static FW_COUNTS: Array<u64> = Array::with_max_entries(FW_COUNT_SLOTS, 0);

/// Size set at load time.
#[map(name = "FW_BLOCK_IP")]
static FW_BLOCK_IP: LpmTrie<[u8; 16], BlockEntry> = LpmTrie::with_max_entries(65536, 0);

#[map(name = "FW_BLOCK_MAC")]
static FW_BLOCK_MAC: HashMap<MacKey, BlockEntry> = HashMap::with_max_entries(4096, 0);

#[map(name = "FW_ALLOW_IP")]
static FW_ALLOW_IP: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(4096, 0);

#[map(name = "FW_ALLOW_MAC")]
static FW_ALLOW_MAC: HashMap<MacKey, u32> = HashMap::with_max_entries(1024, 0);

#[map(name = "FW_THROTTLE_IP")]
static FW_THROTTLE_IP: LpmTrie<[u8; 16], ThrottleEntry> = LpmTrie::with_max_entries(4096, 0);

#[map(name = "FW_THROTTLE_MAC")]
static FW_THROTTLE_MAC: HashMap<MacKey, ThrottleEntry> = HashMap::with_max_entries(1024, 0);

#[map(name = "FW_THROTTLE_DEV")]
static FW_THROTTLE_DEV: HashMap<u32, ThrottleEntry> = HashMap::with_max_entries(1024, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const NS_PER_SEC: u64 = 1_000_000_000;

/// A packet's source as the firewall matches it.
pub struct Source {
    /// The IPv4 (mapped) or IPv6 source address, when the packet is IP.
    pub ip: Option<[u8; 16]>,
    /// The Ethernet source address, on Ethernet devices.
    pub mac: Option<MacKey>,
}

/// What the firewall decided.
#[derive(PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

#[inline(always)]
fn fw_config() -> FirewallConfig {
    match FW_CONFIG.get(0) {
        Some(c) => *c,
        None => FirewallConfig::default(),
    }
}

#[inline(always)]
fn stat(slot: u32, v: u64) {
    if let Some(p) = FW_STATS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot of a per-CPU array, from a successful lookup.
        unsafe { *p += v };
    }
}

/// A writable pointer to the value of the longest prefix matching `addr` in `map`.
#[inline(always)]
fn lpm_ptr<V>(map: &LpmTrie<[u8; 16], V>, addr: &[u8; 16]) -> Option<*mut V> {
    let key = Key::new(128, *addr);
    // SAFETY: `map` is a map definition in the object (the helper takes its address, as
    // aya-ebpf's own `get` does) and `key` lives on this stack for the call. An LPM trie's
    // value is writable kernel memory, as a hash map's is.
    let p = unsafe {
        bpf_map_lookup_elem(
            map as *const _ as *mut core::ffi::c_void,
            &key as *const _ as *const core::ffi::c_void,
        )
    };
    (!p.is_null()).then_some(p as *mut V)
}

/// The source of the packet in [data, end): `l2` when it starts with an Ethernet header, the
/// IP header's EtherType from the Ethernet header (or `l3_proto` on raw-IP devices).
#[inline(always)]
pub fn source(data: usize, end: usize, l2: bool, l3_proto: u16) -> Source {
    let mut src = Source {
        ip: None,
        mac: None,
    };
    let (proto, ip) = if l2 {
        if data + 14 > end {
            return src;
        }
        // SAFETY: [data, data + 14) is inside the packet (checked above).
        let (mac, ethertype) = unsafe {
            (
                core::ptr::read_unaligned((data + 6) as *const [u8; 6]),
                u16::from_be(core::ptr::read_unaligned((data + 12) as *const u16)),
            )
        };
        src.mac = Some(MacKey { mac, _pad: [0; 2] });
        (ethertype, data + 14)
    } else {
        (l3_proto, data)
    };
    match proto {
        ETH_P_IP if ip + 20 <= end => {
            // SAFETY: [ip, ip + 20) is inside the packet (checked above).
            let saddr = unsafe { core::ptr::read_unaligned((ip + 12) as *const [u8; 4]) };
            src.ip = Some(Addr::from_v4(saddr).bytes);
        }
        ETH_P_IPV6 if ip + 40 <= end => {
            // SAFETY: [ip, ip + 40) is inside the packet (checked above).
            src.ip = Some(unsafe { core::ptr::read_unaligned((ip + 8) as *const [u8; 16]) });
        }
        _ => {}
    }
    src
}

/// Whether `src` is protected.
#[inline(always)]
fn allowed(cfg: &FirewallConfig, src: &Source) -> bool {
    if cfg.active & FW_ACTIVE_ALLOW_IP != 0 {
        if let Some(ip) = &src.ip {
            if lpm_ptr(&FW_ALLOW_IP, ip).is_some() {
                return true;
            }
        }
    }
    if cfg.active & FW_ACTIVE_ALLOW_MAC != 0 {
        if let Some(mac) = &src.mac {
            if FW_ALLOW_MAC.get_ptr(mac).is_some() {
                return true;
            }
        }
    }
    false
}

/// Counts a drop in the block `e`.
///
/// # Safety
/// `e` must point to a live block entry.
#[inline(always)]
unsafe fn count_drop(e: *mut BlockEntry, now: u64, len: u64) {
    // SAFETY: forwarded to the caller; counters are atomic, `first_drop_ns` is set once (a
    // race only picks one of two nearly equal times).
    unsafe {
        if (*e).first_drop_ns == 0 {
            (*e).first_drop_ns = now;
        }
        atomic_add(&raw mut (*e).packets, 1);
        atomic_add(&raw mut (*e).bytes, len);
    }
}

/// Whether the block `e` still drops at `now`.
///
/// # Safety
/// `e` must point to a live block entry.
#[inline(always)]
unsafe fn live(e: *const BlockEntry, now: u64) -> bool {
    // SAFETY: forwarded to the caller.
    let expires = unsafe { (*e).expires_ns };
    expires == 0 || now < expires
}

/// The live block matching `src`, if any.
#[inline(always)]
fn blocked(cfg: &FirewallConfig, src: &Source, now: u64) -> Option<*mut BlockEntry> {
    if cfg.active & FW_ACTIVE_BLOCK_IP != 0 {
        if let Some(ip) = &src.ip {
            // SAFETY: a pointer from a successful lookup.
            let e = lpm_ptr(&FW_BLOCK_IP, ip).filter(|&e| unsafe { live(e, now) });
            if e.is_some() {
                return e;
            }
        }
    }
    if cfg.active & FW_ACTIVE_BLOCK_MAC != 0 {
        if let Some(mac) = &src.mac {
            // SAFETY: as above.
            return FW_BLOCK_MAC
                .get_ptr_mut(mac)
                .filter(|&e| unsafe { live(e, now) });
        }
    }
    None
}

/// The firewall's decision on a packet of `len` bytes in [data, end) entering the host
/// (`l2`: it starts with an Ethernet header; else it is IP of EtherType `l3_proto`).
#[inline(always)]
pub fn verdict(data: usize, end: usize, l2: bool, l3_proto: u16, len: u64) -> Verdict {
    let cfg = fw_config();
    if cfg.active == 0 {
        return Verdict::Pass;
    }
    let src = source(data, end, l2, l3_proto);
    let now = now_ns();
    let blocked = blocked(&cfg, &src, now);
    let throttles = FW_ACTIVE_THROTTLE_IP | FW_ACTIVE_THROTTLE_MAC;
    if blocked.is_none() && cfg.active & throttles == 0 {
        return Verdict::Pass;
    }
    if allowed(&cfg, &src) {
        if blocked.is_some() {
            stat(FW_STAT_ALLOWED, 1);
        }
        return Verdict::Pass;
    }
    if let Some(e) = blocked {
        // SAFETY: a live entry from a successful lookup.
        unsafe { count_drop(e, now, len) };
        stat(FW_STAT_BLOCK_PACKETS, 1);
        stat(FW_STAT_BLOCK_BYTES, len);
        return Verdict::Drop;
    }
    let mut t: Option<*mut ThrottleEntry> = None;
    if cfg.active & FW_ACTIVE_THROTTLE_IP != 0 {
        if let Some(ip) = &src.ip {
            t = lpm_ptr(&FW_THROTTLE_IP, ip);
        }
    }
    if t.is_none() && cfg.active & FW_ACTIVE_THROTTLE_MAC != 0 {
        if let Some(mac) = &src.mac {
            t = FW_THROTTLE_MAC.get_ptr_mut(mac);
        }
    }
    match t {
        // SAFETY: a pointer from a successful lookup.
        Some(t) if unsafe { !police(t, now, len) } => {
            stat(FW_STAT_THROTTLE_PACKETS, 1);
            stat(FW_STAT_THROTTLE_BYTES, len);
            Verdict::Drop
        }
        _ => Verdict::Pass,
    }
}

/// The policer (GCRA): whether the packet conforms. Races between CPUs can let a few extra
/// packets through (the virtual clock is moved with an atomic add after an unlocked test),
/// never hold back a conforming one for long.
///
/// # Safety
/// `t` must point to a live throttle entry.
#[inline(always)]
unsafe fn police(t: *mut ThrottleEntry, now: u64, len: u64) -> bool {
    // SAFETY: forwarded to the caller; counters use atomic adds, `tat_ns` is an aligned u64.
    unsafe {
        let expires = (*t).expires_ns;
        if expires != 0 && now >= expires {
            return true;
        }
        let rate = (*t).rate;
        if rate == 0 {
            return true;
        }
        let units = if (*t).per_packet != 0 { 1 } else { len };
        let cost = units * NS_PER_SEC / rate;
        let tat = (*t).tat_ns;
        if tat < now {
            (*t).tat_ns = now;
        } else if tat - now > (*t).burst_ns {
            atomic_add(&raw mut (*t).dropped_packets, 1);
            atomic_add(&raw mut (*t).dropped_bytes, len);
            return false;
        }
        atomic_add(&raw mut (*t).tat_ns, cost);
        atomic_add(&raw mut (*t).passed_packets, 1);
        atomic_add(&raw mut (*t).passed_bytes, len);
        true
    }
}

/// The reflex: `addr` crossed `value > threshold` for `cause` (an `EVENT_*_THRESHOLD` kind).
/// Inserts a block unless the reflex for that cause is off, the source is protected, or the
/// reflex's cap is reached; reports the block inserted. Returns whether it inserted one.
#[inline(always)]
pub fn reflex<C: aya_ebpf::EbpfContext>(ctx: &C, addr: &Addr, cause: u32, value: u64) -> bool {
    let cfg = fw_config();
    let threshold = if cause == vespa_common::EVENT_SYN_THRESHOLD {
        cfg.reflex_syn_per_sec
    } else {
        cfg.reflex_conn
    };
    if threshold == 0 || value <= threshold {
        return false;
    }
    let src = Source {
        ip: Some(addr.bytes),
        mac: None,
    };
    if allowed(&cfg, &src) {
        stat(FW_STAT_REFLEX_PROTECTED, 1);
        return false;
    }
    let Some(inserted) = FW_COUNTS.get_ptr_mut(FW_COUNT_REFLEX_INSERTED) else {
        return false;
    };
    // SAFETY: a pointer from a successful lookup in a shared array; read once.
    if unsafe { *inserted }.wrapping_sub(cfg.reflex_removed) >= cfg.reflex_max {
        stat(FW_STAT_REFLEX_CAPPED, 1);
        return false;
    }
    let v4 = addr.bytes[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    let mut key = Key::new(128, addr.bytes);
    if !v4 && cfg.reflex_v6_prefix > 0 && cfg.reflex_v6_prefix < 128 {
        let len = cfg.reflex_v6_prefix;
        let mut i = 0usize;
        while i < 16 {
            let bit = (i as u32) * 8;
            if bit >= len {
                key.data[i] = 0;
            } else if bit + 8 > len {
                key.data[i] &= 0xffu8 << (8 - (len - bit));
            }
            i += 1;
        }
        key.prefix_len = len;
    }
    let now = now_ns();
    let expires_ns = if cfg.reflex_ttl_ns == 0 {
        0
    } else {
        now + cfg.reflex_ttl_ns
    };
    let entry = BlockEntry {
        expires_ns,
        created_ns: now,
        flags: BLOCK_REFLEX,
        ..BlockEntry::default()
    };
    if FW_BLOCK_IP
        .insert(&key, &entry, BPF_NOEXIST as u64)
        .is_err()
    {
        // Already blocked (by the reflex or by user space), or the table is full.
        if lpm_ptr(&FW_BLOCK_IP, &addr.bytes).is_none() {
            stat(FW_STAT_REFLEX_CAPPED, 1);
        }
        return false;
    }
    // SAFETY: as above; the counter is shared by every CPU.
    unsafe { atomic_add(inserted, 1) };
    emit(
        ctx,
        ReflexEvent {
            header: EventHeader {
                kind: EVENT_REFLEX_BLOCK,
                size: core::mem::size_of::<ReflexEvent>() as u32,
                timestamp_ns: now,
            },
            addr: Addr { bytes: key.data },
            prefix_len: key.prefix_len,
            cause,
            value,
            threshold,
            expires_ns,
        },
        true,
    );
    true
}

/// XDP on devices whose driver supports it: the blocks, before the host allocates anything
/// for the packet. Drops are counted in their entries and in `FW_STAT_XDP_PACKETS`; throttles
/// stay at tc.
#[xdp]
pub fn vespa_xdp(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let cfg = fw_config();
    if cfg.active & (FW_ACTIVE_BLOCK_IP | FW_ACTIVE_BLOCK_MAC) == 0 {
        return xdp_action::XDP_PASS;
    }
    let src = source(data, end, true, 0);
    let now = now_ns();
    let blocked = blocked(&cfg, &src, now);
    match blocked {
        Some(e) if !allowed(&cfg, &src) => {
            let len = (end - data) as u64;
            // SAFETY: a live entry from a successful lookup.
            unsafe { count_drop(e, now, len) };
            stat(FW_STAT_XDP_PACKETS, 1);
            stat(FW_STAT_BLOCK_PACKETS, 1);
            stat(FW_STAT_BLOCK_BYTES, len);
            xdp_action::XDP_DROP
        }
        _ => xdp_action::XDP_PASS,
    }
}

/// Passes everything: the benchmarks' baseline for the cost of an XDP program itself.
#[xdp]
pub fn vespa_xdp_noop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
