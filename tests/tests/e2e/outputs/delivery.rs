//! The VO's outputs over the real binaries: a VO and an HO (`vespa-orchestrator`), agents in
//! this process raising alerts through them, and at the other end what an operator's tools
//! would be: an HTTP receiver, a UDP and a TCP syslog listener, a JSON-lines file, and a real
//! nats-server with this test subscribed.
//!
//! - Every alert arrives at every output once, in order per origin.
//! - Outputs that are down (nothing listening) fill their queues and count their drops, and
//!   the tree's throughput is the same as without them (measured in the same run).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::runtime::Runtime;
use vespa_node::{AgentKind, Hooks, MasterAddr, Node, NodeHandle, NodeSpec, Role, Security};
use vespa_proto::AlertBody;
use vespa_testkit::wait_until;
use vespa_tests::daemons::nats::NatsServer;
use vespa_tests::daemons::{free_port, http_get, require_daemon};
use vespa_tests::tree::{Proc, Tree, N};

const WAIT: Duration = Duration::from_secs(60);

/// (origin, seq) pairs as one output received them, in its order.
type Seen = Arc<Mutex<Vec<(String, u64)>>>;

/// Reads what one output has received so far.
type Reader<'a> = Box<dyn Fn() -> Vec<(String, u64)> + 'a>;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// VO and HO_VM (one `vespa-orchestrator`, its API on `api`), agents `a1`, `a2` under HO_VM
/// (run in this process), and `outputs` appended to the topology.
fn tree(tag: &str, outputs: &str, api: SocketAddr) -> (Tree, Proc) {
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let nodes = [
        N::root("VO", "vo"),
        N::child("HO_VM", "ho_vm", "VO"),
        N::child("a1", "agent_bandwidth", "HO_VM"),
        N::child("a2", "agent_bandwidth", "HO_VM"),
    ];
    let tree = Tree::new(tag, "heartbeat_ms = 300", &[("host", lo)], &nodes);
    let mut text = std::fs::read_to_string(&tree.config).expect("topology");
    text.push_str(outputs);
    std::fs::write(&tree.config, text).expect("topology");
    let api = api.to_string();
    let orch = tree.spawn_with(
        "orch",
        "vespa-orchestrator",
        None,
        &[],
        &["VO", "HO_VM"],
        &["--http", &api],
    );
    (tree, orch)
}

/// An agent of `tree` in this process, connected to HO_VM, until the sender is dropped.
fn agent(rt: &Runtime, tree: &Tree, name: &str) -> (NodeHandle, tokio::sync::oneshot::Sender<()>) {
    let master = MasterAddr {
        name: "HO_VM".into(),
        addr: tree.addrs["HO_VM"],
    };
    let mut spec = NodeSpec::new(
        name,
        Role::Agent(AgentKind::Bandwidth),
        Some(master),
        Security::Psk(tree.psk.clone()),
    );
    spec.settings.heartbeat = Duration::from_millis(300);
    spec.settings.backoff_min = Duration::from_millis(20);
    spec.settings.backoff_max = Duration::from_millis(200);
    let _in = rt.enter();
    let node = Node::new(spec, Hooks::default()).expect("node");
    let handle = node.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(node.run(None, async move {
        let _ = stopped.await;
    }));
    (handle, stop)
}

fn connected(a: &NodeHandle) -> Result<(), String> {
    let s = a.stats();
    if s.uplink_connected {
        Ok(())
    } else {
        Err(format!("{}: not connected", s.node))
    }
}

fn acknowledged(a: &NodeHandle) -> Result<(), usize> {
    match a.stats().queue_len {
        0 => Ok(()),
        n => Err(n),
    }
}

/// One series of the VO's `/metrics`, by name and `output` label.
fn metric(api: SocketAddr, name: &str, output: &str) -> Option<f64> {
    let (_, body) = http_get(&api.to_string(), "/metrics").ok()?;
    let want = format!("{name}{{output=\"{output}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
}

/// What each origin's alerts looked like at one output: its sequence numbers in order.
fn per_origin(seen: &[(String, u64)]) -> BTreeMap<String, Vec<u64>> {
    let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (o, s) in seen {
        m.entry(o.clone()).or_default().push(*s);
    }
    m
}

fn push_json(seen: &Seen, v: &serde_json::Value) {
    if let (Some(o), Some(s)) = (v["origin"].as_str(), v["seq"].as_u64()) {
        seen.lock().expect("lock").push((o.to_string(), s));
    }
}

/// The origin and sequence number of an RFC 5424 record (`origin="a1" seq="7"`).
fn syslog_ids(record: &str) -> Option<(String, u64)> {
    let o = record.split("origin=\"").nth(1)?.split('"').next()?;
    let s = record.split("seq=\"").nth(1)?.split('"').next()?;
    Some((o.to_string(), s.parse().ok()?))
}

#[test]
fn every_alert_reaches_every_output_once_in_order_per_origin() {
    let test = "every_alert_reaches_every_output_once_in_order_per_origin";
    let Some(nats) = require_daemon(test, "nats-server", NatsServer::start()) else {
        return;
    };
    let rt = runtime();

    // The operator's side.
    let http_seen: Seen = Seen::default();
    let hook = {
        let seen = http_seen.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    push_json(&seen, &v);
                    "ok"
                }
            }),
        )
    };
    let http = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let http_addr = http.local_addr().expect("addr");
    rt.spawn(async move { axum::serve(http, hook).await });

    let nats_seen: Seen = Seen::default();
    let subjects: Arc<Mutex<Vec<String>>> = Arc::default();
    let sub = rt
        .block_on(async {
            let c = async_nats::connect(nats.url.as_str()).await?;
            let s = c.subscribe("vespa.alerts.>").await?;
            c.flush().await?;
            anyhow::Ok((c, s))
        })
        .expect("subscribed to nats-server");
    let (_client, mut sub) = sub;
    {
        let (seen, subjects) = (nats_seen.clone(), subjects.clone());
        rt.spawn(async move {
            while let Some(m) = sub.next().await {
                let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                push_json(&seen, &v);
                subjects.lock().expect("lock").push(m.subject.to_string());
            }
        });
    }

    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let udp_addr = udp.local_addr().expect("addr");
    let udp_seen: Seen = Seen::default();
    let udp_records: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let (seen, records) = (udp_seen.clone(), udp_records.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = udp.recv(&mut buf) {
                let r = String::from_utf8_lossy(&buf[..n]).to_string();
                if let Some(id) = syslog_ids(&r) {
                    seen.lock().expect("lock").push(id);
                }
                records.lock().expect("lock").push(r);
            }
        });
    }
    let tcp = TcpListener::bind("127.0.0.1:0").expect("tcp");
    let tcp_addr = tcp.local_addr().expect("addr");
    let tcp_seen: Seen = Seen::default();
    {
        let seen = tcp_seen.clone();
        std::thread::spawn(move || {
            // Octet counting (RFC 6587): "<length> <record>", back to back.
            while let Ok((s, _)) = tcp.accept() {
                let mut r = BufReader::new(s);
                loop {
                    let mut len = Vec::new();
                    if r.read_until(b' ', &mut len).unwrap_or(0) == 0 {
                        break;
                    }
                    let Ok(n) = String::from_utf8_lossy(&len).trim().parse::<usize>() else {
                        break;
                    };
                    let mut rec = vec![0u8; n];
                    if r.read_exact(&mut rec).is_err() {
                        break;
                    }
                    if let Some(id) = syslog_ids(&String::from_utf8_lossy(&rec)) {
                        seen.lock().expect("lock").push(id);
                    }
                }
            }
        });
    }

    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let outputs = format!(
        r#"
[[output]]
name = "hook"
kind = "webhook"
url = "http://{http_addr}/hook"

[[output]]
name = "udp"
kind = "syslog"
address = "{udp_addr}"

[[output]]
name = "tcp"
kind = "syslog"
transport = "tcp"
address = "{tcp_addr}"
format = "cef"

[[output]]
name = "file"
kind = "file"
path = "alerts.jsonl"

[[output]]
name = "nats"
kind = "nats"
url = "{}"
"#,
        nats.url
    );
    let (tree, orch) = tree("outputs", &outputs, api);
    let (a1, _stop1) = agent(&rt, &tree, "a1");
    let (a2, _stop2) = agent(&rt, &tree, "a2");
    wait_until("a1 connected", WAIT, || connected(&a1));
    wait_until("a2 connected", WAIT, || connected(&a2));

    // Interleaved, one with a line break that must not forge a syslog record.
    let mut raised: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for i in 0..150 {
        for a in [&a1, &a2] {
            let text = if i == 75 {
                format!("{i}\n<13>1 2026-01-01T00:00:00Z forged - - - - forged")
            } else {
                format!("alert {i}")
            };
            let seq = a.raise(AlertBody::Text(text)).expect("queued");
            raised.entry(a.stats().node).or_default().push(seq);
        }
    }
    wait_until("every alert acknowledged", WAIT, || {
        acknowledged(&a1)?;
        acknowledged(&a2)
    });

    let file = tree.scratch.dir.join("alerts.jsonl");
    let file_seen = || -> Vec<(String, u64)> {
        let seen = Seen::default();
        for l in std::fs::read_to_string(&file).unwrap_or_default().lines() {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object per line");
            push_json(&seen, &v);
        }
        let v = seen.lock().expect("lock").clone();
        v
    };
    let ours = |seen: Vec<(String, u64)>| -> BTreeMap<String, Vec<u64>> {
        per_origin(&seen)
            .into_iter()
            .filter(|(o, _)| raised.contains_key(o))
            .collect()
    };
    let outputs: [(&str, Reader); 5] = [
        (
            "webhook",
            Box::new(|| http_seen.lock().expect("lock").clone()),
        ),
        (
            "syslog udp",
            Box::new(|| udp_seen.lock().expect("lock").clone()),
        ),
        (
            "syslog tcp",
            Box::new(|| tcp_seen.lock().expect("lock").clone()),
        ),
        ("file", Box::new(file_seen)),
        ("nats", Box::new(|| nats_seen.lock().expect("lock").clone())),
    ];
    for (what, seen) in &outputs {
        // Wait for the count; then the exact sequence: once each, in order per origin.
        let got = wait_until(&format!("300 alerts at the {what} output"), WAIT, || {
            let got = ours(seen());
            let n: usize = got.values().map(Vec::len).sum();
            if n >= 300 {
                Ok(got)
            } else {
                Err(n)
            }
        });
        assert_eq!(got, raised, "{what}: every alert once, in order per origin");
    }
    // Only what the VO processed: nothing more arrives later.
    for (what, seen) in &outputs {
        assert_eq!(ours(seen()), raised, "{what}: no duplicate after the fact");
    }

    let records = udp_records.lock().expect("lock").clone();
    assert!(
        records.iter().all(|r| !r.contains('\n')),
        "a line break in an alert never reaches a syslog record"
    );
    assert!(
        records
            .iter()
            .any(|r| r.contains("75\\n<13>1 2026-01-01T00:00:00Z forged")),
        "the escaped text is kept"
    );
    let subjects = subjects.lock().expect("lock").clone();
    assert!(
        subjects.iter().any(|s| s == "vespa.alerts.vm.a1"),
        "{subjects:?}"
    );
    assert!(
        subjects.iter().any(|s| s == "vespa.alerts.vm.a2"),
        "{subjects:?}"
    );
    for output in ["hook", "udp", "tcp", "file", "nats"] {
        let sent = wait_until(&format!("{output}'s counters at /metrics"), WAIT, || {
            metric(api, "vespa_output_sent_total", output).ok_or("no series")
        });
        assert!(sent >= 300.0, "{output}: sent {sent}");
        assert_eq!(
            metric(api, "vespa_output_dropped_total", output),
            Some(0.0),
            "{output}"
        );
    }
    drop(orch);
}

/// Raises `n` alerts from `agent` and returns alerts/s from the first raise to the last
/// acknowledgement (the VO has processed them all).
fn throughput(agent: &NodeHandle, n: u64) -> f64 {
    let started = Instant::now();
    let body = AlertBody::Text("x".repeat(64));
    let mut raised = 0;
    while raised < n {
        match agent.raise(body.clone()) {
            Ok(_) => raised += 1,
            // The outbox is full: the tree is the bottleneck, which is what is measured.
            Err(_) => std::thread::yield_now(),
        }
    }
    wait_until("every alert acknowledged", WAIT, || acknowledged(agent));
    n as f64 / started.elapsed().as_secs_f64()
}

#[test]
fn down_outputs_fill_their_queues_count_drops_and_leave_the_tree_throughput_unchanged() {
    let test = "down_outputs_fill_their_queues_count_drops_and_leave_the_tree_throughput_unchanged";
    if !vespa_tests::privileged(test) {
        return;
    }
    let rt = runtime();
    const N: u64 = 20_000;
    const QUEUE: u64 = 100;
    // Ports nothing listens on (drawn free, never bound).
    let (web, nats, tcp) = (free_port(), free_port(), free_port());
    let dead = format!(
        r#"
[[output]]
name = "dead_webhook"
kind = "webhook"
url = "http://127.0.0.1:{web}/hook"
queue = {QUEUE}

[[output]]
name = "dead_nats"
kind = "nats"
url = "nats://127.0.0.1:{nats}"
queue = {QUEUE}

[[output]]
name = "dead_syslog"
kind = "syslog"
transport = "tcp"
address = "127.0.0.1:{tcp}"
queue = {QUEUE}
"#
    );
    // Alternating, so that whatever else the machine does weighs on both alike; the best of
    // each is compared.
    let mut without = Vec::new();
    let mut with = Vec::new();
    for round in 0..2 {
        for dead_outputs in [false, true] {
            let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let outputs = if dead_outputs { dead.as_str() } else { "" };
            let (tree, orch) = tree(&format!("outputs-rate{round}{dead_outputs}"), outputs, api);
            let (a1, stop) = agent(&rt, &tree, "a1");
            wait_until("a1 connected", WAIT, || connected(&a1));
            let rate = throughput(&a1, N);
            if dead_outputs {
                with.push(rate);
                for o in ["dead_webhook", "dead_nats", "dead_syslog"] {
                    let dropped = wait_until(&format!("{o} to count its drops"), WAIT, || {
                        match metric(api, "vespa_output_dropped_total", o) {
                            Some(d) if d >= (N - QUEUE - 256) as f64 => Ok(d),
                            other => Err(other),
                        }
                    });
                    assert!(dropped <= N as f64 + 10.0, "{o}: dropped {dropped}");
                    assert_eq!(metric(api, "vespa_output_sent_total", o), Some(0.0), "{o}");
                    let failures = metric(api, "vespa_output_failures_total", o).unwrap_or(0.0);
                    assert!(failures >= 1.0, "{o}: failures {failures}");
                    let depth = metric(api, "vespa_output_queue_depth", o).unwrap_or(0.0);
                    assert_eq!(depth, QUEUE as f64, "{o}: its queue is full");
                }
            } else {
                without.push(rate);
            }
            drop((a1, stop));
            drop(orch);
        }
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let ratio = best(&with) / best(&without);
    eprintln!(
        "tree throughput, {N} alerts agent -> HO -> VO: without outputs {without:.0?} alerts/s, with three outputs down {with:.0?} alerts/s; best with/without = {ratio:.2}"
    );
    assert!(
        ratio >= 0.75,
        "outputs that are down slowed the tree: {with:.0?} vs {without:.0?} alerts/s"
    );
}
