//! The API's server on a real socket, in-process: slow and silent clients, the connection
//! limit, the Host check and CORS. (The binary's flags are covered by `http::api` in
//! `tests/tests/e2e`.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use vespa_node::Topology;
use vespa_orchestrator::http::{ApiParts, ApiToken, HttpOptions, Limits};
use vespa_testkit::{at_least, wait_until_async};

const TOKEN: &str = "in-process-token-0123456789";

/// Serves the API of a VO (no tree below it) with `http` on a free loopback port.
async fn start(http: HttpOptions) -> SocketAddr {
    let token = Some(ApiToken::new(TOKEN).expect("token"));
    common::serve(ApiParts::new(&Topology::embedded_default(), token).with_http(http)).await
}

/// One answer: status, head (lower-cased names kept as sent), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        })
    }
}

/// Sends `head` (ending with its blank line) and `body`, reads the answer to the end.
async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("head");
    s.write_all(body).await.expect("body");
    let mut raw = Vec::new();
    timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("answered within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    Answer {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status: {head:?}")),
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// A GET with these extra header lines (`Host` among them, or none).
async fn get(addr: SocketAddr, path: &str, headers: &str) -> Answer {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nConnection: close\r\n{headers}\r\n"),
        b"",
    )
    .await
}

fn host(addr: SocketAddr) -> String {
    format!("Host: {addr}\r\n")
}

fn quick(limits: Limits) -> HttpOptions {
    HttpOptions {
        limits,
        ..HttpOptions::default()
    }
}

#[tokio::test]
async fn a_slow_loris_is_cut_at_the_header_timeout_while_others_are_answered() {
    let header_timeout = Duration::from_secs(1);
    let addr = start(quick(Limits {
        header_timeout,
        ..Limits::default()
    }))
    .await;
    let start = Instant::now();
    let mut loris = TcpStream::connect(addr).await.expect("connect");
    loris
        .write_all(format!("GET /api/v1/counters HTTP/1.1\r\n{}X-Slow: ", host(addr)).as_bytes())
        .await
        .expect("the first part of the head");
    // One more byte of the head every 100 ms, until the server closes the connection (its
    // answer, if any, then the end of the stream) or 10 s pass.
    let mut trickled = 0;
    let mut buf = [0u8; 1024];
    let closed_after = loop {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the server still waits for the head after {trickled} bytes over 10 s"
        );
        match timeout(Duration::from_millis(100), loris.read(&mut buf)).await {
            Err(_) => {
                if loris.write_all(b"a").await.is_err() {
                    break start.elapsed();
                }
                trickled += 1;
            }
            Ok(Ok(0) | Err(_)) => break start.elapsed(),
            // Hyper may say 408 first; the end of the stream follows.
            Ok(Ok(_)) => {}
        }
        if trickled == 3 {
            // Meanwhile, a client that sends its request at once is answered.
            let a = get(addr, "/api/v1/counters", &host(addr)).await;
            assert_eq!(a.status, 200, "{}", a.body);
        }
    };
    assert!(
        trickled >= 5,
        "it kept sending its head until cut: {trickled} bytes"
    );
    assert!(
        closed_after >= header_timeout - Duration::from_millis(50)
            && closed_after < header_timeout + Duration::from_millis(1500),
        "cut at the header timeout ({header_timeout:?}), not before nor long after: {closed_after:?}"
    );
}

/// Raises this process's soft open-file limit to at least `n` (within the hard limit).
fn allow_files(n: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("RLIMIT_NOFILE");
    if soft < n {
        assert!(
            hard >= n,
            "this test needs {n} open files; the hard limit is {hard}"
        );
        setrlimit(Resource::RLIMIT_NOFILE, n, hard).expect("raising RLIMIT_NOFILE");
    }
}

#[tokio::test]
async fn two_thousand_idle_connections_do_not_lock_the_api_out() {
    const IDLE: usize = 2000;
    // The idle clients' ends and the server's (at most the limit) live in this process.
    allow_files(IDLE as u64 + 1024);
    let limits = Limits::default();
    let addr = start(quick(limits)).await;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(addr).await.expect("an idle connection"));
    }
    // An operator's request, after all of them, is answered.
    let a = timeout(
        Duration::from_secs(5),
        get(addr, "/api/v1/counters", &host(addr)),
    )
    .await
    .expect("the API answers with 2,000 idle connections open");
    assert_eq!(a.status, 200, "{}", a.body);

    // The server holds no more than its limit: it closed the connections idle longest.
    let mut closed = vec![false; IDLE];
    let goal = IDLE - limits.max_connections;
    let count = wait_until_async(
        "the idle connections beyond the limit closed",
        Duration::from_secs(5),
        || {
            for (c, s) in closed.iter_mut().zip(&idle) {
                let mut b = [0u8; 64];
                if !*c {
                    *c = match s.try_read(&mut b) {
                        Ok(0) => true,
                        Ok(_) => false,
                        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    };
                }
            }
            let n = closed.iter().filter(|c| **c).count();
            std::future::ready(at_least(n, goal))
        },
    )
    .await;
    assert!(count <= IDLE, "{count}");
    assert!(closed[0], "the first one opened was idle longest: closed");
}

#[tokio::test]
async fn cors_headers_only_for_the_configured_origins() {
    let addr = start(HttpOptions::default()).await;
    for path in ["/get_alerts", "/archi", "/api/v1/counters"] {
        let a = get(
            addr,
            path,
            &format!("{}Origin: http://evil.example\r\n", host(addr)),
        )
        .await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        assert_eq!(
            a.header("access-control-allow-origin"),
            None,
            "{path}: no CORS without --cors-origin: {}",
            a.head
        );
    }

    let addr = start(HttpOptions {
        cors_origins: vec!["https://dash.example".parse().expect("origin")],
        ..HttpOptions::default()
    })
    .await;
    let from = |origin: &str| format!("{}Origin: {origin}\r\n", host(addr));
    for path in ["/get_alerts", "/api/v1/counters"] {
        let a = get(addr, path, &from("https://dash.example")).await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.header("access-control-allow-origin").as_deref(),
            Some("https://dash.example"),
            "{path}: {}",
            a.head
        );
        assert_eq!(a.header("vary").as_deref(), Some("origin"), "{}", a.head);
        let a = get(addr, path, &from("http://evil.example")).await;
        assert_eq!(a.header("access-control-allow-origin"), None, "{}", a.head);
    }
    // No preflight: a page of the allowed origin cannot send a mutation with a token.
    let a = exchange(
        addr,
        &format!("OPTIONS /api/v1/block HTTP/1.1\r\n{}Origin: https://dash.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\nConnection: close\r\n\r\n", host(addr)),
        b"",
    )
    .await;
    assert_eq!(a.status, 405, "{}", a.body);
    assert_eq!(a.header("access-control-allow-methods"), None);
}

#[tokio::test]
async fn a_request_for_another_host_is_refused_with_421() {
    let addr = start(HttpOptions {
        hosts: vec!["vespa.example.org".parse().expect("name")],
        ..HttpOptions::default()
    })
    .await;
    for h in ["evil.example", "evil.example:8080", "127.0.0.1.nip.io"] {
        let a = get(addr, "/api/v1/topology", &format!("Host: {h}\r\n")).await;
        assert_eq!(a.status, 421, "{h}: {}", a.body);
        assert_eq!(
            a.header("content-type").as_deref(),
            Some("application/json")
        );
        let e: serde_json::Value = serde_json::from_str(&a.body).expect("a JSON error");
        let e = e["error"].as_str().expect("error");
        assert!(e.contains(h) && e.contains("--http-host"), "{e}");
    }
    // The target's own authority counts too.
    let a = exchange(
        addr,
        &format!(
            "GET http://evil.example/api/v1/counters HTTP/1.1\r\n{}Connection: close\r\n\r\n",
            host(addr)
        ),
        b"",
    )
    .await;
    assert_eq!(a.status, 421, "{}", a.body);

    let port = addr.port();
    for h in [
        addr.to_string(),
        format!("localhost:{port}"),
        "vespa.example.org".to_string(),
        "VESPA.example.org:8443".to_string(),
    ] {
        let a = get(addr, "/api/v1/counters", &format!("Host: {h}\r\n")).await;
        assert_eq!(a.status, 200, "{h}: {}", a.body);
    }
    let a = exchange(addr, "GET /api/v1/counters HTTP/1.0\r\n\r\n", b"").await;
    assert_eq!(a.status, 200, "HTTP/1.0 without Host: {}", a.body);
}

#[tokio::test]
async fn a_body_that_does_not_arrive_is_answered_408_at_the_body_timeout() {
    let body_timeout = Duration::from_secs(1);
    let addr = start(quick(Limits {
        body_timeout,
        ..Limits::default()
    }))
    .await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/v1/dry-run HTTP/1.1\r\n{}Authorization: Bearer {TOKEN}\r\nContent-Length: 50\r\n\r\n{{\"ena",
        host(addr)
    );
    let start = Instant::now();
    s.write_all(head.as_bytes()).await.expect("head");
    let mut raw = Vec::new();
    timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("answered within 10 s")
        .expect("read");
    let waited = start.elapsed();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 408") && text.contains("--http-body-timeout"),
        "{text}"
    );
    assert!(
        waited >= body_timeout && waited < body_timeout + Duration::from_secs(1),
        "{waited:?}"
    );
}
