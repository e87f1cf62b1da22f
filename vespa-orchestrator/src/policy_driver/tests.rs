use std::time::Duration;

use vespa_testkit::{try_wait_until_async, wait_until_async};

use vespa_node::{
    Agent, AgentKind, AgentRef, Hooks, MasterAddr, Node, NodeHandle, NodeSpec, Role, Security,
    VerbResult,
};
use vespa_policy::{Action, Key, Target};
use vespa_proto::verbs::{FirewallVerb, HoVerb, SdnVerb, Verb};
use vespa_proto::AlertBody;

use super::convert::parse_key;
use super::*;

/// An action's call as its wire words: `(agent, verb, args)`.
fn to_call(action: &Action) -> Option<(String, &'static str, Vec<String>)> {
    call_of(action).map(|(agent, call)| (agent, call.name(), call.args()))
}

const RULES: &str = r#"
[actuators]
sdn = "SDN"
libvirt = "LV"
quarantine = "q"
av = "AV"
hypervisor = "HY"

[[rule]]
name = "conn-flood"
metric = "established"
key = "remote"
aggregate = "max"
window_s = 1
above = 50
below = 5
calm_s = 3
cooldown_s = 1
verify_s = 0
ladder = [{ action = "block", ttl_s = 600 }]
"#;

#[test]
fn actions_become_the_actuators_verbs() {
    let ip: IpAddr = "10.0.0.9".parse().unwrap();
    let mac: Mac = "02:00:00:00:00:09".parse().unwrap();
    let b = Action::Block {
        id: 1,
        target: Target::Mac(mac),
        ttl_ns: 600 * vespa_policy::SECOND,
        via: "SDN".into(),
        firewall: false,
    };
    assert_eq!(
        to_call(&b),
        Some((
            "SDN".into(),
            "block_hackers",
            vec!["02:00:00:00:00:09".into(), "600".into()]
        ))
    );
    let r = Action::Release {
        id: 2,
        target: Target::Ip(ip),
        via: "SDN".into(),
        firewall: false,
    };
    assert_eq!(
        to_call(&r),
        Some(("SDN".into(), "release_hackers", vec!["10.0.0.9".into()]))
    );
    let c = Action::CutLink {
        id: 3,
        vm: "web".into(),
        via: "LV".into(),
    };
    assert_eq!(
        to_call(&c),
        Some(("LV".into(), "cut_link", vec!["web".into()]))
    );
    let m = Action::Migrate {
        id: 4,
        vm: "web".into(),
        to: "q".into(),
        via: "LV".into(),
    };
    assert_eq!(
        to_call(&m),
        Some(("LV".into(), "migrate", vec!["web".into(), "q".into()]))
    );
    let i = Action::AvIsolate {
        id: 5,
        vm: "web".into(),
        av_agent: "AV".into(),
        hypervisor_agent: "HY".into(),
    };
    assert_eq!(
        to_call(&i),
        Some(("AV".into(), "isolate_warning", vec!["HY".into()]))
    );
    let a = Action::AvConnect {
        id: 6,
        vm: "web".into(),
        av_agent: "AV".into(),
    };
    assert_eq!(to_call(&a), Some(("AV".into(), "connect_warning", vec![])));
    assert_eq!(to_call(&Action::DryRun(Box::new(b))), None);
}

#[test]
fn keys_and_bodies_convert() {
    assert_eq!(
        parse_key("10.0.0.9"),
        Key::Remote("10.0.0.9".parse().unwrap())
    );
    assert_eq!(
        parse_key("02:00:00:00:00:09"),
        Key::Mac("02:00:00:00:00:09".parse().unwrap())
    );
    assert_eq!(parse_key("web"), Key::Vm("web".into()));
    let body = AlertBody::ConnThreshold {
        addr: "10.0.0.9".parse().unwrap(),
        established: 7,
        threshold: 5,
    };
    assert_eq!(
        to_policy_body(&body),
        vespa_policy::AlertBody::ConnThreshold {
            addr: "10.0.0.9".parse().unwrap(),
            established: 7,
            threshold: 5
        }
    );
}

#[test]
fn bad_rules_are_refused_and_the_old_ones_stay() {
    let d = PolicyDriver::new(RULES, false, None, None, None).unwrap();
    assert!(matches!(d.reload("belw = 3"), Err(PolicyError::Invalid(_))));
    assert_eq!(d.rules_text().as_deref(), Some(RULES));
    d.set_dry_run(true).unwrap();
    assert!(d.dry_run());
    assert!(matches!(
        d.block("not-an-address", 10),
        Err(PolicyError::Invalid(_))
    ));
}

const WAIT: Duration = Duration::from_secs(10);

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    wait_until_async(what, WAIT, || std::future::ready(f())).await
}

/// The VO's `get_alerts` reply once `done` holds for it, or the last one after 10 s (the
/// caller's assertions then say what was missing).
async fn alerts_when(vo: &NodeHandle, done: impl Fn(&str) -> bool) -> String {
    let looked = try_wait_until_async("the VO's alerts", WAIT, || async {
        let shown = vo.call_words("get_alerts".into(), vec![]).await.unwrap();
        if done(&shown) {
            Ok(shown)
        } else {
            Err(shown)
        }
    })
    .await;
    looked.unwrap_or_else(|e| e.last)
}

/// A VO alone: the crossing alert makes a block request that leaves at once, the missing SDN
/// agent makes it fail, and the failure comes back as an `ActionResult` (the policy's
/// "did not take" alert shows in the VO's alerts); calm releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crossing_sends_a_block_and_calm_releases_it() {
    let d = PolicyDriver::new(RULES, false, None, None, None).unwrap();
    let mut hooks = Hooks::default();
    hooks.alert_handlers.push(d.handler());
    let vo = Node::new(
        NodeSpec::new(
            "VO",
            Role::Vo,
            None,
            Security::Psk(vespa_proto::Psk::random()),
        ),
        hooks,
    )
    .unwrap();
    let h = vo.handle();
    d.start(h.clone());
    let attacker: IpAddr = "10.0.0.66".parse().unwrap();
    h.raise(AlertBody::ConnThreshold {
        addr: attacker,
        established: 150,
        threshold: 50,
    })
    .unwrap();
    until("the block request", || !d.block_timings().is_empty()).await;
    let t = &d.block_timings()[0];
    assert_eq!(t.target, "10.0.0.66");
    assert!(t.sent_ns >= t.alert_seen_ns && t.alert_seen_ns >= t.alert_raised_ns);
    let active = d.active_actions();
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(
        (
            active[0].action.as_str(),
            active[0].key.as_str(),
            active[0].actuator.as_str()
        ),
        ("block", "10.0.0.66", "SDN")
    );
    until("the failed reply", || d.block_timings()[0].acked_ns != 0).await;
    assert!(!d.block_timings()[0].ok, "there is no SDN agent");
    // The failure came back as an ActionResult; the policy's alert is a typed VO alert.
    let shown = alerts_when(&h, |s| s.contains("did_not_take")).await;
    assert!(
        shown.contains("did_not_take") && shown.contains("10.0.0.66"),
        "{shown}"
    );
    // A reload (as SIGHUP or the API does it) keeps the state of a rule that keeps its name.
    d.reload(&RULES.replace("above = 50", "above = 60"))
        .unwrap();
    assert!(d.rules_text().unwrap().contains("above = 60"));
    assert_eq!(d.active_actions().len(), 1, "the block survives the reload");
    // Calm: the remote's connections are gone; released after calm_s = 3.
    until("the release", || {
        let _ = h.raise(AlertBody::ConnThreshold {
            addr: attacker,
            established: 0,
            threshold: 50,
        });
        d.active_actions().is_empty()
    })
    .await;
    assert!(matches!(
        d.release("10.0.0.66"),
        Err(PolicyError::NotFound(_))
    ));
    h.destroy();
}

/// The policy's verification reaches the ledger through the driver: a rule's block that the
/// counters show took is `passed` at its deadline (listed with the decision in force, and in
/// its row and story); a block by hand is `not_verifiable` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_by_counters_is_recorded_with_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = crate::ledger::Ledger::open(&dir.path().join("ledger.db"))
        .await
        .unwrap();
    let rules = RULES.replace("verify_s = 0", "verify_s = 1");
    let d = PolicyDriver::new(&rules, false, None, None, None).unwrap();
    d.attach_ledger(ledger.clone(), "VO").await.unwrap();
    let psk = vespa_proto::Psk::random();
    let mut hooks = Hooks::default();
    hooks.alert_handlers.push(d.handler());
    let (h, vo_addr) = node("VO", Role::Vo, None, &psk, hooks).await;
    d.start(h.clone());
    // The SDN agent confirms the blocks (a refused one is the actuator's failure, not the
    // counters' verdict).
    let hooks = Hooks {
        agent: Some(AgentRef::new(Sdn::default())),
        alert_handlers: Vec::new(),
    };
    let (_sdn, _) = node(
        "SDN",
        Role::Agent(AgentKind::ControllerOsken),
        Some((&h, vo_addr)),
        &psk,
        hooks,
    )
    .await;
    until("the SDN agent under the VO", || {
        h.stats().children.iter().any(|c| c == "SDN")
    })
    .await;
    let verified = |t: &str| {
        d.active_actions()
            .into_iter()
            .find(|a| a.target == t)
            .and_then(|a| a.verification)
    };
    // The block by hand: nothing will verify it.
    d.block("10.0.0.7", 60).unwrap();
    until("the block by hand not verifiable", || {
        verified("10.0.0.7").as_deref() == Some("not_verifiable")
    })
    .await;
    // A crossing, then quiet: passed at the deadline (1 s), the block still in force.
    h.raise(AlertBody::ConnThreshold {
        addr: "10.0.0.66".parse().unwrap(),
        established: 150,
        threshold: 50,
    })
    .unwrap();
    until("the rule's block verified", || {
        verified("10.0.0.66").as_deref() == Some("passed")
    })
    .await;
    ledger.flush().await.unwrap();
    let id = d
        .active_actions()
        .into_iter()
        .find(|a| a.target == "10.0.0.66")
        .and_then(|a| a.decision)
        .unwrap();
    let story = ledger.show(id).await.unwrap().unwrap();
    assert_eq!(story.decision.verification.as_deref(), Some("passed"));
    assert!(
        story
            .events
            .iter()
            .any(|e| e.kind == "verified" && e.detail == "passed: 0 <= 50"),
        "{:?}",
        story.events
    );
    h.destroy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_block_and_release() {
    let d = PolicyDriver::new(RULES, false, None, None, None).unwrap();
    assert!(
        matches!(d.block("10.0.0.7", 60), Err(PolicyError::Unavailable(_))),
        "no VO yet"
    );
    let vo = Node::new(
        NodeSpec::new(
            "VO",
            Role::Vo,
            None,
            Security::Psk(vespa_proto::Psk::random()),
        ),
        Hooks::default(),
    )
    .unwrap();
    d.start(vo.handle());
    assert_eq!(d.block("10.0.0.7", 60).unwrap(), "10.0.0.7");
    let a = d.active_actions();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].expires_unix_s.unwrap() - a[0].since_unix_s, 60);
    let done = d.release("10.0.0.7").unwrap();
    assert!(done.contains("release_hackers 10.0.0.7"), "{done}");
    assert!(d.active_actions().is_empty());
}

/// Sensors that lose events report it; the policy answers with a blind-spot alert at the VO,
/// counted in `vespa_policy_alerts_total{kind="blind_spot"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_sensor_events_raise_a_blind_spot_alert() {
    assert!(matches!(
        health_input("conns", &AlertBody::SensorHealth { events_lost: 5, map_update_failures: 1, maps_full: 1 }),
        Some(Input::Health { ref origin, events_lost: 5, map_full: 2 }) if origin == "conns"
    ));
    assert!(health_input("conns", &AlertBody::Text("x".into())).is_none());
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let d = PolicyDriver::new(RULES, false, None, Some(metrics.clone()), None).unwrap();
    let mut hooks = Hooks::default();
    hooks.alert_handlers.push(d.handler());
    let vo = Node::new(
        NodeSpec::new(
            "VO",
            Role::Vo,
            None,
            Security::Psk(vespa_proto::Psk::random()),
        ),
        hooks,
    )
    .unwrap();
    let h = vo.handle();
    d.start(h.clone());
    h.raise(AlertBody::SensorHealth {
        events_lost: 12,
        map_update_failures: 0,
        maps_full: 0,
    })
    .unwrap();
    let shown = alerts_when(&h, |s| s.contains("blind_spot")).await;
    assert!(shown.contains("blind_spot"), "{shown}");
    let text = crate::metrics::render(&metrics.registry(h.clone()));
    assert!(
        text.lines()
            .any(|l| l == "vespa_policy_alerts_total{kind=\"blind_spot\"} 1"),
        "{text}"
    );
    h.destroy();
}

/// An SDN agent that records the verbs it is called with.
#[derive(Default, Clone)]
struct Sdn(Arc<Mutex<Vec<String>>>);

impl Agent for Sdn {
    type Verb = SdnVerb;

    async fn call(&self, verb: SdnVerb) -> VerbResult {
        match verb {
            SdnVerb::BlockHackers { .. } | SdnVerb::ReleaseHackers { .. } => {
                lock(&self.0).push(verb.line());
                Ok("done".into())
            }
            other => Err(format!("{} not recorded", other.name())),
        }
    }
}

/// Runs a node on 127.0.0.1:0 under `master`; returns its handle and address.
async fn node(
    name: &str,
    role: Role,
    master: Option<(&NodeHandle, std::net::SocketAddr)>,
    psk: &vespa_proto::Psk,
    hooks: Hooks,
) -> (NodeHandle, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let master = master.map(|(h, a)| MasterAddr {
        name: h.name().to_string(),
        addr: a,
    });
    let mut spec = NodeSpec::new(name, role, master, Security::Psk(psk.clone()));
    spec.settings.backoff_min = Duration::from_millis(20);
    spec.settings.backoff_max = Duration::from_millis(200);
    let n = Node::new(spec, hooks).unwrap();
    let h = n.handle();
    tokio::spawn(n.run(Some(listener), std::future::pending()));
    (h, addr)
}

/// The fast path in one process: a rule placed at HO_PH is run by HO_PH's driver, which
/// blocks through the SDN agent below it and tells the VO with a `Text` alert; the VO's
/// driver, with the same file, does nothing. Through the [`PolicySet`] the VO's API lists the
/// HO's block and releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_placed_at_an_ho_acts_there_and_the_vo_is_told() {
    let topo = Topology::from_toml("tree.toml", super::placement::tests::TOPOLOGY).unwrap();
    let text = RULES
        .replace("sdn = \"SDN\"", "sdn = \"Agent_Controller_OsKen\"")
        .replace(
            "name = \"conn-flood\"\n",
            "name = \"conn-flood\"\nat = \"HO_PH\"\n",
        );
    let vo_d = PolicyDriver::new(&text, false, Some(&topo), None, None).unwrap();
    let ho_d = PolicyDriver::new_at("HO_PH", &text, false, &topo, None).unwrap();
    assert!(
        vo_d.rule_names().is_empty() && ho_d.rule_names() == ["conn-flood"],
        "each driver has its share"
    );
    let psk = vespa_proto::Psk::random();
    let hooks = |d: &PolicyDriver| Hooks {
        agent: None,
        alert_handlers: vec![d.handler()],
    };
    let (vo, vo_addr) = node("VO", Role::Vo, None, &psk, hooks(&vo_d)).await;
    let (ho, ho_addr) = node(
        "HO_PH",
        Role::HoPh,
        Some((&vo, vo_addr)),
        &psk,
        hooks(&ho_d),
    )
    .await;
    let sdn = Sdn::default();
    let sdn_hooks = Hooks {
        agent: Some(AgentRef::new(sdn.clone())),
        alert_handlers: vec![],
    };
    let (_sdn, _) = node(
        "Agent_Controller_OsKen",
        Role::Agent(AgentKind::ControllerOsken),
        Some((&ho, ho_addr)),
        &psk,
        sdn_hooks,
    )
    .await;
    let (conns, _) = node(
        "ph_conns",
        Role::Agent(AgentKind::Connections),
        Some((&ho, ho_addr)),
        &psk,
        Hooks::default(),
    )
    .await;
    vo_d.start(vo.clone());
    ho_d.start(ho.clone());
    until("both agents under HO_PH and HO_PH under the VO", || {
        ho.stats().children.len() == 2 && vo.stats().children.len() == 1
    })
    .await;

    let attacker: IpAddr = "10.0.0.66".parse().unwrap();
    conns
        .raise(AlertBody::ConnThreshold {
            addr: attacker,
            established: 150,
            threshold: 50,
        })
        .unwrap();
    until("the block at the SDN agent", || !lock(&sdn.0).is_empty()).await;
    assert_eq!(*lock(&sdn.0), ["block_hackers 10.0.0.66 600"]);
    assert_eq!(ho_d.block_timings().len(), 1);
    let alerts_of = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text).unwrap()["alerts"]
            .as_array()
            .unwrap()
            .clone()
    };
    // The HO's note of its call (besides its notes of the children that registered).
    let is_note = |a: &serde_json::Value| a["origin"] == "HO_PH" && a["body"].get("Text").is_some();
    let alerts = alerts_of(&alerts_when(&vo, |s| alerts_of(s).iter().any(is_note)).await);
    let crossing = alerts
        .iter()
        .find(|a| a["body"].get("ConnThreshold").is_some())
        .expect("the crossing climbed on");
    assert_eq!(
        crossing["path"],
        serde_json::json!(["ph_conns", "HO_PH", "VO"])
    );
    let note = alerts.iter().find(|a| is_note(a)).unwrap();
    assert_eq!(note["body"]["Text"], "fast path at HO_PH: block_hackers 10.0.0.66 600 on Agent_Controller_OsKen (rule conn-flood)");
    assert_eq!(note["path"], serde_json::json!(["HO_PH", "VO"]));
    assert!(
        vo_d.block_timings().is_empty() && vo_d.active_actions().is_empty(),
        "the VO's driver did nothing"
    );

    // The VO's API sees the HO's block and releases it through the HO's driver.
    let set = PolicySet::new(vo_d.clone(), vec![ho_d.clone()]);
    let active = set.active_actions();
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(
        (active[0].at.as_deref(), active[0].actuator.as_str()),
        (Some("HO_PH"), "Agent_Controller_OsKen")
    );
    assert_eq!(
        set.release("10.0.0.66").unwrap(),
        "Agent_Controller_OsKen release_hackers 10.0.0.66"
    );
    until("the release at the SDN agent", || lock(&sdn.0).len() == 2).await;
    assert_eq!(lock(&sdn.0)[1], "release_hackers 10.0.0.66");
    assert!(matches!(
        set.release("10.0.0.66"),
        Err(PolicyError::NotFound(_))
    ));
    // One file for all: a reload reaches the HO's driver, a bad one none.
    assert!(matches!(
        set.reload(&text.replace("HO_PH\"\n", "VO\"\n")),
        Err(PolicyError::Invalid(_))
    ));
    set.reload(&text.replace("above = 50", "above = 70"))
        .unwrap();
    assert!(ho_d.rules_text().unwrap().contains("above = 70"));
    vo.destroy();
}

/// An SDN agent that records when each verb reached it, on tokio's clock.
struct Timed {
    start: tokio::time::Instant,
    calls: Mutex<Vec<(Duration, String)>>,
    called: tokio::sync::Notify,
}

impl Agent for Timed {
    type Verb = SdnVerb;

    async fn call(&self, verb: SdnVerb) -> VerbResult {
        lock(&self.calls).push((self.start.elapsed(), verb.line()));
        self.called.notify_one();
        Ok("done".into())
    }
}

/// The driver's tick in paused time: the clock jumps from timer to timer, so the release is
/// seen exactly where calm ends, and never before. Calm begins once the offending sample has
/// left the rule's 1 s window (no sample is needed for that: ticks re-evaluate the window);
/// it must last `calm_s = 3`; both are judged at 250 ms ticks.
#[tokio::test(start_paused = true)]
async fn ticks_release_a_block_once_calm_has_lasted() {
    let rules = RULES.replace("sdn = \"SDN\"", "sdn = \"VO\"");
    let d = PolicyDriver::new(&rules, false, None, None, None).unwrap();
    let sdn = Arc::new(Timed {
        start: tokio::time::Instant::now(),
        calls: Mutex::default(),
        called: tokio::sync::Notify::new(),
    });
    let hooks = Hooks {
        agent: Some(AgentRef::from_arc(sdn.clone())),
        alert_handlers: vec![d.handler()],
    };
    let psk = vespa_proto::Psk::random();
    let vo = Node::new(
        NodeSpec::new("VO", Role::Vo, None, Security::Psk(psk)),
        hooks,
    )
    .unwrap();
    let h = vo.handle();
    d.start(h.clone());
    h.raise(AlertBody::ConnThreshold {
        addr: "10.0.0.66".parse().unwrap(),
        established: 150,
        threshold: 50,
    })
    .unwrap();
    sdn.called.notified().await;
    sdn.called.notified().await;
    let calls = lock(&sdn.calls).clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].1, "block_hackers 10.0.0.66 600");
    assert!(
        calls[0].0 < TICK,
        "the block leaves with the alert: {calls:?}"
    );
    assert_eq!(calls[1].1, "release_hackers 10.0.0.66");
    let (window, calm) = (Duration::from_secs(1), Duration::from_secs(3));
    let released = calls[1].0;
    assert!(
        released >= window + calm && released <= window + calm + 2 * TICK,
        "released at {released:?}: the window (1 s) and calm (3 s), judged at {TICK:?} ticks"
    );
    assert!(d.active_actions().is_empty());
    h.destroy();
}

/// A firewall agent that records the verbs it is called with (and when, on tokio's clock),
/// refusing the first `refuse` of them.
struct Firewall {
    start: tokio::time::Instant,
    calls: tokio::sync::watch::Sender<Vec<(Duration, String)>>,
    refuse: std::sync::atomic::AtomicUsize,
}

impl Firewall {
    fn new(refuse: usize) -> Arc<Firewall> {
        Arc::new(Firewall {
            start: tokio::time::Instant::now(),
            calls: tokio::sync::watch::Sender::new(Vec::new()),
            refuse: refuse.into(),
        })
    }

    /// The verbs received, once there are at least `n`.
    async fn calls(&self, n: usize) -> Vec<String> {
        let mut rx = self.calls.subscribe();
        let seen = rx.wait_for(|c| c.len() >= n).await.unwrap();
        seen.iter().map(|(_, line)| line.clone()).collect()
    }
}

impl Agent for Firewall {
    type Verb = FirewallVerb;

    async fn call(&self, verb: FirewallVerb) -> VerbResult {
        let line = verb.line();
        self.calls
            .send_modify(|c| c.push((self.start.elapsed(), line.clone())));
        let refused = self
            .refuse
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if refused {
            Err("the firewall agent is starting".into())
        } else {
            Ok("ok".into())
        }
    }
}

/// A VO that is also the firewall agent (`firewall = "VO"`), with the driver started on it.
fn vo_with_firewall(d: &PolicyDriver, fw: &Arc<Firewall>) -> NodeHandle {
    let hooks = Hooks {
        agent: Some(AgentRef::from_arc(fw.clone())),
        alert_handlers: vec![d.handler()],
    };
    let spec = NodeSpec::new(
        "VO",
        Role::Vo,
        None,
        Security::Psk(vespa_proto::Psk::random()),
    );
    let h = Node::new(spec, hooks).unwrap().handle();
    d.start(h.clone());
    h
}

const REFLEX_RULES: &str = r#"
[actuators]
sdn = "SDN"
libvirt = "LV"
quarantine = "q"
av = "AV"
hypervisor = "HY"
firewall = "VO"

[allowlist]
targets = ["10.0.0.0/8"]

[[rule]]
name = "syn-flood"
metric = "syn_rate"
key = "remote"
window_s = 1
above = 100
below = 20
calm_s = 3
verify_s = 0
reflex = true
ladder = [{ action = "block", ttl_s = 600 }, { action = "block", ttl_s = 3600 }]
"#;

/// At start the firewall agent is told the allowlist, then the reflex; every reload, dry-run
/// switch and allowlist change by hand sends what changed, and only that.
#[tokio::test(start_paused = true)]
async fn the_reflex_and_the_allowlist_are_pushed_at_start_and_when_they_change() {
    let d = PolicyDriver::new(REFLEX_RULES, false, None, None, None).unwrap();
    let fw = Firewall::new(0);
    let _vo = vo_with_firewall(&d, &fw);
    assert_eq!(
        fw.calls(2).await,
        ["allow 10.0.0.0/8", "reflex 100 0 600 1024"]
    );
    d.reload(&REFLEX_RULES.replace("above = 100", "above = 250"))
        .unwrap();
    assert_eq!(fw.calls(3).await[2], "reflex 250 0 600 1024");
    // Nothing changed for the agent: nothing sent.
    d.reload(&REFLEX_RULES.replace("above = 100", "above = 250"))
        .unwrap();
    d.allow("192.0.2.0/24", Some("the lab's gateway")).unwrap();
    assert_eq!(fw.calls(4).await[3], "allow 192.0.2.0/24");
    d.set_dry_run(true).unwrap();
    assert_eq!(
        fw.calls(5).await[4],
        "reflex 0 0 600 1024",
        "in dry-run the kernel must not act on its own"
    );
    d.set_dry_run(false).unwrap();
    assert_eq!(fw.calls(6).await[5], "reflex 250 0 600 1024");
    d.disallow("192.0.2.0/24").unwrap();
    assert_eq!(fw.calls(7).await[6], "disallow 192.0.2.0/24");
    // The reflex rule gone: off, and the file's entry goes when the file drops it.
    let plain = REFLEX_RULES
        .replace("reflex = true\n", "")
        .replace("targets = [\"10.0.0.0/8\"]", "targets = []");
    d.reload(&plain).unwrap();
    assert_eq!(
        fw.calls(9).await[7..],
        ["disallow 10.0.0.0/8", "reflex 0 0 600 1024"]
    );
    assert!(d.allowlist().is_empty());
}

/// A firewall agent that refuses is asked again with backoff; a failure that lasts raises one
/// alert, and its end another.
#[tokio::test(start_paused = true)]
async fn a_refused_push_is_retried_with_backoff_and_alerted_once_it_lasts() {
    let d = PolicyDriver::new(REFLEX_RULES, false, None, None, None).unwrap();
    let fw = Firewall::new(7);
    let vo = vo_with_firewall(&d, &fw);
    let calls = fw.calls(9).await;
    assert_eq!(calls[..8], ["allow 10.0.0.0/8"; 8], "{calls:?}");
    assert_eq!(calls[8], "reflex 100 0 600 1024");
    let times: Vec<Duration> = fw.calls.borrow().iter().map(|(t, _)| *t).collect();
    for (n, w) in times[..8].windows(2).enumerate() {
        let (gap, nominal) = (w[1] - w[0], Duration::from_millis(500) * 2u32.pow(n as u32));
        assert!(
            gap >= nominal / 2 && gap <= nominal,
            "retry {n}: {gap:?}, expected within [{:?}, {nominal:?}]",
            nominal / 2
        );
    }
    let shown = alerts_when(&vo, |s| s.contains("now holds")).await;
    assert_eq!(
        shown.matches("policy DidNotTake: VO did not take `allow 10.0.0.0/8`: the firewall agent is starting").count(),
        1,
        "{shown}"
    );
    assert!(
        shown.contains("policy DidNotTake: VO now holds the policy's allowlist and reflex"),
        "{shown}"
    );
}

/// The kernel reflex's block comes back as an alert: the rule holds it (listed with the
/// firewall as its actuator), the firewall is sent the rung's block, and a release by hand
/// reaches the firewall.
#[tokio::test(start_paused = true)]
async fn a_reflex_block_is_adopted_and_released_through_the_firewall() {
    let d = PolicyDriver::new(REFLEX_RULES, false, None, None, None).unwrap();
    let fw = Firewall::new(0);
    let vo = vo_with_firewall(&d, &fw);
    fw.calls(2).await;
    vo.raise(AlertBody::ReflexBlock {
        target: "198.51.100.7".into(),
        cause: "syn".into(),
        value: 180,
        threshold: 100,
        ttl_s: 600,
        kernel_ns: 1,
    })
    .unwrap();
    assert_eq!(fw.calls(3).await[2], "block_hackers 198.51.100.7 600");
    let active = d.active_actions();
    assert_eq!(
        active
            .iter()
            .map(|a| (a.action.as_str(), a.target.as_str(), a.actuator.as_str()))
            .collect::<Vec<_>>(),
        [("block", "198.51.100.7", "VO")]
    );
    assert_eq!(
        d.release("198.51.100.7").unwrap(),
        "VO release_hackers 198.51.100.7"
    );
    assert_eq!(fw.calls(4).await[3], "release_hackers 198.51.100.7");
    // A protected source the kernel blocked anyway is released at once.
    vo.raise(AlertBody::ReflexBlock {
        target: "10.1.2.3".into(),
        cause: "syn".into(),
        value: 180,
        threshold: 100,
        ttl_s: 600,
        kernel_ns: 2,
    })
    .unwrap();
    assert_eq!(fw.calls(5).await[4], "release_hackers 10.1.2.3");
    assert!(d.active_actions().is_empty());
    // An entry by hand releases what it protects, and the firewall is told to allow it.
    vo.raise(AlertBody::ReflexBlock {
        target: "198.51.100.8".into(),
        cause: "syn".into(),
        value: 180,
        threshold: 100,
        ttl_s: 600,
        kernel_ns: 3,
    })
    .unwrap();
    assert_eq!(fw.calls(6).await[5], "block_hackers 198.51.100.8 600");
    d.allow("198.51.100.0/24", None).unwrap();
    assert!(d.active_actions().is_empty());
    let mut last = fw.calls(8).await.split_off(6);
    last.sort();
    assert_eq!(
        last,
        ["allow 198.51.100.0/24", "release_hackers 198.51.100.8"]
    );
}

#[test]
fn throttles_prefixes_and_firewall_blocks_become_firewall_verbs() {
    let t = Target::Net("2001:db8::/64".parse().unwrap());
    let cases = [
        (
            Action::Throttle {
                id: 1,
                target: Target::Ip("10.0.0.9".parse().unwrap()),
                rate: vespa_policy::Rate::Bytes(1_000_000),
                ttl_ns: 60 * vespa_policy::SECOND,
                via: "FW".into(),
            },
            "throttle 10.0.0.9 1000000B/s 60",
        ),
        (
            Action::Unthrottle {
                id: 2,
                target: Target::Ip("10.0.0.9".parse().unwrap()),
                via: "FW".into(),
            },
            "unthrottle 10.0.0.9",
        ),
        (
            Action::Block {
                id: 3,
                target: t,
                ttl_ns: 600 * vespa_policy::SECOND,
                via: "FW".into(),
                firewall: true,
            },
            "block_hackers 2001:db8::/64 600",
        ),
        (
            Action::Release {
                id: 4,
                target: t,
                via: "FW".into(),
                firewall: true,
            },
            "release_hackers 2001:db8::/64",
        ),
    ];
    for (action, line) in cases {
        let (agent, call) = call_of(&action).unwrap();
        assert!(
            matches!(call, ActuatorCall::Firewall(_)),
            "{action:?}: {call:?}"
        );
        assert_eq!((agent.as_str(), call.to_string()), ("FW", line.to_string()));
        // What the firewall agent parses back is what was meant.
        let words: Vec<String> = call.args();
        let back = FirewallVerb::parse(call.name(), &words).unwrap();
        assert_eq!(ActuatorCall::Firewall(back), call);
    }
    assert_eq!(
        parse_key("2001:db8::/64"),
        Key::Net("2001:db8::/64".parse().unwrap())
    );
    assert_eq!(
        parse_key("10.0.0.9/32"),
        Key::Remote("10.0.0.9".parse().unwrap())
    );
    assert_eq!(
        to_policy_body(&AlertBody::ReflexBlock {
            target: "2001:db8::/64".into(),
            cause: "conn".into(),
            value: 9,
            threshold: 8,
            ttl_s: 30,
            kernel_ns: 5,
        }),
        vespa_policy::AlertBody::ReflexBlock {
            target: t,
            cause: vespa_policy::ReflexCause::Conn,
            value: 9,
            threshold: 8,
            ttl_s: 30
        }
    );
    assert!(matches!(
        to_policy_body(&AlertBody::ReflexBlock {
            target: "x".into(),
            cause: "syn".into(),
            value: 9,
            threshold: 8,
            ttl_s: 30,
            kernel_ns: 5,
        }),
        vespa_policy::AlertBody::Text(_)
    ));
}

/// The policy parses rates and prefixes itself (it does not depend on the protocol crate):
/// both must read the same words the same way.
#[test]
fn the_policy_and_the_protocol_read_rates_and_targets_alike() {
    use vespa_proto::verbs::{self, Word};
    for w in [
        "125000",
        "1500B/s",
        "10kB/s",
        "2MB/s",
        "1GB/s",
        "8mbit",
        "8Mbit/s",
        "100kbit",
        "1gbit",
        "800bit",
        "1000pps",
        "20kpps",
        "1mpps",
        "1.5mbit",
        "0",
        "8 furlongs",
        "mbit",
        "-5pps",
        "1e30",
    ] {
        let ours = w.parse::<vespa_policy::Rate>().ok().map(|r| match r {
            vespa_policy::Rate::Bytes(b) => verbs::Rate::Bytes(b),
            vespa_policy::Rate::Packets(p) => verbs::Rate::Packets(p),
        });
        assert_eq!(ours, w.parse::<verbs::Rate>().ok(), "{w}");
    }
    for w in [
        "10.0.0.7",
        "10.1.2.3/8",
        "10.0.0.7/32",
        "2001:db8::9/64",
        "2001:db8::9/128",
        "52:54:00:aa:BB:cc",
        "10.0.0.0/33",
        "nope",
        "",
    ] {
        let ours = w.parse::<Target>().ok().map(|t| t.bare());
        let theirs = verbs::Target::parse_word(w).ok().map(|t| t.to_word());
        assert_eq!(ours, theirs, "{w}");
    }
}

/// The topology's machines and controllers are on the allowlist from the start, and stay.
#[test]
fn the_topology_protects_its_machines_and_controllers() {
    let text = super::placement::tests::TOPOLOGY.to_string()
        + "\n[[machine]]\nname = \"ctl\"\naddress = \"10.9.0.1\"\n\n[node.params]\n"
        + "\n[[node]]\nname = \"fl\"\nkind = \"agent_controller_floodlight\"\nlocation = \"hv\"\nmaster = \"HO_PH\"\nport = 5158\n[node.params]\nurl = \"http://10.9.0.2:8080\"\n";
    let text = text.replace("\n[node.params]\n\n[[node]]", "\n\n[[node]]");
    let topo = Topology::from_toml("tree.toml", &text).unwrap();
    let rules = RULES.replace("sdn = \"SDN\"", "sdn = \"Agent_Controller_OsKen\"");
    let d = PolicyDriver::new(&rules, false, Some(&topo), None, None).unwrap();
    let listed: Vec<(String, String, Option<String>)> = d
        .allowlist()
        .into_iter()
        .map(|e| (e.target, e.origin, e.note))
        .collect();
    let entry = |t: &str, n: &str| (t.to_string(), "topology".to_string(), Some(n.to_string()));
    assert_eq!(
        listed,
        [
            entry("127.0.0.1", "machine hv"),
            entry("10.9.0.1", "machine ctl"),
            entry("10.9.0.2", "SDN controller of fl"),
        ]
    );
    assert!(
        matches!(d.block("10.9.0.2", 60), Err(PolicyError::Invalid(m)) if m.contains("allowlist"))
    );
    assert!(
        matches!(d.disallow("10.9.0.1"), Err(PolicyError::NotFound(m)) if m.contains("topology"))
    );
    d.reload(&rules.replace("above = 50", "above = 60"))
        .unwrap();
    assert_eq!(d.allowlist().len(), 3, "a reload keeps them");
}

/// One API, every driver: an entry by hand protects from the rules of the HOs of the process,
/// and the HOs of other processes take it through their verbs.
#[tokio::test]
async fn the_allowlist_by_hand_reaches_every_driver() {
    let topo = Topology::from_toml("tree.toml", super::placement::tests::TOPOLOGY).unwrap();
    let text = RULES.replace("sdn = \"SDN\"", "sdn = \"Agent_Controller_OsKen\"");
    let vo_d = PolicyDriver::new(&text, false, Some(&topo), None, None).unwrap();
    let ho_d = PolicyDriver::new_at("HO_PH", &text, false, &topo, None).unwrap();
    let set = PolicySet::new(vo_d.clone(), vec![ho_d.clone()]);
    set.allow("198.51.100.0/24", Some("partner")).unwrap();
    for d in [&vo_d, &ho_d] {
        assert!(
            d.allowlist()
                .iter()
                .any(|e| e.target == "198.51.100.0/24" && e.origin == "operator"),
            "{:?}",
            d.at()
        );
    }
    assert!(matches!(
        set.allow("not a target", None),
        Err(PolicyError::Invalid(_))
    ));
    assert!(matches!(
        set.disallow("127.0.0.1"),
        Err(PolicyError::NotFound(m)) if m.contains("topology")
    ));
    set.disallow("198.51.100.0/24").unwrap();
    assert!(ho_d.allowlist().iter().all(|e| e.origin != "operator"));
    assert!(matches!(
        set.disallow("198.51.100.0/24"),
        Err(PolicyError::NotFound(m)) if m.contains("not on the allowlist")
    ));
    // An HO of another process, through its verbs.
    let verbs = HoPolicyVerbs(ho_d.clone());
    let reply = verbs
        .call(HoVerb::PolicyAllow {
            target: "2001:db8::/48".into(),
            note: vec!["a".into(), "partner".into()],
        })
        .await
        .unwrap();
    assert_eq!(reply, r#"{"Ok":null}"#);
    assert!(ho_d
        .allowlist()
        .iter()
        .any(|e| e.target == "2001:db8::/48" && e.note.as_deref() == Some("a partner")));
    let reply = verbs
        .call(HoVerb::PolicyDisallow {
            target: "2001:db8::/49".into(),
        })
        .await
        .unwrap();
    assert!(reply.contains("NotFound"), "{reply}");
}

/// A throttle rung and a reflex rule need a firewall agent, and a reflex rule placed at an HO
/// needs it below that HO.
#[test]
fn the_firewall_actuator_is_checked_where_rules_are_placed() {
    let topo = Topology::from_toml("tree.toml", super::placement::tests::TOPOLOGY).unwrap();
    let text = REFLEX_RULES
        .replace("firewall = \"VO\"", "firewall = \"Agent_Controller_OsKen\"")
        .replace(
            "name = \"syn-flood\"\n",
            "name = \"syn-flood\"\nat = \"HO_VM\"\n",
        );
    let e = load_rules(&text, Some(&topo)).expect_err("the firewall is under HO_PH");
    assert!(
        e.to_string()
            .contains("its firewall actuator Agent_Controller_OsKen is under HO_PH"),
        "{e}"
    );
    load_rules(&text.replace("HO_VM", "HO_PH"), Some(&topo)).expect("under HO_PH");
    let e = PolicyDriver::new(
        &RULES.replace(
            "action = \"block\", ttl_s = 600",
            "action = \"throttle\", rate = \"1mbit\", ttl_s = 600",
        ),
        false,
        None,
        None,
        None,
    )
    .err()
    .expect("no firewall actuator");
    assert!(
        e.to_string()
            .contains("ladder.action: a throttle needs a firewall agent"),
        "{e}"
    );
}

#[test]
fn on_a_host_without_an_sdn_controller_blocks_go_to_its_firewall_agent() {
    let head = "[[machine]]\nname = \"h\"\naddress = \"127.0.0.1\"\n\
        [[node]]\nname = \"VO\"\nkind = \"vo\"\nlocation = \"h\"\nport = 5000\n\
        [[node]]\nname = \"fw\"\nkind = \"agent_firewall\"\nlocation = \"h\"\nmaster = \"VO\"\nport = 5001\n";
    let topo = Topology::from_toml("tree.toml", head).unwrap();
    let rules = load_rules(RULES, Some(&topo)).expect("rules");
    assert_eq!(rules.actuators.firewall.as_deref(), Some("fw"));
    // With a controller agent in the tree, nothing changes unless the policy names a firewall.
    let with_sdn = format!(
        "{head}[[node]]\nname = \"SDN\"\nkind = \"agent_controller_osken\"\nlocation = \"h\"\nmaster = \"VO\"\nport = 5002\n"
    );
    let topo = Topology::from_toml("tree.toml", &with_sdn).unwrap();
    let rules = load_rules(RULES, Some(&topo)).expect("rules");
    assert_eq!(rules.actuators.firewall, None);
    // A firewall name the tree lacks falls back to its only firewall agent.
    let named = RULES.replace(
        "hypervisor = \"HY\"",
        "hypervisor = \"HY\"\nfirewall = \"gone\"",
    );
    let rules = load_rules(&named, Some(&topo)).expect("rules");
    assert_eq!(rules.actuators.firewall.as_deref(), Some("fw"));
}

/// The VO's driver on the default rules, started at a VO with `agent` as its SDN agent
/// `SDN` connected under it; returns the driver and both nodes.
async fn vo_with_sdn(agent: AgentRef) -> (PolicyDriver, NodeHandle, NodeHandle) {
    let psk = vespa_proto::Psk::random();
    let d = PolicyDriver::new(RULES, false, None, None, None).unwrap();
    let (vo, vo_addr) = node("VO", Role::Vo, None, &psk, Hooks::default()).await;
    d.start(vo.clone());
    let hooks = Hooks {
        agent: Some(agent),
        alert_handlers: Vec::new(),
    };
    let (sdn, _) = node(
        "SDN",
        Role::Agent(AgentKind::ControllerOsken),
        Some((&vo, vo_addr)),
        &psk,
        hooks,
    )
    .await;
    until("the SDN agent under the VO", || {
        vo.stats().children.iter().any(|c| c == "SDN")
    })
    .await;
    (d, vo, sdn)
}

/// An SDN agent that takes its time over each block, as a controller under load does.
#[derive(Default, Clone)]
struct SlowSdn(Arc<Mutex<Vec<String>>>);

impl Agent for SlowSdn {
    type Verb = SdnVerb;

    async fn call(&self, verb: SdnVerb) -> VerbResult {
        tokio::time::sleep(Duration::from_millis(20)).await;
        lock(&self.0).push(verb.line());
        Ok("done".into())
    }
}

/// Hundreds of blocks at once (an operator's import) all reach the actuator: the driver keeps
/// its calls in flight under what one connection carries, so none is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_blocks_all_reach_the_actuator() {
    let sdn = SlowSdn::default();
    let (d, _vo, _sdn) = vo_with_sdn(AgentRef::new(sdn.clone())).await;
    let n = 1000;
    for i in 0..n {
        d.block(&format!("10.9.{}.{}", i / 250, i % 250 + 1), 600)
            .unwrap();
    }
    wait_until_async(
        "every block at the SDN agent",
        Duration::from_secs(60),
        || std::future::ready(lock(&sdn.0).len() >= n),
    )
    .await;
    assert_eq!(lock(&sdn.0).len(), n);
}

/// An SDN agent that refuses every verb.
#[derive(Clone)]
struct RefusingSdn;

impl Agent for RefusingSdn {
    type Verb = SdnVerb;

    async fn call(&self, verb: SdnVerb) -> VerbResult {
        Err(format!("{} refused", verb.name()))
    }
}

/// An HO's driver shares the process's metrics for its reconciliation, but counts neither
/// its policy alerts (the VO counts them as they arrive: counted here too, they would be
/// counted twice in a process that runs both) nor the VO's `vo_to_actuator_ack` stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hos_driver_with_metrics_leaves_its_policy_alerts_to_the_vo() {
    let topo = Topology::from_toml("tree.toml", super::placement::tests::TOPOLOGY).unwrap();
    let text = RULES
        .replace("sdn = \"SDN\"", "sdn = \"Agent_Controller_OsKen\"")
        .replace(
            "name = \"conn-flood\"\n",
            "name = \"conn-flood\"\nat = \"HO_PH\"\n",
        );
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let ho_d = PolicyDriver::new_at_with_metrics(
        "HO_PH",
        &text,
        false,
        &topo,
        Some(metrics.clone()),
        None,
    )
    .unwrap();
    let psk = vespa_proto::Psk::random();
    let (vo, vo_addr) = node("VO", Role::Vo, None, &psk, Hooks::default()).await;
    let ho_hooks = Hooks {
        agent: None,
        alert_handlers: vec![ho_d.handler()],
    };
    let (ho, ho_addr) = node("HO_PH", Role::HoPh, Some((&vo, vo_addr)), &psk, ho_hooks).await;
    let (_sdn, _) = node(
        "Agent_Controller_OsKen",
        Role::Agent(AgentKind::ControllerOsken),
        Some((&ho, ho_addr)),
        &psk,
        Hooks {
            agent: Some(AgentRef::new(RefusingSdn)),
            alert_handlers: vec![],
        },
    )
    .await;
    let (conns, _) = node(
        "ph_conns",
        Role::Agent(AgentKind::Connections),
        Some((&ho, ho_addr)),
        &psk,
        Hooks::default(),
    )
    .await;
    ho_d.start(ho.clone());
    until("both agents under HO_PH and HO_PH under the VO", || {
        ho.stats().children.len() == 2 && vo.stats().children.len() == 1
    })
    .await;
    conns
        .raise(AlertBody::ConnThreshold {
            addr: "10.0.0.67".parse().unwrap(),
            established: 150,
            threshold: 50,
        })
        .unwrap();
    let shown = alerts_when(&vo, |s| s.contains("did_not_take")).await;
    let alerts: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let policy_alert = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["body"]["Policy"]["kind"] == "did_not_take")
        .unwrap_or_else(|| panic!("HO_PH's did_not_take at the VO: {shown}"))
        .clone();
    assert_eq!(policy_alert["body"]["Policy"]["at"], "HO_PH");
    let text = crate::metrics::render(&metrics.registry(vo.clone()));
    for line in [
        "vespa_policy_alerts_total{kind=\"did_not_take\"} 0",
        "vespa_closed_loop_seconds_count{stage=\"vo_to_actuator_ack\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    // Counted once, as the VO takes it.
    let alert: vespa_proto::Alert = serde_json::from_value(policy_alert).unwrap();
    metrics.on_alert(&alert);
    let text = crate::metrics::render(&metrics.registry(vo.clone()));
    assert!(
        text.lines()
            .any(|l| l == "vespa_policy_alerts_total{kind=\"did_not_take\"} 1"),
        "{text}"
    );
    vo.destroy();
}

/// A libvirt agent whose one VM runs here and whose migrations fail (no quarantine host):
/// records the verbs it is called with.
#[derive(Default, Clone)]
struct Hypervisor(Arc<Mutex<Vec<String>>>);

impl Agent for Hypervisor {
    type Verb = vespa_proto::verbs::LibvirtVerb;

    async fn call(&self, verb: Self::Verb) -> VerbResult {
        use vespa_proto::verbs::LibvirtVerb as L;
        lock(&self.0).push(verb.line());
        match verb {
            L::ListVms {} => Ok(r#"[
                {"name":"web","uuid":"u1","state":"running","interfaces":[{"mac":"52:54:00:00:00:01","link_up":true}]},
                {"name":"old","uuid":"u2","state":"shutoff","interfaces":[{"mac":"52:54:00:00:00:02","link_up":true}]}
            ]"#
            .into()),
            L::Migrate { .. } => Err("no quarantine host configured".into()),
            L::CutLink { .. } => Ok("done".into()),
            other => Err(format!("{} not expected", other.name())),
        }
    }
}

/// An AV agent routed as it was told: it records the verbs it is called with.
#[derive(Clone)]
struct Antivirus {
    vm: &'static str,
    route: Arc<Mutex<Option<String>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Agent for Antivirus {
    type Verb = vespa_proto::verbs::AvVerb;

    async fn call(&self, verb: Self::Verb) -> VerbResult {
        use vespa_proto::verbs::AvVerb as V;
        match verb {
            V::Status {} => {
                let route = match lock(&self.route).clone() {
                    Some(agent) => serde_json::json!({"route": "via_hypervisor", "agent": agent}),
                    None => serde_json::json!({"route": "direct"}),
                };
                Ok(serde_json::json!({"vm": self.vm, "route": route}).to_string())
            }
            V::IsolateWarning { hypervisor_agent } => {
                lock(&self.calls).push(format!("isolate_warning {hypervisor_agent}"));
                *lock(&self.route) = Some(hypervisor_agent);
                Ok("ok".into())
            }
            V::ConnectWarning {} => {
                lock(&self.calls).push("connect_warning".into());
                *lock(&self.route) = None;
                Ok("ok".into())
            }
            other => Err(format!("{} not expected", other.name())),
        }
    }
}

const VM_TOPOLOGY: &str = r#"
[settings]
key_file = "psk"

[[machine]]
name = "hv"
address = "127.0.0.1"

[[node]]
name = "VO"
kind = "vo"
location = "hv"
port = 5150

[[node]]
name = "HO_HY"
kind = "ho_hy"
location = "hv"
master = "VO"
port = 5151

[[node]]
name = "LV"
kind = "agent_libvirt"
location = "hv"
master = "HO_HY"
port = 5152

[[node]]
name = "AV"
kind = "agent_av"
location = "hv"
master = "HO_HY"
port = 5153

[[node]]
name = "AV2"
kind = "agent_av"
location = "hv"
master = "HO_HY"
port = 5154
"#;

/// Reconciliation of what only libvirt and the AV agents can tell: a quarantine the policy
/// holds whose VM still runs on the source is migrated again (and the failure said); an AV
/// agent that lost its isolation is told again; another AV agent's isolation that no
/// decision holds, with no ledger to say VESPA placed it, is left alone; a VM shut off here
/// that nobody quarantined is not a stray.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantines_and_av_isolations_are_reconciled_from_what_the_agents_tell() {
    let topo = Topology::from_toml("tree.toml", VM_TOPOLOGY).unwrap();
    let text = format!(
        "{}\n[reconcile]\nevery_s = 1\n",
        RULES.replace("hypervisor = \"HY\"", "hypervisor = \"LV\"")
    );
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let d = PolicyDriver::new(&text, false, Some(&topo), Some(metrics.clone()), None).unwrap();
    let restore = |effect: vespa_policy::Effect, via: &str| {
        d.step(vespa_policy::Input::Restore(Box::new(
            vespa_policy::Restored {
                effect,
                via: via.into(),
                firewall: false,
                holders: vec!["infection".into()],
                since: 0,
                expires_at: None,
                ttl_ns: None,
                rate: None,
                dry: false,
            },
        )));
    };
    restore(vespa_policy::Effect::Quarantined("web".into()), "LV");
    restore(
        vespa_policy::Effect::AvIsolated("web".into(), "AV".into()),
        "AV",
    );
    let psk = vespa_proto::Psk::random();
    let (vo, vo_addr) = node(
        "VO",
        Role::Vo,
        None,
        &psk,
        Hooks {
            agent: None,
            alert_handlers: vec![d.handler()],
        },
    )
    .await;
    let lv = Hypervisor::default();
    let av = Antivirus {
        vm: "web",
        route: Arc::default(),
        calls: Arc::default(),
    };
    let av2 = Antivirus {
        vm: "db",
        route: Arc::new(Mutex::new(Some("LV".into()))),
        calls: Arc::default(),
    };
    let mut _kept = Vec::new();
    for (name, kind, agent) in [
        ("LV", AgentKind::Libvirt, AgentRef::new(lv.clone())),
        ("AV", AgentKind::Av, AgentRef::new(av.clone())),
        ("AV2", AgentKind::Av, AgentRef::new(av2.clone())),
    ] {
        let hooks = Hooks {
            agent: Some(agent),
            alert_handlers: vec![],
        };
        _kept.push(node(name, Role::Agent(kind), Some((&vo, vo_addr)), &psk, hooks).await);
    }
    until("the agents under the VO", || vo.stats().children.len() == 3).await;
    d.start(vo.clone());

    until("the isolation told again", || {
        lock(&av.calls).iter().any(|c| c == "isolate_warning LV")
    })
    .await;
    until("the quarantine migrated again", || {
        lock(&lv.0).iter().any(|c| c == "migrate web q")
    })
    .await;
    let shown = alerts_when(&vo, |s| s.contains("reconciliation of LV")).await;
    assert!(
        shown.contains("quarantined web runs here: migrated again to q")
            && shown.contains("no quarantine host configured"),
        "{shown}"
    );
    let text = crate::metrics::render(&metrics.registry(vo.clone()));
    let drift = |actuator: &str, kind: &str| {
        let series = format!(
            "vespa_decisions_drift_total{{node=\"VO\",actuator=\"{actuator}\",kind=\"{kind}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.parse::<u64>().ok())
    };
    assert!(drift("LV", "missing") >= Some(1), "{text}");
    assert_eq!(
        drift("LV", "stray"),
        Some(0),
        "a VM merely shut off: {text}"
    );
    assert!(drift("AV", "missing") >= Some(1), "{text}");
    assert_eq!(drift("AV2", "stray"), Some(0), "not VESPA's: {text}");
    assert!(
        lock(&av2.calls).is_empty(),
        "the operator's isolation stays"
    );
    assert_eq!(lock(&av2.route).as_deref(), Some("LV"));
    {
        let calls = lock(&lv.0);
        let n = |verb: &str| calls.iter().filter(|c| c.starts_with(verb)).count();
        assert!(
            n("migrate") <= n("list_vms"),
            "a migration is asked once per pass, never retried within it: {calls:?}"
        );
    }
    vo.destroy();
}

/// An SDN agent that takes its time over releases only, recording each verb when it is done.
#[derive(Default, Clone)]
struct SlowReleases(Arc<Mutex<Vec<String>>>);

impl Agent for SlowReleases {
    type Verb = SdnVerb;

    async fn call(&self, verb: SdnVerb) -> VerbResult {
        if matches!(verb, SdnVerb::ReleaseHackers { .. }) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lock(&self.0).push(verb.name().to_string());
        Ok("done".into())
    }
}

/// An operator's release followed at once by a new block of the same target: the block is
/// sent only once the release has ended, so the agent never removes the new block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_about_one_target_reach_the_agent_in_the_order_decided() {
    let sdn = SlowReleases::default();
    let (d, _vo, _sdn) = vo_with_sdn(AgentRef::new(sdn.clone())).await;
    for _ in 0..3 {
        d.block("10.0.0.7", 600).unwrap();
        d.release("10.0.0.7").unwrap();
    }
    d.block("10.0.0.7", 600).unwrap();
    wait_until_async("seven calls at the agent", Duration::from_secs(30), || {
        std::future::ready(lock(&sdn.0).len() >= 7)
    })
    .await;
    let seen = lock(&sdn.0).clone();
    let decided: Vec<&str> = ["block_hackers", "release_hackers"]
        .iter()
        .cycle()
        .take(7)
        .copied()
        .collect();
    assert_eq!(seen, decided);
}

/// A connections sensor whose neighbour table knows one remote: the hypervisor's VM `web`.
#[derive(Clone)]
struct Neighbours;

impl Agent for Neighbours {
    type Verb = vespa_proto::verbs::SensorVerb;

    async fn call(&self, verb: Self::Verb) -> VerbResult {
        match verb {
            vespa_proto::verbs::SensorVerb::MacOf { ip } if ip.to_string() == "192.0.2.10" => {
                Ok("52:54:00:00:00:01".into())
            }
            other => Err(format!("{} not known", other.name())),
        }
    }
}

/// A rule keyed by remote address whose ladder cuts the link: the remote is one of this
/// hypervisor's VMs (its MAC, from the sensor's neighbour table, is in the libvirt agent's
/// `list_vms`), so the policy cuts that VM's link; a remote that is no VM of ours is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_that_is_one_of_our_vms_has_its_link_cut() {
    let topo = Topology::from_toml("tree.toml", VM_TOPOLOGY).unwrap();
    let text = RULES.replace(
        r#"ladder = [{ action = "block", ttl_s = 600 }]"#,
        r#"ladder = [{ action = "cut_link" }]"#,
    );
    let d = PolicyDriver::new(&text, false, Some(&topo), None, None).unwrap();
    let psk = vespa_proto::Psk::random();
    let (vo, vo_addr) = node(
        "VO",
        Role::Vo,
        None,
        &psk,
        Hooks {
            agent: None,
            alert_handlers: vec![d.handler()],
        },
    )
    .await;
    let lv = Hypervisor::default();
    let (_lv, _) = node(
        "LV",
        Role::Agent(AgentKind::Libvirt),
        Some((&vo, vo_addr)),
        &psk,
        Hooks {
            agent: Some(AgentRef::new(lv.clone())),
            alert_handlers: vec![],
        },
    )
    .await;
    let (sensor, _) = node(
        "CONN",
        Role::Agent(AgentKind::Connections),
        Some((&vo, vo_addr)),
        &psk,
        Hooks {
            agent: Some(AgentRef::new(Neighbours)),
            alert_handlers: vec![],
        },
    )
    .await;
    until("the agents under the VO", || vo.stats().children.len() == 2).await;
    d.start(vo.clone());
    until("the VMs listed", || d.inner.vms.macs() > 0).await;
    for addr in ["203.0.113.5", "192.0.2.10"] {
        sensor
            .raise(AlertBody::ConnThreshold {
                addr: addr.parse().unwrap(),
                established: 150,
                threshold: 50,
            })
            .unwrap();
    }
    until("the VM's link cut", || {
        lock(&lv.0).iter().any(|c| c == "cut_link web")
    })
    .await;
    let active = d.active_actions();
    assert_eq!(
        active
            .iter()
            .map(|a| (a.action.as_str(), a.key.as_str()))
            .collect::<Vec<_>>(),
        [("cut_link", "web")],
        "the other remote is no VM of ours: nothing to cut"
    );
    vo.destroy();
}
