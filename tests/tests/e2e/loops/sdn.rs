//! The first closed loop, end to end with real parts: an attacker namespace opens many TCP
//! connections to a victim namespace across an Open vSwitch userspace bridge controlled by
//! os-ken; the victim's connections agent reports them, the VO's policy blocks the attacker's
//! MAC through the os-ken SDN agent (drop flows in the switch, UDP from the attacker stops),
//! and once the connections are gone and calm lasts, releases it (flows gone, traffic back).
//!
//! The rig (lab, topology, processes) is `vespa_tests::sdn_loop`, shared with `vespa-demo`;
//! every piece is removed at the end by its guards.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::kit::*;
use vespa_testkit::{at_least, try_wait_until, wait_until};
use vespa_tests::daemons::ovs::{FlowMonitor, SdnLab, UdpStream};
use vespa_tests::daemons::require_daemon;
use vespa_tests::sdn_loop::{
    conn_flood_policy, is_vespa_drop, Options, SdnLoop, SDN_AGENT, VESPA_COOKIE,
};

const QUIET: Duration = Duration::from_millis(300);
const FLOWING: Duration = Duration::from_secs(15);

#[test]
fn connection_flood_blocks_the_attackers_mac_and_calm_releases_it() {
    let test = "connection_flood_blocks_the_attackers_mac_and_calm_releases_it";
    if !vespa_tests::privileged(test) {
        return;
    }
    let Some(lab) = require_daemon(test, "Open vSwitch + os-ken", SdnLab::start()) else {
        return;
    };
    let policy = conn_flood_policy(50, 5, 3);
    let opts = Options {
        tag: "loop-sdn",
        policy: &policy,
        conn_threshold: 100,
        api_token: None,
        keep_files: false,
        bandwidth_agent: false,
    };
    let rig = SdnLoop::start(lab, &opts).unwrap_or_else(|e| panic!("{e:#}"));
    let (lab, vo) = (&rig.lab, &rig.vo);
    let (attacker, victim) = (&lab.h1, &lab.h2);
    let logs = || rig.logs();
    let api_get = |path: &str| rig.api_get(path);
    wait_until("both agents under the VO", WAIT, || rig.agents_ready());

    // Traffic passes before anything happens.
    let stream = UdpStream::start(attacker, victim, Duration::from_millis(1));
    stream
        .wait_flowing(50, FLOWING)
        .expect("UDP from the attacker reaches the victim");

    // The victim serves (its kernel completes the handshakes: ESTABLISHED, waiting in the
    // backlog); the attacker opens up to 150 connections and holds them. The 101st is the
    // kernel's threshold event: the block may land before the attacker gets to 150, and the
    // rest then time out.
    let server_addr = SocketAddr::from((victim.ip, 7070));
    let listener = victim
        .ns
        .run(move || vespa_tests::traffic::tcp_listen(server_addr, 1024));
    let monitor = FlowMonitor::start(&lab.ovs, &lab.bridge).expect("flow monitor");
    let t_attack = Instant::now();
    let held = attacker.ns.run(move || {
        vespa_tests::traffic::tcp_connect_up_to(server_addr, 150, Duration::from_secs(1))
    });
    assert!(
        held.len() > 100,
        "the attacker crossed the threshold: {} connections",
        held.len()
    );
    eprintln!("attacker connected {} of 150 before the block", held.len());

    // The VO blocks the attacker's MAC: drop flows in the switch, traffic stops.
    let flows = try_wait_until("a VESPA drop flow for the attacker's MAC", WAIT, || {
        let flows = rig.vespa_flows();
        if flows.iter().any(|f| is_vespa_drop(f, &attacker.mac)) {
            Ok(flows)
        } else {
            Err(flows)
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let t_flow = Instant::now();
    assert!(
        !flows
            .iter()
            .any(|f| f.contains(&format!("nw_src={}", victim.ip))
                || f.contains(&format!("dl_src={}", victim.mac))),
        "the victim is never blocked: {flows:?}"
    );
    stream
        .wait_stopped(t_flow, QUIET, Duration::from_secs(10))
        .expect("UDP from the attacker stops");
    let last = stream.last_arrival();
    let sent_before = stream.sent.load(std::sync::atomic::Ordering::Relaxed);
    let t_quiet = Instant::now();
    wait_until("500 more datagrams sent into the block", WAIT, || {
        at_least(
            stream.sent.load(std::sync::atomic::Ordering::Relaxed),
            sent_before + 500,
        )
    });
    assert_eq!(
        stream.received_since(t_quiet),
        0,
        "no datagram crosses the block"
    );
    eprintln!(
        "attack -> drop flow present: {:?}",
        t_flow.duration_since(t_attack)
    );

    // The API lists the block (by MAC, through the os-ken agent); the VO's log shows the request.
    let actions = wait_until("the block in /api/v1/actions", WAIT, || {
        let a = api_get("/api/v1/actions")?;
        a["actions"]
            .as_array()?
            .iter()
            .find(|x| x["action"] == "block")
            .cloned()
    });
    assert_eq!(actions["key"], attacker.mac.as_str(), "{actions}");
    assert_eq!(actions["actuator"], SDN_AGENT);
    assert_eq!(actions["dry_run"], false);
    let sent = vo
        .log_lines()
        .into_iter()
        .find(|l| l["fields"]["message"] == "policy block sent")
        .unwrap_or_else(|| panic!("no 'policy block sent' line\n{}", logs()));
    assert_eq!(sent["fields"]["target"], attacker.mac.as_str());
    let done = wait_until("the SDN agent's answer", WAIT, || {
        vo.log_lines()
            .into_iter()
            .find(|l| l["fields"]["message"] == "policy action done")
    });
    assert_eq!(done["fields"]["verb"], "block_hackers", "{done}");

    // Timeline of this crossing on one clock. VESPA's flow is ` dl_src=` right after its
    // cookie; the learning switch's have `in_port=..,dl_src=`. (Unix ns; the monitor's and the stream's
    // instants converted at one moment).
    let added = monitor
        .wait(
            "ADDED",
            &format!(" dl_src={}", attacker.mac),
            t_attack,
            WAIT,
        )
        .expect("the drop flow's ADDED event");
    let (now_i, now_u) = (
        Instant::now(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64,
    );
    let unix = |t: Instant| now_u - now_i.duration_since(t).as_nanos() as u64;
    let f = &sent["fields"];
    let (raised, at_vo, sent_ns) = (
        f["alert_raised_ns"].as_u64().expect("raised"),
        f["alert_seen_ns"].as_u64().expect("seen at the VO"),
        f["sent_ns"].as_u64().expect("sent"),
    );
    let ms = |a: u64, b: u64| (b as f64 - a as f64) / 1e6;
    eprintln!(
        "kernel event -> VO {:.2} ms -> block request sent {:.2} ms -> drop flow in the switch {:.2} ms; last datagram through {:?}",
        ms(raised, at_vo),
        ms(at_vo, sent_ns),
        ms(sent_ns, unix(added)),
        last.map(|l| format!("{:.2} ms after the request", ms(sent_ns, unix(l)))),
    );
    assert!(unix(added) >= sent_ns, "the flow follows the request");

    // SIGHUP re-reads the policy file; the block (state of a rule that keeps its name) stays.
    std::fs::write(
        &rig.policy,
        policy.replace("cooldown_s = 1", "cooldown_s = 2"),
    )
    .expect("policy file");
    vo.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until("the SIGHUP reload", WAIT, || {
        vo.log_lines()
            .into_iter()
            .find(|l| l["fields"]["message"] == "SIGHUP: policy reloaded")
    });
    let after = api_get("/api/v1/actions").expect("actions");
    assert!(
        after["actions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["key"] == attacker.mac.as_str())),
        "the block survives the reload: {after}"
    );
    assert!(api_get("/api/v1/policy")
        .and_then(|p| p["rules"].as_str().map(|r| r.contains("cooldown_s = 2")))
        .unwrap_or(false));
    assert!(!rig.vespa_flows().is_empty(), "still blocked in the switch");

    // Calm: both sides close; after calm_s the policy releases, the flows go, traffic returns.
    let t_calm = Instant::now();
    drop(held);
    drop(listener); // resets the victim's side of every connection
    lab.ovs
        .wait_flow(&lab.bridge, VESPA_COOKIE, false, WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let released_after = t_calm.elapsed();
    assert!(
        released_after >= Duration::from_secs(3),
        "released before calm_s: {released_after:?}"
    );
    stream
        .wait_flowing(50, FLOWING)
        .expect("UDP passes again after the release");
    wait_until("no active action left", WAIT, || {
        api_get("/api/v1/actions").filter(|a| a["actions"] == serde_json::json!([]))
    });
    let released = vo.log_lines().into_iter().any(|l| {
        l["fields"]["message"] == "policy action done" && l["fields"]["verb"] == "release_hackers"
    });
    assert!(
        released,
        "the release went through the SDN agent\n{}",
        logs()
    );
    eprintln!("calm -> flows removed: {released_after:?}");
    // The learning switch's own flows were never touched.
    assert!(!lab
        .ovs
        .flows_matching(&lab.bridge, "actions=CONTROLLER")
        .is_empty());
}
