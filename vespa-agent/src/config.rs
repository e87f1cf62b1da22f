//! What the sensors are asked to do: back end, interfaces, table sizes, thresholds. Read by
//! both back ends and by nothing else of theirs, so either can be built and tested alone.

use std::time::Duration;

use serde::Serialize;

/// Which back end to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// eBPF when it can be loaded, /proc otherwise (with a warning saying why).
    Auto,
    /// Kernel programs only; an error if they cannot be loaded.
    Ebpf,
    /// The 2014 method: /proc/net/dev and /proc/net/tcp{,6}.
    Proc,
}

/// How classifiers are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TcMode {
    /// TCX links on Linux 6.6+, a clsact qdisc and filters before that.
    #[default]
    Auto,
    /// clsact qdisc + tc filters (netlink), as on kernels without TCX.
    Netlink,
}

/// Sensor settings; the defaults suit a hypervisor.
#[derive(Debug, Clone)]
pub struct SensorConfig {
    pub mode: Mode,
    /// Interfaces to monitor; empty means every interface, including ones created later.
    pub interfaces: Vec<String>,
    /// Interfaces never monitored (applies to the "every interface" case).
    pub exclude: Vec<String>,
    /// Remote addresses tracked for connections (LRU; oldest forgotten first).
    pub max_remotes: u32,
    /// Sockets tracked between open and close (both ends count when both are local).
    pub max_sockets: u32,
    /// Source addresses tracked for SYN counts (LRU).
    pub max_syn_sources: u32,
    /// Established connections from one remote address that raise an event; 0 = off.
    pub conn_threshold: u64,
    /// SYNs per second from one source that raise an event; 0 = off.
    pub syn_per_sec_threshold: u64,
    /// Send an event for every connection open and close (not only threshold crossings).
    pub conn_events: bool,
    /// Track the TCP connections of every network namespace of the host (containers',
    /// other agents' test namespaces...), not only the agent's own. The /proc back end always
    /// sees its own namespace only.
    pub all_netns: bool,
    pub ring_buffer_bytes: u32,
    /// How often the interface list is reconciled even without a netlink notification.
    pub rescan_interval: Duration,
    /// How tc classifiers are attached (TCX links where available, or clsact + filters).
    pub tc_mode: TcMode,
    /// Have the kernel programs log what they decide (aya-log) into this process's `log`
    /// logger, at the levels it lets through when the sensors start (`log::max_level()`).
    /// Off, the verifier removes the programs' logging code at load time.
    pub ebpf_log: bool,
    /// Pin the firewall's tables, the interface counters and the classifiers' links in this
    /// bpffs directory, and adopt what an earlier agent pinned there: blocks keep dropping
    /// and counters keep counting across a restart or an upgrade. None: nothing is pinned.
    pub pin_dir: Option<std::path::PathBuf>,
    /// On a normal stop, leave the programs attached and the tables pinned (the blocks keep
    /// dropping until they expire or the next agent adopts them); otherwise detach and unpin
    /// everything. A killed agent always leaves them (that is what pinning is for).
    pub keep_enforcing_on_exit: bool,
    /// Also drop blocked sources at XDP, on the devices whose driver supports it.
    pub xdp: bool,
    /// Address and prefix blocks the firewall holds at most.
    pub max_blocks: u32,
    /// Events the sensors' channel holds for its slowest subscriber before that one misses
    /// some (and is told how many). tokio allocates and fills every slot at start, about
    /// 110 bytes each: 65,536 (7 MiB) for the tree's agents, which follow every connection's
    /// open and close; the exporter, which only logs interfaces coming and going, keeps 1,024.
    pub event_capacity: usize,
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            mode: Mode::Auto,
            interfaces: Vec::new(),
            exclude: Vec::new(),
            max_remotes: 65_536,
            max_sockets: 131_072,
            max_syn_sources: 65_536,
            conn_threshold: 100,
            syn_per_sec_threshold: 200,
            conn_events: true,
            all_netns: false,
            ring_buffer_bytes: 1 << 20,
            rescan_interval: Duration::from_secs(5),
            tc_mode: TcMode::Auto,
            ebpf_log: false,
            pin_dir: None,
            keep_enforcing_on_exit: false,
            xdp: false,
            max_blocks: 65_536,
            event_capacity: 65_536,
        }
    }
}

impl SensorConfig {
    /// Whether the interface `name` is to be monitored.
    pub(crate) fn wants(&self, name: &str) -> bool {
        if self.interfaces.is_empty() {
            !self.exclude.iter().any(|e| e == name)
        } else {
            self.interfaces.iter().any(|i| i == name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_selection() {
        let mut cfg = SensorConfig::default();
        assert!(cfg.wants("eth0"));
        cfg.exclude = vec!["lo".into()];
        assert!(!cfg.wants("lo"));
        cfg.interfaces = vec!["vnet0".into()];
        assert!(cfg.wants("vnet0") && !cfg.wants("eth0"));
    }
}
