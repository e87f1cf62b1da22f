//! One process per ledger file: an exclusive `flock` on a sidecar `<ledger>.lock`, held as
//! long as the ledger is open.
//!
//! Decision ids are numbered by the process that opened the file (the next after the largest
//! it read at start), and each process keeps the decisions in force in memory: two processes
//! on one file would hand out the same ids and each miss the other's decisions. The second
//! opener is refused with the path and, as the holder wrote it into the lock file, the
//! holder's pid and program. A `flock` is released by the kernel when its holder dies, so a
//! SIGKILLed orchestrator leaves no stale lock; the file itself stays, harmless.

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
