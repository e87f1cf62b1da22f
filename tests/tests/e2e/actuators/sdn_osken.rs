//! The SDN agent driving a real Open vSwitch bridge through os-ken's ofctl_rest, with two
//! hosts (network namespaces) exchanging UDP through the bridge. Everything runs inside the
//! switch's private namespace (the controller's REST API listens on its loopback).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use vespa_agents::sdn::osken::{OsKen, OsKenConfig};
use vespa_agents::sdn::{BlockId, SdnAgent, SdnAgentConfig};
use vespa_agents::AlertSink;
use vespa_node::Agent as _;
use vespa_tests::daemons::ovs::{SdnLab, UdpStream};
use vespa_tests::daemons::require_daemon;

/// Starts the lab (or skips), then runs `body` on a thread inside the switch namespace with
/// a tokio runtime whose threads are all in that namespace.
fn with_lab<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Arc<SdnLab>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    if !vespa_tests::privileged(test) {
        return;
    }
    let Some(lab) = require_daemon(test, "Open vSwitch + os-ken", SdnLab::start()) else {
        return;
    };
    let lab = Arc::new(lab);
    let l = lab.clone();
    let ns = lab.ovs.ns.name.clone();
    vespa_tests::net::in_netns(&ns, move || {
        // Worker threads are created by this thread, so they are inside the namespace too; the
        // TTL reaper runs on them while the test body blocks in its polling helpers.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(body(l));
    });
}

fn agent(lab: &SdnLab, ttl: Option<Duration>) -> SdnAgent<OsKen> {
    let cfg = OsKenConfig {
        url: lab.url(),
        ..OsKenConfig::default()
    };
    SdnAgent::new(
        OsKen::new(cfg),
        SdnAgentConfig { default_ttl: ttl },
        AlertSink::none(),
    )
}

async fn call(a: &SdnAgent<OsKen>, verb: &str, args: &[&str]) -> Value {
    let r = a
        .call_words(verb, args.iter().map(|s| s.to_string()).collect())
        .await
        .unwrap_or_else(|e| panic!("{verb} {args:?}: {e}"));
    serde_json::from_str(&r).unwrap_or_else(|e| panic!("{verb}: not JSON ({e}): {r}"))
}

const FLOWING: Duration = Duration::from_secs(15);
/// No datagram for this long (at one per millisecond) counts as stopped.
const QUIET: Duration = Duration::from_millis(300);

#[test]
fn osken_block_mac_and_ip_stop_traffic_and_release_restores_it() {
    with_lab(
        "osken_block_mac_and_ip_stop_traffic_and_release_restores_it",
        |lab| async move {
            let a = agent(&lab, None);
            let stream = UdpStream::start(&lab.h1, &lab.h2, Duration::from_millis(1));
            stream
                .wait_flowing(50, FLOWING)
                .expect("traffic passes through the bridge before any block");

            // Block h1's MAC: drop flows with VESPA's cookie appear in the switch, traffic stops.
            let r = call(&a, "block_hackers", &[&lab.h1.mac]).await;
            assert_eq!(r["block"], 1);
            let t_block = Instant::now();
            lab.ovs
                .wait_flow(
                    &lab.bridge,
                    &format!("dl_src={}", lab.h1.mac),
                    true,
                    Duration::from_secs(5),
                )
                .expect("drop flow installed");
            let flows = lab
                .ovs
                .flows_matching(&lab.bridge, "cookie=0x5645535000000001");
            assert_eq!(
                flows.len(),
                2,
                "source and destination drop flows: {flows:?}"
            );
            assert!(
                flows
                    .iter()
                    .any(|f| f.contains(&format!("dl_src={}", lab.h1.mac))
                        && f.contains("priority=40000")
                        && f.ends_with("actions=drop")),
                "{flows:?}"
            );
            assert!(
                flows
                    .iter()
                    .any(|f| f.contains(&format!("dl_dst={}", lab.h1.mac))
                        && f.ends_with("actions=drop")),
                "{flows:?}"
            );
            let last = stream
                .wait_stopped(t_block, QUIET, Duration::from_secs(10))
                .expect("traffic stops");
            let before = stream.received_since(Instant::now() - QUIET);
            assert_eq!(before, 0, "no datagram in the last {QUIET:?}");
            if let Some(l) = last {
                assert!(
                    l.duration_since(t_block) < Duration::from_secs(2),
                    "traffic stopped late: {:?}",
                    l.duration_since(t_block)
                );
            }
            let st = call(&a, "status_hackers", &[]).await;
            assert_eq!(st[0]["target"]["mac"], lab.h1.mac);

            // Release really releases: flows gone, traffic back.
            assert_eq!(
                call(&a, "release_hackers", &[&lab.h1.mac]).await["released"],
                serde_json::json!([1])
            );
            lab.ovs
                .wait_flow(
                    &lab.bridge,
                    "cookie=0x56455350",
                    false,
                    Duration::from_secs(5),
                )
                .expect("drop flows removed");
            stream
                .wait_flowing(50, FLOWING)
                .expect("traffic passes again after release");

            // The same by IP address (IPv4: eth_type + nw_src/nw_dst).
            call(&a, "block_hackers", &[&lab.h2.ip.to_string()]).await;
            let t_block = Instant::now();
            lab.ovs
                .wait_flow(
                    &lab.bridge,
                    &format!("nw_dst={}", lab.h2.ip),
                    true,
                    Duration::from_secs(5),
                )
                .expect("IP drop flow");
            assert_eq!(
                lab.ovs
                    .flows_matching(&lab.bridge, "cookie=0x5645535000000002")
                    .len(),
                2
            );
            stream
                .wait_stopped(t_block, QUIET, Duration::from_secs(10))
                .expect("traffic to the blocked IP stops");
            call(&a, "release_hackers", &["2"]).await;
            lab.ovs
                .wait_flow(
                    &lab.bridge,
                    "cookie=0x56455350",
                    false,
                    Duration::from_secs(5),
                )
                .expect("IP drop flows removed");
            stream
                .wait_flowing(50, FLOWING)
                .expect("traffic passes again");

            // The learning switch's own flows were never touched.
            assert!(!lab
                .ovs
                .flows_matching(&lab.bridge, "actions=CONTROLLER")
                .is_empty());
        },
    );
}

#[test]
fn osken_ttl_expiry_releases_by_itself() {
    with_lab("osken_ttl_expiry_releases_by_itself", |lab| async move {
        let a = agent(&lab, Some(Duration::from_millis(1500)));
        let stream = UdpStream::start(&lab.h1, &lab.h2, Duration::from_millis(1));
        stream.wait_flowing(50, FLOWING).expect("traffic passes");
        let t0 = Instant::now();
        call(&a, "block_hackers", &[&lab.h2.mac]).await; // default TTL: 1.5 s
        lab.ovs
            .wait_flow(
                &lab.bridge,
                &format!("dl_dst={}", lab.h2.mac),
                true,
                Duration::from_secs(5),
            )
            .expect("drop flow installed");
        stream
            .wait_stopped(t0, QUIET, Duration::from_secs(10))
            .expect("traffic stops");
        // Nobody releases it: the reaper does, at the TTL.
        lab.ovs
            .wait_flow(
                &lab.bridge,
                "cookie=0x56455350",
                false,
                Duration::from_secs(15),
            )
            .expect("the block expires");
        let gone_after = t0.elapsed();
        assert!(
            gone_after >= Duration::from_millis(1400),
            "released before its TTL ({gone_after:?})"
        );
        stream
            .wait_flowing(50, FLOWING)
            .expect("traffic passes again after expiry");
        assert_eq!(call(&a, "status_hackers", &[]).await, serde_json::json!([]));
    });
}

#[test]
fn osken_topology_port_and_flow_stats() {
    with_lab("osken_topology_port_and_flow_stats", |lab| async move {
        let a = agent(&lab, None);
        let t = call(&a, "get_topology", &[]).await;
        assert_eq!(t["switches"][0]["dpid"], lab.dpid);
        let names: Vec<&str> = t["switches"][0]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(
            names.contains(&lab.h1.port.as_str())
                && names.contains(&lab.h2.port.as_str())
                && names.contains(&lab.bridge.as_str()),
            "{names:?}"
        );
        let stream = UdpStream::start(&lab.h1, &lab.h2, Duration::from_millis(1));
        stream.wait_flowing(20, FLOWING).expect("traffic passes");
        let l = call(&a, "get_link_stats", &[]).await;
        let ports = l["1"].as_array().expect("port stats of dpid 1");
        assert!(
            ports
                .iter()
                .any(|p| p["rx_packets"].as_u64().unwrap_or(0) > 0),
            "{l}"
        );
        call(&a, "block_hackers", &["10.200.0.1"]).await;
        let f = call(&a, "get_flow_stats", &[]).await;
        let cookies: Vec<u64> = f["1"]
            .as_array()
            .expect("flows of dpid 1")
            .iter()
            .filter_map(|x| x["cookie"].as_u64())
            .collect();
        assert_eq!(
            cookies
                .iter()
                .filter(|c| **c == 0x5645_5350_0000_0001)
                .count(),
            2,
            "{f}"
        );
        // release_all removes the agent's blocks and any stray VESPA flow, nothing else.
        call(&a, "release_hackers", &[]).await;
        lab.ovs
            .wait_flow(
                &lab.bridge,
                "cookie=0x56455350",
                false,
                Duration::from_secs(5),
            )
            .expect("all VESPA flows gone");
        assert!(
            !lab.ovs
                .flows_matching(&lab.bridge, "actions=CONTROLLER")
                .is_empty(),
            "the table-miss flow stays"
        );
    });
}

/// The agent dies with a block in force and a new one starts: the new one numbers its blocks
/// above the cookies left in the switch, so releasing its block leaves the old one alone; the
/// old one carries a hard_timeout, so the switch ends it even though no agent will.
#[test]
fn osken_block_ids_survive_an_agent_restart_and_the_switch_enforces_the_ttl() {
    with_lab(
        "osken_block_ids_survive_an_agent_restart_and_the_switch_enforces_the_ttl",
        |lab| async move {
            let first = agent(&lab, None);
            let old = call(&first, "block_hackers", &[&lab.h1.mac, "600"]).await["block"]
                .as_u64()
                .expect("an id");
            let old_cookie = format!("cookie={:#x}", BlockId(old).cookie());
            let flows = vespa_testkit::wait_until(
                "the first agent's two flows",
                Duration::from_secs(5),
                || {
                    let f = lab.ovs.flows_matching(&lab.bridge, &old_cookie);
                    (f.len() == 2).then_some(f)
                },
            );
            assert!(
                flows.iter().all(|f| f.contains("hard_timeout=660")),
                "TTL 600 s + 60 s margin, enforced by the switch: {flows:?}"
            );
            drop(first);

            let second = agent(&lab, None);
            let new = call(&second, "block_hackers", &[&lab.h2.mac]).await["block"]
                .as_u64()
                .expect("an id");
            assert_eq!(new, old + 1, "above the cookies left in the switch");
            let new_cookie = format!("cookie={:#x}", BlockId(new).cookie());
            lab.ovs
                .wait_flow(&lab.bridge, &new_cookie, true, Duration::from_secs(5))
                .expect("the second agent's flows");
            assert!(
                lab.ovs
                    .flows_matching(&lab.bridge, &new_cookie)
                    .iter()
                    .all(|f| !f.contains("hard_timeout")),
                "a block without a TTL has no switch timeout"
            );
            // Blocking it again with a TTL re-adds its flows, now with the switch's timeout.
            call(&second, "block_hackers", &[&lab.h2.mac, "100"]).await;
            vespa_testkit::wait_until(
                "the refreshed flows with hard_timeout=160 (TTL 100 s + 60 s)",
                Duration::from_secs(5),
                || {
                    let f = lab.ovs.flows_matching(&lab.bridge, &new_cookie);
                    (f.len() == 2 && f.iter().all(|l| l.contains("hard_timeout=160"))).then_some(())
                },
            );

            call(&second, "release_hackers", &[&lab.h2.mac]).await;
            lab.ovs
                .wait_flow(&lab.bridge, &new_cookie, false, Duration::from_secs(5))
                .expect("the released block's flows go");
            let left = lab.ovs.flows_matching(&lab.bridge, &old_cookie);
            assert_eq!(
                left.len(),
                2,
                "the first agent's block is still in the switch: {left:?}"
            );
            assert!(left
                .iter()
                .any(|f| f.contains(&format!("dl_src={}", lab.h1.mac))));
        },
    );
}
