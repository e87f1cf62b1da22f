//! The verbs of the sensing agents (`agent_bandwidth`, `agent_connections`).

use std::net::IpAddr;

crate::verbs! {
    /// The verbs of the bandwidth and connections agents (the 2014 `Agent_Bandwidth` and
    /// `Agent_Connections`, plus the neighbour table and per-address counts).
    pub enum SensorVerb {
        /// byte counters of every monitored interface (JSON)
        Interfaces "interfaces" {},
        /// bytes received (2014 recv_bytes)
        RecvBytes "recv_bytes" { iface: Option<String> },
        /// bytes sent (2014 trans_bytes)
        TransBytes "trans_bytes" { iface: Option<String> },
        /// hardware address of an interface (default: the first configured)
        GetMac "get_mac" { iface: Option<String> },
        /// established TCP connections per remote address (JSON)
        Connections "connections" {},
        /// MAC address of a neighbour from the ARP/NDP table ("" when unknown)
        MacOf "mac_of" { ip: IpAddr },
        /// established TCP connections with one address (JSON)
        ConnectionsOf "connections_of" { ip: IpAddr },
    }
}
