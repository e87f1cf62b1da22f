//! The acting agents of a tree (libvirt, SDN controllers, antivirus), built from their
//! topology entries and adapted to the node runtime: their verbs become the node's verb table
//! and the alerts they raise on their own climb the tree.
//!
//! `[node.params]` keys, all optional unless said:
//! - `agent_libvirt`: `uri` (`qemu:///system`), `quarantine_user` (`root`).
//! - `agent_controller_osken`: `url` (`http://127.0.0.1:8080`), `priority` (40000).
//! - `agent_controller_floodlight`: `url` (`http://127.0.0.1:8080`), `api` (`v1` | `v0.90`),
//!   `mode` (`static_flow` | `firewall`).
//! - `agent_controller_pox`: `addr` (`127.0.0.1:7790`), `channel` (`mac_redir`).
//! - every controller: `default_ttl_s` (300; `none` = until released).
//! - `agent_av`: `vm` (required), `clamd` (`unix:/path` or `host:port`; default the Debian
//!   socket `unix:/run/clamav/clamd.ctl`), `watch_dir`.

use std::{collections::BTreeMap, path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use anyhow::{bail, Context as _};
use tokio::sync::{mpsc, Mutex};
use vespa_actuators::{
    clamav::VmRelay,
    clamav::{AvAgent, AvConfig, ClamdAddr},
    libvirt::{LibvirtAgent, LibvirtConfig},
    sdn::{
        floodlight::{Floodlight, FloodlightApi, FloodlightConfig, FloodlightMode},
        osken::{OsKen, OsKenConfig},
        pox::{Pox, PoxConfig},
        SdnAgent, SdnAgentConfig,
    },
    ActuatorAlert, ActuatorVerbs, AlertSink, VerbFuture,
};
use vespa_node::{config::NodeDef, AgentKind, AgentVerbs, NodeHandle, VerbTable};
use vespa_proto::AlertBody;

/// Alerts an agent may have in flight before it waits for the node to take them.
const ALERT_BACKLOG: usize = 1024;

/// An acting agent, and the libvirt agent's tap map when it is one.
pub struct Built {
    pub agent: Arc<dyn AgentVerbs>,
    pub taps: Option<vespa_actuators::libvirt::TapMap>,
}

/// Builds the agent of an acting node, or None for the kinds served elsewhere (sensors).
/// `relay` reaches other nodes directly (the antivirus agent's path to the hypervisor agent).
pub fn build(
    def: &NodeDef,
    kind: AgentKind,
    relay: &Arc<TreeRelay>,
) -> anyhow::Result<Option<Built>> {
    let p = Params {
        node: &def.name,
        map: &def.params,
    };
    let (tx, rx) = mpsc::channel(ALERT_BACKLOG);
    let sink = AlertSink::new(tx);
    let mut taps = None;
    let agent: Arc<dyn ActuatorVerbs> = match kind {
        AgentKind::Bandwidth | AgentKind::Connections => return Ok(None),
        AgentKind::Libvirt => {
            let mut cfg =
                LibvirtConfig::new(&p.get("uri").unwrap_or_else(|| "qemu:///system".into()));
            if let Some(u) = p.get("quarantine_user") {
                cfg.quarantine_user = u;
            }
            let a = LibvirtAgent::new(cfg, sink)
                .with_context(|| format!("{}: connecting to libvirt", def.name))?;
            taps = Some(a.taps());
            Arc::new(a)
        }
        AgentKind::ControllerOsken => {
            let mut cfg = OsKenConfig::default();
            if let Some(u) = p.get("url") {
                cfg.url = u;
            }
            if let Some(v) = p.parse::<u16>("priority")? {
                cfg.priority = v;
            }
            Arc::new(SdnAgent::new(OsKen::new(cfg), p.sdn()?, sink))
        }
        AgentKind::ControllerFloodlight => {
            let mut cfg = FloodlightConfig::default();
            if let Some(u) = p.get("url") {
                cfg.url = u;
            }
            cfg.api = match p.get("api").as_deref() {
                None | Some("v1") => FloodlightApi::V1,
                Some("v0.90") => FloodlightApi::V090,
                Some(other) => bail!("{}: params.api: {other:?} is not v1 or v0.90", def.name),
            };
            cfg.mode = match p.get("mode").as_deref() {
                None | Some("static_flow") => FloodlightMode::StaticFlow,
                Some("firewall") => FloodlightMode::Firewall,
                Some(other) => bail!(
                    "{}: params.mode: {other:?} is not static_flow or firewall",
                    def.name
                ),
            };
            Arc::new(SdnAgent::new(Floodlight::new(cfg), p.sdn()?, sink))
        }
        AgentKind::ControllerPox => {
            let mut cfg = PoxConfig::default();
            if let Some(a) = p.get("addr") {
                cfg.addr = a;
            }
            if let Some(c) = p.get("channel") {
                cfg.channel = c;
            }
            Arc::new(SdnAgent::new(Pox::new(cfg), p.sdn()?, sink))
        }
        AgentKind::Av => {
            let vm = p.get("vm").with_context(|| {
                format!(
                    "{}: params.vm (the VM this antivirus agent protects) is required",
                    def.name
                )
            })?;
            let clamd = match p.get("clamd") {
                None => ClamdAddr::Unix(PathBuf::from("/run/clamav/clamd.ctl")),
                Some(s) => match s.strip_prefix("unix:") {
                    Some(path) => ClamdAddr::Unix(PathBuf::from(path)),
                    None => ClamdAddr::Tcp(s),
                },
            };
            let mut cfg = AvConfig::new(&vm, clamd);
            cfg.watch_dir = p.get("watch_dir").map(PathBuf::from);
            let av = AvAgent::new(cfg, sink);
            av.set_relay(relay.clone());
            Arc::new(av)
        }
    };
    Ok(Some(Built {
        agent: Arc::new(Adapter {
            agent,
            alerts: Mutex::new(Some(rx)),
        }),
        taps,
    }))
}

/// Calls a verb on another node by connecting to it directly, at its topology address, with
/// the tree's key: how the 2014 antivirus agent reached the hypervisor agent while its VM was
/// isolated (siblings are not reachable by routing down the tree).
pub struct TreeRelay {
    pub topology: Arc<vespa_node::Topology>,
    pub security: vespa_node::Security,
    /// The name this process presents in the handshake.
    pub me: String,
}

impl VmRelay for TreeRelay {
    fn call<'a>(&'a self, node: &'a str, verb: &'a str, args: Vec<String>) -> VerbFuture<'a> {
        Box::pin(async move {
            let def = self
                .topology
                .node(node)
                .ok_or_else(|| format!("no node named {node:?} in the topology"))?;
            let addr = self.topology.listen_addr(def);
            let mut client = vespa_node::Client::connect(
                addr,
                &self.security,
                &self.me,
                Some(node),
                Duration::from_secs(5),
            )
            .await
            .map_err(|e| format!("reaching {node} at {addr}: {e}"))?;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let reply = client
                .call(verb, &args)
                .await
                .map_err(|e| format!("{node} {verb}: {e}"))?;
            client.close().await;
            reply
        })
    }
}

struct Params<'a> {
    node: &'a str,
    map: &'a BTreeMap<String, String>,
}

impl Params<'_> {
    fn get(&self, key: &str) -> Option<String> {
        self.map.get(key).cloned()
    }

    fn parse<T: FromStr>(&self, key: &str) -> anyhow::Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        self.map
            .get(key)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| anyhow::anyhow!("{}: params.{key}: {v:?}: {e}", self.node))
            })
            .transpose()
    }

    fn sdn(&self) -> anyhow::Result<SdnAgentConfig> {
        let mut cfg = SdnAgentConfig::default();
        match self.map.get("default_ttl_s").map(String::as_str) {
            None => {}
            Some("none") => cfg.default_ttl = None,
            Some(_) => {
                cfg.default_ttl = self.parse::<u64>("default_ttl_s")?.map(Duration::from_secs)
            }
        }
        Ok(cfg)
    }
}

/// An actuator agent as the node runtime sees it.
struct Adapter {
    agent: Arc<dyn ActuatorVerbs>,
    alerts: Mutex<Option<mpsc::Receiver<ActuatorAlert>>>,
}

impl AgentVerbs for Adapter {
    fn verbs(&self) -> VerbTable {
        let mut table = VerbTable::new();
        for v in self.agent.verbs() {
            let agent = self.agent.clone();
            table.add(v.name, v.usage, v.help, move |args| {
                let agent = agent.clone();
                async move { agent.call(v.name, args).await }
            });
        }
        table
    }

    fn start(&self, node: NodeHandle) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(mut rx) = self.alerts.try_lock().ok().and_then(|mut g| g.take()) else {
            return Vec::new();
        };
        vec![tokio::spawn(async move {
            loop {
                tokio::select! {
                    a = rx.recv() => {
                        let Some(a) = a else { break };
                        let body = match a {
                            ActuatorAlert::Infected { vm, file, signature } => AlertBody::Infected { vm, file, signature },
                            ActuatorAlert::ActuatorFailed { actuator, action, error } => AlertBody::ActuatorFailed { actuator, action, error },
                        };
                        if let Err(e) = node.raise(body) {
                            tracing::warn!(node = node.name(), error = %e, "actuator alert refused by a full queue");
                        }
                    }
                    _ = node.stopping() => break,
                }
            }
        })]
    }
}
