//! Floodlight's REST API: blocks through the static flow pusher (v1.x field names, or v0.90
//! names and paths) or through the firewall module; topology from the switch and link lists.
//!
//! Static flow entries are named `vespa-<block>-<switch index>-<src|dst>`; all values are
//! strings, as Floodlight requires, and no `actions` (v1.x) or empty `actions` (v0.90) means
//! drop. Floodlight answers 200 even when it refuses an entry, so the reply's `status` text
//! is checked (`Entry pushed`, `Entry <name> deleted`, `Rule added`).
//!
//! With the v1.x names a block with a time-to-live carries `hard_timeout` (TTL +
//! [`super::SWITCH_TTL_MARGIN`]); refreshing it pushes the same entries again, which replaces
//! them and restarts the timeout. v0.90's pusher and the firewall module take no timeout: there
//! only the agent's reaper ends a block. At start the pusher's list (`/list/all/json`) shows the
//! `vespa-<block>-...` entries still installed, and block ids continue above them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Map, Value};

use super::http::Http;
use super::{
    target_of_match, ActiveBlock, BlockId, BlockSpec, BlockTarget, SdnController, SdnState,
};
use crate::error::SdnError;
use crate::retry::RetryPolicy;
use vespa_proto::verbs::{HeldFlow, Target};

const NAME: &str = "floodlight";

/// Which generation of the REST API (field names and paths) to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodlightApi {
    /// v1.0–1.2 (and master, which keeps these paths as aliases): `/wm/staticflowpusher/json`,
    /// `eth_src`, `ipv4_src`, ...
    V1,
    /// v0.90: `/wm/staticflowentrypusher/json`, `src-mac`, `src-ip`, ...; no IPv6.
    V090,
}

/// How a block is expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodlightMode {
    /// Drop entries pushed on every switch.
    StaticFlow,
    /// DENY rules of the firewall module (which must be enabled, with ALLOW rules for normal
    /// traffic: an enabled firewall denies everything no rule allows).
    Firewall,
}

#[derive(Debug, Clone)]
pub struct FloodlightConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub api: FloodlightApi,
    pub mode: FloodlightMode,
    pub priority: u16,
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for FloodlightConfig {
    fn default() -> Self {
        FloodlightConfig {
            url: "http://127.0.0.1:8080".into(),
            api: FloodlightApi::V1,
            mode: FloodlightMode::StaticFlow,
            priority: 32767,
            timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        }
    }
}

/// A static flow entry's direction (`src`/`dst`) and match fields.
pub type FlowMatch = (&'static str, Map<String, Value>);

/// A VESPA static flow entry as the pusher lists it.
#[derive(Debug)]
struct Entry {
    name: String,
    id: BlockId,
    target: Option<Target>,
    /// Its `hard_timeout`, when it has one.
    hard_timeout_s: Option<u64>,
}

/// The block a listed entry belongs to: its cookie's, else its `vespa-<block>-...` name's
/// (an entry with another cookie, or another name, is not VESPA's).
fn entry_id(name: &str, fm: &Value) -> Option<BlockId> {
    match fm.get("cookie") {
        Some(c) => BlockId::of_cookie(number(c)?),
        None => name
            .strip_prefix("vespa-")?
            .split('-')
            .next()?
            .parse::<u64>()
            .ok()
            .map(BlockId),
    }
}

/// A number Floodlight wrote as a number or, as its serializers do, a string (a cookie is a
/// Java `long`: one with the top bit set comes out negative).
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| n.as_i64().map(|i| i as u64)),
        Value::String(s) => s
            .parse::<u64>()
            .ok()
            .or_else(|| s.parse::<i64>().ok().map(|i| i as u64)),
        _ => None,
    }
}

/// A Floodlight controller.
#[derive(Debug)]
pub struct Floodlight {
    http: Http,
    cfg: FloodlightConfig,
    state: SdnState,
}

/// Paths of the REST API.
pub const SWITCHES: &str = "/wm/core/controller/switches/json";
pub const LINKS: &str = "/wm/topology/links/json";
pub const FIREWALL_RULES: &str = "/wm/firewall/rules/json";
pub const ALL_FLOWS: &str = "/wm/core/switch/all/flow/json";
pub const ALL_PORTS: &str = "/wm/core/switch/all/port/json";

impl Floodlight {
    pub fn new(cfg: FloodlightConfig) -> Floodlight {
        Floodlight {
            http: Http::new(NAME, &cfg.url, cfg.timeout),
            state: SdnState::new(cfg.retry.clone()),
            cfg,
        }
    }

    /// The static flow pusher path of the configured API.
    pub fn pusher_path(&self) -> &'static str {
        match self.cfg.api {
            FloodlightApi::V1 => "/wm/staticflowpusher/json",
            FloodlightApi::V090 => "/wm/staticflowentrypusher/json",
        }
    }

    /// The DPIDs of the connected switches (`switchDPID` from v1.0, `dpid` in v0.90).
    pub async fn switches(&self) -> Result<Vec<String>, SdnError> {
        let v = self.http.get_json(SWITCHES).await?;
        let arr = v.as_array().ok_or_else(|| {
            self.http
                .bad(SWITCHES, format!("expected a list of switches, got {v}"))
        })?;
        arr.iter()
            .map(|s| {
                s.get("switchDPID")
                    .or_else(|| s.get("dpid"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        self.http
                            .bad(SWITCHES, format!("switch without switchDPID: {s}"))
                    })
            })
            .collect()
    }

    /// The static flow entries (without `switch` and `name`) dropping traffic from and to `t`.
    pub fn flow_matches(&self, t: &BlockTarget) -> Result<Vec<FlowMatch>, SdnError> {
        let unsupported = |why| SdnError::UnsupportedTarget {
            controller: NAME,
            target: t.to_string(),
            why,
        };
        let pairs: Vec<(&'static str, Vec<(&str, String)>)> = match (self.cfg.api, t) {
            (FloodlightApi::V1, BlockTarget::Mac(m)) => {
                vec![
                    ("src", vec![("eth_src", m.to_string())]),
                    ("dst", vec![("eth_dst", m.to_string())]),
                ]
            }
            (FloodlightApi::V1, BlockTarget::Ip(IpAddr::V4(ip))) => vec![
                (
                    "src",
                    vec![("eth_type", "0x0800".into()), ("ipv4_src", ip.to_string())],
                ),
                (
                    "dst",
                    vec![("eth_type", "0x0800".into()), ("ipv4_dst", ip.to_string())],
                ),
            ],
            (FloodlightApi::V1, BlockTarget::Ip(IpAddr::V6(ip))) => vec![
                (
                    "src",
                    vec![("eth_type", "0x86dd".into()), ("ipv6_src", ip.to_string())],
                ),
                (
                    "dst",
                    vec![("eth_type", "0x86dd".into()), ("ipv6_dst", ip.to_string())],
                ),
            ],
            (FloodlightApi::V090, BlockTarget::Mac(m)) => {
                vec![
                    ("src", vec![("src-mac", m.to_string())]),
                    ("dst", vec![("dst-mac", m.to_string())]),
                ]
            }
            (FloodlightApi::V090, BlockTarget::Ip(IpAddr::V4(ip))) => vec![
                (
                    "src",
                    vec![("ether-type", "0x0800".into()), ("src-ip", ip.to_string())],
                ),
                (
                    "dst",
                    vec![("ether-type", "0x0800".into()), ("dst-ip", ip.to_string())],
                ),
            ],
            (FloodlightApi::V090, BlockTarget::Ip(IpAddr::V6(_))) => {
                return Err(unsupported(
                    "the v0.90 static flow pusher has no IPv6 fields",
                ))
            }
        };
        Ok(pairs
            .into_iter()
            .map(|(dir, kv)| {
                (
                    dir,
                    kv.into_iter()
                        .map(|(k, v)| (k.to_string(), Value::String(v)))
                        .collect(),
                )
            })
            .collect())
    }

    /// The firewall rules denying traffic from and to `t`.
    pub fn firewall_rules(&self, t: &BlockTarget) -> Result<Vec<Value>, SdnError> {
        let p = self.cfg.priority.to_string();
        Ok(match t {
            BlockTarget::Mac(m) => vec![
                json!({ "src-mac": m.to_string(), "action": "deny", "priority": p }),
                json!({ "dst-mac": m.to_string(), "action": "deny", "priority": p }),
            ],
            BlockTarget::Ip(IpAddr::V4(ip)) => vec![
                json!({ "dl-type": "IPv4", "src-ip": format!("{ip}/32"), "action": "deny", "priority": p }),
                json!({ "dl-type": "IPv4", "dst-ip": format!("{ip}/32"), "action": "deny", "priority": p }),
            ],
            BlockTarget::Ip(IpAddr::V6(_)) => {
                return Err(SdnError::UnsupportedTarget {
                    controller: NAME,
                    target: t.to_string(),
                    why: "the firewall module matches IPv4 only",
                })
            }
        })
    }

    /// Checks the `status` text of a reply.
    fn expect_status(&self, what: &str, reply: &Value, wanted: &str) -> Result<(), SdnError> {
        let status = reply
            .get("status")
            .and_then(Value::as_str)
            .ok_or_else(|| self.http.bad(what, format!("no status in {reply}")))?;
        if status.contains(wanted) {
            Ok(())
        } else {
            Err(SdnError::Rejected {
                controller: NAME,
                what: what.to_string(),
                detail: status.to_string(),
            })
        }
    }

    async fn push_flow(&self, entry: &Value) -> Result<(), SdnError> {
        let reply = self
            .http
            .json(Method::POST, self.pusher_path(), entry)
            .await?;
        self.expect_status(self.pusher_path(), &reply, "Entry pushed")
    }

    async fn delete_flow(&self, name: &str) -> Result<(), SdnError> {
        let reply = self
            .http
            .json(Method::DELETE, self.pusher_path(), &json!({ "name": name }))
            .await?;
        self.expect_status(self.pusher_path(), &reply, "deleted")
    }

    async fn add_rule(&self, rule: &Value) -> Result<String, SdnError> {
        let reply = self.http.json(Method::POST, FIREWALL_RULES, rule).await?;
        self.expect_status(FIREWALL_RULES, &reply, "Rule added")?;
        match reply.get("rule-id") {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(self
                .http
                .bad(FIREWALL_RULES, format!("no rule-id in {reply}"))),
        }
    }

    async fn delete_rule(&self, id: &str) -> Result<(), SdnError> {
        let reply = self
            .http
            .json(Method::DELETE, FIREWALL_RULES, &json!({ "ruleid": id }))
            .await?;
        self.expect_status(FIREWALL_RULES, &reply, "deleted")
    }

    /// Pushes the block's static flow entries on every switch, recording their names in
    /// `handles` as they are accepted.
    async fn push_entries(
        &self,
        spec: &BlockSpec,
        handles: &mut Vec<String>,
    ) -> Result<(), SdnError> {
        let matches = self.flow_matches(&spec.target)?;
        let switches = self.switches().await?;
        if switches.is_empty() {
            return Err(SdnError::NoSwitch { controller: NAME });
        }
        let hard_timeout = match self.cfg.api {
            FloodlightApi::V1 => spec.hard_timeout_s(),
            FloodlightApi::V090 => None,
        };
        for (i, sw) in switches.iter().enumerate() {
            for (dir, m) in &matches {
                let name = format!("vespa-{}-{i}-{dir}", spec.id);
                let mut entry = Map::new();
                entry.insert("switch".into(), json!(sw));
                entry.insert("name".into(), json!(name));
                entry.insert("active".into(), json!("true"));
                entry.insert("priority".into(), json!(self.cfg.priority.to_string()));
                entry.insert("cookie".into(), json!(spec.id.cookie().to_string()));
                if let Some(t) = hard_timeout {
                    entry.insert("hard_timeout".into(), json!(t.to_string()));
                }
                entry.extend(m.clone());
                if self.cfg.api == FloodlightApi::V090 {
                    entry.insert("actions".into(), json!(""));
                }
                self.push_flow(&Value::Object(entry)).await?;
                handles.push(name);
            }
        }
        Ok(())
    }

    /// The path listing every static flow entry.
    fn list_path(&self) -> &'static str {
        match self.cfg.api {
            FloodlightApi::V1 => "/wm/staticflowpusher/list/all/json",
            FloodlightApi::V090 => "/wm/staticflowentrypusher/list/all/json",
        }
    }

    /// Every static flow entry VESPA pushed (`vespa-...`), by anyone: its name, the block id
    /// it carries and what the pusher lists for it.
    ///
    /// The list is `{"<dpid>": [{"<name>": <flow mod>}, ...]}` from v1.0 (Floodlight's
    /// `SFPEntryMapSerializer`: the flow mod with `cookie`, `hardTimeoutSec` and a `match` of
    /// OXM names, numbers as strings) or `{"<dpid>": {"<name>": <flow mod>}}` in v0.90 (`cookie`,
    /// `hardTimeout`, a `match` of `dataLayerSource`/`networkSource`...).
    async fn vespa_entries(&self) -> Result<Vec<Entry>, SdnError> {
        let v = self.http.get_json(self.list_path()).await?;
        let mut out = Vec::new();
        for entries in v.as_object().into_iter().flat_map(|m| m.values()) {
            let objs: Vec<&Value> = match entries {
                Value::Array(a) => a.iter().collect(),
                o @ Value::Object(_) => vec![o],
                _ => vec![],
            };
            let named = objs
                .into_iter()
                .filter_map(Value::as_object)
                .flat_map(|m| m.iter());
            for (name, fm) in named {
                if let Some(id) = entry_id(name, fm) {
                    out.push(Entry {
                        name: name.clone(),
                        id,
                        target: fm.get("match").and_then(target_of_match),
                        hard_timeout_s: ["hardTimeoutSec", "hardTimeout", "hard_timeout"]
                            .iter()
                            .find_map(|k| number(fm.get(*k)?))
                            .filter(|t| *t > 0),
                    });
                }
            }
        }
        Ok(out)
    }

    async fn undo(&self, handles: &[String]) {
        for h in handles {
            let r = match self.cfg.mode {
                FloodlightMode::StaticFlow => self.delete_flow(h).await,
                FloodlightMode::Firewall => self.delete_rule(h).await,
            };
            if let Err(e) = r {
                tracing::warn!(handle = ?h, error = ?crate::error::chain(&e), "could not undo a half-installed Floodlight block");
            }
        }
    }
}

impl SdnController for Floodlight {
    fn name(&self) -> &'static str {
        NAME
    }

    fn state(&self) -> &SdnState {
        &self.state
    }

    async fn install(&self, spec: &BlockSpec) -> Result<Vec<String>, SdnError> {
        let mut handles = Vec::new();
        let res: Result<(), SdnError> = async {
            match self.cfg.mode {
                FloodlightMode::StaticFlow => self.push_entries(spec, &mut handles).await?,
                FloodlightMode::Firewall => {
                    for rule in self.firewall_rules(&spec.target)? {
                        handles.push(self.add_rule(&rule).await?);
                    }
                }
            }
            Ok(())
        }
        .await;
        match res {
            Ok(()) => Ok(handles),
            Err(e) => {
                self.undo(&handles).await;
                Err(e)
            }
        }
    }

    /// Pushes the v1.x entries again (same names: they replace the old ones, with the new
    /// `hard_timeout`). Nothing else holds a timeout.
    async fn reinstall(&self, spec: &BlockSpec) -> Result<Option<Vec<String>>, SdnError> {
        if self.cfg.mode != FloodlightMode::StaticFlow || self.cfg.api != FloodlightApi::V1 {
            return Ok(None);
        }
        let mut handles = Vec::new();
        self.push_entries(spec, &mut handles).await?;
        Ok(Some(handles))
    }

    /// The highest `<block>` among the `vespa-<block>-...` static entries (the firewall's rules
    /// carry no block id: None).
    async fn highest_installed(&self) -> Option<Result<u64, SdnError>> {
        if self.cfg.mode == FloodlightMode::Firewall {
            return None;
        }
        Some(
            self.vespa_entries()
                .await
                .map(|entries| entries.iter().map(|e| e.id.0).max().unwrap_or(0)),
        )
    }

    async fn uninstall(&self, block: &ActiveBlock) -> Result<(), SdnError> {
        for h in &block.handles {
            match self.cfg.mode {
                FloodlightMode::StaticFlow => self.delete_flow(h).await?,
                FloodlightMode::Firewall => self.delete_rule(h).await?,
            }
        }
        Ok(())
    }

    /// Floodlight cannot delete by cookie; stray entries are found by name (`vespa-...`) in
    /// the pusher's list, or by being DENY rules on the firewall... which may be the
    /// operator's own, so in firewall mode only the book's rules are removed.
    async fn purge(&self) -> Result<(), SdnError> {
        if self.cfg.mode == FloodlightMode::Firewall {
            return Ok(());
        }
        for e in self.vespa_entries().await? {
            self.delete_flow(&e.name).await?;
        }
        Ok(())
    }

    /// VESPA's static entries, by block: the pusher's list is what the switches are told to
    /// hold (it re-pushes them to a switch that reconnects, and forgets an entry whose flow
    /// expired). The firewall's rules carry no block id: None there.
    async fn held(&self) -> Option<Result<Vec<HeldFlow>, SdnError>> {
        if self.cfg.mode == FloodlightMode::Firewall {
            return None;
        }
        let entries = match self.vespa_entries().await {
            Ok(e) => e,
            Err(e) => return Some(Err(e)),
        };
        let mut by_id: BTreeMap<u64, HeldFlow> = BTreeMap::new();
        for e in entries {
            let h = by_id.entry(e.id.0).or_insert(HeldFlow {
                id: e.id.0,
                target: None,
                remaining_s: e.hard_timeout_s,
                flows: 0,
                known: false,
            });
            h.flows = h.flows.saturating_add(1);
            h.target = h.target.or(e.target);
            // The pusher keeps no age: the entry's whole timeout is the most it has left.
            h.remaining_s = match (h.remaining_s, e.hard_timeout_s) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        Some(Ok(by_id.into_values().collect()))
    }

    /// Floodlight deletes static entries by name only: every entry of block `id` in the
    /// pusher's list (by its cookie, or its `vespa-<id>-` name) is deleted.
    async fn remove_cookie(&self, id: BlockId) -> Option<Result<(), SdnError>> {
        if self.cfg.mode == FloodlightMode::Firewall {
            return None;
        }
        Some(
            async {
                for e in self.vespa_entries().await? {
                    if e.id == id {
                        self.delete_flow(&e.name).await?;
                    }
                }
                Ok(())
            }
            .await,
        )
    }

    /// `{"switches":[{"dpid":"00:..:01","address":"/10.0.0.1:5000","connected_since":..,
    /// "openflow_version":".."}],"links":[{"src":"..","src_port":1,"dst":"..","dst_port":2,
    /// "type":"internal","direction":"bidirectional","latency":0}]}`.
    async fn fetch_topology(&self) -> Result<Value, SdnError> {
        let sw = self.http.get_json(SWITCHES).await?;
        let links = self.http.get_json(LINKS).await?;
        let sw_arr = sw
            .as_array()
            .ok_or_else(|| self.http.bad(SWITCHES, "expected a list"))?;
        let links_arr = links
            .as_array()
            .ok_or_else(|| self.http.bad(LINKS, "expected a list"))?;
        let switches: Vec<Value> = sw_arr
            .iter()
            .map(|s| {
                json!({
                    "dpid": s.get("switchDPID").or_else(|| s.get("dpid")).cloned().unwrap_or(Value::Null),
                    "address": s.get("inetAddress").cloned().unwrap_or(Value::Null),
                    "connected_since": s.get("connectedSince").cloned().unwrap_or(Value::Null),
                    "openflow_version": s.get("openFlowVersion").cloned().unwrap_or(Value::Null),
                })
            })
            .collect();
        let links: Vec<Value> = links_arr
            .iter()
            .map(|l| {
                json!({
                    "src": l["src-switch"], "src_port": l["src-port"], "dst": l["dst-switch"], "dst_port": l["dst-port"],
                    "type": l.get("type").cloned().unwrap_or(Value::Null),
                    "direction": l.get("direction").cloned().unwrap_or(Value::Null),
                    "latency": l.get("latency").cloned().unwrap_or(Value::Null),
                })
            })
            .collect();
        Ok(json!({ "switches": switches, "links": links }))
    }

    /// The links with their latency (what 2014's `get_link_stats` returned) and the port
    /// counters of every switch.
    async fn fetch_link_stats(&self) -> Result<Value, SdnError> {
        let links = self.http.get_json(LINKS).await?;
        let ports = self.http.get_json(ALL_PORTS).await?;
        Ok(json!({ "links": links, "ports": ports }))
    }

    async fn fetch_flow_stats(&self) -> Result<Value, SdnError> {
        self.http.get_json(ALL_FLOWS).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_entry_is_vespas_by_its_cookie_or_else_its_name() {
        let id = BlockId(7);
        let fm = json!({ "cookie": id.cookie().to_string() });
        assert_eq!(entry_id("any-name", &fm), Some(id));
        // Someone else's cookie on a vespa-named entry: not ours.
        assert_eq!(entry_id("vespa-7-0-src", &json!({ "cookie": "12" })), None);
        // No cookie listed: the name says.
        assert_eq!(entry_id("vespa-7-0-src", &json!({})), Some(id));
        assert_eq!(entry_id("operator-1", &json!({})), None);
        // A Java long: negative when the top bit is set.
        assert_eq!(number(&json!("-1")), Some(u64::MAX));
        assert_eq!(number(&json!(310)), Some(310));
        assert_eq!(number(&json!("x")), None);
    }

    #[test]
    fn both_list_shapes_name_their_target() {
        let v1 = json!({ "eth_type": "0x800", "ipv4_src": "10.0.0.9" });
        assert_eq!(target_of_match(&v1), Some(Target::Ip([10, 0, 0, 9].into())));
        // v0.90 lists every field; the wildcarded ones are zeros.
        let v090 = json!({
            "dataLayerSource": "00:00:00:00:00:00",
            "dataLayerDestination": "52:54:00:ab:cd:01",
            "networkSource": "0.0.0.0",
            "networkDestination": "0.0.0.0",
        });
        assert_eq!(
            target_of_match(&v090).map(|t| t.to_string()),
            Some("52:54:00:ab:cd:01".into())
        );
    }
}
