//! A VO killed with SIGKILL forgets nothing it placed: an attacker blocked on Open vSwitch
//! through os-ken (by the operator, through the API) and a KVM domain whose link the policy cut
//! (an infection found by the AV agent) are, after a restart on the same decision ledger, both
//! listed, both still enforced (the drop flow on the switch, the link down per libvirt) after
//! the restarted VO's reconciliation has looked at them, and both undone by releases through
//! the API. Without the ledger the restarted VO lists nothing and its reconciliation removes
//! the drop flow as a stray.
//!
//! ```text
//!  switch namespace (ovs + os-ken REST on its loopback; the tree on the same loopback)
//!    VO ─┬─ HO_PH ── Agent_Controller_OsKen (url = os-ken)
//!        ├─ HO_HY ── lv (agent_libvirt: qemu:///system)
//!        └─ HO_VM ── av (agent_av: vm = the domain, clamd's unix socket, watch_dir)
//!    bridge ── h1 (attacker) ── h2
//! ```

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Instant;

use crate::kit::*;
use vespa_testkit::{try_wait_until, wait_until};
use vespa_tests::daemons::clamd::{eicar, Clamd};
use vespa_tests::daemons::libvirt::{libvirtd, KvmDomain, URI};
use vespa_tests::daemons::ovs::SdnLab;
use vespa_tests::daemons::{http_request, require_daemon};
use vespa_tests::net::try_in_netns;
use vespa_tests::sdn_loop::{SDN_AGENT, VESPA_COOKIE};
use vespa_tests::shared::LIBVIRTD;

const TOKEN: &str = "restart-test-token-0123456789abcdef";

/// The VO's API on the switch namespace's loopback (os-ken holds 8080 there).
const API: &str = "127.0.0.1:18081";

fn policy() -> String {
    format!(
        r#"
dry_run = false

[actuators]
sdn = "{SDN_AGENT}"
libvirt = "lv"
quarantine = "quarantine"
av = "av"
hypervisor = "lv"

[infection]
isolate = true

# A pass every second, so that a restarted VO that had forgotten its decisions would remove
# the drop flow (a stray) at once.
[reconcile]
every_s = 1
"#
    )
}

/// A request to the VO's API from inside the switch namespace: (status, body).
fn api(ns: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let (method, path, body) = (method.to_string(), path.to_string(), body.to_string());
    let addr: SocketAddr = API.parse().ok()?;
    try_in_netns(ns, move || {
        http_request(addr, &method, &path, Some(TOKEN), &body)
    })
    .ok()
    .flatten()
}

/// `GET /api/v1/decisions`: the (action, target) of each decision in force.
fn listed(ns: &str) -> Option<Vec<(String, String)>> {
    let (status, body) = api(ns, "GET", "/api/v1/decisions", "")?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(
        v["actions"]
            .as_array()?
            .iter()
            .map(|a| {
                (
                    a["action"].as_str().unwrap_or_default().to_string(),
                    a["target"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
    )
}

/// One series of the VO's `/metrics`.
fn metric(ns: &str, series: &str) -> Option<f64> {
    let (status, body) = api(ns, "GET", "/metrics", "")?;
    if status != 200 {
        return None;
    }
    body.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// Whether the VO's reconciliation has passed over `actuator` (its drift series exist).
fn reconciled(ns: &str, actuator: &str) -> Option<f64> {
    metric(
        ns,
        &format!(
            "vespa_decisions_drift_total{{node=\"VO\",actuator=\"{actuator}\",kind=\"missing\"}}"
        ),
    )
}

#[test]
fn a_vo_killed_while_a_link_is_cut_and_an_attacker_blocked_restarts_with_both_and_releases_both() {
    let test = "a_vo_killed_while_a_link_is_cut_and_an_attacker_blocked_restarts_with_both_and_releases_both";
    // The one system libvirtd, shared with the other tests; dropped last.
    let _libvirtd = LIBVIRTD.share();
    if !vespa_tests::privileged(test)
        || require_daemon(test, "libvirtd with KVM", libvirtd().map(drop)).is_none()
    {
        return;
    }
    let Some(lab) = require_daemon(test, "Open vSwitch + os-ken", SdnLab::start()) else {
        return;
    };
    let Some(clamd) = require_daemon(test, "clamd", Clamd::start("1M")) else {
        return;
    };
    let Some(dom) = require_daemon(test, "a KVM domain", KvmDomain::start("vrs")) else {
        return;
    };
    assert_eq!(dom.link(), "up", "the domain starts connected");
    let t_start = Instant::now();
    let ns = lab.ovs.ns.name.clone();
    let watch = tempfile::Builder::new()
        .prefix("vespa-loop-restart")
        .tempdir()
        .expect("watch dir");

    // The whole tree on the switch namespace's loopback: the SDN agent reaches os-ken there,
    // the libvirt agent libvirtd's unix socket, the AV agent clamd's unix socket.
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let nodes = [
        N::root("VO", "vo").on("sw"),
        N::child("HO_PH", "ho_ph", "VO").on("sw"),
        N::child("HO_HY", "ho_hy", "VO").on("sw"),
        N::child("HO_VM", "ho_vm", "VO").on("sw"),
        N::child(SDN_AGENT, "agent_controller_osken", "HO_PH")
            .on("sw")
            .extra(format!("[node.params]\nurl = \"{}\"\n", lab.url())),
        N::child("lv", "agent_libvirt", "HO_HY")
            .on("sw")
            .extra(format!(
                "[node.params]\nuri = \"{URI}\"\ndomains = \"{}\"\n",
                dom.name
            )),
        N::child("av", "agent_av", "HO_VM").on("sw").extra(format!(
            "[node.params]\nvm = \"{}\"\nclamd = \"unix:{}\"\nwatch_dir = \"{}\"\n",
            dom.name,
            clamd.socket.display(),
            watch.path().display()
        )),
    ];
    let tree = Arc::new(Tree::new(
        "loop-restart",
        "heartbeat_ms = 300\nsample_interval_ms = 0\nbackoff_min_ms = 20\nbackoff_max_ms = 300",
        &[("sw", lo)],
        &nodes,
    ));
    let policy_file = tree.scratch.dir.join("policy.toml");
    std::fs::write(&policy_file, policy()).expect("policy file");
    let token = tree.scratch.dir.join("api-token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let ledger = tree.scratch.dir.join("ledger.db");
    let (policy_s, token_s, ledger_s) = (
        policy_file.to_string_lossy().into_owned(),
        token.to_string_lossy().into_owned(),
        ledger.to_string_lossy().into_owned(),
    );
    let vo_args = [
        "--policy",
        &policy_s,
        "--http",
        API,
        "--api-token-file",
        &token_s,
        "--ledger",
        &ledger_s,
    ];
    let start_vo = |label: &str| {
        tree.spawn_with(
            label,
            "vespa-orchestrator",
            Some(&ns),
            &[],
            &["VO", "HO_PH", "HO_HY", "HO_VM"],
            &vo_args,
        )
    };
    let mut vo = start_vo("vo");
    let agents = tree.spawn(
        "agents",
        "vespa-agent",
        Some(&ns),
        &[],
        &[SDN_AGENT, "lv", "av"],
    );
    let call = |target: &str, verb: &str, args: &[&str]| -> Result<String, String> {
        let (t, target, verb) = (tree.clone(), target.to_string(), verb.to_string());
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        try_in_netns(&ns, move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            t.call(&target, &verb, &a)
        })
        .map_err(|e| e.to_string())?
    };
    let agents_ready = || {
        let lv = call("lv", "contains_vm", &[&dom.name])
            .ok()
            .filter(|s| s == "true");
        lv.and(call("av", "status", &[]).ok())
            .and(call(SDN_AGENT, "help", &[]).ok())
    };
    let logs = |vo: &Proc| format!("VO:\n{}\nagents:\n{}", vo.log_text(), agents.log_text());
    wait_until("the agents under the VO", WAIT, agents_ready);
    wait_until("the first reconciliation of both actuators", WAIT, || {
        reconciled(&ns, SDN_AGENT)?;
        reconciled(&ns, "lv")
    });

    // The operator blocks the attacker through the API: drop flows with VESPA's cookie.
    let attacker = lab.h1.ip.to_string();
    let body = format!(r#"{{"target": "{attacker}", "ttl_s": 3600}}"#);
    let (status, reply) = api(&ns, "POST", "/api/v1/block", &body).expect("the API answers");
    assert_eq!(status, 200, "{reply}");
    let nw_src = format!("nw_src={attacker}");
    let drop_flows = || -> Vec<String> {
        lab.ovs
            .flows_matching(&lab.bridge, VESPA_COOKIE)
            .into_iter()
            .filter(|f| f.contains(&nw_src) && f.ends_with("actions=drop"))
            .collect()
    };
    try_wait_until("VESPA's drop flow for the attacker", WAIT, || {
        let f = drop_flows();
        if f.is_empty() {
            Err(lab.ovs.flows_matching(&lab.bridge, VESPA_COOKIE))
        } else {
            Ok(f)
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&vo)));

    // The infection: EICAR in the watched directory; the policy cuts the domain's link.
    std::fs::write(watch.path().join("eicar.com"), eicar()).expect("write EICAR");
    let dom = &dom;
    let link_is = |want: &'static str| {
        move || match dom.link() {
            l if l == want => Ok(()),
            l => Err(format!("libvirt reports the link {l}")),
        }
    };
    try_wait_until("libvirt to report the link down", WAIT, link_is("down"))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&vo)));
    let both = |l: &[(String, String)]| {
        l.contains(&("block".to_string(), attacker.clone()))
            && l.contains(&("cut_link".to_string(), dom.name.clone()))
    };
    let before = wait_until("both decisions listed", WAIT, || {
        listed(&ns).filter(|l| both(l))
    });

    // SIGKILL: nothing is flushed, nothing undone.
    vo.kill9();
    let before_kill = logs(&vo);
    assert_eq!(drop_flows().len(), 1, "the flow outlives the VO");
    assert_eq!(dom.link(), "down", "the cut outlives the VO");

    // The restart on the same ledger.
    let t_restart = Instant::now();
    let vo2 = start_vo("vo-restarted");
    let after = try_wait_until("the restarted VO's listing", WAIT, || {
        listed(&ns).ok_or("no answer")
    })
    .unwrap_or_else(|e| panic!("{e}\n{before_kill}\n{}", logs(&vo2)));
    assert!(
        both(&after),
        "restored {after:?}, placed before the kill {before:?}\n{}",
        logs(&vo2)
    );
    // The restarted VO's reconciliation has looked at both actuators: what it restored it
    // still wants, so nothing is missing, nothing stray, and nothing moves.
    let first = wait_until("the restarted VO's first passes", WAIT, || {
        agents_ready()?;
        let s = reconciled(&ns, SDN_AGENT)?;
        reconciled(&ns, "lv")?;
        Some(s)
    });
    assert_eq!(
        first,
        0.0,
        "nothing missing at the first pass\n{}",
        logs(&vo2)
    );
    assert_eq!(
        drop_flows().len(),
        1,
        "the block still enforced\n{}",
        logs(&vo2)
    );
    assert_eq!(dom.link(), "down", "the cut still enforced\n{}", logs(&vo2));
    for actuator in [SDN_AGENT, "lv"] {
        assert_eq!(
            metric(
                &ns,
                &format!("vespa_decisions_drift_total{{node=\"VO\",actuator=\"{actuator}\",kind=\"stray\"}}")
            ),
            Some(0.0),
            "what {actuator} holds is no stray\n{}",
            logs(&vo2)
        );
    }
    let t_restored = t_restart.elapsed();

    // The releases through the API undo both.
    for target in [attacker.as_str(), dom.name.as_str()] {
        let body = format!(r#"{{"target": "{target}"}}"#);
        let (status, reply) = api(&ns, "POST", "/api/v1/release", &body).expect("release");
        assert_eq!(status, 200, "release {target}: {reply}\n{}", logs(&vo2));
    }
    try_wait_until("the drop flow removed", WAIT, || {
        let f = drop_flows();
        if f.is_empty() {
            Ok(())
        } else {
            Err(f)
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&vo2)));
    try_wait_until("libvirt to report the link up", WAIT, link_is("up"))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&vo2)));
    wait_until("nothing listed", WAIT, || {
        listed(&ns).filter(|l| !l.iter().any(|(_, t)| *t == attacker || *t == dom.name))
    });
    eprintln!(
        "restart -> both restored and reconciled: {t_restored:?}; whole test: {:?}",
        t_start.elapsed()
    );
}
