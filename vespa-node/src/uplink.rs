//! The link to the master: connect (with backoff and jitter), handshake, `Register`, then
//! stream the outbox and take acks, calls and `Destroy` until the link fails; then again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use vespa_proto::Message;

use crate::backoff::Backoff;
use crate::delivery::Delivery;
use crate::lifecycle::Life;
use crate::peers::Peers;
use crate::routing::{Caller, Router};
use crate::session::{next_message, write_loop, LinkEnd};
use crate::spec::{MasterAddr, NodeSpec};
use crate::transport::{establish, Link, Side};
use crate::verbs::CallFrom;

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

impl UplinkError {
    /// True when the failure happened before a session existed (connect or handshake), the
    /// kind that repeats on every retry during an outage.
    fn before_link(&self) -> bool {
        !matches!(self, UplinkError::Link(_))
    }
}

/// How the uplink reaches its master: over TCP; in this crate's tests, over in-memory streams
/// a test hands out, so that paused time drives reconnection with no real I/O in between.
enum Dial {
    Tcp,
    #[cfg(test)]
    Memory(Arc<dyn Fn() -> std::io::Result<tokio::io::DuplexStream> + Send + Sync>),
}

/// The link of one node to its master, over the owners of the node's state.
pub(crate) struct Uplink {
    spec: Arc<NodeSpec>,
    master: MasterAddr,
    /// Where this node listens, told to the master in `Register`.
    listen_addr: Option<SocketAddr>,
    delivery: Arc<Delivery>,
    peers: Arc<Peers>,
    router: Arc<Router>,
    life: Arc<Life>,
    dial: Dial,
}

impl Uplink {
    /// The uplink of the node `spec` describes; `None` for the root, which has no master.
    pub fn new(
        spec: Arc<NodeSpec>,
        listen_addr: Option<SocketAddr>,
        delivery: Arc<Delivery>,
        peers: Arc<Peers>,
        router: Arc<Router>,
        life: Arc<Life>,
    ) -> Option<Uplink> {
        let master = spec.master.clone()?;
        Some(Uplink {
            spec,
            master,
            listen_addr,
            delivery,
            peers,
            router,
            life,
            dial: Dial::Tcp,
        })
    }

    /// Dials through `dial` instead of TCP: each call is one connection attempt.
    #[cfg(test)]
    fn dial_with(
        mut self,
        dial: impl Fn() -> std::io::Result<tokio::io::DuplexStream> + Send + Sync + 'static,
    ) -> Uplink {
        self.dial = Dial::Memory(Arc::new(dial));
        self
    }

    /// Keeps the link up until the node closes: connect, run the session, back off, again.
    pub async fn run(self) {
        let s = &self.spec.settings;
        let master = &self.master;
        let mut backoff = Backoff::new(s.backoff_min, s.backoff_max);
        let mut first = true;
        // While the master stays unreachable, only a change of reason is logged at warn level,
        // so an outage is one line (plus one when it ends), not one per retry.
        let mut last_reason: Option<String> = None;
        loop {
            if self.life.is_closing() {
                return;
            }
            if !first {
                self.peers.reconnecting();
            }
            first = false;
            let started = Instant::now();
            match self.connect_once(last_reason.is_some()).await {
                Ok(()) | Err(UplinkError::Link(LinkEnd::Local)) => last_reason = None,
                Err(UplinkError::Link(LinkEnd::ClosedByPeer)) => {
                    last_reason = None;
                    tracing::info!(peer = %master.addr, node = %master.name, "master closed the connection");
                }
                Err(e) => {
                    self.peers.connection_error();
                    let reason = e.to_string();
                    let repeated =
                        e.before_link() && last_reason.as_deref() == Some(reason.as_str());
                    if repeated {
                        tracing::debug!(peer = %master.addr, node = %master.name, reason = %reason, "uplink to master failed again");
                    } else {
                        tracing::warn!(peer = %master.addr, node = %master.name, reason = %reason, "uplink to master failed");
                    }
                    last_reason = Some(reason);
                }
            }
            if self.life.is_closing() {
                return;
            }
            // A link that stayed up a while is not a flapping one: start the backoff over.
            if started.elapsed() > s.heartbeat * 5 {
                backoff.reset();
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = self.life.closed() => return,
            }
        }
    }

    /// Connects and runs the handshake; `None` when the node closed while connecting.
    async fn dial(&self) -> Result<Option<Link>, UplinkError> {
        let s = &self.spec.settings;
        let cfg = vespa_proto::Config {
            max_frame: s.max_frame,
            handshake_timeout: s.handshake_timeout,
        };
        let name = &self.spec.name;
        let security = &self.spec.security;
        match &self.dial {
            Dial::Tcp => {
                let connect_timeout = s.handshake_timeout;
                let stream = tokio::select! {
                    r = tokio::time::timeout(connect_timeout, TcpStream::connect(self.master.addr)) => match r {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return Err(UplinkError::Connect(e)),
                        Err(_) => return Err(UplinkError::ConnectTimeout(connect_timeout)),
                    },
                    _ = self.life.closed() => return Ok(None),
                };
                establish(stream, Side::Client, security, name, &cfg)
                    .await
                    .map(Some)
                    .map_err(UplinkError::Handshake)
            }
            #[cfg(test)]
            Dial::Memory(dial) => {
                let stream = dial().map_err(UplinkError::Connect)?;
                crate::transport::establish_in_memory(stream, Side::Client, security, name, &cfg)
                    .await
                    .map(Some)
                    .map_err(UplinkError::Handshake)
            }
        }
    }

    async fn connect_once(&self, after_failure: bool) -> Result<(), UplinkError> {
        let master = &self.master;
        let s = &self.spec.settings;
        let Some(mut link) = self.dial().await? else {
            return Ok(());
        };
        if link.peer_name != master.name {
            return Err(UplinkError::WrongPeer {
                want: master.name.clone(),
                got: link.peer_name,
            });
        }
        let register = Message::Register {
            name: self.spec.name.clone(),
            kind: self.spec.role.node_kind(),
            listen_addr: self.listen_addr,
        };
        link.writer.feed(&register).await.map_err(LinkEnd::from)?;
        link.writer.flush().await.map_err(LinkEnd::from)?;

        let (session, ctl_rx) =
            self.peers
                .session(master.addr, master.name.clone(), self.life.session_token());
        let queued = self.delivery.rewind();
        self.peers.set_uplink(&session);
        let node = &self.spec.name;
        if after_failure {
            tracing::info!(node = %node, master = %master.name, addr = %master.addr, queued, "reconnected to master; re-sending unacknowledged alerts");
        } else {
            tracing::info!(node = %node, master = %master.name, addr = %master.addr, queued, "connected to master");
        }

        let counted = self.delivery.clone();
        let writer = tokio::spawn(write_loop(
            link.writer,
            session.clone(),
            ctl_rx,
            self.delivery.outbox(),
            s.heartbeat,
            move |n| counted.sent(n),
        ));
        let idle = s.heartbeat * 3;
        let result = loop {
            let msg = match next_message(&mut link.reader, &session, idle).await {
                Ok(m) => m,
                Err(e) => break Err(e),
            };
            match msg {
                Message::Ack { origin, seq } => self.delivery.on_ack(&origin, seq),
                Message::Heartbeat => {}
                call @ (Message::Call { .. } | Message::ListSlaves | Message::FindNode { .. }) => {
                    self.router
                        .answer(&session, Caller::Master, CallFrom::Master, call)
                }
                Message::Reply { id, result } => session.complete(id, result),
                Message::Destroy => {
                    tracing::info!(node = %node, master = %master.name, "destroy received from master");
                    self.life.request_destroy();
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
        self.peers.clear_uplink(&session);
        result.map_err(UplinkError::Link)
    }
}

#[cfg(test)]
mod tests {
    //! The uplink against a master played by the test over in-memory streams, in paused time:
    //! every wait below is on the next message or the next dial, and the clock moves only
    //! when every task is waiting (to the next timer: a heartbeat, an idle timeout, a
    //! backoff), so the delays asserted are exactly those the uplink chose.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::DuplexStream;
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;
    use vespa_proto::{AlertBody, Psk, SecureStream};

    use super::*;
    use crate::config::Settings;
    use crate::transport::Security;

    const HEARTBEAT: Duration = Duration::from_secs(1);
    const BACKOFF_MIN: Duration = Duration::from_millis(100);
    const BACKOFF_MAX: Duration = Duration::from_millis(1600);

    fn settings() -> Settings {
        Settings {
            heartbeat: HEARTBEAT,
            backoff_min: BACKOFF_MIN,
            backoff_max: BACKOFF_MAX,
            ..Settings::default()
        }
    }

    fn proto_config() -> vespa_proto::Config {
        let s = settings();
        vespa_proto::Config {
            max_frame: s.max_frame,
            handshake_timeout: s.handshake_timeout,
        }
    }

    /// A dialler whose first `refused` attempts fail; later ones connect, handing the master's
    /// end to the test. Every attempt's instant is reported too.
    type Dialler = (
        Box<dyn Fn() -> std::io::Result<DuplexStream> + Send + Sync>,
        mpsc::UnboundedReceiver<Instant>,
        mpsc::UnboundedReceiver<DuplexStream>,
    );

    fn dialler(refused: usize) -> Dialler {
        let (at_tx, at_rx) = mpsc::unbounded_channel();
        let (far_tx, far_rx) = mpsc::unbounded_channel();
        let attempts = AtomicUsize::new(0);
        let dial = move || {
            let _ = at_tx.send(Instant::now());
            if attempts.fetch_add(1, Ordering::Relaxed) < refused {
                return Err(std::io::ErrorKind::ConnectionRefused.into());
            }
            let (near, far) = tokio::io::duplex(64 * 1024);
            far_tx
                .send(far)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::ConnectionRefused))?;
            Ok(near)
        };
        (Box::new(dial), at_rx, far_rx)
    }

    /// Agent `a1` below master `HO`, its uplink running.
    struct Agent {
        delivery: Arc<Delivery>,
        router: Arc<Router>,
        life: Arc<Life>,
        task: JoinHandle<()>,
    }

    impl Agent {
        fn start(
            psk: &Psk,
            dial: Box<dyn Fn() -> std::io::Result<DuplexStream> + Send + Sync>,
        ) -> Agent {
            let mut spec = NodeSpec::test_agent(Security::Psk(psk.clone()));
            spec.settings = settings();
            let spec = Arc::new(spec);
            let delivery = Arc::new(Delivery::new(&spec, Vec::new()).expect("delivery"));
            let peers = Arc::new(Peers::new());
            let life = Arc::new(Life::new());
            let router = Arc::new(Router::new(
                &spec,
                None,
                delivery.clone(),
                peers.clone(),
                life.clone(),
            ));
            let uplink = Uplink::new(
                spec,
                None,
                delivery.clone(),
                peers,
                router.clone(),
                life.clone(),
            )
            .expect("a1 has a master")
            .dial_with(dial);
            Agent {
                delivery,
                router,
                life,
                task: tokio::spawn(uplink.run()),
            }
        }

        async fn stop(self) {
            self.life.close();
            self.task.await.expect("uplink task");
        }
    }

    /// The master's end of one connection.
    struct Master(SecureStream<DuplexStream>);

    impl Master {
        /// Takes the next connection the uplink dials: handshake as `HO`, then `Register`.
        async fn accept(dialled: &mut mpsc::UnboundedReceiver<DuplexStream>, psk: &Psk) -> Master {
            let stream = dialled.recv().await.expect("the uplink dials again");
            let (s, peer) = vespa_proto::server_handshake(stream, psk, "HO", &proto_config())
                .await
                .expect("handshake");
            assert_eq!(peer, "a1");
            let mut m = Master(s);
            match m.next().await {
                Some(Message::Register { name, .. }) => assert_eq!(name, "a1"),
                other => panic!("expected Register first, got {other:?}"),
            }
            m
        }

        async fn next(&mut self) -> Option<Message> {
            self.0.recv().await.expect("a sealed frame")
        }

        /// The sequence number of the next alert (heartbeats skipped).
        async fn alert(&mut self) -> u64 {
            loop {
                match self.next().await {
                    Some(Message::Alert(a)) => return a.seq,
                    Some(Message::Heartbeat) => {}
                    other => panic!("expected an alert, got {other:?}"),
                }
            }
        }

        async fn send(&mut self, msg: Message) {
            self.0.send(&msg).await.expect("send");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unacknowledged_alerts_are_resent_after_the_uplink_reconnects() {
        let psk = Psk::random();
        let (dial, _attempts, mut dialled) = dialler(0);
        let agent = Agent::start(&psk, dial);
        let seqs: Vec<u64> = (0..3)
            .map(|i| {
                agent
                    .delivery
                    .raise(AlertBody::Text(i.to_string()), 0)
                    .expect("queued")
            })
            .collect();

        let mut m = Master::accept(&mut dialled, &psk).await;
        for want in &seqs {
            assert_eq!(m.alert().await, *want);
        }
        let origin = || "a1".to_string();
        m.send(Message::Ack {
            origin: origin(),
            seq: seqs[0],
        })
        .await;
        m.0.close().await.expect("close");
        let lost = Instant::now();

        let mut m = Master::accept(&mut dialled, &psk).await;
        let waited = lost.elapsed();
        assert!(
            waited >= BACKOFF_MIN / 2 && waited <= BACKOFF_MIN,
            "redialled after {waited:?}, not after the first backoff delay"
        );
        assert_eq!(
            [m.alert().await, m.alert().await],
            [seqs[1], seqs[2]],
            "exactly the unacknowledged alerts go out again, oldest first"
        );
        let st = agent.router.stats();
        assert_eq!(st.alerts_sent, 5);
        assert_eq!(st.acks_received, 1);
        assert_eq!(st.queue_len, 2);
        assert_eq!(st.reconnects, 1);
        assert!(st.uplink_connected);

        m.send(Message::Ack {
            origin: origin(),
            seq: seqs[2],
        })
        .await;
        assert!(
            agent.delivery.drain(Duration::from_secs(1)).await,
            "one cumulative ack empties the queue"
        );
        agent.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_master_is_dropped_after_three_heartbeats_and_redialled() {
        let psk = Psk::random();
        let (dial, _attempts, mut dialled) = dialler(0);
        let agent = Agent::start(&psk, dial);
        let mut m = Master::accept(&mut dialled, &psk).await;
        let up = Instant::now();
        // The master never says anything; the node's heartbeats keep coming until it gives up
        // and closes the link in order.
        let mut heartbeats = 0;
        while let Some(msg) = m.next().await {
            assert_eq!(msg, Message::Heartbeat);
            heartbeats += 1;
        }
        let idle = up.elapsed();
        assert!(
            idle >= HEARTBEAT * 3 && idle < HEARTBEAT * 3 + Duration::from_millis(10),
            "dropped after {idle:?}"
        );
        assert!(heartbeats >= 2, "{heartbeats} heartbeats");

        let _m = Master::accept(&mut dialled, &psk).await;
        let redial = up.elapsed() - idle;
        assert!(
            redial >= BACKOFF_MIN / 2 && redial <= BACKOFF_MIN + Duration::from_millis(10),
            "redialled {redial:?} after the drop"
        );
        let st = agent.router.stats();
        assert_eq!(st.connection_errors, 1, "an idle timeout is a failed link");
        assert_eq!(st.reconnects, 1);
        agent.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_master_is_retried_with_growing_delays() {
        let psk = Psk::random();
        let (dial, mut attempts, _dialled) = dialler(usize::MAX);
        let agent = Agent::start(&psk, dial);
        let mut at = Vec::new();
        for _ in 0..7 {
            at.push(attempts.recv().await.expect("another attempt"));
        }
        let mut nominal = BACKOFF_MIN;
        for (i, w) in at.windows(2).enumerate() {
            let d = w[1] - w[0];
            assert!(
                d >= nominal / 2 && d <= nominal,
                "delay {i} is {d:?}, outside [{:?}, {nominal:?}]",
                nominal / 2
            );
            nominal = (nominal * 2).min(BACKOFF_MAX);
        }
        let st = agent.router.stats();
        assert_eq!(st.reconnects, 6);
        assert!(st.connection_errors >= 6);
        assert!(!st.uplink_connected);
        agent.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_that_lasted_starts_the_backoff_over() {
        let psk = Psk::random();
        let (dial, mut attempts, mut dialled) = dialler(3);
        let agent = Agent::start(&psk, dial);
        // Three refusals push the nominal delay to 800 ms.
        for _ in 0..3 {
            attempts.recv().await.expect("attempt");
        }
        let mut m = Master::accept(&mut dialled, &psk).await;
        // Keep the link up for six heartbeats, then close it.
        for _ in 0..6 {
            tokio::time::sleep(HEARTBEAT).await;
            m.send(Message::Heartbeat).await;
        }
        m.0.close().await.expect("close");
        let closed = Instant::now();
        let _ = attempts.recv().await.expect("the connecting attempt");
        let next = attempts.recv().await.expect("the attempt after the close");
        let waited = next - closed;
        assert!(
            waited >= BACKOFF_MIN / 2 && waited <= BACKOFF_MIN,
            "redialled after {waited:?}: the backoff did not start over"
        );
        agent.stop().await;
    }
}
