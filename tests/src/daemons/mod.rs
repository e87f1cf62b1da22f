//! Real daemons for the actuator tests, started by the tests themselves (there is no systemd
//! on these machines) in private directories, on loopback, unix sockets or private network
//! namespaces, and stopped when their guard drops.
//!
//! - [`libvirt`]: one libvirtd (+ virtlogd) per test process, reused if one already runs;
//!   KVM domains with an `<interface type='ethernet'>` and no guest OS; a second libvirtd per
//!   test in its own mount namespace, the quarantine hypervisor live migration goes to.
//! - [`ovs`]: an Open vSwitch userspace datapath inside a network namespace, hosts in two
//!   more namespaces, UDP traffic counted between them.
//! - [`osken`]: os-ken 1.4.1's `ofctl_rest` + `simple_switch_13` from the venv `cargo xtask
//!   setup` makes.
//! - [`clamd`]: clamd with the one-line EICAR signature database.
//! - [`nats`]: nats-server on a free loopback port (the VO's NATS output and its subscribers).
//! - [`postgres`]: a PostgreSQL server on a unix socket in a private directory (the decision
//!   ledger on PostgreSQL).
//! - [`floodlight_stub`], [`pox_stub`]: in-process servers reproducing the documented
//!   request/reply shapes of Floodlight's REST API and POX's messenger, recording requests.

pub mod clamd;
pub mod floodlight_stub;
pub mod libvirt;
pub mod nats;
pub mod osken;
pub mod ovs;
pub mod postgres;
pub mod pox_stub;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vespa_testkit::try_wait_until;

/// Whether daemons are required (`VESPA_REQUIRE_EBPF=1`, as on CI).
pub fn required() -> bool {
    std::env::var("VESPA_REQUIRE_EBPF").is_ok_and(|v| v == "1")
}

/// `Some(v)` if the daemon started; otherwise panics when daemons are required, or prints
/// why the test is skipped and returns None.
pub fn require_daemon<T>(test: &str, what: &str, r: Result<T, String>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(why) if required() => {
            panic!("{test}: VESPA_REQUIRE_EBPF=1 but {what} cannot run: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {what} cannot run: {why} (set VESPA_REQUIRE_EBPF=1 to make this a failure)");
            None
        }
    }
}

/// A free TCP port on 127.0.0.1 (of the calling thread's namespace).
///
/// Never the same port twice in one process: the end-to-end tests run in parallel threads of
/// one process, and two nodes of one tree must not draw the same port the kernel just handed
/// back.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A daemon process, stopped (SIGTERM, then SIGKILL after 5 s) and reaped on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    /// Spawns `args`, stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        args: &[&str],
        log: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Result<Proc, String> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({}): {e}", args[0]))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Err if the process already exited.
    pub fn alive(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(st))) => Err(format!("{} exited ({st})", self.name)),
            Some(Err(e)) => Err(format!("{}: {e}", self.name)),
            None => Err(format!("{} stopped", self.name)),
        }
    }

    /// Stops the process (SIGTERM, SIGKILL after 5 s) and reaps it.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let exited = try_wait_until(
            &format!("{} to exit after SIGTERM", self.name),
            Duration::from_secs(5),
            || c.try_wait().ok().flatten().ok_or("running"),
        );
        if exited.is_err() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal HTTP/1.0 GET for readiness probes (status, body).
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not HTTP: {buf:?}"))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// One HTTP/1.1 request with a JSON body and an optional bearer token (status, body); `None`
/// when the server cannot be reached or does not answer HTTP.
pub fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    if let Some(t) = auth {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Percentile (0..=100) of sorted samples, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
