//! The journal file: opened (and repaired) at start, appended to batch by batch, compacted
//! to its byte budget.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vespa_proto::Alert;

use super::load::{scan, Format, Loaded, Mark};
use super::record::{append, Kind, MetaRecord, OriginRecord, FILE_MAGIC};
use crate::error::NodeError;

/// The smallest budget honoured: a compacted file must hold at least the origins.
const MIN_BUDGET: u64 = 64 * 1024;

/// An open journal file.
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    /// End of the last record written whole: the next batch goes here.
    len: u64,
    budget: u64,
    /// Compaction is due once the file is longer than this.
    compact_at: u64,
    /// What the file says of every origin.
    marks: HashMap<String, Mark>,
    /// Tests: every write fails as on a full disk.
    #[cfg(test)]
    pub fail_writes: bool,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Journal {
        path: path.display().to_string(),
        source,
    }
}

/// Where compaction writes before renaming over the journal.
fn compacting_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".compacting");
    path.with_file_name(name)
}

impl Journal {
    /// Opens (creating) the journal at `path`, keeping it under `budget` bytes, and returns
    /// what it holds, with the last `keep` alerts. A torn tail is cut off; a file in the older
    /// one-line-per-alert format, or with damaged records, is rewritten at once (compacted);
    /// a file in neither format is refused rather than overwritten.
    pub fn open(path: &Path, budget: u64, keep: usize) -> Result<(Journal, Loaded), NodeError> {
        let err = io_err(path);
        let _ = std::fs::remove_file(compacting_path(path));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(&err)?;
        let mut loaded = scan(&mut file, keep).map_err(&err)?;
        let budget = budget.max(MIN_BUDGET);
        let mut j = Journal {
            path: path.to_path_buf(),
            file,
            len: loaded.len,
            budget,
            compact_at: budget,
            marks: std::mem::take(&mut loaded.marks),
            #[cfg(test)]
            fail_writes: false,
        };
        let shown = path.display();
        if loaded.damaged > 0 {
            tracing::warn!(journal = %shown, damaged_records = loaded.damaged, damaged_bytes = loaded.damaged_bytes, "skipped damaged journal records (the records after them were read)");
        }
        match (loaded.format, loaded.torn_at) {
            (Format::Unknown, _) => {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not an alert journal (no journal header and no valid record); move it away or name another file",
                )))
            }
            (Format::Empty, _) => {
                j.file.set_len(0).map_err(&err)?;
                j.file.write_all_at(FILE_MAGIC, 0).map_err(&err)?;
                j.len = FILE_MAGIC.len() as u64;
            }
            (Format::Lines, torn) => {
                tracing::info!(journal = %shown, alerts = loaded.alerts_total, torn_tail_bytes = torn.map_or(0, |t| loaded.len - t), "rewriting a journal of the older one-line-per-alert format in the framed format");
                j.compact(loaded.recent.make_contiguous(), loaded.alerts_total)
                    .map_err(&err)?;
                return Ok((j, loaded));
            }
            (Format::Framed, Some(at)) => {
                tracing::warn!(journal = %shown, offset = at, bytes = loaded.len - at, "cutting a torn tail off the journal");
                j.file.set_len(at).map_err(&err)?;
                j.len = at;
            }
            (Format::Framed, None) => {}
        }
        if loaded.damaged > 0 || j.len > j.budget {
            // The file as it is stays valid if this fails: it is only longer than it should.
            if let Err(e) = j.compact(loaded.recent.make_contiguous(), loaded.alerts_total) {
                tracing::warn!(journal = %shown, error = %e, "cannot compact the journal at start; carrying on with it as it is");
            }
        }
        Ok((j, loaded))
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// What the file says of every origin.
    pub fn marks(&self) -> impl Iterator<Item = (&str, &Mark)> {
        self.marks.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Appends `bytes` (whole records holding `alerts`) at the end of the last good record.
    /// On error nothing of them counts: the file is cut back, and a later batch is written
    /// where this one should have been, never after a piece of it.
    pub fn write(&mut self, bytes: &[u8], alerts: &[(Arc<str>, Alert)]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        #[cfg(test)]
        if self.fail_writes {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        if let Err(e) = self.file.write_all_at(bytes, self.len) {
            if let Err(t) = self.file.set_len(self.len) {
                tracing::warn!(journal = %self.path.display(), error = %t, "cannot cut a partial write off the journal (the next write overwrites it; a restart would cut it)");
            }
            return Err(e);
        }
        self.len += bytes.len() as u64;
        for (origin, a) in alerts {
            Mark::note(&mut self.marks, origin, a.seq);
        }
        Ok(())
    }

    /// Whether the file has outgrown its budget.
    pub fn compaction_due(&self) -> bool {
        self.len > self.compact_at
    }

    /// Puts off the next compaction after a failed one, so a disk that stays full is not
    /// asked again at every batch.
    pub fn postpone_compaction(&mut self) {
        self.compact_at = self.len + self.budget / 8;
    }

    /// Rewrites the journal as what de-duplication needs (every origin's mark) and the newest
    /// of `recent` (oldest first; `alerts_total` alerts processed in all) that fit in half
    /// the budget. The new file is written beside the old one, synced, and renamed over it:
    /// at every instant one of the two is whole.
    pub fn compact(&mut self, recent: &[Alert], alerts_total: u64) -> std::io::Result<()> {
        let tmp = compacting_path(&self.path);
        match self.write_compacted(&tmp, recent, alerts_total) {
            Ok((file, len)) => {
                self.file = file;
                self.len = len;
                self.compact_at = self.budget.max(len + self.budget / 2);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn write_compacted(
        &self,
        tmp: &Path,
        recent: &[Alert],
        alerts_total: u64,
    ) -> std::io::Result<(File, u64)> {
        let mut origins = Vec::new();
        let mut names: Vec<&String> = self.marks.keys().collect();
        names.sort();
        for name in names {
            let m = self.marks[name];
            let r = OriginRecord {
                origin: name.clone(),
                highest: m.highest,
                count: m.count,
                first: m.first,
            };
            append(&mut origins, Kind::Origin, &r).map_err(std::io::Error::other)?;
        }
        // The newest alerts that fit in what is left of half the budget.
        let room = (self.budget / 2).saturating_sub(origins.len() as u64 + 64);
        let mut scratch = Vec::new();
        let (mut kept, mut size) = (0usize, 0u64);
        for a in recent.iter().rev() {
            scratch.clear();
            append(&mut scratch, Kind::Alert, a).map_err(std::io::Error::other)?;
            if size + scratch.len() as u64 > room {
                break;
            }
            size += scratch.len() as u64;
            kept += 1;
        }
        let meta = MetaRecord {
            alerts_before: alerts_total.saturating_sub(kept as u64),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)?;
        let mut out = BufWriter::with_capacity(256 * 1024, file);
        let mut head = FILE_MAGIC.to_vec();
        append(&mut head, Kind::Meta, &meta).map_err(std::io::Error::other)?;
        out.write_all(&head)?;
        out.write_all(&origins)?;
        let mut len = (head.len() + origins.len()) as u64;
        for a in &recent[recent.len() - kept..] {
            scratch.clear();
            append(&mut scratch, Kind::Alert, a).map_err(std::io::Error::other)?;
            out.write_all(&scratch)?;
            len += scratch.len() as u64;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Makes the rename itself durable; some file systems cannot sync a directory.
            if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot sync the journal's directory");
            }
        }
        Ok((file, len))
    }
}
