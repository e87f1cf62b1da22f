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
pub struct Firewall(
    Sensors,
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
);

/// Reflex events a slow agent may have pending before the next are dropped (the blocks are
/// in the kernel whatever happens to their reports).
const REFLEX_BACKLOG: usize = 4096;

impl Sensors {
    /// The kernel firewall, when the eBPF sensors run.
    pub fn firewall(&self) -> Result<Firewall, SensorError> {
        self.ebpf()?;
        Ok(Firewall(self.clone(), Default::default()))
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

impl Firewall {
    /// A device throttle shapes what the host sends into the device (a VM's tap: the VM's
    /// side of a flood) with a token-bucket qdisc on its root, replacing what was there;
    /// remembered so that removing the throttle gives the device its default qdisc back.
    fn shape(&self, dev: &str, rate: Rate) -> Result<(), String> {
        let Rate::Bytes(bytes) = rate else {
            return Err(format!(
                "a device is throttled in bytes per second (e.g. 8mbit), not {rate}"
            ));
        };
        // A burst of 10 ms at the rate, at least a 64 KiB segment (what TCP hands the device
        // with segmentation offload); packets wait at most 200 ms.
        let burst = (bytes / 100).max(65_536 + 1_514);
        let out = std::process::Command::new("tc")
            .args(["qdisc", "replace", "dev", dev, "root", "tbf"])
            .args(["rate", &format!("{}bit", bytes.saturating_mul(8))])
            .args(["burst", &burst.to_string(), "latency", "200ms"])
            .output()
            .map_err(|e| format!("running tc: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "shaping {dev} (tc qdisc replace ... tbf): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        self.1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dev.to_string());
        Ok(())
    }

    fn unshape(&self, dev: &str) {
        let ours = self.1.lock().unwrap_or_else(|p| p.into_inner()).remove(dev);
        if ours {
            let _ = std::process::Command::new("tc")
                .args(["qdisc", "del", "dev", dev, "root"])
                .status();
        }
    }

    /// The shaper's counters on `dev`: (packets sent, bytes sent, packets dropped).
    fn shaper_counts(dev: &str) -> Option<(u64, u64, u64)> {
        let out = std::process::Command::new("tc")
            .args(["-j", "-s", "qdisc", "show", "dev", dev, "root"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let q = v.get(0)?;
        Some((
            q["packets"].as_u64()?,
            q["bytes"].as_u64()?,
            q["drops"].as_u64()?,
        ))
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
        if let Shaped::Device(dev) = target {
            self.shape(dev, rate)?;
        }
        self.with(|t| t.throttle(target, ifindex, rate, ttl))
    }
    fn unthrottle(&self, target: &Shaped) -> Result<bool, String> {
        let ifindex = Self::ifindex(target)?;
        let removed = self.with(|t| t.unthrottle(target, ifindex))?;
        if let Shaped::Device(dev) = target {
            self.unshape(dev);
        }
        Ok(removed)
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
        let mut list = self.with(|t| t.throttles(name_of))?;
        for t in &mut list {
            if let Shaped::Device(dev) = &t.target {
                if let Some((packets, bytes, drops)) = Self::shaper_counts(dev) {
                    (t.passed_packets, t.passed_bytes, t.dropped_packets) = (packets, bytes, drops);
                }
            }
        }
        Ok(list)
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
        let (blocks, devices) = self.with(|t| t.reap())?;
        for ifindex in devices {
            if let Some(i) = iface::list()
                .ok()
                .and_then(|l| l.into_iter().find(|i| i.ifindex == ifindex))
            {
                self.unshape(&i.name);
            }
        }
        Ok(blocks)
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
