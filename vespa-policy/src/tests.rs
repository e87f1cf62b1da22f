//! Table-driven tests, one per behaviour, against the default rules unless a test needs
//! shorter timers (then the default text with a few numbers replaced).

use std::net::IpAddr;

use crate::*;

mod firewall;
mod operator;
mod restore;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn mac(s: &str) -> Mac {
    s.parse().expect("test MAC")
}

/// The default rules with `from` replaced by `to` in the text (e.g. shorter calm for a test).
fn rules_with(edits: &[(&str, &str)]) -> Rules {
    let mut text = DEFAULT_RULES.to_string();
    for (from, to) in edits {
        assert!(
            text.contains(from),
            "DEFAULT_RULES no longer contains {from:?}"
        );
        text = text.replacen(from, to, 1);
    }
    Rules::from_toml(&text).expect("edited rules must parse")
}

/// The operator's block of `target` for `ttl_s` seconds.
fn manual(target: Target, ttl_s: u64) -> Input {
    Input::ManualBlock {
        target,
        ttl_ns: ttl_s * SECOND,
    }
}

type Check = Box<dyn Fn(&Action) -> bool>;
/// (name, samples (second, connections), ticks after, blocks, releases)
type HysteresisCase<'a> = (&'a str, &'a [(u64, u64)], &'a [u64], usize, usize);

/// A policy under test. What a step returns is what is sent and raised; the verification
/// outcomes ([`Action::Verified`]) are kept aside in `verified`, checked by the tests about
/// them.
struct H {
    st: State,
    all: Vec<Action>,
    verified: Vec<(Effect, Verification)>,
}

impl H {
    fn new(rules: Rules) -> H {
        H {
            st: State::new(rules),
            all: Vec::new(),
            verified: Vec::new(),
        }
    }
    fn at(&mut self, secs: u64, input: Input) -> Vec<Action> {
        let mut out = step(&mut self.st, input, secs * SECOND);
        out.retain(|a| match a {
            Action::Verified { effect, outcome } => {
                self.verified.push((effect.clone(), outcome.clone()));
                false
            }
            _ => true,
        });
        self.all.extend(out.iter().cloned());
        out
    }
    /// The outcomes reported since the last call: (effect, `passed`/`failed`/...).
    fn outcomes(&mut self) -> Vec<(Effect, &'static str)> {
        self.verified
            .drain(..)
            .map(|(e, v)| (e, v.outcome()))
            .collect()
    }
    fn conn(&mut self, secs: u64, addr: &str, n: u64) -> Vec<Action> {
        self.at(
            secs,
            Input::Sample {
                key: Key::Remote(ip(addr)),
                metric: Metric::Established,
                value: n,
            },
        )
    }
    fn tick(&mut self, secs: u64) -> Vec<Action> {
        self.at(secs, Input::Tick)
    }
}

fn count(actions: &[Action], f: impl Fn(&Action) -> bool) -> usize {
    actions.iter().filter(|a| f(a)).count()
}
fn is_block(a: &Action) -> bool {
    matches!(a, Action::Block { .. })
}
fn is_release(a: &Action) -> bool {
    matches!(a, Action::Release { .. })
}
fn is_alert(kind: AlertKind) -> impl Fn(&Action) -> bool {
    move |a| matches!(a, Action::Alert { kind: k, .. } if *k == kind)
}

#[test]
fn threshold_crossing_hysteresis_and_calm_release() {
    let cases: &[HysteresisCase] = &[
        ("at the threshold is not above it", &[(0, 100)], &[], 0, 0),
        ("crossing blocks", &[(0, 101)], &[], 1, 0),
        (
            "the band between below and above keeps it active",
            &[(0, 150), (5, 50), (10, 150)],
            &[],
            1,
            0,
        ),
        (
            "calm for 120 s releases",
            &[(0, 150), (5, 10)],
            &[125],
            1,
            1,
        ),
        (
            "119 s of calm is not enough",
            &[(0, 150), (5, 10)],
            &[124],
            1,
            0,
        ),
        (
            "the band interrupts calm",
            &[(0, 150), (5, 10), (60, 50), (61, 10)],
            &[130, 180],
            1,
            0,
        ),
        ("no data counts as calm", &[(0, 150)], &[1, 10, 130], 1, 1),
        (
            "a 5 s window bridges a missing sample",
            &[(0, 150), (5, 10), (6, 150), (7, 10)],
            &[130],
            1,
            0,
        ),
    ];
    for (name, samples, ticks, blocks, releases) in cases {
        let mut h = H::new(Rules::default_rules());
        for (t, n) in *samples {
            h.conn(*t, "198.51.100.7", *n);
        }
        for t in *ticks {
            h.tick(*t);
        }
        assert_eq!(
            count(&h.all, is_block),
            *blocks,
            "{name}: blocks in {:?}",
            h.all
        );
        assert_eq!(
            count(&h.all, is_release),
            *releases,
            "{name}: releases in {:?}",
            h.all
        );
    }
}

#[test]
fn cool_down_defers_the_next_action() {
    let mut h = H::new(rules_with(&[
        ("window_s = 5", "window_s = 1"),
        ("calm_s = 120", "calm_s = 5"),
    ]));
    assert_eq!(count(&h.conn(0, "198.51.100.7", 150), is_block), 1);
    h.conn(1, "198.51.100.7", 0);
    assert_eq!(count(&h.tick(7), is_release), 1, "released after 5 s calm");
    // (second, event, blocks expected from it)
    let steps: &[(u64, Option<u64>, usize)] = &[
        (10, Some(150), 0),
        (29, Some(150), 0),
        (30, Some(150), 1),
        (31, Some(150), 0),
    ];
    for (t, sample, blocks) in steps {
        let out = match sample {
            Some(n) => h.conn(*t, "198.51.100.7", *n),
            None => h.tick(*t),
        };
        assert_eq!(count(&out, is_block), *blocks, "t={t}: {out:?}");
    }
}

#[test]
fn escalation_ladder_climbs_on_repeated_offences() {
    let mut h = H::new(rules_with(&[
        ("window_s = 5", "window_s = 1"),
        ("calm_s = 120", "calm_s = 5"),
        ("cooldown_s = 30", "cooldown_s = 0"),
        ("verify_s = 30", "verify_s = 0"),
    ]));
    h.at(
        0,
        Input::Neighbour {
            ip: ip("10.0.0.9"),
            mac: mac("52:54:00:aa:bb:cc"),
            vm: Some("web".into()),
        },
    );
    let target = Target::Mac(mac("52:54:00:aa:bb:cc"));
    // (expected action of the offence, expected undo when calm)
    let ladder: Vec<(Check, Check)> = vec![
        (
            Box::new(
                move |a| matches!(a, Action::Block { target: t, ttl_ns, .. } if *t == target && *ttl_ns == 600 * SECOND),
            ),
            Box::new(is_release),
        ),
        (
            Box::new(|a| matches!(a, Action::Block { ttl_ns, .. } if *ttl_ns == 3600 * SECOND)),
            Box::new(is_release),
        ),
        (
            Box::new(|a| matches!(a, Action::CutLink { vm, .. } if vm == "web")),
            Box::new(|a| matches!(a, Action::ConnectLink { vm, .. } if vm == "web")),
        ),
        (
            Box::new(
                |a| matches!(a, Action::Migrate { vm, to, .. } if vm == "web" && to == "quarantine"),
            ),
            Box::new(is_alert(AlertKind::Notice)),
        ),
        (
            Box::new(is_alert(AlertKind::LadderExhausted)),
            Box::new(|_| true),
        ),
    ];
    let mut t = 10;
    for (rung, (offence, undo)) in ladder.iter().enumerate() {
        let out = h.conn(t, "10.0.0.9", 150);
        assert!(out.iter().any(offence), "rung {rung}: {out:?}");
        h.conn(t + 1, "10.0.0.9", 0);
        let out = h.tick(t + 7);
        assert!(
            out.is_empty() || out.iter().any(undo),
            "rung {rung} undo: {out:?}"
        );
        t += 20;
    }
    assert!(h.st.active_blocks().is_empty());
    // After an hour of calm the key starts again at the bottom.
    h.tick(t + 3600);
    assert_eq!(h.st.level("conn-flood", &Key::Remote(ip("10.0.0.9"))), 0);
}

#[test]
fn block_ttl_expiry_is_forgotten_and_repeat_escalates() {
    let mut h = H::new(rules_with(&[("verify_s = 30", "verify_s = 0")]));
    h.conn(0, "198.51.100.7", 150);
    // Still offending when the 600 s block expires: the next rung (a longer block).
    h.conn(599, "198.51.100.7", 150);
    let out = h.tick(600);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Block { ttl_ns, .. } if *ttl_ns == 3600 * SECOND)),
        "{out:?}"
    );
    assert!(
        !out.iter().any(is_release),
        "an expired block needs no release: {out:?}"
    );
}

#[test]
fn manual_release_undoes_and_resets() {
    let mut h = H::new(Rules::default_rules());
    h.conn(0, "198.51.100.7", 150);
    h.conn(1, "198.51.100.7", 150);
    let out = h.at(
        2,
        Input::ManualRelease {
            key: Key::Remote(ip("198.51.100.7")),
        },
    );
    assert_eq!(count(&out, is_release), 1, "{out:?}");
    assert_eq!(
        h.st.level("conn-flood", &Key::Remote(ip("198.51.100.7"))),
        0
    );
    assert_eq!(
        count(&h.conn(3, "198.51.100.7", 150), is_block),
        0,
        "cool-down after a manual release"
    );
    let out = h.conn(32, "198.51.100.7", 150);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Block { ttl_ns, .. } if *ttl_ns == 600 * SECOND)),
        "bottom rung again: {out:?}"
    );
}

#[test]
fn manual_release_by_blocked_mac_frees_the_address_that_caused_it() {
    let m = mac("52:54:00:00:00:42");
    let mut h = H::new(Rules::default_rules());
    h.at(
        0,
        Input::Neighbour {
            ip: ip("10.0.0.5"),
            mac: m,
            vm: None,
        },
    );
    h.conn(1, "10.0.0.5", 150);
    let out = h.at(2, Input::ManualRelease { key: Key::Mac(m) });
    assert!(
        matches!(out.as_slice(), [Action::Release { target: Target::Mac(t), .. }] if *t == m),
        "{out:?}"
    );
    assert!(h.st.active_blocks().is_empty());
}

#[test]
fn manual_release_of_a_vm_undoes_the_ladder_cut_and_the_infection() {
    let mut h = H::new(rules_with(&[
        ("verify_s = 30", "verify_s = 0"),
        ("ladder = [", "ladder = [\n  { action = \"cut_link\" },"),
    ]));
    h.at(
        0,
        Input::Neighbour {
            ip: ip("10.0.0.9"),
            mac: mac("52:54:00:aa:bb:cc"),
            vm: Some("web".into()),
        },
    );
    let out = h.conn(1, "10.0.0.9", 150);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::CutLink { vm, .. } if vm == "web")),
        "{out:?}"
    );
    h.at(
        2,
        Input::Alert {
            origin: "Agent_AV".into(),
            path: vec![],
            timestamp_ns: 0,
            body: AlertBody::Infected {
                vm: "web".into(),
                file: "f".into(),
                signature: "s".into(),
            },
        },
    );
    let out = h.at(
        3,
        Input::ManualRelease {
            key: Key::Vm("web".into()),
        },
    );
    assert_eq!(
        count(&out, |a| matches!(a, Action::ConnectLink { .. })),
        1,
        "{out:?}"
    );
    assert_eq!(
        count(&out, |a| matches!(a, Action::AvConnect { .. })),
        1,
        "{out:?}"
    );
    assert_eq!(
        h.st.effects().count(),
        0,
        "{:?}",
        h.st.effects().collect::<Vec<_>>()
    );
}

#[test]
fn key_count_is_bounded() {
    let mut h = H::new(rules_with(&[("max_keys = 100000", "max_keys = 2")]));
    h.conn(0, "10.0.0.1", 1);
    h.conn(0, "10.0.0.2", 1);
    let out = h.conn(0, "10.0.0.3", 150);
    assert!(
        matches!(
            out.as_slice(),
            [Action::Alert {
                kind: AlertKind::BlindSpot,
                ..
            }]
        ),
        "{out:?}"
    );
    assert_eq!(h.st.tracked_keys(), 2);
    assert!(h.conn(1, "10.0.0.4", 150).is_empty(), "rate-limited");
}

#[test]
fn identical_actions_are_deduplicated() {
    let shared = mac("52:54:00:00:00:42");
    let mut h = H::new(Rules::default_rules());
    h.at(
        0,
        Input::Neighbour {
            ip: ip("10.0.0.5"),
            mac: shared,
            vm: None,
        },
    );
    h.at(
        0,
        Input::Neighbour {
            ip: ip("10.0.0.6"),
            mac: shared,
            vm: None,
        },
    );
    let alert = |addr: &str| Input::Alert {
        origin: "Agent_Connections".into(),
        path: vec![],
        timestamp_ns: 0,
        body: AlertBody::ConnThreshold {
            addr: ip(addr),
            established: 150,
            threshold: 100,
        },
    };
    h.at(1, alert("10.0.0.5"));
    h.conn(1, "10.0.0.5", 160);
    h.at(2, alert("10.0.0.6"));
    assert_eq!(
        count(&h.all, is_block),
        1,
        "one MAC, one block: {:?}",
        h.all
    );
    let blocked = Effect::Blocked(Target::Mac(shared));
    assert_eq!(
        h.st.holders(&blocked),
        ["conn-flood"],
        "two keys of one rule hold it"
    );
    // One address calms down: the MAC stays blocked for the other.
    h.conn(3, "10.0.0.5", 0);
    h.tick(10);
    h.conn(130, "10.0.0.6", 150);
    h.tick(140);
    assert_eq!(
        count(&h.all, is_release),
        0,
        "still held by 10.0.0.6: {:?}",
        h.all
    );
    h.tick(260);
    assert_eq!(count(&h.all, is_release), 1, "{:?}", h.all);
}

#[test]
fn dry_run_records_instead_of_acting() {
    let mut h = H::new(Rules::default_rules());
    h.at(0, Input::SetDryRun(true));
    h.conn(1, "198.51.100.7", 150);
    h.conn(40, "198.51.100.7", 150);
    h.conn(41, "198.51.100.7", 0);
    h.tick(50);
    h.tick(200);
    assert!(h.all.iter().all(|a| !a.is_actuator()), "{:?}", h.all);
    let recorded: Vec<&Action> = h
        .all
        .iter()
        .filter_map(|a| {
            if let Action::DryRun(b) = a {
                Some(&**b)
            } else {
                None
            }
        })
        .collect();
    assert!(
        matches!(
            recorded.as_slice(),
            [Action::Block { .. }, Action::Release { .. }]
        ),
        "{recorded:?}"
    );
    assert_eq!(
        count(&h.all, is_alert(AlertKind::DidNotTake)),
        0,
        "nothing to verify in dry-run"
    );
}

#[test]
fn verification_failure_escalates_and_alerts() {
    // (how the failure shows, second it is noticed)
    for by_ack in [false, true] {
        let mut h = H::new(Rules::default_rules());
        let out = h.conn(0, "198.51.100.7", 150);
        let id = out
            .iter()
            .find_map(|a| {
                if let Action::Block { id, .. } = a {
                    Some(*id)
                } else {
                    None
                }
            })
            .expect("a block");
        h.conn(10, "198.51.100.7", 150);
        let out = if by_ack {
            h.at(
                11,
                Input::ActionResult {
                    id,
                    ok: false,
                    error: Some("controller said 500".into()),
                },
            )
        } else {
            h.conn(29, "198.51.100.7", 150);
            h.tick(30)
        };
        assert_eq!(
            count(&out, is_alert(AlertKind::DidNotTake)),
            1,
            "by_ack={by_ack}: {out:?}"
        );
        assert!(
            out.iter()
                .any(|a| matches!(a, Action::Block { ttl_ns, .. } if *ttl_ns == 3600 * SECOND)),
            "by_ack={by_ack}: {out:?}"
        );
    }
    // (verify_max, connections after the block, alerts)
    for (verify_max, after, alerts) in [(100, 30, 0), (100, 100, 0), (10, 30, 1), (100, 101, 1)] {
        let mut h = H::new(rules_with(&[(
            "verify_s = 30",
            &format!("verify_s = 30\nverify_max = {verify_max}"),
        )]));
        h.conn(0, "198.51.100.7", 150);
        h.conn(20, "198.51.100.7", after);
        let out = h.tick(31);
        assert_eq!(
            count(&out, is_alert(AlertKind::DidNotTake)),
            alerts,
            "verify_max={verify_max} after={after}: {out:?}"
        );
    }
}

#[test]
fn verification_reports_its_outcome_for_the_effect_it_checked() {
    let blocked = Effect::Blocked(Target::Ip(ip("198.51.100.7")));
    // (verify_max, connections after the block, outcome at the deadline)
    for (verify_max, after, want) in [
        (100, 30, "passed"),
        (100, 100, "passed"),
        (100, 101, "failed"),
    ] {
        let mut h = H::new(rules_with(&[(
            "verify_s = 30",
            &format!("verify_s = 30\nverify_max = {verify_max}"),
        )]));
        h.conn(0, "198.51.100.7", 150);
        assert_eq!(h.outcomes(), [], "nothing known when placed");
        h.conn(20, "198.51.100.7", after);
        h.tick(31);
        let detail = h.verified.first().map(|(_, v)| v.detail());
        assert_eq!(
            h.outcomes(),
            [(blocked.clone(), want)],
            "verify_max={verify_max} after={after}"
        );
        assert_eq!(
            detail,
            Some(if want == "passed" {
                format!("passed: {after} <= {verify_max}")
            } else {
                format!("failed: {after} > {verify_max} at the deadline")
            })
        );
        // Once per placement: later ticks say nothing more about it.
        h.tick(32);
        assert_eq!(h.outcomes(), [], "reported once");
    }

    // The actuator refused it: nothing to verify, said before the ladder acts again.
    let mut h = H::new(Rules::default_rules());
    let placed = h.conn(0, "198.51.100.7", 150);
    let Some(id) = placed.iter().find_map(|a| a.id()) else {
        panic!("a block: {placed:?}")
    };
    let out = h.at(
        1,
        Input::ActionResult {
            id,
            ok: false,
            error: Some("controller said 500".into()),
        },
    );
    assert_eq!(h.outcomes(), [(blocked.clone(), "not_verifiable")]);
    assert!(out.iter().any(is_block), "the next rung: {out:?}");

    // Calm before the deadline: passed, said before the release ends the record.
    let mut h = H::new(rules_with(&[("verify_s = 30", "verify_s = 600")]));
    h.conn(0, "198.51.100.7", 150);
    h.conn(5, "198.51.100.7", 10);
    let raw = step(&mut h.st, Input::Tick, 130 * SECOND);
    let at = |f: &dyn Fn(&Action) -> bool| raw.iter().position(f);
    assert!(
        at(
            &|a| matches!(a, Action::Verified { outcome: Verification::Passed { .. }, effect } if *effect == blocked)
        ) < at(&is_release),
        "{raw:?}"
    );
    assert!(at(&is_release).is_some(), "{raw:?}");

    // No verification: said once, when placed.
    let mut h = H::new(rules_with(&[("verify_s = 30", "verify_s = 0")]));
    h.conn(0, "198.51.100.7", 150);
    assert_eq!(h.outcomes(), [(blocked.clone(), "not_verifiable")]);
    h.tick(40);
    assert_eq!(h.outcomes(), []);

    // A block by hand: not verifiable; nothing in dry-run.
    let mut h = H::new(Rules::default_rules());
    h.at(0, manual(Target::Ip(ip("203.0.113.9")), 60));
    assert_eq!(
        h.outcomes(),
        [(
            Effect::Blocked(Target::Ip(ip("203.0.113.9"))),
            "not_verifiable"
        )]
    );
    let mut h = H::new(Rules::default_rules());
    h.at(0, Input::SetDryRun(true));
    h.conn(1, "198.51.100.7", 150);
    h.at(2, manual(Target::Ip(ip("203.0.113.9")), 60));
    h.tick(40);
    assert_eq!(h.outcomes(), [], "dry-run verifies nothing");
}

#[test]
fn blind_spot_alerts_are_rate_limited() {
    let mut h = H::new(Rules::default_rules());
    let health = |lost: u64, full: u64| Input::Health {
        origin: "agent1".into(),
        events_lost: lost,
        map_full: full,
    };
    // (second, events_lost, map_full, alerts expected)
    let steps = [
        (0, 0, 0, 0),
        (1, 5, 0, 1),
        (2, 6, 0, 0),
        (61, 6, 0, 0),
        (62, 6, 1, 1),
        (200, 2, 0, 1),
    ];
    for (t, lost, full, alerts) in steps {
        let out = h.at(t, health(lost, full));
        assert_eq!(
            count(&out, is_alert(AlertKind::BlindSpot)),
            alerts,
            "t={t}: {out:?}"
        );
    }
}

#[test]
fn reload_keeps_state_of_remaining_rules() {
    let mut h = H::new(Rules::default_rules());
    h.conn(0, "198.51.100.7", 150);
    let out = h.at(
        1,
        Input::Reload(Box::new(rules_with(&[("above = 100", "above = 200")]))),
    );
    assert!(out.is_empty(), "same rule name: nothing undone: {out:?}");
    assert_eq!(h.st.active_blocks().len(), 1);
    assert_eq!(
        h.st.level("conn-flood", &Key::Remote(ip("198.51.100.7"))),
        1
    );
    h.conn(2, "198.51.100.7", 0);
    h.tick(10);
    assert_eq!(
        count(&h.tick(131), is_release),
        1,
        "the kept state is released when calm"
    );
    // A rule that disappears releases what it held.
    h.conn(200, "198.51.100.7", 250);
    let out = h.at(
        201,
        Input::Reload(Box::new(rules_with(&[(
            "name = \"conn-flood\"",
            "name = \"other\"",
        )]))),
    );
    assert_eq!(count(&out, is_release), 1, "{out:?}");
}

#[test]
fn infection_isolates_the_vm_and_switches_the_av_path() {
    let mut h = H::new(Rules::default_rules());
    let infected = Input::Alert {
        origin: "Agent_AV".into(),
        path: vec!["Agent_AV".into(), "HO_VM".into()],
        timestamp_ns: 0,
        body: AlertBody::Infected {
            vm: "web".into(),
            file: "/tmp/x".into(),
            signature: "Eicar".into(),
        },
    };
    let out = h.at(0, infected.clone());
    assert!(out.iter().any(|a| matches!(a, Action::CutLink { vm, via, .. } if vm == "web" && via == "Agent_Libvirt")), "{out:?}");
    assert!(
        out.iter().any(
            |a| matches!(a, Action::AvIsolate { vm, av_agent, hypervisor_agent, .. }
        if vm == "web" && av_agent == "Agent_AV" && hypervisor_agent == "Agent_HY")
        ),
        "{out:?}"
    );
    let again = h.at(1, infected);
    assert_eq!(
        count(&again, Action::is_actuator),
        0,
        "already isolated: {again:?}"
    );
    assert!(
        h.tick(10_000).is_empty(),
        "infections are released by hand only"
    );
    let out = h.at(
        10_001,
        Input::ManualRelease {
            key: Key::Vm("web".into()),
        },
    );
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::ConnectLink { vm, .. } if vm == "web")),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::AvConnect { vm, .. } if vm == "web")),
        "{out:?}"
    );
}

#[test]
fn own_mac_is_never_blocked() {
    let own = "52:54:00:00:00:01";
    let mut h = H::new(rules_with(&[(
        "own_macs = []",
        "own_macs = [\"52:54:00:00:00:01\"]",
    )]));
    h.at(
        0,
        Input::Neighbour {
            ip: ip("10.0.0.5"),
            mac: mac(own),
            vm: None,
        },
    );
    let out = h.conn(1, "10.0.0.5", 150);
    assert!(
        out.iter().any(|a| matches!(
            a,
            Action::Block {
                target: Target::Ip(_),
                ..
            }
        )),
        "blocked by address instead: {out:?}"
    );
    let out = h.at(
        2,
        Input::Sample {
            key: Key::Mac(mac(own)),
            metric: Metric::Established,
            value: 500,
        },
    );
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn connections_list_zeroes_remotes_it_no_longer_lists() {
    let mut h = H::new(Rules::default_rules());
    let list = |per_remote: Vec<(IpAddr, u64)>| Input::Alert {
        origin: "Agent_Connections".into(),
        path: vec![],
        timestamp_ns: 0,
        body: AlertBody::Connections {
            per_remote,
            truncated: false,
        },
    };
    h.at(
        0,
        list(vec![(ip("198.51.100.7"), 150), (ip("192.0.2.1"), 3)]),
    );
    for t in 1..=125 {
        h.at(t, list(vec![(ip("192.0.2.1"), 3)]));
    }
    assert_eq!(count(&h.all, is_block), 1);
    assert_eq!(count(&h.all, is_release), 1, "{:?}", h.all);
}

#[test]
fn no_repeat_action_while_calming_after_a_block_expires() {
    let mut h = H::new(rules_with(&[("verify_s = 30", "verify_s = 0")]));
    h.conn(0, "198.51.100.7", 150);
    h.conn(590, "198.51.100.7", 150);
    h.conn(591, "198.51.100.7", 0);
    // (second, blocks expected): the block expires at 600 while calming; a new crossing acts.
    for (t, sample, blocks) in [(600, None, 0), (650, None, 0), (660, Some(150), 1)] {
        let out = match sample {
            Some(n) => h.conn(t, "198.51.100.7", n),
            None => h.tick(t),
        };
        assert_eq!(count(&out, is_block), blocks, "t={t}: {out:?}");
    }
}

#[test]
fn bench_runs() {
    assert!(bench_step(100, 1000) > 0.0);
}
