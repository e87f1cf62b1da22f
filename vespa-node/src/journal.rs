//! The VO's alert journal: one JSON line per processed alert.
//!
//! Without it, a VO that is killed forgets which alerts it processed, and the alerts its HOs
//! re-send after the restart (those whose acks were lost with the old process) would be
//! processed twice. With it, the VO writes each alert before acknowledging it (the writer
//! flushes the journal, with `write(2)`, before it sends acks), and on start-up rebuilds its
//! de-duplication table and recent-alert list from the file.
//!
//! Durability: an acknowledged alert is in the kernel's page cache, which survives the VO
//! process being killed (SIGKILL) but not the machine losing power; the journal does not
//! `fsync` per batch, which would cap the VO at the disk's sync rate.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use vespa_proto::Alert;

use crate::error::NodeError;

/// An open journal.
pub(crate) struct Journal {
    path: PathBuf,
    out: BufWriter<File>,
}

impl Journal {
    /// Opens (creating) the journal and returns every alert already in it, oldest first.
    /// A last line cut short (the VO died inside a write) is dropped and truncated away.
    pub fn open(path: &Path) -> Result<(Journal, Vec<Alert>), NodeError> {
        let err = |source| NodeError::Journal {
            path: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(err)?;
        let mut alerts = Vec::new();
        let mut good_len = 0u64;
        let mut reader = BufReader::new(&mut file);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(err)?;
            if n == 0 {
                break;
            }
            match serde_json::from_str::<Alert>(line.trim_end()) {
                Ok(a) if line.ends_with('\n') => {
                    alerts.push(a);
                    good_len += n as u64;
                }
                _ => {
                    tracing::warn!(journal = %path.display(), offset = good_len, "dropping a torn or unreadable journal tail");
                    break;
                }
            }
        }
        drop(reader);
        if file.metadata().map_err(err)?.len() != good_len {
            file.set_len(good_len).map_err(err)?;
        }
        file.seek(std::io::SeekFrom::End(0)).map_err(err)?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                out: BufWriter::with_capacity(64 * 1024, file),
            },
            alerts,
        ))
    }

    /// Buffers one alert.
    pub fn append(&mut self, alert: &Alert) {
        let res = serde_json::to_writer(&mut self.out, alert)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        if let Err(e) = res {
            tracing::error!(journal = %self.path.display(), error = %e, "cannot write the alert journal");
        }
    }

    /// Writes the buffer to the file (called before acks go out).
    pub fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            tracing::error!(journal = %self.path.display(), error = %e, "cannot flush the alert journal");
        }
    }
}

#[cfg(test)]
mod tests {
    use vespa_proto::AlertBody;

    use super::*;

    fn alert(seq: u64) -> Alert {
        Alert {
            origin: "a".into(),
            seq,
            path: vec!["a".into(), "VO".into()],
            timestamp_ns: 1,
            body: AlertBody::Text(format!("#{seq}")),
        }
    }

    #[test]
    fn reopening_returns_what_was_flushed_and_drops_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("vespa-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("j.jsonl");
        let _ = std::fs::remove_file(&path);
        {
            let (mut j, old) = Journal::open(&path).expect("open");
            assert!(old.is_empty());
            j.append(&alert(1));
            j.append(&alert(2));
            j.flush();
        }
        let mut f = OpenOptions::new().append(true).open(&path).expect("reopen");
        f.write_all(b"{\"origin\":\"a\",\"se").expect("torn write");
        drop(f);
        let (mut j, old) = Journal::open(&path).expect("open again");
        assert_eq!(old, vec![alert(1), alert(2)]);
        j.append(&alert(3));
        j.flush();
        let (_, old) = Journal::open(&path).expect("third open");
        assert_eq!(
            old.iter().map(|a| a.seq).collect::<Vec<_>>(),
            [1, 2, 3],
            "the torn tail was cut, not glued to the next line"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
