//! In-process trees on 127.0.0.1:0: the runtime's logic without processes or namespaces.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use vespa_node::{
    Agent, AgentKind, AgentRef, Exit, Hooks, MasterAddr, Node, NodeHandle, NodeSpec, Role,
    Security, VerbResult,
};
use vespa_proto::verbs::{Arg, VerbError, Words};
use vespa_proto::{Alert, AlertBody, Message, Psk};

const WAIT: Duration = Duration::from_secs(20);

fn fast(mut spec: NodeSpec) -> NodeSpec {
    spec.settings.heartbeat = Duration::from_millis(200);
    spec.settings.backoff_min = Duration::from_millis(20);
    spec.settings.backoff_max = Duration::from_millis(200);
    spec.flush_timeout = Duration::from_secs(3);
    spec
}

vespa_proto::verbs! {
    /// The test agent's verbs.
    enum EchoVerb {
        /// says the words back
        Echo "echo" { words: Said },
        /// always fails
        Fail "fail" {},
        /// answers that many bytes
        Big "big" { bytes: u64 },
    }
}

/// Every word left, shown as one argument.
#[derive(Debug, Clone, PartialEq)]
struct Said(Vec<String>);

impl Arg for Said {
    fn usage(field: &str) -> String {
        format!("<{field}>")
    }
    fn take(words: &mut Words<'_>, _: &'static str) -> Result<Self, VerbError> {
        Ok(Said(words.rest().into_iter().map(String::from).collect()))
    }
    fn put(&self, out: &mut Vec<String>) {
        out.extend(self.0.iter().cloned());
    }
}

struct Echo;

impl Agent for Echo {
    type Verb = EchoVerb;

    async fn call(&self, verb: EchoVerb) -> VerbResult {
        match verb {
            EchoVerb::Echo { words } => Ok(words.0.join(" ")),
            EchoVerb::Fail {} => Err("failed on purpose".into()),
            EchoVerb::Big { bytes } => Ok("x".repeat(usize::try_from(bytes).unwrap_or(0))),
        }
    }
}

/// A node running on the current runtime, with its address, handle and exit.
struct Running {
    addr: std::net::SocketAddr,
    handle: NodeHandle,
    exit: tokio::task::JoinHandle<Exit>,
    stop: tokio_util_stop::Stop,
}

mod tokio_util_stop {
    //! A tiny shutdown trigger (the test does not depend on tokio-util).
    use std::sync::Arc;
    use tokio::sync::Notify;

    #[derive(Clone, Default)]
    pub struct Stop(Arc<Notify>);
    impl Stop {
        pub fn fire(&self) {
            self.0.notify_one();
        }
        pub async fn wait(self) {
            self.0.notified().await
        }
    }
}

async fn start(
    name: &str,
    role: Role,
    master: Option<&Running>,
    psk: &Psk,
    hooks: Hooks,
    listen: Option<std::net::SocketAddr>,
) -> Running {
    start_with(name, role, master, psk, hooks, listen, |_| {}).await
}

/// [`start`] with the spec adjusted by `tweak` after [`fast`].
async fn start_with(
    name: &str,
    role: Role,
    master: Option<&Running>,
    psk: &Psk,
    hooks: Hooks,
    listen: Option<std::net::SocketAddr>,
    tweak: impl FnOnce(&mut NodeSpec),
) -> Running {
    let listener = TcpListener::bind(listen.unwrap_or("127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let master = master.map(|m| MasterAddr {
        name: m.handle.name().to_string(),
        addr: m.addr,
    });
    let mut spec = fast(NodeSpec::new(
        name,
        role,
        master,
        Security::Psk(psk.clone()),
    ));
    tweak(&mut spec);
    let node = Node::new(spec, hooks).expect("node");
    let handle = node.handle();
    let stop = tokio_util_stop::Stop::default();
    let s = stop.clone();
    let exit = tokio::spawn(async move { node.run(Some(listener), s.wait()).await.expect("run") });
    Running {
        addr,
        handle,
        exit,
        stop,
    }
}

fn collector() -> (Hooks, mpsc::UnboundedReceiver<Alert>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tx = Mutex::new(tx);
    let hooks = Hooks {
        agent: None,
        alert_handlers: vec![Arc::new(move |a: &Alert| {
            let _ = tx.lock().expect("lock").send(a.clone());
        })],
    };
    (hooks, rx)
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    vespa_testkit::wait_until_async(what, WAIT, || std::future::ready(f())).await
}

/// Binds `addr` again once it is free: a runtime dropped with `shutdown_background` closes its
/// sockets on its own worker thread, a moment after the call returns.
async fn rebind(node: &str, addr: std::net::SocketAddr) -> TcpListener {
    let what = format!("{addr} to be free for {node}");
    vespa_testkit::wait_until_async(&what, WAIT, || {
        std::future::ready(vespa_node::launch::bind(node, addr).map_err(|e| e.to_string()))
    })
    .await
}

async fn registered(parent: &Running, child: &str) {
    let h = parent.handle.clone();
    let c = child.to_string();
    wait_until(&format!("{c} to register"), move || {
        h.stats().children.contains(&c)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_climb_in_order_with_their_path_and_calls_route_down() {
    let psk = Psk::random();
    let (vo_hooks, mut at_vo) = collector();
    let vo = start("VO", Role::Vo, None, &psk, vo_hooks, None).await;
    let ho = start("HO_VM", Role::HoVm, Some(&vo), &psk, Hooks::default(), None).await;
    let agent_hooks = Hooks {
        agent: Some(AgentRef::new(Echo)),
        alert_handlers: vec![],
    };
    let agent = start(
        "agent1",
        Role::Agent(AgentKind::Bandwidth),
        Some(&ho),
        &psk,
        agent_hooks,
        None,
    )
    .await;
    registered(&ho, "agent1").await;

    let mut seqs = Vec::new();
    for i in 0..2000u64 {
        seqs.push(
            agent
                .handle
                .raise(AlertBody::Text(format!("alert {i}")))
                .expect("queued"),
        );
    }
    for (i, want) in seqs.iter().enumerate() {
        let a = tokio::time::timeout(WAIT, at_vo.recv())
            .await
            .expect("alert reaches the VO")
            .expect("channel");
        assert_eq!(a.seq, *want, "alert {i} out of order");
        assert_eq!(a.path, ["agent1", "HO_VM", "VO"]);
        assert_eq!(a.body, AlertBody::Text(format!("alert {i}")));
    }
    let h = agent.handle.clone();
    wait_until(
        "the agent's queue to drain (acks chained back)",
        move || h.stats().queue_len == 0,
    )
    .await;
    let vs = vo.handle.stats();
    assert_eq!(vs.alerts_processed, 2000);
    assert_eq!(vs.origins["agent1"].count, 2000);
    assert_eq!(vs.duplicates_dropped, 0);

    // Calls: from the VO, down two hops, and back.
    let call = |args: &[&str]| {
        vo.handle
            .call_words("call".into(), args.iter().map(|s| s.to_string()).collect())
    };
    assert_eq!(
        call(&["agent1", "echo", "hello", "tree"]).await,
        Ok("hello tree".into())
    );
    assert_eq!(
        call(&["agent1", "fail"]).await,
        Err("failed on purpose".into())
    );
    assert!(call(&["agent1", "rm"])
        .await
        .expect_err("unknown verb")
        .contains("has no verb \"rm\""));
    assert!(call(&["nobody", "help"])
        .await
        .expect_err("unknown node")
        .contains("no node named \"nobody\""));
    let help = call(&["agent1", "help"]).await.expect("help");
    assert!(
        help.contains("echo <words>") && help.contains("list_slaves"),
        "{help}"
    );
    let path: Vec<String> = serde_json::from_str(
        &vo.handle
            .call_words("find_node".into(), vec!["agent1".into()])
            .await
            .expect("found"),
    )
    .expect("json");
    assert_eq!(path, ["VO", "HO_VM", "agent1"]);
    let slaves: serde_json::Value =
        serde_json::from_str(&call(&["HO_VM", "list_slaves"]).await.expect("slaves"))
            .expect("json");
    assert_eq!(slaves[0]["name"], "agent1");
    let ho_stats: vespa_node::Stats =
        serde_json::from_str(&call(&["HO_VM", "stats"]).await.expect("stats")).expect("json");
    assert_eq!(ho_stats.alerts_forwarded, 2000);

    // Destroy from the top stops the whole tree.
    assert!(vo.handle.call_words("destroy".into(), vec![]).await.is_ok());
    vo.handle.destroy();
    for (name, r) in [("VO", vo.exit), ("HO", ho.exit), ("agent", agent.exit)] {
        let exit = tokio::time::timeout(WAIT, r)
            .await
            .unwrap_or_else(|_| panic!("{name} did not stop"))
            .expect("join");
        assert_eq!(exit, Exit::Destroyed, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_ho_loses_nothing_and_the_vo_sees_each_alert_once() {
    let psk = Psk::random();
    let (vo_hooks, mut at_vo) = collector();
    let vo = start("VO", Role::Vo, None, &psk, vo_hooks, None).await;

    // The HO runs on a runtime of its own so that dropping it kills every task and socket at
    // once, as SIGKILL would.
    let spawn_ho = |listen: Option<std::net::SocketAddr>| {
        let psk = psk.clone();
        let vo_addr = vo.addr;
        let (tx, rx) = std::sync::mpsc::channel();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("rt");
        rt.spawn(async move {
            let vo_stub = MasterAddr {
                name: "VO".into(),
                addr: vo_addr,
            };
            let listener = match listen {
                Some(a) => rebind("HO_VM", a).await,
                None => TcpListener::bind("127.0.0.1:0").await.expect("bind"),
            };
            tx.send(listener.local_addr().expect("addr")).expect("send");
            let node = Node::new(
                fast(NodeSpec::new(
                    "HO_VM",
                    Role::HoVm,
                    Some(vo_stub),
                    Security::Psk(psk),
                )),
                Hooks::default(),
            )
            .expect("node");
            let _ = node.run(Some(listener), std::future::pending()).await;
        });
        (rt, rx.recv().expect("ho addr"))
    };
    let (ho_rt, ho_addr) = spawn_ho(None);
    let mut ho_rt = Some(ho_rt);
    let master = MasterAddr {
        name: "HO_VM".into(),
        addr: ho_addr,
    };
    let agent_node = Node::new(
        fast(NodeSpec::new(
            "agent1",
            Role::Agent(AgentKind::Connections),
            Some(master),
            Security::Psk(psk.clone()),
        )),
        Hooks::default(),
    )
    .expect("agent");
    let agent = agent_node.handle();
    tokio::spawn(agent_node.run(None, std::future::pending()));

    let total = 3000u64;
    let mut first = 0;
    for i in 0..total {
        let seq = agent.raise(AlertBody::Text(i.to_string())).expect("queued");
        if i == 0 {
            first = seq;
        }
        if i == total / 2 {
            // Crash the HO mid-stream, then bring a fresh one up on the same port.
            ho_rt.take().expect("first HO").shutdown_background();
            let a = agent.clone();
            wait_until("the agent to see its uplink gone", move || {
                !a.stats().uplink_connected
            })
            .await;
        }
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (ho_rt2, _) = spawn_ho(Some(ho_addr));
    let mut got = Vec::new();
    while got.len() < total as usize {
        let a = tokio::time::timeout(WAIT, at_vo.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {total} alerts reached the VO", got.len()))
            .expect("ch");
        got.push(a.seq);
    }
    let want: Vec<u64> = (first..first + total).collect();
    assert_eq!(got, want, "every alert exactly once, in order");
    let a2 = agent.clone();
    wait_until("acks to reach the agent through the new HO", move || {
        a2.stats().queue_len == 0
    })
    .await;
    assert!(vo.handle.stats().duplicates_dropped > 0 || agent.stats().reconnects > 0);
    assert_eq!(vo.handle.stats().origins["agent1"].count, total);
    ho_rt2.shutdown_background();
    vo.stop.fire();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_counts_and_reports() {
    let psk = Psk::random();
    // The master is not there yet: alerts pile up.
    let spare = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let vo_addr = spare.local_addr().expect("addr");
    drop(spare);
    let mut spec = fast(NodeSpec::new(
        "agent1",
        Role::Agent(AgentKind::Bandwidth),
        Some(MasterAddr {
            name: "VO".into(),
            addr: vo_addr,
        }),
        Security::Psk(psk.clone()),
    ));
    spec.settings.queue_capacity = 10;
    let node = Node::new(spec, Hooks::default()).expect("node");
    let agent = node.handle();
    tokio::spawn(node.run(None, std::future::pending()));
    let results: Vec<bool> = (0..25)
        .map(|i| agent.raise(AlertBody::Text(i.to_string())).is_ok())
        .collect();
    assert_eq!(results.iter().filter(|ok| **ok).count(), 10);
    assert_eq!(agent.stats().queue_overflow, 15);

    let (vo_hooks, mut at_vo) = collector();
    let vo = start("VO", Role::Vo, None, &psk, vo_hooks, Some(vo_addr)).await;
    let mut texts = Vec::new();
    while texts.len() < 10 {
        let a = tokio::time::timeout(WAIT, at_vo.recv())
            .await
            .expect("alert")
            .expect("ch");
        if let AlertBody::Text(t) = a.body {
            texts.push(t);
        }
    }
    // Room again: the next alert is preceded by the overflow report.
    let a2 = agent.clone();
    wait_until("the queue to drain", move || a2.stats().queue_len == 0).await;
    agent.raise(AlertBody::Text("after".into())).expect("room");
    let report = tokio::time::timeout(WAIT, at_vo.recv())
        .await
        .expect("report")
        .expect("ch");
    assert_eq!(
        report.body,
        AlertBody::Text("15 alert(s) dropped at agent1: outgoing queue full (capacity 10)".into())
    );
    let after = tokio::time::timeout(WAIT, at_vo.recv())
        .await
        .expect("after")
        .expect("ch");
    assert_eq!(after.body, AlertBody::Text("after".into()));
    vo.stop.fire();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_style_shutdown_flushes_the_queue_first() {
    let psk = Psk::random();
    let (vo_hooks, mut at_vo) = collector();
    let vo = start("VO", Role::Vo, None, &psk, vo_hooks, None).await;
    let agent = start(
        "agent1",
        Role::Agent(AgentKind::Bandwidth),
        Some(&vo),
        &psk,
        Hooks::default(),
        None,
    )
    .await;
    registered(&vo, "agent1").await;
    for i in 0..500 {
        agent
            .handle
            .raise(AlertBody::Text(i.to_string()))
            .expect("queued");
    }
    agent.stop.fire();
    assert_eq!(
        tokio::time::timeout(WAIT, agent.exit)
            .await
            .expect("stops")
            .expect("join"),
        Exit::Shutdown
    );
    assert_eq!(
        agent.handle.stats().queue_len,
        0,
        "everything acknowledged before exit"
    );
    for _ in 0..500 {
        at_vo.recv().await.expect("alert");
    }
    vo.stop.fire();
    assert_eq!(
        tokio::time::timeout(WAIT, vo.exit)
            .await
            .expect("stops")
            .expect("join"),
        Exit::Shutdown
    );
}

/// Links that carry megabyte frames in a debug build on a busy machine: the default idle
/// timeout (3 s) rather than the fast one.
fn frame_sized(spec: &mut NodeSpec) {
    spec.settings.heartbeat = Duration::from_secs(1);
}

/// A frame-sized alert from a child: it fits the child's link, not the HO's (the HO adds its
/// name to the path). The HO sends a note in its place, the VO processes that note once, the
/// child's alert is acknowledged, and the link carries the next alert as if nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_that_outgrows_the_frame_one_hop_up_does_not_stall_the_link() {
    let psk = Psk::random();
    let (vo_hooks, mut at_vo) = collector();
    let vo = start_with("VO", Role::Vo, None, &psk, vo_hooks, None, frame_sized).await;
    let ho = start_with(
        "HO_VM",
        Role::HoVm,
        Some(&vo),
        &psk,
        Hooks::default(),
        None,
        frame_sized,
    )
    .await;
    let max_frame = vespa_proto::frame::DEFAULT_MAX_FRAME;

    let tcp = tokio::net::TcpStream::connect(ho.addr)
        .await
        .expect("connect");
    let cfg = vespa_proto::Config::default();
    let (stream, _) = vespa_proto::client_handshake(tcp, &psk, "agent1", &cfg)
        .await
        .expect("handshake");
    let (mut rx, mut tx) = stream.split();
    // The raw child keeps its link alive as a node would (sealing a frame-sized alert in a
    // debug build can take longer than the HO's idle timeout).
    let (to_ho, mut outgoing) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_millis(100));
        loop {
            let msg = tokio::select! {
                m = outgoing.recv() => match m { Some(m) => m, None => return },
                _ = beat.tick() => Message::Heartbeat,
            };
            tx.send(&msg)
                .await
                .expect("the HO keeps the child's link open");
        }
    });
    let send = |m: Message| to_ho.send(m).expect("writer task");
    send(Message::Register {
        name: "agent1".into(),
        kind: vespa_proto::NodeKind::Agent,
        listen_addr: None,
    });
    let alert = |seq: u64, text: String| Alert {
        origin: "agent1".into(),
        seq,
        path: vec!["agent1".into()],
        timestamp_ns: 1,
        body: AlertBody::Text(text),
    };
    // Exactly the frame limit at the child.
    let mut big = alert(1, String::new());
    let pad = max_frame - big.sealed_len() - 2; // the text's length prefix grows by 2 bytes
    big.body = AlertBody::Text("x".repeat(pad));
    assert_eq!(big.sealed_len(), max_frame);
    send(Message::Alert(big));
    send(Message::Alert(alert(2, "after".into())));

    let first = tokio::time::timeout(WAIT, at_vo.recv())
        .await
        .expect("first at the VO")
        .expect("channel");
    assert_eq!((first.origin.as_str(), first.seq), ("agent1", 1));
    assert_eq!(first.path, ["agent1", "HO_VM", "VO"]);
    let AlertBody::Oversized {
        at,
        kind,
        size,
        limit,
    } = &first.body
    else {
        panic!("{first:?}")
    };
    assert_eq!(
        (at.as_str(), kind.as_str(), *limit),
        ("HO_VM", "text", max_frame as u64)
    );
    assert!(*size > max_frame as u64, "{size}");
    let second = tokio::time::timeout(WAIT, at_vo.recv())
        .await
        .expect("second at the VO")
        .expect("channel");
    assert_eq!(
        (second.seq, &second.body),
        (2, &AlertBody::Text("after".into()))
    );

    // Both acknowledged to the child (the queue moved), over the same connection.
    let mut acked = 0;
    while acked < 2 {
        match tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("ack")
            .expect("link up")
        {
            Some(Message::Ack { origin, seq }) if origin == "agent1" => acked = acked.max(seq),
            Some(_) => {}
            None => panic!("the HO closed the child's link"),
        }
    }
    let hs = ho.handle.stats();
    assert_eq!(
        (hs.oversized, hs.reconnects, hs.queue_len),
        (1, 0, 0),
        "{hs:?}"
    );
    assert_eq!(vo.handle.stats().alerts_processed, 2);
}

/// An answer larger than a frame comes back as an error that says so, and the link stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_too_large_for_a_frame_becomes_an_error_and_the_link_stays_up() {
    let psk = Psk::random();
    let vo = start_with(
        "VO",
        Role::Vo,
        None,
        &psk,
        Hooks::default(),
        None,
        frame_sized,
    )
    .await;
    let agent_hooks = Hooks {
        agent: Some(AgentRef::new(Echo)),
        alert_handlers: vec![],
    };
    let agent = start_with(
        "agent1",
        Role::Agent(AgentKind::Bandwidth),
        Some(&vo),
        &psk,
        agent_hooks,
        None,
        frame_sized,
    )
    .await;
    registered(&vo, "agent1").await;
    let max_frame = vespa_proto::frame::DEFAULT_MAX_FRAME as u64;

    let fits = vo
        .handle
        .call(
            "agent1",
            EchoVerb::Big {
                bytes: max_frame / 2,
            },
        )
        .await;
    assert_eq!(fits.map(|s| s.len() as u64), Ok(max_frame / 2));
    let err = vo
        .handle
        .call("agent1", EchoVerb::Big { bytes: max_frame })
        .await
        .expect_err("too large");
    assert!(
        err.contains("too large to send") && err.contains("ask for less"),
        "{err}"
    );
    let after = vo
        .handle
        .call(
            "agent1",
            EchoVerb::Echo {
                words: Said(vec!["still".into(), "here".into()]),
            },
        )
        .await;
    assert_eq!(after, Ok("still here".into()));
    let st = agent.handle.stats();
    assert_eq!((st.reconnects, st.connection_errors), (0, 0), "{st:?}");
}
