//! A node's live connections: the children and callers that connected to it, the link to its
//! master, and the counters of how those links fare.
//!
//! A child is known only while it is connected and registered: `children()` is read from the
//! live sessions, never from a list that could outlive them, so calls are routed (and
//! `destroy` sent) only to children that are there. Every change to the set of sessions or
//! to a child's registration is announced on one [`Notify`], which is what the stop sequence
//! waits on.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use vespa_proto::Message;

use crate::session::{ChildInfo, Session};
use crate::stats::{get, inc, Stats};
use crate::util::lock;

/// See the module documentation.
pub(crate) struct Peers {
    /// Connections accepted by this node (children and callers), by session id.
    sessions: Mutex<BTreeMap<u64, Arc<Session>>>,
    /// Notified when a session comes or goes, or a child registers.
    changed: Notify,
    /// The live link to the master, if any.
    uplink: Mutex<Option<Arc<Session>>>,
    /// Ids of sessions, accepted and dialled alike.
    next_id: AtomicU64,
    /// Connections to the master re-established.
    reconnects: AtomicU64,
    /// Connections that ended with an error (each also logged once).
    connection_errors: AtomicU64,
    /// Names of the children that registered since this node started (at most
    /// [`MAX_REMEMBERED`]): a second registration is a re-registration.
    registered_before: Mutex<HashSet<String>>,
}

/// Children whose first registration [`Peers`] remembers; past it (a node that takes any
/// child, and many names), every new name counts as first seen.
const MAX_REMEMBERED: usize = 4096;

impl Peers {
    /// No connection yet.
    pub fn new() -> Peers {
        Peers {
            sessions: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            uplink: Mutex::new(None),
            next_id: AtomicU64::new(1),
            reconnects: AtomicU64::new(0),
            connection_errors: AtomicU64::new(0),
            registered_before: Mutex::new(HashSet::new()),
        }
    }

    /// A new session with a fresh id (not yet listed anywhere).
    pub fn session(
        &self,
        peer_addr: SocketAddr,
        peer_name: String,
        cancel: CancellationToken,
    ) -> (Arc<Session>, mpsc::Receiver<Message>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Session::new(id, peer_addr, peer_name, cancel)
    }

    /// Lists an accepted connection.
    pub fn add(&self, session: &Arc<Session>) {
        lock(&self.sessions).insert(session.id, session.clone());
    }

    /// Forgets an accepted connection that ended.
    pub fn remove(&self, session: &Session) {
        lock(&self.sessions).remove(&session.id);
        self.changed.notify_waiters();
    }

    /// The other connections of the child `name`: a child that reconnects before its old
    /// connection was noticed dead replaces it.
    pub fn others_of(&self, session: &Session, name: &str) -> Vec<Arc<Session>> {
        lock(&self.sessions)
            .values()
            .filter(|s| s.id != session.id && s.child_info().is_some_and(|c| c.name == name))
            .cloned()
            .collect()
    }

    /// Records that the peer of `session` registered as a child; true when a child of that
    /// name had registered before (since this node started).
    pub fn register(&self, session: &Session, info: ChildInfo) -> bool {
        let again = {
            let mut seen = lock(&self.registered_before);
            let again = seen.contains(&info.name);
            if !again && seen.len() < MAX_REMEMBERED {
                seen.insert(info.name.clone());
            }
            again
        };
        session.set_child(info);
        self.changed.notify_waiters();
        again
    }

    /// Registered children and their connections.
    pub fn children(&self) -> Vec<(ChildInfo, Arc<Session>)> {
        lock(&self.sessions)
            .values()
            .filter_map(|s| s.child_info().map(|c| (c, s.clone())))
            .collect()
    }

    /// The connection of the registered child `name`.
    pub fn child(&self, name: &str) -> Option<Arc<Session>> {
        self.children()
            .into_iter()
            .find(|(c, _)| c.name == name)
            .map(|(_, s)| s)
    }

    /// The link to the master is up, over `session`.
    pub fn set_uplink(&self, session: &Arc<Session>) {
        *lock(&self.uplink) = Some(session.clone());
    }

    /// The link over `session` is down (a newer link, if any, stays).
    pub fn clear_uplink(&self, session: &Arc<Session>) {
        let mut up = lock(&self.uplink);
        if up.as_ref().is_some_and(|u| Arc::ptr_eq(u, session)) {
            *up = None;
        }
    }

    /// Counts a connection that ended with an error.
    pub fn connection_error(&self) {
        inc(&self.connection_errors);
    }

    /// Counts a new attempt to reach the master after the first.
    pub fn reconnecting(&self) {
        inc(&self.reconnects);
    }

    /// Sends `Destroy` to every child and waits (bounded) until they have all left.
    pub async fn destroy_children(&self, node: &str) {
        let kids = self.children();
        for (info, s) in &kids {
            tracing::info!(node = %node, child = ?info.name, "destroying child");
            let _ = s.ctl.send(Message::Destroy).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.children().is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let left: Vec<String> = self.children().into_iter().map(|(c, _)| c.name).collect();
                tracing::warn!(node = %node, ?left, "children still connected after destroy");
                return;
            }
        }
    }

    /// Waits (at most `limit`) until every accepted connection has ended.
    pub async fn wait_closed(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if lock(&self.sessions).is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    /// Fills the link part of a `stats` snapshot.
    pub fn report(&self, st: &mut Stats) {
        st.children = self.children().into_iter().map(|(c, _)| c.name).collect();
        st.uplink_connected = lock(&self.uplink).is_some();
        st.reconnects = get(&self.reconnects);
        st.connection_errors = get(&self.connection_errors);
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;
    use vespa_proto::NodeKind;

    use super::*;

    fn child(peers: &Peers, name: &str) -> (Arc<Session>, mpsc::Receiver<Message>) {
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let (s, rx) = peers.session(addr, name.into(), CancellationToken::new());
        peers.add(&s);
        let info = ChildInfo {
            name: name.into(),
            kind: NodeKind::Agent,
            listen_addr: None,
            peer: addr,
        };
        peers.register(&s, info);
        (s, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn destroy_waits_for_the_children_to_leave_and_gives_up_after_fifteen_seconds() {
        let peers = Arc::new(Peers::new());
        let (gone, mut gone_rx) = child(&peers, "gone");
        let (_stuck, mut stuck_rx) = child(&peers, "stuck");
        let t0 = Instant::now();
        let destroying = tokio::spawn({
            let peers = peers.clone();
            async move { peers.destroy_children("HO").await }
        });
        assert_eq!(gone_rx.recv().await, Some(Message::Destroy));
        assert_eq!(stuck_rx.recv().await, Some(Message::Destroy));
        peers.remove(&gone);
        assert_eq!(peers.children().len(), 1);
        destroying.await.expect("destroy");
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(15) && waited < Duration::from_millis(15_010),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_connections_to_close_ends_with_the_last_one() {
        let peers = Arc::new(Peers::new());
        let (a, _a_rx) = child(&peers, "a");
        let t0 = Instant::now();
        let waiting = tokio::spawn({
            let peers = peers.clone();
            async move { peers.wait_closed(Duration::from_secs(2)).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        peers.remove(&a);
        waiting.await.expect("wait");
        assert_eq!(t0.elapsed(), Duration::from_millis(500));
    }
}
