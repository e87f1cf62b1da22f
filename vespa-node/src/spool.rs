//! The spool: a node's own unacknowledged alerts on disk, so that a node killed (SIGKILL, a
//! crash, a power cut) and restarted sends again what its master had not acknowledged.
//!
//! Without it, the alerts an agent raised and the VO had not yet processed live only in the
//! agent's [`crate::outbox::Outbox`] and die with the process. With it:
//! - **Appended when queued.** An alert is written to the file (`pwrite`, so in the kernel's
//!   page cache) in [`Spool::append`], before `raise` returns and before it can be sent: once
//!   raised, it survives the process being killed.
//! - **Synced in batches** (group commit): a background task `fdatasync`s the file whenever
//!   something was appended, at most once per [`SYNC_EVERY`], each sync covering everything
//!   appended before it started. A crash of the machine loses at most the alerts of the last
//!   batch window (10 ms and the sync's own duration), never one a master acknowledged: an
//!   acknowledgement comes from the VO, whose journal has the alert by then.
//! - **Trimmed as acknowledged.** Acks (cumulative, like the queue's) are noted in memory and
//!   written as `Acked` records by the syncer. Unacknowledged alerts are always a suffix of
//!   the file (one origin, in order; acks cover a prefix), so when the acknowledged prefix is
//!   most of the file it is dropped: a file with nothing unacknowledged is cut back to its
//!   header, else the suffix is copied to a new file that replaces the old one.
//! - **Bounded.** The unacknowledged bytes stay under the budget (`spool_max_bytes`; an ack
//!   gives its alerts' room back once the batch has written it, so that what a restart reads
//!   as unacknowledged is within the budget too); an alert
//!   that would pass it is refused like one the full queue refuses: counted in
//!   `queue_overflow` and reported upstream. The file itself stays under twice the budget
//!   and a batch.
//! - **Read back at start** with bounded memory (at most the budget of alerts held), damaged
//!   records skipped and counted, a torn tail cut off ([`crate::journal::load`]'s reader, the
//!   journal's framing). The unacknowledged alerts go back into the queue with their origin
//!   and sequence numbers, so every hop's de-duplication recognises those it already took;
//!   new alerts are numbered above them.
//!
//! Only the node's own alerts are spooled: those it forwards for its children are still held
//! by the children until the VO acknowledges them (ack chaining), so an HO needs no copy.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use vespa_proto::Alert;

use crate::error::NodeError;
use crate::journal::load::{scan_framed, Fold, Window};
use crate::journal::record::{append, AckedRecord, Kind, HEADER_LEN, SPOOL_MAGIC};
use crate::util::lock;

/// The least time between two syncs: the batch window of the group commit.
pub const SYNC_EVERY: Duration = Duration::from_millis(10);

/// The smallest budget honoured.
const MIN_BUDGET: u64 = 64 * 1024;

/// The spool file of node `name` in `dir`: `<dir>/<name>.spool`, any character of the name
/// that is not a letter, a digit, `.`, `_` or `-` written `_`.
pub fn file_of(dir: &Path, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{safe}.spool"))
}

/// Why an alert was not spooled.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The unacknowledged alerts would pass the budget: dropped, counted as an overflow.
    Full,
    /// It could not be written (the file is as it was; the alert is queued in memory only).
    Io(std::io::Error),
}

/// The spool in a `stats` snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolStats {
    /// The file.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// Bytes of unacknowledged alerts in it.
    pub unacked_bytes: u64,
    /// Unacknowledged alerts in it.
    pub unacked: usize,
    /// The budget of unacknowledged bytes (`spool_max_bytes`).
    pub max_bytes: u64,
    /// Alerts appended since start.
    pub appended: u64,
    /// `fdatasync`s since start (one per batch).
    pub syncs: u64,
    /// Failed writes, syncs and compactions (each also logged).
    pub failures: u64,
    /// Times the acknowledged prefix was dropped.
    pub compactions: u64,
    /// Unacknowledged alerts read back at start (and queued again).
    pub reloaded_at_start: u64,
    /// Damaged stretches skipped at start (or alerts of another origin).
    pub damaged_at_start: u64,
    /// Bytes of a torn tail cut off at start.
    pub torn_bytes_at_start: u64,
    /// Alerts acknowledged since start: their acknowledgement written, their room in the
    /// budget given back.
    #[serde(default)]
    pub acked: u64,
    /// Alerts refused since start because the budget was reached (dropped; also counted in
    /// the node's `queue_overflow` and reported upstream).
    #[serde(default)]
    pub refused: u64,
}

struct Inner {
    /// Shared with the syncer, which syncs it outside the lock.
    file: Arc<File>,
    /// End of the last whole record: where the next one goes.
    len: u64,
    /// Alerts in the file not acknowledged by an `Acked` record yet: sequence number and
    /// offset of the record.
    unacked: VecDeque<(u64, u64)>,
    /// Highest sequence number acknowledged, and the highest written as a record.
    acked: u64,
    acked_written: u64,
    /// Something was written since the last sync started.
    dirty: bool,
    scratch: Vec<u8>,
}

impl Inner {
    /// Where the unacknowledged suffix starts.
    fn live_start(&self) -> u64 {
        self.unacked.front().map_or(self.len, |&(_, off)| off)
    }
}

/// See the module documentation.
pub(crate) struct Spool {
    path: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
    wake: Notify,
    appended: AtomicU64,
    syncs: AtomicU64,
    failures: AtomicU64,
    compactions: AtomicU64,
    acked: AtomicU64,
    refused: AtomicU64,
    reloaded_at_start: u64,
    damaged_at_start: u64,
    torn_bytes_at_start: u64,
}

/// Reads a spool: the unacknowledged alerts of `origin`, in order, within `max_bytes`.
struct Loader<'a> {
    origin: &'a str,
    max_bytes: u64,
    alerts: VecDeque<(Alert, u64)>,
    held: u64,
    acked: u64,
    last_seq: u64,
    damaged: u64,
    /// Unacknowledged alerts dropped to stay within the budget (a file written under a
    /// larger one).
    over_budget: u64,
}

impl Fold for Loader<'_> {
    fn record(&mut self, kind: Option<Kind>, payload: &[u8]) -> bool {
        match kind {
            Some(Kind::Alert) => {
                let Ok(a) = serde_json::from_slice::<Alert>(payload) else {
                    return false;
                };
                if a.origin != self.origin {
                    return false;
                }
                // Appended in order; anything else is not a record of this spool's writer.
                if a.seq <= self.last_seq {
                    return false;
                }
                self.last_seq = a.seq;
                if a.seq > self.acked {
                    let n = (HEADER_LEN + payload.len()) as u64;
                    self.alerts.push_back((a, n));
                    self.held += n;
                    while self.held > self.max_bytes {
                        let Some((_, n)) = self.alerts.pop_front() else {
                            break;
                        };
                        self.held -= n;
                        self.over_budget += 1;
                    }
                }
                true
            }
            Some(Kind::Acked) => {
                let Ok(r) = serde_json::from_slice::<AckedRecord>(payload) else {
                    return false;
                };
                self.acked = self.acked.max(r.seq);
                while self
                    .alerts
                    .front()
                    .is_some_and(|(a, _)| a.seq <= self.acked)
                {
                    if let Some((_, n)) = self.alerts.pop_front() {
                        self.held -= n;
                    }
                }
                true
            }
            _ => false,
        }
    }

    fn damaged(&mut self, _bytes: u64) {
        self.damaged += 1;
    }
}

fn compacting_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".compacting");
    path.with_file_name(name)
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Makes a rename durable; some file systems cannot sync a directory.
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot sync the spool's directory");
        }
    }
}

impl Spool {
    /// Opens (creating, with its directory) the spool of node `origin` at `path`, keeping at
    /// most `max_bytes` of unacknowledged alerts, and returns what it holds unacknowledged,
    /// oldest first. The file is rewritten as those alerts alone. A file that is not a spool
    /// (another header) is refused, never overwritten.
    pub fn open(
        path: &Path,
        origin: &str,
        max_bytes: u64,
    ) -> Result<(Spool, Vec<Alert>), NodeError> {
        let err = |source: std::io::Error| NodeError::Spool {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let _ = std::fs::remove_file(compacting_path(path));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(err)?;
        let max_bytes = max_bytes.max(MIN_BUDGET);
        let len = file.metadata().map_err(err)?.len();
        let mut loader = Loader {
            origin,
            max_bytes,
            alerts: VecDeque::new(),
            held: 0,
            acked: 0,
            last_seq: 0,
            damaged: 0,
            over_budget: 0,
        };
        let mut torn = 0;
        {
            let mut w = Window::new(&mut file).map_err(err)?;
            let head = w.get(0, SPOOL_MAGIC.len()).map_err(err)?.to_vec();
            if head == SPOOL_MAGIC {
                let start = SPOOL_MAGIC.len() as u64;
                if let Some(at) = scan_framed(w, &mut loader, start, len).map_err(err)? {
                    torn = len - at;
                }
            } else if !SPOOL_MAGIC.starts_with(&head) {
                // Not empty, not a header cut short: not a spool (or its header is damaged).
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not an alert spool (its header is not VESPA-SPOOL-1); move it away or set another spool directory",
                )));
            }
        }
        let shown = path.display();
        if loader.damaged > 0 || torn > 0 || loader.over_budget > 0 {
            tracing::warn!(spool = %shown, damaged_records = loader.damaged, torn_tail_bytes = torn, over_budget = loader.over_budget, "the spool was damaged: skipped what could not be read (the alerts after it were read)");
        }
        let alerts: Vec<Alert> = loader.alerts.into_iter().map(|(a, _)| a).collect();
        // The file rewritten as what is unacknowledged: beside it, synced, renamed over it.
        let tmp = compacting_path(path);
        let mut out = SPOOL_MAGIC.to_vec();
        let mut unacked = VecDeque::with_capacity(alerts.len());
        for a in &alerts {
            unacked.push_back((a.seq, out.len() as u64));
            append(&mut out, Kind::Alert, a).map_err(|e| err(std::io::Error::other(e)))?;
        }
        let file = (|| {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all_at(&out, 0)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            Ok(f)
        })()
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e)
        })?;
        sync_dir(path);
        if !alerts.is_empty() {
            tracing::info!(spool = %shown, alerts = alerts.len(), first_seq = alerts[0].seq, "unacknowledged alerts read back from the spool: sending them again");
        }
        let spool = Spool {
            path: path.to_path_buf(),
            max_bytes,
            inner: Mutex::new(Inner {
                file: Arc::new(file),
                len: out.len() as u64,
                unacked,
                acked: 0,
                acked_written: 0,
                dirty: false,
                scratch: Vec::new(),
            }),
            wake: Notify::new(),
            appended: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            reloaded_at_start: alerts.len() as u64,
            damaged_at_start: loader.damaged,
            torn_bytes_at_start: torn,
        };
        Ok((spool, alerts))
    }

    /// The budget of unacknowledged bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Writes `alert` (the node's own, numbered above every alert before it) at the end of
    /// the file. Never waits for the disk beyond the write itself.
    pub fn append(&self, alert: &Alert) -> Result<(), Refused> {
        let mut g = lock(&self.inner);
        let g = &mut *g;
        g.scratch.clear();
        if let Err(e) = append(&mut g.scratch, Kind::Alert, alert) {
            return Err(Refused::Io(std::io::Error::other(e)));
        }
        let n = g.scratch.len() as u64;
        if g.len - g.live_start() + n > self.max_bytes {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Full);
        }
        if let Err(e) = g.file.write_all_at(&g.scratch, g.len) {
            // No piece of a record may be followed by another: cut it back.
            let _ = g.file.set_len(g.len);
            self.failures.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Io(e));
        }
        g.unacked.push_back((alert.seq, g.len));
        g.len += n;
        g.dirty = true;
        self.appended.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
        Ok(())
    }

    /// The master acknowledged every alert up to `seq`. Noted here; written (and the
    /// alerts' room in the budget given back) by the next batch.
    pub fn ack(&self, seq: u64) {
        let mut g = lock(&self.inner);
        if seq <= g.acked {
            return;
        }
        g.acked = seq;
        drop(g);
        self.wake.notify_one();
    }

    /// Completes when there is something to write or sync.
    pub async fn wanted(&self) {
        self.wake.notified().await
    }

    /// One batch: writes the acknowledgements noted since the last, drops the acknowledged
    /// prefix when it is most of the file, and syncs the file (outside the lock: appends go
    /// on meanwhile and wait for the next batch). Blocking: run it off the async workers.
    pub fn sync(&self) {
        let file = {
            let mut g = lock(&self.inner);
            // Only an acknowledgement that frees an alert of the file is written: one that
            // covers no alert held (sequence numbers the budget refused) would add a record
            // and free nothing, and so push what is held past the budget.
            let acked = g.acked;
            if acked > g.acked_written && g.unacked.front().is_some_and(|&(s, _)| s <= acked) {
                self.write_acked(&mut g);
            }
            if self.compaction_due(&g) {
                self.compact(g);
                return;
            }
            if !g.dirty {
                return;
            }
            g.dirty = false;
            g.file.clone()
        };
        match file.sync_data() {
            Ok(()) => {
                self.syncs.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                lock(&self.inner).dirty = true;
                self.failed("cannot sync the spool (tried again at the next batch)", &e);
            }
        }
    }

    fn failed(&self, what: &str, e: &std::io::Error) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(spool = %self.path.display(), error = %e, failures = n, "{what}");
        }
    }

    fn write_acked(&self, g: &mut Inner) {
        let mut rec = Vec::new();
        let r = AckedRecord { seq: g.acked };
        if append(&mut rec, Kind::Acked, &r).is_err() {
            return;
        }
        match g.file.write_all_at(&rec, g.len) {
            Ok(()) => {
                g.len += rec.len() as u64;
                g.acked_written = g.acked;
                g.dirty = true;
                // Only now do they leave the budget: a restart reads them as acknowledged, so
                // what the file holds unacknowledged never passes the budget.
                let upto = g.acked_written;
                while g.unacked.front().is_some_and(|&(s, _)| s <= upto) {
                    g.unacked.pop_front();
                    self.acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                let _ = g.file.set_len(g.len);
                self.failed("cannot write an acknowledgement to the spool", &e);
            }
        }
    }

    /// The acknowledged prefix is worth dropping: the whole file when nothing is
    /// unacknowledged and it grew past a quarter of the budget, else once it is half the file
    /// and the file is past half the budget.
    fn compaction_due(&self, g: &Inner) -> bool {
        let header = SPOOL_MAGIC.len() as u64;
        let dead = g.live_start() - header;
        if g.unacked.is_empty() {
            return g.len > header + self.max_bytes / 4;
        }
        g.len > self.max_bytes / 2 && dead >= (g.len - header) / 2
    }

    /// Drops the acknowledged prefix: cuts the file back to its header when nothing is
    /// unacknowledged; else writes the header, the last acknowledgement and the unacknowledged
    /// suffix to a new file, syncs it and renames it over the old one, so that at every
    /// instant one of the two holds every unacknowledged alert.
    fn compact(&self, mut g: std::sync::MutexGuard<'_, Inner>) {
        let header = SPOOL_MAGIC.len() as u64;
        if g.unacked.is_empty() {
            match g.file.set_len(header) {
                Ok(()) => {
                    g.len = header;
                    g.acked_written = 0;
                    g.dirty = true;
                    self.compactions.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => self.failed("cannot cut the spool back", &e),
            }
            return;
        }
        let from = g.live_start();
        let mut out = SPOOL_MAGIC.to_vec();
        if append(&mut out, Kind::Acked, &AckedRecord { seq: g.acked }).is_err() {
            return;
        }
        let base = out.len() as u64;
        let tmp = compacting_path(&self.path);
        let res = (|| -> std::io::Result<File> {
            let mut suffix = vec![0u8; (g.len - from) as usize];
            g.file.read_exact_at(&mut suffix, from)?;
            out.extend_from_slice(&suffix);
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all_at(&out, 0)?;
            f.sync_data()?;
            std::fs::rename(&tmp, &self.path)?;
            Ok(f)
        })();
        match res {
            Ok(f) => {
                g.file = Arc::new(f);
                g.len = out.len() as u64;
                for e in &mut g.unacked {
                    e.1 = e.1 - from + base;
                }
                g.acked_written = g.acked;
                g.dirty = false;
                drop(g);
                sync_dir(&self.path);
                self.syncs.fetch_add(1, Ordering::Relaxed);
                self.compactions.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                drop(g);
                self.failed(
                    "cannot compact the spool (the file as it is stays valid)",
                    &e,
                );
            }
        }
    }

    /// The spool's part of a `stats` snapshot.
    pub fn stats(&self) -> SpoolStats {
        let g = lock(&self.inner);
        SpoolStats {
            path: self.path.display().to_string(),
            bytes: g.len,
            unacked_bytes: g.len - g.live_start(),
            unacked: g.unacked.len(),
            max_bytes: self.max_bytes,
            appended: self.appended.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            compactions: self.compactions.load(Ordering::Relaxed),
            reloaded_at_start: self.reloaded_at_start,
            damaged_at_start: self.damaged_at_start,
            torn_bytes_at_start: self.torn_bytes_at_start,
            acked: self.acked.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// Reads the spool at `path` without changing it: the unacknowledged alerts of `origin`, oldest
/// first, and how many damaged stretches were skipped. For tools and tests.
pub fn read(path: &Path, origin: &str) -> std::io::Result<(Vec<Alert>, u64)> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut loader = Loader {
        origin,
        max_bytes: u64::MAX,
        alerts: VecDeque::new(),
        held: 0,
        acked: 0,
        last_seq: 0,
        damaged: 0,
        over_budget: 0,
    };
    let w = Window::new(&mut file)?;
    scan_framed(w, &mut loader, SPOOL_MAGIC.len() as u64, len)?;
    Ok((
        loader.alerts.into_iter().map(|(a, _)| a).collect(),
        loader.damaged,
    ))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use vespa_proto::AlertBody;

    use super::*;

    fn alert(seq: u64) -> Alert {
        Alert {
            origin: "a1".into(),
            seq,
            path: vec!["a1".into()],
            timestamp_ns: seq,
            body: AlertBody::Text(format!("alert #{seq}")),
        }
    }

    fn seqs(alerts: &[Alert]) -> Vec<u64> {
        alerts.iter().map(|a| a.seq).collect()
    }

    fn open(path: &Path, max: u64) -> (Spool, Vec<u64>) {
        let (s, back) = Spool::open(path, "a1", max).expect("open");
        (s, seqs(&back))
    }

    #[test]
    fn reopened_it_gives_back_what_was_not_acknowledged_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sub/a1.spool");
        let (s, back) = open(&path, 1 << 20);
        assert!(back.is_empty());
        for seq in 1..=10 {
            s.append(&alert(seq)).expect("append");
        }
        s.ack(4);
        s.sync();
        // Acknowledged after the last batch: only the next process learns it from its master.
        s.ack(6);
        drop(s);
        let (s, back) = open(&path, 1 << 20);
        assert_eq!(back, (5..=10).collect::<Vec<_>>());
        assert_eq!(s.stats().reloaded_at_start, 6);
        // The file was rewritten as those alone: reopening again gives the same.
        drop(s);
        let (_, back) = open(&path, 1 << 20);
        assert_eq!(back, (5..=10).collect::<Vec<_>>());
        let (alerts, damaged) = read(&path, "a1").expect("read");
        assert_eq!((seqs(&alerts), damaged), ((5..=10).collect(), 0));
        assert_eq!(
            alerts[0],
            alert(5),
            "the alert itself, not a copy of its number"
        );
    }

    /// The counters the metrics read: acknowledged once the batch wrote the ack, refused at
    /// the budget.
    #[test]
    fn acknowledged_and_refused_alerts_are_counted() {
        let dir = tempfile::tempdir().expect("dir");
        let (s, _) = open(&dir.path().join("a1.spool"), MIN_BUDGET);
        let mut seq = 0;
        while s.append(&alert(seq + 1)).is_ok() {
            seq += 1;
        }
        assert!(matches!(s.append(&alert(seq + 2)), Err(Refused::Full)));
        let st = s.stats();
        assert_eq!((st.appended, st.refused, st.acked), (seq, 2, 0));
        s.ack(3);
        assert_eq!(s.stats().acked, 0, "noted, not yet written");
        s.sync();
        let st = s.stats();
        assert_eq!((st.acked, st.unacked as u64), (3, seq - 3));
    }

    #[test]
    fn a_damaged_record_is_skipped_and_counted_and_a_torn_tail_cut_off() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("a1.spool");
        let (s, _) = open(&path, 1 << 20);
        let mut ends = Vec::new();
        for seq in 1..=5 {
            s.append(&alert(seq)).expect("append");
            ends.push(s.stats().bytes);
        }
        drop(s);
        let mut bytes = std::fs::read(&path).expect("read");
        // A bit flipped in the payload of #2, and #5 cut short.
        bytes[ends[0] as usize + HEADER_LEN + 3] ^= 0x10;
        bytes.truncate(ends[4] as usize - 7);
        std::fs::write(&path, &bytes).expect("write");
        let (s, back) = open(&path, 1 << 20);
        assert_eq!(back, [1, 3, 4]);
        let st = s.stats();
        assert_eq!(st.damaged_at_start, 1);
        assert_eq!(st.torn_bytes_at_start, ends[4] - 7 - ends[3]);
        // Appending goes on after the last whole record.
        s.append(&alert(6)).expect("append");
        drop(s);
        assert_eq!(open(&path, 1 << 20).1, [1, 3, 4, 6]);
    }

    #[test]
    fn a_file_that_is_not_a_spool_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("a1.spool");
        std::fs::write(&path, b"VESPA-JOURNAL-1\nsomething else").expect("write");
        let e = Spool::open(&path, "a1", 1 << 20).err().expect("refused");
        let text = e.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains("not an alert spool"),
            "{text}"
        );
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"VESPA-JOURNAL-1\nsomething else",
            "never overwritten"
        );
        // A directory where the file should be: the error names it too.
        let e = Spool::open(dir.path(), "a1", 1 << 20)
            .err()
            .expect("refused");
        assert!(
            e.to_string().contains(&dir.path().display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn alerts_of_another_origin_are_not_sent_as_this_nodes() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("a1.spool");
        let (s, _) = open(&path, 1 << 20);
        s.append(&alert(1)).expect("append");
        s.append(&Alert {
            origin: "other".into(),
            ..alert(2)
        })
        .expect("append");
        drop(s);
        let (s, back) = open(&path, 1 << 20);
        assert_eq!(back, [1]);
        assert_eq!(s.stats().damaged_at_start, 1);
    }

    #[test]
    fn the_budget_refuses_what_would_pass_it_until_acknowledgements_make_room() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("a1.spool");
        let (s, _) = open(&path, 2 * MIN_BUDGET);
        let mut seq = 0;
        loop {
            seq += 1;
            match s.append(&alert(seq)) {
                Ok(()) => {}
                Err(Refused::Full) => break,
                Err(Refused::Io(e)) => panic!("{e}"),
            }
        }
        let st = s.stats();
        assert!(st.unacked_bytes <= 2 * MIN_BUDGET && st.unacked_bytes > 2 * MIN_BUDGET - 200);
        assert_eq!(st.unacked as u64, seq - 1);
        s.ack(seq / 2);
        assert!(
            matches!(s.append(&alert(seq)), Err(Refused::Full)),
            "room is made once the acknowledgement is written"
        );
        s.sync();
        s.append(&alert(seq)).expect("room again");
        // A file written under a larger budget is read back within the smaller one: the newest
        // are kept.
        drop(s);
        let (s, back) = open(&path, MIN_BUDGET);
        assert_eq!(back.last(), Some(&seq));
        assert!(
            back.len() < (seq / 2) as usize,
            "{} alerts kept",
            back.len()
        );
        assert!(s.stats().unacked_bytes <= MIN_BUDGET);
    }

    #[test]
    fn the_acknowledged_prefix_is_dropped_and_the_file_stays_bounded() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("a1.spool");
        let (s, _) = open(&path, MIN_BUDGET);
        let mut max_len = 0;
        for seq in 1..=20_000u64 {
            s.append(&alert(seq)).expect("append");
            // The master acknowledges with a lag of 10 alerts.
            if seq > 10 {
                s.ack(seq - 10);
            }
            if seq % 50 == 0 {
                s.sync();
            }
            max_len = max_len.max(s.stats().bytes);
        }
        let st = s.stats();
        assert!(st.compactions > 10, "{st:?}");
        assert!(max_len < 2 * MIN_BUDGET, "the file reached {max_len} bytes");
        drop(s);
        assert_eq!(
            open(&path, MIN_BUDGET).1,
            (19_991..=20_000).collect::<Vec<_>>()
        );
        // Everything acknowledged: the file is cut back to its header.
        let (s, _) = open(&path, MIN_BUDGET);
        for seq in 20_001..=22_000 {
            s.append(&alert(seq)).expect("append");
            s.ack(seq);
            s.sync();
        }
        assert!(s.stats().bytes < MIN_BUDGET / 4 + 1024);
        drop(s);
        assert!(open(&path, MIN_BUDGET).1.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(usize),
        Ack(u64),
        Sync,
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0usize..3000).prop_map(Op::Append),
            2 => (0u64..8).prop_map(Op::Ack),
            1 => Just(Op::Sync),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// Whatever the appends (some refused by the budget), acknowledgements, batches and
        /// restarts, reading the spool back gives exactly the alerts appended and not
        /// acknowledged as of the last batch, in order (an acknowledgement noted after it is
        /// lost with the process: those alerts are sent again, and de-duplicated above).
        #[test]
        fn reading_back_gives_the_unacknowledged_set(ops in proptest::collection::vec(op(), 1..120)) {
            let dir = tempfile::tempdir().expect("dir");
            let path = dir.path().join("a1.spool");
            let (mut s, _) = open(&path, MIN_BUDGET);
            let mut appended: Vec<u64> = Vec::new();
            let (mut acked, mut acked_synced) = (0u64, 0u64);
            let mut seq = 0u64;
            let expected = |appended: &[u64], upto: u64| -> Vec<u64> {
                appended.iter().copied().filter(|&q| q > upto).collect()
            };
            for op in ops {
                match op {
                    Op::Append(size) => {
                        seq += 1;
                        let a = Alert { body: AlertBody::Text("x".repeat(size * 10)), ..alert(seq) };
                        match s.append(&a) {
                            Ok(()) => appended.push(seq),
                            Err(Refused::Full) => {}
                            Err(Refused::Io(e)) => panic!("{e}"),
                        }
                    }
                    Op::Ack(back) => {
                        acked = acked.max(seq.saturating_sub(back));
                        s.ack(acked);
                    }
                    Op::Sync => {
                        s.sync();
                        acked_synced = acked;
                    }
                    Op::Reopen => {
                        drop(s);
                        let (s2, back) = open(&path, MIN_BUDGET);
                        appended = expected(&appended, acked_synced);
                        prop_assert_eq!(&back, &appended);
                        acked = acked_synced;
                        s = s2;
                    }
                }
                prop_assert!(s.stats().unacked_bytes <= MIN_BUDGET);
                prop_assert!(s.stats().bytes <= 2 * MIN_BUDGET + 64 * 1024);
            }
            drop(s);
            let (_, back) = open(&path, MIN_BUDGET);
            prop_assert_eq!(back, expected(&appended, acked_synced));
        }
    }
}
