//! Network namespaces and veth links for tests.

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
    thread,
};

use nix::sched::{setns, CloneFlags};

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = crate::unique(prefix);
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// `ip netns exec <ns> ...`
    pub fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Runs `f` on a new thread inside this namespace. Sockets and threads created by `f`
    /// belong to the namespace; the caller's thread is untouched.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        self.spawn(f).join().expect("thread inside the namespace panicked")
    }

    pub fn spawn<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> thread::JoinHandle<R> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let fd = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// One end of a veth link.
#[derive(Clone, Debug)]
pub struct End {
    pub ifname: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// Two namespaces joined by a veth link with IPv4 10.77.<subnet>.{1,2}/24 and IPv6
/// fd77:<subnet>::{1,2}/64 (no DAD, no router solicitations, so the link is quiet).
pub struct Link {
    pub a_ns: Netns,
    pub b_ns: Netns,
    pub a: End,
    pub b: End,
}

impl Link {
    pub fn new() -> Link {
        let a_ns = Netns::new("vta");
        let b_ns = Netns::new("vtb");
        let (a, b) = veth(&a_ns, &b_ns);
        Link { a_ns, b_ns, a, b }
    }
}

impl Default for Link {
    fn default() -> Self {
        Self::new()
    }
}

/// Creates a veth link between two namespaces and configures both ends.
pub fn veth(a_ns: &Netns, b_ns: &Netns) -> (End, End) {
    let net = crate::subnet();
    let a_if = crate::unique("va");
    let b_if = crate::unique("vb");
    sh(&["ip", "link", "add", &a_if, "netns", &a_ns.name, "type", "veth", "peer", "name", &b_if, "netns", &b_ns.name]);
    let mk = |ns: &Netns, ifname: &str, host: u8| {
        for (k, v) in [("accept_ra", "0"), ("router_solicitations", "0"), ("dad_transmits", "0")] {
            ns.exec(&["sysctl", "-qw", &format!("net.ipv6.conf.{ifname}.{k}={v}")]);
        }
        let v4 = Ipv4Addr::new(10, 77, net, host);
        let v6: Ipv6Addr = format!("fd77:{net}::{host}").parse().expect("valid v6");
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", ifname]);
        ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"]);
        ns.ip(&["link", "set", ifname, "up"]);
        End { ifname: ifname.to_string(), v4, v6 }
    };
    (mk(a_ns, &a_if, 1), mk(b_ns, &b_if, 2))
}
