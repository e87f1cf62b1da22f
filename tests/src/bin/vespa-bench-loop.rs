//! `vespa-bench-loop`: the closed loop's reaction time, with the real binaries.
//!
//! A tree on loopback (`vespa-orchestrator`: VO, HO_VM, HO_PH with a policy; `vespa-agent`: an
//! eBPF connections agent and a Floodlight SDN agent talking to an in-process Floodlight
//! stand-in). Each crossing opens `--conns` TCP connections from a fresh source address
//! (127.0.1.N) to a local server, so the kernel's connection tracker raises a ConnThreshold
//! event for a remote the policy has never seen; the VO blocks it. The VO logs every block
//! request (`policy block sent`) with the alert's timestamp (the kernel event's own time,
//! which the agent carries over from CLOCK_MONOTONIC to the Unix clock), when the VO saw the
//! alert, and when the request left (all Unix ns, one host, one clock).
//!
//! Measured, per crossing:
//! - `kernel_to_sent`: the kernel's ConnThreshold event (the crossing connection's
//!   ESTABLISHED transition) -> the block request leaving the VO (ring buffer, agent, HO_VM,
//!   the policy step, and the `mac_of` question the driver asks the agent about a new remote
//!   before deciding). Goal: p99 <= 5 ms.
//! - `crossing_connect_to_sent`: connect() number threshold+1 returning -> the request
//!   leaving, a cross-check of the above from user space (on loopback the server side's
//!   ESTABLISHED transition happens inside that call, microseconds before it returns).
//! - `seen_to_sent`: the deciding node seeing the alert -> the request leaving (driver + policy
//!   only).
//! - `sent_to_ack`: the request leaving -> the SDN agent's reply (controller round trip).
//! - `crossing_connect_to_controller`: as `crossing_connect_to_sent`, up to the controller stand-in receiving
//!   the first drop-flow request for that address: the whole reaction, the way back down
//!   the tree included.
//!
//! With `--fast-path` the connections agent sits under HO_PH with the SDN agent, and the same
//! rule runs alternately at the VO and placed `at = "HO_PH"` (rounds of 25 crossings,
//! switched by rewriting the policy file and sending SIGHUP), so both placements are measured
//! in one run on one machine state; the report gives each and the HO_PH/VO ratio. At the VO
//! the reaction climbs agent -> HO_PH -> VO and the request comes back down VO -> HO_PH ->
//! SDN agent; at HO_PH it goes agent -> HO_PH -> SDN agent.
//!
//! With `--under-flood` (rule at the VO), one thread floods the sensors with new remotes the
//! whole time: a connection from each of a stream of fresh addresses (127.64.0.0/10), opened
//! and closed at once, so the kernel's per-remote table fills with remotes that hold nothing,
//! as an attacker rotating through a /64 would make it. Connections samples run every 200 ms.
//! The report adds the flood's rate (new remotes/s) and the alerts/s the VO processed while
//! it lasted; compare `kernel_to_sent` with the run without the flood.
//!
//! With `--ledger` (rule at the VO) the same crossings are measured without and with the
//! VO's decision ledger (`run --ledger`, SQLite in WAL), in alternating rounds of 50, the VO
//! restarted between them, so a change in the machine's load falls on both; the block
//! request counts as sent once its ledger row is written. The report gives each and the
//! ledger / no-ledger ratios.
//!
//! Not measured here: block -> traffic stopped on a real switch (see
//! `tests/tests/e2e/loops/sdn.rs`, which prints attack -> drop flow present). Needs root and BTF.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use vespa_testkit::wait_until;
use vespa_tests::bench::{blocks_sent, log_fields};
use vespa_tests::daemons::floodlight_stub::FloodlightStub;
use vespa_tests::daemons::percentile;

/// Closed-loop reaction time of the VO's policy, with the real binaries.
#[derive(Parser)]
struct Args {
    /// Threshold crossings (each from a new source address).
    #[arg(long, default_value_t = 50)]
    crossings: u32,
    /// Connections opened per crossing (the agent's threshold is half of it).
    #[arg(long, default_value_t = 40)]
    conns: usize,
    /// 20 crossings (for CI smoke tests).
    #[arg(long)]
    quick: bool,
    /// Compare the rule at the VO with the same rule placed at HO_PH (the fast path):
    /// `--crossings` for each placement, in alternating rounds.
    #[arg(long)]
    fast_path: bool,
    /// Flood the sensors with new remotes while the crossings run (see above).
    #[arg(long, conflicts_with = "fast_path")]
    under_flood: bool,
    /// Compare the VO without and with its decision ledger: `--crossings` for each, in
    /// alternating rounds (the VO restarted between them).
    #[arg(long, conflicts_with_all = ["fast_path", "under_flood"])]
    ledger: bool,
}

/// The series measured with the VO's decision ledger.
const WITH_LEDGER: &str = "VO+ledger";

/// Waits until the VO at `vo_addr` reaches both agents.
fn wait_tree(rt: &tokio::runtime::Runtime, vo_addr: SocketAddr, psk: &vespa_proto::Psk) {
    wait_until("the tree", Duration::from_secs(60), || {
        rt.block_on(async {
            let mut c = vespa_node::Client::connect(
                vo_addr,
                &vespa_node::Security::Psk(psk.clone()),
                "bench",
                Some("VO"),
                Duration::from_secs(2),
            )
            .await
            .ok()?;
            let a = c.call("call", &["conns", "help"]).await.ok()?.ok()?;
            let b = c.call("call", &["sdn", "help"]).await.ok()?.ok()?;
            c.close().await;
            Some((a, b))
        })
    });
}

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let p = exe.parent().expect("target/<profile>").join(name);
    assert!(
        p.exists(),
        "{} not built (cargo build -p {name})",
        p.display()
    );
    p
}

fn spawn(
    dir: &Path,
    label: &str,
    program: &str,
    pre: &[&str],
    config: &Path,
    nodes: &[&str],
    post: &[&str],
) -> Proc {
    let log = dir.join(format!("{label}.log"));
    let mut cmd = Command::new(bin(program));
    cmd.args(["--log-format", "json"])
        .args(pre)
        .arg("run")
        .arg("--config")
        .arg(config);
    for n in nodes {
        cmd.args(["--node", n]);
    }
    cmd.args(post)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"));
    Proc {
        child: cmd.spawn().unwrap_or_else(|e| panic!("{program}: {e}")),
        log,
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Block replies: (deciding node, id) -> (sent, acked), Unix ns.
fn acks(log: &Path) -> std::collections::BTreeMap<(String, u64), (u64, u64)> {
    ["policy action done", "policy action failed"]
        .iter()
        .flat_map(|m| log_fields(log, m))
        .filter(|f| f["verb"] == "block_hackers")
        .filter_map(|f| {
            Some((
                (f["node"].as_str()?.to_string(), f["id"].as_u64()?),
                (f["sent_ns"].as_u64()?, f["acked_ns"].as_u64()?),
            ))
        })
        .collect()
}

/// The policy: one rule blocking a remote above `above` connections, run `at` that node
/// (`None`: the VO).
fn policy_text(at: Option<&str>, above: usize) -> String {
    let at = at.map(|n| format!("at = \"{n}\"\n")).unwrap_or_default();
    format!(
        "[actuators]\nsdn = \"sdn\"\nlibvirt = \"lv\"\nquarantine = \"q\"\nav = \"av\"\nhypervisor = \"hy\"\n\n[[rule]]\nname = \"conn-flood\"\n{at}metric = \"established\"\nkey = \"remote\"\naggregate = \"max\"\nwindow_s = 1\nabove = {above}\nbelow = 1\ncalm_s = 3600\ncooldown_s = 1\nverify_s = 0\nladder = [{{ action = \"block\", ttl_s = 3600 }}]\n"
    )
}

/// The reaction times of one placement of the rule.
#[derive(Default)]
struct Series {
    /// Deciding node (`VO` or `HO_PH`).
    node: String,
    cross_to_sent: Vec<Duration>,
    cross_to_controller: Vec<Duration>,
    kernel_to_sent: Vec<Duration>,
    seen_to_sent: Vec<Duration>,
    sent_to_ack: Vec<Duration>,
}

fn report(name: &str, v: &mut [Duration]) -> serde_json::Value {
    v.sort();
    if v.is_empty() {
        println!("{name}: no sample");
        return serde_json::json!(null);
    }
    let (p50, p99, max) = (
        percentile(v, 50.0),
        percentile(v, 99.0),
        *v.last().expect("max"),
    );
    println!(
        "{name}: n={} p50={:.3} ms p99={:.3} ms max={:.3} ms",
        v.len(),
        ms(p50),
        ms(p99),
        ms(max)
    );
    serde_json::json!({ "n": v.len(), "p50_ms": ms(p50), "p99_ms": ms(p99), "max_ms": ms(max) })
}

impl Series {
    fn report(&mut self) -> serde_json::Value {
        let at = &self.node;
        println!("-- the rule at {at}");
        serde_json::json!({
            "at": at,
            "crossing_connect_to_sent": report(&format!("threshold-crossing connect() returned (~ the kernel event) -> block request leaves {at}"), &mut self.cross_to_sent),
            "crossing_connect_to_controller": report("threshold-crossing connect() returned -> the controller receives the block", &mut self.cross_to_controller),
            "kernel_to_sent": report(&format!("kernel event -> block request leaves {at}"), &mut self.kernel_to_sent),
            "seen_to_sent": report(&format!("{at} sees the alert -> block request leaves {at}"), &mut self.seen_to_sent),
            "sent_to_ack": report(&format!("block request sent -> SDN agent's reply at {at}"), &mut self.sent_to_ack),
        })
    }
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
}

/// Opens `n` connections from `src`; returns them and when connect() number `mark` (1-based)
/// returned (Unix ns).
fn connect_from(src: Ipv4Addr, to: SocketAddr, n: usize, mark: usize) -> (Vec<TcpStream>, u64) {
    let mut at = 0;
    let v = vespa_tests::traffic::tcp_connect_from(IpAddr::V4(src), to, n, |i| {
        if i == mark {
            at = unix_ns();
        }
    });
    (v, at)
}

/// A thread opening and closing one connection from each of a stream of fresh source
/// addresses until stopped.
struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
    started: std::time::Instant,
}

impl Flood {
    fn start(to: SocketAddr) -> Flood {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let [_, b, c, d] = (0x0040_0000u32 + (n as u32 % 0x003f_ffff)).to_be_bytes();
                let src = Ipv4Addr::new(127, b, c, d.max(1));
                let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None);
                if let Ok(sock) = sock {
                    let bound = sock.bind(&SocketAddr::new(IpAddr::V4(src), 0).into());
                    if bound.is_ok() && sock.connect(&to.into()).is_ok() {
                        n += 1;
                    }
                }
            }
            n
        });
        Flood {
            stop,
            thread,
            started: std::time::Instant::now(),
        }
    }

    /// Stops the flood: how many remotes it used, in how many seconds.
    fn stop(self) -> (u64, f64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let n = self.thread.join().expect("flood thread");
        (n, self.started.elapsed().as_secs_f64())
    }
}

/// Alerts the VO has processed so far (its `stats`).
fn vo_processed(rt: &tokio::runtime::Runtime, vo: SocketAddr, psk: &vespa_proto::Psk) -> u64 {
    rt.block_on(async {
        let security = vespa_node::Security::Psk(psk.clone());
        let mut c =
            vespa_node::Client::connect(vo, &security, "bench", Some("VO"), Duration::from_secs(5))
                .await
                .expect("the VO");
        let stats = c.call("stats", &[]).await.expect("link").expect("stats");
        c.close().await;
        let stats: serde_json::Value = serde_json::from_str(&stats).expect("json");
        stats["alerts_processed"].as_u64().unwrap_or(0)
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let mut args = Args::parse();
    if args.quick {
        args.crossings = args.crossings.min(20);
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "vespa-bench-loop needs root (the eBPF connections agent)"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let stub = rt.block_on(FloodlightStub::start());
    let dir = tempfile::Builder::new()
        .prefix("vespa-bench-loop")
        .tempdir()
        .expect("dir");
    let key = dir.path().join("psk");
    let psk = vespa_proto::key::generate(&key, false).expect("keygen");
    let threshold = args.conns / 2;
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let topo = format!(
        "[settings]\nkey_file = \"psk\"\nsample_interval_ms = {}\n\n[[machine]]\nname = \"lo\"\naddress = \"127.0.0.1\"\n\n\
         [[node]]\nname = \"VO\"\nkind = \"vo\"\nlocation = \"lo\"\nport = {}\n\n\
         [[node]]\nname = \"HO_VM\"\nkind = \"ho_vm\"\nlocation = \"lo\"\nmaster = \"VO\"\nport = {}\n\n\
         [[node]]\nname = \"HO_PH\"\nkind = \"ho_ph\"\nlocation = \"lo\"\nmaster = \"VO\"\nport = {}\n\n\
         [[node]]\nname = \"conns\"\nkind = \"agent_connections\"\nlocation = \"lo\"\nmaster = \"{}\"\nport = {}\n\n\
         [[node]]\nname = \"sdn\"\nkind = \"agent_controller_floodlight\"\nlocation = \"lo\"\nmaster = \"HO_PH\"\nport = {}\n[node.params]\nurl = \"{}\"\ndefault_ttl_s = \"none\"\n",
        if args.under_flood { 200 } else { 600_000 },
        ports[0],
        ports[1],
        ports[2],
        if args.fast_path { "HO_PH" } else { "HO_VM" },
        ports[3],
        ports[4],
        stub.url()
    );
    let config = dir.path().join("topology.toml");
    std::fs::write(&config, topo).expect("topology");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, policy_text(None, threshold - 1)).expect("policy");
    let p = policy.to_string_lossy().into_owned();
    let ledger_file = dir.path().join("ledger.db").to_string_lossy().into_owned();
    let spawn_vo = |label: &str, ledger: bool| {
        let mut post = vec!["--policy", p.as_str(), "--http", "off"];
        if ledger {
            post.extend(["--ledger", ledger_file.as_str()]);
        }
        spawn(
            dir.path(),
            label,
            "vespa-orchestrator",
            &[],
            &config,
            &["VO", "HO_VM", "HO_PH"],
            &post,
        )
    };
    let mut vo = spawn_vo("vo", false);
    // Every VO's log, with the series it measured (`--ledger` restarts the VO).
    let mut logs: Vec<(String, PathBuf)> = vec![("VO".into(), vo.log.clone())];
    let thr = threshold.to_string();
    let _agents = spawn(
        dir.path(),
        "agents",
        "vespa-agent",
        &["--mode", "ebpf", "--conn-threshold", &thr],
        &config,
        &["conns", "sdn"],
        &[],
    );
    // Ready when the VO can reach both agents.
    let vo_addr: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().expect("addr");
    wait_tree(&rt, vo_addr, &psk);

    let server = TcpListener::bind("127.0.0.1:0").expect("server");
    let to = server.local_addr().expect("addr");
    let accepting = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in server.incoming() {
            match s {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
            if held.len() > 4096 {
                held.drain(..2048);
            }
        }
    });
    drop(accepting); // detached: ends with the process
                     // Rounds: the VO's placement only, or VO / HO_PH alternating in rounds of ROUND
                     // crossings, so that a change in the machine's load falls on both.
    let flood = args.under_flood.then(|| Flood::start(to));
    let processed_before = flood.as_ref().map(|_| vo_processed(&rt, vo_addr, &psk));
    const ROUND: u32 = 25;
    let rounds: Vec<(&str, u32)> = if args.fast_path {
        let sizes =
            (0..args.crossings.div_ceil(ROUND)).map(|i| ROUND.min(args.crossings - i * ROUND));
        sizes.flat_map(|n| [("VO", n), ("HO_PH", n)]).collect()
    } else if args.ledger {
        let round = 2 * ROUND;
        let sizes =
            (0..args.crossings.div_ceil(round)).map(|i| round.min(args.crossings - i * round));
        sizes.flat_map(|n| [("VO", n), (WITH_LEDGER, n)]).collect()
    } else {
        vec![("VO", args.crossings)]
    };
    let mut series: Vec<Series> = ["VO", "HO_PH", WITH_LEDGER]
        .iter()
        .map(|n| Series {
            node: n.to_string(),
            ..Series::default()
        })
        .collect();
    let mut sources =
        (0u32..).map(|i| Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8));
    let mut placed_at = "VO";
    for (at, n) in rounds {
        if args.ledger && at != placed_at {
            // The VO restarted with or without its ledger; the agents reconnect.
            drop(vo);
            vo = spawn_vo(&format!("vo-{}", logs.len()), at == WITH_LEDGER);
            logs.push((at.to_string(), vo.log.clone()));
            wait_tree(&rt, vo_addr, &psk);
            placed_at = at;
        } else if at != placed_at {
            let reloads = |log: &Path| {
                log_fields(log, "SIGHUP: policy reloaded")
                    .iter()
                    .filter(|f| f["node"] == at)
                    .count()
            };
            let before = reloads(&vo.log);
            std::fs::write(
                &policy,
                policy_text((at != "VO").then_some(at), threshold - 1),
            )
            .expect("policy");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(vo.child.id() as i32),
                nix::sys::signal::Signal::SIGHUP,
            )
            .expect("SIGHUP");
            wait_until("the policy reload", Duration::from_secs(10), || {
                (reloads(&vo.log) > before).then_some(())
            });
            // The previous placement lets go of its blocks (its rule is gone): let that pass.
            std::thread::sleep(Duration::from_millis(500));
            placed_at = at;
        }
        let s = series.iter_mut().find(|s| s.node == at).expect("series");
        // The node whose log names the block: the series' name but for the ledger's.
        let node = if at == WITH_LEDGER { "VO" } else { at };
        for _ in 0..n {
            let src = sources.next().expect("addresses");
            let (conns, crossed) = connect_from(src, to, args.conns, threshold + 1);
            let target = IpAddr::V4(src).to_string();
            // Waiting must not load the machine it measures: the in-process stand-in is
            // watched first (cheap); the log, parsed whole, only once the block has arrived.
            let at_controller = wait_until(
                &format!("the controller's block of {target}"),
                Duration::from_secs(10),
                || {
                    stub.requests_timed()
                        .into_iter()
                        .find(|(_, r)| {
                            r.method == "POST"
                                && r.body.as_ref().is_some_and(|b| {
                                    b["ipv4_src"] == target.as_str()
                                        || b["ipv4_dst"] == target.as_str()
                                })
                        })
                        .map(|(t, _)| t)
                },
            );
            let (raised, seen, sent) = wait_until(
                &format!("the block of {target}"),
                Duration::from_secs(10),
                || {
                    blocks_sent(&vo.log)
                        .into_iter()
                        .find(|b| b.target == target && b.node == node)
                        .map(|b| (b.raised_ns, b.seen_ns, b.sent_ns))
                },
            );
            s.cross_to_controller
                .push(Duration::from_nanos(at_controller.saturating_sub(crossed)));
            if raised > 0 {
                s.cross_to_sent
                    .push(Duration::from_nanos(sent.saturating_sub(crossed)));
                s.kernel_to_sent
                    .push(Duration::from_nanos(sent.saturating_sub(raised)));
                s.seen_to_sent
                    .push(Duration::from_nanos(sent.saturating_sub(seen)));
            }
            drop(conns);
        }
    }
    let flooded = flood.map(|f| {
        let (remotes, secs) = f.stop();
        let processed = vo_processed(&rt, vo_addr, &psk) - processed_before.unwrap_or(0);
        let (rate, alerts) = (remotes as f64 / secs, processed as f64 / secs);
        println!("flood: {remotes} new remotes in {secs:.1} s ({rate:.0}/s); the VO processed {alerts:.1} alerts/s meanwhile");
        serde_json::json!({ "new_remotes": remotes, "seconds": secs, "new_remotes_per_s": rate, "vo_alerts_per_s": alerts })
    });
    if args.ledger {
        // Each VO's replies are in its own log (ids restart with the process).
        for (name, log) in &logs {
            let s = series.iter_mut().find(|s| &s.node == name).expect("series");
            for (sent, ack) in acks(log).into_values() {
                s.sent_to_ack
                    .push(Duration::from_nanos(ack.saturating_sub(sent)));
            }
        }
    } else {
        let want: usize = series.iter().map(|s| s.kernel_to_sent.len()).sum();
        let acked = wait_until("every block's reply", Duration::from_secs(30), || {
            let a = acks(&vo.log);
            (a.len() >= want).then_some(a)
        });
        for ((node, _), (sent, ack)) in acked {
            if let Some(s) = series.iter_mut().find(|s| s.node == node) {
                s.sent_to_ack
                    .push(Duration::from_nanos(ack.saturating_sub(sent)));
            }
        }
    }
    let vo_series = series[0].report();
    let goal = !series[0].kernel_to_sent.is_empty()
        && percentile(&series[0].kernel_to_sent, 99.0) <= Duration::from_millis(5);
    println!(
        "goal p99 <= 5 ms (kernel event -> request sent, rule at the VO): {}",
        if goal { "met" } else { "NOT met" }
    );
    let mut out = serde_json::json!({ "crossings": args.crossings, "conns_per_crossing": args.conns, "goal_p99_5ms": goal });
    if let Some(f) = flooded {
        out["flood"] = f;
    }
    if args.ledger {
        let l = series[2].report();
        let goal_l = !series[2].kernel_to_sent.is_empty()
            && percentile(&series[2].kernel_to_sent, 99.0) <= Duration::from_millis(5);
        println!(
            "goal p99 <= 5 ms with the ledger: {}",
            if goal_l { "met" } else { "NOT met" }
        );
        let mut ratios = serde_json::Map::new();
        for k in [
            "kernel_to_sent",
            "seen_to_sent",
            "crossing_connect_to_controller",
        ] {
            for p in ["p50_ms", "p99_ms"] {
                let r = l[k][p]
                    .as_f64()
                    .zip(vo_series[k][p].as_f64())
                    .filter(|(_, v)| *v > 0.0)
                    .map(|(l, v)| l / v);
                println!(
                    "ledger / no ledger, {k} {p}: {}",
                    r.map_or("n/a".into(), |r| format!("{r:.2}x"))
                );
                ratios.insert(format!("{k}_{p}"), serde_json::json!(r));
            }
        }
        out["goal_p99_5ms_with_ledger"] = goal_l.into();
        out["vo"] = vo_series;
        out["vo_ledger"] = l;
        out["ratio_ledger_over_none"] = ratios.into();
    } else if args.fast_path {
        let ho_series = series[1].report();
        let ratio = |k: &str, p: &str| {
            let (h, v) = (ho_series[k][p].as_f64(), vo_series[k][p].as_f64());
            h.zip(v).filter(|(_, v)| *v > 0.0).map(|(h, v)| h / v)
        };
        let mut ratios = serde_json::Map::new();
        for k in [
            "crossing_connect_to_sent",
            "crossing_connect_to_controller",
            "kernel_to_sent",
            "sent_to_ack",
        ] {
            for p in ["p50_ms", "p99_ms"] {
                let r = ratio(k, p);
                println!(
                    "HO_PH / VO, {k} {p}: {}",
                    r.map_or("n/a".into(), |r| format!("{r:.2}x"))
                );
                ratios.insert(format!("{k}_{p}"), serde_json::json!(r));
            }
        }
        out["vo"] = vo_series;
        out["ho_ph"] = ho_series;
        out["ratio_ho_ph_over_vo"] = ratios.into();
    } else {
        for k in [
            "crossing_connect_to_sent",
            "crossing_connect_to_controller",
            "kernel_to_sent",
            "seen_to_sent",
            "sent_to_ack",
        ] {
            out[k] = vo_series[k].clone();
        }
    }
    let path = bin("vespa-bench-loop")
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("bench"))
        .unwrap_or_else(|| PathBuf::from("."));
    let _ = std::fs::create_dir_all(&path);
    let file = path.join(if args.ledger {
        "loop_ledger.json"
    } else if args.fast_path {
        "loop_fastpath.json"
    } else if args.under_flood {
        "loop_flood.json"
    } else {
        "loop.json"
    });
    let _ = std::fs::write(&file, serde_json::to_string_pretty(&out).expect("json"));
    println!("written to {}", file.display());
}
