//! [`SecureStream`]: typed messages over sealed frames over any byte stream.
//!
//! A stream is built only by a successful handshake, so holding one means the peer proved it
//! holds the PSK. It splits into a [`SecureReader`] and a [`SecureWriter`] so a node can wait
//! for its parent's commands while it streams alerts up, without a lock between the two.
//!
//! An orderly shutdown ([`SecureWriter::close`]) sends a sealed close record before the socket
//! is shut down; the receiver reports a clean end of stream (`Ok(None)`) only after that
//! record. A stream that simply ends is reported as [`ProtoError::Truncated`], because from the
//! inside a cut connection that dropped its last frames looks exactly like a peer that stopped.
//!
//! Any error leaves the half that saw it failed (later calls return [`ProtoError::Closed`]);
//! the only exceptions are [`ProtoError::Decode`] on receive and [`ProtoError::FrameTooLarge`]
//! on send, which consume nothing on the wire's counter sequence and leave the stream usable.
//! The intended reaction to every other error is: log one line with the peer and the error,
//! drop the connection, carry on with the others.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::error::{HandshakeError, ProtoError, Result};
use crate::frame::{FrameCodec, DEFAULT_MAX_FRAME};
use crate::handshake::{self, record, HELLO_MAX};
use crate::key::Psk;
use crate::message;
use crate::seal::{Opener, Sealer, TAG_LEN};

/// Connection settings. Both ends must use the same `max_frame`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest sealed frame accepted or sent, in bytes (default 1 MiB).
    pub max_frame: usize,
    /// Deadline for the whole handshake (default 5 s).
    pub handshake_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// Connects as the client (the child dialling its master) over an established byte stream.
/// Returns the stream and the peer's node name.
pub async fn client_handshake<S>(
    stream: S,
    psk: &Psk,
    my_name: &str,
    cfg: &Config,
) -> Result<(SecureStream<S>, String)>
where
    S: AsyncRead + AsyncWrite,
{
    handshake_as(handshake::Keys::Client(psk), stream, my_name, cfg).await
}

/// Accepts as the server (the master) over an accepted byte stream.
/// Returns the stream and the peer's node name.
pub async fn server_handshake<S>(
    stream: S,
    psk: &Psk,
    my_name: &str,
    cfg: &Config,
) -> Result<(SecureStream<S>, String)>
where
    S: AsyncRead + AsyncWrite,
{
    let keys = |_: &str| vec![psk.clone()];
    server_handshake_keys(stream, &keys, my_name, cfg).await
}

/// The server side of the handshake when each client has a key of its own: `keys` gives the
/// keys a client that calls itself `name` may hold (none: refused). The client's key
/// confirmation tells which one it holds.
pub async fn server_handshake_keys<S>(
    stream: S,
    keys: &(dyn Fn(&str) -> Vec<Psk> + Sync),
    my_name: &str,
    cfg: &Config,
) -> Result<(SecureStream<S>, String)>
where
    S: AsyncRead + AsyncWrite,
{
    handshake_as(handshake::Keys::Server(keys), stream, my_name, cfg).await
}

async fn handshake_as<S>(
    keys: handshake::Keys<'_>,
    stream: S,
    my_name: &str,
    cfg: &Config,
) -> Result<(SecureStream<S>, String)>
where
    S: AsyncRead + AsyncWrite,
{
    let (r, w) = tokio::io::split(stream);
    let mut rd = FramedRead::new(r, FrameCodec::new(HELLO_MAX.min(cfg.max_frame)));
    let mut wr = FramedWrite::new(w, FrameCodec::new(cfg.max_frame));
    let established = tokio::time::timeout(
        cfg.handshake_timeout,
        handshake::run(keys, &mut rd, &mut wr, my_name),
    )
    .await
    .map_err(|_| HandshakeError::Timeout(cfg.handshake_timeout))??;
    // The peer is authenticated: from now on frames up to the configured size are fine.
    rd.decoder_mut().set_max_frame(cfg.max_frame);
    let peer: Arc<str> = Arc::from(established.peer_name.as_str());
    let stream = SecureStream {
        reader: SecureReader {
            frames: rd,
            opener: established.opener,
            peer: peer.clone(),
            state: State::Open,
        },
        writer: SecureWriter {
            frames: wr,
            sealer: established.sealer,
            buf: BytesMut::with_capacity(256),
            max_frame: cfg.max_frame,
            peer,
            state: State::Open,
        },
    };
    Ok((stream, established.peer_name))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// Closed in an orderly way (close record sent or received).
    Closed,
    /// An error (or a cancelled send) left the half out of step.
    Failed,
}

/// An authenticated, encrypted, ordered message stream to one peer.
pub struct SecureStream<S> {
    reader: SecureReader<ReadHalf<S>>,
    writer: SecureWriter<WriteHalf<S>>,
}

impl<S: AsyncRead + AsyncWrite> SecureStream<S> {
    /// The peer's node name, as it gave it in the (authenticated) handshake.
    pub fn peer_name(&self) -> &str {
        self.reader.peer_name()
    }

    /// Sends one message and flushes it.
    pub async fn send<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<()> {
        self.writer.send(msg).await
    }

    /// Queues one message without flushing (see [`SecureWriter::feed`]).
    pub async fn feed<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<()> {
        self.writer.feed(msg).await
    }

    /// Flushes queued messages.
    pub async fn flush(&mut self) -> Result<()> {
        self.writer.flush().await
    }

    /// Receives the next message; `Ok(None)` after the peer closed the stream in order.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        self.reader.recv().await
    }

    /// Sends the close record and shuts the sending side down.
    pub async fn close(&mut self) -> Result<()> {
        self.writer.close().await
    }

    /// Splits into halves that can be used from different tasks.
    pub fn split(self) -> (SecureReader<ReadHalf<S>>, SecureWriter<WriteHalf<S>>) {
        (self.reader, self.writer)
    }
}

/// The receiving half of a [`SecureStream`].
pub struct SecureReader<R> {
    frames: FramedRead<R, FrameCodec>,
    opener: Opener,
    peer: Arc<str>,
    state: State,
}

impl<R: AsyncRead + Unpin> SecureReader<R> {
    /// The peer's node name.
    pub fn peer_name(&self) -> &str {
        &self.peer
    }

    /// Receives the next message: `Ok(Some)`, `Ok(None)` once the peer has closed the stream
    /// in order, or an error saying what went wrong.
    ///
    /// Cancel-safe: dropping the future before it completes loses no message, so it can sit
    /// in a `tokio::select!` loop.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        match self.state {
            State::Open => {}
            State::Closed => return Ok(None),
            State::Failed => return Err(ProtoError::Closed),
        }
        let frame = match self.frames.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(self.fail(e)),
            None => {
                return Err(self.fail(ProtoError::Truncated(
                    "connection ended without a close record (peer died, or the end of the stream was cut off)",
                )))
            }
        };
        let mut frame = frame;
        let plain = match self.opener.open(&mut frame) {
            Ok(plain) => plain,
            Err(e) => return Err(self.fail(e)),
        };
        match plain.split_first() {
            Some((&record::DATA, body)) => message::decode(body).map(Some),
            Some((&record::CLOSE, [])) => {
                self.state = State::Closed;
                Ok(None)
            }
            _ => Err(self.fail(ProtoError::Protocol(
                "unknown record type in an authentic frame",
            ))),
        }
    }

    fn fail(&mut self, e: ProtoError) -> ProtoError {
        self.state = State::Failed;
        tracing::debug!(peer = %self.peer, error = %e, "receive failed");
        e
    }
}

/// The sending half of a [`SecureStream`].
pub struct SecureWriter<W> {
    frames: FramedWrite<W, FrameCodec>,
    sealer: Sealer,
    /// Reused plaintext/ciphertext buffer: one allocation per connection, not per message.
    buf: BytesMut,
    max_frame: usize,
    peer: Arc<str>,
    state: State,
}

impl<W: AsyncWrite + Unpin> SecureWriter<W> {
    /// The peer's node name.
    pub fn peer_name(&self) -> &str {
        &self.peer
    }

    /// Sends one message and flushes it to the socket.
    pub async fn send<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<()> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Seals and queues one message without flushing; the buffer is written out when it
    /// grows past a few KiB, or by [`flush`](Self::flush). Sending a burst with `feed` and one
    /// `flush` saves a system call per message, which matters at hundreds of thousands of
    /// alerts per second.
    ///
    /// A message too large for `max_frame` is refused with [`ProtoError::FrameTooLarge`]
    /// before it is sealed, and the stream stays usable.
    pub async fn feed<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<()> {
        self.check_open()?;
        self.buf.clear();
        self.buf.put_u8(record::DATA);
        message::encode_into(msg, &mut self.buf)?;
        let sealed_len = self.buf.len() + TAG_LEN;
        if sealed_len > self.max_frame {
            return Err(ProtoError::FrameTooLarge {
                len: Some(sealed_len as u64),
                max: self.max_frame,
            });
        }
        self.seal_and_queue().await
    }

    /// Writes all queued frames to the socket.
    pub async fn flush(&mut self) -> Result<()> {
        self.check_open()?;
        self.state = State::Failed;
        SinkExt::<&[u8]>::flush(&mut self.frames).await?;
        self.state = State::Open;
        Ok(())
    }

    /// Sends the sealed close record, flushes, and shuts the socket's sending side down.
    /// Afterwards sends fail with [`ProtoError::Closed`]; closing twice is a no-op.
    pub async fn close(&mut self) -> Result<()> {
        if self.state == State::Closed {
            return Ok(());
        }
        self.check_open()?;
        self.buf.clear();
        self.buf.put_u8(record::CLOSE);
        self.seal_and_queue().await?;
        self.state = State::Failed;
        SinkExt::<&[u8]>::close(&mut self.frames).await?;
        self.state = State::Closed;
        Ok(())
    }

    fn check_open(&self) -> Result<()> {
        match self.state {
            State::Open => Ok(()),
            State::Closed | State::Failed => Err(ProtoError::Closed),
        }
    }

    /// Seals `self.buf` and hands it to the framed writer.
    ///
    /// The half is marked failed across the await: if the caller drops the future midway, a
    /// counter may have been used for a frame that never reaches the wire, and every later
    /// frame would be "out of order" to the peer; refusing further sends says so plainly.
    async fn seal_and_queue(&mut self) -> Result<()> {
        self.sealer.seal(&mut self.buf)?;
        self.state = State::Failed;
        self.frames.feed(&self.buf[..]).await?;
        self.state = State::Open;
        Ok(())
    }
}
