//! The operator's inputs and the record of what is in place: manual blocks beside the rules,
//! their release and expiry, and what `effects`, `holders` and `rules_behind` report.

use super::*;

fn release(key: Key) -> Input {
    Input::ManualRelease { key }
}

/// The default rules without verification, so a block stays one action.
fn unverified() -> Rules {
    rules_with(&[("verify_s = 30", "verify_s = 0")])
}

#[test]
fn a_manual_block_is_held_by_the_operator_until_released_by_hand() {
    let t = Target::Ip(ip("203.0.113.7"));
    let mut h = H::new(Rules::default_rules());
    let out = h.at(5, manual(t, 600));
    assert!(
        matches!(out.as_slice(), [Action::Block { target, ttl_ns, via, .. }]
            if *target == t && *ttl_ns == 600 * SECOND && via == "Agent_Controller"),
        "{out:?}"
    );
    let placed: Vec<InPlace> = h.st.effects().collect();
    assert_eq!(
        placed,
        [InPlace {
            effect: &Effect::Blocked(t),
            since: 5 * SECOND,
            expires_at: Some(605 * SECOND),
            dry: false,
            holders: vec!["operator"],
            via: "Agent_Controller",
            rate: None,
        }]
    );
    assert!(
        h.st.rules_behind(&Effect::Blocked(t)).is_empty(),
        "no rule is behind it"
    );
    assert!(h.tick(300).is_empty(), "calm does not release it");
    let out = h.at(301, release(Key::Remote(ip("203.0.113.7"))));
    assert!(
        matches!(out.as_slice(), [Action::Release { target, .. }] if *target == t),
        "{out:?}"
    );
    assert_eq!(h.st.effects().count(), 0);
    assert!(
        h.at(302, release(Key::Remote(ip("203.0.113.7"))))
            .is_empty(),
        "nothing is held any more"
    );
}

#[test]
fn a_manual_block_ends_at_its_ttl_on_a_tick() {
    // (second, input, blocks sent, still held afterwards, expiry afterwards)
    let t = Target::Mac(mac("52:54:00:00:00:42"));
    let cases: [(u64, Input, usize, bool, Option<u64>); 6] = [
        (10, manual(t, 60), 1, true, Some(70)),
        (20, manual(t, 30), 0, true, Some(70)),
        (30, manual(t, 60), 1, true, Some(90)),
        (89, Input::Tick, 0, true, Some(90)),
        (90, Input::Tick, 0, false, None),
        (
            91,
            release(Key::Mac(mac("52:54:00:00:00:42"))),
            0,
            false,
            None,
        ),
    ];
    let mut h = H::new(Rules::default_rules());
    for (s, input, blocks, held, expires) in cases {
        let out = h.at(s, input);
        assert_eq!(count(&out, is_block), blocks, "t={s}: {out:?}");
        assert!(
            !out.iter().any(is_release),
            "t={s}: the controller's reaper removes an expired block: {out:?}"
        );
        assert_eq!(h.st.active_blocks().contains(&t), held, "t={s}");
        let expiry = h.st.effects().find_map(|p| p.expires_at);
        assert_eq!(expiry, expires.map(|x| x * SECOND), "t={s}");
    }
}

#[test]
fn a_manual_block_of_our_own_mac_or_without_ttl_is_refused() {
    let own = "52:54:00:00:00:01";
    let mut h = H::new(rules_with(&[(
        "own_macs = []",
        "own_macs = [\"52:54:00:00:00:01\"]",
    )]));
    for input in [
        manual(Target::Mac(mac(own)), 60),
        manual(Target::Ip(ip("203.0.113.7")), 0),
    ] {
        let out = h.at(1, input);
        assert!(
            matches!(
                out.as_slice(),
                [Action::Alert {
                    kind: AlertKind::Notice,
                    ..
                }]
            ),
            "{out:?}"
        );
    }
    assert_eq!(h.st.effects().count(), 0);
}

#[test]
fn a_manual_block_in_dry_run_is_recorded_and_its_release_too() {
    let t = Target::Ip(ip("203.0.113.7"));
    let mut h = H::new(Rules::default_rules());
    h.at(0, Input::SetDryRun(true));
    let out = h.at(1, manual(t, 60));
    assert!(
        matches!(out.as_slice(), [Action::DryRun(b)] if is_block(b)),
        "{out:?}"
    );
    assert!(h.st.effects().all(|p| p.dry), "listed as a dry-run record");
    let out = h.at(2, release(Key::Remote(ip("203.0.113.7"))));
    assert!(
        matches!(out.as_slice(), [Action::DryRun(r)] if is_release(r)),
        "{out:?}"
    );
    assert_eq!(h.st.effects().count(), 0);
}

#[test]
fn a_failed_manual_block_did_not_take() {
    let mut h = H::new(Rules::default_rules());
    let out = h.at(1, manual(Target::Ip(ip("203.0.113.7")), 60));
    let id = out.iter().find_map(Action::id).expect("a block");
    let out = h.at(
        2,
        Input::ActionResult {
            id,
            ok: false,
            error: Some("no SDN agent".into()),
        },
    );
    assert_eq!(count(&out, is_alert(AlertKind::DidNotTake)), 1, "{out:?}");
    assert_eq!(
        h.st.holders(&Effect::Blocked(Target::Ip(ip("203.0.113.7")))),
        ["operator"],
        "still listed: the operator decides (release) or its TTL does"
    );
}

#[test]
fn a_rule_block_reports_when_it_started_who_holds_it_and_which_rule_undid_it() {
    let t = Target::Ip(ip("198.51.100.7"));
    let blocked = Effect::Blocked(t);
    let mut h = H::new(unverified());
    h.conn(3, "198.51.100.7", 150);
    let placed: Vec<InPlace> = h.st.effects().collect();
    assert_eq!(
        placed,
        [InPlace {
            effect: &blocked,
            since: 3 * SECOND,
            expires_at: Some(603 * SECOND),
            dry: false,
            holders: vec!["conn-flood"],
            via: "Agent_Controller",
            rate: None,
        }]
    );
    assert_eq!(h.st.rules_behind(&blocked), ["conn-flood"]);
    h.tick(10);
    let out = h.tick(130);
    assert_eq!(count(&out, is_release), 1, "{out:?}");
    assert!(h.st.holders(&blocked).is_empty());
    assert_eq!(
        h.st.rules_behind(&blocked),
        ["conn-flood"],
        "the step that released it still names the rule"
    );
    h.tick(131);
    assert!(
        h.st.rules_behind(&blocked).is_empty(),
        "remembered for one step"
    );
}

#[test]
fn a_target_blocked_by_a_rule_and_by_hand_is_one_block_with_two_holders() {
    let addr = "198.51.100.7";
    let t = Target::Ip(ip(addr));
    let blocked = Effect::Blocked(t);
    type Seen<'a> = &'a [(u64, Option<u64>, &'a [&'a str], usize, usize)];
    // Each case: inputs in order, then per input (second, manual TTL or a connections sample
    // when None, holders afterwards, blocks sent, releases sent); ticks are added as listed.
    let cases: [(&str, Seen); 3] = [
        (
            "a shorter manual block adds a holder, sends nothing, and ends on its own",
            &[
                (0, None, &["conn-flood"], 1, 0),
                (10, Some(60), &["conn-flood", "operator"], 0, 0),
                (70, Some(0), &["conn-flood"], 0, 0),
                (200, Some(0), &[], 0, 1),
            ],
        ),
        (
            "a longer manual block is sent and outlives the rule's calm",
            &[
                (0, None, &["conn-flood"], 1, 0),
                (10, Some(3600), &["conn-flood", "operator"], 1, 0),
                (11, Some(0), &["conn-flood", "operator"], 0, 0),
                (200, Some(0), &["operator"], 0, 0),
                (3610, Some(0), &[], 0, 0),
            ],
        ),
        (
            "a rule's longer block outlives the operator's hold: released when both let go",
            &[
                (0, Some(300), &["operator"], 1, 0),
                (1, None, &["conn-flood", "operator"], 1, 0),
                (7, Some(0), &["conn-flood", "operator"], 0, 0),
                (130, Some(0), &["operator"], 0, 0),
                (300, Some(0), &[], 0, 1),
            ],
        ),
    ];
    for (name, seen) in cases {
        let mut h = H::new(unverified());
        for &(s, ttl, holders, blocks, releases) in seen {
            let out = match ttl {
                None => h.conn(s, addr, 150),
                Some(0) => h.tick(s),
                Some(ttl) => h.at(s, manual(t, ttl)),
            };
            assert_eq!(h.st.holders(&blocked), holders, "{name}, t={s}");
            assert_eq!(
                (count(&out, is_block), count(&out, is_release)),
                (blocks, releases),
                "{name}, t={s}: {out:?}"
            );
        }
    }
    // Released by hand: both holders let go, one release.
    let mut h = H::new(unverified());
    h.conn(0, addr, 150);
    h.at(10, manual(t, 3600));
    let out = h.at(11, release(Key::Remote(ip(addr))));
    assert_eq!(count(&out, is_release), 1, "{out:?}");
    assert_eq!(h.st.effects().count(), 0);
    assert_eq!(h.st.level("conn-flood", &Key::Remote(ip(addr))), 0);
}
