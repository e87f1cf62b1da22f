//! Reconciliation of many decisions against a real controller: the VO (the real binary) holds
//! N blocks placed through os-ken on an Open vSwitch bridge (2 drop flows each), and
//! reconciles them with the switch every few seconds (`[reconcile] every_s`).
//!
//! Per run: the passes over the SDN agent with no decision (the baseline), the passes with N
//! decisions all in force (list N blocks in pages, compare, send nothing), and the pass after
//! every VESPA flow was deleted behind the VO's back (all N re-applied). A pass's time is
//! read from the VO's `vespa_reconcile_pass_seconds` (sum and count between two scrapes);
//! the VO's peak memory during a pass is its `VmHWM` after the pass less its `VmRSS` just
//! before it (the peak reset through `/proc/<pid>/clear_refs`). Two runs by default, each
//! with a fresh switch, controller and tree.
//!
//! `cargo xtask bench --only reconcile`, or
//! `cargo run --release -p vespa-tests --bin vespa-bench-reconcile -- --decisions 10000`

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use vespa_tests::daemons::ovs::SdnLab;
use vespa_tests::sdn_loop::{conn_flood_policy, Options, SdnLoop, SDN_AGENT, VESPA_COOKIE};

#[derive(Parser, Debug)]
#[command(about = "Reconciliation of N decisions against os-ken + Open vSwitch")]
struct Args {
    /// Decisions (blocks) in force.
    #[arg(long, default_value_t = 10_000)]
    decisions: usize,
    /// Runs, each on a fresh rig.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Passes measured per case and run.
    #[arg(long, default_value_t = 5)]
    passes: usize,
    /// The reconciliation period (`[reconcile] every_s`).
    #[arg(long, default_value_t = 4)]
    every_s: u64,
    /// 1,000 decisions, 3 passes.
    #[arg(long)]
    quick: bool,
}

const TOKEN: &str = "bench-reconcile-token";
/// Placing N blocks through os-ken one after the other takes a while.
const PLACE_TIMEOUT: Duration = Duration::from_secs(1800);

/// One pass: its time and the VO's memory peak over its RSS just before it.
#[derive(Debug, Clone, Copy)]
struct Pass {
    seconds: f64,
    peak_delta_kib: i64,
}

fn status_kib(pid: i32, field: &str) -> anyhow::Result<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("{field} of {pid}"))
}

/// The SDN agent's pass histogram: (sum, count).
fn pass_totals(rig: &SdnLoop) -> Option<(f64, f64)> {
    let sum = format!("vespa_reconcile_pass_seconds_sum{{node=\"VO\",actuator=\"{SDN_AGENT}\"}}");
    let count =
        format!("vespa_reconcile_pass_seconds_count{{node=\"VO\",actuator=\"{SDN_AGENT}\"}}");
    match rig.metrics(&[&sum, &count])?[..] {
        [s, c] => Some((s, c)),
        _ => None,
    }
}

fn drift(rig: &SdnLoop, kind: &str) -> f64 {
    rig.metric(&format!(
        "vespa_decisions_drift_total{{node=\"VO\",actuator=\"{SDN_AGENT}\",kind=\"{kind}\"}}"
    ))
    .unwrap_or(0.0)
}

/// Waits for the next pass to end; returns the new totals.
fn next_pass(rig: &SdnLoop, after: (f64, f64), timeout: Duration) -> anyhow::Result<(f64, f64)> {
    vespa_testkit::try_wait_until(
        "the next reconciliation pass",
        timeout,
        || match pass_totals(rig) {
            Some(t) if t.1 > after.1 => Ok(t),
            other => Err(other),
        },
    )
    .map_err(anyhow::Error::msg)
}

/// Measures `n` passes, each from just after the one before.
fn passes(rig: &SdnLoop, n: usize, every: Duration) -> anyhow::Result<Vec<Pass>> {
    let pid = rig.vo.pid();
    let timeout = every * 4 + Duration::from_secs(120);
    let mut last = next_pass(rig, pass_totals(rig).unwrap_or_default(), timeout)?;
    let mut out = Vec::new();
    for _ in 0..n {
        // Between passes: the peak starts again from here.
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("clear_refs")?;
        let before = status_kib(pid, "VmRSS:")?;
        let now = next_pass(rig, last, timeout)?;
        let peak = status_kib(pid, "VmHWM:")?;
        let count = now.1 - last.1;
        out.push(Pass {
            seconds: (now.0 - last.0) / count.max(1.0),
            peak_delta_kib: peak - before,
        });
        last = now;
    }
    Ok(out)
}

fn vespa_flow_count(rig: &SdnLoop) -> usize {
    rig.lab
        .ovs
        .dump_flows(&rig.lab.bridge)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(VESPA_COOKIE))
        .count()
}

fn wait_flows(rig: &SdnLoop, n: usize) -> anyhow::Result<Duration> {
    let t = Instant::now();
    vespa_testkit::try_wait_until("the switch to hold every drop flow", PLACE_TIMEOUT, || {
        let c = vespa_flow_count(rig);
        if c >= n {
            Ok(())
        } else {
            Err(c)
        }
    })
    .map_err(anyhow::Error::msg)?;
    Ok(t.elapsed())
}

fn summary(label: &str, p: &[Pass]) -> (f64, f64) {
    let mut s: Vec<f64> = p.iter().map(|x| x.seconds).collect();
    s.sort_by(f64::total_cmp);
    let median = s.get(s.len() / 2).copied().unwrap_or(0.0);
    let max = s.last().copied().unwrap_or(0.0);
    let peak = p.iter().map(|x| x.peak_delta_kib).max().unwrap_or(0);
    println!(
        "  {label:<34} passes {}: median {:>9.1} ms, min {:>9.1} ms, max {:>9.1} ms; VO peak over RSS before the pass: max {} KiB",
        p.len(),
        median * 1e3,
        s.first().copied().unwrap_or(0.0) * 1e3,
        max * 1e3,
        peak
    );
    (median, peak as f64)
}

struct RunResult {
    base: f64,
    steady: f64,
    steady_peak_kib: f64,
    reapply: f64,
    reapply_peak_kib: i64,
    place: Duration,
}

fn run(args: &Args, n: usize, run_no: usize) -> anyhow::Result<RunResult> {
    let lab = SdnLab::start().map_err(anyhow::Error::msg)?;
    let policy = format!(
        "{}\n[reconcile]\nevery_s = {}\n",
        conn_flood_policy(1_000_000, 5, 3),
        args.every_s
    );
    let tag = format!("bench-reconcile-{run_no}");
    let opts = Options {
        tag: &tag,
        policy: &policy,
        conn_threshold: 1_000_000,
        api_token: Some(TOKEN),
        keep_files: false,
        bandwidth_agent: false,
    };
    let rig = SdnLoop::start(lab, &opts)?;
    let every = Duration::from_secs(args.every_s);
    vespa_testkit::try_wait_until("the agents under the VO", Duration::from_secs(60), || {
        rig.agents_ready().then_some(()).ok_or(())
    })
    .map_err(anyhow::Error::msg)?;
    let base = passes(&rig, args.passes, every)?;

    // N blocks by hand, one import: 10.200.0.0 and up.
    let entries: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"target":"10.{}.{}.{}","ttl_s":36000}}"#,
                200 + i / 65_536,
                (i / 256) % 256,
                i % 256
            )
        })
        .collect();
    let body = format!("[{}]", entries.join(","));
    let (status, reply) = rig
        .api_request("POST", "/api/v1/decisions", TOKEN, &body)
        .context("the API")?;
    if status != 200 {
        bail!("import refused: {status} {reply}");
    }
    let place = wait_flows(&rig, 2 * n)?;
    eprintln!("run {run_no}: {n} blocks placed through os-ken in {place:?}");
    // Passes that judged the import while its calls were on their way are not measured: the
    // first measured pass starts after all of them ended.
    let steady = passes(&rig, args.passes, every)?;
    let missing_before = drift(&rig, "missing");

    // Every VESPA flow deleted behind the VO's back, just after a pass: the next pass
    // re-applies all N.
    let pid = rig.vo.pid();
    let last = next_pass(
        &rig,
        pass_totals(&rig).unwrap_or_default(),
        every * 4 + Duration::from_secs(120),
    )?;
    rig.lab
        .ovs
        .ofctl(
            &rig.lab.bridge,
            "del-flows",
            &["cookie=0x5645535000000000/0xffffffff00000000"],
        )
        .map_err(anyhow::Error::msg)?;
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("clear_refs")?;
    let before = status_kib(pid, "VmRSS:")?;
    let now = next_pass(&rig, last, PLACE_TIMEOUT)?;
    let wiped = vec![Pass {
        seconds: (now.0 - last.0) / (now.1 - last.1).max(1.0),
        peak_delta_kib: status_kib(pid, "VmHWM:")? - before,
    }];
    wait_flows(&rig, 2 * n)?;
    let missing = drift(&rig, "missing") - missing_before;
    if (missing as usize) < n {
        bail!("the pass after the wipe counted {missing} missing, not {n}");
    }
    println!("run {run_no} ({n} decisions, os-ken + Open vSwitch):");
    let (b, _) = summary("no decision", &base);
    let (s, sp) = summary(&format!("{n} in force"), &steady);
    let (r, _) = summary(&format!("{n} missing, re-applied"), &wiped);
    Ok(RunResult {
        base: b,
        steady: s,
        steady_peak_kib: sp,
        reapply: r,
        reapply_peak_kib: wiped.iter().map(|p| p.peak_delta_kib).max().unwrap_or(0),
        place,
    })
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.decisions = args.decisions.min(1_000);
        args.passes = args.passes.min(3);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("vespa-bench-reconcile needs root (Open vSwitch in a namespace)");
    }
    SdnLab::prerequisites().map_err(anyhow::Error::msg)?;
    let mut results = Vec::new();
    for r in 1..=args.runs {
        results.push(run(&args, args.decisions, r)?);
    }
    println!(
        "\nreconciliation of {} decisions against os-ken, {} runs:",
        args.decisions,
        results.len()
    );
    for (i, r) in results.iter().enumerate() {
        println!(
            "  run {}: pass in force {:.1} ms ({:.0}x the empty pass's {:.1} ms), peak +{:.0} KiB; all missing re-applied {:.2} s, peak +{} KiB; placing them took {:.1} s",
            i + 1,
            r.steady * 1e3,
            r.steady / r.base.max(1e-9),
            r.base * 1e3,
            r.steady_peak_kib,
            r.reapply,
            r.reapply_peak_kib,
            r.place.as_secs_f64()
        );
    }
    let steady: Vec<f64> = results.iter().map(|r| r.steady).collect();
    let lo = steady.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = steady.iter().copied().fold(0.0, f64::max);
    println!(
        "  spread of the in-force pass between runs: {:.1}-{:.1} ms ({:.0}%)",
        lo * 1e3,
        hi * 1e3,
        (hi - lo) / lo.max(1e-9) * 100.0
    );
    Ok(())
}
