//! Outputs: alerts and decisions out to the operator's tools (`[[output]]` in the topology:
//! webhooks, syslog, a JSON-lines file, NATS), so that a chat channel, Alertmanager, a SIEM or
//! any number of NATS subscribers follow the stream without polling the API.
//!
//! Fed at the VO by an alert handler ([`Outputs::handler`]) and by the decision ledger
//! ([`Outputs::decision`], [`Outputs::follow`]). Each output has its own bounded queue and
//! its own task:
//!
//! ```text
//! VO alert handler ─┐  filter, try_send    ┌► queue(webhook) ─► task: POST, retry with backoff
//! ledger decisions ─┴─────────────────────►├► queue(syslog)  ─► task: UDP/TCP/unix records
//!                     (full: drop, counted) ├► queue(file)    ─► task: append JSON lines
//!                                           └► queue(nats)    ─► task: publish, flush
//! ```
//!
//! The handler only filters and enqueues (`try_send`): it never waits, so an output that is
//! slow or down fills its own queue and counts what it drops
//! (`vespa_output_dropped_total{output}`) while the VO goes on at its own pace. A task retries
//! what failed with exponential backoff and jitter ([`vespa_node::backoff::Backoff`]) and
//! keeps the events in order: at-least-once, in order per output, as long as the queue holds.

mod event;
pub mod format;
mod sinks;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;
use vespa_node::backoff::Backoff;
use vespa_node::config::OutputDef;
use vespa_node::{AlertHandler, Topology};
use vespa_proto::Alert;

pub use event::{clean, rfc3339, Decision, Event, Layers};

use crate::metrics::{OutputCounters, OutputMetrics};

/// Events one delivery takes from its queue at most (a batch: one NATS flush, one
/// Alertmanager POST, one file write).
const MAX_BATCH: usize = 256;

/// One output's end of things the feeders touch: its filter and queue.
struct Feed {
    def: OutputDef,
    tx: mpsc::Sender<Event>,
    counters: OutputCounters,
}

impl Feed {
    fn offer(&self, e: &Event) {
        // A full queue (its output down) costs a load and an increment, not a clone.
        if self.tx.capacity() == 0 || self.tx.try_send(e.clone()).is_err() {
            self.counters.dropped.inc();
        }
        self.counters
            .set_depth(self.tx.max_capacity() - self.tx.capacity());
    }
}

/// The outputs of the process that runs the VO. Cheap to clone.
#[derive(Clone)]
pub struct Outputs {
    feeds: Arc<Vec<Feed>>,
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.feeds.iter().map(|f| f.def.name.as_str()).collect();
        f.debug_struct("Outputs").field("outputs", &names).finish()
    }
}

/// Why an output could not start.
#[derive(Debug, thiserror::Error)]
#[error("output {name:?} (line {line}): {message}")]
pub struct OutputError {
    name: String,
    line: usize,
    message: String,
}

impl Outputs {
    /// Starts one task per `[[output]]` of `topology` (on the current tokio runtime), counted
    /// in `metrics`. With no output, nothing runs and the handler does nothing.
    pub fn start(topology: &Topology, metrics: OutputMetrics) -> Result<Outputs, OutputError> {
        let layers = Arc::new(Layers::new(topology));
        let vo = topology
            .nodes
            .iter()
            .find(|n| n.role == vespa_node::Role::Vo)
            .map_or_else(|| "VO".to_string(), |n| n.name.clone());
        let mut feeds = Vec::new();
        for def in &topology.outputs {
            let sink = sinks::Sink::new(def, layers.clone(), vo.clone()).map_err(|message| {
                OutputError {
                    name: def.name.clone(),
                    line: def.line,
                    message,
                }
            })?;
            let (tx, rx) = mpsc::channel(def.queue);
            // Every series exists from the start at 0, so the first drop is an increase.
            let counters = metrics.counters(&def.name);
            tokio::spawn(deliver(def.clone(), sink, rx, counters.clone()));
            feeds.push(Feed {
                def: def.clone(),
                tx,
                counters,
            });
        }
        Ok(Outputs {
            feeds: Arc::new(feeds),
        })
    }

    /// No output at all (a process without `[[output]]`).
    pub fn none() -> Outputs {
        Outputs {
            feeds: Arc::new(Vec::new()),
        }
    }

    /// Whether any output is configured.
    pub fn is_empty(&self) -> bool {
        self.feeds.is_empty()
    }

    /// The alert handler to put in the VO's [`vespa_node::Hooks`]: filters and enqueues,
    /// never waits.
    pub fn handler(&self) -> AlertHandler {
        let me = self.clone();
        Arc::new(move |a: &Arc<Alert>| me.alert(a))
    }

    /// Offers one alert processed at the VO to every output whose filter takes it.
    pub fn alert(&self, alert: &Arc<Alert>) {
        let kind = alert.body.kind();
        let mut event = None;
        for f in self.feeds.iter() {
            if f.def.filter.takes_alert(kind) {
                f.offer(event.get_or_insert_with(|| Event::Alert(alert.clone())));
            }
        }
    }

    /// Offers one decision (an event of the decision ledger, any serializable shape) to every
    /// output whose filter takes it. A top-level string field `rule` names the rule that
    /// decided, for the filters' `rules`; `action` and `target`, when present, make the
    /// one-line summary. Never waits.
    pub fn decision<T: Serialize + ?Sized>(&self, event: &T) {
        if self.feeds.is_empty() {
            return;
        }
        let json = serde_json::to_value(event).unwrap_or_else(
            |e| serde_json::json!({ "error": format!("decision not serializable: {e}") }),
        );
        let rule = json
            .get("rule")
            .and_then(|r| r.as_str())
            .map(|r| clean(r, 128));
        let received_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let event = Event::Decision(Arc::new(Decision {
            json,
            rule,
            received_ns,
        }));
        let rule = match &event {
            Event::Decision(d) => d.rule.as_deref(),
            Event::Alert(_) => None,
        };
        for f in self.feeds.iter() {
            if f.def.filter.takes_decision(rule) {
                f.offer(&event);
            }
        }
    }

    /// Follows a broadcast of decision events (the ledger's) until it closes: each is offered
    /// with [`Outputs::decision`]. Events the broadcast made this follower miss (it lagged)
    /// are counted as dropped by every output.
    pub fn follow<T>(
        &self,
        mut rx: tokio::sync::broadcast::Receiver<T>,
    ) -> tokio::task::JoinHandle<()>
    where
        T: Serialize + Clone + Send + 'static,
    {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(e) => me.decision(&e),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        for f in me.feeds.iter() {
                            f.counters.dropped.inc_by(n);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    }
}

/// A delivery that stopped part-way: the events before `done` went out.
#[derive(Debug)]
pub(crate) struct Failed {
    done: usize,
    error: String,
    /// The destination refused these events for good (an HTTP 4xx): retrying cannot help,
    /// so the first event not done is dropped (counted) rather than retried.
    permanent: bool,
}

impl Failed {
    fn new(done: usize, error: impl Into<String>) -> Failed {
        Failed {
            done,
            error: error.into(),
            permanent: false,
        }
    }
}

/// One output's task: takes batches from its queue and delivers them, retrying with backoff.
async fn deliver(
    def: OutputDef,
    mut sink: sinks::Sink,
    mut rx: mpsc::Receiver<Event>,
    m: OutputCounters,
) {
    let name = def.name.clone();
    let mut backoff = Backoff::new(def.backoff_min, def.backoff_max);
    let mut batch: Vec<Event> = Vec::with_capacity(MAX_BATCH);
    let mut failing: u64 = 0;
    loop {
        if batch.is_empty() {
            let Some(first) = rx.recv().await else {
                break;
            };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            m.set_depth(rx.len());
        }
        match sink.deliver(&batch).await {
            Ok(()) => {
                m.sent.inc_by(batch.len() as u64);
                batch.clear();
                if std::mem::take(&mut failing) > 0 {
                    tracing::info!(output = %name, "output delivers again");
                }
                backoff.reset();
            }
            Err(f) => {
                let done = f.done.min(batch.len());
                m.sent.inc_by(done as u64);
                batch.drain(..done);
                m.failures.inc();
                if f.permanent && !batch.is_empty() {
                    batch.remove(0);
                    m.dropped.inc();
                    tracing::warn!(output = %name, error = ?f.error, "output refused an event: dropped");
                    continue;
                }
                // One line when it starts failing, then one per 100 failures.
                failing += 1;
                if failing % 100 == 1 {
                    tracing::warn!(output = %name, error = ?f.error, waiting = batch.len(), "output failed; retrying with backoff");
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// The default wait of a connection or request when the output names none.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests;
