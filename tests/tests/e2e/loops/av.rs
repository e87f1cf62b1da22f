//! The infection loop, end to end with real parts: an antivirus agent watching a directory
//! for a KVM domain finds the EICAR test file (a real clamd with a one-line database); the
//! Infected alert climbs to the VO, whose policy isolates the VM: its link is cut through the
//! libvirt agent (libvirt itself reports the link down) and the AV agent is switched to the
//! hypervisor path. A manual release through the HTTP API (bearer token) reconnects the link
//! and puts the AV agent back on its direct route.
//!
//! ```text
//!  VO ─┬─ HO_VM ── av (agent_av: vm = the domain, clamd, watch_dir)
//!      └─ HO_HY ── lv (agent_libvirt: qemu:///system)
//! ```

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use crate::kit::*;
use vespa_testkit::{try_wait_until, wait_until};
use vespa_tests::daemons::clamd::{eicar, Clamd, EICAR_SIGNATURE};
use vespa_tests::daemons::libvirt::{libvirtd, KvmDomain, URI};
use vespa_tests::daemons::{http_request, require_daemon};
use vespa_tests::shared::LIBVIRTD;

const TOKEN: &str = "loop-av-token-0123456789abcdef";

const POLICY: &str = r#"
dry_run = false

[actuators]
sdn = "Agent_Controller"
libvirt = "lv"
quarantine = "quarantine"
av = "av"
hypervisor = "lv"

[infection]
isolate = true
"#;

/// One HTTP/1.1 request; `(status, body)`.
fn get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let (status, body) = http_request(addr, "GET", path, None, "")?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

#[test]
fn eicar_in_the_watched_dir_cuts_the_vms_link_and_manual_release_reconnects_it() {
    let test = "eicar_in_the_watched_dir_cuts_the_vms_link_and_manual_release_reconnects_it";
    // The one system libvirtd, shared with the other tests; dropped last.
    let _libvirtd = LIBVIRTD.share();
    if !vespa_tests::privileged(test)
        || require_daemon(test, "libvirtd with KVM", libvirtd().map(drop)).is_none()
    {
        return;
    }
    let Some(clamd) = require_daemon(test, "clamd", Clamd::start("1M")) else {
        return;
    };
    let Some(dom) = require_daemon(test, "a KVM domain", KvmDomain::start("vav")) else {
        return;
    };
    assert_eq!(dom.link(), "up", "the domain starts connected");
    let watch = tempfile::Builder::new()
        .prefix("vespa-loop-av")
        .tempdir()
        .expect("watch dir");

    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let nodes = [
        N::root("VO", "vo"),
        N::child("HO_VM", "ho_vm", "VO"),
        N::child("HO_HY", "ho_hy", "VO"),
        N::child("av", "agent_av", "HO_VM").extra(format!(
            "[node.params]\nvm = \"{}\"\nclamd = \"{}\"\nwatch_dir = \"{}\"\n",
            dom.name,
            clamd.tcp,
            watch.path().display()
        )),
        N::child("lv", "agent_libvirt", "HO_HY").extra(format!("[node.params]\nuri = \"{URI}\"\n")),
    ];
    let tree = Tree::new(
        "loop-av",
        "heartbeat_ms = 300\nsample_interval_ms = 0",
        &[("host", lo)],
        &nodes,
    );
    let policy = tree.scratch.dir.join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy file");
    let token = tree.scratch.dir.join("api-token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let (api_s, policy_s, token_s) = (
        api.to_string(),
        policy.to_string_lossy().into_owned(),
        token.to_string_lossy().into_owned(),
    );
    let mut orch = tree.spawn_with(
        "vo",
        "vespa-orchestrator",
        None,
        &[],
        &["VO", "HO_VM", "HO_HY"],
        &[
            "--policy",
            &policy_s,
            "--http",
            &api_s,
            "--api-token-file",
            &token_s,
        ],
    );
    let mut agents = tree.spawn("agents", "vespa-agent", None, &[], &["av", "lv"]);
    let logs = || format!("VO:\n{}\nagents:\n{}", orch.log_text(), agents.log_text());
    let av_status = || {
        tree.call("av", "status", &[])
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
    };

    wait_until("both agents answer through the VO", WAIT, || {
        let lv = tree
            .call("lv", "contains_vm", &[&dom.name])
            .ok()
            .filter(|s| s == "true");
        lv.and(av_status())
    });
    assert_eq!(av_status().expect("av status")["route"]["route"], "direct");
    wait_until("the API", WAIT, || get_json(api, "/api/v1/actions"));

    // The infection: EICAR lands in the watched directory.
    let t0 = Instant::now();
    let bad = watch.path().join("eicar.com");
    std::fs::write(&bad, eicar()).expect("write EICAR");

    // libvirt reports the domain's link down.
    let dom = &dom;
    let link_is = |want: &'static str| {
        move || match dom.link() {
            l if l == want => Ok(()),
            l => Err(format!("libvirt reports the link {l}")),
        }
    };
    try_wait_until("libvirt to report the link down", WAIT, link_is("down"))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let t_cut = t0.elapsed();

    // The Infected alert reached the VO along av -> HO_VM -> VO.
    let alert = wait_until("the Infected alert at the VO", WAIT, || {
        try_vo_alerts(&tree, &|v, a| tree.call("VO", v, a))?
            .into_iter()
            .find(|a| a["origin"] == "av" && a["body"].get("Infected").is_some())
    });
    let inf = &alert["body"]["Infected"];
    assert_eq!(inf["vm"], dom.name.as_str(), "{alert}");
    assert_eq!(inf["file"], bad.display().to_string(), "{alert}");
    assert_eq!(inf["signature"], EICAR_SIGNATURE, "{alert}");
    assert_eq!(
        alert["path"],
        serde_json::json!(["av", "HO_VM", "VO"]),
        "{alert}"
    );

    // The API lists the isolation: the cut link (through lv) and the AV agent's switch.
    let actions = wait_until("the isolation in /api/v1/actions", WAIT, || {
        let a = get_json(api, "/api/v1/actions")?;
        let list = a["actions"].as_array()?.clone();
        let has = |kind: &str| {
            list.iter()
                .any(|x| x["action"] == kind && x["target"] == dom.name.as_str())
        };
        (has("cut_link") && has("av_isolate")).then_some(list)
    });
    let cut = actions
        .iter()
        .find(|x| x["action"] == "cut_link")
        .expect("cut_link");
    assert_eq!(cut["actuator"], "lv", "{cut}");
    assert_eq!(cut["dry_run"], false, "{cut}");
    let iso = actions
        .iter()
        .find(|x| x["action"] == "av_isolate")
        .expect("av_isolate");
    assert_eq!(iso["actuator"], "av", "{iso}");
    let route = wait_until("the AV agent's route through the hypervisor", WAIT, || {
        av_status().filter(|s| s["route"]["route"] == "via_hypervisor")
    });
    assert_eq!(route["route"]["agent"], "lv", "{route}");

    // Manual release through the API: without the token it is refused; with it the link returns.
    let body = format!("{{\"target\":\"{}\"}}", dom.name);
    let (status, _) =
        http_request(api, "POST", "/api/v1/release", None, &body).expect("release without token");
    assert_eq!(status, 401);
    assert_eq!(dom.link(), "down", "a refused release changes nothing");
    let t_rel = Instant::now();
    let (status, text) =
        http_request(api, "POST", "/api/v1/release", Some(TOKEN), &body).expect("release");
    assert_eq!(status, 200, "{text}\n{}", logs());
    try_wait_until(
        "libvirt to report the link up after the release",
        WAIT,
        link_is("up"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let t_up = t_rel.elapsed();
    wait_until("the AV agent back on its direct route", WAIT, || {
        av_status().filter(|s| s["route"]["route"] == "direct")
    });
    wait_until("no isolation left in /api/v1/actions", WAIT, || {
        let a = get_json(api, "/api/v1/actions")?;
        (!a["actions"]
            .as_array()?
            .iter()
            .any(|x| x["target"] == dom.name.as_str()))
        .then_some(())
    });
    eprintln!("EICAR written -> link down per libvirt: {t_cut:?}; release -> link up: {t_up:?}");

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
