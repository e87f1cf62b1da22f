//! Checks made before loading the kernel programs, so that a missing capability is reported
//! as what it is (and what to do), rather than as an errno from deep inside a loader.

use std::path::Path;

use crate::error::SensorError;

pub const TRACEFS: &str = "/sys/kernel/tracing";
const TRACEPOINT: &str = "events/sock/inet_sock_set_state";

/// Everything the eBPF back end needs; the first thing missing is returned.
pub fn check_ebpf() -> Result<(), SensorError> {
    if cfg!(vespa_no_ebpf) {
        return Err(SensorError::Unavailable(
            "this binary was built without the kernel programs (bpf-linker or nightly rust-src \
             missing at build time; run `cargo xtask setup` and rebuild)"
                .into(),
        ));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(SensorError::Unavailable(
            "not running as root: loading eBPF programs needs root (CAP_BPF, CAP_NET_ADMIN and \
             CAP_PERFMON)"
                .into(),
        ));
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(SensorError::Unavailable("the kernel has no BTF (/sys/kernel/btf/vmlinux); Linux 5.8+ with CONFIG_DEBUG_INFO_BTF is required".into()));
    }
    check_tracefs()
}

pub fn check_tracefs() -> Result<(), SensorError> {
    let tp = Path::new(TRACEFS).join(TRACEPOINT);
    if !Path::new(TRACEFS).join("events").is_dir() {
        return Err(SensorError::Unavailable(format!(
            "tracefs is not mounted at {TRACEFS}: run `mount -t tracefs tracefs {TRACEFS}` \
             (or `cargo xtask setup`); under `ip netns exec`, which remounts /sys without it, \
             use `vespa-agent --netns NAME` instead"
        )));
    }
    if !tp.is_dir() {
        return Err(SensorError::Unavailable(format!(
            "the kernel has no tracepoint sock:inet_sock_set_state ({})",
            tp.display()
        )));
    }
    Ok(())
}

/// Makes sure the directory holding `dir` is on a bpffs: mounts one at /sys/fs/bpf when
/// nothing is mounted there (as systemd does at boot; some containers and minimal systems
/// do not). Pinning anywhere else is the caller's choice and left alone.
pub fn ensure_bpffs(dir: &Path) -> Result<(), SensorError> {
    let root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(root) || is_bpffs(root) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| SensorError::Pin {
        path: dir.to_path_buf(),
        source: std::io::Error::from(e),
    })?;
    tracing::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

fn is_bpffs(p: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    // The magic's C type (`__fsword_t`) is i64 here but narrower on some targets.
    #[allow(clippy::unnecessary_cast)]
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}
