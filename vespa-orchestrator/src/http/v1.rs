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
//! - `GET /decisions[?format=json|text]`: as `/actions`; `text`: the blocked targets, one per
//!   line (an importable block list, [`crate::decisions::format`]).
//! - `GET /decisions?all=true` or `?since=<unix s|15m|2h|7d>` (both may be given):
//!   `{"decisions": [Decision]}` from the decision ledger, ended ones with their end reason
//!   (503 without a ledger); `text`: a table.
//! - `GET /decisions/<id>[?format=json|text]`: `{"decision", "events"}`, one decision of the
//!   ledger and its story (alert, decision, actuator's reply, end); 404 for an unknown id.
//! - `GET /allowlist[?format=json|text]`: `{"allowlist": [AllowEntry]}`; `text`: one target
//!   per line.
//! - `GET /firewall`: `{"firewalls": [FirewallReport]}`: each `agent_firewall` node of the
//!   topology, asked through the tree for its blocks and totals ([`super::firewall`]).
//!
//! Mutations (`Authorization: Bearer <token>`; checked before the body is read):
//! - `POST /decisions[?ttl_s=N]` with `{"target", "ttl_s"?, "reason"?}`, a JSON list of them,
//!   or a text block list (`Content-Type: text/plain`, or detected) -> `{"added": [key],
//!   "duplicates"}`: all or nothing ([`crate::decisions`]); `ttl_s` is the TTL of entries
//!   without one (default [`crate::decisions::DEFAULT_TTL_S`]); up to [`MAX_IMPORT_BYTES`].
//! - `DELETE /decisions/<key or target>` -> `{"deleted", "result"}` (every driver, remote HOs
//!   too; a prefix may be written as it is, `/decisions/10.0.0.0/24`)
//! - `POST /allowlist {"target", "note"?}` -> `{"allowed"}`;
//!   `DELETE /allowlist/<target>` -> `{"disallowed"}`
//! - `POST /release {"target"}` -> `{"released", "result"}` (as `DELETE /decisions/<target>`)
//! - `POST /block {"target", "ttl_s"}` -> `{"blocked", "key", "ttl_s"}` (as `POST /decisions`)
//! - `POST /dry-run {"enabled"}` -> `{"dry_run"}` (every driver, remote HOs too)
//! - `POST /policy/reload` with the rules as TOML text -> `{"reloaded": true}` (this process's
//!   drivers; an HO in another process re-reads its `--policy` on SIGHUP)
//!
//! Bodies are read only once the token checks out (at most 64 KiB, a block list 1 MiB, within
//! the body timeout, else 408), parsed strictly (unknown fields are refused) and a parse error
//! is a 400 that quotes serde's message, which names the field, line and column.

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use vespa_proto::verbs::{BlockEntry, Target, Word};

use super::legacy::{config_json, query_params};
use super::{authorize, json, tree, ApiError, ApiState, Shared, BODY_LIMIT};
use crate::decisions::format::{self, Format};
use crate::decisions::{history, Placed, MAX_IMPORT_BYTES};
use crate::ledger::Query;

pub use crate::decisions::MAX_TTL_S;

/// Alerts per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Most alerts per page.
pub const MAX_LIMIT: usize = 1000;

/// The v1 routes (nested under `/api/v1`).
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/topology", get(topology))
        .route("/alerts", get(alerts))
        .route("/counters", get(counters))
        .route("/vms", get(vms))
        .route("/actions", get(actions))
        .route("/policy", get(policy))
        .route("/decisions", get(decisions).post(decide))
        .route("/decisions/{*key}", get(show).delete(undecide))
        .route("/allowlist", get(allowlist).post(allow))
        .route("/allowlist/{*target}", delete(disallow))
        .route("/firewall", get(firewall))
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
    read_body_up_to(state, body, BODY_LIMIT).await
}

/// [`read_body`] with another bound (a block list).
async fn read_body_up_to(state: &ApiState, body: Body, max: usize) -> Result<Bytes, ApiError> {
    let limit = state.http.limits.body_timeout;
    let read = tokio::time::timeout(limit, axum::body::to_bytes(body, max))
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
                format!("request body larger than {max} bytes"),
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
    json(state.decisions().list(&state.vo).await)
}

/// `?format=json|text` of a list.
fn list_format(q: &Option<String>) -> Result<Format, ApiError> {
    let mut f = Format::Json;
    for (_, v) in query_params(q, &["format"])? {
        f = match v {
            "json" => Format::Json,
            "text" => Format::Text,
            _ => return Err(bad_request(format!("format={v}: expected json or text"))),
        };
    }
    Ok(f)
}

/// A text answer (a list, one item per line).
fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// `GET /decisions/<id>`: a decision of the ledger and its story.
async fn show(
    State(state): State<Shared>,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let f = list_format(&q)?;
    let id: i64 = key.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{key:?} is not a decision id (GET /decisions/<id>, the ids of ?all=true)"),
        )
    })?;
    let story = state.decisions().show(id).await?;
    Ok(match f {
        Format::Json => json(story),
        Format::Text => text(history::story_text(&story)),
    })
}

async fn decisions(
    State(state): State<Shared>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    // History (`all`, `since`) comes from the ledger; without, what is in force.
    let mut ledger_query: Option<Query> = None;
    let mut f = Format::Json;
    for (k, v) in query_params(&q, &["format", "all", "since"])? {
        match k {
            "format" => f = list_format(&Some(format!("format={v}")))?,
            "all" => {
                if !matches!(v, "" | "true" | "1") {
                    return Err(bad_request(format!("all={v}: expected true")));
                }
                ledger_query.get_or_insert_with(Query::default);
            }
            _ => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let since = history::parse_since(v, now).map_err(bad_request)?;
                ledger_query.get_or_insert_with(Query::default).since = Some(since);
            }
        }
    }
    if let Some(lq) = ledger_query {
        let h = state.decisions().history(&lq).await?;
        return Ok(match f {
            Format::Json => json(h),
            Format::Text => text(history::history_text(&h)),
        });
    }
    let listing = state.decisions().list(&state.vo).await;
    Ok(match f {
        Format::Json => json(listing),
        Format::Text => text(format::to_text(&listing)),
    })
}

/// `POST /decisions`: one entry, a JSON list, or a text list; all or nothing.
async fn decide(
    State(state): State<Shared>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let mut default_ttl = None;
    for (k, v) in query_params(&q, &["ttl_s"])? {
        default_ttl = Some(v.parse::<u64>().map_err(|_| {
            bad_request(format!(
                "query parameter {k}: {v:?} is not a whole number of seconds"
            ))
        })?);
    }
    let body = read_body_up_to(&state, body, MAX_IMPORT_BYTES).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let f = if content_type.starts_with("text/plain") {
        Format::Text
    } else if content_type.starts_with("application/json") {
        Format::Json
    } else {
        Format::detect(&body)
    };
    let entries = format::items(&body, f).map_err(|r| bad_request(r.to_string()))?;
    let added = state.decisions().add(entries, default_ttl).await?;
    tracing::info!(
        count = added.added.len(),
        duplicates = added.duplicates,
        "API: decisions added"
    );
    Ok(json(added))
}

async fn undecide(
    State(state): State<Shared>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let result = state.decisions().delete(&state.vo, &key).await?;
    Ok(json(
        serde_json::json!({ "deleted": key, "result": result }),
    ))
}

async fn allowlist(
    State(state): State<Shared>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let f = list_format(&q)?;
    let entries = state.decisions().allowlist();
    Ok(match f {
        Format::Json => json(serde_json::json!({ "allowlist": entries })),
        Format::Text => text(entries.iter().map(|e| format!("{}\n", e.target)).collect()),
    })
}

/// A target of a request, or a 400 that says why not.
fn target(word: &str) -> Result<Target, ApiError> {
    Target::parse_word(word).map_err(bad_request)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Allow {
    target: String,
    #[serde(default)]
    note: Option<String>,
}

async fn allow(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let body = read_body(&state, body).await?;
    let a: Allow = parse(&body)?;
    let allowed = state
        .decisions()
        .allow(&target(&a.target)?, a.note.as_deref())?;
    Ok(json(serde_json::json!({ "allowed": allowed })))
}

async fn disallow(
    State(state): State<Shared>,
    Path(t): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let disallowed = state.decisions().disallow(&target(&t)?)?;
    Ok(json(serde_json::json!({ "disallowed": disallowed })))
}

async fn firewall(State(state): State<Shared>) -> Response {
    json(serde_json::json!({ "firewalls": super::firewall::reports(&state).await }))
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
    let result = state.decisions().delete(&state.vo, &r.target).await?;
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
    let entry = BlockEntry {
        target: target(&b.target)?,
        ttl_s: Some(b.ttl_s),
        reason: None,
    };
    let added = state
        .decisions()
        .add(Placed::numbered(vec![entry]), None)
        .await?;
    let key = added.added.into_iter().next().unwrap_or_default();
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
