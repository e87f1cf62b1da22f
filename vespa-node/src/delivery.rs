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
//! - the VO processes each alert once: it journals it (if configured) before acknowledging,
//!   and rebuilds its de-duplication table from the journal after a restart (without a
//!   journal, a restarted VO may process again the few alerts the old one processed but whose
//!   ack died with it);
//! - an HO keeps no state that matters for delivery: killed and restarted, it starts empty
//!   and the children's re-sends refill it.
//!
//! What is not covered: the origin's own queue is in memory, so alerts an agent raised and the
//! VO has not yet processed die with the agent if it is killed (SIGTERM flushes first); a full
//! origin queue drops new alerts, counts them (`queue_overflow`) and reports the count in an
//! alert once there is room again; HO alert handlers run again for alerts re-sent after the HO
//! itself restarted (they run once per hop per process lifetime).
//!
//! All of that state is here, behind one owner: the queue, the per-hop de-duplication table
//! and the route of each origin's acks, the node's own sequence numbers, the overflow count,
//! the VO's journal, the alerts kept for `get_alerts`, the alert handlers and the counters
//! they move. Connections only hand alerts and acks in (`on_alert`, `on_ack`) and take the
//! queue out.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use vespa_proto::{Alert, AlertBody, Message};

use crate::dedup::{Dedup, Verdict};
use crate::error::NodeError;
use crate::journal::Journal;
use crate::outbox::{Outbox, Slot};
use crate::session::Session;
use crate::spec::NodeSpec;
use crate::stats::{get, inc, Stats};
use crate::util::{lock, now_ns};

/// Called for every new alert at every hop (after de-duplication; path includes this hop).
/// Must be quick: it runs on the connection's task.
pub type AlertHandler = Arc<dyn Fn(&Alert) + Send + Sync>;

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
    alerts: VecDeque<Alert>,
    cap: usize,
}

impl Recent {
    fn push(&mut self, a: &Alert) {
        if self.cap == 0 {
            self.next_index += 1;
            return;
        }
        if self.alerts.len() == self.cap {
            self.alerts.pop_front();
        }
        self.alerts.push_back(a.clone());
        self.next_index += 1;
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
    journal: Option<Mutex<Journal>>,
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
        let mut recent = Recent {
            next_index: 0,
            alerts: VecDeque::new(),
            cap: spec.settings.keep_alerts,
        };
        let journal = match (&spec.journal, spec.master.is_none()) {
            (Some(path), true) => {
                let (j, old) = Journal::open(path)?;
                for a in old {
                    let (_, key) = hop.dedup.accept(&a.origin, a.seq);
                    hop.dedup.mark_acked(&key, a.seq);
                    recent.push(&a);
                }
                Some(Mutex::new(j))
            }
            _ => None,
        };
        let outbox = spec
            .master
            .as_ref()
            .map(|_| Arc::new(Outbox::new(spec.settings.queue_capacity)));
        Ok(Delivery {
            name: spec.name.clone(),
            outbox,
            hop: Mutex::new(hop),
            // Numbering from the wall clock keeps a restarted origin above its old numbers.
            own_seq: Mutex::new(now_ns()),
            overflow_unreported: AtomicU64::new(0),
            recent: Mutex::new(recent),
            journal,
            handlers,
            counters: Counters::default(),
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
            *seq += 1;
            let alert = self.new_alert(*seq, body, timestamp_ns);
            inc(&self.counters.alerts_raised);
            self.process_at_root(alert, None);
            return Ok(*seq);
        };
        let Some(slot) = outbox.try_reserve() else {
            let n = self.counters.queue_overflow.fetch_add(1, Ordering::Relaxed) + 1;
            self.overflow_unreported.fetch_add(1, Ordering::Relaxed);
            if n == 1 || n.is_multiple_of(1000) {
                tracing::warn!(node = %self.name, dropped_total = n, capacity = outbox.capacity(), "outgoing alert queue full: alert dropped (counted in queue_overflow, reported upstream when there is room)");
            }
            return Err(QueueFull);
        };
        let unreported = self.overflow_unreported.load(Ordering::Relaxed);
        if unreported > 0 {
            if let Some(report_slot) = outbox.try_reserve() {
                self.overflow_unreported
                    .fetch_sub(unreported, Ordering::Relaxed);
                *seq += 1;
                let text = format!(
                    "{unreported} alert(s) dropped at {}: outgoing queue full (capacity {})",
                    self.name,
                    outbox.capacity()
                );
                self.queue_own(
                    outbox,
                    report_slot,
                    self.new_alert(*seq, AlertBody::Text(text), now_ns()),
                );
            }
        }
        *seq += 1;
        let alert = self.new_alert(*seq, body, timestamp_ns);
        self.queue_own(outbox, slot, alert);
        Ok(*seq)
    }

    fn queue_own(&self, outbox: &Outbox, slot: Slot, alert: Alert) {
        inc(&self.counters.alerts_raised);
        inc(&self.counters.alerts_forwarded);
        self.run_handlers(&alert);
        let key = lock(&self.hop).dedup.accept(&alert.origin, alert.seq).1;
        let seq = alert.seq;
        outbox.push(slot, key, seq, Message::Alert(alert));
    }

    fn run_handlers(&self, alert: &Alert) {
        for h in &self.handlers {
            h(alert);
        }
    }

    /// The root takes a new alert: journal, recent list, handlers; then it is acknowledged
    /// to `from`, if it came from a child.
    fn process_at_root(&self, mut alert: Alert, from: Option<&Arc<Session>>) {
        let mut hop = lock(&self.hop);
        let (verdict, key) = hop.dedup.accept(&alert.origin, alert.seq);
        if let Some(from) = from {
            hop.route(&key, from);
        }
        let seq = alert.seq;
        if verdict != Verdict::New {
            drop(hop);
            inc(&self.counters.duplicates_dropped);
            if let Some(from) = from {
                from.acks.put(key, seq);
            }
            return;
        }
        if from.is_some() {
            alert.path.push(self.name.clone());
        }
        if let Some(j) = &self.journal {
            lock(j).append(&alert);
        }
        hop.dedup.mark_acked(&key, seq);
        lock(&self.recent).push(&alert);
        drop(hop);
        inc(&self.counters.alerts_processed);
        self.run_handlers(&alert);
        if let Some(from) = from {
            from.acks.put(key, seq);
        }
    }

    /// An alert from a child (already checked to be well-formed).
    pub async fn on_alert(&self, mut alert: Alert, from: &Arc<Session>) {
        inc(&self.counters.alerts_received);
        let Some(outbox) = &self.outbox else {
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
                if !self.handlers.is_empty() {
                    self.run_handlers(&alert);
                }
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

    /// Writes the journal out. Every writer calls it before it sends acks, since alerts must
    /// be in the journal before they are acknowledged; the stop sequence calls it last.
    pub fn flush_journal(&self) {
        if let Some(j) = &self.journal {
            lock(j).flush();
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
            let v = serde_json::to_value(a).unwrap_or_default();
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
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;
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
}
