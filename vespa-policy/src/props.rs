//! Properties over random input streams.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use crate::*;

fn addr(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i))
}

/// One input and the seconds elapsed before it. `max_conn` bounds the samples.
fn input(max_conn: u64, disruptive: bool) -> impl Strategy<Value = (u64, Input)> {
    let sample = (0u8..4, 0..=max_conn).prop_map(|(i, n)| Input::Sample {
        key: Key::Remote(addr(i)),
        metric: Metric::Established,
        value: n,
    });
    let neighbour =
        (0u8..4, 0u8..3, proptest::option::of(0u8..2)).prop_map(|(i, m, vm)| Input::Neighbour {
            ip: addr(i),
            mac: Mac([0x52, 0x54, 0, 0, 0, m]),
            vm: vm.map(|v| format!("vm{v}")),
        });
    let result = (1u64..30, any::<bool>()).prop_map(|(id, ok)| Input::ActionResult {
        id,
        ok,
        error: None,
    });
    let release = (0u8..4).prop_map(|i| Input::ManualRelease {
        key: Key::Remote(addr(i)),
    });
    let infected = (0u8..2).prop_map(|v| Input::Alert {
        origin: "Agent_AV".into(),
        path: vec![],
        timestamp_ns: 0,
        body: AlertBody::Infected {
            vm: format!("vm{v}"),
            file: "f".into(),
            signature: "s".into(),
        },
    });
    let calm = prop_oneof![sample, neighbour, result, Just(Input::Tick)];
    let any_input = if disruptive {
        prop_oneof![4 => calm, 1 => release, 1 => infected].boxed()
    } else {
        calm.boxed()
    };
    (0u64..40, any_input)
}

/// [`input`]'s disruptive inputs and the operator's blocks (up to an hour) of the same
/// addresses and MACs.
fn with_operator() -> impl Strategy<Value = (u64, Input)> {
    let target = prop_oneof![
        (0u8..4).prop_map(|i| Target::Ip(addr(i))),
        (0u8..3).prop_map(|m| Target::Mac(Mac([0x52, 0x54, 0, 0, 0, m]))),
    ];
    let block = (0u64..40, target, 1u64..=3600).prop_map(|(dt, target, ttl)| {
        (
            dt,
            Input::ManualBlock {
                target,
                ttl_ns: ttl * SECOND,
            },
        )
    });
    prop_oneof![4 => input(300, true), 1 => block]
}

/// A firewall policy: the SYN rule throttles, then blocks (IPv6 by /64), with the kernel
/// reflex and both caps; 10.0.0.0 and the MAC ...:fe are on the allowlist.
fn firewall_rules() -> Rules {
    Rules::from_toml(
        r#"
[actuators]
sdn = "s"
libvirt = "l"
quarantine = "q"
av = "a"
hypervisor = "h"
firewall = "fw"

[allowlist]
targets = ["10.0.0.0", "52:54:00:00:00:fe"]

[[rule]]
name = "syn"
metric = "syn_rate"
key = "remote"
window_s = 2
above = 100
below = 20
calm_s = 30
verify_s = 10
v6_prefix = 64
reflex = true
max_blocks = 2
max_blocks_per_min = 3
ladder = [{ action = "throttle", rate = "1mbit", ttl_s = 60 }, { action = "block", ttl_s = 600 }]
"#,
    )
    .expect("the firewall rules parse")
}

/// Addresses of the firewall properties: 10.0.0.0 to 10.0.0.3, and four IPv6 addresses in
/// two /64s.
fn fw_addr(i: u8) -> IpAddr {
    if i < 4 {
        addr(i)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            u16::from(i % 2),
            0,
            0,
            0,
            u16::from(i),
        ))
    }
}

/// Inputs for the firewall rules: SYN samples, neighbours (one of them at the protected
/// MAC), the kernel reflex's blocks, the operator's entries and blocks, ticks and results.
fn fw_input(with_reflex: bool) -> impl Strategy<Value = (u64, Input)> {
    let target = prop_oneof![
        (0u8..8).prop_map(|i| Target::Ip(fw_addr(i))),
        (0u8..2).prop_map(|i| Target::Net(Prefix::new(fw_addr(4 + i), 64).expect("a /64"))),
        Just(Target::Net(Prefix::new(addr(0), 30).expect("a /30"))),
        (0u8..2).prop_map(|m| Target::Mac(Mac([0x52, 0x54, 0, 0, 0, 0xfe - m]))),
    ];
    let sample = (0u8..8, 0u64..300).prop_map(|(i, n)| Input::Sample {
        key: Key::Remote(fw_addr(i)),
        metric: Metric::SynRate,
        value: n,
    });
    let neighbour = (0u8..4, 0u8..2).prop_map(|(i, m)| Input::Neighbour {
        ip: fw_addr(i),
        mac: Mac([0x52, 0x54, 0, 0, 0, 0xfe - m]),
        vm: None,
    });
    let reflex = (0u8..8, 0u64..700).prop_map(move |(i, ttl_s)| Input::Alert {
        origin: "fw".into(),
        path: vec![],
        timestamp_ns: 0,
        body: AlertBody::ReflexBlock {
            target: Target::Ip(fw_addr(i)),
            cause: ReflexCause::Syn,
            value: 150,
            threshold: 100,
            ttl_s,
        },
    });
    let allow = target
        .clone()
        .prop_map(|target| Input::Allow { target, note: None });
    let disallow = target.clone().prop_map(|target| Input::Disallow { target });
    let manual = (target, 1u64..600).prop_map(|(target, s)| Input::ManualBlock {
        target,
        ttl_ns: s * SECOND,
    });
    let result = (1u64..40, any::<bool>()).prop_map(|(id, ok)| Input::ActionResult {
        id,
        ok,
        error: None,
    });
    let reflex_weight = if with_reflex { 2 } else { 0 };
    let any_input = prop_oneof![
        8 => sample,
        2 => neighbour,
        reflex_weight => reflex,
        1 => allow,
        1 => disallow,
        1 => manual,
        2 => result,
        3 => Just(Input::Tick),
    ];
    (0u64..20, any_input)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn nothing_protected_is_ever_blocked_or_throttled(inputs in proptest::collection::vec(fw_input(true), 0..200)) {
        let mut st = State::new(firewall_rules());
        let mut now = 0;
        for (dt, i) in inputs {
            now += dt * SECOND;
            for a in step(&mut st, i, now) {
                if let Action::Block { target, .. } | Action::Throttle { target, .. } = &a {
                    prop_assert!(st.protected_by(target).is_none(), "{:?} proposed though protected by {:?}", a, st.protected_by(target));
                }
            }
        }
    }

    #[test]
    fn the_caps_hold_without_the_reflex_and_everything_ends_once_calm(inputs in proptest::collection::vec(fw_input(false), 0..200)) {
        let mut st = State::new(firewall_rules());
        let mut now = 0;
        let mut placed: Vec<Nanos> = Vec::new();
        for (dt, i) in inputs {
            now += dt * SECOND;
            let held_before: std::collections::BTreeSet<Effect> = st.effects().map(|p| p.effect.clone()).collect();
            step(&mut st, i, now);
            let by_rule: Vec<InPlace> = st.effects().filter(|p| p.holders.contains(&"syn")).collect();
            prop_assert!(by_rule.len() <= 2, "max_blocks = 2 but the rule holds {:?}", by_rule);
            let new = by_rule.iter().filter(|p| !held_before.contains(p.effect)).count();
            placed.extend(std::iter::repeat_n(now, new));
            let recent = placed.iter().filter(|t| now.saturating_sub(**t) < 60 * SECOND).count();
            prop_assert!(recent <= 3, "max_blocks_per_min = 3 but {} new in the last minute", recent);
        }
        for _ in 0..720 {
            now += 10 * SECOND;
            step(&mut st, Input::Tick, now);
        }
        prop_assert_eq!(st.effects().count(), 0, "still in place: {:?}", st.effects().collect::<Vec<_>>());
    }

    #[test]
    fn no_action_without_a_threshold_crossing(inputs in proptest::collection::vec(input(100, false), 0..200)) {
        let mut st = State::new(Rules::default_rules());
        let mut now = 0;
        for (dt, i) in inputs {
            now += dt * SECOND;
            let out = step(&mut st, i, now);
            prop_assert!(out.is_empty(), "nothing crossed 100 but got {:?}", out);
        }
    }

    #[test]
    fn every_block_is_released_once_calm(inputs in proptest::collection::vec(input(300, true), 0..200)) {
        let mut st = State::new(Rules::default_rules());
        let mut now = 0;
        for (dt, i) in inputs {
            now += dt * SECOND;
            step(&mut st, i, now);
        }
        // Two hours of nothing but time.
        for _ in 0..720 {
            now += 10 * SECOND;
            step(&mut st, Input::Tick, now);
        }
        prop_assert!(st.active_blocks().is_empty(), "still blocked: {:?}", st.active_blocks());
    }

    #[test]
    fn every_verification_is_about_an_effect_placed_before(inputs in proptest::collection::vec(input(300, true), 0..200)) {
        let mut st = State::new(Rules::default_rules());
        let mut placed = std::collections::BTreeSet::new();
        let mut now = 0;
        for (dt, i) in inputs {
            now += dt * SECOND;
            for a in step(&mut st, i, now) {
                match &a {
                    Action::Verified { effect, .. } => {
                        prop_assert!(placed.contains(effect), "verified {:?}, never placed", effect)
                    }
                    a if a.is_actuator() => {
                        if let Some(e) = a.effect() {
                            placed.insert(e);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn dry_run_never_acts(inputs in proptest::collection::vec(input(300, true), 0..200)) {
        let mut st = State::new(Rules::default_rules());
        step(&mut st, Input::SetDryRun(true), 0);
        let mut now = 0;
        for (dt, i) in inputs {
            now += dt * SECOND;
            for a in step(&mut st, i, now) {
                prop_assert!(!a.is_actuator(), "dry-run emitted {:?}", a);
            }
        }
    }

    #[test]
    fn replay_is_deterministic_and_ids_increase(inputs in proptest::collection::vec(input(300, true), 0..200)) {
        let run = || {
            let mut st = State::new(Rules::default_rules());
            let mut now = 0;
            let mut all = Vec::new();
            for (dt, i) in inputs.clone() {
                now += dt * SECOND;
                all.extend(step(&mut st, i, now));
            }
            all
        };
        let first = run();
        prop_assert_eq!(&first, &run(), "same inputs, same actions");
        let ids: Vec<ActionId> = first.iter().filter_map(Action::id).collect();
        prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing: {:?}", ids);
    }

    #[test]
    fn every_block_ends_the_operators_at_their_ttl(inputs in proptest::collection::vec(with_operator(), 0..200)) {
        let mut st = State::new(Rules::default_rules());
        let mut now = 0;
        for (dt, i) in inputs {
            now += dt * SECOND;
            step(&mut st, i, now);
        }
        for _ in 0..720 {
            now += 10 * SECOND;
            step(&mut st, Input::Tick, now);
        }
        prop_assert!(st.active_blocks().is_empty(), "still blocked: {:?}", st.active_blocks());
    }

    #[test]
    fn what_is_in_place_has_a_holder_and_a_past(inputs in proptest::collection::vec(with_operator(), 0..200)) {
        let mut st = State::new(Rules::default_rules());
        let mut now = 0;
        let mut all = Vec::new();
        for (dt, i) in inputs.clone() {
            now += dt * SECOND;
            all.extend(step(&mut st, i, now));
            for p in st.effects() {
                prop_assert!(!p.holders.is_empty(), "nobody holds {:?}", p);
                prop_assert!(p.since <= now && p.expires_at.is_none_or(|x| x > p.since), "{:?} at {}", p, now);
            }
        }
        let mut again = State::new(Rules::default_rules());
        let mut now = 0;
        let mut replayed = Vec::new();
        for (dt, i) in inputs {
            now += dt * SECOND;
            replayed.extend(step(&mut again, i, now));
        }
        prop_assert_eq!(all, replayed, "same inputs, same actions");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// What a state lists, restored into a fresh one with the same rules (the orchestrator's
    /// restart), is listed the same, and restoring sends nothing.
    #[test]
    fn restoring_what_is_in_place_lists_the_same(inputs in proptest::collection::vec(input(200, true), 0..150)) {
        let mut st = State::new(Rules::default_rules());
        let mut now = 0;
        for (dt, i) in inputs {
            now += dt * SECOND;
            step(&mut st, i, now);
        }
        let mut back = State::new(Rules::default_rules());
        step(&mut back, Input::Tick, now);
        for p in st.effects() {
            let r = Restored {
                effect: p.effect.clone(),
                via: p.via.to_string(),
                firewall: false,
                holders: p.holders.iter().map(|h| h.to_string()).collect(),
                since: p.since,
                expires_at: p.expires_at,
                ttl_ns: None,
                rate: p.rate,
                dry: p.dry,
            };
            let out = step(&mut back, Input::Restore(Box::new(r)), now);
            prop_assert!(out.is_empty(), "restoring sent {:?}", out);
        }
        let a: Vec<InPlace> = st.effects().filter(|p| p.expires_at.is_none_or(|t| t > now)).collect();
        let b: Vec<InPlace> = back.effects().collect();
        prop_assert_eq!(a, b);
    }
}
