//! Kit shared by the `tree_*` tests: a temporary directory with a key and a generated
//! topology, the real binaries as child processes (killed on drop, logs in JSON lines), and a
//! client that calls verbs on the running tree.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use vespa_node::{Client, Security};
use vespa_proto::Psk;
use vespa_tests::workspace_bin;

/// A failure bound for waits (never a synchronisation: every wait polls for an event).
pub const WAIT: Duration = Duration::from_secs(30);

/// A node of a generated topology.
#[derive(Clone)]
pub struct N {
    pub name: &'static str,
    pub kind: &'static str,
    pub machine: &'static str,
    pub master: Option<&'static str>,
    pub port: u16,
    pub extra: String,
}

/// A scratch directory, removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(vespa_tests::unique(&format!("vespa-{tag}-")));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch { dir }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free TCP port on loopback (bound and released; the tests run their nodes right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A topology on disk plus its key.
pub struct Tree {
    pub scratch: Scratch,
    pub config: PathBuf,
    pub key: PathBuf,
    pub psk: Psk,
    pub addrs: BTreeMap<&'static str, SocketAddr>,
}

impl Tree {
    /// Writes `settings` (TOML lines), the machines and the nodes, and a fresh key.
    pub fn new(tag: &str, settings: &str, machines: &[(&str, IpAddr)], nodes: &[N]) -> Tree {
        let scratch = Scratch::new(tag);
        let key = scratch.dir.join("psk");
        let psk = vespa_proto::key::generate(&key, false).expect("keygen");
        let mut text = format!("[settings]\nkey_file = \"psk\"\n{settings}\n");
        for (name, addr) in machines {
            let _ = write!(text, "\n[[machine]]\nname = \"{name}\"\naddress = \"{addr}\"\n");
        }
        let mut addrs = BTreeMap::new();
        for n in nodes {
            let _ = write!(text, "\n[[node]]\nname = \"{}\"\nkind = \"{}\"\nlocation = \"{}\"\nport = {}\n", n.name, n.kind, n.machine, n.port);
            if let Some(m) = n.master {
                let _ = writeln!(text, "master = \"{m}\"");
            }
            text.push_str(&n.extra);
            let ip = machines.iter().find(|(m, _)| *m == n.machine).expect("machine").1;
            addrs.insert(n.name, SocketAddr::new(ip, n.port));
        }
        let config = scratch.dir.join("topology.toml");
        std::fs::write(&config, text).expect("write config");
        Tree { scratch, config, key, psk, addrs }
    }

    /// Starts `program` (`vespa-orchestrator` or `vespa-agent`) with `run` on this config,
    /// optionally inside a network namespace. `pre` are arguments before `run` (agent flags).
    pub fn spawn(&self, label: &str, program: &str, netns: Option<&str>, pre: &[&str], nodes: &[&str]) -> Proc {
        self.spawn_with(label, program, netns, pre, nodes, &[])
    }

    /// As [`Tree::spawn`], with `post` appended after `run`'s own arguments.
    pub fn spawn_with(&self, label: &str, program: &str, netns: Option<&str>, pre: &[&str], nodes: &[&str], post: &[&str]) -> Proc {
        let log = self.scratch.dir.join(format!("{label}.log"));
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(workspace_bin(program));
                c
            }
            None => Command::new(workspace_bin(program)),
        };
        cmd.arg("--log-format").arg("json").args(pre).arg("run").arg("--config").arg(&self.config);
        for n in nodes {
            cmd.args(["--node", n]);
        }
        cmd.args(post);
        // The orchestrator serves its HTTP API on 127.0.0.1:8080 by default; parallel tests
        // would fight over that port, so it is off unless a test asks for it.
        if program == "vespa-orchestrator" && !post.contains(&"--http") {
            cmd.args(["--http", "off"]);
        }
        cmd.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log file"));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {program}: {e}"));
        Proc { label: label.to_string(), child: Some(child), log }
    }

    /// Calls `verb` on `target` through `via` (connecting to `via`'s address).
    pub fn call_via(&self, via: &str, target: &str, verb: &str, args: &[&str]) -> Result<String, String> {
        call_at(self.addrs[via], &self.psk, via, target, verb, args)
    }

    /// Calls through the VO.
    pub fn call(&self, target: &str, verb: &str, args: &[&str]) -> Result<String, String> {
        self.call_via("VO", target, verb, args)
    }
}

/// One call over a fresh connection. Transport failures become `Err` text too.
pub fn call_at(addr: SocketAddr, psk: &Psk, via: &str, target: &str, verb: &str, args: &[&str]) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    rt.block_on(async {
        let mut c = Client::connect(addr, &Security::Psk(psk.clone()), "tree-test", Some(via), Duration::from_secs(10)).await.map_err(|e| format!("connect: {e}"))?;
        let r = if target == via {
            c.call(verb, args).await
        } else {
            let mut a = vec![target, verb];
            a.extend_from_slice(args);
            c.call("call", &a).await
        };
        c.close().await;
        r.map_err(|e| format!("transport: {e}"))?
    })
}

/// Polls `f` until it returns `Some`, failing after `WAIT`.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A node's `stats`, parsed.
pub fn stats(tree: &Tree, via: &str, target: &str) -> Option<vespa_node::Stats> {
    tree.call_via(via, target, "stats", &[]).ok().and_then(|s| serde_json::from_str(&s).ok())
}

/// Calls a verb on the VO (directly, or from inside its network namespace).
pub type VoCall<'a> = &'a dyn Fn(&str, &[&str]) -> Result<String, String>;

/// Every alert the VO keeps (following `next` until the end), as JSON values.
pub fn vo_alerts(tree: &Tree, via_vo: VoCall<'_>) -> Vec<serde_json::Value> {
    try_vo_alerts(tree, via_vo).expect("get_alerts from the VO")
}

/// [`vo_alerts`], or `None` while the VO does not answer (still starting).
pub fn try_vo_alerts(tree: &Tree, via_vo: VoCall<'_>) -> Option<Vec<serde_json::Value>> {
    let _ = tree;
    let mut out = Vec::new();
    let mut from = 0u64;
    loop {
        let from_s = from.to_string();
        let page: serde_json::Value = serde_json::from_str(&via_vo("get_alerts", &[&from_s]).ok()?).expect("get_alerts answers JSON");
        let alerts = page["alerts"].as_array().expect("alerts").clone();
        if alerts.is_empty() {
            return Some(out);
        }
        out.extend(alerts);
        from = page["next"].as_u64().expect("next");
    }
}

/// Sequence numbers of `origin`'s alerts, in the order given.
pub fn seqs_of(alerts: &[serde_json::Value], origin: &str) -> Vec<u64> {
    alerts.iter().filter(|a| a["origin"] == origin).map(|a| a["seq"].as_u64().expect("seq")).collect()
}

/// Asserts `seqs` is exactly `first..=last`: nothing lost, nothing twice, in order.
pub fn assert_exactly_once(seqs: &[u64], first: u64, last: u64, what: &str) {
    assert!(!seqs.is_empty(), "{what}: no alert at all");
    let mut dups = 0;
    let mut gaps = Vec::new();
    for w in seqs.windows(2) {
        if w[1] <= w[0] {
            dups += 1;
        } else if w[1] != w[0] + 1 {
            gaps.push((w[0], w[1]));
        }
    }
    assert_eq!(dups, 0, "{what}: {dups} alert(s) repeated or out of order");
    assert!(gaps.is_empty(), "{what}: alerts lost between {:?}", &gaps[..gaps.len().min(5)]);
    assert_eq!(seqs[0], first, "{what}: the first alert ({first}) is missing (VO starts at {})", seqs[0]);
    assert_eq!(*seqs.last().expect("non-empty"), last, "{what}: alerts after {} are missing (the origin raised up to {last})", seqs.last().expect("last"));
}

/// A child process, SIGKILLed on drop if still running.
pub struct Proc {
    pub label: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit (failing after `WAIT`).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let c = self.child.as_mut().expect("running");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = c.try_wait().expect("try_wait") {
                self.child = None;
                return st;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {WAIT:?}; log:\n{}", self.label, self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log lines (non-JSON lines are skipped).
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.log_text().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The fields of the first log line whose message is `message` and whose `node` is `node`.
    pub fn log_event(&self, message: &str, node: &str) -> Option<serde_json::Value> {
        self.log_lines().into_iter().find(|l| l["fields"]["message"] == message && l["fields"]["node"] == node).map(|l| l["fields"].clone())
    }

    /// The VmRSS of the process in KiB (via the real pid, also through `ip netns exec`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmRSS")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Reads the agent's final numbering from its "node stopped" log line.
pub fn final_seqs(p: &Proc, node: &str) -> (u64, u64) {
    let f = p.log_event("node stopped", node).unwrap_or_else(|| panic!("{} has no 'node stopped' line for {node}:\n{}", p.label, p.log_text()));
    assert_eq!(f["unacknowledged"], 0, "{node} exited with unacknowledged alerts: {f}");
    assert_eq!(f["queue_overflow"], 0, "{node} dropped alerts (queue full): {f}");
    (f["first_seq"].as_u64().expect("first_seq"), f["last_seq"].as_u64().expect("last_seq"))
}

/// True when a file exists (small helper for journal checks).
pub fn exists(p: &Path) -> bool {
    p.exists()
}
