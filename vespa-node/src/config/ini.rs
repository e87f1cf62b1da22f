//! The 2014 `config.ini`, read by hand so every error keeps its line number.
//!
//! What the 2014 Model (ConfigObj) accepted and this reader keeps:
//! - `[name]` sections; `Key= value` (spaces around `=` optional); `#` or `;` comments;
//! - a section with `Type= Machine` is a machine, and `Interfaces=` is its address;
//! - any other section is a node whose type defaults to the section name (`[VO]`, `[HO_VM]`,
//!   `[Agent_Bandwidth]`) unless `Type=` says otherwise, with `Location=` (a machine),
//!   `Master=` (empty for the VO) and `Port=`.
//!
//! What it refuses: keys it does not know (a typo would otherwise drop a setting silently),
//! duplicate keys or sections, and more than one address in `Interfaces=` (the 2014 code
//! used the value as a single bind address).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{ConfigError, Format, Machine, NodeDef, Role, Settings, Topology};

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
        if !matches!(
            key.as_str(),
            "type" | "interfaces" | "location" | "master" | "port"
        ) {
            return Err(err(
                line,
                Some(ctx),
                Some(key.as_str()),
                "unknown key (known: Type, Interfaces, Location, Master, Port)".into(),
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
        if ty.eq_ignore_ascii_case("machine") {
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
        if let Some((_, l)) = get("interfaces") {
            return Err(err(
                l,
                ctx(),
                Some("interfaces"),
                "only machines have Interfaces".into(),
            ));
        }
        let Some((location, _)) = get("location") else {
            return Err(err(s.line, ctx(), Some("location"), "missing".into()));
        };
        let Some((port, pl)) = get("port") else {
            return Err(err(s.line, ctx(), Some("port"), "missing".into()));
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
            params: BTreeMap::new(),
            line: s.line,
        });
    }
    Ok(Topology {
        source: file.to_string(),
        settings: Settings::default(),
        machines,
        nodes,
        format: Format::Ini,
    })
}
