//! Running the system's tools (`ip`, `tc`, `virsh`, `ovs-vsctl`...): [`run`] reports a
//! failure with the command's output, [`sh`] panics with it, [`have`] says whether a program
//! is installed.

use std::process::{Command, Stdio};

/// Runs a command to completion; Err carries its output.
pub fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// [`run`], panicking with the command's output if it fails.
pub fn sh(args: &[&str]) -> String {
    run(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether a program is on PATH (or an absolute path exists).
pub fn have(prog: &str) -> bool {
    if prog.starts_with('/') {
        return std::path::Path::new(prog).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}
