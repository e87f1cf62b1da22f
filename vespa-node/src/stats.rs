//! Delivery counters. Every internal event that matters to an operator both logs and bumps a
//! counter; the `stats` verb returns them as JSON (a Prometheus exporter can read the same
//! struct). Each counter lives with the state it counts (delivery, links, calls), and each of
//! those owners fills its part of one [`Stats`] snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::dedup::OriginState;

/// Adds one.
pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Reads a counter.
pub(crate) fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A node's counters at one instant (the `stats` verb's reply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The node.
    pub node: String,
    /// Its kind (config spelling).
    pub role: String,
    /// Alerts this node raised itself.
    pub alerts_raised: u64,
    /// Alerts received from children (duplicates included).
    pub alerts_received: u64,
    /// New alerts queued for the master (own and children's).
    pub alerts_forwarded: u64,
    /// New alerts processed at the root (the VO).
    pub alerts_processed: u64,
    /// Alert frames sent to the master, re-sends included.
    pub alerts_sent: u64,
    /// Alerts received again and dropped (at-least-once delivery made visible).
    pub duplicates_dropped: u64,
    /// Acks received from the master.
    pub acks_received: u64,
    /// Alerts waiting for the master's ack.
    pub queue_len: usize,
    /// The queue's capacity.
    pub queue_capacity: usize,
    /// Alerts this node could not queue because the queue was full (lost, and reported).
    pub queue_overflow: u64,
    /// Alerts whose body this node replaced by an `Oversized` note: too large for the frame
    /// to its master (the alert itself went on, so its link did not stall).
    #[serde(default)]
    pub oversized: u64,
    /// Connections to the master re-established.
    pub reconnects: u64,
    /// Connections that ended with an error (each also logged once).
    pub connection_errors: u64,
    /// Calls answered.
    pub calls_served: u64,
    /// Calls refused because the caller may not call that verb (a child calling a command).
    #[serde(default)]
    pub calls_refused: u64,
    /// Whether the link to the master is up (always false at the VO).
    pub uplink_connected: bool,
    /// Registered children.
    pub children: Vec<String>,
    /// Per origin: sequence numbers taken at this hop.
    pub origins: BTreeMap<String, OriginState>,
    /// The VO's alert journal, if it keeps one.
    #[serde(default)]
    pub journal: Option<JournalStats>,
    /// The node's spool of unacknowledged alerts, if it keeps one.
    #[serde(default)]
    pub spool: Option<crate::spool::SpoolStats>,
}

/// The VO's alert journal in a `stats` snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalStats {
    /// The file's size.
    pub bytes: u64,
    /// Its budget (`journal_max_bytes`): past it, the file is compacted.
    pub max_bytes: u64,
    /// False while writes fail (a full disk): alerts are then neither processed nor
    /// acknowledged, and wait (up to a bound) to be written.
    pub writable: bool,
    /// Alerts taken but not yet written, hence not yet processed nor acknowledged.
    pub pending: usize,
    /// Failed writes (each attempt at a batch), failed compactions, alerts that could not
    /// be encoded. Each change between writing and failing is also logged once.
    pub failures: u64,
    /// Times the file was compacted since start.
    pub compactions: u64,
    /// Damaged stretches skipped when the file was read at start.
    pub damaged_at_start: u64,
    /// Bytes of a torn tail cut off at start.
    pub torn_bytes_at_start: u64,
}

impl Stats {
    /// A snapshot of `node` with every counter at zero; each owner of a part of the node's
    /// state then fills in its own fields.
    pub(crate) fn new(node: &str, role: &str) -> Stats {
        Stats {
            node: node.to_string(),
            role: role.to_string(),
            alerts_raised: 0,
            alerts_received: 0,
            alerts_forwarded: 0,
            alerts_processed: 0,
            alerts_sent: 0,
            duplicates_dropped: 0,
            acks_received: 0,
            queue_len: 0,
            queue_capacity: 0,
            queue_overflow: 0,
            oversized: 0,
            reconnects: 0,
            connection_errors: 0,
            calls_served: 0,
            calls_refused: 0,
            uplink_connected: false,
            children: Vec::new(),
            origins: BTreeMap::new(),
            journal: None,
            spool: None,
        }
    }
}
