//! `vespa-proto`: the authenticated, encrypted transport of the VESPA node tree
//! (agent -> HO -> VO).
//!
//! It replaces the 2014 wire protocol (fixed compiled-in key, AES-CFB with IVs reused across
//! connections, an unkeyed SHA-1 "checksum", `method|args` strings dispatched by name and
//! replies parsed with `eval()`) with:
//!
//! - [`key`]: a 32-byte pre-shared key in an owner-only file;
//! - [`frame`]: `u32` length-prefixed frames with a size limit checked before allocating;
//! - [`handshake`]: fresh nonces, per-connection per-direction HKDF keys, and key confirmation
//!   so a wrong key fails at connect time, under a deadline;
//! - [`seal`]: AES-256-GCM with implicit sequential nonces, so replayed, reordered, dropped or
//!   altered frames fail authentication;
//! - [`message`]: a closed set of typed messages, encoded with postcard;
//! - [`connection`]: [`SecureStream`], which ties these together over any tokio byte stream.
//!
//! Usage, on the master:
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use vespa_proto::{key, server_handshake, Config, Message};
//! let psk = key::load(std::path::Path::new("/etc/vespa/psk"))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:4100").await?;
//! let (socket, addr) = listener.accept().await?;
//! match server_handshake(socket, &psk, "VO", &Config::default()).await {
//!     Ok((mut conn, peer)) => {
//!         while let Some(msg) = conn.recv::<Message>().await? {
//!             println!("{peer}: {msg:?}");
//!         }
//!     }
//!     Err(error) => tracing::warn!(%addr, %error, "handshake failed"),
//! }
//! # Ok(()) }
//! ```
//!
//! **Architecture invariant:** this crate contains no `unsafe` and never interprets message
//! content as code or as a method name.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod connection;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod key;
pub mod message;
pub mod seal;
pub mod verbs;

pub use connection::{
    client_handshake, server_handshake, Config, SecureReader, SecureStream, SecureWriter,
};
pub use error::{HandshakeError, ProtoError, Result};
pub use key::{KeyError, Psk};
pub use message::{Alert, AlertBody, Message, NodeEvent, NodeKind, MAX_PATH, PATH_ROOM};
