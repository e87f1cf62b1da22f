//! nats-server (Debian's package) on a free loopback port, in a private directory, stopped
//! when its guard drops. Ready once it greets a connection with its `INFO` line.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use vespa_testkit::try_wait_until;

use super::Proc;
use crate::cmd::have;

pub struct NatsServer {
    proc: Option<Proc>,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts nats-server on 127.0.0.1 and waits until it greets a client.
    pub fn start() -> Result<NatsServer, String> {
        let bin = if have("nats-server") {
            "nats-server"
        } else if have("/usr/sbin/nats-server") {
            "/usr/sbin/nats-server"
        } else {
            return Err("nats-server not installed (cargo xtask setup)".into());
        };
        let dir = tempfile::Builder::new()
            .prefix("vespa-nats")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let port = super::free_port();
        let addr = format!("127.0.0.1:{port}");
        let port_s = port.to_string();
        let mut p = Proc::spawn(
            "nats-server",
            &[bin, "-a", "127.0.0.1", "-p", &port_s, "-n", "vespa-test"],
            &dir.path().join("nats-server.log"),
            &[],
        )?;
        try_wait_until(
            "nats-server to greet a client",
            Duration::from_secs(20),
            || {
                if let Err(e) = p.alive() {
                    return Ok(Err(e));
                }
                match greeting(&addr) {
                    Ok(g) if g.starts_with("INFO ") => Ok(Ok(())),
                    other => Err(other),
                }
            },
        )
        .map_err(|e| e.to_string())??;
        Ok(NatsServer {
            proc: Some(p),
            url: format!("nats://{addr}"),
            addr,
            dir,
        })
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats-server.log")).unwrap_or_default()
    }

    /// Stops the server (its port then refuses connections).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }
}

/// The first bytes the server sends on a new connection.
fn greeting(addr: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf).to_string())
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
