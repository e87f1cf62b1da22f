//! `cargo xtask`: VESPA's build, run, test and benchmark entry points.
//!
//! Every command first makes sure the machine has what it needs (`setup`), installing only
//! what is missing, so a fresh Debian host goes from clone to running system in one command.

mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

/// Build, run, test and benchmark VESPA.
#[derive(Parser)]
#[command(name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need: Debian packages, rust-src for nightly,
    /// bpf-linker 0.13.0 built against nightly's LLVM, and mount tracefs. Idempotent.
    Setup {
        /// Only report what is missing; change nothing.
        #[arg(long)]
        check: bool,
    },
    /// Build every binary in release mode (kernel programs included).
    Build,
    /// Start VESPA on this host from the embedded default configuration.
    Run {
        /// Address of the Prometheus exporter.
        #[arg(long, default_value = "127.0.0.1:9105")]
        listen: String,
        /// Extra arguments for vespa-agent (before the subcommand), e.g. `-- --exclude eth0`.
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// Run the whole test suite against the real kernel (and, as root, fail rather than skip
    /// any test that needs eBPF).
    Test {
        /// Extra arguments for `cargo test`, e.g. `-- --test sensors`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the benchmarks and print their ratios against baselines measured in the same run.
    Bench {
        /// Shorter runs (less precise), for a quick look.
        #[arg(long)]
        quick: bool,
        /// Only the benchmarks whose name contains this.
        #[arg(long)]
        only: Option<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let root = workspace_root();
    match cli.command {
        Cmd::Setup { check } => setup::run(check),
        Cmd::Build => {
            setup::ensure()?;
            cargo(&root, &["build", "--release", "--workspace", "--bins"])
        }
        Cmd::Run { listen, agent_args } => {
            setup::ensure()?;
            cargo(&root, &["build", "--release", "-p", "vespa-agent"])?;
            let agent = root.join("target/release/vespa-agent");
            step(&format!("starting the agent: eBPF sensors on every interface, metrics at http://{listen}/metrics"));
            println!("       live view:   {} top", agent.display());
            println!("       one reading: {} counters --json", agent.display());
            println!("       stop with Ctrl-C (the kernel programs are detached on exit)");
            let status = Command::new(&agent)
                .args(&agent_args)
                .args(["export", "--listen", &listen])
                .status()
                .with_context(|| format!("starting {}", agent.display()))?;
            // Ctrl-C reaches the agent too; it detaches and exits 0.
            if !status.success() && status.code().is_some() {
                bail!("vespa-agent exited with {status}");
            }
            Ok(())
        }
        Cmd::Test { args } => {
            setup::ensure()?;
            let require = setup::is_root() || std::env::var_os("CI").is_some();
            step(&format!(
                "running the test suite{}",
                if require { " (VESPA_REQUIRE_EBPF=1: tests needing root/eBPF fail instead of skipping)" } else { " (not root: privileged tests skip)" }
            ));
            // The end-to-end tests run the workspace's binaries, which `cargo test` only
            // builds for their own package's tests.
            cargo(&root, &["build", "--workspace", "--bins"])?;
            let mut cmd = Command::new(cargo_bin());
            cmd.current_dir(&root).args(["test", "--workspace", "--no-fail-fast"]).args(&args);
            if require {
                cmd.env("VESPA_REQUIRE_EBPF", "1");
            }
            check(cmd.status()?, "cargo test")
        }
        Cmd::Bench { quick, only } => {
            setup::ensure()?;
            cargo(&root, &["build", "--release", "-p", "vespa-agent", "-p", "vespa-tests"])?;
            let mut cmd = Command::new(root.join("target/release/vespa-bench"));
            if quick {
                cmd.arg("--quick");
            }
            if let Some(o) = only {
                cmd.args(["--only", &o]);
            }
            check(cmd.status()?, "vespa-bench")
        }
    }
}

pub(crate) fn step(msg: &str) {
    println!("==> {msg}");
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    step(&format!("cargo {}", args.join(" ")));
    check(Command::new(cargo_bin()).current_dir(root).args(args).status()?, "cargo")
}

fn check(status: std::process::ExitStatus, what: &str) -> anyhow::Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("{what} failed ({status})")
    }
}
