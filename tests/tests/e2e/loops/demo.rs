//! `vespa-demo` (what `cargo xtask demo` runs) plays its scenario to the end: run as a user
//! would, with a small attack and short calm, it exits 0 having told every phase in order,
//! its dashboard answers on the host's loopback while it runs, and it leaves no namespace
//! behind.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vespa_tests::daemons::http_get;
use vespa_tests::daemons::ovs::SdnLab;
use vespa_tests::daemons::require_daemon;
use vespa_tests::workspace_bin;

/// A failure bound for the whole run (the scenario itself takes about ten seconds).
const RUN: Duration = Duration::from_secs(180);

/// The lines the narrative must contain, in this order.
const PHASES: &[&str] = &[
    "lab up: attacker",
    "tree up:",
    "dashboard: http://127.0.0.1:",
    "traffic flows: attacker -> victim",
    "attacker opens 40 TCP connections",
    "ALERT ",
    "VO policy: block ",
    "traffic stopped: ",
    "verified: ",
    "attacker closes its connections; calm",
    "VO policy: release ",
    "released; flows removed",
    "traffic flows again",
    "summary",
    "lab removed",
];

#[test]
fn the_demo_blocks_the_flood_releases_it_and_cleans_up() {
    let test = "the_demo_blocks_the_flood_releases_it_and_cleans_up";
    if !vespa_tests::privileged(test) {
        return;
    }
    if require_daemon(test, "Open vSwitch + os-ken", SdnLab::prerequisites()).is_none() {
        return;
    }
    let mut child = Command::new(workspace_bin("vespa-demo"))
        .args([
            "--connections",
            "40",
            "--threshold",
            "20",
            "--hold",
            "1",
            "--calm",
            "2",
            "--http",
            "127.0.0.1:0",
            "--no-color",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vespa-demo");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = child.stderr.take().expect("stderr");
    let err_reader =
        std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());

    // Follow the narrative as it is printed; ask the dashboard as soon as it is announced.
    let deadline = Instant::now() + RUN;
    let mut lines = Vec::new();
    let mut dashboard = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(url) = line.split("dashboard: http://").nth(1) {
                    let addr = url.split('/').next().expect("host:port").to_string();
                    let page = http_get(&addr, "/").expect("the dashboard answers on the host");
                    let topology =
                        http_get(&addr, "/api/v1/topology").expect("the API answers on the host");
                    dashboard = Some((page, topology));
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!(
                "vespa-demo still running after {RUN:?}; output so far:\n{}",
                lines.join("\n")
            );
        }
    }
    let status = child.wait().expect("wait for vespa-demo");
    reader.join().expect("stdout reader");
    let errors = err_reader.join().expect("stderr reader");
    let text = lines.join("\n");
    assert!(
        status.success(),
        "vespa-demo failed ({status}):\n{text}\nstderr:\n{errors}"
    );

    // Every phase, in order.
    let mut at = 0;
    for phase in PHASES {
        let found = text[at..]
            .find(phase)
            .unwrap_or_else(|| panic!("{phase:?} missing after byte {at} of the output:\n{text}"));
        at += found + phase.len();
    }
    // The switch's own word on the block (printed with the traffic stop, in time order).
    let block = text.find("VO policy: block ").expect("block");
    assert!(
        text[block..].contains("switch: drop flows for "),
        "no drop flow reported:\n{text}"
    );

    // The dashboard and the API were reachable from the host while it ran.
    let ((page_status, page), (api_status, topology)) = dashboard.expect("a dashboard line");
    assert_eq!((page_status, api_status), (200, 200));
    assert!(page.contains("VESPA"), "not the dashboard: {page}");
    assert!(
        topology.contains("Agent_Controller_OsKen"),
        "not the demo's tree: {topology}"
    );

    // Nothing left: no namespace of the demo's (`<prefix><pid>x<n>`), and its logs were kept
    // where it said (removed here).
    let tag = format!("{}x", pid % 100_000);
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let ours: Vec<&String> = left
        .iter()
        .filter(|n| {
            n.trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .starts_with(&tag)
        })
        .collect();
    assert!(ours.is_empty(), "namespaces left behind: {ours:?}");
    let logs = text
        .lines()
        .find_map(|l| l.split("VESPA's logs, topology and policy: ").nth(1))
        .expect("the logs line")
        .trim()
        .to_string();
    let logs = std::path::Path::new(&logs);
    assert!(
        logs.join("vo.log").is_file() && logs.join("topology.toml").is_file(),
        "logs not kept in {}",
        logs.display()
    );
    assert!(
        logs.starts_with(std::env::temp_dir())
            && logs
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vespa-demo-"))
    );
    std::fs::remove_dir_all(logs).expect("remove the demo's logs");
}
