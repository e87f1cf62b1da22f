//! The fast path with the real binaries: a rule placed `at = "HO_PH"` runs in HO_PH's own
//! policy driver. The eBPF connections agent and a Floodlight SDN agent (in front of the
//! in-process Floodlight stand-in) both sit under HO_PH; a connection flood from a fresh
//! loopback address crosses the threshold, and HO_PH blocks it through the SDN agent without
//! the VO: one block request, logged by HO_PH, none by the VO. The crossing still climbs to the
//! VO unchanged, followed by HO_PH's `fast path at HO_PH: ...` alert; calm releases the block
//! the same way. When the controller refuses the block, HO_PH's policy alert reaches the VO as
//! a typed alert and the VO counts it in `vespa_policy_alerts_total{kind}`. A rule whose
//! actuator is outside its HO's layer is refused at start-up.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;

use crate::kit::*;
use vespa_testkit::wait_until;
use vespa_tests::daemons::floodlight_stub::{Fault, FloodlightStub};
use vespa_tests::daemons::http_request;
use vespa_tests::shared::LOOPBACK;
use vespa_tests::workspace_bin;

/// The agent reports a remote with more than 20 established connections at once.
const THRESHOLD: usize = 20;

fn policy(at: &str) -> String {
    policy_timed(at, 2, 1)
}

/// The fast-path rule with its calm and cool-down periods in seconds.
fn policy_timed(at: &str, calm_s: u64, cooldown_s: u64) -> String {
    format!(
        r#"
[actuators]
sdn = "fl"
libvirt = "lv"
quarantine = "quarantine"
av = "av"
hypervisor = "hy"

[[rule]]
name = "conn-flood"
at = "{at}"
metric = "established"
key = "remote"
aggregate = "max"
window_s = 1
above = {above}
below = 5
calm_s = {calm_s}
cooldown_s = {cooldown_s}
verify_s = 0
ladder = [{{ action = "block", ttl_s = 600 }}]
"#,
        above = THRESHOLD - 1
    )
}

/// VO, HO_VM and HO_PH; the Floodlight agent under HO_PH, the connections agent under
/// `conns_under`.
fn tree(stub_url: &str, conns_under: &'static str) -> Tree {
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let nodes = [
        N::root("VO", "vo"),
        N::child("HO_VM", "ho_vm", "VO"),
        N::child("HO_PH", "ho_ph", "VO"),
        N::child("conns", "agent_connections", conns_under),
        N::child("fl", "agent_controller_floodlight", "HO_PH")
            .extra(format!("[node.params]\nurl = \"{stub_url}\"\n")),
    ];
    let settings =
        "heartbeat_ms = 300\nsample_interval_ms = 200\nbackoff_min_ms = 20\nbackoff_max_ms = 300";
    Tree::new("fastpath", settings, &[("host", lo)], &nodes)
}

/// Loopback addresses of this test run and test `k` only (the connection tracker sees the
/// whole host, so each test's agent sees the others' floods too).
fn addresses(k: u8) -> (IpAddr, SocketAddr) {
    let octet = 100 + (std::process::id() % 100) as u8;
    (
        IpAddr::V4(Ipv4Addr::new(127, octet, 9 + k, 1)),
        SocketAddr::from((Ipv4Addr::new(127, octet, 9 + k, 2), 0)),
    )
}

/// The ids of the Floodlight blocks pushed for `ip` (`vespa-<id>-<switch>-<dir>` entries).
fn blocks_of(stub: &FloodlightStub, ip: &str) -> Vec<String> {
    let mut ids: Vec<String> = stub
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "POST"
                && r.body
                    .as_ref()
                    .is_some_and(|b| b["ipv4_src"] == ip || b["ipv4_dst"] == ip)
        })
        .filter_map(|r| {
            r.body?["name"]
                .as_str()?
                .split('-')
                .nth(1)
                .map(str::to_string)
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// When the first block request for `ip` reached the stand-in (Unix ns).
fn block_received_ns(stub: &FloodlightStub, ip: &str) -> u64 {
    stub.requests_timed()
        .into_iter()
        .find(|(_, r)| {
            r.method == "POST"
                && r.body
                    .as_ref()
                    .is_some_and(|b| b["ipv4_src"] == ip || b["ipv4_dst"] == ip)
        })
        .map(|(t, _)| t)
        .unwrap_or_else(|| panic!("no block request for {ip} at the stand-in"))
}

/// Whether `alert` is a connections sample counting at least the threshold from `ip`.
fn reports_flood(alert: &serde_json::Value, ip: &str) -> bool {
    alert["body"]["Connections"]["per_remote"]
        .as_array()
        .is_some_and(|l| {
            l.iter()
                .any(|e| e[0] == ip && e[1].as_u64().is_some_and(|n| n >= THRESHOLD as u64))
        })
}

#[test]
fn a_rule_placed_at_ho_ph_blocks_from_there_and_the_vo_is_told() {
    let test = "a_rule_placed_at_ho_ph_blocks_from_there_and_the_vo_is_told";
    if !vespa_tests::privileged(test) {
        return;
    }
    // Its connections agent on lo counts every socket of the host: no flood meanwhile.
    let _loopback = LOOPBACK.share();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let stub = rt.block_on(FloodlightStub::start());
    let tree = tree(&stub.url(), "HO_PH");
    let policy_file = tree.scratch.dir.join("policy.toml");
    std::fs::write(&policy_file, policy("HO_PH")).expect("policy file");
    let p = policy_file.to_string_lossy().into_owned();
    let orch = tree.spawn_with(
        "orch",
        "vespa-orchestrator",
        None,
        &[],
        &["VO", "HO_VM", "HO_PH"],
        &["--policy", &p],
    );
    let thr = THRESHOLD.to_string();
    let agents = tree.spawn(
        "agents",
        "vespa-agent",
        None,
        &["--mode", "ebpf", "-i", "lo", "--conn-threshold", &thr],
        &["conns", "fl"],
    );
    let logs = || {
        format!(
            "orchestrator:\n{}\nagents:\n{}",
            orch.log_text(),
            agents.log_text()
        )
    };
    wait_until("both agents under HO_PH", WAIT, || {
        ["conns", "fl"]
            .iter()
            .all(|a| tree.call(a, "help", &[]).is_ok())
    });
    let loaded = orch
        .log_lines()
        .into_iter()
        .filter(|l| l["fields"]["message"] == "policy loaded")
        .map(|l| l["fields"].clone())
        .collect::<Vec<_>>();
    let rules_at = |node: &str| {
        loaded
            .iter()
            .find(|f| f["node"] == node)
            .map(|f| f["rules"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(
        rules_at("HO_PH").as_deref(),
        Some("[\"conn-flood\"]"),
        "{loaded:?}"
    );
    assert_eq!(
        rules_at("VO").as_deref(),
        Some("[]"),
        "the VO keeps no fast-path rule: {loaded:?}"
    );

    // The flood: 40 connections from a fresh source to a local server, held open.
    let (attacker, server_addr) = addresses(0);
    let server = TcpListener::bind(server_addr).expect("server");
    let to = server.local_addr().expect("server address");
    let accept =
        std::thread::spawn(move || vespa_tests::traffic::tcp_accept_n(&server, 2 * THRESHOLD));
    let held = vespa_tests::traffic::tcp_connect_from(attacker, to, 2 * THRESHOLD, |_| {});
    let accepted = accept.join().expect("accept thread");
    let target = attacker.to_string();

    let first = wait_until(
        "the block of the attacker at the Floodlight stand-in",
        WAIT,
        || blocks_of(&stub, &target).first().cloned(),
    );
    // Samples keep reporting 40 connections meanwhile: no second block, though the rule's
    // cool-down (1 s) is over by the time HO_PH has passed on a sample taken 1.5 s after the
    // block reached the stand-in.
    let after_ns = block_received_ns(&stub, &target) + 1_500_000_000;
    wait_until(
        "a sample still reporting the flood, taken 1.5 s after the block, at the VO",
        WAIT,
        || {
            try_vo_alerts(&tree, &|v, a| tree.call("VO", v, a))?
                .into_iter()
                .find(|a| {
                    a["origin"] == "conns"
                        && a["timestamp_ns"].as_u64().is_some_and(|t| t >= after_ns)
                        && reports_flood(a, &target)
                })
        },
    );
    assert_eq!(
        blocks_of(&stub, &target),
        [first],
        "exactly one block request\n{}",
        logs()
    );
    let sent: Vec<serde_json::Value> = orch
        .log_lines()
        .into_iter()
        .filter(|l| l["fields"]["message"] == "policy block sent")
        .map(|l| l["fields"].clone())
        .collect();
    let ours: Vec<&serde_json::Value> = sent
        .iter()
        .filter(|f| f["target"] == target.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "{sent:?}");
    assert_eq!(
        (&ours[0]["node"], &ours[0]["via"]),
        (&serde_json::json!("HO_PH"), &serde_json::json!("fl")),
        "sent by HO_PH's driver"
    );
    assert!(
        sent.iter().all(|f| f["node"] == "HO_PH"),
        "the VO's driver sends nothing: {sent:?}"
    );

    // At the VO: the crossing, unchanged, through HO_PH; then HO_PH's fast-path alert.
    let note = format!("fast path at HO_PH: block_hackers {target} 600 on fl (rule conn-flood)");
    let alerts = wait_until("the fast-path alert at the VO", WAIT, || {
        let all = try_vo_alerts(&tree, &|v, a| tree.call("VO", v, a))?;
        all.iter()
            .any(|a| a["body"]["Text"] == note.as_str())
            .then_some(all)
    });
    let crossing = alerts
        .iter()
        .find(|a| a["body"]["ConnThreshold"]["addr"] == target.as_str())
        .unwrap_or_else(|| panic!("the ConnThreshold alert reached the VO: {alerts:?}"));
    assert_eq!(
        crossing["path"],
        serde_json::json!(["conns", "HO_PH", "VO"]),
        "{crossing}"
    );
    let told = alerts
        .iter()
        .find(|a| a["body"]["Text"] == note.as_str())
        .expect("found above");
    assert_eq!(
        (&told["origin"], &told["path"]),
        (
            &serde_json::json!("HO_PH"),
            &serde_json::json!(["HO_PH", "VO"])
        )
    );

    // Calm: the connections close; after calm_s HO_PH releases the block the same way.
    drop(held);
    drop(accepted);
    wait_until(
        "the attacker's flows removed from the stand-in",
        WAIT,
        || {
            let gone = !stub
                .flows()
                .values()
                .any(|f| f["ipv4_src"] == target.as_str() || f["ipv4_dst"] == target.as_str());
            let deleted = stub.requests().iter().any(|r| r.method == "DELETE");
            gone && deleted
        },
    );
    let released = format!("fast path at HO_PH: release_hackers {target} on fl (rule conn-flood)");
    wait_until("the release's fast-path alert at the VO", WAIT, || {
        try_vo_alerts(&tree, &|v, a| tree.call("VO", v, a))?
            .iter()
            .any(|a| a["body"]["Text"] == released.as_str())
            .then_some(())
    });
    let done = orch.log_lines().into_iter().any(|l| {
        let f = &l["fields"];
        f["message"] == "policy action done"
            && f["verb"] == "release_hackers"
            && f["node"] == "HO_PH"
    });
    assert!(done, "HO_PH's driver released through fl\n{}", logs());

    assert_eq!(
        tree.call("VO", "destroy", &[]),
        Ok("destroying VO and its subtree".into())
    );
    for mut p in [agents, orch] {
        let st = p.wait_exit();
        assert!(
            st.success(),
            "{} exited with {st}; log:\n{}",
            p.label,
            p.log_text()
        );
    }
}

/// The controller refuses HO_PH's block: HO_PH's policy raises a did-not-take alert, which
/// climbs to the VO as a typed `Policy` alert naming HO_PH and is counted in the VO's
/// `vespa_policy_alerts_total{kind="did_not_take"}`, though the VO's own driver raised nothing.
#[test]
fn an_hos_policy_alert_is_counted_by_kind_at_the_vo() {
    let test = "an_hos_policy_alert_is_counted_by_kind_at_the_vo";
    if !vespa_tests::privileged(test) {
        return;
    }
    let _loopback = LOOPBACK.share();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let stub = rt.block_on(FloodlightStub::start());
    let tree = tree(&stub.url(), "HO_PH");
    let policy_file = tree.scratch.dir.join("policy.toml");
    std::fs::write(&policy_file, policy_timed("HO_PH", 600, 600)).expect("policy file");
    let api = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let (p, a) = (policy_file.to_string_lossy().into_owned(), api.to_string());
    let orch = tree.spawn_with(
        "orch",
        "vespa-orchestrator",
        None,
        &[],
        &["VO", "HO_VM", "HO_PH"],
        &["--policy", &p, "--http", &a],
    );
    let thr = THRESHOLD.to_string();
    let agents = tree.spawn(
        "agents",
        "vespa-agent",
        None,
        &["--mode", "ebpf", "-i", "lo", "--conn-threshold", &thr],
        &["conns", "fl"],
    );
    wait_until("both agents under HO_PH", WAIT, || {
        ["conns", "fl"]
            .iter()
            .all(|a| tree.call(a, "help", &[]).is_ok())
    });
    let did_not_take = || -> Option<u64> {
        let (status, body) = http_request(api, "GET", "/metrics", None, "")?;
        (status == 200).then_some(())?;
        body.lines()
            .find_map(|l| l.strip_prefix("vespa_policy_alerts_total{kind=\"did_not_take\"} "))
            .and_then(|v| v.trim().parse().ok())
    };
    assert_eq!(did_not_take(), Some(0), "the series exists from the start");
    stub.set_fault(Fault::Status(500));

    let (attacker, server_addr) = addresses(2);
    let server = TcpListener::bind(server_addr).expect("server");
    let to = server.local_addr().expect("server address");
    let accept =
        std::thread::spawn(move || vespa_tests::traffic::tcp_accept_n(&server, 2 * THRESHOLD));
    let held = vespa_tests::traffic::tcp_connect_from(attacker, to, 2 * THRESHOLD, |_| {});
    let accepted = accept.join().expect("accept thread");

    let alerts =
        vespa_testkit::try_wait_until("HO_PH's did-not-take alert at the VO", WAIT, || {
            let all = try_vo_alerts(&tree, &|v, a| tree.call("VO", v, a))?;
            all.into_iter().find(|a| {
                let b = &a["body"]["Policy"];
                b["kind"] == "did_not_take" && b["text"].as_str().is_some_and(|t| t.contains("500"))
            })
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}\norchestrator:\n{}\nagents:\n{}",
                orch.log_text(),
                agents.log_text()
            )
        });
    assert_eq!(
        (
            &alerts["origin"],
            &alerts["body"]["Policy"]["at"],
            &alerts["path"]
        ),
        (
            &serde_json::json!("HO_PH"),
            &serde_json::json!("HO_PH"),
            &serde_json::json!(["HO_PH", "VO"])
        ),
        "{alerts}"
    );
    let counted = wait_until("the VO to count it", WAIT, || {
        did_not_take().filter(|n| *n >= 1)
    });
    assert!(counted >= 1);
    let vo_raised = orch
        .log_lines()
        .into_iter()
        .any(|l| l["fields"]["message"] == "policy alert" && l["fields"]["node"] == "VO");
    assert!(
        !vo_raised,
        "the VO's own driver raised nothing:\n{}",
        orch.log_text()
    );

    vespa_tests::traffic::tcp_close_all(held);
    drop(accepted);
    assert_eq!(
        tree.call("VO", "destroy", &[]),
        Ok("destroying VO and its subtree".into())
    );
    for mut p in [agents, orch] {
        let st = p.wait_exit();
        assert!(
            st.success(),
            "{} exited with {st}; log:\n{}",
            p.label,
            p.log_text()
        );
    }
}

/// HO_PH in a process of its own, the VO in another: the VO's API lists the block HO_PH's
/// fast-path rule holds (asked down the tree) and releases it there, token required.
#[test]
fn an_ho_in_another_process_is_listed_and_released_through_the_vo_api() {
    let test = "an_ho_in_another_process_is_listed_and_released_through_the_vo_api";
    if !vespa_tests::privileged(test) {
        return;
    }
    // Its connections agent on lo counts every socket of the host: no flood meanwhile.
    let _loopback = LOOPBACK.share();
    const TOKEN: &str = "fastpath-remote-token-0123456789";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let stub = rt.block_on(FloodlightStub::start());
    let tree = tree(&stub.url(), "HO_PH");
    // Neither calm nor the cool-down ends within the test: only the API releases.
    let policy_file = tree.scratch.dir.join("policy.toml");
    std::fs::write(&policy_file, policy_timed("HO_PH", 600, 600)).expect("policy file");
    let token = tree.scratch.dir.join("api-token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let api = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let (p, t, a) = (
        policy_file.to_string_lossy().into_owned(),
        token.to_string_lossy().into_owned(),
        api.to_string(),
    );
    let vo = tree.spawn_with(
        "vo",
        "vespa-orchestrator",
        None,
        &[],
        &["VO", "HO_VM"],
        &["--policy", &p, "--http", &a, "--api-token-file", &t],
    );
    let ho = tree.spawn_with(
        "ho_ph",
        "vespa-orchestrator",
        None,
        &[],
        &["HO_PH"],
        &["--policy", &p],
    );
    let thr = THRESHOLD.to_string();
    let agents = tree.spawn(
        "agents",
        "vespa-agent",
        None,
        &["--mode", "ebpf", "-i", "lo", "--conn-threshold", &thr],
        &["conns", "fl"],
    );
    let logs = || {
        format!(
            "vo:\n{}\nho_ph:\n{}\nagents:\n{}",
            vo.log_text(),
            ho.log_text(),
            agents.log_text()
        )
    };
    wait_until("both agents under HO_PH", WAIT, || {
        ["conns", "fl"]
            .iter()
            .all(|a| tree.call(a, "help", &[]).is_ok())
    });
    let actions = || -> Option<serde_json::Value> {
        let (status, body) = http_request(api, "GET", "/api/v1/actions", None, "")?;
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    };
    let (attacker, server_addr) = addresses(1);
    let target = attacker.to_string();
    let holds = |a: &serde_json::Value| {
        a["actions"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["target"] == target.as_str()))
    };
    let before = actions().expect("the VO's API answers");
    assert!(!holds(&before), "nothing held before the flood: {before}");

    let server = TcpListener::bind(server_addr).expect("server");
    let to = server.local_addr().expect("server address");
    let accept =
        std::thread::spawn(move || vespa_tests::traffic::tcp_accept_n(&server, 2 * THRESHOLD));
    let held = vespa_tests::traffic::tcp_connect_from(attacker, to, 2 * THRESHOLD, |_| {});
    let accepted = accept.join().expect("accept thread");
    let id = wait_until(
        "the block of the attacker at the Floodlight stand-in",
        WAIT,
        || blocks_of(&stub, &target).first().cloned(),
    );

    // Listed by the VO's API, held at HO_PH, which another process runs.
    let listed = wait_until("HO_PH's block in the VO's /api/v1/actions", WAIT, || {
        let a = actions()?;
        a["actions"]
            .as_array()?
            .iter()
            .find(|x| x["target"] == target.as_str())
            .cloned()
            .map(|x| (x, a["unreachable"].clone()))
    });
    let (action, unreachable) = listed;
    assert_eq!(
        (
            &action["action"],
            &action["actuator"],
            &action["at"],
            &action["key"]
        ),
        (
            &serde_json::json!("block"),
            &serde_json::json!("fl"),
            &serde_json::json!("HO_PH"),
            &serde_json::json!(target)
        ),
        "{action}"
    );
    assert_eq!(unreachable, serde_json::json!([]));
    // The same from a shell: HO_PH answers its policy verbs.
    let direct = tree
        .call("HO_PH", "policy_actions", &[])
        .expect("policy_actions");
    assert!(
        direct.contains(&format!("\"target\":\"{target}\"")),
        "{direct}"
    );

    vespa_tests::traffic::tcp_close_all(held);
    drop(accepted);
    let body = serde_json::json!({ "target": target }).to_string();
    let (status, _) =
        http_request(api, "POST", "/api/v1/release", None, &body).expect("release without token");
    assert_eq!(status, 401, "a release needs the token");
    assert_eq!(
        blocks_of(&stub, &target),
        std::slice::from_ref(&id),
        "a refused release changes nothing"
    );
    let (status, text) =
        http_request(api, "POST", "/api/v1/release", Some(TOKEN), &body).expect("release");
    assert_eq!(status, 200, "{text}\n{}", logs());
    assert!(
        text.contains(&format!("fl release_hackers {target}")),
        "HO_PH's driver released it: {text}"
    );
    wait_until(
        "the attacker's flows removed from the stand-in",
        WAIT,
        || {
            let gone = !stub
                .flows()
                .values()
                .any(|f| f["ipv4_src"] == target.as_str() || f["ipv4_dst"] == target.as_str());
            let deleted = stub.requests().iter().any(|r| {
                r.method == "DELETE"
                    && r.body
                        .as_ref()
                        .and_then(|b| b["name"].as_str())
                        .is_some_and(|n| n.starts_with(&format!("vespa-{id}-")))
            });
            gone && deleted
        },
    );
    let after = actions().expect("actions");
    assert!(!holds(&after), "released: {after}");
    let (status, text) =
        http_request(api, "POST", "/api/v1/release", Some(TOKEN), &body).expect("second release");
    assert_eq!(status, 404, "nothing left to release: {text}");
    assert_eq!(
        blocks_of(&stub, &target),
        [id],
        "exactly one block request\n{}",
        logs()
    );

    assert_eq!(
        tree.call("VO", "destroy", &[]),
        Ok("destroying VO and its subtree".into())
    );
    for mut p in [agents, ho, vo] {
        let st = p.wait_exit();
        assert!(
            st.success(),
            "{} exited with {st}; log:\n{}",
            p.label,
            p.log_text()
        );
    }
}

/// A rule placed at an HO whose layer does not hold its actuator is refused before anything
/// starts, by `--check-config` and by `run`, naming the file and the rule.
#[test]
fn a_fast_path_rule_acting_outside_its_layer_is_refused() {
    let refused = |tree: &Tree, want: &str| {
        let policy_file = tree.scratch.dir.join("policy.toml");
        std::fs::write(&policy_file, policy("HO_VM")).expect("policy file");
        let (config, p) = (
            tree.config.to_string_lossy().into_owned(),
            policy_file.to_string_lossy().into_owned(),
        );
        let want = format!("{p}: rule \"conn-flood\": at = \"HO_VM\" but {want}");
        for extra in [&["--check-config"][..], &["--http", "off"][..]] {
            let out = Command::new(workspace_bin("vespa-orchestrator"))
                .args(["run", "-c", &config, "--policy", &p])
                .args(extra)
                .output()
                .expect("run");
            let text = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{extra:?}: {text}");
            assert!(
                text.contains(&want),
                "{extra:?}:\n{text}\nshould contain\n{want}"
            );
        }
    };
    // The sensor is in HO_VM's layer, the SDN agent in HO_PH's.
    refused(
        &tree("http://127.0.0.1:9", "HO_VM"),
        "its sdn actuator fl is under HO_PH: the action must stay within HO_VM's layer",
    );
    // Nothing under HO_VM would ever report the rule's counter.
    refused(
        &tree("http://127.0.0.1:9", "HO_PH"),
        "no agent_connections is under HO_VM",
    );
    // Placed where both are, the same file passes the check.
    let ok = tree("http://127.0.0.1:9", "HO_PH");
    let policy_file = ok.scratch.dir.join("policy.toml");
    std::fs::write(&policy_file, policy("HO_PH")).expect("policy file");
    let out = Command::new(workspace_bin("vespa-orchestrator"))
        .args([
            "run",
            "--check-config",
            "-c",
            &ok.config.to_string_lossy(),
            "--policy",
            &policy_file.to_string_lossy(),
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("rules per node: VO: 0, HO_PH: 1"), "{shown}");
}

/// HO_PH in a process of its own reconciles what its fast-path rule placed and counts it on
/// its own `--metrics` endpoint: the block removed at the agent behind its back is put back
/// by HO_PH's driver and counted as missing there.
#[test]
fn an_hos_reconciliation_is_counted_on_its_own_metrics_endpoint() {
    let test = "an_hos_reconciliation_is_counted_on_its_own_metrics_endpoint";
    if !vespa_tests::privileged(test) {
        return;
    }
    let _loopback = LOOPBACK.share();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let stub = rt.block_on(FloodlightStub::start());
    let tree = tree(&stub.url(), "HO_PH");
    let policy_file = tree.scratch.dir.join("policy.toml");
    std::fs::write(
        &policy_file,
        format!(
            "{}\n[reconcile]\nevery_s = 1\n",
            policy_timed("HO_PH", 600, 600)
        ),
    )
    .expect("policy file");
    let p = policy_file.to_string_lossy().into_owned();
    let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let vo = tree.spawn_with(
        "vo",
        "vespa-orchestrator",
        None,
        &[],
        &["VO", "HO_VM"],
        &["--policy", &p],
    );
    let ho = tree.spawn_with(
        "ho_ph",
        "vespa-orchestrator",
        None,
        &[],
        &["HO_PH"],
        &["--policy", &p, "--metrics", &metrics.to_string()],
    );
    let thr = THRESHOLD.to_string();
    let agents = tree.spawn(
        "agents",
        "vespa-agent",
        None,
        &["--mode", "ebpf", "-i", "lo", "--conn-threshold", &thr],
        &["conns", "fl"],
    );
    let logs = || {
        format!(
            "vo:\n{}\nho_ph:\n{}\nagents:\n{}",
            vo.log_text(),
            ho.log_text(),
            agents.log_text()
        )
    };
    let sample = |series: &str| -> Option<f64> {
        let (status, body) = http_request(metrics, "GET", "/metrics", None, "")?;
        (status == 200).then_some(())?;
        body.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    };
    wait_until("both agents under HO_PH", WAIT, || {
        ["conns", "fl"]
            .iter()
            .all(|a| tree.call(a, "help", &[]).is_ok())
    });
    // The HO's own node counters are served there too, labelled with its name.
    wait_until("HO_PH's two children on its metrics endpoint", WAIT, || {
        (sample("vespa_node_children{node=\"HO_PH\"}")? == 2.0).then_some(())
    });

    let (attacker, server_addr) = addresses(3);
    let target = attacker.to_string();
    let server = TcpListener::bind(server_addr).expect("server");
    let to = server.local_addr().expect("server address");
    let accept =
        std::thread::spawn(move || vespa_tests::traffic::tcp_accept_n(&server, 2 * THRESHOLD));
    let held = vespa_tests::traffic::tcp_connect_from(attacker, to, 2 * THRESHOLD, |_| {});
    let accepted = accept.join().expect("accept thread");
    wait_until("HO_PH's block at the Floodlight stand-in", WAIT, || {
        blocks_of(&stub, &target).first().cloned()
    });
    let missing = "vespa_decisions_drift_total{node=\"HO_PH\",actuator=\"fl\",kind=\"missing\"}";
    wait_until(
        "a first pass of HO_PH over fl on its metrics endpoint",
        WAIT,
        || {
            (sample(missing)? == 0.0
                && sample("vespa_reconcile_pass_seconds_count{node=\"HO_PH\",actuator=\"fl\"}")?
                    >= 1.0)
                .then_some(())
        },
    );

    // Behind HO_PH's back: the agent told directly to drop the block (its book and the
    // controller's entries, which are what a pass reads).
    tree.call("fl", "release_hackers", &[&target])
        .unwrap_or_else(|e| panic!("release_hackers on fl: {e}\n{}", logs()));
    assert!(
        !stub
            .flows()
            .values()
            .any(|f| f["ipv4_src"] == target.as_str() || f["ipv4_dst"] == target.as_str()),
        "removed at the controller"
    );
    // Re-applied by HO_PH (under a new entry id: the block is placed again).
    vespa_testkit::try_wait_until("the block's entries back at the stand-in", WAIT, || {
        stub.flows()
            .values()
            .any(|f| f["ipv4_src"] == target.as_str() || f["ipv4_dst"] == target.as_str())
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let counted = vespa_testkit::try_wait_until("the missing block counted by HO_PH", WAIT, || {
        sample(missing).filter(|n| *n >= 1.0)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    assert!(counted >= 1.0);

    vespa_tests::traffic::tcp_close_all(held);
    drop(accepted);
    assert_eq!(
        tree.call("VO", "destroy", &[]),
        Ok("destroying VO and its subtree".into())
    );
    for mut p in [agents, ho, vo] {
        let st = p.wait_exit();
        assert!(
            st.success(),
            "{} exited with {st}; log:\n{}",
            p.label,
            p.log_text()
        );
    }
}
