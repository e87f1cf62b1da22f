//! The firewall's lab: a hypervisor host (a namespace with a bridge) and two guests on it,
//! an attacker and a victim; on the host, a VO and a vespa-agent running a firewall agent and
//! a bandwidth agent over the guests' bridge ports. No SDN controller anywhere.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use vespa_testkit::wait_until;
use vespa_tests::net::Bridged;

use crate::kit::*;

pub const FW_PORT: u16 = 4160;

pub struct Lab {
    pub net: Bridged,
    pub tree: Arc<Tree>,
    pub pin_dir: PathBuf,
    pub vo: Option<Proc>,
}

impl Lab {
    /// The lab; `extra_nodes` are added to the topology (e.g. a connections agent), and the
    /// policy file, when given, is the VO's.
    pub fn new(tag: &str, fw_params: &str, extra_nodes: Vec<N>) -> Lab {
        let net = Bridged::new(2);
        let pin_dir = PathBuf::from("/sys/fs/bpf/vespa").join(vespa_tests::unique("t"));
        let mut nodes = vec![
            N::new("VO", "vo", None, 4150),
            N::new("fw", "agent_firewall", Some("VO"), FW_PORT)
                .extra(format!("[node.params]\n{fw_params}\n")),
            N::new("bw", "agent_bandwidth", Some("VO"), 4161),
        ];
        nodes.extend(extra_nodes);
        let settings = "heartbeat_ms = 300\nsample_interval_ms = 200\nkeep_alerts = 100000";
        let tree = Arc::new(Tree::new(
            tag,
            settings,
            &[("host", "127.0.0.1".parse().expect("ip"))],
            &nodes,
        ));
        Lab {
            net,
            tree,
            pin_dir,
            vo: None,
        }
    }

    pub fn attacker(&self) -> &vespa_tests::net::Guest {
        &self.net.guests[0]
    }

    pub fn victim(&self) -> &vespa_tests::net::Guest {
        &self.net.guests[1]
    }

    pub fn start_vo(&mut self, post: &[&str]) {
        self.vo = Some(self.tree.spawn_with(
            "vo",
            "vespa-orchestrator",
            Some(&self.net.host.name),
            &[],
            &["VO"],
            post,
        ));
    }

    /// Starts the agent on the host over the two bridge ports, pinning in the lab's directory.
    pub fn start_agent(&self, label: &str, flags: &[&str], nodes: &[&str]) -> Proc {
        self.start_agent_with(label, flags, nodes, &[])
    }

    /// [`Lab::start_agent`] with `post`, the arguments of `run` (`--metrics ADDR`).
    pub fn start_agent_with(
        &self,
        label: &str,
        flags: &[&str],
        nodes: &[&str],
        post: &[&str],
    ) -> Proc {
        let ports = format!("{},{}", self.attacker().port, self.victim().port);
        let pin = self.pin_dir.display().to_string();
        let mut pre = vec![
            "--netns",
            &self.net.host.name,
            "--mode",
            "ebpf",
            "--all-netns",
            "-i",
            &ports,
            "--pin-dir",
            &pin,
        ];
        pre.extend_from_slice(flags);
        let p = self
            .tree
            .spawn_with(label, "vespa-agent", None, &pre, nodes, post);
        let ready = vespa_testkit::try_wait_until("the firewall agent answers", WAIT, || {
            self.call("fw", "firewall_stats", &[]).ok()
        });
        if let Err(e) = ready {
            let vo = self.vo.as_ref().map(Proc::log_text).unwrap_or_default();
            panic!("{e}\nagent log:\n{}\nVO log:\n{vo}", p.log_text());
        }
        p
    }

    /// The /64 of the attacker's IPv6 address, and a second IPv6 address in that /64, added to its interface (an address rotated inside its allocation).
    pub fn attacker_v6_rotated(&self) -> (String, std::net::Ipv6Addr) {
        let a = self.attacker();
        let net64 = vespa_proto::verbs::Prefix::new(a.end.v6.into(), 64)
            .expect("a /64")
            .to_string();
        let mut o = a.end.v6.octets();
        o[15] = 0x99;
        let rotated = std::net::Ipv6Addr::from(o);
        a.ns.ip(&[
            "addr",
            "add",
            &format!("{rotated}/64"),
            "dev",
            &a.end.ifname,
            "nodad",
        ]);
        (net64, rotated)
    }

    /// A UDP stream from the attacker's IPv4 address to the victim's `port`, flowing.
    pub fn attack_stream(&self, port: u16) -> Stream {
        let (a, v) = (self.attacker(), self.victim());
        let s = Stream::start(
            &a.ns,
            a.end.v4.into(),
            &v.ns,
            SocketAddr::new(v.end.v4.into(), port),
        );
        s.wait_flowing(50);
        s
    }

    /// A verb on a node, from inside the host namespace (through the VO).
    pub fn call(&self, target: &str, verb: &str, args: &[&str]) -> Result<String, String> {
        let (t, target, verb) = (self.tree.clone(), target.to_string(), verb.to_string());
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.net.host.run(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            t.call(&target, &verb, &a)
        })
    }

    pub fn json(&self, target: &str, verb: &str, args: &[&str]) -> Value {
        let text = self
            .call(target, verb, args)
            .unwrap_or_else(|e| panic!("{target} {verb} {args:?}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{verb}: {e}: {text}"))
    }

    /// The blocks the firewall lists.
    pub fn blocks(&self) -> Vec<Value> {
        self.json("fw", "status_hackers", &[])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The block of `target`, if listed.
    pub fn block_of(&self, target: &str) -> Option<Value> {
        self.blocks()
            .into_iter()
            .find(|b| b["target"].as_str() == Some(target))
    }

    /// Packets the bandwidth agent counted entering the host from `port` (what its guest sent).
    pub fn rx_packets(&self, port: &str) -> u64 {
        let ifaces = self.json("bw", "interfaces", &[]);
        ifaces
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"].as_str() == Some(port)))
            .and_then(|i| i["rx_packets"].as_u64())
            .unwrap_or_else(|| panic!("no counters for {port}: {ifaces}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A failed test shows the last lines of every process's log.
        if std::thread::panicking() {
            if let Ok(dir) = std::fs::read_dir(&self.tree.scratch.dir) {
                for f in dir
                    .flatten()
                    .filter(|f| f.path().extension().is_some_and(|e| e == "log"))
                {
                    let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    eprintln!("--- {} (last lines)", f.path().display());
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
        vespa_tests::cmd::sh(&["rm", "-rf", &self.pin_dir.display().to_string()]);
    }
}

/// A UDP stream from one guest to another: a datagram every millisecond until dropped,
/// counting what was sent and what arrived.
pub struct Stream {
    pub sent: Arc<AtomicU64>,
    pub received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Stream {
    /// From `from` (bound to `src`) to `to`, inside their namespaces.
    pub fn start(
        from: &vespa_tests::net::Netns,
        src: IpAddr,
        to_ns: &vespa_tests::net::Netns,
        to: SocketAddr,
    ) -> Stream {
        let (sent, received, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (r, s) = (received.clone(), stop.clone());
        let sock = to_ns.run(move || UdpSocket::bind(to).expect("bind the receiver"));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if sock.recv(&mut buf).is_ok() {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let (n, s) = (sent.clone(), stop.clone());
        let sock = from.run(move || {
            let s = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind the sender");
            s.connect(to).expect("connect");
            s
        });
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if sock.send(&[0x5a; 200]).is_ok() {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Stream {
            sent,
            received,
            stop,
        }
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits until `n` more datagrams are sent, and returns how many of them arrived (after
    /// letting the few in flight when it was called land).
    pub fn arrivals_over_next(&self, n: u64) -> u64 {
        let settle = self.sent() + 5;
        wait_until("datagrams sent", WAIT, || {
            (self.sent() >= settle).then_some(())
        });
        let (s0, r0) = (self.sent(), self.received());
        wait_until("datagrams sent", WAIT, || {
            (self.sent() >= s0 + n).then_some(())
        });
        self.received() - r0
    }

    /// Waits until datagrams arrive again (at least `n` more).
    pub fn wait_flowing(&self, n: u64) {
        let r0 = self.received();
        wait_until("datagrams arriving", WAIT, || {
            (self.received() >= r0 + n).then_some(())
        });
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A policy file whose only actuator is the firewall agent `fw` (blocks through `sdn`
/// too), with one `syn_rate` rule keyed by remote: `rule` gives its thresholds and the rest
/// (`above`, `below`, `calm_s`, ..., `ladder`).
pub fn syn_policy(rule: &str) -> String {
    format!(
        "[actuators]\nsdn = \"fw\"\nlibvirt = \"none\"\nquarantine = \"none\"\nav = \"none\"\n\
         hypervisor = \"none\"\nfirewall = \"fw\"\n\n\
         [[rule]]\nname = \"syn-flood\"\nmetric = \"syn_rate\"\nkey = \"remote\"\naggregate = \"max\"\n\
         window_s = 1\n{rule}\n"
    )
}
