//! Calls about one effect leave in the order the policy decided them.
//!
//! Each call goes out on its own task (its ledger row first, then a place among the calls in
//! flight), so two calls about the same target, such as an operator's release followed at
//! once by a new block of it, could otherwise reach the agent in either order, and an agent
//! that releases by target would then remove the new block. A call waits for the previous
//! call about its effect to end (answered, failed or timed out) before it is sent; calls
//! about different effects never wait for each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use vespa_policy::Effect;

/// The last call decided about each effect whose call has not ended yet. Bounded by the
/// calls on their way: an entry goes when its call ends and no later one replaced it.
#[derive(Default)]
pub(super) struct Order {
    last: Mutex<HashMap<Effect, (u64, oneshot::Receiver<()>)>>,
    next: AtomicU64,
}

/// One call's place in its effect's line: [`Turn::wait`] before sending, dropped once the
/// call has ended.
pub(super) struct Turn {
    of: Arc<Order>,
    mine: Option<(Effect, u64, oneshot::Sender<()>)>,
    before: Option<oneshot::Receiver<()>>,
}

impl Order {
    /// Takes the place after the calls already decided about `effect` (none: no line).
    /// Called in the order the policy decided, from the driver's task.
    pub(super) fn join(self: &Arc<Self>, effect: Option<Effect>) -> Turn {
        let Some(effect) = effect else {
            return Turn {
                of: self.clone(),
                mine: None,
                before: None,
            };
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let before = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(effect.clone(), (id, rx))
            .map(|(_, rx)| rx);
        Turn {
            of: self.clone(),
            mine: Some((effect, id, tx)),
            before,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Turn {
    /// Waits until the previous call about the same effect has ended.
    pub(super) async fn wait(&mut self) {
        if let Some(before) = self.before.take() {
            // Err: its sender dropped, which is how a call ends.
            let _ = before.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some((effect, id, tx)) = self.mine.take() {
            let mut last = self.of.last.lock().unwrap_or_else(PoisonError::into_inner);
            if last.get(&effect).is_some_and(|(n, _)| *n == id) {
                last.remove(&effect);
            }
            drop(tx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vespa_policy::Target;

    fn blocked(s: &str) -> Option<Effect> {
        Some(Effect::Blocked(s.parse::<Target>().unwrap()))
    }

    #[tokio::test]
    async fn calls_about_one_effect_leave_in_order_and_others_do_not_wait() {
        let order = Arc::new(Order::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut first = order.join(blocked("192.0.2.1"));
        let mut second = order.join(blocked("192.0.2.1"));
        let mut other = order.join(blocked("192.0.2.2"));
        // The other effect's call goes at once.
        other.wait().await;
        drop(other);
        let s = seen.clone();
        let o = order.clone();
        let later = tokio::spawn(async move {
            second.wait().await;
            s.lock().unwrap().push("second");
            drop(second);
            o.len()
        });
        // The second cannot pass the first, however long the first takes.
        tokio::task::yield_now().await;
        assert!(seen.lock().unwrap().is_empty());
        first.wait().await;
        seen.lock().unwrap().push("first");
        drop(first);
        assert_eq!(later.await.unwrap(), 0, "every ended line is forgotten");
        assert_eq!(*seen.lock().unwrap(), ["first", "second"]);
    }

    #[test]
    fn calls_without_an_effect_have_no_line() {
        let order = Arc::new(Order::default());
        let t = order.join(None);
        assert_eq!(order.len(), 0);
        drop(t);
    }
}
