//! Entering a named network namespace (`ip netns` convention: /run/netns/<name>).
//!
//! Network namespaces are per thread: threads spawned afterwards inherit the namespace of the
//! thread that spawns them, and sockets stay in the namespace they were created in. The
//! agent's `--netns` enters the namespace on the main thread before any runtime thread starts.

use std::{fs::File, io, path::PathBuf};

use nix::sched::{setns, CloneFlags};

pub fn path(name: &str) -> io::Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid namespace name {name:?}"),
        ));
    }
    Ok(PathBuf::from("/run/netns").join(name))
}

/// Moves the calling thread into the named network namespace.
pub fn enter(name: &str) -> io::Result<()> {
    let p = path(name)?;
    let f = File::open(&p).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("network namespace {name} ({}): {e}", p.display()),
        )
    })?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| io::Error::other(format!("setns({name}): {e}")))
}

/// The inode number of the calling thread's network namespace (what `stat -L
/// /proc/self/ns/net` and `lsns` show, and what the kernel keeps in `net->ns.inum`).
pub fn current_inode() -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    u32::try_from(ino)
        .map_err(|_| io::Error::other(format!("namespace inode {ino} does not fit 32 bits")))
}
