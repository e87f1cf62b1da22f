//! The libvirt agent across a libvirtd restart (with the daemon taken alone, so no other test
//! uses it while it is down; skipped if the tests did not start that libvirtd themselves).

use std::sync::Arc;
use std::time::Duration;

use vespa_agents::libvirt::{LibvirtAgent, LibvirtConfig};
use vespa_agents::{AlertSink, LibvirtError, RetryPolicy};
use vespa_testkit::wait_until_async;
use vespa_tests::daemons::libvirt::{libvirtd, KvmDomain, URI};
use vespa_tests::daemons::require_daemon;
use vespa_tests::shared::LIBVIRTD;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_down_is_typed_then_calls_and_the_tap_map_recover_after_restart() {
    // The daemon goes down here: no other test may use it meanwhile. Dropped last.
    let _libvirtd = LIBVIRTD.take();
    let test = "daemon_down_is_typed_then_calls_and_the_tap_map_recover_after_restart";
    if !vespa_tests::privileged(test) {
        return;
    }
    let Some(daemon) = require_daemon(test, "libvirtd with KVM", libvirtd()) else {
        return;
    };
    if !daemon.started_here {
        eprintln!("SKIPPED {test}: libvirtd was already running and is not ours to restart");
        return;
    }
    let Some(d) = require_daemon(test, "a KVM domain", KvmDomain::start("vrst")) else {
        return;
    };
    let (tap, _) = d
        .iflist()
        .first()
        .cloned()
        .expect("the domain's tap device");
    let patient = RetryPolicy {
        attempts: 100,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
    };
    let a = Arc::new(
        LibvirtAgent::new(
            LibvirtConfig {
                retry: patient,
                ..LibvirtConfig::new(URI)
            },
            AlertSink::none(),
        )
        .expect("agent"),
    );
    let taps = a.taps();
    let (t, tp) = (&taps, &tap);
    wait_until_async(
        "the watcher's first scan to map the running domain",
        Duration::from_secs(20),
        move || async move { t.get(tp) },
    )
    .await;
    assert_eq!(a.vm_state(&d.name).await.expect("state"), "running");

    tokio::task::spawn_blocking(|| daemon.stop())
        .await
        .expect("join")
        .expect("stop libvirtd");
    // With the daemon down: a typed error after the retries (a quick agent).
    let quick = RetryPolicy {
        attempts: 2,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(5),
    };
    let q = LibvirtAgent::new(
        LibvirtConfig {
            retry: quick,
            watch_events: false,
            ..LibvirtConfig::new(URI)
        },
        AlertSink::none(),
    )
    .expect("agent");
    match q.contains_vm(&d.name).await {
        Err(LibvirtError::DaemonDown { .. }) => {}
        other => panic!("expected DaemonDown while libvirtd is stopped, got {other:?}"),
    }
    // The patient agent's call, started while the daemon is down, succeeds once it is back:
    // its connection is reopened.
    let call = {
        let (a, name) = (a.clone(), d.name.clone());
        tokio::spawn(async move { a.vm_state(&name).await })
    };
    let patient = &a;
    wait_until_async(
        "the patient agent's first retry",
        Duration::from_secs(10),
        move || async move { patient.retry_stats().retries() > 0 },
    )
    .await;
    tokio::task::spawn_blocking(|| daemon.start_again())
        .await
        .expect("join")
        .expect("start libvirtd again");
    assert_eq!(
        call.await
            .expect("task")
            .expect("the call rides out the restart"),
        "running",
        "QEMU kept running"
    );

    // The watcher reconnected and registered its callbacks again: a domain started now
    // appears in the map.
    let Some(d2) = require_daemon(test, "a second KVM domain", KvmDomain::start("vrst")) else {
        return;
    };
    let (tap2, mac2) = d2
        .iflist()
        .first()
        .cloned()
        .expect("tap of the second domain");
    let (t, tap2) = (&taps, &tap2);
    let entry = wait_until_async(
        "the domain started after the restart in the map",
        Duration::from_secs(30),
        move || async move { t.get(tap2) },
    )
    .await;
    assert_eq!(
        (entry.vm.as_str(), entry.mac.as_str()),
        (d2.name.as_str(), mac2.as_str())
    );
    assert!(
        taps.get(&tap).is_some(),
        "the first domain is still mapped after the rescan"
    );
}
