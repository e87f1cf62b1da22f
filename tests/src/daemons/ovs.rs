//! Open vSwitch (userspace datapath) inside a private network namespace, with hosts in their
//! own namespaces attached through veth pairs, and a UDP stream between two hosts to measure
//! whether traffic passes.
//!
//! The daemons run inside the namespace (`ip netns exec`) so that the datapath's `ovs-netdev`
//! device and the bridge devices never appear on the host, and concurrent tests each have
//! their own switch. Their control sockets are unix sockets in a private directory, reachable
//! from anywhere; the OpenFlow controller must listen inside the same namespace (see
//! [`SdnLab`]). The userspace datapath does not complete partial checksums, so checksum
//! offload is turned off on the hosts' ends (`ethtool -K tx off`), or every UDP datagram
//! arrives with a bad checksum.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::libvirt::unique_mac;
use super::osken::OsKen;
use vespa_testkit::try_wait_until;

use super::Proc;
use crate::cmd::{have, run};
use crate::net::Netns;

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// ovsdb-server + ovs-vswitchd in their own namespace and directory.
pub struct Ovs {
    // Drop order: the daemons (after the bridges are deleted in Drop), then the namespace,
    // then the directory.
    vswitchd: Proc,
    ovsdb: Proc,
    pub ns: Netns,
    dir: tempfile::TempDir,
}

impl Ovs {
    /// What [`Ovs::start`] needs of the machine: Err names the first thing missing.
    pub fn prerequisites() -> Result<(), String> {
        for p in [
            "ovsdb-tool",
            "ovsdb-server",
            "ovs-vswitchd",
            "ovs-vsctl",
            "ovs-ofctl",
            "ethtool",
        ] {
            if !have(p) {
                return Err(format!("{p} not installed (cargo xtask setup)"));
            }
        }
        if !Path::new(SCHEMA).exists() || !Path::new("/dev/net/tun").exists() {
            return Err(format!("{SCHEMA} or /dev/net/tun missing"));
        }
        Ok(())
    }

    pub fn start() -> Result<Ovs, String> {
        Ovs::prerequisites()?;
        let dir = tempfile::Builder::new()
            .prefix("vespa-ovs")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let d = dir.path().to_str().ok_or("non-UTF-8 temp dir")?.to_string();
        let env = [
            ("OVS_RUNDIR", d.as_str()),
            ("OVS_LOGDIR", d.as_str()),
            ("OVS_DBDIR", d.as_str()),
        ];
        let ns = Netns::new("ovs");
        run(&["ovsdb-tool", "create", &format!("{d}/conf.db"), SCHEMA])?;
        let log = dir.path().join("daemons.log");
        let mut ovsdb = Proc::spawn(
            "ovsdb-server",
            &[
                "ip",
                "netns",
                "exec",
                &ns.name,
                "ovsdb-server",
                &format!("{d}/conf.db"),
                &format!("--remote=punix:{d}/db.sock"),
                &format!("--unixctl={d}/ovsdb.ctl"),
                &format!("--log-file={d}/ovsdb.log"),
            ],
            &log,
            &env,
        )?;
        let db = format!("--db=unix:{d}/db.sock");
        try_wait_until("ovsdb-server's socket", Duration::from_secs(10), || {
            ovsdb.alive()?;
            run(&["ovs-vsctl", &db, "--no-wait", "init"])
        })
        .map_err(|e| e.to_string())?;
        let mut vswitchd = Proc::spawn(
            "ovs-vswitchd",
            &[
                "ip",
                "netns",
                "exec",
                &ns.name,
                "ovs-vswitchd",
                &format!("unix:{d}/db.sock"),
                &format!("--unixctl={d}/vswitchd.ctl"),
                &format!("--log-file={d}/vswitchd.log"),
            ],
            &log,
            &env,
        )?;
        let ctl = format!("{d}/vswitchd.ctl");
        try_wait_until("ovs-vswitchd", Duration::from_secs(10), || {
            vswitchd.alive()?;
            run(&["ovs-appctl", "-t", &ctl, "version"])
        })
        .map_err(|e| e.to_string())?;
        Ok(Ovs {
            vswitchd,
            ovsdb,
            ns,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ovs-vsctl` on this instance (waits for ovs-vswitchd to apply changes, 10 s at most).
    pub fn vsctl(&self, args: &[&str]) -> Result<String, String> {
        let db = format!("--db=unix:{}/db.sock", self.dir.path().display());
        let mut v = vec!["ovs-vsctl", &db, "--timeout=10"];
        v.extend_from_slice(args);
        run(&v)
    }

    /// A bridge on the userspace datapath, OpenFlow 1.3 only, `fail_mode=secure` (no
    /// forwarding without the controller), connected to `controller` (`tcp:127.0.0.1:6653`).
    pub fn add_bridge(&self, name: &str, dpid: u64, controller: &str) -> Result<(), String> {
        let dpid = format!("other-config:datapath-id={dpid:016x}");
        self.vsctl(&[
            "add-br",
            name,
            "--",
            "set",
            "bridge",
            name,
            "datapath_type=netdev",
            "protocols=OpenFlow13",
            &dpid,
            "fail_mode=secure",
            "--",
            "set-controller",
            name,
            controller,
        ])
        .map(drop)
    }

    /// The bridge's OpenFlow management socket (for `ovs-ofctl`).
    pub fn mgmt(&self, bridge: &str) -> String {
        format!("unix:{}/{bridge}.mgmt", self.dir.path().display())
    }

    /// `ovs-ofctl -O OpenFlow13 dump-flows` of the bridge.
    pub fn dump_flows(&self, bridge: &str) -> Result<String, String> {
        run(&[
            "ovs-ofctl",
            "-O",
            "OpenFlow13",
            "dump-flows",
            &self.mgmt(bridge),
        ])
    }

    /// `ovs-ofctl -O OpenFlow13 <cmd> <bridge's socket> <args...>` (e.g. `del-flows`,
    /// `add-flow`): what the tests do to the switch behind VESPA's back.
    pub fn ofctl(&self, bridge: &str, cmd: &str, args: &[&str]) -> Result<String, String> {
        let mgmt = self.mgmt(bridge);
        let mut all = vec!["ovs-ofctl", "-O", "OpenFlow13", cmd, &mgmt];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Flow lines containing `needle`.
    pub fn flows_matching(&self, bridge: &str, needle: &str) -> Vec<String> {
        self.dump_flows(bridge)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(|l| l.trim().to_string())
            .collect()
    }

    /// Waits until some flow line contains `needle` (or, `present == false`, none does).
    pub fn wait_flow(
        &self,
        bridge: &str,
        needle: &str,
        present: bool,
        timeout: Duration,
    ) -> Result<(), String> {
        let what = format!(
            "a flow with {needle:?} to be {}",
            if present { "present" } else { "gone" }
        );
        try_wait_until(&what, timeout, || {
            let flows = self.flows_matching(bridge, needle);
            if flows.is_empty() != present {
                Ok(())
            } else {
                Err(flows)
            }
        })
        .map(drop)
        .map_err(|e| e.to_string())
    }

    /// Attaches a host namespace to `bridge` through a veth pair; the host gets
    /// `10.88.<net>.<host>/24` and a unique MAC.
    pub fn attach_host(&self, bridge: &str, net: u8, host: u8) -> Result<Host, String> {
        let ns = Netns::new("oh");
        let port = crate::unique("op");
        let inner = crate::unique("oi");
        run(&[
            "ip",
            "link",
            "add",
            &port,
            "netns",
            &self.ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
            "netns",
            &ns.name,
        ])?;
        let mac = unique_mac();
        let ip = Ipv4Addr::new(10, 88, net, host);
        let nsn = ns.name.as_str();
        run(&["ip", "-n", nsn, "link", "set", &inner, "address", &mac])?;
        run(&[
            "ip",
            "netns",
            "exec",
            nsn,
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{inner}.disable_ipv6=1"),
        ])?;
        run(&[
            "ip",
            "-n",
            nsn,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &inner,
        ])?;
        run(&[
            "ip", "netns", "exec", nsn, "ethtool", "-K", &inner, "tx", "off",
        ])?;
        run(&["ip", "-n", nsn, "link", "set", &inner, "up"])?;
        run(&["ip", "-n", &self.ns.name, "link", "set", &port, "up"])?;
        self.vsctl(&["add-port", bridge, &port])?;
        Ok(Host {
            ns,
            ifname: inner,
            port,
            mac,
            ip,
        })
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        // Bridges first, so their devices go away with the daemons' help.
        for br in self.vsctl(&["list-br"]).unwrap_or_default().lines() {
            let _ = self.vsctl(&["--if-exists", "del-br", br.trim()]);
        }
        self.vswitchd.stop();
        self.ovsdb.stop();
    }
}

/// A host namespace attached to the switch.
pub struct Host {
    pub ns: Netns,
    pub ifname: String,
    /// The switch-side device (the OVS port).
    pub port: String,
    pub mac: String,
    pub ip: Ipv4Addr,
}

impl Host {
    /// A permanent neighbour entry, so traffic does not depend on ARP (which a MAC block
    /// also drops).
    pub fn add_neighbour(&self, other: &Host) -> Result<(), String> {
        run(&[
            "ip",
            "-n",
            &self.ns.name,
            "neigh",
            "replace",
            &other.ip.to_string(),
            "lladdr",
            &other.mac,
            "dev",
            &self.ifname,
            "nud",
            "permanent",
        ])
        .map(drop)
    }
}

/// A switch, a controller and two hosts: `h1` and `h2` on bridge `bridge` (dpid 1), os-ken
/// listening inside the switch namespace.
pub struct SdnLab {
    pub h1: Host,
    pub h2: Host,
    pub osken: OsKen,
    pub ovs: Ovs,
    pub bridge: String,
    pub dpid: u64,
}

impl SdnLab {
    /// What [`SdnLab::start`] needs of the machine (Open vSwitch, the os-ken venv), checked
    /// without starting anything: Err names the first thing missing.
    pub fn prerequisites() -> Result<(), String> {
        Ovs::prerequisites()?;
        super::osken::prerequisites()
    }

    pub fn start() -> Result<SdnLab, String> {
        let ovs = Ovs::start()?;
        let osken = OsKen::start(Some(&ovs.ns))?;
        let bridge = crate::unique("vbr");
        let dpid = 1;
        ovs.add_bridge(&bridge, dpid, &format!("tcp:127.0.0.1:{}", osken.ofp_port))?;
        let net = crate::subnet();
        let h1 = ovs.attach_host(&bridge, net, 1)?;
        let h2 = ovs.attach_host(&bridge, net, 2)?;
        h1.add_neighbour(&h2)?;
        h2.add_neighbour(&h1)?;
        osken.wait_switch(dpid, Duration::from_secs(20))?;
        Ok(SdnLab {
            h1,
            h2,
            osken,
            ovs,
            bridge,
            dpid,
        })
    }

    /// os-ken's REST base URL (valid inside the switch namespace).
    pub fn url(&self) -> String {
        format!("http://{}", self.osken.api)
    }
}

/// A continuous UDP stream from one host to another: one datagram per `gap`, every arrival
/// time recorded by the receiver. Stopped on drop.
pub struct UdpStream {
    arrivals: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub sent: Arc<std::sync::atomic::AtomicU64>,
}

impl UdpStream {
    pub fn start(from: &Host, to: &Host, gap: Duration) -> UdpStream {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let dst = std::net::SocketAddr::from((to.ip, 9999));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (a, s) = (arrivals.clone(), stop.clone());
        let rx = to.ns.spawn(move || {
            let sock = UdpSocket::bind(dst).expect("bind the UDP receiver");
            sock.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            let _ = ready_tx.send(());
            let mut buf = [0u8; 64];
            while !s.load(Ordering::Relaxed) {
                if sock.recv(&mut buf).is_ok() {
                    a.lock().expect("arrivals").push(Instant::now());
                }
            }
        });
        let _ = ready_rx.recv();
        let (s, n) = (stop.clone(), sent.clone());
        let tx = from.ns.spawn(move || {
            let sock = UdpSocket::bind("0.0.0.0:0").expect("bind the UDP sender");
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                // Errors (e.g. no route yet) are the traffic not passing: keep going.
                let _ = sock.send_to(b"vespa", dst);
                n.fetch_add(1, Ordering::Relaxed);
                next += gap;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
        UdpStream {
            arrivals,
            stop,
            threads: vec![rx, tx],
            sent,
        }
    }

    /// Datagrams received at or after `t`.
    pub fn received_since(&self, t: Instant) -> usize {
        let a = self.arrivals.lock().expect("arrivals");
        a.len() - a.partition_point(|x| *x < t)
    }

    /// The first arrival at or after `t`.
    pub fn first_arrival_since(&self, t: Instant) -> Option<Instant> {
        let a = self.arrivals.lock().expect("arrivals");
        a.get(a.partition_point(|x| *x < t)).copied()
    }

    /// The last arrival time.
    pub fn last_arrival(&self) -> Option<Instant> {
        self.arrivals.lock().expect("arrivals").last().copied()
    }

    /// Waits until `n` datagrams arrived after now.
    pub fn wait_flowing(&self, n: usize, timeout: Duration) -> Result<(), String> {
        let t = Instant::now();
        try_wait_until(&format!("{n} datagrams to arrive"), timeout, || {
            let got = self.received_since(t);
            if got >= n {
                Ok(())
            } else {
                Err(format!("{got} arrived"))
            }
        })
        .map_err(|e| e.to_string())
    }

    /// Waits until nothing has arrived for `quiet`; returns the last arrival (None if
    /// nothing arrived since `since`).
    pub fn wait_stopped(
        &self,
        since: Instant,
        quiet: Duration,
        timeout: Duration,
    ) -> Result<Option<Instant>, String> {
        try_wait_until("the stream to stop", timeout, || {
            let last = self.last_arrival();
            let quiet_since = last.map_or(since, |l| l.max(since));
            let quiet_for = Instant::now().duration_since(quiet_since);
            if quiet_for >= quiet {
                Ok(())
            } else {
                Err(format!("quiet for {quiet_for:?} only"))
            }
        })
        .map_err(|e| e.to_string())?;
        Ok(self.last_arrival().filter(|l| *l >= since))
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Watches a bridge's flow table as it changes (`ovs-ofctl monitor ... watch:`), timestamping
/// each added or deleted flow as it is reported: sub-millisecond precision where polling
/// `dump-flows` would take several milliseconds per look.
pub struct FlowMonitor {
    child: std::process::Child,
    events: Arc<Mutex<Vec<(Instant, String)>>>,
    readers: Vec<JoinHandle<()>>,
}

impl FlowMonitor {
    pub fn start(ovs: &Ovs, bridge: &str) -> Result<FlowMonitor, String> {
        use std::io::BufRead;
        // The initial reply goes to stdout (block-buffered on a pipe, hence stdbuf), the
        // updates as they happen to stderr: both are read.
        let mut child = std::process::Command::new("stdbuf")
            .args(["-oL", "ovs-ofctl", "-O", "OpenFlow13", "monitor", &ovs.mgmt(bridge), "watch:"])
            // Its own control socket goes to the private directory.
            .env("OVS_RUNDIR", ovs.dir())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("ovs-ofctl monitor: {e}"))?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut readers = Vec::new();
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().ok_or("no stdout")?);
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().ok_or("no stderr")?);
        for pipe in [out, err] {
            let (ev, ready) = (events.clone(), ready_tx.clone());
            readers.push(std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let _ = ready.send(());
                    ev.lock().expect("events").push((Instant::now(), line));
                }
            }));
        }
        // The monitor first prints the current flows ("watch:" implies "initial"): once a line
        // arrived it is subscribed.
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| "ovs-ofctl monitor printed nothing".to_string())?;
        Ok(FlowMonitor {
            child,
            events,
            readers,
        })
    }

    /// Waits for an `event=ADDED` (or DELETED) line containing `needle`, reported at or after
    /// `since`; returns when it was reported.
    pub fn wait(
        &self,
        event: &str,
        needle: &str,
        since: Instant,
        timeout: Duration,
    ) -> Result<Instant, String> {
        let tag = format!("event={event}");
        try_wait_until(&format!("{tag} with {needle}"), timeout, || {
            self.events
                .lock()
                .expect("events")
                .iter()
                .find(|(t, l)| *t >= since && l.contains(&tag) && l.contains(needle))
                .map(|(t, _)| *t)
        })
        .map_err(|e| {
            let ev = self.events.lock().expect("events");
            let tail: Vec<&str> = ev.iter().rev().take(8).map(|(_, l)| l.as_str()).collect();
            format!("{e}; last monitor lines (newest first): {tail:?}")
        })
    }
}

impl Drop for FlowMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}
