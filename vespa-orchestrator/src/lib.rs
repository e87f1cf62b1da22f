//! `vespa-orchestrator` as a library: what the binary serves besides the nodes themselves,
//! so that tests can plug into it.
//!
//! - [`http`]: the HTTP API (2014 endpoints, `/api/v1`, `/metrics`) of the process that runs
//!   the VO.
//! - [`control`]: [`control::PolicyControl`], what the API asks of the policy, with the
//!   answers' types ([`control::ActiveAction`], [`control::PolicyError`]).
//! - [`decisions`]: the operator's decisions (blocks) and allowlist by hand, behind the API's
//!   `/api/v1/decisions` and `/api/v1/allowlist`, the VO's verbs for them, block lists as
//!   files, and the `decisions`/`allowlist` commands; [`client`]: how those commands reach
//!   the VO (its HTTP API, or the tree).
//! - [`metrics`]: the VO's counters and the closed-loop histogram, fed by the API's alert
//!   view and by the policy driver.
//! - [`outputs`]: alerts and decisions out to the operator's tools (`[[output]]`: webhooks,
//!   syslog, a JSON-lines file, NATS), each behind its own bounded queue, fed by an alert
//!   handler at the VO and by the decision ledger.
//! - [`policy_driver`]: the policy driver of the VO and of each HO's fast path (alerts in,
//!   actuator calls out). The policy itself ([`vespa_policy::step`]) does no I/O; the driver
//!   does.
//!
//! The API and the driver meet only in [`control`] and [`metrics`]: `http → decisions →
//! control ← policy_driver`, and the driver never names the API nor the decisions.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod control;
pub mod decisions;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod outputs;
pub mod policy_driver;
