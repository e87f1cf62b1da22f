//! What the nodes keep on disk, seen from outside the processes: the spools in the metrics
//! of both binaries and placed by their flags, and a decision ledger that only one
//! orchestrator process may hold.

use std::net::{IpAddr, SocketAddr};

use crate::kit::*;
use nix::sys::signal::Signal;
use vespa_testkit::wait_until;
use vespa_tests::daemons::{free_port, http_get};

fn tree(tag: &str, settings: &str) -> Tree {
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let nodes = [
        N::root("VO", "vo"),
        N::child("HO_VM", "ho_vm", "VO"),
        N::child("bw", "agent_bandwidth", "HO_VM").extra("interfaces = [\"lo\"]\n"),
    ];
    let settings = format!("heartbeat_ms = 300\nsample_interval_ms = 50\n{settings}");
    Tree::new(tag, &settings, &[("host", lo)], &nodes)
}

/// The value of the sample `series` (name and labels, exactly) in a scrape of `addr`.
fn sample(addr: SocketAddr, series: &str) -> Result<f64, String> {
    let (status, body) = http_get(&addr.to_string(), "/metrics")?;
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .ok_or_else(|| format!("no {series} in:\n{body}"))
}

/// With the VO not running, the HO's and the agent's own alerts wait in their spools, in
/// the metrics of each process: the agent's in the spool directory of the topology, the HO's
/// where `vespa-orchestrator run --spool-dir` put it (the topology's directory overridden).
/// Once the VO runs, they are acknowledged and counted so.
#[test]
fn the_spools_are_in_the_metrics_of_the_agent_and_of_an_ho_process() {
    let tree = tree("disk-spools", "spool_dir = \"spool\"");
    let dir = tree.scratch.dir.clone();
    let ho_dir = dir.join("ho-spool");
    let ho_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let agent_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut ho = tree.spawn_with(
        "ho",
        "vespa-orchestrator",
        None,
        &[],
        &["HO_VM"],
        &[
            "--spool-dir",
            &ho_dir.display().to_string(),
            "--metrics",
            &ho_metrics.to_string(),
        ],
    );
    let mut agent = tree.spawn_with(
        "agent",
        "vespa-agent",
        None,
        &["--mode", "proc"],
        &["bw"],
        &["--metrics", &agent_metrics.to_string()],
    );
    // The HO raises a `node` alert when the agent registers; the agent, its samples.
    let ho_held = wait_until(
        &format!("the HO's spool in its metrics (log: {})", ho.log.display()),
        WAIT,
        || {
            sample(ho_metrics, "vespa_spool_alerts{node=\"HO_VM\"}")
                .ok()
                .filter(|v| *v >= 1.0)
        },
    );
    assert!(
        ho_dir.join("HO_VM.spool").is_file(),
        "--spool-dir placed the HO's spool"
    );
    assert!(
        !dir.join("spool/HO_VM.spool").exists(),
        "not in the topology's spool_dir"
    );
    let agent_held = wait_until(
        &format!(
            "the agent's spool in its metrics (log: {})",
            agent.log.display()
        ),
        WAIT,
        || {
            sample(agent_metrics, "vespa_spool_alerts{node=\"bw\"}")
                .ok()
                .filter(|v| *v >= 5.0)
        },
    );
    assert!(dir.join("spool/bw.spool").is_file());
    let written = sample(agent_metrics, "vespa_spool_written_total{node=\"bw\"}").expect("written");
    assert!(written >= agent_held, "{written} >= {agent_held}");
    assert!(sample(agent_metrics, "vespa_spool_bytes{node=\"bw\"}").expect("bytes") > 0.0);
    for (addr, node) in [(ho_metrics, "HO_VM"), (agent_metrics, "bw")] {
        for series in [
            "vespa_spool_overflow_total",
            "vespa_spool_damaged_total",
            "vespa_spool_acknowledged_total",
        ] {
            assert_eq!(
                sample(addr, &format!("{series}{{node=\"{node}\"}}")),
                Ok(0.0),
                "{series} of {node}"
            );
        }
    }
    assert!(ho_held >= 1.0);

    // The VO acknowledges: both spools count what it took.
    let mut vo = tree.spawn("vo", "vespa-orchestrator", None, &[], &["VO"]);
    for (addr, node) in [(ho_metrics, "HO_VM"), (agent_metrics, "bw")] {
        wait_until(&format!("{node}'s alerts acknowledged"), WAIT, || {
            sample(
                addr,
                &format!("vespa_spool_acknowledged_total{{node=\"{node}\"}}"),
            )
            .ok()
            .filter(|v| *v >= 1.0)
        });
    }
    for p in [&mut agent, &mut ho, &mut vo] {
        p.signal(Signal::SIGTERM);
        let st = p.wait_exit();
        assert!(
            st.success(),
            "{} exit {st}; log:\n{}",
            p.label,
            p.log_text()
        );
    }
}

/// `--no-spool` wins over the topology's `spool_dir`, and cannot be given with `--spool-dir`.
#[test]
fn no_spool_keeps_the_hos_alerts_in_memory_whatever_the_topology_says() {
    let tree = tree("disk-nospool", "spool_dir = \"spool\"");
    let both = tree
        .start(
            "both",
            "vespa-orchestrator",
            None,
            &[],
            &["HO_VM"],
            &["--spool-dir", "x", "--no-spool"],
        )
        .expect("start");
    let mut both = both;
    let st = both.wait_exit();
    assert!(!st.success(), "--spool-dir with --no-spool: {st}");
    let text = both.log_text();
    assert!(
        text.contains("--no-spool") && text.contains("--spool-dir"),
        "{text}"
    );

    let mut ho = tree.spawn_with(
        "ho",
        "vespa-orchestrator",
        None,
        &[],
        &["HO_VM"],
        &["--no-spool"],
    );
    let s = wait_until("the HO to answer", WAIT, || stats(&tree, "HO_VM", "HO_VM"));
    assert_eq!(s.spool, None, "{s:?}");
    assert!(!tree.scratch.dir.join("spool/HO_VM.spool").exists());
    ho.signal(Signal::SIGTERM);
    assert!(ho.wait_exit().success());
}

/// A ledger belongs to one process: a second `vespa-orchestrator run --ledger` on the same
/// file stops at start, naming the file and the process that holds it, and leaves the first
/// running; once the first has stopped, the file can be taken again.
#[test]
fn a_second_orchestrator_on_the_same_ledger_refuses_to_start() {
    let tree = tree("disk-ledger", "");
    let ledger = tree.scratch.dir.join("state/ledger.db");
    let arg = ledger.display().to_string();
    let mut first = tree.spawn_with(
        "first",
        "vespa-orchestrator",
        None,
        &[],
        &["VO"],
        &["--ledger", &arg],
    );
    wait_until("the first VO to answer", WAIT, || stats(&tree, "VO", "VO"));
    let mut second = tree
        .start(
            "second",
            "vespa-orchestrator",
            None,
            &[],
            &["VO"],
            &["--ledger", &arg],
        )
        .expect("start");
    let st = second.wait_exit();
    assert!(!st.success(), "the second process started: {st}");
    let text = second.log_text();
    assert!(text.contains(&arg), "the path in: {text}");
    assert!(text.contains("in use by another process"), "{text}");
    assert!(
        text.contains(&format!("pid {}", first.pid())),
        "the holder in: {text}"
    );
    assert!(first.exited().is_none(), "the first keeps running");
    assert!(stats(&tree, "VO", "VO").is_some());

    first.signal(Signal::SIGTERM);
    assert!(first.wait_exit().success());
    let mut third = tree.spawn_with(
        "third",
        "vespa-orchestrator",
        None,
        &[],
        &["VO"],
        &["--ledger", &arg],
    );
    wait_until("a VO on the ledger again", WAIT, || {
        stats(&tree, "VO", "VO")
    });
    third.signal(Signal::SIGTERM);
    assert!(third.wait_exit().success(), "{}", third.log_text());
}
