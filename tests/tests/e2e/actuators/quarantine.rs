//! The libvirt agent's `migrate` doing a real live migration: from the system libvirtd to a
//! second, test-owned libvirtd on the same machine (the quarantine hypervisor, its own mount
//! namespace and host UUID), the VM's memory over loopback (`migrate_uri`).

use vespa_agents::libvirt::{LibvirtAgent, LibvirtConfig};
use vespa_agents::{ActuatorAlert, AlertSink};
use vespa_node::Agent as _;
use vespa_tests::daemons::libvirt::{KvmDomain, QuarantineLibvirtd, URI};
use vespa_tests::daemons::require_daemon;
use vespa_tests::shared::LIBVIRTD;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_a_running_vm_to_the_quarantine_hypervisor() {
    // The one system libvirtd, shared with the other tests; dropped last.
    let _libvirtd = LIBVIRTD.share();
    let test = "migrate_moves_a_running_vm_to_the_quarantine_hypervisor";
    if !vespa_tests::privileged(test) {
        return;
    }
    // Dropped after the domain: whatever runs there is destroyed before the daemon stops.
    let Some(q) = require_daemon(test, "a quarantine libvirtd", QuarantineLibvirtd::start()) else {
        return;
    };
    let Some(d) = require_daemon(test, "a KVM domain", KvmDomain::start_quiet("vmig")) else {
        return;
    };
    assert_eq!(d.state(), "running");
    assert!(
        q.state(&d.name).contains("failed to get domain"),
        "not on the quarantine hypervisor before"
    );

    let (tx, mut alerts) = tokio::sync::mpsc::channel(64);
    let mut cfg = LibvirtConfig {
        watch_events: false,
        ..LibvirtConfig::new(URI)
    };
    // Two names for the one quarantine hypervisor: the second sends the memory to a port
    // this test holds, where the destination's QEMU cannot listen.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = busy.local_addr().expect("port").port();
    cfg.add_destinations(&format!("quarantine={0},busy={0}", q.uri))
        .expect("migrate_to");
    cfg.add_migrate_uris(&format!(
        "quarantine=tcp://127.0.0.1,busy=tcp://127.0.0.1:{port}"
    ))
    .expect("migrate_uri");
    let a = LibvirtAgent::new(cfg, AlertSink::new(tx)).expect("agent");

    // The migration URI is the one used: to the held port it fails, and the VM stays.
    let e = a
        .call_words("migrate", vec![d.name.clone(), "busy".into()])
        .await
        .expect_err("the destination cannot listen on a port in use");
    assert!(
        e.contains("migrate-incoming") && e.contains("in use"),
        "{e}"
    );
    assert_eq!(
        d.state(),
        "running",
        "a failed migration leaves the VM where it was"
    );
    assert!(q.state(&d.name).contains("failed to get domain"));
    match alerts.try_recv() {
        Ok(ActuatorAlert::ActuatorFailed { action, .. }) => {
            assert_eq!(action, format!("migrate {}", d.name))
        }
        other => panic!("expected an ActuatorFailed alert, got {other:?}"),
    }
    drop(busy);

    let r = a
        .call_words("migrate", vec![d.name.clone(), "quarantine".into()])
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}\nquarantine libvirtd:\n{}", q.log()));
    let r: serde_json::Value = serde_json::from_str(&r).expect("JSON");
    assert_eq!(r["ok"], "migrated", "{r}");
    assert_eq!(r["to"], q.uri.as_str(), "{r}");

    // virsh on each daemon: running on the quarantine hypervisor, no longer on the source
    // (its persistent definition stays there, shut off).
    assert_eq!(q.state(&d.name), "running", "{}", q.log());
    assert_eq!(d.state(), "shut off");
    let here = a
        .call_words("vm_state", vec![d.name.clone()])
        .await
        .expect("vm_state");
    assert_eq!(
        here, "shutoff",
        "the agent sees it gone from its hypervisor"
    );
    // The same domain (its UUID travelled with it), with its interface.
    assert_eq!(
        q.virsh(&["domuuid", &d.name]).map(|s| s.trim().to_string()),
        Ok(d.uuid.clone())
    );
    assert!(
        q.virsh(&["domiflist", &d.name])
            .is_ok_and(|l| l.contains(&d.mac)),
        "the interface came along"
    );
    assert!(
        alerts.try_recv().is_err(),
        "a migration that took raises nothing"
    );

    // Migrating a VM that no longer runs here is refused by libvirt, typed, and changes
    // nothing on the quarantine hypervisor.
    let e = a
        .call_words("migrate", vec![d.name.clone(), "quarantine".into()])
        .await
        .expect_err("not running here any more");
    assert!(e.contains("not running") || e.contains("invalid"), "{e}");
    assert_eq!(q.state(&d.name), "running");
}
