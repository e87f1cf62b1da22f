//! Running the nodes of one process from a topology (shared by `vespa-agent run` and
//! `vespa-orchestrator run`).
//!
//! One process may host several nodes (all HOs and the VO of one machine, say); each still
//! has its own listener and talks to its master over TCP like any other node, so a process
//! boundary never changes behaviour.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, NodeDef, Topology};
use crate::error::NodeError;
use crate::host::{self, ThisHost};
use crate::node::{Exit, Hooks, Node, NodeHandle, NodeSpec};
use crate::transport::Security;

/// The topology and key a command uses (`--config`, `--key`), shared by every binary.
#[derive(clap::Args, Debug, Clone)]
pub struct TopologyArgs {
    /// Topology file (.toml, or the 2014 .ini). Default: the embedded loopback topology.
    #[arg(long, short = 'c', env = "VESPA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Pre-shared key file, shared by the whole tree (the 2014 way). Default: `key_file` of
    /// the topology's [settings].
    #[arg(long, env = "VESPA_KEY")]
    pub key: Option<PathBuf>,
    /// Directory of per-node keys (`vespa-orchestrator keygen --per-node DIR`): each node
    /// loads `<DIR>/<node>.key` (and `<node>.previous.key` during a rotation), the VO also
    /// `root.key` to check operators. Overrides the shared key.
    #[arg(long, env = "VESPA_KEY_DIR", conflicts_with = "key")]
    pub key_dir: Option<PathBuf>,
}

/// Where the nodes of a process get their keys.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// One key for the whole tree.
    Shared(vespa_proto::Psk),
    /// A directory of per-node keys.
    PerNode(PathBuf),
}

/// The key of node `name` of `topo` under the root key: the VO's derived from the root, each
/// other node's from its master's (see [`vespa_proto::key::derive`]). `None` for a name the
/// topology does not have.
pub fn node_key(topo: &Topology, root: &vespa_proto::Psk, name: &str) -> Option<vespa_proto::Psk> {
    let mut chain = vec![topo.node(name)?];
    while let Some(m) = chain.last().and_then(|n| n.master.as_deref()) {
        chain.push(topo.node(m)?);
        if chain.len() > topo.nodes.len() {
            return None; // a cycle; validation refuses those
        }
    }
    let mut key = root.clone();
    for n in chain.iter().rev() {
        key = vespa_proto::key::derive(&key, &n.name);
    }
    Some(key)
}

/// The key of operator `name` under the root key (its handshake name is
/// [`vespa_proto::key::operator_name`]).
pub fn operator_key(root: &vespa_proto::Psk, name: &str) -> vespa_proto::Psk {
    vespa_proto::key::derive(root, &vespa_proto::key::operator_name(name))
}

/// The file of key `name` in a per-node key directory, and of the key it replaces during a
/// rotation.
pub fn key_files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.previous.key")),
    )
}

impl KeySource {
    /// The protection of node `name`'s links (`vo`: the root keys are loaded too, when
    /// present, so operators can be checked).
    pub fn security(&self, name: &str, vo: bool) -> Result<Security, String> {
        let dir = match self {
            KeySource::Shared(psk) => return Ok(Security::Psk(psk.clone())),
            KeySource::PerNode(dir) => dir,
        };
        let load = |label: &str, required: bool| -> Result<Vec<vespa_proto::Psk>, String> {
            let (current, previous) = key_files(dir, label);
            let mut keys = Vec::new();
            if required || current.exists() {
                keys.push(vespa_proto::key::load(&current).map_err(|e| {
                    format!("loading the key of {label} (make them with `vespa-orchestrator keygen --per-node DIR`): {e}")
                })?);
            }
            if previous.exists() {
                keys.push(vespa_proto::key::load(&previous).map_err(|e| e.to_string())?);
            }
            Ok(keys)
        };
        let own = load(name, true)?;
        let root = if vo { load("root", false)? } else { Vec::new() };
        Ok(Security::Keys(std::sync::Arc::new(
            crate::transport::KeyRing { own, root },
        )))
    }
}

impl TopologyArgs {
    /// The topology file, or the embedded default.
    pub fn load(&self) -> Result<Topology, ConfigError> {
        load_topology(self.config.as_deref())
    }

    /// Where keys come from: `--key-dir` (or the topology's `key_dir`) for per-node keys,
    /// else the shared key.
    pub fn keys(&self, topo: &Topology) -> Result<KeySource, String> {
        match self
            .key_dir
            .clone()
            .or_else(|| topo.settings.key_dir.clone())
        {
            Some(dir) if self.key.is_none() => Ok(KeySource::PerNode(dir)),
            _ => self.psk(topo).map(KeySource::Shared),
        }
    }

    /// The pre-shared key: `--key`, else the topology's `key_file`. The error names the file
    /// and how to make one.
    pub fn psk(&self, topo: &Topology) -> Result<vespa_proto::Psk, String> {
        let path = self.key.as_deref().unwrap_or(&topo.settings.key_file);
        vespa_proto::key::load(path).map_err(|e| {
            format!(
                "loading the pre-shared key (make one with `vespa-orchestrator keygen PATH`): {e}"
            )
        })
    }
}

/// The nodes a `run` command starts: which topology, which of its nodes, or only a check.
#[derive(clap::Args, Debug, Clone)]
pub struct RunNodesArgs {
    /// The topology and key.
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Validate the topology, print the resolved tree, which machine this host is (and why)
    /// and the nodes this process would run, and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Run only these nodes (repeatable).
    #[arg(long = "node", short = 'n')]
    pub nodes: Vec<String>,
    /// Run the nodes located on this machine (of the `[[machine]]` names). Default: the
    /// machines that are this host, by host name or by address.
    #[arg(long, conflicts_with = "nodes")]
    pub machine: Option<String>,
}

impl RunNodesArgs {
    /// The nodes of `topo` this process runs (see [`select`]): those named, those of
    /// `--machine`, else those of the machines that are this host ([`host::machines_of`]).
    /// With `--check-config`, also prints the tree, the machines matched and why, and that
    /// list (the tree even when the selection then fails).
    pub fn select<'a>(
        &self,
        topo: &'a Topology,
        wanted: impl Fn(&NodeDef) -> bool,
    ) -> Result<Vec<&'a NodeDef>, String> {
        if self.check_config {
            print!("{}", topo.render_tree());
        }
        let scope = if !self.nodes.is_empty() {
            Scope::Nodes(&self.nodes)
        } else if let Some(m) = &self.machine {
            Scope::Machines(vec![m.clone()])
        } else {
            let this = ThisHost::detect()?;
            let matched = host::machines_of(topo, &this)?;
            for m in &matched {
                tracing::info!(machine = ?m.machine, why = ?m.why.iter().map(ToString::to_string).collect::<Vec<_>>(), "this host is a machine of the topology");
                if self.check_config {
                    println!("{m}");
                }
            }
            Scope::Machines(matched.into_iter().map(|m| m.machine).collect())
        };
        let nodes = select(topo, scope, wanted)?;
        if self.check_config {
            let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
            println!("this process would run: {}", names.join(", "));
        }
        Ok(nodes)
    }
}

/// Where the nodes of a process keep their unacknowledged alerts (`--spool-dir`,
/// `--no-spool`), shared by `vespa-agent run` and `vespa-orchestrator run` so both say and
/// do the same. Without either flag, the topology's `[settings] spool_dir` decides.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SpoolArgs {
    /// Keep each node's unacknowledged alerts in DIR/<node>.spool, so that a restarted node
    /// sends again what its master and the VO had not acknowledged (overrides `spool_dir` of
    /// the topology's [settings]; the packaged units' state directory is /var/lib/vespa).
    #[arg(long, value_name = "DIR", env = "VESPA_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Keep unacknowledged alerts in memory only, whatever the topology says.
    #[arg(long, conflicts_with = "spool_dir")]
    pub no_spool: bool,
}

impl SpoolArgs {
    /// The topology's `spool_dir` as these flags change it.
    pub fn apply(&self, topo: &mut Topology) {
        if self.no_spool {
            topo.settings.spool_dir = None;
        } else if let Some(dir) = &self.spool_dir {
            topo.settings.spool_dir = Some(dir.clone());
        }
    }
}

/// Which nodes of a topology a process is asked to run.
#[derive(Debug, Clone)]
pub enum Scope<'n> {
    /// These nodes (`--node`).
    Nodes(&'n [String]),
    /// The nodes located on these machines (`--machine`, or the machines this host is).
    Machines(Vec<String>),
    /// Every node.
    All,
}

/// The topology in `path`, or the embedded default.
pub fn load_topology(path: Option<&Path>) -> Result<Topology, ConfigError> {
    match path {
        Some(p) => Topology::load(p),
        None => Ok(Topology::embedded_default()),
    }
}

/// Binds a listener with `SO_REUSEADDR`, so a node restarted right after being killed can
/// take its port back while old connections linger in TIME_WAIT.
pub fn bind(node: &str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    let err = |source| NodeError::Bind {
        node: node.to_string(),
        addr,
        source,
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

/// Which nodes of `topo` this process runs: the ones named, those on the machines, or every
/// node `wanted` accepts. An unknown name, or a named node `wanted` refuses, is an error; so
/// is a selection with no node for this program.
pub fn select<'a>(
    topo: &'a Topology,
    scope: Scope<'_>,
    wanted: impl Fn(&NodeDef) -> bool,
) -> Result<Vec<&'a NodeDef>, String> {
    let machines = match scope {
        Scope::Nodes(names) => {
            return names
                .iter()
                .map(|n| match topo.node(n) {
                    Some(d) if wanted(d) => Ok(d),
                    Some(d) => Err(format!(
                        "node {n:?} is of kind {}, which this program does not run",
                        d.role
                    )),
                    None => Err(format!("{}: no node named {n:?}", topo.source)),
                })
                .collect();
        }
        Scope::Machines(m) => Some(m),
        Scope::All => None,
    };
    for m in machines.iter().flatten() {
        if topo.machine(m).is_none() {
            return Err(format!("{}: no machine named {m:?}", topo.source));
        }
    }
    let chosen: Vec<&NodeDef> = topo
        .nodes
        .iter()
        .filter(|n| wanted(n) && machines.as_ref().is_none_or(|ms| ms.contains(&n.location)))
        .collect();
    if chosen.is_empty() {
        let on = match machines.as_deref() {
            None => String::new(),
            Some([one]) => format!(" on machine {one:?}"),
            Some(many) => format!(" on machines {}", many.join(", ")),
        };
        return Err(format!(
            "{}: no node for this program to run{on}",
            topo.source
        ));
    }
    Ok(chosen)
}

/// Runs `nodes` until `shutdown` completes (then every node stops in order) or every node
/// was destroyed. Listeners are bound first, so a port conflict fails before anything runs.
pub async fn run_nodes(
    topo: &Topology,
    nodes: &[&NodeDef],
    security: &KeySource,
    hooks: impl FnMut(&NodeDef) -> Hooks,
    shutdown: impl Future<Output = ()>,
) -> Result<Vec<(String, Exit)>, NodeError> {
    run_nodes_with_handles(topo, nodes, security, hooks, |_, _| {}, shutdown).await
}

/// As [`run_nodes`], giving `on_ready` each node's [`NodeHandle`] once every node is built
/// and before any runs, so the embedding program can serve from them (the orchestrator's
/// HTTP API reads the VO through its handle).
pub async fn run_nodes_with_handles(
    topo: &Topology,
    nodes: &[&NodeDef],
    security: &KeySource,
    mut hooks: impl FnMut(&NodeDef) -> Hooks,
    mut on_ready: impl FnMut(&NodeDef, NodeHandle),
    shutdown: impl Future<Output = ()>,
) -> Result<Vec<(String, Exit)>, NodeError> {
    if matches!(security, KeySource::Shared(_)) {
        tracing::warn!("the tree shares one key: whoever holds it can act as any node or operator (per-node keys: docs/protocol.md#keys)");
    }
    let mut ready = Vec::new();
    for def in nodes {
        let listener = bind(&def.name, topo.listen_addr(def))?;
        let vo = def.role == crate::config::Role::Vo;
        let keys = security
            .security(&def.name, vo)
            .map_err(NodeError::NodeKeys)?;
        let spec = NodeSpec::from_topology(topo, &def.name, keys)
            .expect("selected nodes come from the topology");
        ready.push((def.name.clone(), Node::new(spec, hooks(def))?, listener));
    }
    for ((_, node, _), def) in ready.iter().zip(nodes) {
        on_ready(def, node.handle());
    }
    let stop = CancellationToken::new();
    let mut running = tokio::task::JoinSet::new();
    let names: Vec<String> = ready.iter().map(|(n, _, _)| n.clone()).collect();
    for (name, node, listener) in ready {
        let stop = stop.clone();
        running
            .spawn(async move { (name, node.run(Some(listener), stop.cancelled_owned()).await) });
    }
    // Every node is built and listening: under systemd, the service is up.
    crate::service::ready(&format!("running {}", names.join(", ")));
    let watchdog = crate::service::spawn_watchdog();
    let _hangup = keep_running_on_hangup(
        "SIGHUP received: a process with a policy re-reads it; the topology and the sensors' settings take a restart",
    );
    tokio::pin!(shutdown);
    let mut exits = Vec::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = &mut shutdown, if !stopping => {
                stopping = true;
                crate::service::stopping();
                stop.cancel();
            }
            done = running.join_next() => match done {
                None => break,
                Some(Ok((name, Ok(exit)))) => exits.push((name, exit)),
                Some(Ok((_, Err(e)))) => return Err(e),
                Some(Err(join)) => return Err(NodeError::Protocol(format!("node task failed: {join}"))),
            },
        }
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    Ok(exits)
}

/// Takes SIGHUP from its default action (ending the process) for a daemon's whole life,
/// from its first line: the sensors load and the nodes start before any runtime listens
/// for it, and a hang-up then (`systemctl kill -s HUP` during start, a reload of something
/// else) must not end a service that is starting. [`keep_running_on_hangup`] then logs each
/// one. Short commands (a `decisions` listing in a terminal) do not call it: a closed
/// terminal still ends them.
pub fn hold_hangup() {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, seen) {
        tracing::warn!(error = %e, "SIGHUP left to its default action: it would end this process");
    }
}

/// Takes SIGHUP over from its default action (ending the process), so that `systemctl
/// reload`, a `kill -HUP` meant for another daemon or a stray hang-up never stops a node or
/// the exporter: a process with a policy re-reads it (its drivers listen too), and `note` is
/// logged, saying that the signal arrived and what it does. Until the returned guard is
/// dropped; call from within a tokio runtime.
pub fn keep_running_on_hangup(note: &'static str) -> Option<AbortOnDrop> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()?;
    Some(AbortOnDrop(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("{note}");
        }
    })))
}

/// A task aborted when this is dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Completes on SIGINT or SIGTERM: the binaries stop their nodes in order then (stop
/// producing, flush queues, close links) and detach what they attached.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("signal received: shutting down");
}

/// How the binaries log on stderr (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal only).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
    /// Straight to the systemd journal, each field its own journal field (what the units
    /// use); on stderr as text when the journal's socket cannot be reached.
    Journald,
}

/// Logging of both binaries on stderr: level from RUST_LOG (default info), in `format`.
pub fn init_logging(format: LogFormat) {
    let json = format == LogFormat::Json;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if format == LogFormat::Journald {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        match tracing_journald::layer() {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => eprintln!("cannot log to the journal ({e}): logging on stderr instead"),
        }
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        spool: SpoolArgs,
    }

    fn topo_with(spool_dir: Option<&str>) -> Topology {
        let mut t = Topology::embedded_default();
        t.settings.spool_dir = spool_dir.map(PathBuf::from);
        t
    }

    /// The flags override the topology's `spool_dir` either way; without them it stands;
    /// both at once are refused, naming both.
    #[test]
    fn the_spool_flags_override_the_topology() {
        let applied = |args: &[&str], dir: Option<&str>| {
            let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
                .expect("parsed");
            let mut t = topo_with(dir);
            cli.spool.apply(&mut t);
            t.settings.spool_dir
        };
        assert_eq!(applied(&[], Some("/a")), Some(PathBuf::from("/a")));
        assert_eq!(applied(&[], None), None);
        assert_eq!(
            applied(&["--spool-dir", "/b"], Some("/a")),
            Some(PathBuf::from("/b"))
        );
        assert_eq!(
            applied(&["--spool-dir", "/b"], None),
            Some(PathBuf::from("/b"))
        );
        assert_eq!(applied(&["--no-spool"], Some("/a")), None);
        let e = Cli::try_parse_from(["x", "--spool-dir", "/b", "--no-spool"])
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("--spool-dir") && e.contains("--no-spool"), "{e}");
    }
}
