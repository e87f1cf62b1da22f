//! The attack cannot blind the sensor: a server that has accepted one connection from each of
//! tens of thousands of addresses of one IPv6 /64 leaves that many remotes in the kernel's
//! per-remote table, and samples that listed them all outgrew a frame and stalled the agent's
//! link for good. Now a flood from one more address still reaches the VO as a threshold alert
//! at once, and the policy blocks it through the SDN agent.
//!
//! The addresses are made bindable in a namespace of the test's own (a `local` route for the
//! /64 on its loopback, and non-local binds allowed there); the tree runs on the host and its
//! connections agent watches every namespace (`--all-netns`). The frame limit is set to
//! 256 KiB so that 20,000 remotes are enough to outgrow it.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::kit::*;
use socket2::{Domain, Socket, Type};
use vespa_testkit::wait_until;
use vespa_tests::daemons::floodlight_stub::FloodlightStub;
use vespa_tests::net::Netns;
use vespa_tests::sdn_loop::conn_flood_policy_via;
use vespa_tests::shared::LOOPBACK;

/// Remotes that each connect once and leave.
const ROTATED: u16 = 20_000;

fn addr(net: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x64, u16::from(net), 0, 0, 1, host)
}

/// One connection from `src` to `to`, accepted and closed.
fn connect_once(listener: &TcpListener, src: Ipv6Addr, to: SocketAddr) {
    let s = Socket::new(Domain::IPV6, Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::new(IpAddr::V6(src), 0).into())
        .expect("bind a /64 address");
    s.connect(&to.into()).expect("connect");
    let (accepted, _) = listener.accept().expect("accept");
    drop((TcpStream::from(s), accepted));
}

#[test]
fn a_flood_reaches_the_vo_after_a_64_rotated_through_the_remote_table() {
    let test = "a_flood_reaches_the_vo_after_a_64_rotated_through_the_remote_table";
    if !vespa_tests::privileged(test) {
        return;
    }
    // Its agent watches every namespace: no other test floods while it runs.
    let _loopback = LOOPBACK.take();
    let net = vespa_tests::subnet();
    let ns = Netns::new("v64");
    ns.exec(&["sysctl", "-qw", "net.ipv6.ip_nonlocal_bind=1"]);
    let prefix = format!("{}/64", addr(net, 0));
    ns.ip(&["-6", "route", "add", "local", &prefix, "dev", "lo"]);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let stub = rt.block_on(FloodlightStub::start());
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let nodes = [
        N::root("VO", "vo"),
        N::child("HO_VM", "ho_vm", "VO"),
        N::child("HO_PH", "ho_ph", "VO"),
        N::child("conns", "agent_connections", "HO_VM"),
        N::child("fl", "agent_controller_floodlight", "HO_PH")
            .extra(format!("[node.params]\nurl = \"{}\"\n", stub.url())),
    ];
    let tree = Tree::new(
        "flood",
        "heartbeat_ms = 300\nsample_interval_ms = 200\nmax_frame = 262144",
        &[("host", lo)],
        &nodes,
    );
    let policy = tree.scratch.dir.join("policy.toml");
    std::fs::write(&policy, conn_flood_policy_via("fl", 100, 10, 3600)).expect("policy");
    let policy = policy.to_str().expect("utf-8");
    let _orch = tree.spawn_with(
        "orch",
        "vespa-orchestrator",
        None,
        &[],
        &["VO", "HO_VM", "HO_PH"],
        &["--policy", policy],
    );
    let _agents = tree.spawn(
        "agents",
        "vespa-agent",
        None,
        &["--mode", "ebpf", "--all-netns", "--conn-threshold", "100"],
        &["conns", "fl"],
    );
    wait_until("both agents under the VO", WAIT, || {
        (tree.call("conns", "help", &[]).is_ok() && tree.call("fl", "help", &[]).is_ok())
            .then_some(())
    });

    // One connection from each of 20,000 addresses of the /64.
    let server = SocketAddr::new(IpAddr::V6(addr(net, 1)), 8080);
    let listener = ns.run(move || TcpListener::bind(server).expect("listen in the namespace"));
    let listener = ns.run(move || {
        for host in 0..ROTATED {
            connect_once(&listener, addr(net, 0x1000 + host), server);
        }
        listener
    });
    // The samples keep flowing: one taken after the rotation reaches the VO, and it is small.
    let rotated = unix_ns();
    let sample = wait_until(
        "a Connections sample taken after the rotation at the VO",
        WAIT,
        || {
            try_vo_alerts(&tree, &|v, a| tree.call("VO", v, a))?
                .into_iter()
                .find(|a| a["origin"] == "conns" && a["timestamp_ns"].as_u64() > Some(rotated))
        },
    );
    assert!(sample["body"]["Connections"].is_object(), "{sample}");
    let st: serde_json::Value =
        serde_json::from_str(&tree.call("conns", "stats", &[]).expect("stats")).expect("json");
    assert_eq!(st["oversized"], 0, "samples stay small: {st}");

    // A flood from one more address crosses the kernel threshold...
    let attacker = addr(net, 0xf100);
    let (held, crossed) = ns.run(move || {
        let held =
            vespa_tests::traffic::tcp_connect_from(IpAddr::V6(attacker), server, 120, |_| {});
        let accepted = vespa_tests::traffic::tcp_accept_n(&listener, 120);
        (
            held.into_iter().chain(accepted).collect::<Vec<_>>(),
            Instant::now(),
        )
    });
    let want = attacker.to_string();
    // ...and reaches the VO at once,
    let alert = wait_until("the ConnThreshold alert at the VO", WAIT, || {
        try_vo_alerts(&tree, &|v, a| tree.call("VO", v, a))?
            .into_iter()
            .find(|a| a["body"]["ConnThreshold"]["addr"] == want.as_str())
    });
    let seen_after = crossed.elapsed();
    assert_eq!(alert["path"], serde_json::json!(["conns", "HO_VM", "VO"]));
    assert!(
        seen_after <= Duration::from_secs(1),
        "the threshold alert was seen at the VO {seen_after:?} after the flood"
    );
    // ...and the policy blocks it through the controller.
    let pushed = wait_until("the block pushed to the controller", WAIT, || {
        stub.requests().into_iter().find(|r| {
            r.body
                .as_ref()
                .is_some_and(|b| b.to_string().contains(&want))
        })
    });
    assert_eq!(pushed.method, "POST", "{pushed:?}");

    let st: serde_json::Value =
        serde_json::from_str(&tree.call("conns", "stats", &[]).expect("stats")).expect("json");
    assert_eq!(st["reconnects"], 0, "the agent's link never broke: {st}");
    assert_eq!(
        st["queue_len"], 0,
        "nothing stuck in the agent's queue: {st}"
    );
    drop(held);
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
}
