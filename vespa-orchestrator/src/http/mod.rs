//! The orchestrator's HTTP API: the 2014 dashboard endpoints, a versioned API, `/metrics`.
//!
//! It runs in the process that hosts the VO and reads only what the VO has: the alerts it
//! processes (through [`VoView`], an alert handler), its node handle (the tree, calls to
//! agents), the topology, the policy behind [`PolicyControl`] ([`crate::control`]) and the
//! metrics ([`crate::metrics`]).
//!
//! - [`legacy`]: the GET-only JSON endpoints of 2014 (`/archi`, `/recv_bytes`, ...).
//! - [`v1`]: `/api/v1/...`: reads (topology, alerts with paging, counters, actions and
//!   decisions, the allowlist, policy, the kernel firewalls: [`firewall`]) and mutations (decisions and the allowlist by hand,
//!   release, block, dry-run, policy reload) that need a bearer token.
//! - `/metrics`: the registry of [`crate::metrics`] in OpenMetrics text.
//!
//! Every error is JSON, `{"error": "..."}`, with the status saying whose fault it is: 400 bad
//! request body or query, 401 no or wrong token, 404 unknown route or thing, 405 wrong
//! method, 408 body not sent in time, 413 body over [`BODY_LIMIT`], 421 a `Host` that is not
//! this server's, 502 an agent failed, 503 not available (no token configured, no policy, no
//! SDN agent, every connection busy). The 2014 server answered anything it did not know with
//! a Python traceback; a client here can always parse the answer.
//!
//! Around the routes: [`access`] refuses requests for another host (DNS rebinding) and adds
//! CORS headers only for the origins configured; [`server`] accepts connections under a
//! limit and times out slow heads, bodies and idle connections ([`HttpOptions`]).

mod access;
mod dashboard;
pub mod firewall;
pub mod legacy;
mod parts;
mod server;
mod token;
pub mod v1;
pub mod view;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Router};
use prometheus_client::registry::Registry;
use vespa_node::{NodeHandle, Role, Topology};
use vespa_proto::verbs::{NodeVerb, Verb};

use crate::control::{PolicyControl, PolicyError};

pub use access::{CorsOrigin, HostName};
pub use parts::ApiParts;
pub use server::{
    Limits, DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
};
pub use token::{ApiToken, TokenError};
pub use view::VoView;

/// Largest request body (JSON commands, policy text).
pub const BODY_LIMIT: usize = 64 * 1024;

/// How long a read of the tree or an agent may take before the API answers without it.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the handlers read.
pub struct ApiState {
    /// The VO, for calls down the tree and its counters.
    pub vo: NodeHandle,
    /// The topology the process runs (kinds of nodes, the SDN agent).
    pub topology: Arc<Topology>,
    /// Alerts as processed by the VO.
    pub view: Arc<VoView>,
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// The policy (or [`NoPolicy`](crate::control::NoPolicy)).
    pub policy: Arc<dyn PolicyControl>,
    /// The HOs running fast-path rules in other processes, asked through the VO.
    pub remote: crate::policy_driver::RemoteDrivers,
    /// The token mutations need; `None` disables mutations (503).
    pub token: Option<ApiToken>,
    /// Timeouts, connection limit, accepted host names and CORS origins.
    pub http: HttpOptions,
    /// The decision ledger, when the process keeps one.
    pub ledger: Option<crate::ledger::Ledger>,
}

impl ApiState {
    /// The operator's decisions over this state's policy and remote HOs; blocks and
    /// releases are recorded as the API token's (its id, never the token).
    pub fn decisions(&self) -> crate::decisions::Decisions {
        let d = crate::decisions::Decisions::new(self.policy.clone(), self.remote.clone())
            .with_ledger(self.ledger.clone());
        match &self.token {
            Some(t) => d.by(t.id()),
            None => d,
        }
    }
}

/// How the server treats connections and requests (`vespa-orchestrator run --http-*`,
/// `--cors-origin`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpOptions {
    /// Timeouts and the connection limit.
    pub limits: Limits,
    /// Names the API answers to besides its listen address (and `localhost` on loopback).
    pub hosts: Vec<HostName>,
    /// Origins whose pages may read the API; none: no CORS header at all.
    pub cors_origins: Vec<CorsOrigin>,
}

type Shared = Arc<ApiState>;

/// An error answer: a status and a sentence, sent as `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        let status = match e {
            PolicyError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            PolicyError::Invalid(_) => StatusCode::BAD_REQUEST,
            PolicyError::NotFound(_) => StatusCode::NOT_FOUND,
            PolicyError::ActuatorFailed(_) => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut res = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"vespa\""),
            );
        }
        res
    }
}

/// A JSON 200 answer.
pub(crate) fn json(v: impl serde::Serialize) -> Response {
    match serde_json::to_string(&v) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the answer: {e}"),
        )
        .into_response(),
    }
}

/// Checks the bearer token of a mutation: 503 when the server has none, 401 when the request
/// has none or another one.
pub(crate) fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "mutations are disabled: no API token configured (start the orchestrator with --api-token-file)"));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs an `Authorization: Bearer <token>` header",
        )),
        Some(p) if token.matches(p.trim()) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong API token")),
    }
}

/// Calls `verb` on node `target` (the VO itself or any node below it), bounded in time.
pub(crate) async fn call_node(
    state: &ApiState,
    target: &str,
    verb: impl Verb,
) -> Result<String, String> {
    let name = verb.name();
    match tokio::time::timeout(CALL_TIMEOUT, state.vo.call(target, verb)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{target} did not answer {name} within {CALL_TIMEOUT:?}"
        )),
    }
}

/// The tree as the VO sees it now: each node's name, kind (as in the topology when it is
/// there, else the kind it registered with), listen address and children. A node that does
/// not answer is listed with an `error` instead of children.
pub(crate) async fn tree(state: &ApiState) -> serde_json::Value {
    let vo = state.vo.name().to_string();
    let children = children_of(state, &vo).await;
    let mut kids = Vec::new();
    for child in children.unwrap_or_default() {
        let name = child["name"].as_str().unwrap_or_default().to_string();
        let mut entry = node_entry(state, &child);
        if child["kind"] != "Agent" {
            match children_of(state, &name).await {
                Ok(grand) => {
                    entry["children"] = grand.iter().map(|g| node_entry(state, g)).collect()
                }
                Err(e) => entry["error"] = e.into(),
            }
        }
        kids.push(entry);
    }
    let (host, port) = host_port(state, &vo, None);
    serde_json::json!({ "name": vo, "kind": Role::Vo.as_str(), "host": host, "port": port, "children": kids })
}

/// The 2014 `host` and `port` of a node: where it listens, as it said when it registered
/// (`listen`), else as the topology places it (its machine's address and its port).
fn host_port(
    state: &ApiState,
    name: &str,
    listen: Option<&serde_json::Value>,
) -> (serde_json::Value, serde_json::Value) {
    let said = listen
        .and_then(serde_json::Value::as_str)
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok());
    let at = said.or_else(|| {
        state
            .topology
            .node(name)
            .map(|d| state.topology.listen_addr(d))
    });
    match at {
        Some(a) => (a.ip().to_string().into(), a.port().into()),
        None => (serde_json::Value::Null, serde_json::Value::Null),
    }
}

async fn children_of(state: &ApiState, node: &str) -> Result<Vec<serde_json::Value>, String> {
    let text = call_node(state, node, NodeVerb::ListSlaves {}).await?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{node} answered list_slaves with something else than a list: {e}"))
}

fn node_entry(state: &ApiState, child: &serde_json::Value) -> serde_json::Value {
    let name = child["name"].as_str().unwrap_or_default();
    let kind = state.topology.node(name).map_or_else(
        || child["kind"].as_str().unwrap_or("?").to_lowercase(),
        |d| d.role.as_str().to_string(),
    );
    let (host, port) = host_port(state, name, Some(&child["listen_addr"]));
    serde_json::json!({ "name": name, "kind": kind, "host": host, "port": port, "listen": child["listen_addr"], "children": [] })
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint (the API is under /api/v1/; the 2014 endpoints are /archi, /recv_bytes, ...)")
}

/// Gives the errors axum answers by itself (405, 413, extractor rejections) the same JSON
/// shape as ours; JSON answers pass through untouched.
async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this endpoint".to_string(),
        StatusCode::PAYLOAD_TOO_LARGE => format!("request body larger than {BODY_LIMIT} bytes"),
        _ if !text.is_empty() => text,
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let mut out = ApiError::new(status, message).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

async fn metrics_endpoint(State(state): State<Shared>) -> Response {
    let body = crate::metrics::render(&state.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        Body::from(body),
    )
        .into_response()
}

/// The whole API, as served on `listen` (the Host check accepts its address).
pub fn router(state: Arc<ApiState>, listen: SocketAddr) -> Router {
    let access = Arc::new(access::Access::new(
        listen,
        &state.http.hosts,
        &state.http.cors_origins,
    ));
    Router::new()
        .merge(legacy::routes())
        .merge(dashboard::routes())
        .nest("/api/v1", v1::routes())
        .route("/metrics", get(metrics_endpoint))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::map_response(json_errors))
        .layer(middleware::from_fn_with_state(access, access::guard))
        .with_state(state)
}

/// Serves the API on `listener` within `state.http`'s limits until `shutdown` completes;
/// then lets the requests in progress finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listen = listener.local_addr()?;
    let limits = state.http.limits;
    server::run(listener, router(state, listen), limits, shutdown).await
}
