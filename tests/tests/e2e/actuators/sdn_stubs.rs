//! Floodlight and POX agents against in-project stand-ins that reproduce the documented
//! request and reply shapes; the tests assert the exact requests sent.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use vespa_agents::sdn::floodlight::{Floodlight, FloodlightApi, FloodlightConfig, FloodlightMode};
use vespa_agents::sdn::osken::{OsKen, OsKenConfig};
use vespa_agents::sdn::pox::{Pox, PoxConfig};
use vespa_agents::sdn::{BlockId, SdnAgent, SdnAgentConfig, SdnController};
use vespa_agents::{ActuatorAlert, AlertSink, RetryPolicy};
use vespa_node::Agent as _;
use vespa_testkit::wait_until_async;
use vespa_tests::daemons::floodlight_stub::{Fault, FloodlightStub, Request, DPID1, DPID2};
use vespa_tests::daemons::pox_stub::{PoxMode, PoxStub};

const MAC: &str = "52:54:00:aa:bb:cc";

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(10),
    }
}

fn no_ttl() -> SdnAgentConfig {
    SdnAgentConfig { default_ttl: None }
}

async fn call<C: SdnController>(
    a: &SdnAgent<C>,
    verb: &str,
    args: &[&str],
) -> Result<String, String> {
    a.call_words(verb, args.iter().map(|s| s.to_string()).collect())
        .await
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn req(method: &str, path: &str, body: Option<Value>) -> Request {
    Request {
        method: method.into(),
        path: path.into(),
        body,
    }
}

fn floodlight(
    stub: &FloodlightStub,
    api: FloodlightApi,
    mode: FloodlightMode,
) -> (SdnAgent<Floodlight>, mpsc::Receiver<ActuatorAlert>) {
    let (tx, rx) = mpsc::channel(64);
    let cfg = FloodlightConfig {
        url: stub.url(),
        api,
        mode,
        retry: quick_retry(),
        timeout: Duration::from_secs(5),
        ..FloodlightConfig::default()
    };
    (
        SdnAgent::new(Floodlight::new(cfg), no_ttl(), AlertSink::new(tx)),
        rx,
    )
}

fn cookie(id: u64) -> String {
    BlockId(id).cookie().to_string()
}

#[tokio::test]
async fn floodlight_v1_static_flows_block_and_release_with_exact_requests() {
    let stub = FloodlightStub::start().await;
    let (a, _alerts) = floodlight(&stub, FloodlightApi::V1, FloodlightMode::StaticFlow);
    let r = json_of(&call(&a, "block_hackers", &[MAC]).await.expect("block"));
    assert_eq!(
        r,
        json!({ "block": 1, "target": { "mac": MAC }, "ttl_s": null })
    );

    let entry = |sw: &str, i: u32, dir: &str, field: &str| json!({ "switch": sw, "name": format!("vespa-1-{i}-{dir}"), "active": "true", "priority": "32767", "cookie": cookie(1), field: MAC });
    let pusher = "/wm/staticflowpusher/json";
    assert_eq!(
        stub.take_requests(),
        vec![
            // Before its first block the agent looks for earlier agents' entries.
            req("GET", "/wm/staticflowpusher/list/all/json", None),
            req("GET", "/wm/core/controller/switches/json", None),
            req("POST", pusher, Some(entry(DPID1, 0, "src", "eth_src"))),
            req("POST", pusher, Some(entry(DPID1, 0, "dst", "eth_dst"))),
            req("POST", pusher, Some(entry(DPID2, 1, "src", "eth_src"))),
            req("POST", pusher, Some(entry(DPID2, 1, "dst", "eth_dst"))),
        ]
    );
    assert_eq!(stub.flows().len(), 4);

    let st = json_of(&call(&a, "status_hackers", &[]).await.expect("status"));
    assert_eq!(st[0]["id"], 1);
    assert_eq!(st[0]["target"], json!({ "mac": MAC }));
    assert_eq!(st[0]["cookie"], "0x5645535000000001");
    assert_eq!(
        st[0]["handles"],
        json!([
            "vespa-1-0-src",
            "vespa-1-0-dst",
            "vespa-1-1-src",
            "vespa-1-1-dst"
        ])
    );

    // Blocking again only refreshes: same id, no request.
    assert_eq!(
        json_of(
            &call(&a, "block_hackers", &[&MAC.to_uppercase()])
                .await
                .expect("re-block")
        )["block"],
        1
    );
    assert!(stub.take_requests().is_empty());

    // Release really releases (2014 re-sent the block).
    let r = json_of(&call(&a, "release_hackers", &[MAC]).await.expect("release"));
    assert_eq!(r, json!({ "released": [1] }));
    let del = |n: &str| req("DELETE", pusher, Some(json!({ "name": n })));
    assert_eq!(
        stub.take_requests(),
        vec![
            del("vespa-1-0-src"),
            del("vespa-1-0-dst"),
            del("vespa-1-1-src"),
            del("vespa-1-1-dst")
        ]
    );
    assert!(stub.flows().is_empty());
    assert_eq!(
        json_of(&call(&a, "status_hackers", &[]).await.expect("status")),
        json!([])
    );

    // An IPv4 block uses eth_type + ipv4_src/dst; release by id.
    let r = json_of(
        &call(&a, "alert_ip", &["10.1.2.3"])
            .await
            .expect("alert_ip without a MAC blocks the IP"),
    );
    assert_eq!(r["target"], json!({ "ip": "10.1.2.3" }));
    let reqs = stub.take_requests();
    assert_eq!(
        reqs[1].body,
        Some(
            json!({ "switch": DPID1, "name": "vespa-2-0-src", "active": "true", "priority": "32767", "cookie": cookie(2), "eth_type": "0x0800", "ipv4_src": "10.1.2.3" })
        )
    );
    assert_eq!(
        reqs[2].body.as_ref().map(|b| b["ipv4_dst"].clone()),
        Some(json!("10.1.2.3"))
    );
    assert_eq!(
        json_of(
            &call(&a, "release_hackers", &["2"])
                .await
                .expect("release by id")
        )["released"],
        json!([2])
    );
    // alert_ip with a MAC blocks the MAC (2014 semantics).
    let r = json_of(
        &call(&a, "alert_ip", &["10.1.2.3", MAC])
            .await
            .expect("alert_ip"),
    );
    assert_eq!(r["target"], json!({ "mac": MAC }));

    // release_hackers without arguments releases everything, then purges stray entries.
    stub.take_requests();
    let r = json_of(&call(&a, "release_hackers", &[]).await.expect("release all"));
    assert_eq!(r["released"], json!([3]));
    let reqs = stub.take_requests();
    assert_eq!(
        reqs.last(),
        Some(&req("GET", "/wm/staticflowpusher/list/all/json", None))
    );
    assert!(stub.flows().is_empty());
}

#[tokio::test]
async fn floodlight_v090_field_names_and_paths() {
    let stub = FloodlightStub::start().await;
    let (a, _alerts) = floodlight(&stub, FloodlightApi::V090, FloodlightMode::StaticFlow);
    call(&a, "block_hackers", &["10.0.0.9", "60"])
        .await
        .expect("block");
    let reqs = stub.take_requests();
    assert_eq!(reqs.len(), 6);
    assert_eq!(
        reqs[0],
        req("GET", "/wm/staticflowentrypusher/list/all/json", None)
    );
    assert_eq!(
        reqs[2],
        req(
            "POST",
            "/wm/staticflowentrypusher/json",
            Some(
                json!({ "switch": DPID1, "name": "vespa-1-0-src", "active": "true", "priority": "32767", "cookie": cookie(1), "ether-type": "0x0800", "src-ip": "10.0.0.9", "actions": "" })
            )
        ),
        "v0.90's pusher takes no hard_timeout"
    );
    assert_eq!(
        reqs[3].body.as_ref().map(|b| b["dst-ip"].clone()),
        Some(json!("10.0.0.9"))
    );
    call(&a, "block_hackers", &[MAC])
        .await
        .expect("block a MAC");
    let reqs = stub.take_requests();
    assert_eq!(
        reqs[1]
            .body
            .as_ref()
            .map(|b| (b["src-mac"].clone(), b["actions"].clone())),
        Some((json!(MAC), json!("")))
    );
    let st = json_of(&call(&a, "status_hackers", &[]).await.expect("status"));
    assert_eq!(st[0]["ttl_s"], 60.0);
    assert!(
        st[0]["expires_in_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 50_000 && ms <= 60_000),
        "{st}"
    );
    // v0.90 has no IPv6 fields: a typed refusal, nothing sent.
    let e = call(&a, "block_hackers", &["fd00::9"])
        .await
        .expect_err("IPv6 on v0.90");
    assert!(
        e.contains("cannot block ip fd00::9") && e.contains("no IPv6"),
        "{e}"
    );
    assert!(stub.take_requests().is_empty());
    call(&a, "release_hackers", &["10.0.0.9"])
        .await
        .expect("release");
    assert_eq!(
        stub.take_requests()[0],
        req(
            "DELETE",
            "/wm/staticflowentrypusher/json",
            Some(json!({ "name": "vespa-1-0-src" }))
        )
    );
}

#[tokio::test]
async fn floodlight_firewall_rules_block_and_release() {
    let stub = FloodlightStub::start().await;
    let (a, _alerts) = floodlight(&stub, FloodlightApi::V1, FloodlightMode::Firewall);
    call(&a, "block_hackers", &[MAC]).await.expect("block");
    call(&a, "block_hackers", &["192.168.7.7"])
        .await
        .expect("block ip");
    let rules = "/wm/firewall/rules/json";
    assert_eq!(
        stub.take_requests(),
        vec![
            req(
                "POST",
                rules,
                Some(json!({ "src-mac": MAC, "action": "deny", "priority": "32767" }))
            ),
            req(
                "POST",
                rules,
                Some(json!({ "dst-mac": MAC, "action": "deny", "priority": "32767" }))
            ),
            req(
                "POST",
                rules,
                Some(
                    json!({ "dl-type": "IPv4", "src-ip": "192.168.7.7/32", "action": "deny", "priority": "32767" })
                )
            ),
            req(
                "POST",
                rules,
                Some(
                    json!({ "dl-type": "IPv4", "dst-ip": "192.168.7.7/32", "action": "deny", "priority": "32767" })
                )
            ),
        ]
    );
    let st = json_of(&call(&a, "status_hackers", &[]).await.expect("status"));
    assert_eq!(st[0]["handles"], json!(["1", "2"]));
    call(&a, "release_hackers", &[MAC]).await.expect("release");
    assert_eq!(
        stub.take_requests(),
        vec![
            req("DELETE", rules, Some(json!({ "ruleid": "1" }))),
            req("DELETE", rules, Some(json!({ "ruleid": "2" })))
        ]
    );
    assert_eq!(stub.rules().keys().copied().collect::<Vec<_>>(), vec![3, 4]);
    // Floodlight refuses a similar rule with 200 + an error status text: a typed rejection,
    // nothing recorded as blocked.
    let (b, _b_alerts) = floodlight(&stub, FloodlightApi::V1, FloodlightMode::Firewall);
    let e = call(&b, "block_hackers", &["192.168.7.7"])
        .await
        .expect_err("similar rule");
    assert!(e.contains("floodlight rejected /wm/firewall/rules/json: Error! A similar firewall rule already exists."), "{e}");
    assert!(b.controller().status().is_empty());
    // IPv6 is not expressible in the firewall module.
    assert!(call(&a, "block_hackers", &["fd00::1"])
        .await
        .expect_err("IPv6")
        .contains("matches IPv4 only"));
}

#[tokio::test]
async fn floodlight_topology_link_and_flow_stats() {
    let stub = FloodlightStub::start().await;
    let (a, _alerts) = floodlight(&stub, FloodlightApi::V1, FloodlightMode::StaticFlow);
    let t = json_of(&call(&a, "get_topology", &[]).await.expect("topology"));
    assert_eq!(t["switches"].as_array().map(Vec::len), Some(2));
    assert_eq!(t["switches"][0]["dpid"], DPID1);
    assert_eq!(t["switches"][0]["openflow_version"], "OF_13");
    assert_eq!(
        t["links"],
        json!([{ "src": DPID1, "src_port": 3, "dst": DPID2, "dst_port": 3, "type": "internal", "direction": "bidirectional", "latency": 2 }])
    );
    let l = json_of(&call(&a, "get_link_stats", &[]).await.expect("links"));
    assert_eq!(l["links"][0]["src-switch"], DPID1);
    assert!(l["ports"][DPID1].is_object(), "{l}");
    call(&a, "block_hackers", &[MAC]).await.expect("block");
    let f = json_of(&call(&a, "get_flow_stats", &[]).await.expect("flows"));
    assert_eq!(f[DPID1]["flows"].as_array().map(Vec::len), Some(4), "{f}");
    let paths: Vec<String> = stub
        .requests()
        .into_iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        &paths[..4],
        &[
            "GET /wm/core/controller/switches/json",
            "GET /wm/topology/links/json",
            "GET /wm/topology/links/json",
            "GET /wm/core/switch/all/port/json"
        ]
    );
    assert_eq!(
        paths.last().map(String::as_str),
        Some("GET /wm/core/switch/all/flow/json")
    );
}

#[tokio::test]
async fn controller_errors_are_typed_retried_when_transient_and_the_agent_keeps_serving() {
    let stub = FloodlightStub::start().await;
    let (a, mut alerts) = floodlight(&stub, FloodlightApi::V1, FloodlightMode::StaticFlow);

    // Malformed targets never reach the controller and raise no actuator alert.
    for bad in [
        "52:54:00:aa:bb",
        "52:54:00:aa:bb:zz",
        "10.0.0.300",
        "hacker",
        "",
    ] {
        let e = call(&a, "block_hackers", &[bad])
            .await
            .expect_err("malformed target");
        assert!(e.contains("invalid block target"), "{bad:?}: {e}");
    }
    assert!(call(&a, "block_hackers", &[MAC, "-5"])
        .await
        .expect_err("bad ttl")
        .contains("invalid time-to-live"));
    assert!(call(&a, "release_hackers", &["77"])
        .await
        .expect_err("unknown id")
        .contains("no active block matches"));
    assert!(call(&a, "block_hackers", &[])
        .await
        .expect_err("arity")
        .starts_with("usage: block_hackers"));
    assert!(call(&a, "reboot_the_world", &[])
        .await
        .expect_err("unknown verb")
        .contains("unknown verb"));
    assert!(stub.take_requests().is_empty());
    assert!(alerts.try_recv().is_err());

    // 404: permanent, not retried.
    stub.set_fault(Fault::Status(404));
    let e = call(&a, "block_hackers", &[MAC]).await.expect_err("404");
    assert!(
        e.contains("answered HTTP 404 to GET") && e.contains("/wm/core/controller/switches/json"),
        "{e}"
    );
    assert_eq!(
        stub.take_requests()
            .iter()
            .map(|r| r.path.as_str())
            .collect::<Vec<_>>(),
        [
            "/wm/staticflowpusher/list/all/json",
            "/wm/core/controller/switches/json"
        ],
        "a 404 is not retried (the listing refused for good: ids start at a random base)"
    );
    assert!(
        matches!(alerts.try_recv(), Ok(ActuatorAlert::ActuatorFailed { actuator, .. }) if actuator == "floodlight")
    );

    // 500: transient, retried (3 attempts), then reported.
    stub.set_fault(Fault::Status(500));
    let e = call(&a, "get_topology", &[]).await.expect_err("500");
    assert!(e.contains("HTTP 500"), "{e}");
    assert_eq!(stub.take_requests().len(), 3, "a 500 is retried");

    // Garbage instead of JSON.
    stub.set_fault(Fault::Garbage);
    let e = call(&a, "block_hackers", &[MAC])
        .await
        .expect_err("garbage");
    assert!(
        e.contains("unexpected reply") && e.contains("not JSON"),
        "{e}"
    );
    assert!(
        a.controller().status().is_empty(),
        "nothing recorded as blocked"
    );

    // Unreachable controller.
    let (tx, _rx) = mpsc::channel(8);
    let gone = OsKen::new(OsKenConfig {
        url: "http://127.0.0.1:9".into(),
        retry: quick_retry(),
        ..OsKenConfig::default()
    });
    let g = SdnAgent::new(gone, no_ttl(), AlertSink::new(tx));
    let e = call(&g, "block_hackers", &[MAC])
        .await
        .expect_err("nothing listens on port 9");
    assert!(
        e.contains("os-ken unreachable at http://127.0.0.1:9/stats/switches"),
        "{e}"
    );
    assert_eq!(g.controller().state().stats.retries(), 2);

    // The same agent serves normally once the controller behaves.
    stub.set_fault(Fault::None);
    let id = json_of(&call(&a, "block_hackers", &[MAC]).await.expect("block"))["block"]
        .as_u64()
        .expect("an id");
    assert!(vespa_agents::sdn::RANDOM_ID_BASE.contains(&id), "{id}");
    // os-ken's client against a controller answering 404 / garbage: typed too.
    let (tx, _rx) = mpsc::channel(8);
    let o = SdnAgent::new(
        OsKen::new(OsKenConfig {
            url: stub.url(),
            retry: quick_retry(),
            ..OsKenConfig::default()
        }),
        no_ttl(),
        AlertSink::new(tx),
    );
    let e = call(&o, "get_flow_stats", &[])
        .await
        .expect_err("os-ken path on a Floodlight server");
    assert!(e.contains("os-ken answered HTTP 404 to GET"), "{e}");
    stub.set_fault(Fault::Garbage);
    let e = call(&o, "block_hackers", &[MAC])
        .await
        .expect_err("garbage");
    assert!(
        e.contains("os-ken sent an unexpected reply to /stats/switches"),
        "{e}"
    );
}

#[tokio::test]
async fn ttl_expiry_releases_by_itself() {
    let stub = FloodlightStub::start().await;
    let (a, _alerts) = floodlight(&stub, FloodlightApi::V1, FloodlightMode::StaticFlow);
    call(&a, "block_hackers", &[MAC, "0.3"])
        .await
        .expect("block with a 300 ms TTL");
    call(&a, "block_hackers", &["10.9.9.9", "none"])
        .await
        .expect("block without TTL");
    assert_eq!(stub.flows().len(), 8);
    let t0 = std::time::Instant::now();
    let agent = &a;
    wait_until_async(
        "the expired block's release (one block left)",
        Duration::from_secs(10),
        move || async move {
            let held = agent.controller().status().len();
            if held == 1 {
                Ok(())
            } else {
                Err(format!("{held} blocks held"))
            }
        },
    )
    .await;
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "released before its TTL: {:?}",
        t0.elapsed()
    );
    let flows = stub.flows();
    assert_eq!(
        flows.len(),
        4,
        "only the IP block's entries remain: {flows:?}"
    );
    assert!(flows.keys().all(|n| n.starts_with("vespa-2-")));
    let deletes = stub
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .count();
    assert_eq!(deletes, 4);
}

fn pox(stub: &PoxStub, ttl: Option<Duration>) -> (SdnAgent<Pox>, mpsc::Receiver<ActuatorAlert>) {
    let (tx, rx) = mpsc::channel(64);
    let cfg = PoxConfig {
        addr: stub.addr.to_string(),
        timeout: Duration::from_millis(500),
        retry: RetryPolicy::none(),
        ..PoxConfig::default()
    };
    (
        SdnAgent::new(
            Pox::new(cfg),
            SdnAgentConfig { default_ttl: ttl },
            AlertSink::new(tx),
        ),
        rx,
    )
}

#[tokio::test]
async fn pox_messenger_join_channel_and_the_2014_commands() {
    let stub = PoxStub::start().await;
    let (a, _alerts) = pox(&stub, None);
    let join =
        json!({ "CHANNEL": "", "cmd": "join_channel", "channel": "mac_redir", "json": true });

    // POX shows no block ids: the agent's start at a random base.
    let id = json_of(&call(&a, "block_hackers", &[MAC]).await.expect("block"))["block"]
        .as_u64()
        .expect("an id");
    assert!(vespa_agents::sdn::RANDOM_ID_BASE.contains(&id), "{id}");
    assert_eq!(
        stub.take_received(),
        vec![
            join.clone(),
            json!({ "CHANNEL": "mac_redir", "cmd": "block_hackers", "xid": 1, "mac": MAC, "block": id })
        ]
    );
    assert!(stub.blocked().contains(MAC));
    call(&a, "block_hackers", &["10.4.4.4", "30"])
        .await
        .expect("block ip");
    let got = stub.take_received();
    assert_eq!(
        got[1],
        json!({ "CHANNEL": "mac_redir", "cmd": "block_hackers", "xid": 2, "ip": "10.4.4.4", "block": id + 1, "ttl": 30.0, "hard_timeout": 90 })
    );

    let t = json_of(&call(&a, "get_topology", &[]).await.expect("topology"));
    assert_eq!(t["cmd"], "get_topology");
    assert_eq!(t["switches"].as_array().map(Vec::len), Some(2));
    assert!(t.get("CHANNEL").is_none() && t.get("xid").is_none(), "{t}");
    let l = json_of(&call(&a, "get_link_stats", &[]).await.expect("links"));
    assert_eq!(l["links"][0]["rx_packets"], 10);
    assert_eq!(
        stub.take_received()[1],
        json!({ "CHANNEL": "mac_redir", "cmd": "get_topology", "xid": 3 })
    );

    call(&a, "release_hackers", &[MAC]).await.expect("release");
    assert_eq!(
        stub.take_received()[1],
        json!({ "CHANNEL": "mac_redir", "cmd": "release_hackers", "xid": 5, "mac": MAC, "block": id })
    );
    assert!(
        !stub.blocked().contains(MAC),
        "the component released the MAC"
    );
    call(&a, "release_hackers", &[]).await.expect("release all");
    let got = stub.take_received();
    assert_eq!(got[1]["cmd"], "release_hackers");
    assert_eq!(
        got.last(),
        Some(&json!({ "CHANNEL": "mac_redir", "cmd": "release_hackers", "xid": 7 })),
        "the final purge names no target"
    );
    assert!(stub.blocked().is_empty());
    assert_eq!(stub.sessions(), 7, "one messenger session per command");
}

#[tokio::test]
async fn pox_failures_are_typed_and_ttl_expiry_releases() {
    let stub = PoxStub::start().await;
    let (a, mut alerts) = pox(&stub, None);
    stub.set_mode(PoxMode::Silent);
    let e = call(&a, "block_hackers", &[MAC])
        .await
        .expect_err("no reply");
    assert!(e.contains("timed out waiting for a reply"), "{e}");
    stub.set_mode(PoxMode::Garbage);
    let e = call(&a, "get_topology", &[]).await.expect_err("garbage");
    assert!(e.contains("garbage on the stream"), "{e}");
    stub.set_mode(PoxMode::Refuse);
    let e = call(&a, "block_hackers", &[MAC])
        .await
        .expect_err("refused");
    assert!(
        e.contains("pox rejected block_hackers: component refused"),
        "{e}"
    );
    assert_eq!(
        alerts
            .try_recv()
            .map(|a| matches!(a, ActuatorAlert::ActuatorFailed { .. })),
        Ok(true)
    );
    assert!(
        a.controller().status().is_empty(),
        "{:?}",
        a.controller().status()
    );

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (tx, _rx) = mpsc::channel(8);
    let cfg = PoxConfig {
        addr: closed.to_string(),
        retry: RetryPolicy::none(),
        ..PoxConfig::default()
    };
    let gone = SdnAgent::new(Pox::new(cfg), no_ttl(), AlertSink::new(tx));
    assert!(call(&gone, "block_hackers", &[MAC])
        .await
        .expect_err("nothing listens")
        .contains("cannot connect"));

    stub.set_mode(PoxMode::Normal);
    call(&a, "block_hackers", &[MAC, "0.2"])
        .await
        .expect("block with a 200 ms TTL");
    assert!(stub.blocked().contains(MAC));
    let t0 = std::time::Instant::now();
    // The component forgets the block before it replies; the agent's book follows the reply.
    let (agent, component) = (&a, &stub);
    wait_until_async(
        "the TTL to release the block at the component and in the agent's book",
        Duration::from_secs(10),
        move || async move {
            let (at_component, in_book) = (component.blocked(), agent.controller().status().len());
            if at_component.is_empty() && in_book == 0 {
                Ok(())
            } else {
                Err(format!(
                    "component blocks {at_component:?}, the agent holds {in_book}"
                ))
            }
        },
    )
    .await;
    assert!(
        t0.elapsed() >= Duration::from_millis(150),
        "released before its TTL"
    );
}

/// Two agents, one after the other, in front of the same controller: the second numbers its
/// blocks above the first's entries, so neither overwrites nor releases the other's.
#[tokio::test]
async fn floodlight_block_ids_do_not_collide_across_an_agent_restart() {
    let stub = FloodlightStub::start().await;
    let (first, _alerts) = floodlight(&stub, FloodlightApi::V1, FloodlightMode::StaticFlow);
    let old = json_of(
        &call(&first, "block_hackers", &[MAC, "300"])
            .await
            .expect("block"),
    )["block"]
        .as_u64()
        .expect("an id");
    let old_flows = stub.flows();
    assert_eq!(old_flows.len(), 4);
    assert!(
        old_flows.values().all(|f| f["hard_timeout"] == "360"),
        "the switch ends the block 60 s after its TTL if no agent does: {old_flows:?}"
    );
    // The agent dies (its reaper with it); its entries stay in the controller.
    drop(first);
    stub.take_requests();

    let (second, _alerts) = floodlight(&stub, FloodlightApi::V1, FloodlightMode::StaticFlow);
    let new = json_of(
        &call(&second, "block_hackers", &["10.3.3.3", "none"])
            .await
            .expect("block"),
    )["block"]
        .as_u64()
        .expect("an id");
    assert_eq!(new, old + 1, "above the entries the controller still holds");
    assert_eq!(
        stub.take_requests()[0],
        req("GET", "/wm/staticflowpusher/list/all/json", None)
    );
    assert_eq!(
        stub.flows().len(),
        8,
        "nothing overwritten: {:?}",
        stub.flows()
    );
    assert!(
        stub.flows()
            .iter()
            .filter(|(n, _)| n.starts_with(&format!("vespa-{new}-")))
            .all(|(_, f)| f.get("hard_timeout").is_none()),
        "a block without a TTL carries no switch timeout"
    );

    // Refreshing with a TTL pushes the entries again (same names) with the new timeout.
    call(&second, "block_hackers", &["10.3.3.3", "30"])
        .await
        .expect("refresh");
    let pushed: Vec<Value> = stub
        .take_requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .filter_map(|r| r.body)
        .collect();
    assert_eq!(pushed.len(), 4, "{pushed:?}");
    assert!(pushed.iter().all(|b| b["hard_timeout"] == "90"
        && b["name"]
            .as_str()
            .is_some_and(|n| n.starts_with(&format!("vespa-{new}-")))));

    call(&second, "release_hackers", &[&new.to_string()])
        .await
        .expect("release");
    assert_eq!(
        stub.flows().keys().cloned().collect::<Vec<_>>(),
        old_flows.keys().cloned().collect::<Vec<_>>(),
        "releasing the new block leaves the old agent's entries"
    );
}

#[tokio::test]
async fn pox_block_ids_differ_across_an_agent_restart() {
    let stub = PoxStub::start().await;
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let (a, _alerts) = pox(&stub, None);
        let r = json_of(&call(&a, "block_hackers", &[MAC]).await.expect("block"));
        ids.insert(r["block"].as_u64().expect("an id"));
    }
    assert_eq!(ids.len(), 3, "three agent starts, three ids: {ids:?}");
}

/// Pushes a static entry behind the agent's back, as an operator or an earlier agent would.
async fn push_by_hand(stub: &FloodlightStub, path: &'static str, entry: Value) {
    let addr = stub.addr;
    let (status, body) = tokio::task::spawn_blocking(move || {
        vespa_tests::daemons::http_request(addr, "POST", path, None, &entry.to_string())
    })
    .await
    .expect("join")
    .expect("the stub answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Entry pushed"), "{body}");
}

/// Reconciliation's view of a Floodlight controller is the pusher's list, in either API's
/// shape: VESPA's own block (known, its target read back from the listed match, one entry per
/// switch and direction), a VESPA-cookie entry nobody's book holds (unknown), and nothing of
/// the operator's. `drop_flows` of the unknown block deletes its entries by name and leaves
/// the rest.
#[tokio::test]
async fn floodlight_lists_vespas_entries_for_reconciliation_and_drops_a_stray_by_name() {
    for (api, pusher, ip_field, mac_field) in [
        (
            FloodlightApi::V1,
            "/wm/staticflowpusher/json",
            "ipv4_src",
            "eth_src",
        ),
        (
            FloodlightApi::V090,
            "/wm/staticflowentrypusher/json",
            "src-ip",
            "src-mac",
        ),
    ] {
        let stub = FloodlightStub::start().await;
        let (a, _alerts) = floodlight(&stub, api, FloodlightMode::StaticFlow);
        call(&a, "block_hackers", &[MAC]).await.expect("block");
        push_by_hand(
            &stub,
            pusher,
            json!({ "switch": DPID1, "name": "vespa-9-0-src", "active": "true", "priority": "32767",
                    "cookie": cookie(9), "hard_timeout": "600", "ether-type": "0x0800",
                    "eth_type": "0x0800", ip_field: "10.0.0.9" }),
        )
        .await;
        push_by_hand(
            &stub,
            pusher,
            json!({ "switch": DPID1, "name": "operator-web", "active": "true", "priority": "100",
                    "cookie": "5", mac_field: "52:54:00:00:00:05" }),
        )
        .await;

        let page = json_of(&call(&a, "vespa_flows", &[]).await.expect("vespa_flows"));
        let rows = page["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 2, "{api:?}: {page}");
        assert_eq!(
            (
                &rows[0]["id"],
                &rows[0]["target"],
                &rows[0]["flows"],
                &rows[0]["known"]
            ),
            (&json!(1), &json!(MAC), &json!(4), &json!(true)),
            "{api:?}: {page}"
        );
        assert_eq!(
            (
                &rows[1]["id"],
                &rows[1]["target"],
                &rows[1]["flows"],
                &rows[1]["known"]
            ),
            (&json!(9), &json!("10.0.0.9"), &json!(1), &json!(false)),
            "{api:?}: {page}"
        );
        if api == FloodlightApi::V1 {
            assert_eq!(rows[1]["remaining_s"], 600, "at most its timeout: {page}");
        }

        call(&a, "drop_flows", &["9"]).await.expect("drop_flows");
        let names: Vec<String> = stub.flows().into_keys().collect();
        assert!(
            !names.iter().any(|n| n.starts_with("vespa-9-")),
            "{api:?}: {names:?}"
        );
        assert!(names.contains(&"operator-web".to_string()), "{names:?}");
        assert_eq!(
            names.iter().filter(|n| n.starts_with("vespa-1-")).count(),
            4,
            "the agent's own block stays: {names:?}"
        );
    }
}
