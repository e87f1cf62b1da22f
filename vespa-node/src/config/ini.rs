//! The 2014 `config.ini`, read by hand so every error keeps its line number.
//!
//! What the 2014 Model (ConfigObj) accepted and this reader keeps:
//! - `[name]` sections; `Key= value` (spaces around `=` optional); `#` or `;` comments;
//! - a section with `Type= Machine` is a machine, and `Interfaces=` is its address;
//! - any other section is a node whose type defaults to the section name (`[VO]`, `[HO_VM]`,
//!   `[Agent_Bandwidth]`) unless `Type=` says otherwise, with `Location=` (a machine),
//!   `Master=` (empty for the VO) and `Port=`.
//!
//! - any other key of an agent's section is one of its parameters, as in 2014, where the
//!   agents read their settings from their own section (`vm=`, `url=`): the same as that
//!   node's `[node.params]` in TOML. Keys are case-insensitive (`VM=` is `vm`), values kept
//!   as written.
//!
//! What it refuses: keys a machine, the VO or an HO does not know (a typo would otherwise drop
//! a setting silently; an agent's misspelt `Location`, `Master` or `Port` is found missing),
//! duplicate keys or sections, and more than one address in `Interfaces=` (the 2014 code
//! used the value as a single bind address).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{ConfigError, Format, Machine, NodeDef, Role, Settings, Topology};

/// The keys that make the tree; any other key of an agent's section is one of its parameters.
const STRUCTURE: [&str; 5] = ["type", "interfaces", "location", "master", "port"];

struct Section {
    name: String,
    line: usize,
    keys: BTreeMap<String, (String, usize)>,
}

pub(super) fn parse(file: &str, text: &str) -> Result<Topology, ConfigError> {
    let err =
        |line: usize, context: Option<String>, field: Option<&str>, message: String| ConfigError {
            file: file.to_string(),
            line: Some(line),
            context,
            field: field.map(str::to_string),
            message,
        };
    let mut sections: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if let Some(rest) = t.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(err(
                    line,
                    None,
                    None,
                    format!("malformed section header {t:?} (expected [name])"),
                ));
            };
            let name = name.trim().to_string();
            if name.is_empty() {
                return Err(err(line, None, None, "empty section name".into()));
            }
            if let Some(prev) = sections.iter().find(|s| s.name == name) {
                return Err(err(
                    line,
                    Some(format!("[{name}]")),
                    None,
                    format!("section defined twice (first at line {})", prev.line),
                ));
            }
            sections.push(Section {
                name,
                line,
                keys: BTreeMap::new(),
            });
            continue;
        }
        let Some((key, value)) = t.split_once('=') else {
            return Err(err(
                line,
                None,
                None,
                format!("expected `Key= value` or `[section]`, found {t:?}"),
            ));
        };
        let Some(section) = sections.last_mut() else {
            return Err(err(line, None, None, "key outside of any section".into()));
        };
        let key = key.trim().to_ascii_lowercase();
        let ctx = format!("[{}]", section.name);
        if key.is_empty() {
            return Err(err(
                line,
                Some(ctx),
                None,
                format!("no key before `=` in {t:?}"),
            ));
        }
        if section
            .keys
            .insert(key.clone(), (value.trim().to_string(), line))
            .is_some()
        {
            return Err(err(
                line,
                Some(ctx),
                Some(key.as_str()),
                "given twice in this section".into(),
            ));
        }
    }

    let mut machines = Vec::new();
    let mut nodes = Vec::new();
    for s in sections {
        let ctx = || Some(format!("[{}]", s.name));
        let get = |k: &str| s.keys.get(k).map(|(v, l)| (v.as_str(), *l));
        let ty = get("type").map_or(s.name.as_str(), |(v, _)| v);
        // Keys a section of this sort does not know: refused, except on an agent, where
        // they are its parameters (`[node.params]` in TOML).
        let unknown = s
            .keys
            .iter()
            .filter(|(k, _)| !STRUCTURE.contains(&k.as_str()));
        if ty.eq_ignore_ascii_case("machine") {
            if let Some((k, (_, l))) = unknown.clone().next() {
                return Err(err(
                    *l,
                    ctx(),
                    Some(k),
                    "unknown key (a machine has Type and Interfaces)".into(),
                ));
            }
            for k in ["location", "master", "port"] {
                if let Some((_, l)) = get(k) {
                    return Err(err(
                        l,
                        ctx(),
                        Some(k),
                        "not a key of a machine (a machine has Type and Interfaces)".into(),
                    ));
                }
            }
            let Some((addr, l)) = get("interfaces") else {
                return Err(err(
                    s.line,
                    ctx(),
                    Some("interfaces"),
                    "missing: a machine needs its address".into(),
                ));
            };
            let address: IpAddr = addr.parse().map_err(|_| {
                err(
                    l,
                    ctx(),
                    Some("interfaces"),
                    format!("{addr:?} is not one IP address"),
                )
            })?;
            machines.push(Machine {
                name: s.name.clone(),
                address,
                line: s.line,
            });
            continue;
        }
        let type_line = get("type").map_or(s.line, |(_, l)| l);
        let role = Role::parse(ty).ok_or_else(|| {
            let types: Vec<&str> = Role::ALL.iter().map(|(_, _, t)| *t).collect();
            err(
                type_line,
                ctx(),
                Some("type"),
                format!(
                    "unknown node type {ty:?} (expected Machine or one of {})",
                    types.join(", ")
                ),
            )
        })?;
        if !role.is_agent() {
            if let Some((k, (_, l))) = unknown.clone().next() {
                return Err(err(
                    *l,
                    ctx(),
                    Some(k),
                    format!(
                        "unknown key (a node of kind {role} has Type, Location, Master and Port; only agents take parameters)"
                    ),
                ));
            }
        }
        let params: BTreeMap<String, String> =
            unknown.map(|(k, (v, _))| (k.clone(), v.clone())).collect();
        if let Some((_, l)) = get("interfaces") {
            return Err(err(
                l,
                ctx(),
                Some("interfaces"),
                "only machines have Interfaces".into(),
            ));
        }
        let Some((location, _)) = get("location") else {
            return Err(err(s.line, ctx(), Some("location"), missing(&params)));
        };
        let Some((port, pl)) = get("port") else {
            return Err(err(s.line, ctx(), Some("port"), missing(&params)));
        };
        let port: u16 = port.parse().map_err(|_| {
            err(
                pl,
                ctx(),
                Some("port"),
                format!("{port:?} is not a port number (1-65535)"),
            )
        })?;
        let master = get("master")
            .map(|(m, _)| m.to_string())
            .filter(|m| !m.is_empty());
        nodes.push(NodeDef {
            name: s.name.clone(),
            role,
            location: location.to_string(),
            master,
            port,
            interfaces: Vec::new(),
            journal: None,
            params,
            line: s.line,
        });
    }
    Ok(Topology {
        source: file.to_string(),
        settings: Settings::default(),
        machines,
        nodes,
        outputs: Vec::new(),
        format: Format::Ini,
    })
}

/// "missing", and, when the agent has other keys, that they were taken as its parameters (a
/// misspelt `Port=` is one of them).
fn missing(params: &BTreeMap<String, String>) -> String {
    if params.is_empty() {
        return "missing".into();
    }
    let keys: Vec<&str> = params.keys().map(String::as_str).collect();
    format!(
        "missing (this agent's other keys are taken as its parameters: {})",
        keys.join(", ")
    )
}
