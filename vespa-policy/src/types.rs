//! What goes into the policy (`Input`) and what comes out (`Action`).
//!
//! The alert types mirror `vespa_proto::AlertBody` instead of importing it: the protocol crate
//! pulls tokio and the crypto stack, and the policy must stay a dependency-light pure function
//! that any caller (VO, replay tool, fuzzer) can drive. The VO converts one into the other.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Nanoseconds on the caller's monotonic clock. The policy never reads a clock itself.
pub type Nanos = u64;

/// One second in [`Nanos`].
pub const SECOND: Nanos = 1_000_000_000;

/// A link-layer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;

    /// Accepts `aa:bb:cc:dd:ee:ff` (or `-` separators), case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts
                .next()
                .ok_or_else(|| format!("{s:?} is not a MAC address (too short)"))?;
            if part.len() != 2 {
                return Err(format!(
                    "{s:?} is not a MAC address (expected two hex digits per byte)"
                ));
            }
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| format!("{s:?} is not a MAC address (bad hex {part:?})"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a MAC address (too long)"));
        }
        Ok(Mac(out))
    }
}

/// What a rule tracks its counters by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// A remote address (connections, SYNs).
    Remote(IpAddr),
    /// A VM by libvirt domain name.
    Vm(String),
    /// An interface, as `node:iface` so that two agents' `eth0` stay apart.
    Iface(String),
    /// A link-layer address.
    Mac(Mac),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Remote(ip) => write!(f, "remote {ip}"),
            Key::Vm(vm) => write!(f, "vm {vm}"),
            Key::Iface(i) => write!(f, "iface {i}"),
            Key::Mac(m) => write!(f, "mac {m}"),
        }
    }
}

/// Which counter a sample carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Established TCP connections (a gauge).
    Established,
    /// SYNs in the last second (a gauge).
    SynRate,
    /// Received bytes (a running total).
    RxBytes,
    /// Transmitted bytes (a running total).
    TxBytes,
}

/// What a block applies to on the SDN controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Drop by IP address.
    Ip(IpAddr),
    /// Drop by source MAC (preferred when known: it survives the attacker changing address).
    Mac(Mac),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ip(ip) => write!(f, "ip {ip}"),
            Target::Mac(m) => write!(f, "mac {m}"),
        }
    }
}

/// Something the policy has put in place and must be able to undo.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    Blocked(Target),
    LinkCut(String),
    Quarantined(String),
    /// VM, and the AV agent told to go through the hypervisor.
    AvIsolated(String, String),
}

/// The alerts the VO receives, mirroring `vespa_proto::AlertBody`.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertBody {
    /// A remote address holds more established connections than the agent's limit.
    ConnThreshold {
        addr: IpAddr,
        established: u64,
        threshold: u64,
    },
    /// A remote address sent more SYNs in one second than the agent's limit.
    SynThreshold {
        addr: IpAddr,
        syns_in_second: u64,
        threshold: u64,
    },
    /// Byte totals of one interface.
    Bandwidth {
        iface: String,
        rx_bytes: u64,
        tx_bytes: u64,
    },
    /// Established connections per remote address: every remote the agent sees with at
    /// least one connection, unless `truncated` (the agent listed only its busiest remotes).
    Connections {
        per_remote: Vec<(IpAddr, u64)>,
        truncated: bool,
    },
    /// The antivirus found an infected file in a VM.
    Infected {
        vm: String,
        file: String,
        signature: String,
    },
    /// An actuator reported a failure on its own (not tied to an action id).
    ActuatorFailed {
        actuator: String,
        action: String,
        error: String,
    },
    /// Free text; never parsed.
    Text(String),
}

/// Identifies one actuator action so its acknowledgement can be matched to it.
/// Ids are allocated in order from the state, so a replay yields the same ids.
pub type ActionId = u64;

/// Everything the policy reacts to. Time is not in the input: it is `step`'s `now` argument,
/// so there is exactly one clock and it always comes from the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// An alert that climbed the tree. `origin` is the agent that raised it.
    Alert {
        origin: String,
        path: Vec<String>,
        timestamp_ns: u64,
        body: AlertBody,
    },
    /// A counter sample from any source (e.g. per-VM bytes read by the VO itself).
    Sample {
        key: Key,
        metric: Metric,
        value: u64,
    },
    /// Time passes: releases, verification deadlines, TTLs, cool-downs.
    Tick,
    /// An actuator's acknowledgement of an action.
    ActionResult {
        id: ActionId,
        ok: bool,
        error: Option<String>,
    },
    /// The operator blocks `target` for `ttl_ns` (more than 0: blocks always expire), outside
    /// the rules: calm does not release it, its TTL (at a tick) or a [`Input::ManualRelease`]
    /// of its address or MAC does. A target a rule also blocks is one block with both holders.
    ManualBlock { target: Target, ttl_ns: Nanos },
    /// The operator releases everything held against a key: what the rules hold, an
    /// infection's isolation of a VM, a manual block.
    ManualRelease { key: Key },
    /// Turns dry-run on or off (overrides the rules' `dry_run`).
    SetDryRun(bool),
    /// New rules; state is kept for rules (by name) that still exist.
    Reload(Box<crate::Rules>),
    /// ARP/neighbour view: `ip` is at `mac`, and belongs to our VM `vm` when known.
    Neighbour {
        ip: IpAddr,
        mac: Mac,
        vm: Option<String>,
    },
    /// A sensor's health totals; any increase is a blind spot.
    Health {
        origin: String,
        events_lost: u64,
        map_full: u64,
    },
}

/// Why the policy raises an alert of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// Verification failed or the actuator reported an error.
    DidNotTake,
    /// The escalation ladder has no further step for a key that is still offending.
    LadderExhausted,
    /// A sensor lost events or had a full map: the policy may be missing attacks.
    BlindSpot,
    /// Something the operator should know (infection, quarantine left in place, ...).
    Notice,
}

/// What the caller must do. Actuator actions carry an id for [`Input::ActionResult`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Block a target on the SDN controller for `ttl_ns` (the controller's reaper enforces it).
    Block {
        id: ActionId,
        target: Target,
        ttl_ns: Nanos,
        via: String,
    },
    /// Remove a block.
    Release {
        id: ActionId,
        target: Target,
        via: String,
    },
    /// Remove the VM's tap from its bridge.
    CutLink {
        id: ActionId,
        vm: String,
        via: String,
    },
    /// Put the VM's tap back.
    ConnectLink {
        id: ActionId,
        vm: String,
        via: String,
    },
    /// Live-migrate the VM to the quarantine host.
    Migrate {
        id: ActionId,
        vm: String,
        to: String,
        via: String,
    },
    /// Tell the AV agent to reach `vm` through the hypervisor agent (its link is cut).
    AvIsolate {
        id: ActionId,
        vm: String,
        av_agent: String,
        hypervisor_agent: String,
    },
    /// Tell the AV agent to talk to `vm` directly again.
    AvConnect {
        id: ActionId,
        vm: String,
        av_agent: String,
    },
    /// An alert of the policy's own, for operators.
    Alert { kind: AlertKind, text: String },
    /// What would have been done in dry-run mode. The caller must never execute it.
    DryRun(Box<Action>),
}

impl Action {
    /// The id, for actuator actions (not alerts; a dry-run record has its inner id).
    pub fn id(&self) -> Option<ActionId> {
        match self {
            Action::Block { id, .. }
            | Action::Release { id, .. }
            | Action::CutLink { id, .. }
            | Action::ConnectLink { id, .. }
            | Action::Migrate { id, .. }
            | Action::AvIsolate { id, .. }
            | Action::AvConnect { id, .. } => Some(*id),
            Action::Alert { .. } => None,
            Action::DryRun(inner) => inner.id(),
        }
    }

    /// The effect an actuator action puts in place or undoes (`None` for alerts and dry-run
    /// records).
    pub fn effect(&self) -> Option<Effect> {
        Some(match self {
            Action::Block { target, .. } | Action::Release { target, .. } => {
                Effect::Blocked(*target)
            }
            Action::CutLink { vm, .. } | Action::ConnectLink { vm, .. } => {
                Effect::LinkCut(vm.clone())
            }
            Action::Migrate { vm, .. } => Effect::Quarantined(vm.clone()),
            Action::AvIsolate { vm, av_agent, .. } | Action::AvConnect { vm, av_agent, .. } => {
                Effect::AvIsolated(vm.clone(), av_agent.clone())
            }
            Action::Alert { .. } | Action::DryRun(_) => return None,
        })
    }

    /// Whether executing this would change something outside the VO.
    pub fn is_actuator(&self) -> bool {
        !matches!(self, Action::Alert { .. } | Action::DryRun(_))
    }
}
