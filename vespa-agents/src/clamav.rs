//! ClamAV through clamd's socket protocol, and the antivirus agent built on it.
//!
//! Commands are sent `z`-prefixed and NUL-terminated (`zPING\0`, `zVERSION\0`,
//! `zINSTREAM\0`); replies end with a NUL. INSTREAM streams the file as chunks of
//! `u32 big-endian length + bytes`, ended by a zero length; clamd answers `stream: OK`,
//! `stream: <signature> FOUND`, or `INSTREAM size limit exceeded. ERROR` (it may close the
//! socket before the upload ends; the reply is still read).

mod agent;
mod watch;

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

pub use agent::{AvAgent, AvConfig, RelayFuture, Route, ScanRecord, VmRelay};

use crate::error::AvError;

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddr {
    /// Its `LocalSocket`.
    Unix(PathBuf),
    /// Its `TCPSocket`/`TCPAddr`, as `host:port`.
    Tcp(String),
}

impl FromStr for ClamdAddr {
    type Err = String;
    /// `unix:/path`, `/path`, `tcp:host:port` or `host:port`.
    fn from_str(s: &str) -> Result<ClamdAddr, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(ClamdAddr::Unix(p.into()));
        }
        if s.starts_with('/') {
            return Ok(ClamdAddr::Unix(s.into()));
        }
        let t = s.strip_prefix("tcp:").unwrap_or(s);
        match t.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {
                Ok(ClamdAddr::Tcp(t.to_string()))
            }
            _ => Err(format!(
                "invalid clamd address {s:?}: expected unix:/path or host:port"
            )),
        }
    }
}

impl fmt::Display for ClamdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClamdAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ClamdAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// A scan's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Clean,
    Infected { signature: String },
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Size of the INSTREAM chunks.
const CHUNK: usize = 64 * 1024;
/// Longest reply accepted from clamd.
const MAX_REPLY: usize = 64 * 1024;

/// A clamd client. Every call opens its own connection (clamd serves one command per
/// connection outside sessions), bounded by `timeout` as a whole.
#[derive(Debug, Clone)]
pub struct Clamd {
    addr: ClamdAddr,
    timeout: Duration,
}

impl Clamd {
    pub fn new(addr: ClamdAddr, timeout: Duration) -> Clamd {
        Clamd { addr, timeout }
    }

    pub fn addr(&self) -> &ClamdAddr {
        &self.addr
    }

    fn timeout_err(&self, what: &str) -> AvError {
        AvError::Timeout {
            addr: self.addr.to_string(),
            what: what.to_string(),
            secs: self.timeout.as_secs(),
        }
    }

    async fn connect(&self, deadline: Instant, what: &str) -> Result<Pin<Box<dyn Io>>, AvError> {
        let unreachable = |source| AvError::Unreachable {
            addr: self.addr.to_string(),
            source,
        };
        let fut = async {
            Ok::<Pin<Box<dyn Io>>, std::io::Error>(match &self.addr {
                ClamdAddr::Unix(p) => Box::pin(tokio::net::UnixStream::connect(p).await?),
                ClamdAddr::Tcp(a) => Box::pin(tokio::net::TcpStream::connect(a.as_str()).await?),
            })
        };
        match timeout_at(deadline, fut).await {
            Ok(r) => r.map_err(unreachable),
            Err(_) => Err(self.timeout_err(what)),
        }
    }

    /// Reads a NUL-terminated reply (or up to EOF).
    async fn read_reply(
        &self,
        io: &mut Pin<Box<dyn Io>>,
        deadline: Instant,
        what: &str,
    ) -> Result<String, AvError> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = match timeout_at(deadline, io.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) if out.is_empty() => {
                    return Err(AvError::Unreachable {
                        addr: self.addr.to_string(),
                        source: e,
                    })
                }
                Ok(Err(_)) => 0,
                Err(_) => return Err(self.timeout_err(what)),
            };
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.contains(&0) || out.len() > MAX_REPLY {
                break;
            }
        }
        let end = out.iter().position(|&b| b == 0).unwrap_or(out.len());
        let text = String::from_utf8_lossy(&out[..end]).trim().to_string();
        if text.is_empty() {
            return Err(AvError::BadReply {
                what: what.to_string(),
                reply: String::new(),
            });
        }
        Ok(text)
    }

    /// A one-line command (`PING`, `VERSION`).
    pub async fn command(&self, cmd: &str) -> Result<String, AvError> {
        let deadline = Instant::now() + self.timeout;
        let mut io = self.connect(deadline, cmd).await?;
        let req = format!("z{cmd}\0");
        match timeout_at(deadline, io.write_all(req.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(AvError::Unreachable {
                    addr: self.addr.to_string(),
                    source: e,
                })
            }
            Err(_) => return Err(self.timeout_err(cmd)),
        }
        self.read_reply(&mut io, deadline, cmd).await
    }

    /// `PING` -> `PONG`.
    pub async fn ping(&self) -> Result<(), AvError> {
        let r = self.command("PING").await?;
        if r == "PONG" {
            Ok(())
        } else {
            Err(AvError::BadReply {
                what: "PING".into(),
                reply: r,
            })
        }
    }

    /// `VERSION`, e.g. `ClamAV 1.4.6` or `ClamAV 1.4.6/27000/...`.
    pub async fn version(&self) -> Result<String, AvError> {
        let r = self.command("VERSION").await?;
        if r.starts_with("ClamAV") {
            Ok(r)
        } else {
            Err(AvError::BadReply {
                what: "VERSION".into(),
                reply: r,
            })
        }
    }

    /// Scans bytes held in memory.
    pub async fn scan_bytes(&self, what: &str, data: &[u8]) -> Result<Verdict, AvError> {
        self.instream(what, data).await
    }

    /// Scans a file by streaming it (the file need not be readable by clamd itself).
    pub async fn scan_file(&self, path: &Path) -> Result<Verdict, AvError> {
        let what = path.display().to_string();
        let f = tokio::fs::File::open(path)
            .await
            .map_err(|source| AvError::Read {
                path: what.clone(),
                source,
            })?;
        self.instream(&what, f).await
    }

    async fn instream<R: AsyncRead + Unpin>(
        &self,
        what: &str,
        mut src: R,
    ) -> Result<Verdict, AvError> {
        let deadline = Instant::now() + self.timeout;
        let mut io = self.connect(deadline, "INSTREAM").await?;
        let io_err = |source| AvError::Unreachable {
            addr: self.addr.to_string(),
            source,
        };
        match timeout_at(deadline, io.write_all(b"zINSTREAM\0")).await {
            Ok(r) => r.map_err(io_err)?,
            Err(_) => return Err(self.timeout_err("INSTREAM")),
        }
        let mut sent: u64 = 0;
        let mut buf = vec![0u8; CHUNK];
        // clamd closes the connection as soon as the stream exceeds StreamMaxLength; a failed
        // write then means "read the reply", not "clamd is gone".
        loop {
            let n = src.read(&mut buf).await.map_err(|source| AvError::Read {
                path: what.to_string(),
                source,
            })?;
            let mut frame = Vec::with_capacity(4 + n);
            frame.extend_from_slice(&(n as u32).to_be_bytes());
            frame.extend_from_slice(&buf[..n]);
            match timeout_at(deadline, io.write_all(&frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => return Err(self.timeout_err("INSTREAM")),
            }
            if n == 0 {
                break;
            }
            sent += n as u64;
        }
        let reply = self.read_reply(&mut io, deadline, "INSTREAM").await?;
        parse_scan_reply(what, &reply, sent)
    }
}

/// Interprets an INSTREAM reply.
pub fn parse_scan_reply(what: &str, reply: &str, sent: u64) -> Result<Verdict, AvError> {
    if reply.contains("size limit exceeded") {
        return Err(AvError::SizeLimit {
            what: what.to_string(),
            sent,
        });
    }
    let body = reply
        .strip_prefix("stream:")
        .map(str::trim)
        .unwrap_or(reply);
    if body == "OK" {
        return Ok(Verdict::Clean);
    }
    if let Some(sig) = body.strip_suffix(" FOUND") {
        return Ok(Verdict::Infected {
            signature: sig.trim().to_string(),
        });
    }
    if body.ends_with("ERROR") {
        return Err(AvError::Clamd {
            what: what.to_string(),
            reply: body.trim_end_matches("ERROR").trim().to_string(),
        });
    }
    Err(AvError::BadReply {
        what: what.to_string(),
        reply: reply.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(
            parse_scan_reply("f", "stream: OK", 1).expect("clean"),
            Verdict::Clean
        );
        assert_eq!(
            parse_scan_reply("f", "stream: Eicar-Test-Signature.UNOFFICIAL FOUND", 68)
                .expect("found"),
            Verdict::Infected {
                signature: "Eicar-Test-Signature.UNOFFICIAL".into()
            }
        );
        assert!(matches!(
            parse_scan_reply("f", "INSTREAM size limit exceeded. ERROR", 9),
            Err(AvError::SizeLimit { sent: 9, .. })
        ));
        assert!(matches!(
            parse_scan_reply("f", "stream: Can't allocate memory ERROR", 9),
            Err(AvError::Clamd { .. })
        ));
        assert!(matches!(
            parse_scan_reply("f", "UNKNOWN COMMAND", 9),
            Err(AvError::BadReply { .. })
        ));
    }

    #[test]
    fn addresses() {
        assert_eq!(
            "/run/c.sock".parse::<ClamdAddr>(),
            Ok(ClamdAddr::Unix("/run/c.sock".into()))
        );
        assert_eq!(
            "unix:/run/c.sock".parse::<ClamdAddr>(),
            Ok(ClamdAddr::Unix("/run/c.sock".into()))
        );
        assert_eq!(
            "127.0.0.1:3310".parse::<ClamdAddr>(),
            Ok(ClamdAddr::Tcp("127.0.0.1:3310".into()))
        );
        assert_eq!(
            "tcp:[::1]:3310".parse::<ClamdAddr>(),
            Ok(ClamdAddr::Tcp("[::1]:3310".into()))
        );
        assert!("nonsense".parse::<ClamdAddr>().is_err());
        assert!("host:99999".parse::<ClamdAddr>().is_err());
    }
}
