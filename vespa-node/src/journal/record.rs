//! The journal's framing: a file header, then records, each a 20-byte header and a JSON
//! payload.
//!
//! ```text
//! file:    "VESPA-JOURNAL-1\n" record*
//! record:  magic 0xFF 'V' 'J' 'R' | kind u8 | 0 0 0 | len u32 LE | crc32(payload) u32 LE
//!          | crc32(the 16 bytes before) u32 LE | payload (len bytes of JSON)
//! ```
//!
//! The header's own checksum means a length is only believed when the header is intact, so a
//! damaged length cannot make the reader skip good records or read a huge payload; the
//! payload's checksum catches everything else. The magic starts with 0xFF, a byte that never
//! occurs in UTF-8 (so never inside a JSON payload): after damage, the reader finds the next
//! record by looking for the magic and checking both checksums.
//!
//! The agents' spool of unacknowledged alerts ([`crate::spool`]) uses the same framing with a
//! file header of its own, `"VESPA-SPOOL-1\n\n\n"`, its alerts as [`Kind::Alert`] records and
//! the master's acknowledgements as [`Kind::Acked`] records.

use serde::{Deserialize, Serialize};

/// The first bytes of a journal in this format.
pub(crate) const FILE_MAGIC: &[u8; 16] = b"VESPA-JOURNAL-1\n";
/// The first bytes of a spool ([`crate::spool`]) in this format.
pub(crate) const SPOOL_MAGIC: &[u8; 16] = b"VESPA-SPOOL-1\n\n\n";
/// The first bytes of every record.
pub(crate) const MAGIC: [u8; 4] = [0xFF, b'V', b'J', b'R'];
/// Bytes before a record's payload.
pub(crate) const HEADER_LEN: usize = 20;
/// The largest payload written or believed. Alerts are bounded far below by the frame limit
/// (at most 16 MiB on the wire); this only keeps a reader from trusting absurd lengths.
pub(crate) const MAX_PAYLOAD: usize = 256 << 20;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An alert the VO processed (`vespa_proto::Alert` as JSON).
    Alert = 1,
    /// What de-duplication keeps of one origin ([`OriginRecord`]), written by compaction.
    Origin = 2,
    /// How many alerts came before this file's first alert record ([`MetaRecord`]), written
    /// by compaction so `get_alerts` indexes continue across restarts.
    Meta = 3,
    /// Spool only: the master acknowledged every alert of the spool up to this sequence
    /// number ([`AckedRecord`]).
    Acked = 4,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Alert),
            2 => Some(Kind::Origin),
            3 => Some(Kind::Meta),
            4 => Some(Kind::Acked),
            _ => None,
        }
    }
}

/// One origin's state, as de-duplication needs it after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OriginRecord {
    pub origin: String,
    /// Highest sequence number journaled: everything at or below it was processed.
    pub highest: u64,
    /// Alerts of this origin processed (the `stats` count).
    pub count: u64,
    /// The first sequence number journaled.
    pub first: u64,
}

/// The start of a compacted file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MetaRecord {
    /// Alerts processed before the first alert record that follows.
    pub alerts_before: u64,
}

/// Spool only: everything up to `seq` was acknowledged by the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AckedRecord {
    pub seq: u64,
}

/// Why a record could not be encoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EncodeError {
    #[error("cannot encode the record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("record of {0} bytes is larger than the journal's limit ({MAX_PAYLOAD} bytes)")]
    TooLarge(usize),
}

/// Appends one record holding `value` to `out`; on error `out` is left as it was.
pub(crate) fn append<T: Serialize>(
    out: &mut Vec<u8>,
    kind: Kind,
    value: &T,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = serde_json::to_writer(&mut *out, value) {
        out.truncate(start);
        return Err(e.into());
    }
    let payload = &out[start + HEADER_LEN..];
    if payload.len() > MAX_PAYLOAD {
        let n = payload.len();
        out.truncate(start);
        return Err(EncodeError::TooLarge(n));
    }
    let h = header(kind, payload.len() as u32, crc32fast::hash(payload));
    out[start..start + HEADER_LEN].copy_from_slice(&h);
    Ok(())
}

fn header(kind: Kind, len: u32, crc: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = kind as u8;
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    let hcrc = crc32fast::hash(&h[..16]);
    h[16..20].copy_from_slice(&hcrc.to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// A record header that checked out: its length can be believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// `None`: a kind this version does not know (skipped, counted as damaged).
    pub kind: Option<Kind>,
    pub len: usize,
    crc: u32,
}

impl Header {
    /// Reads a header from the first [`HEADER_LEN`] bytes of `b`: `None` unless it has the
    /// magic, its own checksum matches and the length is within bounds.
    pub fn parse(b: &[u8]) -> Option<Header> {
        let b = b.get(..HEADER_LEN)?;
        if b[..4] != MAGIC || b[5..8] != [0, 0, 0] || crc32fast::hash(&b[..16]) != u32_at(b, 16) {
            return None;
        }
        let len = u32_at(b, 8) as usize;
        (len <= MAX_PAYLOAD).then_some(Header {
            kind: Kind::from_byte(b[4]),
            len,
            crc: u32_at(b, 12),
        })
    }

    /// Whether `payload` is the one this header describes.
    pub fn matches(&self, payload: &[u8]) -> bool {
        payload.len() == self.len && crc32fast::hash(payload) == self.crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(kind: Kind, v: &MetaRecord) -> Vec<u8> {
        let mut out = Vec::new();
        append(&mut out, kind, v).expect("encode");
        out
    }

    #[test]
    fn a_record_round_trips_and_any_flipped_bit_is_caught() {
        let rec = one(Kind::Meta, &MetaRecord { alerts_before: 7 });
        let h = Header::parse(&rec).expect("header");
        assert_eq!((h.kind, h.len), (Some(Kind::Meta), rec.len() - HEADER_LEN));
        let payload = &rec[HEADER_LEN..];
        assert!(h.matches(payload));
        let back: MetaRecord = serde_json::from_slice(payload).expect("json");
        assert_eq!(back, MetaRecord { alerts_before: 7 });

        for byte in 0..rec.len() {
            for bit in 0..8 {
                let mut bad = rec.clone();
                bad[byte] ^= 1 << bit;
                let caught = match Header::parse(&bad) {
                    None => true,
                    Some(h) => !h.matches(&bad[HEADER_LEN..]),
                };
                assert!(caught, "bit {bit} of byte {byte} flipped unnoticed");
            }
        }
    }

    #[test]
    fn a_length_beyond_the_limit_or_a_short_header_is_refused() {
        let mut rec = one(Kind::Alert, &MetaRecord { alerts_before: 1 });
        assert_eq!(Header::parse(&rec[..HEADER_LEN - 1]), None);
        // A header whose checksum is right but whose length is absurd is not believed.
        rec[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        let hcrc = crc32fast::hash(&rec[..16]);
        rec[16..20].copy_from_slice(&hcrc.to_le_bytes());
        assert_eq!(Header::parse(&rec), None);
    }

    #[test]
    fn the_magic_never_occurs_inside_a_json_payload() {
        let mut out = Vec::new();
        append(
            &mut out,
            Kind::Alert,
            &"\u{ff}VJR \u{0} \u{7f} every char \u{10ffff}",
        )
        .expect("encode");
        let payload = &out[HEADER_LEN..];
        assert!(!payload.windows(4).any(|w| w == MAGIC));
        assert!(!payload.contains(&0xFF));
    }
}
