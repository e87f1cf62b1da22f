//! What an acting agent reports without being asked ([`ActuatorAlert`]), the channel it
//! reports on ([`AlertSink`]), and the decorator that raises those reports at the agent's
//! node ([`Acting`]).

use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::mpsc;
use vespa_node::{Agent, NodeHandle, VerbResult};
use vespa_proto::AlertBody;

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
    /// The alert body it climbs the tree as.
    pub fn into_body(self) -> AlertBody {
        match self {
            ActuatorAlert::Infected {
                vm,
                file,
                signature,
            } => AlertBody::Infected {
                vm,
                file,
                signature,
            },
            ActuatorAlert::ActuatorFailed {
                actuator,
                action,
                error,
            } => AlertBody::ActuatorFailed {
                actuator,
                action,
                error,
            },
        }
    }

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

    #[cfg_attr(
        not(any(feature = "libvirt", feature = "sdn", feature = "av")),
        allow(dead_code)
    )]
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
#[cfg_attr(
    not(any(feature = "libvirt", feature = "sdn", feature = "av")),
    allow(dead_code)
)]
pub(crate) fn json<T: Serialize>(v: &T) -> VerbResult {
    serde_json::to_string(v).map_err(|e| format!("cannot encode the reply: {e}"))
}

/// Alerts an agent may have in flight before its reports are dropped (counted in the log).
const ALERT_BACKLOG: usize = 1024;

/// An acting agent as its node runs it: the agent's verbs unchanged, and the alerts it sends
/// on its [`AlertSink`] raised at the node (`Infected`, `ActuatorFailed`), so they climb the
/// tree like any other.
pub struct Acting<A> {
    agent: A,
    alerts: Mutex<Option<mpsc::Receiver<ActuatorAlert>>>,
}

impl<A: Agent> Acting<A> {
    /// Builds the agent with the sink its reports go to.
    pub fn new(build: impl FnOnce(AlertSink) -> A) -> Acting<A> {
        Acting::try_new(|sink| Ok::<A, std::convert::Infallible>(build(sink)))
            .unwrap_or_else(|never| match never {})
    }

    /// As [`new`](Self::new), for an agent whose construction can fail.
    pub fn try_new<E>(build: impl FnOnce(AlertSink) -> Result<A, E>) -> Result<Acting<A>, E> {
        let (tx, rx) = mpsc::channel(ALERT_BACKLOG);
        Ok(Acting {
            agent: build(AlertSink::new(tx))?,
            alerts: Mutex::new(Some(rx)),
        })
    }

    /// The agent itself.
    pub fn agent(&self) -> &A {
        &self.agent
    }
}

impl<A: Agent> Agent for Acting<A> {
    type Verb = A::Verb;

    fn call(&self, verb: A::Verb) -> impl std::future::Future<Output = VerbResult> + Send + '_ {
        self.agent.call(verb)
    }

    fn start(&self, node: NodeHandle) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = self.agent.start(node.clone());
        let taken = self.alerts.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut rx) = taken else { return tasks };
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    a = rx.recv() => {
                        let Some(a) = a else { break };
                        if let Err(e) = node.raise(a.into_body()) {
                            tracing::warn!(node = node.name(), error = %e, "actuator alert refused by a full queue");
                        }
                    }
                    _ = node.stopping() => break,
                }
            }
        }));
        tasks
    }
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
