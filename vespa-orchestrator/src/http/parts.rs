//! Wiring the API into the process that runs the VO.
//!
//! The API needs two things from the node runtime at two different moments: an alert handler
//! in the VO's [`Hooks`] before the VO is built, and the VO's [`NodeHandle`] once it is.
//! [`ApiParts`] holds what is shared between the two (metrics, view, policy, token), so the
//! binary, the policy and tests wire it the same way.

use std::sync::Arc;

use vespa_node::{AgentRef, Hooks, NodeHandle, Topology};

use super::{ApiState, ApiToken, HttpOptions, VoView};
use crate::control::{NoPolicy, PolicyControl};
use crate::decisions::verbs::VoPolicyVerbs;
use crate::decisions::Decisions;
use crate::metrics::Metrics;
use crate::policy_driver::RemoteDrivers;

/// The API's shared pieces, before the VO exists.
pub struct ApiParts {
    /// Updated by the VO's alert handler and by the policy (actuator acknowledgements).
    pub metrics: Arc<Metrics>,
    /// The alerts as the VO processed them.
    pub view: Arc<VoView>,
    topology: Arc<Topology>,
    token: Option<ApiToken>,
    policy: Arc<dyn PolicyControl>,
    remote: RemoteDrivers,
    http: HttpOptions,
    ledger: Option<crate::ledger::Ledger>,
}

impl ApiParts {
    /// Parts for `topology`, with [`NoPolicy`] until [`ApiParts::with_policy`].
    pub fn new(topology: &Topology, token: Option<ApiToken>) -> ApiParts {
        let metrics = Arc::new(Metrics::default());
        let view = VoView::new(topology.settings.keep_alerts, metrics.clone());
        ApiParts {
            metrics,
            view,
            topology: Arc::new(topology.clone()),
            token,
            policy: Arc::new(NoPolicy),
            remote: RemoteDrivers::default(),
            http: HttpOptions::default(),
            ledger: None,
        }
    }

    /// Serves `policy` behind `/api/v1/{actions,decisions,allowlist,policy,release,block,
    /// dry-run,policy/reload}` (and the VO's verbs, [`ApiParts::add_vo_verbs`]).
    pub fn with_policy(mut self, policy: Arc<dyn PolicyControl>) -> ApiParts {
        self.policy = policy;
        self
    }

    /// Reads the decisions' history and stories from `ledger`.
    pub fn with_ledger(mut self, ledger: Option<crate::ledger::Ledger>) -> ApiParts {
        self.ledger = ledger;
        self
    }

    /// Lists and releases, through the VO, what the fast-path rules of HOs in other
    /// processes hold.
    pub fn with_remote(mut self, remote: RemoteDrivers) -> ApiParts {
        self.remote = remote;
        self
    }

    /// Serves with these timeouts, connection limit, host names and CORS origins (default:
    /// [`HttpOptions::default`]: the default limits, no extra name, no CORS).
    pub fn with_http(mut self, http: HttpOptions) -> ApiParts {
        self.http = http;
        self
    }

    /// Adds the API's alert handler to the VO's hooks (run it on the VO's only).
    pub fn add_vo_handler(&self, hooks: &mut Hooks) {
        hooks.alert_handlers.push(self.view.handler());
    }

    /// Gives the VO the verbs of decisions by hand ([`crate::decisions::verbs`]), over the
    /// same policy as the API (whether or not the API is served).
    pub fn add_vo_verbs(&self, hooks: &mut Hooks) {
        // Each call records the key that made it (`verbs::identity`).
        hooks.agent = Some(AgentRef::new(VoPolicyVerbs::new(self.decisions())));
    }

    /// The operator's decisions over these parts' policy and remote HOs.
    pub fn decisions(&self) -> Decisions {
        Decisions::new(self.policy.clone(), self.remote.clone()).with_ledger(self.ledger.clone())
    }

    /// The handlers' state, once the VO is built.
    pub fn state(&self, vo: NodeHandle) -> ApiState {
        ApiState {
            registry: self.metrics.registry(vo.clone()),
            vo,
            topology: self.topology.clone(),
            view: self.view.clone(),
            policy: self.policy.clone(),
            remote: self.remote.clone(),
            token: self.token.clone(),
            http: self.http.clone(),
            ledger: self.ledger.clone(),
        }
    }
}
