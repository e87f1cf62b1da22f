//! os-ken 1.4.1 (`ofctl_rest` + `simple_switch_13`) from the venv `cargo xtask setup` builds
//! (`/var/lib/vespa/osken-venv`, or `$VESPA_OSKEN_VENV`), started through
//! `tests/support/osken_launcher.py` (the eventlet shim of external-interfaces.md).

use std::path::PathBuf;
use std::time::Duration;

use vespa_testkit::try_wait_until;

use super::{http_get, Proc};
use crate::net::Netns;

pub const DEFAULT_VENV: &str = "/var/lib/vespa/osken-venv";

/// The venv's python.
pub fn python() -> PathBuf {
    let venv = std::env::var("VESPA_OSKEN_VENV").unwrap_or_else(|_| DEFAULT_VENV.into());
    PathBuf::from(venv).join("bin/python")
}

/// Err when the venv's python is missing.
pub fn prerequisites() -> Result<(), String> {
    let py = python();
    if py.exists() {
        Ok(())
    } else {
        Err(format!(
            "{} missing (cargo xtask setup builds the os-ken venv)",
            py.display()
        ))
    }
}

pub fn launcher() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("support/osken_launcher.py")
}

/// A running os-ken. Its ports are on 127.0.0.1 of the namespace it runs in.
pub struct OsKen {
    proc: Proc,
    /// `127.0.0.1:<port>` of the REST API.
    pub api: String,
    pub ofp_port: u16,
    ns: Option<String>,
    dir: tempfile::TempDir,
}

impl OsKen {
    /// Starts os-ken inside `ns` (fixed ports 6653/8080: the namespace is private) or on the
    /// host (free ports), and waits until its REST API answers.
    pub fn start(ns: Option<&Netns>) -> Result<OsKen, String> {
        prerequisites()?;
        let py = python();
        let (ofp_port, api_port) = match ns {
            Some(_) => (6653, 8080),
            None => (super::free_port(), super::free_port()),
        };
        let dir = tempfile::Builder::new()
            .prefix("vespa-osken")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let (ofp, api) = (ofp_port.to_string(), api_port.to_string());
        let py = py.to_string_lossy().into_owned();
        let launcher = launcher().to_string_lossy().into_owned();
        let mut args: Vec<&str> = Vec::new();
        if let Some(ns) = ns {
            args.extend(["ip", "netns", "exec", &ns.name]);
        }
        args.extend([
            py.as_str(),
            launcher.as_str(),
            "--ofp-listen-host",
            "127.0.0.1",
            "--ofp-tcp-listen-port",
            &ofp,
            "--wsapi-host",
            "127.0.0.1",
            "--wsapi-port",
            &api,
            "os_ken.app.ofctl_rest",
            "os_ken.app.simple_switch_13",
        ]);
        let log = dir.path().join("osken.log");
        let proc = Proc::spawn("os-ken", &args, &log, &[])?;
        let mut me = OsKen {
            proc,
            api: format!("127.0.0.1:{api_port}"),
            ofp_port,
            ns: ns.map(|n| n.name.clone()),
            dir,
        };
        // A launcher that exited ends the wait with its error and log.
        try_wait_until("os-ken's REST API", Duration::from_secs(30), || {
            if let Err(e) = me.proc.alive() {
                return Ok(Err(format!("{e}; log: {}", me.log_tail())));
            }
            match me.get("/stats/switches") {
                Ok((200, _)) => Ok(Ok(())),
                other => Err(other),
            }
        })
        .map_err(|e| e.to_string())??;
        Ok(me)
    }

    /// GET on the REST API from inside its namespace.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        let (api, path) = (self.api.clone(), path.to_string());
        match &self.ns {
            None => http_get(&api, &path),
            Some(ns) => crate::net::in_netns(ns, move || http_get(&api, &path)),
        }
    }

    /// Waits until the switch `dpid` is connected.
    pub fn wait_switch(&self, dpid: u64, timeout: Duration) -> Result<(), String> {
        try_wait_until(
            &format!("switch {dpid} to connect to os-ken"),
            timeout,
            || {
                let (_, body) = self.get("/stats/switches")?;
                let v: serde_json::Value =
                    serde_json::from_str(&body).map_err(|e| e.to_string())?;
                match v.as_array() {
                    Some(ids) if ids.iter().any(|d| d.as_u64() == Some(dpid)) => Ok(()),
                    _ => Err(format!("switches: {body}")),
                }
            },
        )
        .map_err(|e| e.to_string())
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("osken.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}
