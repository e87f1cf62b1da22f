//! The firewall agent on its own, through its verbs: blocks that drop in the kernel and
//! expire there, the reflex, the allowlist, prefixes, throttles, and blocks that outlive the
//! agent.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use vespa_testkit::{at_least, wait_until};

use super::lab::{Lab, Stream};
use crate::kit::*;

fn privileged(test: &str) -> bool {
    vespa_tests::privileged(test)
}

#[test]
fn a_block_drops_counts_and_expires_in_the_kernel_while_the_agent_is_stopped() {
    if !privileged("a_block_drops_counts_and_expires_in_the_kernel_while_the_agent_is_stopped") {
        return;
    }
    let mut lab = Lab::new("fw-expiry", "", vec![]);
    lab.start_vo(&[]);
    let agent = lab.start_agent("agent", &[], &["fw", "bw"]);
    let a = lab.attacker();
    let stream = lab.attack_stream(7001);

    let attacker = a.end.v4.to_string();
    let placed = Instant::now();
    let reply = lab.json("fw", "block_hackers", &[&attacker, "2"]);
    assert_eq!(reply["target"], attacker.as_str(), "{reply}");
    assert_eq!(
        stream.arrivals_over_next(200),
        0,
        "the attacker's datagrams still arrive"
    );
    let b = lab.block_of(&attacker).expect("the block is listed");
    assert!(b["packets"].as_u64().unwrap_or(0) >= 150, "{b}");
    assert!(b["bytes"].as_u64().unwrap_or(0) >= 150 * 200, "{b}");

    // With the agent frozen nothing in user space can lift the block: the kernel does, at
    // its expiry.
    agent.signal(Signal::SIGSTOP);
    stream.wait_flowing(50);
    let lifted_after = placed.elapsed();
    agent.signal(Signal::SIGCONT);
    assert!(
        lifted_after >= Duration::from_millis(1900),
        "the block was lifted after {lifted_after:?}, before its 2 s"
    );
    // Frozen past its heartbeats, the agent reconnects first.
    wait_until("the expired block reaped", WAIT, || {
        let list = lab.call("fw", "status_hackers", &[]).ok()?;
        (!list.contains(&attacker)).then_some(())
    });
}

#[test]
fn the_reflex_drops_a_syn_flood_from_the_packet_after_the_crossing() {
    if !privileged("the_reflex_drops_a_syn_flood_from_the_packet_after_the_crossing") {
        return;
    }
    let mut lab = Lab::new("fw-reflex", "", vec![]);
    lab.start_vo(&[]);
    let _agent = lab.start_agent("agent", &[], &["fw", "bw"]);
    let (a, v) = (lab.attacker(), lab.victim());
    let threshold = 50u64;
    lab.json("fw", "reflex", &[&threshold.to_string(), "0", "30", "16"]);
    let victim = SocketAddr::new(v.end.v4.into(), 8080);
    let _listener =
        v.ns.run(move || vespa_tests::traffic::tcp_listen(victim, 4096));
    let before = lab.rx_packets(&v.port);
    let from: IpAddr = a.end.v4.into();
    a.ns.run(move || vespa_tests::traffic::syn_burst(from, victim, 1000));
    let attacker = a.end.v4.to_string();
    let b = wait_until("the reflex's block", WAIT, || {
        lab.block_of(&attacker)
            .filter(|b| b["packets"].as_u64().unwrap_or(0) >= 1000 - threshold - 10)
    });
    assert_eq!(b["reflex"], true, "{b}");
    let after = lab.rx_packets(&v.port);
    // Everything the victim sent is its SYN-ACKs (and a neighbour probe or two).
    let answered = after - before;
    assert!(
        answered <= threshold + 8,
        "the victim answered {answered} SYNs, more than the threshold of {threshold} and a handful"
    );
    let first_drop = b["first_drop_after_ns"].as_u64().expect("first drop time");
    eprintln!(
        "reflex: crossing -> first dropped packet {first_drop} ns (kernel clocks); victim answered {answered}"
    );
    // The block climbs to the VO as a reflex alert.
    wait_until("the reflex alert at the VO", WAIT, || {
        let call = |verb: &str, args: &[&str]| lab.call("VO", verb, args);
        try_vo_alerts(&lab.tree, &call)?
            .iter()
            .any(|al| al["body"]["ReflexBlock"]["target"].as_str() == Some(attacker.as_str()))
            .then_some(())
    });
    let stats = lab.json("fw", "firewall_stats", &[]);
    assert_eq!(stats["reflex_placed"], 1, "{stats}");
}

#[test]
fn the_reflex_blocks_a_remote_at_the_connection_after_its_established_threshold() {
    if !privileged("the_reflex_blocks_a_remote_at_the_connection_after_its_established_threshold") {
        return;
    }
    let mut lab = Lab::new("fw-reflex-conn", "", vec![]);
    lab.start_vo(&[]);
    let _agent = lab.start_agent("agent", &[], &["fw", "bw"]);
    let (a, v) = (lab.attacker(), lab.victim());
    let (attacker, victim_ip) = (a.end.v4.to_string(), v.end.v4.to_string());
    // The agent tracks every namespace of the host, so it also sees the attacker's own end of
    // each connection, whose remote is the victim: the victim is protected, as a guest the
    // topology knows would be, so that the reflex blocks the attacker only.
    lab.json("fw", "allow", &[&victim_ip]);
    let conn = 8u64;
    lab.json("fw", "reflex", &["0", &conn.to_string(), "30", "16"]);
    let victim = SocketAddr::new(v.end.v4.into(), 8080);
    let listener =
        v.ns.run(move || vespa_tests::traffic::tcp_listen(victim, 4096));
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    // More connections than the threshold, each held open, one after the other: the one that
    // crosses is completed, and the kernel blocks the attacker as the victim's end of it
    // becomes established (on the handshake's last ACK, a moment after the attacker's
    // connect() returns), so every later SYN is dropped. The victim accepts each connection
    // before the next is opened: its end is established by then, and the crossing counted.
    let mut opened = Vec::new();
    let mut accepted = Vec::new();
    for _ in 0..conn + 6 {
        let c =
            a.ns.run(move || std::net::TcpStream::connect_timeout(&victim, Duration::from_secs(1)));
        let Ok(c) = c else { break };
        opened.push(c);
        let deadline = Instant::now() + WAIT;
        loop {
            match listener.accept() {
                Ok((s, _)) => break accepted.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "the victim never saw connection {}",
                        opened.len()
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }
    assert_eq!(
        opened.len() as u64,
        conn + 1,
        "connections up to the crossing one get through, none after it"
    );
    let b = lab
        .block_of(&attacker)
        .expect("the reflex's block is listed");
    assert_eq!(b["reflex"], true, "{b}");
    assert!(
        b["packets"].as_u64().unwrap_or(0) >= 1,
        "the refused SYNs: {b}"
    );
    assert!(lab.block_of(&victim_ip).is_none(), "{:?}", lab.blocks());
    // A new connection from the attacker still fails.
    let again = a.ns.run(move || {
        std::net::TcpStream::connect_timeout(&victim, Duration::from_millis(500)).is_ok()
    });
    assert!(!again, "a connection got through the reflex's block");
    let stats = lab.json("fw", "firewall_stats", &[]);
    assert_eq!(stats["reflex_placed"], 1, "{stats}");
    assert!(
        stats["reflex_protected"].as_u64().unwrap_or(0) >= 1,
        "the victim crossed too, and was spared: {stats}"
    );
    // The alert says what crossed.
    wait_until("the reflex alert at the VO", WAIT, || {
        let call = |verb: &str, args: &[&str]| lab.call("VO", verb, args);
        try_vo_alerts(&lab.tree, &call)?
            .iter()
            .any(|al| {
                let r = &al["body"]["ReflexBlock"];
                r["target"].as_str() == Some(attacker.as_str())
                    && r["cause"] == "conn"
                    && r["value"] == conn + 1
                    && r["threshold"] == conn
            })
            .then_some(())
    });
}

#[test]
fn protected_sources_are_never_blocked_and_prefixes_catch_rotating_addresses() {
    if !privileged("protected_sources_are_never_blocked_and_prefixes_catch_rotating_addresses") {
        return;
    }
    let mut lab = Lab::new("fw-allow", "", vec![]);
    lab.start_vo(&[]);
    let _agent = lab.start_agent("agent", &[], &["fw", "bw"]);
    let (a, v) = (lab.attacker(), lab.victim());

    // The tree's own machine is protected by the topology, for good.
    let e = lab
        .call("fw", "block_hackers", &["127.0.0.1"])
        .expect_err("the tree's machine blocked");
    assert!(e.contains("protected"), "{e}");
    let e = lab
        .call("fw", "disallow", &["127.0.0.1"])
        .expect_err("a topology protection removed");
    assert!(e.contains("topology"), "{e}");

    // An operator's protection: no block of it, nor of a prefix holding it.
    let attacker = a.end.v4.to_string();
    lab.json("fw", "allow", &[&attacker]);
    for t in [attacker.clone(), format!("{}/24", a.end.v4)] {
        let e = lab
            .call("fw", "block_hackers", &[&t])
            .expect_err("a protected source blocked");
        assert!(e.contains("protected"), "{t}: {e}");
    }
    // Nor does the kernel's reflex block it.
    lab.json("fw", "reflex", &["20", "0", "30", "16"]);
    let victim = SocketAddr::new(v.end.v4.into(), 8080);
    let _listener =
        v.ns.run(move || vespa_tests::traffic::tcp_listen(victim, 4096));
    let from: IpAddr = a.end.v4.into();
    a.ns.run(move || vespa_tests::traffic::syn_burst(from, victim, 200));
    wait_until("the reflex refusing a protected source", WAIT, || {
        at_least(
            lab.json("fw", "firewall_stats", &[])["reflex_protected"]
                .as_u64()
                .unwrap_or(0),
            1,
        )
    });
    assert!(lab.block_of(&attacker).is_none(), "{:?}", lab.blocks());
    lab.json("fw", "disallow", &[&attacker]);

    // IPv6: a /64 block catches every address inside it, the attacker's rotations too.
    let (net64, rotated) = lab.attacker_v6_rotated();
    let to = SocketAddr::new(v.end.v6.into(), 7002);
    let first = Stream::start(&a.ns, a.end.v6.into(), &v.ns, to);
    first.wait_flowing(20);
    lab.json("fw", "block_hackers", &[&net64, "none"]);
    assert_eq!(first.arrivals_over_next(100), 0, "{net64} not blocked");
    drop(first);
    let to = SocketAddr::new(v.end.v6.into(), 7003);
    let second = Stream::start(&a.ns, rotated.into(), &v.ns, to);
    assert_eq!(
        second.arrivals_over_next(100),
        0,
        "a rotated address inside {net64} got through"
    );
    // Protected after the fact: the kernel lets it through although the block stays.
    lab.json("fw", "allow", &[&rotated.to_string()]);
    second.wait_flowing(20);
    assert!(lab.block_of(&net64).is_some());
    let stats = lab.json("fw", "firewall_stats", &[]);
    assert!(
        stats["protected_passed"].as_u64().unwrap_or(0) >= 1,
        "{stats}"
    );
}

#[test]
fn a_stream_into_a_throttled_tap_runs_at_the_configured_rate() {
    if !privileged("a_stream_into_a_throttled_tap_runs_at_the_configured_rate") {
        return;
    }
    let mut lab = Lab::new("fw-throttle", "", vec![]);
    lab.start_vo(&[]);
    let _agent = lab.start_agent("agent", &[], &["fw", "bw"]);
    let (a, v) = (lab.attacker(), lab.victim());
    // The victim's side of a flood: what the host sends into the victim's tap is shaped.
    let rate = 2_000_000u64;
    let dev = format!("dev:{}", v.port);
    let reply = lab.json("fw", "throttle", &[&dev, &rate.to_string(), "none"]);
    assert_eq!(reply["target"], dev.as_str(), "{reply}");
    let to = SocketAddr::new(v.end.v4.into(), 9090);
    let listener = v.ns.run(move || vespa_tests::traffic::tcp_listen(to, 16));
    let server =
        v.ns.spawn(move || vespa_tests::traffic::tcp_drain_server(listener, 1));
    let bytes = 12_000_000usize;
    let start = Instant::now();
    a.ns.run(move || vespa_tests::traffic::tcp_send(to, bytes));
    let got = server.join().expect("server");
    let secs = start.elapsed().as_secs_f64();
    let measured = got as f64 / secs;
    eprintln!("throttle: {got} bytes in {secs:.2} s = {measured:.0} B/s for {rate} B/s");
    assert_eq!(got, bytes as u64);
    assert!(
        (measured - rate as f64).abs() <= rate as f64 * 0.10,
        "the stream ran at {measured:.0} B/s, not within 10% of {rate} B/s"
    );
    // The shaper on the tap carried the whole stream.
    let t = lab.json("fw", "throttles", &[]);
    assert!(
        t[0]["passed_bytes"].as_u64().unwrap_or(0) >= bytes as u64,
        "{t}"
    );
    lab.json("fw", "unthrottle", &[&dev]);
    assert_eq!(lab.json("fw", "throttles", &[]), serde_json::json!([]));
}

#[test]
fn blocks_and_counters_outlive_a_killed_agent_and_the_next_one_adopts_them() {
    if !privileged("blocks_and_counters_outlive_a_killed_agent_and_the_next_one_adopts_them") {
        return;
    }
    let mut lab = Lab::new("fw-adopt", "", vec![]);
    lab.start_vo(&[]);
    let mut agent = lab.start_agent("agent", &[], &["fw", "bw"]);
    let a = lab.attacker();
    let stream = lab.attack_stream(7001);
    let attacker = a.end.v4.to_string();
    lab.json("fw", "block_hackers", &[&attacker, "none"]);
    assert_eq!(stream.arrivals_over_next(100), 0);
    let dropped = lab.block_of(&attacker).expect("block")["packets"]
        .as_u64()
        .unwrap_or(0);
    let rx = lab.rx_packets(&a.port);

    agent.kill9();
    assert_eq!(
        stream.arrivals_over_next(300),
        0,
        "datagrams arrived while no agent ran"
    );
    let _agent = lab.start_agent("agent2", &[], &["fw", "bw"]);
    let b = lab
        .block_of(&attacker)
        .expect("the new agent lists the old block");
    let now_dropped = b["packets"].as_u64().unwrap_or(0);
    assert!(
        now_dropped >= dropped + 250,
        "the block's counter went from {dropped} to {now_dropped}: drops while no agent ran were not counted"
    );
    let now_rx = lab.rx_packets(&a.port);
    assert!(
        now_rx >= rx + 250,
        "the port's counter went from {rx} to {now_rx}: it was reset or stopped"
    );
    assert_eq!(stream.arrivals_over_next(100), 0);
    lab.json("fw", "release_hackers", &[&attacker]);
    stream.wait_flowing(20);
}

#[test]
fn a_normal_stop_lifts_the_blocks_unless_told_to_keep_enforcing() {
    if !privileged("a_normal_stop_lifts_the_blocks_unless_told_to_keep_enforcing") {
        return;
    }
    let mut lab = Lab::new("fw-exit", "", vec![]);
    lab.start_vo(&[]);
    let stream = lab.attack_stream(7001);
    let attacker = lab.attacker().end.v4.to_string();

    let mut keeping = lab.start_agent("keeping", &["--keep-enforcing-on-exit"], &["fw", "bw"]);
    lab.json("fw", "block_hackers", &[&attacker, "none"]);
    assert_eq!(stream.arrivals_over_next(100), 0);
    keeping.signal(Signal::SIGTERM);
    assert!(keeping.wait_exit().success(), "{}", keeping.log_text());
    assert_eq!(
        stream.arrivals_over_next(200),
        0,
        "the block was lifted on exit despite --keep-enforcing-on-exit"
    );
    assert!(lab.pin_dir.join("FW_BLOCK_IP").exists());

    let mut plain = lab.start_agent("plain", &[], &["fw", "bw"]);
    assert!(
        lab.block_of(&attacker).is_some(),
        "the kept block is adopted"
    );
    plain.signal(Signal::SIGTERM);
    assert!(plain.wait_exit().success(), "{}", plain.log_text());
    stream.wait_flowing(50);
    assert!(
        !lab.pin_dir.exists(),
        "a normal stop left pins in {}",
        lab.pin_dir.display()
    );
}

#[test]
fn with_xdp_blocked_packets_are_dropped_before_tc() {
    if !privileged("with_xdp_blocked_packets_are_dropped_before_tc") {
        return;
    }
    let mut lab = Lab::new("fw-xdp", "", vec![]);
    lab.start_vo(&[]);
    let _agent = lab.start_agent("agent", &["--xdp"], &["fw", "bw"]);
    let a = lab.attacker();
    let stream = lab.attack_stream(7001);
    let attacker = a.end.v4.to_string();
    lab.json("fw", "block_hackers", &[&attacker, "none"]);
    assert_eq!(stream.arrivals_over_next(200), 0);
    let stats = lab.json("fw", "firewall_stats", &[]);
    let xdp = stats["xdp_dropped_packets"].as_u64().unwrap_or(0);
    assert!(xdp >= 150, "XDP dropped {xdp}: {stats}");
    // What XDP dropped never reached tc: the block's own counter has them all the same.
    let b = lab.block_of(&attacker).expect("block");
    assert!(b["packets"].as_u64().unwrap_or(0) >= xdp, "{b}");
}

#[test]
fn the_reflex_drops_every_frame_after_the_crossing_one_of_a_back_to_back_burst() {
    if !privileged("the_reflex_drops_every_frame_after_the_crossing_one_of_a_back_to_back_burst") {
        return;
    }
    let mut lab = Lab::new("fw-reflex-burst", "", vec![]);
    lab.start_vo(&[]);
    let _agent = lab.start_agent("agent", &[], &["fw", "bw"]);
    let (a, v) = (lab.attacker(), lab.victim());
    let threshold = 30u64;
    lab.json("fw", "reflex", &[&threshold.to_string(), "0", "30", "16"]);
    // One sendmmsg of identical SYN frames: no return to user space between two of them, as
    // a flooding guest sends. The packet after the crossing one must already be dropped.
    let burst = 200u64;
    let macs = (
        a.ns.mac(&a.end.ifname).expect("attacker's MAC"),
        v.ns.mac(&v.end.ifname).expect("victim's MAC"),
    );
    let frame = vespa_tests::traffic::syn_frame(
        macs,
        a.end.v4.into(),
        SocketAddr::new(v.end.v4.into(), 8080),
    );
    let ifname = a.end.ifname.clone();
    let sent =
        a.ns.run(move || vespa_tests::traffic::frame_burst(&ifname, &frame, burst as usize))
            .expect("burst");
    assert_eq!(sent, burst);
    let attacker = a.end.v4.to_string();
    let b = wait_until("the reflex's block", WAIT, || lab.block_of(&attacker));
    assert_eq!(b["reflex"], true, "{b}");
    assert_eq!(
        b["packets"].as_u64(),
        Some(burst - threshold - 1),
        "every SYN after the crossing one is dropped, and only those: {b}"
    );
    assert!(b["first_drop_after_ns"].as_u64().is_some(), "{b}");
}
