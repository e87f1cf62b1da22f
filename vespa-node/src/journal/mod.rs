//! The VO's alert journal.
//!
//! Without it, a VO that is killed forgets which alerts it processed, and the alerts its HOs
//! re-send after the restart (those whose acks were lost with the old process) would be
//! processed twice. With it, an alert is processed (handlers, recent alerts, the
//! de-duplication mark that later re-sends are judged by) and acknowledged only once its
//! record is in the file, and a VO rebuilds its de-duplication table and recent alerts from
//! the file at start.
//!
//! - **Format** ([`record`]): a file header, then records framed with a length and two
//!   checksums (the header's and the payload's); payloads are JSON. A damaged record is
//!   skipped and counted at start, and reading resumes at the next valid one; a torn tail
//!   is cut off. A journal of the older format (one JSON alert per line) is read and
//!   rewritten in this one at start.
//! - **Bounded** ([`file`]): once the file outgrows its budget (`journal_max_bytes`), it is
//!   rewritten as what de-duplication needs (each origin's highest sequence number and
//!   counts) followed by the newest alerts that fit in half the budget. Reading it back keeps
//!   only that much in memory, never the whole history.
//! - **Faults** ([`pending`]): alerts wait in a bounded queue until a batch of them is
//!   written whole. A batch that fails (a full disk) is cut back off the file, stays queued
//!   and is tried again (50 ms, doubling to 1 s); until then none of its alerts is processed
//!   or acknowledged, so their senders keep them. When the queue is full the VO stops
//!   reading alerts, which pushes back down the tree.
//!
//! Durability: a written batch is in the kernel's page cache, which survives the VO process
//! being killed (SIGKILL) but not the machine losing power; batches are not `fsync`ed, which
//! would cap the VO at the disk's sync rate. Compaction does sync the new file before it
//! replaces the old one.

mod file;
pub(crate) mod load;
mod pending;
pub(crate) mod record;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vespa_proto::Alert;

pub(crate) use load::{Loaded, Mark};
pub(crate) use pending::Batch;

use crate::error::NodeError;
use crate::stats::JournalStats;
use crate::util::lock;
use file::Journal;
use pending::{Health, Pending};

/// The VO's journal with the alerts waiting to be written to it.
pub(crate) struct Journaled {
    path: String,
    file: Mutex<Journal>,
    pending: Pending,
    health: Mutex<Health>,
    max_bytes: u64,
    bytes: AtomicU64,
    writable: AtomicBool,
    failures: AtomicU64,
    compactions: AtomicU64,
    damaged_at_start: u64,
    torn_bytes_at_start: u64,
}

impl Journaled {
    /// Opens the journal (see [`Journal::open`]) and returns what it holds.
    pub fn open(
        path: &Path,
        max_bytes: u64,
        keep: usize,
    ) -> Result<(Journaled, Loaded), NodeError> {
        let (file, loaded) = Journal::open(path, max_bytes, keep)?;
        let j = Journaled {
            path: path.display().to_string(),
            bytes: AtomicU64::new(file.len()),
            file: Mutex::new(file),
            pending: Pending::default(),
            health: Mutex::new(Health::new()),
            max_bytes,
            writable: AtomicBool::new(true),
            failures: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            damaged_at_start: loaded.damaged,
            torn_bytes_at_start: loaded.torn_at.map_or(0, |t| loaded.len - t),
        };
        Ok((j, loaded))
    }

    /// Every origin the journal knows, with what de-duplication needs of it.
    pub fn marks(&self) -> Vec<(String, Mark)> {
        lock(&self.file)
            .marks()
            .map(|(k, m)| (k.to_string(), *m))
            .collect()
    }

    /// Queues an alert to be written (see [`Pending::push`]).
    pub fn push(&self, key: Arc<str>, alert: Alert) -> Result<(), Box<Alert>> {
        self.pending.push(key, alert).map_err(|failed| {
            let (alert, e) = *failed;
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(journal = %self.path, origin = %alert.origin, seq = alert.seq, error = %e, "cannot journal this alert: it is processed without a record");
            Box::new(alert)
        })
    }

    /// Whether more alerts may be queued.
    pub fn has_room(&self) -> bool {
        self.pending.has_room()
    }

    /// Waits until more alerts may be queued.
    pub async fn room(&self) {
        self.pending.room().await
    }

    /// Completes when alerts are waiting to be written.
    pub async fn wanted(&self) {
        self.pending.wanted().await
    }

    /// Writes every alert waiting, as one batch. `Ok`: the alerts now in the journal, in the
    /// order they were taken. `Err`: nothing was written; try again after the delay.
    pub fn write_pending(&self) -> Result<Batch, Duration> {
        let mut file = lock(&self.file);
        let batch = self.pending.take();
        if batch.alerts.is_empty() {
            return Ok(batch);
        }
        match file.write(&batch.bytes, &batch.alerts) {
            Ok(()) => {
                self.bytes.store(file.len(), Ordering::Relaxed);
                drop(file);
                self.pending.written(batch.alerts.len());
                self.writable.store(true, Ordering::Relaxed);
                lock(&self.health).succeeded(&self.path, batch.alerts.len());
                Ok(batch)
            }
            Err(e) => {
                drop(file);
                self.pending.put_back(batch);
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.writable.store(false, Ordering::Relaxed);
                Err(lock(&self.health).failed(&self.path, &e, self.pending.len()))
            }
        }
    }

    /// Compacts the file if it outgrew its budget; `recent` gives the alerts to keep (oldest
    /// first) and how many were processed in all.
    pub fn compact_if_due(&self, recent: impl FnOnce() -> (Vec<Alert>, u64)) {
        let mut file = lock(&self.file);
        if !file.compaction_due() {
            return;
        }
        let (alerts, total) = recent();
        match file.compact(&alerts, total) {
            Ok(()) => {
                self.compactions.fetch_add(1, Ordering::Relaxed);
                self.bytes.store(file.len(), Ordering::Relaxed);
            }
            Err(e) => {
                file.postpone_compaction();
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(journal = %self.path, error = %e, bytes = file.len(), "cannot compact the alert journal; it keeps growing until it can");
            }
        }
    }

    /// Tests: makes every write fail as on a full disk, or work again.
    #[cfg(test)]
    pub fn fail_writes(&self, fail: bool) {
        lock(&self.file).fail_writes = fail;
    }

    /// Alerts waiting to be written.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The journal's part of `stats`.
    pub fn stats(&self) -> JournalStats {
        JournalStats {
            bytes: self.bytes.load(Ordering::Relaxed),
            max_bytes: self.max_bytes,
            writable: self.writable.load(Ordering::Relaxed),
            pending: self.pending.len(),
            failures: self.failures.load(Ordering::Relaxed),
            compactions: self.compactions.load(Ordering::Relaxed),
            damaged_at_start: self.damaged_at_start,
            torn_bytes_at_start: self.torn_bytes_at_start,
        }
    }
}

/// A journal file as read by [`read`]: for tools and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Contents {
    /// Per origin: the highest sequence number processed, and how many alerts.
    pub origins: BTreeMap<String, (u64, u64)>,
    /// The alerts in the file, oldest first (after a compaction, only the newest).
    pub alerts: Vec<Alert>,
    /// Damaged stretches skipped.
    pub damaged: u64,
    /// Bytes of an unreadable tail (a write cut short).
    pub torn_bytes: u64,
}

/// Reads the journal at `path` without changing it.
pub fn read(path: &Path) -> std::io::Result<Contents> {
    let mut f = std::fs::File::open(path)?;
    let l = load::scan(&mut f, usize::MAX)?;
    Ok(Contents {
        origins: l
            .marks
            .into_iter()
            .map(|(k, m)| (k, (m.highest, m.count)))
            .collect(),
        alerts: l.recent.into(),
        damaged: l.damaged,
        torn_bytes: l.torn_at.map_or(0, |t| l.len - t),
    })
}
