//! The plug-in point of agents: what an agent brings to its node.
//!
//! An agent (the sensing and acting agents of the `vespa-agents` crate; an HO's fast-path
//! policy in the orchestrator) answers the verbs of its kind, one typed enum
//! ([`Agent::Verb`]), and may run background work that raises alerts through a
//! [`NodeHandle`]. The node holds it as an [`AgentRef`], its kind erased: the words of a call
//! are parsed by that kind's parser, once, and only a parsed verb reaches the agent.

use std::future::Future;
use std::sync::Arc;

use vespa_proto::verbs::{Verb, VerbDoc, VerbError};

use crate::handle::NodeHandle;
use crate::verbs::{AgentVerbs, CallFrom, VerbFuture, VerbResult};

/// What an agent brings to its node: the verbs of its kind, and background work.
pub trait Agent: Send + Sync + 'static {
    /// The verbs of this kind of agent.
    type Verb: Verb;

    /// Answers one verb: text (JSON text for anything structured) or an error message. A
    /// verb never panics; the agent keeps serving after any error.
    fn call(&self, verb: Self::Verb) -> impl Future<Output = VerbResult> + Send + '_;

    /// Answers one verb knowing who called ([`CallFrom`]): for an agent that records its
    /// callers. Default: [`Agent::call`], the caller ignored.
    fn call_from(
        &self,
        verb: Self::Verb,
        from: CallFrom,
    ) -> impl Future<Output = VerbResult> + Send + '_ {
        let _ = from;
        self.call(verb)
    }

    /// Starts background work (periodic samples, event forwarding). It raises alerts through
    /// `node` and must end when [`NodeHandle::stopping`] completes; the runtime waits for the
    /// returned tasks before it flushes the node's queue. Default: none.
    fn start(&self, node: NodeHandle) -> Vec<tokio::task::JoinHandle<()>> {
        let _ = node;
        Vec::new()
    }

    /// Parses `verb` and its words as one of this agent's verbs, then answers it; words that
    /// do not parse are answered with the parser's error (`usage: ...`, `unknown verb ...`).
    fn call_words(
        &self,
        verb: &str,
        args: Vec<String>,
    ) -> impl Future<Output = VerbResult> + Send + '_ {
        let parsed = Self::Verb::parse(verb, &args);
        async move {
            match parsed {
                Ok(v) => self.call(v).await,
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

/// An agent as its node holds it, whatever its kind (cheap to clone).
#[derive(Clone)]
pub struct AgentRef(Arc<dyn Erased>);

impl AgentRef {
    /// Wraps `agent` for a node's [`Hooks`](crate::Hooks).
    pub fn new<A: Agent>(agent: A) -> AgentRef {
        AgentRef::from_arc(Arc::new(agent))
    }

    /// As [`new`](Self::new), for an agent the caller keeps a handle on.
    pub fn from_arc<A: Agent>(agent: Arc<A>) -> AgentRef {
        AgentRef(Arc::new(Held(agent)))
    }

    /// The agent's verbs, as `help` lists them.
    pub fn docs(&self) -> Vec<VerbDoc> {
        self.0.docs()
    }

    /// Parses `verb` and its words as one of the agent's verbs and starts it (a call of
    /// this process: [`CallFrom::Local`]).
    pub fn call(&self, verb: &str, args: &[String]) -> Result<VerbFuture, VerbError> {
        self.0.call(verb, args, CallFrom::Local)
    }

    /// Starts the agent's background work (see [`Agent::start`]).
    pub fn start(&self, node: NodeHandle) -> Vec<tokio::task::JoinHandle<()>> {
        self.0.start(node)
    }

    /// The agent's verbs alone, for call routing.
    pub(crate) fn verbs(&self) -> Arc<dyn AgentVerbs> {
        Arc::new(self.clone())
    }
}

impl AgentVerbs for AgentRef {
    fn docs(&self) -> Vec<VerbDoc> {
        AgentRef::docs(self)
    }

    fn call(&self, verb: &str, args: &[String], from: CallFrom) -> Result<VerbFuture, VerbError> {
        self.0.call(verb, args, from)
    }
}

/// [`Agent`] with its kind erased.
trait Erased: Send + Sync {
    fn docs(&self) -> Vec<VerbDoc>;
    fn call(&self, verb: &str, args: &[String], from: CallFrom) -> Result<VerbFuture, VerbError>;
    fn start(&self, node: NodeHandle) -> Vec<tokio::task::JoinHandle<()>>;
}

struct Held<A>(Arc<A>);

impl<A: Agent> Erased for Held<A> {
    fn docs(&self) -> Vec<VerbDoc> {
        A::Verb::docs()
    }

    fn call(&self, verb: &str, args: &[String], from: CallFrom) -> Result<VerbFuture, VerbError> {
        let verb = A::Verb::parse(verb, args)?;
        let agent = self.0.clone();
        Ok(Box::pin(async move { agent.call_from(verb, from).await }))
    }

    fn start(&self, node: NodeHandle) -> Vec<tokio::task::JoinHandle<()>> {
        self.0.start(node)
    }
}
