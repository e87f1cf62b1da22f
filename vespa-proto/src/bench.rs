//! Throughput probes shared by the crate's tests and later benchmarks.
//!
//! They measure the per-frame CPU cost of the record layer in isolation (no sockets), so a
//! regression in sealing or encoding shows up without the noise of the network stack. The
//! end-to-end target is 200,000 alerts/s on 2 cores; these numbers bound what any transport
//! built on this crate can reach.

use std::time::Instant;

use bytes::{BufMut, BytesMut};

use crate::message::{self, Alert, AlertBody, Message};
use crate::seal::{Direction, Opener, Sealer};

/// A typical alert, as an agent sends it.
pub fn sample_alert(seq: u64) -> Message {
    Message::Alert(Alert {
        origin: "agent-connections@host1".into(),
        seq,
        path: vec!["agent-connections@host1".into(), "HO_PH".into()],
        timestamp_ns: 1_700_000_000_000_000_000 + seq,
        body: AlertBody::ConnThreshold {
            addr: std::net::IpAddr::from([203, 0, 113, 7]),
            established: 150,
            threshold: 100,
        },
    })
}

/// Seals and opens `n` small (64-byte) frames; returns frames per second.
///
/// Panics if a frame fails to open, which would mean the record layer is broken.
pub fn seal_open_throughput(n: usize) -> f64 {
    let key = [0x5A; 32];
    let mut sealer = Sealer::new(&key, Direction::ClientToServer);
    let mut opener = Opener::new(&key, Direction::ClientToServer);
    let payload = [0xA5u8; 64];
    let mut buf = BytesMut::with_capacity(128);
    let start = Instant::now();
    for _ in 0..n {
        buf.clear();
        buf.put_slice(&payload);
        sealer.seal(&mut buf).expect("seal within counter range");
        let plain = opener
            .open(&mut buf)
            .expect("a frame sealed in order must open");
        assert_eq!(plain.len(), payload.len());
    }
    per_second(n, start)
}

/// Encodes, seals, opens and decodes `n` alerts; returns alerts per second.
pub fn alert_round_trip_throughput(n: usize) -> f64 {
    let key = [0x5A; 32];
    let mut sealer = Sealer::new(&key, Direction::ClientToServer);
    let mut opener = Opener::new(&key, Direction::ClientToServer);
    let mut buf = BytesMut::with_capacity(256);
    let start = Instant::now();
    for seq in 0..n as u64 {
        buf.clear();
        message::encode_into(&sample_alert(seq), &mut buf).expect("encode");
        sealer.seal(&mut buf).expect("seal");
        let plain = opener.open(&mut buf).expect("open");
        let back: Message = message::decode(plain).expect("decode");
        assert!(matches!(back, Message::Alert(ref a) if a.seq == seq));
    }
    per_second(n, start)
}

fn per_second(n: usize, start: Instant) -> f64 {
    n as f64 / start.elapsed().as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_seal_open_throughput() {
        let fps = super::seal_open_throughput(1_000);
        let aps = super::alert_round_trip_throughput(1_000);
        eprintln!("seal+open: {fps:.0} frames/s; encode+seal+open+decode: {aps:.0} alerts/s (1,000 frames, untimed test)");
        assert!(fps.is_finite() && fps > 0.0 && aps > 0.0);
    }
}
