//! `cargo xtask lint`: the style every change must keep, checked the same way here and in CI
//! (`cargo xtask test` runs it first).
//!
//! 1. formatting: `cargo fmt --check` over the workspace, the kernel programs and the fuzz
//!    targets (one `rustfmt.toml` at the top);
//! 2. clippy with every warning denied: the workspace (all targets), the agent's sensor-only
//!    build, and the kernel programs on their own target with nightly;
//! 3. module circles: within each crate, no module imports a module that imports it back
//!    ([`crate::modgraph`]).
//!
//! Every step runs even after one fails, so one run lists every finding.

use std::path::Path;
use std::process::Command;

use anyhow::bail;

use crate::{cargo_bin, modgraph, step};

/// The crates whose module graphs are checked: their root files.
const CRATE_ROOTS: &[&str] = &[
    "vespa-common/src/lib.rs",
    "vespa-ebpf/src/main.rs",
    "vespa-proto/src/lib.rs",
    "vespa-node/src/lib.rs",
    "vespa-agents/src/lib.rs",
    "vespa-agent/src/lib.rs",
    "vespa-agent/src/main.rs",
    "vespa-policy/src/lib.rs",
    "vespa-orchestrator/src/lib.rs",
    "vespa-orchestrator/src/main.rs",
    "tests/src/lib.rs",
    "tests/tests/e2e/main.rs",
    "xtask/src/main.rs",
];

/// Runs every check; fails naming the ones that found something.
pub fn run(root: &Path) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    let mut check = |name: &str, ok: anyhow::Result<()>| {
        if let Err(e) = ok {
            eprintln!("xtask lint: {name}: {e:#}");
            failed.push(name.to_string());
        }
    };
    check("rustfmt", fmt(root));
    check("clippy (workspace)", clippy_workspace(root));
    check("clippy (sensor-only agent)", clippy_sensor_only(root));
    check("clippy (vespa-ebpf)", clippy_ebpf(root));
    check("module circles", module_circles(root));
    if failed.is_empty() {
        step("lint: clean (rustfmt, clippy -D warnings, no module circles)");
        Ok(())
    } else {
        bail!("lint found problems in: {}", failed.join(", "))
    }
}

fn run_cmd(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status()?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn fmt(root: &Path) -> anyhow::Result<()> {
    step("lint: cargo fmt --check (workspace, vespa-ebpf, fuzz)");
    let mut result = run_cmd(
        Command::new(cargo_bin())
            .current_dir(root)
            .args(["fmt", "--all", "--check"]),
        "cargo fmt --check (workspace)",
    );
    for dir in ["vespa-ebpf", "fuzz"] {
        let r = run_cmd(
            Command::new(cargo_bin())
                .current_dir(root.join(dir))
                .args(["fmt", "--check"]),
            &format!("cargo fmt --check ({dir})"),
        );
        result = result.and(r);
    }
    result
        .map_err(|e| anyhow::anyhow!("{e:#}; `cargo fmt --all` (and in vespa-ebpf, fuzz) fixes it"))
}

fn clippy_workspace(root: &Path) -> anyhow::Result<()> {
    step("lint: cargo clippy --workspace --all-targets -- -D warnings");
    run_cmd(
        Command::new(cargo_bin()).current_dir(root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        "clippy (workspace)",
    )
}

/// The agent without its acting agents (`--no-default-features`): what the exporter runs.
fn clippy_sensor_only(root: &Path) -> anyhow::Result<()> {
    step("lint: cargo clippy -p vespa-agent -p vespa-agents --no-default-features -- -D warnings");
    run_cmd(
        Command::new(cargo_bin()).current_dir(root).args([
            "clippy",
            "-p",
            "vespa-agent",
            "-p",
            "vespa-agents",
            "--no-default-features",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        "clippy (sensor-only agent)",
    )
}

/// The kernel programs build with nightly for `bpfel-unknown-none` (see vespa-agent/build.rs);
/// clippy checks them the same way, in a target directory of its own.
fn clippy_ebpf(root: &Path) -> anyhow::Result<()> {
    step("lint: cargo +nightly clippy on vespa-ebpf (bpfel-unknown-none) -- -D warnings");
    let flags = ["--cfg=bpf_target_arch=\"x86_64\"", "-Ctarget-cpu=v3"].join("\x1f");
    run_cmd(
        Command::new("rustup")
            .current_dir(root.join("vespa-ebpf"))
            .args(["run", "nightly", "cargo", "clippy", "--release"])
            .args([
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--bin",
                "vespa",
            ])
            .arg("--target-dir")
            .arg(root.join("target/ebpf-lint"))
            .args(["--", "-D", "warnings"])
            .env("CARGO_ENCODED_RUSTFLAGS", flags)
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS"),
        "clippy (vespa-ebpf)",
    )
}

fn module_circles(root: &Path) -> anyhow::Result<()> {
    step("lint: module circles (no module imports a module that imports it back)");
    let mut found = Vec::new();
    for rel in CRATE_ROOTS {
        let g = modgraph::read_crate(&root.join(rel)).map_err(anyhow::Error::msg)?;
        for circle in modgraph::circles(&g) {
            let mods: Vec<String> = circle.iter().map(modgraph::show).collect();
            found.push(format!(
                "{rel}: {}\n      {}",
                mods.join(", "),
                modgraph::circle_edges(&g, &circle).join("\n      ")
            ));
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    for f in &found {
        eprintln!("  circle in {f}");
    }
    bail!("{} module circle(s)", found.len())
}
