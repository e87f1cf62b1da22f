use std::time::Duration;

use vespa_testkit::{try_wait_until_async, wait_until_async};

use vespa_node::{
    Agent, AgentKind, AgentRef, Hooks, MasterAddr, Node, NodeHandle, NodeSpec, Role, Security,
    VerbResult,
};
use vespa_policy::{Action, Key, Target};
use vespa_proto::verbs::{SdnVerb, Verb};
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
    // The failure came back as an ActionResult; the policy's alert is a VO Text alert.
    let shown = alerts_when(&h, |s| s.contains("policy DidNotTake")).await;
    assert!(
        shown.contains("policy DidNotTake") && shown.contains("10.0.0.66"),
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

/// Sensors that lose events report it; the policy answers with a blind-spot alert at the VO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_sensor_events_raise_a_blind_spot_alert() {
    assert!(matches!(
        health_input("conns", &AlertBody::SensorHealth { events_lost: 5, map_update_failures: 1, maps_full: 1 }),
        Some(Input::Health { ref origin, events_lost: 5, map_full: 2 }) if origin == "conns"
    ));
    assert!(health_input("conns", &AlertBody::Text("x".into())).is_none());
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
    h.raise(AlertBody::SensorHealth {
        events_lost: 12,
        map_update_failures: 0,
        maps_full: 0,
    })
    .unwrap();
    let shown = alerts_when(&h, |s| s.contains("policy BlindSpot")).await;
    assert!(shown.contains("policy BlindSpot"), "{shown}");
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
    let alerts =
        alerts_of(&alerts_when(&vo, |s| alerts_of(s).iter().any(|a| a["origin"] == "HO_PH")).await);
    let crossing = alerts
        .iter()
        .find(|a| a["body"].get("ConnThreshold").is_some())
        .expect("the crossing climbed on");
    assert_eq!(
        crossing["path"],
        serde_json::json!(["ph_conns", "HO_PH", "VO"])
    );
    let note = alerts.iter().find(|a| a["origin"] == "HO_PH").unwrap();
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
