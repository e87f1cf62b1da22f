//! Three hosts (network namespaces: agent host, HO host, VO host) joined by veth links. Each
//! link is cut (`ip link set down`) while the agent streams alerts, until the node below it
//! has noticed (its master's heartbeats stopped), then restored: every alert reaches the VO,
//! none twice.

use std::net::IpAddr;
use std::sync::Arc;

use crate::kit::*;
use nix::sys::signal::Signal;
use vespa_testkit::{at_least, wait_until};
use vespa_tests::net::{veth, Netns};

#[test]
fn cut_links_for_seconds_lose_and_duplicate_no_alert() {
    if !vespa_tests::privileged("cut_links_for_seconds_lose_and_duplicate_no_alert") {
        return;
    }
    let agent_ns = Netns::new("vtA");
    let ho_ns = Netns::new("vtH");
    let vo_ns = Netns::new("vtV");
    let (a_side, h_side_a) = veth(&agent_ns, &ho_ns);
    let (h_side_v, v_side) = veth(&ho_ns, &vo_ns);

    let machines: [(&str, IpAddr); 3] = [
        ("agenthost", a_side.v4.into()),
        ("hohost", h_side_a.v4.into()),
        ("vohost", v_side.v4.into()),
    ];
    let nodes = [
        N::new("VO", "vo", None, 4150).on("vohost"),
        N::new("HO_VM", "ho_vm", Some("VO"), 4151).on("hohost"),
        N::new("bw", "agent_bandwidth", Some("HO_VM"), 4152)
            .on("agenthost")
            .extra("interfaces = [\"lo\"]\n"),
    ];
    // Heartbeats every 300 ms: a cut link is noticed after 0.9 s.
    let settings = "heartbeat_ms = 300\nhandshake_timeout_ms = 1000\nsample_interval_ms = 5\nkeep_alerts = 1000000\nbackoff_min_ms = 20\nbackoff_max_ms = 300";
    let tree = Arc::new(Tree::new("netns", settings, &machines, &nodes));

    let mut vo = tree.spawn("vo", "vespa-orchestrator", Some(&vo_ns.name), &[], &["VO"]);
    let mut ho = tree.spawn(
        "ho",
        "vespa-orchestrator",
        Some(&ho_ns.name),
        &[],
        &["HO_VM"],
    );
    let mut agent = tree.spawn(
        "agent",
        "vespa-agent",
        Some(&agent_ns.name),
        &["--mode", "proc"],
        &["bw"],
    );

    // The VO is only reachable inside its namespace: calls run on a thread there.
    let vo_call = |verb: &str, args: &[&str]| -> Result<String, String> {
        let (t, verb) = (tree.clone(), verb.to_string());
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        vo_ns.run(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            t.call("VO", &verb, &a)
        })
    };
    let vo_stats = || {
        vo_call("stats", &[])
            .ok()
            .and_then(|s| serde_json::from_str::<vespa_node::Stats>(&s).ok())
    };
    let count = || {
        vo_stats()
            .and_then(|s| s.origins.get("bw").map(|o| o.count))
            .unwrap_or(0)
    };

    wait_until("200 alerts at the VO before the first cut", WAIT, || {
        at_least(count(), 200)
    });
    for (label, ns, ifname, below) in [
        ("agent-HO", &ho_ns, &h_side_a.ifname, &agent),
        ("HO-VO", &ho_ns, &h_side_v.ifname, &ho),
    ] {
        let lost = uplinks_lost(below);
        ns.ip(&["link", "set", ifname, "down"]);
        wait_until(
            &format!("{} to notice the {label} cut", below.label),
            WAIT,
            || at_least(uplinks_lost(below), lost + 1),
        );
        ns.ip(&["link", "set", ifname, "up"]);
        let before = count();
        wait_until(
            &format!("alerts to flow again after the {label} cut"),
            WAIT,
            || at_least(count(), before + 200),
        );
    }

    agent.signal(Signal::SIGTERM);
    assert!(
        agent.wait_exit().success(),
        "agent log:\n{}",
        agent.log_text()
    );
    let (first, last) = final_seqs(&agent, "bw");
    wait_until("the VO to hold the agent's last alert", WAIT, || {
        vo_stats().filter(|s| s.origins.get("bw").is_some_and(|o| o.highest == last))
    });
    let alerts = vo_alerts(&tree, &vo_call);
    assert_exactly_once(
        &seqs_of(&alerts, "bw"),
        first,
        last,
        "alerts at the VO across two cut links",
    );

    // Both cuts were noticed (and logged once per failed link) rather than ridden out.
    let failures = |p: &Proc| -> usize {
        let lines: Vec<serde_json::Value> = p
            .log_lines()
            .into_iter()
            .filter(|l| l["fields"]["message"] == "uplink to master failed")
            .collect();
        for l in &lines {
            eprintln!(
                "{}: peer={} reason={}",
                p.label, l["fields"]["peer"], l["fields"]["reason"]
            );
        }
        lines.len()
    };
    let (agent_failures, ho_failures) = (failures(&agent), failures(&ho));
    assert!(
        agent_failures >= 1,
        "the agent noticed its cut link:\n{}",
        agent.log_text()
    );
    assert!(
        ho_failures >= 1,
        "the HO noticed its cut uplink:\n{}",
        ho.log_text()
    );

    for p in [&mut ho, &mut vo] {
        p.signal(Signal::SIGTERM);
        let st = p.wait_exit();
        assert!(st.success(), "{} exit {st}", p.label);
    }
}
