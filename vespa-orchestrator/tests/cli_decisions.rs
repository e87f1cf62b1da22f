//! `vespa-orchestrator decisions` and `allowlist`, the real binary, both ways: through the
//! HTTP API with the token, and through the tree with an operator's key.
//!
//! - End to end: `vespa-orchestrator run` (VO and HO_PH, the embedded policy) with an SDN
//!   agent in this process that records what it is asked: blocks added, listed, exported,
//!   deleted (the agent is told to release them), imported back from the text and the JSON
//!   export; a bad block list is refused with its line and nothing reaches the agent.
//! - Over a policy that keeps books ([`Ledger`]), for what the driver in main does not do
//!   yet: prefixes and the allowlist; and the tree's permission: a node's key that is not an
//!   operator's may read the decisions, never change them.

mod common;
#[path = "common/ledger.rs"]
mod ledger;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledger::Ledger;
use vespa_node::launch::KeySource;
use vespa_node::{
    Agent, AgentKind, AgentRef, Hooks, MasterAddr, Node, NodeSpec, Role, Topology, VerbResult,
};
use vespa_orchestrator::client::Api;
use vespa_orchestrator::http::{ApiParts, ApiToken};
use vespa_proto::verbs::{SdnVerb, Verb};
use vespa_testkit::wait_until_async;

const TOKEN: &str = "cli-test-token-0123456789";
const WAIT: Duration = Duration::from_secs(20);
const BIN: &str = env!("CARGO_BIN_EXE_vespa-orchestrator");

/// A scratch directory with a topology, its per-node keys (and operator alice's), and the
/// API's token.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new(topology: &str) -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("topology.toml"), topology).expect("topology");
        let token = dir.path().join("api-token");
        std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let s = Scratch { dir };
        let keys = s.path("keys");
        let out = cli(
            &[
                "keygen",
                "--per-node",
                &keys,
                "-c",
                &s.path("topology.toml"),
                "--operator",
                "alice",
            ],
            None,
        );
        assert!(
            out.status.success(),
            "keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        s
    }

    fn path(&self, name: &str) -> String {
        self.dir
            .path()
            .join(name)
            .to_str()
            .expect("utf-8")
            .to_string()
    }

    /// The tree's flags of an operator.
    fn tree(&self) -> Vec<String> {
        [
            "-c",
            &self.path("topology.toml"),
            "--key-dir",
            &self.path("keys"),
            "--operator",
            "alice",
        ]
        .map(String::from)
        .to_vec()
    }

    /// The API's flags, with the token.
    fn api(&self, addr: SocketAddr) -> Vec<String> {
        [
            "--api",
            &format!("http://{addr}"),
            "--token-file",
            &self.path("api-token"),
        ]
        .map(String::from)
        .to_vec()
    }

    fn keys_dir(&self) -> PathBuf {
        PathBuf::from(self.path("keys"))
    }

    fn keys(&self) -> KeySource {
        KeySource::PerNode(PathBuf::from(self.path("keys")))
    }
}

/// Runs the binary with `args` (and `stdin`), without the environment's VESPA_* settings.
fn cli(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in [
        "VESPA_CONFIG",
        "VESPA_KEY",
        "VESPA_KEY_DIR",
        "VESPA_API_TOKEN_FILE",
        "VESPA_POLICY",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().expect("the binary runs");
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::io::Write::write_all(&mut pipe, input).expect("stdin");
    }
    child.wait_with_output().expect("the binary ends")
}

/// One command, off the runtime's threads: stdout on success, else a failure with stderr.
async fn run(args: Vec<String>, stdin: Option<Vec<u8>>) -> Result<String, String> {
    let line = args.join(" ");
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&args, stdin.as_deref())
    })
    .await
    .expect("join");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("`{line}` exit {:?}: {stderr}", out.status.code()))
    }
}

/// `words` then `via`.
fn args(words: &[&str], via: &[String]) -> Vec<String> {
    words
        .iter()
        .map(|w| w.to_string())
        .chain(via.iter().cloned())
        .collect()
}

async fn ok(words: &[&str], via: &[String]) -> String {
    run(args(words, via), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A command that must fail; its stderr.
async fn fails(words: &[&str], via: &[String]) -> String {
    match run(args(words, via), None).await {
        Err(e) => e,
        Ok(out) => panic!("{words:?} succeeded: {out}"),
    }
}

/// An SDN agent that records what it is asked.
#[derive(Default, Clone)]
struct Sdn(Arc<Mutex<Vec<String>>>);

impl Sdn {
    fn calls(&self) -> Vec<String> {
        self.0.lock().expect("lock").clone()
    }

    /// Waits until the agent has been called `n` times with `verb` in all.
    async fn wait_for(&self, what: &str, verb: &str, n: usize) {
        wait_until_async(what, WAIT, || async {
            let c = self.calls();
            let seen = c
                .iter()
                .filter(|x| x.split(' ').next() == Some(verb))
                .count();
            if seen == n {
                Ok(())
            } else {
                Err(c)
            }
        })
        .await;
    }
}

impl Agent for Sdn {
    type Verb = SdnVerb;

    async fn call(&self, verb: SdnVerb) -> VerbResult {
        // Holding nothing it could list, it is left out of reconciliation.
        if matches!(verb, SdnVerb::VespaFlows { .. }) {
            return Err("this agent cannot list its flows".into());
        }
        self.0.lock().expect("lock").push(verb.line());
        Ok("done".into())
    }
}

/// Free loopback ports, all different.
fn ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("addr").port())
}

/// `vespa-orchestrator run`, killed when dropped.
struct Orchestrator(Child);

impl Drop for Orchestrator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stdout_lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.starts_with('#')).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_round_trip_through_the_real_orchestrator() {
    let [vo_port, ho_port, sdn_port, http_port] = ports::<4>();
    let topology = format!(
        r#"
[[machine]]
name = "hv"
address = "127.0.0.1"

[[node]]
name = "VO"
kind = "vo"
location = "hv"
port = {vo_port}

[[node]]
name = "HO_PH"
kind = "ho_ph"
location = "hv"
master = "VO"
port = {ho_port}

[[node]]
name = "Agent_Controller_OsKen"
kind = "agent_controller_osken"
location = "hv"
master = "HO_PH"
port = {sdn_port}
"#
    );
    let s = Scratch::new(&topology);
    let http: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let _orchestrator = Orchestrator(
        Command::new(BIN)
            .args([
                "run",
                "-c",
                &s.path("topology.toml"),
                "--key-dir",
                &s.path("keys"),
            ])
            .args([
                "--http",
                &http.to_string(),
                "--api-token-file",
                &s.path("api-token"),
            ])
            .env("RUST_LOG", "warn")
            .env_remove("VESPA_POLICY")
            .stdout(Stdio::null())
            .spawn()
            .expect("vespa-orchestrator run"),
    );
    // The SDN agent, under HO_PH, here.
    let sdn = Sdn::default();
    let spec = NodeSpec::new(
        "Agent_Controller_OsKen",
        Role::Agent(AgentKind::ControllerOsken),
        Some(MasterAddr {
            name: "HO_PH".into(),
            addr: ([127, 0, 0, 1], ho_port).into(),
        }),
        s.keys()
            .security("Agent_Controller_OsKen", false)
            .expect("the agent's key"),
    );
    let hooks = Hooks {
        agent: Some(AgentRef::new(sdn.clone())),
        alert_handlers: Vec::new(),
    };
    let agent = Node::new(spec, hooks).expect("agent");
    tokio::spawn(agent.run(None, std::future::pending()));
    let probe = Api::new(&format!("http://{http}"), None, Duration::from_secs(2)).expect("api");
    wait_until_async("the SDN agent in the VO's tree", WAIT, || async {
        let tree = probe
            .send(hyper::Method::GET, "/api/v1/topology", None)
            .await
            .map_err(|e| e.to_string())?;
        // The live tree (the configuration beside it names the agent from the start).
        let tree = serde_json::from_slice::<serde_json::Value>(&tree)
            .map(|v| v["tree"].to_string())
            .unwrap_or_else(|_| String::from_utf8_lossy(&tree).to_string());
        if tree.contains("\"Agent_Controller_OsKen\"") {
            Ok(())
        } else {
            Err(tree)
        }
    })
    .await;

    let api = s.api(http);
    let tree = s.tree();
    assert_eq!(
        ok(&["decisions", "list"], &api).await,
        "no decision in force\n"
    );

    // Add, through the API: both reach the SDN agent.
    let added = ok(
        &[
            "decisions",
            "add",
            "10.0.0.9",
            "52:54:00:AB:CD:01",
            "--ttl",
            "300",
            "--reason",
            "ssh scan",
        ],
        &api,
    )
    .await;
    assert!(
        added.contains("blocked 10.0.0.9\n") && added.contains("blocked 52:54:00:ab:cd:01\n"),
        "{added}"
    );
    assert!(added.ends_with("2 block(s) placed for 300s\n"), "{added}");
    let want = [
        "block_hackers 10.0.0.9 300",
        "block_hackers 52:54:00:ab:cd:01 300",
    ];
    wait_until_async("both blocks at the SDN agent", WAIT, || async {
        let c = sdn.calls();
        if want.iter().all(|w| c.iter().any(|x| x == w)) {
            Ok(())
        } else {
            Err(c)
        }
    })
    .await;

    // List: a table, JSON, text; through the API and through the tree.
    let table = ok(&["decisions", "list"], &api).await;
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[0].starts_with("KEY") && rows[0].contains("EXPIRES"),
        "{table}"
    );
    assert!(
        rows.iter().any(|r| r.starts_with("10.0.0.9")
            && r.contains("block")
            && r.contains("Agent_Controller_OsKen")
            && r.contains(" VO ")),
        "{table}"
    );
    let listing: serde_json::Value =
        serde_json::from_str(&ok(&["decisions", "list", "--json"], &tree).await).expect("json");
    let mut targets: Vec<&str> = listing["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| a["target"].as_str().expect("target"))
        .collect();
    targets.sort_unstable();
    assert_eq!(targets, ["10.0.0.9", "52:54:00:ab:cd:01"], "{listing}");
    let text = ok(&["decisions", "list", "--text"], &tree).await;
    assert_eq!(stdout_lines(&text), ["10.0.0.9", "52:54:00:ab:cd:01"]);

    // Export both ways, then delete: the SDN agent is told to release.
    ok(&["decisions", "export", "-o", &s.path("blocks.txt")], &api).await;
    ok(
        &[
            "decisions",
            "export",
            "--json",
            "-o",
            &s.path("blocks.json"),
        ],
        &tree,
    )
    .await;
    let deleted = ok(
        &["decisions", "delete", "10.0.0.9", "52:54:00:ab:cd:01"],
        &api,
    )
    .await;
    assert!(
        deleted.contains("deleted 10.0.0.9: Agent_Controller_OsKen release_hackers 10.0.0.9"),
        "{deleted}"
    );
    wait_until_async("both releases at the SDN agent", WAIT, || async {
        let c = sdn.calls();
        let released = [
            "release_hackers 10.0.0.9",
            "release_hackers 52:54:00:ab:cd:01",
        ];
        if released.iter().all(|w| c.iter().any(|x| x == w)) {
            Ok(())
        } else {
            Err(c)
        }
    })
    .await;
    assert_eq!(
        ok(&["decisions", "list"], &tree).await,
        "no decision in force\n"
    );
    let e = fails(&["decisions", "delete", "10.0.0.9"], &api).await;
    assert!(e.contains("nothing is held against"), "{e}");

    // Import the text export through the API: the default TTL.
    let imported = ok(&["decisions", "import", &s.path("blocks.txt")], &api).await;
    assert!(
        imported.starts_with("imported 2 block(s) from "),
        "{imported}"
    );
    wait_until_async("the text import at the SDN agent", WAIT, || async {
        let c = sdn.calls();
        let n = c
            .iter()
            .filter(|x| x.starts_with("block_hackers") && x.ends_with(" 600"))
            .count();
        if n == 2 {
            Ok(())
        } else {
            Err(c)
        }
    })
    .await;
    ok(
        &["decisions", "delete", "10.0.0.9", "52:54:00:ab:cd:01"],
        &tree,
    )
    .await;
    // A deletion answers once the policy let go; the releases reach the agent after.
    sdn.wait_for("the second releases at the SDN agent", "release_hackers", 4)
        .await;
    assert_eq!(
        stdout_lines(&ok(&["decisions", "export"], &api).await),
        Vec::<&str>::new()
    );

    // Import the JSON export through the tree: each block with the time it had left.
    let imported = ok(&["decisions", "import", &s.path("blocks.json")], &tree).await;
    assert!(imported.starts_with("imported 2 block(s)"), "{imported}");
    // Likewise an import: its blocks are on their way when it answers. What the agent has
    // seen is counted below only once they are there.
    sdn.wait_for("the JSON import at the SDN agent", "block_hackers", 6)
        .await;
    let listing: serde_json::Value =
        serde_json::from_str(&ok(&["decisions", "list", "--json"], &api).await).expect("json");
    for a in listing["actions"].as_array().expect("actions") {
        let left = a["expires_unix_s"].as_u64().expect("expiry")
            - a["since_unix_s"].as_u64().expect("since");
        assert!(
            (250..=300).contains(&left),
            "the export's time left, not the default: {a}"
        );
    }

    // A bad list: refused with its lines, both ways, and nothing reaches the agent.
    std::fs::write(
        s.path("bad.txt"),
        "10.0.0.1\n10.0.0.300\n# fine\n10.0.0.2 10.0.0.3\n",
    )
    .expect("bad list");
    let before = sdn.calls().len();
    for via in [&api, &tree] {
        let e = fails(&["decisions", "import", &s.path("bad.txt")], via).await;
        assert!(
            e.contains("2 problems, nothing was applied")
                && e.contains("line 2: invalid block target \"10.0.0.300\"")
                && e.contains("line 4: one address"),
            "{e}"
        );
    }
    let e = run(
        args(&["decisions", "import", "-"], &tree),
        Some(b"[{\"target\": \"10.0.0.1\", \"ttl\": 5}]".to_vec()),
    )
    .await
    .expect_err("bad JSON entry");
    assert!(e.contains("entry 1: unknown field `ttl`"), "{e}");
    assert_eq!(sdn.calls().len(), before, "{:?}", sdn.calls());
    assert!(!ok(&["decisions", "list", "--text"], &api)
        .await
        .contains("10.0.0.1\n"));

    // Mutations need the token; reads do not.
    let no_token = ["--api".to_string(), format!("http://{http}")];
    let e = fails(&["decisions", "add", "10.0.0.1"], &no_token).await;
    assert!(
        e.contains("Authorization") && e.contains("--token-file"),
        "{e}"
    );
    ok(&["decisions", "list"], &no_token).await;
}

/// A VO in this process over `ledger`, with its per-node keys, listening for the tree on the
/// port of `s`'s topology: the API's address.
async fn ledger_vo(
    s: &Scratch,
    listener: tokio::net::TcpListener,
    ledger: Arc<Ledger>,
) -> SocketAddr {
    let topo = Topology::load(Path::new(&s.path("topology.toml"))).expect("topology");
    let token = ApiToken::new(TOKEN).expect("token");
    let parts = ApiParts::new(&topo, Some(token)).with_policy(ledger);
    let security = s.keys().security("VO", true).expect("the VO's keys");
    common::serve_vo(parts, security, Some(listener)).await.0
}

fn ledger_topology(vo_port: u16, agent_port: u16) -> String {
    format!(
        r#"
[[machine]]
name = "hv"
address = "127.0.0.1"

[[node]]
name = "VO"
kind = "vo"
location = "hv"
port = {vo_port}

[[node]]
name = "bw"
kind = "agent_bandwidth"
location = "hv"
master = "VO"
port = {agent_port}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_and_the_allowlist_from_the_command_line_both_ways() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let vo_port = listener.local_addr().expect("addr").port();
    let [agent_port] = ports::<1>();
    let s = Scratch::new(&ledger_topology(vo_port, agent_port));
    let ledger = Arc::new(Ledger::default());
    let http = ledger_vo(&s, listener, ledger.clone()).await;
    let (api, tree) = (s.api(http), s.tree());

    // The allowlist: add both ways, list both ways, delete; the configured entry stays.
    assert_eq!(
        ok(
            &["allowlist", "add", "203.0.113.9/24", "--note", "partner"],
            &api
        )
        .await,
        "protected 203.0.113.0/24\n"
    );
    assert_eq!(
        ok(&["allowlist", "add", "2001:DB8::/48"], &tree).await,
        "protected 2001:db8::/48\n"
    );
    let table = ok(&["allowlist", "list"], &tree).await;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["TARGET", "ORIGIN", "NOTE"], "{table}");
    assert!(
        rows.contains(&vec!["203.0.113.0/24", "operator", "partner"]),
        "{table}"
    );
    assert!(
        rows.contains(&vec![
            "192.0.2.0/24",
            "config",
            "the",
            "tree's",
            "own",
            "machines"
        ]),
        "{table}"
    );
    assert_eq!(
        ok(&["allowlist", "list", "--text"], &api).await,
        "192.0.2.0/24\n203.0.113.0/24\n2001:db8::/48\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["allowlist", "list", "--json"], &api).await).expect("json");
    assert_eq!(json[1]["note"], "partner", "{json}");

    // A protected target is refused, and the whole request with it.
    let e = fails(&["decisions", "add", "10.9.0.0/16", "203.0.113.77"], &tree).await;
    assert!(e.contains("entry 2 (203.0.113.77): protected by the allowlist (203.0.113.0/24 from operator: partner)"), "{e}");
    std::fs::write(
        s.path("feed.txt"),
        "10.9.0.0/16\n192.0.2.10  # a gateway of ours\n",
    )
    .expect("feed");
    let e = fails(&["decisions", "import", &s.path("feed.txt")], &api).await;
    assert!(
        e.contains("line 2 (192.0.2.10): protected by the allowlist (192.0.2.0/24 from config"),
        "{e}"
    );

    assert_eq!(
        ok(&["allowlist", "delete", "203.0.113.0/24"], &tree).await,
        "no longer protected: 203.0.113.0/24\n"
    );
    let e = fails(
        &["allowlist", "delete", "192.0.2.0/24", "2001:db8::/48"],
        &api,
    )
    .await;
    assert!(
        e.contains("192.0.2.0/24: 192.0.2.0/24 is protected by config and stays"),
        "{e}"
    );
    assert!(
        ledger.log().contains(&"disallow 2001:db8::/48".to_string()),
        "the other target was still removed"
    );
    let e = fails(&["allowlist", "add", "gateway"], &api).await;
    assert!(e.contains("invalid value 'gateway'"), "{e}");

    // Prefixes, by hand and from a list read on stdin, then deleted by their prefix.
    ok(
        &["decisions", "add", "198.51.100.0/24", "--ttl", "90"],
        &tree,
    )
    .await;
    assert_eq!(ledger.ttl_of("198.51.100.0/24"), Some(90));
    let feed = b"# drop list\n203.0.113.0/25 # was a partner\n2001:db8:bad::/48\n".to_vec();
    let imported = run(
        args(&["decisions", "import", "-", "--ttl", "120"], &api),
        Some(feed.clone()),
    )
    .await
    .expect("stdin import");
    assert_eq!(imported, "imported 2 block(s) from -\n");
    assert_eq!(ledger.ttl_of("2001:db8:bad::/48"), Some(120));
    run(args(&["decisions", "import", "-"], &tree), Some(feed))
        .await
        .expect("again, through the tree");
    let exported = ok(&["decisions", "export"], &tree).await;
    assert_eq!(
        stdout_lines(&exported),
        ["198.51.100.0/24", "2001:db8:bad::/48", "203.0.113.0/25"]
    );
    ok(
        &[
            "decisions",
            "delete",
            "198.51.100.0/24",
            "2001:db8:bad::/48",
        ],
        &api,
    )
    .await;
    ok(&["decisions", "delete", "203.0.113.0/25"], &tree).await;
    assert_eq!(ledger.blocked(), Vec::<String>::new());

    // A list too large for one call through the tree is refused before it is sent.
    let big: String = (0..50_000u32)
        .map(|i| format!("10.{}.{}.{}\n", 100 + (i >> 16), (i >> 8) & 255, i & 255))
        .collect();
    let log = ledger.log().len();
    let e = run(
        args(&["decisions", "import", "-"], &tree),
        Some(big.into_bytes()),
    )
    .await
    .expect_err("too large for the tree");
    assert!(
        e.contains("through the tree in one call; use the HTTP API (--api)"),
        "{e}"
    );
    assert_eq!(ledger.log().len(), log, "nothing reached the policy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_tree_only_an_operator_may_change_decisions() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let vo_port = listener.local_addr().expect("addr").port();
    let [agent_port] = ports::<1>();
    let s = Scratch::new(&ledger_topology(vo_port, agent_port));
    let ledger = Arc::new(Ledger::default());
    ledger_vo(&s, listener, ledger.clone()).await;

    // The key of node `bw` (not an operator's): it may read, never block.
    let security = s.keys().security("bw", false).expect("bw's key");
    let addr: SocketAddr = ([127, 0, 0, 1], vo_port).into();
    let mut peer = vespa_node::Client::connect(addr, &security, "bw", Some("VO"), WAIT)
        .await
        .expect("connect");
    let read = peer.call("policy_decisions", &[]).await.expect("answered");
    assert!(read.is_ok_and(|j| j.contains("\"actions\":[]")));
    let refused = peer
        .call("policy_block", &["10.0.0.1"])
        .await
        .expect("answered");
    assert!(refused.is_err_and(
        |e| e.contains("policy_block may only be called by VO's master chain or an operator")
    ));
    let refused = peer
        .call("policy_allow", &["10.0.0.1"])
        .await
        .expect("answered");
    assert!(refused.is_err());
    assert_eq!(ledger.log(), Vec::<String>::new());

    // The operator may; so may a tool holding the VO's own key (no --operator).
    ok(&["decisions", "add", "10.0.0.1"], &s.tree()).await;
    let own = ["-c", &s.path("topology.toml"), "--key-dir", &s.path("keys")].map(String::from);
    ok(&["decisions", "delete", "10.0.0.1"], &own).await;
    assert_eq!(ledger.log(), ["block 10.0.0.1 600", "release 10.0.0.1"]);
    // Each recorded as the key the handshake proved.
    assert_eq!(
        ledger.who(),
        [
            "block 10.0.0.1 by key:operator:alice",
            "release 10.0.0.1 by key:VO"
        ]
    );
}

/// A decision by an operator for the tests of the ledger's reads, with a long reason (two
/// bytes a character, so that a page is cut by its size before its row count).
fn decision(i: u64) -> vespa_orchestrator::ledger::NewDecision {
    use vespa_orchestrator::ledger::{Decider, NewDecision};
    NewDecision {
        node: "VO".into(),
        kind: "block".into(),
        target: format!("10.1.{}.{}", i / 256, i % 256),
        actuator: "fw".into(),
        actuator_firewall: true,
        decider: Decider::Operator {
            identity: "token:0123456789ab".into(),
            reason: Some("é".repeat(500)),
        },
        cause: None,
        placed_at: 1_000 + i,
        ttl_s: Some(600),
        expires_at: Some(if i < 100 { 1_100 } else { 4_000_000_000 }),
        rate: None,
        dry_run: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledgers_history_and_stories_read_alike_through_the_tree_and_the_api() {
    use vespa_orchestrator::ledger::Subject;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let vo_port = listener.local_addr().expect("addr").port();
    let [agent_port] = ports::<1>();
    let s = Scratch::new(&ledger_topology(vo_port, agent_port));
    let real = vespa_orchestrator::ledger::Ledger::open(Path::new(&s.path("ledger.db")))
        .await
        .expect("the ledger");
    // 700 decisions: several pages through the tree, by size and by count. The first 100
    // end at their expiry (1,100); one has a story longer than a page.
    let mut ids = Vec::new();
    for i in 0..700 {
        ids.push(real.place(decision(i)).0);
    }
    assert_eq!(
        real.expire(2_000, "TTL: removed by the actuator's reaper"),
        100
    );
    let long = ids[650];
    let about = Subject {
        node: "VO".into(),
        kind: "block".into(),
        target: "10.1.2.138".into(),
    };
    for n in 0..600 {
        real.note(long, &about, "renewed", &format!("{n} {}", "ü".repeat(400)));
    }
    assert_eq!(
        real.verified(&about, "passed", "passed: 3 <= 100"),
        Some(long)
    );
    real.flush().await.expect("written");

    let topo = Topology::load(Path::new(&s.path("topology.toml"))).expect("topology");
    let token = ApiToken::new(TOKEN).expect("token");
    let parts = ApiParts::new(&topo, Some(token))
        .with_policy(Arc::new(Ledger::default()))
        .with_ledger(Some(real.clone()));
    let security = s.keys().security("VO", true).expect("the VO's keys");
    let http = common::serve_vo(parts, security, Some(listener)).await.0;
    let (api, tree) = (s.api(http), s.tree());

    // The same answer, byte for byte, whichever way it is asked.
    for words in [
        &["decisions", "list", "--all", "--json"][..],
        &["decisions", "list", "--all"],
        &["decisions", "list", "--since", "1500", "--json"],
    ] {
        let (a, t) = (ok(words, &api).await, ok(words, &tree).await);
        assert!(a == t, "{words:?}: the API's and the tree's answers differ");
    }
    let all: serde_json::Value =
        serde_json::from_str(&ok(&["decisions", "list", "--all", "--json"], &tree).await)
            .expect("json");
    let listed: Vec<i64> = all["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .map(|d| d["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(listed, ids, "every decision once, oldest first");
    assert_eq!(all["decisions"][650]["verification"], "passed");
    let since: serde_json::Value =
        serde_json::from_str(&ok(&["decisions", "list", "--since", "1500", "--json"], &tree).await)
            .expect("json");
    assert_eq!(
        since["decisions"].as_array().map(Vec::len),
        Some(600),
        "those that ended at 1,100 are left out"
    );
    let table = ok(&["decisions", "list", "--all"], &tree).await;
    assert!(table.starts_with("ID\tPLACED (UTC)"), "{}", &table[..80]);

    // One page on the wire: cut by its size, under the frame, with where the next starts.
    let alice = "operator:alice";
    let key = vespa_proto::key::load(&s.keys_dir().join(format!("{alice}.key"))).expect("key");
    let ring = vespa_node::KeyRing {
        own: vec![key],
        root: Vec::new(),
    };
    let security = vespa_node::Security::Keys(Arc::new(ring));
    let addr: SocketAddr = ([127, 0, 0, 1], vo_port).into();
    let mut peer = vespa_node::Client::connect(addr, &security, alice, Some("VO"), WAIT)
        .await
        .expect("connect");
    let reply = peer
        .call("policy_history", &["0"])
        .await
        .expect("answered")
        .expect("a page");
    assert!(reply.len() <= 256 << 10, "{} bytes", reply.len());
    let page: serde_json::Value = serde_json::from_str(&reply).expect("json");
    let rows = page["Ok"]["decisions"].as_array().map_or(0, Vec::len);
    assert!((1..256).contains(&rows), "{rows} rows");
    assert_eq!(page["Ok"]["next"], page["Ok"]["decisions"][0]["id"]);

    let id = long.to_string();
    for words in [
        &["decisions", "show", id.as_str()][..],
        &["decisions", "show", id.as_str(), "--json"],
    ] {
        let (a, t) = (ok(words, &api).await, ok(words, &tree).await);
        assert!(a == t, "{words:?}: the API's and the tree's answers differ");
    }
    let story = ok(&["decisions", "show", &id], &tree).await;
    assert_eq!(
        story.lines().filter(|l| l.contains(" renewed ")).count(),
        600,
        "the whole story, over several pages"
    );
    assert!(
        story.contains("  verification: passed: 3 <= 100\n"),
        "{}",
        &story[..400]
    );
    let e = fails(&["decisions", "show", "99999"], &tree).await;
    assert!(e.contains("no decision 99999 in the ledger"), "{e}");
}
