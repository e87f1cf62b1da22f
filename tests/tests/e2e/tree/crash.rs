//! SIGKILL an HO, or the VO, while the agent streams alerts, and restart it: the VO ends with
//! every alert the agent raised, each exactly once, in order.

use std::net::IpAddr;

use crate::kit::*;
use nix::sys::signal::Signal;
use vespa_testkit::{at_least, wait_until};

fn streaming_tree(tag: &str, vo_extra: &str) -> Tree {
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let nodes = [
        N::root("VO", "vo").extra(vo_extra),
        N::child("HO_VM", "ho_vm", "VO"),
        N::child("bw", "agent_bandwidth", "HO_VM").extra("interfaces = [\"lo\"]\n"),
    ];
    // One sample every 2 ms: about 500 alerts per second stream through the tree.
    let settings = "heartbeat_ms = 300\nsample_interval_ms = 2\nkeep_alerts = 1000000\nbackoff_min_ms = 20\nbackoff_max_ms = 300";
    Tree::new(tag, settings, &[("host", lo)], &nodes)
}

fn vo_count(tree: &Tree) -> u64 {
    stats(tree, "VO", "VO")
        .and_then(|s| s.origins.get("bw").map(|o| o.count))
        .unwrap_or(0)
}

/// Stops the agent with SIGTERM (it flushes), then waits until the VO holds its last alert.
fn stop_agent_and_drain(tree: &Tree, agent: &mut Proc) -> (u64, u64) {
    agent.signal(Signal::SIGTERM);
    let st = agent.wait_exit();
    assert!(st.success(), "agent exit {st}; log:\n{}", agent.log_text());
    let (first, last) = final_seqs(agent, "bw");
    wait_until("the VO to hold the agent's last alert", WAIT, || {
        stats(tree, "VO", "VO").filter(|s| s.origins.get("bw").is_some_and(|o| o.highest == last))
    });
    (first, last)
}

#[test]
fn sigkill_of_the_ho_while_the_agent_streams_loses_and_duplicates_nothing() {
    let tree = streaming_tree("crash-ho", "");
    let mut vo = tree.spawn("vo", "vespa-orchestrator", None, &[], &["VO"]);
    let mut ho = tree.spawn("ho", "vespa-orchestrator", None, &[], &["HO_VM"]);
    let mut agent = tree.spawn("agent", "vespa-agent", None, &["--mode", "proc"], &["bw"]);

    wait_until("300 alerts at the VO", WAIT, || {
        at_least(vo_count(&tree), 300)
    });
    let lost = uplinks_lost(&agent);
    ho.kill9();
    let at_kill = vo_count(&tree);
    // The new HO starts once the agent has seen the old one go, its alerts queueing.
    wait_until("the agent to notice the HO is gone", WAIT, || {
        at_least(uplinks_lost(&agent), lost + 1)
    });
    let mut ho2 = tree.spawn("ho2", "vespa-orchestrator", None, &[], &["HO_VM"]);
    wait_until("alerts to flow again through the new HO", WAIT, || {
        at_least(vo_count(&tree), at_kill + 1000)
    });

    let (first, last) = stop_agent_and_drain(&tree, &mut agent);
    let alerts = vo_alerts(&tree, &|v, a| tree.call("VO", v, a));
    assert_exactly_once(
        &seqs_of(&alerts, "bw"),
        first,
        last,
        "alerts at the VO across an HO SIGKILL",
    );
    let vs = stats(&tree, "VO", "VO").expect("VO stats");
    eprintln!(
        "VO: {} alerts from bw, {} duplicates dropped (re-sends after the HO crash)",
        vs.origins["bw"].count, vs.duplicates_dropped
    );
    assert_eq!(vs.origins["bw"].count, last - first + 1);

    for p in [&mut ho2, &mut vo] {
        p.signal(Signal::SIGTERM);
        let st = p.wait_exit();
        assert!(st.success(), "{} exit {st}", p.label);
    }
}

#[test]
fn sigkill_of_the_vo_with_a_journal_loses_and_duplicates_nothing() {
    let tree = streaming_tree("crash-vo", "journal = \"vo-alerts.journal\"\n");
    let journal = tree.scratch.dir.join("vo-alerts.journal");
    let mut vo = tree.spawn("vo", "vespa-orchestrator", None, &[], &["VO"]);
    let mut ho = tree.spawn("ho", "vespa-orchestrator", None, &[], &["HO_VM"]);
    let mut agent = tree.spawn("agent", "vespa-agent", None, &["--mode", "proc"], &["bw"]);

    wait_until("300 alerts at the VO", WAIT, || {
        at_least(vo_count(&tree), 300)
    });
    let lost = uplinks_lost(&ho);
    vo.kill9();
    // The new VO starts once the HO has seen the old one go, the alerts queueing.
    wait_until("the HO to notice the VO is gone", WAIT, || {
        at_least(uplinks_lost(&ho), lost + 1)
    });
    let mut vo2 = tree.spawn("vo2", "vespa-orchestrator", None, &[], &["VO"]);
    let restarted_with = wait_until("the new VO to answer", WAIT, || stats(&tree, "VO", "VO"))
        .origins
        .get("bw")
        .map_or(0, |o| o.count);
    assert!(
        restarted_with >= 300,
        "the new VO reloaded the journal ({restarted_with} alerts from bw)"
    );
    wait_until("alerts to flow again into the new VO", WAIT, || {
        at_least(vo_count(&tree), restarted_with + 1000)
    });

    let (first, last) = stop_agent_and_drain(&tree, &mut agent);
    let read = vespa_node::journal::read(&journal).expect("journal");
    assert_eq!(read.damaged, 0, "no damaged record in the journal");
    let journaled: Vec<serde_json::Value> = read
        .alerts
        .iter()
        .map(|a| serde_json::to_value(a).expect("alert as JSON"))
        .collect();
    assert_exactly_once(
        &seqs_of(&journaled, "bw"),
        first,
        last,
        "journal across a VO SIGKILL",
    );
    let alerts = vo_alerts(&tree, &|v, a| tree.call("VO", v, a));
    assert_exactly_once(
        &seqs_of(&alerts, "bw"),
        first,
        last,
        "get_alerts of the restarted VO",
    );

    for p in [&mut ho, &mut vo2] {
        p.signal(Signal::SIGTERM);
        let st = p.wait_exit();
        assert!(st.success(), "{} exit {st}", p.label);
    }
}
