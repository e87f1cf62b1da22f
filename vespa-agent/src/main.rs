//! `vespa-agent`: VESPA's host sensor.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use vespa_agent::{export, netns, top, Mode, SensorConfig, Sensors};

/// VESPA agent: eBPF sensors for per-interface traffic and TCP connections on a Linux host.
///
/// Kernel programs count bytes and packets on every interface (tc/TCX), SYN packets per
/// source address, and established TCP connections per remote address (tracepoint
/// sock:inet_sock_set_state). Threshold crossings are reported the moment they happen.
/// Without root or eBPF support the agent falls back to reading /proc, as VESPA 2014 did.
/// The binary's name: `vespa-agent` with the acting agents, `vespa-exporter` without them
/// (`--no-default-features`, packaged beside it for hosts that only export; it does not load
/// libvirt's library, ~12 MiB of resident memory: docs/performance.md).
const NAME: &str = if cfg!(any(feature = "libvirt", feature = "sdn", feature = "av")) {
    "vespa-agent"
} else {
    "vespa-exporter"
};

#[derive(Parser)]
#[command(
    name = NAME,
    version,
    about,
    long_about,
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    sensor: SensorArgs,

    /// Log format on stderr; the level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: vespa_node::launch::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the counters as Prometheus/OpenMetrics text at /metrics.
    Export {
        /// Address to listen on. Created before entering --netns, so the exporter of a
        /// namespace can still be reached from the host.
        #[arg(long, default_value = "127.0.0.1:9105")]
        listen: SocketAddr,
    },
    /// Print one snapshot of every counter and exit.
    Counters {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Wait this long after attaching before reading (eBPF counters start at zero).
        #[arg(long, value_parser = humantime_secs, default_value = "0")]
        after: Duration,
    },
    /// Run the agent nodes of a VESPA tree (bandwidth, connections, ...) from the topology:
    /// each registers with its HO, pushes samples and threshold events up as alerts, and
    /// answers calls (recv_bytes, trans_bytes, get_mac, connections, ...).
    Run(node_agents::RunArgs),
    /// Write the man pages and shell completions into DIR (`cargo xtask dist` packages them).
    #[command(hide = true)]
    DistDocs { dir: std::path::PathBuf },
    /// Live table of interface rates and the busiest remote addresses (Ctrl-C to quit).
    Top {
        /// Refresh interval in seconds.
        #[arg(long, value_parser = humantime_secs, default_value = "1")]
        interval: Duration,
        /// Stop after this many screens.
        #[arg(long)]
        count: Option<u64>,
        /// Rows per table.
        #[arg(long, default_value_t = 15)]
        rows: usize,
    },
}

#[derive(Args)]
struct SensorArgs {
    /// Sensor back end: eBPF, /proc polling, or eBPF with /proc as fallback.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        env = "VESPA_SENSOR_MODE"
    )]
    mode: Mode,
    /// Monitor only these interfaces (comma separated). Default: every interface, including
    /// those created later (a VM's tap device).
    #[arg(long, short = 'i', global = true, value_delimiter = ',')]
    interfaces: Vec<String>,
    /// Never monitor these interfaces (comma separated).
    #[arg(long, global = true, value_delimiter = ',')]
    exclude: Vec<String>,
    /// Run inside this network namespace (/run/netns/NAME).
    #[arg(long, global = true)]
    netns: Option<String>,
    /// Established connections from one remote address that raise an event (0: off).
    #[arg(long, global = true, default_value_t = 100)]
    conn_threshold: u64,
    /// SYN packets per second from one source that raise an event (0: off).
    #[arg(long, global = true, default_value_t = 200)]
    syn_threshold: u64,
    /// Remote addresses tracked for connections (LRU, oldest forgotten first).
    #[arg(long, global = true, default_value_t = 65_536)]
    max_remotes: u32,
    /// Open sockets tracked between open and close.
    #[arg(long, global = true, default_value_t = 131_072)]
    max_sockets: u32,
    /// Count the TCP connections of every network namespace of the host (containers, test
    /// namespaces), not only those of the agent's own namespace (the one --netns names).
    /// eBPF only: /proc always shows one namespace.
    #[arg(long, global = true)]
    all_netns: bool,
    /// How to attach the tc classifiers: TCX links where the kernel has them (6.6+), or a
    /// clsact qdisc with filters.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    tc_attach: vespa_agent::TcMode,
    /// Have the kernel programs log what they decide: the connection tracker's namespace
    /// filter, map updates that fail, events lost, thresholds crossed with their values.
    /// Their lines join this log, filtered by the same RUST_LOG, with targets vespa::traffic
    /// and vespa::conntrack (the tracker's per-socket decisions are at debug:
    /// RUST_LOG=info,vespa::conntrack=debug). Without it the programs' logging code is
    /// removed when they are loaded, and costs nothing.
    #[arg(long, global = true)]
    ebpf_log: bool,
    /// Pin the firewall's tables, the interface counters and the programs' links in this
    /// bpffs directory, and adopt what an earlier agent pinned there, so that blocks keep
    /// dropping and counters keep counting across a restart or an upgrade. `vespa-agent run`
    /// with a firewall agent pins by default in /sys/fs/bpf/vespa/<node>.
    #[arg(long, global = true, value_name = "DIR", env = "VESPA_PIN_DIR")]
    pin_dir: Option<std::path::PathBuf>,
    /// On a normal stop (SIGTERM, Ctrl-C), leave the pinned programs attached and the
    /// firewall's tables in place: blocks keep dropping until they expire, and the next
    /// agent started with the same pin directory takes them over with their counters.
    /// Without it, a normal stop detaches everything and removes the pins: the host is left
    /// as it was. (A killed agent always leaves them: that is what pinning is for.)
    #[arg(long, global = true)]
    keep_enforcing_on_exit: bool,
    /// Also drop blocked sources with the firewall's XDP program, before the host allocates
    /// anything for them, on the devices whose driver supports native XDP (the others keep
    /// the tc firewall only). Needs a pin directory.
    #[arg(long, global = true)]
    xdp: bool,
    /// Address and prefix blocks the firewall holds at most.
    #[arg(long, global = true, default_value_t = 65_536)]
    max_blocks: u32,
    /// Series per address-labelled metric before the rest is summed into "other".
    #[arg(long, global = true, default_value_t = 20)]
    top_n: usize,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let s = s.trim_end_matches('s');
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::DistDocs { dir } = &cli.command {
        return dist_docs(dir);
    }
    vespa_node::launch::init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // The two daemons (`run`, `export`): a hang-up while the sensors load must not end them.
    if matches!(cli.command, Command::Run(_) | Command::Export { .. }) {
        vespa_node::launch::hold_hangup();
    }
    // The exporter's socket is bound in the caller's namespace, before entering --netns.
    let listener = match &cli.command {
        Command::Export { listen } => Some(
            std::net::TcpListener::bind(listen)
                .with_context(|| format!("listening on {listen}"))?,
        ),
        _ => None,
    };
    if let Some(ns) = &cli.sensor.netns {
        netns::enter(ns)?;
    }
    let a = &cli.sensor;
    let cfg = SensorConfig {
        mode: a.mode,
        interfaces: a.interfaces.clone(),
        exclude: a.exclude.clone(),
        max_remotes: a.max_remotes,
        max_sockets: a.max_sockets,
        conn_threshold: a.conn_threshold,
        all_netns: a.all_netns,
        syn_per_sec_threshold: a.syn_threshold,
        tc_mode: a.tc_attach,
        ebpf_log: a.ebpf_log,
        pin_dir: a.pin_dir.clone(),
        keep_enforcing_on_exit: a.keep_enforcing_on_exit,
        xdp: a.xdp,
        max_blocks: a.max_blocks,
        ..SensorConfig::default()
    };
    if let Command::Run(args) = cli.command {
        return node_agents::run(args, cfg, a.top_n);
    }
    // `export`, `counters` and `top` read the kernel's maps and follow no connection's open
    // or close: the kernel sends none, and the event channel stays small (docs/performance.md,
    // the exporter's memory).
    let cfg = SensorConfig {
        conn_events: false,
        event_capacity: 1024,
        ..cfg
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sensors = Sensors::start(cfg)?;
    rt.block_on(async move {
        match cli.command {
            Command::Export { .. } => {
                let listener = listener.expect("bound above");
                listener.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let addr = listener.local_addr()?;
                tracing::info!(%addr, mode = ?sensors.mode(), "serving metrics at http://{addr}/metrics");
                let events = log_events(sensors.clone());
                // Under systemd (vespa-exporter.service): the sensors are attached and the
                // socket listens, so the service is up; the watchdog is fed from this runtime.
                vespa_node::service::ready(&format!("serving metrics at http://{addr}/metrics"));
                let watchdog = vespa_node::service::spawn_watchdog();
                let _hangup = vespa_node::launch::keep_running_on_hangup(
                    "SIGHUP received: nothing to reload (the sensors' settings take a restart)",
                );
                let shutdown = async {
                    vespa_node::launch::shutdown_signal().await;
                    vespa_node::service::stopping();
                };
                export::serve(listener, export::registry(sensors, cli.sensor.top_n), shutdown).await?;
                events.abort();
                if let Some(w) = watchdog {
                    w.abort();
                }
                Ok(())
            }
            Command::Counters { json, after } => {
                tokio::time::sleep(after).await;
                let snap = sensors.snapshot()?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&snap)?);
                } else {
                    print!("{}", top::render(None, &snap, Duration::from_secs(1), usize::MAX));
                }
                Ok(())
            }
            Command::Top { interval, count, rows } => top::run(sensors, interval, count, rows).await,
            Command::Run(_) | Command::DistDocs { .. } => {
                unreachable!("handled before the sensors start")
            }
        }
    })
}

/// `dist-docs DIR`: the man pages and completions of this binary.
fn dist_docs(dir: &std::path::Path) -> ExitCode {
    match vespa_node::service::write_docs(<Cli as clap::CommandFactory>::command(), dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: writing to {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// Logs threshold events as they arrive (the exporter has no other consumer for them).
fn log_events(sensors: Sensors) -> tokio::task::JoinHandle<()> {
    let mut rx = sensors.subscribe();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(vespa_agent::SensorEvent::InterfaceAttached { name, ifindex }) => {
                    tracing::info!(iface = ?name, ifindex, "monitoring interface")
                }
                Ok(vespa_agent::SensorEvent::InterfaceDetached { name, ifindex }) => {
                    tracing::info!(iface = ?name, ifindex, "no longer monitoring interface")
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event log fell behind")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    })
}

/// `vespa-agent run`: the agent nodes of the topology, on the node runtime of `vespa-node`.
/// The sensors start once per process and serve every agent node it hosts.
mod node_agents;
