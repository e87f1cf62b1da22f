//! Effects put back from the orchestrator's record after a restart (`Input::Restore`): in
//! place without a word to the actuator, listed as before, ended by their TTL or by hand,
//! and undone through the agent that placed them.

use super::*;

fn restored(effect: Effect, via: &str, holders: &[&str], expires_s: Option<u64>) -> Input {
    Input::Restore(Box::new(Restored {
        effect,
        via: via.into(),
        firewall: via == "fw",
        holders: holders.iter().map(|h| h.to_string()).collect(),
        since: 0,
        expires_at: expires_s.map(|s| s * SECOND),
        ttl_ns: expires_s.map(|s| s * SECOND),
        rate: None,
        dry: false,
    }))
}

#[test]
fn a_restored_manual_block_sends_nothing_and_ends_at_its_ttl() {
    let t = Target::Ip(ip("203.0.113.9"));
    let mut h = H::new(Rules::default_rules());
    let out = h.at(
        0,
        restored(
            Effect::Blocked(t),
            "Agent_Controller",
            &["operator"],
            Some(60),
        ),
    );
    assert!(out.is_empty(), "restoring sends nothing: {out:?}");
    let placed: Vec<InPlace> = h.st.effects().collect();
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].holders, ["operator"]);
    assert_eq!(placed[0].via, "Agent_Controller");
    assert!(
        h.tick(30).is_empty(),
        "the operator's hold lasts until its TTL"
    );
    assert_eq!(h.st.effects().count(), 1);
    h.tick(61);
    assert_eq!(h.st.effects().count(), 0, "ended at its TTL");
}

#[test]
fn a_restored_rule_block_is_released_by_hand_through_the_agent_that_placed_it() {
    let t = Target::Ip(ip("198.51.100.3"));
    let mut h = H::new(Rules::default_rules());
    assert!(h
        .at(
            0,
            restored(Effect::Blocked(t), "fw", &["syn-flood"], Some(600))
        )
        .is_empty());
    assert_eq!(h.st.holders(&Effect::Blocked(t)), ["syn-flood"]);
    assert_eq!(h.st.rules_behind(&Effect::Blocked(t)), ["syn-flood"]);
    assert!(
        h.tick(120).is_empty(),
        "calm does not release what no key of the rule holds"
    );
    let out = h.at(
        121,
        Input::ManualRelease {
            key: Key::Remote(ip("198.51.100.3")),
        },
    );
    assert!(
        matches!(out.as_slice(), [Action::Release { target, via, firewall: true, .. }] if *target == t && via == "fw"),
        "{out:?}"
    );
    assert_eq!(h.st.effects().count(), 0);
}

#[test]
fn a_restored_cut_link_stays_until_released_and_reconnects_through_its_agent() {
    let vm = "vm-7".to_string();
    let mut h = H::new(Rules::default_rules());
    h.at(
        0,
        restored(
            Effect::LinkCut(vm.clone()),
            "Agent_Libvirt_2",
            &["infection"],
            None,
        ),
    );
    assert!(h.tick(86_400).is_empty(), "no TTL: held");
    let out = h.at(
        86_401,
        Input::ManualRelease {
            key: Key::Vm(vm.clone()),
        },
    );
    assert!(
        matches!(out.as_slice(), [Action::ConnectLink { vm: v, via, .. }] if *v == vm && via == "Agent_Libvirt_2"),
        "{out:?}"
    );
}

#[test]
fn an_expired_effect_is_not_restored_and_a_second_restore_only_adds_holders() {
    let t = Target::Ip(ip("192.0.2.1"));
    let mut h = H::new(Rules::default_rules());
    h.tick(100);
    h.at(
        100,
        restored(Effect::Blocked(t), "fw", &["operator"], Some(50)),
    );
    assert_eq!(h.st.effects().count(), 0, "its TTL ran out");
    h.at(100, restored(Effect::Blocked(t), "fw", &["syn"], Some(500)));
    h.at(
        100,
        restored(Effect::Blocked(t), "other", &["operator"], Some(500)),
    );
    let placed: Vec<InPlace> = h.st.effects().collect();
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].via, "fw", "the first record's agent");
    assert_eq!(placed[0].holders, ["syn", "operator"]);
}

#[test]
fn a_rule_that_acts_again_joins_the_restored_block() {
    let t = Target::Ip(ip("198.51.100.7"));
    let mut h = H::new(unverified_default());
    h.at(
        0,
        restored(
            Effect::Blocked(t),
            "Agent_Controller",
            &["conn-flood"],
            Some(3600),
        ),
    );
    let out = h.conn(1, "198.51.100.7", 500);
    assert_eq!(
        count(&out, is_block),
        0,
        "already blocked at least as long: {out:?}"
    );
    assert_eq!(h.st.effects().count(), 1);
}

fn unverified_default() -> Rules {
    rules_with(&[("verify_s = 30", "verify_s = 0")])
}
