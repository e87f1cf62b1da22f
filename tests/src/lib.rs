//! Test kit for VESPA's end-to-end tests: the system's tools ([`cmd`]), network namespaces
//! with veth links and running code inside a namespace ([`net`]), traffic generators, the
//! daemons the tests start themselves, a tree of the real binaries ([`tree`]), the closed
//! loop over Open vSwitch + os-ken as one rig ([`sdn_loop`], also what `vespa-demo` runs),
//! names, subnets and ports unique within the process, the locks for what concurrent tests
//! must share ([`shared`]), and the root/eBPF requirement policy.
//!
//! Every namespace and link a test makes is removed when its guard drops, and traffic only
//! ever goes to addresses of those namespaces.

pub mod bench;
pub mod browser;
pub mod cmd;
pub mod daemons;
pub mod net;
pub mod sdn_loop;
pub mod shared;
pub mod traffic;
pub mod tree;

use std::sync::atomic::{AtomicU32, Ordering};

/// Whether the privileged parts of a test can run. On CI (`VESPA_REQUIRE_EBPF=1`) a missing
/// capability is a failure; elsewhere the test prints why it is skipped and passes.
pub fn privileged(test: &str) -> bool {
    let missing = if !nix::unistd::geteuid().is_root() {
        Some("not running as root")
    } else if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("kernel without BTF")
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if std::env::var("VESPA_REQUIRE_EBPF").is_ok_and(|v| v == "1") => {
            panic!("{test}: VESPA_REQUIRE_EBPF=1 but {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why} (set VESPA_REQUIRE_EBPF=1 to make this a failure)");
            false
        }
    }
}

/// A short name unique within this machine for the lifetime of the process
/// (interface names are limited to 15 bytes).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A /24 (third octet) and /64 that no other call of this process returns (for its first
/// 254 calls), so concurrent tests never share addresses: a tracker watching every namespace
/// (`--all-netns`) sees all of them. Processes start ten apart, by pid, so that concurrent
/// test processes seldom meet either.
pub fn subnet() -> u8 {
    static N: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 25) * 10;
    (1 + (start + N.fetch_add(1, Ordering::Relaxed)) % 254) as u8
}

/// Path of a workspace binary built next to the running executable: a test executable
/// (`target/<profile>/deps/`) or one of this crate's binaries (`target/<profile>/`).
pub fn try_workspace_bin(name: &str) -> Result<std::path::PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("the running executable's path: {e}"))?;
    let mut dir = exe
        .parent()
        .ok_or("the running executable has no directory")?;
    if dir.file_name().is_some_and(|d| d == "deps") {
        dir = dir.parent().ok_or("target/<profile>/deps has no parent")?;
    }
    let p = dir.join(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} not built (run through `cargo xtask`, or build the workspace's binaries first)",
            p.display()
        ))
    }
}

/// [`try_workspace_bin`], panicking when the binary is missing (tests).
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    try_workspace_bin(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Receives sensor events until `done` returns true for one of them; returns every event
/// received, in order. Panics after `timeout` (a failure bound, not a synchronisation).
pub fn events_until(
    rx: &mut tokio::sync::broadcast::Receiver<vespa_agent::SensorEvent>,
    timeout: std::time::Duration,
    mut done: impl FnMut(&vespa_agent::SensorEvent) -> bool,
) -> Vec<vespa_agent::SensorEvent> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut seen = Vec::new();
    let res = rt.block_on(async {
        tokio::time::timeout(timeout, async {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        let stop = done(&ev);
                        seen.push(ev);
                        if stop {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        panic!("test fell behind by {n} events")
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        panic!("sensor event channel closed")
                    }
                }
            }
        })
        .await
    });
    if res.is_err() {
        panic!("timed out after {timeout:?} waiting for an event; received: {seen:#?}");
    }
    seen
}
