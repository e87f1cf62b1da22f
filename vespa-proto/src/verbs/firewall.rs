//! The verbs of the kernel firewall agent (`agent_firewall`), and the totals it answers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    sdn::BlockSelector,
    words::{word_args, Rate, Target, Ttl, Word},
};

crate::verbs! {
    /// The verbs of the firewall agent: blocks and throttles enforced by the host's own kernel
    /// programs on every monitored interface. It answers the SDN agents' block verbs with the
    /// same words and replies, so the policy's ladder uses it wherever it uses an SDN agent.
    pub enum FirewallVerb {
        /// drop every packet from a MAC address, IP address or prefix on every monitored
        /// interface; returns the block id
        BlockHackers "block_hackers" [Command] { target: Target, ttl: Option<Ttl> },
        /// remove one block (by id or target), or every block when no argument is given
        ReleaseHackers "release_hackers" [Command] { which: Option<BlockSelector> },
        /// the blocks in force with their remaining time-to-live and drop counters (JSON)
        StatusHackers "status_hackers" {},
        /// limit the traffic from a source (address, prefix or MAC) or into the host from an
        /// interface (`dev:NAME`, e.g. a VM's tap device) to a rate; returns the throttle id
        Throttle "throttle" [Command] { target: Shaped, rate: Rate, ttl: Option<Ttl> },
        /// remove one throttle (by id or target), or every throttle when no argument is given
        Unthrottle "unthrottle" [Command] { which: Option<ShapedSelector> },
        /// the throttles in force with their rates and counters (JSON)
        Throttles "throttles" {},
        /// the protected sources: never blocked, never throttled, whoever asks (JSON)
        Allowlist "allowlist" {},
        /// protect a source (address, prefix or MAC) from blocks and throttles
        Allow "allow" [Command] { target: Target },
        /// remove a protection added with `allow` (configured ones stay)
        Disallow "disallow" [Command] { target: Target },
        /// set the kernel reflex: the kernel blocks a source by itself once it sends more than
        /// `syn_per_s` SYNs in a second or holds more than `conn` connections (0: off), for
        /// `ttl`, at most `max` reflex blocks at once
        Reflex "reflex" [Command] { syn_per_s: u64, conn: u64, ttl: Ttl, max: u64 },
        /// drop counters, table fill, the reflex's settings and blocks (JSON)
        FirewallStats "firewall_stats" {},
        /// every block in the kernel, in the targets' order after `after`, at most 2,000 per
        /// reply with the next `after` to ask (JSON)
        Blocks "blocks" { after: Option<Target> },
        /// every throttle in the kernel (sources, then devices, in their order) after `after`,
        /// at most 2,000 per reply with the next `after` to ask (JSON; `throttles` answers
        /// the same rows unpaged)
        ThrottleList "throttle_list" { after: Option<Shaped> },
    }
}

/// What a throttle applies to: traffic from a source, or all traffic entering the host from
/// one interface (a VM's tap device: the VM's own sending).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Shaped {
    /// From this address, prefix or MAC.
    Source(Target),
    /// Into the host from this interface (`dev:NAME`).
    Device(String),
}

impl std::fmt::Display for Shaped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shaped::Source(t) => write!(f, "{t}"),
            Shaped::Device(d) => write!(f, "dev:{d}"),
        }
    }
}

impl Serialize for Shaped {
    /// As text, the way it is written in a call (`10.0.0.0/24`, `dev:vnet3`).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Shaped {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Shaped::parse_word(&s).map_err(serde::de::Error::custom)
    }
}

impl Word for Shaped {
    const PLACEHOLDER: Option<&'static str> = Some("mac|ip|prefix|dev:NAME");
    fn parse_word(word: &str) -> Result<Self, String> {
        let w = word.trim();
        match w.strip_prefix("dev:") {
            Some(d) if !d.is_empty() && d.len() < 16 && !d.contains(['/', ' ']) => {
                Ok(Shaped::Device(d.to_string()))
            }
            Some(_) => Err(format!("invalid interface name in {w:?}")),
            None => Target::parse_word(w).map(Shaped::Source),
        }
    }
    fn to_word(&self) -> String {
        self.to_string()
    }
}

/// Which throttle `unthrottle` removes: by id (`7`, `#7`) or by what it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapedSelector {
    /// One throttle, by id.
    Id(u64),
    /// The throttle of this source or device.
    Target(Shaped),
}

impl Word for ShapedSelector {
    const PLACEHOLDER: Option<&'static str> = Some("throttle_id|mac|ip|prefix|dev:NAME");
    fn parse_word(word: &str) -> Result<Self, String> {
        let w = word.trim();
        if let Ok(id) = w.strip_prefix('#').unwrap_or(w).parse::<u64>() {
            return Ok(ShapedSelector::Id(id));
        }
        Shaped::parse_word(w).map(ShapedSelector::Target)
    }
    fn to_word(&self) -> String {
        match self {
            ShapedSelector::Id(id) => id.to_string(),
            ShapedSelector::Target(t) => t.to_string(),
        }
    }
}

word_args!(Shaped, ShapedSelector);

/// One throttle in force, as the kernel (or, for a device, its `tbf` qdisc) holds it: a row
/// of `throttles` and `throttle_list`, besides the agent's id of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleInfo {
    /// The throttled source or device (as text: an address, a prefix, a MAC, `dev:NAME`).
    pub target: Shaped,
    /// Its rate (as text: `1000pps`, `125000B/s`).
    pub rate: Rate,
    /// Time left before it ends (None: until released).
    pub expires_in_ms: Option<u64>,
    /// Packets it let through.
    pub passed_packets: u64,
    /// Bytes it let through.
    pub passed_bytes: u64,
    /// Packets over the rate, dropped.
    pub dropped_packets: u64,
    /// Bytes over the rate, dropped.
    pub dropped_bytes: u64,
}

/// One block in force, as the kernel holds it: a row of `status_hackers` (JSON), besides the
/// agent's id of the block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// The blocked source (as text: an address, a prefix or a MAC).
    pub target: Target,
    /// Time left before it stops dropping (None: until released).
    pub expires_in_ms: Option<u64>,
    /// Inserted by the kernel's reflex.
    pub reflex: bool,
    /// Packets it dropped.
    pub packets: u64,
    /// Bytes it dropped.
    pub bytes: u64,
    /// How long after it was inserted it dropped its first packet (kernel times).
    pub first_drop_after_ns: Option<u64>,
    /// When it was inserted (kernel time, CLOCK_MONOTONIC ns).
    pub created_ns: u64,
}

/// The kernel reflex's settings, as `reflex` and `firewall_stats` answer them (0: that cause
/// is off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReflexSettings {
    /// SYNs per second from one source that make the kernel block it.
    pub syn_per_sec: u64,
    /// Established connections from one remote that make the kernel block it.
    pub conn: u64,
    /// Reflex blocks' time-to-live (None: until released).
    pub ttl: Option<Duration>,
    /// Reflex blocks at once at most.
    pub max: u64,
    /// IPv6 sources are blocked as this prefix (0: the address).
    pub v6_prefix: u8,
}

/// What `firewall_stats` answers (JSON): the firewall's totals since its tables were created
/// (they survive agent restarts when pinned, and only grow), its tables' fill and the
/// reflex's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallStats {
    /// Packets dropped by blocks, at tc and XDP.
    pub dropped_packets: u64,
    /// Bytes dropped by blocks.
    pub dropped_bytes: u64,
    /// Packets dropped by source throttles (the kernel's policer).
    pub throttled_packets: u64,
    /// Bytes dropped by source throttles.
    pub throttled_bytes: u64,
    /// Packets of protected sources that matched a block and passed.
    pub protected_passed: u64,
    /// Reflex blocks not placed because the source is protected.
    pub reflex_protected: u64,
    /// Reflex blocks not placed because the cap was reached or the table is full.
    pub reflex_capped: u64,
    /// Packets dropped at XDP (also counted in `dropped_packets`).
    pub xdp_dropped_packets: u64,
    /// Reflex blocks placed so far.
    pub reflex_placed: u64,
    /// Blocks in the kernel (expired ones until reaped).
    pub blocks: u64,
    /// Address and prefix blocks the kernel table holds at most.
    pub block_capacity: u64,
    /// Throttles in force (sources and devices).
    pub throttles: u64,
    /// Protected sources.
    pub allowed: u64,
    /// The reflex's settings.
    pub reflex: ReflexSettings,
}
