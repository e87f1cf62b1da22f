//! The pre-shared key (PSK) every node of one VESPA tree holds.
//!
//! The 2014 code compiled one fixed key into the source, so anyone with the source could read
//! and forge traffic. Here the key is 32 random bytes in a file that only its owner can read;
//! [`load`] refuses a file that others could read, because a key that leaked through a loose
//! mode is no longer a secret and silently accepting it would hide that.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of the pre-shared key in bytes (AES-256 / HKDF-SHA256 input keying material).
pub const PSK_LEN: usize = 32;

/// A 32-byte pre-shared key. Wiped from memory on drop; `Debug` never prints it.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Psk([u8; PSK_LEN]);

impl Psk {
    /// Wraps raw key bytes (e.g. from a secret store, or fixed bytes in tests).
    pub fn from_bytes(bytes: [u8; PSK_LEN]) -> Self {
        Psk(bytes)
    }

    /// A fresh key from the operating system's CSPRNG.
    pub fn random() -> Self {
        let mut bytes = [0u8; PSK_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Psk(bytes)
    }

    /// The raw bytes; only the key schedule needs them.
    pub(crate) fn as_bytes(&self) -> &[u8; PSK_LEN] {
        &self.0
    }
}

/// The key of `label` under `parent`: HKDF-SHA256 with the parent key as input keying
/// material. Node keys form a tree like the nodes: a node's key is derived from its master's
/// key and its own name (the VO's from the root key), so a master checks a child's key
/// without storing it, a machine holds only its own nodes' keys, and a stolen key derives
/// only the keys of that node's subtree. Operators' keys are derived from the root key and
/// their handshake name (`operator:<name>`).
pub fn derive(parent: &Psk, label: &str) -> Psk {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"vespa/1 node key"), parent.as_bytes());
    let mut out = [0u8; PSK_LEN];
    // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
    hk.expand(label.as_bytes(), &mut out)
        .expect("32-byte HKDF output is always valid");
    Psk(out)
}

/// The handshake name operators use: `operator:<name>`.
pub fn operator_name(name: &str) -> String {
    format!("{OPERATOR_PREFIX}{name}")
}

/// What starts an operator's handshake name.
pub const OPERATOR_PREFIX: &str = "operator:";

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

/// A key file could not be created or used; names the file and the problem.
#[derive(Debug, thiserror::Error)]
#[error("key file {}: {problem}", path.display())]
pub struct KeyError {
    /// The file concerned.
    pub path: PathBuf,
    /// What is wrong with it (shown in the message, so not repeated as a source).
    pub problem: KeyProblem,
}

/// What is wrong with a key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyProblem {
    /// The file exists and overwriting was not asked for.
    #[error("already exists (refusing to overwrite a key; pass overwrite to replace it)")]
    AlreadyExists,
    /// Group or others have some access to the file.
    #[error("mode {mode:04o} lets group/others access the key; run `chmod 600` on it")]
    TooPermissive {
        /// The file's permission bits.
        mode: u32,
    },
    /// The file is not exactly [`PSK_LEN`] bytes long.
    #[error("must be exactly {PSK_LEN} bytes, found {len}")]
    WrongLength {
        /// Its actual length (at most `PSK_LEN + 1` is read).
        len: u64,
    },
    /// The path is a directory, device, ...
    #[error("is not a regular file")]
    NotAFile,
    /// The operating system refused.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn err(path: &Path, problem: impl Into<KeyProblem>) -> KeyError {
    KeyError {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Writes a fresh random key to `path` with mode 0600 and returns it.
///
/// Refuses an existing file unless `overwrite` is true; an overwrite goes through a new
/// temporary file renamed over the old one, so the key file is never briefly readable by
/// others nor half-written.
pub fn generate(path: &Path, overwrite: bool) -> Result<Psk, KeyError> {
    let psk = Psk::random();
    save(path, &psk, overwrite)?;
    Ok(psk)
}

/// Writes `psk` to `path` with mode 0600, as [`generate`] does (a derived node key, say).
pub fn save(path: &Path, psk: &Psk, overwrite: bool) -> Result<(), KeyError> {
    if !overwrite {
        write_new(path, psk).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => err(path, KeyProblem::AlreadyExists),
            _ => err(path, e),
        })?;
        return Ok(());
    }
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(format!(".tmp{:016x}", rand::random::<u64>()));
    let tmp = path.with_file_name(tmp_name);
    let result = write_new(&tmp, psk).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(path, e));
    }
    Ok(())
}

/// Creates `path` (which must not exist) with mode 0600 and writes the key, synced to disk.
fn write_new(path: &Path, psk: &Psk) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(psk.as_bytes())?;
    file.sync_all()
}

/// Reads a key written by [`generate`] (or by hand: `head -c32 /dev/urandom > k; chmod 600 k`).
///
/// The mode and length checks use the metadata of the already opened file, so the file that
/// was checked is the file that is read.
pub fn load(path: &Path) -> Result<Psk, KeyError> {
    let file = File::open(path).map_err(|e| err(path, e))?;
    let meta = file.metadata().map_err(|e| err(path, e))?;
    if !meta.is_file() {
        return Err(err(path, KeyProblem::NotAFile));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(err(path, KeyProblem::TooPermissive { mode }));
    }
    // Read at most one byte more than a key, so a huge file is rejected without reading it all.
    let mut buf = Vec::with_capacity(PSK_LEN + 1);
    file.take(PSK_LEN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(path, e))?;
    let bytes: [u8; PSK_LEN] = match buf.as_slice().try_into() {
        Ok(b) => b,
        Err(_) => {
            let len = if buf.len() > PSK_LEN {
                meta.len().max(buf.len() as u64)
            } else {
                buf.len() as u64
            };
            buf.zeroize();
            return Err(err(path, KeyProblem::WrongLength { len }));
        }
    };
    buf.zeroize();
    Ok(Psk(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vespa-proto-key-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&dir).expect("create temp dir");
        dir
    }

    #[test]
    fn generate_writes_0600_and_load_reads_it_back() {
        let dir = tmpdir();
        let path = dir.join("psk");
        let psk = generate(&path, false).expect("generate");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "key file must be owner-only");
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            PSK_LEN as u64
        );
        assert_eq!(
            load(&path).expect("load"),
            psk,
            "loaded key differs from generated key"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn generate_refuses_to_overwrite_unless_asked() {
        let dir = tmpdir();
        let path = dir.join("psk");
        let first = generate(&path, false).expect("generate");
        let e = generate(&path, false).expect_err("second generate must refuse");
        assert!(matches!(e.problem, KeyProblem::AlreadyExists), "got {e}");
        assert_eq!(
            load(&path).expect("load"),
            first,
            "refused overwrite must keep the old key"
        );
        let second = generate(&path, true).expect("overwrite when asked");
        assert_ne!(first, second);
        assert_eq!(load(&path).expect("load"), second);
        let leftovers = std::fs::read_dir(&dir).expect("readdir").count();
        assert_eq!(leftovers, 1, "overwrite must not leave temporary files");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn load_refuses_group_or_world_readable_file_and_names_it() {
        let dir = tmpdir();
        let path = dir.join("loose");
        generate(&path, false).expect("generate");
        for mode in [0o640, 0o604, 0o644, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let e = load(&path).expect_err("loose mode must be refused");
            assert!(
                matches!(e.problem, KeyProblem::TooPermissive { mode: m } if m == mode),
                "got {e}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("loose") && msg.contains("chmod 600"),
                "message must name file and fix: {msg}"
            );
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn load_refuses_wrong_length() {
        let dir = tmpdir();
        for len in [0usize, 31, 33, 4096] {
            let path = dir.join(format!("len{len}"));
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .expect("create");
            f.write_all(&vec![7u8; len]).expect("write");
            drop(f);
            let e = load(&path).expect_err("wrong length must be refused");
            assert!(
                matches!(e.problem, KeyProblem::WrongLength { len: l } if l == len as u64),
                "len {len}: got {e}"
            );
            assert!(
                e.to_string().contains(&format!("len{len}")),
                "message must name the file: {e}"
            );
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn load_reports_missing_file_and_directories() {
        let dir = tmpdir();
        let e = load(&dir.join("absent")).expect_err("missing file");
        assert!(
            matches!(e.problem, KeyProblem::Io(ref io) if io.kind() == std::io::ErrorKind::NotFound),
            "got {e}"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let e = load(&dir).expect_err("directory");
        assert!(matches!(e.problem, KeyProblem::NotAFile), "got {e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let psk = Psk::from_bytes([0xAB; PSK_LEN]);
        let dbg = format!("{psk:?}");
        assert!(
            !dbg.to_lowercase().contains("ab, ") && !dbg.contains("171"),
            "{dbg}"
        );
    }
}
