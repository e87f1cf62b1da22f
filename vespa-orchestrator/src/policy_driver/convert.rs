//! What crosses between the tree and the policy: alert bodies into the policy's inputs, the
//! operator's text into keys and targets, and actions into typed calls. [`call_of`] is the
//! one place where an action becomes a call.

use std::net::IpAddr;
use std::time::Duration;

use vespa_node::{NodeHandle, VerbResult};
use vespa_policy::{Action, Input, Key, Mac, Target};
use vespa_proto::verbs::{self, AvVerb, BlockSelector, LibvirtVerb, SdnVerb, Ttl, Verb};
use vespa_proto::AlertBody;

/// Converts a VO alert body into the policy's mirror type.
pub fn to_policy_body(body: &AlertBody) -> vespa_policy::AlertBody {
    use vespa_policy::AlertBody as P;
    match body.clone() {
        AlertBody::ConnThreshold { addr, established, threshold } => P::ConnThreshold { addr, established, threshold },
        AlertBody::SynThreshold { addr, syns_in_second, threshold } => P::SynThreshold { addr, syns_in_second, threshold },
        AlertBody::Bandwidth { iface, rx_bytes, tx_bytes, .. } => P::Bandwidth { iface, rx_bytes, tx_bytes },
        AlertBody::Connections { per_remote, rest_remotes, .. } => P::Connections { per_remote, truncated: rest_remotes > 0 },
        AlertBody::Infected { vm, file, signature } => P::Infected { vm, file, signature },
        AlertBody::ActuatorFailed { actuator, action, error } => P::ActuatorFailed { actuator, action, error },
        AlertBody::Text(t) => P::Text(t),
        // Fed as Input::Health by the driver; as an alert it is only information.
        AlertBody::SensorHealth { events_lost, map_update_failures, maps_full } => {
            P::Text(format!("sensor health: {events_lost} events lost, {map_update_failures} map update failures, {maps_full} maps full"))
        }
        AlertBody::Oversized { at, kind, size, limit } => {
            P::Text(format!("a {kind} alert of {size} bytes did not fit the {limit} bytes allowed at {at}: its body was dropped"))
        }
        AlertBody::ReflexBlock { target, cause, value, threshold, ttl_s, .. } => {
            P::Text(format!("kernel reflex blocked {target}: {cause} {value} over {threshold}, for {ttl_s} s"))
        }
    }
}

/// The policy input a sensor-health alert stands for.
pub fn health_input(origin: &str, body: &AlertBody) -> Option<Input> {
    match body {
        AlertBody::SensorHealth {
            events_lost,
            map_update_failures,
            maps_full,
        } => Some(Input::Health {
            origin: origin.to_string(),
            events_lost: *events_lost,
            map_full: map_update_failures + maps_full,
        }),
        _ => None,
    }
}

/// A block's target as actuators and the API write it.
pub(super) fn target_arg(t: &Target) -> String {
    match t {
        Target::Ip(ip) => ip.to_string(),
        Target::Mac(m) => m.to_string(),
    }
}

/// A call an actuator action becomes: a verb of the agent kind that carries it out.
#[derive(Debug, Clone, PartialEq)]
pub enum ActuatorCall {
    /// To an SDN controller agent.
    Sdn(SdnVerb),
    /// To the libvirt agent.
    Libvirt(LibvirtVerb),
    /// To an antivirus agent.
    Av(AvVerb),
}

impl ActuatorCall {
    /// The verb's name.
    pub fn name(&self) -> &'static str {
        match self {
            ActuatorCall::Sdn(v) => v.name(),
            ActuatorCall::Libvirt(v) => v.name(),
            ActuatorCall::Av(v) => v.name(),
        }
    }

    /// The verb's words.
    pub fn args(&self) -> Vec<String> {
        match self {
            ActuatorCall::Sdn(v) => v.args(),
            ActuatorCall::Libvirt(v) => v.args(),
            ActuatorCall::Av(v) => v.args(),
        }
    }

    /// Sends it to `agent` from `node` (down the tree) and waits for the reply.
    pub async fn send(self, node: &NodeHandle, agent: &str) -> VerbResult {
        match self {
            ActuatorCall::Sdn(v) => node.call(agent, v).await,
            ActuatorCall::Libvirt(v) => node.call(agent, v).await,
            ActuatorCall::Av(v) => node.call(agent, v).await,
        }
    }
}

impl std::fmt::Display for ActuatorCall {
    /// `verb arg arg...`, as on the wire.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActuatorCall::Sdn(v) => v.fmt(f),
            ActuatorCall::Libvirt(v) => v.fmt(f),
            ActuatorCall::Av(v) => v.fmt(f),
        }
    }
}

/// A policy target as the verbs carry it.
fn wire_target(t: &Target) -> verbs::Target {
    match t {
        Target::Ip(ip) => verbs::Target::Ip(*ip),
        Target::Mac(m) => verbs::Target::Mac(verbs::MacAddr(m.0)),
    }
}

/// The call an actuator action becomes: the agent it goes to and the verb. `None` for alerts
/// and dry-run records, which are never sent anywhere. The one place where an action becomes
/// a call.
pub fn call_of(action: &Action) -> Option<(String, ActuatorCall)> {
    use ActuatorCall::{Av, Libvirt, Sdn};
    Some(match action {
        Action::Block {
            target,
            ttl_ns,
            via,
            ..
        } => {
            let ttl = if *ttl_ns == 0 {
                Ttl::Forever
            } else {
                Ttl::After(Duration::from_secs(ttl_ns.div_ceil(vespa_policy::SECOND)))
            };
            let target = wire_target(target);
            let verb = SdnVerb::BlockHackers {
                target,
                ttl: Some(ttl),
            };
            (via.clone(), Sdn(verb))
        }
        Action::Release { target, via, .. } => {
            let which = Some(BlockSelector::Target(wire_target(target)));
            (via.clone(), Sdn(SdnVerb::ReleaseHackers { which }))
        }
        Action::CutLink { vm, via, .. } => {
            let verb = LibvirtVerb::CutLink {
                vm: vm.clone(),
                mac: None,
            };
            (via.clone(), Libvirt(verb))
        }
        Action::ConnectLink { vm, via, .. } => {
            let verb = LibvirtVerb::ConnectLink {
                vm: vm.clone(),
                mac: None,
            };
            (via.clone(), Libvirt(verb))
        }
        Action::Migrate { vm, to, via, .. } => {
            let verb = LibvirtVerb::Migrate {
                vm: vm.clone(),
                quarantine_host: to.clone(),
                user: None,
            };
            (via.clone(), Libvirt(verb))
        }
        Action::AvIsolate {
            av_agent,
            hypervisor_agent,
            ..
        } => {
            let verb = AvVerb::IsolateWarning {
                hypervisor_agent: hypervisor_agent.clone(),
            };
            (av_agent.clone(), Av(verb))
        }
        Action::AvConnect { av_agent, .. } => (av_agent.clone(), Av(AvVerb::ConnectWarning {})),
        Action::Alert { .. } | Action::DryRun(_) => return None,
    })
}

/// The alerts an HO's rules can use: counters. Infections and sensor health are the VO's.
pub(super) fn is_counter(body: &AlertBody) -> bool {
    matches!(
        body,
        AlertBody::ConnThreshold { .. }
            | AlertBody::SynThreshold { .. }
            | AlertBody::Bandwidth { .. }
            | AlertBody::Connections { .. }
    )
}

/// Parses the operator's key: an address, a MAC, else a VM name.
pub(super) fn parse_key(s: &str) -> Key {
    let s = s.trim();
    let s = s
        .strip_prefix("ip ")
        .or_else(|| s.strip_prefix("remote "))
        .unwrap_or(s)
        .trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Key::Remote(ip);
    }
    let m = s.strip_prefix("mac ").unwrap_or(s).trim();
    if let Ok(mac) = m.parse::<Mac>() {
        return Key::Mac(mac);
    }
    Key::Vm(s.strip_prefix("vm ").unwrap_or(s).trim().to_string())
}

/// Parses the operator's target: an address or a MAC.
pub(super) fn parse_target(s: &str) -> Option<Target> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .map(Target::Ip)
        .ok()
        .or_else(|| s.parse::<Mac>().map(Target::Mac).ok())
}
