//! The sensors' errors. Each variant keeps the error it comes from (aya's, the kernel's) as
//! its `#[source]`, and also prints it: the message alone is what reaches an operator through
//! a fallback reason, a log line or a verb's reply, so it must say what went wrong. aya's
//! errors are boxed (`Box<MapError>` is what a `source()` downcasts to): they are large (80
//! to 104 bytes) and rare, and every `Result` of the sensors carries this type.

use aya::{maps::MapError, programs::ProgramError, EbpfError};

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    /// eBPF cannot be used here; the message says why and what to do.
    #[error("eBPF sensors unavailable: {0}")]
    Unavailable(String),
    #[error("unknown interface {0:?} (not present in this network namespace)")]
    UnknownInterface(String),
    /// aya could not load the object: parsing it, creating its maps, relocating against BTF.
    #[error("loading the kernel programs failed: {0}")]
    Load(#[source] Box<EbpfError>),
    /// The object lacks a program or map the agent expects: the two were not built together.
    #[error("loading the kernel programs failed: {kind} {name} missing from the object")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    /// A program was refused (by the verifier, mostly) or could not reach its hook.
    #[error("loading the kernel programs failed: {what}: {source}")]
    Program {
        what: String,
        #[source]
        source: Box<ProgramError>,
    },
    /// The kernel programs' log buffer could not be taken over (`ebpf_log`).
    #[error("loading the kernel programs failed: the kernel log: {source}")]
    Log {
        #[source]
        source: Box<aya_log::Error>,
    },
    /// A map of the object could not be taken over or given its first value.
    #[error("loading the kernel programs failed: map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("attaching to {iface} failed: {what}: {source}")]
    Attach {
        iface: String,
        /// The step that failed: a program and direction, or the clsact qdisc.
        what: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("reading {what} failed: {source}")]
    Read {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A kernel map could not be read while running.
    #[error("reading {map} failed: {source}")]
    ReadMap {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    /// A kernel map could not be written while running (the thresholds, say).
    #[error("updating {map} failed: {source}")]
    UpdateMap {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    /// The bpffs directory for pinned tables and links cannot be used.
    #[error("pinning in {path} failed (is bpffs mounted at /sys/fs/bpf? `mount -t bpf bpf /sys/fs/bpf`, or `cargo xtask setup`)")]
    Pin {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The firewall needs the kernel programs, and they are not loaded.
    #[error("the kernel firewall needs the eBPF sensors: {0}")]
    NoFirewall(String),
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn aya_errors_stay_reachable_as_the_source() {
        let e = SensorError::ReadMap {
            map: "CONN_BY_REMOTE",
            source: Box::new(MapError::KeyNotFound),
        };
        assert_eq!(
            e.to_string(),
            "reading CONN_BY_REMOTE failed: key not found"
        );
        let source = e.source().expect("a source");
        assert!(
            matches!(
                source.downcast_ref::<Box<MapError>>().map(|b| &**b),
                Some(MapError::KeyNotFound)
            ),
            "the source is aya's MapError: {source:?}"
        );
    }
}
