//! The topology: which machines exist, which nodes run where, and who is whose master.
//!
//! Two file formats map onto one model ([`Topology`]):
//! - TOML (`[[machine]]` and `[[node]]` tables, plus `[settings]`), the native format;
//! - the 2014 `config.ini` (`[web]` with `Type= Machine`, `[VO]`, `[HO_VM]`, `[Agent_*]` with
//!   `Location=`, `Master=`, `Port=`), accepted as it was so an old deployment can be moved over.
//!
//! When no file is given, [`Topology::embedded_default`] puts every node on this host, on
//! loopback, on the 2014 ports.
//!
//! Every error names the file, the line and the field (`config.toml:12: [[node]] "HO_VM":
//! field `master`: no node named "vo2"`), because a config error found at start-up is read by
//! an operator who has only the file in front of them.

mod ini;
pub mod outputs;
mod toml_format;
mod tree;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vespa_proto::NodeKind;

pub use outputs::{OutputDef, OutputKind, Severity};

/// The embedded default topology (everything on 127.0.0.1, 2014 ports).
pub const DEFAULT_TOPOLOGY: &str = include_str!("default.toml");

/// A configuration error: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (as given on the command line), or `<embedded default>`.
    pub file: String,
    /// 1-based line, when the error can be pinned to one.
    pub line: Option<usize>,
    /// The table or section concerned, e.g. `[[node]] "HO_VM"` or `[Agent_Bandwidth]`.
    pub context: Option<String>,
    /// The field concerned, e.g. `master`.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(ctx) = &self.context {
            write!(f, "{ctx}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The 2014 agents. Sensor agents (bandwidth, connections) are served by the host sensors;
/// the others are actuators plugged in through [`crate::AgentVerbs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// Interface byte counters, pushed periodically (2014 `Agent_Bandwidth`).
    Bandwidth,
    /// TCP connections per remote address, pushed periodically, plus threshold events
    /// (2014 `Agent_Connections`).
    Connections,
    /// VM actions through libvirt (2014 `Agent_Libvirt`).
    Libvirt,
    /// Floodlight SDN controller (2014 `Agent_Controller_Floodlight`).
    ControllerFloodlight,
    /// POX SDN controller (2014 `Agent_Controller_Pox`).
    ControllerPox,
    /// os-ken (Ryu) SDN controller, the maintained successor the 2014 code never had.
    ControllerOsken,
    /// ClamAV in a VM (2014 `Agent_AV`).
    Av,
    /// Blocks, throttles and the reflex in the host's own kernel programs (no 2014
    /// counterpart: 2014 could only block through an SDN controller).
    Firewall,
}

/// What a node is, as written in the config (`kind = "ho_vm"`, `[Agent_Bandwidth]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The vertical orchestrator (root).
    Vo,
    /// Horizontal orchestrator, VM layer.
    HoVm,
    /// Horizontal orchestrator, hypervisor layer.
    HoHy,
    /// Horizontal orchestrator, physical layer.
    HoPh,
    /// A leaf agent.
    Agent(AgentKind),
}

impl Role {
    /// Every role with its config spelling (TOML `kind`, lower case) and 2014 section name.
    pub const ALL: [(Role, &'static str, &'static str); 12] = [
        (Role::Vo, "vo", "VO"),
        (Role::HoVm, "ho_vm", "HO_VM"),
        (Role::HoHy, "ho_hy", "HO_HY"),
        (Role::HoPh, "ho_ph", "HO_PH"),
        (
            Role::Agent(AgentKind::Bandwidth),
            "agent_bandwidth",
            "Agent_Bandwidth",
        ),
        (
            Role::Agent(AgentKind::Connections),
            "agent_connections",
            "Agent_Connections",
        ),
        (
            Role::Agent(AgentKind::Libvirt),
            "agent_libvirt",
            "Agent_Libvirt",
        ),
        (
            Role::Agent(AgentKind::ControllerFloodlight),
            "agent_controller_floodlight",
            "Agent_Controller_Floodlight",
        ),
        (
            Role::Agent(AgentKind::ControllerPox),
            "agent_controller_pox",
            "Agent_Controller_Pox",
        ),
        (
            Role::Agent(AgentKind::ControllerOsken),
            "agent_controller_osken",
            "Agent_Controller_OsKen",
        ),
        (Role::Agent(AgentKind::Av), "agent_av", "Agent_AV"),
        (
            Role::Agent(AgentKind::Firewall),
            "agent_firewall",
            "Agent_Firewall",
        ),
    ];

    /// Parses a TOML `kind` or a 2014 type/section name (case-insensitive).
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL
            .iter()
            .find(|(_, a, b)| a.eq_ignore_ascii_case(s) || b.eq_ignore_ascii_case(s))
            .map(|(r, _, _)| *r)
    }

    /// The TOML spelling.
    pub fn as_str(self) -> &'static str {
        Role::ALL
            .iter()
            .find(|(r, _, _)| *r == self)
            .map_or("?", |(_, a, _)| a)
    }

    /// The wire kind sent in `Register`.
    pub fn node_kind(self) -> NodeKind {
        match self {
            Role::Vo => NodeKind::Vo,
            Role::HoVm => NodeKind::HoVm,
            Role::HoHy => NodeKind::HoHy,
            Role::HoPh => NodeKind::HoPh,
            Role::Agent(_) => NodeKind::Agent,
        }
    }

    /// True for HO_* nodes.
    pub fn is_ho(self) -> bool {
        matches!(self, Role::HoVm | Role::HoHy | Role::HoPh)
    }

    /// True for agents.
    pub fn is_agent(self) -> bool {
        matches!(self, Role::Agent(_))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tunables shared by every node of the tree (`[settings]` in TOML).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The pre-shared key file (made by `vespa-orchestrator keygen`). Relative paths are
    /// resolved against the config file's directory.
    pub key_file: PathBuf,
    /// Directory of per-node keys; when set, nodes use their own keys instead of `key_file`.
    pub key_dir: Option<PathBuf>,
    /// Unacknowledged alerts a node keeps for its master; see [`crate::outbox`].
    pub queue_capacity: usize,
    /// Heartbeat period; a peer silent for three periods is dropped.
    pub heartbeat: Duration,
    /// Deadline for a connection's handshake (slow-loris bound).
    pub handshake_timeout: Duration,
    /// First reconnect delay; doubles up to `backoff_max` (with jitter).
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Period of the sensor agents' pushed samples (the 2014 agents used 1 s); 0 disables them.
    pub sample_interval: Duration,
    /// Alerts each node keeps in memory for `get_alerts`.
    pub keep_alerts: usize,
    /// How long a call waits for its reply.
    pub call_timeout: Duration,
    /// Largest frame, in bytes (both ends must agree).
    pub max_frame: usize,
    /// VO: the alert journal's byte budget; past it the file is compacted to what
    /// de-duplication needs and the newest alerts that fit in half of it.
    pub journal_max_bytes: u64,
    /// Directory of the nodes' spools of unacknowledged alerts (`<dir>/<node>.spool`, see
    /// [`crate::spool`]); relative paths are resolved against the config file's directory.
    /// `None`: no spool, a node's own unacknowledged alerts live in memory only.
    pub spool_dir: Option<PathBuf>,
    /// Bytes of unacknowledged alerts a node's spool holds at the most; past it, new alerts
    /// are dropped and counted as the full queue's are.
    pub spool_max_bytes: u64,
    /// The process that runs the VO: its decision ledger, an SQLite database (relative
    /// paths against the config file's directory) or a `postgres://` URL (kept as it is).
    /// `None`: no ledger unless
    /// `vespa-orchestrator run --ledger` names one.
    pub ledger: Option<PathBuf>,
}

/// The default of [`Settings::journal_max_bytes`]: 64 MiB.
pub const DEFAULT_JOURNAL_MAX_BYTES: u64 = 64 << 20;

/// The default of [`Settings::spool_max_bytes`]: 64 MiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 << 20;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            key_file: PathBuf::from("/etc/vespa/psk"),
            key_dir: None,
            queue_capacity: 65_536,
            heartbeat: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            sample_interval: Duration::from_secs(1),
            keep_alerts: 10_000,
            call_timeout: Duration::from_secs(10),
            max_frame: vespa_proto::frame::DEFAULT_MAX_FRAME,
            journal_max_bytes: DEFAULT_JOURNAL_MAX_BYTES,
            spool_dir: None,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            ledger: None,
        }
    }
}

/// A machine: where nodes run (2014 `Type= Machine`).
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// Its name (2014: the host name).
    pub name: String,
    /// The address its nodes listen on and are reached at.
    pub address: IpAddr,
    /// Line of its definition.
    pub line: usize,
}

/// A node of the tree, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeDef {
    /// Unique node name (also its name in the handshake and in alert paths).
    pub name: String,
    /// What it is.
    pub role: Role,
    /// The machine it runs on.
    pub location: String,
    /// Its parent; `None` only for the VO.
    pub master: Option<String>,
    /// TCP port it listens on at its machine's address.
    pub port: u16,
    /// Agents: interfaces sampled and served (empty: every interface).
    pub interfaces: Vec<String>,
    /// VO: alert journal file (relative to the config file); alerts survive a VO restart.
    pub journal: Option<PathBuf>,
    /// Agent-specific settings passed to its implementation (controller URL, libvirt URI...).
    pub params: BTreeMap<String, String>,
    /// Line of its definition.
    pub line: usize,
}

/// A whole, validated topology.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// Where it came from (file name as given, or `<embedded default>`).
    pub source: String,
    /// Shared tunables.
    pub settings: Settings,
    /// Machines, in file order.
    pub machines: Vec<Machine>,
    /// Nodes, in file order.
    pub nodes: Vec<NodeDef>,
    /// Where the VO sends alerts and decisions (`[[output]]`, TOML only), in file order.
    pub outputs: Vec<OutputDef>,
    /// Which syntax it was written in (error messages quote tables the way the file does).
    pub format: Format,
}

/// The syntax of a topology file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `[[machine]]` / `[[node]]` tables.
    Toml,
    /// The 2014 `config.ini`.
    Ini,
}

impl Topology {
    /// Loads and validates a file: `.ini` files are read as the 2014 format, anything else as
    /// TOML. Relative paths inside it are resolved against its directory.
    pub fn load(path: &Path) -> Result<Topology, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            context: None,
            field: None,
            message: format!("cannot read: {e}"),
        })?;
        let is_ini = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("ini"));
        let mut topo = if is_ini {
            Topology::from_ini(&file, &text)?
        } else {
            Topology::from_toml(&file, &text)?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        topo.resolve_paths(base);
        Ok(topo)
    }

    /// Parses and validates TOML text; `file` is only used in error messages.
    pub fn from_toml(file: &str, text: &str) -> Result<Topology, ConfigError> {
        let topo = toml_format::parse(file, text)?;
        topo.validate(text)?;
        Ok(topo)
    }

    /// Parses and validates 2014 INI text; `file` is only used in error messages.
    pub fn from_ini(file: &str, text: &str) -> Result<Topology, ConfigError> {
        let topo = ini::parse(file, text)?;
        topo.validate(text)?;
        Ok(topo)
    }

    /// The embedded default: VO, three HOs and the two sensor agents on 127.0.0.1.
    pub fn embedded_default() -> Topology {
        Topology::from_toml("<embedded default>", DEFAULT_TOPOLOGY)
            .expect("the embedded default topology is valid (unit-tested)")
    }

    fn resolve_paths(&mut self, base: &Path) {
        if self.settings.key_file.is_relative() {
            self.settings.key_file = base.join(&self.settings.key_file);
        }
        if let Some(d) = &mut self.settings.key_dir {
            if d.is_relative() {
                *d = base.join(&*d);
            }
        }
        if let Some(d) = &mut self.settings.spool_dir {
            if d.is_relative() {
                *d = base.join(&*d);
            }
        }
        if let Some(l) = &mut self.settings.ledger {
            // A PostgreSQL URL is not a path.
            let url = l
                .to_str()
                .is_some_and(|t| t.starts_with("postgres://") || t.starts_with("postgresql://"));
            if l.is_relative() && !url {
                *l = base.join(&*l);
            }
        }
        for n in &mut self.nodes {
            if let Some(j) = &mut n.journal {
                if j.is_relative() {
                    *j = base.join(&*j);
                }
            }
        }
        for o in &mut self.outputs {
            let path = match &mut o.kind {
                OutputKind::File(f) => Some(&mut f.path),
                OutputKind::Syslog(outputs::SyslogOutput {
                    transport: outputs::SyslogTransport::Unix(p),
                    ..
                }) => Some(p),
                OutputKind::Nats(n) => n.credentials.as_mut(),
                _ => None,
            };
            if let Some(p) = path {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeDef> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The machine named `name`.
    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.machines.iter().find(|m| m.name == name)
    }

    /// Where `node` listens (its machine's address and its port).
    pub fn listen_addr(&self, node: &NodeDef) -> SocketAddr {
        let ip = self
            .machine(&node.location)
            .map_or(IpAddr::from([127, 0, 0, 1]), |m| m.address);
        SocketAddr::new(ip, node.port)
    }

    /// The VO (validation guarantees exactly one).
    pub fn vo(&self) -> &NodeDef {
        self.nodes
            .iter()
            .find(|n| n.role == Role::Vo)
            .expect("validated topology has a VO")
    }

    /// Direct children of `name`, in file order.
    pub fn children_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a NodeDef> + 'a {
        self.nodes
            .iter()
            .filter(move |n| n.master.as_deref() == Some(name))
    }

    /// The resolved tree, one node per line, as `--check-config` prints it.
    pub fn render_tree(&self) -> String {
        tree::render(self)
    }

    /// How the file names a node's table: `[[node]] "HO_VM"` in TOML, `[HO_VM]` in INI.
    fn node_ctx(&self, name: &str) -> String {
        match self.format {
            Format::Toml => format!("[[node]] {name:?}"),
            Format::Ini => format!("[{name}]"),
        }
    }

    fn machine_ctx(&self, name: &str) -> String {
        match self.format {
            Format::Toml => format!("[[machine]] {name:?}"),
            Format::Ini => format!("[{name}]"),
        }
    }

    fn err(
        &self,
        line: usize,
        context: String,
        field: Option<&str>,
        message: String,
    ) -> ConfigError {
        ConfigError {
            file: self.source.clone(),
            line: Some(line),
            context: Some(context),
            field: field.map(str::to_string),
            message,
        }
    }

    /// Checks the rules a parsed file must follow. `text` is the file, used to find the line of
    /// a field inside a node's table.
    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let line_of = |def_line: usize, field: &str| field_line(text, def_line, field);
        let mut machines = HashSet::new();
        for m in &self.machines {
            if let Err(why) = vespa_proto::handshake::validate_name(&m.name) {
                return Err(self.err(
                    m.line,
                    self.machine_ctx(&m.name),
                    Some("name"),
                    why.to_string(),
                ));
            }
            if !machines.insert(m.name.as_str()) {
                return Err(self.err(
                    m.line,
                    self.machine_ctx(&m.name),
                    Some("name"),
                    "a machine of this name is already defined".into(),
                ));
            }
        }
        let mut names: HashMap<&str, &NodeDef> = HashMap::new();
        let mut ports: HashMap<(&str, u16), &str> = HashMap::new();
        for n in &self.nodes {
            let ctx = self.node_ctx(&n.name);
            if let Err(why) = vespa_proto::handshake::validate_name(&n.name) {
                return Err(self.err(n.line, ctx, Some("name"), why.to_string()));
            }
            if names.insert(&n.name, n).is_some() {
                return Err(self.err(
                    n.line,
                    ctx,
                    Some("name"),
                    "a node of this name is already defined".into(),
                ));
            }
            if !machines.contains(n.location.as_str()) {
                return Err(self.err(
                    line_of(n.line, "location"),
                    ctx,
                    Some("location"),
                    format!("no machine named {:?}", n.location),
                ));
            }
            if n.port == 0 {
                return Err(self.err(
                    line_of(n.line, "port"),
                    ctx,
                    Some("port"),
                    "must be a fixed port (1-65535)".into(),
                ));
            }
            if let Some(other) = ports.insert((&n.location, n.port), &n.name) {
                return Err(self.err(
                    line_of(n.line, "port"),
                    ctx,
                    Some("port"),
                    format!(
                        "port {} on machine {:?} is already used by node {other:?}",
                        n.port, n.location
                    ),
                ));
            }
            if n.journal.is_some() && n.role != Role::Vo {
                return Err(self.err(
                    line_of(n.line, "journal"),
                    ctx,
                    Some("journal"),
                    "only the VO keeps an alert journal".into(),
                ));
            }
        }
        let vos: Vec<&NodeDef> = self.nodes.iter().filter(|n| n.role == Role::Vo).collect();
        match vos.as_slice() {
            [] => {
                return Err(ConfigError {
                    file: self.source.clone(),
                    line: None,
                    context: None,
                    field: None,
                    message: "no VO: exactly one node must be of kind \"vo\"".into(),
                })
            }
            [_] => {}
            [first, second, ..] => {
                return Err(self.err(
                    second.line,
                    self.node_ctx(&second.name),
                    Some("kind"),
                    format!(
                        "a second VO (the first is {:?} at line {}); exactly one is allowed",
                        first.name, first.line
                    ),
                ))
            }
        }
        for n in &self.nodes {
            let ctx = self.node_ctx(&n.name);
            let at = line_of(n.line, "master");
            match (&n.role, &n.master) {
                (Role::Vo, Some(m)) => {
                    return Err(self.err(
                        at,
                        ctx,
                        Some("master"),
                        format!("the VO is the root and has no master (found {m:?})"),
                    ))
                }
                (Role::Vo, None) => {}
                (_, None) => {
                    return Err(self.err(
                        n.line,
                        ctx,
                        Some("master"),
                        "missing: every node but the VO has a master".into(),
                    ))
                }
                (role, Some(m)) => {
                    let Some(master) = names.get(m.as_str()) else {
                        return Err(self.err(
                            at,
                            ctx,
                            Some("master"),
                            format!("no node named {m:?}"),
                        ));
                    };
                    let ok = if role.is_agent() {
                        master.role.is_ho() || master.role == Role::Vo
                    } else {
                        master.role == Role::Vo
                    };
                    if !ok {
                        let want = if role.is_agent() {
                            "an HO or the VO"
                        } else {
                            "the VO"
                        };
                        return Err(self.err(at, ctx, Some("master"), format!("the master of a node of kind {role} must be {want}, but {m:?} is of kind {}", master.role)));
                    }
                }
            }
        }
        // The kind rules already forbid cycles (agent -> HO -> VO); this guards them anyway,
        // so a later relaxation of those rules cannot make a tree that never reaches the VO.
        for n in &self.nodes {
            let mut at = n;
            for _ in 0..=self.nodes.len() {
                match at.master.as_deref().and_then(|m| names.get(m)) {
                    Some(next) => at = next,
                    None => break,
                }
            }
            if at.master.is_some() {
                return Err(self.err(
                    line_of(n.line, "master"),
                    self.node_ctx(&n.name),
                    Some("master"),
                    "masters form a cycle".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The line of `field = ...` inside the table that starts at `def_line` (TOML or INI), or
/// the table's own line when the field is not written there.
fn field_line(text: &str, def_line: usize, field: &str) -> usize {
    for (i, line) in text.lines().enumerate().skip(def_line) {
        let t = line.trim_start();
        if t.starts_with('[') {
            break;
        }
        if let Some(rest) = t.get(..field.len()) {
            if rest.eq_ignore_ascii_case(field)
                && t[field.len()..].trim_start().starts_with(['=', ':'])
            {
                return i + 1;
            }
        }
    }
    def_line
}

#[cfg(test)]
mod tests;
