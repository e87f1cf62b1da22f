//! `cargo xtask dist`: the Debian package and the tarball of a host's install.
//!
//! Both hold the same tree: the release binaries (debug info stripped): `vespa-agent`,
//! `vespa-orchestrator`, and `vespa-exporter` (the agent built without its acting agents, into
//! `target/sensor-only/` as the benchmarks build it: a host that only exports runs it, without
//! libvirt's library in its memory), their systemd units (`deploy/systemd/`), the sysusers entry of the `vespa` user, the example
//! `/etc/vespa/topology.toml` and `policy.toml` (`deploy/etc/`), a man page per binary and
//! per command and the bash, zsh and fish completions (written by the binaries' hidden
//! `dist-docs` command, from their clap definitions), and the set-up script the package's
//! postinst runs (`/usr/lib/vespa/setup`: the user, the tree's key, the API token). The .deb
//! is built with `dpkg-deb`, its dependencies read from the binaries' shared libraries.
//! Everything lands in `target/dist/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::{cargo, check, step, target_dir};

/// The cargo invocation that builds what the package ships (also what the tests look for).
const BUILD: &[&str] = &[
    "build",
    "--release",
    "-p",
    "vespa-agent",
    "-p",
    "vespa-orchestrator",
    "--bin",
    "vespa-agent",
    "--bin",
    "vespa-orchestrator",
];

/// The agent without its acting agents, in a target directory of its own (the full agent in
/// target/release stays as it is). The same build as `cargo xtask bench`'s.
const SENSOR_ONLY_DIR: &str = "sensor-only";

const BINARIES: [&str; 3] = ["vespa-agent", "vespa-orchestrator", "vespa-exporter"];

const UNITS: [&str; 3] = [
    "vespa-agent.service",
    "vespa-orchestrator.service",
    "vespa-exporter.service",
];

/// Where each packaged binary is built.
fn built(root: &Path, bin: &str) -> PathBuf {
    match bin {
        "vespa-exporter" => target_dir(root)
            .join(SENSOR_ONLY_DIR)
            .join("release/vespa-agent"),
        _ => target_dir(root).join("release").join(bin),
    }
}

pub fn run(root: &Path, build: bool) -> anyhow::Result<()> {
    if build {
        cargo(root, BUILD)?;
        let dir = target_dir(root).join(SENSOR_ONLY_DIR);
        let dir = dir.to_string_lossy();
        cargo(
            root,
            &[
                "build",
                "--release",
                "-p",
                "vespa-agent",
                "--no-default-features",
                "--target-dir",
                &dir,
            ],
        )?;
    }
    for b in BINARIES {
        if !built(root, b).exists() {
            bail!(
                "{} is not built (run `cargo xtask dist` without --no-build)",
                built(root, b).display()
            );
        }
    }
    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let dist = target_dir(root).join("dist");
    let name = format!("vespa_{version}_{arch}");
    let stage = dist.join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    step(&format!("staging the install tree in {}", stage.display()));
    let dir = |p: &str| -> anyhow::Result<PathBuf> {
        let d = stage.join(p);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    };
    let bin = dir("usr/bin")?;
    for b in BINARIES {
        let to = bin.join(b);
        std::fs::copy(built(root, b), &to)?;
        check(
            Command::new("strip")
                .args(["--strip-debug"])
                .arg(&to)
                .status()?,
            "strip",
        )?;
    }
    let deploy = root.join("deploy");
    let units = dir("usr/lib/systemd/system")?;
    for u in UNITS {
        std::fs::copy(deploy.join("systemd").join(u), units.join(u))?;
    }
    std::fs::copy(
        deploy.join("systemd/vespa.sysusers"),
        dir("usr/lib/sysusers.d")?.join("vespa.conf"),
    )?;
    let etc = dir("etc/vespa")?;
    for f in ["topology.toml", "policy.toml"] {
        std::fs::copy(deploy.join("etc").join(f), etc.join(f))?;
    }
    let lib = dir("usr/lib/vespa")?;
    std::fs::copy(deploy.join("setup"), lib.join("setup"))?;
    set_mode(&lib.join("setup"), 0o755)?;
    // Man pages and completions, from the binaries themselves.
    let docs = dist.join("docs");
    if docs.exists() {
        std::fs::remove_dir_all(&docs)?;
    }
    for b in BINARIES {
        check(
            Command::new(built(root, b))
                .arg("dist-docs")
                .arg(&docs)
                .status()?,
            &format!("{b} dist-docs"),
        )?;
    }
    let man = dir("usr/share/man/man1")?;
    for page in std::fs::read_dir(docs.join("man1"))? {
        let page = page?.path();
        let file = page.file_name().context("a page's name")?;
        let to = man.join(format!("{}.gz", file.to_string_lossy()));
        gzip(&page, &to)?;
    }
    let comp = docs.join("completions");
    let bash = dir("usr/share/bash-completion/completions")?;
    let zsh = dir("usr/share/zsh/vendor-completions")?;
    let fish = dir("usr/share/fish/vendor_completions.d")?;
    for b in BINARIES {
        std::fs::copy(comp.join(format!("{b}.bash")), bash.join(b))?;
        std::fs::copy(comp.join(format!("_{b}")), zsh.join(format!("_{b}")))?;
        std::fs::copy(
            comp.join(format!("{b}.fish")),
            fish.join(format!("{b}.fish")),
        )?;
    }
    let doc = dir("usr/share/doc/vespa")?;
    std::fs::copy(root.join("docs/install.md"), doc.join("install.md"))?;
    std::fs::write(
        doc.join("copyright"),
        format!("VESPA {version}\nLicense: {}\n", env!("CARGO_PKG_LICENSE")),
    )?;

    // The tarball: the same tree, without the package's control files.
    let tarball = dist.join(format!("vespa-{version}-{arch}.tar.gz"));
    step(&format!("writing {}", tarball.display()));
    check(
        Command::new("tar")
            .arg("-C")
            .arg(&dist)
            .args(["--owner=0", "--group=0", "--numeric-owner", "-czf"])
            .arg(&tarball)
            .arg(&name)
            .status()?,
        "tar",
    )?;

    // The package's control files.
    let debian = dir("DEBIAN")?;
    let depends = depends(&stage.join("usr/bin"))?;
    let size_kb = output(Command::new("du").args(["-sk"]).arg(&stage))?
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .to_string();
    std::fs::write(
        debian.join("control"),
        format!(
            "Package: vespa\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: VESPA developers <vespa@example.invalid>\n\
             Installed-Size: {size_kb}\n\
             Depends: {depends}\n\
             Recommends: systemd\n\
             Section: net\n\
             Priority: optional\n\
             Description: host sensor and self-protection orchestrator for Linux hypervisors\n \
             vespa-agent: eBPF sensors (traffic, SYNs, TCP connections), the kernel firewall and\n \
             the acting agents (libvirt, SDN controllers, antivirus); vespa-orchestrator: the\n \
             horizontal and vertical orchestrators, the policy, the HTTP API and dashboard;\n \
             vespa-exporter: the sensors alone for Prometheus, on hosts outside a tree.\n \
             All run as systemd services under the unprivileged vespa user.\n"
        ),
    )?;
    std::fs::write(
        debian.join("conffiles"),
        "/etc/vespa/topology.toml\n/etc/vespa/policy.toml\n",
    )?;
    for (script, body) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        std::fs::write(debian.join(script), body)?;
        set_mode(&debian.join(script), 0o755)?;
    }
    let deb = dist.join(format!("{name}.deb"));
    step(&format!("writing {}", deb.display()));
    check(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb)
            .status()?,
        "dpkg-deb --build",
    )?;
    for f in [&deb, &tarball] {
        let len = std::fs::metadata(f)?.len();
        println!(
            "       {} ({:.1} MiB)",
            f.display(),
            len as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}

/// The packages holding the shared libraries the binaries link directly (their `NEEDED`
/// entries, `objdump -p`; where each resolves, `ldd`; its package, `dpkg -S`).
fn depends(bin: &Path) -> anyhow::Result<String> {
    let mut pkgs = std::collections::BTreeSet::new();
    for b in BINARIES {
        let headers = output(Command::new("objdump").arg("-p").arg(bin.join(b)))?;
        let ldd = output(Command::new("ldd").arg(bin.join(b)))?;
        for needed in headers
            .lines()
            .filter_map(|l| l.trim().strip_prefix("NEEDED"))
            .map(str::trim)
        {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, or for the loader
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`.
            let lib = ldd
                .lines()
                .find(|l| l.contains(needed))
                .and_then(|l| l.split_whitespace().find(|w| w.starts_with('/')))
                .with_context(|| format!("{b} links {needed}, which ldd does not resolve"))?;
            // usr-merged systems list /lib/... in ldd and /usr/lib/... in dpkg, or the reverse.
            let real = std::fs::canonicalize(lib).unwrap_or_else(|_| PathBuf::from(lib));
            let owner = [PathBuf::from(lib), real]
                .iter()
                .find_map(|p| output(Command::new("dpkg").arg("-S").arg(p)).ok());
            let Some(owner) = owner else {
                bail!("no Debian package holds {lib}, which {b} links");
            };
            let pkg = owner.split(':').next().unwrap_or_default().trim();
            if !pkg.is_empty() {
                pkgs.insert(pkg.to_string());
            }
        }
    }
    Ok(pkgs.into_iter().collect::<Vec<_>>().join(", "))
}

fn gzip(from: &Path, to: &Path) -> anyhow::Result<()> {
    let out = Command::new("gzip").args(["-9nc"]).arg(from).output()?;
    if !out.status.success() {
        bail!("gzip {} failed", from.display());
    }
    std::fs::write(to, out.stdout)?;
    Ok(())
}

fn set_mode(p: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The package's postinst: the set-up, then systemd told about the units (not enabled:
/// `systemctl enable --now vespa-agent` is the operator's). Under `dpkg --root`
/// (`DPKG_ROOT`), the set-up works on that tree and systemd is left alone.
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    "${DPKG_ROOT:-}/usr/lib/vespa/setup"
    if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
        # An upgrade restarts the services that run.
        if [ -n "$2" ]; then
            systemctl try-restart vespa-orchestrator.service vespa-agent.service vespa-exporter.service >/dev/null || true
        fi
    fi
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    systemctl stop vespa-agent.service vespa-exporter.service vespa-orchestrator.service >/dev/null || true
    systemctl disable vespa-agent.service vespa-exporter.service vespa-orchestrator.service >/dev/null 2>&1 || true
fi
exit 0
"#;

/// Purging removes what the set-up made (the key, the token) and the VO's journal.
const POSTRM: &str = r#"#!/bin/sh
set -e
R="${DPKG_ROOT:-}"
if [ "$1" = purge ]; then
    rm -f "$R/etc/vespa/psk" "$R/etc/vespa/api-token"
    rmdir "$R/etc/vespa" 2>/dev/null || true
    rm -f "$R/var/lib/vespa/vo-alerts.journal" "$R/var/lib/vespa/vo-alerts.journal.compacting"
    rmdir "$R/var/lib/vespa" 2>/dev/null || true
fi
if [ -z "$R" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
exit 0
"#;
