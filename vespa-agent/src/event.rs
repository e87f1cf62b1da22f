//! What the sensors push, as it happens: connections opening and closing, thresholds
//! crossed, interfaces coming and going.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

/// Something the sensors noticed, as it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SensorEvent {
    /// A TCP connection entered ESTABLISHED (`old_state` is SYN_SENT or SYN_RECV).
    ConnOpened {
        timestamp_ns: u64,
        local: SocketAddr,
        remote: SocketAddr,
        old_state: TcpState,
    },
    /// A TCP connection left ESTABLISHED for `new_state`, after `duration_ns`.
    ConnClosed {
        timestamp_ns: u64,
        local: SocketAddr,
        remote: SocketAddr,
        new_state: TcpState,
        duration_ns: u64,
    },
    /// A remote address has more established connections than the threshold.
    ConnThreshold {
        timestamp_ns: u64,
        addr: IpAddr,
        established: u64,
        threshold: u64,
    },
    /// A source sent more SYNs within one second than the threshold.
    SynThreshold {
        timestamp_ns: u64,
        addr: IpAddr,
        syns_in_second: u64,
        threshold: u64,
        ifindex: u32,
    },
    /// The kernel's reflex blocked `target` (an address, or the prefix it was aggregated to)
    /// when it crossed `threshold` (SYNs per second if `syn`, else established connections);
    /// it drops from the next packet on, for `ttl_ns` (0: until released).
    ReflexBlock {
        timestamp_ns: u64,
        target: String,
        syn: bool,
        value: u64,
        threshold: u64,
        ttl_ns: u64,
    },
    InterfaceAttached {
        name: String,
        ifindex: u32,
    },
    InterfaceDetached {
        name: String,
        ifindex: u32,
    },
}

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    Unknown,
}

impl From<u32> for TcpState {
    fn from(v: u32) -> Self {
        use TcpState::*;
        match v {
            1 => Established,
            2 => SynSent,
            3 => SynRecv,
            4 => FinWait1,
            5 => FinWait2,
            6 => TimeWait,
            7 => Close,
            8 => CloseWait,
            9 => LastAck,
            10 => Listen,
            11 => Closing,
            12 => NewSynRecv,
            _ => Unknown,
        }
    }
}
