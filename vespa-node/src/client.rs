//! A client for calling verbs on a node (the `vespa-orchestrator call` command, tests).
//!
//! It connects like a child (same handshake, so it must hold the PSK) but never registers:
//! the node treats it as a caller only.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use vespa_proto::Message;

use crate::error::NodeError;
use crate::transport::{establish, Link, Security, Side};
use crate::verbs::VerbResult;

/// A connection to one node for calls.
pub struct Client {
    link: Link,
    peer: SocketAddr,
    next_id: u64,
    timeout: Duration,
}

impl Client {
    /// Connects to `addr` as `my_name`; if `expect` is given, the node must prove that name.
    pub async fn connect(
        addr: SocketAddr,
        security: &Security,
        my_name: &str,
        expect: Option<&str>,
        timeout: Duration,
    ) -> Result<Client, NodeError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| NodeError::Timeout(format!("connecting to {addr}")))?
            .map_err(|source| NodeError::Io {
                what: format!("connecting to {addr}"),
                source,
            })?;
        let cfg = vespa_proto::Config {
            handshake_timeout: timeout,
            ..Default::default()
        };
        let link = establish(stream, Side::Client, security, my_name, &cfg)
            .await
            .map_err(|source| NodeError::Connection {
                peer: addr.to_string(),
                source,
            })?;
        if let Some(want) = expect {
            if link.peer_name != want {
                return Err(NodeError::Protocol(format!(
                    "{addr} is node {:?}, not {want:?}",
                    link.peer_name
                )));
            }
        }
        Ok(Client {
            link,
            peer: addr,
            next_id: 1,
            timeout,
        })
    }

    /// The node's name, as proved in the handshake.
    pub fn peer_name(&self) -> &str {
        &self.link.peer_name
    }

    /// Calls `verb` on the connected node and waits for its reply. `call <node> <verb> ...`
    /// reaches any node below it.
    pub async fn call(&mut self, verb: &str, args: &[&str]) -> Result<VerbResult, NodeError> {
        let id = self.next_id;
        self.next_id += 1;
        let peer = self.peer.to_string();
        let conn = |source| NodeError::Connection {
            peer: peer.clone(),
            source,
        };
        let msg = Message::Call {
            id,
            verb: verb.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        self.link.writer.feed(&msg).await.map_err(conn)?;
        self.link.writer.flush().await.map_err(conn)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.link.reader.recv())
                .await
                .map_err(|_| NodeError::Timeout(format!("{verb} on {}", self.link.peer_name)))?;
            match next.map_err(conn)? {
                Some(Message::Reply { id: rid, result }) if rid == id => return Ok(result),
                Some(Message::Heartbeat | Message::Reply { .. }) => {}
                Some(other) => {
                    return Err(NodeError::Protocol(format!(
                        "unexpected {other:?} while waiting for a reply"
                    )))
                }
                None => {
                    return Err(NodeError::Protocol(format!(
                        "{} closed the connection",
                        self.link.peer_name
                    )))
                }
            }
        }
    }

    /// Closes the connection in order.
    pub async fn close(mut self) {
        let _ = self.link.writer.close().await;
    }
}
