//! The API's HTTP server: connections accepted under a limit, each with timeouts.
//!
//! `axum::serve` runs hyper without a timer, so a connection may take forever to send its
//! request head and may stay open forever, and it accepts every connection it is offered:
//! a few thousand silent connections fill the process's file descriptors and the API stops
//! answering. This accept loop serves the same router with:
//!
//! - **a header timeout** ([`Limits::header_timeout`]): the request head (line and headers)
//!   must be complete within it, counted from when the server starts waiting for it: the
//!   connection's opening, or the end of the previous answer on a kept-alive connection.
//!   A slow-loris client (a byte every few seconds) and a connection that sits unused are
//!   both closed when it runs out. It is hyper's own header timeout, given a timer.
//! - **an idle timeout** ([`Limits::idle_timeout`]): a connection on which no byte moves in
//!   either direction for that long, while no request of it is being answered, is closed:
//!   chiefly a client that stops reading its answer (the server would otherwise hold the
//!   answer and the socket for as long as the client likes). [`Watched`] measures it on the
//!   socket itself.
//! - **a body timeout** ([`Limits::body_timeout`]), in the handlers that read a body
//!   (`v1::read_body`), which answer 408 when it runs out.
//! - **a connection limit** ([`Limits::max_connections`]). When it is reached, a new
//!   connection makes room by closing the connection that has been idle longest (no request
//!   being answered: waiting for a head, sending one slowly, or kept alive between requests);
//!   only when every connection is answering a request is the new one refused, with a 503.
//!   Why not simply refuse beyond the limit: then whoever holds the slots holds the API. An
//!   attacker that keeps `max_connections` silent connections open (renewing each before the
//!   header timeout, a few dozen connections a second) would lock every operator out.
//!   Closing the oldest idle instead means that a legitimate client's connection is closed
//!   only if `max_connections` newer connections arrive between its opening and its request
//!   (a round trip), and a request in progress is never cut. An evicted idle client loses
//!   nothing: HTTP clients open a new connection when an idle one is closed.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

/// Default of [`Limits::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`Limits::body_timeout`].
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`Limits::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of [`Limits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// How long to wait before accepting again after an error that is not the peer's (out of
/// file descriptors, say): retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// At most one warning per this period about the limit or accept errors (an attack would
/// otherwise write one line per connection).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The server's bounds on connections and requests (`vespa-orchestrator run --http-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The time a connection has to send a complete request head, from its opening or from
    /// the end of the previous answer.
    pub header_timeout: Duration,
    /// The time a request's body has to arrive, once its head has (bodies are read only by
    /// the mutations, after the token is checked).
    pub body_timeout: Duration,
    /// A connection on which no byte moves for this long, while none of its requests is
    /// being answered, is closed.
    pub idle_timeout: Duration,
    /// Connections open at once; a new one beyond it closes the oldest idle one.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the accept loop and the connection's own task know of one connection.
struct Conn {
    /// Requests of this connection being answered (from the handler's call until its answer's
    /// body has been handed to the socket).
    busy: AtomicUsize,
    /// When it last stopped being busy (or was opened).
    idle_since: Mutex<Instant>,
    /// Told to close, to make room for a new connection.
    evict: Notify,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            busy: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            evict: Notify::new(),
        }
    }

    fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    fn idle_since(&self) -> Instant {
        *lock(&self.idle_since)
    }

    /// Marks a request of this connection as being answered until the guard is dropped.
    fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }
}

/// A request being answered (see [`Conn::busy`]).
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        *lock(&self.0.idle_since) = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The open connections, bounded.
struct Registry {
    max: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    conns: HashMap<u64, Arc<Conn>>,
}

/// What [`Registry::admit`] decided for a new connection.
enum Admission {
    /// Room for it (`evicted`: an idle connection was told to close to make it).
    Admitted { slot: Slot, evicted: bool },
    /// The limit is reached and every connection is answering a request.
    Full,
}

/// A connection's place in the registry, given back when dropped.
struct Slot {
    id: u64,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.registry.open).conns.remove(&self.id);
    }
}

impl Registry {
    fn new(max: usize) -> Arc<Registry> {
        Arc::new(Registry {
            max: max.max(1),
            open: Mutex::new(Open::default()),
        })
    }

    /// Makes room for a new connection: below the limit there is room; at the limit, the
    /// connection idle longest (ties: the oldest) is told to close and leaves the registry
    /// at once; if every connection is busy, there is none.
    fn admit(self: &Arc<Self>) -> Admission {
        let mut open = lock(&self.open);
        let mut evicted = false;
        if open.conns.len() >= self.max {
            let victim = open
                .conns
                .iter()
                .filter(|(_, c)| !c.is_busy())
                .min_by_key(|(id, c)| (c.idle_since(), **id))
                .map(|(id, _)| *id);
            let Some(victim) = victim else {
                return Admission::Full;
            };
            if let Some(c) = open.conns.remove(&victim) {
                c.evict.notify_one();
                evicted = true;
            }
        }
        let id = open.next_id;
        open.next_id += 1;
        let conn = Arc::new(Conn::new());
        open.conns.insert(id, conn.clone());
        Admission::Admitted {
            slot: Slot {
                id,
                conn,
                registry: self.clone(),
            },
            evicted,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.open).conns.len()
    }
}

/// A connection's socket, closed (an `TimedOut` error to hyper) when nothing has moved on it
/// for the idle timeout while the server waits on the client: a read with no request being
/// answered, or any write (the client is not reading its answer).
struct Watched<T> {
    io: T,
    conn: Arc<Conn>,
    idle: Duration,
    /// When a byte last moved, either way.
    moved: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<T> Watched<T> {
    fn new(io: T, conn: Arc<Conn>, idle: Duration) -> Watched<T> {
        let now = Instant::now();
        Watched {
            io,
            conn,
            idle,
            moved: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    /// The socket is waiting on the client: an error once the idle timeout has run out since
    /// a byte last moved or a request was last answered, else the timer is armed to wake
    /// this task when it does.
    fn stalled(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let deadline = self.moved.max(self.conn.idle_since()) + self.idle;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "nothing moved on the connection for {}s (--http-idle-timeout)",
                    self.idle.as_secs_f64()
                ),
            )),
            Poll::Pending => Ok(()),
        }
    }

    /// What a pending operation gives back: still pending, or the idle timeout's error.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match self.stalled(cx) {
            Ok(()) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Counts a write's result as movement (or a stall).
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.pending(cx),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut me.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    me.moved = Instant::now();
                }
                Poll::Ready(r)
            }
            // A handler at work may read nothing for a while: its own bounds apply (the body
            // timeout, the calls' timeouts).
            Poll::Pending if me.conn.is_busy() => Poll::Pending,
            Poll::Pending => me.pending(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.io).poll_write(cx, buf);
        me.wrote(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.io).poll_write_vectored(cx, bufs);
        me.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match Pin::new(&mut me.io).poll_flush(cx) {
            Poll::Pending => me.pending(cx),
            r => r,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match Pin::new(&mut me.io).poll_shutdown(cx) {
            Poll::Pending => me.pending(cx),
            r => r,
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes; then stops
/// accepting, lets the requests in progress finish and closes the idle connections.
pub(super) async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let registry = Registry::new(limits.max_connections);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut warnings = Throttle::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(error) if is_peer_error(&error) => continue,
            Err(error) => {
                if warnings.due() {
                    tracing::warn!(%error, "HTTP API: cannot accept connections (retrying)");
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        match registry.admit() {
            Admission::Admitted { slot, evicted } => {
                if evicted && warnings.due() {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "HTTP API: connection limit reached; closing the connections idle longest to make room (--http-max-connections)"
                    );
                }
                tasks.spawn(connection(
                    stream,
                    peer,
                    slot,
                    app.clone(),
                    limits,
                    stop_rx.clone(),
                ));
            }
            Admission::Full => {
                if warnings.due() {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "HTTP API: connection limit reached and every connection is answering a request; refusing new ones (--http-max-connections)"
                    );
                }
                refuse(&stream);
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Lets a warning through at most once per [`WARN_EVERY`].
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    fn due(&mut self) -> bool {
        let now = Instant::now();
        let due = self
            .last
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// Errors of one connection that came and went before it was accepted: nothing to wait for.
fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// The answer to a connection beyond the limit when none can be closed (best effort: one
/// non-blocking write, then the socket is closed).
fn refuse(stream: &TcpStream) {
    const BODY: &str = r#"{"error":"too many connections to the API, all of them answering requests: try again shortly (--http-max-connections)"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// One connection, until it ends, is evicted, or the server stops.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let conn = slot.conn.clone();
    let io = TokioIo::new(Watched::new(stream, conn.clone(), limits.idle_timeout));
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = conn.busy();
        let mut app = app.clone();
        async move {
            let res = tower_service::Service::call(&mut app, req.map(Body::new)).await;
            // Busy until hyper drops the answer's body, having taken all of it.
            res.map(|r| {
                r.map(|b| {
                    Body::new(b.map_frame(move |f| {
                        let _ = &busy;
                        f
                    }))
                })
            })
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = served.as_mut() => {
                if let Err(error) = r {
                    tracing::debug!(%peer, %error, "HTTP API: connection closed");
                }
                break;
            }
            () = slot.conn.evict.notified() => {
                tracing::debug!(%peer, "HTTP API: idle connection closed to make room for a new one");
                break;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                served.as_mut().graceful_shutdown();
            }
        }
    }
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_the_connection_idle_longest_makes_room_and_busy_ones_stay() {
        let reg = Registry::new(3);
        let mut slots = Vec::new();
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(1)).await;
            match reg.admit() {
                Admission::Admitted { slot, evicted } => {
                    assert!(!evicted, "below the limit, nothing is closed");
                    slots.push(slot);
                }
                Admission::Full => panic!("below the limit"),
            }
        }
        // The oldest (0) is answering a request; 1 finished one just now; 2 never sent one.
        let busy0 = slots[0].conn.busy();
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(slots[1].conn.busy());
        let Admission::Admitted { slot: s3, evicted } = reg.admit() else {
            panic!("an idle connection can make room")
        };
        assert!(evicted);
        assert_eq!(reg.len(), 3, "still at most the limit");
        let told = |i: usize| slots[i].conn.evict.notified().now_or_never().is_some();
        assert!(told(2), "2 was idle longest (since it opened)");
        assert!(!told(0), "a busy connection is never evicted");
        assert!(!told(1), "1 answered a request after 2 opened");

        // Now 0 busy, and 1 and 3 busy too: no room.
        let _b1 = slots[1].conn.busy();
        let _b3 = s3.conn.busy();
        assert!(matches!(reg.admit(), Admission::Full));
        drop(busy0);
        let last = reg.admit();
        assert!(
            matches!(last, Admission::Admitted { evicted: true, .. }),
            "0 finished its request: it can make room"
        );
        drop(slots);
        drop(s3);
        assert_eq!(reg.len(), 1, "slots leave the registry when dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_at_the_idle_timeout() {
        let reg = Registry::new(4);
        let Admission::Admitted { slot, .. } = reg.admit() else {
            panic!("room")
        };
        let (server_end, mut client) = tokio::io::duplex(64);
        let mut io = Watched::new(server_end, slot.conn.clone(), Duration::from_secs(5));
        // The client reads a little, then nothing: the server's writes stall.
        io.write_all(&[7; 64]).await.expect("fits the pipe");
        let mut first = [0u8; 32];
        client.read_exact(&mut first).await.expect("client reads");
        let start = Instant::now();
        let err = io
            .write_all(&[7; 1024])
            .await
            .expect_err("a write stalled past the idle timeout fails");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
            "cut at the idle timeout after the last byte moved: {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reads_time_out_only_while_no_request_is_answered() {
        let reg = Registry::new(4);
        let Admission::Admitted { slot, .. } = reg.admit() else {
            panic!("room")
        };
        let (server_end, mut client) = tokio::io::duplex(64);
        let mut io = Watched::new(server_end, slot.conn.clone(), Duration::from_secs(5));
        let busy = slot.conn.busy();
        let mut buf = [0u8; 8];
        // A handler at work for a minute reads nothing, and is not cut for it.
        let read = tokio::time::timeout(Duration::from_secs(60), io.read(&mut buf)).await;
        assert!(read.is_err(), "still waiting after a minute: {read:?}");
        drop(busy);
        // Then the idle timeout counts from the answer.
        client.write_all(b"x").await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("a byte"), 1);
        let start = Instant::now();
        let err = io.read(&mut buf).await.expect_err("idle");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
