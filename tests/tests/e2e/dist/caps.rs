//! The agent with exactly the capabilities of `vespa-agent.service` (and
//! `vespa-exporter.service`, the same set), as an unprivileged user (`setpriv` with the unit's
//! ambient and bounding sets): its eBPF sensors, the connection tracker among them, load,
//! count and detach on exit; with any one capability fewer it refuses to start, naming it.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use aya::programs::TcAttachType;
use vespa_tests::{net::Link, net::Netns, privileged, workspace_bin};

use super::unit;

fn agent_unit() -> String {
    unit::read(&unit::deploy_dir().join("vespa-agent.service"))
}

use crate::kit::tcx_programs;

#[test]
fn the_agent_runs_unprivileged_with_exactly_the_units_capabilities() {
    if !privileged("the_agent_runs_unprivileged_with_exactly_the_units_capabilities") {
        return;
    }
    let u = agent_unit();
    let ambient = unit::caps(&u, "AmbientCapabilities");
    let bounding = unit::caps(&u, "CapabilityBoundingSet");
    assert_eq!(ambient, bounding, "the unit grants what it bounds");
    assert_eq!(unit::setting(&u, "NoNewPrivileges"), "yes");
    assert_eq!(unit::setting(&u, "User"), "vespa");
    // The exporter's unit runs the same sensors with the same set, tested here with them.
    let exporter = unit::read(&unit::deploy_dir().join("vespa-exporter.service"));
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        assert_eq!(unit::caps(&exporter, key), ambient, "{key}");
    }
    let l = Link::new();
    let agent = workspace_bin("vespa-agent");
    let argv: Vec<String> = [
        agent.to_string_lossy().as_ref(),
        "--mode",
        "ebpf",
        "-i",
        &l.b.ifname,
        "counters",
        "--json",
        "--after",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut child = unit::as_service(&l.b_ns.name, &ambient, &bounding, &argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let pid = child.id();
    // Once setpriv has become the agent: its credentials are the unit's, exactly.
    vespa_testkit::wait_until("the agent to run", Duration::from_secs(10), || {
        std::fs::read_link(format!("/proc/{pid}/exe")).ok() == Some(agent.clone())
    });
    let want = unit::mask(&ambient);
    for key in ["CapEff", "CapPrm", "CapAmb", "CapBnd"] {
        assert_eq!(
            unit::proc_caps(pid, key),
            Some(want),
            "{key} of the agent is the unit's set {ambient:?}"
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(
        status.contains(&format!("Uid:\t{0}\t{0}\t{0}\t{0}", unit::UID)),
        "runs as uid {}: {status}",
        unit::UID
    );
    // Traffic into the monitored end while the agent counts.
    let to = SocketAddr::new(IpAddr::V4(l.b.v4), 9503);
    let mut sent = 0;
    while child.try_wait().expect("wait").is_none() {
        // Unconnected: nothing listens there, and the port-unreachable answers are counted too.
        l.a_ns.run(move || {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind UDP sender");
            for _ in 0..20 {
                let _ = sock.send_to(&[0xa5; 64], to);
            }
        });
        sent += 20;
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("agent output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the agent failed: {stderr}");
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON counters");
    assert_eq!(snap["health"]["mode"], "ebpf", "{snap}");
    let iface = &snap["interfaces"][0];
    assert_eq!(iface["name"], l.b.ifname.as_str());
    assert!(
        iface["rx_packets"].as_u64().unwrap_or(0) > 0,
        "counted ingress packets ({sent} sent): {snap}"
    );
    assert!(
        snap["health"]["program_runs"]["vespa_ingress"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{snap}"
    );
    assert!(stderr.contains("eBPF sensors detached"), "{stderr}");
    for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
        assert_eq!(
            tcx_programs(&l.b_ns, &l.b.ifname, dir),
            Vec::<String>::new(),
            "{dir:?} left attached after exit"
        );
    }
}

#[test]
fn with_one_capability_fewer_the_agent_names_it() {
    if !privileged("with_one_capability_fewer_the_agent_names_it") {
        return;
    }
    let u = agent_unit();
    let all = unit::caps(&u, "AmbientCapabilities");
    let ns = Netns::new("vcap");
    let agent = workspace_bin("vespa-agent");
    for missing in &all {
        let fewer: Vec<String> = all.iter().filter(|c| *c != missing).cloned().collect();
        let argv: Vec<String> = [
            agent.to_string_lossy().as_ref(),
            "--mode",
            "ebpf",
            "-i",
            "lo",
            "counters",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = unit::as_service(&ns.name, &fewer, &fewer, &argv)
            .output()
            .expect("run the agent");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started without {missing}: {text}");
        assert!(
            text.contains(&format!("missing capability {missing}:")),
            "without {missing}: {text}"
        );
        assert!(!text.contains("panicked"), "{text}");
    }
}

#[test]
fn with_the_units_capabilities_the_firewall_pins_adopts_and_unpins() {
    if !privileged("with_the_units_capabilities_the_firewall_pins_adopts_and_unpins") {
        return;
    }
    let u = agent_unit();
    let caps = unit::caps(&u, "AmbientCapabilities");
    // The unit makes /sys/fs/bpf/vespa as root and hands it to its user before the agent
    // starts, and opens it in the read-only /sys; here a directory of the test's, made alike.
    assert_eq!(
        unit::setting(&u, "ExecStartPre"),
        "+/usr/bin/install -d -o vespa -g vespa -m 0750 /sys/fs/bpf/vespa"
    );
    assert_eq!(unit::setting(&u, "ReadWritePaths"), "-/sys/fs/bpf/vespa");
    let dir = std::path::Path::new("/sys/fs/bpf").join(vespa_tests::unique("vespa-caps-"));
    let uid = unit::UID.to_string();
    vespa_tests::cmd::sh(&[
        "install",
        "-d",
        "-o",
        &uid,
        "-g",
        &uid,
        "-m",
        "0750",
        &dir.to_string_lossy(),
    ]);
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _remove = Remove(dir.clone());
    let pins = dir.join("node");
    let ns = Netns::new("vpin");
    let agent = workspace_bin("vespa-agent");
    let run = |keep: bool| {
        let mut argv: Vec<String> = [
            agent.to_string_lossy().as_ref(),
            "--mode",
            "ebpf",
            "-i",
            "lo",
            "--pin-dir",
            &pins.to_string_lossy(),
            "counters",
            "--after",
            "0.2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if keep {
            argv.insert(1, "--keep-enforcing-on-exit".into());
        }
        let out = unit::as_service(&ns.name, &caps, &caps, &argv)
            .output()
            .expect("run the agent");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    // Left enforcing: its tables stay pinned, the service user's.
    run(true);
    let pinned: Vec<_> = std::fs::read_dir(&pins)
        .expect("the pin directory")
        .filter_map(|e| e.ok())
        .collect();
    assert!(!pinned.is_empty(), "nothing pinned in {}", pins.display());
    use std::os::unix::fs::MetadataExt as _;
    for e in &pinned {
        let m = e.metadata().expect("metadata");
        assert_eq!(m.uid(), unit::UID, "{:?} is the service user's", e.path());
    }
    // The next agent adopts them, and a normal stop unpins them.
    let stderr = run(false);
    assert!(stderr.contains("unpinned"), "{stderr}");
    assert!(
        std::fs::read_dir(&pins).map_or(true, |d| d.count() == 0),
        "pins left in {}",
        pins.display()
    );
}
