//! What a node is told before it runs: its name, role, master, tunables and link protection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Role, Settings, Topology};
use crate::transport::Security;

/// Where a node's master is.
#[derive(Debug, Clone)]
pub struct MasterAddr {
    /// The master's node name (checked against the name it proves in the handshake).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Its name.
    pub name: String,
    /// What it is.
    pub role: Role,
    /// Its master (`None` for the VO).
    pub master: Option<MasterAddr>,
    /// Tunables.
    pub settings: Settings,
    /// VO: alert journal file.
    pub journal: Option<PathBuf>,
    /// Link protection.
    pub security: Security,
    /// How long a stopping node waits for its master to acknowledge its queue.
    pub flush_timeout: Duration,
}

impl NodeSpec {
    /// A spec with default settings.
    pub fn new(name: &str, role: Role, master: Option<MasterAddr>, security: Security) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            role,
            master,
            settings: Settings::default(),
            journal: None,
            security,
            flush_timeout: Duration::from_secs(5),
        }
    }

    /// The spec of node `name` of a validated topology.
    pub fn from_topology(topo: &Topology, name: &str, security: Security) -> Option<NodeSpec> {
        let def = topo.node(name)?;
        let master = def
            .master
            .as_deref()
            .and_then(|m| topo.node(m))
            .map(|m| MasterAddr {
                name: m.name.clone(),
                addr: topo.listen_addr(m),
            });
        let mut spec = NodeSpec::new(name, def.role, master, security);
        spec.settings = topo.settings.clone();
        spec.journal = def.journal.clone();
        Some(spec)
    }

    /// Tests: bandwidth agent `a1` whose master, `HO`, is never dialled for real.
    #[cfg(test)]
    pub(crate) fn test_agent(security: Security) -> NodeSpec {
        use crate::config::AgentKind;
        let master = MasterAddr {
            name: "HO".into(),
            addr: "127.0.0.1:9".parse().expect("addr"),
        };
        NodeSpec::new(
            "a1",
            Role::Agent(AgentKind::Bandwidth),
            Some(master),
            security,
        )
    }
}
