//! The files of `deploy/` against the real tools: `promtool check` and `promtool test rules`
//! (Debian's prometheus package) on the shipped rules, their unit tests shown to fail when
//! an alert's expression is broken, the Grafana dashboard parsed, and a real Prometheus
//! scraping a running `vespa-agent` and the VO's `/metrics`, answering queries for VESPA
//! series, loading the rules, and every metric name the rules and the dashboard use found
//! in the live scrapes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;
use vespa_testkit::wait_until;
use vespa_tests::daemons::floodlight_stub::FloodlightStub;
use vespa_tests::daemons::{self, http_get};
use vespa_tests::shared::LOOPBACK;

use crate::kit::*;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .join("deploy")
}

fn rules_files() -> Vec<PathBuf> {
    let dir = deploy().join("prometheus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".rules.yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "recording and alerting rules: {files:?}");
    files
}

fn test_files() -> Vec<PathBuf> {
    let dir = deploy().join("prometheus/tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".test.yml"))
        .collect();
    files.sort();
    files
}

/// `program`'s path when it is installed (`cargo xtask setup` installs Debian's prometheus
/// package); otherwise the test fails under `VESPA_REQUIRE_EBPF=1` or says why it skips.
fn tool(test: &str, program: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file());
    daemons::require_daemon(
        test,
        program,
        found.ok_or_else(|| format!("{program} is not installed (cargo xtask setup)")),
    )
}

/// Runs a command to its end: (exit status success, stdout and stderr together).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn promtool_checks_the_rules_and_the_scrape_config() {
    let Some(promtool) = tool(
        "promtool_checks_the_rules_and_the_scrape_config",
        "promtool",
    ) else {
        return;
    };
    let rules = rules_files();
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .args(&rules));
    assert!(ok, "promtool check rules:\n{out}");
    for r in &rules {
        assert!(
            out.contains(&format!("Checking {}", r.display())),
            "{} checked:\n{out}",
            r.display()
        );
    }
    // The scrape config names the rule files: checking it loads them too.
    let config = deploy().join("prometheus/prometheus.yml");
    let (ok, out) = run(Command::new(&promtool)
        .arg("check")
        .arg("config")
        .arg(&config));
    assert!(ok, "promtool check config:\n{out}");
    assert!(out.contains("2 rule files found"), "{out}");
}

/// The alert names of an alerting rules file, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

/// `rules` with the expression of alert `name` replaced by one that never fires.
fn break_alert(rules: &str, name: &str) -> String {
    let mut out = Vec::new();
    let mut in_alert = false;
    let mut skip_deeper_than: Option<usize> = None;
    let mut replaced = false;
    for line in rules.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(depth) = skip_deeper_than {
            if line.trim().is_empty() || indent > depth {
                continue;
            }
            skip_deeper_than = None;
        }
        if let Some(n) = line.trim().strip_prefix("- alert:") {
            in_alert = n.trim() == name;
        } else if in_alert && line.trim_start().starts_with("expr:") {
            out.push(format!("{}expr: vector(0) > 1", &line[..indent]));
            skip_deeper_than = Some(indent);
            in_alert = false;
            replaced = true;
            continue;
        }
        out.push(line.to_string());
    }
    assert!(replaced, "no expr for alert {name}");
    out.join("\n") + "\n"
}

#[test]
fn the_rules_unit_tests_pass_and_catch_a_broken_alert() {
    let Some(promtool) = tool(
        "the_rules_unit_tests_pass_and_catch_a_broken_alert",
        "promtool",
    ) else {
        return;
    };
    let tests = test_files();
    assert!(
        !tests.is_empty(),
        "unit tests under deploy/prometheus/tests"
    );
    let (ok, out) = run(Command::new(&promtool)
        .args(["test", "rules"])
        .args(&tests)
        .current_dir(deploy().join("prometheus/tests")));
    assert!(ok, "promtool test rules:\n{out}");
    assert_eq!(
        out.matches("SUCCESS").count(),
        tests.len(),
        "every file passes:\n{out}"
    );

    // Each alert is tested firing: with its expression broken (it can never fire), the
    // unit tests fail, naming it. The copies keep the layout the tests' paths expect.
    let alerts_file = deploy().join("prometheus/vespa-alerts.rules.yml");
    let alerts = std::fs::read_to_string(&alerts_file).expect("alerting rules");
    let names = alert_names(&alerts);
    for wanted in [
        "VespaAgentDown",
        "VespaEventsLost",
        "VespaBlindSpot",
        "VespaActionDidNotTake",
        "VespaClosedLoopSlow",
        "VespaSpoolDropping",
    ] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
    }
    let scratch = Scratch::new("promtool");
    let copy = scratch.dir.join("prometheus");
    std::fs::create_dir_all(copy.join("tests")).expect("mkdir");
    for f in rules_files() {
        std::fs::copy(&f, copy.join(f.file_name().expect("name"))).expect("copy rules");
    }
    for f in &tests {
        std::fs::copy(f, copy.join("tests").join(f.file_name().expect("name")))
            .expect("copy tests");
    }
    for name in &names {
        std::fs::write(
            copy.join("vespa-alerts.rules.yml"),
            break_alert(&alerts, name),
        )
        .expect("write");
        let (ok, out) = run(Command::new(&promtool)
            .args(["test", "rules"])
            .args(tests.iter().map(|t| t.file_name().expect("name")))
            .current_dir(copy.join("tests")));
        assert!(
            !ok,
            "with {name}'s expression broken the unit tests still pass:\n{out}"
        );
        assert!(
            out.contains(&format!("alertname: {name},")),
            "the failure names {name}:\n{out}"
        );
    }
}

/// The Grafana dashboard, parsed, and every PromQL expression of its panels.
fn dashboard() -> (Json, Vec<String>) {
    let path = deploy().join("grafana/vespa.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dash: Json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().expect("a target's expr").to_string());
        }
    }
    (dash, exprs)
}

#[test]
fn the_grafana_dashboard_is_json_with_a_query_per_panel() {
    let (dash, exprs) = dashboard();
    assert_eq!(dash["uid"], "vespa-overview");
    let panels = dash["panels"].as_array().expect("panels");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {} has a query",
            p["title"]
        );
    }
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Traffic per host",
        "Traffic per VM",
        "Connections",
        "Blocks (the kernel firewall)",
        "The closed loop (VO)",
        "Sensor and tree health",
        "Spools and reconciliation",
    ] {
        assert!(titles.contains(&wanted), "{wanted} in {titles:?}");
    }
    assert!(exprs
        .iter()
        .any(|e| e.contains("vespa_closed_loop_seconds_bucket")));
    assert!(exprs.iter().any(|e| e.contains("vm!=\"\"")));
}

/// Every `vespa_*` metric name in `text` (recording rules are `vespa:*`, alerts `Vespa*`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("vespa_") {
        let start = i + at;
        let word_start =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        if word_start {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The sample names one scrape can carry: each family's samples as the exposition names
/// them (`_total` of a counter, `_bucket`, `_sum`, `_count` of a histogram), from its
/// `# TYPE` lines, so a family without samples yet (no block placed) still counts.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in exposition.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            let (Some(name), Some(ty)) = (w.next(), w.next()) else {
                continue;
            };
            let suffixes: &[&str] = match ty {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                out.insert(format!("{name}{s}"));
            }
        } else if !l.starts_with('#') {
            if let Some(name) = l.split(['{', ' ']).next().filter(|n| !n.is_empty()) {
                out.insert(name.to_string());
            }
        }
    }
    out
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

/// An instant query to Prometheus: its `data.result`, or why there is none.
fn query(prom: SocketAddr, q: &str) -> Result<Vec<Json>, String> {
    let (status, body) = http_get(
        &prom.to_string(),
        &format!("/api/v1/query?query={}", encode(q)),
    )?;
    let v: Json = serde_json::from_str(&body).map_err(|e| format!("{status} {body:?}: {e}"))?;
    if v["status"] != "success" {
        return Err(format!("{status} {body}"));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// [`query`] until it answers a non-empty result.
fn wait_result(prom: SocketAddr, q: &str, log: &Path) -> Vec<Json> {
    wait_until(
        &format!("Prometheus to answer {q} (log: {})", log.display()),
        WAIT,
        || {
            query(prom, q).and_then(|r| {
                if r.is_empty() {
                    Err("empty result".into())
                } else {
                    Ok(r)
                }
            })
        },
    )
}

#[test]
fn a_real_prometheus_scrapes_an_agent_and_the_vo() {
    if !vespa_tests::privileged("a_real_prometheus_scrapes_an_agent_and_the_vo") {
        return;
    }
    let Some(prometheus) = tool(
        "a_real_prometheus_scrapes_an_agent_and_the_vo",
        "prometheus",
    ) else {
        return;
    };
    // The connections agent on lo counts every socket of the host: no flood meanwhile.
    let _loopback = LOOPBACK.share();
    let lo: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
    // An SDN agent in front of the in-process Floodlight stand-in: the VO's (embedded)
    // policy reconciles it, so the reconciliation's series are in the VO's scrapes.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let stub = rt.block_on(FloodlightStub::start());
    let mut nodes = lo_bandwidth_and_connections_nodes();
    nodes.push(
        N::child("fl", "agent_controller_floodlight", "HO_VM")
            .extra(format!("[node.params]\nurl = \"{}\"\n", stub.url())),
    );
    // With spools, so that their series are in both scrapes (the agents', and HO_VM's in
    // the VO's process).
    let tree = Tree::new(
        "prom",
        "heartbeat_ms = 300\nsample_interval_ms = 100\nspool_dir = \"spool\"",
        &[("host", lo)],
        &nodes,
    );
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let vo = tree.spawn_with(
        "vo",
        "vespa-orchestrator",
        None,
        &[],
        &["VO", "HO_VM"],
        &["--http", &api.to_string()],
    );
    let agents = tree.spawn_with(
        "agents",
        "vespa-agent",
        None,
        &["--mode", "ebpf", "-i", "lo"],
        &["bw", "conns", "fl"],
        &["--metrics", &metrics.to_string()],
    );

    // Prometheus of its own: loopback, a scratch TSDB, scraping both every second and
    // evaluating the shipped rules.
    let prom = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tree.scratch.dir.join("prometheus");
    std::fs::create_dir_all(dir.join("data")).expect("mkdir");
    let rule_files: String = rules_files()
        .iter()
        .map(|f| format!("  - {}\n", f.display()))
        .collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{rule_files}\
             scrape_configs:\n  - job_name: vespa-agent\n    static_configs:\n      - targets: ['{metrics}']\n\
             \x20 - job_name: vespa-vo\n    static_configs:\n      - targets: ['{api}']\n"
        ),
    )
    .expect("config");
    let log = dir.join("prometheus.log");
    let config_arg = format!("--config.file={}", config.display());
    let data_arg = format!("--storage.tsdb.path={}", dir.join("data").display());
    let listen_arg = format!("--web.listen-address={prom}");
    let mut server = daemons::Proc::spawn(
        "prometheus",
        &[
            prometheus.to_str().expect("utf-8"),
            &config_arg,
            &data_arg,
            &listen_arg,
        ],
        &log,
        &[],
    )
    .expect("start prometheus");

    // Both targets up, as Prometheus sees them.
    let up = wait_until(
        &format!(
            "up == 1 for both targets (log: {}, agents: {}, vo: {})",
            log.display(),
            agents.log.display(),
            vo.log.display()
        ),
        WAIT,
        || {
            server.alive()?;
            let r = query(prom, "up == 1")?;
            let jobs: BTreeSet<String> = r
                .iter()
                .filter_map(|s| s["metric"]["job"].as_str().map(str::to_string))
                .collect();
            if jobs.len() == 2 {
                Ok(r)
            } else {
                Err(format!("up: {r:?}"))
            }
        },
    );
    assert_eq!(up.len(), 2, "{up:?}");

    // A VESPA series of each, answered by Prometheus.
    let rx = wait_result(
        prom,
        "vespa_network_receive_bytes_total{job=\"vespa-agent\",device=\"lo\"}",
        &log,
    );
    assert_eq!(rx[0]["metric"]["instance"], metrics.to_string(), "{rx:?}");
    let fw = wait_result(prom, "vespa_firewall_blocks{job=\"vespa-agent\"}", &log);
    assert_eq!(fw.len(), 1, "{fw:?}");
    let loop_ = wait_result(
        prom,
        "vespa_closed_loop_seconds_bucket{job=\"vespa-vo\",stage=\"kernel_to_vo\",le=\"+Inf\"}",
        &log,
    );
    assert_eq!(loop_[0]["metric"]["instance"], api.to_string(), "{loop_:?}");
    let children = wait_result(
        prom,
        "vespa_node_children{job=\"vespa-vo\",node=\"VO\"} == 1",
        &log,
    );
    assert_eq!(children.len(), 1, "{children:?}");
    wait_result(
        prom,
        "vespa_policy_alerts_total{job=\"vespa-vo\",kind=\"did_not_take\"}",
        &log,
    );
    // Each process's spools: the agents' and HO_VM's, run by the VO's process.
    wait_result(
        prom,
        "vespa_spool_written_total{job=\"vespa-agent\",node=\"bw\"}",
        &log,
    );
    wait_result(
        prom,
        "vespa_spool_alerts{job=\"vespa-vo\",node=\"HO_VM\"}",
        &log,
    );
    // The VO's reconciliation of the SDN agent.
    wait_result(
        prom,
        "vespa_decisions_drift_total{job=\"vespa-vo\",node=\"VO\",actuator=\"fl\",kind=\"missing\"}",
        &log,
    );
    // The shipped rules run: a recording rule over the agent's counters answers, and no
    // alert fires on a healthy tree (the closed loop's p99 is NaN or below target).
    wait_result(
        prom,
        "vespa:network_receive_bytes:rate1m{device=\"lo\"}",
        &log,
    );
    wait_result(prom, "vespa:tcp_connections_established:sum", &log);
    let (_, rules) = http_get(&prom.to_string(), "/api/v1/rules").expect("rules");
    let rules: Json = serde_json::from_str(&rules).expect("rules JSON");
    let groups: Vec<&str> = rules["data"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(groups, ["vespa-alerts", "vespa-recording"], "{rules}");
    let firing = query(prom, "ALERTS{alertstate=\"firing\"}").expect("ALERTS");
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy tree: {firing:?}"
    );

    // Every metric name the rules and the dashboard use is in the live scrapes, so a
    // renamed metric fails here.
    let scrape = |addr: SocketAddr| {
        let (status, body) = http_get(&addr.to_string(), "/metrics").expect("scrape");
        assert_eq!(status, 200, "{addr}: {body}");
        body
    };
    let mut live = exported_names(&scrape(metrics));
    live.extend(exported_names(&scrape(api)));
    let (_, exprs) = dashboard();
    let mut used: Vec<(String, String)> = Vec::new();
    for f in rules_files() {
        let text = std::fs::read_to_string(&f).expect("rules");
        let file = f.file_name().expect("name").to_string_lossy().into_owned();
        used.extend(metric_names(&text).into_iter().map(|n| (file.clone(), n)));
    }
    for e in &exprs {
        used.extend(
            metric_names(e)
                .into_iter()
                .map(|n| ("vespa.json".to_string(), n)),
        );
    }
    assert!(used.len() > 30, "{used:?}");
    let missing: Vec<_> = used.iter().filter(|(_, n)| !live.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\nexported: {live:?}"
    );

    // Every panel's query is PromQL Prometheus accepts (the dashboard's variables at their
    // "All" values).
    for e in &exprs {
        let q = e
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$vm", ".*");
        if let Err(why) = query(prom, &q) {
            panic!("the dashboard's query {e:?} is refused: {why}");
        }
    }
    server.stop();
}
