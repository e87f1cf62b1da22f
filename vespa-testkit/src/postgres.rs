//! A PostgreSQL server of a test's own: `initdb` into a private directory, `postgres`
//! listening only on a unix socket in that directory (no TCP port, so tests in parallel never
//! collide), password authentication (SCRAM) so that what carries the password can be
//! checked; stopped (fast shutdown) and its directory removed when the guard drops.
//!
//! PostgreSQL refuses to run as root. As root, the helper gives the directory to `nobody`
//! and runs `initdb` and `postgres` as `nobody` through `runuser` (util-linux), so nothing
//! is created on the machine (no user, no cluster in /var/lib); otherwise it runs them as
//! the calling user. The binaries are Debian's (`postgresql`, installed by `cargo xtask
//! setup`): the newest `/usr/lib/postgresql/<version>/bin`.
//!
//! Tests ask for it with [`Postgres::start`] and, as the project's daemons do, fail when
//! `VESPA_REQUIRE_EBPF=1` (CI) and it cannot start, else skip saying why ([`required`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::try_wait_until;

/// The superuser the cluster is made with.
pub const USER: &str = "vespa";

/// A running server; dropping it stops the server and removes its directory.
pub struct Postgres {
    child: Option<Child>,
    dir: PathBuf,
    /// The superuser's password (in [`Postgres::url`]).
    pub password: String,
}

/// Whether a server that cannot start fails the test (`VESPA_REQUIRE_EBPF=1`, as on CI).
pub fn required() -> bool {
    std::env::var("VESPA_REQUIRE_EBPF").is_ok_and(|v| v == "1")
}

/// Starts a server for `test`: `Some` when it runs; `None` after printing why it could not,
/// unless [`required`], then a panic naming the reason.
pub fn start_for(test: &str) -> Option<Postgres> {
    match Postgres::start() {
        Ok(p) => Some(p),
        Err(why) if required() => {
            panic!("{test}: VESPA_REQUIRE_EBPF=1 but PostgreSQL cannot run: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: PostgreSQL cannot run: {why} (set VESPA_REQUIRE_EBPF=1 to make this a failure)");
            None
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `postgres`.
fn bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e} (cargo xtask setup installs postgresql)"))?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .ok_or_else(|| "no /usr/lib/postgresql/<version>/bin/postgres".to_string())
}

/// `program args...` as the server's user: `nobody` through runuser when root.
fn as_server_user(root: bool, program: &Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(what: &str, mut cmd: Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Postgres {
    /// Makes a cluster in a new private directory and starts its server; returns once it
    /// accepts connections.
    pub fn start() -> Result<Postgres, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let bin = bin_dir()?;
        let root = is_root();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vespa-pg-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // From here on the guard removes the directory, whatever fails.
        let mut pg = Postgres {
            child: None,
            dir,
            password: format!("pw{nanos:x}{n}"),
        };
        let pwfile = pg.dir.join("pw");
        std::fs::write(&pwfile, &pg.password).map_err(|e| e.to_string())?;
        if root {
            let mut chown = Command::new("chown");
            chown.args(["-R", "nobody"]).arg(&pg.dir);
            run("chown -R nobody", chown)?;
        }
        let data = pg.dir.join("data");
        let mut initdb = as_server_user(root, &bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "-A", "scram-sha-256", "-E", "UTF8", "-N"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("--no-instructions");
        run("initdb", initdb)?;
        let log = File::create(pg.dir.join("postgres.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut server = as_server_user(root, &bin.join("postgres"));
        // Only the unix socket; no fsync (a test's data, not worth a disk flush).
        server
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&pg.dir)
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        pg.child = Some(server.spawn().map_err(|e| format!("postgres: {e}"))?);
        let ready = try_wait_until(
            "PostgreSQL to accept connections",
            Duration::from_secs(60),
            || {
                if let Some(Ok(Some(st))) = pg.child.as_mut().map(Child::try_wait) {
                    return Ok(Err(format!("postgres exited ({st}): {}", pg.log())));
                }
                let log = pg.log();
                if log.contains("ready to accept connections") && pg.socket().exists() {
                    Ok(Ok(()))
                } else {
                    Err(log.lines().last().unwrap_or_default().to_string())
                }
            },
        );
        match ready {
            Ok(Ok(())) => Ok(pg),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("{e}\n{}", pg.log())),
        }
    }

    /// The server's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(".s.PGSQL.5432")
    }

    /// The URL of database `postgres` as the superuser, password included (over the unix
    /// socket: `?host=<directory>`).
    pub fn url(&self) -> String {
        self.url_with_password(&self.password)
    }

    /// The same URL with another password (a wrong one, for refusals).
    pub fn url_with_password(&self, password: &str) -> String {
        format!(
            "postgres://{USER}:{password}@localhost/postgres?host={}",
            self.dir.display()
        )
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// Stops the server (fast shutdown: its sessions are ended) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The postmaster's pid (runuser's child when root) is the file's first line.
        let pid = std::fs::read_to_string(self.dir.join("data").join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().map(str::to_string));
        if let Some(pid) = pid {
            let _ = Command::new("kill").args(["-INT", &pid]).status();
        }
        let exited = try_wait_until("PostgreSQL to stop", Duration::from_secs(30), || {
            child.try_wait().ok().flatten().is_some()
        });
        if exited.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
