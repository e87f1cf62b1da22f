//! `/api/v1`: the versioned API.
//!
//! Reads (no token):
//! - `GET /topology`: `{"tree": <as /archi>, "config": <as /get_configini>}`.
//! - `GET /alerts?from=&limit=`: `{"first", "next", "alerts": [{"index", "kind", "alert"}]}`;
//!   `limit` defaults to [`DEFAULT_LIMIT`] and is capped at [`MAX_LIMIT`]; pass `next` as the
//!   following `from`. Alerts older than `first` were dropped (the view is bounded).
//! - `GET /counters`: `{"vo": <the VO's stats>, "alerts_seen", "interfaces": ["origin/iface"],
//!   "vms": {"origin/iface": "vm"}}` (the interfaces that belong to a VM).
//! - `GET /vms`: `{"vms": [{"vm", "interfaces": ["origin/iface"], "rx": [..], "tx": [..]}]}`:
//!   byte deltas per sample interval of each VM, its interfaces summed, oldest first.
//! - `GET /actions`: `{"dry_run", "actions": [ActiveAction], "unreachable": ["HO: why"]}`: the
//!   actions of this process's drivers and of the HOs that run fast-path rules in other
//!   processes (asked through the tree; one that does not answer is listed in `unreachable`).
//! - `GET /policy`: `{"loaded", "dry_run", "rules": <TOML text or null>}`.
//!
//! Mutations (`Authorization: Bearer <token>`; checked before the body is read):
//! - `POST /release {"target"}` -> `{"released", "result"}` (every driver, remote HOs too)
//! - `POST /block {"target", "ttl_s"}` -> `{"blocked", "key", "ttl_s"}`
//! - `POST /dry-run {"enabled"}` -> `{"dry_run"}` (every driver, remote HOs too)
//! - `POST /policy/reload` with the rules as TOML text -> `{"reloaded": true}` (this process's
//!   drivers; an HO in another process re-reads its `--policy` on SIGHUP)
//!
//! Bodies are read only once the token checks out (at most 64 KiB, within the body timeout,
//! else 408), parsed strictly (unknown fields are refused) and a parse error is a 400 that
//! quotes serde's message, which names the field, line and column.

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::legacy::{config_json, query_params};
use super::{authorize, json, tree, ApiError, ApiState, Shared, BODY_LIMIT};

/// Alerts per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Most alerts per page.
pub const MAX_LIMIT: usize = 1000;
/// Longest manual block (a day): longer blocks belong in the policy's rules.
pub const MAX_TTL_S: u64 = 86_400;

/// The v1 routes (nested under `/api/v1`).
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/topology", get(topology))
        .route("/alerts", get(alerts))
        .route("/counters", get(counters))
        .route("/vms", get(vms))
        .route("/actions", get(actions))
        .route("/policy", get(policy))
        .route("/release", post(release))
        .route("/block", post(block))
        .route("/dry-run", post(dry_run))
        .route("/policy/reload", post(reload))
}

fn bad_request(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// Reads a request body, at most [`BODY_LIMIT`] bytes, within the body timeout. Called after
/// [`authorize`], so a caller without the token cannot make the server buffer or wait for
/// anything.
async fn read_body(state: &ApiState, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.http.limits.body_timeout;
    let read = tokio::time::timeout(limit, axum::body::to_bytes(body, BODY_LIMIT))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {}s (--http-body-timeout)",
                    limit.as_secs_f64()
                ),
            )
        })?;
    read.map_err(|e| {
        // The only error a complete, in-limit body can give is the limit itself.
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {BODY_LIMIT} bytes"),
            )
        } else {
            bad_request(format!("reading the request body: {e}"))
        }
    })
}

/// Parses a JSON body strictly, naming the problem on failure.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

async fn topology(State(state): State<Shared>) -> Response {
    json(serde_json::json!({ "tree": tree(&state).await, "config": config_json(&state) }))
}

async fn alerts(State(state): State<Shared>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let mut from = 0u64;
    let mut limit = DEFAULT_LIMIT;
    for (k, v) in query_params(&q, &["from", "limit"])? {
        let n: u64 = v.parse().map_err(|_| {
            bad_request(format!(
                "query parameter {k}: {v:?} is not a non-negative integer"
            ))
        })?;
        match k {
            "from" => from = n,
            _ => limit = usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT),
        }
    }
    Ok(json(state.view.page(from, limit)))
}

async fn counters(State(state): State<Shared>) -> Response {
    let interfaces: Vec<String> = state
        .view
        .interfaces()
        .into_iter()
        .map(|(o, i)| format!("{o}/{i}"))
        .collect();
    json(
        serde_json::json!({ "vo": state.vo.stats(), "alerts_seen": state.view.seen(), "interfaces": interfaces, "vms": state.view.interface_vms() }),
    )
}

async fn vms(State(state): State<Shared>) -> Response {
    json(serde_json::json!({ "vms": state.view.vms() }))
}

async fn actions(State(state): State<Shared>) -> Response {
    let mut actions = state.policy.active_actions();
    let (remote, unreachable) = state.remote.actions(&state.vo).await;
    actions.extend(remote);
    actions.sort_by_key(|a| a.since_unix_s);
    json(
        serde_json::json!({ "dry_run": state.policy.dry_run(), "actions": actions, "unreachable": unreachable }),
    )
}

async fn policy(State(state): State<Shared>) -> Response {
    let rules = state.policy.rules_text();
    json(
        serde_json::json!({ "loaded": rules.is_some(), "dry_run": state.policy.dry_run(), "rules": rules }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Release {
    target: String,
}

async fn release(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let body = read_body(&state, body).await?;
    let r: Release = parse(&body)?;
    let mut results = vec![state.policy.release(&r.target)];
    results.extend(state.remote.release(&state.vo, &r.target).await);
    let result = crate::policy_driver::merge_releases(results)?;
    tracing::info!(target = %r.target, %result, "API: release");
    Ok(json(
        serde_json::json!({ "released": r.target, "result": result }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Block {
    target: String,
    ttl_s: u64,
}

async fn block(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let body = read_body(&state, body).await?;
    let b: Block = parse(&body)?;
    if b.ttl_s == 0 || b.ttl_s > MAX_TTL_S {
        return Err(bad_request(format!(
            "ttl_s must be between 1 and {MAX_TTL_S} seconds (found {})",
            b.ttl_s
        )));
    }
    let key = state.policy.block(&b.target, b.ttl_s)?;
    tracing::info!(target = %b.target, ttl_s = b.ttl_s, %key, "API: block");
    Ok(json(
        serde_json::json!({ "blocked": b.target, "key": key, "ttl_s": b.ttl_s }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DryRun {
    enabled: bool,
}

async fn dry_run(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let body = read_body(&state, body).await?;
    let d: DryRun = parse(&body)?;
    state.policy.set_dry_run(d.enabled)?;
    state.remote.set_dry_run(&state.vo, d.enabled).await?;
    tracing::info!(enabled = d.enabled, "API: dry-run mode set");
    Ok(json(serde_json::json!({ "dry_run": d.enabled })))
}

async fn reload(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let body = read_body(&state, body).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|e| bad_request(format!("the policy must be UTF-8 TOML text: {e}")))?;
    state.policy.reload(text)?;
    tracing::info!(bytes = text.len(), "API: policy reloaded");
    Ok(json(serde_json::json!({ "reloaded": true })))
}
