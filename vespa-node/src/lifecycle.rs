//! A node's life cycle: the signals that stop its parts, in the order [`crate::node`]'s stop
//! sequence gives them.
//!
//! Stopping is a sequence, not one switch, because each step needs the previous ones done:
//! producers (an agent's samplers) stop first so the queue stops growing; the listener stops
//! accepting so no new child or call arrives; the queue is flushed to the master while every
//! connection is still up; only then are the connections closed, in order. A `destroy` (from
//! the master or a caller) starts the same sequence, with the subtree torn down on the way.

use tokio_util::sync::CancellationToken;

/// The stop signals of one node; each is given once and stays given.
#[derive(Default)]
pub(crate) struct Life {
    /// Ends background producers (agents' samplers).
    producers_stop: CancellationToken,
    /// Stops accepting connections.
    accept_stop: CancellationToken,
    /// Closes every connection (the last step of stopping).
    closing: CancellationToken,
    /// A `destroy` arrived: the node stops, and takes its subtree with it.
    destroy: CancellationToken,
}

impl Life {
    /// A node that is not stopping.
    pub fn new() -> Life {
        Life::default()
    }

    /// Asks the node to destroy itself and its subtree.
    pub fn request_destroy(&self) {
        self.destroy.cancel();
    }

    /// Completes when a `destroy` has been asked for.
    pub async fn destroy_requested(&self) {
        self.destroy.cancelled().await
    }

    /// First step of stopping: background producers end.
    pub fn stop_producers(&self) {
        self.producers_stop.cancel();
    }

    /// Completes when producers must end.
    pub async fn producers_stopped(&self) {
        self.producers_stop.cancelled().await
    }

    /// No new connection is accepted from now on.
    pub fn stop_accepting(&self) {
        self.accept_stop.cancel();
    }

    /// Completes when the listener must stop accepting.
    pub async fn accepting_stopped(&self) {
        self.accept_stop.cancelled().await
    }

    /// Last step of stopping: every connection closes, and the uplink stops redialling.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// True once the node started stopping (or was asked to destroy itself): children that
    /// leave now are not lost, they are let go.
    pub fn is_stopping(&self) -> bool {
        self.producers_stop.is_cancelled() || self.destroy.is_cancelled()
    }

    /// True once [`close`](Self::close) was called.
    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Completes when the node closes its connections.
    pub async fn closed(&self) {
        self.closing.cancelled().await
    }

    /// The cancellation of a new connection: its own, and given with the node's closing.
    pub fn session_token(&self) -> CancellationToken {
        self.closing.child_token()
    }
}
