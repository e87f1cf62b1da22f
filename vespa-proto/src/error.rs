//! The one error type of a connection.
//!
//! Every variant says *what happened* in words a log reader understands without the source
//! code, because the caller's whole job on error is to log one line (peer + reason) and drop
//! that connection. The variants are deliberately fine-grained: "the peer has the wrong key"
//! and "someone flipped a bit on the wire" call for different operator reactions, and the 2014
//! protocol's habit of swallowing both into silence is exactly what this crate replaces.

use std::time::Duration;

/// Everything that can go wrong on a [`SecureStream`](crate::SecureStream).
///
/// After any error other than [`ProtoError::FrameTooLarge`] on the *send* side the connection
/// is unusable (the receive counter or the byte stream is out of step) and must be dropped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The frame did not authenticate under the key and counter it had to be sealed with, nor
    /// under any nearby counter: its bytes were altered (or forged) on the way.
    #[error("frame {counter} failed authentication: tampered, corrupted or forged on the wire")]
    Tampered {
        /// The counter the receiver expected.
        counter: u64,
    },

    /// The frame is authentic but was sealed with an *earlier* counter: a captured frame was
    /// sent again.
    #[error("replayed frame: expected frame {expected}, got a copy of frame {got}")]
    Replay {
        /// The counter the receiver expected.
        expected: u64,
        /// The counter the frame was actually sealed with.
        got: u64,
    },

    /// The frame is authentic but was sealed with a *later* counter: frames in between were
    /// dropped or the stream was reordered.
    #[error("frame out of order: expected frame {expected}, got frame {got} (frames dropped or reordered)")]
    OutOfOrder {
        /// The counter the receiver expected.
        expected: u64,
        /// The counter the frame was actually sealed with.
        got: u64,
    },

    /// The byte stream ended in the middle of a frame, or without the sealed close record that
    /// a peer sends on an orderly shutdown, so trailing frames may have been cut off.
    #[error("stream truncated: {0}")]
    Truncated(&'static str),

    /// A frame's length exceeds the configured maximum. On receive this is detected from the
    /// 4-byte length prefix alone, before any buffer is grown for it.
    #[error("frame too large: {} bytes announced, limit is {max}", len.map_or_else(|| "more than the limit".to_string(), |l| l.to_string()))]
    FrameTooLarge {
        /// The announced or attempted length, when known.
        len: Option<u64>,
        /// The configured maximum frame length.
        max: usize,
    },

    /// The peer's key confirmation did not authenticate: it holds a different pre-shared key
    /// (or, indistinguishably, an attacker altered the handshake).
    #[error("peer holds a different pre-shared key (handshake key confirmation failed)")]
    WrongKey,

    /// The handshake failed for a reason other than the key.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),

    /// The underlying socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),

    /// An authentic frame did not decode as the expected message type: the peer runs an
    /// incompatible message schema (authentic frames come only from key holders).
    #[error("authentic frame did not decode as a message: {0}")]
    Decode(#[source] postcard::Error),

    /// A message could not be serialised (a serde impl refused it).
    #[error("message could not be encoded: {0}")]
    Encode(#[source] postcard::Error),

    /// An authentic frame broke the record layer's rules (unknown record type, data after
    /// close, ...).
    #[error("protocol violation by peer: {0}")]
    Protocol(&'static str),

    /// 2^64 - 1 frames were sealed in this direction; sending one more would reuse a nonce.
    #[error("send counter exhausted: refusing to reuse an AES-GCM nonce; reconnect")]
    CounterExhausted,

    /// The stream was closed (by [`close`](crate::SecureWriter::close)) or failed earlier.
    #[error("connection already closed or failed")]
    Closed,
}

/// Why a handshake failed when the key itself was not shown to be wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer did not finish the handshake in time (slow-loris or dead peer).
    #[error("peer did not complete the handshake within {0:?}")]
    Timeout(Duration),

    /// The peer's hello does not start with the VESPA magic: not a VESPA node.
    #[error("peer is not speaking the VESPA protocol (bad magic)")]
    BadMagic,

    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {theirs} (this node speaks {ours})")]
    UnsupportedVersion {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },

    /// The peer's hello is not well formed.
    #[error("malformed hello: {0}")]
    Malformed(&'static str),

    /// The peer sent a hello with the wrong role (a client talking to a client, or a
    /// reflected hello).
    #[error("peer sent a hello for the wrong role (reflected or misdirected connection)")]
    WrongRole,

    /// Both sides proved the same key but saw different hellos: the hello (e.g. the node
    /// name) was altered in transit.
    #[error("handshake transcript mismatch: the hello messages were altered in transit")]
    TranscriptMismatch,

    /// The connection closed before the handshake finished.
    #[error("peer closed the connection during the handshake")]
    ClosedByPeer,

    /// Our own node name cannot be sent (empty, too long or containing control characters).
    #[error("invalid local node name: {0}")]
    InvalidName(&'static str),
}

/// Shorthand for results of this crate.
pub type Result<T, E = ProtoError> = std::result::Result<T, E>;
