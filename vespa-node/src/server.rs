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
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use vespa_proto::Message;

use crate::delivery::Delivery;
use crate::lifecycle::Life;
use crate::peers::Peers;
use crate::routing::Router;
use crate::session::{next_message, write_loop, ChildInfo, LinkEnd, Session};
use crate::spec::NodeSpec;
use crate::transport::{establish, Side};

/// Handshakes allowed in progress at once; more connections are refused until some finish.
const MAX_HANDSHAKES: usize = 256;
/// Longest alert path accepted (a deeper one means a routing loop).
const MAX_PATH: usize = 32;

/// The listening side of one node, over the owners of its state.
pub(crate) struct Server {
    spec: Arc<NodeSpec>,
    delivery: Arc<Delivery>,
    peers: Arc<Peers>,
    router: Arc<Router>,
    life: Arc<Life>,
}

impl Server {
    /// The listening side of the node `spec` describes.
    pub fn new(
        spec: Arc<NodeSpec>,
        delivery: Arc<Delivery>,
        peers: Arc<Peers>,
        router: Arc<Router>,
        life: Arc<Life>,
    ) -> Server {
        Server {
            spec,
            delivery,
            peers,
            router,
            life,
        }
    }

    /// Accepts connections until the node stops accepting, each served on a task of its own.
    pub async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: wait instead of spinning.
                        tracing::warn!(node = %self.spec.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = self.life.accepting_stopped() => return,
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                self.peers.connection_error();
                tracing::warn!(peer = %peer, node = "-", reason = "too many handshakes in progress", "connection refused");
                continue;
            };
            tokio::spawn(self.clone().serve(stream, peer, permit));
        }
    }

    async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) {
        let s = &self.spec.settings;
        let cfg = vespa_proto::Config {
            max_frame: s.max_frame,
            handshake_timeout: s.handshake_timeout,
        };
        let link = tokio::select! {
            r = establish(stream, Side::Server, &self.spec.security, &self.spec.name, &cfg) => r,
            _ = self.life.closed() => return,
        };
        drop(permit);
        let mut link = match link {
            Ok(l) => l,
            Err(e) => {
                self.peers.connection_error();
                tracing::warn!(peer = %peer, node = "-", reason = ?e.to_string(), "connection rejected");
                return;
            }
        };
        let (session, ctl_rx) =
            self.peers
                .session(peer, link.peer_name.clone(), self.life.session_token());
        self.peers.add(&session);
        let delivery = self.delivery.clone();
        let writer = tokio::spawn(write_loop(
            link.writer,
            session.clone(),
            ctl_rx,
            None,
            s.heartbeat,
            move || delivery.flush_journal(),
            |_| {},
        ));

        let idle = s.heartbeat * 3;
        let result = loop {
            let msg = match next_message(&mut link.reader, &session, idle).await {
                Ok(m) => m,
                Err(e) => break e,
            };
            if let Err(e) = self.handle(&session, msg).await {
                break e;
            }
        };
        session.cancel.cancel();
        let _ = writer.await;
        session.fail_pending();
        self.peers.remove(&session);
        let child = session.child_info();
        let name = child
            .as_ref()
            .map_or(session.peer_name.as_str(), |c| c.name.as_str());
        match result {
            LinkEnd::Local => {}
            LinkEnd::ClosedByPeer if child.is_some() => {
                tracing::info!(peer = %peer, node = ?name, "child closed its connection")
            }
            LinkEnd::ClosedByPeer => {
                tracing::debug!(peer = %peer, node = ?name, "caller closed its connection")
            }
            e => {
                self.peers.connection_error();
                tracing::warn!(peer = %peer, node = ?name, reason = ?e.to_string(), "connection closed");
            }
        }
    }

    async fn handle(&self, session: &Arc<Session>, msg: Message) -> Result<(), LinkEnd> {
        let node = &self.spec.name;
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
                self.delivery.on_alert(alert, session).await;
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
                // A child that reconnects before its old connection was noticed dead replaces
                // it.
                for s in self.peers.others_of(session, &name) {
                    tracing::info!(node = %node, child = ?name, old_peer = %s.peer_addr, "child reconnected; dropping its old connection");
                    s.cancel.cancel();
                }
                tracing::info!(node = %node, child = ?name, ?kind, peer = %session.peer_addr, "child registered");
                let info = ChildInfo {
                    name,
                    kind,
                    listen_addr,
                    peer: session.peer_addr,
                };
                self.peers.register(session, info);
            }
            Message::Reply { id, result } => session.complete(id, result),
            call @ (Message::Call { .. } | Message::ListSlaves | Message::FindNode { .. }) => {
                self.router.answer(session, call)
            }
            Message::Heartbeat => {}
            Message::Destroy => {
                tracing::warn!(node = %node, peer = %session.peer_addr, from = ?session.peer_name, "Destroy from a child ignored (only the master may send it; call the `destroy` verb instead)");
            }
            Message::Ack { .. } => {
                return Err(LinkEnd::Violation(
                    "a child sent an Ack (only masters acknowledge)".into(),
                ))
            }
        }
        Ok(())
    }
}
