//! The quarantine loop against real libvirt: a VM of the hypervisor floods a host with
//! connections; the VO's policy, whose only rung is `migrate`, live-migrates it to the
//! quarantine hypervisor (a second, test-owned libvirtd on this machine). Behind the VO's back
//! the VM is migrated home again; the next reconciliation pass sees it running on the source
//! and migrates it again, counting the drift.
//!
//! The "VM" that floods is a network namespace whose veth carries the domain's MAC: the
//! domain has no guest OS, and what the policy needs of it is only that the neighbour's MAC
//! (the connections agent's `mac_of`) is one of the domain's interfaces in the libvirt
//! agent's `list_vms`.
//!
//! ```text
//!  victim netns: VO ─┬─ HO_VM ── conns (agent_connections, eBPF, --netns victim)
//!                    └─ HO_HY ── lv (agent_libvirt: qemu:///system, migrate_to quarantine)
//!  attacker netns (veth, the domain's MAC) ── 40 connections ──> victim
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::kit::*;
use vespa_testkit::{try_wait_until, wait_until};
use vespa_tests::daemons::libvirt::{KvmDomain, QuarantineLibvirtd, URI};
use vespa_tests::daemons::{http_get, require_daemon};
use vespa_tests::net::{try_in_netns, Link};
use vespa_tests::shared::LIBVIRTD;

const API: &str = "127.0.0.1:18081";

const POLICY: &str = r#"
dry_run = false

[actuators]
sdn = "Agent_Controller"
libvirt = "lv"
quarantine = "quarantine"
av = "Agent_AV"
hypervisor = "lv"

[reconcile]
every_s = 1

[[rule]]
name = "vm-flood"
metric = "established"
key = "remote"
aggregate = "max"
window_s = 1
above = 20
below = 5
# Held for the whole test: the quarantine stays wanted.
calm_s = 600
cooldown_s = 1
verify_s = 0
ladder = [{ action = "migrate" }]
"#;

#[test]
fn a_quarantined_vm_migrated_home_behind_the_vos_back_is_migrated_again() {
    let test = "a_quarantined_vm_migrated_home_behind_the_vos_back_is_migrated_again";
    // The one system libvirtd (the source hypervisor), shared with the other tests.
    let _libvirtd = LIBVIRTD.share();
    if !vespa_tests::privileged(test) {
        return;
    }
    // Dropped after the domain and the tree.
    let Some(q) = require_daemon(test, "a quarantine libvirtd", QuarantineLibvirtd::start()) else {
        return;
    };
    let Some(dom) = require_daemon(test, "a KVM domain", KvmDomain::start_quiet("vquar")) else {
        return;
    };
    let link = Link::new();
    let (attacker_ns, victim_ns) = (&link.a_ns, &link.b_ns);
    attacker_ns.ip(&["link", "set", "dev", &link.a.ifname, "address", &dom.mac]);
    let victim = victim_ns.name.clone();

    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let nodes = [
        N::root("VO", "vo"),
        N::child("HO_VM", "ho_vm", "VO"),
        N::child("HO_HY", "ho_hy", "VO"),
        N::child("conns", "agent_connections", "HO_VM"),
        N::child("lv", "agent_libvirt", "HO_HY").extra(format!(
            "[node.params]\nuri = \"{URI}\"\nmigrate_to = \"quarantine={}\"\nmigrate_uri = \"quarantine=tcp://127.0.0.1\"\ndomains = \"{}\"\n",
            q.uri, dom.name
        )),
    ];
    let tree = Arc::new(Tree::new(
        "loop-quarantine",
        "heartbeat_ms = 300\nsample_interval_ms = 200\nbackoff_min_ms = 20\nbackoff_max_ms = 300",
        &[("host", lo)],
        &nodes,
    ));
    let policy_file = tree.scratch.dir.join("policy.toml");
    std::fs::write(&policy_file, POLICY).expect("policy file");
    let policy_s = policy_file.to_string_lossy().into_owned();
    let mut vo = tree.spawn_with(
        "vo",
        "vespa-orchestrator",
        Some(&victim),
        &[],
        &["VO", "HO_VM", "HO_HY"],
        &["--policy", &policy_s, "--http", API],
    );
    // `--netns` rather than `ip netns exec`: the agent keeps the host's mounts (tracefs).
    let mut agents = tree.spawn(
        "agents",
        "vespa-agent",
        None,
        &[
            "--netns",
            &victim,
            "--mode",
            "ebpf",
            "--conn-threshold",
            "20",
        ],
        &["conns", "lv"],
    );
    let logs = |vo: &Proc, agents: &Proc| {
        format!(
            "VO:\n{}\nagents:\n{}\nquarantine libvirtd:\n{}",
            vo.log_text(),
            agents.log_text(),
            q.log()
        )
    };
    let vo_call = |verb: &str, args: &[&str]| -> Result<String, String> {
        let (t, verb) = (tree.clone(), verb.to_string());
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        try_in_netns(&victim, move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            t.call("VO", &verb, &a)
        })
        .map_err(|e| e.to_string())?
    };
    let drift = |kind: &str| -> Option<f64> {
        let series =
            format!("vespa_decisions_drift_total{{node=\"VO\",actuator=\"lv\",kind=\"{kind}\"}} ");
        let (status, body) = try_in_netns(&victim, || http_get(API, "/metrics"))
            .ok()?
            .ok()?;
        (status == 200).then_some(())?;
        body.lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
    };
    wait_until("both agents under the VO", WAIT, || {
        ["conns", "lv"]
            .iter()
            .all(|a| vo_call("call", &[a, "help"]).is_ok())
            .then_some(())
    });
    // The VO knows the domain's MAC (its listing of the hypervisor's VMs) before the flood:
    // otherwise the flooding neighbour is no VM of ours and the migrate rung is skipped.
    wait_until("the VO's listing of the VMs", WAIT, || {
        vo.log_lines()
            .into_iter()
            .find(|l| l["fields"]["message"] == "VMs listed: their MACs changed")
    });
    wait_until("a first reconciliation of lv", WAIT, || {
        (drift("missing")? == 0.0).then_some(())
    });

    // The flood: 40 connections from the domain's MAC, held for the whole test.
    let server = SocketAddr::from((link.b.v4, 7071));
    let _listener = victim_ns.run(move || vespa_tests::traffic::tcp_listen(server, 256));
    let held = attacker_ns.run(move || vespa_tests::traffic::tcp_connect_n(server, 40));
    assert_eq!(held.len(), 40);

    // The policy quarantines it: running on the quarantine hypervisor, not on the source.
    try_wait_until(
        "the VM running on the quarantine hypervisor",
        WAIT,
        || match q.state(&dom.name) {
            s if s == "running" => Ok(()),
            s => Err(s),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&vo, &agents)));
    assert_eq!(dom.state(), "shut off", "no longer running on the source");
    let migrated = vo.log_lines().into_iter().any(|l| {
        l["fields"]["message"] == "policy action done" && l["fields"]["verb"] == "migrate"
    });
    assert!(
        migrated,
        "the VO's migrate went through lv\n{}",
        logs(&vo, &agents)
    );
    // A pass sees it away from the source: in force, nothing missing.
    wait_until("a pass with the quarantine in force", WAIT, || {
        let vms = vo_call("call", &["lv", "vm_state", &dom.name]).ok()?;
        (vms == "shutoff" && drift("missing")? == 0.0).then_some(())
    });

    // Behind the VO's back: migrated home, with virsh on the quarantine hypervisor.
    q.virsh(&[
        "migrate",
        "--live",
        "--listen-address",
        "127.0.0.1",
        &dom.name,
        URI,
        "tcp://127.0.0.1",
    ])
    .unwrap_or_else(|e| panic!("virsh migrate home: {e}\n{}", q.log()));
    // (Its state on the source is not asserted: a pass a second later may already be
    // migrating it away again.)

    // The next pass finds it running on the source and migrates it again.
    try_wait_until("the drift counted missing on lv", WAIT, || {
        match drift("missing") {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&vo, &agents)));
    try_wait_until("the VM back on the quarantine hypervisor", WAIT, || match (
        q.state(&dom.name),
        dom.state(),
    ) {
        (qs, s) if qs == "running" && s == "shut off" => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&vo, &agents)));
    assert_eq!(drift("stray"), Some(0.0), "{}", logs(&vo, &agents));
    let said = format!(
        "quarantined {} runs here: migrated again to quarantine",
        dom.name
    );
    wait_until("the pass's alert at the VO", WAIT, || {
        try_vo_alerts(&tree, &|v, a| vo_call(v, a))?
            .into_iter()
            .filter_map(|a| a["body"]["Text"].as_str().map(str::to_string))
            .find(|t| t.contains(&said))
    });

    drop(held);
    assert_eq!(
        vo_call("destroy", &[]),
        Ok("destroying VO and its subtree".into())
    );
    for p in [&mut agents, &mut vo] {
        let st = p.wait_exit();
        assert!(st.success(), "{} exited with {st}", p.label);
    }
}
