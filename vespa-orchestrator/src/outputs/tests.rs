//! The outputs against local receivers: a file, a UDP and a TCP syslog listener, an HTTP
//! receiver; a queue that overflows while its output is down; decisions fed directly and
//! through a broadcast.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vespa_proto::{Alert, AlertBody};
use vespa_testkit::wait_until_async;

use super::*;
use crate::metrics::OutputMetrics;

const WAIT: Duration = Duration::from_secs(10);

fn topology(outputs: &str) -> Topology {
    Topology::from_toml(
        "t.toml",
        &format!(
            r#"
[[machine]]
name = "h"
address = "127.0.0.1"

[[node]]
name = "VO"
kind = "vo"
location = "h"
port = 4150

[[node]]
name = "HO_PH"
kind = "ho_ph"
location = "h"
master = "VO"
port = 4151

[[node]]
name = "a1"
kind = "agent_bandwidth"
location = "h"
master = "HO_PH"
port = 4152
{outputs}"#
        ),
    )
    .expect("valid topology")
}

fn alert(origin: &str, seq: u64, body: AlertBody) -> Arc<Alert> {
    Arc::new(Alert {
        origin: origin.into(),
        seq,
        path: vec![origin.into(), "VO".into()],
        timestamp_ns: 1_700_000_000_000_000_000 + seq,
        body,
    })
}

fn text(origin: &str, seq: u64) -> Arc<Alert> {
    alert(origin, seq, AlertBody::Text(format!("alert {seq}")))
}

#[tokio::test]
async fn a_file_gets_every_alert_once_in_order_with_its_layer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alerts.jsonl");
    let t = topology(&format!(
        "[[output]]\nkind = \"file\"\npath = {:?}\n",
        path.display().to_string()
    ));
    let m = OutputMetrics::default();
    let out = Outputs::start(&t, m.clone()).expect("start");
    for seq in 1..=100 {
        out.alert(&text("a1", seq));
    }
    wait_until_async("100 alerts sent", WAIT, || async {
        match m.get("file").0 {
            100 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let seqs: Vec<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    assert_eq!(lines[0]["layer"], "ph");
    assert_eq!(lines[0]["type"], "alert");
    assert_eq!(lines[0]["kind"], "text");
    assert_eq!(lines[0]["severity"], "notice");
    assert_eq!(lines[0]["body"]["Text"], "alert 1");
    assert_eq!(m.get("file"), (100, 0, 0, 0));
}

#[tokio::test]
async fn a_down_output_fills_its_queue_counts_drops_and_never_blocks_the_feeder() {
    // Nothing listens on port 9 of loopback (discard, never served here).
    let t = topology(
        "[[output]]\nname = \"dead\"\nkind = \"syslog\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:9\"\nqueue = 10\nbackoff_min_ms = 50\nbackoff_max_ms = 200\n",
    );
    let m = OutputMetrics::default();
    let out = Outputs::start(&t, m.clone()).expect("start");
    let started = std::time::Instant::now();
    for seq in 1..=10_000 {
        out.alert(&text("a1", seq));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "offering 10,000 alerts to a dead output took {took:?}"
    );
    wait_until_async("the dead output to fail", WAIT, || async {
        match m.get("dead") {
            (0, dropped, failures, _) if failures >= 2 && dropped > 0 => Ok(dropped),
            other => Err(other),
        }
    })
    .await;
    let (sent, dropped, _, depth) = m.get("dead");
    assert_eq!(sent, 0);
    // At most the queue and one batch in hand are kept; everything else is counted.
    assert!(
        (10_000 - 10 - MAX_BATCH as u64..=10_000 - 10).contains(&dropped),
        "dropped {dropped}"
    );
    assert!(depth <= 10, "depth {depth}");
}

#[tokio::test]
async fn syslog_over_udp_and_tcp_delivers_records_in_order() {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("tcp");
    let t = topology(&format!(
        "[[output]]\nname = \"u\"\nkind = \"syslog\"\naddress = \"{}\"\n\n[[output]]\nname = \"t\"\nkind = \"syslog\"\ntransport = \"tcp\"\naddress = \"{}\"\nformat = \"cef\"\n",
        udp.local_addr().expect("addr"),
        tcp.local_addr().expect("addr")
    ));
    let m = OutputMetrics::default();
    let out = Outputs::start(&t, m.clone()).expect("start");
    for seq in 1..=20 {
        out.alert(&alert(
            "a1",
            seq,
            AlertBody::Text(format!("line {seq}\n<13>1 forged")),
        ));
    }
    let mut buf = vec![0u8; 4096];
    for seq in 1..=20 {
        let n = tokio::time::timeout(WAIT, udp.recv(&mut buf))
            .await
            .expect("a datagram")
            .expect("recv");
        let r = std::str::from_utf8(&buf[..n]).expect("utf-8");
        assert!(r.starts_with("<133>1 "), "{r}");
        assert!(r.contains(&format!("seq=\"{seq}\"")), "{r}");
        assert!(r.ends_with(&format!("line {seq}\\n<13>1 forged")), "{r}");
    }
    let (mut s, _) = tokio::time::timeout(WAIT, tcp.accept())
        .await
        .expect("a connection")
        .expect("accept");
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 65536];
    use tokio::io::AsyncReadExt;
    while got.iter().filter(|b| **b == b'|').count() < 20 * 7 {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("records")
            .expect("read");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&chunk[..n]);
    }
    // Octet counting: "<len> <record>" back to back.
    let mut rest = std::str::from_utf8(&got).expect("utf-8");
    for seq in 1..=20 {
        let (len, after) = rest.split_once(' ').expect("a length");
        let len: usize = len.parse().expect("a number");
        let record = &after[..len];
        assert!(record.contains("CEF:0|VESPA|vespa|"), "{record}");
        assert!(
            record.contains(&format!("externalId=a1:{seq} ")),
            "{record}"
        );
        rest = &after[len..];
    }
    wait_until_async("both outputs counted", WAIT, || async {
        match (m.get("u").0, m.get("t").0) {
            (20, 20) => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

#[tokio::test]
async fn webhooks_post_json_slack_and_alertmanager_bodies_and_decisions() {
    let bodies: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let seen = bodies.clone();
    let app = axum::Router::new().route(
        "/{which}",
        axum::routing::post(
            move |axum::extract::Path(which): axum::extract::Path<String>,
                  body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    seen.lock().expect("lock").push((which.clone(), v));
                    if which == "refuse" {
                        axum::http::StatusCode::BAD_REQUEST
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    let t = topology(&format!(
        r#"
[[output]]
name = "json"
kind = "webhook"
url = "http://{addr}/json"

[[output]]
name = "slack"
kind = "webhook"
url = "http://{addr}/slack"
template = "slack"
min_severity = "warning"

[[output]]
name = "am"
kind = "webhook"
url = "http://{addr}/am"
template = "alertmanager"
kinds = ["decision"]
rules = ["syn-flood"]

[[output]]
name = "refuse"
kind = "webhook"
url = "http://{addr}/refuse"
kinds = ["infected"]
"#
    ));
    let m = OutputMetrics::default();
    let out = Outputs::start(&t, m.clone()).expect("start");
    out.alert(&text("a1", 1));
    out.alert(&alert(
        "a1",
        2,
        AlertBody::ConnThreshold {
            addr: [192, 0, 2, 1].into(),
            established: 40,
            threshold: 10,
        },
    ));
    out.alert(&alert(
        "a1",
        3,
        AlertBody::Infected {
            vm: "vm1".into(),
            file: "/x".into(),
            signature: "Eicar".into(),
        },
    ));
    out.decision(&serde_json::json!({"action": "block", "target": "192.0.2.1", "rule": "other"}));
    let (tx, rx) = tokio::sync::broadcast::channel(8);
    let follower = out.follow(rx);
    tx.send(serde_json::json!({"action": "block", "target": "192.0.2.1", "rule": "syn-flood"}))
        .expect("send");
    drop(tx);
    follower
        .await
        .expect("the follower ends with its broadcast");
    wait_until_async("every output done", WAIT, || async {
        let now = [
            m.get("json").0,
            m.get("slack").0,
            m.get("am").0,
            m.get("refuse").1,
        ];
        if now == [5, 2, 1, 1] {
            Ok(())
        } else {
            Err(now)
        }
    })
    .await;
    let got = bodies.lock().expect("lock").clone();
    let of = |w: &str| -> Vec<serde_json::Value> {
        got.iter()
            .filter(|(k, _)| k == w)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let json = of("json");
    assert_eq!(
        json.len(),
        5,
        "4 delivered + the decision of the broadcast: {json:?}"
    );
    assert_eq!(json[0]["seq"], 1);
    assert_eq!(json[1]["kind"], "conn_threshold");
    assert_eq!(json[3]["type"], "decision");
    assert_eq!(json[3]["decision"]["rule"], "other");
    let slack = of("slack");
    assert_eq!(slack.len(), 2, "warnings and above: {slack:?}");
    assert!(slack[0]["text"]
        .as_str()
        .is_some_and(|t| t.starts_with("*[WARNING]*")));
    assert!(slack[1]["text"]
        .as_str()
        .is_some_and(|t| t.starts_with("*[CRITICAL]*")));
    let am = of("am");
    assert_eq!(am.len(), 1, "{am:?}");
    assert_eq!(am[0][0]["labels"]["rule"], "syn-flood");
    assert_eq!(of("refuse").len(), 1, "a 400 is not retried");
    assert_eq!(m.get("refuse"), (0, 1, 1, 0));
}

#[tokio::test]
async fn syslog_over_a_unix_socket_and_a_file_reopened_on_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("log.sock");
    let rx = tokio::net::UnixDatagram::bind(&sock).expect("bind");
    let file = dir.path().join("alerts.jsonl");
    let t = topology(&format!(
        "[[output]]\nkind = \"syslog\"\ntransport = \"unix\"\npath = {:?}\nfacility = \"daemon\"\n\n[[output]]\nkind = \"file\"\npath = {:?}\n",
        sock.display().to_string(),
        file.display().to_string()
    ));
    let m = OutputMetrics::default();
    let out = Outputs::start(&t, m.clone()).expect("start");
    out.alert(&text("a1", 1));
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, rx.recv(&mut buf))
        .await
        .expect("a record")
        .expect("recv");
    let r = std::str::from_utf8(&buf[..n]).expect("utf-8");
    // daemon (3) * 8 + notice (5)
    assert!(r.starts_with("<29>1 "), "{r}");
    assert!(r.ends_with("] alert 1"), "{r}");

    // logrotate moves the file away, then SIGHUP: the next alert goes to a new file.
    wait_until_async("the first line written", WAIT, || async {
        match m.get("file").0 {
            1 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    let rotated = dir.path().join("alerts.jsonl.1");
    std::fs::rename(&file, &rotated).expect("rename");
    nix_kill_hup();
    // The signal reaches the output's watcher asynchronously: one more alert per look until
    // one lands in a new file.
    let mut seq = 1;
    wait_until_async("a new file after SIGHUP", WAIT, || {
        seq += 1;
        out.alert(&text("a1", seq));
        let file = file.clone();
        async move {
            std::fs::metadata(&file)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    wait_until_async("every line written", WAIT, || async {
        match m.get("file").0 {
            n if n == seq => Ok(()),
            n => Err(n),
        }
    })
    .await;
    let seqs = |p: &std::path::Path| -> Vec<u64> {
        std::fs::read_to_string(p)
            .expect("read")
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("JSON")["seq"]
                    .as_u64()
                    .expect("seq")
            })
            .collect()
    };
    let (old, new) = (seqs(&rotated), seqs(&file));
    assert_eq!(old.first(), Some(&1));
    assert!(!new.is_empty() && !new.contains(&1), "{new:?}");
    let all: Vec<u64> = old.iter().chain(&new).copied().collect();
    assert_eq!(all, (1..=seq).collect::<Vec<_>>(), "once each, in order");
}

/// SIGHUP to this process (the test binary: tokio's handler is installed by the file output).
fn nix_kill_hup() {
    let me = std::process::id();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &me.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}
