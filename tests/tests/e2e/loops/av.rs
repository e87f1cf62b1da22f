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

/// The loop's parts, running: libvirtd's shared instance, clamd, a KVM domain, the tree
/// (the VO and its HOs in one process, both agents in another) and the VO's API.
struct AvLoop {
    // The processes first: dropped (killed) before the tree's files and the daemons.
    agents: Proc,
    orch: Proc,
    tree: Tree,
    api: SocketAddr,
    watch: tempfile::TempDir,
    dom: KvmDomain,
    _clamd: Clamd,
}

impl AvLoop {
    /// The loop with `policy`, both agents answering and the API up; None (the test skipped,
    /// said why) when a daemon is missing. Take [`LIBVIRTD`]'s share before.
    fn start(test: &str, tag: &str, policy: &str) -> Option<AvLoop> {
        if !vespa_tests::privileged(test)
            || require_daemon(test, "libvirtd with KVM", libvirtd().map(drop)).is_none()
        {
            return None;
        }
        let clamd = require_daemon(test, "clamd", Clamd::start("1M"))?;
        let dom = require_daemon(test, "a KVM domain", KvmDomain::start(&format!("v{tag}")))?;
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
            // Scoped to this test's domain: the other tests' VMs on the shared libvirtd
            // (their links cut and restored) are none of this VO's business.
            N::child("lv", "agent_libvirt", "HO_HY").extra(format!(
                "[node.params]\nuri = \"{URI}\"\ndomains = \"{}\"\n",
                dom.name
            )),
        ];
        let tree = Tree::new(
            &format!("loop-{tag}"),
            "heartbeat_ms = 300\nsample_interval_ms = 0",
            &[("host", lo)],
            &nodes,
        );
        let policy_file = tree.scratch.dir.join("policy.toml");
        std::fs::write(&policy_file, policy).expect("policy file");
        let token = tree.scratch.dir.join("api-token");
        std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let (api_s, policy_s, token_s) = (
            api.to_string(),
            policy_file.to_string_lossy().into_owned(),
            token.to_string_lossy().into_owned(),
        );
        let orch = tree.spawn_with(
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
        let agents = tree.spawn("agents", "vespa-agent", None, &[], &["av", "lv"]);
        let rig = AvLoop {
            agents,
            orch,
            tree,
            api,
            watch,
            dom,
            _clamd: clamd,
        };
        wait_until("both agents answer through the VO", WAIT, || {
            let lv = rig
                .tree
                .call("lv", "contains_vm", &[&rig.dom.name])
                .ok()
                .filter(|s| s == "true");
            lv.and(rig.av_status())
        });
        assert_eq!(
            rig.av_status().expect("av status")["route"]["route"],
            "direct"
        );
        wait_until("the API", WAIT, || get_json(api, "/api/v1/actions"));
        Some(rig)
    }

    fn av_status(&self) -> Option<serde_json::Value> {
        self.tree
            .call("av", "status", &[])
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
    }

    fn logs(&self) -> String {
        format!(
            "VO:\n{}\nagents:\n{}",
            self.orch.log_text(),
            self.agents.log_text()
        )
    }

    /// Waits for libvirt to report the domain's link `want`.
    fn wait_link(&self, what: &str, want: &str) {
        try_wait_until(what, WAIT, || match self.dom.link() {
            l if l == want => Ok(()),
            l => Err(format!("libvirt reports the link {l}")),
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    /// Destroys the tree through the VO; both processes exit cleanly.
    fn stop(mut self) {
        assert_eq!(
            self.tree.call("VO", "destroy", &[]),
            Ok("destroying VO and its subtree".into())
        );
        for p in [&mut self.agents, &mut self.orch] {
            let st = p.wait_exit();
            assert!(
                st.success(),
                "{} exited with {st}; log:\n{}",
                p.label,
                p.log_text()
            );
        }
    }
}

#[test]
fn eicar_in_the_watched_dir_cuts_the_vms_link_and_manual_release_reconnects_it() {
    let test = "eicar_in_the_watched_dir_cuts_the_vms_link_and_manual_release_reconnects_it";
    // The one system libvirtd, shared with the other tests; dropped last.
    let _libvirtd = LIBVIRTD.share();
    let Some(rig) = AvLoop::start(test, "av", POLICY) else {
        return;
    };
    let (tree, api, dom, watch) = (&rig.tree, rig.api, &rig.dom, &rig.watch);
    let logs = || rig.logs();
    let av_status = || rig.av_status();

    // The infection: EICAR lands in the watched directory.
    let t0 = Instant::now();
    let bad = watch.path().join("eicar.com");
    std::fs::write(&bad, eicar()).expect("write EICAR");

    // libvirt reports the domain's link down.
    rig.wait_link("libvirt to report the link down", "down");
    let t_cut = t0.elapsed();

    // The Infected alert reached the VO along av -> HO_VM -> VO.
    let alert = wait_until("the Infected alert at the VO", WAIT, || {
        try_vo_alerts(tree, &|v, a| tree.call("VO", v, a))?
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
    rig.wait_link("libvirt to report the link up after the release", "up");
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

    rig.stop();
}

/// Reconciliation of an infected VM's isolation from the enforcing side: the cut link behind
/// the VO's back (`connect_link` asked of the libvirt agent) and the AV agent's route
/// (`connect_warning` asked of it) are both put back by the next pass, each counted missing
/// on its actuator; the isolation's cut link is never taken for a stray.
#[test]
fn an_isolation_undone_behind_the_vos_back_is_put_back() {
    let test = "an_isolation_undone_behind_the_vos_back_is_put_back";
    let _libvirtd = LIBVIRTD.share();
    let policy = format!("{POLICY}\n[reconcile]\nevery_s = 1\n");
    let Some(rig) = AvLoop::start(test, "avrec", &policy) else {
        return;
    };
    let metric = |series: &str| -> Option<f64> {
        let (status, body) = http_request(rig.api, "GET", "/metrics", None, "")?;
        (status == 200).then_some(())?;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{series} "))?.parse().ok())
    };
    let drift = |actuator: &str, kind: &str| {
        metric(&format!(
            "vespa_decisions_drift_total{{node=\"VO\",actuator=\"{actuator}\",kind=\"{kind}\"}}"
        ))
    };
    std::fs::write(rig.watch.path().join("eicar.com"), eicar()).expect("write EICAR");
    rig.wait_link("libvirt to report the link down", "down");
    wait_until("the AV agent's route through the hypervisor", WAIT, || {
        rig.av_status()
            .filter(|s| s["route"]["route"] == "via_hypervisor")
    });
    wait_until("a pass over both actuators", WAIT, || {
        (drift("lv", "missing")? == 0.0 && drift("av", "missing")? == 0.0).then_some(())
    });

    // Behind the VO's back: each agent told directly to undo its part.
    rig.tree
        .call("lv", "connect_link", &[&rig.dom.name])
        .unwrap_or_else(|e| panic!("connect_link: {e}"));
    rig.tree
        .call("av", "connect_warning", &[])
        .unwrap_or_else(|e| panic!("connect_warning: {e}"));
    assert_eq!(rig.dom.link(), "up", "reconnected behind the VO's back");

    rig.wait_link("the link cut again by reconciliation", "down");
    let route = wait_until("the AV agent told again", WAIT, || {
        rig.av_status()
            .filter(|s| s["route"]["route"] == "via_hypervisor")
    });
    assert_eq!(route["route"]["agent"], "lv", "{route}");
    wait_until("both counted missing", WAIT, || {
        (drift("lv", "missing")? >= 1.0 && drift("av", "missing")? >= 1.0).then_some(())
    });
    assert_eq!(
        drift("lv", "stray"),
        Some(0.0),
        "the isolation's cut link is wanted, not a stray\n{}",
        rig.logs()
    );
    rig.stop();
}
