//! The closed loop with no SDN controller anywhere: the VO's policy blocks a connection flood
//! through the host's own firewall agent, and releases it when calm returns.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vespa_testkit::wait_until;

use super::lab::{Lab, Stream};
use crate::kit::*;

#[test]
fn the_vo_blocks_a_connection_flood_with_the_hosts_firewall_alone() {
    if !vespa_tests::privileged("the_vo_blocks_a_connection_flood_with_the_hosts_firewall_alone") {
        return;
    }
    let mut lab = Lab::new(
        "fw-loop",
        "",
        vec![N::new("conn", "agent_connections", Some("VO"), 4162)],
    );
    let policy = vespa_tests::sdn_loop::conn_flood_policy_via("fw", 30, 5, 2);
    let policy_file = lab.tree.scratch.dir.join("policy.toml");
    std::fs::write(&policy_file, policy).expect("policy file");
    lab.start_vo(&["--policy", &policy_file.display().to_string()]);
    let _agent = lab.start_agent("agent", &["--conn-threshold", "30"], &["fw", "bw", "conn"]);
    let (a, v) = (lab.attacker(), lab.victim());
    let stream = Stream::start(
        &a.ns,
        a.end.v4.into(),
        &v.ns,
        SocketAddr::new(v.end.v4.into(), 7001),
    );
    stream.wait_flowing(50);

    let server = SocketAddr::new(v.end.v4.into(), 7070);
    let listener =
        v.ns.run(move || vespa_tests::traffic::tcp_listen(server, 1024));
    let held = a
        .ns
        .run(move || vespa_tests::traffic::tcp_connect_up_to(server, 80, Duration::from_secs(1)));
    assert!(held.len() > 30, "{} connections", held.len());

    let attacker = a.end.v4.to_string();
    let block = wait_until("the VO's block in the host's kernel", WAIT, || {
        lab.blocks()
            .into_iter()
            .find(|b| b["target"].as_str() == Some(attacker.as_str()) || b["reflex"] == false)
    });
    assert_eq!(block["reflex"], false, "{block}");
    assert_eq!(
        stream.arrivals_over_next(300),
        0,
        "the attacker's datagrams still arrive"
    );
    let vo = lab.vo.as_ref().expect("VO");
    let sent = wait_until("the VO's block request", WAIT, || {
        vo.log_lines()
            .into_iter()
            .find(|l| l["fields"]["message"] == "policy action done")
    });
    assert_eq!(sent["fields"]["verb"], "block_hackers", "{sent}");

    // Calm: the victim's side resets every connection; after calm_s the VO releases.
    let t_calm = Instant::now();
    drop(held);
    drop(listener);
    stream.wait_flowing(50);
    assert!(
        t_calm.elapsed() >= Duration::from_secs(2),
        "released before calm_s"
    );
    wait_until("the block gone from the kernel", WAIT, || {
        lab.blocks().is_empty().then_some(())
    });
}
