//! Attaching and detaching: interfaces that appear and vanish, coexistence with other tc
//! users, and nothing of ours left behind.

use std::{
    net::{IpAddr, SocketAddr},
    sync::mpsc,
    time::Duration,
};

use aya::programs::TcAttachType;
use vespa_agent::{Mode, SensorConfig, SensorEvent, Sensors, TcMode};
use vespa_tests::{
    events_until,
    net::{veth, Link, Netns},
    privileged, traffic,
};

const WAIT: Duration = Duration::from_secs(20);

use crate::kit::tcx_programs;

fn tc(ns: &Netns, args: &[&str]) -> String {
    let mut v = vec!["tc"];
    v.extend_from_slice(args);
    ns.exec(&v)
}

fn udp(from: &Netns, to_ns: &Netns, to: SocketAddr, n: usize) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let sink = to_ns.spawn(move || traffic::udp_sink(to, n, ready_tx));
    ready_rx.recv().expect("ready");
    from.run(move || traffic::udp_send(to, n, &[64]));
    assert_eq!(sink.join().expect("sink"), n);
}

#[test]
fn interfaces_created_after_start_are_attached_and_vanished_ones_forgotten() {
    if !privileged("interfaces_created_after_start_are_attached_and_vanished_ones_forgotten") {
        return;
    }
    let a_ns = Netns::new("vth");
    let b_ns = Netns::new("vti");
    // Every interface of the namespace: at start that is only lo.
    let s = a_ns
        .run(|| {
            Sensors::start(SensorConfig {
                mode: Mode::Ebpf,
                ..SensorConfig::default()
            })
        })
        .expect("start");
    assert_eq!(s.health().attached_interfaces, vec!["lo".to_string()]);
    let mut rx = s.subscribe();

    // A VM's tap device appears: here, one end of a new veth link.
    let (a, b) = veth(&a_ns, &b_ns);
    let name = a.ifname.clone();
    events_until(
        &mut rx,
        WAIT,
        |e| matches!(e, SensorEvent::InterfaceAttached { name: n, .. } if *n == name),
    );
    assert!(tcx_programs(&a_ns, &a.ifname, TcAttachType::Ingress)
        .contains(&"vespa_ingress".to_string()));
    udp(&a_ns, &b_ns, SocketAddr::new(IpAddr::V4(b.v4), 9500), 100);
    let c = s
        .interfaces()
        .expect("counters")
        .into_iter()
        .find(|i| i.name == a.ifname)
        .expect("monitored");
    assert!(
        c.tx_packets >= 100,
        "traffic on the new interface is counted: {c:?}"
    );

    a_ns.ip(&["link", "del", &a.ifname]);
    events_until(
        &mut rx,
        WAIT,
        |e| matches!(e, SensorEvent::InterfaceDetached { name: n, .. } if *n == name),
    );
    assert!(!s.health().attached_interfaces.contains(&a.ifname));
    assert!(
        s.interfaces()
            .expect("counters")
            .iter()
            .all(|i| i.name != a.ifname),
        "no counters for a vanished device"
    );
}

#[test]
fn tcx_attach_coexists_with_other_programs_and_detach_leaves_them_alone() {
    if !privileged("tcx_attach_coexists_with_other_programs_and_detach_leaves_them_alone") {
        return;
    }
    let l = Link::new();
    let ifname = l.a.ifname.clone();
    // Someone else's program is on the hook first.
    let foreign = l
        .a_ns
        .run({
            let n = ifname.clone();
            move || vespa_agent::ebpf::attach_noop(&n).map_err(|e| e.to_string())
        })
        .expect("foreign program");
    let cfg = SensorConfig {
        mode: Mode::Ebpf,
        interfaces: vec![ifname.clone()],
        ..SensorConfig::default()
    };
    let first = l
        .a_ns
        .run({
            let c = cfg.clone();
            move || Sensors::start(c)
        })
        .expect("start");
    let second = l
        .a_ns
        .run(move || Sensors::start(cfg))
        .expect("a second agent on the same interface");
    let ingress = tcx_programs(&l.a_ns, &ifname, TcAttachType::Ingress);
    assert_eq!(
        ingress.iter().filter(|p| *p == "vespa_ingress").count(),
        2,
        "{ingress:?}"
    );
    assert!(
        ingress.contains(&"vespa_tc_noop".to_string()),
        "{ingress:?}"
    );

    // Our classifiers pass every packet on: both agents see all of them.
    let tx = |s: &Sensors| s.interfaces().expect("counters")[0].tx_packets;
    let (f0, s0) = (tx(&first), tx(&second));
    udp(
        &l.a_ns,
        &l.b_ns,
        SocketAddr::new(IpAddr::V4(l.b.v4), 9501),
        300,
    );
    let (f1, s1) = (tx(&first), tx(&second));
    assert!(f1 - f0 >= 300, "{f0} -> {f1}");
    assert_eq!(
        f1 - f0,
        s1 - s0,
        "the second agent counts exactly what the first does"
    );

    drop(first);
    drop(second);
    for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
        assert_eq!(
            tcx_programs(&l.a_ns, &ifname, dir),
            vec!["vespa_tc_noop".to_string()],
            "only the foreign program remains ({dir:?})"
        );
    }
    assert!(
        !tc(&l.a_ns, &["qdisc", "show", "dev", &ifname]).contains("clsact"),
        "TCX needs no qdisc and leaves none"
    );
    drop(foreign);
    assert!(tcx_programs(&l.a_ns, &ifname, TcAttachType::Ingress).is_empty());
}

#[test]
fn netlink_attach_removes_its_own_qdisc_and_keeps_foreign_filters() {
    if !privileged("netlink_attach_removes_its_own_qdisc_and_keeps_foreign_filters") {
        return;
    }
    let l = Link::new();
    let (a_if, b_if) = (l.a.ifname.clone(), l.b.ifname.clone());
    let start = |ns: &Netns, ifname: &str| {
        let cfg = SensorConfig {
            mode: Mode::Ebpf,
            interfaces: vec![ifname.to_string()],
            tc_mode: TcMode::Netlink,
            ..SensorConfig::default()
        };
        ns.run(move || Sensors::start(cfg)).expect("start")
    };
    // On a: nobody uses tc; we add clsact and must take it away again.
    // On b: a clsact qdisc with someone's u32 filter exists already and must survive us.
    tc(&l.b_ns, &["qdisc", "add", "dev", &b_if, "clsact"]);
    tc(
        &l.b_ns,
        &[
            "filter", "add", "dev", &b_if, "ingress", "protocol", "all", "prio", "7", "u32",
            "match", "u32", "0", "0", "classid", "1:1",
        ],
    );
    let sa = start(&l.a_ns, &a_if);
    let sb = start(&l.b_ns, &b_if);
    assert!(tc(&l.a_ns, &["filter", "show", "dev", &a_if, "ingress"]).contains("vespa_ingress"));
    assert!(tc(&l.a_ns, &["filter", "show", "dev", &a_if, "egress"]).contains("vespa_egress"));
    let b_filters = tc(&l.b_ns, &["filter", "show", "dev", &b_if, "ingress"]);
    assert!(
        b_filters.contains("vespa_ingress") && b_filters.contains("u32"),
        "{b_filters}"
    );

    udp(
        &l.a_ns,
        &l.b_ns,
        SocketAddr::new(IpAddr::V4(l.b.v4), 9502),
        200,
    );
    assert!(
        sb.interfaces().expect("counters")[0].rx_packets >= 200,
        "counted behind the foreign filter"
    );
    assert!(sa.interfaces().expect("counters")[0].tx_packets >= 200);

    drop(sa);
    drop(sb);
    assert!(
        !tc(&l.a_ns, &["qdisc", "show", "dev", &a_if]).contains("clsact"),
        "our qdisc is gone"
    );
    assert!(tc(&l.a_ns, &["filter", "show", "dev", &a_if, "ingress"])
        .trim()
        .is_empty());
    let b_after = tc(&l.b_ns, &["filter", "show", "dev", &b_if, "ingress"]);
    assert!(
        b_after.contains("u32") && !b_after.contains("vespa"),
        "the foreign filter survives, ours is gone: {b_after}"
    );
    assert!(
        tc(&l.b_ns, &["qdisc", "show", "dev", &b_if]).contains("clsact"),
        "the foreign qdisc stays"
    );
}

#[test]
fn the_counters_baseline_is_the_ingress_classifier_without_the_firewall_and_detaches_on_drop() {
    if !privileged(
        "the_counters_baseline_is_the_ingress_classifier_without_the_firewall_and_detaches_on_drop",
    ) {
        return;
    }
    let l = Link::new();
    let ifname = l.b.ifname.clone();
    let baseline = l
        .b_ns
        .run({
            let n = ifname.clone();
            move || {
                vespa_agent::ebpf::attach_counters_baseline(&n)
                    .map(Box::new)
                    .map_err(|e| e.to_string())
            }
        })
        .expect("the baseline attaches");
    // The kernel keeps 15 characters of a program's name.
    assert_eq!(
        tcx_programs(&l.b_ns, &ifname, TcAttachType::Ingress),
        ["vespa_ingress_c"]
    );
    assert_eq!(
        tcx_programs(&l.b_ns, &ifname, TcAttachType::Egress),
        ["vespa_egress"]
    );
    // It passes every packet on.
    udp(
        &l.a_ns,
        &l.b_ns,
        SocketAddr::new(IpAddr::V4(l.b.v4), 9502),
        200,
    );
    drop(baseline);
    for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
        assert_eq!(
            tcx_programs(&l.b_ns, &ifname, dir),
            Vec::<String>::new(),
            "{dir:?} left attached"
        );
    }
}
