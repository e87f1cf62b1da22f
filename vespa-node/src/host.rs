//! Which machines of a topology this host is: one topology file serves every machine, and a
//! `run` without `--machine` or `--node` runs the nodes of the machines that are this host.
//!
//! As in 2014 (where a node was local when its `Location` was the host name), a machine is
//! this host when its name is the host's name; it also is when its address is one of the
//! host's own addresses, which is what a node needs to listen there anyway.
//!
//! Loopback: every host has 127.0.0.1 and ::1, so a loopback address says nothing about
//! which host a machine is in a topology that spans hosts. A loopback machine therefore
//! matches by address only when every machine of the topology is on loopback: the whole
//! tree is on one host (the embedded default, a test bench), and that host is this one.
//! Otherwise a loopback machine is this host only by its name.

use std::fmt;
use std::net::IpAddr;

use crate::config::{Machine, Topology};

/// What identifies this host: its name and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThisHost {
    /// The host name (`gethostname`), as the kernel holds it (the UTS namespace's).
    pub name: String,
    /// Every address of the host's interfaces, with the interface that holds it, in the
    /// kernel's order.
    pub addrs: Vec<(IpAddr, String)>,
}

impl ThisHost {
    /// Reads the host name and the interfaces' addresses of this process's namespaces.
    pub fn detect() -> Result<ThisHost, String> {
        let name = nix::unistd::gethostname()
            .map_err(|e| format!("reading the host name: {e}"))?
            .to_string_lossy()
            .into_owned();
        let mut addrs = Vec::new();
        for ifa in
            nix::ifaddrs::getifaddrs().map_err(|e| format!("listing the host's addresses: {e}"))?
        {
            let Some(a) = ifa.address else { continue };
            let ip = if let Some(v4) = a.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = a.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            if !addrs.iter().any(|(known, _)| *known == ip) {
                addrs.push((ip, ifa.interface_name));
            }
        }
        Ok(ThisHost { name, addrs })
    }

    /// True when `name` is this host's name: the same, or its first label (`web` for
    /// `web.example.org`), ignoring case as DNS does.
    fn is_named(&self, name: &str) -> bool {
        let short = self.name.split('.').next().unwrap_or_default();
        name.eq_ignore_ascii_case(&self.name)
            || (!short.is_empty() && name.eq_ignore_ascii_case(short))
    }

    /// The interface holding `ip`, when this host has that address.
    fn holds(&self, ip: IpAddr) -> Option<&str> {
        self.addrs
            .iter()
            .find(|(a, _)| *a == ip)
            .map(|(_, i)| i.as_str())
    }

    /// The addresses, for messages (`10.0.0.1 (eth0), 127.0.0.1 (lo)`).
    pub fn addr_list(&self) -> String {
        if self.addrs.is_empty() {
            return "none".into();
        }
        self.addrs
            .iter()
            .map(|(a, i)| format!("{a} ({i})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why a machine was found to be this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// Its name is the host name.
    HostName(String),
    /// Its address is held by one of the host's interfaces.
    Address {
        /// The address.
        addr: IpAddr,
        /// The interface that holds it.
        iface: String,
        /// It is a loopback address, which counts because the whole topology is on loopback.
        loopback: bool,
    },
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::HostName(n) => write!(f, "its name is the host name {n:?}"),
            Why::Address {
                addr,
                iface,
                loopback: false,
            } => write!(f, "its address {addr} is on this host's {iface}"),
            Why::Address { addr, iface, .. } => write!(
                f,
                "its address {addr} is on this host's {iface} (loopback, and every machine of the topology is on loopback)"
            ),
        }
    }
}

/// A machine found to be this host, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The machine's name.
    pub machine: String,
    /// Every reason that holds (its name, its address, or both).
    pub why: Vec<Why>,
}

impl fmt::Display for Matched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why: Vec<String> = self.why.iter().map(Why::to_string).collect();
        write!(
            f,
            "this host is machine {:?}: {}",
            self.machine,
            why.join("; and ")
        )
    }
}

/// The machines of `topo` that are `host`, in file order; an error naming the host name and
/// the addresses tried when none is.
pub fn machines_of(topo: &Topology, host: &ThisHost) -> Result<Vec<Matched>, String> {
    let all_loopback = topo.machines.iter().all(|m| m.address.is_loopback());
    let reasons = |m: &Machine| {
        let mut why = Vec::new();
        if host.is_named(&m.name) {
            why.push(Why::HostName(host.name.clone()));
        }
        let loopback = m.address.is_loopback();
        if let Some(iface) = host.holds(m.address).filter(|_| !loopback || all_loopback) {
            why.push(Why::Address {
                addr: m.address,
                iface: iface.to_string(),
                loopback,
            });
        }
        why
    };
    let found: Vec<Matched> = topo
        .machines
        .iter()
        .filter_map(|m| {
            let why = reasons(m);
            (!why.is_empty()).then(|| Matched {
                machine: m.name.clone(),
                why,
            })
        })
        .collect();
    if found.is_empty() {
        let machines: Vec<String> = topo
            .machines
            .iter()
            .map(|m| format!("{} ({})", m.name, m.address))
            .collect();
        return Err(format!(
            "{}: no machine of the topology is this host: tried the host name {:?} and the addresses {} against the machines {}; run on one of them, or name the machine (--machine) or the nodes (--node)",
            topo.source,
            host.name,
            host.addr_list(),
            machines.join(", ")
        ));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, addrs: &[(&str, &str)]) -> ThisHost {
        ThisHost {
            name: name.into(),
            addrs: addrs
                .iter()
                .map(|(a, i)| (a.parse().expect("ip"), i.to_string()))
                .collect(),
        }
    }

    const THREE: &str = r#"
[[machine]]
name = "vohost"
address = "10.1.0.1"
[[machine]]
name = "hohost"
address = "10.1.0.2"
[[machine]]
name = "lab"
address = "127.0.0.1"
[[node]]
name = "VO"
kind = "vo"
location = "vohost"
port = 4150
"#;

    fn three() -> Topology {
        Topology::from_toml("three.toml", THREE).expect("valid")
    }

    #[test]
    fn a_machine_is_this_host_by_its_name_or_by_its_address() {
        let t = three();
        let by_name = host("VOHOST.example.org", &[("127.0.0.1", "lo")]);
        let m = machines_of(&t, &by_name).expect("matched");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].machine, "vohost");
        assert_eq!(m[0].why, [Why::HostName("VOHOST.example.org".into())]);
        assert!(m[0].to_string().contains("host name"), "{}", m[0]);

        let by_addr = host("box-17", &[("127.0.0.1", "lo"), ("10.1.0.2", "veth0")]);
        let m = machines_of(&t, &by_addr).expect("matched");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].machine, "hohost");
        assert_eq!(
            m[0].to_string(),
            "this host is machine \"hohost\": its address 10.1.0.2 is on this host's veth0"
        );

        let both = host("hohost", &[("10.1.0.2", "eth0")]);
        assert_eq!(machines_of(&t, &both).expect("matched")[0].why.len(), 2);
    }

    #[test]
    fn loopback_matches_by_address_only_when_the_whole_topology_is_on_loopback() {
        // In a topology that spans hosts, every host has 127.0.0.1: it says nothing.
        let e = machines_of(
            &three(),
            &host("elsewhere", &[("127.0.0.1", "lo"), ("::1", "lo")]),
        )
        .expect_err("no match");
        assert!(
            e.starts_with("three.toml: no machine of the topology is this host"),
            "{e}"
        );
        assert!(e.contains("\"elsewhere\""), "{e}");
        assert!(e.contains("127.0.0.1 (lo), ::1 (lo)"), "{e}");
        assert!(
            e.contains("vohost (10.1.0.1), hohost (10.1.0.2), lab (127.0.0.1)"),
            "{e}"
        );
        // ... but its name still says it.
        let m = machines_of(&three(), &host("lab", &[("127.0.0.1", "lo")])).expect("by name");
        assert_eq!(m[0].machine, "lab");

        // The embedded default is on loopback only: any host with 127.0.0.1 is its machine.
        let d = Topology::embedded_default();
        let m = machines_of(
            &d,
            &host("anything", &[("127.0.0.1", "lo"), ("192.0.2.7", "eth0")]),
        )
        .expect("the default's machine is this host");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].machine, "localhost");
        assert!(m[0].to_string().contains("loopback"), "{}", m[0]);
    }

    #[test]
    fn detect_reads_this_hosts_name_and_loopback() {
        let h = ThisHost::detect().expect("detect");
        assert!(!h.name.is_empty());
        // Loopback is up wherever the tests run (the runtime's own tests connect to it).
        assert!(
            h.addrs.iter().any(|(a, _)| a.is_loopback()),
            "{}",
            h.addr_list()
        );
    }
}
