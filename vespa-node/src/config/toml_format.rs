//! The native TOML format.
//!
//! ```toml
//! [settings]                 # optional; every field has a default
//! key_file = "psk"           # relative to this file (one key shared by the tree)
//! # key_dir = "keys"          # per-node keys instead (vespa-orchestrator keygen --per-node)
//! heartbeat_ms = 1000
//! # ledger = "/var/lib/vespa/ledger.db"  # the VO process's decision ledger (SQLite, or postgres://)
//!
//! [[machine]]
//! name = "web"
//! address = "192.0.2.10"
//!
//! [[node]]
//! name = "HO_VM"
//! kind = "ho_vm"             # vo | ho_vm | ho_hy | ho_ph | agent_bandwidth | agent_connections | ...
//! location = "web"
//! master = "VO"
//! port = 4151
//! ```
//!
//! Unknown keys are errors (`deny_unknown_fields`): a misspelt `mastr = "VO"` silently ignored
//! would leave a node without the master the operator meant to give it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::outputs::RawOutput;
use super::{field_line, ConfigError, Format, Machine, NodeDef, Role, Settings, Topology};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    settings: Option<Spanned<RawSettings>>,
    #[serde(default)]
    machine: Vec<Spanned<RawMachine>>,
    #[serde(default)]
    node: Vec<Spanned<RawNode>>,
    #[serde(default)]
    output: Vec<Spanned<RawOutput>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    key_file: Option<PathBuf>,
    key_dir: Option<PathBuf>,
    queue_capacity: Option<usize>,
    heartbeat_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    backoff_min_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    sample_interval_ms: Option<u64>,
    keep_alerts: Option<usize>,
    call_timeout_ms: Option<u64>,
    max_frame: Option<usize>,
    journal_max_bytes: Option<u64>,
    spool_dir: Option<PathBuf>,
    spool_max_bytes: Option<u64>,
    ledger: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    name: String,
    address: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    kind: String,
    location: String,
    master: Option<String>,
    port: u16,
    #[serde(default)]
    interfaces: Vec<String>,
    journal: Option<PathBuf>,
    #[serde(default)]
    params: BTreeMap<String, String>,
}

/// How an output's table is named in errors: its `name`, else its `kind`.
fn o_name(o: &RawOutput) -> String {
    o.display_name()
}

/// 1-based line of byte offset `at`.
fn line_at(text: &str, at: usize) -> usize {
    text.get(..at).map_or(1, |t| t.matches('\n').count() + 1)
}

/// The line of the `[..]` / `[[..]]` header owning the value whose span starts at `at`.
fn header_line(text: &str, at: usize) -> usize {
    let line = line_at(text, at);
    let lines: Vec<&str> = text.lines().collect();
    (1..=line.min(lines.len()))
        .rev()
        .find(|&l| lines[l - 1].trim_start().starts_with('['))
        .unwrap_or(line)
}

pub(super) fn parse(file: &str, text: &str) -> Result<Topology, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError {
        file: file.to_string(),
        line: e.span().map(|s| line_at(text, s.start)),
        context: None,
        field: None,
        message: e.message().trim().to_string(),
    })?;
    let err = |line: usize, context: String, field: &str, message: String| ConfigError {
        file: file.to_string(),
        line: Some(line),
        context: Some(context),
        field: Some(field.to_string()),
        message,
    };

    let mut settings = Settings::default();
    if let Some(s) = raw.settings {
        let line = header_line(text, s.span().start);
        let at = |f: &str| field_line(text, line, f);
        let s = s.into_inner();
        let ms = Duration::from_millis;
        let ctx = || "[settings]".to_string();
        settings.key_dir = s.key_dir;
        if let Some(l) = s.ledger {
            if l.as_os_str().is_empty() || l.to_str().is_some_and(|t| t.trim().is_empty()) {
                return Err(err(
                    at("ledger"),
                    ctx(),
                    "ledger",
                    "must name a file (the decision ledger's SQLite database) or a postgres:// URL"
                        .into(),
                ));
            }
            settings.ledger = Some(l);
        }
        if let Some(k) = s.key_file {
            settings.key_file = k;
        }
        if let Some(q) = s.queue_capacity {
            if q == 0 {
                return Err(err(
                    at("queue_capacity"),
                    ctx(),
                    "queue_capacity",
                    "must be at least 1".into(),
                ));
            }
            settings.queue_capacity = q;
        }
        if let Some(h) = s.heartbeat_ms {
            if h < 10 {
                return Err(err(
                    at("heartbeat_ms"),
                    ctx(),
                    "heartbeat_ms",
                    "must be at least 10".into(),
                ));
            }
            settings.heartbeat = ms(h);
        }
        if let Some(h) = s.handshake_timeout_ms {
            if h == 0 {
                return Err(err(
                    at("handshake_timeout_ms"),
                    ctx(),
                    "handshake_timeout_ms",
                    "must be at least 1".into(),
                ));
            }
            settings.handshake_timeout = ms(h);
        }
        if let Some(b) = s.backoff_min_ms {
            settings.backoff_min = ms(b.max(1));
        }
        if let Some(b) = s.backoff_max_ms {
            settings.backoff_max = ms(b);
        }
        if settings.backoff_max < settings.backoff_min {
            return Err(err(
                at("backoff_max_ms"),
                ctx(),
                "backoff_max_ms",
                format!(
                    "must be at least backoff_min_ms ({})",
                    settings.backoff_min.as_millis()
                ),
            ));
        }
        if let Some(i) = s.sample_interval_ms {
            settings.sample_interval = ms(i);
        }
        if let Some(k) = s.keep_alerts {
            settings.keep_alerts = k;
        }
        if let Some(c) = s.call_timeout_ms {
            settings.call_timeout = ms(c.max(1));
        }
        if let Some(f) = s.max_frame {
            if !(1024..=16 << 20).contains(&f) {
                return Err(err(
                    at("max_frame"),
                    ctx(),
                    "max_frame",
                    "must be between 1024 and 16777216 bytes".into(),
                ));
            }
            settings.max_frame = f;
        }
        if let Some(b) = s.journal_max_bytes {
            if b < 64 * 1024 {
                return Err(err(
                    at("journal_max_bytes"),
                    ctx(),
                    "journal_max_bytes",
                    "must be at least 65536 bytes".into(),
                ));
            }
            settings.journal_max_bytes = b;
        }
        if let Some(d) = s.spool_dir {
            if d.as_os_str().is_empty() {
                return Err(err(
                    at("spool_dir"),
                    ctx(),
                    "spool_dir",
                    "must name a directory (leave it out for no spool)".into(),
                ));
            }
            settings.spool_dir = Some(d);
        }
        if let Some(b) = s.spool_max_bytes {
            if b < 64 * 1024 {
                return Err(err(
                    at("spool_max_bytes"),
                    ctx(),
                    "spool_max_bytes",
                    "must be at least 65536 bytes".into(),
                ));
            }
            settings.spool_max_bytes = b;
        }
    }

    let mut machines = Vec::new();
    for m in raw.machine {
        let line = header_line(text, m.span().start);
        let m = m.into_inner();
        let address: IpAddr = m.address.parse().map_err(|_| {
            err(
                field_line(text, line, "address"),
                format!("[[machine]] {:?}", m.name),
                "address",
                format!("{:?} is not an IP address", m.address),
            )
        })?;
        machines.push(Machine {
            name: m.name,
            address,
            line,
        });
    }

    let mut nodes = Vec::new();
    for n in raw.node {
        let line = header_line(text, n.span().start);
        let n = n.into_inner();
        let role = Role::parse(&n.kind).ok_or_else(|| {
            let kinds: Vec<&str> = Role::ALL.iter().map(|(_, k, _)| *k).collect();
            err(
                field_line(text, line, "kind"),
                format!("[[node]] {:?}", n.name),
                "kind",
                format!(
                    "unknown kind {:?} (expected one of {})",
                    n.kind,
                    kinds.join(", ")
                ),
            )
        })?;
        nodes.push(NodeDef {
            name: n.name,
            role,
            location: n.location,
            master: n.master.filter(|m| !m.is_empty()),
            port: n.port,
            interfaces: n.interfaces,
            journal: n.journal,
            params: n.params,
            line,
        });
    }
    let mut outputs: Vec<super::OutputDef> = Vec::new();
    for o in raw.output {
        let line = header_line(text, o.span().start);
        let o = o.into_inner();
        let ctx = format!("[[output]] {:?}", o_name(&o));
        let def = o.validate(line).map_err(|(field, message)| {
            err(field_line(text, line, field), ctx.clone(), field, message)
        })?;
        if let Some(first) = outputs.iter().find(|d| d.name == def.name) {
            return Err(err(
                field_line(text, line, "name"),
                ctx,
                "name",
                format!(
                    "an output named {:?} is already defined at line {} (give each a `name`)",
                    def.name, first.line
                ),
            ));
        }
        outputs.push(def);
    }
    Ok(Topology {
        source: file.to_string(),
        settings,
        machines,
        nodes,
        outputs,
        format: Format::Toml,
    })
}
