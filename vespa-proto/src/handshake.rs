//! The handshake: fresh per-connection keys, and proof that the peer holds the PSK.
//!
//! ```text
//! client                                         server
//!   hello(magic, version, role=client, Nc, name) ->
//!                <- hello(magic, version, role=server, Ns, name)
//!   both: k_c2s = HKDF(PSK, salt = Nc||Ns, "vespa/1 c2s"), k_s2c likewise with "vespa/1 s2c"
//!   seal_c2s#0(confirm || H(transcript))  ->
//!                <- seal_s2c#0(confirm || H(transcript))
//! ```
//!
//! The fresh nonces make every connection's keys unique, which is what rules out the 2014
//! defect of reusing IVs across connections under one key. The confirm frames make a peer with
//! the wrong key fail *here*, with [`ProtoError::WrongKey`], instead of producing a confusing
//! "tampered" error on the first real message. Hashing the transcript into the confirmation
//! means an attacker who alters a hello (e.g. the node name) in transit is caught too.
//!
//! The client confirms first; the server checks the client's confirmation against every key
//! that client may hold (one with a shared key; with per-node keys, the keys derived for the
//! name in its hello, see [`crate::key::derive`]) and confirms back under the key that
//! opened it. A server that finds none still confirms, under some other key, so both ends of
//! a wrong-key connection report `WrongKey` rather than one of them seeing only a closed
//! socket.
//! The whole exchange runs under a deadline so a peer that sends half a hello and stalls
//! (slow-loris) ties up a connection slot for at most that long; before the keys are
//! confirmed frames are limited to [`HELLO_MAX`] bytes, so an anonymous peer cannot make a node
//! buffer more than that either.

use bytes::{BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::error::{HandshakeError, ProtoError, Result};
use crate::frame::FrameCodec;
use crate::key::Psk;
use crate::seal::{derive_key, Direction, Opener, Sealer, NONCE_LEN};

/// First bytes of every hello: identifies a VESPA peer.
pub const MAGIC: [u8; 4] = *b"VSPA";
/// Protocol version spoken by this crate (bumped on any incompatible wire change).
pub const VERSION: u16 = 1;
/// Longest node name, in bytes (its length travels as one byte).
pub const MAX_NAME_LEN: usize = 255;
/// Largest frame accepted before the peer has proved it holds the key.
pub const HELLO_MAX: usize = HELLO_FIXED + MAX_NAME_LEN;

const HELLO_FIXED: usize = MAGIC.len() + 2 + 1 + NONCE_LEN + 1;
const ROLE_CLIENT: u8 = 1;
const ROLE_SERVER: u8 = 2;

/// Record types: the first plaintext byte of every sealed frame. Being inside the sealed
/// plaintext, the type is authenticated: an attacker cannot turn data into a close.
pub mod record {
    /// A message follows (postcard encoding).
    pub const DATA: u8 = 0;
    /// Orderly end of this direction; nothing follows.
    pub const CLOSE: u8 = 1;
    /// Handshake key confirmation; the transcript hash follows (counter 0 only).
    pub const CONFIRM: u8 = 2;
}

/// Which end of the connection we are.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

/// What a successful handshake hands to the connection.
pub(crate) struct Established {
    pub sealer: Sealer,
    pub opener: Opener,
    pub peer_name: String,
}

/// A parsed hello.
#[derive(Debug)]
pub struct Hello {
    /// `ROLE_CLIENT` or `ROLE_SERVER`.
    pub role: u8,
    /// The protocol version the peer speaks.
    pub version: u16,
    /// The peer's fresh random nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The peer's node name.
    pub name: String,
}

/// Checks a node name: 1..=255 bytes and no control characters (names end up in log lines,
/// so a name must not be able to forge or break a line).
pub fn validate_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("node name is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("node name is longer than 255 bytes");
    }
    if name.chars().any(char::is_control) {
        return Err("node name contains control characters");
    }
    Ok(())
}

fn encode_hello(role: u8, nonce: &[u8; NONCE_LEN], name: &str) -> BytesMut {
    let mut b = BytesMut::with_capacity(HELLO_FIXED + name.len());
    b.put_slice(&MAGIC);
    b.put_u16(VERSION);
    b.put_u8(role);
    b.put_slice(nonce);
    // validate_name has bounded the length to 255.
    b.put_u8(name.len() as u8);
    b.put_slice(name.as_bytes());
    b
}

/// Parses a hello frame from an unauthenticated peer. Never panics; checks the version only
/// after the magic, so "not VESPA at all" and "another VESPA version" are told apart.
pub fn parse_hello(frame: &[u8]) -> std::result::Result<Hello, HandshakeError> {
    let malformed = HandshakeError::Malformed;
    if frame.len() < MAGIC.len() || frame[..MAGIC.len()] != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    let rest = &frame[MAGIC.len()..];
    let (version, rest) = rest
        .split_first_chunk::<2>()
        .ok_or(malformed("too short for a version"))?;
    let version = u16::from_be_bytes(*version);
    if version != VERSION {
        return Err(HandshakeError::UnsupportedVersion {
            ours: VERSION,
            theirs: version,
        });
    }
    let (&role, rest) = rest
        .split_first()
        .ok_or(malformed("too short for a role"))?;
    let (nonce, rest) = rest
        .split_first_chunk::<NONCE_LEN>()
        .ok_or(malformed("too short for a nonce"))?;
    let (&name_len, name) = rest
        .split_first()
        .ok_or(malformed("too short for a name length"))?;
    if name.len() != usize::from(name_len) {
        return Err(malformed("name length does not match the frame"));
    }
    let name = std::str::from_utf8(name).map_err(|_| malformed("node name is not UTF-8"))?;
    validate_name(name).map_err(malformed)?;
    Ok(Hello {
        role,
        version,
        nonce: *nonce,
        name: name.to_owned(),
    })
}

/// H(label || len || client hello || len || server hello): what both confirmations vouch for.
fn transcript_hash(client_hello: &[u8], server_hello: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"vespa/1 transcript");
    for part in [client_hello, server_hello] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

async fn next_frame<R: AsyncRead + Unpin>(rd: &mut FramedRead<R, FrameCodec>) -> Result<BytesMut> {
    match rd.next().await {
        Some(frame) => frame,
        None => Err(HandshakeError::ClosedByPeer.into()),
    }
}

/// The keys a side of the handshake holds.
pub(crate) enum Keys<'a> {
    /// The client's one key.
    Client(&'a Psk),
    /// The keys a client calling itself by a name may hold (the server learns the name from
    /// the client's hello; the client's confirmation says which key it holds).
    Server(&'a (dyn Fn(&str) -> Vec<Psk> + Sync)),
}

/// The sealer and opener of one side under `psk`.
fn schedule(
    psk: &Psk,
    role: Role,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
) -> (Sealer, Opener) {
    let c2s = derive_key(psk, client_nonce, server_nonce, Direction::ClientToServer);
    let s2c = derive_key(psk, client_nonce, server_nonce, Direction::ServerToClient);
    match role {
        Role::Client => (
            Sealer::new(&c2s, Direction::ClientToServer),
            Opener::new(&s2c, Direction::ServerToClient),
        ),
        Role::Server => (
            Sealer::new(&s2c, Direction::ServerToClient),
            Opener::new(&c2s, Direction::ClientToServer),
        ),
    }
}

/// Checks the peer's key confirmation.
fn check_confirm(opener: &mut Opener, frame: &mut BytesMut, transcript: &[u8; 32]) -> Result<()> {
    // The first sealed frame failing under the derived key means the key differs: with a
    // different key nothing the peer seals can open here.
    let plain = opener.open(frame).map_err(|_| ProtoError::WrongKey)?;
    match plain.split_first() {
        Some((&record::CONFIRM, hash)) if hash == transcript => Ok(()),
        Some((&record::CONFIRM, _)) => Err(HandshakeError::TranscriptMismatch.into()),
        _ => Err(ProtoError::Protocol(
            "first sealed frame is not a key confirmation",
        )),
    }
}

/// Seals our confirmation of `transcript`.
fn confirm(sealer: &mut Sealer, transcript: &[u8; 32]) -> Result<BytesMut> {
    let mut c = BytesMut::with_capacity(1 + 32 + crate::seal::TAG_LEN);
    c.put_u8(record::CONFIRM);
    c.put_slice(transcript);
    sealer.seal(&mut c)?;
    Ok(c)
}

/// Runs the handshake (without the deadline, which the caller applies).
pub(crate) async fn run<R, W>(
    keys: Keys<'_>,
    rd: &mut FramedRead<R, FrameCodec>,
    wr: &mut FramedWrite<W, FrameCodec>,
    my_name: &str,
) -> Result<Established>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    validate_name(my_name).map_err(HandshakeError::InvalidName)?;
    let mut my_nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut my_nonce);

    let role = match keys {
        Keys::Client(_) => Role::Client,
        Keys::Server(_) => Role::Server,
    };
    let (my_role, peer_role) = match role {
        Role::Client => (ROLE_CLIENT, ROLE_SERVER),
        Role::Server => (ROLE_SERVER, ROLE_CLIENT),
    };
    let my_hello = encode_hello(my_role, &my_nonce, my_name);

    // The client speaks first; the server answers only a hello with the right magic, but
    // answers even one with another version, so the client learns *why* it is refused.
    let peer_hello_raw = match role {
        Role::Client => {
            wr.send(&my_hello[..]).await?;
            next_frame(rd).await?
        }
        Role::Server => {
            let raw = next_frame(rd).await?;
            if let Err(e) = parse_hello(&raw) {
                if matches!(e, HandshakeError::UnsupportedVersion { .. }) {
                    wr.send(&my_hello[..]).await?;
                }
                return Err(e.into());
            }
            wr.send(&my_hello[..]).await?;
            raw
        }
    };
    let peer = parse_hello(&peer_hello_raw)?;
    if peer.role != peer_role {
        return Err(HandshakeError::WrongRole.into());
    }

    let (client_nonce, server_nonce, client_hello, server_hello) = match role {
        Role::Client => (&my_nonce, &peer.nonce, &my_hello[..], &peer_hello_raw[..]),
        Role::Server => (&peer.nonce, &my_nonce, &peer_hello_raw[..], &my_hello[..]),
    };
    let transcript = transcript_hash(client_hello, server_hello);

    let (sealer, opener) = match keys {
        // The client proves its key first, then checks the server's proof.
        Keys::Client(psk) => {
            let (mut sealer, mut opener) = schedule(psk, role, client_nonce, server_nonce);
            wr.send(&confirm(&mut sealer, &transcript)?[..]).await?;
            let mut theirs = next_frame(rd).await?;
            check_confirm(&mut opener, &mut theirs, &transcript)?;
            (sealer, opener)
        }
        // The server finds which of the keys the client may hold opens its proof, and proves
        // the same key back. With none, it still answers under one of them (or a random key),
        // so the client, too, reports a wrong key rather than a closed connection.
        Keys::Server(keys_of) => {
            let theirs = next_frame(rd).await?;
            let candidates = keys_of(&peer.name);
            let found = candidates.iter().find_map(|psk| {
                let (sealer, mut opener) = schedule(psk, role, client_nonce, server_nonce);
                let mut frame = theirs.clone();
                match check_confirm(&mut opener, &mut frame, &transcript) {
                    Err(ProtoError::WrongKey) => None,
                    checked => Some((checked, sealer, opener)),
                }
            });
            match found {
                // The key is right; the proof, even of an altered transcript, goes back so
                // the client sees the same verdict.
                Some((checked, mut sealer, opener)) => {
                    wr.send(&confirm(&mut sealer, &transcript)?[..]).await?;
                    checked?;
                    (sealer, opener)
                }
                None => {
                    let any = candidates.first().cloned().unwrap_or_else(Psk::random);
                    let (mut sealer, _) = schedule(&any, role, client_nonce, server_nonce);
                    let _ = wr.send(&confirm(&mut sealer, &transcript)?[..]).await;
                    return Err(ProtoError::WrongKey);
                }
            }
        }
    };
    Ok(Established {
        sealer,
        opener,
        peer_name: peer.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips() {
        let h = encode_hello(ROLE_CLIENT, &[7; NONCE_LEN], "HO_VM");
        assert_eq!(h.len(), HELLO_FIXED + 5);
        let p = parse_hello(&h).expect("parse");
        assert_eq!(
            (p.role, p.version, p.nonce, p.name.as_str()),
            (ROLE_CLIENT, VERSION, [7; NONCE_LEN], "HO_VM")
        );
    }

    #[test]
    fn bad_hellos_are_told_apart() {
        let good = encode_hello(ROLE_SERVER, &[1; NONCE_LEN], "vo");
        assert!(matches!(
            parse_hello(b"GET / HTTP/1.1"),
            Err(HandshakeError::BadMagic)
        ));
        let mut v2 = good.clone();
        v2[5] = 2;
        assert!(matches!(
            parse_hello(&v2),
            Err(HandshakeError::UnsupportedVersion { ours: 1, theirs: 2 })
        ));
        for cut in 4..good.len() {
            assert!(
                matches!(parse_hello(&good[..cut]), Err(HandshakeError::Malformed(_))),
                "cut at {cut}"
            );
        }
        let mut ctl = encode_hello(ROLE_SERVER, &[1; NONCE_LEN], "a\nb");
        assert!(
            matches!(parse_hello(&ctl), Err(HandshakeError::Malformed(_))),
            "control char in name"
        );
        let last = ctl.len() - 1;
        ctl[last] = 0xFF;
        assert!(
            matches!(parse_hello(&ctl), Err(HandshakeError::Malformed(_))),
            "invalid UTF-8"
        );
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("agent-bandwidth@host1").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name(&"x".repeat(256)).is_err());
        assert!(validate_name("x\u{1b}[31m").is_err());
    }
}
