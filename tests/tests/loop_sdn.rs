//! The first closed loop, end to end with real parts: an attacker namespace opens many TCP
//! connections to a victim namespace across an Open vSwitch userspace bridge controlled by
//! os-ken; the victim's connections agent reports them, the VO's policy blocks the attacker's
//! MAC through the os-ken SDN agent (drop flows in the switch, UDP from the attacker stops),
//! and once the connections are gone and calm lasts, releases it (flows gone, traffic back).
//!
//! Layout (every piece removed at the end by the kit's guards):
//!
//! ```text
//!  switch namespace (ovs + os-ken REST on its loopback)      victim namespace (h2)
//!    VO, HO_VM, HO_PH  (vespa-orchestrator --policy)  <-mgmt veth->  Agent_Connections
//!    Agent_Controller_OsKen (vespa-agent, url = os-ken)              (vespa-agent --mode proc)
//!    bridge ── h1 (attacker) ── h2 (victim)
//! ```
//!
//! The connections agent polls /proc in the victim's namespace: the eBPF tracker is
//! host-wide, so on one test machine it would also count the attacker's own sockets (remote =
//! the victim) and the policy would rightly block the victim's address too.

mod tree_kit;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use tree_kit::*;
use vespa_tests::daemons::ovs::{FlowMonitor, SdnLab, UdpStream};
use vespa_tests::daemons::{http_get, in_netns, require_daemon};
use vespa_tests::net::veth;

const POLICY: &str = r#"
[actuators]
sdn = "Agent_Controller_OsKen"
libvirt = "Agent_Libvirt"
quarantine = "quarantine"
av = "Agent_AV"
hypervisor = "Agent_HY"

[[rule]]
name = "conn-flood"
metric = "established"
key = "remote"
aggregate = "max"
window_s = 1
above = 50
below = 5
calm_s = 3
cooldown_s = 1
# Blocked connections stay ESTABLISHED on the victim until it drops them: no verification.
verify_s = 0
ladder = [{ action = "block", ttl_s = 3600 }]
"#;

const QUIET: Duration = Duration::from_millis(300);
const FLOWING: Duration = Duration::from_secs(15);

#[test]
fn connection_flood_blocks_the_attackers_mac_and_calm_releases_it() {
    let test = "connection_flood_blocks_the_attackers_mac_and_calm_releases_it";
    if !vespa_tests::privileged(test) {
        return;
    }
    let Some(lab) = require_daemon(test, "Open vSwitch + os-ken", SdnLab::start()) else { return };
    let (attacker, victim) = (&lab.h1, &lab.h2);
    let sw_ns = lab.ovs.ns.name.clone();
    // The management link between the switch namespace (VO side) and the victim.
    let (sw_end, victim_end) = veth(&lab.ovs.ns, &victim.ns);

    let machines: [(&str, IpAddr); 2] = [("sw", sw_end.v4.into()), ("victim", victim_end.v4.into())];
    let nodes = [
        N { name: "VO", kind: "vo", machine: "sw", master: None, port: 4150, extra: String::new() },
        N { name: "HO_VM", kind: "ho_vm", machine: "sw", master: Some("VO"), port: 4151, extra: String::new() },
        N { name: "HO_PH", kind: "ho_ph", machine: "sw", master: Some("VO"), port: 4154, extra: String::new() },
        N { name: "Agent_Connections", kind: "agent_connections", machine: "victim", master: Some("HO_VM"), port: 4156, extra: String::new() },
        N {
            name: "Agent_Controller_OsKen",
            kind: "agent_controller_osken",
            machine: "sw",
            master: Some("HO_PH"),
            port: 4157,
            extra: format!("[node.params]\nurl = \"{}\"\n", lab.url()),
        },
    ];
    let settings = "heartbeat_ms = 500\nsample_interval_ms = 200\nbackoff_min_ms = 20\nbackoff_max_ms = 300";
    let tree = std::sync::Arc::new(Tree::new("loop-sdn", settings, &machines, &nodes));
    let policy = tree.scratch.dir.join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy file");
    let api = "127.0.0.1:18080"; // os-ken holds 8080 in the switch namespace
    let policy_s = policy.to_string_lossy().into_owned();
    let vo = tree.spawn_with("vo", "vespa-orchestrator", Some(&sw_ns), &[], &["VO", "HO_VM", "HO_PH"], &["--policy", &policy_s, "--http", api]);
    let sdn = tree.spawn("sdn", "vespa-agent", Some(&sw_ns), &[], &["Agent_Controller_OsKen"]);
    let conns = tree.spawn("conns", "vespa-agent", Some(&victim.ns.name), &["--mode", "proc", "--conn-threshold", "100"], &["Agent_Connections"]);
    let logs = || format!("VO:\n{}\nSDN:\n{}\nconns:\n{}", vo.log_text(), sdn.log_text(), conns.log_text());

    let vo_call = |verb: &str, args: &[&str]| -> Result<String, String> {
        let (t, verb) = (tree.clone(), verb.to_string());
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        in_netns(&sw_ns, move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            t.call("VO", &verb, &a)
        })
    };
    let api_get = |path: &str| -> Option<serde_json::Value> {
        let (ns, path) = (sw_ns.clone(), path.to_string());
        let (status, body) = in_netns(&ns, move || http_get(api, &path)).ok()?;
        (status == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    };
    wait_for("both agents under the VO", || {
        let ok = ["Agent_Connections", "Agent_Controller_OsKen"].iter().all(|a| vo_call("call", &[a, "help"]).is_ok());
        ok.then_some(())
    });

    // Traffic passes before anything happens.
    let stream = UdpStream::start(attacker, victim, Duration::from_millis(1));
    stream.wait_flowing(50, FLOWING).expect("UDP from the attacker reaches the victim");

    // The victim serves; the attacker opens 150 connections and holds them.
    let server_addr = SocketAddr::from((victim.ip, 7070));
    let listener = victim.ns.run(move || TcpListener::bind(server_addr).expect("victim listens"));
    let accept = std::thread::spawn(move || vespa_tests::traffic::tcp_accept_n(&listener, 150));
    let monitor = FlowMonitor::start(&lab.ovs, &lab.bridge).expect("flow monitor");
    let t_attack = Instant::now();
    let held = attacker.ns.run(move || vespa_tests::traffic::tcp_connect_n(server_addr, 150));
    let accepted = accept.join().expect("accept thread");
    assert_eq!((held.len(), accepted.len()), (150, 150));

    // The VO blocks the attacker's MAC: drop flows in the switch, traffic stops.
    let mac_flow = format!("dl_src={}", attacker.mac);
    // (The learning switch has dl_src flows of its own: only VESPA's cookie counts.)
    let vespa_drop = |f: &String| f.contains(&mac_flow) && f.ends_with("actions=drop");
    let deadline = Instant::now() + WAIT;
    let flows = loop {
        let flows = lab.ovs.flows_matching(&lab.bridge, "cookie=0x56455350");
        if flows.iter().any(vespa_drop) {
            break flows;
        }
        assert!(Instant::now() < deadline, "no VESPA drop flow for the attacker's MAC: {flows:?}\n{}", logs());
        std::thread::sleep(Duration::from_millis(10));
    };
    let t_flow = Instant::now();
    assert!(!flows.iter().any(|f| f.contains(&format!("nw_src={}", victim.ip)) || f.contains(&format!("dl_src={}", victim.mac))), "the victim is never blocked: {flows:?}");
    stream.wait_stopped(t_flow, QUIET, Duration::from_secs(10)).expect("UDP from the attacker stops");
    let last = stream.last_arrival();
    let sent_before = stream.sent.load(std::sync::atomic::Ordering::Relaxed);
    let t_quiet = Instant::now();
    wait_for("500 more datagrams sent into the block", || (stream.sent.load(std::sync::atomic::Ordering::Relaxed) >= sent_before + 500).then_some(()));
    assert_eq!(stream.received_since(t_quiet), 0, "no datagram crosses the block");
    eprintln!("attack -> drop flow present: {:?}", t_flow.duration_since(t_attack));

    // The API lists the block (by MAC, through the os-ken agent); the VO's log shows the request.
    let actions = wait_for("the block in /api/v1/actions", || {
        let a = api_get("/api/v1/actions")?;
        a["actions"].as_array()?.iter().find(|x| x["action"] == "block").cloned()
    });
    assert_eq!(actions["key"], attacker.mac.as_str(), "{actions}");
    assert_eq!(actions["actuator"], "Agent_Controller_OsKen");
    assert_eq!(actions["dry_run"], false);
    let sent = vo.log_lines().into_iter().find(|l| l["fields"]["message"] == "policy block sent").unwrap_or_else(|| panic!("no 'policy block sent' line\n{}", logs()));
    assert_eq!(sent["fields"]["target"], attacker.mac.as_str());
    let done = wait_for("the SDN agent's answer", || vo.log_lines().into_iter().find(|l| l["fields"]["message"] == "policy action done"));
    assert_eq!(done["fields"]["verb"], "block_hackers", "{done}");

    // Timeline of this crossing on one clock. VESPA's flow is ` dl_src=` right after its
    // cookie; the learning switch's have `in_port=..,dl_src=`. (Unix ns; the monitor's and the stream's
    // instants converted at one moment).
    let added = monitor.wait("ADDED", &format!(" dl_src={}", attacker.mac), t_attack, WAIT).expect("the drop flow's ADDED event");
    let (now_i, now_u) = (Instant::now(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64);
    let unix = |t: Instant| now_u - now_i.duration_since(t).as_nanos() as u64;
    let f = &sent["fields"];
    let (raised, at_vo, sent_ns) = (f["alert_raised_ns"].as_u64().expect("raised"), f["alert_seen_ns"].as_u64().expect("seen at the VO"), f["sent_ns"].as_u64().expect("sent"));
    let ms = |a: u64, b: u64| (b as f64 - a as f64) / 1e6;
    eprintln!(
        "agent raise -> VO {:.2} ms -> block request sent {:.2} ms -> drop flow in the switch {:.2} ms; last datagram through {:?}",
        ms(raised, at_vo),
        ms(at_vo, sent_ns),
        ms(sent_ns, unix(added)),
        last.map(|l| format!("{:.2} ms after the request", ms(sent_ns, unix(l)))),
    );
    assert!(unix(added) >= sent_ns, "the flow follows the request");

    // SIGHUP re-reads the policy file; the block (state of a rule that keeps its name) stays.
    std::fs::write(&policy, POLICY.replace("cooldown_s = 1", "cooldown_s = 2")).expect("policy file");
    vo.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("the SIGHUP reload", || vo.log_lines().into_iter().find(|l| l["fields"]["message"] == "SIGHUP: policy reloaded"));
    let after = api_get("/api/v1/actions").expect("actions");
    assert!(after["actions"].as_array().is_some_and(|a| a.iter().any(|x| x["key"] == attacker.mac.as_str())), "the block survives the reload: {after}");
    assert!(api_get("/api/v1/policy").and_then(|p| p["rules"].as_str().map(|r| r.contains("cooldown_s = 2"))).unwrap_or(false));
    assert!(!lab.ovs.flows_matching(&lab.bridge, "cookie=0x56455350").is_empty(), "still blocked in the switch");

    // Calm: both sides close; after calm_s the policy releases, the flows go, traffic returns.
    let t_calm = Instant::now();
    drop(held);
    drop(accepted);
    lab.ovs.wait_flow(&lab.bridge, "cookie=0x56455350", false, WAIT).unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let released_after = t_calm.elapsed();
    assert!(released_after >= Duration::from_secs(3), "released before calm_s: {released_after:?}");
    stream.wait_flowing(50, FLOWING).expect("UDP passes again after the release");
    wait_for("no active action left", || api_get("/api/v1/actions").filter(|a| a["actions"] == serde_json::json!([])));
    let released = vo.log_lines().into_iter().any(|l| l["fields"]["message"] == "policy action done" && l["fields"]["verb"] == "release_hackers");
    assert!(released, "the release went through the SDN agent\n{}", logs());
    eprintln!("calm -> flows removed: {released_after:?}");
    // The learning switch's own flows were never touched.
    assert!(!lab.ovs.flows_matching(&lab.bridge, "actions=CONTROLLER").is_empty());
}
