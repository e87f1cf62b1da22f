//! SIGKILL an HO, or the VO, while the agent streams alerts, and restart it: the VO ends with
//! every alert the agent raised, each exactly once, in order.

use std::net::IpAddr;

use crate::kit::*;
use nix::sys::signal::Signal;
use vespa_testkit::{at_least, wait_until};

fn streaming_tree(tag: &str, vo_extra: &str) -> Tree {
    streaming_tree_with(tag, vo_extra, "")
}

fn streaming_tree_with(tag: &str, vo_extra: &str, more_settings: &str) -> Tree {
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let nodes = [
        N::root("VO", "vo").extra(vo_extra),
        N::child("HO_VM", "ho_vm", "VO"),
        N::child("bw", "agent_bandwidth", "HO_VM").extra("interfaces = [\"lo\"]\n"),
    ];
    // One sample every 2 ms: about 500 alerts per second stream through the tree.
    let settings = format!("heartbeat_ms = 300\nsample_interval_ms = 2\nkeep_alerts = 1000000\nbackoff_min_ms = 20\nbackoff_max_ms = 300\n{more_settings}");
    Tree::new(tag, &settings, &[("host", lo)], &nodes)
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

/// What became of the alerts the agent raised while its HO was stopped, once it was killed
/// and everything restarted.
struct AgentKill {
    /// The agent's own highest sequence number just before the kill (from its `stats`).
    raised_by: u64,
    /// The VO's highest from the agent when the HO was stopped.
    vo_had: u64,
    /// The VO's sequence numbers from the first agent process (below the second's new ones).
    first_life: Vec<u64>,
    /// Its first alert (the VO's `first` for the origin).
    first: u64,
    /// The second process's alerts at the VO, above `raised_by` or the spool's last.
    second_life: Vec<u64>,
    /// The second process's own numbering (first, last) from its log.
    second: (u64, u64),
}

/// Streams alerts through HO_VM, stops the HO (SIGSTOP: nothing is acknowledged any more),
/// waits until the agent raised 500 alerts beyond the VO's last, SIGKILLs the agent, kills the
/// stopped HO, starts both again and stops the new agent with SIGTERM once its alerts flow.
fn kill_the_agent_behind_a_stopped_ho(tag: &str, spool: bool) -> AgentKill {
    let settings = if spool { "spool_dir = \"spool\"" } else { "" };
    let tree = streaming_tree_with(tag, "", settings);
    let mut vo = tree.spawn("vo", "vespa-orchestrator", None, &[], &["VO"]);
    let mut ho = tree.spawn("ho", "vespa-orchestrator", None, &[], &["HO_VM"]);
    let mut agent = tree.spawn("agent", "vespa-agent", None, &["--mode", "proc"], &["bw"]);
    wait_until("300 alerts at the VO", WAIT, || {
        at_least(vo_count(&tree), 300)
    });
    ho.signal(Signal::SIGSTOP);
    let vo_had = stats(&tree, "VO", "VO").expect("VO stats").origins["bw"].highest;
    // Asked of the agent itself: its HO does not answer.
    let before_kill = wait_until("500 alerts raised beyond the VO's last", WAIT, || {
        stats(&tree, "bw", "bw").filter(|s| s.origins["bw"].highest >= vo_had + 500)
    });
    if spool {
        let sp = before_kill.spool.as_ref().expect("the agent keeps a spool");
        assert!(sp.unacked >= 500, "{sp:?}");
    } else {
        assert_eq!(before_kill.spool, None);
    }
    agent.kill9();
    ho.kill9();
    let raised_by = before_kill.origins["bw"].highest;

    let mut ho2 = tree.spawn("ho2", "vespa-orchestrator", None, &[], &["HO_VM"]);
    let mut agent2 = tree.spawn("agent2", "vespa-agent", None, &["--mode", "proc"], &["bw"]);
    // The new agent's own alerts reach the VO (behind what it sends again, if anything).
    let restarted = wait_until("the new agent to answer, with alerts", WAIT, || {
        stats(&tree, "bw", "bw").filter(|s| s.origins.contains_key("bw"))
    });
    let new_first = restarted.origins["bw"].highest;
    wait_until("the new agent's alerts at the VO", WAIT, || {
        stats(&tree, "VO", "VO").filter(|s| s.origins["bw"].highest > new_first)
    });
    agent2.signal(Signal::SIGTERM);
    let st = agent2.wait_exit();
    assert!(st.success(), "agent exit {st}; log:\n{}", agent2.log_text());
    let second = final_seqs(&agent2, "bw");
    wait_until("the VO to hold the new agent's last alert", WAIT, || {
        stats(&tree, "VO", "VO")
            .filter(|s| s.origins.get("bw").is_some_and(|o| o.highest == second.1))
    });
    let alerts = vo_alerts(&tree, &|v, a| tree.call("VO", v, a));
    let seqs = seqs_of(&alerts, "bw");
    // The new process numbers its own alerts from its start's wall clock: above every alert
    // of the first, re-sent or not.
    let boundary = seqs
        .windows(2)
        .position(|w| w[1] > w[0] + 1_000_000)
        .map_or(seqs.len(), |i| i + 1);
    let first = stats(&tree, "VO", "VO").expect("VO stats").origins["bw"].first;
    for p in [&mut ho2, &mut vo] {
        p.signal(Signal::SIGTERM);
        let st = p.wait_exit();
        assert!(st.success(), "{} exit {st}", p.label);
    }
    AgentKill {
        raised_by,
        vo_had,
        first_life: seqs[..boundary].to_vec(),
        first,
        second_life: seqs[boundary..].to_vec(),
        second,
    }
}

#[test]
fn sigkill_of_an_agent_behind_a_stopped_ho_loses_nothing_with_its_spool() {
    let k = kill_the_agent_behind_a_stopped_ho("crash-agent-spool", true);
    // Every alert the first process raised, up to its last one spooled, reached the VO once;
    // and that is at least every one it had raised when it was asked just before the kill.
    let last = *k.first_life.last().expect("alerts of the first process");
    assert!(
        last >= k.raised_by,
        "the VO's last alert of the killed agent is {last}, it had raised {}: {} lost",
        k.raised_by,
        k.raised_by - last
    );
    assert_exactly_once(
        &k.first_life,
        k.first,
        last,
        "alerts of the killed agent at the VO",
    );
    // The new process sent them first (its queue starts with them), then its own.
    assert!(k.second.0 <= k.vo_had + 1, "{:?}", k.second);
    let new_first = *k.second_life.first().expect("alerts of the second process");
    assert_exactly_once(
        &k.second_life,
        new_first,
        k.second.1,
        "alerts of the restarted agent",
    );
    eprintln!(
        "VO: {} alerts of the killed agent (it had {} unacknowledged), {} of the new one",
        k.first_life.len(),
        last - k.vo_had,
        k.second_life.len()
    );
}

/// The same kill without a spool loses what the VO had not acknowledged: the test above is
/// not met by chance.
#[test]
fn without_a_spool_the_same_sigkill_loses_the_unacknowledged_alerts() {
    let k = kill_the_agent_behind_a_stopped_ho("crash-agent-nospool", false);
    let last = *k.first_life.last().expect("alerts of the first process");
    assert!(
        last < k.raised_by,
        "without a spool the VO still got {last} (the agent had raised {})",
        k.raised_by
    );
    assert!(last <= k.vo_had + 1000, "{last} vs {}", k.vo_had);
}
