//! What both back ends read: counters per interface, connections per remote address, SYNs
//! per source, and the sensors' own health. eBPF and /proc fill the same types, so the
//! exporter, `top` and the node tree never know which one is running.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

/// Byte and packet counters of one interface. eBPF counters start when the agent attaches;
/// /proc counters when the device was created. Rates come from differences either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfaceCounters {
    pub name: String,
    pub ifindex: u32,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// TCP connections with one remote address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteConnections {
    pub addr: IpAddr,
    pub established: u64,
    /// Connections opened and closed since the tracker started (None under /proc).
    pub opened: Option<u64>,
    pub closed: Option<u64>,
}

/// SYN-without-ACK packets from one source (eBPF), or half-open sockets from it (/proc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SynSource {
    pub addr: IpAddr,
    /// eBPF: SYN packets seen since the source entered the table. /proc: sockets in SYN_RECV.
    pub syns: u64,
}

/// The sensor's own health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    pub mode: String,
    /// Why eBPF is not in use (fallback mode only).
    pub fallback_reason: Option<String>,
    pub events_lost: u64,
    pub map_update_failures: u64,
    pub untracked_closes: u64,
    /// The network namespace whose connections are tracked (its inode number); None: every
    /// namespace of the host.
    pub tracked_netns: Option<u32>,
    /// Program name -> runs: the classifiers' packets; for the tracker, the transitions into
    /// or out of ESTABLISHED it looked at (it returns before counting from the others).
    pub program_runs: BTreeMap<String, u64>,
    /// Map name -> entries in use and capacity.
    pub map_fill: BTreeMap<String, MapFill>,
    pub attached_interfaces: Vec<String>,
}

/// Everything at one instant, as `vespa-agent counters --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub interfaces: Vec<InterfaceCounters>,
    pub connections: Vec<RemoteConnections>,
    pub syn_sources: Vec<SynSource>,
    pub health: Health,
}

/// Entries in use and capacity of one kernel map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MapFill {
    pub used: u64,
    pub capacity: u64,
}
