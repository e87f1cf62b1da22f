//! Types shared between the VESPA kernel programs (`vespa-ebpf`) and user space.
//!
//! Every type here is `#[repr(C)]`, has explicit padding and a size checked at compile time,
//! because the kernel side and user side are built by different compilers for different
//! targets and only agree through their memory layout. Event kinds and statistic slots are
//! numbered once and never renumbered: an agent must be able to read an object built from an
//! older tree.
#![no_std]

/// Interfaces with an ifindex below this are counted in the `IFACE_STATS` per-CPU array
/// (index = ifindex: no hashing on the packet path, one read per interface); larger
/// ifindexes, seen on hosts that have created many devices, go to the `IFACE_STATS_BIG` hash.
pub const IFACE_ARRAY_SLOTS: u32 = 8192;

/// Per-interface counters, one value per CPU, summed by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// An IPv4 or IPv6 address as 16 bytes; IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), so one
/// map serves both families and user space converts back with `Ipv6Addr::to_canonical`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub bytes: [u8; 16],
}

impl Addr {
    pub const fn from_v4(octets: [u8; 4]) -> Self {
        let mut bytes = [0u8; 16];
        bytes[10] = 0xff;
        bytes[11] = 0xff;
        bytes[12] = octets[0];
        bytes[13] = octets[1];
        bytes[14] = octets[2];
        bytes[15] = octets[3];
        Addr { bytes }
    }
}

/// Value of the per-remote-address connection table (`CONN_BY_REMOTE`, LRU hash).
///
/// `established` is updated with atomic add/sub from every CPU; it only counts connections
/// whose opening the tracker saw, so it never goes below zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteConns {
    pub established: u64,
    /// Not written by the tracker (one atomic less per open): opened is `established +
    /// closed`, since a close is only counted for an open the tracker saw.
    pub opened: u64,
    pub closed: u64,
    /// 1 while `established` is above the configured threshold (an event was sent for the
    /// crossing); cleared when it falls back to the threshold or below.
    pub over_threshold: u32,
    pub _pad: u32,
}

/// Value of the per-source SYN table (`SYN_BY_SOURCE`, LRU hash), filled by tc ingress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynCounter {
    /// SYN-without-ACK packets seen from this source since it entered the table.
    pub total: u64,
    /// Start (bpf_ktime_get_ns) of the current one-second window.
    pub window_start_ns: u64,
    /// SYNs counted in the current window.
    pub window_count: u64,
    /// Last window for which a threshold event was sent (its start time), so one window
    /// yields at most one event.
    pub alerted_window_ns: u64,
}

/// Runtime configuration, slot 0 of the `CONFIG` array map; 0 disables a threshold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SensorConfig {
    /// Emit [`EVENT_CONN_THRESHOLD`] when a remote address has more established connections.
    pub conn_threshold: u64,
    /// Emit [`EVENT_SYN_THRESHOLD`] when a source sends more SYNs within one second.
    pub syn_per_sec_threshold: u64,
    /// 1: send an event for every connection open and close; 0: only thresholds.
    pub conn_events: u32,
    /// Track only sockets of this network namespace (its inode number, as `stat
    /// /proc/self/ns/net` shows); 0 tracks every namespace of the host.
    pub netns_inum: u32,
    /// Sets of `OPEN_SOCKETS` minus one (a power of two minus one): a socket's set is its
    /// cookie masked with this.
    pub open_sets_mask: u32,
    pub _pad: u32,
}

/// Where the connection tracker finds what it reads in a socket: byte offsets from the
/// start of the kernel's `struct sock` (which `struct tcp_sock` begins with), found in the
/// running kernel's BTF and given to the program as a read-only global (`SOCK_LAYOUT`) before
/// it is loaded, so that the verifier sees constants and lets the program load the fields
/// straight through its BTF-typed socket pointer. Each field's size is checked against BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockLayout {
    /// `skc_family` (2 bytes).
    pub family: u32,
    /// `skc_daddr`, the remote IPv4 address (4 bytes).
    pub daddr: u32,
    /// `skc_rcv_saddr`, the local IPv4 address (4 bytes).
    pub rcv_saddr: u32,
    /// `skc_v6_daddr` (16 bytes).
    pub v6_daddr: u32,
    /// `skc_v6_rcv_saddr` (16 bytes).
    pub v6_rcv_saddr: u32,
    /// `skc_dport`, the remote port, network order (2 bytes).
    pub dport: u32,
    /// `inet_sport` of `struct inet_sock`, the local port, network order (2 bytes): past
    /// `struct sock`, read through a `struct tcp_sock` pointer.
    pub sport: u32,
    /// `skc_net.net`, the socket's `struct net *` (8 bytes).
    pub net: u32,
    /// `ns.inum` in `struct net` (not the socket): the namespace's inode number (4 bytes).
    pub net_inum: u32,
    /// `sk_protocol` (2 bytes).
    pub protocol: u32,
    /// `skc_cookie`, the socket's cookie, 0 until it is first asked for (8 bytes).
    pub cookie: u32,
    pub _pad: u32,
}

/// Slots of the `STATS` per-CPU array: the sensor's own health counters. Slots 0 and 1 are
/// reserved (the classifiers' runs are their packet counts, kept in `IFACE_STATS`).
pub const STAT_TRACEPOINT_RUNS: u32 = 2;
/// Ring-buffer reservations that failed (the event is lost; the counters are still right).
pub const STAT_EVENTS_LOST: u32 = 3;
/// Map updates that failed (LRU insert under memory pressure, per-CPU hash full).
pub const STAT_MAP_UPDATE_FAILED: u32 = 4;
/// Connections closed whose opening the tracker never saw (opened before it started).
pub const STAT_UNTRACKED_CLOSES: u32 = 5;
pub const STAT_SLOTS: u32 = 8;

/// Event kinds in [`EventHeader::kind`]; numbered once, never renumbered.
pub const EVENT_CONN_OPEN: u32 = 1;
pub const EVENT_CONN_CLOSE: u32 = 2;
pub const EVENT_CONN_THRESHOLD: u32 = 3;
pub const EVENT_SYN_THRESHOLD: u32 = 4;

/// Common header of every ring-buffer event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    /// Size of the whole event in bytes, header included.
    pub size: u32,
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC) when the event was produced.
    pub timestamp_ns: u64,
}

/// A TCP connection entered or left ESTABLISHED ([`EVENT_CONN_OPEN`] / [`EVENT_CONN_CLOSE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEvent {
    pub header: EventHeader,
    pub local: Addr,
    pub remote: Addr,
    pub local_port: u16,
    pub remote_port: u16,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    pub _pad: u16,
    pub old_state: u32,
    pub new_state: u32,
    /// When the connection became ESTABLISHED (0 if unknown).
    pub opened_ns: u64,
    /// Lifetime for a close event, 0 for an open event.
    pub duration_ns: u64,
}

/// A remote address crossed a threshold ([`EVENT_CONN_THRESHOLD`] / [`EVENT_SYN_THRESHOLD`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThresholdEvent {
    pub header: EventHeader,
    pub addr: Addr,
    /// The value that crossed: established connections, or SYNs in the current second.
    pub value: u64,
    pub threshold: u64,
    /// Interface the SYNs arrived on (SYN events); 0 for connection events.
    pub ifindex: u32,
    pub _pad: u32,
}

/// The kernel blocked a source by itself (the firewall's reflex): [`ReflexEvent`].
pub const EVENT_REFLEX_BLOCK: u32 = 5;

/// Key of the firewall's prefix tables (`FW_BLOCK_IP`, `FW_ALLOW_IP`, `FW_THROTTLE_IP`, LPM
/// tries): the prefix length in bits of the 16-byte address, IPv4 stored IPv4-mapped like
/// [`Addr`] (so an IPv4 /24 has length 96 + 24). Same layout as aya's `lpm_trie::Key`.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixKey {
    pub prefix_len: u32,
    pub addr: [u8; 16],
}

/// Key of the firewall's MAC tables (`FW_BLOCK_MAC`, `FW_ALLOW_MAC`, `FW_THROTTLE_MAC`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacKey {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// A block: packets from a matching source are dropped until `expires_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEntry {
    /// bpf_ktime_get_ns() after which the block no longer drops; 0: until removed.
    pub expires_ns: u64,
    /// When it was inserted (kernel time).
    pub created_ns: u64,
    /// When it dropped its first packet (kernel time; 0: none yet).
    pub first_drop_ns: u64,
    /// Packets and bytes it dropped (atomic adds from every CPU).
    pub packets: u64,
    pub bytes: u64,
    /// [`BLOCK_REFLEX`] when the kernel's reflex inserted it.
    pub flags: u32,
    pub _pad: u32,
}

/// [`BlockEntry::flags`]: inserted by the kernel's reflex, not by user space.
pub const BLOCK_REFLEX: u32 = 1;

/// A throttle: a GCRA policer (virtual clock). A packet passes when the bucket's theoretical
/// arrival time `tat_ns` is at most `burst_ns` ahead of now, and then moves it on by the
/// packet's cost (its bytes, or 1 packet, at `rate` per second); otherwise it is dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleEntry {
    /// Bytes (or packets, with `per_packet`) per second.
    pub rate: u64,
    /// How far ahead of now the virtual clock may run: the burst, as time at `rate`.
    pub burst_ns: u64,
    /// The virtual clock (kernel time).
    pub tat_ns: u64,
    /// bpf_ktime_get_ns() after which it no longer limits; 0: until removed.
    pub expires_ns: u64,
    pub passed_packets: u64,
    pub passed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    /// 1: `rate` counts packets; 0: bytes.
    pub per_packet: u32,
    pub _pad: u32,
}

/// The firewall's settings, slot 0 of `FW_CONFIG`, written by user space only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirewallConfig {
    /// `FW_ACTIVE_*` bits: which tables may hold entries. The programs look nothing up in a
    /// table whose bit is clear, so an empty firewall costs one array read per packet.
    pub active: u32,
    /// IPv6 sources the reflex blocks are aggregated to this prefix length (0: the address).
    pub reflex_v6_prefix: u32,
    /// Reflex: block a source that sends more SYNs than this in one second (0: off).
    pub reflex_syn_per_sec: u64,
    /// Reflex: block a remote that holds more established connections than this (0: off).
    pub reflex_conn: u64,
    /// Reflex blocks' time-to-live (0: until removed).
    pub reflex_ttl_ns: u64,
    /// Reflex blocks at once at most: the reflex inserts nothing while
    /// `FW_COUNT_REFLEX_INSERTED - reflex_removed >= reflex_max`.
    pub reflex_max: u64,
    /// Reflex blocks user space has removed (reaped or released) so far.
    pub reflex_removed: u64,
}

pub const FW_ACTIVE_BLOCK_IP: u32 = 1;
pub const FW_ACTIVE_BLOCK_MAC: u32 = 2;
pub const FW_ACTIVE_THROTTLE_IP: u32 = 4;
pub const FW_ACTIVE_THROTTLE_MAC: u32 = 8;
pub const FW_ACTIVE_THROTTLE_DEV: u32 = 16;
pub const FW_ACTIVE_ALLOW_IP: u32 = 32;
pub const FW_ACTIVE_ALLOW_MAC: u32 = 64;

/// Slots of `FW_STATS` (per-CPU counters, summed by user space); never renumbered.
pub const FW_STAT_BLOCK_PACKETS: u32 = 0;
pub const FW_STAT_BLOCK_BYTES: u32 = 1;
pub const FW_STAT_THROTTLE_PACKETS: u32 = 2;
pub const FW_STAT_THROTTLE_BYTES: u32 = 3;
/// Packets that matched a block but came from a protected source (passed).
pub const FW_STAT_ALLOWED: u32 = 4;
/// Reflex blocks not inserted: the source is protected.
pub const FW_STAT_REFLEX_PROTECTED: u32 = 5;
/// Reflex blocks not inserted: `reflex_max` reached or the table full.
pub const FW_STAT_REFLEX_CAPPED: u32 = 6;
/// Packets dropped by the XDP program (also counted in their block's entry).
pub const FW_STAT_XDP_PACKETS: u32 = 7;
pub const FW_STAT_SLOTS: u32 = 8;

/// Slots of `FW_COUNTS` (shared array, atomic adds).
pub const FW_COUNT_REFLEX_INSERTED: u32 = 0;
pub const FW_COUNT_SLOTS: u32 = 2;

/// The kernel's reflex blocked a source ([`EVENT_REFLEX_BLOCK`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReflexEvent {
    /// `timestamp_ns` is when the block was inserted.
    pub header: EventHeader,
    /// The block's key as inserted (prefix length on the 16-byte form).
    pub addr: Addr,
    pub prefix_len: u32,
    /// [`EVENT_SYN_THRESHOLD`] or [`EVENT_CONN_THRESHOLD`]: what crossed.
    pub cause: u32,
    pub value: u64,
    pub threshold: u64,
    /// The block's expiry (kernel time; 0: none).
    pub expires_ns: u64,
}

/// Largest event; user space rejects anything claiming a bigger size.
pub const MAX_EVENT_SIZE: usize = core::mem::size_of::<ConnEvent>();

const _: () = assert!(core::mem::size_of::<IfaceStats>() == 32);
const _: () = assert!(core::mem::size_of::<Addr>() == 16);
const _: () = assert!(core::mem::size_of::<RemoteConns>() == 32);
const _: () = assert!(core::mem::size_of::<SynCounter>() == 32);
const _: () = assert!(core::mem::size_of::<SensorConfig>() == 32);
const _: () = assert!(core::mem::size_of::<SockLayout>() == 48);
const _: () = assert!(core::mem::size_of::<EventHeader>() == 16);
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 80);
const _: () = assert!(core::mem::size_of::<ThresholdEvent>() == 56);
const _: () = assert!(MAX_EVENT_SIZE >= core::mem::size_of::<ThresholdEvent>());
const _: () = assert!(MAX_EVENT_SIZE >= core::mem::size_of::<ReflexEvent>());
const _: () = assert!(core::mem::size_of::<PrefixKey>() == 20);
const _: () = assert!(core::mem::size_of::<MacKey>() == 8);
const _: () = assert!(core::mem::size_of::<BlockEntry>() == 48);
const _: () = assert!(core::mem::size_of::<ThrottleEntry>() == 72);
const _: () = assert!(core::mem::size_of::<FirewallConfig>() == 48);
const _: () = assert!(core::mem::size_of::<ReflexEvent>() == 64);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: each type is #[repr(C)], made only of integers and byte arrays with explicit
    // padding fields, so every bit pattern is a valid value and there are no hidden pad bytes.
    unsafe impl aya::Pod for IfaceStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Addr {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RemoteConns {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SynCounter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SensorConfig {}
    // SAFETY: as above (PrefixKey is packed: no padding at all).
    unsafe impl aya::Pod for PrefixKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MacKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BlockEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ThrottleEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FirewallConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockLayout {}
}
