//! `vespa-node`: the VESPA node tree (agent -> HO_{VM,HY,PH} -> VO) — topology config and the
//! node runtime, on top of `vespa-proto`'s authenticated, encrypted transport.
//!
//! - [`config`]: machines and nodes from TOML or the 2014 `config.ini`, validated, with errors
//!   naming file, line and field; an embedded default topology.
//! - [`Node`]: one node. It listens for its children (and operators' calls), keeps an uplink
//!   to its master, and moves alerts up the tree with at-least-once delivery and per-hop
//!   de-duplication (see [`delivery`] for the exact guarantee).
//! - [`verbs`]: the 2014 verbs as a closed set (`help`, `list_slaves`, `find_node`, `call`,
//!   `destroy`, plus `stats`, `get_alerts`) and [`AgentVerbs`], the plug-in point of agents.
//! - [`sensor_agent`]: the bandwidth and connections agents over a [`sensor_agent::SensorSource`].
//! - [`Client`]: calls verbs on a node from outside the tree.
//! - [`launch`]: running the nodes of one process from a topology (used by both binaries).
//!
//! Usage, a VO and an agent in one process on loopback:
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use vespa_node::{Hooks, MasterAddr, Node, NodeSpec, Role, Security};
//! let psk = vespa_proto::Psk::random();
//! let vo_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let vo_addr = vo_listener.local_addr()?;
//! let vo = Node::new(NodeSpec::new("VO", Role::Vo, None, Security::Psk(psk.clone())), Hooks::default())?;
//! tokio::spawn(vo.run(Some(vo_listener), std::future::pending()));
//! let master = MasterAddr { name: "VO".into(), addr: vo_addr };
//! let agent = Node::new(NodeSpec::new("a1", Role::HoVm, Some(master), Security::Psk(psk)), Hooks::default())?;
//! let handle = agent.handle();
//! tokio::spawn(agent.run(None, std::future::pending()));
//! handle.raise(vespa_proto::AlertBody::Text("hello".into()))?;
//! # Ok(()) }
//! ```
//!
//! **Architecture invariant:** this crate never links the eBPF loader; agents reach the host
//! sensors through [`sensor_agent::SensorSource`], implemented in `vespa-agent`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod agent;
pub mod backoff;
pub mod client;
pub mod config;
pub mod dedup;
pub mod delivery;
pub mod error;
mod handle;
mod journal;
pub mod launch;
mod lifecycle;
pub mod node;
pub mod outbox;
mod peers;
mod routing;
pub mod sensor_agent;
mod server;
mod session;
mod spec;
pub mod stats;
pub mod transport;
mod uplink;
mod util;
pub mod verbs;

pub use agent::AgentVerbs;
pub use client::Client;
pub use config::{AgentKind, ConfigError, Role, Settings, Topology};
pub use error::NodeError;
pub use node::{AlertHandler, Exit, Hooks, MasterAddr, Node, NodeHandle, NodeSpec, QueueFull};
pub use session::ChildInfo;
pub use stats::Stats;
pub use transport::Security;
pub use verbs::{VerbInfo, VerbResult, VerbTable};
