//! An acting agent built from its node's topology entry.
//!
//! `[node.params]` keys, all optional unless said:
//! - `agent_libvirt`: `uri` (`qemu:///system`), `quarantine_user` (`root`), `migrate_to`
//!   (where `migrate` may send a VM: `name=URI` or host names, comma-separated; none),
//!   `migrate_uri` (where a destination takes the VM's memory: `name=tcp://<address>[:<port>]`,
//!   comma-separated; default: the destination's choice),
//!   `domains` (the VMs it manages: name patterns, comma-separated; all).
//! - `agent_controller_osken`: `url` (`http://127.0.0.1:8080`), `priority` (40000).
//! - `agent_controller_floodlight`: `url` (`http://127.0.0.1:8080`), `api` (`v1` | `v0.90`),
//!   `mode` (`static_flow` | `firewall`).
//! - `agent_controller_pox`: `addr` (`127.0.0.1:7790`), `channel` (`mac_redir`).
//! - every controller: `default_ttl_s` (300; `none` = until released).
//! - `agent_av`: `vm` (required), `clamd` (`unix:/path` or `host:port`; default the Debian
//!   socket `unix:/run/clamav/clamd.ctl`), `watch_dir`.
//!
//! The sensing kinds are built by the caller (they need the host sensors); an acting kind this
//! build left out (its cargo feature off) is an error naming the feature.

use std::collections::BTreeMap;
use std::str::FromStr;
#[cfg(feature = "av")]
use std::sync::Arc;

use vespa_node::config::NodeDef;
use vespa_node::{AgentKind, AgentRef};

/// Why an acting agent could not be built from its topology entry.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A parameter has a value the agent cannot use.
    #[error("{node}: params.{key}: {value:?} {reason}")]
    Param {
        /// The node.
        node: String,
        /// The parameter.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A required parameter is missing.
    #[error("{node}: params.{key} ({what}) is required")]
    Missing {
        /// The node.
        node: String,
        /// The parameter.
        key: &'static str,
        /// What it is.
        what: &'static str,
    },
    /// This build left the kind out.
    #[error("{node}: this vespa-agent was built without the `{feature}` feature ({kind} agents)")]
    NotBuilt {
        /// The node.
        node: String,
        /// Its kind, as the topology spells it.
        kind: &'static str,
        /// The cargo feature that brings it.
        feature: &'static str,
    },
    /// libvirt could not be reached.
    #[cfg(feature = "libvirt")]
    #[error("{node}: connecting to libvirt")]
    Libvirt {
        /// The node.
        node: String,
        /// What libvirt said.
        #[source]
        source: crate::LibvirtError,
    },
}

/// An acting agent, and the libvirt agent's tap map when it is one.
pub struct Built {
    /// The agent, for the node's hooks.
    pub agent: AgentRef,
    /// Host tap device -> VM, kept current by the libvirt agent.
    #[cfg(feature = "libvirt")]
    pub taps: Option<crate::libvirt::TapMap>,
}

/// What an acting agent needs besides its entry.
pub struct Context {
    /// The antivirus agent's path to the hypervisor agent.
    #[cfg(feature = "av")]
    pub relay: Arc<crate::relay::TreeRelay>,
}

/// Builds the agent of an acting node; `None` for the sensing kinds (built by the caller over
/// the host sensors). Must run inside a tokio runtime (the SDN agents start their reaper).
pub fn build(def: &NodeDef, kind: AgentKind, ctx: &Context) -> Result<Option<Built>, BuildError> {
    let _ = ctx;
    let p = Params {
        node: &def.name,
        map: &def.params,
    };
    match kind {
        // Built by `vespa-agent` over its sensors.
        AgentKind::Bandwidth | AgentKind::Connections | AgentKind::Firewall => Ok(None),
        #[cfg(feature = "libvirt")]
        AgentKind::Libvirt => libvirt(&p).map(Some),
        #[cfg(feature = "sdn")]
        AgentKind::ControllerOsken | AgentKind::ControllerFloodlight | AgentKind::ControllerPox => {
            Ok(Some(Built::plain(sdn(&p, kind)?)))
        }
        #[cfg(feature = "av")]
        AgentKind::Av => Ok(Some(Built::plain(av(&p, ctx)?))),
        #[allow(unreachable_patterns)]
        other => Err(p.not_built(other)),
    }
}

impl Built {
    /// An agent without a tap map.
    #[cfg_attr(not(any(feature = "sdn", feature = "av")), allow(dead_code))]
    fn plain(agent: AgentRef) -> Built {
        Built {
            agent,
            #[cfg(feature = "libvirt")]
            taps: None,
        }
    }
}

#[cfg(feature = "libvirt")]
fn libvirt(p: &Params<'_>) -> Result<Built, BuildError> {
    use crate::libvirt::{Domains, LibvirtAgent, LibvirtConfig};
    use crate::Acting;
    let mut cfg = LibvirtConfig::new(&p.get("uri").unwrap_or_else(|| "qemu:///system".into()));
    if let Some(u) = p.get("quarantine_user") {
        cfg.quarantine_user = u;
    }
    if let Some(list) = p.get("migrate_to") {
        cfg.add_destinations(&list)
            .map_err(|reason| BuildError::Param {
                node: p.node.to_string(),
                key: "migrate_to",
                value: list.clone(),
                reason,
            })?;
    }
    if let Some(list) = p.get("domains") {
        cfg.domains = Domains::parse(&list).map_err(|reason| BuildError::Param {
            node: p.node.to_string(),
            key: "domains",
            value: list.clone(),
            reason,
        })?;
    }
    if let Some(list) = p.get("migrate_uri") {
        cfg.add_migrate_uris(&list)
            .map_err(|reason| BuildError::Param {
                node: p.node.to_string(),
                key: "migrate_uri",
                value: list.clone(),
                reason,
            })?;
    }
    let agent = Acting::try_new(|sink| LibvirtAgent::new(cfg, sink)).map_err(|source| {
        BuildError::Libvirt {
            node: p.node.to_string(),
            source,
        }
    })?;
    let taps = Some(agent.agent().taps());
    Ok(Built {
        agent: AgentRef::new(agent),
        taps,
    })
}

#[cfg(feature = "sdn")]
fn sdn(p: &Params<'_>, kind: AgentKind) -> Result<AgentRef, BuildError> {
    use crate::sdn::floodlight::{Floodlight, FloodlightApi, FloodlightConfig, FloodlightMode};
    use crate::sdn::osken::{OsKen, OsKenConfig};
    use crate::sdn::pox::{Pox, PoxConfig};
    use crate::sdn::{SdnAgent, SdnAgentConfig};
    use crate::Acting;

    let mut agent_cfg = SdnAgentConfig::default();
    match p.map.get("default_ttl_s").map(String::as_str) {
        None => {}
        Some("none") => agent_cfg.default_ttl = None,
        Some(_) => {
            agent_cfg.default_ttl = p
                .parse::<u64>("default_ttl_s")?
                .map(std::time::Duration::from_secs)
        }
    }
    Ok(match kind {
        AgentKind::ControllerOsken => {
            let mut cfg = OsKenConfig::default();
            if let Some(u) = p.get("url") {
                cfg.url = u;
            }
            if let Some(v) = p.parse::<u16>("priority")? {
                cfg.priority = v;
            }
            AgentRef::new(Acting::new(|sink| {
                SdnAgent::new(OsKen::new(cfg), agent_cfg, sink)
            }))
        }
        AgentKind::ControllerFloodlight => {
            let mut cfg = FloodlightConfig::default();
            if let Some(u) = p.get("url") {
                cfg.url = u;
            }
            cfg.api = match p.get("api").as_deref() {
                None | Some("v1") => FloodlightApi::V1,
                Some("v0.90") => FloodlightApi::V090,
                Some(other) => return Err(p.bad("api", other, "is not v1 or v0.90")),
            };
            cfg.mode = match p.get("mode").as_deref() {
                None | Some("static_flow") => FloodlightMode::StaticFlow,
                Some("firewall") => FloodlightMode::Firewall,
                Some(other) => return Err(p.bad("mode", other, "is not static_flow or firewall")),
            };
            let ctrl = Floodlight::new(cfg);
            AgentRef::new(Acting::new(|sink| SdnAgent::new(ctrl, agent_cfg, sink)))
        }
        _ => {
            let mut cfg = PoxConfig::default();
            if let Some(a) = p.get("addr") {
                cfg.addr = a;
            }
            if let Some(c) = p.get("channel") {
                cfg.channel = c;
            }
            AgentRef::new(Acting::new(|sink| {
                SdnAgent::new(Pox::new(cfg), agent_cfg, sink)
            }))
        }
    })
}

#[cfg(feature = "av")]
fn av(p: &Params<'_>, ctx: &Context) -> Result<AgentRef, BuildError> {
    use std::path::PathBuf;

    use crate::clamav::{AvAgent, AvConfig, ClamdAddr};
    use crate::Acting;

    let vm = p.get("vm").ok_or_else(|| BuildError::Missing {
        node: p.node.to_string(),
        key: "vm",
        what: "the VM this antivirus agent protects",
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
    if let Some(n) = p.parse::<u64>("max_scan_bytes")? {
        cfg.max_scan_bytes = n;
    }
    let agent = Acting::new(|sink| AvAgent::new(cfg, sink));
    agent.agent().set_relay(ctx.relay.clone());
    Ok(AgentRef::new(agent))
}

/// A node's `[node.params]`.
struct Params<'a> {
    node: &'a str,
    map: &'a BTreeMap<String, String>,
}

impl Params<'_> {
    #[cfg_attr(
        not(any(feature = "libvirt", feature = "sdn", feature = "av")),
        allow(dead_code)
    )]
    fn get(&self, key: &str) -> Option<String> {
        self.map.get(key).cloned()
    }

    #[cfg_attr(not(any(feature = "sdn", feature = "av")), allow(dead_code))]
    fn parse<T: FromStr>(&self, key: &'static str) -> Result<Option<T>, BuildError>
    where
        T::Err: std::fmt::Display,
    {
        self.map
            .get(key)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| self.bad(key, v, &format!("cannot be read: {e}")))
            })
            .transpose()
    }

    #[cfg_attr(not(any(feature = "sdn", feature = "av")), allow(dead_code))]
    fn bad(&self, key: &'static str, value: &str, reason: &str) -> BuildError {
        BuildError::Param {
            node: self.node.to_string(),
            key,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }

    fn not_built(&self, kind: AgentKind) -> BuildError {
        let feature = match kind {
            AgentKind::Libvirt => "libvirt",
            AgentKind::Av => "av",
            _ => "sdn",
        };
        BuildError::NotBuilt {
            node: self.node.to_string(),
            kind: vespa_node::Role::Agent(kind).as_str(),
            feature,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, kind: AgentKind, params: &[(&str, &str)]) -> NodeDef {
        NodeDef {
            name: name.into(),
            role: vespa_node::Role::Agent(kind),
            location: "host".into(),
            master: Some("HO_PH".into()),
            port: 4160,
            interfaces: Vec::new(),
            journal: None,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            line: 1,
        }
    }

    fn ctx() -> Context {
        Context {
            #[cfg(feature = "av")]
            relay: Arc::new(crate::relay::TreeRelay {
                topology: Arc::new(vespa_node::Topology::embedded_default()),
                security: vespa_node::Security::Psk(vespa_proto::Psk::random()),
                me: "test".into(),
            }),
        }
    }

    fn error(d: &NodeDef, kind: AgentKind) -> String {
        match build(d, kind, &ctx()) {
            Err(e) => e.to_string(),
            Ok(b) => panic!("{} was built: {}", d.name, b.is_some()),
        }
    }

    #[test]
    fn sensing_kinds_are_left_to_the_caller() {
        let d = def("bw", AgentKind::Bandwidth, &[]);
        assert!(build(&d, AgentKind::Bandwidth, &ctx())
            .expect("no error")
            .is_none());
    }

    #[cfg(feature = "sdn")]
    #[test]
    fn a_bad_parameter_names_the_node_the_key_and_the_value() {
        let d = def("fl", AgentKind::ControllerFloodlight, &[("api", "v2")]);
        assert_eq!(
            error(&d, AgentKind::ControllerFloodlight),
            "fl: params.api: \"v2\" is not v1 or v0.90"
        );
        let d = def("ok", AgentKind::ControllerOsken, &[("priority", "high")]);
        let e = error(&d, AgentKind::ControllerOsken);
        assert!(
            e.starts_with("ok: params.priority: \"high\" cannot be read: "),
            "{e}"
        );
    }

    #[cfg(feature = "libvirt")]
    #[test]
    fn a_bad_domains_pattern_is_refused_before_the_agent_starts() {
        let d = def("lv", AgentKind::Libvirt, &[("domains", "web-*, db-[")]);
        let e = error(&d, AgentKind::Libvirt);
        assert!(
            e.starts_with("lv: params.domains: \"web-*, db-[\" pattern \"db-[\": "),
            "{e}"
        );
    }

    #[cfg(feature = "av")]
    #[test]
    fn the_antivirus_agent_needs_its_vm() {
        let d = def("av", AgentKind::Av, &[]);
        assert_eq!(
            error(&d, AgentKind::Av),
            "av: params.vm (the VM this antivirus agent protects) is required"
        );
    }

    /// A build without the acting agents (`--no-default-features`) refuses them by name.
    #[cfg(not(any(feature = "libvirt", feature = "sdn", feature = "av")))]
    #[test]
    fn a_kind_left_out_of_the_build_is_refused_naming_its_feature() {
        for (kind, feature) in [
            (AgentKind::Libvirt, "libvirt"),
            (AgentKind::ControllerPox, "sdn"),
            (AgentKind::Av, "av"),
        ] {
            let d = def("x", kind, &[]);
            let e = error(&d, kind);
            assert!(
                e.starts_with("x: this vespa-agent was built without the `")
                    && e.contains(&format!("`{feature}` feature")),
                "{e}"
            );
        }
    }
}
