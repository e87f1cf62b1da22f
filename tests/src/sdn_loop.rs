//! The first closed loop as one rig, shared by the `loops::sdn` test and `vespa-demo`: an
//! [`SdnLab`] (Open vSwitch userspace bridge controlled by os-ken, an attacker host `h1` and a
//! victim host `h2`) with a VESPA tree around it, so that a connection flood from the attacker
//! is seen by the victim's connections agent, the VO's policy blocks the attacker's MAC
//! through the os-ken SDN agent, and calm releases it.
//!
//! ```text
//!  switch namespace (ovs + os-ken REST on its loopback)      victim namespace (h2)
//!    VO, HO_VM, HO_PH  (vespa-orchestrator --policy)  <-mgmt veth->  Agent_Connections
//!    Agent_Controller_OsKen (vespa-agent, url = os-ken)              [+ Agent_Bandwidth]
//!                                                                    (vespa-agent, eBPF)
//!    bridge ── h1 (attacker) ── h2 (victim)
//! ```
//!
//! The VO's HTTP API listens on [`API`] of the switch namespace's loopback: read it with
//! [`SdnLoop::api_get`], or forward a host port to it ([`crate::net::Forward`]).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use crate::daemons::http_get;
use crate::daemons::ovs::SdnLab;
use crate::net::in_netns;
use crate::tree::{Proc, Tree, N};

/// How the victim's agents sense (`vespa-agent --mode`). The eBPF tracker counts the sockets
/// of its own namespace only, so on this one machine the attacker's client sockets (same
/// kernel, remote = the victim) are not mistaken for the victim's; `proc` gives the 2014
/// method for comparison.
pub const CONNECTIONS_MODE: &str = "ebpf";

/// The VO's HTTP API inside the switch namespace (os-ken holds 8080 there).
pub const API: &str = "127.0.0.1:18080";

/// What VESPA's drop flows carry (`VESP` in ASCII), to tell them from the learning switch's.
pub const VESPA_COOKIE: &str = "cookie=0x56455350";

/// The agents' names in the topology.
pub const SDN_AGENT: &str = "Agent_Controller_OsKen";
pub const CONNECTIONS_AGENT: &str = "Agent_Connections";
pub const BANDWIDTH_AGENT: &str = "Agent_Bandwidth";

/// One policy rule against connection floods: more than `above` established connections from
/// one remote (max over 1 s) blocks it for an hour; below `below` for `calm_s` seconds
/// releases it. The actuators not used here are named all the same (the rules need them).
pub fn conn_flood_policy(above: u64, below: u64, calm_s: u64) -> String {
    conn_flood_policy_via(SDN_AGENT, above, below, calm_s)
}

/// [`conn_flood_policy`] through the SDN agent named `sdn`.
pub fn conn_flood_policy_via(sdn: &str, above: u64, below: u64, calm_s: u64) -> String {
    format!(
        r#"
[actuators]
sdn = "{sdn}"
libvirt = "Agent_Libvirt"
quarantine = "quarantine"
av = "Agent_AV"
hypervisor = "Agent_HY"

[[rule]]
name = "conn-flood"
metric = "established"
key = "remote"
aggregate = "max"
window_s = 1
above = {above}
below = {below}
calm_s = {calm_s}
cooldown_s = 1
# Blocked connections stay ESTABLISHED on the victim until it drops them: no verification.
verify_s = 0
ladder = [{{ action = "block", ttl_s = 3600 }}]
"#
    )
}

/// How to build the rig.
pub struct Options<'a> {
    /// Names the scratch directory (`vespa-<tag>-...`).
    pub tag: &'a str,
    /// The VO's policy (TOML), written to `policy.toml` in the scratch directory.
    pub policy: &'a str,
    /// `vespa-agent --conn-threshold` of the connections agent.
    pub conn_threshold: u64,
    /// A bearer token for the API's mutations (written 0600 to `api-token`); none: mutations
    /// answer 503.
    pub api_token: Option<&'a str>,
    /// Keep the scratch directory (topology, key, policy, logs) after the rig drops.
    pub keep_files: bool,
    /// Also a bandwidth agent in the victim's namespace (same process as the connections
    /// agent), for the dashboard's rate charts.
    pub bandwidth_agent: bool,
}

/// The lab with the tree running around it. Dropping it kills the processes, then removes
/// the scratch directory (unless kept), then the lab.
pub struct SdnLoop {
    pub vo: Proc,
    pub sdn: Proc,
    pub conns: Proc,
    pub tree: Arc<Tree>,
    /// The agents of the topology (what [`SdnLoop::agents_ready`] waits for).
    pub agents: Vec<&'static str>,
    /// The policy file the VO reads (SIGHUP re-reads it).
    pub policy: PathBuf,
    pub lab: SdnLab,
}

impl SdnLoop {
    /// Links the victim to the switch namespace (management veth), writes the topology and
    /// the policy, and starts `vespa-orchestrator` (VO, HO_VM, HO_PH) and the SDN agent in the
    /// switch namespace and the connections agent in the victim's. Returns once the processes
    /// are started; [`SdnLoop::agents_ready`] tells when the agents are under the VO.
    pub fn start(lab: SdnLab, opts: &Options<'_>) -> anyhow::Result<SdnLoop> {
        let sw_ns = lab.ovs.ns.name.clone();
        let (sw_end, victim_end) = crate::net::try_veth(&lab.ovs.ns, &lab.h2.ns)
            .map_err(anyhow::Error::msg)
            .context("the management link")?;
        let machines: [(&str, IpAddr); 2] =
            [("sw", sw_end.v4.into()), ("victim", victim_end.v4.into())];
        let mut nodes = vec![
            N {
                name: "VO",
                kind: "vo",
                machine: "sw",
                master: None,
                port: 4150,
                extra: String::new(),
            },
            N {
                name: "HO_VM",
                kind: "ho_vm",
                machine: "sw",
                master: Some("VO"),
                port: 4151,
                extra: String::new(),
            },
            N {
                name: "HO_PH",
                kind: "ho_ph",
                machine: "sw",
                master: Some("VO"),
                port: 4154,
                extra: String::new(),
            },
            N {
                name: CONNECTIONS_AGENT,
                kind: "agent_connections",
                machine: "victim",
                master: Some("HO_VM"),
                port: 4156,
                extra: String::new(),
            },
            N {
                name: SDN_AGENT,
                kind: "agent_controller_osken",
                machine: "sw",
                master: Some("HO_PH"),
                port: 4157,
                extra: format!("[node.params]\nurl = \"{}\"\n", lab.url()),
            },
        ];
        let mut victim_nodes = vec![CONNECTIONS_AGENT];
        if opts.bandwidth_agent {
            nodes.push(N {
                name: BANDWIDTH_AGENT,
                kind: "agent_bandwidth",
                machine: "victim",
                master: Some("HO_VM"),
                port: 4155,
                extra: String::new(),
            });
            victim_nodes.push(BANDWIDTH_AGENT);
        }
        let settings = "heartbeat_ms = 500\nsample_interval_ms = 200\nbackoff_min_ms = 20\nbackoff_max_ms = 300";
        let mut tree = Tree::create(opts.tag, settings, &machines, &nodes)?;
        if opts.keep_files {
            tree.scratch.keep();
        }
        let policy = tree.scratch.dir.join("policy.toml");
        std::fs::write(&policy, opts.policy)
            .with_context(|| format!("writing {}", policy.display()))?;
        let policy_s = policy.to_string_lossy().into_owned();
        let mut vo_args = vec![
            "--policy".to_string(),
            policy_s,
            "--http".into(),
            API.into(),
        ];
        if let Some(token) = opts.api_token {
            use std::os::unix::fs::OpenOptionsExt as _;
            let path = tree.scratch.dir.join("api-token");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            std::io::Write::write_all(&mut f, token.as_bytes())?;
            vo_args.extend([
                "--api-token-file".into(),
                path.to_string_lossy().into_owned(),
            ]);
        }
        let vo_args: Vec<&str> = vo_args.iter().map(String::as_str).collect();
        let threshold = opts.conn_threshold.to_string();
        let vo = tree.start(
            "vo",
            "vespa-orchestrator",
            Some(&sw_ns),
            &[],
            &["VO", "HO_VM", "HO_PH"],
            &vo_args,
        )?;
        let sdn = tree.start("sdn", "vespa-agent", Some(&sw_ns), &[], &[SDN_AGENT], &[])?;
        // `--netns` rather than `ip netns exec`: the agent keeps the host's mounts (tracefs).
        let conns = tree.start(
            "conns",
            "vespa-agent",
            None,
            &[
                "--netns",
                &lab.h2.ns.name,
                "--mode",
                CONNECTIONS_MODE,
                "--conn-threshold",
                &threshold,
            ],
            &victim_nodes,
            &[],
        )?;
        let mut agents = victim_nodes;
        agents.push(SDN_AGENT);
        Ok(SdnLoop {
            vo,
            sdn,
            conns,
            tree: Arc::new(tree),
            agents,
            policy,
            lab,
        })
    }

    /// The switch namespace, where the VO, its API and os-ken run.
    pub fn switch_ns(&self) -> &str {
        &self.lab.ovs.ns.name
    }

    /// Calls a verb on the VO from inside the switch namespace.
    pub fn vo_call(&self, verb: &str, args: &[&str]) -> Result<String, String> {
        let (t, verb) = (self.tree.clone(), verb.to_string());
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        crate::net::try_in_netns(self.switch_ns(), move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            t.call("VO", &verb, &a)
        })
        .map_err(|e| e.to_string())?
    }

    /// True once every agent answers through the VO.
    pub fn agents_ready(&self) -> bool {
        self.agents
            .iter()
            .all(|a| self.vo_call("call", &[a, "help"]).is_ok())
    }

    /// A request to the VO's API with the bearer token: (status, body).
    pub fn api_request(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: &str,
    ) -> Option<(u16, String)> {
        let (method, path, token, body) = (
            method.to_string(),
            path.to_string(),
            token.to_string(),
            body.to_string(),
        );
        let addr: std::net::SocketAddr = API.parse().ok()?;
        in_netns(self.switch_ns(), move || {
            crate::daemons::http_request(addr, &method, &path, Some(&token), &body)
        })
    }

    /// The value of one series of the VO's `/metrics` (its name with its labels, as written
    /// there: `vespa_decisions_drift_total{node="VO",actuator="X",kind="missing"}`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics(&[series])?.pop()
    }

    /// The values of several series of one scrape of the VO's `/metrics` (None unless all
    /// are there), so that related series (a histogram's sum and count) agree.
    pub fn metrics(&self, series: &[&str]) -> Option<Vec<f64>> {
        let (status, body) = in_netns(self.switch_ns(), || http_get(API, "/metrics")).ok()?;
        if status != 200 {
            return None;
        }
        series
            .iter()
            .map(|s| {
                body.lines().find_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    (name == *s).then(|| value.parse().ok()).flatten()
                })
            })
            .collect()
    }

    /// GET on the VO's API; `Some` for a 200 with a JSON body.
    pub fn api_get(&self, path: &str) -> Option<serde_json::Value> {
        let path = path.to_string();
        let (status, body) = in_netns(self.switch_ns(), move || http_get(API, &path)).ok()?;
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// The switch's flows that carry VESPA's cookie.
    pub fn vespa_flows(&self) -> Vec<String> {
        self.lab.ovs.flows_matching(&self.lab.bridge, VESPA_COOKIE)
    }

    /// Err naming the first VESPA process that exited, with its log's last lines.
    pub fn check_running(&mut self) -> Result<(), String> {
        for p in [&mut self.vo, &mut self.sdn, &mut self.conns] {
            if let Some(st) = p.exited() {
                let log = p.log_text();
                let tail: Vec<&str> = log
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                return Err(format!(
                    "{} exited ({st}); last log lines:\n{}",
                    p.label,
                    tail.join("\n")
                ));
            }
        }
        Ok(())
    }

    /// Every VESPA process's log, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "VO:\n{}\nSDN:\n{}\nconns:\n{}",
            self.vo.log_text(),
            self.sdn.log_text(),
            self.conns.log_text()
        )
    }
}

/// Whether `flow` (a line of `ovs-ofctl dump-flows`) is VESPA's drop flow for `mac`. The
/// learning switch has `dl_src` flows of its own: only VESPA's cookie counts.
pub fn is_vespa_drop(flow: &str, mac: &str) -> bool {
    flow.contains(VESPA_COOKIE)
        && flow.contains(&format!("dl_src={mac}"))
        && flow.ends_with("actions=drop")
}
