//! The byte-level link between two nodes: vespa-proto's sealed stream, or (benchmark only)
//! the same framing unsealed.
//!
//! The runtime talks to `LinkReader`/`LinkWriter` only, so the plaintext variant runs
//! exactly the same node logic and the benchmark's encrypted/unencrypted ratio isolates what
//! sealing costs. The plaintext variant exists only with the `insecure-plaintext` feature and
//! cannot be chosen from a config file or command line.

use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use vespa_proto::connection::server_handshake_keys;
use vespa_proto::key::{derive, OPERATOR_PREFIX};
use vespa_proto::{
    client_handshake, server_handshake, Message, ProtoError, Psk, SecureReader, SecureStream,
    SecureWriter,
};

/// How links are protected.
#[derive(Clone, Debug)]
pub enum Security {
    /// One pre-shared key for the whole tree (the 2014 way): handshake, per-connection keys,
    /// AES-256-GCM on every frame. Any holder can be any node, or an operator.
    Psk(Psk),
    /// A key per node, derived down the tree ([`vespa_proto::key::derive`]): the same
    /// handshake and sealing, and the handshake proves the node's name.
    Keys(Arc<KeyRing>),
    /// No authentication, no encryption: for the benchmark baseline only.
    #[cfg(feature = "insecure-plaintext")]
    Plaintext,
}

/// A node's own keys under per-node keys.
#[derive(Clone, Debug)]
pub struct KeyRing {
    /// Its key, then during a rotation the one it replaces (accepted, never used to dial).
    pub own: Vec<Psk>,
    /// The VO only: the root keys, from which operators' keys are derived (empty elsewhere,
    /// and at a VO that takes no operators).
    pub root: Vec<Psk>,
}

impl KeyRing {
    /// The keys a peer calling itself `name` may hold when it connects to the node `me`: a
    /// child's keys (derived from ours and its name), our own (a tool on this node's
    /// machine), and at the VO an operator's (derived from the root).
    pub fn keys_of(&self, me: &str, name: &str) -> Vec<Psk> {
        let mut keys: Vec<Psk> = self.own.iter().map(|k| derive(k, name)).collect();
        if name == me {
            keys.extend(self.own.iter().cloned());
        }
        if name.starts_with(OPERATOR_PREFIX) {
            keys.extend(self.root.iter().map(|r| derive(r, name)));
        }
        keys
    }
}

impl Security {
    /// Whether a peer that proved `peer` in the handshake, and did not register as a child,
    /// may call commands at the node `me`: with a shared key every holder may (any of them
    /// could claim any name); with per-node keys, operators and the node's own key.
    pub(crate) fn is_operator(&self, me: &str, peer: &str) -> bool {
        match self {
            Security::Keys(_) => peer == me || peer.starts_with(OPERATOR_PREFIX),
            _ => true,
        }
    }

    /// Who a connection that proved `peer` in the handshake is, for the agents: the key's
    /// name with per-node keys (the handshake proved it); with the shared key, nobody in
    /// particular (any holder may give any name).
    pub(crate) fn call_from(&self, peer: &str) -> crate::verbs::CallFrom {
        match self {
            Security::Keys(_) => crate::verbs::CallFrom::Key(peer.to_string()),
            _ => crate::verbs::CallFrom::SharedKey,
        }
    }
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
        Security::Psk(_) | Security::Keys(_) => secure(stream, side, security, my_name, cfg).await,
        #[cfg(feature = "insecure-plaintext")]
        Security::Plaintext => plain::establish(stream, my_name, cfg).await,
    }
}

async fn secure(
    stream: TcpStream,
    side: Side,
    security: &Security,
    my_name: &str,
    cfg: &vespa_proto::Config,
) -> Result<Link, ProtoError> {
    let (s, peer_name) = handshake(stream, side, security, my_name, cfg).await?;
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
    security: &Security,
    my_name: &str,
    cfg: &vespa_proto::Config,
) -> Result<(SecureStream<S>, String), ProtoError> {
    match (security, side) {
        (Security::Psk(psk), Side::Client) => client_handshake(stream, psk, my_name, cfg).await,
        (Security::Psk(psk), Side::Server) => server_handshake(stream, psk, my_name, cfg).await,
        (Security::Keys(ring), Side::Client) => {
            let own = ring.own.first().ok_or(ProtoError::WrongKey)?;
            client_handshake(stream, own, my_name, cfg).await
        }
        (Security::Keys(ring), Side::Server) => {
            let keys = |peer: &str| ring.keys_of(my_name, peer);
            server_handshake_keys(stream, &keys, my_name, cfg).await
        }
        #[cfg(feature = "insecure-plaintext")]
        (Security::Plaintext, _) => Err(ProtoError::Handshake(
            vespa_proto::HandshakeError::Malformed("a plaintext link has no handshake"),
        )),
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
        Security::Psk(_) | Security::Keys(_) => {
            let (s, peer_name) = handshake(stream, side, security, my_name, cfg).await?;
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
