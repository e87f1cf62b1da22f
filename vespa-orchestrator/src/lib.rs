//! `vespa-orchestrator` as a library: what the binary serves besides the nodes themselves,
//! so the policy (issue 5) and tests can plug into it.
//!
//! - [`http`]: the HTTP API (2014 endpoints, `/api/v1`, `/metrics`) of the process that runs
//!   the VO, and [`http::PolicyControl`], the policy's side of it.
//! - [`policy_driver`]: the VO's policy driver (alerts in, actuator calls out). The policy
//!   itself ([`vespa_policy::step`]) does no I/O; the driver does.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod http;
pub mod policy_driver;
