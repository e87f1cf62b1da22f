//! A Floodlight REST stand-in (Floodlight itself needs Java 8 and Maven Central, unavailable
//! here). It reproduces the request and reply shapes read from Floodlight's source (see
//! external-interfaces.md): the static flow pusher at its v1.x and v0.90 paths, the firewall
//! rules resource, the switch and link lists, per-switch statistics. The pusher's list answers
//! in each version's serialized form (v1.x: `SFPEntryMapSerializer` over `OFFlowModSerializer`;
//! v0.90: the `OFFlowMod` bean), not as the entries were pushed. Every request is
//! recorded (method, path, parsed JSON body) so tests can assert exactly what was sent, and a
//! fault can be injected (an HTTP status, or a body that is not JSON).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// One request as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The body parsed as JSON (`Value::String` with the raw text if it is not JSON).
    pub body: Option<Value>,
}

/// What the stub answers instead of the normal reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// This HTTP status with a short HTML body (Restlet's style).
    Status(u16),
    /// 200 with a body that is not JSON.
    Garbage,
}

pub const DPID1: &str = "00:00:00:00:00:00:00:01";
pub const DPID2: &str = "00:00:00:00:00:00:00:02";

#[derive(Debug)]
struct Inner {
    requests: Vec<Request>,
    /// When each request arrived (Unix ns), in step with `requests`.
    received_ns: Vec<u64>,
    flows: BTreeMap<String, Value>,
    rules: BTreeMap<u32, Value>,
    next_rule: u32,
    fault: Fault,
}

/// The stub server, stopped on drop.
pub struct FloodlightStub {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FloodlightStub {
    /// Serves on 127.0.0.1 (a free port) from the current tokio runtime.
    pub async fn start() -> FloodlightStub {
        let inner = Arc::new(Mutex::new(Inner {
            requests: Vec::new(),
            received_ns: Vec::new(),
            flows: BTreeMap::new(),
            rules: BTreeMap::new(),
            next_rule: 1,
            fault: Fault::None,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Floodlight stub");
        let addr = listener.local_addr().expect("stub address");
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        FloodlightStub {
            addr,
            inner,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("stub state")
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// The requests so far, forgetting them.
    pub fn take_requests(&self) -> Vec<Request> {
        let mut s = self.lock();
        s.received_ns.clear();
        std::mem::take(&mut s.requests)
    }

    /// Every request so far with when it arrived (Unix ns), in order.
    pub fn requests_timed(&self) -> Vec<(u64, Request)> {
        let s = self.lock();
        s.received_ns
            .iter()
            .copied()
            .zip(s.requests.iter().cloned())
            .collect()
    }

    pub fn set_fault(&self, f: Fault) {
        self.lock().fault = f;
    }

    /// The static flow entries held, by name.
    pub fn flows(&self) -> BTreeMap<String, Value> {
        self.lock().flows.clone()
    }

    /// The firewall rules held, by id.
    pub fn rules(&self) -> BTreeMap<u32, Value> {
        self.lock().rules.clone()
    }
}

impl Drop for FloodlightStub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    reply(StatusCode::OK, body)
}

fn status(text: &str) -> Response {
    ok(json!({ "status": text }))
}

const PUSHERS: [&str; 2] = [
    "/wm/staticflowpusher/json",
    "/wm/staticflowentrypusher/json",
];

async fn handle(
    State(st): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let parsed = (!body.is_empty()).then(|| {
        serde_json::from_slice::<Value>(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    });
    let mut s = st.lock().expect("stub state");
    s.requests.push(Request {
        method: method.to_string(),
        path: path.clone(),
        body: parsed.clone(),
    });
    s.received_ns.push(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    match s.fault {
        Fault::None => {}
        Fault::Status(code) => {
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (
                code,
                [("content-type", "text/html")],
                format!("<html><body>{code}</body></html>"),
            )
                .into_response();
        }
        Fault::Garbage => {
            return (
                StatusCode::OK,
                [("content-type", "application/json")],
                "<html>this is not JSON",
            )
                .into_response()
        }
    }
    let obj = parsed.as_ref().and_then(Value::as_object).cloned();
    match (method.as_str(), path.as_str()) {
        ("GET", "/wm/core/controller/switches/json") => ok(json!([
            { "switchDPID": DPID1, "inetAddress": "/127.0.0.1:50001", "connectedSince": 1700000000000u64, "openFlowVersion": "OF_13" },
            { "switchDPID": DPID2, "inetAddress": "/127.0.0.1:50002", "connectedSince": 1700000000001u64, "openFlowVersion": "OF_13" },
        ])),
        ("GET", "/wm/topology/links/json") => ok(json!([
            { "src-switch": DPID1, "src-port": 3, "dst-switch": DPID2, "dst-port": 3, "type": "internal", "direction": "bidirectional", "latency": 2 },
        ])),
        ("GET", "/wm/core/switch/all/flow/json") => {
            let flows: Vec<Value> = s.flows.values().cloned().collect();
            ok(json!({ DPID1: { "flows": flows }, DPID2: { "flows": [] } }))
        }
        ("GET", "/wm/core/switch/all/port/json") => ok(json!({
            DPID1: { "port_reply": [{ "port": [{ "port_number": "3", "receive_packets": "10", "transmit_packets": "12" }] }] },
            DPID2: { "port_reply": [{ "port": [{ "port_number": "3", "receive_packets": "12", "transmit_packets": "10" }] }] },
        })),
        ("POST", p) if PUSHERS.contains(&p) => {
            let Some(o) = obj else {
                return status("Error! Could not parse flow mod, see log for details.");
            };
            if !o.contains_key("switch") {
                return status("Must specify switch DPID in flow");
            }
            let Some(name) = o.get("name").and_then(Value::as_str).map(str::to_string) else {
                return status("Must specify name in flow");
            };
            s.flows.insert(name, Value::Object(o));
            status("Entry pushed")
        }
        ("DELETE", p) if PUSHERS.contains(&p) => {
            let Some(name) = obj
                .as_ref()
                .and_then(|o| o.get("name"))
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                return status("Error! Could not parse flow mod, see log for details.");
            };
            s.flows.remove(&name);
            status(&format!("Entry {name} deleted"))
        }
        ("GET", "/wm/staticflowpusher/list/all/json") => {
            // SFPEntryMapSerializer: each switch's entries as a list of one-key objects.
            let mut by_switch: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for (name, f) in &s.flows {
                by_switch
                    .entry(switch_of(f))
                    .or_default()
                    .push(json!({ name.clone(): listed_v1(f) }));
            }
            ok(json!(by_switch))
        }
        ("GET", "/wm/staticflowentrypusher/list/all/json") => {
            // v0.90: a map of name -> flow mod per switch.
            let mut by_switch: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
            for (name, f) in &s.flows {
                by_switch
                    .entry(switch_of(f))
                    .or_default()
                    .insert(name.clone(), listed_v090(f));
            }
            ok(json!(by_switch))
        }
        ("GET", "/wm/firewall/rules/json") => {
            let rules: Vec<Value> = s
                .rules
                .iter()
                .map(|(id, r)| json!({ "ruleid": id, "rule": r }))
                .collect();
            ok(json!(rules))
        }
        ("POST", "/wm/firewall/rules/json") => {
            let Some(o) = obj else {
                return status("Error! Could not parse firewall rule, see log for details.");
            };
            let rule = Value::Object(o);
            if s.rules.values().any(|r| *r == rule) {
                return status("Error! A similar firewall rule already exists.");
            }
            let id = s.next_rule;
            s.next_rule += 1;
            s.rules.insert(id, rule);
            ok(json!({ "status": "Rule added", "rule-id": id.to_string() }))
        }
        ("DELETE", "/wm/firewall/rules/json") => {
            let id = obj.as_ref().and_then(|o| o.get("ruleid")).and_then(|v| {
                v.as_str()
                    .map(str::to_string)
                    .or_else(|| v.as_u64().map(|n| n.to_string()))
            });
            match id.and_then(|i| i.parse::<u32>().ok()) {
                Some(id) if s.rules.remove(&id).is_some() => status("Rule deleted"),
                _ => status("Error! Can't delete, a rule with this ID doesn't exist."),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            [("content-type", "text/html")],
            "The server has not found anything matching the request URI",
        )
            .into_response(),
    }
}

fn switch_of(entry: &Value) -> String {
    entry
        .get("switch")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// A pushed entry as v1.x lists it (`OFFlowModSerializer` with `MatchSerializer`: numbers
/// written as strings, the match under its OXM names, no instructions for a drop).
fn listed_v1(entry: &Value) -> Value {
    let field = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or("0");
    let mut m = serde_json::Map::new();
    for k in [
        "in_port", "eth_src", "eth_dst", "eth_type", "ipv4_src", "ipv4_dst", "ipv6_src",
        "ipv6_dst", "ip_proto", "tcp_src", "tcp_dst",
    ] {
        if let Some(v) = entry.get(k) {
            m.insert(k.into(), v.clone());
        }
    }
    json!({
        "version": "OF_13",
        "command": "ADD",
        "cookie": field("cookie"),
        "priority": field("priority"),
        "idleTimeoutSec": field("idle_timeout"),
        "hardTimeoutSec": field("hard_timeout"),
        "outPort": "any",
        "flags": "1",
        "cookieMask": "0",
        "outGroup": "any",
        "match": m,
        "instructions": { "none": "drop" },
    })
}

/// A pushed entry as v0.90 lists it (the OpenFlow 1.0 `OFFlowMod` bean: numbers as numbers,
/// every match field present, the wildcarded ones zero).
fn listed_v090(entry: &Value) -> Value {
    let field = |k: &str| entry.get(k).and_then(Value::as_str);
    let num = |k: &str| field(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    json!({
        "cookie": num("cookie"),
        "priority": num("priority"),
        "idleTimeout": 0,
        "hardTimeout": 0,
        "command": 0,
        "actions": [],
        "match": {
            "dataLayerSource": field("src-mac").unwrap_or("00:00:00:00:00:00"),
            "dataLayerDestination": field("dst-mac").unwrap_or("00:00:00:00:00:00"),
            "dataLayerType": field("ether-type").unwrap_or("0x0000"),
            "networkSource": field("src-ip").unwrap_or("0.0.0.0"),
            "networkDestination": field("dst-ip").unwrap_or("0.0.0.0"),
            "inputPort": 0,
            "wildcards": 3678458,
        },
    })
}
