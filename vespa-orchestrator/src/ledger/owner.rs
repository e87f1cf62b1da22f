//! One process per ledger file: an exclusive `flock` on a sidecar `<ledger>.lock`, held as
//! long as the ledger is open.
//!
//! Decision ids are numbered by the process that opened the file (the next after the largest
//! it read at start), and each process keeps the decisions in force in memory: two processes
//! on one file would hand out the same ids and each miss the other's decisions. The second
//! opener is refused with the path and, as the holder wrote it into the lock file, the
//! holder's pid and program. A `flock` is released by the kernel when its holder dies, so a
//! SIGKILLed orchestrator leaves no stale lock; the file itself stays, harmless.
//!
//! A ledger on PostgreSQL is held the same way with a session advisory lock taken on the
//! writer's connection ([`hold_postgres`]): the server releases it when that connection ends,
//! which for a killed process is as soon as the server sees the socket close (for a host cut
//! off the network, when the server's TCP keepalive gives up on it). The holder is named from
//! `pg_stat_activity`, where each orchestrator's writer sets its `application_name`.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Longest holder description read back from a lock file (it is ours, but bounded anyway).
const MAX_HOLDER: u64 = 256;

/// The lock file of the ledger at `path`: `<path>.lock`.
pub(crate) fn lock_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// The exclusive hold of one ledger file (released when dropped, or when the process ends).
#[derive(Debug)]
pub(crate) struct Owner {
    _lock: Flock<File>,
}

/// Takes the ledger at `path` for this process, or says who holds it.
pub(crate) fn hold(path: &Path) -> anyhow::Result<Owner> {
    let lock_path = lock_file(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| {
            anyhow::anyhow!(
                "the decision ledger {} cannot be locked: {}: {e}",
                path.display(),
                lock_path.display()
            )
        })?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let holder = holder(&mut file);
            anyhow::bail!(
                "the decision ledger {} is in use by another process ({holder}; lock {}): a \
                 ledger belongs to one orchestrator process, whose decision ids it numbers; \
                 give each process its own --ledger (or [settings] ledger)",
                path.display(),
                lock_path.display()
            );
        }
        Err((_, e)) => anyhow::bail!(
            "the decision ledger {} cannot be locked: {}: {e}",
            path.display(),
            lock_path.display()
        ),
    };
    // Who holds it, for the message of the next one to try. Best effort: the lock is what
    // counts, a failure to describe it is only logged.
    let program = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown program".into());
    let me = format!("pid {} ({program})\n", std::process::id());
    let written = lock
        .set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| lock.write_all(me.as_bytes()));
    if let Err(e) = written {
        tracing::warn!(path = %lock_path.display(), error = %e, "cannot write the ledger's holder into its lock file");
    }
    Ok(Owner { _lock: lock })
}

/// The advisory lock key of a VESPA ledger (`VESPLDGR`): one per database, as the tables are.
#[cfg(feature = "postgres")]
const PG_LOCK_KEY: i64 = 0x5645_5350_4c44_4752;

/// How long a PostgreSQL ledger's lock is waited for: a holder that was just killed or
/// dropped needs a moment for the server to end its session.
#[cfg(feature = "postgres")]
const PG_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes the PostgreSQL ledger for this process on `conn`, the writer's connection, for as
/// long as that connection lives; `shown` is the ledger's URL without its password. Refused,
/// naming the holder, when another session keeps it for [`PG_LOCK_WAIT`].
#[cfg(feature = "postgres")]
pub(crate) async fn hold_postgres(
    conn: &mut sqlx::AnyConnection,
    shown: &str,
) -> anyhow::Result<()> {
    let me = format!("vespa-orchestrator pid {}", std::process::id());
    sqlx::query("SELECT set_config('application_name', $1, false)")
        .bind(&me)
        .execute(&mut *conn)
        .await?;
    let deadline = tokio::time::Instant::now() + PG_LOCK_WAIT;
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(PG_LOCK_KEY)
            .fetch_one(&mut *conn)
            .await?;
        if got {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A bigint key is split over classid (high half) and objid (low half), objsubid 1.
    let holder: Option<(i64, String, String)> = sqlx::query_as(
        "SELECT a.pid::bigint, COALESCE(a.application_name, ''), \
                COALESCE(host(a.client_addr), 'local socket') \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.classid::bigint = $1 AND l.objid::bigint = $2 LIMIT 1",
    )
    .bind(PG_LOCK_KEY >> 32)
    .bind(PG_LOCK_KEY & 0xffff_ffff)
    .fetch_optional(&mut *conn)
    .await
    .unwrap_or(None);
    let holder = holder.map_or_else(
        || "holder unknown".to_string(),
        |(pid, app, from)| {
            let app: String = app.chars().filter(|c| !c.is_control()).take(64).collect();
            format!("held by {app:?}, server pid {pid}, from {from}")
        },
    );
    anyhow::bail!(
        "the decision ledger {shown} is in use by another process ({holder}): a ledger \
         belongs to one orchestrator process, whose decision ids it numbers; give each \
         process its own database"
    )
}

/// What the holder wrote into the lock file, one line, bounded.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.take(MAX_HOLDER).read_to_string(&mut text);
    let line: String = text
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if line.is_empty() {
        "holder unknown".into()
    } else {
        format!("held by {line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_hold_of_one_file_is_refused_naming_the_path_and_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        let first = hold(&path).expect("first");
        let e = hold(&path)
            .expect_err("the second must be refused")
            .to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(
            e.contains(&format!("held by pid {}", std::process::id())),
            "{e}"
        );
        // Another file is another ledger.
        let _other = hold(&dir.path().join("other.db")).expect("another file");
        // Released with its holder: the next process (here, the next hold) takes it.
        drop(first);
        let _again = hold(&path).expect("free again");
    }
}
