//! Calls: the built-in verbs, and routing a call down the tree to the node it names.
//!
//! A node knows only its direct children (they registered). To reach a node further down,
//! `find_node` asks the children that can have children, concurrently, and the answer (which
//! child leads there) is cached; `call <node> <verb> ...` then goes to that child as the same
//! `call`, hop by hop, and the reply comes back up the same way.

use std::sync::Arc;

use vespa_proto::{Message, NodeKind};

use crate::node::{lock, Inner};
use crate::session::Session;
use crate::stats::inc;
use crate::verbs::{help_text, VerbFuture, VerbResult};

/// Answers `Call { id, .. }` from `session` on a task of its own (a slow verb, or one routed
/// down the tree, must not stop the connection's reader).
pub(crate) fn spawn_call(
    inner: Arc<Inner>,
    session: Arc<Session>,
    id: u64,
    verb: String,
    args: Vec<String>,
) {
    inc(&inner.counters.calls_served);
    tokio::spawn(async move {
        let destroy = verb == "destroy";
        let result = dispatch(inner.clone(), verb, args).await;
        let _ = session.ctl.send(Message::Reply { id, result }).await;
        if destroy {
            inner.request_destroy();
        }
    });
}

/// Runs one verb at this node. `destroy` only answers here; the caller starts it after the
/// reply is on its way.
pub(crate) fn dispatch(inner: Arc<Inner>, verb: String, args: Vec<String>) -> VerbFuture {
    Box::pin(async move {
        match verb.as_str() {
            "help" => Ok(help_text(&inner.name, &inner.verbs)),
            "list_slaves" => {
                let kids: Vec<_> = inner.children().into_iter().map(|(c, _)| c).collect();
                serde_json::to_string(&kids).map_err(|e| e.to_string())
            }
            "find_node" => {
                let [target] = args.as_slice() else {
                    return Err("usage: find_node <name>".into());
                };
                find_node(&inner, target)
                    .await
                    .and_then(|p| serde_json::to_string(&p).map_err(|e| e.to_string()))
            }
            "call" => call(inner, args).await,
            "stats" => serde_json::to_string(&inner.stats()).map_err(|e| e.to_string()),
            "get_alerts" => {
                let from = match args.first() {
                    None => 0,
                    Some(a) => a
                        .parse::<u64>()
                        .map_err(|_| format!("{a:?} is not an index"))?,
                };
                Ok(inner.get_alerts(from))
            }
            "destroy" => Ok(format!("destroying {} and its subtree", inner.name)),
            other => match inner.verbs.call(other, args) {
                Some(fut) => fut.await,
                None => Err(format!(
                    "{} has no verb {other:?} (`help` lists them)",
                    inner.name
                )),
            },
        }
    })
}

fn child_session(inner: &Inner, name: &str) -> Option<Arc<Session>> {
    inner
        .children()
        .into_iter()
        .find(|(c, _)| c.name == name)
        .map(|(_, s)| s)
}

/// The path from this node down to `target`, this node first.
pub(crate) async fn find_node(inner: &Arc<Inner>, target: &str) -> Result<Vec<String>, String> {
    if target == inner.name {
        return Ok(vec![inner.name.clone()]);
    }
    let kids = inner.children();
    if kids.iter().any(|(c, _)| c.name == target) {
        return Ok(vec![inner.name.clone(), target.to_string()]);
    }
    let timeout = inner.spec.settings.call_timeout;
    let asks = kids
        .iter()
        .filter(|(c, _)| c.kind != NodeKind::Agent)
        .map(|(c, s)| async move {
            let reply = s.call("find_node", vec![target.to_string()], timeout).await;
            (c.name.clone(), reply)
        });
    for (child, reply) in futures_util::future::join_all(asks).await {
        if let Ok(json) = reply {
            let below: Vec<String> = serde_json::from_str(&json)
                .map_err(|e| format!("bad find_node reply from {child}: {e}"))?;
            lock(&inner.route_cache).insert(target.to_string(), child);
            let mut path = vec![inner.name.clone()];
            path.extend(below);
            return Ok(path);
        }
    }
    Err(format!("no node named {target:?} below {}", inner.name))
}

/// `call <node> <verb> [args...]`.
async fn call(inner: Arc<Inner>, args: Vec<String>) -> VerbResult {
    let mut it = args.into_iter();
    let (Some(target), Some(verb)) = (it.next(), it.next()) else {
        return Err("usage: call <node> <verb> [args...]".into());
    };
    let rest: Vec<String> = it.collect();
    if target == inner.name {
        return dispatch(inner, verb, rest).await;
    }
    let timeout = inner.spec.settings.call_timeout;
    if let Some(s) = child_session(&inner, &target) {
        return s.call(&verb, rest, timeout).await;
    }
    let cached = lock(&inner.route_cache).get(&target).cloned();
    let via = match cached.and_then(|c| child_session(&inner, &c)) {
        Some(s) => s,
        None => {
            let path = find_node(&inner, &target).await?;
            let next = path.get(1).ok_or_else(|| format!("no route to {target}"))?;
            child_session(&inner, next).ok_or_else(|| format!("{next} disconnected"))?
        }
    };
    let mut fwd = vec![target, verb];
    fwd.extend(rest);
    via.call("call", fwd, timeout).await
}
