//! Checks made before loading the kernel programs, so that a missing capability is reported
//! as what it is (and what to do), rather than as an errno from deep inside a loader.

use std::path::Path;

use crate::error::SensorError;

/// Everything the eBPF back end needs; the first thing missing is returned.
pub fn check_ebpf() -> Result<(), SensorError> {
    if cfg!(vespa_no_ebpf) {
        return Err(SensorError::Unavailable(
            "this binary was built without the kernel programs (bpf-linker or nightly rust-src \
             missing at build time; run `cargo xtask setup` and rebuild)"
                .into(),
        ));
    }
    check_capabilities(effective_capabilities())?;
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(SensorError::Unavailable("the kernel has no BTF (/sys/kernel/btf/vmlinux); Linux 5.8+ with CONFIG_DEBUG_INFO_BTF is required".into()));
    }
    // No tracefs: the connection tracker is a BTF-typed tracepoint (tp_btf), found by its
    // type in the kernel's BTF and attached with a BPF link, never by its id in tracefs.
    Ok(())
}

/// A capability the eBPF back end needs: its number (linux/capability.h), its name, why.
pub struct Needed {
    pub bit: u32,
    pub name: &'static str,
    pub why: &'static str,
}

#[cfg(test)]
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What the sensors need, and nothing more: the set `vespa-agent.service` grants
/// (`deploy/systemd/vespa-agent.service`, docs/install.md says why each is there; the tests
/// run the agent with this set, and with each one fewer). CAP_DAC_READ_SEARCH, once needed
/// to read the tracepoint's id in tracefs (root's, mode 0700), is not: the tracker is a
/// tp_btf program, which the kernel finds in its BTF. Mounting
/// bpffs (CAP_SYS_ADMIN, only where nothing mounted it) and `--netns` (CAP_SYS_ADMIN, to
/// enter a namespace) need more, and are not part of the service.
pub const NEEDED: &[Needed] = &[
    Needed {
        bit: CAP_BPF,
        name: "CAP_BPF",
        why: "to create the maps and load the programs",
    },
    Needed {
        bit: CAP_PERFMON,
        name: "CAP_PERFMON",
        why: "for the connection tracker: a BTF-typed tracepoint program (tp_btf), which \
              reads kernel memory",
    },
    Needed {
        bit: CAP_NET_ADMIN,
        name: "CAP_NET_ADMIN",
        why: "to load the tc classifiers (the kernel asks it of that program type) and attach \
              them to interfaces (TCX links, or a clsact qdisc), XDP, and the firewall's tbf \
              qdiscs",
    },
];

/// The effective capability set of this process (`CapEff` of /proc/self/status); all bits
/// set when it cannot be read, so that the loader's own error says what failed.
pub fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

/// Every capability of [`NEEDED`] missing from `effective`, named with the reason it is
/// needed. CAP_SYS_ADMIN stands for CAP_BPF and CAP_PERFMON, as the kernel has it (and as
/// kernels before 5.8, which have neither, require).
pub fn check_capabilities(effective: u64) -> Result<(), SensorError> {
    let has = |bit: u32| effective & (1u64 << bit) != 0;
    let covered =
        |n: &Needed| has(n.bit) || (matches!(n.bit, CAP_BPF | CAP_PERFMON) && has(CAP_SYS_ADMIN));
    let missing: Vec<&Needed> = NEEDED.iter().filter(|n| !covered(n)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|n| n.name).collect();
    let whys: Vec<String> = missing
        .iter()
        .map(|n| format!("{} {}", n.name, n.why))
        .collect();
    Err(SensorError::Unavailable(format!(
        "missing capabilit{} {}: {} (the eBPF sensors need {}; run as root, or as \
         vespa-agent.service grants them)",
        if missing.len() == 1 { "y" } else { "ies" },
        names.join(", "),
        whys.join("; "),
        NEEDED.iter().map(|n| n.name).collect::<Vec<_>>().join(" "),
    )))
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
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> u64 {
        NEEDED.iter().fold(0, |m, n| m | (1 << n.bit))
    }

    #[test]
    fn the_needed_set_passes_and_each_one_fewer_is_named() {
        assert!(check_capabilities(all()).is_ok());
        for n in NEEDED {
            let err = check_capabilities(all() & !(1 << n.bit))
                .expect_err("one fewer")
                .to_string();
            assert!(
                err.contains(&format!("missing capability {}:", n.name)),
                "{err}"
            );
        }
        let none = check_capabilities(0).expect_err("none").to_string();
        assert!(
            none.contains("missing capabilities CAP_BPF, CAP_PERFMON"),
            "{none}"
        );
    }

    #[test]
    fn sys_admin_stands_for_bpf_and_perfmon() {
        let old = (1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN) | (1 << CAP_DAC_READ_SEARCH);
        assert!(check_capabilities(old).is_ok());
    }
}
