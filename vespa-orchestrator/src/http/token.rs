//! The API's bearer token: read from a file that only its owner may read, like the tree's key.
//!
//! A token that group or others can read is no longer a secret, so such a file is refused
//! at start-up with the `chmod` that fixes it, rather than accepted silently.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Shortest token accepted (a guessable token would make the check decorative).
pub const MIN_LEN: usize = 16;
/// Longest token file read.
const MAX_FILE: u64 = 4096;

/// The token file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("API token file {}: {problem}", path.display())]
pub struct TokenError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

/// A bearer token; `Debug` never prints it.
#[derive(Clone)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl ApiToken {
    /// A token from text (trimmed); at least [`MIN_LEN`] printable ASCII characters.
    pub fn new(text: &str) -> Result<ApiToken, String> {
        let t = text.trim();
        if t.len() < MIN_LEN {
            return Err(format!(
                "the token must be at least {MIN_LEN} characters long (found {})",
                t.len()
            ));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the token must be printable ASCII without spaces (it travels in an HTTP header)"
                    .into(),
            );
        }
        Ok(ApiToken(t.to_string()))
    }

    /// Reads the token from `path`, refusing a file group or others can access. The checks
    /// use the opened file's metadata, so the file checked is the file read.
    pub fn load(path: &Path) -> Result<ApiToken, TokenError> {
        let err = |problem: String| TokenError {
            path: path.to_path_buf(),
            problem,
        };
        let file = File::open(path).map_err(|e| err(e.to_string()))?;
        let meta = file.metadata().map_err(|e| err(e.to_string()))?;
        if !meta.is_file() {
            return Err(err("is not a regular file".into()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "mode {mode:04o} lets group/others read the token; run `chmod 600` on it"
            )));
        }
        let mut text = String::new();
        file.take(MAX_FILE)
            .read_to_string(&mut text)
            .map_err(|e| err(format!("not readable as text: {e}")))?;
        ApiToken::new(&text).map_err(err)
    }

    /// The token itself, for a client's `Authorization` header.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// What the decision ledger records as the operator: `token:` and the first 12 hex
    /// digits of the token's SHA-256, which names it without revealing it.
    pub fn id(&self) -> String {
        use sha2::Digest as _;
        let h = sha2::Sha256::digest(self.0.as_bytes());
        let hex: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
        format!("token:{hex}")
    }

    /// Compares in time independent of where the first difference is, so the answer's
    /// timing tells nothing about the token.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    fn write(path: &Path, text: &str, mode: u32) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .expect("create");
        std::io::Write::write_all(&mut f, text.as_bytes()).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn loads_owner_only_files_and_refuses_the_rest() {
        let dir = std::env::temp_dir().join(format!(
            "vespa-token-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("good");
        write(&good, "0123456789abcdef0123\n", 0o600);
        let t = ApiToken::load(&good).expect("0600 token loads");
        assert!(
            t.matches("0123456789abcdef0123")
                && !t.matches("0123456789abcdef0124")
                && !t.matches("0123")
        );
        let loose = dir.join("loose");
        write(&loose, "0123456789abcdef0123", 0o644);
        let e = ApiToken::load(&loose)
            .expect_err("0644 refused")
            .to_string();
        assert!(e.contains("chmod 600"), "{e}");
        let short = dir.join("short");
        write(&short, "abc", 0o600);
        assert!(ApiToken::load(&short)
            .expect_err("short")
            .to_string()
            .contains("at least"));
        assert!(format!("{t:?}").contains("redacted"));
        std::fs::remove_dir_all(dir).ok();
    }
}
