//! Reconciliation against a real switch: the VO blocks an attacker on Open vSwitch through
//! os-ken; its drop flows deleted behind its back are put back at the next pass, and a flow
//! with VESPA's cookie that no decision wants is removed, each counted in
//! `vespa_decisions_drift_total` and raised as an alert.

use crate::kit::*;
use vespa_testkit::{try_wait_until, wait_until};
use vespa_tests::daemons::ovs::SdnLab;
use vespa_tests::daemons::require_daemon;
use vespa_tests::sdn_loop::{conn_flood_policy, Options, SdnLoop, SDN_AGENT, VESPA_COOKIE};

const TOKEN: &str = "reconcile-test-token";

fn drift(rig: &SdnLoop, kind: &str) -> Option<f64> {
    rig.metric(&format!(
        "vespa_decisions_drift_total{{node=\"VO\",actuator=\"{SDN_AGENT}\",kind=\"{kind}\"}}"
    ))
}

/// The text alerts the VO raised about reconciliation.
fn drift_alerts(rig: &SdnLoop) -> Vec<String> {
    try_vo_alerts(&rig.tree, &|v, a| rig.vo_call(v, a))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| a["body"]["Text"].as_str().map(str::to_string))
        .filter(|t| t.contains("reconciliation of"))
        .collect()
}

#[test]
fn a_drop_flow_deleted_behind_vespas_back_is_reapplied_and_a_stray_one_removed() {
    let test = "a_drop_flow_deleted_behind_vespas_back_is_reapplied_and_a_stray_one_removed";
    if !vespa_tests::privileged(test) {
        return;
    }
    let Some(lab) = require_daemon(test, "Open vSwitch + os-ken", SdnLab::start()) else {
        return;
    };
    // No flood crosses these thresholds: the block is the operator's. A pass every second.
    let policy = format!(
        "{}\n[reconcile]\nevery_s = 1\n",
        conn_flood_policy(100_000, 5, 3)
    );
    let opts = Options {
        tag: "reconcile-sdn",
        policy: &policy,
        conn_threshold: 100_000,
        api_token: Some(TOKEN),
        keep_files: false,
        bandwidth_agent: false,
    };
    let rig = SdnLoop::start(lab, &opts).unwrap_or_else(|e| panic!("{e:#}"));
    let logs = || rig.logs();
    wait_until("both agents under the VO", WAIT, || rig.agents_ready());
    // A first pass over the switch, which holds nothing yet.
    wait_until("a first reconciliation of the SDN agent", WAIT, || {
        (drift(&rig, "missing")? == 0.0).then_some(())
    });

    // The operator blocks the attacker's address through the API: drop flows with VESPA's
    // cookie.
    let attacker = rig.lab.h1.ip.to_string();
    let body = format!(r#"{{"target": "{attacker}", "ttl_s": 3600}}"#);
    let (status, reply) = rig
        .api_request("POST", "/api/v1/decisions", TOKEN, &body)
        .expect("the API answers");
    assert_eq!(status, 200, "{reply}");
    let nw_src = format!("nw_src={attacker}");
    let ours = |flows: &[String]| -> Vec<String> {
        flows
            .iter()
            .filter(|f| f.contains(&nw_src) && f.ends_with("actions=drop"))
            .cloned()
            .collect()
    };
    let flows = try_wait_until("VESPA's drop flow for the attacker", WAIT, || {
        let f = ours(&rig.vespa_flows());
        if f.is_empty() {
            Err(rig.vespa_flows())
        } else {
            Ok(f)
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let cookie = flows[0]
        .split([' ', ','])
        .find_map(|w| w.strip_prefix("cookie="))
        .expect("the flow's cookie")
        .to_string();
    assert!(cookie.starts_with("0x56455350"), "{cookie}");

    // Behind VESPA's back: every flow of that cookie deleted on the switch.
    rig.lab
        .ovs
        .ofctl(
            &rig.lab.bridge,
            "del-flows",
            &[&format!("cookie={cookie}/-1")],
        )
        .expect("del-flows");
    assert!(ours(&rig.vespa_flows()).is_empty(), "deleted");
    // The next pass puts it back, counted once, and says so.
    wait_until("the drop flow re-applied", WAIT, || {
        (!ours(&rig.vespa_flows()).is_empty()).then_some(())
    });
    wait_until("the missing flow counted", WAIT, || {
        (drift(&rig, "missing")? >= 1.0).then_some(())
    });
    let alert = wait_until("a drift alert naming the missing block", WAIT, || {
        drift_alerts(&rig)
            .into_iter()
            .find(|t| t.contains("1 missing") && t.contains(&attacker))
    });
    assert!(alert.contains(SDN_AGENT), "{alert}");

    // A flow with VESPA's cookie that no decision wants: removed at the next pass.
    let stray = "10.9.9.9";
    rig.lab
        .ovs
        .ofctl(
            &rig.lab.bridge,
            "add-flow",
            &[&format!(
                "cookie=0x56455350000abcde,table=0,priority=40000,ip,nw_src={stray},actions=drop"
            )],
        )
        .expect("add-flow");
    assert!(rig.vespa_flows().iter().any(|f| f.contains(stray)), "added");
    wait_until("the stray flow removed", WAIT, || {
        (!rig.vespa_flows().iter().any(|f| f.contains(stray))).then_some(())
    });
    wait_until("the stray flow counted", WAIT, || {
        (drift(&rig, "stray")? >= 1.0).then_some(())
    });
    assert!(
        drift_alerts(&rig)
            .iter()
            .any(|t| t.contains("1 stray") && t.contains(stray)),
        "{:?}",
        drift_alerts(&rig)
    );
    // The operator's block stayed, and nothing else was counted missing.
    assert!(
        !ours(&rig.vespa_flows()).is_empty(),
        "the wanted block stays"
    );
    assert_eq!(drift(&rig, "missing"), Some(1.0), "{}", logs());
    assert!(rig.vespa_flows().iter().all(|f| f.contains(VESPA_COOKIE)));
}
