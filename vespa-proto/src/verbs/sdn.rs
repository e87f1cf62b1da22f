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
    }
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
