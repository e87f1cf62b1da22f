//! The standalone exporter: real sensors, a real HTTP scrape, a Prometheus text parser.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use prometheus_parse::{Scrape, Value};
use vespa_agent::{export, Mode, SensorConfig, SensorEvent, Sensors};
use vespa_tests::{events_until, net::Link, privileged, traffic};

fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to exporter");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("response");
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
    (head.to_string(), body.to_string())
}

fn value(scrape: &Scrape, name: &str, label: (&str, &str)) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[test]
fn metrics_parse_and_carry_the_sensor_values() {
    if !privileged("metrics_parse_and_carry_the_sensor_values") {
        return;
    }
    let l = Link::new();
    let cfg = SensorConfig {
        mode: Mode::Ebpf,
        interfaces: vec![l.a.ifname.clone()],
        ..SensorConfig::default()
    };
    let sensors = l.a_ns.run(move || Sensors::start(cfg)).expect("start");
    let mut rx = sensors.subscribe();

    // Two remote addresses: 7 connections to b over IPv4, 3 over IPv6.
    let (b4, b6) = (IpAddr::V4(l.b.v4), IpAddr::V6(l.b.v6));
    let (s4, s6) = (SocketAddr::new(b4, 9600), SocketAddr::new(b6, 9601));
    let (l4, l6) = l.b_ns.run(move || {
        (
            TcpListener::bind(s4).expect("bind"),
            TcpListener::bind(s6).expect("bind"),
        )
    });
    let c4 = l.a_ns.run(move || traffic::tcp_connect_n(s4, 7));
    let c6 = l.a_ns.run(move || traffic::tcp_connect_n(s6, 3));
    let (_a4, _a6) = (traffic::tcp_accept_n(&l4, 7), traffic::tcp_accept_n(&l6, 3));
    // The tracker watches a's namespace: a's 10 client sockets, not b's server sockets.
    let mut n = 0;
    events_until(&mut rx, Duration::from_secs(20), |e| {
        n += matches!(e, SensorEvent::ConnOpened { .. }) as usize;
        n == 10
    });

    // top_n = 1: b's IPv4 address (7 connections) has its own series; the IPv6 one (3) folds
    // into "other".
    let registry = export::registry(sensors.clone(), 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind exporter");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(export::serve(listener, registry, async {
        let _ = stop_rx.await;
    }));

    let (head, body) = get(addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(
        body.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    let scrape =
        Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("the exposition parses");
    assert!(!scrape.samples.is_empty());

    let counters = sensors.interfaces().expect("counters").remove(0);
    let dev = ("device", l.a.ifname.as_str());
    let tx_bytes =
        value(&scrape, "vespa_network_transmit_bytes_total", dev).expect("transmit bytes series");
    assert!(
        tx_bytes > 0.0 && tx_bytes <= counters.tx_bytes as f64,
        "scraped {tx_bytes}, now {}",
        counters.tx_bytes
    );
    assert!(value(&scrape, "vespa_network_receive_packets_total", dev).expect("rx packets") > 0.0);
    let mac = sensors.get_mac(&l.a.ifname).expect("mac");
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "vespa_network_info"
                && s.labels.get("address") == Some(mac.as_str())),
        "info carries the MAC"
    );

    let est = |who: &str| {
        value(
            &scrape,
            "vespa_tcp_connections_established",
            ("remote", who),
        )
    };
    assert_eq!(est(&b4.to_string()), Some(7.0));
    assert_eq!(
        est(&l.a.v4.to_string()),
        None,
        "b's server sockets are another namespace's"
    );
    assert_eq!(est(&b6.to_string()), None, "beyond the top N");
    assert_eq!(
        est("other"),
        Some(3.0),
        "the IPv6 remote is folded into other"
    );
    assert_eq!(
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == "vespa_tcp_connections_established")
            .count(),
        2,
        "cardinality is capped at top N + other"
    );
    assert_eq!(
        value(
            &scrape,
            "vespa_tcp_connections_opened_total",
            ("remote", &b4.to_string())
        ),
        Some(7.0)
    );
    assert_eq!(
        value(&scrape, "vespa_sensor_info", ("mode", "ebpf")),
        Some(1.0)
    );
    let a_inode = l
        .a_ns
        .run(vespa_agent::netns::current_inode)
        .expect("a's namespace inode")
        .to_string();
    assert_eq!(
        value(&scrape, "vespa_sensor_info", ("netns", &a_inode)),
        Some(1.0),
        "the info names the watched namespace"
    );
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "vespa_ebpf_events_lost_total"));
    let runs = value(
        &scrape,
        "vespa_ebpf_program_runs_total",
        ("program", "vespa_sock_state"),
    )
    .expect("tracepoint runs");
    assert!(
        runs >= 20.0,
        "every state change ran the tracepoint: {runs}"
    );
    let fill =
        value(&scrape, "vespa_ebpf_map_entries", ("map", "CONN_BY_REMOTE")).expect("map fill");
    assert_eq!(fill, 2.0, "two remote addresses tracked");

    let (head, _) = get(addr, "/nope");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    drop((c4, c6));
    let _ = stop_tx.send(());
    rt.block_on(server)
        .expect("join")
        .expect("server ran cleanly");
}
