//! The verbs of the SDN controller agents (`agent_controller_*`).

use std::net::IpAddr;

use super::words::{word_args, OrDash, Target, Ttl, Word};

crate::verbs! {
    /// The verbs of an SDN controller agent (the 2014 `Agent_Controller_*`: os-ken,
    /// Floodlight, POX).
    pub enum SdnVerb {
        /// block the MAC address if given (as in 2014), else the IP address
        AlertIp "alert_ip" [Command] { ip: IpAddr, mac: Option<OrDash<Target>>, ttl: Option<Ttl> },
        /// drop all traffic from and to a MAC or IP address on every switch; returns the block
        /// id
        BlockHackers "block_hackers" [Command] { target: Target, ttl: Option<Ttl> },
        /// remove one block (by id or address), or every block and stray VESPA flow when no
        /// argument is given
        ReleaseHackers "release_hackers" [Command] { which: Option<BlockSelector> },
        /// the active blocks with their remaining time-to-live (JSON)
        StatusHackers "status_hackers" {},
        /// switches, ports and links known to the controller (JSON)
        GetTopology "get_topology" {},
        /// per-port / per-link counters (JSON)
        GetLinkStats "get_link_stats" {},
        /// the switches' flow tables with counters (JSON)
        GetFlowStats "get_flow_stats" {},
        /// every block whose flows carry VESPA's cookie on the controller's switches, known
        /// to this agent or not, by id above `after`, at most 2,000 per reply with the next
        /// `after` to ask (JSON)
        VespaFlows "vespa_flows" { after: Option<u64> },
        /// record VESPA block `id` of `target`, whose flows the switches hold but this agent
        /// does not know (a previous agent's), so that its release finds it
        AdoptBlock "adopt_block" [Command] { id: u64, target: Target, ttl: Option<Ttl> },
        /// remove the flows of VESPA block `id` from every switch, whether this agent knows
        /// the block or not
        DropFlows "drop_flows" [Command] { id: u64 },
    }
}

/// Rows one listing reply (`vespa_flows`, the firewall's `blocks`) carries at most: each is
/// at most a few hundred bytes of JSON, so a page stays far below the 1 MiB frame whatever
/// the actuator holds; the caller asks again from the reply's `next`.
pub const LIST_PAGE: usize = 2_000;

/// One block as `vespa_flows` lists it: what the switches hold under one VESPA cookie.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldFlow {
    /// The block id the cookie carries.
    pub id: u64,
    /// What its flows match (the source side: the address or MAC).
    pub target: Option<Target>,
    /// The longest time the switches still hold its flows (`hard_timeout` less the flow's
    /// age), in seconds; None when they hold it until removed.
    pub remaining_s: Option<u64>,
    /// Flows under this cookie, over every switch.
    pub flows: u32,
    /// Whether this agent's book knows the block (its release and reaper work).
    pub known: bool,
}

/// A page of a listing: its rows, and where the next page starts (None: this was the last).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Page<T, C> {
    /// The rows.
    pub rows: Vec<T>,
    /// The `after` of the next page.
    pub next: Option<C>,
}

/// Which block `release_hackers` removes: by the id `block_hackers` returned (`7` or `#7`),
/// or every block of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockSelector {
    /// One block, by id.
    Id(u64),
    /// Every block of this address.
    Target(Target),
}

impl Word for BlockSelector {
    const PLACEHOLDER: Option<&'static str> = Some("block_id|mac|ip");
    fn parse_word(word: &str) -> Result<Self, String> {
        let w = word.trim();
        if let Ok(id) = w.strip_prefix('#').unwrap_or(w).parse::<u64>() {
            return Ok(BlockSelector::Id(id));
        }
        Target::parse_word(w)
            .map(BlockSelector::Target)
            .map_err(|_| format!("{w:?} is neither a block id nor a MAC or IP address"))
    }
    fn to_word(&self) -> String {
        match self {
            BlockSelector::Id(id) => id.to_string(),
            BlockSelector::Target(t) => t.to_string(),
        }
    }
}

word_args!(BlockSelector);
