//! The kernel firewall as the firewall agent uses it ([`vespa_agents::firewall`]): the eBPF
//! sensors' tables behind [`FirewallBackend`]. Only the eBPF back end has a firewall.

use std::time::Duration;

use tokio::sync::mpsc;
use vespa_agents::firewall::{
    BlockInfo, FirewallBackend, FirewallStats, ReflexBlocked, ReflexSettings, ThrottleInfo,
};
use vespa_proto::verbs::{Rate, Shaped, Target, Word};

use crate::{error::SensorError, event::SensorEvent, iface, sensor::Sensors};

/// The firewall of running eBPF sensors.
#[derive(Clone)]
pub struct Firewall(Sensors);

/// Reflex events a slow agent may have pending before the next are dropped (the blocks are
/// in the kernel whatever happens to their reports).
const REFLEX_BACKLOG: usize = 4096;

impl Sensors {
    /// The kernel firewall, when the eBPF sensors run.
    pub fn firewall(&self) -> Result<Firewall, SensorError> {
        self.ebpf()?;
        Ok(Firewall(self.clone()))
    }
}

fn text(e: SensorError) -> String {
    e.to_string()
}

impl Firewall {
    fn ifindex(dev: &Shaped) -> Result<Option<u32>, String> {
        match dev {
            Shaped::Device(name) => iface::get(name)
                .map(|i| Some(i.ifindex))
                .map_err(|e| format!("interface {name:?}: {e}")),
            Shaped::Source(_) => Ok(None),
        }
    }

    fn with<R>(
        &self,
        f: impl FnOnce(&mut crate::ebpf::FirewallTables) -> Result<R, SensorError>,
    ) -> Result<R, String> {
        self.0.ebpf().map_err(text)?.firewall(f).map_err(text)
    }
}

impl FirewallBackend for Firewall {
    fn block(&self, target: Target, ttl: Option<Duration>) -> Result<(), String> {
        self.with(|t| t.block(target, ttl))
    }
    fn unblock(&self, target: Target) -> Result<bool, String> {
        self.with(|t| t.unblock(target))
    }
    fn blocks(&self) -> Result<Vec<BlockInfo>, String> {
        self.with(|t| t.blocks())
    }
    fn throttle(&self, target: &Shaped, rate: Rate, ttl: Option<Duration>) -> Result<(), String> {
        let ifindex = Self::ifindex(target)?;
        self.with(|t| t.throttle(target, ifindex, rate, ttl))
    }
    fn unthrottle(&self, target: &Shaped) -> Result<bool, String> {
        let ifindex = Self::ifindex(target)?;
        self.with(|t| t.unthrottle(target, ifindex))
    }
    fn throttles(&self) -> Result<Vec<ThrottleInfo>, String> {
        let names: Vec<(u32, String)> = iface::list()
            .map(|l| l.into_iter().map(|i| (i.ifindex, i.name)).collect())
            .unwrap_or_default();
        let name_of = |ifindex: u32| {
            names
                .iter()
                .find(|(i, _)| *i == ifindex)
                .map_or_else(|| format!("ifindex{ifindex}"), |(_, n)| n.clone())
        };
        self.with(|t| t.throttles(name_of))
    }
    fn allow(&self, target: Target) -> Result<(), String> {
        self.with(|t| t.allow(target))
    }
    fn disallow(&self, target: Target) -> Result<bool, String> {
        self.with(|t| t.disallow(target))
    }
    fn allowed(&self) -> Result<Vec<Target>, String> {
        self.with(|t| t.allowed())
    }
    fn set_reflex(&self, r: ReflexSettings) -> Result<(), String> {
        self.with(|t| t.set_reflex(r))
    }
    fn reap(&self) -> Result<Vec<BlockInfo>, String> {
        self.with(|t| t.reap())
    }
    fn stats(&self) -> Result<FirewallStats, String> {
        self.with(|t| t.stats())
    }
    fn reflex_events(&self) -> mpsc::Receiver<ReflexBlocked> {
        let (tx, rx) = mpsc::channel(REFLEX_BACKLOG);
        let mut events = self.0.subscribe();
        tokio::spawn(async move {
            loop {
                let ev = match events.recv().await {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "reflex reports fell behind the sensors' events"
                        );
                        continue;
                    }
                    Err(_) => break,
                };
                let SensorEvent::ReflexBlock {
                    timestamp_ns,
                    target,
                    syn,
                    value,
                    threshold,
                    ttl_ns,
                } = ev
                else {
                    continue;
                };
                let Ok(target) = Target::parse_word(&target) else {
                    continue;
                };
                let r = ReflexBlocked {
                    target,
                    cause: if syn { "syn" } else { "conn" },
                    value,
                    threshold,
                    ttl: (ttl_ns != 0).then(|| Duration::from_nanos(ttl_ns)),
                    kernel_ns: timestamp_ns,
                };
                if tx.try_send(r).is_err() && tx.is_closed() {
                    break;
                }
            }
        });
        rx
    }
}
