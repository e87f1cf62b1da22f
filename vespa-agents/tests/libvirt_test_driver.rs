//! The libvirt agent against libvirt's in-process `test:///default` driver (no daemon): the
//! verbs it supports, typed errors for what it does not (link state, migration), unknown VMs,
//! a daemon that is down, and the tap map following domain events.
//!
//! `test:///default` keeps one shared state per process, so the tests that change the
//! predefined domain `test` run in one function, in order.

use std::time::Duration;

use vespa_agents::libvirt::{KeyPress, LibvirtAgent, LibvirtConfig, VmEventKind};
use vespa_agents::{AlertSink, LibvirtError, RetryPolicy};
use vespa_node::Agent as _;

const URI: &str = "test:///default";

fn agent(watch: bool) -> LibvirtAgent {
    let cfg = LibvirtConfig {
        watch_events: watch,
        retry: RetryPolicy::none(),
        ..LibvirtConfig::new(URI)
    };
    LibvirtAgent::new(cfg, AlertSink::none()).expect("agent")
}

async fn call(a: &LibvirtAgent, verb: &str, args: &[&str]) -> Result<String, String> {
    a.call_words(verb, args.iter().map(|s| s.to_string()).collect())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supported_verbs_and_typed_errors_on_the_test_driver() {
    let a = agent(false);
    assert_eq!(call(&a, "contains_vm", &["test"]).await, Ok("true".into()));
    assert_eq!(
        call(&a, "contains_vm", &["no-such-vm"]).await,
        Ok("false".into())
    );

    let vms = a.list_vms().await.expect("list_vms");
    let t = vms
        .iter()
        .find(|v| v.name == "test")
        .expect("the test driver's domain");
    assert_eq!(t.state, "running");
    assert_eq!(t.interfaces[0].mac, "aa:bb:cc:dd:ee:ff");
    assert_eq!(t.interfaces[0].tap.as_deref(), Some("testnet0"));

    assert!(call(&a, "suspend", &["test"]).await.is_ok());
    assert_eq!(call(&a, "vm_state", &["test"]).await, Ok("paused".into()));
    assert!(call(&a, "resume", &["test"]).await.is_ok());
    assert_eq!(a.vm_state("test").await.expect("state"), "running");
    a.restart_hard("test").await.expect("destroy + create");
    assert_eq!(a.vm_state("test").await.expect("state"), "running");
    a.restart("test").await.expect("reboot");
    a.send_key("test", KeyPress::default())
        .await
        .expect("send the 2014 keys");
    assert!(call(&a, "send_key", &["test", "linux", "30", "0x1e"])
        .await
        .is_ok());
    let e = call(&a, "send_key", &["test", "linux", "KEY_A"])
        .await
        .expect_err("bad key code");
    assert!(e.contains("bad key code"), "{e}");

    let stats = a.iface_stats("test", None).await.expect("interface stats");
    assert_eq!(stats[0].tap, "testnet0");
    assert!(stats[0].rx_bytes >= 0 && stats[0].tx_packets >= 0);

    // Link state: the test driver cannot update devices -> the typed "unsupported" error.
    match a.set_link("test", None, false).await {
        Err(LibvirtError::Unsupported { op: "cut_link", .. }) => {}
        other => panic!("expected Unsupported, got {other:?}"),
    }
    let e = call(&a, "cut_link", &["test"])
        .await
        .expect_err("unsupported");
    assert!(
        e.contains("cut_link is not supported by the libvirt driver behind test:///default"),
        "{e}"
    );
    let e = call(&a, "migrate", &["test", "test:///default"])
        .await
        .expect_err("no migration in the test driver");
    assert!(e.contains("not supported") || e.contains("migrate"), "{e}");

    // Unknown VM, malformed arguments: typed errors, and the agent keeps serving.
    match a.suspend("ghost").await {
        Err(LibvirtError::UnknownVm { vm, uri }) => {
            assert_eq!((vm.as_str(), uri.as_str()), ("ghost", URI))
        }
        other => panic!("expected UnknownVm, got {other:?}"),
    }
    assert!(call(&a, "restart_hard", &["ghost"])
        .await
        .expect_err("unknown")
        .contains("unknown VM \"ghost\""));
    assert!(call(&a, "cut_link", &["test", "aa:bb:cc:dd:ee"])
        .await
        .expect_err("bad MAC")
        .contains("malformed MAC"));
    let e = call(&a, "connect_link", &["test", "aa:bb:cc:dd:ee:00"])
        .await
        .expect_err("no such interface");
    assert!(
        e.contains("has no network interface aa:bb:cc:dd:ee:00"),
        "{e}"
    );
    assert!(call(&a, "suspend", &[])
        .await
        .expect_err("arity")
        .starts_with("usage: suspend <vm>"));
    assert!(call(&a, "format_disk", &["test"])
        .await
        .expect_err("unknown verb")
        .contains("unknown verb"));
    assert_eq!(call(&a, "contains_vm", &["test"]).await, Ok("true".into()));

    // Without the event watcher, tap_map rescans on demand.
    let m: serde_json::Value =
        serde_json::from_str(&call(&a, "tap_map", &[]).await.expect("tap map")).expect("json");
    assert_eq!(m["testnet0"]["vm"], "test");
    assert_eq!(m["testnet0"]["mac"], "aa:bb:cc:dd:ee:ff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_down_is_a_typed_error_after_retries() {
    let cfg = LibvirtConfig {
        watch_events: false,
        retry: RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(10),
        },
        ..LibvirtConfig::new("qemu+unix:///system?socket=/nonexistent/vespa/libvirt-sock")
    };
    let a = LibvirtAgent::new(cfg, AlertSink::none()).expect("agent");
    match a.contains_vm("web1").await {
        Err(LibvirtError::DaemonDown { uri, .. }) => assert!(uri.contains("/nonexistent/")),
        other => panic!("expected DaemonDown, got {other:?}"),
    }
    assert_eq!(a.retry_stats().retries(), 2);
    let e = call(&a, "list_vms", &[]).await.expect_err("down");
    assert!(e.contains("is unreachable"), "{e}");
}

/// A second domain defined and started on the shared test driver appears in the watcher's
/// tap map (events), and leaves it when destroyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_map_follows_domain_events() {
    let a = agent(true);
    let mut events = a.subscribe();
    let taps = a.taps();
    // A domain started before the watcher registers is in the map but has no event.
    a.events_watched().await;
    let name = format!("vespa-ev-{}", std::process::id());
    let xml = format!(
        "<domain type='test'><name>{name}</name><memory>65536</memory><os><type>hvm</type></os>\
         <devices><interface type='ethernet'><mac address='52:54:00:0e:0e:01'/><target dev='evtap0'/></interface></devices></domain>"
    );
    // Through the agent's own blocking context (only this crate talks to libvirt).
    a.run("define", &name, move |c| {
        let d = c.conn.define_domain_xml(&xml).map_err(|e| c.err(e))?;
        d.create().map_err(|e| c.err(e))
    })
    .await
    .expect("define and start a domain");
    let ev = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = events.recv().await.expect("event stream");
            if e.vm == name && e.kind == VmEventKind::Started {
                return e;
            }
        }
    })
    .await
    .expect("a Started event within 10 s");
    let entry = taps
        .get("evtap0")
        .expect("the new domain's device is in the map once the event is published");
    assert_eq!(
        (entry.vm.as_str(), entry.mac.as_str(), entry.uuid.as_str()),
        (name.as_str(), "52:54:00:0e:0e:01", ev.uuid.as_str())
    );
    assert_eq!(taps.taps_of(&name).len(), 1);

    a.run("destroy", &name, |c| {
        c.domain()?.destroy().map_err(|e| c.err(e))
    })
    .await
    .expect("destroy");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = events.recv().await.expect("event stream");
            if e.vm == name && e.kind == VmEventKind::Stopped {
                return;
            }
        }
    })
    .await
    .expect("a Stopped event");
    assert!(
        taps.get("evtap0").is_none(),
        "stopped domain removed from the map"
    );
    a.run("undefine", &name, |c| {
        c.domain()?.undefine().map_err(|e| c.err(e))
    })
    .await
    .expect("undefine");
}
