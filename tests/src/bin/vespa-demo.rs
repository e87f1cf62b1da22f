//! `vespa-demo`: VESPA's first closed loop as a narrated, live demo (`cargo xtask demo`).
//!
//! In network namespaces behind an Open vSwitch bridge controlled by os-ken, an attacker host
//! opens many TCP connections to a victim host. The victim's connections agent reports them,
//! the VO's policy blocks the attacker's MAC on the SDN controller (a drop flow in the
//! switch), and the attacker's traffic stops. Once the attacker lets go and calm lasts, the
//! policy releases the block, the flows go and traffic passes again.
//!
//! Everything printed comes from the running system: alerts and actions from the VO's HTTP
//! API, the drop flows from the switch's flow table (`ovs-ofctl monitor` and `dump-flows`),
//! the traffic from counters on a UDP stream the attacker sends to the victim all along, and
//! the VO's own timings from its log (`policy block sent`). Each step has a deadline; a step
//! that does not happen ends the demo with a non-zero exit and the reason.
//!
//! The rig (lab, topology, processes) is `vespa_tests::sdn_loop`, the one the `loops::sdn`
//! test uses. The VO runs in the switch namespace; its dashboard is forwarded to the host's
//! loopback (`--http`, 127.0.0.1:8080 by default). Traffic only ever goes to the lab's own
//! namespaces and to loopback. Everything is removed on exit, Ctrl-C included; VESPA's logs,
//! topology and policy stay in a `vespa-demo-*` directory under `$TMPDIR`.

use std::collections::BTreeSet;
use std::io::{IsTerminal as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use clap::Parser;
use serde_json::Value;
use vespa_tests::daemons::http_get;
use vespa_tests::daemons::ovs::{FlowMonitor, SdnLab, UdpStream};
use vespa_tests::net::{try_in_netns, Forward};
use vespa_tests::sdn_loop::{
    self, conn_flood_policy, is_vespa_drop, SdnLoop, BANDWIDTH_AGENT, CONNECTIONS_AGENT,
    CONNECTIONS_MODE, SDN_AGENT,
};

/// Most connections the attacker may open (each costs two descriptors in this process).
const MAX_CONNECTIONS: usize = 2000;
/// Deadline of each reaction step (alert, block, drop flow, traffic stopped).
const STEP: Duration = Duration::from_secs(10);
/// Deadline for the tree to come up and for traffic to flow.
const SETUP: Duration = Duration::from_secs(30);
/// No datagram for this long after the drop flow: the traffic has stopped.
const QUIET: Duration = Duration::from_millis(300);
/// How often the VO's alerts are read.
const FEED_POLL: Duration = Duration::from_millis(50);
/// The attacker's UDP stream: one datagram per millisecond.
const UDP_GAP: Duration = Duration::from_millis(1);
/// The victim's TCP port the attacker connects to.
const VICTIM_PORT: u16 = 7070;
/// Where the dashboard goes when `--http` is not given (another port if that one is taken).
const DEFAULT_HTTP: &str = "127.0.0.1:8080";

/// VESPA's closed loop, live: a connection flood is blocked on the SDN switch, then released.
///
/// Builds a lab of network namespaces (an Open vSwitch userspace bridge controlled by os-ken,
/// an attacker host and a victim host), starts the VESPA tree around it (VO + HO_VM + HO_PH,
/// the os-ken SDN agent, the victim's connections agent) and runs the attack, narrating each
/// step with its time since the start: the alert, the VO's block, the drop flow in the switch,
/// the attacker's traffic stopping, calm, the release and traffic flowing again, then the
/// measured latencies. The VO's dashboard is served on the host's loopback while it runs.
///
/// Needs root (namespaces, Open vSwitch) and what `cargo xtask setup` installs. Exits
/// non-zero, saying which, when a step does not happen in time.
#[derive(Parser)]
#[command(name = "vespa-demo", version)]
struct Args {
    /// TCP connections the attacker opens to the victim and holds. Must exceed --threshold.
    #[arg(long, default_value_t = 150, value_name = "N")]
    connections: usize,
    /// Established connections from one address above which the VO blocks it (the agent's
    /// --conn-threshold and the policy's `above`; the policy's `below` is a fifth of it).
    #[arg(long, default_value_t = 100, value_name = "N")]
    threshold: u64,
    /// Seconds the attacker keeps its connections open once the traffic has stopped.
    #[arg(long, default_value_t = 3, value_name = "SECS")]
    hold: u64,
    /// Seconds of calm (below a fifth of --threshold) after which the policy releases the
    /// block (the rule's `calm_s`).
    #[arg(long, default_value_t = 3, value_name = "SECS")]
    calm: u64,
    /// Where the host serves the VO's dashboard and API (forwarded into the switch
    /// namespace), a loopback address. Default 127.0.0.1:8080, or a free port when that one is
    /// taken; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Keep the lab and the dashboard up after the scenario, until Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// No colours (also off when NO_COLOR is set or the output is not a terminal).
    #[arg(long)]
    no_color: bool,
}

impl Args {
    /// The policy's `below`: calm is fewer established connections than this.
    fn below(&self) -> u64 {
        (self.threshold / 5).max(1)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let color =
        !args.no_color && std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal();
    let out = Out::new(color);
    let stop = match Interrupt::install() {
        Ok(s) => s,
        Err(e) => {
            out.fail(&format!("{e:#}"));
            return ExitCode::FAILURE;
        }
    };
    let result = run(&args, &out, &stop);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Interrupted>() => {
            out.note("interrupted: everything was removed");
            ExitCode::from(130)
        }
        Err(e) => {
            out.fail(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Checks, then the scenario; says when the lab is gone whatever happened.
fn run(args: &Args, out: &Out, stop: &Interrupt) -> anyhow::Result<()> {
    preflight(args)?;
    let listener = bind_dashboard(args.http, out)?;
    out.banner("VESPA demo: a connection flood, blocked on the SDN switch, then released");
    let result = scenario(args, out, stop, listener);
    out.now(
        Style::Note,
        "lab removed: processes stopped, bridge and namespaces deleted",
    );
    result
}

/// Root, a sane scenario, the lab's programs and VESPA's binaries.
fn preflight(args: &Args) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("root is needed: the demo creates network namespaces, an Open vSwitch bridge and processes inside them (try `sudo -E cargo xtask demo`)");
    }
    if args.threshold < 2 {
        bail!("--threshold must be at least 2 (found {})", args.threshold);
    }
    if args.connections as u64 <= args.threshold || args.connections > MAX_CONNECTIONS {
        bail!(
            "--connections must be above --threshold ({}) and at most {MAX_CONNECTIONS} (found {})",
            args.threshold,
            args.connections
        );
    }
    SdnLab::prerequisites().map_err(|e| anyhow!("the lab cannot run here: {e}"))?;
    for bin in ["vespa-orchestrator", "vespa-agent"] {
        vespa_tests::try_workspace_bin(bin).map_err(anyhow::Error::msg)?;
    }
    // The attacker's and the victim's ends of every connection live in this process.
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .context("RLIMIT_NOFILE")?;
    if soft < hard {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
            .context("raising RLIMIT_NOFILE")?;
    }
    Ok(())
}

/// The host's end of the dashboard forward, bound first so a taken port fails early.
fn bind_dashboard(http: Option<SocketAddr>, out: &Out) -> anyhow::Result<TcpListener> {
    if let Some(addr) = http {
        if !addr.ip().is_loopback() {
            bail!("--http {addr}: the dashboard stays on loopback (127.0.0.0/8 or [::1]); its API has no TLS");
        }
        return TcpListener::bind(addr)
            .with_context(|| format!("--http {addr}: cannot listen there"));
    }
    TcpListener::bind(DEFAULT_HTTP).or_else(|e| {
        out.note(&format!(
            "{DEFAULT_HTTP} is taken ({e}): the dashboard goes to a free port"
        ));
        TcpListener::bind("127.0.0.1:0").context("listening on 127.0.0.1")
    })
}

/// The scenario, step by step. Every guard (forward, monitor, stream, rig, lab) drops on
/// return, in the reverse order of their making.
fn scenario(args: &Args, out: &Out, stop: &Interrupt, listener: TcpListener) -> anyhow::Result<()> {
    let (mut live, forward, token) = start(args, out, stop, listener)?;
    let dashboard = forward.local_addr();
    let monitor = FlowMonitor::start(&live.rig.lab.ovs, &live.rig.lab.bridge)
        .map_err(|e| anyhow!("watching the switch's flow table: {e}"))?;
    let attack = Attack::open(&live, args.connections)?;
    let reaction = react(&mut live, &monitor, &attack)?;
    hold(&mut live, args.hold)?;
    let release = release(&mut live, &monitor, attack, args)?;
    Timeline {
        reaction,
        release,
        calm_s: args.calm,
    }
    .print(out, &live.rig.tree.scratch.dir);
    if args.keep {
        out.now(Style::Phase, &format!("--keep: the lab stays up; dashboard at http://{dashboard}/ (API token {token}); Ctrl-C to stop"));
        match live.until("Ctrl-C", Duration::MAX, |_| None::<()>) {
            Err(e) if e.is::<Interrupted>() => out.now(Style::Note, "stopping"),
            other => other?,
        }
    }
    Ok(())
}

/// The lab, the tree around it, the dashboard's forward and the attacker's UDP stream,
/// flowing. Returns the live view, the forward and the API token.
fn start<'a>(
    args: &Args,
    out: &'a Out,
    stop: &'a Interrupt,
    listener: TcpListener,
) -> anyhow::Result<(Live<'a>, Forward, String)> {
    out.now(Style::Phase, "starting the lab: Open vSwitch (userspace bridge) and the os-ken controller in a private namespace");
    let lab = SdnLab::start().map_err(|e| anyhow!("starting the lab: {e}"))?;
    stop.check()?;
    let (h1, h2) = (&lab.h1, &lab.h2);
    out.now(
        Style::Good,
        &format!(
            "lab up: attacker {} (mac {}) -- bridge {} (os-ken) -- victim {} (mac {})",
            h1.ip, h1.mac, lab.bridge, h2.ip, h2.mac
        ),
    );

    let below = args.below();
    let policy = conn_flood_policy(args.threshold, below, args.calm);
    let token = hex(&rand::random::<[u8; 16]>());
    out.now(
        Style::Phase,
        &format!(
            "starting VESPA: VO + HO_VM + HO_PH and {SDN_AGENT} in the switch namespace, {CONNECTIONS_AGENT} (--mode {CONNECTIONS_MODE}) and {BANDWIDTH_AGENT} in the victim's; policy: block above {} established, release after {} s below {below}",
            args.threshold, args.calm
        ),
    );
    let opts = sdn_loop::Options {
        tag: "demo",
        policy: &policy,
        conn_threshold: args.threshold,
        api_token: Some(&token),
        keep_files: true,
        bandwidth_agent: true,
    };
    let rig = SdnLoop::start(lab, &opts).context("starting VESPA")?;
    out.now(
        Style::Note,
        &format!(
            "VESPA's logs, topology and policy: {}",
            rig.tree.scratch.dir.display()
        ),
    );
    // The attacker's UDP stream to the victim runs from now to the end (counted, told below).
    let stream = UdpStream::start(&rig.lab.h1, &rig.lab.h2, UDP_GAP);
    let t_udp = Instant::now();
    let feed = Feed {
        cursor: 0,
        seen: Vec::new(),
        over: BTreeSet::new(),
        threshold: args.threshold,
        next_poll: Instant::now(),
    };
    let mut live = Live {
        out,
        stop,
        stream,
        rig,
        feed,
        status_due: None,
        last_sent: 0,
    };
    live.until("the agents to register under the VO", SETUP, |l| {
        l.rig.agents_ready().then_some(())
    })?;
    let forward = Forward::start(listener, live.rig.switch_ns(), sdn_loop::API.parse()?)
        .context("forwarding the dashboard")?;
    let dashboard = forward.local_addr();
    live.until("the dashboard to answer", SETUP, |_| {
        http_get(&dashboard.to_string(), "/")
            .ok()
            .filter(|(s, _)| *s == 200)
    })?;
    out.now(
        Style::Good,
        &format!(
            "tree up: {CONNECTIONS_AGENT}, {BANDWIDTH_AGENT} > HO_VM > VO < HO_PH < {SDN_AGENT}"
        ),
    );
    out.now(
        Style::Note,
        &format!("dashboard: http://{dashboard}/   (API token for its Release button: {token})"),
    );

    live.until("UDP from the attacker to reach the victim", SETUP, |l| {
        (l.stream.received_since(t_udp) >= 50).then_some(())
    })?;
    out.now(
        Style::Good,
        &format!(
            "traffic flows: attacker -> victim UDP, one datagram per {} ms (status once a second)",
            UDP_GAP.as_millis()
        ),
    );
    live.status_due = Some(Instant::now() + Duration::from_secs(1));
    Ok((live, forward, token))
}

/// The attacker's connections to the victim, both ends held open by this process.
struct Attack {
    started: Instant,
    held: Vec<TcpStream>,
    /// The victim's ends, only kept open.
    _accepted: Vec<TcpStream>,
}

impl Attack {
    /// The victim serves; the attacker opens `n` connections (fewer if the block lands first).
    fn open(live: &Live, n: usize) -> anyhow::Result<Attack> {
        let server = SocketAddr::from((live.rig.lab.h2.ip, VICTIM_PORT));
        let listener = try_in_netns(&live.rig.lab.h2.ns.name, move || TcpListener::bind(server))?
            .with_context(|| format!("the victim listening on {server}"))?;
        let accepter = Accepter::start(listener)?;
        let started = Instant::now();
        live.out.now(
            Style::Phase,
            &format!("attacker opens {n} TCP connections to {server}"),
        );
        let held = try_in_netns(&live.rig.lab.h1.ns.name, move || connect_n(server, n))?;
        let accepted = accepter.finish(held.len())?;
        let short = if held.len() < n {
            format!(" (the switch dropped the other {})", n - held.len())
        } else {
            String::new()
        };
        live.out.now(
            Style::Note,
            &format!(
                "attacker holds {} established connections{short}",
                held.len()
            ),
        );
        Ok(Attack {
            started,
            held,
            _accepted: accepted,
        })
    }
}

/// What the VO did about the attack, with the timestamps of each part (Unix ns).
struct Reaction {
    /// The kind of the alert the policy acted on.
    trigger: String,
    connections: usize,
    attack: u64,
    raised: u64,
    at_vo: u64,
    sent: u64,
    flow: u64,
    /// The attacker's last datagram through the switch.
    last: Option<u64>,
}

/// The VO's reaction: an alert above the threshold (told by the feed as it arrives), the
/// block, the drop flows in the switch, silence.
fn react(live: &mut Live, monitor: &FlowMonitor, attack: &Attack) -> anyhow::Result<Reaction> {
    let out = live.out;
    let mac = live.rig.lab.h1.mac.clone();
    let action = live.until("the VO's block in /api/v1/actions", STEP, |l| {
        let actions = l.rig.api_get("/api/v1/actions")?;
        actions["actions"]
            .as_array()?
            .iter()
            .find(|x| x["action"] == "block" && x["key"] == mac.as_str())
            .cloned()
    })?;
    let sent = live.until("the VO's 'policy block sent' log line", STEP, |l| {
        l.vo_log("policy block sent", |f| f["target"] == mac.as_str())
    })?;
    let ns = |k: &str| {
        sent[k]
            .as_u64()
            .ok_or_else(|| anyhow!("'policy block sent' without {k}: {sent}"))
    };
    let (raised, at_vo, sent) = (ns("alert_raised_ns")?, ns("alert_seen_ns")?, ns("sent_ns")?);
    // The alert the policy acted on is in the API's view by now; the feed tells it first.
    let trigger = live.until("the alert the VO acted on in /api/v1/alerts", STEP, |l| {
        l.feed.kind_of(raised)
    })?;
    let actuator = action["actuator"].as_str().unwrap_or(SDN_AGENT);
    out.at(out.rel_ns(sent), Style::Action, &format!("VO policy: block {mac} on {actuator} (rule conn-flood, on the {trigger} alert raised at {:.2}s)", out.rel_ns(raised)));

    let needle = format!(" dl_src={mac}");
    let added = live.until("the drop flow in the switch", STEP, |_| {
        monitor
            .wait("ADDED", &needle, attack.started, Duration::ZERO)
            .ok()
    })?;
    let mut flows = live.rig.vespa_flows();
    if !flows.iter().any(|f| is_vespa_drop(f, &mac)) {
        bail!(
            "the switch reported the flow added, but has no VESPA drop flow for {mac}: {flows:?}"
        );
    }
    let victim = &live.rig.lab.h2;
    if flows
        .iter()
        .any(|f| f.contains(&victim.mac) || f.contains(&victim.ip.to_string()))
    {
        bail!("the victim was blocked too: {flows:?}");
    }
    let last = live.until("the attacker's traffic to stop", STEP, |l| {
        let last = l.stream.last_arrival();
        (Instant::now().duration_since(last.map_or(added, |t| t.max(added))) >= QUIET)
            .then_some(last)
    })?;
    // The switch reports a flow a little after it takes effect: both lines in time order.
    flows.sort_by_key(|f| !f.contains("dl_src"));
    let listed: Vec<String> = flows
        .iter()
        .map(|f| format!("{:10}{}", "", flow_summary(f)))
        .collect();
    let mut lines = vec![(
        out.rel(added),
        Style::Action,
        format!(
            "switch: drop flows for {mac} installed:\n{}",
            listed.join("\n")
        ),
    )];
    lines.push(match last.filter(|t| *t >= attack.started) {
        Some(t) => (
            out.rel(t),
            Style::Good,
            format!(
                "traffic stopped: last datagram from the attacker {:.2} ms after the block request",
                ms(sent, out.unix(t))
            ),
        ),
        None => (
            out.rel(added),
            Style::Good,
            "traffic stopped: no datagram from the attacker since the attack began".into(),
        ),
    });
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (t, style, text) in lines {
        out.at(t, style, &text);
    }
    Ok(Reaction {
        trigger,
        connections: attack.held.len(),
        attack: out.unix(attack.started),
        raised,
        at_vo,
        sent,
        flow: out.unix(added),
        last: last.map(|t| out.unix(t)),
    })
}

/// The block holds while the attacker keeps going: counted, not a datagram through.
fn hold(live: &mut Live, secs: u64) -> anyhow::Result<()> {
    live.out.now(
        Style::Phase,
        &format!("the attacker keeps its connections and its UDP stream going for {secs} s"),
    );
    let t_quiet = Instant::now();
    let sent_before = live.stream.sent.load(Ordering::Relaxed);
    let end = t_quiet + Duration::from_secs(secs);
    live.until("the hold", Duration::from_secs(secs) + STEP, |_| {
        (Instant::now() >= end).then_some(())
    })?;
    let (sent, crossed) = (
        live.stream.sent.load(Ordering::Relaxed) - sent_before,
        live.stream.received_since(t_quiet),
    );
    if crossed > 0 {
        bail!("{crossed} of {sent} datagrams crossed the block");
    }
    live.out.now(
        Style::Good,
        &format!("verified: {sent} datagrams sent into the block, 0 arrived"),
    );
    Ok(())
}

/// When calm began, the drop flows went, and the attacker's traffic came back.
struct Release {
    calm: Instant,
    removed: Instant,
    first: Instant,
}

/// The attacker lets go; calm lasts; the VO releases the block; traffic passes again.
fn release(
    live: &mut Live,
    monitor: &FlowMonitor,
    attack: Attack,
    args: &Args,
) -> anyhow::Result<Release> {
    let (out, calm_s) = (live.out, args.calm);
    let mac = live.rig.lab.h1.mac.clone();
    let calm = Instant::now();
    drop(attack);
    out.now(
        Style::Phase,
        &format!(
            "attacker closes its connections; calm (the policy releases after {calm_s} s below {})",
            args.below()
        ),
    );
    let needle = format!(" dl_src={mac}");
    let removed = live.until(
        "the release (drop flow removed)",
        Duration::from_secs(calm_s) + STEP,
        |_| monitor.wait("DELETED", &needle, calm, Duration::ZERO).ok(),
    )?;
    let done = live.until("the VO's release_hackers reply", STEP, |l| {
        l.vo_log("policy action done", |f| f["verb"] == "release_hackers")
    })?;
    live.until("the switch without VESPA flows", STEP, |l| {
        l.rig.vespa_flows().is_empty().then_some(())
    })?;
    live.until("no active action in /api/v1/actions", STEP, |l| {
        l.rig
            .api_get("/api/v1/actions")
            .filter(|a| a["actions"] == serde_json::json!([]))
    })?;
    let sent = done["sent_ns"]
        .as_u64()
        .map_or_else(|| out.rel(removed), |n| out.rel_ns(n));
    out.at(
        sent,
        Style::Action,
        &format!("VO policy: release {mac} on {SDN_AGENT} (calm for {calm_s} s)"),
    );
    let after = secs(removed - calm);
    out.at(
        out.rel(removed),
        Style::Good,
        &format!("released; flows removed: no VESPA flow left in the switch, no active action at the VO ({after:.2} s after the attacker let go)"),
    );

    let first = live.until("the attacker's traffic to flow again", SETUP, |l| {
        (l.stream.received_since(removed) >= 50)
            .then(|| l.stream.first_arrival_since(removed))
            .flatten()
    })?;
    out.at(
        out.rel(first),
        Style::Good,
        &format!(
            "traffic flows again: first datagram {:.2} ms after the flows were removed",
            (first - removed).as_secs_f64() * 1e3
        ),
    );
    // A second of it, for the status line.
    live.until("a second of traffic", STEP, |_| {
        (Instant::now() >= first + Duration::from_secs(1)).then_some(())
    })?;
    Ok(Release {
        calm,
        removed,
        first,
    })
}

/// The measured latencies, from the timestamps of the system's own parts (one clock).
struct Timeline {
    reaction: Reaction,
    release: Release,
    calm_s: u64,
}

impl Timeline {
    fn print(&self, out: &Out, logs: &std::path::Path) {
        let (r, rel) = (&self.reaction, &self.release);
        let ms_row = |v: f64| format!("{v:9.2} ms");
        let last = match r.last {
            Some(l) if l >= r.sent => (ms_row(ms(r.sent, l)), String::new()),
            _ => (
                "        -   ".into(),
                "(nothing arrived after the request)".into(),
            ),
        };
        // A threshold alert carries the kernel's time of the crossing; a sample, the time the
        // agent took it.
        let (stamp, how) = if r.trigger == "conn_threshold" {
            (
                "kernel event",
                "the tracker's ConnThreshold, stamped in the kernel",
            )
        } else {
            ("alert raised", "the agent's sample")
        };
        let rows = [
            (
                format!("attack -> {stamp} ({})", r.trigger),
                ms_row(ms(r.attack, r.raised)),
                format!(
                    "(opening {} connections; {how}; --mode {CONNECTIONS_MODE})",
                    r.connections
                ),
            ),
            (
                format!("{stamp} -> seen by the VO"),
                ms_row(ms(r.raised, r.at_vo)),
                format!("(ring buffer, {CONNECTIONS_AGENT} > HO_VM > VO)"),
            ),
            (
                "alert at the VO -> block request sent".into(),
                ms_row(ms(r.at_vo, r.sent)),
                "(the policy; the agent's neighbour table gives the MAC)".into(),
            ),
            (
                "block request -> drop flows in the switch".into(),
                ms_row(ms(r.sent, r.flow)),
                format!("(VO > HO_PH > {SDN_AGENT} > os-ken > Open vSwitch)"),
            ),
            (
                "block request -> last datagram through".into(),
                last.0,
                last.1,
            ),
            (
                "attacker let go -> flows removed".into(),
                format!("{:9.2} s ", secs(rel.removed - rel.calm)),
                format!("(calm_s = {}, then release_hackers)", self.calm_s),
            ),
            (
                "flows removed -> traffic again".into(),
                ms_row((rel.first - rel.removed).as_secs_f64() * 1e3),
                String::new(),
            ),
        ];
        out.now(Style::Phase, "summary (latencies on this host's clock):");
        for (what, value, why) in rows {
            out.line(format!("          {what:<44} {value}  {why}").trim_end());
        }
        out.line(&format!(
            "          VESPA's logs, topology and policy: {}",
            logs.display()
        ));
    }
}

/// The running rig, the attacker's UDP stream, the VO's alert feed and the status line.
struct Live<'a> {
    out: &'a Out,
    stop: &'a Interrupt,
    // Drop order: the stream (threads inside the namespaces) before the rig.
    stream: UdpStream,
    rig: SdnLoop,
    feed: Feed,
    /// When the next status line is due (none before traffic is told to flow).
    status_due: Option<Instant>,
    last_sent: u64,
}

impl Live<'_> {
    /// The fields of the VO's first log line with `message` that `pick` accepts.
    fn vo_log(&self, message: &str, pick: impl Fn(&Value) -> bool) -> Option<Value> {
        self.rig
            .vo
            .log_lines()
            .into_iter()
            .map(|x| x["fields"].clone())
            .find(|f| f["message"] == message && pick(f))
    }

    /// Polls `probe` until it returns `Some`, printing the VO's notable alerts as they arrive
    /// and the status line once a second. Err after `within` (naming `what`), at Ctrl-C, or
    /// when a VESPA process exits.
    fn until<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut probe: impl FnMut(&Self) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now().checked_add(within);
        loop {
            self.stop.check()?;
            let status_due = self.status_due.filter(|d| Instant::now() >= *d);
            // (Read the alerts before a status line too, so the lines keep their order.)
            if Instant::now() >= self.feed.next_poll || status_due.is_some() {
                self.feed.next_poll = Instant::now() + FEED_POLL;
                if let Some(page) = self.rig.api_get(&format!(
                    "/api/v1/alerts?from={}&limit=1000",
                    self.feed.cursor
                )) {
                    for (ns, style, text) in self.feed.take(&page) {
                        self.out.at(self.out.rel_ns(ns), style, &text);
                    }
                }
            }
            if let Some(v) = probe(self) {
                return Ok(v);
            }
            if let Err(e) = self.rig.check_running() {
                self.stop.check()?;
                bail!("while waiting for {what}: {e}");
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                bail!("{what} did not happen within {} s", within.as_secs());
            }
            if let Some(mut due) = status_due {
                self.status();
                // Once a second on the second; a slow look skips, never bunches up.
                while due <= Instant::now() {
                    due += Duration::from_secs(1);
                }
                self.status_due = Some(due);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One status line: UDP datagrams/s through the switch, connections the VO knows of from
    /// the attacker, VESPA's drop flows in the switch.
    fn status(&mut self) {
        let stream = &self.stream;
        let now = Instant::now();
        let through = stream.received_since(now - Duration::from_secs(1));
        let sent = stream.sent.load(Ordering::Relaxed);
        let sent_per_s = sent.saturating_sub(std::mem::replace(&mut self.last_sent, sent));
        let ip = self.rig.lab.h1.ip.to_string();
        let established = self
            .rig
            .api_get("/get_ip_connections")
            .and_then(|rows| {
                rows.as_array()?
                    .iter()
                    .find(|r| r["ip"] == ip.as_str())
                    .and_then(|r| r["value"].as_u64())
            })
            .unwrap_or(0);
        let flows = self.rig.vespa_flows().len();
        self.out
            .now(Style::Status, &format!("  udp attacker->victim {through:>4}/s (sent {sent_per_s:>4}/s) | established from attacker {established:>4} | VESPA drop flows {flows}"));
    }
}

/// The VO's alerts as its API lists them (`/api/v1/alerts`), paged through as they arrive.
struct Feed {
    cursor: u64,
    seen: Vec<Value>,
    /// Addresses the last connections sample had above the threshold (told once a crossing).
    over: BTreeSet<String>,
    threshold: u64,
    next_poll: Instant,
}

impl Feed {
    /// Takes a page of alerts; returns the notable ones as lines (raise time in Unix ns,
    /// style, text). Byte-counter samples and connection samples below the threshold are not
    /// notable.
    fn take(&mut self, page: &Value) -> Vec<(u64, Style, String)> {
        let mut lines = Vec::new();
        for a in page["alerts"].as_array().into_iter().flatten() {
            let alert = &a["alert"];
            let ns = alert["timestamp_ns"].as_u64().unwrap_or_default();
            let via = alert["path"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" > ")
                })
                .unwrap_or_default();
            let body = &alert["body"];
            match a["kind"].as_str().unwrap_or_default() {
                "conn_threshold" => {
                    let b = &body["ConnThreshold"];
                    lines.push((
                        ns,
                        Style::Alert,
                        format!(
                            "ALERT ConnThreshold {} established={} (threshold {}) via {via}",
                            b["addr"].as_str().unwrap_or("?"),
                            b["established"],
                            b["threshold"]
                        ),
                    ));
                }
                "connections" => {
                    let above: BTreeSet<(String, u64)> = body["Connections"]["per_remote"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| Some((r[0].as_str()?.to_string(), r[1].as_u64()?)))
                        .filter(|(_, n)| *n > self.threshold)
                        .collect();
                    for (ip, n) in &above {
                        if self.over.insert(ip.clone()) {
                            lines.push((
                                ns,
                                Style::Alert,
                                format!(
                                    "ALERT Connections {ip} established={n} (above {}) via {via}",
                                    self.threshold
                                ),
                            ));
                        }
                    }
                    self.over.retain(|ip| above.iter().any(|(a, _)| a == ip));
                }
                "text" => lines.push((
                    ns,
                    Style::Note,
                    format!("VO: {}", body["Text"].as_str().unwrap_or_default()),
                )),
                "policy" => {
                    let p = &body["Policy"];
                    let at = p["at"]
                        .as_str()
                        .map(|at| format!(" at {at}"))
                        .unwrap_or_default();
                    lines.push((
                        ns,
                        Style::Note,
                        format!(
                            "policy {}{at}: {}",
                            p["kind"].as_str().unwrap_or_default(),
                            p["text"].as_str().unwrap_or_default()
                        ),
                    ))
                }
                "bandwidth" => {}
                kind => lines.push((ns, Style::Alert, format!("ALERT {kind} {body} via {via}"))),
            }
            self.seen.push(a.clone());
        }
        self.cursor = page["next"].as_u64().unwrap_or(self.cursor);
        lines
    }

    /// The kind of the alert raised at `raised_ns`, once it was seen.
    fn kind_of(&self, raised_ns: u64) -> Option<String> {
        self.seen
            .iter()
            .find(|a| a["alert"]["timestamp_ns"] == raised_ns)
            .and_then(|a| a["kind"].as_str())
            .map(str::to_string)
    }
}

/// Accepts the attacker's connections on a thread while they are being opened (the backlog
/// alone may not hold them all).
struct Accepter {
    want: Arc<std::sync::atomic::AtomicUsize>,
    thread: std::thread::JoinHandle<std::io::Result<Vec<TcpStream>>>,
}

impl Accepter {
    fn start(listener: TcpListener) -> anyhow::Result<Accepter> {
        listener.set_nonblocking(true).context("victim listener")?;
        let want = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
        let w = want.clone();
        let thread = std::thread::spawn(move || {
            let mut got = Vec::new();
            // Once the count is known, a connection whose last ACK the block dropped never
            // completes on this side: give up on stragglers after a while.
            let mut deadline = None;
            loop {
                let want = w.load(Ordering::Relaxed);
                if got.len() >= want {
                    return Ok(got);
                }
                if want != usize::MAX
                    && Instant::now()
                        >= *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(2))
                {
                    return Ok(got);
                }
                match listener.accept() {
                    Ok((s, _)) => got.push(s),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => return Err(e),
                }
            }
        });
        Ok(Accepter { want, thread })
    }

    /// Collects the `n` connections the attacker opened (fewer if some never completed here).
    fn finish(self, n: usize) -> anyhow::Result<Vec<TcpStream>> {
        self.want.store(n, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow!("the victim's accept thread panicked"))?
            .context("the victim accepting connections")
    }
}

/// Opens up to `n` connections to `to`, stopping at the first that fails (once the block is
/// in place the switch drops the attacker's SYNs).
fn connect_n(to: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map_while(|_| TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok())
        .collect()
}

/// `cookie=...` and the match and action of a flow line, without its counters.
fn flow_summary(flow: &str) -> String {
    flow.split(", ")
        .filter(|f| {
            !f.starts_with("duration=")
                && !f.starts_with("n_packets=")
                && !f.starts_with("n_bytes=")
                && !f.starts_with("idle_age=")
                && !f.starts_with("hard_age=")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `b - a` in milliseconds (Unix ns; negative if `b` came first).
fn ms(a: u64, b: u64) -> f64 {
    (b as f64 - a as f64) / 1e6
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Ctrl-C (SIGINT) or SIGTERM was received.
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Set by SIGINT or SIGTERM (watched by a thread of its own), so every wait can stop and the
/// guards can clean up.
struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    fn install() -> anyhow::Result<Interrupt> {
        use tokio::signal::unix::{signal, SignalKind};
        let flag = Arc::new(AtomicBool::new(false));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("signal runtime")?;
        let (mut int, mut term) = rt
            .block_on(async {
                Ok::<_, std::io::Error>((
                    signal(SignalKind::interrupt())?,
                    signal(SignalKind::terminate())?,
                ))
            })
            .context("listening for Ctrl-C")?;
        let f = flag.clone();
        std::thread::spawn(move || loop {
            rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            });
            // A second Ctrl-C does not wait for the clean-up.
            if f.swap(true, Ordering::Relaxed) {
                std::process::exit(130);
            }
        });
        Ok(Interrupt(flag))
    }

    fn check(&self) -> Result<(), Interrupted> {
        if self.0.load(Ordering::Relaxed) {
            Err(Interrupted)
        } else {
            Ok(())
        }
    }
}

/// How a line looks.
#[derive(Clone, Copy)]
enum Style {
    Phase,
    Alert,
    Action,
    Good,
    Status,
    Note,
}

/// The narrative: lines stamped with seconds since the start, in colour on a terminal.
struct Out {
    color: bool,
    t0: Instant,
    unix0: u64,
}

impl Out {
    fn new(color: bool) -> Out {
        let unix0 = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        Out {
            color,
            t0: Instant::now(),
            unix0,
        }
    }

    /// Seconds since the start, of an instant.
    fn rel(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.t0).as_secs_f64()
    }

    /// Seconds since the start, of a Unix timestamp in ns (one clock: this host's).
    fn rel_ns(&self, unix_ns: u64) -> f64 {
        (unix_ns as f64 - self.unix0 as f64) / 1e9
    }

    /// An instant as Unix ns.
    fn unix(&self, t: Instant) -> u64 {
        self.unix0 + t.saturating_duration_since(self.t0).as_nanos() as u64
    }

    fn paint(&self, style: Style, text: &str) -> String {
        if !self.color {
            return text.to_string();
        }
        let code = match style {
            Style::Phase => "1",
            Style::Alert => "1;31",
            Style::Action => "1;33",
            Style::Good => "1;32",
            Style::Status => "2",
            Style::Note => "36",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    /// A line stamped `secs` after the start.
    fn at(&self, secs: f64, style: Style, text: &str) {
        self.line(&format!("[{secs:6.2}s] {}", self.paint(style, text)));
    }

    /// A line stamped now.
    fn now(&self, style: Style, text: &str) {
        self.at(self.rel(Instant::now()), style, text);
    }

    fn banner(&self, text: &str) {
        self.line(&self.paint(Style::Phase, text));
    }

    fn note(&self, text: &str) {
        self.line(&self.paint(Style::Note, text));
    }

    fn fail(&self, text: &str) {
        let _ = writeln!(
            std::io::stderr(),
            "{}",
            self.paint(Style::Alert, &format!("vespa-demo: {text}"))
        );
    }

    /// One line to stdout, flushed (the output may be a pipe); a closed stdout is ignored.
    fn line(&self, text: &str) {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{text}");
        let _ = o.flush();
    }
}
