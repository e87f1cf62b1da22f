//! What a node is told before it runs: its name, role, master, tunables and link protection.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Role, Settings, Topology};
use crate::transport::Security;
use vespa_proto::NodeKind;

/// A child the topology puts under a node.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildSpec {
    /// The kind it must register with.
    pub kind: NodeKind,
    /// Its subtree, itself included: the only origins and path entries its alerts may carry,
    /// and the only nodes calls are routed to through it.
    pub subtree: BTreeSet<String>,
    /// The address of its machine, which it usually connects from (handshake slots are
    /// reserved for these addresses).
    pub addr: Option<IpAddr>,
}

impl ChildSpec {
    /// The children the topology `topo` puts under `name`.
    pub fn of(topo: &Topology, name: &str) -> BTreeMap<String, ChildSpec> {
        topo.children_of(name)
            .map(|c| {
                let mut subtree = BTreeSet::new();
                let mut todo = vec![c.name.as_str()];
                while let Some(n) = todo.pop() {
                    if subtree.insert(n.to_string()) {
                        todo.extend(topo.children_of(n).map(|d| d.name.as_str()));
                    }
                }
                let spec = ChildSpec {
                    kind: c.role.node_kind(),
                    subtree,
                    addr: topo.machine(&c.location).map(|m| m.address),
                };
                (c.name.clone(), spec)
            })
            .collect()
    }
}

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
    /// Nodes with a master: the spool of its own unacknowledged alerts (see
    /// [`crate::spool`]); `None`: they are kept in memory only.
    pub spool: Option<PathBuf>,
    /// Link protection.
    pub security: Security,
    /// How long a stopping node waits for its master to acknowledge its queue.
    pub flush_timeout: Duration,
    /// The children the topology puts under this node, by name: a `Register` from any other
    /// name or with another kind is refused, an alert from a child must come from its
    /// subtree, and calls are routed by these subtrees. `None` (a node built by hand, for
    /// embedding or tests) accepts any child, and every map keyed by origin is then bounded
    /// only by what its children send.
    pub children: Option<BTreeMap<String, ChildSpec>>,
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
            spool: None,
            security,
            flush_timeout: Duration::from_secs(5),
            children: None,
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
        if spec.master.is_some() {
            spec.spool = topo
                .settings
                .spool_dir
                .as_deref()
                .map(|d| crate::spool::file_of(d, name));
        }
        spec.children = Some(ChildSpec::of(topo, name));
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
