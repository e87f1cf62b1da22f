//! `GET /api/v1/firewall` in-process: a VO with the API and, under it, firewall agents of
//! this test answering `status_hackers` and `firewall_stats` over the real tree protocol: one
//! with more blocks than an answer keeps, one that never answers its blocks, and one that is
//! not running. The answer follows the topology, keeps the busiest blocks, and names what it
//! could not read, within one call timeout however many agents hang.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;
use vespa_node::{
    Agent, AgentKind, AgentRef, Hooks, MasterAddr, Node, NodeSpec, Role, Security, Topology,
    VerbResult,
};
use vespa_orchestrator::client::Api;
use vespa_orchestrator::http::firewall::MAX_BLOCKS;
use vespa_orchestrator::http::ApiParts;
use vespa_proto::verbs::FirewallVerb;
use vespa_testkit::wait_until_async;

const WAIT: Duration = Duration::from_secs(20);

/// A firewall agent with `blocks` blocks (block i dropped `(i * 37) % 1000` packets); when
/// `hang`, it never answers `status_hackers`.
struct Fw {
    blocks: usize,
    hang: bool,
}

const STATS: &str = r#"{"dropped_packets":987654,"dropped_bytes":123456789,
    "throttled_packets":5,"throttled_bytes":500,"protected_passed":2,"reflex_protected":1,
    "reflex_capped":0,"xdp_dropped_packets":0,"reflex_placed":3,"blocks":150,
    "block_capacity":65536,"throttles":1,"allowed":4,"reflex":{"syn_per_sec":0,"conn":0,
    "ttl":null,"max":0,"v6_prefix":0}}"#;

impl Agent for Fw {
    type Verb = FirewallVerb;

    async fn call(&self, verb: FirewallVerb) -> VerbResult {
        match verb {
            FirewallVerb::StatusHackers {} => {
                if self.hang {
                    std::future::pending::<()>().await;
                }
                let list: Vec<Value> = (0..self.blocks)
                    .map(|i| {
                        serde_json::json!({ "id": i + 1, "target": format!("198.51.{}.{}", i / 200, i % 200),
                        "expires_in_ms": 60_000, "reflex": i % 10 == 0, "packets": (i * 37) % 1000,
                        "bytes": 90 * ((i * 37) % 1000), "first_drop_after_ns": null, "created_ns": i })
                    })
                    .collect();
                serde_json::to_string(&list).map_err(|e| e.to_string())
            }
            FirewallVerb::FirewallStats {} => Ok(STATS.into()),
            other => Err(format!("not in this test: {other:?}")),
        }
    }
}

fn topology(vo_port: u16) -> Topology {
    let agent = |name: &str, kind: &str, port: u16| {
        format!(
            "[[node]]\nname = \"{name}\"\nkind = \"{kind}\"\nlocation = \"hv\"\nmaster = \"VO\"\nport = {port}\n"
        )
    };
    let text = format!(
        "[[machine]]\nname = \"hv\"\naddress = \"127.0.0.1\"\n\
         [[node]]\nname = \"VO\"\nkind = \"vo\"\nlocation = \"hv\"\nport = {vo_port}\n{}{}{}{}",
        agent("fw_busy", "agent_firewall", 1),
        agent("bw", "agent_bandwidth", 2),
        agent("fw_hung", "agent_firewall", 3),
        agent("fw_absent", "agent_firewall", 4),
    );
    Topology::from_toml("firewall-test.toml", &text).expect("topology")
}

fn start_agent(name: &str, vo: SocketAddr, security: &Security, fw: Fw) {
    let spec = NodeSpec::new(
        name,
        Role::Agent(AgentKind::Firewall),
        Some(MasterAddr {
            name: "VO".into(),
            addr: vo,
        }),
        security.clone(),
    );
    let hooks = Hooks {
        agent: Some(AgentRef::new(fw)),
        alert_handlers: Vec::new(),
    };
    let node = Node::new(spec, hooks).expect("agent");
    tokio::spawn(node.run(None, std::future::pending()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_firewalls_of_the_topology_are_asked_through_the_tree() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let vo = listener.local_addr().expect("addr");
    let security = Security::Psk(vespa_proto::Psk::random());
    let parts = ApiParts::new(&topology(vo.port()), None);
    let (http, _vo) = common::serve_vo(parts, security.clone(), Some(listener)).await;
    start_agent(
        "fw_busy",
        vo,
        &security,
        Fw {
            blocks: 150,
            hang: false,
        },
    );
    start_agent(
        "fw_hung",
        vo,
        &security,
        Fw {
            blocks: 1,
            hang: true,
        },
    );
    let api = Api::new(&format!("http://{http}"), None, Duration::from_secs(20)).expect("api");
    wait_until_async("both agents registered under the VO", WAIT, || async {
        let t = api
            .send(Method::GET, "/api/v1/topology", None)
            .await
            .map_err(|e| e.to_string())?;
        let t: Value = serde_json::from_slice(&t).map_err(|e| e.to_string())?;
        // The live tree (the configuration beside it names every node anyway).
        let live = &t["tree"]["children"];
        let has = |n: &str| {
            live.as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == n))
        };
        (has("fw_busy") && has("fw_hung"))
            .then_some(())
            .ok_or_else(|| live.to_string())
    })
    .await;

    let asked = Instant::now();
    let body = api
        .send(Method::GET, "/api/v1/firewall", None)
        .await
        .expect("the firewalls");
    let took = asked.elapsed();
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    let fws = v["firewalls"].as_array().expect("a list");
    let names: Vec<&str> = fws.iter().filter_map(|f| f["node"].as_str()).collect();
    assert_eq!(
        names,
        ["fw_busy", "fw_hung", "fw_absent"],
        "the firewall agents, in the topology's order"
    );

    let busy = &fws[0];
    assert_eq!(busy["errors"], serde_json::json!([]), "{busy}");
    assert_eq!(busy["blocks_listed"], 150);
    let blocks = busy["blocks"].as_array().expect("blocks");
    assert_eq!(blocks.len(), MAX_BLOCKS, "bounded to the busiest");
    let packets: Vec<u64> = blocks
        .iter()
        .filter_map(|b| b["packets"].as_u64())
        .collect();
    assert_eq!(packets.len(), MAX_BLOCKS);
    assert!(packets.windows(2).all(|w| w[0] >= w[1]), "busiest first");
    let mut all: Vec<u64> = (0..150u64).map(|i| (i * 37) % 1000).collect();
    all.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(
        packets,
        all[..MAX_BLOCKS],
        "the busiest, not the first listed"
    );
    assert!(blocks[0]["target"]
        .as_str()
        .is_some_and(|t| t.starts_with("198.51.")));
    assert_eq!(busy["totals"]["dropped_packets"], 987654);
    assert_eq!(busy["totals"]["block_capacity"], 65536);

    let hung = &fws[1];
    assert_eq!(hung["totals"]["dropped_packets"], 987654, "{hung}");
    assert_eq!(hung["blocks"], serde_json::json!([]));
    let errors = hung["errors"].as_array().expect("errors");
    assert!(
        errors.len() == 1
            && errors[0]
                .as_str()
                .is_some_and(|e| e.starts_with("status_hackers: fw_hung did not answer")),
        "{hung}"
    );

    let absent = &fws[2];
    assert!(absent["totals"].is_null(), "{absent}");
    assert_eq!(
        absent["errors"].as_array().map(Vec::len),
        Some(2),
        "{absent}"
    );

    // The hung agent costs one call timeout (5 s), not one per verb or per agent.
    assert!(took < Duration::from_secs(9), "the answer took {took:?}");
}
