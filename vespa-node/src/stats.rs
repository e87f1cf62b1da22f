//! Delivery counters. Every internal event that matters to an operator both logs and bumps a
//! counter here; the `stats` verb returns them as JSON (a Prometheus exporter can read the
//! same struct).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::dedup::OriginState;

/// The live counters of one node.
#[derive(Default)]
pub(crate) struct Counters {
    pub alerts_raised: AtomicU64,
    pub alerts_received: AtomicU64,
    pub alerts_forwarded: AtomicU64,
    pub alerts_processed: AtomicU64,
    pub alerts_sent: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub acks_received: AtomicU64,
    pub queue_overflow: AtomicU64,
    pub reconnects: AtomicU64,
    pub connection_errors: AtomicU64,
    pub calls_served: AtomicU64,
}

/// Adds one.
pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
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
    /// Connections to the master re-established.
    pub reconnects: u64,
    /// Connections that ended with an error (each also logged once).
    pub connection_errors: u64,
    /// Calls answered.
    pub calls_served: u64,
    /// Whether the link to the master is up (always false at the VO).
    pub uplink_connected: bool,
    /// Registered children.
    pub children: Vec<String>,
    /// Per origin: sequence numbers taken at this hop.
    pub origins: BTreeMap<String, OriginState>,
}

impl Counters {
    /// Fills the counter fields of a snapshot (the caller adds the rest).
    #[allow(clippy::too_many_arguments)]
    pub fn snapshot(
        &self,
        node: &str,
        role: &str,
        queue_len: usize,
        queue_capacity: usize,
        uplink_connected: bool,
        children: Vec<String>,
        origins: BTreeMap<String, OriginState>,
    ) -> Stats {
        Stats {
            node: node.to_string(),
            role: role.to_string(),
            alerts_raised: get(&self.alerts_raised),
            alerts_received: get(&self.alerts_received),
            alerts_forwarded: get(&self.alerts_forwarded),
            alerts_processed: get(&self.alerts_processed),
            alerts_sent: get(&self.alerts_sent),
            duplicates_dropped: get(&self.duplicates_dropped),
            acks_received: get(&self.acks_received),
            queue_len,
            queue_capacity,
            queue_overflow: get(&self.queue_overflow),
            reconnects: get(&self.reconnects),
            connection_errors: get(&self.connection_errors),
            calls_served: get(&self.calls_served),
            uplink_connected,
            children,
            origins,
        }
    }
}
