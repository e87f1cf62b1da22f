//! The firewall agent kept in step with the policy: the kernel reflex's setting and the
//! allowlist, pushed when they change and retried until the agent takes them.
//!
//! The policy says what the agent should hold ([`Wanted`]: the `reflex` of its rules, the
//! targets of its allowlist); a task per driver compares that with what the agent last
//! accepted and sends the difference, `allow` first (a protection is never late), then
//! `disallow`, then `reflex`. A call that fails is retried with exponential backoff (0.5 s to
//! 60 s, with jitter) until it succeeds or what is wanted changes; a failure that lasts
//! [`ALERT_AFTER`] (agents register a moment after the orchestrator starts) raises a
//! `policy DidNotTake` alert at the driver's node, again every [`ALERT_EVERY`] while it lasts,
//! and a last one when the agent finally takes it.
//!
//! Who pushes what: the reflex belongs to the driver that runs the reflex rules (the VO's
//! turns the reflex off when no rule anywhere asks for it, and every driver does in dry-run);
//! the allowlist is the VO's driver's to push.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use vespa_node::backoff::Backoff;
use vespa_node::{AgentKind, NodeHandle, Role, Topology};
use vespa_policy::{ReflexSetting, Target};
use vespa_proto::verbs::{FirewallVerb, Verb};
use vespa_proto::AlertBody;

use super::convert::{wire_target, wire_ttl};

/// A failure this old is alerted.
pub const ALERT_AFTER: Duration = Duration::from_secs(10);
/// While it lasts, alerted again this often.
pub const ALERT_EVERY: Duration = Duration::from_secs(600);
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the firewall agent should hold, for the part this driver is responsible for.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Wanted {
    /// The firewall agent (`[actuators] firewall`); `None`: nothing to push.
    pub agent: Option<String>,
    /// The reflex setting, when this driver sets it.
    pub reflex: Option<ReflexSetting>,
    /// The protected targets, when this driver pushes the allowlist.
    pub allow: Option<BTreeSet<Target>>,
}

/// What the agent has accepted from this driver since it started.
#[derive(Debug, Default)]
struct Told {
    agent: Option<String>,
    reflex: Option<ReflexSetting>,
    allow: BTreeSet<Target>,
}

/// The reflex's words: `reflex <syn_per_s> <conn> <ttl_s> <max>`; off is `0 0` with the
/// defaults' TTL and maximum (600 s, 1024).
pub(super) fn reflex_verb(s: &ReflexSetting) -> FirewallVerb {
    let off = s.syn_per_s == 0 && s.conn == 0;
    FirewallVerb::Reflex {
        syn_per_s: s.syn_per_s,
        conn: s.conn,
        ttl: wire_ttl(if off {
            600 * vespa_policy::SECOND
        } else {
            s.ttl_ns
        }),
        max: if off { 1024 } else { s.max },
    }
}

/// The next call that brings the agent from `told` to `want`, if any.
fn next_call(want: &Wanted, told: &Told) -> Option<(FirewallVerb, Change)> {
    if let Some(allow) = &want.allow {
        if let Some(t) = allow.difference(&told.allow).next() {
            let verb = FirewallVerb::Allow {
                target: wire_target(t),
            };
            return Some((verb, Change::Allowed(*t)));
        }
        if let Some(t) = told.allow.difference(allow).next() {
            let verb = FirewallVerb::Disallow {
                target: wire_target(t),
            };
            return Some((verb, Change::Disallowed(*t)));
        }
    }
    match want.reflex {
        Some(r) if told.reflex != Some(r) => Some((reflex_verb(&r), Change::Reflex(r))),
        _ => None,
    }
}

/// What an accepted call changed.
enum Change {
    Allowed(Target),
    Disallowed(Target),
    Reflex(ReflexSetting),
}

/// Keeps the firewall agent in step with `rx` from `node` until the node stops. `who` names
/// the driver in alerts (`policy DidNotTake` or `policy DidNotTake at HO_PH`).
pub(super) async fn keep_in_step(node: NodeHandle, mut rx: watch::Receiver<Wanted>, who: String) {
    let mut told = Told::default();
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut failing_since: Option<Instant> = None;
    let mut alerted_at: Option<Instant> = None;
    loop {
        let want = rx.borrow_and_update().clone();
        if want.agent != told.agent {
            told = Told {
                agent: want.agent.clone(),
                ..Told::default()
            };
        }
        let failure = match (&want.agent, next_call(&want, &told)) {
            (Some(agent), Some((verb, change))) => {
                let line = verb.line();
                let reply = tokio::time::timeout(CALL_TIMEOUT, node.call(agent, verb)).await;
                match reply {
                    Ok(Ok(_)) => {
                        tracing::info!(node = node.name(), %agent, call = %line, "firewall agent in step");
                        match change {
                            Change::Allowed(t) => {
                                told.allow.insert(t);
                            }
                            Change::Disallowed(t) => {
                                told.allow.remove(&t);
                            }
                            Change::Reflex(r) => told.reflex = Some(r),
                        }
                        continue;
                    }
                    Ok(Err(e)) => Some(format!("{agent} did not take `{line}`: {e}")),
                    Err(_) => Some(format!(
                        "{agent} did not answer `{line}` within {CALL_TIMEOUT:?}"
                    )),
                }
            }
            _ => None,
        };
        let Some(why) = failure else {
            if alerted_at.take().is_some() {
                let agent = want.agent.as_deref().unwrap_or("the firewall agent");
                let text = format!("{who}: {agent} now holds the policy's allowlist and reflex");
                let _ = node.raise(AlertBody::Text(text));
            }
            failing_since = None;
            backoff.reset();
            tokio::select! {
                _ = node.stopping() => return,
                changed = rx.changed() => if changed.is_err() { return },
            }
            continue;
        };
        let now = Instant::now();
        let since = *failing_since.get_or_insert(now);
        let delay = backoff.next_delay();
        tracing::warn!(node = node.name(), error = %why, retry_in = ?delay, "firewall agent not in step");
        let due = match alerted_at {
            None => now.duration_since(since) >= ALERT_AFTER,
            Some(at) => now.duration_since(at) >= ALERT_EVERY,
        };
        if due {
            alerted_at = Some(now);
            let text = format!(
                "{who}: {why}; failing for {:.0?}, retrying in {delay:.1?}",
                now.duration_since(since)
            );
            let _ = node.raise(AlertBody::Text(text));
        }
        tokio::select! {
            _ = node.stopping() => return,
            _ = tokio::time::sleep(delay) => {}
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// How often the VO asks each firewall agent what it protects on its own.
pub const LEARN_EVERY: Duration = Duration::from_secs(30);
/// Until an agent first answers, it is asked this often.
const LEARN_RETRY: Duration = Duration::from_secs(1);
/// Entries taken from one agent at most (the rest are the agent's business).
const LEARN_MAX: usize = 1024;

/// The firewall agents of the topology.
pub(super) fn agents(topo: &Topology) -> Vec<String> {
    topo.nodes
        .iter()
        .filter(|n| n.role == Role::Agent(AgentKind::Firewall))
        .map(|n| n.name.clone())
        .collect()
}

/// Keeps asking `agent` (every [`LEARN_EVERY`], every [`LEARN_RETRY`] until it first
/// answers) what it protects on its own, its host's gateways above all, which the VO cannot
/// know from the topology; each answer that differs from the last goes to the driver, so the
/// policy never proposes to block them either.
pub(super) async fn learn_protections(
    node: NodeHandle,
    agent: String,
    tx: tokio::sync::mpsc::Sender<super::Event>,
) {
    let mut last: Option<Vec<(Target, String)>> = None;
    loop {
        let asked =
            tokio::time::timeout(CALL_TIMEOUT, node.call(&agent, FirewallVerb::Allowlist {}));
        let answer = match asked.await {
            Ok(Ok(text)) => own_protections(&agent, &text),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
        };
        match answer {
            Ok(entries) if last.as_ref() != Some(&entries) => {
                tracing::info!(node = node.name(), %agent, protected = entries.len(), "firewall agent's own protections learned");
                last = Some(entries.clone());
                let ev = super::Event::Protects {
                    agent: agent.clone(),
                    entries,
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(node = node.name(), %agent, error = %e, "firewall agent's protections not learned yet")
            }
        }
        let wait = if last.is_some() {
            LEARN_EVERY
        } else {
            LEARN_RETRY
        };
        tokio::select! {
            _ = node.stopping() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The entries of an `allowlist` reply that the agent holds on its own (origin `topology`),
/// each noted with the agent's name.
fn own_protections(agent: &str, reply: &str) -> Result<Vec<(Target, String)>, String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        target: String,
        origin: String,
        note: Option<String>,
    }
    let list: Vec<Entry> =
        serde_json::from_str(reply).map_err(|e| format!("allowlist reply: {e}"))?;
    let mut out = Vec::new();
    for e in list.into_iter().filter(|e| e.origin == "topology") {
        let t: Target = e.target.parse()?;
        let note = format!(
            "{} (firewall agent {agent})",
            e.note.as_deref().unwrap_or("its own")
        );
        if !out.iter().any(|(seen, _)| *seen == t) && out.len() < LEARN_MAX {
            out.push((t, note));
        }
    }
    Ok(out)
}

/// The topology's own machines and SDN controllers, protected automatically: each machine's
/// address, and the address of each controller agent's `url` (os-ken, Floodlight) or `addr`
/// (POX) when it is an IP address (a host name is not resolved here).
pub(super) fn topology_entries(topo: &Topology) -> Vec<(Target, String)> {
    let mut out: Vec<(Target, String)> = Vec::new();
    let mut add = |ip: IpAddr, note: String| {
        let t = Target::Ip(ip);
        if !out.iter().any(|(seen, _)| *seen == t) {
            out.push((t, note));
        }
    };
    for m in &topo.machines {
        add(m.address, format!("machine {}", m.name));
    }
    for n in &topo.nodes {
        let param = match n.role {
            Role::Agent(AgentKind::ControllerOsken | AgentKind::ControllerFloodlight) => "url",
            Role::Agent(AgentKind::ControllerPox) => "addr",
            _ => continue,
        };
        match n.params.get(param).map(|u| (u, host_of(u))) {
            Some((_, Some(ip))) => add(ip, format!("SDN controller of {}", n.name)),
            Some((u, None)) => {
                tracing::info!(node = %n.name, param, value = %u, "controller address is not an IP address: not on the allowlist automatically")
            }
            None => {}
        }
    }
    out
}

/// The host of `http://host:port/path`, `host:port` or `[v6]:port`, when it is an IP address.
fn host_of(url: &str) -> Option<IpAddr> {
    let rest = url.trim().split_once("://").map_or(url.trim(), |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next()?.parse().ok();
    }
    if let Ok(ip) = host.parse() {
        return Some(ip); // a bare IPv6 address, or an IPv4 one without a port
    }
    host.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_own_protections_are_its_topology_entries() {
        let reply = r#"[{"target":"10.0.0.1","origin":"topology","note":"gateway of the host"},
            {"target":"192.0.2.0/24","origin":"operator","note":null},
            {"target":"52:54:00:00:00:01","origin":"topology","note":null},
            {"target":"10.0.0.1","origin":"topology","note":"machine h"}]"#;
        let got = own_protections("fw", reply).expect("parsed");
        let got: Vec<(String, String)> = got.into_iter().map(|(t, n)| (t.to_string(), n)).collect();
        assert_eq!(
            got,
            [
                (
                    "ip 10.0.0.1".to_string(),
                    "gateway of the host (firewall agent fw)".to_string()
                ),
                (
                    "mac 52:54:00:00:00:01".to_string(),
                    "its own (firewall agent fw)".to_string()
                ),
            ]
        );
        assert!(own_protections("fw", "{}").is_err());
        assert!(own_protections("fw", r#"[{"target":"nonsense","origin":"topology"}]"#).is_err());
    }

    #[test]
    fn controller_urls_give_their_address() {
        for (url, ip) in [
            ("http://10.0.0.2:8080", Some("10.0.0.2")),
            ("https://user@192.0.2.9/wm", Some("192.0.2.9")),
            ("http://[2001:db8::2]:8080/x", Some("2001:db8::2")),
            ("127.0.0.1:7790", Some("127.0.0.1")),
            ("2001:db8::5", Some("2001:db8::5")),
            ("http://controller.example:8080", None),
            ("", None),
        ] {
            assert_eq!(host_of(url), ip.map(|s| s.parse().unwrap()), "{url}");
        }
    }
}
