//! The acting agents through the tree: a VO calls libvirt and SDN-controller verbs on agents
//! two hops down, in separate processes, and the agents really act (libvirt's in-process test
//! driver; a Floodlight stand-in that records every request).

use std::net::IpAddr;

use crate::kit::*;
use vespa_testkit::wait_until;
use vespa_tests::daemons::floodlight_stub::{Fault, FloodlightStub};

#[test]
fn actuator_verbs_are_callable_through_the_tree() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let stub = rt.block_on(FloodlightStub::start());
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let nodes = [
        N::root("VO", "vo"),
        N::child("HO_HY", "ho_hy", "VO"),
        N::child("HO_PH", "ho_ph", "VO"),
        N::child("lv", "agent_libvirt", "HO_HY")
            .extra("[node.params]\nuri = \"test:///default\"\n"),
        N::child("fl", "agent_controller_floodlight", "HO_PH").extra(format!(
            "[node.params]\nurl = \"{}\"\ndefault_ttl_s = \"none\"\n",
            stub.url()
        )),
        N::child("av", "agent_av", "HO_HY")
            .extra("[node.params]\nvm = \"test\"\nclamd = \"127.0.0.1:9\"\n"),
    ];
    let tree = Tree::new(
        "act",
        "heartbeat_ms = 300\nsample_interval_ms = 0",
        &[("host", lo)],
        &nodes,
    );
    let mut orch = tree.spawn(
        "orch",
        "vespa-orchestrator",
        None,
        &[],
        &["VO", "HO_HY", "HO_PH"],
    );
    let mut agents = tree.spawn("agents", "vespa-agent", None, &[], &["lv", "fl", "av"]);

    // libvirt: the test driver's domain "test", reached VO -> HO_HY -> lv.
    let vms = wait_until("lv answers list_vms", WAIT, || {
        tree.call("lv", "list_vms", &[]).ok()
    });
    assert!(vms.contains("\"test\""), "{vms}");
    assert_eq!(tree.call("lv", "contains_vm", &["test"]), Ok("true".into()));
    tree.call("lv", "suspend", &["test"]).expect("suspend");
    assert!(
        tree.call("lv", "list_vms", &[])
            .expect("list")
            .contains("paused"),
        "the domain is paused after suspend"
    );
    tree.call("lv", "resume", &["test"]).expect("resume");
    let err = tree
        .call("lv", "cut_link", &["test"])
        .expect_err("the test driver has no link state");
    assert!(
        err.to_lowercase().contains("support"),
        "a typed 'unsupported' error, not a crash: {err}"
    );
    let err = tree
        .call("lv", "suspend", &["no-such-vm"])
        .expect_err("unknown VM");
    assert!(err.contains("no-such-vm"), "{err}");

    // Antivirus, 2014 style: while its VM is isolated, the AV agent reaches it through the
    // hypervisor agent (here lv's send_key on the test driver), connecting to it directly.
    let err = tree
        .call("av", "clean_image", &[])
        .expect_err("connected VM without an in-VM driver");
    assert!(err.contains("isolated"), "{err}");
    assert!(tree
        .call("av", "isolate_warning", &["lv"])
        .expect("isolate")
        .contains("via_hypervisor"));
    tree.call("av", "clean_image", &[])
        .expect("relayed to lv's send_key");
    assert!(tree
        .call("av", "connect_warning", &[])
        .expect("connect")
        .contains("direct"));

    // SDN: VO -> HO_PH -> fl -> Floodlight's static flow pusher.
    let help = tree.call("fl", "help", &[]).expect("help");
    for verb in [
        "block_hackers",
        "release_hackers",
        "status_hackers",
        "get_topology",
        "get_link_stats",
        "alert_ip",
    ] {
        assert!(help.contains(verb), "fl lists {verb}: {help}");
    }
    stub.take_requests();
    tree.call("fl", "block_hackers", &["52:54:00:12:34:56"])
        .expect("block");
    let pushed = stub.take_requests();
    assert!(
        pushed.iter().any(|r| r.method == "POST"
            && r.path == "/wm/staticflowpusher/json"
            && r.body
                .as_ref()
                .is_some_and(|b| b["eth_src"] == "52:54:00:12:34:56")),
        "the block reached the controller as a static drop flow: {pushed:?}"
    );
    assert!(tree
        .call("fl", "status_hackers", &[])
        .expect("status")
        .contains("52:54:00:12:34:56"));
    tree.call("fl", "release_hackers", &[]).expect("release");
    let released = stub.take_requests();
    assert!(
        released.iter().any(|r| r.method == "DELETE"),
        "release deletes the flows (2014 re-sent the block): {released:?}"
    );
    assert!(!tree
        .call("fl", "status_hackers", &[])
        .expect("status")
        .contains("52:54:00:12:34:56"));
    assert!(
        tree.call("fl", "block_hackers", &["not-a-mac"]).is_err(),
        "malformed input is a typed error"
    );

    // A controller failing for good: the call fails and an ActuatorFailed alert climbs to the VO.
    stub.set_fault(Fault::Status(500));
    let err = tree
        .call("fl", "block_hackers", &["52:54:00:00:00:99"])
        .expect_err("controller down");
    assert!(err.contains("500"), "{err}");
    let alert = wait_until("an ActuatorFailed alert from fl at the VO", WAIT, || {
        try_vo_alerts(&tree, &|v, a| tree.call("VO", v, a))?
            .into_iter()
            .find(|a| a["origin"] == "fl" && a["body"].get("ActuatorFailed").is_some())
    });
    assert_eq!(
        alert["path"],
        serde_json::json!(["fl", "HO_PH", "VO"]),
        "{alert}"
    );
    stub.set_fault(Fault::None);
    assert_eq!(
        tree.call("fl", "get_link_stats", &[]).map(|_| ()),
        Ok(()),
        "the agent keeps serving after the failure"
    );

    assert_eq!(
        tree.call("VO", "destroy", &[]),
        Ok("destroying VO and its subtree".into())
    );
    for p in [&mut agents, &mut orch] {
        let st = p.wait_exit();
        assert!(
            st.success(),
            "{} exited with {st}; log:\n{}",
            p.label,
            p.log_text()
        );
    }
}

/// With a libvirt agent and a bandwidth agent in one `vespa-agent run`, the exporter labels a
/// KVM domain's tap device with the domain, so every per-device counter can be read per VM;
/// the bandwidth agent names the VM in its samples, so the VO's API and dashboard chart the
/// VM's traffic.
#[test]
fn the_vm_of_each_tap_device_labels_metrics_samples_and_dashboard_charts() {
    use vespa_tests::daemons::libvirt::{libvirtd, KvmDomain, URI};
    use vespa_tests::daemons::require_daemon;
    use vespa_tests::shared::LIBVIRTD;
    let test = "the_vm_of_each_tap_device_labels_metrics_samples_and_dashboard_charts";
    // The one system libvirtd, shared with the other tests; dropped last.
    let _libvirtd = LIBVIRTD.share();
    if !vespa_tests::privileged(test)
        || require_daemon(test, "libvirtd with KVM", libvirtd().map(drop)).is_none()
    {
        return;
    }
    let Some(dom) = require_daemon(test, "a KVM domain", KvmDomain::start("vmlbl")) else {
        return;
    };
    let tap = dom
        .iflist()
        .first()
        .map(|(t, _)| t.clone())
        .expect("the domain has a tap device");
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let nodes = [
        N::root("VO", "vo"),
        N::child("HO_HY", "ho_hy", "VO"),
        N::child("bw", "agent_bandwidth", "HO_HY"),
        N::child("lv", "agent_libvirt", "HO_HY").extra(format!(
            "[node.params]\nuri = \"{URI}\"\ndomains = \"{}\"\n",
            dom.name
        )),
    ];
    let tree = Tree::new(
        "vml",
        "heartbeat_ms = 300\nsample_interval_ms = 100",
        &[("host", lo)],
        &nodes,
    );
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut orch = tree.spawn_with(
        "orch",
        "vespa-orchestrator",
        None,
        &[],
        &["VO", "HO_HY"],
        &["--http", &api.to_string()],
    );
    let mut agents = tree.spawn_with(
        "agents",
        "vespa-agent",
        None,
        &["--mode", "ebpf", "-i", &tap],
        &["bw", "lv"],
        &["--metrics", &metrics.to_string()],
    );
    let line = wait_until("the tap device's info series with its VM", WAIT, || {
        let body = http_get(metrics, "/metrics")?;
        body.lines()
            .find(|l| {
                l.starts_with("vespa_network_info{")
                    && l.contains(&format!("device=\"{tap}\""))
                    && l.contains("vm=")
            })
            .map(str::to_string)
    });
    assert!(line.contains(&format!("vm=\"{}\"", dom.name)), "{line}");
    assert!(
        line.contains(&format!("vm_uuid=\"{}\"", dom.uuid)),
        "{line}"
    );
    assert!(
        line.contains(&format!("address=\"{}\"", dom_tap_mac(&dom.mac))),
        "{line}"
    );

    // The samples name the VM (once the libvirt agent has mapped the tap): the VO's API sums
    // its traffic per VM.
    let sample = wait_until(
        "a bandwidth sample of the tap naming its VM at the VO",
        WAIT,
        || {
            try_vo_alerts(&tree, &|v, a| tree.call("VO", v, a))?
                .into_iter()
                .find(|a| {
                    a["body"]["Bandwidth"]["iface"] == tap.as_str()
                        && !a["body"]["Bandwidth"]["vm"].is_null()
                })
        },
    );
    assert_eq!(
        sample["body"]["Bandwidth"]["vm"],
        dom.name.as_str(),
        "{sample}"
    );
    let vms = wait_until("the VM's traffic in /api/v1/vms", WAIT, || {
        let v: serde_json::Value = serde_json::from_str(&http_get(api, "/api/v1/vms")?).ok()?;
        v["vms"]
            .as_array()?
            .iter()
            .find(|t| {
                t["vm"] == dom.name.as_str() && t["rx"].as_array().is_some_and(|d| d.len() >= 2)
            })
            .cloned()
    });
    assert_eq!(
        vms["interfaces"],
        serde_json::json!([format!("bw/{tap}")]),
        "{vms}"
    );
    let counters: serde_json::Value =
        serde_json::from_str(&http_get(api, "/api/v1/counters").expect("counters")).expect("json");
    assert_eq!(
        counters["vms"][format!("bw/{tap}")],
        dom.name.as_str(),
        "{counters}"
    );
    // The dashboard draws the VM's chart first, and badges its device with the VM's name.
    if vespa_tests::browser::chromium_present(test) {
        let dom_html = vespa_tests::browser::chromium(
            &tree.scratch.dir,
            "vm",
            &format!("http://{api}/"),
            &["--dump-dom"],
        );
        let vm_chart = dom_html
            .find(&format!("data-vm=\"{}\"", dom.name))
            .unwrap_or_else(|| panic!("no VM chart: {dom_html}"));
        assert!(
            dom_html[vm_chart..].starts_with(&format!(
                "data-vm=\"{}\"><figcaption><span class=\"name\">VM {}</span>",
                dom.name, dom.name
            )),
            "{}",
            &dom_html[vm_chart..]
        );
        let tap_chart = dom_html
            .find(&format!(
                "data-iface=\"{tap}\" data-origin=\"bw\" data-vm=\"{}\"",
                dom.name
            ))
            .expect("the tap's chart names its VM");
        assert!(vm_chart < tap_chart, "the VM's chart comes first");
        assert!(
            dom_html.contains(&format!(">VM {}</span>", dom.name)),
            "the tap's badge names the VM"
        );
        let png = vespa_tests::browser::artifacts().join("dashboard-vm.png");
        vespa_tests::browser::chromium(
            &tree.scratch.dir,
            "vm-shot",
            &format!("http://{api}/"),
            &[
                &format!("--screenshot={}", png.display()),
                "--window-size=1280,900",
                "--hide-scrollbars",
            ],
        );
        assert!(
            std::fs::read(&png).is_ok_and(|b| b.starts_with(b"\x89PNG")),
            "a screenshot at {}",
            png.display()
        );
    }
    assert_eq!(
        tree.call("VO", "destroy", &[]),
        Ok("destroying VO and its subtree".into())
    );
    for p in [&mut agents, &mut orch] {
        let st = p.wait_exit();
        assert!(
            st.success(),
            "{} exited with {st}; log:\n{}",
            p.label,
            p.log_text()
        );
    }
}

/// libvirt gives the host side of a tap device the guest MAC with the first byte set to 0xfe.
fn dom_tap_mac(guest: &str) -> String {
    format!("fe{}", &guest[2..])
}

/// The body of a 200 answer to `GET path`.
fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    vespa_tests::daemons::http_get(&addr.to_string(), path)
        .ok()
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
}
