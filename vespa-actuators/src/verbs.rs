//! The uniform face every actuator agent shows the node runtime: its typed verbs
//! ([`ActuatorVerbs::call`] with the agent kind's enum from `vespa_proto::verbs`), plus the
//! alerts agents raise on their own ([`ActuatorAlert`]).
//!
//! Words become a verb in one place, the enum's parser ([`vespa_proto::verbs::Verb::parse`]);
//! [`ActuatorVerbs::call_words`] is that parse followed by the typed call.

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use tokio::sync::mpsc;
use vespa_proto::verbs::Verb;

/// The reply of a verb: text (JSON text for anything structured) or an error message.
pub type VerbReply = Result<String, String>;

/// A verb call in progress.
pub type VerbFuture<'a> = Pin<Box<dyn Future<Output = VerbReply> + Send + 'a>>;

/// An agent answering the verbs of its kind. Bad arguments never reach it (the parser refuses
/// them); a verb never panics and the agent keeps serving after any error.
pub trait ActuatorVerbs: Send + Sync {
    /// The verbs of this kind of agent.
    type Verb: Verb;

    /// Runs one verb.
    fn call(&self, verb: Self::Verb) -> VerbFuture<'_>;

    /// Parses `verb` and its words, then runs it; a call that does not parse is answered
    /// with the parser's error (`usage: ...`, `unknown verb ...`).
    fn call_words(&self, verb: &str, args: Vec<String>) -> VerbFuture<'_> {
        match Self::Verb::parse(verb, &args) {
            Ok(v) => self.call(v),
            Err(e) => Box::pin(std::future::ready(Err(e.to_string()))),
        }
    }
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
}
