//! The firewall in Prometheus: `vespa-agent run --metrics` exports the drops of a real block
//! of real packets (totals, table fill, per-block series bounded to the top N), and its
//! counters continue when a killed agent's successor adopts the pinned tables.

use std::net::SocketAddr;

use prometheus_parse::{Scrape, Value};
use vespa_testkit::wait_until;

use super::lab::Lab;
use crate::kit::*;

/// One scrape of the exporter at `addr` inside the lab's host namespace: the text and its
/// parse.
fn scrape(lab: &Lab, addr: SocketAddr) -> (String, Scrape) {
    let body = wait_until("the exporter's answer", WAIT, || {
        let (status, body) = lab
            .net
            .host
            .run(move || vespa_tests::daemons::http_get(&addr.to_string(), "/metrics"))
            .ok()?;
        (status == 200).then_some(body)
    });
    let parsed =
        Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("the exposition parses");
    (body, parsed)
}

/// The value of the sample `name` whose labels are exactly `labels`.
fn sample(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| {
            x.metric == name
                && x.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
        })
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

fn total(s: &Scrape, name: &str) -> f64 {
    sample(s, name, &[]).unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn the_exporter_counts_a_blocks_drops_and_continues_after_a_restart() {
    if !vespa_tests::privileged("the_exporter_counts_a_blocks_drops_and_continues_after_a_restart")
    {
        return;
    }
    let mut lab = Lab::new("fw-metrics", "", vec![]);
    lab.start_vo(&[]);
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let m = metrics.to_string();
    // One series per block at most (the busiest), the rest as "other".
    let mut agent = lab.start_agent_with(
        "agent",
        &["--top-n", "1"],
        &["fw", "bw"],
        &["--metrics", &m],
    );
    let stream = lab.attack_stream(7001);
    let attacker = lab.attacker().end.v4.to_string();
    lab.json("fw", "block_hackers", &[&attacker, "none"]);
    // Two blocks that drop nothing: they fold into "other".
    lab.json("fw", "block_hackers", &["192.0.2.7", "none"]);
    lab.json("fw", "block_hackers", &["198.51.100.0/24", "none"]);
    assert_eq!(stream.arrivals_over_next(200), 0, "the block does not drop");

    let (text, s) = scrape(&lab, metrics);
    let mine = [("target", attacker.as_str()), ("reflex", "false")];
    let packets = sample(&s, "vespa_firewall_block_dropped_packets_total", &mine)
        .unwrap_or_else(|| panic!("no series for the attacker's block:\n{text}"));
    let bytes = sample(&s, "vespa_firewall_block_dropped_bytes_total", &mine).expect("bytes");
    assert!(packets >= 150.0, "{packets} packets dropped");
    assert!(
        bytes >= packets * 200.0,
        "{bytes} bytes for {packets} datagrams"
    );
    let listed = lab.block_of(&attacker).expect("the block")["packets"]
        .as_u64()
        .unwrap_or(0) as f64;
    assert!(
        listed >= packets,
        "status_hackers ({listed}) and the exporter ({packets}) read the same counter"
    );
    assert_eq!(
        sample(
            &s,
            "vespa_firewall_block_dropped_packets_total",
            &[("target", "other")]
        ),
        Some(0.0),
        "the idle blocks are summed as other:\n{text}"
    );
    assert_eq!(
        s.samples
            .iter()
            .filter(|x| x.metric == "vespa_firewall_block_dropped_packets_total")
            .count(),
        2,
        "per-block series are bounded to --top-n and other:\n{text}"
    );
    let dropped = total(&s, "vespa_firewall_dropped_packets_total");
    assert!(
        dropped >= packets,
        "total {dropped} < the block's {packets}"
    );
    assert!(total(&s, "vespa_firewall_dropped_bytes_total") >= bytes);
    assert_eq!(total(&s, "vespa_firewall_blocks"), 3.0);
    assert_eq!(total(&s, "vespa_firewall_block_capacity"), 65536.0);
    assert!(
        total(&s, "vespa_firewall_allowlist_entries") >= 1.0,
        "the tree's machine is protected"
    );
    for name in [
        "vespa_firewall_dropped_packets",
        "vespa_firewall_block_dropped_packets",
        "vespa_firewall_reflex_placed",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} counter")),
            "{name} is a counter:\n{text}"
        );
    }
    assert!(text.contains("# TYPE vespa_firewall_blocks gauge"));

    // Killed: the block keeps dropping; the next agent adopts the pinned tables, and the
    // counters go on from where they were (no reset for Prometheus).
    agent.kill9();
    assert_eq!(stream.arrivals_over_next(300), 0);
    let metrics2: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let m2 = metrics2.to_string();
    let _agent = lab.start_agent_with(
        "agent2",
        &["--top-n", "1"],
        &["fw", "bw"],
        &["--metrics", &m2],
    );
    let (text, s) = scrape(&lab, metrics2);
    let after = sample(&s, "vespa_firewall_block_dropped_packets_total", &mine)
        .unwrap_or_else(|| panic!("no series for the adopted block:\n{text}"));
    assert!(
        after >= packets + 250.0,
        "the block's counter went from {packets} to {after}: drops while no agent ran were lost"
    );
    let dropped_after = total(&s, "vespa_firewall_dropped_packets_total");
    assert!(
        dropped_after >= dropped + 250.0,
        "the total went from {dropped} to {dropped_after}: it was reset"
    );
    assert_eq!(total(&s, "vespa_firewall_blocks"), 3.0);
    lab.json("fw", "release_hackers", &[]);
    stream.wait_flowing(20);
}
