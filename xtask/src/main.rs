//! `cargo xtask`: VESPA's build, run, demo, package, test and benchmark entry points.
//!
//! Every command first makes sure the machine has what it needs (`setup`), installing only
//! what is missing, so a fresh Debian host goes from clone to running system in one command.

mod dist;
mod lint;
mod modgraph;
mod setup;
mod testlog;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::bail;
use clap::{Parser, Subcommand};

/// Build, run, demo, test and benchmark VESPA.
#[derive(Parser)]
#[command(name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need: Debian packages (libvirt, QEMU, Open vSwitch,
    /// ClamAV, iproute2...), rust-src for nightly, bpf-linker 0.13.0 built against nightly's
    /// LLVM, cargo-fuzz, the os-ken virtualenv, and mount tracefs. Idempotent.
    Setup {
        /// Only report what is missing; change nothing.
        #[arg(long)]
        check: bool,
    },
    /// Build every binary in release mode (kernel programs included).
    Build,
    /// Start VESPA on this host from the embedded default topology: the VO and the three HOs
    /// (vespa-orchestrator) and the sensor agents (vespa-agent, eBPF on every interface), all on
    /// loopback with a key made for the purpose. Ctrl-C stops everything.
    Run {
        /// Address of the agents' Prometheus exporter.
        #[arg(long, default_value = "127.0.0.1:9105")]
        listen: String,
        /// Extra arguments for vespa-agent (before `run`), e.g. `-- --exclude eth0`.
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// The Debian package and the tarball of a host's install, in target/dist/: both release
    /// binaries, their systemd units, /etc/vespa with a commented example topology and
    /// policy, man pages and shell completions (docs/install.md).
    Dist {
        /// Package the release binaries already built instead of building them.
        #[arg(long)]
        no_build: bool,
    },
    /// Check the style every change keeps: rustfmt, clippy with warnings denied (workspace,
    /// sensor-only agent, kernel programs) and no module circles within a crate.
    Lint,
    /// Run the lint step, then the whole test suite against the real kernel (and, as root,
    /// fail rather than skip any test that needs eBPF), then fuzz the decoders.
    Test {
        /// Skip the lint step (a quick local re-run; CI always lints).
        #[arg(long)]
        no_lint: bool,
        /// Seconds each fuzz target (frame and message decoders) runs after the tests; 0 skips.
        #[arg(long, default_value_t = 60)]
        fuzz_seconds: u64,
        /// Extra arguments for `cargo test`, e.g. `-- --test e2e agent::sensors` (one area of
        /// the end-to-end tests: agent, firewall, tree, http, actuators, loops, deploy).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The scripted attack with a live view: in network namespaces behind an Open vSwitch
    /// bridge controlled by os-ken, an attacker floods a victim with TCP connections, VESPA
    /// blocks the attacker's MAC on the switch, then releases it once calm. Needs root.
    Demo {
        /// Arguments for vespa-demo, e.g. `-- --connections 200 --keep` (`-- --help` lists them).
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
            cargo(
                &root,
                &[
                    "build",
                    "--release",
                    "-p",
                    "vespa-agent",
                    "-p",
                    "vespa-orchestrator",
                ],
            )?;
            run_tree(&root, &listen, &agent_args)
        }
        Cmd::Dist { no_build } => {
            if !no_build {
                setup::ensure()?;
            }
            dist::run(&root, !no_build)
        }
        Cmd::Lint => {
            setup::ensure()?;
            lint::run(&root)
        }
        Cmd::Test {
            no_lint,
            fuzz_seconds,
            args,
        } => {
            setup::ensure()?;
            if !no_lint {
                lint::run(&root)?;
            }
            let require = setup::is_root() || std::env::var_os("CI").is_some();
            step(&format!(
                "running the test suite{}",
                if require {
                    " (VESPA_REQUIRE_EBPF=1: tests needing root/eBPF fail instead of skipping)"
                } else {
                    " (not root: privileged tests skip)"
                }
            ));
            // The end-to-end tests run the workspace's binaries, which `cargo test` only
            // builds for their own package's tests.
            cargo(&root, &["build", "--workspace", "--bins"])?;
            let mut cmd = Command::new(cargo_bin());
            cmd.current_dir(&root)
                .args(["test", "--workspace", "--no-fail-fast"])
                .args(&args);
            if require {
                cmd.env("VESPA_REQUIRE_EBPF", "1");
            }
            let (mut tests, mut digest) = run_tests(cmd)?;
            // The agents without their acting half, as the sensor-only agent links them: a
            // kind left out must be refused by name.
            if tests.success() && args.is_empty() {
                let mut cmd = Command::new(cargo_bin());
                cmd.current_dir(&root).args([
                    "test",
                    "-p",
                    "vespa-agents",
                    "--no-default-features",
                    "--lib",
                ]);
                (tests, digest) = run_tests(cmd)?;
            }
            // Fuzz even when a test failed: both results are worth having from one CI run.
            let fuzz = if fuzz_seconds > 0 {
                fuzz(&root, fuzz_seconds)
            } else {
                Ok(())
            };
            // Last, so the end of a long log says which tests failed and why.
            if let Some(digest) = digest.render() {
                eprint!("{digest}");
            }
            check(tests, "cargo test")?;
            fuzz
        }
        Cmd::Demo { args } => demo(&root, &args),
        Cmd::Bench { quick, only } => {
            setup::ensure()?;
            cargo(
                &root,
                &[
                    "build",
                    "--release",
                    "-p",
                    "vespa-agent",
                    "-p",
                    "vespa-orchestrator",
                    "-p",
                    "vespa-tests",
                ],
            )?;
            // The agent without its acting agents, as a sensors-only host runs the exporter:
            // its own target directory, so the full binary above stays as it is.
            let sensor_only = target_dir(&root).join("sensor-only");
            let sensor_only_dir = sensor_only.to_string_lossy().into_owned();
            cargo(
                &root,
                &[
                    "build",
                    "--release",
                    "-p",
                    "vespa-agent",
                    "--no-default-features",
                    "--target-dir",
                    &sensor_only_dir,
                ],
            )?;
            let sensor_only_agent = sensor_only.join("release").join("vespa-agent");
            // One binary per area; each prints its ratios and writes target/bench/<area>.json.
            let areas: [(&str, &str, &[&str]); 10] = [
                ("sensors", "vespa-bench", &[]),
                // The kernel firewall: drop rates, its cost to unblocked traffic, the reflex,
                // the policy's block.
                ("firewall", "vespa-bench-firewall", &[]),
                ("tree", "vespa-bench-tree", &[]),
                // The VO's outputs down against none, alternating in one run.
                ("tree-outputs", "vespa-bench-tree", &["--outputs"]),
                ("actuators", "vespa-bench-actuators", &[]),
                // Reconciliation of 10,000 decisions against os-ken + Open vSwitch.
                ("reconcile", "vespa-bench-reconcile", &[]),
                ("loop", "vespa-bench-loop", &[]),
                // The same rule at the VO and at HO_PH, alternating in one run.
                ("loop-fastpath", "vespa-bench-loop", &["--fast-path"]),
                // The same, while one source floods the sensors with new remotes.
                ("loop-flood", "vespa-bench-loop", &["--under-flood"]),
                // Without and with the VO's decision ledger, alternating in one run.
                (
                    "loop-ledger",
                    "vespa-bench-loop",
                    &["--ledger", "--crossings", "200"],
                ),
            ];
            for (area, bin, extra) in areas {
                // These binaries hold several benchmarks and filter them by name themselves.
                let filters = matches!(bin, "vespa-bench" | "vespa-bench-firewall");
                if only
                    .as_deref()
                    .is_some_and(|o| !area.contains(o) && !filters)
                {
                    continue;
                }
                let path = target_dir(&root).join("release").join(bin);
                if !path.exists() {
                    continue;
                }
                step(&format!("benchmarks: {area}"));
                let mut cmd = Command::new(path);
                cmd.args(extra);
                if quick {
                    cmd.arg("--quick");
                }
                // `--only firewall` runs the whole area, `--only reflex` the one benchmark.
                if let Some(o) = only.as_deref().filter(|o| filters && !area.contains(o)) {
                    cmd.args(["--only", o]);
                }
                if bin == "vespa-bench" {
                    cmd.arg("--sensor-only-agent").arg(&sensor_only_agent);
                }
                check(cmd.status()?, bin)?;
            }
            Ok(())
        }
    }
}

/// Where `cargo xtask run` serves the VO's HTTP API and dashboard.
const HTTP: &str = "127.0.0.1:8080";

/// Starts the orchestrators and the agents and waits for Ctrl-C (or for one to fail).
fn run_tree(root: &Path, listen: &str, agent_args: &[String]) -> anyhow::Result<()> {
    let bin = target_dir(root).join("release");
    let key = root.join("target/vespa/psk");
    if !key.exists() {
        std::fs::create_dir_all(key.parent().expect("has a parent"))?;
        step(&format!("making a pre-shared key at {}", key.display()));
        check(
            Command::new(bin.join("vespa-orchestrator"))
                .arg("keygen")
                .arg(&key)
                .status()?,
            "vespa-orchestrator keygen",
        )?;
    }
    // The API's token for mutations (release, block, dry-run, reload): 32 random bytes as hex,
    // mode 0600 like the key.
    let token = root.join("target/vespa/api-token");
    if !token.exists() {
        use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
        let mut raw = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token)?;
        std::io::Write::write_all(&mut f, hex.as_bytes())?;
        step(&format!("made an API token at {}", token.display()));
    }
    step("the tree (embedded default topology):");
    check(
        Command::new(bin.join("vespa-orchestrator"))
            .args(["run", "--check-config"])
            .status()?,
        "vespa-orchestrator --check-config",
    )?;
    step("starting the VO and the HOs (vespa-orchestrator run)");
    let mut orch = Command::new(bin.join("vespa-orchestrator"))
        .arg("run")
        .arg("--key")
        .arg(&key)
        .args(["--http", HTTP])
        .arg("--api-token-file")
        .arg(&token)
        // The decisions survive a restart of the demo (docs/decisions.md).
        .arg("--ledger")
        .arg(root.join("target/vespa/ledger.db"))
        .spawn()?;
    step(&format!("starting the agents (vespa-agent run): eBPF sensors on every interface, metrics at http://{listen}/metrics"));
    // The agents' unacknowledged alerts survive a restart of `cargo xtask run` (the packaged
    // topology puts them in the unit's state directory, /var/lib/vespa).
    let spool = root.join("target/vespa/spool");
    let mut agent = Command::new(bin.join("vespa-agent"))
        .args(agent_args)
        .arg("run")
        .arg("--key")
        .arg(&key)
        .args(["--metrics", listen])
        .arg("--spool-dir")
        .arg(&spool)
        .spawn()?;
    println!(
        "       dashboard:   http://{HTTP}/   (API token for mutations: {})",
        token.display()
    );
    println!("       API:         http://{HTTP}/api/v1/topology, /api/v1/alerts, /metrics");
    println!(
        "       decisions:   {} (sqlite3 -readonly; decisions list --all --api http://{HTTP})",
        root.join("target/vespa/ledger.db").display()
    );
    println!(
        "       ask a node:  {} call --key {} Agent_Bandwidth interfaces",
        bin.join("vespa-orchestrator").display(),
        key.display()
    );
    println!(
        "       live view:   {} top",
        bin.join("vespa-agent").display()
    );
    println!("       stop with Ctrl-C (kernel programs are detached on exit)");
    // Ctrl-C reaches both children (same process group); wait for both, and if one stops on
    // its own, stop the other too.
    loop {
        let a = agent.try_wait()?;
        let o = orch.try_wait()?;
        match (a, o) {
            (Some(a), Some(o)) => {
                if a.success() && o.success() || a.code().is_none() || o.code().is_none() {
                    return Ok(());
                }
                bail!("vespa-agent exited with {a}, vespa-orchestrator with {o}");
            }
            (Some(_), None) => interrupt(&orch),
            (None, Some(_)) => interrupt(&agent),
            (None, None) => {}
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `cargo xtask demo`: set-up, the release binaries the demo runs, then `vespa-demo` in this
/// process's place (so Ctrl-C reaches it alone, and it removes everything it made).
fn demo(root: &Path, args: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let help = args
        .iter()
        .any(|a| ["--help", "-h", "--version", "-V"].contains(&a.as_str()));
    if !help && !setup::is_root() {
        bail!("`cargo xtask demo` needs root: it creates network namespaces, an Open vSwitch bridge and processes inside them (run it as root, e.g. `sudo -E cargo xtask demo`)");
    }
    setup::ensure()?;
    cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "vespa-agent",
            "-p",
            "vespa-orchestrator",
            "-p",
            "vespa-tests",
            "--bin",
            "vespa-agent",
            "--bin",
            "vespa-orchestrator",
            "--bin",
            "vespa-demo",
        ],
    )?;
    let bin = target_dir(root).join("release/vespa-demo");
    step(&format!(
        "running {} {}(Ctrl-C stops it and removes the lab)",
        bin.display(),
        args.iter().map(|a| format!("{a} ")).collect::<String>()
    ));
    let err = Command::new(&bin).args(args).exec();
    Err(anyhow::Error::new(err).context(format!("starting {}", bin.display())))
}

fn interrupt(child: &std::process::Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
}

/// Runs every cargo-fuzz target for `secs` seconds from the committed seed corpus. New
/// inputs go to a scratch directory so the repository's corpus stays as committed.
fn fuzz(root: &Path, secs: u64) -> anyhow::Result<()> {
    for target in ["frame_decoder", "message_decoder"] {
        step(&format!("fuzzing {target} for {secs}s"));
        let scratch = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        let status = Command::new("rustup")
            .current_dir(root.join("fuzz"))
            .args(["run", "nightly", "cargo", "fuzz", "run", target])
            .arg(&scratch)
            .arg(root.join("fuzz/corpus").join(target))
            .args([
                "--",
                &format!("-max_total_time={secs}"),
                "-print_final_stats=1",
            ])
            .env("CARGO_TARGET_DIR", root.join("target/fuzz"))
            .status()?;
        check(status, &format!("fuzz target {target}"))?;
    }
    Ok(())
}

pub(crate) fn step(msg: &str) {
    println!("==> {msg}");
}

/// Where cargo writes its build output: `$CARGO_TARGET_DIR` (relative to the workspace
/// root if relative), else `target/`.
/// Runs `cargo test`, passing its output through unchanged while keeping a digest of failures.
fn run_tests(mut cmd: Command) -> anyhow::Result<(std::process::ExitStatus, testlog::Digest)> {
    use std::io::{BufRead, Write};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let mut digest = testlog::Digest::default();
    let mut out = std::io::stdout().lock();
    for line in std::io::BufReader::new(child.stdout.take().expect("piped stdout")).split(b'\n') {
        let line = line?;
        out.write_all(&line)?;
        out.write_all(b"\n")?;
        out.flush()?;
        digest.line(&String::from_utf8_lossy(&line));
    }
    Ok((child.wait()?, digest))
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| root.join("target"), |d| root.join(d))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    step(&format!("cargo {}", args.join(" ")));
    check(
        Command::new(cargo_bin())
            .current_dir(root)
            .args(args)
            .status()?,
        "cargo",
    )
}

fn check(status: std::process::ExitStatus, what: &str) -> anyhow::Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("{what} failed ({status})")
    }
}
