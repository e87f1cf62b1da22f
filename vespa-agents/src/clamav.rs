//! ClamAV through clamd's socket protocol, and the antivirus agent built on it.
//!
//! Commands are sent `z`-prefixed and NUL-terminated (`zPING\0`, `zVERSION\0`,
//! `zINSTREAM\0`); replies end with a NUL. INSTREAM streams the file as chunks of
//! `u32 big-endian length + bytes`, ended by a zero length; clamd answers `stream: OK`,
//! `stream: <signature> FOUND`, or `INSTREAM size limit exceeded. ERROR` (it may close the
//! socket before the upload ends; the reply is still read).
//!
//! Files come from directories a VM may write to, so they are opened as hostile:
//! [`open_regular`] never follows a symbolic link (`O_NOFOLLOW`; below a scanned directory,
//! `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so no component may be a link), never
//! blocks (`O_NONBLOCK`: a FIFO without a writer opens at once) and keeps only regular files
//! (checked with `fstat` on the opened file, so nothing can be swapped in between). A file
//! larger than the scan limit is not sent ([`AvError::TooLarge`]), and a whole scan, reading
//! the file included, is bounded by the client's timeout.

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
/// Largest file scanned by default: clamd's own default `StreamMaxLength` (25 MiB).
pub const DEFAULT_MAX_SCAN_BYTES: u64 = 25 * 1024 * 1024;

/// Opens `path` for scanning: a regular file, reached without following a symbolic link,
/// without blocking. With `beneath`, `path` must lie under that directory and no component
/// below it may be a link (on kernels without `openat2`, before 5.6, only the last component
/// is checked). Returns the file and its size.
pub fn open_regular(path: &Path, beneath: Option<&Path>) -> Result<(std::fs::File, u64), AvError> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let what = || path.display().to_string();
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let plain = || rustix::fs::open(path, flags, Mode::empty());
    let opened = match beneath.and_then(|root| Some((root, path.strip_prefix(root).ok()?))) {
        Some((root, rel)) => rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .and_then(|dir| {
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&dir, rel, flags, Mode::empty(), resolve) {
                Err(rustix::io::Errno::NOSYS) => plain(),
                r => r,
            }
        }),
        None => plain(),
    };
    let fd = opened.map_err(|e| match e {
        rustix::io::Errno::LOOP => AvError::NotRegular {
            path: what(),
            kind: "a symbolic link (or below one)",
        },
        rustix::io::Errno::XDEV => AvError::NotRegular {
            path: what(),
            kind: "outside the scanned directory",
        },
        e => AvError::Read {
            path: what(),
            source: e.into(),
        },
    })?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|source| AvError::Read {
        path: what(),
        source,
    })?;
    if !meta.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let ft = meta.file_type();
        let kind = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(AvError::NotRegular { path: what(), kind });
    }
    Ok((file, meta.len()))
}

/// A clamd client. Every call opens its own connection (clamd serves one command per
/// connection outside sessions), bounded by `timeout` as a whole.
#[derive(Debug, Clone)]
pub struct Clamd {
    addr: ClamdAddr,
    timeout: Duration,
    max_bytes: u64,
}

impl Clamd {
    /// A client scanning files of up to [`DEFAULT_MAX_SCAN_BYTES`].
    pub fn new(addr: ClamdAddr, timeout: Duration) -> Clamd {
        Clamd {
            addr,
            timeout,
            max_bytes: DEFAULT_MAX_SCAN_BYTES,
        }
    }

    /// The largest file it scans; a larger one is refused with [`AvError::TooLarge`].
    pub fn with_max_bytes(self, max_bytes: u64) -> Clamd {
        Clamd { max_bytes, ..self }
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
        let deadline = Instant::now() + self.timeout;
        self.instream(what, data, deadline).await
    }

    /// Scans a file by streaming it (the file need not be readable by clamd itself). The file
    /// is opened by [`open_regular`]: `beneath` is the directory it was found in, if any.
    pub async fn scan_file(&self, path: &Path, beneath: Option<&Path>) -> Result<Verdict, AvError> {
        let deadline = Instant::now() + self.timeout;
        let what = path.display().to_string();
        let (p, b) = (path.to_path_buf(), beneath.map(Path::to_path_buf));
        // Opening does not block on what it opens, but the file system may (NFS, FUSE).
        let opened = timeout_at(
            deadline,
            tokio::task::spawn_blocking(move || open_regular(&p, b.as_deref())),
        )
        .await;
        let (file, size) = match opened {
            Ok(Ok(r)) => r?,
            Ok(Err(join)) => {
                return Err(AvError::Read {
                    path: what,
                    source: std::io::Error::other(join),
                })
            }
            Err(_) => return Err(self.read_timeout(&what)),
        };
        if size > self.max_bytes {
            return Err(AvError::TooLarge {
                path: what,
                size,
                limit: self.max_bytes,
            });
        }
        self.instream(&what, tokio::fs::File::from_std(file), deadline)
            .await
    }

    fn read_timeout(&self, what: &str) -> AvError {
        AvError::Read {
            path: what.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("not read within {} s", self.timeout.as_secs()),
            ),
        }
    }

    /// Streams `src` to clamd, reading no more than the scan limit (a file that grew past it
    /// since it was measured is refused, not cut short) and nothing after `deadline`.
    async fn instream<R: AsyncRead + Unpin>(
        &self,
        what: &str,
        mut src: R,
        deadline: Instant,
    ) -> Result<Verdict, AvError> {
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
            let n = match timeout_at(deadline, src.read(&mut buf)).await {
                Ok(r) => r.map_err(|source| AvError::Read {
                    path: what.to_string(),
                    source,
                })?,
                Err(_) => return Err(self.read_timeout(what)),
            };
            if sent + n as u64 > self.max_bytes {
                // Dropping the connection without the terminating chunk aborts the stream.
                return Err(AvError::TooLarge {
                    path: what.to_string(),
                    size: sent + n as u64,
                    limit: self.max_bytes,
                });
            }
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

    fn fifo(p: &Path) {
        use rustix::fs::{mknodat, FileType, Mode, CWD};
        mknodat(CWD, p, FileType::Fifo, Mode::RUSR | Mode::WUSR, 0).expect("mkfifo");
    }

    #[test]
    fn only_regular_files_reached_without_a_link_are_opened() {
        let host = tempfile::tempdir().expect("tempdir");
        let secret = host.path().join("shadow");
        std::fs::write(&secret, b"host secret").expect("write");
        let watched = tempfile::tempdir().expect("tempdir");
        let w = watched.path();
        std::fs::write(w.join("ok.txt"), b"12345").expect("write");
        fifo(&w.join("pipe"));
        std::os::unix::fs::symlink(&secret, w.join("link")).expect("symlink");
        std::os::unix::fs::symlink(host.path(), w.join("dirlink")).expect("symlink");
        std::fs::create_dir(w.join("sub")).expect("mkdir");

        let (_, size) = open_regular(&w.join("ok.txt"), Some(w)).expect("a regular file");
        assert_eq!(size, 5);
        // A FIFO opens at once (no writer needed) and is refused: nothing blocks.
        for (name, kind) in [
            ("pipe", "a FIFO"),
            ("link", "a symbolic link (or below one)"),
            ("dirlink/shadow", "a symbolic link (or below one)"),
            ("sub", "a directory"),
        ] {
            for beneath in [Some(w), None] {
                if name == "dirlink/shadow" && beneath.is_none() {
                    continue; // only the last component is checked without a directory
                }
                match open_regular(&w.join(name), beneath) {
                    Err(AvError::NotRegular { kind: k, .. }) => assert_eq!(k, kind, "{name}"),
                    other => panic!("{name} ({beneath:?}): {other:?}"),
                }
            }
        }
        assert!(matches!(
            open_regular(&w.join("missing"), Some(w)),
            Err(AvError::Read { .. })
        ));
    }

    #[tokio::test]
    async fn a_file_over_the_scan_limit_is_refused_before_clamd_is_asked() {
        let d = tempfile::tempdir().expect("tempdir");
        let f = d.path().join("big");
        std::fs::write(&f, vec![0u8; 11]).expect("write");
        // Nothing listens there: the limit is checked first.
        let c = Clamd::new(
            ClamdAddr::Unix(d.path().join("none.sock")),
            Duration::from_secs(5),
        )
        .with_max_bytes(10);
        match c.scan_file(&f, None).await {
            Err(AvError::TooLarge { size, limit, .. }) => assert_eq!((size, limit), (11, 10)),
            other => panic!("{other:?}"),
        }
        fifo(&d.path().join("pipe"));
        assert!(matches!(
            c.scan_file(&d.path().join("pipe"), None).await,
            Err(AvError::NotRegular { kind: "a FIFO", .. })
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
