//! clamd with a one-line signature database (the EICAR test file's MD5, no download), in a
//! private directory: `Foreground yes`, a unix socket, a TCP socket on a free loopback port,
//! a small `StreamMaxLength` for the size-limit test, `User root` (Debian's unit would refuse
//! to start without the official databases).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vespa_testkit::try_wait_until;

use super::Proc;
use crate::cmd::have;

/// The EICAR test file, assembled at run time so that no scanner flags the sources.
pub fn eicar() -> Vec<u8> {
    let parts: [&[u8]; 3] = [
        b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$",
        b"EICAR-STANDARD-ANTIVIRUS",
        b"-TEST-FILE!$H+H*",
    ];
    parts.concat()
}

/// The signature database: MD5 and size of [`eicar`].
pub const EICAR_HDB: &str = include_str!("../../fixtures/actuators/eicar.hdb");
/// How clamd names the match of [`EICAR_HDB`].
pub const EICAR_SIGNATURE: &str = "Eicar-Test-Signature.UNOFFICIAL";

pub struct Clamd {
    proc: Option<Proc>,
    pub socket: PathBuf,
    /// `127.0.0.1:<port>`.
    pub tcp: String,
    conf: PathBuf,
    dir: tempfile::TempDir,
}

impl Clamd {
    /// Starts clamd with `StreamMaxLength` = `stream_max` (clamd syntax: `1M`, `512K`...).
    pub fn start(stream_max: &str) -> Result<Clamd, String> {
        if !have("clamd") && !have("/usr/sbin/clamd") {
            return Err("clamd not installed (cargo xtask setup)".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("vespa-clamd")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let db = dir.path().join("db");
        std::fs::create_dir(&db).map_err(|e| e.to_string())?;
        std::fs::write(db.join("eicar.hdb"), EICAR_HDB).map_err(|e| e.to_string())?;
        let socket = dir.path().join("clamd.sock");
        let port = super::free_port();
        let conf = dir.path().join("clamd.conf");
        let text = format!(
            "Foreground yes\nDatabaseDirectory {}\nLocalSocket {}\nTCPSocket {port}\nTCPAddr 127.0.0.1\nStreamMaxLength {stream_max}\nUser root\nLogFile {}\nLogTime yes\n",
            db.display(),
            socket.display(),
            dir.path().join("clamd.log").display()
        );
        std::fs::write(&conf, text).map_err(|e| e.to_string())?;
        let mut c = Clamd {
            proc: None,
            socket,
            tcp: format!("127.0.0.1:{port}"),
            conf,
            dir,
        };
        c.restart()?;
        Ok(c)
    }

    /// (Re)starts clamd with the same configuration and waits until it answers PING.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let _ = std::fs::remove_file(&self.socket);
        let clamd = if have("clamd") {
            "clamd"
        } else {
            "/usr/sbin/clamd"
        };
        let conf = self.conf.to_string_lossy().into_owned();
        let mut p = Proc::spawn(
            "clamd",
            &[clamd, "-c", &conf],
            &self.dir.path().join("stdout.log"),
            &[],
        )?;
        let sock = self.socket.clone();
        // A daemon that exited ends the wait with its error; otherwise the answer is awaited.
        try_wait_until("clamd to answer PING", Duration::from_secs(30), || {
            if let Err(e) = p.alive() {
                return Ok(Err(e));
            }
            match ping(&sock) {
                Ok(pong) if pong == "PONG" => Ok(Ok(())),
                other => Err(other),
            }
        })
        .map_err(|e| e.to_string())??;
        self.proc = Some(p);
        Ok(())
    }

    /// Stops clamd (the socket path stays, refusing connections).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `zPING` over the unix socket.
pub fn ping(sock: &Path) -> Result<String, String> {
    let mut s = UnixStream::connect(sock).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"zPING\0").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf)
        .trim_end_matches('\0')
        .to_string())
}

impl Drop for Clamd {
    fn drop(&mut self) {
        self.stop();
    }
}
