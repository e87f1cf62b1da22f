//! os-ken's `ofctl_rest` (os-ken 1.4.1; the Ryu REST API) driving OpenFlow 1.3 switches.
//!
//! A block is a pair of drop flows per switch (source and destination), table 0, high
//! priority, marked with the block's cookie; releasing deletes by cookie (exact cookie mask),
//! so nothing else on the switch is touched. A block with a time-to-live also carries a
//! `hard_timeout` (TTL + [`super::SWITCH_TTL_MARGIN`]), so the switch ends it even if the
//! agent does not; refreshing the block adds its flows again, which restarts that timeout.
//! Requests:
//! `POST /stats/flowentry/add {"dpid":1,"table_id":0,"priority":40000,"cookie":C,
//! "hard_timeout":360,"match":{"eth_src":"52:54:00:12:34:56"},"actions":[]}` and
//! `POST /stats/flowentry/delete {"dpid":1,"table_id":0,"cookie":C,"cookie_mask":2^64-1,"match":{}}`.
//! At start the flow tables (`GET /stats/flow/<dpid>`) show the VESPA cookies still installed,
//! and block ids continue above them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::http::Http;
use super::{
    target_of_match, ActiveBlock, BlockId, BlockSpec, BlockTarget, SdnController, SdnState,
    COOKIE_TAG, COOKIE_TAG_MASK,
};
use crate::error::SdnError;
use crate::retry::RetryPolicy;
use vespa_proto::verbs::HeldFlow;

const NAME: &str = "os-ken";

/// Where os-ken is and how to write flows.
#[derive(Debug, Clone)]
pub struct OsKenConfig {
    /// Base URL of the REST API, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Priority of the drop flows (above any forwarding flow).
    pub priority: u16,
    pub table_id: u8,
    /// Per-request timeout.
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for OsKenConfig {
    fn default() -> Self {
        OsKenConfig {
            url: "http://127.0.0.1:8080".into(),
            priority: 40000,
            table_id: 0,
            timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        }
    }
}

/// An os-ken controller.
#[derive(Debug)]
pub struct OsKen {
    http: Http,
    cfg: OsKenConfig,
    state: SdnState,
}

impl OsKen {
    pub fn new(cfg: OsKenConfig) -> OsKen {
        OsKen {
            http: Http::new(NAME, &cfg.url, cfg.timeout),
            state: SdnState::new(cfg.retry.clone()),
            cfg,
        }
    }

    /// The datapath ids of the connected switches.
    pub async fn switches(&self) -> Result<Vec<u64>, SdnError> {
        let v = self.http.get_json("/stats/switches").await?;
        let arr = v.as_array().ok_or_else(|| {
            self.http.bad(
                "/stats/switches",
                format!("expected a list of dpids, got {v}"),
            )
        })?;
        arr.iter()
            .map(|d| {
                d.as_u64().ok_or_else(|| {
                    self.http
                        .bad("/stats/switches", format!("dpid {d} is not an integer"))
                })
            })
            .collect()
    }

    async fn switches_or_fail(&self) -> Result<Vec<u64>, SdnError> {
        let s = self.switches().await?;
        if s.is_empty() {
            return Err(SdnError::NoSwitch { controller: NAME });
        }
        Ok(s)
    }

    async fn post(&self, path: &str, body: Value) -> Result<(), SdnError> {
        self.http
            .send(Method::POST, path, Some(&body))
            .await
            .map(drop)
    }

    async fn delete_cookie(&self, dpid: u64, cookie: u64, mask: u64) -> Result<(), SdnError> {
        self.post(
            "/stats/flowentry/delete",
            json!({ "dpid": dpid, "table_id": self.cfg.table_id, "cookie": cookie, "cookie_mask": mask, "match": {} }),
        )
        .await
    }

    /// Adds the block's drop flows on `dpids`, all at once: the block is in force as soon as
    /// the slowest flow-mod is, instead of after the sum of the round trips.
    async fn add_flows(&self, dpids: &[u64], spec: &BlockSpec) -> Result<(), SdnError> {
        let cookie = spec.id.cookie();
        let hard_timeout = spec.hard_timeout_s().unwrap_or(0);
        let adds = dpids.iter().flat_map(|&dpid| {
            drop_matches(&spec.target).into_iter().map(move |m| {
                let mut flow = json!({
                    "dpid": dpid, "table_id": self.cfg.table_id, "priority": self.cfg.priority,
                    "cookie": cookie, "match": m, "actions": [],
                });
                if hard_timeout > 0 {
                    flow["hard_timeout"] = json!(hard_timeout);
                }
                flow
            })
        });
        let results = futures_util::future::join_all(
            adds.map(|body| self.post("/stats/flowentry/add", body)),
        )
        .await;
        results.into_iter().collect()
    }

    /// Per switch, for each dpid: GET `path/<dpid>` and keep the dpid's entry.
    async fn per_switch(&self, path: &str) -> Result<Value, SdnError> {
        let mut out = serde_json::Map::new();
        for dpid in self.switches().await? {
            let p = format!("{path}/{dpid}");
            let v = self.http.get_json(&p).await?;
            let entry = v
                .get(dpid.to_string())
                .cloned()
                .ok_or_else(|| self.http.bad(&p, format!("no entry for dpid {dpid}")))?;
            out.insert(dpid.to_string(), entry);
        }
        Ok(Value::Object(out))
    }
}

/// How long the switch still holds `flow` (`hard_timeout` less its age), in whole seconds;
/// None for a flow without a hard timeout.
fn remaining_s(flow: &Value) -> Option<u64> {
    let hard = flow
        .get("hard_timeout")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let age = flow
        .get("duration_sec")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    (hard > 0).then(|| hard.saturating_sub(age))
}

/// The OpenFlow 1.3 matches dropping all traffic from and to `t`.
pub fn drop_matches(t: &BlockTarget) -> Vec<Value> {
    match t {
        BlockTarget::Mac(m) => vec![
            json!({ "eth_src": m.to_string() }),
            json!({ "eth_dst": m.to_string() }),
        ],
        BlockTarget::Ip(IpAddr::V4(ip)) => {
            vec![
                json!({ "eth_type": 0x0800, "ipv4_src": ip.to_string() }),
                json!({ "eth_type": 0x0800, "ipv4_dst": ip.to_string() }),
            ]
        }
        BlockTarget::Ip(IpAddr::V6(ip)) => {
            vec![
                json!({ "eth_type": 0x86dd, "ipv6_src": ip.to_string() }),
                json!({ "eth_type": 0x86dd, "ipv6_dst": ip.to_string() }),
            ]
        }
    }
}

impl SdnController for OsKen {
    fn name(&self) -> &'static str {
        NAME
    }

    fn state(&self) -> &SdnState {
        &self.state
    }

    async fn install(&self, spec: &BlockSpec) -> Result<Vec<String>, SdnError> {
        let dpids = self.switches_or_fail().await?;
        if let Err(e) = self.add_flows(&dpids, spec).await {
            // Leave no half-installed block behind.
            for &d in &dpids {
                let _ = self.delete_cookie(d, spec.id.cookie(), u64::MAX).await;
            }
            return Err(e);
        }
        Ok(Vec::new())
    }

    async fn reinstall(&self, spec: &BlockSpec) -> Result<Option<Vec<String>>, SdnError> {
        let dpids = self.switches_or_fail().await?;
        self.add_flows(&dpids, spec).await?;
        Ok(Some(Vec::new()))
    }

    /// The highest block id among the cookies of every switch's flows.
    async fn highest_installed(&self) -> Option<Result<u64, SdnError>> {
        let tables = match self.per_switch("/stats/flow").await {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        let highest = tables
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(|f| f.get("cookie").and_then(Value::as_u64))
            .filter_map(BlockId::of_cookie)
            .map(|id| id.0)
            .max()
            .unwrap_or(0);
        Some(Ok(highest))
    }

    /// Every VESPA cookie in every switch's flow table, with what its flows match and how
    /// long the switch still holds them.
    async fn held(&self) -> Option<Result<Vec<HeldFlow>, SdnError>> {
        let tables = match self.per_switch("/stats/flow").await {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        let mut by_id: BTreeMap<u64, HeldFlow> = BTreeMap::new();
        let flows = tables
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(Value::as_array)
            .flatten();
        for f in flows {
            let Some(id) = f
                .get("cookie")
                .and_then(Value::as_u64)
                .and_then(BlockId::of_cookie)
            else {
                continue;
            };
            let remaining = remaining_s(f);
            let target = f.get("match").and_then(target_of_match);
            let h = by_id.entry(id.0).or_insert(HeldFlow {
                id: id.0,
                target: None,
                remaining_s: remaining,
                flows: 0,
                known: false,
            });
            h.flows = h.flows.saturating_add(1);
            h.target = h.target.or(target);
            // The longest any switch still holds it; "until removed" beats any time.
            h.remaining_s = match (h.remaining_s, remaining) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        Some(Ok(by_id.into_values().collect()))
    }

    async fn remove_cookie(&self, id: BlockId) -> Option<Result<(), SdnError>> {
        let run = async {
            for dpid in self.switches().await? {
                self.delete_cookie(dpid, id.cookie(), u64::MAX).await?;
            }
            Ok(())
        };
        Some(run.await)
    }

    async fn uninstall(&self, block: &ActiveBlock) -> Result<(), SdnError> {
        for dpid in self.switches().await? {
            self.delete_cookie(dpid, block.cookie, u64::MAX).await?;
        }
        Ok(())
    }

    async fn purge(&self) -> Result<(), SdnError> {
        for dpid in self.switches().await? {
            self.delete_cookie(dpid, COOKIE_TAG, COOKIE_TAG_MASK)
                .await?;
        }
        Ok(())
    }

    /// `{"switches":[{"dpid":1,"ports":[{"port_no":1,"name":"..","hw_addr":"..","state":4},..]}],
    /// "links":[]}` (ofctl_rest knows no inter-switch links).
    async fn fetch_topology(&self) -> Result<Value, SdnError> {
        let descs = self.per_switch("/stats/portdesc").await?;
        let mut switches = Vec::new();
        for (dpid, ports) in descs.as_object().into_iter().flatten() {
            let ports: Vec<Value> = ports
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| json!({ "port_no": p["port_no"], "name": p["name"], "hw_addr": p["hw_addr"], "state": p["state"] }))
                .collect();
            let dpid: u64 = dpid.parse().unwrap_or_default();
            switches.push(json!({ "dpid": dpid, "ports": ports }));
        }
        Ok(json!({ "switches": switches, "links": [] }))
    }

    /// Port counters per switch (`GET /stats/port/<dpid>`), keyed by dpid.
    async fn fetch_link_stats(&self) -> Result<Value, SdnError> {
        self.per_switch("/stats/port").await
    }

    /// Flow tables per switch (`GET /stats/flow/<dpid>`), keyed by dpid.
    async fn fetch_flow_stats(&self) -> Result<Value, SdnError> {
        self.per_switch("/stats/flow").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vespa_proto::verbs::Target;

    #[test]
    fn drop_flows_name_their_target_as_ofctl_rest_lists_them() {
        let m = json!({ "dl_type": 2048, "nw_src": "10.0.0.9" });
        assert_eq!(target_of_match(&m), Some(Target::Ip([10, 0, 0, 9].into())));
        let m = json!({ "dl_dst": "52:54:00:AB:cd:01" });
        assert_eq!(
            target_of_match(&m).map(|t| t.to_string()),
            Some("52:54:00:ab:cd:01".into())
        );
        let m = json!({ "ipv4_src": "10.0.0.9/255.255.255.255" });
        assert!(target_of_match(&m).is_some());
        assert_eq!(target_of_match(&json!({ "in_port": 1 })), None);
        let f = json!({ "hard_timeout": 360, "duration_sec": 100 });
        assert_eq!(remaining_s(&f), Some(260));
        assert_eq!(remaining_s(&json!({ "hard_timeout": 0 })), None);
    }
}
