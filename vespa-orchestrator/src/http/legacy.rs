//! The 2014 controller's endpoints: GET only, JSON. (2014 also answered
//! `Access-Control-Allow-Origin: *`; here CORS is only for the origins given with
//! `--cors-origin`, see [`super::access`].)
//!
//! Shapes, as a 2014 dashboard page expects them:
//! - `/archi`: the tree, `{"name", "kind", "host", "port", "children": [{"name", "kind",
//!   "host", "port", "listen", "children"}]}`: 2014's `name`, `host`, `port` and `children`,
//!   with the node's kind and listen address beside them.
//! - `/connect`: `"Ok"`, as 2014 answered (a page's check that the controller is there).
//! - `/recv_bytes`, `/trans_bytes`: the last 40 per-sample byte deltas, `[n, ...]`, oldest
//!   first; `/next_recv_bytes`, `/next_trans_bytes`: the latest delta, `n` (or `null` before
//!   two samples). 2014 watched one interface; `?iface=eth0` (and `&origin=<agent>`) picks
//!   one here, the default is the first interface that reported.
//! - `/get_alerts`: the last 100 alerts, oldest first, as the VO processed them.
//! - `/get_ip_connections`: `[{"ip", "value"}]`, connections per remote address summed over
//!   every connections agent's latest report, busiest first.
//! - `/get_topology`, `/get_link_stats`: the SDN controller agent's answer (503 without one).
//! - `/get_configini`: the topology in use (machines and nodes; no key, no agent params,
//!   which may hold credentials).

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use vespa_node::{AgentKind, Role};
use vespa_proto::verbs::SdnVerb;

use super::view::Direction;
use super::{call_node, json, tree, ApiError, ApiState, Shared};

/// Alerts `/get_alerts` returns.
const RECENT_ALERTS: usize = 100;

/// The 2014 routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/archi", get(archi))
        .route(
            "/recv_bytes",
            get(|s, q| deltas(s, q, Direction::Rx, false)),
        )
        .route(
            "/trans_bytes",
            get(|s, q| deltas(s, q, Direction::Tx, false)),
        )
        .route(
            "/next_recv_bytes",
            get(|s, q| deltas(s, q, Direction::Rx, true)),
        )
        .route(
            "/next_trans_bytes",
            get(|s, q| deltas(s, q, Direction::Tx, true)),
        )
        .route("/get_alerts", get(get_alerts))
        .route("/get_ip_connections", get(get_ip_connections))
        .route("/get_topology", get(|s| sdn(s, SdnVerb::GetTopology {})))
        .route("/get_link_stats", get(|s| sdn(s, SdnVerb::GetLinkStats {})))
        .route("/get_configini", get(get_configini))
        .route("/connect", get(|| async { json("Ok") }))
}

/// `key=value` pairs of a query string; only the names in `known` are accepted, so a typo
/// (`?ifcae=eth0`) is a 400 rather than silently ignored. Values here are interface and node
/// names and numbers, which never need percent-decoding.
pub(crate) fn query_params<'q>(
    query: &'q Option<String>,
    known: &[&str],
) -> Result<Vec<(&'q str, &'q str)>, ApiError> {
    let mut out = Vec::new();
    for pair in query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !known.contains(&k) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown query parameter {k:?} (known: {})",
                    known.join(", ")
                ),
            ));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn param<'q>(params: &[(&str, &'q str)], name: &str) -> Option<&'q str> {
    params.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

async fn archi(State(state): State<Shared>) -> Response {
    json(tree(&state).await)
}

async fn deltas(
    State(state): State<Shared>,
    RawQuery(q): RawQuery,
    dir: Direction,
    latest: bool,
) -> Result<Response, ApiError> {
    let params = query_params(&q, &["iface", "origin"])?;
    let (iface, origin) = (param(&params, "iface"), param(&params, "origin"));
    let found = state.view.deltas(origin, iface, dir);
    let d = match (found, iface.or(origin)) {
        (Some(d), _) => d,
        (None, None) => Vec::new(),
        (None, Some(_)) => {
            let known: Vec<String> = state
                .view
                .interfaces()
                .into_iter()
                .map(|(o, i)| format!("{o}/{i}"))
                .collect();
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no bandwidth samples for that interface (reporting: {})",
                    known.join(", ")
                ),
            ));
        }
    };
    Ok(if latest { json(d.last()) } else { json(d) })
}

async fn get_alerts(State(state): State<Shared>) -> Response {
    json(state.view.recent(RECENT_ALERTS))
}

async fn get_ip_connections(State(state): State<Shared>) -> Response {
    let rows: Vec<serde_json::Value> = state
        .view
        .connections()
        .into_iter()
        .map(|(ip, n)| serde_json::json!({ "ip": ip, "value": n }))
        .collect();
    json(rows)
}

/// The first SDN controller agent of the topology.
pub(crate) fn sdn_agent(state: &ApiState) -> Option<&str> {
    let is_sdn = |r: Role| {
        matches!(
            r,
            Role::Agent(
                AgentKind::ControllerFloodlight
                    | AgentKind::ControllerPox
                    | AgentKind::ControllerOsken
            )
        )
    };
    state
        .topology
        .nodes
        .iter()
        .find(|n| is_sdn(n.role))
        .map(|n| n.name.as_str())
}

async fn sdn(State(state): State<Shared>, verb: SdnVerb) -> Result<Response, ApiError> {
    let Some(agent) = sdn_agent(&state) else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no SDN controller agent in the topology (kind agent_controller_osken, _floodlight or _pox)"));
    };
    let text = call_node(&state, agent, verb)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("{agent}: {e}")))?;
    // Agents answer JSON text; anything else is passed on as a string rather than dropped.
    Ok(json(
        serde_json::from_str::<serde_json::Value>(&text).unwrap_or(serde_json::Value::String(text)),
    ))
}

/// The topology without secrets (see the module comment).
pub(crate) fn config_json(state: &ApiState) -> serde_json::Value {
    let t = &state.topology;
    let machines: Vec<serde_json::Value> = t
        .machines
        .iter()
        .map(|m| serde_json::json!({ "name": m.name, "address": m.address }))
        .collect();
    let nodes: Vec<serde_json::Value> = t
        .nodes
        .iter()
        .map(|n| serde_json::json!({ "name": n.name, "kind": n.role.as_str(), "location": n.location, "master": n.master, "port": n.port, "interfaces": n.interfaces }))
        .collect();
    serde_json::json!({ "source": t.source, "machines": machines, "nodes": nodes })
}

async fn get_configini(State(state): State<Shared>) -> Response {
    json(config_json(&state))
}
