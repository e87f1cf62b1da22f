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
    /// Offset of the `struct net *` in `struct sock` (`sock_common.skc_net`), from BTF.
    pub sk_net_offset: u32,
    /// Offset of the inode number in `struct net` (`ns.inum`), from BTF.
    pub net_inum_offset: u32,
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

/// Largest event; user space rejects anything claiming a bigger size.
pub const MAX_EVENT_SIZE: usize = core::mem::size_of::<ConnEvent>();

const _: () = assert!(core::mem::size_of::<IfaceStats>() == 32);
const _: () = assert!(core::mem::size_of::<Addr>() == 16);
const _: () = assert!(core::mem::size_of::<RemoteConns>() == 32);
const _: () = assert!(core::mem::size_of::<SynCounter>() == 32);
const _: () = assert!(core::mem::size_of::<SensorConfig>() == 32);
const _: () = assert!(core::mem::size_of::<EventHeader>() == 16);
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 80);
const _: () = assert!(core::mem::size_of::<ThresholdEvent>() == 56);
const _: () = assert!(MAX_EVENT_SIZE >= core::mem::size_of::<ThresholdEvent>());

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
}
