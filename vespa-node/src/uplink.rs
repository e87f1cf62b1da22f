//! The link to the master: connect (with backoff and jitter), handshake, `Register`, then
//! stream the outbox and take acks, calls and `Destroy` until the link fails; then again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use vespa_proto::Message;

use crate::backoff::Backoff;
use crate::node::{lock, Inner, MasterAddr};
use crate::session::{next_message, write_loop, LinkEnd, Session};
use crate::stats::inc;
use crate::transport::{establish, Side};

/// Why one connection attempt or session ended.
#[derive(Debug, thiserror::Error)]
enum UplinkError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("handshake: {0}")]
    Handshake(vespa_proto::ProtoError),
    #[error(
        "peer proved the name {got:?}, but the master is {want:?} (wrong address in the config?)"
    )]
    WrongPeer { want: String, got: String },
    #[error("{0}")]
    Link(#[from] LinkEnd),
}

pub(crate) async fn uplink_loop(
    inner: Arc<Inner>,
    master: MasterAddr,
    listen_addr: Option<SocketAddr>,
) {
    let s = &inner.spec.settings;
    let mut backoff = Backoff::new(s.backoff_min, s.backoff_max);
    let mut first = true;
    // While the master stays unreachable, only a change of reason is logged at warn level,
    // so an outage is one line (plus one when it ends), not one per retry.
    let mut last_reason: Option<String> = None;
    loop {
        if inner.closing.is_cancelled() {
            return;
        }
        if !first {
            inc(&inner.counters.reconnects);
        }
        first = false;
        let started = Instant::now();
        match connect_once(&inner, &master, listen_addr, last_reason.is_some()).await {
            Ok(()) | Err(UplinkError::Link(LinkEnd::Local)) => last_reason = None,
            Err(UplinkError::Link(LinkEnd::ClosedByPeer)) => {
                last_reason = None;
                tracing::info!(peer = %master.addr, node = %master.name, "master closed the connection");
            }
            Err(e) => {
                inc(&inner.counters.connection_errors);
                let reason = e.to_string();
                let repeated = e.before_link() && last_reason.as_deref() == Some(reason.as_str());
                if repeated {
                    tracing::debug!(peer = %master.addr, node = %master.name, reason = %reason, "uplink to master failed again");
                } else {
                    tracing::warn!(peer = %master.addr, node = %master.name, reason = %reason, "uplink to master failed");
                }
                last_reason = Some(reason);
            }
        }
        if inner.closing.is_cancelled() {
            return;
        }
        // A link that stayed up a while is not a flapping one: start the backoff over.
        if started.elapsed() > s.heartbeat * 5 {
            backoff.reset();
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = inner.closing.cancelled() => return,
        }
    }
}

impl UplinkError {
    /// True when the failure happened before a session existed (connect or handshake), the
    /// kind that repeats on every retry during an outage.
    fn before_link(&self) -> bool {
        !matches!(self, UplinkError::Link(_))
    }
}

async fn connect_once(
    inner: &Arc<Inner>,
    master: &MasterAddr,
    listen_addr: Option<SocketAddr>,
    after_failure: bool,
) -> Result<(), UplinkError> {
    let s = &inner.spec.settings;
    let connect_timeout = s.handshake_timeout;
    let stream = tokio::select! {
        r = tokio::time::timeout(connect_timeout, TcpStream::connect(master.addr)) => match r {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(UplinkError::Connect(e)),
            Err(_) => return Err(UplinkError::ConnectTimeout(connect_timeout)),
        },
        _ = inner.closing.cancelled() => return Ok(()),
    };
    let cfg = vespa_proto::Config {
        max_frame: s.max_frame,
        handshake_timeout: s.handshake_timeout,
    };
    let mut link = establish(
        stream,
        Side::Client,
        &inner.spec.security,
        &inner.name,
        &cfg,
    )
    .await
    .map_err(UplinkError::Handshake)?;
    if link.peer_name != master.name {
        return Err(UplinkError::WrongPeer {
            want: master.name.clone(),
            got: link.peer_name,
        });
    }
    let register = Message::Register {
        name: inner.name.clone(),
        kind: inner.spec.role.node_kind(),
        listen_addr,
    };
    link.writer.feed(&register).await.map_err(LinkEnd::from)?;
    link.writer.flush().await.map_err(LinkEnd::from)?;

    let id = inner
        .next_session
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (session, ctl_rx) = Session::new(
        id,
        master.addr,
        master.name.clone(),
        inner.closing.child_token(),
    );
    let outbox = inner.outbox.clone();
    if let Some(o) = &outbox {
        o.rewind();
    }
    *lock(&inner.uplink) = Some(session.clone());
    let queued = outbox.as_ref().map_or(0, |o| o.len());
    if after_failure {
        tracing::info!(node = %inner.name, master = %master.name, addr = %master.addr, queued, "reconnected to master; re-sending unacknowledged alerts");
    } else {
        tracing::info!(node = %inner.name, master = %master.name, addr = %master.addr, queued, "connected to master");
    }

    let w_inner = inner.clone();
    let s_inner = inner.clone();
    let writer = tokio::spawn(write_loop(
        link.writer,
        session.clone(),
        ctl_rx,
        outbox,
        s.heartbeat,
        move || w_inner.before_acks(),
        move |n| {
            s_inner
                .counters
                .alerts_sent
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        },
    ));
    let idle = s.heartbeat * 3;
    let result = loop {
        let msg = match next_message(&mut link.reader, &session, idle).await {
            Ok(m) => m,
            Err(e) => break Err(e),
        };
        match msg {
            Message::Ack { origin, seq } => inner.on_ack(&origin, seq),
            Message::Heartbeat => {}
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
            Message::Reply { id, result } => session.complete(id, result),
            Message::Destroy => {
                tracing::info!(node = %inner.name, master = %master.name, "destroy received from master");
                inner.request_destroy();
            }
            Message::Register { .. } | Message::Alert(_) => {
                break Err(LinkEnd::Violation(
                    "the master sent a message only children send".into(),
                ))
            }
        }
    };
    session.cancel.cancel();
    let _ = writer.await;
    session.fail_pending();
    {
        let mut up = lock(&inner.uplink);
        if up.as_ref().is_some_and(|u| Arc::ptr_eq(u, &session)) {
            *up = None;
        }
    }
    result.map_err(UplinkError::Link)
}
