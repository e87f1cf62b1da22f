//! `vespa-bench-tree`: throughput and latency of the node tree (agent -> HO -> VO), in one
//! process on loopback, each figure a ratio against a baseline measured in the same run.
//!
//! - alerts/s end to end, sealed (the real thing), vs the same runtime over unsealed frames
//!   (`vespa-node`'s bench-only `insecure-plaintext` feature), vs raw AES-GCM seal+open of
//!   64-byte frames (`vespa_proto::bench`), the ceiling any sealed transport can reach;
//! - per-hop latency p50/p99 at a light, steady load (1,000 alerts/s by default).
//!
//! Goals (from the issue): >= 200,000 alerts/s end to end on 2 cores; p99 <= 0.5 ms per hop.
//! Results also go to target/bench/tree.json.
//!
//! `--outputs`: the sealed chain's throughput with the VO's outputs (`[[output]]`) down, three
//! of them pointing at closed ports (webhook, NATS, syslog over TCP), against the same chain
//! without outputs, alternating in one run; results in target/bench/tree-outputs.json.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::net::TcpListener;
use vespa_node::{AgentKind, Hooks, MasterAddr, Node, NodeHandle, NodeSpec, Role, Security};
use vespa_proto::{Alert, AlertBody, Psk};

/// Throughput and latency of the VESPA node tree on loopback.
#[derive(Parser)]
struct Args {
    /// Alerts per throughput run.
    #[arg(long, default_value_t = 400_000)]
    alerts: u64,
    /// Throughput runs per variant (the best is kept).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Rate of the latency run (alerts/s).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Duration of the latency run, seconds.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Smaller runs (for CI smoke tests).
    #[arg(long)]
    quick: bool,
    /// Only the throughput with outputs that are down against none.
    #[arg(long)]
    outputs: bool,
}

type Handler = Arc<dyn Fn(&Arc<Alert>) + Send + Sync>;

struct Chain {
    agent: NodeHandle,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// Starts VO, HO_VM and an agent on 127.0.0.1:0 with `security`; `at_ho`/`at_vo` see every
/// new alert at that hop.
async fn chain(
    security: impl Fn(&str) -> Security,
    queue: usize,
    at_ho: Handler,
    at_vo: Handler,
    spool: Option<&std::path::Path>,
) -> Chain {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let spec = |name: &str, role: Role, master: Option<MasterAddr>| {
        let has_master = master.is_some();
        let mut s = NodeSpec::new(name, role, master, security(name));
        s.settings.queue_capacity = queue;
        s.settings.keep_alerts = 0;
        s.flush_timeout = Duration::from_millis(200);
        if has_master {
            s.spool = spool.map(|d| vespa_node::spool::file_of(d, name));
        }
        s
    };
    let vo_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ho_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (vo_addr, ho_addr) = (
        vo_l.local_addr().expect("addr"),
        ho_l.local_addr().expect("addr"),
    );
    let vo = Node::new(
        spec("VO", Role::Vo, None),
        Hooks {
            agent: None,
            alert_handlers: vec![at_vo],
        },
    )
    .expect("VO");
    let ho = Node::new(
        spec(
            "HO_VM",
            Role::HoVm,
            Some(MasterAddr {
                name: "VO".into(),
                addr: vo_addr,
            }),
        ),
        Hooks {
            agent: None,
            alert_handlers: vec![at_ho],
        },
    )
    .expect("HO");
    let agent = Node::new(
        spec(
            "agent",
            Role::Agent(AgentKind::Connections),
            Some(MasterAddr {
                name: "HO_VM".into(),
                addr: ho_addr,
            }),
        ),
        Hooks::default(),
    )
    .expect("agent");
    let handle = agent.handle();
    tokio::spawn(vo.run(Some(vo_l), stopped()));
    tokio::spawn(ho.run(Some(ho_l), stopped()));
    tokio::spawn(agent.run(None, stopped()));
    let h = &handle;
    vespa_testkit::wait_until_async(
        "the chain to connect (the agent's uplink)",
        Duration::from_secs(10),
        move || async move { h.stats().uplink_connected },
    )
    .await;
    Chain {
        agent: handle,
        _stop: stop_tx,
    }
}

/// The protection of node `name` of the bench chain under per-node keys from `root`.
fn per_node(root: &Psk, name: &str) -> Security {
    use vespa_proto::key::derive;
    let vo = derive(root, "VO");
    let own = match name {
        "VO" => vo,
        "HO_VM" => derive(&vo, "HO_VM"),
        _ => derive(&derive(&vo, "HO_VM"), name),
    };
    let ring = vespa_node::KeyRing {
        own: vec![own],
        root: vec![root.clone()],
    };
    Security::Keys(Arc::new(ring))
}

/// Milliseconds from `connect()` to a confirmed handshake, `n` times one after the other: the
/// server holds the shared key, or derives the child's key from its own (per-node keys).
async fn handshakes(n: usize, per_node_keys: bool) -> Vec<f64> {
    use vespa_proto::key::derive;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let master = Psk::random();
    let child = if per_node_keys {
        derive(&master, "agent")
    } else {
        master.clone()
    };
    let cfg = vespa_proto::Config::default();
    let server_cfg = cfg.clone();
    let server = tokio::spawn(async move {
        let keys = move |peer: &str| {
            if per_node_keys {
                vec![derive(&master, peer)]
            } else {
                vec![master.clone()]
            }
        };
        while let Ok((s, _)) = listener.accept().await {
            let _ = vespa_proto::connection::server_handshake_keys(s, &keys, "HO_VM", &server_cfg)
                .await;
        }
    });
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = s.set_nodelay(true);
        vespa_proto::client_handshake(s, &child, "agent", &cfg)
            .await
            .expect("handshake");
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    server.abort();
    out.sort_by(f64::total_cmp);
    out
}

fn sample_body(i: u64) -> AlertBody {
    AlertBody::ConnThreshold {
        addr: std::net::IpAddr::from([203, 0, 113, (i % 250) as u8]),
        established: 150 + i % 7,
        threshold: 100,
    }
}

/// Raises `n` alerts as fast as the queue admits them; returns alerts/s at the VO. With
/// `spool`, the agent and the HO spool their own alerts there (group-committed fdatasync).
async fn throughput(
    security: impl Fn(&str) -> Security,
    n: u64,
    spool: Option<&std::path::Path>,
) -> f64 {
    throughput_with(security, n, spool, None).await
}

/// [`throughput`], with `extra` run at the VO too (before the count).
async fn throughput_with(
    security: impl Fn(&str) -> Security,
    n: u64,
    spool: Option<&std::path::Path>,
    extra: Option<Handler>,
) -> f64 {
    let at_vo = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let (c, d) = (at_vo.clone(), done.clone());
    // Only the benchmark's own alerts count: when the queue was full, the agent also sends a
    // report of the refused attempts (an `AlertBody::Text`).
    let vo_handler: Handler = Arc::new(move |a: &Arc<Alert>| {
        if let Some(h) = &extra {
            h(a);
        }
        if matches!(a.body, AlertBody::ConnThreshold { .. })
            && c.fetch_add(1, Ordering::Relaxed) + 1 == n
        {
            d.notify_one();
        }
    });
    let chain = chain(security, 65_536, Arc::new(|_| {}), vo_handler, spool).await;
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        match chain.agent.raise(sample_body(i)) {
            Ok(_) => i += 1,
            // Queue full: let the tree drain (backpressure, not loss, in a benchmark).
            Err(_) => tokio::task::yield_now().await,
        }
        if i % 1024 == 0 {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::timeout(Duration::from_secs(120), done.notified())
        .await
        .expect("every alert reaches the VO");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        at_vo.load(Ordering::Relaxed),
        n,
        "exactly n alerts processed"
    );
    n as f64 / secs
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Per-hop latency at `rate` alerts/s for `secs`: (agent->HO, HO->VO) samples in ms.
async fn latency(rate: u64, secs: f64) -> (Vec<f64>, Vec<f64>) {
    let now = || vespa_now_ns();
    let ho_seen: Arc<Mutex<std::collections::HashMap<u64, u64>>> = Arc::default();
    let pairs: Arc<Mutex<Vec<(f64, f64)>>> = Arc::default();
    let hs = ho_seen.clone();
    let at_ho: Handler = Arc::new(move |a: &Arc<Alert>| {
        hs.lock().expect("lock").insert(a.seq, now());
    });
    let (hs, ps) = (ho_seen.clone(), pairs.clone());
    let at_vo: Handler = Arc::new(move |a: &Arc<Alert>| {
        let t_vo = now();
        if let Some(t_ho) = hs.lock().expect("lock").remove(&a.seq) {
            let hop1 = t_ho.saturating_sub(a.timestamp_ns) as f64 / 1e6;
            let hop2 = t_vo.saturating_sub(t_ho) as f64 / 1e6;
            ps.lock().expect("lock").push((hop1, hop2));
        }
    });
    let psk = Psk::random();
    let chain = chain(|_| Security::Psk(psk.clone()), 65_536, at_ho, at_vo, None).await;
    let total = (rate as f64 * secs) as u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for i in 0..total {
        tick.tick().await;
        chain
            .agent
            .raise(sample_body(i))
            .expect("light load never fills the queue");
    }
    // Every alert has a pair once it reached the VO through the HO.
    let ps = &pairs;
    vespa_testkit::wait_until_async(
        &format!("all {total} alerts at the VO"),
        Duration::from_secs(10),
        move || async move { vespa_testkit::at_least(ps.lock().expect("lock").len() as u64, total) },
    )
    .await;
    let p = pairs.lock().expect("lock").clone();
    let mut h1: Vec<f64> = p.iter().map(|x| x.0).collect();
    let mut h2: Vec<f64> = p.iter().map(|x| x.1).collect();
    h1.sort_by(f64::total_cmp);
    h2.sort_by(f64::total_cmp);
    (h1, h2)
}

fn vespa_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Ports nothing listens on: drawn free from the kernel, never bound.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9)
}

/// The chain with three outputs down against none, alternating, `rounds` (at least 3) each.
fn outputs_bench(rt: &tokio::runtime::Runtime, args: &Args) -> anyhow::Result<()> {
    use vespa_orchestrator::metrics::OutputMetrics;
    use vespa_orchestrator::outputs::Outputs;
    const QUEUE: usize = 4096;
    let topo = vespa_node::Topology::from_toml(
        "bench",
        &format!(
            r#"
[[machine]]
name = "h"
address = "127.0.0.1"

[[node]]
name = "VO"
kind = "vo"
location = "h"
port = 4150

[[output]]
name = "webhook"
kind = "webhook"
url = "http://127.0.0.1:{}/hook"
queue = {QUEUE}

[[output]]
name = "nats"
kind = "nats"
url = "nats://127.0.0.1:{}"
queue = {QUEUE}

[[output]]
name = "syslog"
kind = "syslog"
transport = "tcp"
address = "127.0.0.1:{}"
queue = {QUEUE}
"#,
            closed_port(),
            closed_port(),
            closed_port()
        ),
    )?;
    let metrics = OutputMetrics::default();
    let outputs = {
        let _in = rt.enter();
        Outputs::start(&topo, metrics.clone())?
    };
    println!(
        "vespa-bench-tree --outputs: agent -> HO_VM -> VO on 127.0.0.1, sealed, one process, 2 worker threads; \
         three outputs down (webhook, NATS, syslog/TCP to closed ports, queue {QUEUE} each) against none"
    );
    let psk = Psk::random();
    let rounds = args.rounds.max(3);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        without.push(rt.block_on(throughput_with(
            |_| Security::Psk(psk.clone()),
            args.alerts,
            None,
            None,
        )));
        with.push(rt.block_on(throughput_with(
            |_| Security::Psk(psk.clone()),
            args.alerts,
            None,
            Some(outputs.handler()),
        )));
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (b0, b1) = (best(&without), best(&with));
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        (best(v) - lo) / best(v)
    };
    println!(
        "\nthroughput ({} alerts per run, {rounds} runs each, alternating):",
        args.alerts
    );
    println!(
        "  without outputs        best {b0:>10.0} alerts/s   runs {without:.0?}   spread {:.0}%",
        spread(&without) * 100.0
    );
    println!(
        "  three outputs down     best {b1:>10.0} alerts/s   runs {with:.0?}   spread {:.0}%",
        spread(&with) * 100.0
    );
    println!("  with / without = {:.3}", b1 / b0);
    let mut per_output = serde_json::Map::new();
    for o in ["webhook", "nats", "syslog"] {
        let (sent, dropped, failures, depth) = metrics.get(o);
        println!(
            "  {o:<8} sent {sent}, dropped {dropped}, failures {failures}, queue depth {depth}"
        );
        per_output.insert(
            o.to_string(),
            serde_json::json!({ "sent": sent, "dropped": dropped, "failures": failures, "queue_depth": depth }),
        );
    }
    let json = serde_json::json!({
        "alerts_per_run": args.alerts, "rounds": rounds,
        "throughput_alerts_per_s": { "without_outputs": without, "outputs_down": with },
        "best": { "without_outputs": b0, "outputs_down": b1, "ratio": b1 / b0 },
        "outputs": per_output,
    });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("tree-outputs.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("\nresults written to target/bench/tree-outputs.json");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.alerts = args.alerts.min(50_000);
        args.rounds = 1;
        args.secs = args.secs.min(1.0);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.outputs {
        return outputs_bench(&rt, &args);
    }
    println!("vespa-bench-tree: agent -> HO_VM -> VO on 127.0.0.1, one process, 2 worker threads");

    let best = |security: &dyn Fn(&str) -> Security| -> f64 {
        (0..args.rounds)
            .map(|_| rt.block_on(throughput(security, args.alerts, None)))
            .fold(0.0, f64::max)
    };
    let psk = Psk::random();
    // Spool on against spool off, rounds interleaved so both see the same machine; the spool
    // on the disk the workspace is on (target/), not a tmpfs.
    let spool_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/spool");
    let shared = |_: &str| Security::Psk(psk.clone());
    let (mut off, mut on) = (0.0f64, 0.0f64);
    for _ in 0..args.rounds {
        off = off.max(rt.block_on(throughput(shared, args.alerts, None)));
        let _ = std::fs::remove_dir_all(&spool_dir);
        on = on.max(rt.block_on(throughput(shared, args.alerts, Some(&spool_dir))));
    }
    let _ = std::fs::remove_dir_all(&spool_dir);
    let sealed = off;
    let root = Psk::random();
    let keyed = best(&|name| per_node(&root, name));
    let plain = best(&|_| Security::Plaintext);
    let frames = (args.alerts as usize).max(100_000);
    let seal_open = vespa_proto::bench::seal_open_throughput(frames);
    let round_trip = vespa_proto::bench::alert_round_trip_throughput(frames);

    println!(
        "\nthroughput ({} alerts per run, best of {}):",
        args.alerts, args.rounds
    );
    println!(
        "  sealed chain (AES-256-GCM)      {:>12.0} alerts/s   goal >= 200,000: {}",
        sealed,
        if sealed >= 200_000.0 {
            "met"
        } else {
            "NOT MET"
        }
    );
    println!(
        "  sealed chain, agent spooling    {:>12.0} alerts/s   spool on/off = {:.3}   goal >= 0.85: {}",
        on,
        on / off,
        if on / off >= 0.85 { "met" } else { "NOT MET" }
    );
    println!(
        "  sealed chain, per-node keys     {:>12.0} alerts/s   per-node/shared = {:.2}",
        keyed,
        keyed / sealed
    );
    println!(
        "  unsealed chain (same runtime)   {:>12.0} alerts/s   sealed/unsealed = {:.2}",
        plain,
        sealed / plain
    );
    println!(
        "  AES-GCM seal+open, 64 B frames  {:>12.0} frames/s   sealed chain / raw sealing = {:.3}",
        seal_open,
        sealed / seal_open
    );
    println!(
        "  encode+seal+open+decode alert   {:>12.0} alerts/s   (single hop, no sockets)",
        round_trip
    );

    let samples = if args.quick { 200 } else { 500 };
    let shared_hs = rt.block_on(handshakes(samples, false));
    let keyed_hs = rt.block_on(handshakes(samples, true));
    let (hs_p50, hs_p99) = (percentile(&shared_hs, 0.5), percentile(&shared_hs, 0.99));
    let (hk_p50, hk_p99) = (percentile(&keyed_hs, 0.5), percentile(&keyed_hs, 0.99));
    println!("\nhandshake on loopback, connect to confirmed ({samples} samples each):");
    println!("  shared key      p50 {hs_p50:.3} ms   p99 {hs_p99:.3} ms");
    println!(
        "  per-node keys   p50 {hk_p50:.3} ms   p99 {hk_p99:.3} ms   p50 per-node/shared = {:.2}",
        hk_p50 / hs_p50
    );

    let (h1, h2) = rt.block_on(latency(args.rate, args.secs));
    let (p50_1, p99_1, p50_2, p99_2) = (
        percentile(&h1, 0.5),
        percentile(&h1, 0.99),
        percentile(&h2, 0.5),
        percentile(&h2, 0.99),
    );
    let worst_p99 = p99_1.max(p99_2);
    println!(
        "\nper-hop latency at {} alerts/s for {} s ({} samples):",
        args.rate,
        args.secs,
        h1.len()
    );
    println!("  agent -> HO    p50 {:.3} ms   p99 {:.3} ms", p50_1, p99_1);
    println!("  HO -> VO       p50 {:.3} ms   p99 {:.3} ms", p50_2, p99_2);
    println!(
        "  goal p99 <= 0.5 ms per hop: {}",
        if worst_p99 <= 0.5 { "met" } else { "NOT MET" }
    );

    let json = serde_json::json!({
        "throughput_alerts_per_s": { "sealed": sealed, "sealed_spool": on, "ratio_spool_on_to_off": on / off, "sealed_per_node_keys": keyed, "unsealed": plain, "ratio_sealed_to_unsealed": sealed / plain },
        "handshake_ms": {
            "samples": samples,
            "shared_key": { "p50": hs_p50, "p99": hs_p99 },
            "per_node_keys": { "p50": hk_p50, "p99": hk_p99 },
        },
        "raw_seal_open_frames_per_s": seal_open,
        "ratio_sealed_chain_to_raw_sealing": sealed / seal_open,
        "alert_round_trip_per_s": round_trip,
        "latency_ms": {
            "rate_alerts_per_s": args.rate, "samples": h1.len(),
            "agent_to_ho": { "p50": p50_1, "p99": p99_1 },
            "ho_to_vo": { "p50": p50_2, "p99": p99_2 },
        },
        "goals": { "throughput_min": 200_000, "throughput_met": sealed >= 200_000.0, "p99_per_hop_max_ms": 0.5, "latency_met": worst_p99 <= 0.5 },
        "alerts_per_run": args.alerts, "rounds": args.rounds,
    });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("tree.json"), serde_json::to_string_pretty(&json)?)?;
    println!("\nresults written to target/bench/tree.json");
    Ok(())
}
