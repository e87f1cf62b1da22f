//! The firewall on the VO's dashboard: a real block drops a real stream on the lab's host;
//! `GET /api/v1/firewall` reports it, asked through the tree, and headless Chromium renders
//! the firewall panel with the block's drop counter and the firewall's totals.

use std::net::{SocketAddr, TcpListener};

use serde_json::Value;
use vespa_testkit::wait_until;
use vespa_tests::browser::{artifacts, chromium, chromium_present};
use vespa_tests::net::Forward;

use super::lab::Lab;
use crate::kit::*;

#[test]
fn the_dashboard_shows_each_firewalls_blocks_and_drops() {
    let test = "the_dashboard_shows_each_firewalls_blocks_and_drops";
    if !vespa_tests::privileged(test) || !chromium_present(test) {
        return;
    }
    let mut lab = Lab::new("fw-dashboard", "", vec![]);
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let api_s = api.to_string();
    lab.start_vo(&["--http", &api_s]);
    let _agent = lab.start_agent("agent", &[], &["fw", "bw"]);
    let stream = lab.attack_stream(7001);
    let attacker = lab.attacker().end.v4.to_string();
    lab.json("fw", "block_hackers", &[&attacker, "none"]);
    assert_eq!(stream.arrivals_over_next(200), 0, "the block does not drop");

    // The API listens in the lab's host namespace: forwarded to this one's loopback.
    let forward = Forward::start(
        TcpListener::bind("127.0.0.1:0").expect("bind"),
        &lab.net.host.name,
        api,
    )
    .expect("forward");
    let local = forward.local_addr().to_string();
    let report = wait_until("the firewall's report with its drops", WAIT, || {
        let (status, body) = vespa_tests::daemons::http_get(&local, "/api/v1/firewall").ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let fw = v["firewalls"].as_array()?.first()?.clone();
        let dropped = fw["blocks"]
            .as_array()?
            .iter()
            .find(|b| b["target"] == attacker.as_str())?["packets"]
            .as_u64()?;
        (status == 200 && dropped >= 150).then_some(fw)
    });
    assert_eq!(report["node"], "fw");
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(report["blocks_listed"], 1);
    assert_eq!(report["blocks"][0]["reflex"], false);
    let total = report["totals"]["dropped_packets"].as_u64().unwrap_or(0);
    assert!(total >= 150, "{report}");

    let scratch = lab.tree.scratch.dir.clone();
    let dom = chromium(
        &scratch,
        "firewall",
        &format!("http://{local}/"),
        &["--dump-dom"],
    );
    let dump = artifacts().join("dashboard-firewall.html");
    std::fs::write(&dump, &dom).expect("keep the DOM");
    let ctx = format!("(DOM kept at {})", dump.display());
    assert!(
        dom.contains("<div class=\"firewall\" data-node=\"fw\">"),
        "the firewall's box {ctx}"
    );
    // The block's row, with a drop counter at least what the API reported before.
    let row = format!("<tr data-target=\"{attacker}\" data-packets=\"");
    let at = dom
        .find(&row)
        .unwrap_or_else(|| panic!("no row for {attacker} {ctx}"));
    let shown: u64 = dom[at + row.len()..]
        .split('"')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in the row {ctx}"));
    assert!(shown >= 150, "the row shows {shown} packets dropped {ctx}");
    assert!(dom.contains(" packets, "), "the totals {ctx}");
    assert!(
        dom.contains(">blocks</dt><dd>1 of 65,536</dd>"),
        "the table's fill {ctx}"
    );
    assert!(!dom.contains("could not be read"), "{ctx}");
    lab.json("fw", "release_hackers", &[]);
    stream.wait_flowing(20);
}
