//! Every VESPA agent, sensing and acting, each answering the typed verbs of its kind
//! (`vespa_proto::verbs`) through the node runtime's [`vespa_node::Agent`] trait.
//!
//! - [`sensing`]: the 2014 bandwidth and connections agents over a [`sensing::SensorSource`]
//!   (the host sensors, implemented in `vespa-agent`).
//! - [`libvirt`] (feature `libvirt`): the 2014 `Agent_Libvirt` verbs (contains_vm,
//!   cut_link/connect_link through the interface link state, migrate, restart, restart_hard,
//!   send_key) plus suspend, resume, list_vms, interface statistics, and the host tap device
//!   -> VM map kept current by libvirt domain events ([`libvirt::TapMap`]).
//! - [`sdn`] (feature `sdn`): one [`sdn::SdnController`] trait, three controllers (os-ken's
//!   `ofctl_rest` driving Open vSwitch, Floodlight's REST API, POX's messenger), blocks by MAC
//!   or IP with a time-to-live reaped in one place ([`sdn::ttl`]).
//! - [`clamav`] (feature `av`): clamd health, INSTREAM scans on demand and of a watched
//!   directory, the 2014 `dump_analyzed_file_list`, alerts naming the VM, isolate/connect
//!   warnings, and [`relay`], the antivirus agent's direct path to the hypervisor agent.
//! - [`firewall`]: the kernel firewall agent (`agent_firewall`): blocks, throttles, the
//!   allowlist and the reflex in the host's own kernel programs, over a
//!   [`firewall::FirewallBackend`] (implemented in `vespa-agent` over its eBPF maps).
//! - [`topology`]: an agent built from its node's topology entry (`[node.params]`).
//!
//! Acting agents report on their own through an [`AlertSink`] ([`ActuatorAlert`]); the
//! [`Acting`] decorator raises those reports at the node. Calls that fail transiently are
//! retried with backoff ([`retry`]); what still fails is a typed error ([`error`]), logged and
//! returned to the caller — never a panic.
//!
//! **Architecture invariant:** no other VESPA crate links libvirt, speaks to an SDN controller
//! or to clamd; they reach actuators only through these agents' verbs. Each acting agent is a
//! cargo feature, so a sensor-only build links none of them.

pub mod alerts;
#[cfg(feature = "av")]
pub mod clamav;
pub mod error;
pub mod firewall;
#[cfg(feature = "libvirt")]
pub mod libvirt;
#[cfg(feature = "av")]
pub mod relay;
pub mod retry;
#[cfg(feature = "sdn")]
pub mod sdn;
pub mod sensing;
pub mod topology;

pub use alerts::{Acting, ActuatorAlert, AlertSink};
#[cfg(feature = "av")]
pub use error::AvError;
#[cfg(feature = "libvirt")]
pub use error::LibvirtError;
#[cfg(feature = "sdn")]
pub use error::SdnError;
pub use retry::{RetryPolicy, RetryStats};
