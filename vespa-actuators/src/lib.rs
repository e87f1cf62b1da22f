//! VESPA's actuator and security agents: the only code in VESPA that talks to libvirt, to SDN
//! controllers and to clamd.
//!
//! - [`libvirt`]: the 2014 `Agent_Libvirt` verbs (contains_vm, cut_link/connect_link through
//!   the interface link state, migrate, restart, restart_hard, send_key) plus suspend, resume,
//!   list_vms, interface statistics, and the host tap device -> VM map kept current by libvirt
//!   domain events ([`libvirt::TapMap`]).
//! - [`sdn`]: one [`sdn::SdnController`] trait, three controllers (os-ken's `ofctl_rest` driving
//!   Open vSwitch, Floodlight's REST API, POX's messenger), blocks by MAC or IP with a
//!   time-to-live reaped in one place ([`sdn::ttl`]).
//! - [`clamav`]: clamd health, INSTREAM scans on demand and of a watched directory, the 2014
//!   `dump_analyzed_file_list`, alerts naming the VM, isolate/connect warnings.
//!
//! Every agent answers the same [`ActuatorVerbs`] interface (verb name + arguments -> text)
//! and raises [`ActuatorAlert`]s on a channel. Calls that fail transiently are retried with
//! backoff ([`retry`]); what still fails is a typed error ([`error`]), logged and returned to
//! the caller — never a panic.
//!
//! **Architecture invariant:** no other VESPA crate links libvirt, speaks to an SDN controller
//! or to clamd; they reach actuators only through these agents' verbs.

pub mod clamav;
pub mod error;
pub mod libvirt;
pub mod retry;
pub mod sdn;
pub mod verbs;

pub use error::{AvError, LibvirtError, SdnError};
pub use retry::{RetryPolicy, RetryStats};
pub use verbs::{ActuatorAlert, ActuatorVerbs, AlertSink, VerbFuture, VerbReply};
