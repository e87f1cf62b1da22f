//! Machine set-up: everything the build and the tests need, installed only when missing.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _};

/// Debian packages and why they are needed.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip and tc: test namespaces, veth links, qdisc checks"),
    ("util-linux", "unshare, setpriv, mount: privilege and tracefs tests"),
    ("procps", "sysctl: quiet test links"),
    ("pkg-config", "building -sys crates"),
    ("libvirt-dev", "the virt crate links libvirt (vespa-actuators)"),
    ("libvirt-daemon", "libvirtd: the libvirt agent's tests and benchmark run against a real daemon"),
    ("libvirt-daemon-driver-qemu", "libvirt's QEMU/KVM driver (qemu:///system)"),
    ("libvirt-clients", "virsh and virt-admin: the tests check the agent's work with virsh"),
    ("qemu-system-x86", "KVM domains for the libvirt tests (a tap device, no guest OS)"),
    ("openvswitch-switch", "Open vSwitch (userspace datapath) for the os-ken SDN tests and benchmark"),
    ("ethtool", "checksum offload off on veths attached to the OVS userspace datapath (it does not fill partial checksums)"),
    ("clamav-daemon", "clamd for the antivirus agent's tests (a one-line EICAR database, no download)"),
    ("python3-venv", "the os-ken venv (os-ken's REST app is not packaged by Debian)"),
    ("chromium", "headless Chromium: the dashboard test renders the page, dumps its DOM and takes screenshots"),
    ("chromium-driver", "chromedriver: WebDriver for driving the dashboard in browser tests"),
    ("nftables", "nft: the firewall benchmark's baseline (an nftables drop rule on the same flood)"),
    ("prometheus", "prometheus and promtool: the deploy/prometheus rules are checked and unit-tested, and a real Prometheus scrapes an agent and the VO (the tests start their own; the packaged service is not used)"),
    ("binutils", "strip: cargo xtask dist leaves the debug info out of the packaged binaries"),
    ("systemd", "systemd-analyze: the tests verify and rate the packaged units"),
    ("nats-server", "nats-server: the VO's NATS output is tested against a real server the tests start on a free port (the packaged service is not used)"),
    ("postgresql", "PostgreSQL (initdb, postgres): the decision ledger's tests run on PostgreSQL too, against servers the tests make in private directories on unix sockets (the packaged cluster is not used)"),
    ("systemd-container", "systemd-nspawn: the tests boot a systemd container to install and run the package"),
];

/// The os-ken venv: the last os-ken release that ships `ofctl_rest` and the eventlet and
/// dnspython versions it runs with on Python 3.11 (see external-interfaces.md).
const OSKEN_VENV: &str = "/var/lib/vespa/osken-venv";
const OSKEN_PINS: &[&str] = &["os-ken==1.4.1", "eventlet==0.33.3", "dnspython>=2.3,<2.7"];

const BPF_LINKER_VERSION: &str = "0.13.0";
const TRACEFS: &str = "/sys/kernel/tracing";

pub fn is_root() -> bool {
    // The effective uid (third field of Uid:), read without libc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

struct Step {
    name: &'static str,
    present: fn() -> Result<bool, String>,
    install: fn() -> anyhow::Result<()>,
    needs_root: bool,
}

fn steps() -> Vec<Step> {
    vec![
        Step {
            name: "Debian packages",
            present: packages_present,
            install: install_packages,
            needs_root: true,
        },
        Step {
            name: "rust-src for the nightly toolchain",
            present: rust_src_present,
            install: install_rust_src,
            needs_root: false,
        },
        Step {
            name: "bpf-linker 0.13.0 (against nightly's LLVM)",
            present: bpf_linker_present,
            install: install_bpf_linker,
            needs_root: false,
        },
        Step {
            name: "tracefs at /sys/kernel/tracing",
            present: tracefs_present,
            install: mount_tracefs,
            needs_root: true,
        },
        Step {
            name: "bpffs at /sys/fs/bpf (the firewall's pinned tables)",
            present: bpffs_present,
            install: mount_bpffs,
            needs_root: true,
        },
        Step {
            name: "cargo-fuzz 0.13 (decoder fuzzing in the test run)",
            present: cargo_fuzz_present,
            install: install_cargo_fuzz,
            needs_root: false,
        },
        Step {
            name: "os-ken 1.4.1 venv at /var/lib/vespa/osken-venv",
            present: osken_venv_present,
            install: install_osken_venv,
            needs_root: true,
        },
    ]
}

/// `cargo xtask setup`: every step, with progress.
pub fn run(check_only: bool) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let root = is_root();
    let all = steps();
    let mut missing = Vec::new();
    for (i, s) in all.iter().enumerate() {
        let n = format!("[{}/{}]", i + 1, all.len());
        match (s.present)() {
            Ok(true) => println!("{n} {}: present", s.name),
            Ok(false) | Err(_) if check_only => {
                println!("{n} {}: MISSING", s.name);
                missing.push(s.name);
            }
            Ok(false) | Err(_) if s.needs_root && !root => {
                println!(
                    "{n} {}: missing, and installing it needs root (run `sudo cargo xtask setup`)",
                    s.name
                );
                missing.push(s.name);
            }
            Ok(false) | Err(_) => {
                println!("{n} {}: installing...", s.name);
                let t = Instant::now();
                (s.install)().with_context(|| format!("installing {}", s.name))?;
                match (s.present)() {
                    Ok(true) => println!(
                        "{n} {}: installed in {:.1}s",
                        s.name,
                        t.elapsed().as_secs_f64()
                    ),
                    Ok(false) => bail!("{} still missing after installing it", s.name),
                    Err(e) => bail!("{} still missing after installing it: {e}", s.name),
                }
            }
        }
    }
    kernel_report();
    if missing.is_empty() {
        println!(
            "setup complete in {:.1}s: everything is present",
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    } else if check_only {
        bail!("missing: {}", missing.join(", "))
    } else {
        println!(
            "setup incomplete (missing: {}); eBPF features will fall back or be skipped",
            missing.join(", ")
        );
        Ok(())
    }
}

/// Implicit set-up before other commands: silent when everything is present.
pub fn ensure() -> anyhow::Result<()> {
    if steps().iter().all(|s| (s.present)().unwrap_or(false)) {
        return Ok(());
    }
    crate::step("setting up this machine (cargo xtask setup)");
    run(false)
}

fn kernel_report() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    println!(
        "kernel {}: BTF {}",
        release.trim(),
        if btf {
            "present"
        } else {
            "MISSING (eBPF sensors unavailable; the agent falls back to /proc)"
        }
    );
    if !is_root() {
        println!(
            "note: not root. Loading eBPF programs needs root; tests that need it will be skipped."
        );
    }
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn packages_present() -> Result<bool, String> {
    Ok(PACKAGES.iter().all(|(p, _)| dpkg_installed(p)))
}

fn install_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(p, _)| !dpkg_installed(p))
        .map(|(p, _)| *p)
        .collect();
    for (p, why) in PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        println!("      {p}: {why}");
    }
    sh(Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn nightly_sysroot() -> Result<PathBuf, String> {
    let o = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err("no nightly toolchain (rustup toolchain install nightly)".into());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
}

fn rust_src_present() -> Result<bool, String> {
    Ok(nightly_sysroot()?
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists())
}

fn install_rust_src() -> anyhow::Result<()> {
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker_present() -> Result<bool, String> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("bin/bpf-linker"));
    let bin = match cargo_bin {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("bpf-linker"),
    };
    let o = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
}

/// bpf-linker needs the very LLVM that nightly rustc emits bitcode for (22); Debian's is 14.
/// So it is built against the libLLVM shipped inside the nightly toolchain (about a minute).
fn install_bpf_linker() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot().map_err(anyhow::Error::msg)?;
    let lib = sysroot.join("lib");
    let so = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.starts_with("libLLVM-") && n.contains("-rust-") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM-*-rust-*.so in {}", lib.display()))?;
    let llvm = so
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_string();
    let major = llvm
        .trim_start_matches("LLVM-")
        .split('-')
        .next()
        .unwrap_or("22")
        .to_string();
    let rustflags = format!(
        "-L {0} -l dylib={llvm} -C link-arg=-Wl,-rpath,{0}",
        lib.display()
    );
    println!("      building bpf-linker {BPF_LINKER_VERSION} against {so} (about a minute)");
    sh(Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major},no-llvm-linking"),
        ])
        .env("RUSTFLAGS", rustflags))
}

const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn cargo_fuzz_present() -> Result<bool, String> {
    let o = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map_err(|e| e.to_string())?;
    Ok(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("cargo-fuzz 0.13"))
}

fn install_cargo_fuzz() -> anyhow::Result<()> {
    sh(Command::new("cargo").args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION]))
}

fn tracefs_present() -> Result<bool, String> {
    Ok(Path::new(TRACEFS).join("events").is_dir())
}

fn mount_tracefs() -> anyhow::Result<()> {
    sh(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))
}

fn bpffs_present() -> Result<bool, String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|e| e.to_string())?;
    Ok(mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some(BPFFS) && l.split_whitespace().nth(2) == Some("bpf")
    }))
}

fn mount_bpffs() -> anyhow::Result<()> {
    sh(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

const BPFFS: &str = "/sys/fs/bpf";

/// Fast: looks for the venv's python and os-ken's install record, without starting Python.
fn osken_venv_present() -> Result<bool, String> {
    let venv = Path::new(OSKEN_VENV);
    if !venv.join("bin/python").exists() {
        return Ok(false);
    }
    let lib = venv.join("lib");
    let found = std::fs::read_dir(&lib)
        .map_err(|e| format!("{}: {e}", lib.display()))?
        .filter_map(|e| e.ok())
        .any(|py| {
            py.path()
                .join("site-packages/os_ken-1.4.1.dist-info")
                .is_dir()
                && py
                    .path()
                    .join("site-packages/eventlet-0.33.3.dist-info")
                    .is_dir()
        });
    Ok(found)
}

/// `python3 -m venv` (Debian's python, not a user's pyenv) then pip with the pins; both are
/// idempotent, so a half-made venv is completed.
fn install_osken_venv() -> anyhow::Result<()> {
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    std::fs::create_dir_all(Path::new(OSKEN_VENV).parent().unwrap_or(Path::new("/")))?;
    sh(Command::new(python).args(["-m", "venv", OSKEN_VENV]))?;
    sh(Command::new(format!("{OSKEN_VENV}/bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .args(OSKEN_PINS))
}

fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
