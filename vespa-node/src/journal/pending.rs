//! Alerts the VO has taken but not yet written to its journal, and whether writing works.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use vespa_proto::Alert;

use super::record::{append, EncodeError, Kind};
use crate::util::lock;

/// Bytes of records that may wait to be written (a soft bound: one more alert per
/// connection may go over it). Beyond it, the VO stops reading its children's alerts until
/// the journal has written some, which pushes back down the tree as a full queue would.
pub(crate) const MAX_PENDING_BYTES: usize = 8 << 20;

/// Alerts taken together with the records that hold them, in the order they were taken.
#[derive(Default)]
pub(crate) struct Batch {
    pub bytes: Vec<u8>,
    pub alerts: Vec<(Arc<str>, Alert)>,
}

#[derive(Default)]
struct Queue {
    waiting: Batch,
    /// Bytes taken out by the writer and not yet written (still counted against the bound).
    in_flight: usize,
}

/// See the module documentation.
#[derive(Default)]
pub(crate) struct Pending {
    queue: Mutex<Queue>,
    /// Alerts in the queue (readable without the lock, for `stats`).
    count: AtomicUsize,
    /// Something to write.
    wake: Notify,
    /// Room again.
    room: Notify,
}

impl Pending {
    /// Queues `alert` (of the origin interned as `key`) to be written. An alert that cannot
    /// be encoded comes back with the reason.
    pub fn push(&self, key: Arc<str>, alert: Alert) -> Result<(), Box<(Alert, EncodeError)>> {
        let mut q = lock(&self.queue);
        if let Err(e) = append(&mut q.waiting.bytes, Kind::Alert, &alert) {
            return Err(Box::new((alert, e)));
        }
        q.waiting.alerts.push((key, alert));
        drop(q);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
        Ok(())
    }

    /// Whether there is room for more.
    pub fn has_room(&self) -> bool {
        let q = lock(&self.queue);
        q.waiting.bytes.len() + q.in_flight < MAX_PENDING_BYTES
    }

    /// Waits until there is room for more.
    pub async fn room(&self) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.has_room() {
                return;
            }
            room.await;
        }
    }

    /// Completes when alerts were queued since the last call (a queued wake-up is kept).
    pub async fn wanted(&self) {
        self.wake.notified().await
    }

    /// Takes everything queued, to be written.
    pub fn take(&self) -> Batch {
        let mut q = lock(&self.queue);
        let batch = std::mem::take(&mut q.waiting);
        q.in_flight = batch.bytes.len();
        batch
    }

    /// The taken batch was written.
    pub fn written(&self, n: usize) {
        lock(&self.queue).in_flight = 0;
        self.count.fetch_sub(n, Ordering::Relaxed);
        self.room.notify_waiters();
    }

    /// The taken batch could not be written: it goes back in front of what came since.
    pub fn put_back(&self, mut batch: Batch) {
        let mut q = lock(&self.queue);
        q.in_flight = 0;
        batch.bytes.append(&mut q.waiting.bytes);
        batch.alerts.append(&mut q.waiting.alerts);
        q.waiting = batch;
    }

    /// Alerts waiting.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// Whether the journal can write, with one log line per change and the delay before the next
/// attempt while it cannot.
pub(crate) struct Health {
    failing_since: Option<Instant>,
    failed_attempts: u64,
    delay: Duration,
}

/// First wait before writing again after a failure; it doubles up to [`RETRY_MAX`].
pub(crate) const RETRY_MIN: Duration = Duration::from_millis(50);
/// Longest wait between two attempts while the journal cannot write.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(1);

impl Health {
    pub fn new() -> Health {
        Health {
            failing_since: None,
            failed_attempts: 0,
            delay: RETRY_MIN,
        }
    }

    /// A write failed: logs if it is the first since the last success; returns how long to
    /// wait before the next attempt.
    pub fn failed(&mut self, journal: &str, error: &std::io::Error, pending: usize) -> Duration {
        self.failed_attempts += 1;
        if self.failing_since.is_none() {
            self.failing_since = Some(Instant::now());
            self.delay = RETRY_MIN;
            tracing::error!(journal, %error, pending, "cannot write the alert journal: alerts are not acknowledged (their senders keep them) until it can");
        } else {
            self.delay = (self.delay * 2).min(RETRY_MAX);
        }
        self.delay
    }

    /// A write succeeded: logs if writing had been failing.
    pub fn succeeded(&mut self, journal: &str, written: usize) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(journal, failed_for = ?since.elapsed(), failed_attempts = self.failed_attempts, written, "alert journal writable again: acknowledgements resume");
            self.failed_attempts = 0;
        }
    }
}
