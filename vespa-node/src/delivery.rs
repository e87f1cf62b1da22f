//! Delivery: how a node takes alerts (its own and its children's), keeps them until its
//! master acknowledges them, and passes acknowledgements down.
//!
//! ## Delivery guarantee
//!
//! **An alert is acknowledged to a child only once the VO has processed it.** Each hop keeps
//! an alert in its [`Outbox`] until its master acknowledges it, and an HO passes the VO's
//! `Ack` down to the child the alert came from instead of acknowledging on receipt (ack
//! chaining). So until the VO has processed an alert, the origin still holds it:
//! - a cut link, a dead HO or a dead VO loses nothing: the origin (and any live hop) re-sends
//!   after reconnecting, and every hop de-duplicates ([`crate::dedup`]);
//! - the VO processes each alert once: with a journal, an alert is processed (handlers, recent
//!   alerts, the mark that makes a re-send a duplicate) and acknowledged only once the
//!   journal's writer has written it, and a restarted VO rebuilds its de-duplication table
//!   from the journal; while the journal cannot write, alerts wait unacknowledged (see
//!   [`crate::journal`]). Without a journal, a restarted VO may process again the few alerts
//!   the old one processed but whose ack died with it;
//! - an HO keeps no state that matters for delivery: killed and restarted, it starts empty
//!   and the children's re-sends refill it.
//!
//! - with a spool ([`crate::spool`], `spool_dir`), a node's own alerts are written to disk as
//!   they are queued and read back at start: an agent killed and restarted sends again, with
//!   their origin and sequence numbers, the alerts the VO had not acknowledged. So with the
//!   VO's journal and the spools, "acknowledged" means "durable" at every hop.
//!
//! What is not covered: without a spool, the origin's own queue is in memory, so alerts an
//! agent raised and the VO has not yet processed die with the agent if it is killed (SIGTERM
//! flushes first); a full origin queue (or spool) drops new alerts, counts them
//! (`queue_overflow`) and reports the count in an alert once there is room again; HO alert
//! handlers run again for alerts re-sent after the HO itself restarted (they run once per hop
//! per process lifetime), and an agent's handlers do not run again on alerts read back from
//! its spool.
//!
//! All of that state is here, behind one owner: the queue, the per-hop de-duplication table
//! and the route of each origin's acks, the node's own sequence numbers, the overflow count,
//! the VO's journal, the alerts kept for `get_alerts`, the alert handlers and the counters
//! they move. Connections only hand alerts and acks in (`on_alert`, `on_ack`) and take the
//! queue out.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use vespa_proto::{Alert, AlertBody, Message};

use crate::dedup::{Dedup, OriginState, Verdict};
use crate::error::NodeError;
use crate::journal::Journaled;
use crate::outbox::{Outbox, Slot};
use crate::session::Session;
use crate::spec::NodeSpec;
use crate::spool::{Refused, Spool};
use crate::stats::{get, inc, Stats};
use crate::util::{lock, now_ns};

/// Called for every new alert at every hop (after de-duplication; path includes this hop).
/// Must be quick: it runs on the connection's task. At the VO the alert it is given is the
/// one kept for `get_alerts`: a handler that keeps it (the API's view) shares it.
pub type AlertHandler = Arc<dyn Fn(&Arc<Alert>) + Send + Sync>;

/// The alert could not be queued: the queue is full (counted and reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("alert dropped: the outgoing queue is full")]
pub struct QueueFull;

/// Per-hop routing state, under one lock so "judge, then queue" is atomic per origin.
#[derive(Default)]
struct Hop {
    dedup: Dedup,
    /// The connection each origin's alerts last came through (where its acks go).
    routes: HashMap<Arc<str>, Weak<Session>>,
}

impl Hop {
    fn route(&mut self, origin: &Arc<str>, from: &Arc<Session>) {
        match self.routes.get(origin) {
            Some(w) if std::ptr::eq(w.as_ptr(), Arc::as_ptr(from)) => {}
            _ => {
                self.routes.insert(origin.clone(), Arc::downgrade(from));
            }
        }
    }
}

/// Alerts kept for `get_alerts`.
struct Recent {
    next_index: u64,
    alerts: VecDeque<Arc<Alert>>,
    cap: usize,
    /// Their size (as sealed frames, close to what they take in memory).
    bytes: usize,
}

/// Bytes of alerts a node keeps for `get_alerts` (and the VO's API for its view) at the most,
/// whatever `keep_alerts` says: 10,000 alerts of a megabyte would be ten gigabytes.
pub const KEEP_ALERT_BYTES: usize = 64 << 20;

impl Recent {
    fn new(cap: usize) -> Recent {
        Recent {
            next_index: 0,
            alerts: VecDeque::new(),
            cap,
            bytes: 0,
        }
    }

    fn push(&mut self, a: Arc<Alert>) {
        self.next_index += 1;
        if self.cap == 0 {
            return;
        }
        self.bytes += a.sealed_len();
        self.alerts.push_back(a);
        self.trim();
    }

    /// Takes back what a journal kept, within the same bounds.
    fn restore(&mut self, alerts: VecDeque<Alert>, next_index: u64) {
        self.bytes = alerts.iter().map(Alert::sealed_len).sum();
        self.alerts = alerts.into_iter().map(Arc::new).collect();
        self.next_index = next_index;
        self.trim();
    }

    /// Drops the oldest alerts beyond the count or the bytes allowed.
    fn trim(&mut self) {
        while self.alerts.len() > self.cap || self.bytes > KEEP_ALERT_BYTES {
            match self.alerts.pop_front() {
                Some(old) => self.bytes -= old.sealed_len(),
                None => break,
            }
        }
    }
}

/// The delivery counters.
#[derive(Default)]
struct Counters {
    alerts_raised: AtomicU64,
    alerts_received: AtomicU64,
    alerts_forwarded: AtomicU64,
    alerts_processed: AtomicU64,
    alerts_sent: AtomicU64,
    duplicates_dropped: AtomicU64,
    acks_received: AtomicU64,
    queue_overflow: AtomicU64,
    oversized: AtomicU64,
}

/// See the module documentation.
pub(crate) struct Delivery {
    name: String,
    /// Alerts for the master; `None` at the root.
    outbox: Option<Arc<Outbox>>,
    hop: Mutex<Hop>,
    /// Last sequence number this node gave its own alerts (numbering and queueing happen
    /// under this lock so the queue holds them in order).
    own_seq: Mutex<u64>,
    overflow_unreported: AtomicU64,
    recent: Mutex<Recent>,
    journal: Option<Journaled>,
    /// The spool of this node's own unacknowledged alerts, if it keeps one.
    spool: Option<Arc<Spool>>,
    /// Held while a written batch is processed, so batches are processed in order.
    committing: Mutex<()>,
    handlers: Vec<AlertHandler>,
    counters: Counters,
    /// The frame limit of the link to the master: every queued alert fits it.
    max_frame: usize,
}

impl Delivery {
    /// The delivery state of the node `spec` describes; the VO opens its journal, if any, and
    /// takes back what it had processed.
    pub fn new(spec: &NodeSpec, handlers: Vec<AlertHandler>) -> Result<Delivery, NodeError> {
        let mut hop = Hop::default();
        let mut recent = Recent::new(spec.settings.keep_alerts);
        let journal = match (&spec.journal, spec.master.is_none()) {
            (Some(path), true) => {
                let s = &spec.settings;
                let (j, loaded) = Journaled::open(path, s.journal_max_bytes, s.keep_alerts)?;
                for (origin, m) in j.marks() {
                    let state = OriginState {
                        highest: m.highest,
                        acked: m.highest,
                        count: m.count,
                        first: m.first,
                    };
                    hop.dedup.restore(&origin, state);
                }
                recent.restore(loaded.recent, loaded.alerts_total);
                Some(j)
            }
            _ => None,
        };
        let outbox = spec
            .master
            .as_ref()
            .map(|_| Arc::new(Outbox::new(spec.settings.queue_capacity)));
        // Numbering from the wall clock keeps a restarted origin above its old numbers.
        let mut own_seq = now_ns();
        let counters = Counters::default();
        let overflow_unreported = AtomicU64::new(0);
        let spool = match (&spec.spool, &outbox) {
            (Some(path), Some(outbox)) => {
                let (spool, unacked) =
                    Spool::open(path, &spec.name, spec.settings.spool_max_bytes)?;
                // What the spool held goes first, as it was numbered; new alerts go above.
                let mut dropped = 0;
                for a in unacked {
                    own_seq = own_seq.max(a.seq);
                    let Some(slot) = outbox.try_reserve() else {
                        // A queue made smaller since: the oldest stay, the rest are dropped.
                        dropped += 1;
                        spool.ack(a.seq);
                        continue;
                    };
                    let key = hop.dedup.accept(&a.origin, a.seq).1;
                    outbox.push(slot, key, a.seq, Message::Alert(a));
                }
                if dropped > 0 {
                    tracing::warn!(node = %spec.name, dropped, capacity = outbox.capacity(), "the spool held more alerts than the queue takes: the newest were dropped (counted in queue_overflow)");
                    counters
                        .queue_overflow
                        .fetch_add(dropped, Ordering::Relaxed);
                    overflow_unreported.fetch_add(dropped, Ordering::Relaxed);
                }
                Some(Arc::new(spool))
            }
            _ => None,
        };
        Ok(Delivery {
            name: spec.name.clone(),
            outbox,
            hop: Mutex::new(hop),
            own_seq: Mutex::new(own_seq),
            overflow_unreported,
            recent: Mutex::new(recent),
            journal,
            spool,
            committing: Mutex::new(()),
            handlers,
            counters,
            max_frame: spec.settings.max_frame,
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn new_alert(&self, seq: u64, body: AlertBody, timestamp_ns: u64) -> Alert {
        let mut alert = Alert {
            origin: self.name.clone(),
            seq,
            path: vec![self.name.clone()],
            timestamp_ns,
            body,
        };
        if self.outbox.is_some() {
            // Room for the names the hops above add, so it fits every frame up to the VO.
            let room = vespa_proto::PATH_ROOM.min(self.max_frame / 4);
            self.fit(&mut alert, room);
        }
        alert
    }

    /// Makes `alert` fit the frame to the master (with `room` to spare), replacing a body
    /// too large by an [`AlertBody::Oversized`] note: counted, logged, and sent in its place
    /// so that the alert is acknowledged and the queue and the link move on.
    fn fit(&self, alert: &mut Alert, room: usize) {
        let kind = alert.body.kind();
        if let Some(size) = alert.fit(&self.name, self.max_frame, room) {
            let n = self.counters.oversized.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() || n.is_multiple_of(1000) {
                tracing::warn!(node = %self.name, origin = ?alert.origin, seq = alert.seq, kind, size, max_frame = self.max_frame, oversized_total = n, "alert too large for the frame to the master: its body is replaced by an Oversized note");
            }
        }
    }

    /// Raises an alert at this node (see [`crate::NodeHandle::raise_at`]).
    pub fn raise(&self, body: AlertBody, timestamp_ns: u64) -> Result<u64, QueueFull> {
        let mut seq = lock(&self.own_seq);
        let Some(outbox) = &self.outbox else {
            if self.journal.as_ref().is_some_and(|j| !j.has_room()) {
                let n = self.counters.queue_overflow.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_multiple_of(1000) {
                    tracing::warn!(node = %self.name, dropped_total = n, "alerts waiting for the journal at their bound: this node's own alert dropped (counted in queue_overflow)");
                }
                return Err(QueueFull);
            }
            *seq += 1;
            let alert = self.new_alert(*seq, body, timestamp_ns);
            inc(&self.counters.alerts_raised);
            self.process_at_root(alert, None);
            return Ok(*seq);
        };
        let Some(slot) = outbox.try_reserve() else {
            return Err(self.overflow(outbox, "outgoing alert queue full"));
        };
        let unreported = self.overflow_unreported.load(Ordering::Relaxed);
        if unreported > 0 {
            if let Some(report_slot) = outbox.try_reserve() {
                let spooled = match &self.spool {
                    Some(s) => format!(", spool {} bytes", s.max_bytes()),
                    None => String::new(),
                };
                let text = format!(
                    "{unreported} alert(s) dropped at {}: outgoing queue full (capacity {}{spooled})",
                    self.name,
                    outbox.capacity()
                );
                let report = self.new_alert(*seq + 1, AlertBody::Text(text), now_ns());
                if self.spool_own(&report) {
                    self.overflow_unreported
                        .fetch_sub(unreported, Ordering::Relaxed);
                    *seq += 1;
                    self.queue_own(outbox, report_slot, report);
                }
            }
        }
        let alert = self.new_alert(*seq + 1, body, timestamp_ns);
        if !self.spool_own(&alert) {
            drop(slot);
            return Err(self.overflow(outbox, "alert spool at its byte budget"));
        }
        *seq += 1;
        self.queue_own(outbox, slot, alert);
        Ok(*seq)
    }

    /// Counts (and now and then logs) one of this node's own alerts dropped for want of room.
    fn overflow(&self, outbox: &Outbox, why: &str) -> QueueFull {
        let n = self.counters.queue_overflow.fetch_add(1, Ordering::Relaxed) + 1;
        self.overflow_unreported.fetch_add(1, Ordering::Relaxed);
        if n == 1 || n.is_multiple_of(1000) {
            let spool_max_bytes = self.spool.as_ref().map(|s| s.max_bytes());
            tracing::warn!(node = %self.name, dropped_total = n, capacity = outbox.capacity(), ?spool_max_bytes, "{why}: alert dropped (counted in queue_overflow, reported upstream when there is room)");
        }
        QueueFull
    }

    /// Writes one of this node's own alerts to its spool, if it keeps one. False: the spool is
    /// at its budget (the alert must be dropped). An alert the spool cannot write (a full
    /// disk) is still queued, in memory only; the failure is counted and logged.
    fn spool_own(&self, alert: &Alert) -> bool {
        let Some(spool) = &self.spool else {
            return true;
        };
        match spool.append(alert) {
            Ok(()) => true,
            Err(Refused::Full) => false,
            Err(Refused::Io(e)) => {
                tracing::warn!(node = %self.name, seq = alert.seq, error = %e, "cannot write this alert to the spool: it is queued in memory only");
                true
            }
        }
    }

    fn queue_own(&self, outbox: &Outbox, slot: Slot, alert: Alert) {
        inc(&self.counters.alerts_raised);
        inc(&self.counters.alerts_forwarded);
        let alert = self.run_handlers_on(alert);
        let key = lock(&self.hop).dedup.accept(&alert.origin, alert.seq).1;
        let seq = alert.seq;
        outbox.push(slot, key, seq, Message::Alert(alert));
    }

    fn run_handlers(&self, alert: &Arc<Alert>) {
        for h in &self.handlers {
            h(alert);
        }
    }

    /// Runs the handlers on an alert that goes on up the tree: shared with them for the
    /// call, and taken back without a copy unless one of them kept it.
    fn run_handlers_on(&self, alert: Alert) -> Alert {
        if self.handlers.is_empty() {
            return alert;
        }
        let shared = Arc::new(alert);
        self.run_handlers(&shared);
        Arc::try_unwrap(shared).unwrap_or_else(|kept| (*kept).clone())
    }

    /// The root takes a new alert. With a journal, it waits there to be written (and is
    /// processed and acknowledged by [`Delivery::commit_journal`]); without, it is processed
    /// at once (recent list, handlers) and acknowledged to `from`, if it came from a child.
    fn process_at_root(&self, mut alert: Alert, from: Option<&Arc<Session>>) {
        let mut hop = lock(&self.hop);
        let (verdict, key) = hop.dedup.accept(&alert.origin, alert.seq);
        if let Some(from) = from {
            hop.route(&key, from);
        }
        let seq = alert.seq;
        if let Verdict::Duplicate { acked } = verdict {
            drop(hop);
            inc(&self.counters.duplicates_dropped);
            // One still waiting for the journal is acknowledged once written.
            if let (true, Some(from)) = (acked, from) {
                from.acks.put(key, seq);
            }
            return;
        }
        if from.is_some() {
            alert.path.push(self.name.clone());
        }
        let alert = match &self.journal {
            // Under the hop lock, so the journal takes each origin's alerts in the order
            // they were judged.
            Some(j) => match j.push(key.clone(), alert) {
                Ok(()) => return,
                Err(unjournaled) => *unjournaled,
            },
            None => alert,
        };
        hop.dedup.mark_acked(&key, seq);
        let alert = Arc::new(alert);
        lock(&self.recent).push(alert.clone());
        drop(hop);
        inc(&self.counters.alerts_processed);
        self.run_handlers(&alert);
        if let Some(from) = from {
            from.acks.put(key, seq);
        }
    }

    /// Writes the alerts waiting for the journal as one batch and, once they are in it,
    /// processes them in order: marks them processed for de-duplication, runs the handlers,
    /// keeps them for `get_alerts`, and acknowledges each origin's highest on the connection
    /// its alerts last came through. Returns the delay before the next attempt when the
    /// journal cannot write (nothing is then processed or acknowledged).
    pub fn commit_journal(&self) -> Option<Duration> {
        let j = self.journal.as_ref()?;
        let _in_order = lock(&self.committing);
        let batch = match j.write_pending() {
            Ok(b) => b,
            Err(retry) => return Some(retry),
        };
        if batch.alerts.is_empty() {
            return None;
        }
        let mut highest: HashMap<Arc<str>, u64> = HashMap::new();
        let acks: Vec<(Arc<str>, u64, Arc<Session>)> = {
            let mut hop = lock(&self.hop);
            for (key, a) in &batch.alerts {
                hop.dedup.mark_acked(key, a.seq);
                highest.insert(key.clone(), a.seq);
            }
            highest
                .into_iter()
                .filter_map(|(key, seq)| {
                    let session = hop.routes.get(&key)?.upgrade()?;
                    Some((key, seq, session))
                })
                .collect()
        };
        self.counters
            .alerts_processed
            .fetch_add(batch.alerts.len() as u64, Ordering::Relaxed);
        let alerts: Vec<Arc<Alert>> = batch.alerts.into_iter().map(|(_, a)| Arc::new(a)).collect();
        for a in &alerts {
            // The writer is the one task that processes a journaling VO's alerts: a handler
            // that panics must not end it.
            let run = std::panic::AssertUnwindSafe(|| self.run_handlers(a));
            if std::panic::catch_unwind(run).is_err() {
                tracing::error!(node = %self.name, origin = %a.origin, seq = a.seq, "an alert handler panicked on this alert");
            }
        }
        let mut recent = lock(&self.recent);
        for a in alerts {
            recent.push(a);
        }
        drop(recent);
        for (key, seq, session) in acks {
            session.acks.put(key, seq);
        }
        j.compact_if_due(|| {
            let r = lock(&self.recent);
            (
                r.alerts.iter().map(|a| (**a).clone()).collect(),
                r.next_index,
            )
        });
        None
    }

    /// The VO's journal writer: writes alerts as they come, and while the journal cannot
    /// write, tries again (50 ms, doubling to 1 s). Ends when `stop` completes; returns at
    /// once without a journal.
    pub async fn run_journal(&self, stop: impl Future<Output = ()>) {
        let Some(j) = &self.journal else {
            return;
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = j.wanted() => {}
            }
            while let Some(retry) = self.commit_journal() {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(retry) => {}
                }
            }
        }
    }

    /// The spool's syncer: one `fdatasync` per batch of appended alerts (at most one per
    /// [`crate::spool::SYNC_EVERY`]), acknowledgements written and the acknowledged prefix
    /// dropped on the way; a last batch when `stop` completes. Returns at once without a
    /// spool.
    pub async fn run_spool(&self, stop: impl Future<Output = ()>) {
        let Some(spool) = &self.spool else {
            return;
        };
        tokio::pin!(stop);
        loop {
            let stopping = tokio::select! {
                _ = &mut stop => true,
                _ = spool.wanted() => false,
            };
            let s = spool.clone();
            // The sync blocks on the disk: off the async workers.
            if let Err(e) = tokio::task::spawn_blocking(move || s.sync()).await {
                tracing::error!(node = %self.name, error = %e, "the spool's sync did not complete");
            }
            if stopping {
                return;
            }
            tokio::select! {
                _ = &mut stop => {}
                _ = tokio::time::sleep(crate::spool::SYNC_EVERY) => {}
            }
        }
    }

    /// A last batch of the spool (the stop sequence's last step).
    pub fn flush_spool(&self) {
        if let Some(s) = &self.spool {
            s.sync();
        }
    }

    /// An alert from a child (already checked to be well-formed).
    pub async fn on_alert(&self, mut alert: Alert, from: &Arc<Session>) {
        inc(&self.counters.alerts_received);
        let Some(outbox) = &self.outbox else {
            if let Some(j) = &self.journal {
                // Alerts waiting for the journal are bounded: past that, stop reading.
                tokio::select! {
                    _ = j.room() => {}
                    _ = from.cancel.cancelled() => return,
                }
            }
            self.process_at_root(alert, Some(from));
            return;
        };
        // Reserve room first (this is where backpressure waits), then judge and queue under
        // one lock, so two overlapping connections of one child cannot queue an origin's
        // alerts out of order.
        let slot = tokio::select! {
            s = outbox.reserve() => s,
            _ = from.cancel.cancelled() => return,
        };
        let mut hop = lock(&self.hop);
        let (verdict, key) = hop.dedup.accept(&alert.origin, alert.seq);
        hop.route(&key, from);
        let seq = alert.seq;
        match verdict {
            Verdict::New => {
                alert.path.push(self.name.clone());
                self.fit(&mut alert, 0);
                let alert = self.run_handlers_on(alert);
                outbox.push(slot, key, seq, Message::Alert(alert));
                drop(hop);
                inc(&self.counters.alerts_forwarded);
            }
            Verdict::Duplicate { acked } => {
                drop(hop);
                drop(slot);
                inc(&self.counters.duplicates_dropped);
                // Still in our queue: the master's ack will be passed down when it comes.
                if acked {
                    from.acks.put(key, seq);
                }
            }
        }
    }

    /// `Ack { origin, seq }` from the master: free the queue and pass it down the route.
    pub fn on_ack(&self, origin: &str, seq: u64) {
        inc(&self.counters.acks_received);
        if let Some(o) = &self.outbox {
            o.ack(origin, seq);
        }
        if let Some(s) = self.spool.as_ref().filter(|_| origin == self.name) {
            s.ack(seq);
        }
        let mut hop = lock(&self.hop);
        hop.dedup.mark_acked(origin, seq);
        let route = hop
            .routes
            .get_key_value(origin)
            .and_then(|(k, w)| w.upgrade().map(|s| (k.clone(), s)));
        drop(hop);
        if let Some((key, session)) = route {
            session.acks.put(key, seq);
        }
    }

    /// Writes what waits for the journal, once (the stop sequence's last step, after the
    /// journal's writer ended). What cannot be written was not acknowledged: its senders
    /// send it again to the next VO.
    pub fn flush_journal(&self) {
        if self.commit_journal().is_some() {
            let pending = self.journal.as_ref().map_or(0, Journaled::pending);
            tracing::warn!(node = %self.name, pending, "stopping with alerts the journal could not write (not acknowledged: their senders keep them)");
        }
    }

    /// The queue for the master, lent to the uplink's writer (`None` at the root).
    pub fn outbox(&self) -> Option<Arc<Outbox>> {
        self.outbox.clone()
    }

    /// A new link to the master: every unacknowledged alert goes out again, oldest first.
    /// Returns how many that is.
    pub fn rewind(&self) -> usize {
        self.outbox.as_ref().map_or(0, |o| {
            o.rewind();
            o.len()
        })
    }

    /// Counts `n` alert frames written to the master.
    pub fn sent(&self, n: u64) {
        self.counters.alerts_sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Waits up to `limit` for the master to acknowledge the whole queue; says (and logs) so
    /// when it did not.
    pub async fn drain(&self, limit: Duration) -> bool {
        let Some(outbox) = &self.outbox else {
            return true;
        };
        if tokio::time::timeout(limit, outbox.wait_empty())
            .await
            .is_err()
        {
            tracing::warn!(node = %self.name, unacknowledged = outbox.len(), "stopping with alerts the master has not acknowledged");
            return false;
        }
        true
    }

    /// `get_alerts [from_index]`: JSON `{"first", "next", "alerts"}`, at most 2,000 alerts and
    /// a page that fits a frame (half of `max_frame` of alerts): `next` is where the next
    /// page starts.
    pub fn get_alerts(&self, from: u64) -> String {
        let r = lock(&self.recent);
        let first = r.next_index - r.alerts.len() as u64;
        let skip = from.saturating_sub(first) as usize;
        let budget = self.max_frame / 2;
        let mut used = 0;
        let mut alerts: Vec<serde_json::Value> = Vec::new();
        for a in r.alerts.iter().skip(skip).take(2000) {
            let v = serde_json::to_value(&**a).unwrap_or_default();
            used += v.to_string().len() + 1;
            // One alert always goes, so a reader never stalls on a page of nothing.
            if used > budget && !alerts.is_empty() {
                break;
            }
            alerts.push(v);
        }
        let next = first + (skip + alerts.len()) as u64;
        serde_json::json!({ "first": first, "next": next.max(from.min(r.next_index)), "alerts": alerts }).to_string()
    }

    /// Fills the delivery part of a `stats` snapshot.
    pub fn report(&self, st: &mut Stats) {
        let (len, cap) = self
            .outbox
            .as_ref()
            .map_or((0, 0), |o| (o.len(), o.capacity()));
        st.queue_len = len;
        st.queue_capacity = cap;
        st.origins = lock(&self.hop).dedup.snapshot();
        let c = &self.counters;
        st.alerts_raised = get(&c.alerts_raised);
        st.alerts_received = get(&c.alerts_received);
        st.alerts_forwarded = get(&c.alerts_forwarded);
        st.alerts_processed = get(&c.alerts_processed);
        st.alerts_sent = get(&c.alerts_sent);
        st.duplicates_dropped = get(&c.duplicates_dropped);
        st.acks_received = get(&c.acks_received);
        st.queue_overflow = get(&c.queue_overflow);
        st.oversized = get(&c.oversized);
        st.journal = self.journal.as_ref().map(Journaled::stats);
        st.spool = self.spool.as_ref().map(|s| s.stats());
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::Role;
    use crate::transport::Security;

    fn agent(queue_capacity: usize) -> Delivery {
        let mut spec = NodeSpec::test_agent(Security::Psk(vespa_proto::Psk::random()));
        spec.settings.queue_capacity = queue_capacity;
        Delivery::new(&spec, Vec::new()).expect("delivery")
    }

    fn stats(d: &Delivery) -> Stats {
        let mut st = Stats::new("a1", "agent");
        d.report(&mut st);
        st
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_waits_for_acks_no_longer_than_the_flush_timeout() {
        let d = Arc::new(agent(8));
        let seq = d.raise(AlertBody::Text("x".into()), 0).expect("queued");
        let t0 = Instant::now();
        assert!(
            !d.drain(Duration::from_secs(5)).await,
            "nobody acknowledged"
        );
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_millis(5010),
            "{waited:?}"
        );

        // An ack that comes while it waits ends the wait there and then.
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.drain(Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t1 = Instant::now();
        d.on_ack("a1", seq);
        assert!(waiter.await.expect("waiter"), "the queue drained");
        assert_eq!(t1.elapsed(), Duration::ZERO);
        assert_eq!(stats(&d).queue_len, 0);
    }

    #[test]
    fn an_alert_raised_too_large_goes_out_as_a_note_in_its_place() {
        let d = agent(8);
        let seq = d
            .raise(AlertBody::Text("x".repeat(2 << 20)), 0)
            .expect("queued");
        let mut sent = Vec::new();
        d.outbox().expect("queue").take_unsent(10, &mut sent);
        let Message::Alert(a) = &*sent[0] else {
            panic!("{sent:?}")
        };
        assert_eq!((a.origin.as_str(), a.seq), ("a1", seq));
        let AlertBody::Oversized {
            at,
            kind,
            size,
            limit,
        } = &a.body
        else {
            panic!("{a:?}")
        };
        assert_eq!((at.as_str(), kind.as_str()), ("a1", "text"));
        assert!(*size > 2 << 20);
        // Room kept for the path: a frame-sized alert at the origin would not fit one hop up.
        assert_eq!(
            *limit as usize,
            vespa_proto::frame::DEFAULT_MAX_FRAME - vespa_proto::PATH_ROOM
        );
        assert_eq!(stats(&d).oversized, 1);
    }

    #[test]
    fn kept_alerts_are_bounded_by_bytes_as_well_as_count() {
        let mut r = Recent::new(10_000);
        let big = |seq| Alert {
            origin: "a".into(),
            seq,
            path: vec!["a".into()],
            timestamp_ns: 0,
            body: AlertBody::Text("x".repeat(1 << 20)),
        };
        for seq in 0..100 {
            r.push(Arc::new(big(seq)));
        }
        assert_eq!(r.next_index, 100);
        assert!(
            r.bytes <= KEEP_ALERT_BYTES && r.alerts.len() < 64,
            "{} alerts",
            r.alerts.len()
        );
        assert_eq!(
            r.alerts.back().map(|a| a.seq),
            Some(99),
            "the newest are kept"
        );
        assert_eq!(
            r.bytes,
            r.alerts.iter().map(|a| a.sealed_len()).sum::<usize>()
        );
    }

    #[test]
    fn the_root_keeps_each_alert_once_and_shares_it_with_its_handlers() {
        let kept: Arc<Mutex<Vec<Arc<Alert>>>> = Arc::default();
        let k = kept.clone();
        let handler: AlertHandler = Arc::new(move |a: &Arc<Alert>| lock(&k).push(a.clone()));
        let mut spec = NodeSpec::test_agent(Security::Psk(vespa_proto::Psk::random()));
        spec.master = None;
        let d = Delivery::new(&spec, vec![handler]).expect("delivery");
        d.raise(AlertBody::Text("once".into()), 0).expect("raised");
        let recent = lock(&d.recent);
        let ours = recent.alerts.back().expect("kept");
        assert!(
            Arc::ptr_eq(ours, &lock(&kept)[0]),
            "the handler holds the same alert, not a copy"
        );
    }

    #[test]
    fn get_alerts_pages_what_would_not_fit_a_frame() {
        let mut spec = NodeSpec::test_agent(Security::Psk(vespa_proto::Psk::random()));
        spec.master = None;
        spec.settings.max_frame = 64 * 1024;
        let d = Delivery::new(&spec, Vec::new()).expect("delivery");
        for i in 0..10 {
            d.raise(AlertBody::Text(format!("{i}{}", "x".repeat(10_000))), 0)
                .expect("raised");
        }
        let mut from = 0;
        let mut seen = Vec::new();
        while seen.len() < 10 {
            let page: serde_json::Value = serde_json::from_str(&d.get_alerts(from)).expect("json");
            let texts = page["alerts"].as_array().expect("alerts").clone();
            assert!(
                !texts.is_empty() && texts.len() < 10,
                "paged: {} alerts",
                texts.len()
            );
            assert!(page.to_string().len() < 64 * 1024);
            seen.extend(
                texts
                    .iter()
                    .map(|a| a["body"]["Text"].as_str().expect("text")[..1].to_string()),
            );
            from = page["next"].as_u64().expect("next");
        }
        assert_eq!(seen, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    }

    #[test]
    fn overflow_is_counted_and_reported_ahead_of_the_next_alert() {
        let d = agent(2);
        let a = d.raise(AlertBody::Text("a".into()), 0).expect("queued");
        d.raise(AlertBody::Text("b".into()), 0).expect("queued");
        assert_eq!(d.raise(AlertBody::Text("c".into()), 0), Err(QueueFull));
        assert_eq!(d.raise(AlertBody::Text("d".into()), 0), Err(QueueFull));
        assert_eq!(stats(&d).queue_overflow, 2);
        // Room for two: the report takes the first slot, the new alert the second.
        d.on_ack("a1", a + 1);
        let e = d.raise(AlertBody::Text("e".into()), 0).expect("queued");
        assert_eq!(e, a + 3, "the report was numbered just before it");
        let outbox = d.outbox().expect("an agent has a queue");
        let mut sent = Vec::new();
        outbox.take_unsent(10, &mut sent);
        let texts: Vec<String> = sent
            .iter()
            .map(|m| match &**m {
                Message::Alert(Alert {
                    body: AlertBody::Text(t),
                    ..
                }) => t.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            texts,
            [
                "2 alert(s) dropped at a1: outgoing queue full (capacity 2)",
                "e"
            ]
        );
        let st = stats(&d);
        assert_eq!((st.alerts_raised, st.queue_overflow), (4, 2));
    }

    /// Agent `a1` spooling in `dir`, with room for `queue_capacity` alerts.
    fn spooling_agent(dir: &Path, queue_capacity: usize, spool_max_bytes: u64) -> Delivery {
        let mut spec = NodeSpec::test_agent(Security::Psk(vespa_proto::Psk::random()));
        spec.settings.queue_capacity = queue_capacity;
        spec.settings.spool_max_bytes = spool_max_bytes;
        spec.spool = Some(crate::spool::file_of(dir, "a1"));
        Delivery::new(&spec, Vec::new()).expect("delivery")
    }

    fn queued(d: &Delivery) -> Vec<(u64, String)> {
        let outbox = d.outbox().expect("queue");
        outbox.rewind();
        let mut sent = Vec::new();
        outbox.take_unsent(usize::MAX, &mut sent);
        sent.iter()
            .map(|m| match &**m {
                Message::Alert(Alert {
                    seq,
                    body: AlertBody::Text(t),
                    ..
                }) => (*seq, t.clone()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_restarted_agent_sends_again_what_was_not_acknowledged_and_numbers_above_it() {
        let dir = tempfile::tempdir().expect("dir");
        let d = spooling_agent(dir.path(), 100, 1 << 20);
        let seqs: Vec<u64> = (0..5)
            .map(|i| {
                d.raise(AlertBody::Text(format!("#{i}")), 0)
                    .expect("queued")
            })
            .collect();
        d.on_ack("a1", seqs[1]);
        d.flush_spool();
        // Killed: nothing more is written; the same spool is opened by the next process.
        drop(d);
        let d = spooling_agent(dir.path(), 100, 1 << 20);
        let again = queued(&d);
        assert_eq!(
            again,
            [
                (seqs[2], "#2".into()),
                (seqs[3], "#3".into()),
                (seqs[4], "#4".into())
            ],
            "the same alerts, with their numbers, first in the queue"
        );
        let st = stats(&d);
        assert_eq!(st.spool.as_ref().map(|s| s.reloaded_at_start), Some(3));
        assert_eq!(st.queue_len, 3);
        let next = d.raise(AlertBody::Text("new".into()), 0).expect("queued");
        assert!(
            next > seqs[4],
            "a new alert is numbered above the re-sent ones"
        );
        // Without a spool the same restart starts empty.
        let mut spec = NodeSpec::test_agent(Security::Psk(vespa_proto::Psk::random()));
        spec.settings.queue_capacity = 100;
        assert_eq!(
            stats(&Delivery::new(&spec, Vec::new()).expect("delivery")).queue_len,
            0
        );
    }

    #[test]
    fn a_spool_at_its_budget_drops_counts_and_reports_as_the_full_queue_does() {
        let dir = tempfile::tempdir().expect("dir");
        let d = spooling_agent(dir.path(), 100_000, 64 * 1024);
        let big = || AlertBody::Text("x".repeat(10_000));
        let mut raised = Vec::new();
        while let Ok(seq) = d.raise(big(), 0) {
            raised.push(seq);
        }
        assert!(
            (5..=7).contains(&raised.len()),
            "{} alerts of 10 kB",
            raised.len()
        );
        assert_eq!(d.raise(big(), 0), Err(QueueFull));
        let st = stats(&d);
        assert_eq!(st.queue_overflow, 2);
        // The queue had room, the spool refused; the report of the first drop (small) fit.
        assert_eq!(st.queue_len, raised.len() + 1);
        // Acknowledged and written: room again, and the report goes first.
        d.on_ack("a1", *raised.last().expect("raised"));
        d.flush_spool();
        d.raise(AlertBody::Text("after".into()), 0).expect("queued");
        let texts: Vec<String> = queued(&d).into_iter().map(|(_, t)| t).collect();
        assert_eq!(
            texts,
            [
                "1 alert(s) dropped at a1: outgoing queue full (capacity 100000, spool 65536 bytes)",
                "1 alert(s) dropped at a1: outgoing queue full (capacity 100000, spool 65536 bytes)",
                "after"
            ]
        );
    }

    /// A VO journaling to `path`, whose handler records the sequence numbers it sees.
    fn vo(path: &Path) -> (Delivery, Arc<Mutex<Vec<u64>>>) {
        let mut spec = NodeSpec::new(
            "VO",
            Role::Vo,
            None,
            Security::Psk(vespa_proto::Psk::random()),
        );
        spec.journal = Some(path.to_path_buf());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let handler: AlertHandler = Arc::new(move |a: &Arc<Alert>| lock(&s).push(a.seq));
        (Delivery::new(&spec, vec![handler]).expect("delivery"), seen)
    }

    fn child() -> Arc<Session> {
        let addr = "127.0.0.1:1".parse().expect("addr");
        Session::new(1, addr, "HO".into(), CancellationToken::new()).0
    }

    fn from_child(seq: u64) -> Alert {
        Alert {
            origin: "a1".into(),
            seq,
            path: vec!["a1".into(), "HO".into()],
            timestamp_ns: 1,
            body: AlertBody::Text(format!("#{seq}")),
        }
    }

    fn acks(s: &Session) -> Vec<(String, u64)> {
        s.acks
            .take()
            .into_iter()
            .map(|(o, seq)| (o.to_string(), seq))
            .collect()
    }

    /// A journal file in a directory of its own, removed when dropped.
    struct TempJournal(tempfile::TempDir);
    impl TempJournal {
        fn new() -> TempJournal {
            TempJournal(tempfile::tempdir().expect("temp dir"))
        }
        fn path(&self) -> PathBuf {
            self.0.path().join("vo.journal")
        }
    }

    #[tokio::test]
    async fn with_a_journal_an_alert_is_processed_and_acknowledged_only_once_written() {
        let dir = TempJournal::new();
        let (d, seen) = vo(&dir.path());
        let s = child();
        d.on_alert(from_child(1), &s).await;
        d.on_alert(from_child(2), &s).await;
        // A re-send while it waits: a duplicate, acknowledged only once written.
        d.on_alert(from_child(2), &s).await;
        let st = stats(&d);
        assert_eq!((st.alerts_processed, st.duplicates_dropped), (0, 1));
        assert_eq!(st.journal.map(|j| j.pending), Some(2));
        assert!(
            lock(&seen).is_empty(),
            "no handler before the journal has it"
        );
        assert!(acks(&s).is_empty(), "no ack before the journal has it");

        assert_eq!(d.commit_journal(), None);
        assert_eq!(*lock(&seen), [1, 2]);
        assert_eq!(acks(&s), [("a1".to_string(), 2)]);
        let st = stats(&d);
        assert_eq!(st.alerts_processed, 2);
        assert_eq!(st.journal.map(|j| j.pending), Some(0));
        // Written: a re-send is acknowledged at once, and not processed again.
        d.on_alert(from_child(1), &s).await;
        assert_eq!(acks(&s), [("a1".to_string(), 1)]);
        assert_eq!(*lock(&seen), [1, 2]);
    }

    #[tokio::test]
    async fn a_restarted_vo_processes_again_exactly_what_its_journal_did_not_hold() {
        let dir = TempJournal::new();
        let (d, _) = vo(&dir.path());
        let s = child();
        for seq in 1..=3 {
            d.on_alert(from_child(seq), &s).await;
        }
        d.commit_journal();
        // Taken but not written when the VO dies: it was neither processed nor acknowledged.
        d.on_alert(from_child(4), &s).await;
        drop(d);

        let (d, seen) = vo(&dir.path());
        let st = stats(&d);
        assert_eq!((st.origins["a1"].highest, st.origins["a1"].count), (3, 3));
        let s = child();
        // The child re-sends all it holds unacknowledged (the acks of 1..3 may have been lost).
        for seq in 1..=4 {
            d.on_alert(from_child(seq), &s).await;
        }
        assert_eq!(
            acks(&s),
            [("a1".to_string(), 3)],
            "the journaled ones at once"
        );
        d.commit_journal();
        assert_eq!(
            *lock(&seen),
            [4],
            "only the one never journaled is processed"
        );
        assert_eq!(acks(&s), [("a1".to_string(), 4)]);
        assert_eq!(stats(&d).origins["a1"].count, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn while_the_journal_cannot_write_nothing_is_processed_or_acknowledged_until_it_can() {
        let dir = TempJournal::new();
        let (d, seen) = vo(&dir.path());
        let d = Arc::new(d);
        let journal = d.journal.as_ref().expect("a journal");
        journal.fail_writes(true);
        let writer = tokio::spawn({
            let d = d.clone();
            async move { d.run_journal(std::future::pending()).await }
        });
        let s = child();
        d.on_alert(from_child(1), &s).await;
        d.on_alert(from_child(2), &s).await;
        // Attempts at 0, 50, 150, 350, 750 ms, then every second.
        tokio::time::sleep(Duration::from_millis(4_800)).await;
        let st = stats(&d).journal.expect("journal stats");
        assert_eq!((st.writable, st.pending, st.failures), (false, 2, 9));
        assert!(lock(&seen).is_empty());
        assert!(acks(&s).is_empty());
        assert_eq!(stats(&d).alerts_processed, 0);
        // A re-send meanwhile is a duplicate, still not acknowledged.
        d.on_alert(from_child(2), &s).await;
        assert!(acks(&s).is_empty());

        journal.fail_writes(false);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let st = stats(&d).journal.expect("journal stats");
        assert_eq!((st.writable, st.pending), (true, 0));
        assert_eq!(*lock(&seen), [1, 2]);
        assert_eq!(acks(&s), [("a1".to_string(), 2)]);
        writer.abort();
    }

    #[tokio::test]
    async fn a_handler_that_panics_does_not_stop_the_journals_writer() {
        let dir = TempJournal::new();
        let mut spec = NodeSpec::new(
            "VO",
            Role::Vo,
            None,
            Security::Psk(vespa_proto::Psk::random()),
        );
        spec.journal = Some(dir.path());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let handler: AlertHandler = Arc::new(move |a: &Arc<Alert>| {
            assert_ne!(a.seq, 1, "a handler that panics on alert 1");
            lock(&s2).push(a.seq);
        });
        let d = Delivery::new(&spec, vec![handler]).expect("delivery");
        let s = child();
        d.on_alert(from_child(1), &s).await;
        d.on_alert(from_child(2), &s).await;
        assert_eq!(d.commit_journal(), None);
        d.on_alert(from_child(3), &s).await;
        assert_eq!(d.commit_journal(), None);
        assert_eq!(*lock(&seen), [2, 3]);
        assert_eq!(acks(&s), [("a1".to_string(), 3)]);
    }

    #[tokio::test]
    async fn past_the_bound_of_alerts_waiting_for_the_journal_the_vo_stops_reading() {
        let dir = TempJournal::new();
        let (d, _) = vo(&dir.path());
        d.journal.as_ref().expect("journal").fail_writes(true);
        let s = child();
        let big = |seq| Alert {
            body: AlertBody::Text("x".repeat(1 << 20)),
            ..from_child(seq)
        };
        let mut seq = 0;
        while d.journal.as_ref().expect("journal").has_room() {
            seq += 1;
            d.on_alert(big(seq), &s).await;
        }
        assert!((8..=9).contains(&seq), "{seq} alerts of 1 MiB taken");
        let next = d.on_alert(big(seq + 1), &s);
        tokio::pin!(next);
        assert!(
            futures_util::FutureExt::now_or_never(next.as_mut()).is_none(),
            "the next alert waits for room"
        );
        assert!(
            d.raise(AlertBody::Text("own".into()), 0).is_err(),
            "the VO's own alert is refused"
        );
        d.journal.as_ref().expect("journal").fail_writes(false);
        assert_eq!(d.commit_journal(), None);
        next.await;
        assert_eq!(stats(&d).journal.map(|j| j.pending), Some(1));
    }
}
