//! `vespa-agent run`: the agent nodes of a VESPA tree — the sensing agents over this host's
//! sensors, the acting agents this build has (`vespa_agents`), each on its node.
use std::{net::IpAddr, sync::Arc};

use anyhow::Context as _;
use vespa_agent::{SensorConfig, SensorEvent, Sensors};
use vespa_agents::sensing::{IfaceBytes, RemoteCount, SensorAgent, SensorSource, ThresholdAlert};
use vespa_agents::topology::{self, Context};
use vespa_node::{AgentKind, AgentRef, Hooks, Role};
use vespa_proto::AlertBody;

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    nodes: vespa_node::launch::RunNodesArgs,
    /// Also serve the sensors' counters as Prometheus text at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    spool: vespa_node::launch::SpoolArgs,
}

/// Runs the agent nodes; `--metrics` series per address (and per block) are `top_n` at most.
pub fn run(args: RunArgs, mut cfg: SensorConfig, top_n: usize) -> anyhow::Result<()> {
    let mut topo = args.nodes.topology.load()?;
    args.spool.apply(&mut topo);
    let nodes = args
        .nodes
        .select(&topo, |n| n.role.is_agent())
        .map_err(anyhow::Error::msg)?;
    if args.nodes.check_config {
        return Ok(());
    }
    let keys = args
        .nodes
        .topology
        .keys(&topo)
        .map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let needs_sensors = nodes.iter().any(|n| {
        matches!(
            n.role,
            Role::Agent(AgentKind::Bandwidth | AgentKind::Connections | AgentKind::Firewall)
        )
    });
    // A firewall's tables and links are pinned, so its blocks outlive the process: in its
    // node's `pin_dir`, by default /sys/fs/bpf/vespa/<node>.
    if let Some(fw) = nodes
        .iter()
        .find(|n| n.role == Role::Agent(AgentKind::Firewall))
    {
        if cfg.pin_dir.is_none() {
            cfg.pin_dir = Some(fw.params.get("pin_dir").map_or_else(
                || std::path::Path::new(DEFAULT_PIN_ROOT).join(&fw.name),
                std::path::PathBuf::from,
            ));
        }
    }
    let sensors = if needs_sensors {
        Some(Sensors::start(cfg)?)
    } else {
        None
    };
    let every = topo.settings.sample_interval;
    rt.block_on(async {
        // Acting agents are built first, so a bad parameter or an unreachable libvirt stops
        // the start with a clear error instead of leaving a node without its verbs.
        let mut actuators = std::collections::BTreeMap::new();
        let ctx = Context {
            #[cfg(feature = "av")]
            relay: {
                let me = nodes.first().map(|n| n.name.clone()).unwrap_or_default();
                Arc::new(vespa_agents::relay::TreeRelay {
                    topology: Arc::new(topo.clone()),
                    security: keys.security(&me, false).map_err(anyhow::Error::msg)?,
                    me,
                })
            },
        };
        #[cfg(feature = "libvirt")]
        let mut taps = None;
        for def in &nodes {
            if let Role::Agent(kind) = def.role {
                if let Some(b) = topology::build(def, kind, &ctx)? {
                    #[cfg(feature = "libvirt")]
                    {
                        taps = taps.or(b.taps);
                    }
                    actuators.insert(def.name.clone(), b.agent);
                }
            }
        }
        // With a libvirt agent in this process, the exporter names the VM of each tap device.
        #[cfg(feature = "libvirt")]
        let vm_of: Option<vespa_agent::export::VmLookup> =
            taps.map(|t| -> vespa_agent::export::VmLookup {
                Arc::new(move |dev: &str| {
                    t.get(dev).map(|v| vespa_agent::export::VmLabel {
                        name: v.vm,
                        uuid: v.uuid,
                    })
                })
            });
        #[cfg(not(feature = "libvirt"))]
        let vm_of: Option<vespa_agent::export::VmLookup> = None;
        // The nodes' spools, in the exporter's scrapes (their handles come once they are built).
        let spools = vespa_node::metrics::SpoolCollector::default();
        let exporter = match (&args.metrics, &sensors) {
            (Some(addr), Some(s)) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening on {addr}"))?;
                tracing::info!(%addr, "serving metrics at http://{addr}/metrics");
                let mut registry = vespa_agent::export::registry_with_vms(s.clone(), top_n, vm_of.clone());
                registry.register_collector(Box::new(spools.clone()));
                Some(tokio::spawn(vespa_agent::export::serve(
                    listener,
                    registry,
                    std::future::pending(),
                )))
            }
            (Some(_), None) => anyhow::bail!(
                "--metrics needs a bandwidth, connections or firewall agent among the nodes run here"
            ),
            _ => None,
        };
        for def in nodes
            .iter()
            .filter(|n| n.role == Role::Agent(AgentKind::Firewall))
        {
            let s = sensors.as_ref().context("the firewall needs the sensors")?;
            actuators.insert(def.name.clone(), firewall_agent(s, &topo, def)?);
        }
        let hooks = |def: &vespa_node::config::NodeDef| -> Hooks {
            let agent: Option<AgentRef> = match (def.role, &sensors) {
                (Role::Agent(kind @ (AgentKind::Bandwidth | AgentKind::Connections)), Some(s)) => {
                    let source: Arc<dyn SensorSource> = Arc::new(Source(s.clone(), vm_of.clone()));
                    Some(AgentRef::new(SensorAgent::new(
                        kind,
                        source,
                        def.interfaces.clone(),
                        every,
                    )))
                }
                _ => actuators.get(&def.name).cloned(),
            };
            Hooks {
                agent,
                alert_handlers: Vec::new(),
            }
        };
        let exits = vespa_node::launch::run_nodes_with_handles(
            &topo,
            &nodes,
            &keys,
            hooks,
            |_, handle| spools.add(handle),
            vespa_node::launch::shutdown_signal(),
        )
        .await?;
        for (name, exit) in exits {
            tracing::info!(node = %name, ?exit, "node exited");
        }
        if let Some(e) = exporter {
            e.abort();
        }
        anyhow::Ok(())
    })?;
    // Dropping the last Sensors handle detaches the kernel programs.
    drop(sensors);
    Ok(())
}

/// Where firewall agents pin their tables and links unless told otherwise (`pin_dir`).
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/vespa";

/// The firewall agent of node `def` over the sensors' kernel tables, with the tree's
/// machines, its controllers and this host's gateways protected.
fn firewall_agent(
    sensors: &Sensors,
    topo: &vespa_node::config::Topology,
    def: &vespa_node::config::NodeDef,
) -> anyhow::Result<AgentRef> {
    use vespa_agents::firewall::{protected, FirewallAgent};
    let fw = sensors
        .firewall()
        .with_context(|| format!("node {}", def.name))?;
    let ttl = match def.params.get("ttl_s").map(|v| v.parse::<u64>()) {
        None => Some(std::time::Duration::from_secs(600)),
        Some(Ok(0)) => None,
        Some(Ok(s)) => Some(std::time::Duration::from_secs(s)),
        Some(Err(_)) => anyhow::bail!(
            "node {}: ttl_s = {:?}: expected whole seconds (0: until released)",
            def.name,
            def.params.get("ttl_s").cloned().unwrap_or_default()
        ),
    };
    let gateways = vespa_agent::iface::default_gateways().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read this host's gateways: they are not protected");
        Vec::new()
    });
    let list = protected(topo, def, &gateways).map_err(anyhow::Error::msg)?;
    tracing::info!(node = %def.name, protected = ?list.iter().map(|(t, _)| t.to_string()).collect::<Vec<_>>(), "firewall ready");
    let agent = FirewallAgent::new(std::sync::Arc::new(fw), ttl)
        .protect(list)
        .map_err(anyhow::Error::msg)?;
    Ok(AgentRef::new(agent))
}

/// The host sensors as the node runtime sees them; with a libvirt agent in this process, the
/// VM of each tap device.
struct Source(Sensors, Option<vespa_agent::export::VmLookup>);

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl SensorSource for Source {
    fn interfaces(&self) -> Result<Vec<IfaceBytes>, String> {
        Ok(self
            .0
            .interfaces()
            .map_err(text)?
            .into_iter()
            .map(|i| IfaceBytes {
                name: i.name,
                rx_bytes: i.rx_bytes,
                tx_bytes: i.tx_bytes,
                rx_packets: i.rx_packets,
                tx_packets: i.tx_packets,
            })
            .collect())
    }

    fn mac(&self, iface: &str) -> Result<String, String> {
        self.0.get_mac(iface).map_err(text)
    }

    fn connections(&self) -> Result<Vec<RemoteCount>, String> {
        Ok(self
            .0
            .connections()
            .map_err(text)?
            .into_iter()
            .map(|c| RemoteCount {
                addr: c.addr,
                established: c.established,
            })
            .collect())
    }

    fn connections_of(&self, addr: IpAddr) -> Result<RemoteCount, String> {
        let c = self.0.connections_of(addr).map_err(text)?;
        Ok(RemoteCount {
            addr: c.addr,
            established: c.established,
        })
    }

    fn threshold_alerts(&self) -> tokio::sync::mpsc::Receiver<ThresholdAlert> {
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let mut events = self.0.subscribe();
        // Threshold events carry the kernel's time of the crossing (CLOCK_MONOTONIC): the
        // alert is stamped with it, so the loop's latency starts at the kernel event.
        let at = |t: u64| Some(vespa_agent::clock::monotonic_to_unix_ns(t));
        tokio::spawn(async move {
            loop {
                let alert = match events.recv().await {
                    Ok(SensorEvent::ConnThreshold {
                        timestamp_ns,
                        addr,
                        established,
                        threshold,
                    }) => ThresholdAlert {
                        body: AlertBody::ConnThreshold {
                            addr,
                            established,
                            threshold,
                        },
                        at_unix_ns: at(timestamp_ns),
                    },
                    Ok(SensorEvent::SynThreshold {
                        timestamp_ns,
                        addr,
                        syns_in_second,
                        threshold,
                        ..
                    }) => ThresholdAlert {
                        body: AlertBody::SynThreshold {
                            addr,
                            syns_in_second,
                            threshold,
                        },
                        at_unix_ns: at(timestamp_ns),
                    },
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => ThresholdAlert {
                        body: AlertBody::Text(format!(
                            "{n} sensor events missed (the agent fell behind)"
                        )),
                        at_unix_ns: None,
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(alert).await.is_err() {
                    return;
                }
            }
        });
        rx
    }

    fn vm_of(&self, iface: &str) -> Option<String> {
        self.1.as_ref().and_then(|f| f(iface)).map(|v| v.name)
    }

    fn mac_of(&self, ip: IpAddr) -> Result<Option<String>, String> {
        self.0.mac_of(ip).map_err(text)
    }

    fn health(&self) -> Option<(u64, u64, u64)> {
        let h = self.0.health();
        let full = h
            .map_fill
            .values()
            .filter(|f| f.capacity > 0 && f.used >= f.capacity)
            .count() as u64;
        Some((h.events_lost, h.map_update_failures, full))
    }
}
