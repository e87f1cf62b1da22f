//! The book of active blocks and the one TTL reaper every controller shares.
//!
//! The reaper sleeps until the earliest expiry (or until the book changes), then releases that
//! block through the controller, exactly as a caller's `release_hackers <id>` would. A release
//! that fails is reported as an `ActuatorFailed` alert and tried again a little later: a block
//! never silently outlives its time-to-live.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Whether the first id has been chosen (see [`super::SdnController::block`]).
    seeded: AtomicBool,
    changed: Notify,
}

impl Default for BlockBook {
    fn default() -> Self {
        BlockBook {
            blocks: Mutex::default(),
            next: AtomicU64::new(1),
            seeded: AtomicBool::new(false),
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

    pub(crate) fn is_seeded(&self) -> bool {
        self.seeded.load(Ordering::Relaxed)
    }

    /// Numbers the following blocks from `first` on (never below an id already given).
    pub(crate) fn seed(&self, first: BlockId) {
        self.next.fetch_max(first.0, Ordering::Relaxed);
        self.seeded.store(true, Ordering::Relaxed);
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

    /// Restarts a block's time-to-live; `handles` (from a reinstall) join the block's own.
    pub(crate) fn refresh(&self, id: BlockId, ttl: Option<Duration>, handles: Option<Vec<String>>) {
        if let Some(b) = self.lock().get_mut(&id) {
            b.ttl_s = ttl.map(|t| t.as_secs_f64());
            b.expires_at = ttl.map(|t| Instant::now() + t);
            for h in handles.into_iter().flatten() {
                if !b.handles.contains(&h) {
                    b.handles.push(h);
                }
            }
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
                            tracing::warn!(controller = ctrl.name(), block = id.0, error = ?crate::error::chain(&e), "expired block could not be released; will retry");
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
        /// What the controller shows of earlier blocks (None: it cannot list them).
        highest: Option<Result<u64, u16>>,
        reinstalled: Mutex<Vec<(BlockId, Option<u16>)>>,
    }

    impl Fake {
        fn new() -> Arc<Fake> {
            Fake::showing(None)
        }

        fn showing(highest: Option<Result<u64, u16>>) -> Arc<Fake> {
            Arc::new(Fake {
                state: SdnState::new(RetryPolicy::none()),
                failing: AtomicBool::new(false),
                uninstalled: Mutex::default(),
                released: Notify::new(),
                highest,
                reinstalled: Mutex::default(),
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
        async fn reinstall(&self, spec: &BlockSpec) -> Result<Option<Vec<String>>, SdnError> {
            let mut r = self.reinstalled.lock().expect("log");
            r.push((spec.id, spec.hard_timeout_s()));
            Ok(Some(vec!["flow".into(), format!("again-{}", r.len())]))
        }
        async fn highest_installed(&self) -> Option<Result<u64, SdnError>> {
            self.highest.map(|h| {
                h.map_err(|status| SdnError::Http {
                    controller: "fake",
                    method: "GET",
                    url: "/flows".into(),
                    status,
                    body: String::new(),
                })
            })
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

    #[tokio::test(start_paused = true)]
    async fn ids_continue_above_the_controllers_blocks_or_start_at_a_random_base() {
        let shown = Fake::showing(Some(Ok(41)));
        let first = shown.block(target(1), None).await.expect("block");
        assert_eq!(
            first,
            BlockId(42),
            "above the highest block the controller holds"
        );
        assert_eq!(
            shown.block(target(2), None).await.expect("block"),
            BlockId(43)
        );

        let empty = Fake::showing(Some(Ok(0)));
        assert_eq!(
            empty.block(target(1), None).await.expect("block"),
            BlockId(1)
        );

        // A listing failing for a passing reason fails the block, and is asked again.
        let down = Fake::showing(Some(Err(503)));
        assert!(down.block(target(1), None).await.is_err());
        assert!(!down.state().blocks.is_seeded());

        // Cannot list, or the listing is refused for good: a random base, never 1, different
        // each start.
        let mut firsts = std::collections::BTreeSet::new();
        for ctrl in [
            Fake::new(),
            Fake::new(),
            Fake::showing(Some(Err(404))),
            Fake::showing(Some(Err(404))),
        ] {
            let id = ctrl.block(target(1), None).await.expect("block");
            assert!(crate::sdn::RANDOM_ID_BASE.contains(&id.0), "{id}");
            assert_eq!(
                ctrl.block(target(2), None).await.expect("block").0,
                id.0 + 1
            );
            firsts.insert(id);
        }
        assert!(firsts.len() > 1, "four starts drew {firsts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_reinstalls_with_the_new_switch_timeout_when_one_is_involved() {
        let ctrl = Fake::new();
        let a = ctrl.block(target(1), None).await.expect("block");
        assert_eq!(ctrl.block(target(1), None).await.expect("again"), a);
        assert!(
            ctrl.reinstalled.lock().expect("log").is_empty(),
            "no time-to-live before or after: nothing to tell the switch"
        );
        ctrl.block(target(1), Some(Duration::from_secs(100)))
            .await
            .expect("with a ttl");
        ctrl.block(target(1), None).await.expect("without again");
        let margin = crate::sdn::SWITCH_TTL_MARGIN.as_secs() as u16;
        assert_eq!(
            *ctrl.reinstalled.lock().expect("log"),
            [(a, Some(100 + margin)), (a, None)]
        );
        assert_eq!(
            ctrl.status()[0].handles,
            ["flow", "again-1", "again-2"],
            "the reinstall's handles join the block's"
        );
    }
}
