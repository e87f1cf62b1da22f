//! The listening side: children register here and stream alerts up; operators' clients call
//! verbs.
//!
//! Each connection is on its own: whatever it does wrong (random bytes, a 4 GiB length, a
//! flipped bit, a replayed frame, the wrong key, never finishing a frame) ends *that*
//! connection with one log line naming the peer and the reason, and the node goes on serving
//! every other one. Memory per connection is bounded by the frame limit (hello-sized until
//! the peer proves the key), time by the handshake deadline and the idle timeout, and the
//! handshakes in progress by [`Admission`]: a share of the slots per source address, and a
//! reserve for the topology's children. A connection that says nothing within
//! [`FIRST_BYTES`] is closed. Refusals of unauthenticated connections are counted and logged
//! in summary (the first, then every hundredth), so a flood cannot flood the log.
//!
//! A node with a topology accepts as children only the nodes the topology puts under it,
//! each with its kind, and from each child only alerts whose origin and path lie in that
//! child's subtree.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use vespa_proto::{AlertBody, Message, NodeEvent, MAX_PATH};

use crate::admission::{Admission, Ticket};
use crate::delivery::Delivery;
use crate::lifecycle::Life;
use crate::peers::Peers;
use crate::routing::{Caller, Router};
use crate::session::{next_message, write_loop, ChildInfo, LinkEnd, Session};
use crate::spec::{ChildSpec, NodeSpec};
use crate::transport::{establish, Side};
use crate::util::now_ns;

/// Handshake slots shared by every source address.
const OPEN_HANDSHAKES: usize = 192;
/// More slots, used only by the addresses of the topology's children once the others are full.
const RESERVED_HANDSHAKES: usize = 64;
/// Shared slots one source address may hold at once.
const PER_SOURCE_HANDSHAKES: usize = 8;
/// A new connection must send its first bytes (the hello) within this.
pub(crate) const FIRST_BYTES: Duration = Duration::from_secs(1);

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
        let children = self.spec.children.iter().flatten();
        let handshakes = Admission::new(
            OPEN_HANDSHAKES,
            RESERVED_HANDSHAKES,
            PER_SOURCE_HANDSHAKES,
            children.filter_map(|(_, c)| c.addr).collect(),
        );
        let refused = AtomicU64::new(0);
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
            let ticket = match handshakes.admit(peer.ip()) {
                Ok(t) => t,
                Err(why) => {
                    self.peers.connection_error();
                    let n = refused.fetch_add(1, Ordering::Relaxed) + 1;
                    if n == 1 || n.is_multiple_of(100) {
                        tracing::warn!(peer = %peer, node = "-", reason = %why, refused_total = n, "connection refused");
                    }
                    continue;
                }
            };
            tokio::spawn(self.clone().serve(stream, peer, ticket));
        }
    }

    async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, ticket: Ticket) {
        let s = &self.spec.settings;
        let cfg = vespa_proto::Config {
            max_frame: s.max_frame,
            handshake_timeout: s.handshake_timeout,
        };
        let first = tokio::select! {
            r = tokio::time::timeout(FIRST_BYTES, stream.readable()) => r,
            _ = self.life.closed() => return,
        };
        if first.is_err() {
            self.peers.connection_error();
            tracing::debug!(peer = %peer, node = "-", "connection closed: nothing sent within {FIRST_BYTES:?}");
            return;
        }
        let link = tokio::select! {
            r = establish(stream, Side::Server, &self.spec.security, &self.spec.name, &cfg) => r,
            _ = self.life.closed() => return,
        };
        drop(ticket);
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
        let writer = tokio::spawn(write_loop(
            link.writer,
            session.clone(),
            ctl_rx,
            None,
            s.heartbeat,
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
        if let Some(c) = &child {
            if !matches!(result, LinkEnd::Local) && !self.life.is_stopping() {
                let why = match &result {
                    LinkEnd::Idle(d) => format!("silent for {d:?} (three heartbeats missed)"),
                    LinkEnd::ClosedByPeer => "it closed its connection".to_string(),
                    e => e.to_string(),
                };
                self.node_event(c.name.clone(), NodeEvent::Lost, why);
            }
        }
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

    /// Raises the alert that says a child came or went (2014's `archi=` and `down#`): it
    /// climbs to the VO like any alert of this node.
    fn node_event(&self, node: String, event: NodeEvent, detail: String) {
        tracing::info!(node = %self.spec.name, child = ?node, event = event.as_str(), detail = ?detail, "node event alert");
        let body = AlertBody::Node {
            node,
            event,
            detail,
        };
        // A full queue counts and reports the drop itself.
        let _ = self.delivery.raise(body, now_ns());
    }

    /// What the topology says of the child `name` (`None`: this node accepts any child).
    fn child_spec(&self, name: &str) -> Option<&ChildSpec> {
        self.spec.children.as_ref()?.get(name)
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
                if let Some(spec) = self.child_spec(&child.name) {
                    let outside = std::iter::once(&alert.origin)
                        .chain(&alert.path)
                        .find(|n| !spec.subtree.contains(*n));
                    if let Some(n) = outside {
                        return Err(LinkEnd::Violation(format!(
                            "alert from {:?} names {n:?} (origin {:?}), which is not in its subtree",
                            child.name, alert.origin
                        )));
                    }
                    if alert.path.first() != Some(&alert.origin) {
                        return Err(LinkEnd::Violation(format!(
                            "alert path {:?} does not start at its origin {:?}",
                            alert.path, alert.origin
                        )));
                    }
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
                if let Some(children) = &self.spec.children {
                    let Some(spec) = children.get(&name) else {
                        return Err(LinkEnd::Violation(format!(
                            "{name:?} is not a child of {node} in the topology"
                        )));
                    };
                    if spec.kind != kind {
                        return Err(LinkEnd::Violation(format!(
                            "{name:?} registered as {kind:?} but the topology makes it {:?}",
                            spec.kind
                        )));
                    }
                }
                // A child that reconnects before its old connection was noticed dead replaces
                // it.
                for s in self.peers.others_of(session, &name) {
                    tracing::info!(node = %node, child = ?name, old_peer = %s.peer_addr, "child reconnected; dropping its old connection");
                    s.cancel.cancel();
                }
                let info = ChildInfo {
                    name: name.clone(),
                    kind,
                    listen_addr,
                    peer: session.peer_addr,
                };
                let again = self.peers.register(session, info);
                tracing::info!(node = %node, child = ?name, ?kind, peer = %session.peer_addr, again, "child registered");
                let event = if again {
                    NodeEvent::Reregistered
                } else {
                    NodeEvent::Registered
                };
                let listen =
                    listen_addr.map_or_else(String::new, |a| format!(", listening on {a}"));
                self.node_event(name, event, format!("from {}{listen}", session.peer_addr));
            }
            Message::Reply { id, result } => session.complete(id, result),
            call @ (Message::Call { .. } | Message::ListSlaves | Message::FindNode { .. }) => {
                let security = &self.spec.security;
                let caller = match session.child_info() {
                    Some(_) => Caller::Child,
                    None if security.is_operator(node, &session.peer_name) => Caller::Operator,
                    None => Caller::Peer,
                };
                let from = security.call_from(&session.peer_name);
                self.router.answer(session, caller, from, call)
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
