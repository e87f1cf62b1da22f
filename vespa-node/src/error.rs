//! Errors of the node runtime.

use std::net::SocketAddr;

/// Why a node could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The topology is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The pre-shared key could not be loaded.
    #[error(transparent)]
    Key(#[from] vespa_proto::KeyError),
    /// A node's keys could not be loaded (the message names the file).
    #[error("{0}")]
    NodeKeys(String),
    /// The node's listening socket could not be bound.
    #[error("node {node}: cannot listen on {addr}: {source}")]
    Bind {
        /// The node.
        node: String,
        /// The address.
        addr: SocketAddr,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// The VO's alert journal could not be opened or written.
    #[error("alert journal {path}: {source}")]
    Journal {
        /// The journal file.
        path: String,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// A node's spool of unacknowledged alerts could not be opened.
    #[error("alert spool {path}: {source}")]
    Spool {
        /// The spool file.
        path: String,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// A connection-level failure (client side of a call).
    #[error("connection to {peer}: {source}")]
    Connection {
        /// The peer address.
        peer: String,
        /// The reason.
        #[source]
        source: vespa_proto::ProtoError,
    },
    /// A socket failure outside of a protocol stream.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// A peer behaved in a way the protocol does not allow (client side of a call).
    #[error("{0}")]
    Protocol(String),
    /// No reply came in time.
    #[error("timed out: {0}")]
    Timeout(String),
}
