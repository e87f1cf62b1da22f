//! The API in-process, in front of a recording [`PolicyControl`]: authorised mutations reach
//! the policy with what the request said, and each [`PolicyError`] maps to its status.
//! (The binaries' test, `http::api` in `tests/tests/e2e`, covers the tree and the no-policy
//! case.)

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vespa_node::{Hooks, Node, NodeSpec, Role, Security, Topology};
use vespa_orchestrator::control::{ActiveAction, PolicyControl, PolicyError};
use vespa_orchestrator::http::{self, ApiParts, ApiToken, VoView};
use vespa_orchestrator::metrics::Metrics;
use vespa_proto::{Alert, AlertBody};

const TOKEN: &str = "in-process-token-0123456789";

/// Records every call; a few targets make it fail in each possible way.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    dry_run: Mutex<bool>,
}

impl Recorder {
    fn log(&self, s: String) {
        self.calls.lock().expect("lock").push(s);
    }
}

impl PolicyControl for Recorder {
    fn active_actions(&self) -> Vec<ActiveAction> {
        vec![ActiveAction {
            key: "block:10.0.0.9".into(),
            action: "block".into(),
            target: "10.0.0.9".into(),
            actuator: "sdn".into(),
            since_unix_s: 1,
            expires_unix_s: Some(61),
            dry_run: false,
            at: None,
            decision: None,
            verification: None,
        }]
    }
    fn rules_text(&self) -> Option<String> {
        Some("[[rule]]\nname = \"ddos\"\n".into())
    }
    fn dry_run(&self) -> bool {
        *self.dry_run.lock().expect("lock")
    }
    fn set_dry_run(&self, enabled: bool) -> Result<(), PolicyError> {
        *self.dry_run.lock().expect("lock") = enabled;
        self.log(format!("dry_run {enabled}"));
        Ok(())
    }
    fn reload(&self, text: &str) -> Result<(), PolicyError> {
        if text.contains("broken") {
            return Err(PolicyError::Invalid("line 1: expected a table".into()));
        }
        self.log(format!("reload {text}"));
        Ok(())
    }
    fn release(&self, key: &str) -> Result<String, PolicyError> {
        if key == "nothing" {
            return Err(PolicyError::NotFound(format!("no active action {key:?}")));
        }
        self.log(format!("release {key}"));
        Ok("flows removed".into())
    }
    fn block(&self, target: &str, ttl_s: u64) -> Result<String, PolicyError> {
        match target {
            "ff:ff:ff:ff:ff:ff" => Err(PolicyError::Invalid(format!(
                "{target:?} is not an address to block"
            ))),
            "10.6.6.6" => Err(PolicyError::ActuatorFailed("controller unreachable".into())),
            _ => {
                self.log(format!("block {target} {ttl_s}"));
                Ok(format!("block:{target}"))
            }
        }
    }
}

async fn start(policy: Arc<Recorder>) -> SocketAddr {
    let token = Some(ApiToken::new(TOKEN).expect("token"));
    common::serve(ApiParts::new(&Topology::embedded_default(), token).with_policy(policy)).await
}

/// (status, body) of one request.
async fn req(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    req_bytes(addr, method, path, body.as_bytes()).await
}

async fn req_bytes(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let (h, b) = out.split_once("\r\n\r\n").expect("HTTP response");
    (
        h.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status"),
        b.to_string(),
    )
}

#[tokio::test]
async fn mutations_reach_the_policy_and_its_errors_map_to_statuses() {
    let policy = Arc::new(Recorder::default());
    let addr = start(policy.clone()).await;

    assert_eq!(
        req(
            addr,
            "POST",
            "/api/v1/block",
            r#"{"target": "10.0.0.9", "ttl_s": 60}"#
        )
        .await,
        (
            200,
            r#"{"blocked":"10.0.0.9","key":"block:10.0.0.9","ttl_s":60}"#.into()
        )
    );
    assert_eq!(
        req(
            addr,
            "POST",
            "/api/v1/release",
            r#"{"target": "block:10.0.0.9"}"#
        )
        .await,
        (
            200,
            r#"{"released":"block:10.0.0.9","result":"flows removed"}"#.into()
        )
    );
    assert_eq!(
        req(addr, "POST", "/api/v1/dry-run", r#"{"enabled": true}"#).await,
        (200, r#"{"dry_run":true}"#.into())
    );
    assert_eq!(
        req(addr, "POST", "/api/v1/policy/reload", "[[rule]]\n").await,
        (200, r#"{"reloaded":true}"#.into())
    );
    assert_eq!(
        *policy.calls.lock().expect("lock"),
        [
            "block 10.0.0.9 60",
            "release block:10.0.0.9",
            "dry_run true",
            "reload [[rule]]\n"
        ]
    );

    let (status, body) = req(addr, "GET", "/api/v1/policy", "").await;
    assert_eq!(status, 200);
    let p: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (p["loaded"].as_bool(), p["dry_run"].as_bool()),
        (Some(true), Some(true)),
        "{p}"
    );
    assert!(p["rules"].as_str().is_some_and(|r| r.contains("ddos")));
    let (_, body) = req(addr, "GET", "/api/v1/actions", "").await;
    let a: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(a["actions"][0]["key"], "block:10.0.0.9", "{a}");

    let err = |code: u16, needle: &'static str| {
        move |(s, b): (u16, String)| {
            assert!(
                s == code && b.contains(needle) && b.starts_with("{\"error\":"),
                "expected {code} with {needle:?}, got {s} {b}"
            )
        }
    };
    err(400, "not an address to block")(
        req(
            addr,
            "POST",
            "/api/v1/block",
            r#"{"target": "ff:ff:ff:ff:ff:ff", "ttl_s": 5}"#,
        )
        .await,
    );
    // A target that is none is refused before the policy is asked.
    err(400, "invalid block target")(
        req(
            addr,
            "POST",
            "/api/v1/block",
            r#"{"target": "not-an-ip", "ttl_s": 5}"#,
        )
        .await,
    );
    err(502, "controller unreachable")(
        req(
            addr,
            "POST",
            "/api/v1/block",
            r#"{"target": "10.6.6.6", "ttl_s": 5}"#,
        )
        .await,
    );
    err(404, "no active action")(
        req(addr, "POST", "/api/v1/release", r#"{"target": "nothing"}"#).await,
    );
    err(400, "expected a table")(req(addr, "POST", "/api/v1/policy/reload", "broken").await);
    err(400, "UTF-8")(
        req_bytes(
            addr,
            "POST",
            "/api/v1/policy/reload",
            b"rules = \"\xff\xfe\"",
        )
        .await,
    );
}

#[tokio::test]
async fn alerts_feed_the_view_and_the_actuator_stage_is_observable() {
    let metrics = Arc::new(Metrics::default());
    let view = VoView::new(10, metrics.clone());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    for seq in 0..3u64 {
        view.on_alert(&Alert {
            origin: "bw".into(),
            seq,
            path: vec!["bw".into(), "VO".into()],
            timestamp_ns: now,
            body: AlertBody::Bandwidth {
                iface: "eth0".into(),
                rx_bytes: seq * 10,
                tx_bytes: seq,
                vm: None,
            },
        });
    }
    metrics.observe_actuator_ack(0.25);
    let vo = Node::new(
        NodeSpec::new(
            "VO",
            Role::Vo,
            None,
            Security::Psk(vespa_proto::Psk::random()),
        ),
        Hooks::default(),
    )
    .expect("VO");
    let text = vespa_orchestrator::metrics::render(&metrics.registry(vo.handle()));
    assert!(
        text.contains("vespa_closed_loop_seconds_count{stage=\"kernel_to_vo\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("vespa_closed_loop_seconds_count{stage=\"vo_to_actuator_ack\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("vespa_vo_alerts_total{kind=\"bandwidth\"} 3"),
        "{text}"
    );
    assert_eq!(
        view.deltas(None, Some("eth0"), http::view::Direction::Rx),
        Some(vec![10, 10])
    );
}
