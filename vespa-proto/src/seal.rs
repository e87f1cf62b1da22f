//! Sealing: AES-256-GCM with implicit, strictly sequential nonces.
//!
//! The 2014 protocol used AES-CFB with the per-socket message counter as IV under one fixed
//! key, so every connection reused the same IVs, and its "checksum" was an unkeyed SHA-1 that
//! anyone could recompute after altering a message. Here:
//!
//! - every connection and direction has its own key (derived in [`crate::handshake`] from the
//!   PSK and both sides' fresh nonces), so nonces never repeat across connections;
//! - the 96-bit nonce is a 32-bit direction tag followed by a 64-bit counter that starts at 0
//!   and goes up by one per frame, so nonces never repeat within a connection; the sender
//!   refuses to go past 2^64 - 2 rather than wrap;
//! - the counter is *not* sent: the receiver opens each frame with exactly the next counter it
//!   expects, so a replayed, reordered, dropped or altered frame simply fails to authenticate.
//!
//! Only when a frame fails does the receiver look closer, trying the few counters around the
//! expected one, so that the error can say "replayed" or "out of order" instead of just
//! "tampered". That diagnosis is bounded (a few dozen trials, only for small frames) because it
//! runs on attacker-chosen input; the connection is dropped afterwards either way.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use bytes::BytesMut;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{ProtoError, Result};
use crate::key::Psk;

/// Length of the AES-GCM authentication tag appended to every sealed frame.
pub const TAG_LEN: usize = 16;
/// Length of each side's handshake nonce.
pub const NONCE_LEN: usize = 32;

/// Counters tried *below* the expected one when diagnosing a failed frame.
const PROBE_BACK: u64 = 32;
/// Counters tried *above* the expected one when diagnosing a failed frame.
const PROBE_AHEAD: u64 = 32;
/// Frames larger than this are not diagnosed (the trials would cost too much CPU).
const PROBE_MAX_LEN: usize = 64 * 1024;

/// Which way a frame travels. Each direction has its own key and nonce tag, so a frame can
/// never be reflected back to its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the connecting node (e.g. an agent) to the accepting node (e.g. its HO).
    ClientToServer,
    /// From the accepting node back to the connecting node.
    ServerToClient,
}

impl Direction {
    /// HKDF `info` string for this direction's key.
    fn info(self) -> &'static [u8] {
        match self {
            Direction::ClientToServer => b"vespa/1 c2s",
            Direction::ServerToClient => b"vespa/1 s2c",
        }
    }

    /// First 32 bits of every nonce in this direction.
    fn nonce_tag(self) -> u32 {
        match self {
            Direction::ClientToServer => u32::from_be_bytes(*b"c2s\0"),
            Direction::ServerToClient => u32::from_be_bytes(*b"s2c\0"),
        }
    }
}

/// Derives a direction's key: HKDF-SHA256(ikm = PSK, salt = client_nonce || server_nonce,
/// info = "vespa/1 c2s" | "vespa/1 s2c").
pub fn derive_key(
    psk: &Psk,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    direction: Direction,
) -> Zeroizing<[u8; 32]> {
    let mut salt = Zeroizing::new([0u8; 2 * NONCE_LEN]);
    salt[..NONCE_LEN].copy_from_slice(client_nonce);
    salt[NONCE_LEN..].copy_from_slice(server_nonce);
    let hk = Hkdf::<Sha256>::new(Some(&salt[..]), psk.as_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 255 * 32 output limit, so expand cannot fail.
    hk.expand(direction.info(), &mut key[..])
        .expect("32-byte HKDF output is always valid");
    key
}

fn nonce(direction: Direction, counter: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&direction.nonce_tag().to_be_bytes());
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n.into()
}

/// The sending side of one direction: seals frames with counters 0, 1, 2, ...
pub struct Sealer {
    cipher: Aes256Gcm,
    direction: Direction,
    next: u64,
}

impl Sealer {
    /// A sealer for `direction` whose first frame uses counter 0.
    pub fn new(key: &[u8; 32], direction: Direction) -> Self {
        Sealer {
            cipher: Aes256Gcm::new(key.into()),
            direction,
            next: 0,
        }
    }

    /// The counter the next frame will be sealed with.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Encrypts `buf` (the plaintext) in place and appends the tag; returns the counter used.
    ///
    /// Refuses with [`ProtoError::CounterExhausted`] once counter 2^64 - 1 would be needed,
    /// because the only alternatives are wrapping (nonce reuse) or silently stalling.
    pub fn seal(&mut self, buf: &mut BytesMut) -> Result<u64> {
        let counter = self.next;
        if counter == u64::MAX {
            return Err(ProtoError::CounterExhausted);
        }
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce(self.direction, counter), b"", &mut buf[..])
            // Only fails for plaintexts over 64 GiB, far beyond any frame limit.
            .map_err(|_| ProtoError::FrameTooLarge {
                len: Some(buf.len() as u64),
                max: usize::MAX,
            })?;
        buf.extend_from_slice(&tag);
        self.next = counter + 1;
        Ok(counter)
    }

    #[cfg(test)]
    pub(crate) fn set_next_counter(&mut self, next: u64) {
        self.next = next;
    }
}

/// The receiving side of one direction: opens frames only in exact counter order.
pub struct Opener {
    cipher: Aes256Gcm,
    direction: Direction,
    next: u64,
}

impl Opener {
    /// An opener for `direction` that expects counter 0 first.
    pub fn new(key: &[u8; 32], direction: Direction) -> Self {
        Opener {
            cipher: Aes256Gcm::new(key.into()),
            direction,
            next: 0,
        }
    }

    /// The counter the next frame must have been sealed with.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Authenticates and decrypts `frame` (ciphertext || tag) in place under the next expected
    /// counter; returns the plaintext, a prefix of `frame`.
    ///
    /// On failure the counter does not advance and the error says whether the frame was a
    /// replay, out of order, or tampered; the caller must drop the connection.
    pub fn open<'a>(&mut self, frame: &'a mut [u8]) -> Result<&'a [u8]> {
        let expected = self.next;
        if expected == u64::MAX {
            return Err(ProtoError::CounterExhausted);
        }
        let Some(body_len) = frame.len().checked_sub(TAG_LEN) else {
            // Shorter than a tag: cannot be anything we sealed.
            return Err(ProtoError::Tampered { counter: expected });
        };
        let (body, tag) = frame.split_at_mut(body_len);
        let tag = Tag::clone_from_slice(tag);
        if self
            .cipher
            .decrypt_in_place_detached(&nonce(self.direction, expected), b"", body, &tag)
            .is_ok()
        {
            self.next = expected + 1;
            return Ok(&frame[..body_len]);
        }
        Err(self.diagnose(expected, body, &tag))
    }

    /// Finds out why a frame failed by trying nearby counters on a copy of it.
    fn diagnose(&self, expected: u64, body: &[u8], tag: &Tag) -> ProtoError {
        if body.len() > PROBE_MAX_LEN {
            return ProtoError::Tampered { counter: expected };
        }
        let mut scratch = Zeroizing::new(Vec::with_capacity(body.len()));
        let mut opens_with = |counter: u64| {
            scratch.clear();
            scratch.extend_from_slice(body);
            self.cipher
                .decrypt_in_place_detached(
                    &nonce(self.direction, counter),
                    b"",
                    &mut scratch[..],
                    tag,
                )
                .is_ok()
        };
        // Nearest counters first: the likeliest explanations are an immediate replay or swap.
        for distance in 1..=PROBE_BACK.max(PROBE_AHEAD) {
            if distance <= PROBE_BACK {
                if let Some(got) = expected.checked_sub(distance) {
                    if opens_with(got) {
                        return ProtoError::Replay { expected, got };
                    }
                }
            }
            if distance <= PROBE_AHEAD {
                if let Some(got) = expected.checked_add(distance).filter(|c| *c != u64::MAX) {
                    if opens_with(got) {
                        return ProtoError::OutOfOrder { expected, got };
                    }
                }
            }
        }
        ProtoError::Tampered { counter: expected }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [9; 32];

    fn sealed(sealer: &mut Sealer, text: &[u8]) -> BytesMut {
        let mut buf = BytesMut::from(text);
        sealer.seal(&mut buf).expect("seal");
        buf
    }

    #[test]
    fn opens_in_order_and_hides_plaintext() {
        let mut s = Sealer::new(&KEY, Direction::ClientToServer);
        let mut o = Opener::new(&KEY, Direction::ClientToServer);
        for i in 0..5u8 {
            let text = [b'x', i, i, i];
            let mut f = sealed(&mut s, &text);
            assert_eq!(f.len(), text.len() + TAG_LEN);
            assert_ne!(&f[..4], &text[..], "ciphertext must differ from plaintext");
            assert_eq!(o.open(&mut f).expect("open"), &text[..]);
        }
        assert_eq!(o.next_counter(), 5);
    }

    #[test]
    fn same_plaintext_never_gives_same_ciphertext() {
        let mut s = Sealer::new(&KEY, Direction::ClientToServer);
        assert_ne!(
            sealed(&mut s, b"same"),
            sealed(&mut s, b"same"),
            "counter must change the nonce"
        );
    }

    #[test]
    fn classifies_replay_reorder_tamper_and_short_frames() {
        let mut s = Sealer::new(&KEY, Direction::ClientToServer);
        let frames: Vec<BytesMut> = (0..4u8).map(|i| sealed(&mut s, &[i; 20])).collect();
        let mut o = Opener::new(&KEY, Direction::ClientToServer);
        o.open(&mut frames[0].clone()).expect("frame 0");
        o.open(&mut frames[1].clone()).expect("frame 1");
        assert!(matches!(
            o.open(&mut frames[0].clone()),
            Err(ProtoError::Replay {
                expected: 2,
                got: 0
            })
        ));
        assert!(matches!(
            o.open(&mut frames[3].clone()),
            Err(ProtoError::OutOfOrder {
                expected: 2,
                got: 3
            })
        ));
        let mut flipped = frames[2].clone();
        flipped[5] ^= 0x10;
        assert!(matches!(
            o.open(&mut flipped),
            Err(ProtoError::Tampered { counter: 2 })
        ));
        let mut short = frames[2].clone();
        short.truncate(TAG_LEN - 1);
        assert!(matches!(
            o.open(&mut short),
            Err(ProtoError::Tampered { counter: 2 })
        ));
        // Failures did not advance the counter: the genuine frame 2 still opens.
        assert_eq!(
            o.open(&mut frames[2].clone()).expect("frame 2"),
            &[2u8; 20][..]
        );
    }

    #[test]
    fn other_direction_or_key_does_not_open() {
        let mut s = Sealer::new(&KEY, Direction::ClientToServer);
        let f = sealed(&mut s, b"reflect me");
        let mut wrong_dir = Opener::new(&KEY, Direction::ServerToClient);
        assert!(matches!(
            wrong_dir.open(&mut f.clone()),
            Err(ProtoError::Tampered { .. })
        ));
        let mut wrong_key = Opener::new(&[8; 32], Direction::ClientToServer);
        assert!(matches!(
            wrong_key.open(&mut f.clone()),
            Err(ProtoError::Tampered { .. })
        ));
    }

    #[test]
    fn refuses_to_send_past_the_last_counter() {
        let mut s = Sealer::new(&KEY, Direction::ServerToClient);
        s.set_next_counter(u64::MAX - 1);
        assert_eq!(
            s.seal(&mut BytesMut::from(&b"last"[..]))
                .expect("last counter"),
            u64::MAX - 1
        );
        let mut buf = BytesMut::from(&b"one too many"[..]);
        assert!(matches!(
            s.seal(&mut buf),
            Err(ProtoError::CounterExhausted)
        ));
        assert_eq!(
            &buf[..],
            b"one too many",
            "a refused frame must stay unsealed"
        );
    }

    #[test]
    fn keys_depend_on_direction_nonces_and_psk() {
        let psk = Psk::from_bytes([1; 32]);
        let (a, b) = ([2u8; NONCE_LEN], [3u8; NONCE_LEN]);
        let c2s = derive_key(&psk, &a, &b, Direction::ClientToServer);
        assert_ne!(*c2s, *derive_key(&psk, &a, &b, Direction::ServerToClient));
        assert_ne!(*c2s, *derive_key(&psk, &b, &a, Direction::ClientToServer));
        assert_ne!(
            *c2s,
            *derive_key(&Psk::from_bytes([4; 32]), &a, &b, Direction::ClientToServer)
        );
        assert_eq!(
            *c2s,
            *derive_key(&psk, &a, &b, Direction::ClientToServer),
            "derivation is deterministic"
        );
    }
}
