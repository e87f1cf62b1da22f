//! VESPA's end-to-end tests, one binary: the real kernel, network namespaces, the daemons the
//! tests start themselves and the workspace's own binaries. One module per area, following
//! the data path (sensor -> agent -> HO -> VO -> actuators); `cargo test -p vespa-tests
//! --test e2e <area>::` runs one of them.
//!
//! The tests of every area run concurrently in this one process, so whatever they share is
//! made unique per test (namespace and interface names, subnets, ports, scratch directories)
//! or taken under a lock where one daemon or interface serves them all
//! (`vespa_tests::shared`: libvirtd, the host's loopback connection counts).

/// The tree of real processes and the assertions about alert delivery, for every area.
mod kit;

/// The sensors and the `vespa-agent` binary: kernel counters, the connection tracker,
/// attaching to interfaces, the Prometheus exporter, the command line.
mod agent {
    mod attach;
    mod cli;
    mod ebpf_log;
    mod export;
    mod sensors;
}

/// The kernel firewall: blocks, the reflex, the allowlist, throttles, pinning; its drop
/// counters in Prometheus and on the VO's dashboard.
mod firewall {
    mod dashboard;
    mod kernel;
    mod lab;
    mod ledger;
    mod metrics;
    mod policy;
}

/// Trees of the real binaries: configuration, alerts and calls across processes, crashes,
/// cut links, hostile peers, kernel time stamps, the fast path at an HO, acting agents; and
/// the VO's journal on a file system that fills up (nodes in process).
mod tree {
    mod actuators;
    mod config;
    mod crash;
    mod disk;
    mod fastpath;
    mod flood;
    mod hostile;
    mod journal;
    mod kernel_time;
    mod loopback;
    mod machines;
    mod netns;
}

/// The orchestrator's HTTP API and the dashboard over a running tree.
/// What a host installs: the agent with exactly its unit's capabilities as an unprivileged
/// user, the journal's log format, and the package (`cargo xtask dist`) built, inspected,
/// installed, its units verified and its binaries started as its units say.
mod dist {
    mod caps;
    mod journal;
    mod package;
    mod systemd;
    mod unit;
}

mod http {
    mod api;
    mod dashboard;
}

/// The VO's outputs over the real binaries: a webhook receiver, syslog listeners, a JSON-lines
/// file and a real nats-server get every alert once, in order; outputs that are down cost the
/// tree nothing.
mod outputs {
    mod delivery;
}

/// The acting agents against the real daemons (libvirtd, Open vSwitch + os-ken, clamd) and
/// the SDN controllers' stand-ins.
mod actuators {
    mod clamav;
    mod libvirt;
    mod libvirt_restart;
    mod quarantine;
    mod sdn_osken;
    mod sdn_stubs;
}

/// The monitoring files of `deploy/` against the real tools: promtool on the Prometheus
/// rules and their unit tests, a real Prometheus scraping an agent and the VO, the Grafana
/// dashboard's queries.
mod deploy {
    mod prometheus;
}

/// Closed loops end to end: an infection isolating a VM, a connection flood blocked on the
/// switch, reconciliation against the switch, a VO killed and restarted on its ledger, and
/// `vespa-demo` telling the flood loop.
mod loops {
    mod av;
    mod demo;
    mod quarantine;
    mod reconcile;
    mod restart;
    mod sdn;
}
