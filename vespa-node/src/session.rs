//! One live connection to a peer (a child, the master, or an operator's client) and the two
//! tasks that drive it.
//!
//! The reader and the writer run as separate tasks so that a node reading a burst of alerts
//! never waits on its own outgoing traffic: what the reader wants sent (replies, acks) goes
//! through the session's channel or its ack box, and the writer batches it into as few
//! socket writes as it can. Acks in particular are coalesced: only the highest sequence
//! number per origin is sent, once per writer wake-up, which keeps ack traffic far below
//! alert traffic at high rates.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use vespa_proto::{Message, NodeKind, ProtoError};

use crate::outbox::Outbox;
use crate::transport::{LinkReader, LinkWriter};
use crate::verbs::VerbResult;

/// What a child said about itself in `Register`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChildInfo {
    /// Its node name.
    pub name: String,
    /// What it is.
    pub kind: NodeKind,
    /// Where it listens, if it does.
    pub listen_addr: Option<SocketAddr>,
    /// The address its connection comes from.
    pub peer: SocketAddr,
}

/// Coalesced acks waiting to be sent: the highest sequence number per origin.
#[derive(Default)]
pub(crate) struct AckBox {
    pending: Mutex<HashMap<Arc<str>, u64>>,
    notify: Notify,
}

impl AckBox {
    /// Asks for `Ack { origin, seq }` to be sent (merged with any pending ack of `origin`).
    pub fn put(&self, origin: Arc<str>, seq: u64) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let e = p.entry(origin).or_insert(seq);
        *e = (*e).max(seq);
        drop(p);
        self.notify.notify_one();
    }

    pub(crate) fn take(&self) -> Vec<(Arc<str>, u64)> {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        p.drain().collect()
    }
}

/// Calls one connection may have this node answer at once; more are refused with an error
/// reply until some finish.
pub(crate) const MAX_CALLS_IN_FLIGHT: usize = 64;

/// A live connection.
pub(crate) struct Session {
    pub id: u64,
    pub peer_addr: SocketAddr,
    pub peer_name: String,
    /// Messages for the writer (replies, calls, Destroy, Register).
    pub ctl: mpsc::Sender<Message>,
    /// Calls from the peer being answered at once, at most [`MAX_CALLS_IN_FLIGHT`].
    pub calls: Arc<tokio::sync::Semaphore>,
    pub acks: AckBox,
    /// Ends both tasks; the writer then closes the stream in order.
    pub cancel: CancellationToken,
    /// Set when the peer registered as a child.
    child: Mutex<Option<ChildInfo>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<VerbResult>>>,
    next_call: AtomicU64,
}

impl Session {
    pub fn new(
        id: u64,
        peer_addr: SocketAddr,
        peer_name: String,
        cancel: CancellationToken,
    ) -> (Arc<Session>, mpsc::Receiver<Message>) {
        let (ctl, rx) = mpsc::channel(1024);
        let s = Session {
            id,
            peer_addr,
            peer_name,
            ctl,
            calls: Arc::new(tokio::sync::Semaphore::new(MAX_CALLS_IN_FLIGHT)),
            acks: AckBox::default(),
            cancel,
            child: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(1),
        };
        (Arc::new(s), rx)
    }

    /// The registered child's info, if the peer is a child.
    pub fn child_info(&self) -> Option<ChildInfo> {
        self.child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records what the peer said about itself when it registered as a child.
    pub fn set_child(&self, info: ChildInfo) {
        *self.child.lock().unwrap_or_else(PoisonError::into_inner) = Some(info);
    }

    /// Sends `Call { verb, args }` to the peer and waits for its reply.
    pub async fn call(&self, verb: &str, args: Vec<String>, timeout: Duration) -> VerbResult {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        let msg = Message::Call {
            id,
            verb: verb.to_string(),
            args,
        };
        if self.ctl.send(msg).await.is_err() {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            return Err(format!("connection to {} closed", self.peer_name));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(format!(
                "connection to {} lost before it replied",
                self.peer_name
            )),
            Err(_) => {
                self.pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                Err(format!(
                    "{} did not reply within {timeout:?}",
                    self.peer_name
                ))
            }
        }
    }

    /// Hands a `Reply` to the caller waiting for it (replies nobody waits for are dropped).
    pub fn complete(&self, id: u64, result: VerbResult) {
        if let Some(tx) = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
        {
            let _ = tx.send(result);
        }
    }

    /// Fails every call still waiting (the connection is gone).
    pub fn fail_pending(&self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkEnd {
    #[error("peer closed the connection")]
    ClosedByPeer,
    #[error("no message for {0:?} (idle timeout: peer dead or link cut)")]
    Idle(Duration),
    #[error("{0}")]
    Proto(#[from] ProtoError),
    #[error("protocol violation: {0}")]
    Violation(String),
    #[error("closed by this node")]
    Local,
}

async fn within(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), ProtoError>>,
) -> Result<(), ProtoError> {
    tokio::time::timeout(limit, write)
        .await
        .unwrap_or_else(|_| {
            let why = format!("the peer took more than {limit:?} to take a write");
            Err(ProtoError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                why,
            )))
        })
}

/// Runs until the session is cancelled or the stream fails: writes control messages, acks,
/// the outbox's unsent alerts (uplink only) and a heartbeat every `heartbeat`. On cancel it
/// closes the stream in order. A write failure, or a write that takes longer than three
/// heartbeats (the peer stopped reading), cancels the session so the reader stops too.
pub(crate) async fn write_loop(
    mut w: LinkWriter,
    session: Arc<Session>,
    mut ctl: mpsc::Receiver<Message>,
    outbox: Option<Arc<Outbox>>,
    heartbeat: Duration,
    sent: impl Fn(u64) + Send,
) {
    let result = write_inner(
        &mut w,
        &session,
        &mut ctl,
        outbox.as_deref(),
        heartbeat,
        &sent,
    )
    .await;
    match result {
        Ok(()) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), w.close()).await;
        }
        Err(e) => {
            tracing::debug!(peer = %session.peer_addr, node = ?session.peer_name, error = %e, "write failed");
            session.cancel.cancel();
        }
    }
}

/// One deadline covers each wake-up's writes (not each write: a timer per frame would cost
/// more than the frame), so a peer that stops reading is dropped three heartbeats later.
async fn write_inner(
    w: &mut LinkWriter,
    session: &Session,
    ctl: &mut mpsc::Receiver<Message>,
    outbox: Option<&Outbox>,
    heartbeat: Duration,
    sent: &(impl Fn(u64) + Send),
) -> Result<(), ProtoError> {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(256);
    let limit = heartbeat * 3;
    loop {
        let mut heartbeat_due = false;
        tokio::select! {
            biased;
            _ = session.cancel.cancelled() => return Ok(()),
            m = ctl.recv() => match m {
                Some(m) => within(limit, feed_ctl(w, session, m)).await?,
                None => return Ok(()),
            },
            _ = session.acks.notify.notified() => {}
            _ = async { match outbox { Some(o) => o.ready().notified().await, None => std::future::pending().await } } => {}
            _ = tick.tick() => heartbeat_due = true,
        }
        let writes = async {
            while let Ok(m) = ctl.try_recv() {
                feed_ctl(w, session, m).await?;
            }
            for (origin, seq) in session.acks.take() {
                w.feed(&Message::Ack {
                    origin: origin.to_string(),
                    seq,
                })
                .await?;
            }
            if let Some(o) = outbox {
                // Bounded per wake-up so acks, replies and heartbeats are never starved by a
                // long backlog; the ready permit brings the loop straight back for the rest.
                for _ in 0..8 {
                    batch.clear();
                    o.take_unsent(256, &mut batch);
                    if batch.is_empty() {
                        break;
                    }
                    for m in &batch {
                        w.feed(m).await?;
                    }
                    sent(batch.len() as u64);
                }
                if !batch.is_empty() {
                    o.ready().notify_one();
                }
            }
            if heartbeat_due {
                w.feed(&Message::Heartbeat).await?;
            }
            w.flush().await
        };
        within(limit, writes).await?;
    }
}

/// Queues a control message. One too large for a frame never ends the link: a reply becomes
/// an error reply that says so (the caller asks for less), a call of this node's fails back
/// to its caller, anything else is logged and dropped.
async fn feed_ctl(w: &mut LinkWriter, session: &Session, m: Message) -> Result<(), ProtoError> {
    let (len, max) = match w.feed(&m).await {
        Err(ProtoError::FrameTooLarge { len, max }) => (len, max),
        other => return other,
    };
    let size = len.map_or_else(|| "more than the limit".into(), |n| format!("{n} bytes"));
    let why = format!("too large to send: {size}, the frame limit is {max} bytes; ask for less");
    match m {
        Message::Reply { id, .. } => {
            tracing::warn!(peer = %session.peer_addr, node = %session.peer_name, id, %why, "reply replaced by an error");
            w.feed(&Message::Reply {
                id,
                result: Err(format!("reply {why}")),
            })
            .await
        }
        Message::Call { id, .. } => {
            session.complete(id, Err(format!("call {why}")));
            Ok(())
        }
        other => {
            tracing::warn!(peer = %session.peer_addr, node = %session.peer_name, message = ?std::mem::discriminant(&other), %why, "message dropped");
            Ok(())
        }
    }
}

/// Receives the next message, or says why the connection ended (idle timeout included).
pub(crate) async fn next_message(
    r: &mut LinkReader,
    session: &Session,
    idle: Duration,
) -> Result<Message, LinkEnd> {
    tokio::select! {
        _ = session.cancel.cancelled() => Err(LinkEnd::Local),
        res = tokio::time::timeout(idle, r.recv()) => match res {
            Err(_) => Err(LinkEnd::Idle(idle)),
            Ok(Ok(Some(m))) => Ok(m),
            Ok(Ok(None)) => Err(LinkEnd::ClosedByPeer),
            Ok(Err(e)) => Err(LinkEnd::Proto(e)),
        },
    }
}
