//! The book of active blocks and the one TTL reaper every controller shares.
//!
//! The reaper sleeps until the earliest expiry (or until the book changes), then releases that
//! block through the controller, exactly as a caller's `release_hackers <id>` would. A release
//! that fails is reported as an `ActuatorFailed` alert and tried again a little later: a block
//! never silently outlives its time-to-live.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{BlockId, BlockSpec, BlockTarget, Release, SdnController};
use crate::alerts::AlertSink;

/// How long the reaper waits before trying again to release an expired block it could not.
pub const RETRY_EXPIRED_AFTER: Duration = Duration::from_secs(5);

/// One block in force.
#[derive(Debug, Clone, Serialize)]
pub struct ActiveBlock {
    pub id: BlockId,
    pub target: BlockTarget,
    /// The OpenFlow cookie of its flows.
    #[serde(serialize_with = "hex")]
    pub cookie: u64,
    /// Controller-side names (Floodlight flow names, firewall rule ids).
    pub handles: Vec<String>,
    pub created_unix_ms: u64,
    /// The time-to-live it was given (None: until released).
    pub ttl_s: Option<f64>,
    /// Time left before the reaper releases it (filled in by [`BlockBook::list`]).
    pub expires_in_ms: Option<u64>,
    #[serde(skip)]
    expires_at: Option<Instant>,
}

fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#018x}"))
}

/// The active blocks of one controller.
#[derive(Debug)]
pub struct BlockBook {
    blocks: Mutex<BTreeMap<BlockId, ActiveBlock>>,
    next: AtomicU64,
    changed: Notify,
}

impl Default for BlockBook {
    fn default() -> Self {
        BlockBook {
            blocks: Mutex::default(),
            next: AtomicU64::new(1),
            changed: Notify::new(),
        }
    }
}

impl BlockBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<BlockId, ActiveBlock>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts
        // and removes), so a poisoned lock is still usable.
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id the next block will get. Only taken by [`insert`](Self::insert), so a failed
    /// block does not use one up (callers hold the controller's operation lock).
    pub(crate) fn next_id(&self) -> BlockId {
        BlockId(self.next.load(Ordering::Relaxed))
    }

    /// Records (or refreshes) a block and wakes the reaper.
    pub(crate) fn insert(&self, spec: &BlockSpec, handles: Vec<String>) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let b = ActiveBlock {
            id: spec.id,
            target: spec.target,
            cookie: spec.id.cookie(),
            handles,
            created_unix_ms: now_ms,
            ttl_s: spec.ttl.map(|t| t.as_secs_f64()),
            expires_in_ms: None,
            expires_at: spec.ttl.map(|t| Instant::now() + t),
        };
        self.lock().insert(spec.id, b);
        self.next.fetch_max(spec.id.0 + 1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Restarts a block's time-to-live.
    pub(crate) fn refresh(&self, id: BlockId, ttl: Option<Duration>) {
        if let Some(b) = self.lock().get_mut(&id) {
            b.ttl_s = ttl.map(|t| t.as_secs_f64());
            b.expires_at = ttl.map(|t| Instant::now() + t);
        }
        self.changed.notify_one();
    }

    pub(crate) fn remove(&self, id: BlockId) {
        self.lock().remove(&id);
        self.changed.notify_one();
    }

    pub fn by_target(&self, t: &BlockTarget) -> Option<ActiveBlock> {
        self.lock().values().find(|b| b.target == *t).cloned()
    }

    pub(crate) fn matching(&self, sel: Release) -> Vec<ActiveBlock> {
        self.lock()
            .values()
            .filter(|b| match sel {
                Release::Id(id) => b.id == id,
                Release::Target(t) => b.target == t,
            })
            .cloned()
            .collect()
    }

    /// The blocks, oldest first, with `expires_in_ms` filled in.
    pub fn list(&self) -> Vec<ActiveBlock> {
        let now = Instant::now();
        self.lock()
            .values()
            .map(|b| {
                let mut b = b.clone();
                b.expires_in_ms = b
                    .expires_at
                    .map(|at| at.saturating_duration_since(now).as_millis() as u64);
                b
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn next_expiry(&self) -> Option<(BlockId, Instant)> {
        self.lock()
            .values()
            .filter_map(|b| b.expires_at.map(|at| (b.id, at)))
            .min_by_key(|(_, at)| *at)
    }

    fn postpone(&self, id: BlockId, by: Duration) {
        if let Some(b) = self.lock().get_mut(&id) {
            b.expires_at = Some(Instant::now() + by);
        }
    }
}

/// Starts the reaper of `ctrl`'s blocks. It runs until aborted (the agent aborts it on drop).
pub fn spawn_reaper<C: SdnController>(
    ctrl: Arc<C>,
    alerts: AlertSink,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let book = &ctrl.state().blocks;
            // Registered before reading the book, so a change in between is not missed.
            let changed = book.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match book.next_expiry() {
                None => changed.await,
                Some((id, at)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = &mut changed => continue,
                    }
                    // Still due? (It may have been released or refreshed meanwhile.)
                    if book
                        .next_expiry()
                        .is_none_or(|(i, a)| i != id || a > Instant::now())
                    {
                        continue;
                    }
                    match ctrl.release(Release::Id(id)).await {
                        Ok(_) => tracing::info!(
                            controller = ctrl.name(),
                            block = id.0,
                            "block expired and released"
                        ),
                        Err(crate::error::SdnError::NoSuchBlock(_)) => {}
                        Err(e) => {
                            tracing::warn!(controller = ctrl.name(), block = id.0, error = %crate::error::chain(&e), "expired block could not be released; will retry");
                            alerts.failed(ctrl.name(), &format!("release expired block {id}"), &e);
                            book.postpone(id, RETRY_EXPIRED_AFTER);
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    //! The reaper in paused time: the clock jumps to each timer, so "released at 300 s, not
    //! before" is exact and instant. The controller is an in-memory double: only the
    //! reaper's logic is under test (the real controllers have their own tests).

    use std::sync::atomic::AtomicBool;

    use serde_json::Value;
    use tokio::sync::mpsc;

    use super::*;
    use crate::alerts::ActuatorAlert;
    use crate::error::SdnError;
    use crate::retry::RetryPolicy;
    use crate::sdn::SdnState;

    /// Records each uninstall; fails them while `failing` is set.
    struct Fake {
        state: SdnState,
        failing: AtomicBool,
        uninstalled: Mutex<Vec<BlockId>>,
        released: Notify,
    }

    impl Fake {
        fn new() -> Arc<Fake> {
            Arc::new(Fake {
                state: SdnState::new(RetryPolicy::none()),
                failing: AtomicBool::new(false),
                uninstalled: Mutex::default(),
                released: Notify::new(),
            })
        }

        fn uninstalled(&self) -> Vec<BlockId> {
            self.uninstalled.lock().expect("log").clone()
        }
    }

    impl SdnController for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn state(&self) -> &SdnState {
            &self.state
        }
        async fn install(&self, _: &BlockSpec) -> Result<Vec<String>, SdnError> {
            Ok(vec!["flow".into()])
        }
        async fn uninstall(&self, block: &ActiveBlock) -> Result<(), SdnError> {
            if self.failing.load(Ordering::Relaxed) {
                return Err(SdnError::NoSwitch { controller: "fake" });
            }
            self.uninstalled.lock().expect("log").push(block.id);
            self.released.notify_one();
            Ok(())
        }
        async fn purge(&self) -> Result<(), SdnError> {
            Ok(())
        }
        async fn fetch_topology(&self) -> Result<Value, SdnError> {
            Ok(Value::Null)
        }
        async fn fetch_link_stats(&self) -> Result<Value, SdnError> {
            Ok(Value::Null)
        }
        async fn fetch_flow_stats(&self) -> Result<Value, SdnError> {
            Ok(Value::Null)
        }
    }

    fn target(last: u8) -> BlockTarget {
        BlockTarget::Ip(std::net::IpAddr::from([10, 0, 0, last]))
    }

    #[tokio::test(start_paused = true)]
    async fn a_block_is_released_at_its_ttl_not_before_and_a_refresh_moves_it() {
        let ctrl = Fake::new();
        let (tx, _rx) = mpsc::channel(8);
        let reaper = spawn_reaper(ctrl.clone(), AlertSink::new(tx));
        let t0 = Instant::now();
        let a = ctrl
            .block(target(1), Some(Duration::from_secs(300)))
            .await
            .expect("a");
        let b = ctrl.block(target(2), None).await.expect("b");
        // 200 s in, the same target again: its time-to-live starts over.
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert_eq!(
            ctrl.block(target(1), Some(Duration::from_secs(300)))
                .await
                .expect("a again"),
            a
        );
        tokio::time::sleep(Duration::from_secs(299)).await;
        assert!(
            ctrl.uninstalled().is_empty(),
            "nothing released before its time"
        );
        ctrl.released.notified().await;
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(500),
            "released at the refreshed expiry"
        );
        assert_eq!(ctrl.uninstalled(), [a]);
        let left: Vec<BlockId> = ctrl.status().into_iter().map(|b| b.id).collect();
        assert_eq!(left, [b], "a block without a time-to-live stays");
        reaper.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_that_fails_is_reported_and_tried_again() {
        let ctrl = Fake::new();
        let (tx, mut rx) = mpsc::channel(8);
        let reaper = spawn_reaper(ctrl.clone(), AlertSink::new(tx));
        ctrl.failing.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        let id = ctrl
            .block(target(3), Some(Duration::from_secs(10)))
            .await
            .expect("block");
        let alert = rx.recv().await.expect("an alert for the failed release");
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        match alert {
            ActuatorAlert::ActuatorFailed {
                actuator, action, ..
            } => {
                assert_eq!(actuator, "fake");
                assert_eq!(action, format!("release expired block {id}"));
            }
            other => panic!("expected ActuatorFailed, got {other:?}"),
        }
        ctrl.failing.store(false, Ordering::Relaxed);
        ctrl.released.notified().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(10) + RETRY_EXPIRED_AFTER);
        assert_eq!(ctrl.uninstalled(), [id]);
        assert!(ctrl.status().is_empty());
        reaper.abort();
    }
}
