//! A threshold alert carries the kernel event's own time, not the moment the agent got to it:
//! the closed loop's `kernel_to_vo` latency starts at the kernel.
//!
//! The agent process is stopped (SIGSTOP) while a remote crosses the connection threshold, so
//! the kernel's event waits in the ring buffer; the agent resumes only after the crossing is
//! over. An alert stamped by the agent would carry a time after the resume; the kernel's
//! stamp falls inside the crossing.

use std::net::{IpAddr, TcpListener};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::kit::*;
use nix::sys::signal::Signal;
use vespa_testkit::wait_until;
use vespa_tests::shared::LOOPBACK;

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
}

#[test]
fn a_threshold_alert_is_stamped_with_the_kernel_events_time() {
    let test = "a_threshold_alert_is_stamped_with_the_kernel_events_time";
    if !vespa_tests::privileged(test) {
        return;
    }
    // Its connections agent on lo counts every socket of the host: no flood meanwhile.
    let _loopback = LOOPBACK.share();
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let nodes = [
        N::root("VO", "vo"),
        N::child("conns", "agent_connections", "VO"),
    ];
    let tree = Tree::new(
        "ktime",
        "heartbeat_ms = 300\nsample_interval_ms = 200",
        &[("host", lo)],
        &nodes,
    );
    let _vo = tree.spawn("vo", "vespa-orchestrator", None, &[], &["VO"]);
    let agent = tree.spawn(
        "conns",
        "vespa-agent",
        None,
        &["--mode", "ebpf", "-i", "lo", "--conn-threshold", "5"],
        &["conns"],
    );
    wait_until("the agent under the VO", WAIT, || {
        tree.call("VO", "call", &["conns", "help"]).ok()
    });

    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let to = listener.local_addr().expect("addr");
    let remote: IpAddr = "127.0.3.7".parse().expect("ip");
    agent.signal(Signal::SIGSTOP);
    let before = unix_ns();
    let held = vespa_tests::traffic::tcp_connect_from(remote, to, 8, |_| {});
    let accepted = vespa_tests::traffic::tcp_accept_n(&listener, 8);
    let after = unix_ns();
    agent.signal(Signal::SIGCONT);
    let resumed = unix_ns();

    let alert = wait_until(
        "the ConnThreshold alert for 127.0.3.7 at the VO",
        WAIT,
        || {
            try_vo_alerts(&tree, &|v, a| tree.call("VO", v, a))?
                .into_iter()
                .find(|a| a["body"]["ConnThreshold"]["addr"] == "127.0.3.7")
        },
    );
    assert_eq!(
        alert["body"]["ConnThreshold"]["established"], 6,
        "the sixth connection crossed: {alert}"
    );
    let stamp = alert["timestamp_ns"].as_u64().expect("timestamp_ns");
    assert!(
        (before..=after).contains(&stamp),
        "stamped {} µs after the crossing began, crossing took {} µs, agent resumed at {} µs: {alert}",
        stamp as i64 / 1000 - before as i64 / 1000,
        (after - before) / 1000,
        (resumed - before) / 1000
    );
    drop((held, accepted));
}
