//! Which of the hypervisor's VMs a neighbour is.
//!
//! A rule keyed by remote address reaches its `cut_link` and `migrate` rungs only when the
//! policy knows the remote is one of our VMs (`Input::Neighbour { vm }`): the sensor's
//! `mac_of` gives the remote's MAC, and the rules' libvirt agent's `list_vms` gives each
//! domain's MACs. A task of the driver lists the VMs every [`EVERY`] while some rule keys by
//! remote and the rules name a libvirt agent of the topology; each MAC learnt is looked up in
//! the last listing at once (the alert that asked is not delayed), and a neighbour learnt
//! before its VM was listed is told again once a listing names it.
//!
//! Everything here is bounded: the listing's MACs ([`MAX_MACS`]), the neighbours remembered
//! ([`MAX_NEIGHBOURS`], forgotten all at once beyond), and the call's time ([`TIMEOUT`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use vespa_node::{AgentKind, NodeHandle, Role};
use vespa_policy::{Input, Mac};
use vespa_proto::verbs::LibvirtVerb;

use super::PolicyDriver;

/// How often the VMs are listed.
const EVERY: Duration = Duration::from_secs(15);
/// How long one `list_vms` may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// MACs of one listing kept at most.
const MAX_MACS: usize = 65_536;
/// Neighbours (address and MAC) remembered at most, to tell them again.
const MAX_NEIGHBOURS: usize = 65_536;

/// The last listing's MACs and the neighbours learnt, with the VM each was told as.
#[derive(Default)]
pub(super) struct Vms {
    inner: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    by_mac: HashMap<Mac, String>,
    told: HashMap<IpAddr, (Mac, Option<String>)>,
}

impl Vms {
    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many MACs the last listing named.
    #[cfg(test)]
    pub(super) fn macs(&self) -> usize {
        self.known().by_mac.len()
    }

    /// The neighbour input for `ip` at `mac`, with its VM when the last listing names it;
    /// remembered, so a later listing can name it.
    pub(super) fn neighbour(&self, ip: IpAddr, mac: Mac) -> Input {
        let mut k = self.known();
        let vm = k.by_mac.get(&mac).cloned();
        if k.told.len() >= MAX_NEIGHBOURS && !k.told.contains_key(&ip) {
            k.told.clear();
        }
        k.told.insert(ip, (mac, vm.clone()));
        Input::Neighbour { ip, mac, vm }
    }

    /// Takes a new listing; returns the neighbours whose VM it changes, as inputs.
    fn listed(&self, by_mac: HashMap<Mac, String>) -> Vec<Input> {
        let mut k = self.known();
        k.by_mac = by_mac;
        let Known { by_mac, told } = &mut *k;
        told.iter_mut()
            .filter_map(|(ip, (mac, vm))| {
                let now = by_mac.get(mac);
                (now != vm.as_ref()).then(|| {
                    *vm = now.cloned();
                    Input::Neighbour {
                        ip: *ip,
                        mac: *mac,
                        vm: vm.clone(),
                    }
                })
            })
            .collect()
    }
}

/// One VM as the libvirt agent's `list_vms` answers it (its `VmInfo`), what the driver
/// reads of it: here, to name neighbours; in reconciliation, links and quarantines.
#[derive(serde::Deserialize)]
pub(super) struct Vm {
    pub name: String,
    pub state: String,
    pub interfaces: Vec<Iface>,
}

/// One interface of a [`Vm`].
#[derive(serde::Deserialize)]
pub(super) struct Iface {
    pub mac: String,
    pub link_up: bool,
}

impl Vm {
    /// Whether its domain runs on this hypervisor (paused or stopping included): where a
    /// link can be down, and what a quarantine has not taken away.
    pub(super) fn runs_here(&self) -> bool {
        matches!(
            self.state.as_str(),
            "running" | "blocked" | "paused" | "pmsuspended" | "shutdown"
        )
    }
}

/// A `list_vms` reply read.
pub(super) fn parse(reply: &str) -> Result<Vec<Vm>, String> {
    serde_json::from_str(reply).map_err(|e| format!("list_vms with something else: {e}"))
}

/// Each MAC of the VMs listed with its domain's name (at most [`MAX_MACS`]).
fn macs_of(vms: Vec<Vm>) -> HashMap<Mac, String> {
    vms.into_iter()
        .flat_map(|vm| {
            vm.interfaces
                .into_iter()
                .filter_map(|i| i.mac.parse::<Mac>().ok())
                .map(move |m| (m, vm.name.clone()))
        })
        .take(MAX_MACS)
        .collect()
}

impl PolicyDriver {
    /// The rules' libvirt agent, when a rule keys by remote and the topology has it.
    fn vm_source(&self) -> Option<String> {
        if !self.wants_macs() {
            return None;
        }
        let name = self.core().state.rules().actuators.libvirt.clone();
        let topo = self.inner.topology.as_deref()?;
        (topo.node(&name)?.role == Role::Agent(AgentKind::Libvirt)).then_some(name)
    }
}

/// The driver's VM-listing task (see the module's text).
pub(super) async fn run(driver: PolicyDriver, node: NodeHandle) {
    loop {
        if let Some(agent) = driver.vm_source() {
            let ask = node.call(&agent, LibvirtVerb::ListVms {});
            match tokio::time::timeout(TIMEOUT, ask).await {
                Ok(Ok(reply)) => match parse(&reply) {
                    Ok(vms) => {
                        let by_mac = macs_of(vms);
                        if driver.inner.vms.known().by_mac != by_mac {
                            // Said when it changes (not every listing): from then on a
                            // neighbour with one of these MACs is that VM.
                            tracing::info!(node = %driver.node_name(), %agent, macs = by_mac.len(), "VMs listed: their MACs changed");
                        }
                        for input in driver.inner.vms.listed(by_mac) {
                            tracing::debug!(node = %driver.node_name(), ?input, "neighbour's VM learnt");
                            driver.step(input);
                        }
                    }
                    Err(e) => tracing::debug!(%agent, error = %e, "VMs not read"),
                },
                Ok(Err(e)) => tracing::debug!(%agent, error = %e, "VMs not listed"),
                Err(_) => tracing::debug!(%agent, "VMs not listed in time"),
            }
        }
        tokio::select! {
            _ = node.stopping() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    #[test]
    fn a_listing_names_the_vm_of_each_mac_and_tells_neighbours_learnt_before_it() {
        let reply = r#"[
            {"name":"web","uuid":"u1","state":"running","interfaces":[{"mac":"52:54:00:00:00:01","link_up":true},{"mac":"not a mac","link_up":true}]},
            {"name":"db","uuid":"u2","state":"running","interfaces":[{"mac":"52:54:00:00:00:02","link_up":false}]}
        ]"#;
        let by_mac = macs_of(parse(reply).unwrap());
        assert_eq!(by_mac.len(), 2);
        assert_eq!(by_mac[&mac("52:54:00:00:00:02")], "db");
        assert!(parse("{}").is_err());

        let vms = Vms::default();
        let web: IpAddr = "192.0.2.10".parse().unwrap();
        let far: IpAddr = "203.0.113.5".parse().unwrap();
        // Learnt before any listing: no VM yet.
        assert!(matches!(
            vms.neighbour(web, mac("52:54:00:00:00:01")),
            Input::Neighbour { vm: None, .. }
        ));
        vms.neighbour(far, mac("00:11:22:33:44:55"));
        let told = vms.listed(by_mac.clone());
        assert!(
            matches!(&told[..], [Input::Neighbour { ip, vm: Some(v), .. }] if *ip == web && v == "web"),
            "{told:?}"
        );
        // Told once: the same listing again changes nothing.
        assert!(vms.listed(by_mac).is_empty());
        // Learnt after: named at once.
        assert!(matches!(
            vms.neighbour("192.0.2.11".parse().unwrap(), mac("52:54:00:00:00:02")),
            Input::Neighbour { vm: Some(v), .. } if v == "db"
        ));
        // A VM gone from the listing: its neighbour is no VM of ours any more.
        let told = vms.listed(HashMap::new());
        assert_eq!(told.len(), 2, "{told:?}");
        assert!(told
            .iter()
            .all(|i| matches!(i, Input::Neighbour { vm: None, .. })));
    }
}
