//! The uniform face every actuator agent shows the node runtime: a fixed table of verbs
//! ([`VerbSpec`]) and one entry point to call them ([`ActuatorVerbs::call`]), plus the alerts
//! agents raise on their own ([`ActuatorAlert`]).
//!
//! Kept independent of the runtime crate: the runtime adapts it to its own verb table, e.g.
//!
//! ```text
//! for v in agent.verbs() {
//!     let a = agent.clone(); // Arc<dyn ActuatorVerbs>
//!     table.add(v.name, v.usage, v.help, move |args| {
//!         let a = a.clone();
//!         async move { a.call(v.name, args).await }
//!     });
//! }
//! ```

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use tokio::sync::mpsc;

/// One verb of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VerbSpec {
    pub name: &'static str,
    /// Arguments, e.g. `<vm> [mac]`.
    pub usage: &'static str,
    /// One sentence.
    pub help: &'static str,
}

/// The reply of a verb: text (JSON text for anything structured) or an error message.
pub type VerbReply = Result<String, String>;

/// A verb call in progress.
pub type VerbFuture<'a> = Pin<Box<dyn Future<Output = VerbReply> + Send + 'a>>;

/// An agent callable by verb name. Unknown verbs and bad arguments are error replies; a verb
/// never panics and the agent keeps serving after any error.
pub trait ActuatorVerbs: Send + Sync {
    /// The agent's verbs (fixed for its lifetime).
    fn verbs(&self) -> Vec<VerbSpec>;
    /// Runs one verb.
    fn call<'a>(&'a self, verb: &'a str, args: Vec<String>) -> VerbFuture<'a>;
}

/// Something an agent reports without being asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActuatorAlert {
    /// The antivirus found a signature in a file belonging to `vm`.
    Infected {
        vm: String,
        file: String,
        signature: String,
    },
    /// An actuator action failed for good (after its retries).
    ActuatorFailed {
        actuator: String,
        action: String,
        error: String,
    },
}

impl ActuatorAlert {
    /// The alert as the 2014 `function#arg#...` text the VO's policy parses.
    pub fn to_text(&self) -> String {
        match self {
            ActuatorAlert::Infected {
                vm,
                file,
                signature,
            } => format!("infected#{vm}#{file}#{signature}"),
            ActuatorAlert::ActuatorFailed {
                actuator,
                action,
                error,
            } => format!("actuator_failed#{actuator}#{action}#{error}"),
        }
    }
}

/// Where an agent sends its alerts: never blocks; a full or closed channel is logged and the
/// alert dropped, because an actuator must not stall on a slow consumer.
#[derive(Debug, Clone, Default)]
pub struct AlertSink(Option<mpsc::Sender<ActuatorAlert>>);

impl AlertSink {
    pub fn new(tx: mpsc::Sender<ActuatorAlert>) -> AlertSink {
        AlertSink(Some(tx))
    }

    /// A sink that drops everything (agents used without a runtime).
    pub fn none() -> AlertSink {
        AlertSink(None)
    }

    pub fn send(&self, alert: ActuatorAlert) {
        let Some(tx) = &self.0 else { return };
        if let Err(e) = tx.try_send(alert) {
            tracing::warn!(error = %e, "actuator alert dropped");
        }
    }

    pub(crate) fn failed(
        &self,
        actuator: &str,
        action: &str,
        error: &(dyn std::error::Error + 'static),
    ) {
        self.send(ActuatorAlert::ActuatorFailed {
            actuator: actuator.into(),
            action: action.into(),
            error: crate::error::chain(error),
        });
    }
}

/// `Err("usage: <verb> <usage>")` unless `args` has between `min` and `max` entries.
pub(crate) fn arity(
    spec: &VerbSpec,
    args: &[String],
    min: usize,
    max: usize,
) -> Result<(), String> {
    if args.len() < min || args.len() > max {
        return Err(format!("usage: {} {}", spec.name, spec.usage));
    }
    Ok(())
}

/// Looks `verb` up in `table`.
pub(crate) fn find(table: &[VerbSpec], verb: &str) -> Result<VerbSpec, String> {
    table
        .iter()
        .copied()
        .find(|v| v.name == verb)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|v| v.name).collect();
            format!("unknown verb {verb:?} (verbs: {})", names.join(", "))
        })
}

/// JSON text of a serialisable value (cannot fail for the types used here; reported if it does).
pub(crate) fn json<T: Serialize>(v: &T) -> VerbReply {
    serde_json::to_string(v).map_err(|e| format!("cannot encode the reply: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_text_and_json() {
        let a = ActuatorAlert::Infected {
            vm: "web1".into(),
            file: "/srv/x".into(),
            signature: "Eicar".into(),
        };
        assert_eq!(a.to_text(), "infected#web1#/srv/x#Eicar");
        let j = serde_json::to_value(&a).expect("json");
        assert_eq!(j["kind"], "infected");
        assert_eq!(j["vm"], "web1");
    }

    #[test]
    fn arity_and_lookup() {
        const T: &[VerbSpec] = &[VerbSpec {
            name: "a",
            usage: "<x>",
            help: "h",
        }];
        assert!(arity(&T[0], &["1".into()], 1, 1).is_ok());
        assert_eq!(arity(&T[0], &[], 1, 1), Err("usage: a <x>".into()));
        assert!(find(T, "a").is_ok());
        assert!(find(T, "rm").unwrap_err().contains("unknown verb"));
    }
}
