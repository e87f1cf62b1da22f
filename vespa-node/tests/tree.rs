//! In-process trees on 127.0.0.1:0: the runtime's logic without processes or namespaces.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use vespa_node::{
    Agent, AgentKind, AgentRef, ChildSpec, Exit, Hooks, MasterAddr, Node, NodeHandle, NodeSpec,
    Role, Security, VerbResult,
};
use vespa_proto::verbs::{Arg, VerbError, Words};
use vespa_proto::{Alert, AlertBody, Message, NodeEvent, NodeKind, Psk};

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
        /// never answers
        Wait "wait" {},
        /// changes something (a command)
        Poke "poke" [Command] {},
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
            EchoVerb::Wait {} => std::future::pending().await,
            EchoVerb::Poke {} => Ok("poked".into()),
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

/// The alerts the VO processes, but for the masters' notes of nodes coming and going
/// ([`AlertBody::Node`], which [`node_events`] collects).
fn collector() -> (Hooks, mpsc::UnboundedReceiver<Alert>) {
    let (hooks, rx, _) = collector_with_node_events();
    (hooks, rx)
}

/// As [`collector`], with the node events on a channel of their own.
fn collector_with_node_events() -> (
    Hooks,
    mpsc::UnboundedReceiver<Alert>,
    mpsc::UnboundedReceiver<Alert>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ntx, nrx) = mpsc::unbounded_channel();
    let tx = Mutex::new((tx, ntx));
    let hooks = Hooks {
        agent: None,
        alert_handlers: vec![Arc::new(move |a: &Arc<Alert>| {
            let (tx, ntx) = &*tx.lock().expect("lock");
            let to = if matches!(a.body, AlertBody::Node { .. }) {
                ntx
            } else {
                tx
            };
            let _ = to.send(Alert::clone(a));
        })],
    };
    (hooks, rx, nrx)
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
    // And the two registrations (HO_VM at the VO, agent1 at HO_VM), noted as alerts.
    assert_eq!(vs.alerts_processed, 2002);
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
    // The agent's and the HO's own note of agent1's registration.
    assert_eq!(ho_stats.alerts_forwarded, 2001);

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

/// A child that speaks the protocol by hand (a hostile or broken one): handshake, `Register`,
/// then whatever the test sends, with heartbeats in between as a node would send them.
struct RawChild {
    rx: vespa_proto::SecureReader<tokio::io::ReadHalf<tokio::net::TcpStream>>,
    tx: mpsc::UnboundedSender<Message>,
}

impl RawChild {
    async fn register(at: std::net::SocketAddr, psk: &Psk, name: &str, kind: NodeKind) -> RawChild {
        RawChild::register_beating(at, psk, name, kind, Duration::from_millis(100)).await
    }

    /// A child that registers, then sends nothing unless the test says so: no heartbeat
    /// (for an hour).
    async fn register_silent(
        at: std::net::SocketAddr,
        psk: &Psk,
        name: &str,
        kind: NodeKind,
    ) -> RawChild {
        RawChild::register_beating(at, psk, name, kind, Duration::from_secs(3600)).await
    }

    async fn register_beating(
        at: std::net::SocketAddr,
        psk: &Psk,
        name: &str,
        kind: NodeKind,
        every: Duration,
    ) -> RawChild {
        let tcp = tokio::net::TcpStream::connect(at).await.expect("connect");
        let cfg = vespa_proto::Config::default();
        let (stream, _) = vespa_proto::client_handshake(tcp, psk, name, &cfg)
            .await
            .expect("handshake");
        let (rx, mut w) = stream.split();
        let (tx, mut outgoing) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                let msg = tokio::select! {
                    m = outgoing.recv() => match m { Some(m) => m, None => return },
                    _ = beat.tick() => Message::Heartbeat,
                };
                if w.send(&msg).await.is_err() {
                    return; // the master closed the link: `closed` tells the test
                }
            }
        });
        let child = RawChild { rx, tx };
        child.send(Message::Register {
            name: name.into(),
            kind,
            listen_addr: None,
        });
        child
    }

    fn send(&self, m: Message) {
        let _ = self.tx.send(m);
    }

    /// Calls `verb` at the master and waits for its reply.
    async fn call(&mut self, id: u64, verb: &str, args: &[&str]) -> Result<String, String> {
        self.send(Message::Call {
            id,
            verb: verb.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
        });
        loop {
            match tokio::time::timeout(WAIT, self.rx.recv::<Message>()).await {
                Ok(Ok(Some(Message::Reply { id: got, result }))) if got == id => return result,
                Ok(Ok(Some(_))) => {}
                other => panic!("no reply to {verb}: {other:?}"),
            }
        }
    }

    /// Waits until the master ends the link (failing after `WAIT`).
    async fn closed(mut self) {
        loop {
            match tokio::time::timeout(WAIT, self.rx.recv::<Message>()).await {
                Err(_) => panic!("the master kept the link open"),
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None) | Err(_)) => return,
            }
        }
    }
}

fn text_alert(origin: &str, seq: u64, path: &[&str], text: &str) -> Alert {
    Alert {
        origin: origin.into(),
        seq,
        path: path.iter().map(|s| s.to_string()).collect(),
        timestamp_ns: 1,
        body: AlertBody::Text(text.into()),
    }
}

/// The topology decides who is a child, of which kind, and which origins each may speak for.
/// A key holder who tries anything else loses its connection and changes nothing: the VO's
/// de-duplication is not poisoned and no alert it forged is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topology_decides_who_registers_and_for_which_origins_it_speaks() {
    let psk = Psk::random();
    let lo: std::net::IpAddr = [127, 0, 0, 1].into();
    let child = |kind, subtree: &[&str]| ChildSpec {
        kind,
        subtree: subtree.iter().map(|s| s.to_string()).collect(),
        addr: Some(lo),
    };
    let (vo_hooks, mut at_vo) = collector();
    let vo_children = [(
        "HO_VM".to_string(),
        child(NodeKind::HoVm, &["HO_VM", "agent1"]),
    )];
    let vo = start_with("VO", Role::Vo, None, &psk, vo_hooks, None, |s| {
        s.children = Some(vo_children.into());
    })
    .await;
    let ho_children = [("agent1".to_string(), child(NodeKind::Agent, &["agent1"]))];
    let ho = start_with(
        "HO_VM",
        Role::HoVm,
        Some(&vo),
        &psk,
        Hooks::default(),
        None,
        |s| {
            s.children = Some(ho_children.into());
        },
    )
    .await;
    registered(&vo, "HO_VM").await;

    // Not a child of the HO in the topology; the right name with the wrong kind; a child of
    // the HO trying to register directly at the VO.
    RawChild::register(ho.addr, &psk, "stranger", NodeKind::Agent)
        .await
        .closed()
        .await;
    RawChild::register(ho.addr, &psk, "agent1", NodeKind::HoPh)
        .await
        .closed()
        .await;
    RawChild::register(vo.addr, &psk, "agent1", NodeKind::Agent)
        .await
        .closed()
        .await;
    // Alerts for origins outside its subtree: the VO, another node, a path that does not
    // start at the origin.
    for (origin, path) in [
        ("VO", vec!["VO", "agent1"]),
        ("Agent_Controller", vec!["Agent_Controller", "agent1"]),
        ("agent1", vec!["HO_VM", "agent1"]),
    ] {
        let forger = RawChild::register(ho.addr, &psk, "agent1", NodeKind::Agent).await;
        forger.send(Message::Alert(text_alert(
            origin,
            u64::MAX - 1,
            &path,
            "forged",
        )));
        forger.closed().await;
    }

    // The real agent1 is heard, from a low sequence number: nothing forged got in ahead of it.
    let agent = RawChild::register(ho.addr, &psk, "agent1", NodeKind::Agent).await;
    agent.send(Message::Alert(text_alert("agent1", 5, &["agent1"], "real")));
    let a = tokio::time::timeout(WAIT, at_vo.recv())
        .await
        .expect("at the VO")
        .expect("channel");
    assert_eq!(
        (a.origin.as_str(), a.seq, &a.body),
        ("agent1", 5, &AlertBody::Text("real".into()))
    );
    let vs = vo.handle.stats();
    assert_eq!(vs.origins["agent1"].count, 1, "{vs:?}");
    // Besides agent1, only the masters that noted children coming and going.
    assert_eq!(
        vs.origins.keys().collect::<Vec<_>>(),
        ["HO_VM", "VO", "agent1"],
        "no forged origin is remembered"
    );
    let hs = ho.handle.stats();
    assert_eq!(hs.connection_errors, 5, "one per refused child: {hs:?}");
    assert_eq!(vs.connection_errors, 1, "{vs:?}");
    assert_eq!(hs.children, ["agent1"]);
    // A child reads, but never commands its master or anything through it.
    let mut agent = agent;
    assert!(agent
        .call(1, "stats", &[])
        .await
        .expect("a read")
        .contains("HO_VM"));
    for (id, verb, args) in [
        (2, "destroy", vec![]),
        (3, "call", vec!["HO_VM", "destroy"]),
        (
            4,
            "call",
            vec!["HO_VM", "call", "VO", "policy_release", "10.0.0.1"],
        ),
        (5, "call", vec!["agent1", "cut_link", "vm1"]),
    ] {
        let err = agent.call(id, verb, &args).await.expect_err("refused");
        assert!(
            err.contains("may only be called by HO_VM's master chain"),
            "{verb} {args:?}: {err}"
        );
    }
    assert_eq!(ho.handle.stats().calls_refused, 4);
    assert_eq!(
        vo.handle.stats().children,
        ["HO_VM"],
        "nothing was destroyed"
    );
    // Calls go where the topology says, whatever a child claims.
    let err = vo
        .handle
        .call_words("call".into(), vec!["stranger".into(), "help".into()])
        .await;
    assert!(err
        .expect_err("unknown")
        .contains("no node named \"stranger\""));
    drop(agent);
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

    let mut child = RawChild::register(ho.addr, &psk, "agent1", NodeKind::Agent).await;
    let send = |m: Message| child.send(m);
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
        match tokio::time::timeout(WAIT, child.rx.recv())
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
    assert_eq!(vo.handle.stats().origins["agent1"].count, 2);
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

/// A flood of silent connections from one address cannot keep a child out: the address gets
/// its share of the handshake slots, the child's address has slots of its own, and a silent
/// connection is closed after a second. 300 attackers reconnect the moment they are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_one_address_does_not_lock_a_child_out() {
    let psk = Psk::random();
    let lo: std::net::IpAddr = [127, 0, 0, 1].into();
    let ho_spec = ChildSpec {
        kind: NodeKind::HoVm,
        subtree: ["HO_VM".to_string()].into(),
        addr: Some(lo),
    };
    let vo = start_with("VO", Role::Vo, None, &psk, Hooks::default(), None, |s| {
        s.children = Some([("HO_VM".to_string(), ho_spec)].into());
    })
    .await;
    let closed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let attackers: Vec<_> = (0..300)
        .map(|_| {
            let (to, closed) = (vo.addr, closed.clone());
            tokio::spawn(async move {
                loop {
                    let s = tokio::net::TcpSocket::new_v4().expect("socket");
                    s.bind("127.0.0.2:0".parse().expect("addr")).expect("bind");
                    let Ok(mut c) = s.connect(to).await else {
                        continue;
                    };
                    let mut buf = [0u8; 64];
                    // Says nothing; waits for the VO to close the connection, then comes back.
                    let _ = tokio::io::AsyncReadExt::read(&mut c, &mut buf).await;
                    closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    let c = closed.clone();
    wait_until("the flood to be refused and re-opened", move || {
        c.load(std::sync::atomic::Ordering::Relaxed) > 600
    })
    .await;

    let _ho = start("HO_VM", Role::HoVm, Some(&vo), &psk, Hooks::default(), None).await;
    registered(&vo, "HO_VM").await;
    assert!(vo.handle.stats().connection_errors > 600);
    for a in attackers {
        a.abort();
    }
}

/// One connection cannot make a node answer more than 64 calls at once, nor hold its writer
/// by not reading: the calls beyond are refused, and a peer that stops reading its replies
/// loses its connection after three heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_can_neither_pile_up_calls_nor_stall_the_writer() {
    let psk = Psk::random();
    let hooks = Hooks {
        agent: Some(AgentRef::new(Echo)),
        alert_handlers: vec![],
    };
    let vo = start("VO", Role::Vo, None, &psk, hooks, None).await;

    let mut piler = RawChild::register(vo.addr, &psk, "piler", NodeKind::Agent).await;
    for id in 1..=100 {
        piler.send(Message::Call {
            id,
            verb: "wait".into(),
            args: vec![],
        });
    }
    let mut refused = 0;
    while refused < 36 {
        match tokio::time::timeout(WAIT, piler.rx.recv::<Message>()).await {
            Ok(Ok(Some(Message::Reply { result: Err(e), .. }))) => {
                assert!(e.contains("64 calls of this connection"), "{e}");
                refused += 1;
            }
            Ok(Ok(Some(_))) => {}
            other => panic!("refusals expected, got {other:?}"),
        }
    }
    assert_eq!(vo.handle.stats().calls_refused, 36);

    // Asks for 40 MB of replies and reads none of them; it keeps sending heartbeats.
    let stalled = RawChild::register(vo.addr, &psk, "stalled", NodeKind::Agent).await;
    registered(&vo, "stalled").await;
    for id in 1..=40 {
        stalled.send(Message::Call {
            id,
            verb: "big".into(),
            args: vec!["1000000".into()],
        });
    }
    let h = vo.handle.clone();
    wait_until("the VO to drop the peer that does not read", move || {
        !h.stats().children.contains(&"stalled".to_string())
    })
    .await;
    assert!(
        vo.handle.stats().children.contains(&"piler".to_string()),
        "the others stay"
    );
    drop((piler, stalled));
}

fn keys(own: &[&Psk], root: &[&Psk]) -> Security {
    let ring = vespa_node::KeyRing {
        own: own.iter().map(|k| (*k).clone()).collect(),
        root: root.iter().map(|k| (*k).clone()).collect(),
    };
    Security::Keys(Arc::new(ring))
}

async fn connect_as(
    at: std::net::SocketAddr,
    security: &Security,
    name: &str,
    via: &str,
) -> Result<vespa_node::Client, String> {
    vespa_node::Client::connect(at, security, name, Some(via), WAIT)
        .await
        .map_err(|e| e.to_string())
}

/// With a key per node the handshake proves the name: a node's key opens only its own name
/// with its own master, an operator's key only at the VO, and what a caller may do follows
/// from who it proved to be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_node_keys_prove_names_and_decide_what_a_caller_may_do() {
    use vespa_proto::key::derive;
    let root = Psk::random();
    let k_vo = derive(&root, "VO");
    let k_ho = derive(&k_vo, "HO_VM");
    let k_agent = derive(&k_ho, "agent1");
    let vo = start_with("VO", Role::Vo, None, &root, Hooks::default(), None, |s| {
        s.security = keys(&[&k_vo], &[&root]);
    })
    .await;
    let ho = start_with(
        "HO_VM",
        Role::HoVm,
        Some(&vo),
        &root,
        Hooks::default(),
        None,
        |s| {
            s.security = keys(&[&k_ho], &[]);
        },
    )
    .await;
    let agent_hooks = Hooks {
        agent: Some(AgentRef::new(Echo)),
        alert_handlers: vec![],
    };
    let agent = start_with(
        "agent1",
        Role::Agent(AgentKind::Bandwidth),
        Some(&ho),
        &root,
        agent_hooks,
        None,
        |s| {
            s.security = keys(&[&k_agent], &[]);
        },
    )
    .await;
    registered(&vo, "HO_VM").await;
    registered(&ho, "agent1").await;
    let seq = agent
        .handle
        .raise(AlertBody::Text("keyed".into()))
        .expect("queued");
    let h = vo.handle.clone();
    wait_until("the agent's alert at the VO", move || {
        h.stats()
            .origins
            .get("agent1")
            .is_some_and(|o| o.highest == seq)
    })
    .await;

    // The agent's key opens no other name, nor its own name anywhere but at its master.
    let agent_key = keys(&[&k_agent], &[]);
    let wrong = connect_as(vo.addr, &agent_key, "HO_VM", "VO")
        .await
        .err()
        .expect("refused");
    assert!(wrong.contains("key"), "{wrong}");
    assert!(
        connect_as(vo.addr, &agent_key, "agent1", "VO")
            .await
            .is_err(),
        "not the VO's child"
    );
    // At its master it may read, and not command.
    let mut as_agent = connect_as(ho.addr, &agent_key, "agent1", "HO_VM")
        .await
        .expect("at its master");
    assert!(as_agent.call("stats", &[]).await.expect("link").is_ok());
    let refused = as_agent
        .call("call", &["agent1", "cut_link", "vm1"])
        .await
        .expect("link");
    assert!(refused
        .expect_err("a command")
        .contains("master chain or an operator"));
    // Its own agent's commands are commands too, at the node itself.
    let child_of_agent = keys(&[&derive(&k_agent, "x")], &[]);
    let mut at_agent = connect_as(agent.addr, &child_of_agent, "x", "agent1")
        .await
        .expect("a key the agent derives");
    let refused = at_agent.call("poke", &[]).await.expect("link");
    assert!(refused
        .expect_err("a command")
        .contains("master chain or an operator"));
    // An operator's key, from the root, commands at the VO; a made-up operator gets nothing.
    let alice = keys(&[&vespa_node::launch::operator_key(&root, "alice")], &[]);
    let mut op = connect_as(vo.addr, &alice, "operator:alice", "VO")
        .await
        .expect("operator");
    let passed = op
        .call("call", &["agent1", "cut_link", "vm1"])
        .await
        .expect("link");
    assert!(
        passed
            .expect_err("not the agent's verb")
            .contains("has no verb"),
        "let through"
    );
    assert_eq!(
        op.call("call", &["agent1", "poke"]).await.expect("link"),
        Ok("poked".into())
    );
    let mallory = keys(&[&Psk::random()], &[]);
    assert!(connect_as(vo.addr, &mallory, "operator:mallory", "VO")
        .await
        .is_err());
    assert!(
        connect_as(vo.addr, &alice, "operator:mallory", "VO")
            .await
            .is_err(),
        "alice's key is hers"
    );
}

/// A key rotation: during the overlap a master accepts children on the old keys and on the
/// new ones; once it has dropped the old key, a child still on it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_key_rotation_old_and_new_keys_both_work_then_only_the_new() {
    use vespa_proto::key::derive;
    let (old_root, new_root) = (Psk::random(), Psk::random());
    let (old_vo, new_vo) = (derive(&old_root, "VO"), derive(&new_root, "VO"));
    let overlap = keys(&[&new_vo, &old_vo], &[]);
    let vo = start_with(
        "VO",
        Role::Vo,
        None,
        &new_root,
        Hooks::default(),
        None,
        |s| {
            s.security = overlap;
        },
    )
    .await;
    let old_ho = derive(&old_vo, "HO_VM");
    let new_ho = derive(&new_vo, "HO_HY");
    let _a = start_with(
        "HO_VM",
        Role::HoVm,
        Some(&vo),
        &old_root,
        Hooks::default(),
        None,
        |s| {
            s.security = keys(&[&old_ho], &[]);
        },
    )
    .await;
    let _b = start_with(
        "HO_HY",
        Role::HoHy,
        Some(&vo),
        &new_root,
        Hooks::default(),
        None,
        |s| {
            s.security = keys(&[&new_ho], &[]);
        },
    )
    .await;
    registered(&vo, "HO_VM").await;
    registered(&vo, "HO_HY").await;

    // The VO restarted without the old key: the old one no longer opens.
    let after = start_with(
        "VO2",
        Role::Vo,
        None,
        &new_root,
        Hooks::default(),
        None,
        |s| {
            s.security = keys(&[&derive(&new_root, "VO2")], &[]);
        },
    )
    .await;
    let old_child = keys(&[&derive(&derive(&old_root, "VO2"), "HO_VM")], &[]);
    let new_child = keys(&[&derive(&derive(&new_root, "VO2"), "HO_VM")], &[]);
    assert!(connect_as(after.addr, &old_child, "HO_VM", "VO2")
        .await
        .is_err());
    assert!(connect_as(after.addr, &new_child, "HO_VM", "VO2")
        .await
        .is_ok());
}

/// A master tells the VO when a child registers, registers again or is lost (2014's `archi=`
/// and `down#` alerts): each note names the child, is raised where the child registers and
/// climbs to the VO like any alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_report_children_registered_registered_again_and_lost() {
    let psk = Psk::random();
    let (vo_hooks, _at_vo, mut events) = collector_with_node_events();
    let vo = start("VO", Role::Vo, None, &psk, vo_hooks, None).await;
    let ho = start("HO_VM", Role::HoVm, Some(&vo), &psk, Hooks::default(), None).await;
    let mut next = async || {
        let a = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("a node event at the VO")
            .expect("channel");
        let AlertBody::Node {
            node,
            event,
            detail,
        } = a.body
        else {
            unreachable!("the channel takes node events only")
        };
        (a.path, node, event, detail)
    };

    let (path, node, event, detail) = next().await;
    assert_eq!(
        (path, node.as_str(), event),
        (vec!["VO".to_string()], "HO_VM", NodeEvent::Registered)
    );
    assert!(
        detail.contains(&format!("listening on {}", ho.addr)),
        "{detail}"
    );

    let agent = RawChild::register(ho.addr, &psk, "agent1", NodeKind::Agent).await;
    let (path, node, event, _) = next().await;
    assert_eq!(path, ["HO_VM", "VO"], "raised at the HO, carried to the VO");
    assert_eq!((node.as_str(), event), ("agent1", NodeEvent::Registered));

    // It dies: its connection ends without the protocol's close.
    drop(agent);
    let (_, node, event, detail) = next().await;
    assert_eq!((node.as_str(), event), ("agent1", NodeEvent::Lost));
    assert!(detail.contains("without a close record"), "{detail}");

    // It comes back, then falls silent: three heartbeats (200 ms each) later it is lost.
    let _silent = RawChild::register_silent(ho.addr, &psk, "agent1", NodeKind::Agent).await;
    let (_, node, event, _) = next().await;
    assert_eq!((node.as_str(), event), ("agent1", NodeEvent::Reregistered));
    let (_, node, event, detail) = next().await;
    assert_eq!((node.as_str(), event), ("agent1", NodeEvent::Lost));
    assert!(detail.contains("three heartbeats missed"), "{detail}");

    // The HO stops: the VO loses it (a stopped node and a crashed one look alike from above).
    ho.stop.fire();
    let _ = ho.exit.await;
    let (path, node, event, detail) = next().await;
    assert_eq!(
        (path, node.as_str(), event),
        (vec!["VO".to_string()], "HO_VM", NodeEvent::Lost),
        "{detail}"
    );
    drop(vo);
}
