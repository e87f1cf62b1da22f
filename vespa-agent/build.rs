//! Builds the kernel programs (`vespa-ebpf`) and embeds the object in the agent.
//!
//! aya-build 0.2.0 fixes the BPF rustflags, but the programs need `-C target-cpu=v3` (atomic
//! fetch-and-add, kernel 5.12+), so the few lines it would run are run here. Without
//! bpf-linker or the nightly toolchain (a developer laptop, `cargo xtask setup` not yet run)
//! an empty object is embedded and the agent falls back to /proc at run time, saying why.
//! `VESPA_EBPF_OBJECT=<path>` embeds a prebuilt object instead.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../vespa-ebpf");
    let common_dir = manifest_dir.join("../vespa-common");
    let dest = out_dir.join("vespa.bpf.o");
    println!("cargo:rustc-check-cfg=cfg(vespa_no_ebpf)");
    println!("cargo:rerun-if-env-changed=VESPA_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=VESPA_SKIP_EBPF_BUILD");
    for dir in [ebpf_dir.join("src"), common_dir.join("src")] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        ebpf_dir.join("Cargo.toml").display()
    );

    if let Ok(prebuilt) = env::var("VESPA_EBPF_OBJECT") {
        fs::copy(&prebuilt, &dest)?;
        return Ok(());
    }
    let skip = env::var("VESPA_SKIP_EBPF_BUILD").is_ok_and(|v| v == "1");
    let why_not = if skip {
        Some("VESPA_SKIP_EBPF_BUILD=1".to_string())
    } else {
        missing_toolchain()
    };
    if let Some(reason) = why_not {
        println!("cargo:warning=eBPF programs not built ({reason}); the agent will use /proc. Run `cargo xtask setup`.");
        println!("cargo:rustc-cfg=vespa_no_ebpf");
        fs::write(&dest, [])?;
        return Ok(());
    }

    let target_dir = out_dir.join("ebpf-target");
    let flags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
        "-Ctarget-cpu=v3",
    ]
    .join("\x1f");
    let status = Command::new("rustup")
        .env("PATH", path_with_cargo_bin())
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--bin", "vespa", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .status()?;
    anyhow::ensure!(status.success(), "building vespa-ebpf failed ({status})");
    fs::copy(target_dir.join("bpfel-unknown-none/release/vespa"), &dest)?;
    Ok(())
}

fn missing_toolchain() -> Option<String> {
    if !on_path("bpf-linker") {
        return Some("bpf-linker not found on PATH".into());
    }
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output();
    match nightly {
        Ok(out) if out.status.success() => {
            let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let src = Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
            (!src.exists()).then(|| "rust-src missing for the nightly toolchain".into())
        }
        _ => Some("no nightly toolchain".into()),
    }
}

/// PATH with cargo's own bin directory (where `cargo install` put bpf-linker) appended, for
/// environments whose PATH lacks it.
fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(h) = cargo_home {
        dirs.push(h.join("bin"));
    }
    env::join_paths(dirs).unwrap_or_default()
}

fn on_path(bin: &str) -> bool {
    env::split_paths(&path_with_cargo_bin()).any(|d| d.join(bin).is_file())
}
