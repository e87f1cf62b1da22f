//! `/api/v1/decisions` and `/api/v1/allowlist` in-process, in front of a policy that keeps
//! books ([`Ledger`]), spoken to with the command line's own HTTP client: blocks added one at
//! a time, as JSON lists and as text lists; listed as JSON and as text; deleted by key and by
//! target (prefixes unescaped); imports that are refused whole, bad lines named, and a
//! refusal half-way that takes back what the import had placed; the allowlist.

mod common;
#[path = "common/ledger.rs"]
mod ledger;

use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use ledger::{Ledger, FAILING};
use serde_json::Value;
use vespa_node::Topology;
use vespa_orchestrator::client::{Api, ApiFailure};
use vespa_orchestrator::http::{ApiParts, ApiToken};

const TOKEN: &str = "in-process-token-0123456789";

/// The API over `ledger`: a client with the token and one without.
async fn start(ledger: Arc<Ledger>) -> (Api, Api) {
    let token = ApiToken::new(TOKEN).expect("token");
    let parts =
        ApiParts::new(&Topology::embedded_default(), Some(token.clone())).with_policy(ledger);
    let addr = common::serve(parts).await;
    let url = format!("http://{addr}");
    let t = Duration::from_secs(10);
    (
        Api::new(&url, Some(token), t).expect("api"),
        Api::new(&url, None, t).expect("api"),
    )
}

async fn send(
    api: &Api,
    method: Method,
    path: &str,
    body: Option<(&str, &str)>,
) -> Result<Value, ApiFailure> {
    let body = body.map(|(t, b)| (t, b.as_bytes().to_vec()));
    let bytes = api.send(method, path, body).await?;
    Ok(serde_json::from_slice(&bytes).expect("a JSON answer"))
}

fn json(body: &str) -> Option<(&str, &str)> {
    Some(("application/json", body))
}

fn text(body: &str) -> Option<(&str, &str)> {
    Some(("text/plain", body))
}

/// The failure of a request that must fail: its status, and its message must hold `needle`.
fn refused(r: Result<Value, ApiFailure>, status: u16, needle: &str) -> String {
    match r {
        Err(f) => {
            assert!(
                f.status == status && f.message.contains(needle),
                "expected {status} with {needle:?}, got {f:?}"
            );
            f.message
        }
        Ok(v) => panic!("expected {status} with {needle:?}, got 200 {v}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_added_listed_and_deleted_through_the_api() {
    let ledger = Arc::new(Ledger::default());
    let (api, anonymous) = start(ledger.clone()).await;
    let path = "/api/v1/decisions";

    let one = send(
        &api,
        Method::POST,
        path,
        json(r#"{"target": "10.0.0.9", "ttl_s": 60, "reason": "scan"}"#),
    )
    .await;
    assert_eq!(
        one.expect("one"),
        serde_json::json!({"added": ["10.0.0.9"], "duplicates": 0})
    );
    assert_eq!(ledger.ttl_of("10.0.0.9"), Some(60));
    // Recorded as the token's id, never the token.
    let who = ledger.who();
    assert!(
        who.len() == 1 && who[0].starts_with("block 10.0.0.9 by token:") && who[0].len() == 36,
        "{who:?}"
    );

    let list =
        r#"[{"target": "10.0.0.5/24"}, "2001:db8::/64", {"target": "10.0.0.9", "ttl_s": 120}]"#;
    let many = send(&api, Method::POST, path, json(list))
        .await
        .expect("a list");
    assert_eq!(
        many["added"],
        serde_json::json!(["10.0.0.0/24", "2001:db8::/64", "10.0.0.9"])
    );
    assert_eq!(ledger.ttl_of("10.0.0.0/24"), Some(600), "the default TTL");
    assert_eq!(
        ledger.ttl_of("10.0.0.9"),
        Some(120),
        "blocked again, for longer"
    );

    // A text list, its TTL in the query; a target twice counts once.
    let feed = "# feed\n198.51.100.7   # ssh\n\n198.51.100.7\n";
    let t = send(&api, Method::POST, "/api/v1/decisions?ttl_s=30", text(feed))
        .await
        .expect("text");
    assert_eq!(
        t,
        serde_json::json!({"added": ["198.51.100.7"], "duplicates": 1})
    );
    assert_eq!(ledger.ttl_of("198.51.100.7"), Some(30));
    // Without a content type, the text is recognised.
    let bare = api
        .send(
            Method::POST,
            path,
            Some(("application/octet-stream", b"203.0.113.8\n".to_vec())),
        )
        .await;
    assert!(bare.is_ok(), "{bare:?}");

    let listed = send(&anonymous, Method::GET, path, None)
        .await
        .expect("reads need no token");
    let targets: Vec<&str> = listed["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| a["target"].as_str().expect("target"))
        .collect();
    assert_eq!(targets.len(), 5, "{listed}");
    assert_eq!(listed["unreachable"], serde_json::json!([]));
    assert_eq!(
        send(&api, Method::GET, "/api/v1/actions", None)
            .await
            .expect("alias"),
        listed
    );
    let as_text = anonymous
        .send(Method::GET, "/api/v1/decisions?format=text", None)
        .await
        .expect("text");
    let as_text = String::from_utf8(as_text.to_vec()).expect("utf-8");
    let lines: Vec<&str> = as_text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 5, "{as_text}");
    assert!(lines.contains(&"2001:db8::/64"), "{as_text}");
    refused(
        send(&api, Method::GET, "/api/v1/decisions?format=xml", None).await,
        400,
        "expected json or text",
    );

    // Deleting: a prefix as it is in the path, or escaped; an address; something unknown.
    let d = send(&api, Method::DELETE, "/api/v1/decisions/10.0.0.0/24", None)
        .await
        .expect("delete");
    assert_eq!(
        d,
        serde_json::json!({"deleted": "10.0.0.0/24", "result": "fw release_hackers 10.0.0.0/24"})
    );
    send(
        &api,
        Method::DELETE,
        "/api/v1/decisions/2001:db8::%2F64",
        None,
    )
    .await
    .expect("escaped");
    refused(
        send(
            &api,
            Method::DELETE,
            "/api/v1/decisions/10.0.0.77%2F24",
            None,
        )
        .await,
        404,
        "nothing is held against 10.0.0.0/24",
    );
    send(&api, Method::DELETE, "/api/v1/decisions/10.0.0.9", None)
        .await
        .expect("delete");
    assert_eq!(ledger.blocked(), ["198.51.100.7", "203.0.113.8"]);

    // Without the token nothing changes.
    let before = ledger.log();
    refused(
        send(
            &anonymous,
            Method::POST,
            path,
            json(r#"{"target": "10.0.0.1"}"#),
        )
        .await,
        401,
        "Bearer",
    );
    refused(
        send(
            &anonymous,
            Method::DELETE,
            "/api/v1/decisions/198.51.100.7",
            None,
        )
        .await,
        401,
        "Bearer",
    );
    refused(
        send(
            &anonymous,
            Method::POST,
            "/api/v1/allowlist",
            json(r#"{"target": "10.0.0.1"}"#),
        )
        .await,
        401,
        "Bearer",
    );
    assert_eq!(ledger.log(), before);

    // The endpoints of before are aliases of these.
    let b = send(
        &api,
        Method::POST,
        "/api/v1/block",
        json(r#"{"target": "10.0.0.77", "ttl_s": 5}"#),
    )
    .await;
    assert_eq!(
        b.expect("block"),
        serde_json::json!({"blocked": "10.0.0.77", "key": "10.0.0.77", "ttl_s": 5})
    );
    let r = send(
        &api,
        Method::POST,
        "/api/v1/release",
        json(r#"{"target": "10.0.0.77"}"#),
    )
    .await;
    assert_eq!(
        r.expect("release")["result"],
        "fw release_hackers 10.0.0.77"
    );
    refused(
        send(
            &api,
            Method::POST,
            "/api/v1/block",
            json(r#"{"target": "10.0.0.77", "ttl_s": 0}"#),
        )
        .await,
        400,
        "ttl_s must be between 1 and 86400",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_with_bad_entries_names_them_and_applies_nothing() {
    let ledger = Arc::new(Ledger::default());
    let (api, _) = start(ledger.clone()).await;
    let path = "/api/v1/decisions";

    let list = "10.0.0.1\nnot-an-address\n10.0.0.2 10.0.0.3\n10.0.0.0/40\n192.0.2.7  # our own\n10.0.0.4\n";
    let m = refused(
        send(&api, Method::POST, path, text(list)).await,
        400,
        "4 problems, nothing was applied",
    );
    for needle in [
        "line 2: invalid block target \"not-an-address\"",
        "line 3: one address, prefix or MAC address per line",
        "line 4: invalid prefix \"10.0.0.0/40\"",
        "line 5 (192.0.2.7): protected by the allowlist (192.0.2.0/24 from config: the tree's own machines)",
    ] {
        assert!(m.contains(needle), "{needle:?} in {m}");
    }
    let m = refused(
        send(&api, Method::POST, path, json(r#"[{"target": "10.0.0.1", "ttl_s": 0}, {"target": "10.0.0.2", "reason": "a\u0007b"}, {"target": "10.0.0.3", "ttl_s": 86401}]"#)).await,
        400,
        "3 problems",
    );
    assert!(
        m.contains("entry 1 (10.0.0.1): ttl_s must be between 1 and 86400 seconds (found 0)"),
        "{m}"
    );
    assert!(
        m.contains("entry 2 (10.0.0.2): reason contains control characters"),
        "{m}"
    );
    assert!(m.contains("entry 3 (10.0.0.3): ttl_s must be"), "{m}");
    refused(
        send(
            &api,
            Method::POST,
            path,
            json(r#"[{"target": "10.0.0.1", "ttl": 5}]"#),
        )
        .await,
        400,
        "entry 1: unknown field `ttl`",
    );
    refused(
        send(&api, Method::POST, path, json("[]")).await,
        400,
        "no entry to block",
    );
    refused(
        send(
            &api,
            Method::POST,
            "/api/v1/decisions?ttl_s=soon",
            text("10.0.0.1"),
        )
        .await,
        400,
        "not a whole number",
    );
    let huge = "#".repeat((1 << 20) + 1);
    refused(
        send(&api, Method::POST, path, text(&huge)).await,
        413,
        "larger than 1048576 bytes",
    );
    assert_eq!(
        ledger.log(),
        Vec::<String>::new(),
        "nothing reached the policy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_half_way_releases_what_the_request_had_placed() {
    let ledger = Arc::new(Ledger::default());
    let (api, _) = start(ledger.clone()).await;
    let path = "/api/v1/decisions";
    send(&api, Method::POST, path, text("10.0.0.1\n"))
        .await
        .expect("in force before");

    let list = format!("10.0.0.1\n10.0.0.2\n{FAILING}\n10.0.0.3\n");
    let m = refused(
        send(&api, Method::POST, path, text(&list)).await,
        502,
        "line 3 (10.6.6.6): controller unreachable; nothing was applied",
    );
    assert!(
        m.contains("1 were released again and 1 were in force before and stay"),
        "{m}"
    );
    assert_eq!(
        ledger.blocked(),
        ["10.0.0.1"],
        "10.0.0.2 taken back, 10.0.0.3 never placed"
    );
    let log = ledger.log();
    assert!(log.contains(&"release 10.0.0.2".to_string()), "{log:?}");
    assert!(!log.iter().any(|l| l.contains("10.0.0.3")), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_list_is_placed_whole() {
    let ledger = Arc::new(Ledger::default());
    let (api, _) = start(ledger.clone()).await;
    let list: String = (0..20_000u32)
        .map(|i| format!("10.{}.{}.{}\n", 100 + (i >> 16), (i >> 8) & 255, i & 255))
        .collect();
    let added = send(&api, Method::POST, "/api/v1/decisions", text(&list))
        .await
        .expect("20,000 entries");
    assert_eq!(added["added"].as_array().map(Vec::len), Some(20_000));
    assert_eq!(ledger.blocked().len(), 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allowlist_is_listed_extended_and_shrunk_through_the_api() {
    let ledger = Arc::new(Ledger::default());
    let (api, anonymous) = start(ledger.clone()).await;
    let path = "/api/v1/allowlist";
    let listed = send(&anonymous, Method::GET, path, None)
        .await
        .expect("list");
    assert_eq!(listed["allowlist"][0]["origin"], "config", "{listed}");

    let a = send(
        &api,
        Method::POST,
        path,
        json(r#"{"target": "203.0.113.9/24", "note": "partner"}"#),
    )
    .await;
    assert_eq!(
        a.expect("allow"),
        serde_json::json!({"allowed": "203.0.113.0/24"})
    );
    refused(
        send(&api, Method::POST, path, json(r#"{"target": "gateway"}"#)).await,
        400,
        "invalid block target \"gateway\"",
    );
    refused(
        send(
            &api,
            Method::POST,
            path,
            json(r#"{"target": "10.0.0.1", "why": "x"}"#),
        )
        .await,
        400,
        "unknown field `why`",
    );
    let m = refused(
        send(
            &api,
            Method::POST,
            "/api/v1/decisions",
            json(r#"{"target": "203.0.113.77"}"#),
        )
        .await,
        400,
        "protected by the allowlist",
    );
    assert!(m.contains("203.0.113.0/24 from operator: partner"), "{m}");

    let t = anonymous
        .send(Method::GET, "/api/v1/allowlist?format=text", None)
        .await
        .expect("text");
    assert_eq!(&t[..], b"192.0.2.0/24\n203.0.113.0/24\n");

    let d = send(
        &api,
        Method::DELETE,
        "/api/v1/allowlist/203.0.113.0/24",
        None,
    )
    .await;
    assert_eq!(
        d.expect("disallow"),
        serde_json::json!({"disallowed": "203.0.113.0/24"})
    );
    refused(
        send(&api, Method::DELETE, "/api/v1/allowlist/192.0.2.0/24", None).await,
        404,
        "protected by config and stays",
    );
    send(
        &api,
        Method::POST,
        "/api/v1/decisions",
        json(r#"{"target": "203.0.113.77"}"#),
    )
    .await
    .expect("no longer protected");
    assert_eq!(
        ledger.log(),
        [
            "allow 203.0.113.0/24 partner",
            "disallow 203.0.113.0/24",
            "block 203.0.113.77 600"
        ]
    );
}
