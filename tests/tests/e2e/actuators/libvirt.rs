//! The libvirt agent against a real libvirtd (started by the test kit) and KVM domains with
//! an `<interface type='ethernet'>` (a host tap device) and no guest OS.

use std::time::Duration;

use serde_json::Value;
use vespa_agents::libvirt::{Domains, LibvirtAgent, LibvirtConfig, VmEventKind};
use vespa_agents::{ActuatorAlert, AlertSink, LibvirtError, RetryPolicy};
use vespa_node::Agent as _;
use vespa_testkit::wait_until_async;
use vespa_tests::daemons::libvirt::{libvirtd, KvmDomain, URI};
use vespa_tests::daemons::require_daemon;
use vespa_tests::shared::LIBVIRTD;

fn ready(test: &str) -> bool {
    vespa_tests::privileged(test)
        && require_daemon(test, "libvirtd with KVM", libvirtd().map(drop)).is_some()
}

fn domain(test: &str, define_only: bool) -> Option<KvmDomain> {
    let r = if define_only {
        KvmDomain::define("vdom")
    } else {
        KvmDomain::start("vdom")
    };
    require_daemon(test, "a KVM domain", r)
}

fn agent(watch: bool) -> (LibvirtAgent, tokio::sync::mpsc::Receiver<ActuatorAlert>) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let cfg = LibvirtConfig {
        watch_events: watch,
        ..LibvirtConfig::new(URI)
    };
    (
        LibvirtAgent::new(cfg, AlertSink::new(tx)).expect("agent"),
        rx,
    )
}

async fn call(a: &LibvirtAgent, verb: &str, args: &[&str]) -> Result<String, String> {
    a.call_words(verb, args.iter().map(|s| s.to_string()).collect())
        .await
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvm_cut_and_connect_link_confirmed_by_libvirt() {
    // The one system libvirtd, shared with the other tests; dropped last.
    let _libvirtd = LIBVIRTD.share();
    let test = "kvm_cut_and_connect_link_confirmed_by_libvirt";
    if !ready(test) {
        return;
    }
    let Some(d) = domain(test, false) else { return };
    let (a, _alerts) = agent(false);
    assert_eq!(call(&a, "contains_vm", &[&d.name]).await, Ok("true".into()));
    assert_eq!(d.link(), "up");

    let r = json(&call(&a, "cut_link", &[&d.name]).await.expect("cut_link"));
    assert_eq!(r[0]["mac"], d.mac);
    assert_eq!(r[0]["up"], false);
    assert_eq!(d.link(), "down", "virsh domif-getlink sees the link down");
    let st = json(
        &call(&a, "link_state", &[&d.name])
            .await
            .expect("link_state"),
    );
    assert_eq!(st[0]["up"], false);

    let r = json(
        &call(&a, "connect_link", &[&d.name, &d.mac.to_uppercase()])
            .await
            .expect("connect_link by MAC"),
    );
    assert_eq!(r[0]["up"], true);
    assert_eq!(d.link(), "up");
    // Cutting twice is harmless (idempotent), and so is connecting twice.
    call(&a, "cut_link", &[&d.name, &d.mac]).await.expect("cut");
    call(&a, "cut_link", &[&d.name, &d.mac])
        .await
        .expect("cut again");
    assert_eq!(d.link(), "down");
    call(&a, "connect_link", &[&d.name]).await.expect("connect");
    assert_eq!(d.link(), "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvm_suspend_resume_restart_and_restart_hard() {
    // The one system libvirtd, shared with the other tests; dropped last.
    let _libvirtd = LIBVIRTD.share();
    let test = "kvm_suspend_resume_restart_and_restart_hard";
    if !ready(test) {
        return;
    }
    let Some(d) = domain(test, false) else { return };
    let (a, _alerts) = agent(false);
    call(&a, "suspend", &[&d.name]).await.expect("suspend");
    assert_eq!(d.state(), "paused");
    assert_eq!(call(&a, "vm_state", &[&d.name]).await, Ok("paused".into()));
    call(&a, "resume", &[&d.name]).await.expect("resume");
    assert_eq!(d.state(), "running");

    let pid = d.qemu_pid().expect("QEMU pid file");
    call(&a, "restart_hard", &[&d.name])
        .await
        .expect("restart_hard");
    assert_eq!(d.state(), "running");
    let new_pid = d.qemu_pid().expect("QEMU pid file after restart");
    assert_ne!(pid, new_pid, "destroy + create runs a new QEMU process");
    call(&a, "restart", &[&d.name])
        .await
        .expect("restart (ACPI reboot request)");
    assert_eq!(d.state(), "running");
    call(&a, "send_key", &[&d.name])
        .await
        .expect("the 2014 keys");

    // restart of a stopped domain starts it (as 2014's create() did); restart_hard too.
    d.virsh(&["destroy", &d.name]).expect("virsh destroy");
    assert_eq!(d.state(), "shut off");
    match a.suspend(&d.name).await {
        Err(LibvirtError::InvalidState { op: "suspend", .. }) => {}
        other => panic!("suspending a stopped domain: expected InvalidState, got {other:?}"),
    }
    call(&a, "restart", &[&d.name])
        .await
        .expect("restart a stopped domain");
    assert_eq!(d.state(), "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_map_matches_domiflist_and_follows_domains_started_later() {
    // The one system libvirtd, shared with the other tests; dropped last.
    let _libvirtd = LIBVIRTD.share();
    let test = "tap_map_matches_domiflist_and_follows_domains_started_later";
    if !ready(test) {
        return;
    }
    // A domain defined but started only after the agent (and its event watcher) runs.
    let Some(d) = domain(test, true) else { return };
    let (a, _alerts) = agent(true);
    let mut events = a.subscribe();
    let taps = a.taps();
    a.events_watched().await;
    d.virsh(&["start", &d.name]).expect("virsh start");
    let iflist = d.iflist();
    assert_eq!(iflist.len(), 1, "{iflist:?}");
    let (tap, mac) = iflist[0].clone();
    assert_eq!(mac, d.mac);
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let e = events.recv().await.expect("event stream");
            if e.vm == d.name && e.kind == VmEventKind::Started {
                return;
            }
        }
    })
    .await
    .expect("a Started event for the domain");
    let entry = taps
        .get(&tap)
        .unwrap_or_else(|| panic!("{tap} missing from the map: {:?}", taps.snapshot()));
    assert_eq!(
        (
            entry.vm.as_str(),
            entry.mac.as_str(),
            entry.uuid.as_str(),
            entry.kind.as_str()
        ),
        (d.name.as_str(), d.mac.as_str(), d.uuid.as_str(), "ethernet")
    );
    assert!(
        std::path::Path::new(&format!("/sys/class/net/{tap}")).exists(),
        "{tap} is a host device"
    );

    // The verb agrees with virsh domiflist for every running domain the map holds.
    let m = json(&call(&a, "tap_map", &[]).await.expect("tap_map"));
    assert_eq!(m[&tap]["vm"], d.name);
    let stats = json(
        &call(&a, "iface_stats", &[&d.name, &tap])
            .await
            .expect("iface_stats"),
    );
    assert_eq!(stats[0]["tap"], tap);
    assert!(
        stats[0]["rx_bytes"].as_i64().is_some_and(|b| b >= 0),
        "{stats}"
    );

    // Stopping the domain removes its device from the map.
    d.virsh(&["destroy", &d.name]).expect("virsh destroy");
    let (taps, tap) = (&taps, &tap);
    wait_until_async(
        "the device to leave the map",
        Duration::from_secs(20),
        move || async move { taps.get(tap).map_or(Ok(()), Err) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_failures_are_typed_and_the_agent_keeps_serving() {
    // The one system libvirtd, shared with the other tests; dropped last.
    let _libvirtd = LIBVIRTD.share();
    let test = "bad_input_and_failures_are_typed_and_the_agent_keeps_serving";
    if !ready(test) {
        return;
    }
    let Some(d) = domain(test, false) else { return };
    let (tx, mut alerts) = tokio::sync::mpsc::channel(64);
    let mut cfg = LibvirtConfig {
        watch_events: false,
        retry: RetryPolicy {
            attempts: 2,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(10),
        },
        ..LibvirtConfig::new(URI)
    };
    cfg.add_destinations("quarantine=qemu+unix:///system?socket=/nonexistent/quarantine-sock")
        .expect("destinations");
    let a = LibvirtAgent::new(cfg, AlertSink::new(tx)).expect("agent");
    let e = call(&a, "cut_link", &["no-such-vm-anywhere"])
        .await
        .expect_err("unknown VM");
    assert!(
        e.starts_with("unknown VM \"no-such-vm-anywhere\" on qemu:///system"),
        "{e}"
    );
    assert_eq!(
        call(&a, "contains_vm", &["no-such-vm-anywhere"]).await,
        Ok("false".into())
    );
    assert!(call(&a, "cut_link", &[&d.name, "52:54:00:zz:00:01"])
        .await
        .expect_err("bad MAC")
        .contains("malformed MAC"));
    assert!(call(&a, "cut_link", &[&d.name, "52:54:00:00:00:01"])
        .await
        .expect_err("other MAC")
        .contains("has no network interface 52:54:00:00:00:01"));
    assert!(call(&a, "send_key", &[&d.name, "0xZZ"])
        .await
        .expect_err("bad key")
        .contains("bad key code"));
    assert!(
        alerts.try_recv().is_err(),
        "caller mistakes raise no actuator alert"
    );

    // A caller names a configured destination; a URI of its own, or another name, is
    // refused before libvirt is asked anything.
    for (dest, why) in [
        ("qemu+tcp://elsewhere/system", "not a URI"),
        ("ext:///system?command=/bin/sh", "not a URI"),
        ("elsewhere", "is not a migration destination"),
    ] {
        let e = call(&a, "migrate", &[&d.name, dest])
            .await
            .expect_err("refused");
        assert!(e.contains(why), "{dest}: {e}");
    }
    assert_eq!(a.retry_stats().retries(), 0, "libvirt was not asked");
    // Migration to a quarantine hypervisor that cannot be reached: typed, retried, alerted.
    let e = call(&a, "migrate", &[&d.name, "quarantine"])
        .await
        .expect_err("unreachable destination");
    assert!(e.contains("libvirt daemon at qemu+unix:///system?socket=/nonexistent/quarantine-sock is unreachable"), "{e}");
    assert_eq!(a.retry_stats().retries(), 1);
    match alerts.try_recv() {
        Ok(ActuatorAlert::ActuatorFailed {
            actuator, action, ..
        }) => {
            assert_eq!(
                (actuator.as_str(), action),
                ("libvirt", format!("migrate {}", d.name))
            )
        }
        other => panic!("expected an ActuatorFailed alert, got {other:?}"),
    }
    assert_eq!(
        d.state(),
        "running",
        "a failed migration leaves the VM where it was"
    );
    // Still serving.
    let vms = json(&call(&a, "list_vms", &[]).await.expect("list_vms"));
    assert!(
        vms.as_array()
            .expect("list")
            .iter()
            .any(|v| v["name"] == d.name.as_str() && v["state"] == "running"),
        "{vms}"
    );
}

/// `domains` scopes the agent: another VM on the same hypervisor is absent from `list_vms`,
/// the tap map and the event stream, and every verb naming it (by name or UUID) is refused
/// without an alert, while the agent's own VM is served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_scoped_to_its_domains_neither_sees_nor_touches_the_others() {
    // The one system libvirtd, shared with the other tests; dropped last.
    let _libvirtd = LIBVIRTD.share();
    let test = "an_agent_scoped_to_its_domains_neither_sees_nor_touches_the_others";
    if !ready(test) {
        return;
    }
    let Some(mine) = domain(test, true) else {
        return;
    };
    let Some(other) = domain(test, true) else {
        return;
    };
    let (tx, mut alerts) = tokio::sync::mpsc::channel(64);
    let cfg = LibvirtConfig {
        domains: Domains::parse(&format!("{}, nothing-[0-9]", mine.name)).expect("patterns"),
        ..LibvirtConfig::new(URI)
    };
    let a = LibvirtAgent::new(cfg, AlertSink::new(tx)).expect("agent");
    let mut events = a.subscribe();
    a.events_watched().await;
    // One connection delivers events in order: the other's start comes first, if at all.
    other
        .virsh(&["start", &other.name])
        .expect("start the other");
    mine.virsh(&["start", &mine.name]).expect("start mine");
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let e = events.recv().await.expect("event stream");
            assert_ne!(e.vm, other.name, "the other domain's event was published");
            if e.vm == mine.name && e.kind == VmEventKind::Started {
                return;
            }
        }
    })
    .await
    .expect("a Started event for the agent's domain");

    let names: Vec<Value> = json(&call(&a, "list_vms", &[]).await.expect("list_vms"))
        .as_array()
        .expect("list")
        .iter()
        .map(|v| v["name"].clone())
        .collect();
    assert_eq!(
        names,
        [Value::from(mine.name.as_str())],
        "only the agent's domain is listed"
    );
    let map = json(&call(&a, "tap_map", &[]).await.expect("tap_map"));
    let vms: Vec<&str> = map
        .as_object()
        .expect("map")
        .values()
        .filter_map(|i| i["vm"].as_str())
        .collect();
    assert_eq!(vms, [mine.name.as_str()], "{map}");

    assert_eq!(
        call(&a, "contains_vm", &[&other.name]).await,
        Ok("false".into())
    );
    for id in [&other.name, &other.uuid] {
        let e = call(&a, "cut_link", &[id]).await.expect_err("refused");
        assert!(
            e.contains("is not among this agent's domains") && e.contains(&mine.name),
            "{id}: {e}"
        );
    }
    assert_eq!(other.link(), "up", "the other domain was not touched");
    assert!(
        alerts.try_recv().is_err(),
        "a VM outside the scope raises no actuator alert"
    );
    call(&a, "cut_link", &[&mine.name]).await.expect("cut mine");
    assert_eq!(mine.link(), "down");
}
