//! The bounded queue of alerts a node has taken on but its master has not acknowledged.
//!
//! Alerts stay here from the moment they are queued until an `Ack` from the master covers
//! them, so a connection that dies (or a master that is killed) loses nothing: on the next
//! connection [`Outbox::rewind`] makes every unacknowledged alert go out again, oldest first,
//! and the master's de-duplication drops whatever it had already seen.
//!
//! Acks are cumulative per origin: `Ack { origin, seq }` covers every alert of `origin` up to
//! `seq`. That is sound because alerts of one origin travel one path, in order (each hop sends
//! its queue in order, and sealed frames cannot be reordered), so a master that has taken
//! `seq` has taken everything of that origin before it. The queue interleaves origins, so an
//! ack marks a per-origin watermark and entries leave from the front once covered.
//!
//! The capacity is a semaphore of free slots: a producer that may wait (an HO forwarding a
//! child's alert) waits, which stops it reading that child and pushes back down the tree; a
//! producer that must not wait (an agent raising an alert) gets `None` and counts an overflow.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use vespa_proto::Message;

/// One queued alert.
struct Entry {
    origin: Arc<str>,
    seq: u64,
    msg: Arc<Message>,
}

#[derive(Default)]
struct State {
    entries: VecDeque<Entry>,
    /// `entries[..sent]` went out on the current connection.
    sent: usize,
    /// Highest acknowledged sequence number per origin.
    acked: HashMap<Arc<str>, u64>,
}

/// A free slot in the queue; dropping it unused gives the slot back.
pub struct Slot(OwnedSemaphorePermit);

/// See the module documentation.
pub struct Outbox {
    state: Mutex<State>,
    space: Arc<Semaphore>,
    capacity: usize,
    ready: Notify,
    drained: Notify,
}

impl Outbox {
    /// An empty queue holding at most `capacity` alerts.
    pub fn new(capacity: usize) -> Outbox {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        Outbox {
            state: Mutex::new(State::default()),
            space: Arc::new(Semaphore::new(capacity)),
            capacity,
            ready: Notify::new(),
            drained: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock; if one ever did, the queue is still
        // structurally valid, so carry on rather than poison every later alert.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The configured capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Waits for a free slot (backpressure).
    pub async fn reserve(&self) -> Slot {
        let permit = self
            .space
            .clone()
            .acquire_owned()
            .await
            .expect("the outbox semaphore is never closed");
        Slot(permit)
    }

    /// A free slot if there is one now.
    pub fn try_reserve(&self) -> Option<Slot> {
        self.space.clone().try_acquire_owned().ok().map(Slot)
    }

    /// Queues an alert in a reserved slot and wakes the sender.
    pub fn push(&self, slot: Slot, origin: Arc<str>, seq: u64, msg: Message) {
        slot.0.forget();
        self.lock().entries.push_back(Entry {
            origin,
            seq,
            msg: Arc::new(msg),
        });
        self.ready.notify_one();
    }

    /// Records `Ack { origin, seq }` and drops every entry it (and earlier acks) cover from
    /// the front. Returns how many entries left the queue.
    pub fn ack(&self, origin: &str, seq: u64) -> usize {
        let mut st = self.lock();
        match st.acked.get_mut(origin) {
            Some(w) => *w = (*w).max(seq),
            None => {
                st.acked.insert(Arc::from(origin), seq);
            }
        }
        let mut popped = 0;
        while let Some(front) = st.entries.front() {
            if st.acked.get(&front.origin).is_some_and(|&w| front.seq <= w) {
                st.entries.pop_front();
                st.sent = st.sent.saturating_sub(1);
                popped += 1;
            } else {
                break;
            }
        }
        drop(st);
        if popped > 0 {
            self.space.add_permits(popped);
            self.drained.notify_waiters();
        }
        popped
    }

    /// A new connection: everything still queued must be sent again.
    pub fn rewind(&self) {
        self.lock().sent = 0;
        self.ready.notify_one();
    }

    /// Moves up to `max` not-yet-sent alerts into `out`, marking them sent.
    pub fn take_unsent(&self, max: usize, out: &mut Vec<Arc<Message>>) {
        let mut st = self.lock();
        let from = st.sent;
        let to = (from + max).min(st.entries.len());
        out.extend(st.entries.range(from..to).map(|e| e.msg.clone()));
        st.sent = to;
    }

    /// Alerts queued and not yet acknowledged.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when nothing awaits an ack.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Notified when alerts are queued or rewound (the sender waits on it).
    pub fn ready(&self) -> &Notify {
        &self.ready
    }

    /// Waits until every queued alert has been acknowledged.
    pub async fn wait_empty(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.is_empty() {
                return;
            }
            drained.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use vespa_proto::{Alert, AlertBody};

    use super::*;

    fn alert(origin: &str, seq: u64) -> Message {
        Message::Alert(Alert {
            origin: origin.into(),
            seq,
            path: vec![origin.into()],
            timestamp_ns: 0,
            body: AlertBody::Text(String::new()),
        })
    }

    fn push(q: &Outbox, origin: &str, seq: u64) {
        let slot = q.try_reserve().expect("space");
        q.push(slot, origin.into(), seq, alert(origin, seq));
    }

    fn seqs(v: &[Arc<Message>]) -> Vec<u64> {
        v.iter()
            .map(|m| {
                if let Message::Alert(a) = &**m {
                    a.seq
                } else {
                    panic!()
                }
            })
            .collect()
    }

    #[test]
    fn capacity_is_enforced_and_acks_free_slots() {
        let q = Outbox::new(3);
        for s in 1..=3 {
            push(&q, "a", s);
        }
        assert!(q.try_reserve().is_none(), "a full queue must refuse");
        assert_eq!(q.ack("a", 2), 2);
        assert_eq!(q.len(), 1);
        assert!(q.try_reserve().is_some());
    }

    #[test]
    fn rewind_resends_only_what_is_unacknowledged_in_order() {
        let q = Outbox::new(10);
        for s in 1..=5 {
            push(&q, "a", s);
        }
        let mut out = Vec::new();
        q.take_unsent(3, &mut out);
        assert_eq!(seqs(&out), [1, 2, 3]);
        q.ack("a", 2);
        q.rewind();
        out.clear();
        q.take_unsent(10, &mut out);
        assert_eq!(
            seqs(&out),
            [3, 4, 5],
            "after a reconnect, from the oldest unacked"
        );
        out.clear();
        q.take_unsent(10, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn interleaved_origins_leave_from_the_front_once_covered() {
        let q = Outbox::new(10);
        push(&q, "a", 1);
        push(&q, "b", 1);
        push(&q, "a", 2);
        assert_eq!(q.ack("b", 1), 0, "b's entry is behind a's unacked one");
        assert_eq!(q.ack("a", 1), 2, "a#1 then the already-acked b#1");
        assert_eq!(q.ack("a", 2), 1);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn waiting_producers_and_flushers_are_woken() {
        let q = Arc::new(Outbox::new(1));
        push(&q, "a", 1);
        let q2 = q.clone();
        let producer = tokio::spawn(async move { q2.reserve().await });
        let q3 = q.clone();
        let flusher = tokio::spawn(async move { q3.wait_empty().await });
        tokio::task::yield_now().await;
        assert!(!producer.is_finished());
        q.ack("a", 1);
        let slot = producer.await.expect("producer");
        flusher.await.expect("flusher");
        drop(slot);
        assert!(q.try_reserve().is_some(), "an unused slot goes back");
    }
}
