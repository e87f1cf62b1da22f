//! Kit shared by the tests that run trees of the real binaries (`tree`, `http`, `loops`): the
//! tree of real processes from `vespa_tests::tree` (a temporary directory with a key and a
//! generated topology, the real binaries as child processes killed on drop, logs in JSON
//! lines, a client that calls verbs on the running tree), plus the assertions the tests make
//! about alert delivery.

pub use vespa_tests::tree::*;

/// A node's `stats`, parsed.
pub fn stats(tree: &Tree, via: &str, target: &str) -> Option<vespa_node::Stats> {
    tree.call_via(via, target, "stats", &[])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
}

/// Calls a verb on the VO (directly, or from inside its network namespace).
pub type VoCall<'a> = &'a dyn Fn(&str, &[&str]) -> Result<String, String>;

/// Every alert the VO keeps (following `next` until the end), as JSON values.
pub fn vo_alerts(tree: &Tree, via_vo: VoCall<'_>) -> Vec<serde_json::Value> {
    try_vo_alerts(tree, via_vo).expect("get_alerts from the VO")
}

/// [`vo_alerts`], or `None` while the VO does not answer (still starting).
pub fn try_vo_alerts(tree: &Tree, via_vo: VoCall<'_>) -> Option<Vec<serde_json::Value>> {
    let _ = tree;
    let mut out = Vec::new();
    let mut from = 0u64;
    loop {
        let from_s = from.to_string();
        let page: serde_json::Value = serde_json::from_str(&via_vo("get_alerts", &[&from_s]).ok()?)
            .expect("get_alerts answers JSON");
        let alerts = page["alerts"].as_array().expect("alerts").clone();
        if alerts.is_empty() {
            return Some(out);
        }
        out.extend(alerts);
        from = page["next"].as_u64().expect("next");
    }
}

/// Sequence numbers of `origin`'s alerts, in the order given.
pub fn seqs_of(alerts: &[serde_json::Value], origin: &str) -> Vec<u64> {
    alerts
        .iter()
        .filter(|a| a["origin"] == origin)
        .map(|a| a["seq"].as_u64().expect("seq"))
        .collect()
}

/// Asserts `seqs` is exactly `first..=last`: nothing lost, nothing twice, in order.
pub fn assert_exactly_once(seqs: &[u64], first: u64, last: u64, what: &str) {
    assert!(!seqs.is_empty(), "{what}: no alert at all");
    let mut dups = 0;
    let mut gaps = Vec::new();
    for w in seqs.windows(2) {
        if w[1] <= w[0] {
            dups += 1;
        } else if w[1] != w[0] + 1 {
            gaps.push((w[0], w[1]));
        }
    }
    assert_eq!(dups, 0, "{what}: {dups} alert(s) repeated or out of order");
    assert!(
        gaps.is_empty(),
        "{what}: alerts lost between {:?}",
        &gaps[..gaps.len().min(5)]
    );
    assert_eq!(
        seqs[0], first,
        "{what}: the first alert ({first}) is missing (VO starts at {})",
        seqs[0]
    );
    assert_eq!(
        *seqs.last().expect("non-empty"),
        last,
        "{what}: alerts after {} are missing (the origin raised up to {last})",
        seqs.last().expect("last")
    );
}

/// The log lines with which a node notes the link to its master is gone: the master closed
/// it (a master killed: the kernel ends its connections), or it failed (reset, idle timeout
/// on a cut link).
pub const UPLINK_LOST: [&str; 2] = ["master closed the connection", "uplink to master failed"];

/// How many times `p`'s log notes a lost link to a master ([`UPLINK_LOST`]).
pub fn uplinks_lost(p: &Proc) -> usize {
    p.log_lines()
        .iter()
        .filter(|l| UPLINK_LOST.iter().any(|m| l["fields"]["message"] == *m))
        .count()
}

/// Reads the agent's final numbering from its "node stopped" log line.
pub fn final_seqs(p: &Proc, node: &str) -> (u64, u64) {
    let f = p.log_event("node stopped", node).unwrap_or_else(|| {
        panic!(
            "{} has no 'node stopped' line for {node}:\n{}",
            p.label,
            p.log_text()
        )
    });
    assert_eq!(
        f["unacknowledged"], 0,
        "{node} exited with unacknowledged alerts: {f}"
    );
    assert_eq!(
        f["queue_overflow"], 0,
        "{node} dropped alerts (queue full): {f}"
    );
    (
        f["first_seq"].as_u64().expect("first_seq"),
        f["last_seq"].as_u64().expect("last_seq"),
    )
}

/// VO, HO_VM under it and a bandwidth agent on lo (`bw`) under HO_VM, all on machine `host`
/// at free ports.
pub fn lo_bandwidth_nodes() -> Vec<N> {
    vec![
        N::root("VO", "vo"),
        N::child("HO_VM", "ho_vm", "VO"),
        N::child("bw", "agent_bandwidth", "HO_VM").extra("interfaces = [\"lo\"]\n"),
    ]
}

/// [`lo_bandwidth_nodes`] plus a connections agent (`conns`) under HO_VM.
pub fn lo_bandwidth_and_connections_nodes() -> Vec<N> {
    let mut nodes = lo_bandwidth_nodes();
    nodes.push(N::child("conns", "agent_connections", "HO_VM"));
    nodes
}

/// What a finished command wrote, standard output then standard error.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Names of the programs attached through TCX on `ifname` in `ns`, for one direction.
pub fn tcx_programs(
    ns: &vespa_tests::net::Netns,
    ifname: &str,
    dir: aya::programs::TcAttachType,
) -> Vec<String> {
    let n = ifname.to_string();
    ns.run(move || {
        let (_, progs) = aya::programs::SchedClassifier::query_tcx(&n, dir).expect("query TCX");
        progs
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_string())
            .collect()
    })
}
