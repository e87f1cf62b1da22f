//! One topology, every machine: three network namespaces, each a machine with its own host
//! name (a UTS namespace of its own) and addresses, and one topology file for all three.
//! Every process starts without `--machine` or `--node` and runs the nodes of the machine it
//! is on; the tree forms across them. `--check-config` says which machine each host is and
//! why; a host that is none of them is refused with the host name and addresses it tried.
//! Along the way, the 2014 habits that need a real tree: the VO hears each node register,
//! register again and get lost (silent, or dead), by name, and `get_mac` without an
//! interface answers for the agent's first monitored interface.

use std::net::IpAddr;
use std::process::Output;
use std::sync::Arc;

use crate::kit::*;
use nix::sys::signal::Signal;
use vespa_testkit::wait_until;
use vespa_tests::net::{veth, Netns};

/// `program run --check-config` on the tree's topology, on `netns` named `hostname`.
fn check_config(tree: &Tree, netns: &str, hostname: &str, program: &str) -> Output {
    host_command(netns, hostname, program)
        .expect("binary")
        .args(["run", "--check-config", "--config"])
        .arg(&tree.config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run")
}

use crate::kit::output_text as text;

/// The node events the VO processed: (raised at, node, event, detail), in order.
fn node_events(alerts: &[serde_json::Value]) -> Vec<(String, String, String, String)> {
    alerts
        .iter()
        .filter_map(|a| {
            let n = a["body"].get("Node")?;
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            Some((
                s(&a["origin"]),
                s(&n["node"]),
                s(&n["event"]),
                s(&n["detail"]),
            ))
        })
        .collect()
}

#[test]
fn one_topology_three_machines_each_process_runs_the_nodes_of_its_own() {
    if !vespa_tests::privileged(
        "one_topology_three_machines_each_process_runs_the_nodes_of_its_own",
    ) {
        return;
    }
    let vo_ns = Netns::new("vmV");
    let ho_ns = Netns::new("vmH");
    let ag_ns = Netns::new("vmA");
    let stray_ns = Netns::new("vmS");
    let (_, v_side) = veth(&ho_ns, &vo_ns);
    let (a_side, h_down) = veth(&ag_ns, &ho_ns);

    let machines: [(&str, IpAddr); 3] = [
        ("vohost", v_side.v4.into()),
        ("hohost", h_down.v4.into()),
        ("agenthost", a_side.v4.into()),
    ];
    let nodes = [
        N::new("VO", "vo", None, 4150).on("vohost"),
        N::new("HO_VM", "ho_vm", Some("VO"), 4151).on("hohost"),
        N::new("bw", "agent_bandwidth", Some("HO_VM"), 4152).on("agenthost"),
        N::new("conns", "agent_connections", Some("HO_VM"), 4156).on("agenthost"),
    ];
    // Heartbeats every 300 ms: a silent child is lost after 0.9 s.
    let settings =
        "heartbeat_ms = 300\nhandshake_timeout_ms = 1000\nbackoff_min_ms = 20\nbackoff_max_ms = 300";
    let tree = Arc::new(Tree::new("machines", settings, &machines, &nodes));

    // Which machine each host is, and why: the VO's by its name (and address), the HO's by
    // its address only (its host name is another), the agents' by both.
    let vo_cc = check_config(&tree, &vo_ns.name, "vohost", "vespa-orchestrator");
    assert!(vo_cc.status.success(), "{}", text(&vo_cc));
    let want = format!(
        "this host is machine \"vohost\": its name is the host name \"vohost\"; and its address {} is on this host's {}",
        v_side.v4, v_side.ifname
    );
    assert!(
        text(&vo_cc).contains(&want),
        "want {want:?} in:\n{}",
        text(&vo_cc)
    );
    assert!(
        text(&vo_cc).contains("this process would run: VO\n"),
        "{}",
        text(&vo_cc)
    );
    let ho_cc = check_config(&tree, &ho_ns.name, "ho-box-17", "vespa-orchestrator");
    assert!(ho_cc.status.success(), "{}", text(&ho_cc));
    let want = format!(
        "this host is machine \"hohost\": its address {} is on this host's {}\n",
        h_down.v4, h_down.ifname
    );
    assert!(
        text(&ho_cc).contains(&want),
        "want {want:?} in:\n{}",
        text(&ho_cc)
    );
    assert!(
        text(&ho_cc).contains("this process would run: HO_VM\n"),
        "{}",
        text(&ho_cc)
    );
    let ag_cc = check_config(&tree, &ag_ns.name, "agenthost", "vespa-agent");
    assert!(ag_cc.status.success(), "{}", text(&ag_cc));
    assert!(
        text(&ag_cc).contains("this process would run: bw, conns\n"),
        "{}",
        text(&ag_cc)
    );
    // The VO's machine has no agent: nothing for vespa-agent to run there.
    let none = check_config(&tree, &vo_ns.name, "vohost", "vespa-agent");
    assert_eq!(none.status.code(), Some(1), "{}", text(&none));
    assert!(
        text(&none).contains("no node for this program to run on machine \"vohost\""),
        "{}",
        text(&none)
    );
    // A host that is none of the machines (another name, loopback only) is refused, with
    // what it tried.
    for program in ["vespa-orchestrator", "vespa-agent"] {
        let stray = check_config(&tree, &stray_ns.name, "stray", program);
        assert_eq!(stray.status.code(), Some(1), "{program}: {}", text(&stray));
        let err = String::from_utf8_lossy(&stray.stderr);
        for want in [
            "no machine of the topology is this host".to_string(),
            "the host name \"stray\"".to_string(),
            "127.0.0.1 (lo)".to_string(),
            format!("vohost ({})", v_side.v4),
        ] {
            assert!(err.contains(&want), "{program}: want {want:?} in:\n{err}");
        }
    }

    // The same topology, no --machine, no --node, on each machine.
    let mut vo = tree
        .start_on_host("vo", "vespa-orchestrator", &vo_ns.name, "vohost", &[], &[])
        .expect("vo");
    let mut ho = tree
        .start_on_host(
            "ho",
            "vespa-orchestrator",
            &ho_ns.name,
            "ho-box-17",
            &[],
            &[],
        )
        .expect("ho");
    let agent_flags = ["--mode", "proc"];
    let mut agent = tree
        .start_on_host(
            "agent",
            "vespa-agent",
            &ag_ns.name,
            "agenthost",
            &agent_flags,
            &[],
        )
        .expect("agent");

    let vo_call = |target: &str, verb: &str, args: &[&str]| -> Result<String, String> {
        let (t, target, verb) = (tree.clone(), target.to_string(), verb.to_string());
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        vo_ns.run(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            t.call(&target, &verb, &a)
        })
    };
    let children = |node: &str| -> Vec<String> {
        vo_call(node, "stats", &[])
            .ok()
            .and_then(|s| serde_json::from_str::<vespa_node::Stats>(&s).ok())
            .map(|s| s.children)
            .unwrap_or_default()
    };
    let logs = |p: &Proc| p.log_text();
    wait_until("the tree to form across the three machines", WAIT, || {
        (children("VO") == ["HO_VM"] && children("HO_VM").len() == 2).then_some(())
    });
    let mut agents = children("HO_VM");
    agents.sort();
    assert_eq!(agents, ["bw", "conns"], "{}", logs(&ho));
    // Each node listens at its machine's address.
    let slaves: serde_json::Value =
        serde_json::from_str(&vo_call("HO_VM", "list_slaves", &[]).expect("list_slaves"))
            .expect("json");
    let listen: Vec<&str> = slaves
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["listen_addr"].as_str())
        .collect();
    assert!(
        listen.contains(&format!("{}:4152", a_side.v4).as_str()),
        "{slaves}"
    );

    // get_mac with no interface: the agent watches every interface of its machine; lo has
    // no hardware address, its link to the HO does.
    let mac = vo_call("bw", "get_mac", &[]).expect("get_mac");
    let want = ag_ns.mac(&a_side.ifname).expect("mac");
    let want: Vec<String> = want.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        mac,
        want.join(":"),
        "the first monitored interface with a MAC"
    );

    // Every node registered, and the VO heard it by name.
    let events = || node_events(&vo_alerts(&tree, &|v, a| vo_call("VO", v, a)));
    let has =
        |ev: &[(String, String, String, String)], at: &str, node: &str, what: &str, n: usize| {
            ev.iter()
                .filter(|(o, nd, e, _)| o == at && nd == node && e == what)
                .count()
                >= n
        };
    let ev = wait_until("the VO to hear of every registration", WAIT, || {
        let ev = events();
        (has(&ev, "VO", "HO_VM", "Registered", 1)
            && has(&ev, "HO_VM", "bw", "Registered", 1)
            && has(&ev, "HO_VM", "conns", "Registered", 1))
        .then_some(ev)
    });
    assert!(!has(&ev, "HO_VM", "bw", "Lost", 1), "{ev:?}");

    // The agents' link is cut: three heartbeats later the HO has lost them, and says so.
    ho_ns.ip(&["link", "set", &h_down.ifname, "down"]);
    let ev = wait_until("the VO to hear that the agents were lost", WAIT, || {
        let ev = events();
        (has(&ev, "HO_VM", "bw", "Lost", 1) && has(&ev, "HO_VM", "conns", "Lost", 1)).then_some(ev)
    });
    let (_, _, _, why) = ev
        .iter()
        .find(|(_, n, e, _)| n == "bw" && e == "Lost")
        .expect("bw lost");
    assert!(why.contains("three heartbeats missed"), "{why}");
    // The link comes back: they register again.
    ho_ns.ip(&["link", "set", &h_down.ifname, "up"]);
    wait_until(
        "the VO to hear that the agents registered again",
        WAIT,
        || {
            let ev = events();
            (has(&ev, "HO_VM", "bw", "Reregistered", 1)
                && has(&ev, "HO_VM", "conns", "Reregistered", 1))
            .then_some(())
        },
    );
    // The agent process dies: lost again, its connection ended without the protocol's close.
    agent.kill9();
    let ev = wait_until(
        "the VO to hear that the killed agents were lost",
        WAIT,
        || {
            let ev = events();
            has(&ev, "HO_VM", "bw", "Lost", 2).then_some(ev)
        },
    );
    let (_, _, _, why) = ev
        .iter()
        .filter(|(_, n, e, _)| n == "bw" && e == "Lost")
        .nth(1)
        .expect("bw lost twice");
    assert!(why.contains("without a close record"), "{why}");

    for p in [&mut ho, &mut vo] {
        p.signal(Signal::SIGTERM);
        let st = p.wait_exit();
        assert!(st.success(), "{} exit {st}: {}", p.label, p.log_text());
    }
}
