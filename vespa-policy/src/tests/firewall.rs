//! The firewall agent's side of the policy: throttles, blocks by prefix, the allowlist, the
//! caps, IPv6 aggregation and the kernel reflex's blocks adopted as the rules' own.

use super::*;

/// A SYN-flood rule with a firewall agent: 1 s window, calm after 10 s, no cool-down or
/// verification unless an edit adds them.
const FIREWALL_RULES: &str = r#"
[actuators]
sdn = "Agent_Controller"
libvirt = "Agent_Libvirt"
quarantine = "quarantine"
av = "Agent_AV"
hypervisor = "Agent_HY"
firewall = "Agent_Firewall"

[allowlist]
targets = ["192.0.2.1"]

[[rule]]
name = "syn-flood"
metric = "syn_rate"
key = "remote"
window_s = 1
above = 100
below = 20
calm_s = 10
cooldown_s = 0
verify_s = 0
ladder = [{ action = "block", ttl_s = 600 }, { action = "block", ttl_s = 3600 }, { action = "cut_link" }]
"#;

fn fw(edits: &[(&str, &str)]) -> Rules {
    let mut text = FIREWALL_RULES.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "FIREWALL_RULES lacks {from:?}");
        text = text.replacen(from, to, 1);
    }
    Rules::from_toml(&text).expect("edited firewall rules parse")
}

impl H {
    fn syn(&mut self, secs: u64, addr: &str, n: u64) -> Vec<Action> {
        self.at(
            secs,
            Input::Sample {
                key: Key::Remote(ip(addr)),
                metric: Metric::SynRate,
                value: n,
            },
        )
    }
}

fn net(s: &str) -> Prefix {
    s.parse().expect("test prefix")
}

fn is_throttle(a: &Action) -> bool {
    matches!(a, Action::Throttle { .. })
}

fn reflex(target: Target, ttl_s: u64) -> Input {
    Input::Alert {
        origin: "Agent_Firewall".into(),
        path: vec![],
        timestamp_ns: 0,
        body: AlertBody::ReflexBlock {
            target,
            cause: ReflexCause::Syn,
            value: 150,
            threshold: 100,
            ttl_s,
        },
    }
}

#[test]
fn blocks_go_to_the_firewall_when_one_is_named_unless_the_rung_says_sdn() {
    let mut h = H::new(fw(&[]));
    let out = h.syn(0, "198.51.100.7", 150);
    assert!(
        matches!(out.as_slice(), [Action::Block { via, firewall: true, ttl_ns, .. }]
            if via == "Agent_Firewall" && *ttl_ns == 600 * SECOND),
        "{out:?}"
    );
    assert_eq!(h.st.effects().next().map(|p| p.via), Some("Agent_Firewall"));
    h.syn(1, "198.51.100.7", 0);
    let out = h.tick(12);
    assert!(
        matches!(out.as_slice(), [Action::Release { via, firewall: true, .. }] if via == "Agent_Firewall"),
        "released where it was placed: {out:?}"
    );
    let mut h = H::new(fw(&[("ttl_s = 600 }", "ttl_s = 600, via = \"sdn\" }")]));
    let out = h.syn(0, "198.51.100.7", 150);
    assert!(
        matches!(out.as_slice(), [Action::Block { via, firewall: false, .. }] if via == "Agent_Controller"),
        "{out:?}"
    );
}

#[test]
fn a_throttle_rung_is_placed_released_when_calm_and_forgotten_at_its_ttl() {
    let rules = || {
        fw(&[(
            "ladder = [",
            "ladder = [{ action = \"throttle\", rate = \"8mbit\", ttl_s = 60 }, ",
        )])
    };
    let t = Target::Ip(ip("198.51.100.7"));
    let mut h = H::new(rules());
    let out = h.syn(0, "198.51.100.7", 150);
    assert!(
        matches!(out.as_slice(), [Action::Throttle { target, rate: Rate::Bytes(1_000_000), ttl_ns, via, .. }]
            if *target == t && *ttl_ns == 60 * SECOND && via == "Agent_Firewall"),
        "{out:?}"
    );
    let placed: Vec<InPlace> = h.st.effects().collect();
    assert_eq!(
        placed,
        [InPlace {
            effect: &Effect::Throttled(t),
            since: 0,
            expires_at: Some(60 * SECOND),
            dry: false,
            holders: vec!["syn-flood"],
            via: "Agent_Firewall",
            rate: Some(Rate::Bytes(1_000_000)),
        }]
    );
    h.syn(1, "198.51.100.7", 0);
    let out = h.tick(12);
    assert!(
        matches!(out.as_slice(), [Action::Unthrottle { target, via, .. }] if *target == t && via == "Agent_Firewall"),
        "calm releases the throttle: {out:?}"
    );
    assert_eq!(h.st.effects().count(), 0);
    // The next offence climbs to the block.
    let out = h.syn(20, "198.51.100.7", 150);
    assert!(
        matches!(out.as_slice(), [Action::Block { ttl_ns, .. }] if *ttl_ns == 600 * SECOND),
        "{out:?}"
    );

    // Still offending when the throttle's TTL ends: the agent's reaper removed it, the next
    // rung follows and nothing is released.
    let mut h = H::new(rules());
    h.syn(0, "198.51.100.7", 150);
    h.syn(60, "198.51.100.7", 150);
    let out = h.tick(60);
    assert!(
        out.iter().any(is_block) && !out.iter().any(|a| matches!(a, Action::Unthrottle { .. })),
        "{out:?}"
    );
    assert!(!h.st.effects().any(|p| *p.effect == Effect::Throttled(t)));

    // In dry-run it is only recorded, and so is its release.
    let mut h = H::new(rules());
    h.at(0, Input::SetDryRun(true));
    let out = h.syn(1, "198.51.100.7", 150);
    assert!(
        matches!(out.as_slice(), [Action::DryRun(a)] if is_throttle(a)),
        "{out:?}"
    );
    h.syn(2, "198.51.100.7", 0);
    let out = h.tick(13);
    assert!(
        matches!(out.as_slice(), [Action::DryRun(a)] if matches!(**a, Action::Unthrottle { .. })),
        "{out:?}"
    );
}

#[test]
fn a_protected_gateway_that_floods_is_never_blocked() {
    let gateway = "192.0.2.1";
    let gw_mac = mac("52:54:00:00:00:fe");
    let mut h = H::new(fw(&[]));
    h.at(
        0,
        Input::Neighbour {
            ip: ip(gateway),
            mac: gw_mac,
            vm: None,
        },
    );
    // An hour of flooding, with calm spells: never a block, one alert per offence.
    for offence in 0..3u64 {
        let start = 1 + offence * 1200;
        for s in start..start + 600 {
            h.syn(s, gateway, 5000);
        }
        h.syn(start + 600, gateway, 0);
        h.tick(start + 620);
    }
    assert_eq!(count(&h.all, Action::is_actuator), 0, "{:?}", h.all);
    assert_eq!(
        count(&h.all, is_alert(AlertKind::Protected)),
        3,
        "{:?}",
        h.all
    );
    assert!(
        h.all.iter().any(|a| matches!(a, Action::Alert { text, .. }
            if text.contains("would have blocked mac 52:54:00:00:00:fe") && text.contains("ip 192.0.2.1 is on the allowlist"))),
        "the alert names the target and the entry: {:?}",
        h.all
    );
    // Its MAC is protected by hand just the same, and so is a prefix containing it.
    assert!(h.st.protected_by(&Target::Mac(gw_mac)).is_some());
    assert!(h
        .st
        .protected_by(&Target::Net(net("192.0.2.0/24")))
        .is_some());
    assert!(h.st.protected_by(&Target::Ip(ip("192.0.2.2"))).is_none());
    let out = h.at(4000, manual(Target::Net(net("192.0.0.0/16")), 60));
    assert!(
        matches!(
            out.as_slice(),
            [Action::Alert {
                kind: AlertKind::Protected,
                ..
            }]
        ),
        "{out:?}"
    );
}

#[test]
fn a_prefix_that_contains_a_protected_address_is_not_blocked() {
    let mut h = H::new(fw(&[
        (
            "\nmetric = \"syn_rate\"",
            "\nv6_prefix = 64\nmetric = \"syn_rate\"",
        ),
        ("targets = [\"192.0.2.1\"]", "targets = [\"2001:db8::1\"]"),
    ]));
    let out = h.syn(0, "2001:db8::99", 150);
    assert!(
        matches!(out.as_slice(), [Action::Alert { kind: AlertKind::Protected, text }]
            if text.contains("net 2001:db8::/64")),
        "{out:?}"
    );
    let out = h.syn(1, "2001:db8:1::99", 150);
    assert!(
        matches!(out.as_slice(), [Action::Block { target: Target::Net(p), .. }] if *p == net("2001:db8:1::/64")),
        "another /64: {out:?}"
    );
}

#[test]
fn entries_by_hand_and_from_the_topology_release_what_they_protect_and_survive_reloads() {
    let attacker = Target::Ip(ip("198.51.100.7"));
    let mut h = H::new(fw(&[]));
    h.syn(0, "198.51.100.7", 150);
    let out = h.at(
        1,
        Input::Allow {
            target: Target::Net(net("198.51.100.0/24")),
            note: Some("partner".into()),
        },
    );
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Release { target, .. } if *target == attacker)),
        "{out:?}"
    );
    assert_eq!(count(&out, is_alert(AlertKind::Protected)), 1, "{out:?}");
    assert_eq!(h.st.effects().count(), 0);
    // Still flooding: spared, not blocked again, no alert for every sample.
    for s in 2..10 {
        h.syn(s, "198.51.100.7", 150);
    }
    assert_eq!(count(&h.all, is_block), 1, "{:?}", h.all);
    h.at(
        10,
        Input::TopologyAllow(vec![(Target::Ip(ip("203.0.113.5")), "machine hv".into())]),
    );
    h.at(
        11,
        Input::Reload(Box::new(fw(&[("above = 100", "above = 90")]))),
    );
    let listed: Vec<(Target, AllowOrigin, Option<&str>)> =
        h.st.allowlist()
            .map(|a| (a.target, a.origin, a.note))
            .collect();
    assert_eq!(
        listed,
        [
            (Target::Ip(ip("192.0.2.1")), AllowOrigin::Config, None),
            (
                Target::Ip(ip("203.0.113.5")),
                AllowOrigin::Topology,
                Some("machine hv")
            ),
            (
                Target::Net(net("198.51.100.0/24")),
                AllowOrigin::Operator,
                Some("partner")
            ),
        ],
        "the operator's entry survived the reload"
    );
    // Removed by hand: the offence still going on is judged again and blocked.
    h.at(
        12,
        Input::Disallow {
            target: Target::Net(net("198.51.100.0/24")),
        },
    );
    let out = h.syn(12, "198.51.100.7", 150);
    assert!(out.iter().any(is_block), "no longer protected: {out:?}");
    // The configured entry cannot be removed by hand.
    h.at(
        13,
        Input::Disallow {
            target: Target::Ip(ip("192.0.2.1")),
        },
    );
    assert!(h.st.protected_by(&Target::Ip(ip("192.0.2.1"))).is_some());
}

#[test]
fn a_reached_cap_is_alerted_and_nothing_is_evicted() {
    let mut h = H::new(fw(&[("verify_s = 0", "verify_s = 0\nmax_blocks = 2")]));
    for (s, a) in [(0, "198.51.100.1"), (1, "198.51.100.2")] {
        assert_eq!(count(&h.syn(s, a, 150), is_block), 1);
    }
    let out = h.syn(2, "198.51.100.3", 150);
    assert!(
        matches!(out.as_slice(), [Action::Alert { kind: AlertKind::CapReached, text }]
            if text.contains("max_blocks = 2") && text.contains("198.51.100.3")),
        "{out:?}"
    );
    // The waiting offender and a fourth one: no block, no release, no second alert this minute.
    for s in 3..30 {
        let out = h.syn(s, "198.51.100.3", 150);
        assert!(out.is_empty(), "t={s}: {out:?}");
        assert!(h.syn(s, "198.51.100.4", 150).is_empty());
        h.syn(s, "198.51.100.1", 150);
        h.syn(s, "198.51.100.2", 150);
    }
    assert_eq!(h.st.active_blocks().len(), 2);
    assert_eq!(count(&h.all, is_release), 0, "nothing evicted: {:?}", h.all);
    assert_eq!(count(&h.all, is_alert(AlertKind::CapReached)), 1);
    let out = h.syn(62, "198.51.100.3", 150);
    assert_eq!(
        count(&out, is_alert(AlertKind::CapReached)),
        1,
        "a minute later: {out:?}"
    );
    // One blocked offender calms down and is released: the next one waiting takes its place.
    h.syn(63, "198.51.100.1", 0);
    let out = h.tick(74);
    assert!(
        matches!(out.as_slice(), [Action::Release { target: Target::Ip(t), .. }] if *t == ip("198.51.100.1")),
        "{out:?}"
    );
    let out = h.syn(75, "198.51.100.3", 150);
    assert!(
        out.iter().any(
            |a| matches!(a, Action::Block { target: Target::Ip(t), .. } if *t == ip("198.51.100.3"))
        ),
        "{out:?}"
    );
}

#[test]
fn the_per_minute_cap_holds_new_blocks_until_the_minute_has_passed() {
    let mut h = H::new(fw(&[(
        "verify_s = 0",
        "verify_s = 0\nmax_blocks_per_min = 2",
    )]));
    h.syn(0, "198.51.100.1", 150);
    h.syn(10, "198.51.100.2", 150);
    let out = h.syn(20, "198.51.100.3", 150);
    assert_eq!(count(&out, is_alert(AlertKind::CapReached)), 1, "{out:?}");
    assert!(h.syn(59, "198.51.100.3", 150).is_empty());
    let out = h.syn(60, "198.51.100.3", 150);
    assert_eq!(
        count(&out, is_block),
        1,
        "the first block is a minute old: {out:?}"
    );
    assert_eq!(count(&h.all, is_release), 0);
}

#[test]
fn ipv6_rotation_inside_a_64_is_one_offender_and_one_block() {
    let rules = fw(&[(
        "\nmetric = \"syn_rate\"",
        "\nv6_prefix = 64\nmetric = \"syn_rate\"",
    )]);
    let mut h = H::new(rules.clone());
    let p = net("2001:db8:aa:bb::/64");
    for n in 1..=50u64 {
        h.syn(n, &format!("2001:db8:aa:bb::{n:x}"), 150);
    }
    let blocks: Vec<&Action> = h.all.iter().filter(|a| is_block(a)).collect();
    assert!(
        matches!(blocks.as_slice(), [Action::Block { target: Target::Net(t), .. }] if *t == p),
        "{blocks:?}"
    );
    assert_eq!(h.st.tracked_keys(), 1, "one key for fifty addresses");
    assert_eq!(h.st.level("syn-flood", &Key::Net(p)), 1);
    // Calm: released as one; the next rotation escalates the prefix.
    h.syn(51, "2001:db8:aa:bb::1", 0);
    let out = h.tick(62);
    assert!(
        matches!(out.as_slice(), [Action::Release { target: Target::Net(t), .. }] if *t == p),
        "{out:?}"
    );
    let out = h.syn(70, "2001:db8:aa:bb:1:2:3:4", 150);
    assert!(
        matches!(out.as_slice(), [Action::Block { target: Target::Net(t), ttl_ns, .. }] if *t == p && *ttl_ns == 3600 * SECOND),
        "{out:?}"
    );

    // Connections tables add the addresses of one prefix up: 30 × 10 connections > 100.
    let mut h = H::new(fw(&[(
        "\nmetric = \"syn_rate\"",
        "\nv6_prefix = 64\nmetric = \"established\"",
    )]));
    let per_remote: Vec<(IpAddr, u64)> = (1..=30u32)
        .map(|n| (ip(&format!("2001:db8:aa:bb::{n:x}")), 10))
        .chain([(ip("2001:db8:cc::1"), 10)])
        .collect();
    let out = h.at(
        0,
        Input::Alert {
            origin: "Agent_Connections".into(),
            path: vec![],
            timestamp_ns: 0,
            body: AlertBody::Connections {
                per_remote,
                truncated: false,
            },
        },
    );
    assert!(
        matches!(out.as_slice(), [Action::Block { target: Target::Net(t), .. }] if *t == p),
        "{out:?}"
    );
    // An empty table: every prefix it no longer lists counts as zero and calms down.
    for s in 1..=12 {
        h.at(
            s,
            Input::Alert {
                origin: "Agent_Connections".into(),
                path: vec![],
                timestamp_ns: 0,
                body: AlertBody::Connections {
                    per_remote: vec![],
                    truncated: false,
                },
            },
        );
    }
    assert_eq!(count(&h.all, is_release), 1, "{:?}", h.all);
    // IPv4 is not aggregated.
    let mut h = H::new(rules);
    h.syn(0, "198.51.100.1", 150);
    h.syn(0, "198.51.100.2", 150);
    assert_eq!(count(&h.all, is_block), 2);
}

#[test]
fn a_reflex_block_is_adopted_released_when_calm_and_escalated_on_reoffence() {
    let rules = || fw(&[("verify_s = 0", "verify_s = 0\nreflex = true")]);
    let attacker = Target::Ip(ip("198.51.100.7"));
    let mut h = H::new(rules());
    // The kernel blocked it for 600 s (the first rung's TTL, as the driver set it).
    let out = h.at(0, reflex(attacker, 600));
    assert!(
        matches!(out.as_slice(), [Action::Block { target, ttl_ns, via, firewall: true, .. }]
            if *target == attacker && *ttl_ns == 600 * SECOND && via == "Agent_Firewall"),
        "the block is sent again, so the agent's TTL is the policy's: {out:?}"
    );
    let placed: Vec<(Effect, Vec<&str>, Option<Nanos>)> =
        h.st.effects()
            .map(|p| (p.effect.clone(), p.holders, p.expires_at))
            .collect();
    assert_eq!(
        placed,
        [(
            Effect::Blocked(attacker),
            vec!["syn-flood"],
            Some(600 * SECOND)
        )]
    );
    // The counters show it stopped; calm releases it through the firewall.
    h.syn(1, "198.51.100.7", 0);
    let out = h.tick(12);
    assert!(
        matches!(out.as_slice(), [Action::Release { target, via, firewall: true, .. }]
            if *target == attacker && via == "Agent_Firewall"),
        "{out:?}"
    );
    // It comes back: the kernel blocks it again, the ladder climbs to its second rung.
    let out = h.at(20, reflex(attacker, 600));
    assert!(
        matches!(out.as_slice(), [Action::Block { ttl_ns, .. }] if *ttl_ns == 3600 * SECOND),
        "{out:?}"
    );
    assert_eq!(h.st.level("syn-flood", &Key::Remote(ip("198.51.100.7"))), 2);
    // A repeated alert for the block in place changes nothing.
    assert!(h.at(21, reflex(attacker, 600)).is_empty());
    // Third offence: the ladder's rung is cut_link, the key is no VM: the kernel's block is
    // held with its own TTL, and the ladder has nothing more.
    h.syn(22, "198.51.100.7", 0);
    h.tick(40);
    let out = h.at(50, reflex(attacker, 120));
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Block { ttl_ns, .. } if *ttl_ns == 120 * SECOND)),
        "{out:?}"
    );
    assert_eq!(
        count(&out, is_alert(AlertKind::LadderExhausted)),
        1,
        "{out:?}"
    );
    assert_eq!(
        h.st.effects().next().and_then(|p| p.expires_at),
        Some(170 * SECOND)
    );
}

#[test]
fn a_reflex_block_is_verified_and_not_adopted_without_a_reflex_rule_or_when_protected() {
    let mut h = H::new(fw(&[("verify_s = 0", "verify_s = 5\nreflex = true")]));
    h.at(0, reflex(Target::Ip(ip("198.51.100.7")), 600));
    h.syn(4, "198.51.100.7", 150);
    let out = h.tick(6);
    assert_eq!(
        count(&out, is_alert(AlertKind::DidNotTake)),
        1,
        "the SYNs went on: {out:?}"
    );
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Block { ttl_ns, .. } if *ttl_ns == 3600 * SECOND)),
        "{out:?}"
    );
    // A rule without `reflex` does not adopt it (it may run at another node).
    let mut h = H::new(fw(&[]));
    assert!(h
        .at(0, reflex(Target::Ip(ip("198.51.100.7")), 600))
        .is_empty());
    // The kernel should never have dropped a protected source: released at once.
    let mut h = H::new(fw(&[("verify_s = 0", "verify_s = 0\nreflex = true")]));
    let out = h.at(0, reflex(Target::Ip(ip("192.0.2.1")), 600));
    assert!(
        matches!(
            out.as_slice(),
            [
                Action::Alert {
                    kind: AlertKind::Protected,
                    ..
                },
                Action::Release { firewall: true, .. }
            ]
        ),
        "{out:?}"
    );
    assert_eq!(h.st.effects().count(), 0);
}

#[test]
fn a_manual_block_of_a_prefix_goes_to_the_firewall_and_needs_one() {
    let p = Target::Net(net("203.0.113.0/24"));
    let mut h = H::new(fw(&[]));
    let out = h.at(0, manual(p, 60));
    assert!(
        matches!(out.as_slice(), [Action::Block { target, firewall: true, via, .. }] if *target == p && via == "Agent_Firewall"),
        "{out:?}"
    );
    let out = h.at(
        1,
        Input::ManualRelease {
            key: Key::Net(net("203.0.113.0/24")),
        },
    );
    assert!(
        matches!(out.as_slice(), [Action::Release { target, .. }] if *target == p),
        "{out:?}"
    );
    let mut h = H::new(Rules::default_rules());
    let out = h.at(0, manual(p, 60));
    assert!(
        matches!(out.as_slice(), [Action::Alert { kind: AlertKind::Notice, text }] if text.contains("firewall")),
        "{out:?}"
    );
}

#[test]
fn targets_prefixes_and_rates_parse_and_print() {
    for (text, target) in [
        ("192.0.2.7", Target::Ip(ip("192.0.2.7"))),
        ("192.0.2.7/32", Target::Ip(ip("192.0.2.7"))),
        ("10.1.2.3/8", Target::Net(net("10.0.0.0/8"))),
        ("2001:db8::5/64", Target::Net(net("2001:db8::/64"))),
        ("52:54:00:AA:bb:cc", Target::Mac(mac("52:54:00:aa:bb:cc"))),
    ] {
        assert_eq!(text.parse::<Target>(), Ok(target), "{text}");
    }
    assert_eq!(Target::Net(net("10.1.0.0/16")).bare(), "10.1.0.0/16");
    for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", ""] {
        assert!(bad.parse::<Target>().is_err(), "{bad}");
    }
    for (text, rate) in [
        ("125000", Rate::Bytes(125_000)),
        ("1500B/s", Rate::Bytes(1500)),
        ("10kB/s", Rate::Bytes(10_000)),
        ("8mbit", Rate::Bytes(1_000_000)),
        ("8Mbit/s", Rate::Bytes(1_000_000)),
        ("1gbit", Rate::Bytes(125_000_000)),
        ("1000pps", Rate::Packets(1000)),
        ("20kpps", Rate::Packets(20_000)),
    ] {
        assert_eq!(text.parse::<Rate>(), Ok(rate), "{text}");
    }
    for bad in ["0", "8 furlongs", "mbit", "1e30", "-5pps"] {
        assert!(bad.parse::<Rate>().is_err(), "{bad}");
    }
}
