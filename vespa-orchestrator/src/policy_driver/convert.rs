//! What crosses between the tree and the policy: alert bodies into the policy's inputs, the
//! operator's text into keys and targets, and actions into calls. [`to_call`] is the one
//! place where an action becomes a call.

use std::net::IpAddr;

use vespa_policy::{Action, Input, Key, Mac, Target};
use vespa_proto::AlertBody;

/// Converts a VO alert body into the policy's mirror type.
pub fn to_policy_body(body: &AlertBody) -> vespa_policy::AlertBody {
    use vespa_policy::AlertBody as P;
    match body.clone() {
        AlertBody::ConnThreshold { addr, established, threshold } => P::ConnThreshold { addr, established, threshold },
        AlertBody::SynThreshold { addr, syns_in_second, threshold } => P::SynThreshold { addr, syns_in_second, threshold },
        AlertBody::Bandwidth { iface, rx_bytes, tx_bytes, .. } => P::Bandwidth { iface, rx_bytes, tx_bytes },
        AlertBody::Connections { per_remote } => P::Connections { per_remote },
        AlertBody::Infected { vm, file, signature } => P::Infected { vm, file, signature },
        AlertBody::ActuatorFailed { actuator, action, error } => P::ActuatorFailed { actuator, action, error },
        AlertBody::Text(t) => P::Text(t),
        // Fed as Input::Health by the driver; as an alert it is only information.
        AlertBody::SensorHealth { events_lost, map_update_failures, maps_full } => {
            P::Text(format!("sensor health: {events_lost} events lost, {map_update_failures} map update failures, {maps_full} maps full"))
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

/// The call an actuator action becomes: `(node, verb, args)`. `None` for alerts and dry-run
/// records, which are never sent anywhere.
pub fn to_call(action: &Action) -> Option<(String, &'static str, Vec<String>)> {
    Some(match action {
        Action::Block {
            target,
            ttl_ns,
            via,
            ..
        } => {
            let ttl = if *ttl_ns == 0 {
                "none".to_string()
            } else {
                ttl_ns.div_ceil(vespa_policy::SECOND).to_string()
            };
            (via.clone(), "block_hackers", vec![target_arg(target), ttl])
        }
        Action::Release { target, via, .. } => {
            (via.clone(), "release_hackers", vec![target_arg(target)])
        }
        Action::CutLink { vm, via, .. } => (via.clone(), "cut_link", vec![vm.clone()]),
        Action::ConnectLink { vm, via, .. } => (via.clone(), "connect_link", vec![vm.clone()]),
        Action::Migrate { vm, to, via, .. } => {
            (via.clone(), "migrate", vec![vm.clone(), to.clone()])
        }
        Action::AvIsolate {
            av_agent,
            hypervisor_agent,
            ..
        } => (
            av_agent.clone(),
            "isolate_warning",
            vec![hypervisor_agent.clone()],
        ),
        Action::AvConnect { av_agent, .. } => (av_agent.clone(), "connect_warning", Vec::new()),
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
