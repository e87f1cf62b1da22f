//! The shipped systemd units, read as the tests apply them: their settings, and a command
//! that runs like the unit's service (`setpriv` with the unit's capability sets, as an
//! unprivileged user, inside a network namespace).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The uid and gid that stand for the `vespa` user (no such user need exist on the host).
pub const UID: u32 = 64_123;

/// The repository's `deploy/systemd/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

/// The text of a unit file.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every value of `key` in the unit's text, in order (one per `key=` line).
pub fn settings(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
        .collect()
}

/// The one value of `key`.
pub fn setting(unit: &str, key: &str) -> String {
    let v = settings(unit, key);
    assert_eq!(v.len(), 1, "one {key}= in the unit: {v:?}");
    v[0].clone()
}

/// A capability set's words (`CAP_BPF CAP_PERFMON`), sorted.
pub fn caps(unit: &str, key: &str) -> Vec<String> {
    let mut c: Vec<String> = setting(unit, key)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    c.sort();
    c
}

/// `setpriv`'s form of a set: `-all,+bpf,+perfmon`.
fn setpriv_set(caps: &[String]) -> String {
    std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| {
            format!(
                "+{}",
                c.strip_prefix("CAP_").unwrap_or(c).to_ascii_lowercase()
            )
        }))
        .collect::<Vec<_>>()
        .join(",")
}

/// `argv` run as the unit's service would be: in network namespace `netns`, as [`UID`] with
/// no supplementary group, `ambient` as its inheritable and ambient sets, `bounding` as its
/// bounding set, and no new privileges.
pub fn as_service(
    netns: &str,
    ambient: &[String],
    bounding: &[String],
    argv: &[String],
) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{netns}"));
    c.args(setpriv(ambient, bounding));
    c.args(argv);
    c
}

/// The `setpriv` command line (program first) for the service's credentials.
pub fn setpriv(ambient: &[String], bounding: &[String]) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={UID}"),
        format!("--regid={UID}"),
        "--clear-groups".into(),
        "--no-new-privs".into(),
        format!("--inh-caps={}", setpriv_set(ambient)),
        format!("--ambient-caps={}", setpriv_set(ambient)),
        format!("--bounding-set={}", setpriv_set(bounding)),
    ]
}

/// The capability bits of a set of names, as /proc/<pid>/status shows them.
pub fn mask(caps: &[String]) -> u64 {
    caps.iter().fold(0, |m, c| {
        let bit = match c.as_str() {
            "CAP_DAC_READ_SEARCH" => 2,
            "CAP_NET_ADMIN" => 12,
            "CAP_SYS_ADMIN" => 21,
            "CAP_SYS_RESOURCE" => 24,
            "CAP_PERFMON" => 38,
            "CAP_BPF" => 39,
            other => panic!("capability {other} not known to the tests"),
        };
        m | (1 << bit)
    })
}

/// A line `Key:\t<hex>` of /proc/<pid>/status, as a number (`None` once the process is gone).
pub fn proc_caps(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}
