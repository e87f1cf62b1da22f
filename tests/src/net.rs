//! Network namespaces and veth links for tests, running code inside a namespace, and a TCP
//! port forward into one.

use std::{
    fs::File,
    io,
    net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    sync::Arc,
    thread,
    time::Duration,
};

use nix::sched::{setns, CloneFlags};

use crate::cmd::{run, sh};

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

    /// The hardware address of `ifname` in this namespace.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6], String> {
        let out = crate::cmd::run(&["ip", "-n", &self.name, "-j", "link", "show", "dev", ifname])?;
        let text = serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v[0]["address"].as_str().map(str::to_string))
            .ok_or_else(|| format!("no hardware address for {ifname}: {out}"))?;
        let mut mac = [0u8; 6];
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("{ifname}: hardware address {text}"));
        }
        for (m, p) in mac.iter_mut().zip(parts) {
            *m = u8::from_str_radix(p, 16).map_err(|e| format!("{ifname}: {text}: {e}"))?;
        }
        Ok(mac)
    }

    /// Runs `f` on a new thread inside this namespace. Sockets and threads created by `f`
    /// belong to the namespace; the caller's thread is untouched.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        self.spawn(f)
            .join()
            .expect("thread inside the namespace panicked")
    }

    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> thread::JoinHandle<R> {
        let name = self.name.clone();
        thread::spawn(move || {
            enter(&name).unwrap_or_else(|e| panic!("{e}"));
            f()
        })
    }
}

/// Moves the calling thread into the network namespace `name` (`/run/netns/<name>`).
fn enter(name: &str) -> io::Result<()> {
    let path = format!("/run/netns/{name}");
    let fd = File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|e| io::Error::other(format!("setns {path}: {e}")))
}

/// Runs `f` on a new thread inside the network namespace `name` (like [`Netns::run`], for a
/// namespace this code does not own), panicking when it cannot be entered.
pub fn in_netns<R: Send + 'static>(name: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    try_in_netns(name, f).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `f` on a new thread inside the network namespace `name`, which this code need not
/// own; Err when the namespace cannot be entered (or `f` panicked).
pub fn try_in_netns<R: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> io::Result<R> {
    let name = name.to_string();
    thread::spawn(move || enter(&name).map(|()| f()))
        .join()
        .map_err(|_| io::Error::other("thread inside the namespace panicked"))?
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
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
    try_veth(a_ns, b_ns).unwrap_or_else(|e| panic!("{e}"))
}

/// [`veth`], with the failing command's output as the error.
pub fn try_veth(a_ns: &Netns, b_ns: &Netns) -> Result<(End, End), String> {
    let net = crate::subnet();
    let a_if = crate::unique("va");
    let b_if = crate::unique("vb");
    run(&[
        "ip", "link", "add", &a_if, "netns", &a_ns.name, "type", "veth", "peer", "name", &b_if,
        "netns", &b_ns.name,
    ])?;
    let mk = |ns: &Netns, ifname: &str, host: u8| -> Result<End, String> {
        for (k, v) in [
            ("accept_ra", "0"),
            ("router_solicitations", "0"),
            ("dad_transmits", "0"),
        ] {
            run(&[
                "ip",
                "netns",
                "exec",
                &ns.name,
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{ifname}.{k}={v}"),
            ])?;
        }
        let v4 = Ipv4Addr::new(10, 77, net, host);
        let v6: Ipv6Addr = format!("fd77:{net}::{host}")
            .parse()
            .map_err(|e| format!("fd77:{net}::{host}: {e}"))?;
        run(&[
            "ip",
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{v4}/24"),
            "dev",
            ifname,
        ])?;
        run(&[
            "ip",
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            ifname,
            "nodad",
        ])?;
        run(&["ip", "-n", &ns.name, "link", "set", ifname, "up"])?;
        Ok(End {
            ifname: ifname.to_string(),
            v4,
            v6,
        })
    };
    Ok((mk(a_ns, &a_if, 1)?, mk(b_ns, &b_if, 2)?))
}

/// A TCP port forward: connections accepted on a listener of the caller's namespace are
/// relayed to `target` inside another network namespace. It makes a service that listens on
/// a namespace's own loopback (the VO's dashboard in `vespa-demo`) reachable from the host's
/// loopback without giving the namespace a route to the host. Stops accepting on drop;
/// relayed connections end when either side closes.
pub struct Forward {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Forward {
    /// Relays every connection accepted on `listener` to `target` inside namespace `ns`.
    pub fn start(listener: TcpListener, ns: &str, target: SocketAddr) -> io::Result<Forward> {
        let local = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (s, ns) = (stop.clone(), ns.to_string());
        let accept = thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let ns = ns.clone();
                thread::spawn(move || {
                    // The socket keeps the namespace it was made in, whichever thread uses it.
                    let upstream = try_in_netns(&ns, move || {
                        TcpStream::connect_timeout(&target, Duration::from_secs(5))
                    });
                    if let Ok(Ok(upstream)) = upstream {
                        splice(client, upstream);
                    }
                });
            }
        });
        Ok(Forward {
            local,
            stop,
            accept: Some(accept),
        })
    }

    /// The address the forward accepts on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.local, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Copies both directions between two connections until both are done, passing each
/// half-close on.
fn splice(a: TcpStream, b: TcpStream) {
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let (mut a, mut b) = (a, b);
    let up = thread::spawn(move || {
        let _ = io::copy(&mut a, &mut b2);
        let _ = b2.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut b, &mut a2);
    let _ = a2.shutdown(Shutdown::Write);
    let _ = up.join();
}

/// A host joined to its guests through a bridge, as a hypervisor is to its VMs: a "host"
/// namespace with a bridge, and one namespace per guest linked to it by a veth pair whose host
/// end is a bridge port (the guest's "tap"). Guests get 10.77.<subnet>.<i+1>/24 and
/// fd77:<subnet>::<i+1>/64; the host and its bridge have no address. Everything is removed on
/// drop.
pub struct Bridged {
    pub host: Netns,
    pub guests: Vec<Guest>,
}

/// One guest of a [`Bridged`] host.
pub struct Guest {
    pub ns: Netns,
    /// Its port on the host's bridge (the host end of its veth).
    pub port: String,
    /// Its own end, with its addresses.
    pub end: End,
}

impl Bridged {
    pub fn new(guests: usize) -> Bridged {
        Bridged::with_queues(guests, 1)
    }

    /// [`Bridged::new`] with `queues` receive and transmit queues on each veth end, as a
    /// multi-queue NIC has: native XDP on veth then runs one ring per sending CPU.
    pub fn with_queues(guests: usize, queues: usize) -> Bridged {
        let net = crate::subnet();
        let host = Netns::new("vfh");
        host.ip(&["link", "add", "br0", "type", "bridge"]);
        host.ip(&["link", "set", "br0", "up"]);
        let mut out = Vec::new();
        for i in 0..guests {
            let ns = Netns::new("vfg");
            let port = crate::unique("vp");
            let inner = crate::unique("vg");
            let q = queues.to_string();
            let mq: &[&str] = if queues > 1 {
                &["numtxqueues", &q, "numrxqueues", &q]
            } else {
                &[]
            };
            let mut add = vec!["ip", "link", "add", &port];
            add.extend_from_slice(mq);
            add.extend(["netns", &host.name, "type", "veth", "peer", "name", &inner]);
            add.extend_from_slice(mq);
            add.extend(["netns", &ns.name]);
            sh(&add);
            for (k, v) in [
                ("accept_ra", "0"),
                ("router_solicitations", "0"),
                ("dad_transmits", "0"),
            ] {
                ns.exec(&["sysctl", "-qw", &format!("net.ipv6.conf.{inner}.{k}={v}")]);
            }
            let host_part = (i + 1) as u8;
            let v4 = Ipv4Addr::new(10, 77, net, host_part);
            let v6: Ipv6Addr = format!("fd77:{net}::{host_part}")
                .parse()
                .unwrap_or_else(|e| panic!("fd77:{net}::{host_part}: {e}"));
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", &inner]);
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", &inner, "nodad"]);
            ns.ip(&["link", "set", &inner, "up"]);
            host.ip(&["link", "set", &port, "master", "br0"]);
            host.ip(&["link", "set", &port, "up"]);
            out.push(Guest {
                ns,
                port,
                end: End {
                    ifname: inner,
                    v4,
                    v6,
                },
            });
        }
        Bridged { host, guests: out }
    }
}
