//! The orchestrator's HTTP API over the real binaries: VO (with --http) -> HO_VM -> a
//! bandwidth and a connections agent on lo. The 2014 endpoints answer JSON of their shape
//! (without the 2014 CORS `*`); /api/v1 pages alerts and guards its mutations with the bearer
//! token; errors are JSON with the right status; /metrics parses and carries the closed-loop
//! histogram. The server's own flags: slow and silent clients are cut or make room, a
//! foreign Host is refused, CORS only for the origins given.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;

use crate::kit::*;
use prometheus_parse::{Scrape, Value};
use serde_json::Value as Json;
use vespa_testkit::wait_until;
use vespa_tests::shared::LOOPBACK;

const TOKEN: &str = "test-token-0123456789abcdef";

/// One HTTP/1.1 exchange on a fresh connection.
struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Resp {
    fn json(&self) -> Json {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected a JSON body ({e}), got {} {:?}",
                self.status, self.body
            )
        })
    }
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        })
    }
    /// The `error` of a JSON error answer.
    fn error(&self, status: u16) -> String {
        assert_eq!(
            self.status, status,
            "expected {status}, got {} {}",
            self.status, self.body
        );
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/json"),
            "errors are JSON: {}",
            self.head
        );
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.body))
            .to_string()
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>, body: &[u8]) -> Resp {
    request_with(addr, method, path, auth, &format!("Host: {addr}\r\n"), body)
}

/// [`request`] with these header lines instead of the default `Host`.
fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    headers: &str,
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = auth {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("request head");
    // The server may answer (413) before reading a large body and close: a failed write of
    // the rest is then expected.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        assert!(
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut,
            "{method} {path}: no answer within {WAIT:?}"
        );
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Resp {
        status,
        head: head.to_string(),
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, None, b"")
}

fn post(addr: SocketAddr, path: &str, auth: Option<&str>, body: &str) -> Resp {
    request(addr, "POST", path, auth, body.as_bytes())
}

fn token_file(tree: &Tree) -> String {
    let p = tree.scratch.dir.join("api-token");
    std::fs::write(&p, format!("{TOKEN}\n")).expect("token");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p.to_str().expect("utf-8").to_string()
}

fn full_tree(tag: &str) -> Tree {
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let nodes = lo_bandwidth_and_connections_nodes();
    Tree::new(
        tag,
        "heartbeat_ms = 300\nsample_interval_ms = 20",
        &[("host", lo)],
        &nodes,
    )
}

/// Polls until the API answers at all (the VO process is starting).
fn wait_api(addr: SocketAddr, vo: &Proc) {
    wait_until(
        &format!("the API on {addr} (log: {})", vo.log.display()),
        WAIT,
        || TcpStream::connect(addr).map(drop),
    );
}

#[test]
fn legacy_endpoints_paging_and_metrics_over_a_real_tree() {
    // Its connections agent on lo counts every socket of the host, and the VO's default
    // policy acts on the counts (no action is expected here): no flood meanwhile.
    let _loopback = LOOPBACK.share();
    let tree = full_tree("http");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let (api_s, token) = (api.to_string(), token_file(&tree));
    // HO_VM before the VO in one process: the API still comes up on the VO's handle.
    let vo = tree.spawn_with(
        "vo",
        "vespa-orchestrator",
        None,
        &[],
        &["HO_VM", "VO"],
        &["--http", &api_s, "--api-token-file", &token],
    );
    let _agents = tree.spawn(
        "agents",
        "vespa-agent",
        None,
        &["--mode", "auto", "-i", "lo"],
        &["bw", "conns"],
    );
    wait_api(api, &vo);

    // Data flows: deltas of lo, the tree's own loopback connections.
    let recv = wait_until("10 rx deltas of lo at /recv_bytes", WAIT, || {
        let v = get(api, "/recv_bytes").json();
        (v.as_array().is_some_and(|a| a.len() >= 10)).then_some(v)
    });
    assert!(
        recv.as_array().expect("array").iter().all(Json::is_u64),
        "/recv_bytes is an array of numbers: {recv}"
    );
    let conns = wait_until("connections at /get_ip_connections", WAIT, || {
        let v = get(api, "/get_ip_connections").json();
        v.as_array().is_some_and(|a| !a.is_empty()).then_some(v)
    });
    assert!(
        conns
            .as_array()
            .expect("array")
            .iter()
            .any(|r| r["ip"] == "127.0.0.1" && r["value"].as_u64().is_some_and(|n| n > 0)),
        "{conns}"
    );

    // Every 2014 endpoint: 200, JSON; no CORS header (2014's `*` needs --cors-origin now).
    for path in [
        "/archi",
        "/recv_bytes",
        "/trans_bytes",
        "/next_recv_bytes",
        "/next_trans_bytes",
        "/get_alerts",
        "/get_ip_connections",
        "/get_configini",
        "/connect",
    ] {
        let r = get(api, path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(
            r.header("access-control-allow-origin"),
            None,
            "{path}: no CORS without --cors-origin"
        );
        let _ = r.json();
    }
    let trans = get(api, "/trans_bytes?iface=lo&origin=bw").json();
    assert!(
        trans
            .as_array()
            .is_some_and(|a| a.len() <= 40 && a.iter().all(Json::is_u64)),
        "last 40 deltas: {trans}"
    );
    assert!(
        get(api, "/next_recv_bytes").json().is_u64(),
        "the latest delta is a number"
    );
    assert!(
        get(api, "/recv_bytes?iface=eth9")
            .error(404)
            .contains("bw/lo"),
        "an unknown interface names those reporting"
    );
    assert!(get(api, "/recv_bytes?ifcae=lo")
        .error(400)
        .contains("ifcae"));
    let archi = wait_until("bw and conns under HO_VM in /archi", WAIT, || {
        let a = get(api, "/archi").json();
        let ho = a["children"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == "HO_VM")?
            .clone();
        (ho["children"].as_array()?.len() == 2).then_some(a)
    });
    assert_eq!(
        get(api, "/connect").json(),
        "Ok",
        "/connect answers as in 2014"
    );
    assert_eq!(archi["name"], "VO");
    // 2014's host and port beside the kind and listen address, at every level.
    let at = |name: &str| tree.addrs[name];
    assert_eq!(archi["host"], at("VO").ip().to_string(), "{archi}");
    assert_eq!(archi["port"], at("VO").port(), "{archi}");
    let ho = archi["children"]
        .as_array()
        .expect("children")
        .iter()
        .find(|c| c["name"] == "HO_VM")
        .expect("HO_VM")
        .clone();
    assert_eq!(ho["kind"], "ho_vm");
    assert_eq!(ho["host"], at("HO_VM").ip().to_string(), "{archi}");
    assert_eq!(ho["port"], at("HO_VM").port(), "{archi}");
    assert!(
        ho["children"]
            .as_array()
            .expect("agents")
            .iter()
            .any(|c| c["name"] == "bw"
                && c["host"] == at("bw").ip().to_string()
                && c["port"] == at("bw").port()
                && c["listen"] == at("bw").to_string()),
        "{archi}"
    );
    assert!(
        ho["children"]
            .as_array()
            .expect("agents")
            .iter()
            .any(|c| c["name"] == "bw" && c["kind"] == "agent_bandwidth"),
        "{archi}"
    );
    let alerts = get(api, "/get_alerts").json();
    assert!(
        alerts
            .as_array()
            .expect("array")
            .iter()
            .any(|a| a["origin"] == "bw" && a["body"]["Bandwidth"]["iface"] == "lo"),
        "bandwidth alerts: {alerts}"
    );
    let cfg = get(api, "/get_configini").json();
    assert!(
        cfg["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| n["name"] == "conns" && n["kind"] == "agent_connections"),
        "{cfg}"
    );
    assert!(get(api, "/get_topology")
        .error(503)
        .contains("no SDN controller agent"));
    assert!(get(api, "/get_link_stats")
        .error(503)
        .contains("no SDN controller agent"));

    // v1: paging follows `next` without gaps; limit is capped; bad parameters are 400.
    let p1 = get(api, "/api/v1/alerts?limit=5").json();
    let idx = |p: &Json| -> Vec<u64> {
        p["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .map(|a| a["index"].as_u64().expect("index"))
            .collect()
    };
    let first = idx(&p1);
    assert_eq!(first.len(), 5, "{p1}");
    assert_eq!(p1["next"].as_u64(), Some(first[4] + 1));
    let p2 = get(api, &format!("/api/v1/alerts?from={}&limit=5", p1["next"])).json();
    assert_eq!(
        idx(&p2),
        (first[4] + 1..first[4] + 6).collect::<Vec<_>>(),
        "the next page continues where the first ended"
    );
    assert!(
        p2["alerts"][0]["kind"].is_string() && p2["alerts"][0]["alert"]["origin"].is_string(),
        "{p2}"
    );
    let big = get(api, "/api/v1/alerts?limit=999999999").json();
    assert!(idx(&big).len() <= 1000, "limit is capped at 1000");
    assert!(get(api, "/api/v1/alerts?from=-3")
        .error(400)
        .contains("from"));
    let counters = get(api, "/api/v1/counters").json();
    assert!(
        counters["vo"]["alerts_processed"]
            .as_u64()
            .is_some_and(|n| n > 0)
            && counters["alerts_seen"].as_u64().is_some_and(|n| n > 0),
        "{counters}"
    );
    let topo = get(api, "/api/v1/topology").json();
    assert_eq!(topo["tree"]["name"], "VO");
    assert!(topo["config"]["machines"].is_array(), "{topo}");
    assert_eq!(
        get(api, "/api/v1/actions").json()["actions"],
        serde_json::json!([])
    );
    let policy = get(api, "/api/v1/policy").json();
    assert_eq!(
        (policy["loaded"].as_bool(), policy["dry_run"].as_bool()),
        (Some(true), Some(false)),
        "the embedded default rules: {policy}"
    );
    assert!(
        policy["rules"]
            .as_str()
            .is_some_and(|r| r.contains("conn-flood")),
        "{policy}"
    );

    // Mutations: token first, then the body, then the policy (live: the embedded rules).
    let block = r#"{"target": "10.0.0.9", "ttl_s": 60}"#;
    assert!(post(api, "/api/v1/block", None, block)
        .error(401)
        .contains("Authorization: Bearer"));
    let wrong = post(api, "/api/v1/block", Some("not-the-token-at-all"), block);
    assert_eq!(
        wrong.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"vespa\"")
    );
    assert!(wrong.error(401).contains("wrong API token"));
    // This tree has no SDN agent: the block is accepted and listed, its request fails later.
    let r = post(api, "/api/v1/block", Some(TOKEN), block);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["key"], "10.0.0.9");
    let actions = get(api, "/api/v1/actions").json();
    assert!(
        actions["actions"].as_array().is_some_and(|a| a
            .iter()
            .any(|x| x["key"] == "10.0.0.9" && x["action"] == "block")),
        "{actions}"
    );
    let r = post(
        api,
        "/api/v1/release",
        Some(TOKEN),
        r#"{"target": "10.0.0.9"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["result"]
            .as_str()
            .is_some_and(|t| t.contains("release_hackers 10.0.0.9")),
        "{}",
        r.body
    );
    assert!(post(
        api,
        "/api/v1/release",
        Some(TOKEN),
        r#"{"target": "10.0.0.9"}"#
    )
    .error(404)
    .contains("nothing is held"));
    assert_eq!(
        post(api, "/api/v1/dry-run", Some(TOKEN), r#"{"enabled": true}"#).json()["dry_run"],
        true
    );
    assert_eq!(get(api, "/api/v1/actions").json()["dry_run"], true);
    assert_eq!(
        post(api, "/api/v1/dry-run", Some(TOKEN), r#"{"enabled": false}"#).json()["dry_run"],
        false
    );
    assert!(
        post(api, "/api/v1/policy/reload", Some(TOKEN), "[rules]\n")
            .error(400)
            .contains("rules"),
        "bad rules are refused"
    );
    let rules = policy["rules"].as_str().expect("rules").to_string();
    assert_eq!(
        post(
            api,
            "/api/v1/policy/reload",
            Some(TOKEN),
            &rules.replace("above = 100", "above = 120")
        )
        .json()["reloaded"],
        true
    );
    assert!(get(api, "/api/v1/policy").json()["rules"]
        .as_str()
        .is_some_and(|r| r.contains("above = 120")));
    let bad = post(
        api,
        "/api/v1/block",
        Some(TOKEN),
        r#"{"target": "10.0.0.9", "ttl_s": "soon"}"#,
    )
    .error(400);
    assert!(
        bad.contains("invalid JSON body") && bad.contains("invalid type: string \"soon\""),
        "{bad}"
    );
    assert!(post(
        api,
        "/api/v1/block",
        Some(TOKEN),
        r#"{"target": "10.0.0.9"}"#
    )
    .error(400)
    .contains("missing field `ttl_s`"));
    assert!(
        post(api, "/api/v1/release", Some(TOKEN), r#"{"target": 1, "#)
            .error(400)
            .contains("invalid JSON body")
    );
    assert!(post(
        api,
        "/api/v1/dry-run",
        Some(TOKEN),
        r#"{"enabled": true, "force": 1}"#
    )
    .error(400)
    .contains("unknown field `force`"));
    assert!(post(
        api,
        "/api/v1/block",
        Some(TOKEN),
        r#"{"target": "10.0.0.9", "ttl_s": 0}"#
    )
    .error(400)
    .contains("ttl_s"));
    let huge = format!("{{\"target\": \"{}\"}}", "x".repeat(100_000));
    assert!(post(api, "/api/v1/release", Some(TOKEN), &huge)
        .error(413)
        .contains("larger than"));
    assert!(
        post(api, "/api/v1/release", None, &huge)
            .error(401)
            .contains("Bearer"),
        "the token is checked before the body is read"
    );

    // Unknown routes and wrong methods: JSON too.
    assert!(get(api, "/api/v2/alerts")
        .error(404)
        .contains("no such endpoint"));
    assert!(get(api, "/no/such/thing").error(404).contains("/api/v1/"));
    assert!(get(api, "/api/v1/block")
        .error(405)
        .contains("method not allowed"));
    assert!(post(api, "/archi", None, "")
        .error(405)
        .contains("method not allowed"));

    // /metrics parses, with the VO's counters and observations of kernel_to_vo.
    let m = get(api, "/metrics");
    assert_eq!(m.status, 200);
    let scrape = Scrape::parse(m.body.lines().map(|l| Ok(l.to_string()))).expect("/metrics parses");
    let counter = |name: &str, label: (&str, &str)| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .and_then(|s| match s.value {
                // OpenMetrics names the family without `_total`, so the parser sees the samples untyped.
                Value::Counter(v) | Value::Untyped(v) => Some(v),
                _ => None,
            })
    };
    assert!(
        counter("vespa_node_alerts_processed_total", ("node", "VO")).is_some_and(|v| v > 0.0),
        "{}",
        m.body
    );
    assert!(
        counter("vespa_vo_alerts_total", ("kind", "bandwidth")).is_some_and(|v| v > 0.0),
        "{}",
        m.body
    );
    let observed = |stage: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "vespa_closed_loop_seconds" && s.labels.get("stage") == Some(stage)
            })
            .map(|s| match &s.value {
                Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
                other => panic!("vespa_closed_loop_seconds is a histogram, got {other:?}"),
            })
    };
    assert!(
        observed("kernel_to_vo").is_some_and(|n| n > 0.0),
        "kernel_to_vo observed: {}",
        m.body
    );
    assert!(
        observed("vo_to_actuator_ack").is_some(),
        "the actuator stage exists (the manual block's failed request may or may not be in yet)"
    );
}

#[test]
fn without_a_token_mutations_are_disabled_and_http_off_serves_nothing() {
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let tree = Tree::new("http-notoken", "", &[("host", lo)], &[N::root("VO", "vo")]);
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let api_s = api.to_string();
    let vo = tree.spawn_with(
        "vo",
        "vespa-orchestrator",
        None,
        &[],
        &["VO"],
        &["--http", &api_s],
    );
    wait_api(api, &vo);
    let e = post(api, "/api/v1/dry-run", Some(TOKEN), r#"{"enabled": false}"#).error(503);
    assert!(
        e.contains("no API token configured") && e.contains("--api-token-file"),
        "{e}"
    );
    assert_eq!(
        get(api, "/recv_bytes").json(),
        serde_json::json!([]),
        "no samples yet: an empty series"
    );
    assert_eq!(get(api, "/next_recv_bytes").json(), Json::Null);
    assert_eq!(get(api, "/archi").json()["children"], serde_json::json!([]));

    // --http off (the kit's default for the other tests): the VO runs and serves no API.
    let tree2 = Tree::new("http-off", "", &[("host", lo)], &[N::root("VO", "vo")]);
    let vo2 = tree2.spawn("vo", "vespa-orchestrator", None, &[], &["VO"]);
    wait_until("the second VO", WAIT, || tree2.call("VO", "help", &[]).ok());
    let listening = |p: &Proc| {
        p.log_lines()
            .iter()
            .any(|l| l["fields"]["message"] == "HTTP API listening")
    };
    assert!(listening(&vo), "{}", vo.log_text());
    assert!(!listening(&vo2), "{}", vo2.log_text());
}

#[test]
fn sdn_topology_and_link_stats_come_from_the_controller_agent() {
    use vespa_tests::daemons::floodlight_stub::{Fault, FloodlightStub, DPID1};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let stub = rt.block_on(FloodlightStub::start());
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let fl_params = format!(
        "[node.params]\nurl = \"{}\"\ndefault_ttl_s = \"none\"\n",
        stub.url()
    );
    let nodes = [
        N::root("VO", "vo"),
        N::child("HO_PH", "ho_ph", "VO"),
        N::child("fl", "agent_controller_floodlight", "HO_PH").extra(fl_params),
    ];
    let tree = Tree::new(
        "http-sdn",
        "heartbeat_ms = 300\nsample_interval_ms = 0",
        &[("host", lo)],
        &nodes,
    );
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let api_s = api.to_string();
    let vo = tree.spawn_with(
        "vo",
        "vespa-orchestrator",
        None,
        &[],
        &["VO", "HO_PH"],
        &["--http", &api_s],
    );
    let _agent = tree.spawn("agent", "vespa-agent", None, &[], &["fl"]);
    wait_api(api, &vo);

    // Polls until fl has registered (until then the call fails: 502).
    let topo = wait_until("fl's topology at /get_topology", WAIT, || {
        let r = get(api, "/get_topology");
        (r.status == 200).then_some(r)
    });
    assert_eq!(topo.header("access-control-allow-origin"), None);
    assert!(
        topo.body.contains(DPID1),
        "the controller's switches: {}",
        topo.body
    );
    let stats = get(api, "/get_link_stats");
    assert_eq!(stats.status, 200, "{}", stats.body);
    let _ = stats.json();
    assert!(
        stub.take_requests()
            .iter()
            .any(|r| r.path == "/wm/topology/links/json"),
        "asked the controller itself"
    );

    // The controller failing: a 502 naming the agent and the controller's status.
    stub.set_fault(Fault::Status(500));
    let e = get(api, "/get_topology").error(502);
    assert!(e.starts_with("fl: ") && e.contains("500"), "{e}");
}

#[test]
fn the_server_cuts_slow_loris_and_idle_floods_and_checks_host_and_origin() {
    const IDLE: usize = 2000;
    // 2,000 connections on lo: no other test's connections agent may count them meanwhile.
    let _loopback = LOOPBACK.take();
    // This process holds the idle clients' ends.
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("RLIMIT_NOFILE");
    let want = IDLE as u64 + 1024;
    if soft < want {
        assert!(
            hard >= want,
            "this test needs {want} open files; the hard limit is {hard}"
        );
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, want, hard)
            .expect("raising RLIMIT_NOFILE");
    }
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let tree = Tree::new(
        "http-limits",
        "",
        &[("host", lo)],
        &[N {
            name: "VO",
            kind: "vo",
            machine: "host",
            master: None,
            port: free_port(),
            extra: String::new(),
        }],
    );
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let api_s = api.to_string();
    let mut vo = tree.spawn_with(
        "vo",
        "vespa-orchestrator",
        None,
        &[],
        &["VO"],
        &[
            "--http",
            &api_s,
            "--http-header-timeout",
            "1",
            "--cors-origin",
            "https://dash.example",
            "--http-host",
            "vespa.example.org",
        ],
    );
    wait_api(api, &vo);
    // The open-file limit a service gets by default (systemd: 1024): what 2,000 idle
    // connections would exhaust if the server kept them all.
    let prlimit = std::process::Command::new("prlimit")
        .args(["--pid", &vo.pid().to_string(), "--nofile=1024:1024"])
        .status()
        .expect("prlimit");
    assert!(prlimit.success(), "prlimit: {prlimit}");

    // Host: the listen address, localhost (loopback) and the name given pass; others, 421.
    let with = |headers: String| request_with(api, "GET", "/api/v1/counters", None, &headers, b"");
    assert_eq!(with(format!("Host: {api}\r\n")).status, 200);
    assert_eq!(
        with(format!("Host: localhost:{}\r\n", api.port())).status,
        200
    );
    assert_eq!(with("Host: vespa.example.org\r\n".into()).status, 200);
    let e = with("Host: evil.example\r\n".into()).error(421);
    assert!(
        e.contains("evil.example") && e.contains("--http-host"),
        "{e}"
    );

    // CORS: the origin given gets itself back; another gets nothing.
    let origin = |o: &str| {
        request_with(
            api,
            "GET",
            "/get_alerts",
            None,
            &format!("Host: {api}\r\nOrigin: {o}\r\n"),
            b"",
        )
    };
    let r = origin("https://dash.example");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://dash.example"),
        "{}",
        r.head
    );
    assert_eq!(
        origin("http://evil.example").header("access-control-allow-origin"),
        None
    );

    // Slow-loris: a byte of the head every 100 ms; the server hangs up at its header timeout.
    let start = std::time::Instant::now();
    let mut loris = TcpStream::connect(api).expect("connect");
    loris
        .write_all(format!("GET /api/v1/counters HTTP/1.1\r\nHost: {api}\r\nX-Slow: ").as_bytes())
        .expect("the first part of the head");
    loris
        .set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .expect("read timeout");
    let mut trickled = 0;
    let mut buf = [0u8; 1024];
    let cut_after = loop {
        assert!(
            start.elapsed() < WAIT,
            "the server still waits for the head after {trickled} bytes"
        );
        match loris.read(&mut buf) {
            Ok(0) => break start.elapsed(),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if loris.write_all(b"a").is_err() {
                    break start.elapsed();
                }
                trickled += 1;
            }
            Err(_) => break start.elapsed(),
        }
    };
    assert!(
        trickled >= 5 && cut_after < std::time::Duration::from_millis(2500),
        "--http-header-timeout 1: cut after {cut_after:?}, {trickled} bytes trickled"
    );

    // 2,000 idle connections, then an operator's request: answered, and the server has
    // closed the connections idle longest to stay within its limit (256 by default).
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect_timeout(&api, WAIT).expect("an idle connection"))
        .collect();
    let r = get(api, "/api/v1/counters");
    assert_eq!(r.status, 200, "{}", r.body);
    for s in &idle {
        s.set_nonblocking(true).expect("nonblocking");
    }
    let mut closed = vec![false; IDLE];
    wait_until("the idle connections beyond the limit closed", WAIT, || {
        for (c, mut s) in closed.iter_mut().zip(&idle) {
            if !*c {
                let mut b = [0u8; 64];
                *c = match s.read(&mut b) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
            }
        }
        vespa_testkit::at_least(closed.iter().filter(|c| **c).count(), IDLE - 256)
    });
    assert!(closed[0], "the first idle connection was closed first");
    assert!(vo.exited().is_none(), "{}", vo.log_text());
}
