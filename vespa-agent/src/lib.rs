//! The VESPA agent: host sensors and the standalone counters exporter.
//!
//! The [`Sensors`] handle is the library API the node runtime calls: per-interface byte and
//! packet counters (the 2014 bandwidth agent's `recv_bytes`/`trans_bytes`/`get_mac`),
//! established TCP connections per remote address (the 2014 connections agent), SYN counts
//! per source, the sensor's own health, and a stream of [`SensorEvent`]s (connection
//! open/close, threshold crossings, interfaces coming and going).
//!
//! Two back ends sit behind it: kernel programs loaded with aya ([`ebpf`]), and the 2014
//! method of reading `/proc/net` ([`procfs`]) for machines where eBPF cannot be loaded. Both
//! take a [`SensorConfig`] and produce the same readings and events (`config`, `readings`,
//! `event`, `error`, [`clock`]); [`sensor`] chooses between them. Nothing shared imports a
//! back end, and neither back end imports the other or the handle.

pub mod btf;
pub mod clock;
mod config;
pub mod ebpf;
mod error;
mod event;
pub mod export;
pub mod firewall;
pub mod iface;
pub mod netns;
mod nsworker;
pub mod preflight;
pub mod procfs;
mod procfs_backend;
mod readings;
pub mod sensor;
pub mod top;

pub use config::{Mode, SensorConfig, TcMode};
pub use error::SensorError;
pub use event::{SensorEvent, TcpState};
pub use firewall::Firewall;
pub use readings::{Health, InterfaceCounters, MapFill, RemoteConnections, Snapshot, SynSource};
pub use sensor::Sensors;
