//! `vespa-node`: the VESPA node tree (agent -> HO_{VM,HY,PH} -> VO) — topology config and the
//! node runtime, on top of `vespa-proto`'s authenticated, encrypted transport.
//!
//! - [`config`]: machines and nodes from TOML or the 2014 `config.ini`, validated, with errors
//!   naming file, line and field; an embedded default topology.
//! - [`Node`]: one node. It listens for its children (and operators' calls), keeps an uplink
//!   to its master, and moves alerts up the tree with at-least-once delivery and per-hop
//!   de-duplication (see [`delivery`] for the exact guarantee).
//! - [`verbs`]: the runtime's own verbs (`help`, `list_slaves`, `find_node`, `call`, `stats`,
//!   `get_alerts`, `destroy`), typed and parsed once; [`Agent`], the plug-in point of agents,
//!   each answering the typed verbs of its kind (the agents themselves live in
//!   `vespa-agents`).
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
//! **Architecture invariant:** this crate is the tree runtime only: it never links the eBPF
//! loader, libvirt or an HTTP client, and holds no agent; agents plug in through [`Agent`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admission;
mod agent;
pub mod backoff;
pub mod client;
pub mod config;
pub mod dedup;
pub mod delivery;
pub mod error;
mod handle;
pub mod host;
pub mod journal;
pub mod launch;
mod lifecycle;
pub mod metrics;
pub mod node;
pub mod outbox;
mod peers;
mod routing;
mod server;
pub mod service;
mod session;
mod spec;
pub mod spool;
pub mod stats;
pub mod transport;
mod uplink;
mod util;
pub mod verbs;

pub use agent::{Agent, AgentRef};
pub use client::Client;
pub use config::{AgentKind, ConfigError, Role, Settings, Topology};
pub use error::NodeError;
pub use node::{AlertHandler, Exit, Hooks, MasterAddr, Node, NodeHandle, NodeSpec, QueueFull};
pub use session::ChildInfo;
pub use spec::ChildSpec;
pub use spool::SpoolStats;
pub use stats::{JournalStats, Stats};
pub use transport::{KeyRing, Security};
pub use verbs::{CallFrom, VerbFuture, VerbResult};
