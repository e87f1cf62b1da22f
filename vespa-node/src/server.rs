//! The listening side: children register here and stream alerts up; operators' clients call
//! verbs.
//!
//! Each connection is on its own: whatever it does wrong (random bytes, a 4 GiB length, a
//! flipped bit, a replayed frame, the wrong key, never finishing a frame) ends *that*
//! connection with one log line naming the peer and the reason, and the node goes on serving
//! every other one. Memory per connection is bounded by the frame limit (hello-sized until
//! the peer proves the key), time by the handshake deadline and the idle timeout, and the
//! number of handshakes in progress by a semaphore.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use vespa_proto::Message;

use crate::node::{lock, Inner};
use crate::session::{next_message, write_loop, ChildInfo, LinkEnd, Session};
use crate::stats::inc;
use crate::transport::{establish, Side};

/// Handshakes allowed in progress at once; more connections are refused until some finish.
const MAX_HANDSHAKES: usize = 256;
/// Longest alert path accepted (a deeper one means a routing loop).
const MAX_PATH: usize = 32;

pub(crate) async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: wait instead of spinning.
                    tracing::warn!(node = %inner.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = inner.accept_stop.cancelled() => return,
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            inc(&inner.counters.connection_errors);
            tracing::warn!(peer = %peer, node = "-", reason = "too many handshakes in progress", "connection refused");
            continue;
        };
        tokio::spawn(serve(inner.clone(), stream, peer, permit));
    }
}

async fn serve(
    inner: Arc<Inner>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let s = &inner.spec.settings;
    let cfg = vespa_proto::Config {
        max_frame: s.max_frame,
        handshake_timeout: s.handshake_timeout,
    };
    let link = tokio::select! {
        r = establish(stream, Side::Server, &inner.spec.security, &inner.name, &cfg) => r,
        _ = inner.closing.cancelled() => return,
    };
    drop(permit);
    let mut link = match link {
        Ok(l) => l,
        Err(e) => {
            inc(&inner.counters.connection_errors);
            tracing::warn!(peer = %peer, node = "-", reason = %e, "connection rejected");
            return;
        }
    };
    let id = inner.next_session.fetch_add(1, Ordering::Relaxed);
    let (session, ctl_rx) = Session::new(
        id,
        peer,
        link.peer_name.clone(),
        inner.closing.child_token(),
    );
    lock(&inner.sessions).insert(id, session.clone());
    let w_inner = inner.clone();
    let writer = tokio::spawn(write_loop(
        link.writer,
        session.clone(),
        ctl_rx,
        None,
        s.heartbeat,
        move || w_inner.before_acks(),
        |_| {},
    ));

    let idle = s.heartbeat * 3;
    let result = loop {
        let msg = match next_message(&mut link.reader, &session, idle).await {
            Ok(m) => m,
            Err(e) => break e,
        };
        if let Err(e) = handle(&inner, &session, msg).await {
            break e;
        }
    };
    session.cancel.cancel();
    let _ = writer.await;
    session.fail_pending();
    lock(&inner.sessions).remove(&id);
    inner.sessions_changed.notify_waiters();
    let child = session.child_info();
    let name = child
        .as_ref()
        .map_or(session.peer_name.as_str(), |c| c.name.as_str());
    match result {
        LinkEnd::Local => {}
        LinkEnd::ClosedByPeer if child.is_some() => {
            tracing::info!(peer = %peer, node = %name, "child closed its connection")
        }
        LinkEnd::ClosedByPeer => {
            tracing::debug!(peer = %peer, node = %name, "caller closed its connection")
        }
        e => {
            inc(&inner.counters.connection_errors);
            tracing::warn!(peer = %peer, node = %name, reason = %e, "connection closed");
        }
    }
}

async fn handle(inner: &Arc<Inner>, session: &Arc<Session>, msg: Message) -> Result<(), LinkEnd> {
    match msg {
        Message::Alert(alert) => {
            let Some(child) = session.child_info() else {
                return Err(LinkEnd::Violation("alert before Register".into()));
            };
            if alert.path.last() != Some(&child.name) || alert.path.len() > MAX_PATH {
                return Err(LinkEnd::Violation(format!(
                    "alert path {:?} does not end with the sender {:?} (or is too long)",
                    alert.path, child.name
                )));
            }
            inner.on_alert(alert, session).await;
        }
        Message::Register {
            name,
            kind,
            listen_addr,
        } => {
            if name != session.peer_name {
                return Err(LinkEnd::Violation(format!(
                    "registered as {name:?} but authenticated as {:?}",
                    session.peer_name
                )));
            }
            // A child that reconnects before its old connection was noticed dead replaces it.
            let stale: Vec<Arc<Session>> = lock(&inner.sessions)
                .values()
                .filter(|s| s.id != session.id && s.child_info().is_some_and(|c| c.name == name))
                .cloned()
                .collect();
            for s in stale {
                tracing::info!(node = %inner.name, child = %name, old_peer = %s.peer_addr, "child reconnected; dropping its old connection");
                s.cancel.cancel();
            }
            tracing::info!(node = %inner.name, child = %name, ?kind, peer = %session.peer_addr, "child registered");
            *lock(&session.child) = Some(ChildInfo {
                name,
                kind,
                listen_addr,
                peer: session.peer_addr,
            });
            inner.sessions_changed.notify_waiters();
        }
        Message::Reply { id, result } => session.complete(id, result),
        Message::Call { id, verb, args } => {
            crate::routing::spawn_call(inner.clone(), session.clone(), id, verb, args)
        }
        Message::ListSlaves => crate::routing::spawn_call(
            inner.clone(),
            session.clone(),
            0,
            "list_slaves".into(),
            vec![],
        ),
        Message::FindNode { name } => crate::routing::spawn_call(
            inner.clone(),
            session.clone(),
            0,
            "find_node".into(),
            vec![name],
        ),
        Message::Heartbeat => {}
        Message::Destroy => {
            tracing::warn!(node = %inner.name, peer = %session.peer_addr, from = %session.peer_name, "Destroy from a child ignored (only the master may send it; call the `destroy` verb instead)");
        }
        Message::Ack { .. } => {
            return Err(LinkEnd::Violation(
                "a child sent an Ack (only masters acknowledge)".into(),
            ))
        }
    }
    Ok(())
}
