//! The event ring buffer: waiting on it, and turning its records into [`SensorEvent`]s.

use std::{
    net::SocketAddr,
    os::fd::AsFd,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::sync::broadcast;
use vespa_common::{
    Addr, ConnEvent, EventHeader, ReflexEvent, ThresholdEvent, EVENT_CONN_CLOSE, EVENT_CONN_OPEN,
    EVENT_CONN_THRESHOLD, EVENT_REFLEX_BLOCK, EVENT_SYN_THRESHOLD, MAX_EVENT_SIZE,
};

use super::{addr::ip_of, wait_readable};
use crate::event::SensorEvent;

/// Reads the ring buffer until `stop`, sending every event to `events`.
pub(super) fn read_events(
    mut ring: RingBuf<MapData>,
    stop: &AtomicBool,
    events: &broadcast::Sender<SensorEvent>,
) {
    while !stop.load(Ordering::Relaxed) {
        // Threshold events wake us at once; per-connection events are produced without a
        // wake-up and collected here at least every POLL (see `emit` in vespa-ebpf).
        const POLL: Duration = Duration::from_millis(50);
        wait_readable(ring.as_fd(), POLL);
        while let Some(item) = ring.next() {
            match decode_event(&item) {
                Some(ev) => {
                    if let SensorEvent::ConnThreshold {
                        addr,
                        established,
                        threshold,
                        ..
                    } = &ev
                    {
                        tracing::warn!(%addr, established, threshold, "connection threshold crossed");
                    } else if let SensorEvent::SynThreshold {
                        addr,
                        syns_in_second,
                        threshold,
                        ..
                    } = &ev
                    {
                        tracing::warn!(%addr, syns_in_second, threshold, "SYN rate threshold crossed");
                    }
                    let _ = events.send(ev);
                }
                None => {
                    tracing::warn!(len = item.len(), "malformed ring-buffer record dropped")
                }
            }
        }
    }
}

/// Reads a `T` from the front of a record whose length was checked by the caller.
fn read_record<T: Copy>(b: &[u8]) -> Option<T> {
    if b.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the slice holds at least size_of::<T>() bytes and T is a plain #[repr(C)]
    // integer struct (vespa-common), valid for any bit pattern; read_unaligned copes with the
    // ring buffer's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record; None for anything malformed or of an unknown kind.
pub(super) fn decode_event(b: &[u8]) -> Option<SensorEvent> {
    let h: EventHeader = read_record(b)?;
    if h.size as usize > b.len() || h.size as usize > MAX_EVENT_SIZE {
        return None;
    }
    let sock = |a: &Addr, port: u16| SocketAddr::new(ip_of(a), port);
    match h.kind {
        EVENT_CONN_OPEN | EVENT_CONN_CLOSE => {
            let e: ConnEvent = read_record(b)?;
            // The tracepoint converts both ports to host byte order (ntohs).
            let (local, remote) = (sock(&e.local, e.local_port), sock(&e.remote, e.remote_port));
            Some(if h.kind == EVENT_CONN_OPEN {
                SensorEvent::ConnOpened {
                    timestamp_ns: h.timestamp_ns,
                    local,
                    remote,
                    old_state: e.old_state.into(),
                }
            } else {
                SensorEvent::ConnClosed {
                    timestamp_ns: h.timestamp_ns,
                    local,
                    remote,
                    new_state: e.new_state.into(),
                    duration_ns: e.duration_ns,
                }
            })
        }
        EVENT_CONN_THRESHOLD => {
            let e: ThresholdEvent = read_record(b)?;
            Some(SensorEvent::ConnThreshold {
                timestamp_ns: h.timestamp_ns,
                addr: ip_of(&e.addr),
                established: e.value,
                threshold: e.threshold,
            })
        }
        EVENT_SYN_THRESHOLD => {
            let e: ThresholdEvent = read_record(b)?;
            Some(SensorEvent::SynThreshold {
                timestamp_ns: h.timestamp_ns,
                addr: ip_of(&e.addr),
                syns_in_second: e.value,
                threshold: e.threshold,
                ifindex: e.ifindex,
            })
        }
        EVENT_REFLEX_BLOCK => {
            let e: ReflexEvent = read_record(b)?;
            let addr = ip_of(&e.addr);
            Some(SensorEvent::ReflexBlock {
                timestamp_ns: h.timestamp_ns,
                target: super::firewall::reflex_target(addr, e.prefix_len).to_string(),
                syn: e.cause == EVENT_SYN_THRESHOLD,
                value: e.value,
                threshold: e.threshold,
                ttl_ns: e.expires_ns.saturating_sub(h.timestamp_ns),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_decoded_and_garbage_rejected() {
        let ev = ThresholdEvent {
            header: EventHeader {
                kind: EVENT_CONN_THRESHOLD,
                size: 56,
                timestamp_ns: 42,
            },
            addr: Addr::from_v4([10, 0, 0, 9]),
            value: 101,
            threshold: 100,
            ifindex: 0,
            _pad: 0,
        };
        // SAFETY: ThresholdEvent is a plain #[repr(C)] struct without implicit padding.
        let bytes = unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), 56) };
        assert_eq!(
            decode_event(bytes),
            Some(SensorEvent::ConnThreshold {
                timestamp_ns: 42,
                addr: "10.0.0.9".parse().unwrap(),
                established: 101,
                threshold: 100
            })
        );
        assert_eq!(decode_event(&bytes[..20]), None, "truncated");
        let mut unknown = bytes.to_vec();
        unknown[0] = 99;
        assert_eq!(decode_event(&unknown), None, "unknown kind");
        let mut oversized = bytes.to_vec();
        oversized[4] = 200;
        assert_eq!(decode_event(&oversized), None, "size beyond the record");
        assert_eq!(decode_event(&[]), None);
    }
}
