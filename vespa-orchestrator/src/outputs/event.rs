//! What travels to the outputs, and the parts every format shares: kind, severity, a
//! one-line summary, the time, the layer of the origin.
//!
//! Alerts come from watched traffic and from peers: every text taken from one is cleaned
//! ([`clean`]: control characters escaped, length bounded) before any format sees it, so no
//! output can be handed a newline that forges a record, and none grows without bound.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use vespa_node::config::outputs::{severity_of, DECISION_KIND};
use vespa_node::config::Severity;
use vespa_node::{Role, Topology};
use vespa_proto::{Alert, AlertBody};

/// Longest summary, in characters.
pub const MAX_SUMMARY: usize = 512;
/// Largest JSON rendering of one event's body; past it the body is replaced by a note.
pub const MAX_BODY_JSON: usize = 16 * 1024;

/// A decision, as the ledger hands it over: its JSON, and its rule when a rule decided.
#[derive(Debug)]
pub struct Decision {
    /// The event as the ledger serialized it (bounded by [`MAX_BODY_JSON`] once rendered).
    pub json: serde_json::Value,
    /// The top-level `rule` field, for the filters.
    pub rule: Option<String>,
    /// When the output received it (ns since the Unix epoch).
    pub received_ns: u64,
}

/// One event for the outputs, shared between their queues.
#[derive(Debug, Clone)]
pub enum Event {
    /// An alert processed at the VO.
    Alert(Arc<Alert>),
    /// A decision from the ledger.
    Decision(Arc<Decision>),
}

impl Event {
    /// The alert body's kind, or `decision`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Alert(a) => a.body.kind(),
            Event::Decision(_) => DECISION_KIND,
        }
    }

    /// Its severity ([`severity_of`]).
    pub fn severity(&self) -> Severity {
        severity_of(self.kind())
    }

    /// When it happened, ns since the Unix epoch.
    pub fn time_ns(&self) -> u64 {
        match self {
            Event::Alert(a) => a.timestamp_ns,
            Event::Decision(d) => d.received_ns,
        }
    }

    /// One line for people (cleaned, bounded).
    pub fn summary(&self) -> String {
        match self {
            Event::Alert(a) => clean(&alert_summary(&a.body), MAX_SUMMARY),
            Event::Decision(d) => {
                let field = |k: &str| d.json.get(k).and_then(|v| v.as_str()).map(str::to_string);
                let text = match (field("action").or_else(|| field("kind")), field("target")) {
                    (Some(a), Some(t)) => format!("{a} {t}"),
                    (Some(a), None) => a,
                    _ => d.json.to_string(),
                };
                let text = match &d.rule {
                    Some(r) => format!("{text} (rule {r})"),
                    None => text,
                };
                clean(&text, MAX_SUMMARY)
            }
        }
    }

    /// What the alert is about (an address, a VM, an interface, a node), cleaned.
    pub fn subject(&self) -> Option<String> {
        let Event::Alert(a) = self else {
            return None;
        };
        let s = match &a.body {
            AlertBody::ConnThreshold { addr, .. } | AlertBody::SynThreshold { addr, .. } => {
                addr.to_string()
            }
            AlertBody::Bandwidth { iface, .. } => iface.clone(),
            AlertBody::Infected { vm, .. } => vm.clone(),
            AlertBody::ActuatorFailed { actuator, .. } => actuator.clone(),
            AlertBody::ReflexBlock { target, .. } => target.clone(),
            AlertBody::Node { node, .. } => node.clone(),
            _ => return None,
        };
        Some(clean(&s, 128))
    }

    /// The event as VESPA's JSON: `type`, `kind`, `severity`, `time`, `summary`, and the
    /// alert's origin, sequence number, path, layer and body (or the decision itself).
    pub fn to_json(&self, layers: &Layers) -> serde_json::Value {
        let mut v = serde_json::json!({
            "type": if matches!(self, Event::Alert(_)) { "alert" } else { "decision" },
            "kind": self.kind(),
            "severity": self.severity().as_str(),
            "time": rfc3339(self.time_ns()),
            "summary": self.summary(),
        });
        let body = match self {
            Event::Alert(a) => {
                v["origin"] = a.origin.clone().into();
                v["seq"] = a.seq.into();
                v["path"] = a.path.clone().into();
                v["layer"] = layers.of(&a.origin).into();
                v["timestamp_ns"] = a.timestamp_ns.into();
                serde_json::to_value(&a.body).unwrap_or(serde_json::Value::Null)
            }
            Event::Decision(d) => d.json.clone(),
        };
        let size = serde_json::to_string(&body).map_or(usize::MAX, |s| s.len());
        let field = if matches!(self, Event::Alert(_)) {
            "body"
        } else {
            "decision"
        };
        v[field] = if size <= MAX_BODY_JSON {
            body
        } else {
            serde_json::json!({ "truncated": true, "bytes": size })
        };
        v
    }
}

fn alert_summary(body: &AlertBody) -> String {
    match body {
        AlertBody::ConnThreshold {
            addr,
            established,
            threshold,
        } => format!("{addr} holds {established} established connections (threshold {threshold})"),
        AlertBody::SynThreshold {
            addr,
            syns_in_second,
            threshold,
        } => format!("{addr} sent {syns_in_second} SYNs in one second (threshold {threshold})"),
        AlertBody::Bandwidth {
            iface,
            rx_bytes,
            tx_bytes,
            vm,
        } => match vm {
            Some(vm) => format!("{iface} (VM {vm}): rx {rx_bytes} B, tx {tx_bytes} B"),
            None => format!("{iface}: rx {rx_bytes} B, tx {tx_bytes} B"),
        },
        AlertBody::Connections {
            per_remote,
            rest_remotes,
            ..
        } => format!(
            "{} remotes with established connections",
            per_remote.len() as u64 + rest_remotes
        ),
        AlertBody::Infected {
            vm,
            file,
            signature,
        } => format!("infected file {file} in VM {vm}: {signature}"),
        AlertBody::ActuatorFailed {
            actuator,
            action,
            error,
        } => format!("{actuator} failed to {action}: {error}"),
        AlertBody::Text(t) => t.clone(),
        AlertBody::Policy { kind, at, text } => match at {
            Some(at) => format!("policy {kind} at {at}: {text}"),
            None => format!("policy {kind}: {text}"),
        },
        AlertBody::SensorHealth {
            events_lost,
            map_update_failures,
            maps_full,
        } => format!(
            "sensor health: {events_lost} events lost, {map_update_failures} map updates failed, {maps_full} maps full"
        ),
        AlertBody::Oversized {
            at,
            kind,
            size,
            limit,
        } => format!("a {kind} alert of {size} bytes did not fit at {at} (limit {limit})"),
        AlertBody::ReflexBlock {
            target,
            cause,
            value,
            threshold,
            ttl_s,
            ..
        } => format!(
            "the kernel blocked {target} by itself ({cause} {value} over {threshold}, for {ttl_s} s)"
        ),
        AlertBody::Node {
            node,
            event,
            detail,
        } => format!("{node} {}: {detail}", event.as_str()),
    }
}

/// `s` with control characters escaped (`\n`, `\r`, `\t`, `\u{..}`) and cut to `max`
/// characters (an ellipsis says so): what a watched peer wrote can neither break a line
/// nor grow a record.
pub fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for (i, c) in s.chars().enumerate() {
        if i >= max {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// ns since the Unix epoch as RFC 3339 UTC with microseconds (`2026-01-02T03:04:05.678901Z`).
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let micros = (ns % 1_000_000_000) / 1_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Which layer each node of the topology belongs to: `vm`, `hy`, `ph` for an HO and the
/// agents below it, `vo` for the VO and agents directly under it.
#[derive(Debug, Default)]
pub struct Layers(HashMap<String, &'static str>);

impl Layers {
    /// The layers of `topology`'s nodes.
    pub fn new(topology: &Topology) -> Layers {
        let mut map = HashMap::new();
        for n in &topology.nodes {
            let mut at = n;
            let mut layer = "vo";
            for _ in 0..=topology.nodes.len() {
                match at.role {
                    Role::HoVm => layer = "vm",
                    Role::HoHy => layer = "hy",
                    Role::HoPh => layer = "ph",
                    _ => {}
                }
                if at.role.is_ho() || at.role == Role::Vo {
                    break;
                }
                match at.master.as_deref().and_then(|m| topology.node(m)) {
                    Some(next) => at = next,
                    None => break,
                }
            }
            map.insert(n.name.clone(), layer);
        }
        Layers(map)
    }

    /// The layer of `node` (`unknown` for a name the topology lacks).
    pub fn of(&self, node: &str) -> &'static str {
        self.0.get(node).copied().unwrap_or("unknown")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_709_251_199_123_456_789),
            "2024-02-29T23:59:59.123456Z"
        );
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn clean_escapes_controls_and_bounds_length() {
        assert_eq!(clean("a\nb\r\u{0}c", 100), "a\\nb\\r\\u{0}c");
        assert_eq!(clean("abcdef", 3), "abc…");
        assert_eq!(cut("héllo", 2), "h");
    }
}
