//! `vespa-orchestrator`: runs the HO and VO nodes of a VESPA tree, makes its pre-shared key,
//! and calls verbs on a running tree.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use vespa_node::{launch, AgentRef, Hooks, Role, Topology};
use vespa_orchestrator::control::{PolicyControl, PolicyError};
use vespa_orchestrator::metrics::Metrics;
use vespa_orchestrator::outputs::Outputs;
use vespa_orchestrator::policy_driver::{
    load_rules, HoPolicyVerbs, PolicyDriver, PolicySet, RemoteDrivers,
};
use vespa_orchestrator::{client, decisions, http};
use vespa_proto::verbs::{NodeVerb, Verb};

/// Horizontal (HO_VM, HO_HY, HO_PH) and vertical (VO) orchestrators of VESPA.
///
/// The tree (agent -> HO -> VO) is described by a topology file: TOML, or the 2014
/// config.ini. Without --config the embedded default puts the whole tree on 127.0.0.1.
/// Every link is authenticated and encrypted with a pre-shared key (see `keygen`).
#[derive(Parser)]
#[command(
    name = "vespa-orchestrator",
    version,
    about,
    long_about,
    propagate_version = true
)]
struct Cli {
    /// Log format on stderr; the level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: vespa_node::launch::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HO and VO nodes of the topology (all of them, those of --machine, or --node).
    Run(RunArgs),
    /// Write a fresh random pre-shared key (32 bytes, mode 0600) for every node of a tree.
    Keygen {
        /// Where to write it: the shared key file, or with --per-node the key directory.
        path: PathBuf,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
        /// Per-node keys: make a root key in PATH (PATH/root.key, unless there is one) and
        /// derive from it the key of every node of the topology (PATH/<node>.key). Copy to
        /// each machine only the files of the nodes it runs, and root.key only to the VO's.
        #[arg(long)]
        per_node: bool,
        /// With --per-node: also derive the key of this operator (repeatable), written to
        /// PATH/operator:<NAME>.key, for `call --key-dir PATH --operator NAME`.
        #[arg(long = "operator", value_name = "NAME", requires = "per_node")]
        operators: Vec<String>,
        /// With --per-node: start a key rotation. Every key file becomes
        /// <name>.previous.key (still accepted), and a new root and new keys are made.
        /// Restart the nodes from the VO down; when all run on the new keys, delete the
        /// *.previous.key files and restart them once more.
        #[arg(long, requires = "per_node")]
        rotate: bool,
        /// The topology whose nodes get keys (default: the embedded one).
        #[arg(long, short = 'c', env = "VESPA_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Call a verb on any node of a running tree (through the VO, or --via another node).
    Call(CallArgs),
    /// List, add and delete the decisions in force (blocks...) by hand; import and export
    /// block lists.
    ///
    /// Through the VO's HTTP API (--api URL --token-file FILE) or through the tree with a key
    /// (-c FILE --key-dir DIR --operator NAME). A decision added here is the policy's own
    /// block by hand; deleting one undoes it wherever it is enforced. See docs/decisions.md.
    #[command(subcommand, after_help = decisions::cli::TRANSPORT_HELP)]
    Decisions(decisions::cli::DecisionsCommand),
    /// List, add and delete the protected sources: addresses, prefixes and MACs the policy
    /// never blocks.
    ///
    /// Reached like `decisions` (--api URL --token-file FILE, or the tree). See
    /// docs/decisions.md.
    #[command(subcommand, after_help = decisions::cli::TRANSPORT_HELP)]
    Allowlist(decisions::cli::AllowlistCommand),
    /// Print what a VO's alert journal holds, without changing it: its alerts as JSON lines
    /// on stdout; each origin's count and highest sequence number, and any damage skipped,
    /// on stderr.
    Journal {
        /// The journal file (the VO's `journal` in the topology).
        path: PathBuf,
    },
    /// Write the man pages and shell completions into DIR (`cargo xtask dist` packages them).
    #[command(hide = true)]
    DistDocs { dir: PathBuf },
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    nodes: launch::RunNodesArgs,
    /// The policy rules (TOML; see docs/policy.md). Default: the embedded rules. The VO
    /// runs the rules without `at`, each HO this process runs the rules placed `at` it.
    /// Re-read on SIGHUP; state is kept for rules that keep their name.
    #[arg(long, value_name = "FILE", env = "VESPA_POLICY")]
    policy: Option<PathBuf>,
    /// Start the policy in dry-run: actions are logged, never sent to an actuator.
    #[arg(long)]
    dry_run: bool,
    /// The decision ledger: every block, cut link or quarantine this process's policy
    /// places, written before it is sent, and put back into the policy at start. An SQLite
    /// file, or a PostgreSQL database (`postgres://user@host/db`; the password best in
    /// PGPASSWORD or ~/.pgpass, it is never logged). Default: the topology's `[settings]
    /// ledger`, else `$STATE_DIRECTORY/ledger.db` under systemd, else none (decisions kept
    /// in memory only). A file that is not a sound ledger stops the start; it is never
    /// emptied.
    #[arg(long, value_name = "PATH|URL", env = "VESPA_LEDGER")]
    ledger: Option<PathBuf>,
    /// The HOs' spools of their own unacknowledged alerts (the fast path's alerts); the VO
    /// keeps its journal instead.
    #[command(flatten)]
    spool: launch::SpoolArgs,
    /// Serve this process's metrics as Prometheus text at http://ADDR/metrics: its HOs'
    /// node counters (vespa_node_*), reconciliation (vespa_decisions_drift_total,
    /// vespa_reconcile_pass_seconds) and spools (vespa_spool_*). For a process without the VO's HTTP API: the one that serves it has
    /// them, with the VO's own, on the API's /metrics (--http).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    // Last: its heading applies to the flags after it.
    #[command(flatten)]
    api: ApiArgs,
}

/// The HTTP API's flags (docs/http-api.md).
#[derive(Args)]
#[command(next_help_heading = "HTTP API (served by the process that runs the VO)")]
struct ApiArgs {
    /// Where the HTTP API, the dashboard and /metrics listen (only in the process that runs
    /// the VO), or `off`. Loopback by default: put a TLS proxy in front to reach it from
    /// elsewhere.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:8080", value_parser = parse_http)]
    http: HttpListen,
    /// File holding the bearer token the API's mutations require (mode 0600, at least 16
    /// characters). Without it, mutations answer 503.
    #[arg(long, value_name = "PATH", env = "VESPA_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Another name the API answers to (repeatable); requests for other hosts get 421.
    ///
    /// A request whose Host header names anything else than this server is refused with 421
    /// Misdirected Request, so that a web page cannot reach the API under a name of its own
    /// (DNS rebinding). Always accepted: the listen address, any IP address when listening on
    /// all of them (0.0.0.0, [::]), and `localhost` when listening on loopback or on all
    /// addresses. Give the names clients and proxies put in Host (the name of a TLS proxy's
    /// certificate, when the proxy passes it on), without a port: ports are not compared, so
    /// an SSH tunnel or a proxy on another port needs nothing.
    #[arg(long = "http-host", value_name = "NAME")]
    http_hosts: Vec<http::HostName>,
    /// An origin whose web pages may read the API (repeatable); default: none.
    ///
    /// ORIGIN is scheme://host[:port], as a browser sends it in Origin, e.g. the address a
    /// dashboard is served from. Answers to a request from one of these origins carry
    /// `Access-Control-Allow-Origin: ORIGIN`. Without this flag no answer carries the header,
    /// and browsers keep pages of other origins from reading the API (the 2014 endpoints
    /// answered `*`, readable by any page the operator opened). Preflight requests are not
    /// answered, so such pages can read, never call a mutation.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<http::CorsOrigin>,
    /// Seconds a client has to send a request's head.
    ///
    /// The request line and headers must be complete within SECS of the connection's opening
    /// or, on a kept-alive connection, of the end of the previous answer. A client that sends
    /// its head slowly (slow-loris) or keeps a connection open without sending a request is
    /// disconnected when it runs out.
    #[arg(long, value_name = "SECS", default_value_t = http::DEFAULT_HEADER_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    http_header_timeout: u64,
    /// Seconds a request's body has to arrive once its head has (else 408).
    ///
    /// Only the mutations read a body: at most 64 KiB (a block list: 1 MiB), and only once the
    /// token checks out.
    #[arg(long, value_name = "SECS", default_value_t = http::DEFAULT_BODY_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    http_body_timeout: u64,
    /// Seconds without a byte moving after which a connection is closed.
    ///
    /// Counted only while none of the connection's requests is being answered: it closes
    /// chiefly a client that stops reading its answer, which would otherwise keep the answer
    /// and the socket for as long as it likes.
    #[arg(long, value_name = "SECS", default_value_t = http::DEFAULT_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86400))]
    http_idle_timeout: u64,
    /// Connections the API keeps open at once.
    ///
    /// A new connection at the limit closes the one idle longest (not answering a request:
    /// silent, sending its head, or kept alive between requests) to make room, so that
    /// whoever holds many silent connections cannot lock operators out; only when every
    /// connection is answering a request is the new one answered 503. Keep it well under the
    /// process's open-file limit (`ulimit -n`), which the tree's own connections share.
    #[arg(long, value_name = "N", default_value_t = http::DEFAULT_MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    http_max_connections: u64,
}

impl ApiArgs {
    fn options(&self) -> http::HttpOptions {
        http::HttpOptions {
            limits: http::Limits {
                header_timeout: Duration::from_secs(self.http_header_timeout),
                body_timeout: Duration::from_secs(self.http_body_timeout),
                idle_timeout: Duration::from_secs(self.http_idle_timeout),
                max_connections: usize::try_from(self.http_max_connections)
                    .unwrap_or(http::DEFAULT_MAX_CONNECTIONS),
            },
            hosts: self.http_hosts.clone(),
            cors_origins: self.cors_origins.clone(),
        }
    }
}

/// `--http`: an address, or off.
#[derive(Clone, Copy, Debug)]
enum HttpListen {
    Off,
    On(SocketAddr),
}

fn parse_http(s: &str) -> Result<HttpListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(HttpListen::Off);
    }
    s.parse()
        .map(HttpListen::On)
        .map_err(|e| format!("{s:?}: {e} (expected IP:PORT, e.g. 127.0.0.1:8080, or `off`)"))
}

#[derive(Args)]
struct CallArgs {
    #[command(flatten)]
    cfg: launch::TopologyArgs,
    /// The node to connect to (default: the VO); the call is routed down from there.
    #[arg(long)]
    via: Option<String>,
    /// With per-node keys (--key-dir): call as this operator, with its key
    /// (`keygen --per-node DIR --operator NAME`). Without it, the call is made with the key
    /// of the node it connects to, as a tool on that node's machine would.
    #[arg(long, value_name = "NAME")]
    operator: Option<String>,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 15)]
    timeout: u64,
    /// The node that runs the verb.
    target: String,
    /// The verb (`help` lists a node's verbs).
    verb: String,
    /// Its arguments.
    args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vespa_node::launch::init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vespa-orchestrator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keygen {
            path,
            per_node: true,
            force,
            operators,
            rotate,
            config,
        } => per_node_keys(&path, config.as_deref(), &operators, rotate, force),
        Command::Keygen { path, force, .. } => {
            vespa_proto::key::generate(&path, force)?;
            println!(
                "wrote a new pre-shared key to {} (mode 0600); copy it to every node of the tree",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            vespa_node::launch::hold_hangup();
            run_nodes(args)
        }
        Command::Call(args) => call(args),
        Command::Decisions(cmd) => runtime()?.block_on(decisions::cli::decisions(cmd)),
        Command::Allowlist(cmd) => runtime()?.block_on(decisions::cli::allowlist(cmd)),
        Command::Journal { path } => print_journal(&path),
        Command::DistDocs { dir } => {
            vespa_node::service::write_docs(<Cli as clap::CommandFactory>::command(), &dir)
                .with_context(|| format!("writing to {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `keygen --per-node DIR`: the root key, every node's key, the operators' keys.
fn per_node_keys(
    dir: &Path,
    config: Option<&Path>,
    operators: &[String],
    rotate: bool,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let topo = launch::load_topology(config)?;
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let names: Vec<String> = std::iter::once("root".to_string())
        .chain(topo.nodes.iter().map(|n| n.name.clone()))
        .chain(operators.iter().map(|o| vespa_proto::key::operator_name(o)))
        .collect();
    if rotate {
        for name in &names {
            let (current, previous) = launch::key_files(dir, name);
            if current.exists() {
                std::fs::rename(&current, &previous)
                    .with_context(|| format!("{} -> {}", current.display(), previous.display()))?;
            }
        }
    }
    let (root_file, _) = launch::key_files(dir, "root");
    let root = if root_file.exists() && !force {
        vespa_proto::key::load(&root_file)?
    } else {
        vespa_proto::key::generate(&root_file, force)?
    };
    for n in &topo.nodes {
        let key = launch::node_key(&topo, &root, &n.name).context("a node of the topology")?;
        vespa_proto::key::save(&launch::key_files(dir, &n.name).0, &key, true)?;
        println!(
            "{}/{}.key: node {} on machine {}",
            dir.display(),
            n.name,
            n.name,
            n.location
        );
    }
    for o in operators {
        let name = vespa_proto::key::operator_name(o);
        let key = launch::operator_key(&root, o);
        vespa_proto::key::save(&launch::key_files(dir, &name).0, &key, true)?;
        println!("{}/{name}.key: operator {o}", dir.display());
    }
    println!(
        "{}: the root key; keep it on the VO's machine only (it checks operators)",
        root_file.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn print_journal(path: &Path) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let read = vespa_node::journal::read(path).with_context(|| path.display().to_string())?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for a in &read.alerts {
        serde_json::to_writer(&mut out, a)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    for (origin, (highest, count)) in &read.origins {
        eprintln!("{origin}: {count} alert(s) processed, highest sequence number {highest}");
    }
    if read.damaged > 0 || read.torn_bytes > 0 {
        eprintln!(
            "{} damaged stretch(es) skipped; a torn tail of {} byte(s)",
            read.damaged, read.torn_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn security(topo: &Topology, args: &launch::TopologyArgs) -> anyhow::Result<launch::KeySource> {
    args.keys(topo).map_err(anyhow::Error::msg)
}

/// The policy file (or the embedded rules): its name for messages, its text, and the rules
/// checked against the topology (errors name the file).
fn load_policy(
    path: Option<&Path>,
    topo: &Topology,
) -> anyhow::Result<(String, String, vespa_policy::Rules)> {
    let source = path.map_or_else(
        || "embedded policy".to_string(),
        |p| p.display().to_string(),
    );
    let text = PolicyDriver::load_rules_text(path)?;
    let rules = load_rules(&text, Some(topo)).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    Ok((source, text, rules))
}

/// The policy drivers of this process: the VO's (if it runs the VO) and one per HO it runs,
/// each with its share of the one policy file, checked against the topology first. Without
/// the VO and without `--policy`, none.
struct Drivers {
    vo: Option<PolicyDriver>,
    hos: Vec<PolicyDriver>,
    /// HOs with rules of this policy that another process runs (the VO's API asks them).
    remote: Vec<String>,
}

fn policy_drivers(
    args: &RunArgs,
    topo: &Topology,
    nodes: &[&vespa_node::config::NodeDef],
    metrics: Arc<Metrics>,
) -> anyhow::Result<Drivers> {
    let hosts_vo = nodes.iter().any(|n| n.role == Role::Vo);
    if !hosts_vo && args.policy.is_none() {
        if args.dry_run {
            tracing::warn!("--dry-run ignored: this process runs no VO and no --policy was given");
        }
        return Ok(Drivers {
            vo: None,
            hos: Vec::new(),
            remote: Vec::new(),
        });
    }
    let (source, text, rules) = load_policy(args.policy.as_deref(), topo)?;
    let invalid = |e: PolicyError| anyhow::anyhow!("{source}: {e}");
    let remote: Vec<String> = rules
        .placements()
        .into_iter()
        .filter(|at| !nodes.iter().any(|n| n.name == *at))
        .map(str::to_string)
        .collect();
    for at in &remote {
        tracing::info!(policy = %source, at, "rules placed at a node this process does not run: its own process must be given the same --policy");
    }
    let file = args.policy.clone();
    let vo = hosts_vo
        .then(|| {
            PolicyDriver::new(
                &text,
                args.dry_run,
                Some(topo),
                Some(metrics.clone()),
                file.clone(),
            )
        })
        .transpose()
        .map_err(invalid)?;
    // Every HO here gets a driver, idle while no rule is placed at it, so that a reload can
    // place one there.
    let hos = nodes
        .iter()
        .filter(|n| n.role.is_ho())
        .map(|n| {
            PolicyDriver::new_at_with_metrics(
                &n.name,
                &text,
                args.dry_run,
                topo,
                Some(metrics.clone()),
                file.clone(),
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    for d in vo.iter().chain(&hos) {
        let at = d.at().unwrap_or("VO");
        tracing::info!(policy = %source, node = at, rules = ?d.rule_names(), dry_run = PolicyControl::dry_run(d), "policy loaded");
    }
    Ok(Drivers {
        vo,
        hos,
        remote: if hosts_vo { remote } else { Vec::new() },
    })
}

/// Where this process keeps its decision ledger, if it runs a policy: `--ledger`, the
/// topology's `[settings] ledger`, or systemd's state directory.
fn ledger_path(args: &RunArgs, topo: &Topology, has_policy: bool) -> Option<PathBuf> {
    if !has_policy {
        if let Some(p) = &args.ledger {
            let at = vespa_orchestrator::ledger::Location::of(p);
            tracing::warn!(location = %at, "--ledger ignored: this process runs no policy");
        }
        return None;
    }
    let path = args
        .ledger
        .clone()
        .or_else(|| topo.settings.ledger.clone())
        .or_else(|| {
            std::env::var_os("STATE_DIRECTORY")
                .and_then(|d| std::env::split_paths(&d).next())
                .map(|d| d.join("ledger.db"))
        });
    if path.is_none() {
        tracing::warn!("no decision ledger (--ledger, [settings] ledger): decisions are kept in memory only and forgotten at a restart");
    }
    path
}

fn run_nodes(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut topo = args.nodes.topology.load()?;
    args.spool.apply(&mut topo);
    let topo = topo;
    let nodes = args
        .nodes
        .select(&topo, |n| !n.role.is_agent())
        .map_err(anyhow::Error::msg)?;
    if args.nodes.check_config {
        if args.policy.is_some() {
            let (source, _, rules) = load_policy(args.policy.as_deref(), &topo)?;
            let mut places = vec![format!("VO: {}", rules.placed_at(None).rules.len())];
            places.extend(
                rules
                    .placements()
                    .into_iter()
                    .map(|at| format!("{at}: {}", rules.placed_at(Some(at)).rules.len())),
            );
            println!("policy {source}: rules per node: {}", places.join(", "));
        }
        for o in &topo.outputs {
            println!(
                "output {:?}: {}, queue {}, at least {}",
                o.name,
                o.kind.as_str(),
                o.queue,
                o.filter.min_severity
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let security = security(&topo, &args.nodes.topology)?;
    let hosts_vo = nodes.iter().any(|n| n.role == Role::Vo);
    let http = match args.api.http {
        HttpListen::On(addr) if hosts_vo => Some(addr),
        _ => None,
    };
    let token = match (&args.api.api_token_file, http) {
        (Some(path), Some(_)) => Some(http::ApiToken::load(path)?),
        (Some(path), None) => {
            tracing::warn!(path = %path.display(), "--api-token-file ignored: this process serves no HTTP API (it runs no VO, or --http off)");
            None
        }
        (None, _) => None,
    };
    // The policy runs at the VO and, for rules placed there, at the HOs; the rules are
    // checked against the topology before anything starts.
    let parts = http::ApiParts::new(&topo, token).with_http(args.api.options());
    let drivers = policy_drivers(&args, &topo, &nodes, parts.metrics.clone())?;
    let parts = match &drivers.vo {
        Some(d) => parts
            .with_policy(Arc::new(PolicySet::new(d.clone(), drivers.hos.clone())))
            .with_remote(RemoteDrivers::new(drivers.remote.clone())),
        None => parts,
    };
    let ledger_path = ledger_path(
        &args,
        &topo,
        drivers.vo.is_some() || !drivers.hos.is_empty(),
    );
    let driver_of = |name: &str| {
        drivers
            .vo
            .iter()
            .filter(|_| name == topo.vo().name)
            .chain(drivers.hos.iter().filter(|d| d.at() == Some(name)))
            .next()
    };
    let rt = runtime()?;
    let exits = rt.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let signal = async move {
            vespa_node::launch::shutdown_signal().await;
            let _ = stop_tx.send(true);
        };
        // Bound before the nodes start, so a port conflict fails the start rather than
        // leaving a tree without its API.
        let mut listener = match http {
            Some(addr) => Some((
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the HTTP API to {addr} (--http)"))?,
                addr,
            )),
            None => None,
        };
        let serve_api = listener.is_some();
        // `--metrics`: this process's own endpoint, for HOs without the VO's API.
        let metrics_server = match args.metrics {
            Some(addr) if serve_api => {
                tracing::warn!(%addr, "--metrics ignored: this process serves its metrics on the HTTP API's /metrics");
                None
            }
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics endpoint to {addr} (--metrics)"))?;
                tracing::info!(%addr, "serving metrics at http://{addr}/metrics");
                let mut stop = stop_rx.clone();
                Some(tokio::spawn(vespa_orchestrator::metrics::serve(
                    l,
                    parts.metrics.process_registry(),
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                )))
            }
            None => None,
        };
        // The ledger before any node starts: what it holds in force goes back into the
        // policies first, and a damaged file stops the start.
        let ledger = match &ledger_path {
            Some(p) => {
                let l = vespa_orchestrator::ledger::Ledger::open(p).await?;
                let vo_name = topo.vo().name.clone();
                for d in drivers.vo.iter().chain(&drivers.hos) {
                    let node = d.at().map_or(vo_name.clone(), str::to_string);
                    d.attach_ledger(l.clone(), &node).await?;
                }
                Some(l)
            }
            None => None,
        };
        // Every decision the ledger commits, for the outputs (`vespa.decisions` and the like).
        let decision_feed = ledger.as_ref().map(|l| l.subscribe());
        let parts = parts.with_ledger(ledger);
        let mut server = None;
        // The VO's outputs (`[[output]]`): started before the VO so that its first alert
        // finds them. The decision ledger feeds them with `Outputs::follow`.
        let outputs = if hosts_vo {
            Outputs::start(&topo, parts.metrics.outputs())?
        } else {
            Outputs::none()
        };
        if !outputs.is_empty() {
            tracing::info!(?outputs, "outputs started");
            if let Some(rx) = decision_feed {
                outputs.follow(rx);
            }
        }
        let hooks = |def: &vespa_node::config::NodeDef| {
            let mut h = Hooks::default();
            if def.role == Role::Vo {
                if serve_api {
                    parts.add_vo_handler(&mut h);
                }
                if !outputs.is_empty() {
                    h.alert_handlers.push(outputs.handler());
                }
                // Decisions by hand through the tree, with or without the API.
                parts.add_vo_verbs(&mut h);
            }
            if let Some(d) = driver_of(&def.name) {
                h.alert_handlers.push(d.handler());
                if def.role.is_ho() {
                    // The VO's API reaches an HO's driver through these when they are in
                    // different processes; `call` reaches them from a shell either way.
                    h.agent = Some(AgentRef::new(HoPolicyVerbs(d.clone())));
                }
            }
            h
        };
        let on_ready = |def: &vespa_node::config::NodeDef, handle: vespa_node::NodeHandle| {
            parts.metrics.add_node(handle.clone());
            if let Some(d) = driver_of(&def.name) {
                d.start(handle.clone());
            }
            if def.role != Role::Vo {
                return;
            }
            let Some((l, addr)) = listener.take() else {
                return;
            };
            let state = parts.state(handle);
            let mut stop = stop_rx.clone();
            let cors: Vec<String> = state.http.cors_origins.iter().map(ToString::to_string).collect();
            let hosts: Vec<String> = state.http.hosts.iter().map(ToString::to_string).collect();
            tracing::info!(%addr, mutations = state.token.is_some(), ?hosts, ?cors, max_connections = state.http.limits.max_connections, "HTTP API listening");
            server = Some(tokio::spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(error) = http::serve(l, Arc::new(state), stopped).await {
                    tracing::error!(%error, %addr, "HTTP API stopped");
                }
            }));
        };
        let exits =
            launch::run_nodes_with_handles(&topo, &nodes, &security, hooks, on_ready, signal).await;
        if let Some(s) = server {
            // The nodes are gone (signal or destroy): the API has nothing left to serve.
            s.abort();
        }
        if let Some(s) = metrics_server {
            s.abort();
        }
        anyhow::Ok(exits?)
    })?;
    for (name, exit) in exits {
        tracing::info!(node = %name, ?exit, "node exited");
    }
    Ok(ExitCode::SUCCESS)
}

fn call(args: CallArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let result = rt.block_on(async {
        let timeout = Duration::from_secs(args.timeout);
        let client::Connected { mut client, node } = client::connect(
            &args.cfg,
            args.via.as_deref(),
            args.operator.as_deref(),
            timeout,
        )
        .await?;
        // The operator's words go as they are: the node they reach parses them.
        let (verb, words) = if args.target == node {
            (args.verb.clone(), args.args.clone())
        } else {
            let routed = NodeVerb::Call {
                node: args.target.clone(),
                verb: args.verb.clone(),
                args: args.args.clone(),
            };
            (routed.name().to_string(), routed.args())
        };
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let reply = client.call(&verb, &words).await?;
        client.close().await;
        anyhow::Ok(reply)
    })?;
    match result {
        Ok(text) => {
            println!("{}", text.trim_end());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("vespa-orchestrator: {}: {e}", args.target);
            Ok(ExitCode::from(2))
        }
    }
}
