//! A VESPA tree of real processes: a scratch directory with a fresh key and a generated
//! topology, the workspace's `vespa-orchestrator` and `vespa-agent` binaries started on it
//! (optionally inside a network namespace, logs in JSON lines), and a client that calls verbs
//! on the running tree.
//!
//! Shared by the end-to-end tests (through their `kit` module) and `vespa-demo`. Each operation
//! comes in two flavours: a fallible one ([`Tree::create`], [`Tree::start`]) for programs,
//! and a panicking one ([`Tree::new`], [`Tree::spawn`]) that keeps the tests short.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use vespa_node::{Client, Security};
use vespa_proto::Psk;

/// Node ports of generated topologies are usually free loopback ports.
pub use crate::daemons::free_port;

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
    /// TOML lines appended to the node's table (e.g. `[node.params]`).
    pub extra: String,
}

impl N {
    /// A node under `master` (`None`: a root) on machine `host` at `port`, with no extra TOML.
    pub fn new(
        name: &'static str,
        kind: &'static str,
        master: Option<&'static str>,
        port: u16,
    ) -> N {
        N {
            name,
            kind,
            machine: "host",
            master,
            port,
            extra: String::new(),
        }
    }

    /// A root node (no master) on machine `host` at a [`free_port`], with no extra TOML.
    pub fn root(name: &'static str, kind: &'static str) -> N {
        N::new(name, kind, None, free_port())
    }

    /// A node under `master` on machine `host` at a [`free_port`], with no extra TOML.
    pub fn child(name: &'static str, kind: &'static str, master: &'static str) -> N {
        N::new(name, kind, Some(master), free_port())
    }

    /// This node on `machine` instead of `host`.
    pub fn on(self, machine: &'static str) -> N {
        N { machine, ..self }
    }

    /// This node with `toml` as the lines appended to its table.
    pub fn extra(self, toml: impl Into<String>) -> N {
        N {
            extra: toml.into(),
            ..self
        }
    }
}

/// A scratch directory, removed on drop unless [`Scratch::keep`] was called.
pub struct Scratch {
    pub dir: PathBuf,
    keep: bool,
}

impl Scratch {
    /// A new directory under the system's temporary directory.
    pub fn create(tag: &str) -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(crate::unique(&format!("vespa-{tag}-")));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch { dir, keep: false })
    }

    /// [`Scratch::create`], panicking on failure (tests).
    pub fn new(tag: &str) -> Scratch {
        Scratch::create(tag).expect("scratch dir")
    }

    /// Leaves the directory (logs, topology) in place when this guard drops.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
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
    /// Writes `settings` (TOML lines), the machines and the nodes, and a fresh key, in a new
    /// scratch directory.
    pub fn create(
        tag: &str,
        settings: &str,
        machines: &[(&str, IpAddr)],
        nodes: &[N],
    ) -> anyhow::Result<Tree> {
        let scratch = Scratch::create(tag)?;
        let key = scratch.dir.join("psk");
        let psk = vespa_proto::key::generate(&key, false)
            .map_err(|e| anyhow!("making the key {}: {e}", key.display()))?;
        let mut text = format!("[settings]\nkey_file = \"psk\"\n{settings}\n");
        for (name, addr) in machines {
            let _ = write!(
                text,
                "\n[[machine]]\nname = \"{name}\"\naddress = \"{addr}\"\n"
            );
        }
        let mut addrs = BTreeMap::new();
        for n in nodes {
            let _ = write!(
                text,
                "\n[[node]]\nname = \"{}\"\nkind = \"{}\"\nlocation = \"{}\"\nport = {}\n",
                n.name, n.kind, n.machine, n.port
            );
            if let Some(m) = n.master {
                let _ = writeln!(text, "master = \"{m}\"");
            }
            text.push_str(&n.extra);
            let ip = machines
                .iter()
                .find(|(m, _)| *m == n.machine)
                .ok_or_else(|| anyhow!("node {}: no machine named {:?}", n.name, n.machine))?
                .1;
            addrs.insert(n.name, SocketAddr::new(ip, n.port));
        }
        let config = scratch.dir.join("topology.toml");
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        Ok(Tree {
            scratch,
            config,
            key,
            psk,
            addrs,
        })
    }

    /// [`Tree::create`], panicking on failure (tests).
    pub fn new(tag: &str, settings: &str, machines: &[(&str, IpAddr)], nodes: &[N]) -> Tree {
        Tree::create(tag, settings, machines, nodes).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts `program` (`vespa-orchestrator` or `vespa-agent`, from the workspace's build
    /// directory) with `run` on this config, optionally inside a network namespace. `pre` are
    /// arguments before `run` (agent flags), `post` after `run`'s own. Its stderr goes to
    /// `<label>.log` in the scratch directory.
    pub fn start(
        &self,
        label: &str,
        program: &str,
        netns: Option<&str>,
        pre: &[&str],
        nodes: &[&str],
        post: &[&str],
    ) -> anyhow::Result<Proc> {
        let cmd = match netns {
            Some(ns) => {
                let bin = crate::try_workspace_bin(program).map_err(anyhow::Error::msg)?;
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(crate::try_workspace_bin(program).map_err(anyhow::Error::msg)?),
        };
        self.start_cmd(cmd, label, program, pre, nodes, post)
    }

    /// Starts `program` with `run` on this config as on a machine of its own: inside network
    /// namespace `netns`, with host name `hostname` (a UTS namespace of its own, so
    /// `gethostname` says it), and no `--node`: it runs the nodes of the machines it finds
    /// it is.
    pub fn start_on_host(
        &self,
        label: &str,
        program: &str,
        netns: &str,
        hostname: &str,
        pre: &[&str],
        post: &[&str],
    ) -> anyhow::Result<Proc> {
        let cmd = host_command(netns, hostname, program)?;
        self.start_cmd(cmd, label, program, pre, &[], post)
    }

    fn start_cmd(
        &self,
        mut cmd: Command,
        label: &str,
        program: &str,
        pre: &[&str],
        nodes: &[&str],
        post: &[&str],
    ) -> anyhow::Result<Proc> {
        let log = self.scratch.dir.join(format!("{label}.log"));
        cmd.arg("--log-format")
            .arg("json")
            .args(pre)
            .arg("run")
            .arg("--config")
            .arg(&self.config);
        for n in nodes {
            cmd.args(["--node", n]);
        }
        cmd.args(post);
        // The orchestrator serves its HTTP API on 127.0.0.1:8080 by default; parallel tests
        // would fight over that port, so it is off unless asked for.
        if program == "vespa-orchestrator" && !post.contains(&"--http") {
            cmd.args(["--http", "off"]);
        }
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().with_context(|| format!("starting {program}"))?;
        Ok(Proc {
            label: label.to_string(),
            child: Some(child),
            log,
        })
    }

    /// [`Tree::start`] without `post` arguments, panicking on failure (tests).
    pub fn spawn(
        &self,
        label: &str,
        program: &str,
        netns: Option<&str>,
        pre: &[&str],
        nodes: &[&str],
    ) -> Proc {
        self.spawn_with(label, program, netns, pre, nodes, &[])
    }

    /// [`Tree::start`], panicking on failure (tests).
    pub fn spawn_with(
        &self,
        label: &str,
        program: &str,
        netns: Option<&str>,
        pre: &[&str],
        nodes: &[&str],
        post: &[&str],
    ) -> Proc {
        self.start(label, program, netns, pre, nodes, post)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Calls `verb` on `target` through `via` (connecting to `via`'s address).
    pub fn call_via(
        &self,
        via: &str,
        target: &str,
        verb: &str,
        args: &[&str],
    ) -> Result<String, String> {
        let addr = *self
            .addrs
            .get(via)
            .ok_or_else(|| format!("no node named {via:?} in the topology"))?;
        call_at(addr, &self.psk, via, target, verb, args)
    }

    /// Calls through the VO.
    pub fn call(&self, target: &str, verb: &str, args: &[&str]) -> Result<String, String> {
        self.call_via("VO", target, verb, args)
    }
}

/// A command that runs the workspace's `program` inside network namespace `netns` with host
/// name `hostname`, in a UTS namespace of its own (`unshare --uts`), as on a machine of its
/// own; arguments added to it go to `program`. The process is `program` itself (each step
/// `exec`s the next), so signals reach it.
pub fn host_command(netns: &str, hostname: &str, program: &str) -> anyhow::Result<Command> {
    let bin = crate::try_workspace_bin(program).map_err(anyhow::Error::msg)?;
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns, "unshare", "--uts", "--", "sh", "-c"])
        .arg("hostname \"$0\" && exec \"$@\"")
        .arg(hostname)
        .arg(bin);
    Ok(c)
}

/// One call over a fresh connection. Transport failures become `Err` text too.
pub fn call_at(
    addr: SocketAddr,
    psk: &Psk,
    via: &str,
    target: &str,
    verb: &str,
    args: &[&str],
) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let mut c = Client::connect(
            addr,
            &Security::Psk(psk.clone()),
            "tree-test",
            Some(via),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| format!("connect: {e}"))?;
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

/// A child process of the tree, SIGKILLed on drop if still running.
pub struct Proc {
    pub label: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// The process id (panics once it was reaped).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends a signal (nothing once it was reaped).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `Some(status)` once the process has exited (reaped), `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let st = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(st)
    }

    /// Waits for the process to exit (failing after [`WAIT`], with its log).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let label = self.label.clone();
        vespa_testkit::try_wait_until(&format!("{label} to exit"), WAIT, || {
            self.exited().ok_or("running")
        })
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", self.log_text()))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log lines (non-JSON lines are skipped).
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The fields of the first log line whose message is `message` and whose `node` is `node`.
    pub fn log_event(&self, message: &str, node: &str) -> Option<serde_json::Value> {
        self.log_lines()
            .into_iter()
            .find(|l| l["fields"]["message"] == message && l["fields"]["node"] == node)
            .map(|l| l["fields"].clone())
    }

    /// The VmRSS of the process in KiB (via the real pid, also through `ip netns exec`).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}
