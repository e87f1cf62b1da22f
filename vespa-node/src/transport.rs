//! The byte-level link between two nodes: vespa-proto's sealed stream, or (benchmark only)
//! the same framing unsealed.
//!
//! The runtime talks to `LinkReader`/`LinkWriter` only, so the plaintext variant runs
//! exactly the same node logic and the benchmark's encrypted/unencrypted ratio isolates what
//! sealing costs. The plaintext variant exists only with the `insecure-plaintext` feature and
//! cannot be chosen from a config file or command line.

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use vespa_proto::{
    client_handshake, server_handshake, Message, ProtoError, Psk, SecureReader, SecureStream,
    SecureWriter,
};

/// How links are protected.
#[derive(Clone, Debug)]
pub enum Security {
    /// PSK handshake, per-connection keys, AES-256-GCM on every frame (the only mode a
    /// config file can select).
    Psk(Psk),
    /// No authentication, no encryption: for the benchmark baseline only.
    #[cfg(feature = "insecure-plaintext")]
    Plaintext,
}

/// Which end of the connection we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// We dialled (a child, or an operator's client).
    Client,
    /// We accepted (a master).
    Server,
}

/// A connected, authenticated link.
pub(crate) struct Link {
    pub reader: LinkReader,
    pub writer: LinkWriter,
    pub peer_name: String,
}

/// Runs the handshake on `stream` (under `cfg.handshake_timeout`).
pub(crate) async fn establish(
    stream: TcpStream,
    side: Side,
    security: &Security,
    my_name: &str,
    cfg: &vespa_proto::Config,
) -> Result<Link, ProtoError> {
    let _ = stream.set_nodelay(true);
    match security {
        Security::Psk(psk) => secure(stream, side, psk, my_name, cfg).await,
        #[cfg(feature = "insecure-plaintext")]
        Security::Plaintext => plain::establish(stream, my_name, cfg).await,
    }
}

async fn secure(
    stream: TcpStream,
    side: Side,
    psk: &Psk,
    my_name: &str,
    cfg: &vespa_proto::Config,
) -> Result<Link, ProtoError> {
    let (s, peer_name) = handshake(stream, side, psk, my_name, cfg).await?;
    let (r, w) = s.split();
    Ok(Link {
        reader: LinkReader::Secure(r),
        writer: LinkWriter::Secure(w),
        peer_name,
    })
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    side: Side,
    psk: &Psk,
    my_name: &str,
    cfg: &vespa_proto::Config,
) -> Result<(SecureStream<S>, String), ProtoError> {
    match side {
        Side::Client => client_handshake(stream, psk, my_name, cfg).await,
        Side::Server => server_handshake(stream, psk, my_name, cfg).await,
    }
}

/// As [`establish`], over an in-memory stream: the crate's tests drive links with paused time,
/// which real sockets would race (the clock jumps to the next timer whenever the runtime
/// waits on the kernel).
#[cfg(test)]
pub(crate) async fn establish_in_memory(
    stream: tokio::io::DuplexStream,
    side: Side,
    security: &Security,
    my_name: &str,
    cfg: &vespa_proto::Config,
) -> Result<Link, ProtoError> {
    match security {
        Security::Psk(psk) => {
            let (s, peer_name) = handshake(stream, side, psk, my_name, cfg).await?;
            let (r, w) = s.split();
            Ok(Link {
                reader: LinkReader::Memory(r),
                writer: LinkWriter::Memory(w),
                peer_name,
            })
        }
        #[cfg(feature = "insecure-plaintext")]
        Security::Plaintext => Err(ProtoError::Handshake(
            vespa_proto::HandshakeError::Malformed("in-memory links are sealed only"),
        )),
    }
}

/// Receiving half. (The sealed variant is the large one and the one always used; boxing it to
/// please the size lint would add an indirection per frame for the benchmark's sake.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum LinkReader {
    Secure(SecureReader<ReadHalf<TcpStream>>),
    #[cfg(test)]
    Memory(SecureReader<ReadHalf<tokio::io::DuplexStream>>),
    #[cfg(feature = "insecure-plaintext")]
    Plain(plain::Reader),
}

impl LinkReader {
    /// The next message; `Ok(None)` after an orderly close. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Message>, ProtoError> {
        match self {
            LinkReader::Secure(r) => r.recv().await,
            #[cfg(test)]
            LinkReader::Memory(r) => r.recv().await,
            #[cfg(feature = "insecure-plaintext")]
            LinkReader::Plain(r) => r.recv().await,
        }
    }
}

/// Sending half.
#[allow(clippy::large_enum_variant)]
pub(crate) enum LinkWriter {
    Secure(SecureWriter<WriteHalf<TcpStream>>),
    #[cfg(test)]
    Memory(SecureWriter<WriteHalf<tokio::io::DuplexStream>>),
    #[cfg(feature = "insecure-plaintext")]
    Plain(plain::Writer),
}

impl LinkWriter {
    /// Queues a message (written out when the buffer fills, or by `flush`).
    pub async fn feed(&mut self, msg: &Message) -> Result<(), ProtoError> {
        match self {
            LinkWriter::Secure(w) => w.feed(msg).await,
            #[cfg(test)]
            LinkWriter::Memory(w) => w.feed(msg).await,
            #[cfg(feature = "insecure-plaintext")]
            LinkWriter::Plain(w) => w.feed(msg).await,
        }
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), ProtoError> {
        match self {
            LinkWriter::Secure(w) => w.flush().await,
            #[cfg(test)]
            LinkWriter::Memory(w) => w.flush().await,
            #[cfg(feature = "insecure-plaintext")]
            LinkWriter::Plain(w) => w.flush().await,
        }
    }

    /// Orderly close (the peer sees a clean end, not a truncation).
    pub async fn close(&mut self) -> Result<(), ProtoError> {
        match self {
            LinkWriter::Secure(w) => w.close().await,
            #[cfg(test)]
            LinkWriter::Memory(w) => w.close().await,
            #[cfg(feature = "insecure-plaintext")]
            LinkWriter::Plain(w) => w.close().await,
        }
    }
}

#[cfg(feature = "insecure-plaintext")]
mod plain {
    //! Length-prefixed postcard frames, nothing else: each side sends its name as the first
    //! frame, and an empty frame closes.

    use futures_util::{SinkExt, StreamExt};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::TcpStream;
    use tokio_util::codec::{FramedRead, FramedWrite};
    use vespa_proto::frame::FrameCodec;
    use vespa_proto::message::{decode, encode};
    use vespa_proto::{HandshakeError, Message, ProtoError};

    use super::{Link, LinkReader, LinkWriter};

    pub struct Reader(FramedRead<OwnedReadHalf, FrameCodec>);
    pub struct Writer(FramedWrite<OwnedWriteHalf, FrameCodec>);

    pub async fn establish(
        stream: TcpStream,
        my_name: &str,
        cfg: &vespa_proto::Config,
    ) -> Result<Link, ProtoError> {
        let (r, w) = stream.into_split();
        let mut rd = FramedRead::new(r, FrameCodec::new(cfg.max_frame));
        let mut wr = FramedWrite::new(w, FrameCodec::new(cfg.max_frame));
        wr.send(my_name.as_bytes()).await?;
        let hello = tokio::time::timeout(cfg.handshake_timeout, rd.next())
            .await
            .map_err(|_| HandshakeError::Timeout(cfg.handshake_timeout))?
            .ok_or(HandshakeError::ClosedByPeer)??;
        let peer_name = String::from_utf8(hello.to_vec())
            .map_err(|_| HandshakeError::Malformed("name is not UTF-8"))?;
        Ok(Link {
            reader: LinkReader::Plain(Reader(rd)),
            writer: LinkWriter::Plain(Writer(wr)),
            peer_name,
        })
    }

    impl Reader {
        pub async fn recv(&mut self) -> Result<Option<Message>, ProtoError> {
            match self.0.next().await {
                None => Ok(None),
                Some(Err(e)) => Err(e),
                Some(Ok(f)) if f.is_empty() => Ok(None),
                Some(Ok(f)) => decode(&f).map(Some),
            }
        }
    }

    impl Writer {
        pub async fn feed(&mut self, msg: &Message) -> Result<(), ProtoError> {
            let bytes = encode(msg)?;
            self.0.feed(&bytes[..]).await
        }

        pub async fn flush(&mut self) -> Result<(), ProtoError> {
            SinkExt::<&[u8]>::flush(&mut self.0).await
        }

        pub async fn close(&mut self) -> Result<(), ProtoError> {
            self.0.feed(&[][..]).await?;
            SinkExt::<&[u8]>::close(&mut self.0).await
        }
    }
}
