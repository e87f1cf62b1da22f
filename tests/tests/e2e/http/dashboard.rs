//! The dashboard (the 2014 View) in headless Chromium over a real tree: VO (with --http and
//! an API token) -> HO_VM -> a bandwidth and a connections agent on lo. Chromium renders
//! `/`, runs its fetches and timers (`--virtual-time-budget`) and dumps the DOM: the node
//! tree, a rate chart for lo, bandwidth alerts in the log and the empty states are there. A
//! screenshot is kept under tests/artifacts/ (git-ignored). A token in the address
//! (`?selftest=release&token=...`) is ignored: nothing is released with it.
//!
//! A second test drives the page like a person through chromedriver (WebDriver over plain
//! HTTP): with `?selftest=stub` the table holds a stub action; the release button is disabled
//! until a token is typed into the password field and kept (in `sessionStorage`), then its
//! click reaches the server with the token. The page's self-test (`?selftest=release`, which
//! clicks its own button on the stub and writes the server's answer into the page) then
//! releases with the kept token (no policy here: 503 with the right token, 401 with a wrong
//! one, which shows the bearer token travels), and ignores a token in the address once the
//! kept one is forgotten. The screenshot after the click is kept too.
//!
//! Needs Debian's `chromium` (`cargo xtask setup` installs it). Without it the test is
//! skipped with a printed reason, unless `VESPA_REQUIRE_EBPF=1` (CI), where it fails.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::kit::*;
use serde_json::Value as Json;
use vespa_testkit::wait_until;
use vespa_tests::browser::{
    artifacts, chromium, chromium_present, kill_group, BROWSER_TIMEOUT, CHROMIUM,
};
use vespa_tests::shared::LOOPBACK;

const TOKEN: &str = "dashboard-token-0123456789abcdef";

fn get_json(addr: SocketAddr, path: &str) -> Option<Json> {
    let (_, body) = vespa_tests::daemons::http_get(&addr.to_string(), path).ok()?;
    serde_json::from_str(&body).ok()
}

#[test]
fn dashboard_renders_a_real_tree_in_headless_chromium() {
    if !chromium_present("dashboard_renders_a_real_tree_in_headless_chromium") {
        return;
    }
    // Its connections agent on lo counts every socket of the host, and the VO's default
    // policy acts on the counts (the page must show no action): no flood meanwhile.
    let _loopback = LOOPBACK.share();
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let nodes = lo_bandwidth_and_connections_nodes();
    let tree = Tree::new(
        "dashboard",
        "heartbeat_ms = 300\nsample_interval_ms = 100",
        &[("host", lo)],
        &nodes,
    );
    let token = tree.scratch.dir.join("api-token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let api_s = api.to_string();
    let vo = tree.spawn_with(
        "vo",
        "vespa-orchestrator",
        None,
        &[],
        &["HO_VM", "VO"],
        &[
            "--http",
            &api_s,
            "--api-token-file",
            token.to_str().expect("utf-8"),
        ],
    );
    let _agents = tree.spawn(
        "agents",
        "vespa-agent",
        None,
        &["--mode", "auto", "-i", "lo"],
        &["bw", "conns"],
    );
    wait_until(
        &format!("the API on {api} (log: {})", vo.log.display()),
        WAIT,
        || TcpStream::connect(api).map(drop),
    );
    // Wait for what the page shows, so one render has it all.
    wait_until("both agents under HO_VM", WAIT, || {
        let a = get_json(api, "/archi")?;
        let ho = a["children"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == "HO_VM")?
            .clone();
        (ho["children"].as_array()?.len() == 2).then_some(())
    });
    wait_until("10 rx deltas of lo", WAIT, || {
        get_json(api, "/recv_bytes?iface=lo&origin=bw")?
            .as_array()
            .is_some_and(|a| a.len() >= 10)
            .then_some(())
    });
    wait_until("remote addresses", WAIT, || {
        get_json(api, "/get_ip_connections")?
            .as_array()
            .is_some_and(|a| !a.is_empty())
            .then_some(())
    });

    let base = format!("http://{api}");
    let scratch = tree.scratch.dir.clone();

    // The page as rendered after its polls ran.
    let dom = chromium(&scratch, "dom", &format!("{base}/"), &["--dump-dom"]);
    let dump = artifacts().join("dashboard.html");
    std::fs::write(&dump, &dom).expect("keep the DOM");
    let has = |s: &str| dom.contains(s);
    let ctx = format!("(DOM kept at {})", dump.display());
    assert!(
        has("<title>VESPA dashboard</title>"),
        "the page itself {ctx}"
    );
    assert!(has("live, updated"), "every poll succeeded {ctx}");
    for node in ["VO", "HO_VM", "bw", "conns"] {
        assert!(
            has(&format!("<span class=\"name\">{node}</span>")),
            "{node} in the node tree {ctx}"
        );
    }
    assert!(
        has("<span class=\"kind kind-ho_vm\">ho_vm</span>"),
        "kinds shown {ctx}"
    );
    assert!(
        has("data-iface=\"lo\" data-origin=\"bw\"") && has("<span class=\"name\">bw / lo</span>"),
        "a rate chart for lo {ctx}"
    );
    assert!(
        has("<polyline points=") && has("class=\"rx\""),
        "the chart has an rx line {ctx}"
    );
    assert!(
        has("sample every ") && has("/s</span>"),
        "per-second rates once the sample interval is known {ctx}"
    );
    assert!(
        has("<span class=\"kind kind-bandwidth\">bandwidth</span>"),
        "a bandwidth alert in the log {ctx}"
    );
    assert!(
        dom.contains(">bw</span><span class=\"text\">lo: rx "),
        "an alert from bw about lo {ctx}"
    );
    assert!(
        has("<td class=\"mono\">127.0.0.1</td>"),
        "the top remote addresses {ctx}"
    );
    assert!(
        has("no policy loaded") || has("no active blocks or isolations"),
        "the empty state of the actions {ctx}"
    );
    assert!(
        has("no firewall agent (agent_firewall) in the topology"),
        "the firewall panel's empty state {ctx}"
    );
    assert!(!has("API trouble"), "no failed poll {ctx}");

    // A screenshot, kept as an artifact.
    let png = artifacts().join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    chromium(
        &scratch,
        "shot",
        &format!("{base}/"),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,900",
            "--hide-scrollbars",
        ],
    );
    let bytes =
        std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        bytes.len() > 20_000,
        "a screenshot of a rendered page, not a blank one: {} bytes",
        bytes.len()
    );

    // A token in the address is ignored: the self-test finds no token kept and releases
    // nothing (the right token, so a page taking it would get past the server's check).
    let url_token = chromium(
        &scratch,
        "release-url-token",
        &format!("{base}/?selftest=release&token={TOKEN}"),
        &["--dump-dom"],
    );
    assert!(
        url_token.contains("selftest release: no token kept"),
        "a token in the address is not used: {}",
        excerpt(&url_token, "selftest-result")
    );
    assert!(
        !url_token.contains("release selftest-stub:"),
        "no release was sent: {}",
        excerpt(&url_token, "release-result")
    );
    assert!(
        !url_token.contains(TOKEN),
        "the token is not written into the page"
    );
    eprintln!(
        "dashboard screenshot: {} ({} bytes); DOM: {}",
        png.display(),
        bytes.len(),
        dump.display()
    );
}

fn excerpt<'a>(dom: &'a str, near: &str) -> &'a str {
    let i = dom.find(near).unwrap_or(0);
    let end = (i + 400).min(dom.len());
    dom.get(i..end).unwrap_or(dom)
}

/// One WebDriver request to chromedriver at `addr`; returns the answer's `value`.
fn wd(addr: SocketAddr, method: &str, path: &str, body: Option<Json>) -> Json {
    wd_try(addr, method, path, body).unwrap_or_else(|e| panic!("{e}"))
}

/// [`wd`], with an error answer (a stale element, say) as `Err`.
fn wd_try(addr: SocketAddr, method: &str, path: &str, body: Option<Json>) -> Result<Json, String> {
    use std::io::{Read, Write};
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = TcpStream::connect(addr).expect("connect to chromedriver");
    s.set_read_timeout(Some(BROWSER_TIMEOUT)).expect("timeout");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).expect("WebDriver request");
    // chromedriver may keep the connection open: read the head, then Content-Length bytes.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let (head, body) = loop {
        let n = s.read(&mut buf).expect("WebDriver answer");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            });
            if len.is_some_and(|len| body.len() >= len) || n == 0 {
                break (head.to_string(), body.to_string());
            }
        }
        assert!(n > 0, "chromedriver closed the connection: {text:?}");
    };
    let v: Json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {head} {body}"));
    if head.starts_with("HTTP/1.1 200") {
        Ok(v["value"].clone())
    } else {
        Err(format!("{method} {path}: {head}\n{v}"))
    }
}

/// Kills chromedriver (and, with it, the browser it started) on drop.
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        kill_group(&mut self.0);
    }
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

#[test]
fn release_button_posts_the_pasted_token_through_webdriver() {
    const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
    let test = "release_button_posts_the_pasted_token_through_webdriver";
    if !chromium_present(test) {
        return;
    }
    if !Path::new(CHROMEDRIVER).exists() {
        let why = format!("{CHROMEDRIVER} not found (Debian package chromium-driver)");
        assert!(
            !std::env::var("VESPA_REQUIRE_EBPF").is_ok_and(|v| v == "1"),
            "{test}: VESPA_REQUIRE_EBPF=1 but {why}"
        );
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let lo: IpAddr = "127.0.0.1".parse().expect("ip");
    let tree = Tree::new("dashboard-wd", "", &[("host", lo)], &[N::root("VO", "vo")]);
    let token = tree.scratch.dir.join("api-token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let api_s = api.to_string();
    let vo = tree.spawn_with(
        "vo",
        "vespa-orchestrator",
        None,
        &[],
        &["VO"],
        &[
            "--http",
            &api_s,
            "--api-token-file",
            token.to_str().expect("utf-8"),
        ],
    );
    wait_until(
        &format!("the API on {api} (log: {})", vo.log.display()),
        WAIT,
        || TcpStream::connect(api).map(drop),
    );

    let wd_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let log = std::fs::File::create(tree.scratch.dir.join("chromedriver.log")).expect("log");
    let _driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={}", wd_addr.port()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start chromedriver"),
    );
    wait_until("chromedriver", WAIT, || {
        TcpStream::connect(wd_addr).map(drop)
    });
    let profile = tree.scratch.dir.join("chromium-profile-wd");
    std::fs::create_dir_all(&profile).expect("profile");
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let caps = serde_json::json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": { "binary": CHROMIUM, "args": args } } } });
    let session = wd(wd_addr, "POST", "/session", Some(caps));
    let sid = session["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {session}"))
        .to_string();
    let s = |p: &str| format!("/session/{sid}{p}");
    let find = |css: &str| -> Option<String> {
        // A missing element is a 404 from chromedriver: look through execute instead.
        let v = wd(
            wd_addr,
            "POST",
            &s("/execute/sync"),
            Some(
                serde_json::json!({ "script": "return document.querySelector(arguments[0]);", "args": [css] }),
            ),
        );
        v[ELEMENT].as_str().map(str::to_string)
    };
    let text_of = |css: &str| -> String {
        wd(wd_addr, "POST", &s("/execute/sync"), Some(serde_json::json!({ "script": "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", "args": [css] }))).as_str().unwrap_or_default().to_string()
    };

    wd(
        wd_addr,
        "POST",
        &s("/url"),
        Some(serde_json::json!({ "url": format!("http://{api}/?selftest=stub") })),
    );
    // The page redraws its table as it polls: a button found may be replaced before the next
    // request names it (a stale element), so finding and using it are tried together.
    let release_button = || {
        find("tr[data-key=\"selftest-stub\"] button.release")
            .ok_or_else(|| "no release button".to_string())
    };
    let disabled = wait_until("the stub action's release button", WAIT, || {
        let b = release_button()?;
        wd_try(wd_addr, "GET", &s(&format!("/element/{b}/enabled")), None)
    });
    assert_eq!(
        disabled,
        Json::Bool(false),
        "without a token the release button is disabled"
    );
    // Paste the token, keep it, then release.
    let input = find("#token").expect("the token field");
    wd(
        wd_addr,
        "POST",
        &s(&format!("/element/{input}/value")),
        Some(serde_json::json!({ "text": TOKEN })),
    );
    let keep = find("#token-form button[type=submit]").expect("Keep");
    wd(
        wd_addr,
        "POST",
        &s(&format!("/element/{keep}/click")),
        Some(serde_json::json!({})),
    );
    assert!(
        text_of("#token-state").contains("token kept"),
        "{}",
        text_of("#token-state")
    );
    let kept = wd(
        wd_addr,
        "POST",
        &s("/execute/sync"),
        Some(
            serde_json::json!({ "script": "return sessionStorage.getItem('vespa.api.token');", "args": [] }),
        ),
    );
    assert_eq!(
        kept,
        Json::String(TOKEN.into()),
        "the token is kept in sessionStorage"
    );
    wait_until("a click on the enabled release button", WAIT, || {
        let b = release_button()?;
        let enabled = wd_try(wd_addr, "GET", &s(&format!("/element/{b}/enabled")), None)?;
        if enabled != Json::Bool(true) {
            return Err(format!("the button is not enabled: {enabled}"));
        }
        let click = Some(serde_json::json!({}));
        wd_try(wd_addr, "POST", &s(&format!("/element/{b}/click")), click).map(drop)
    });
    let answer = wait_until("the release answer in the page", WAIT, || {
        let t = text_of("#release-result");
        t.starts_with("release selftest-stub: ").then_some(t)
    });
    // No policy: 503; a policy without the stub key: 404. Never 401: the token went along.
    assert!(
        answer.contains(": 503 no policy is loaded") || answer.contains(": 404 "),
        "{answer}"
    );
    let shot = wd(wd_addr, "GET", &s("/screenshot"), None);
    let png = base64_decode(shot.as_str().expect("a base64 screenshot"));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a screenshot after the release ({} bytes)",
        png.len()
    );
    std::fs::write(artifacts().join("dashboard-release.png"), &png).expect("keep the screenshot");

    // The page's own self-test releases with the token kept in the tab (typed above).
    let selftest = |what: &str| -> String {
        wd(
            wd_addr,
            "POST",
            &s("/url"),
            Some(serde_json::json!({ "url": format!("http://{api}/?selftest=release") })),
        );
        wait_until(what, WAIT, || {
            let t = text_of("#selftest-result");
            t.starts_with("selftest ").then_some(t)
        })
    };
    let answer = selftest("the self-test's release answer");
    assert!(
        answer.contains("selftest release selftest-stub: 503 no policy is loaded")
            || answer.contains("selftest release selftest-stub: 404 "),
        "the self-test released with the typed token: {answer}"
    );
    // A wrong token typed in: 401, the bearer token travels.
    let retype = |text: &str| {
        let forget = find("#token-clear").expect("Forget");
        wd(
            wd_addr,
            "POST",
            &s(&format!("/element/{forget}/click")),
            Some(serde_json::json!({})),
        );
        let input = find("#token").expect("the token field");
        wd(
            wd_addr,
            "POST",
            &s(&format!("/element/{input}/value")),
            Some(serde_json::json!({ "text": text })),
        );
        let keep = find("#token-form button[type=submit]").expect("Keep");
        wd(
            wd_addr,
            "POST",
            &s(&format!("/element/{keep}/click")),
            Some(serde_json::json!({})),
        );
    };
    retype("not-the-token-at-all");
    let answer = selftest("the self-test's answer with a wrong token");
    assert_eq!(
        answer,
        "selftest release selftest-stub: 401 wrong API token"
    );
    // Forgotten, then the right token in the address: ignored, nothing kept, nothing sent.
    let forget = find("#token-clear").expect("Forget");
    wd(
        wd_addr,
        "POST",
        &s(&format!("/element/{forget}/click")),
        Some(serde_json::json!({})),
    );
    wd(
        wd_addr,
        "POST",
        &s("/url"),
        Some(serde_json::json!({ "url": format!("http://{api}/?selftest=release&token={TOKEN}") })),
    );
    let answer = wait_until(
        "the self-test's answer with a token in the address",
        WAIT,
        || {
            let t = text_of("#selftest-result");
            t.starts_with("selftest ").then_some(t)
        },
    );
    assert!(
        answer.starts_with("selftest release: no token kept"),
        "a token in the address is ignored: {answer}"
    );
    let kept = wd(
        wd_addr,
        "POST",
        &s("/execute/sync"),
        Some(
            serde_json::json!({ "script": "return sessionStorage.getItem('vespa.api.token');", "args": [] }),
        ),
    );
    assert_eq!(kept, Json::Null, "nothing kept from the address");
    assert!(
        !text_of("#release-result").starts_with("release selftest-stub:"),
        "no release was sent"
    );
    wd(wd_addr, "DELETE", &s(""), None);
}

/// Standard base64 (WebDriver screenshots), without a crate for it.
fn base64_decode(text: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c:?}"),
    };
    let (mut out, mut acc, mut bits) = (Vec::with_capacity(text.len() * 3 / 4), 0u32, 0u32);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        acc = (acc << 6) | u32::from(val(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
