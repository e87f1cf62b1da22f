//! What crosses between the tree and the policy: alert bodies into the policy's inputs, the
//! operator's text into keys and targets, and actions into typed calls. [`call_of`] is the
//! one place where an action becomes a call.

use std::net::IpAddr;
use std::time::Duration;

use vespa_node::{NodeHandle, VerbResult};
use vespa_policy::{Action, Input, Key, Mac, Rate, ReflexCause, Target};
use vespa_proto::verbs::{
    self, AvVerb, BlockSelector, FirewallVerb, LibvirtVerb, SdnVerb, Shaped, ShapedSelector, Ttl,
    Verb,
};
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
        AlertBody::Node { node, event, detail } => P::Text(format!("node {node} {}: {detail}", event.as_str())),
        AlertBody::Policy { kind, at, text } => match at {
            None => P::Text(format!("policy {kind}: {text}")),
            Some(at) => P::Text(format!("policy {kind} at {at}: {text}")),
        },
        AlertBody::ReflexBlock { target, cause, value, threshold, ttl_s, .. } => {
            let cause_of = match cause.as_str() {
                "syn" => Some(ReflexCause::Syn),
                "conn" => Some(ReflexCause::Conn),
                _ => None,
            };
            match (target.parse::<Target>(), cause_of) {
                (Ok(target), Some(cause)) => P::ReflexBlock { target, cause, value, threshold, ttl_s },
                // Not something a rule can adopt: shown, and the block ends at its TTL.
                _ => P::Text(format!("kernel reflex blocked {target}: {cause} {value} over {threshold}, for {ttl_s} s")),
            }
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
    t.bare()
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
    /// To a firewall agent.
    Firewall(FirewallVerb),
}

impl ActuatorCall {
    /// The verb's name.
    pub fn name(&self) -> &'static str {
        match self {
            ActuatorCall::Sdn(v) => v.name(),
            ActuatorCall::Libvirt(v) => v.name(),
            ActuatorCall::Av(v) => v.name(),
            ActuatorCall::Firewall(v) => v.name(),
        }
    }

    /// The verb's words.
    pub fn args(&self) -> Vec<String> {
        match self {
            ActuatorCall::Sdn(v) => v.args(),
            ActuatorCall::Libvirt(v) => v.args(),
            ActuatorCall::Av(v) => v.args(),
            ActuatorCall::Firewall(v) => v.args(),
        }
    }

    /// Sends it to `agent` from `node` (down the tree) and waits for the reply.
    pub async fn send(self, node: &NodeHandle, agent: &str) -> VerbResult {
        match self {
            ActuatorCall::Sdn(v) => node.call(agent, v).await,
            ActuatorCall::Libvirt(v) => node.call(agent, v).await,
            ActuatorCall::Av(v) => node.call(agent, v).await,
            ActuatorCall::Firewall(v) => node.call(agent, v).await,
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
            ActuatorCall::Firewall(v) => v.fmt(f),
        }
    }
}

/// A policy target as the verbs carry it.
pub(super) fn wire_target(t: &Target) -> verbs::Target {
    match t {
        Target::Ip(ip) => verbs::Target::Ip(*ip),
        Target::Mac(m) => verbs::Target::Mac(verbs::MacAddr(m.0)),
        Target::Net(p) => verbs::Target::Net(verbs::Prefix {
            addr: p.addr(),
            len: p.bits(),
        }),
    }
}

/// A policy rate as the verbs carry it.
pub(super) fn wire_rate(r: Rate) -> verbs::Rate {
    match r {
        Rate::Bytes(b) => verbs::Rate::Bytes(b),
        Rate::Packets(p) => verbs::Rate::Packets(p),
    }
}

/// A TTL in nanoseconds as the verbs carry it: whole seconds, rounded up; 0 is "until
/// released".
pub(super) fn wire_ttl(ttl_ns: u64) -> Ttl {
    if ttl_ns == 0 {
        Ttl::Forever
    } else {
        Ttl::After(Duration::from_secs(ttl_ns.div_ceil(vespa_policy::SECOND)))
    }
}

/// The call an actuator action becomes: the agent it goes to and the verb. `None` for alerts
/// and dry-run records, which are never sent anywhere. The one place where an action becomes
/// a call.
pub fn call_of(action: &Action) -> Option<(String, ActuatorCall)> {
    use ActuatorCall::{Av, Firewall, Libvirt, Sdn};
    Some(match action {
        Action::Block {
            target,
            ttl_ns,
            via,
            firewall,
            ..
        } => {
            let (target, ttl) = (wire_target(target), Some(wire_ttl(*ttl_ns)));
            let call = if *firewall {
                Firewall(FirewallVerb::BlockHackers { target, ttl })
            } else {
                Sdn(SdnVerb::BlockHackers { target, ttl })
            };
            (via.clone(), call)
        }
        Action::Release {
            target,
            via,
            firewall,
            ..
        } => {
            let which = Some(BlockSelector::Target(wire_target(target)));
            let call = if *firewall {
                Firewall(FirewallVerb::ReleaseHackers { which })
            } else {
                Sdn(SdnVerb::ReleaseHackers { which })
            };
            (via.clone(), call)
        }
        Action::Throttle {
            target,
            rate,
            ttl_ns,
            via,
            ..
        } => {
            let verb = FirewallVerb::Throttle {
                target: Shaped::Source(wire_target(target)),
                rate: wire_rate(*rate),
                ttl: Some(wire_ttl(*ttl_ns)),
            };
            (via.clone(), Firewall(verb))
        }
        Action::Unthrottle { target, via, .. } => {
            let which = Some(ShapedSelector::Target(Shaped::Source(wire_target(target))));
            (via.clone(), Firewall(FirewallVerb::Unthrottle { which }))
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
        Action::Alert { .. } | Action::DryRun(_) | Action::Verified { .. } => return None,
    })
}

/// The alerts an HO's rules can use: counters, and the kernel reflex's blocks (a rule there
/// may have set the reflex). Infections and sensor health are the VO's.
pub(super) fn is_counter(body: &AlertBody) -> bool {
    matches!(
        body,
        AlertBody::ConnThreshold { .. }
            | AlertBody::SynThreshold { .. }
            | AlertBody::Bandwidth { .. }
            | AlertBody::Connections { .. }
            | AlertBody::ReflexBlock { .. }
    )
}

/// Parses the operator's key: an address, a prefix, a MAC, else a VM name.
pub(super) fn parse_key(s: &str) -> Key {
    let s = s.trim();
    let s = s
        .strip_prefix("ip ")
        .or_else(|| s.strip_prefix("remote "))
        .or_else(|| s.strip_prefix("net "))
        .unwrap_or(s)
        .trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Key::Remote(ip);
    }
    if s.contains('/') {
        match s.parse::<Target>() {
            Ok(Target::Net(p)) => return Key::Net(p),
            Ok(Target::Ip(ip)) => return Key::Remote(ip),
            _ => {}
        }
    }
    let m = s.strip_prefix("mac ").unwrap_or(s).trim();
    if let Ok(mac) = m.parse::<Mac>() {
        return Key::Mac(mac);
    }
    Key::Vm(s.strip_prefix("vm ").unwrap_or(s).trim().to_string())
}

/// Parses the operator's target: an address, a prefix or a MAC.
pub(super) fn parse_target(s: &str) -> Result<Target, String> {
    s.parse::<Target>()
}
