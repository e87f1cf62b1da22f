//! The real binaries on loopback, one process per node: agent -> HO_VM -> VO.
//! Alerts arrive in order with their full path; calls, help, list_slaves and find_node work
//! across the tree; destroy stops every process with exit status 0.

use std::net::IpAddr;
use std::process::Command;

use crate::kit::*;
use vespa_testkit::wait_until;

fn loopback_tree(tag: &str) -> Tree {
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let nodes = lo_bandwidth_nodes();
    Tree::new(
        tag,
        "heartbeat_ms = 300\nsample_interval_ms = 20\nkeep_alerts = 100000",
        &[("host", lo)],
        &nodes,
    )
}

#[test]
fn alerts_calls_and_destroy_across_three_processes() {
    let tree = loopback_tree("loop");
    let mut vo = tree.spawn("vo", "vespa-orchestrator", None, &[], &["VO"]);
    let mut ho = tree.spawn("ho", "vespa-orchestrator", None, &[], &["HO_VM"]);
    // The sensors' default mode: eBPF on lo where it can load (root), /proc otherwise.
    let mut agent = tree.spawn(
        "agent",
        "vespa-agent",
        None,
        &["--mode", "auto", "-i", "lo"],
        &["bw"],
    );

    // Alerts: at least 50 samples from bw, in order, each with the full path.
    let alerts = wait_until("50 alerts from bw at the VO", WAIT, || {
        let a = try_vo_alerts(&tree, &|v, a| tree.call("VO", v, a))?;
        (seqs_of(&a, "bw").len() >= 50).then_some(a)
    });
    let bw: Vec<&serde_json::Value> = alerts.iter().filter(|a| a["origin"] == "bw").collect();
    for a in &bw {
        assert_eq!(a["path"], serde_json::json!(["bw", "HO_VM", "VO"]), "{a}");
        assert_eq!(a["body"]["Bandwidth"]["iface"], "lo", "{a}");
    }
    let seqs = seqs_of(&alerts, "bw");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "bw's alerts arrive in order, none missing or repeated: {seqs:?}"
    );

    // Calls routed down from the VO.
    let rx: u64 = tree
        .call("bw", "recv_bytes", &["lo"])
        .expect("recv_bytes")
        .parse()
        .expect("a number");
    assert!(rx > 0, "loopback carried our own traffic");
    assert!(tree
        .call("bw", "trans_bytes", &["lo"])
        .expect("trans_bytes")
        .parse::<u64>()
        .is_ok());
    assert_eq!(
        tree.call("bw", "get_mac", &["lo"]),
        Ok("00:00:00:00:00:00".into())
    );
    let conns: serde_json::Value =
        serde_json::from_str(&tree.call("bw", "connections", &[]).expect("connections"))
            .expect("json");
    assert!(
        conns
            .as_array()
            .is_some_and(|c| c.iter().any(|r| r["addr"] == "127.0.0.1")),
        "our own loopback connections are seen: {conns}"
    );
    assert!(tree
        .call("bw", "connections_of", &["127.0.0.1"])
        .expect("connections_of")
        .contains("\"established\""));
    assert!(tree
        .call("bw", "recv_bytes", &["nosuchif0"])
        .expect_err("unknown iface")
        .contains("unknown interface"));
    assert!(tree
        .call("bw", "format_disk", &[])
        .expect_err("not a verb")
        .contains("has no verb"));
    let help = tree.call("bw", "help", &[]).expect("help");
    for verb in [
        "recv_bytes",
        "trans_bytes",
        "get_mac",
        "connections",
        "connections_of",
        "interfaces",
        "list_slaves",
        "find_node",
    ] {
        assert!(help.contains(verb), "help lists {verb}: {help}");
    }
    let slaves: serde_json::Value =
        serde_json::from_str(&tree.call("HO_VM", "list_slaves", &[]).expect("list_slaves"))
            .expect("json");
    assert_eq!(slaves[0]["name"], "bw");
    assert_eq!(slaves[0]["kind"], "Agent");
    let vo_slaves = tree.call("VO", "list_slaves", &[]).expect("VO list_slaves");
    assert!(vo_slaves.contains("\"HO_VM\""), "{vo_slaves}");
    assert_eq!(
        tree.call("VO", "find_node", &["bw"]),
        Ok("[\"VO\",\"HO_VM\",\"bw\"]".into())
    );
    assert_eq!(
        tree.call_via("HO_VM", "HO_VM", "find_node", &["bw"]),
        Ok("[\"HO_VM\",\"bw\"]".into())
    );
    assert!(tree
        .call("VO", "find_node", &["ghost"])
        .expect_err("absent")
        .contains("no node named \"ghost\""));

    // The CLI's call command does the same from the shell.
    let out = Command::new(vespa_tests::workspace_bin("vespa-orchestrator"))
        .args(["call", "--config"])
        .arg(&tree.config)
        .args(["bw", "get_mac", "lo"])
        .output()
        .expect("call");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "00:00:00:00:00:00"
    );
    let out = Command::new(vespa_tests::workspace_bin("vespa-orchestrator"))
        .args(["call", "--config"])
        .arg(&tree.config)
        .args(["bw", "nope"])
        .output()
        .expect("call");
    assert_eq!(out.status.code(), Some(2), "a verb error exits 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no verb \"nope\""));

    // Destroy from the top: every process flushes and exits 0.
    assert_eq!(
        tree.call("VO", "destroy", &[]),
        Ok("destroying VO and its subtree".into())
    );
    for p in [&mut agent, &mut ho, &mut vo] {
        let st = p.wait_exit();
        assert!(
            st.success(),
            "{} exited with {st}; log:\n{}",
            p.label,
            p.log_text()
        );
    }
    let (first, last) = final_seqs(&agent, "bw");
    assert!(last >= first);
    assert!(
        agent
            .log_event("destroy received from master", "bw")
            .is_some(),
        "{}",
        agent.log_text()
    );
    assert!(ho.log_event("node stopped", "HO_VM").is_some());
}
