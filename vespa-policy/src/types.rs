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

/// An address prefix: a network address (its host bits zero) and its length in bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix(ipnet::IpNet);

impl Prefix {
    /// `addr/bits` with the host bits cleared; an error when `bits` is too long for the family.
    pub fn new(addr: IpAddr, bits: u8) -> Result<Prefix, String> {
        ipnet::IpNet::new(addr, bits)
            .map(|net| Prefix(net.trunc()))
            .map_err(|_| format!("prefix length {bits} is too long for {addr}"))
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.0.network()
    }

    /// The prefix length in bits.
    pub fn bits(&self) -> u8 {
        self.0.prefix_len()
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }

    /// Whether the two share an address (one of them contains the other).
    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.0.contains(&other.0) || other.0.contains(&self.0)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Prefix {
    type Err = String;

    /// `10.0.0.0/8`, `2001:db8::/64`; host bits are cleared.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<ipnet::IpNet>()
            .map(|net| Prefix(net.trunc()))
            .map_err(|_| format!("{s:?} is not a prefix (address/length, as 10.0.0.0/8)"))
    }
}

/// A traffic rate: bytes or packets per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rate {
    /// Bytes per second.
    Bytes(u64),
    /// Packets per second.
    Packets(u64),
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Bytes(b) => write!(f, "{b}B/s"),
            Rate::Packets(p) => write!(f, "{p}pps"),
        }
    }
}

/// Units a rate may be written in: (suffix, multiplier, packets).
const RATE_UNITS: [(&str, f64, bool); 13] = [
    ("", 1.0, false),
    ("b/s", 1.0, false),
    ("bps", 1.0, false),
    ("kb/s", 1e3, false),
    ("mb/s", 1e6, false),
    ("gb/s", 1e9, false),
    ("bit", 0.125, false),
    ("kbit", 125.0, false),
    ("mbit", 125e3, false),
    ("gbit", 125e6, false),
    ("pps", 1.0, true),
    ("kpps", 1e3, true),
    ("mpps", 1e6, true),
];

impl FromStr for Rate {
    type Err = String;

    /// Bytes per second (`125000`, `1500B/s`, `10kB/s`, `8mbit`, `1gbit/s`) or packets per
    /// second (`1000pps`, `20kpps`): the firewall agent's `throttle` words.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let at = lower
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(lower.len());
        let (number, unit) = lower.split_at(at);
        // `8mbit/s` is `8mbit`.
        let unit = unit.trim();
        let unit = unit
            .strip_suffix("/s")
            .filter(|u| u.ends_with("bit"))
            .unwrap_or(unit);
        let found = RATE_UNITS.iter().find(|(u, _, _)| *u == unit);
        let (Ok(n), Some(&(_, scale, packets))) = (number.parse::<f64>(), found) else {
            return Err(format!("{s:?} is not a rate: bytes per second (125000, 10kB/s, 8mbit) or packets per second (1000pps, 20kpps)"));
        };
        let v = n * scale;
        if !v.is_finite() || !(1.0..=1e13).contains(&v) {
            return Err(format!("{s:?} is out of range (1 B/s or 1 pps to 10 TB/s)"));
        }
        Ok(if packets {
            Rate::Packets(v as u64)
        } else {
            Rate::Bytes(v as u64)
        })
    }
}

/// What a rule tracks its counters by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// A remote address (connections, SYNs).
    Remote(IpAddr),
    /// Remote addresses aggregated to a prefix (a rule's `v6_prefix`): one offender.
    Net(Prefix),
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
            Key::Net(p) => write!(f, "net {p}"),
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

/// What a block or a throttle applies to (and what the allowlist protects).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Drop by IP address.
    Ip(IpAddr),
    /// Drop by source MAC (preferred when known: it survives the attacker changing address).
    Mac(Mac),
    /// Drop by address prefix (a firewall agent only): always shorter than a whole address,
    /// which is [`Target::Ip`].
    Net(Prefix),
}

impl Target {
    /// The target for `addr/bits`: [`Target::Ip`] for a whole address, else the prefix.
    pub fn prefix(addr: IpAddr, bits: u8) -> Result<Target, String> {
        let p = Prefix::new(addr, bits)?;
        let whole = if addr.is_ipv4() { 32 } else { 128 };
        Ok(if bits == whole {
            Target::Ip(p.addr())
        } else {
            Target::Net(p)
        })
    }

    /// The target as actuators and the API write it: the bare address, MAC or prefix.
    pub fn bare(&self) -> String {
        match self {
            Target::Ip(ip) => ip.to_string(),
            Target::Mac(m) => m.to_string(),
            Target::Net(p) => p.to_string(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ip(ip) => write!(f, "ip {ip}"),
            Target::Mac(m) => write!(f, "mac {m}"),
            Target::Net(p) => write!(f, "net {p}"),
        }
    }
}

impl FromStr for Target {
    type Err = String;

    /// An address (`192.0.2.7`), a prefix (`10.0.0.0/8`; `/32` and `/128` are addresses) or a
    /// MAC (`52:54:00:00:00:01`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Target::Ip(ip));
        }
        if s.contains('/') {
            let p: Prefix = s.parse()?;
            return Target::prefix(p.addr(), p.bits());
        }
        s.parse::<Mac>().map(Target::Mac).map_err(|_| {
            format!("{s:?} is neither an IP address, a prefix (10.0.0.0/8) nor a MAC address")
        })
    }
}

/// Something the policy has put in place and must be able to undo.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    Blocked(Target),
    /// Traffic from the target limited to a rate (a firewall agent's `throttle`).
    Throttled(Target),
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
    /// The firewall agent's kernel blocked `target` by itself (the reflex of a rule with
    /// `reflex = true`) for `ttl_s` seconds (0: until released).
    ReflexBlock {
        target: Target,
        cause: ReflexCause,
        value: u64,
        threshold: u64,
        ttl_s: u64,
    },
    /// Free text; never parsed.
    Text(String),
}

/// What crossed the kernel reflex's threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReflexCause {
    /// SYNs per second from one source (a rule on `syn_rate`).
    Syn,
    /// Established connections of one remote (a rule on `established`).
    Conn,
}

impl ReflexCause {
    /// The metric a rule must watch to adopt a reflex block of this cause.
    pub fn metric(self) -> Metric {
        match self {
            ReflexCause::Syn => Metric::SynRate,
            ReflexCause::Conn => Metric::Established,
        }
    }
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
    /// The operator protects `target` from blocks and throttles (kept across reloads);
    /// whatever is held against it is released.
    Allow {
        target: Target,
        note: Option<String>,
    },
    /// The operator removes their own protection of `target` (configured and automatic
    /// entries stay).
    Disallow { target: Target },
    /// The tree's own machines and controllers, protected automatically, each with what it
    /// is; replaces the previous list.
    TopologyAllow(Vec<(Target, String)>),
    /// An effect the caller's record (the orchestrator's decision ledger) says is in place
    /// from before a restart: put back in the state as it was, and nothing sent, since the
    /// actuator still holds it. Boxed: it is rare and larger than the other inputs.
    Restore(Box<Restored>),
}

/// An effect put back by [`Input::Restore`].
///
/// Who held it decides how it ends: `operator` holds until its `expires_at` (as the manual
/// block it was); `infection` holds until released by hand; a rule's name holds it as that
/// rule's decision from before the restart (the rule's own memory of the key, its ladder
/// and calm period, is not restored): until its `expires_at`, when the actuator's reaper
/// removes it, or a manual release; a rule that acts on the same target again joins it.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    pub effect: Effect,
    /// The agent that carries it out, and undoes it.
    pub via: String,
    /// Whether `via` is a firewall agent (blocks only).
    pub firewall: bool,
    /// Rule names, `operator`, `infection`; empty is taken as held by the record alone
    /// (`restored`), released by hand or at its expiry.
    pub holders: Vec<String>,
    /// When it was placed, on the caller's clock (0 when before its start).
    pub since: Nanos,
    /// When it ends by itself, on the caller's clock; an effect already past it is not
    /// restored (the caller should not give it).
    pub expires_at: Option<Nanos>,
    /// The TTL and the rate last sent (blocks and throttles).
    pub ttl_ns: Option<Nanos>,
    pub rate: Option<Rate>,
    /// Only recorded in dry-run.
    pub dry: bool,
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
    /// The allowlist kept the policy from blocking or throttling an offender.
    Protected,
    /// A rule reached its `max_blocks` or `max_blocks_per_min`: the offender was not blocked.
    CapReached,
}

/// What verification by counters found about an effect, reported as
/// [`Action::Verified`] so that the caller records it with the decision: a `DidNotTake`
/// alert says a failure to whoever watches the alerts, not which decision it was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The rule's counter was at most its `verify_max` at the deadline, or calm before it.
    Passed {
        /// The counter's value since the action (0 without a sample).
        value: u64,
        /// The rule's `verify_max`.
        max: u64,
    },
    /// Still above `verify_max` at the deadline: the ladder acts again (and `DidNotTake` is
    /// raised).
    Failed {
        /// The counter's value since the action.
        value: u64,
        /// The rule's `verify_max`.
        max: u64,
    },
    /// No counter says whether it took: why (a block by hand, a rule with `verify_s = 0`,
    /// an actuator that did not put it in place).
    NotVerifiable {
        /// Why, for people.
        why: String,
    },
}

impl Verification {
    /// `passed`, `failed` or `not_verifiable`: how a record names the outcome.
    pub fn outcome(&self) -> &'static str {
        match self {
            Verification::Passed { .. } => "passed",
            Verification::Failed { .. } => "failed",
            Verification::NotVerifiable { .. } => "not_verifiable",
        }
    }

    /// The outcome with its figures, for people.
    pub fn detail(&self) -> String {
        match self {
            Verification::Passed { value, max } => format!("passed: {value} <= {max}"),
            Verification::Failed { value, max } => {
                format!("failed: {value} > {max} at the deadline")
            }
            Verification::NotVerifiable { why } => format!("not verifiable: {why}"),
        }
    }
}

/// What the caller must do. Actuator actions carry an id for [`Input::ActionResult`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Block a target for `ttl_ns` (the agent's reaper enforces it; 0: until released) on
    /// agent `via`: a firewall agent when `firewall`, else an SDN controller's agent.
    Block {
        id: ActionId,
        target: Target,
        ttl_ns: Nanos,
        via: String,
        firewall: bool,
    },
    /// Remove a block.
    Release {
        id: ActionId,
        target: Target,
        via: String,
        firewall: bool,
    },
    /// Limit the traffic from a target to `rate` for `ttl_ns` (a firewall agent's reaper
    /// enforces the TTL).
    Throttle {
        id: ActionId,
        target: Target,
        rate: Rate,
        ttl_ns: Nanos,
        via: String,
    },
    /// Remove a throttle.
    Unthrottle {
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
    /// The outcome of verifying `effect` by counters, to record with its decision (nothing
    /// to send). Emitted once per placement a rule verifies (at the deadline, or when the key
    /// calms down first), and as `NotVerifiable` for a placement nothing will verify.
    Verified {
        effect: Effect,
        outcome: Verification,
    },
}

impl Action {
    /// The id, for actuator actions (not alerts; a dry-run record has its inner id).
    pub fn id(&self) -> Option<ActionId> {
        match self {
            Action::Block { id, .. }
            | Action::Release { id, .. }
            | Action::Throttle { id, .. }
            | Action::Unthrottle { id, .. }
            | Action::CutLink { id, .. }
            | Action::ConnectLink { id, .. }
            | Action::Migrate { id, .. }
            | Action::AvIsolate { id, .. }
            | Action::AvConnect { id, .. } => Some(*id),
            Action::Alert { .. } | Action::Verified { .. } => None,
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
            Action::Throttle { target, .. } | Action::Unthrottle { target, .. } => {
                Effect::Throttled(*target)
            }
            Action::CutLink { vm, .. } | Action::ConnectLink { vm, .. } => {
                Effect::LinkCut(vm.clone())
            }
            Action::Migrate { vm, .. } => Effect::Quarantined(vm.clone()),
            Action::AvIsolate { vm, av_agent, .. } | Action::AvConnect { vm, av_agent, .. } => {
                Effect::AvIsolated(vm.clone(), av_agent.clone())
            }
            Action::Alert { .. } | Action::DryRun(_) | Action::Verified { .. } => return None,
        })
    }

    /// The agent that carries it out (`None` for alerts and dry-run records).
    pub fn via(&self) -> Option<&str> {
        match self {
            Action::Block { via, .. }
            | Action::Release { via, .. }
            | Action::Throttle { via, .. }
            | Action::Unthrottle { via, .. }
            | Action::CutLink { via, .. }
            | Action::ConnectLink { via, .. }
            | Action::Migrate { via, .. } => Some(via),
            Action::AvIsolate { av_agent, .. } | Action::AvConnect { av_agent, .. } => {
                Some(av_agent)
            }
            Action::Alert { .. } | Action::DryRun(_) | Action::Verified { .. } => None,
        }
    }

    /// Whether executing this would change something outside the VO.
    pub fn is_actuator(&self) -> bool {
        !matches!(
            self,
            Action::Alert { .. } | Action::DryRun(_) | Action::Verified { .. }
        )
    }
}
