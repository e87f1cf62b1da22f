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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

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
