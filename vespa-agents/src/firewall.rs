//! The kernel firewall agent (`agent_firewall`): blocks and throttles enforced by the host's
//! own kernel programs, on every interface the sensors watch, with no SDN controller.
//!
//! It answers the SDN agents' block verbs with the same words and replies
//! (`block_hackers`, `release_hackers`, `status_hackers`), so the policy's ladder can use it
//! wherever it uses an SDN agent, plus throttles, the allowlist and the kernel reflex. The
//! tables live in the kernel ([`FirewallBackend`], implemented by `vespa-agent` over its
//! eBPF maps): an entry's expiry is kernel time, so an expired block stops dropping without
//! this agent, which only reaps it; and this agent keeps nothing the kernel does not, except
//! the ids it hands out. The protected sources (the tree's machines, the SDN controllers, the
//! host's gateways: [`FirewallAgent::protect`]) are in the kernel's allowlist from the start,
//! and nobody can remove them.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use serde::Serialize;
use tokio::sync::mpsc;
use vespa_node::{Agent, NodeHandle, VerbResult};
use vespa_proto::{
    verbs::{
        BlockSelector, FirewallVerb, Page, Rate, Shaped, ShapedSelector, Target, Ttl, LIST_PAGE,
    },
    AlertBody,
};

use crate::alerts::json;

/// A block with its drop counters (a row of `status_hackers`), the reflex's settings and the
/// firewall's totals (what `reflex` and `firewall_stats` answer): defined with the verbs, so
/// that the orchestrator reads them without this crate.
pub use vespa_proto::verbs::{BlockInfo, FirewallStats, ReflexSettings, ThrottleInfo};

/// A block the kernel's reflex placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReflexBlocked {
    pub target: Target,
    /// `syn` or `conn`.
    pub cause: &'static str,
    pub value: u64,
    pub threshold: u64,
    pub ttl: Option<Duration>,
    pub kernel_ns: u64,
}

/// The kernel tables, as the agent uses them. Every call is a few map operations; errors
/// are the kernel's, as text.
pub trait FirewallBackend: Send + Sync + 'static {
    /// Blocks `target` for `ttl` (None: until removed). An existing block of the same target
    /// keeps its counters and gets the new expiry.
    fn block(&self, target: Target, ttl: Option<Duration>) -> Result<(), String>;
    /// Removes the block of `target`; false when there was none.
    fn unblock(&self, target: Target) -> Result<bool, String>;
    /// The blocks in the kernel, expired ones included until reaped.
    fn blocks(&self) -> Result<Vec<BlockInfo>, String>;
    fn throttle(&self, target: &Shaped, rate: Rate, ttl: Option<Duration>) -> Result<(), String>;
    fn unthrottle(&self, target: &Shaped) -> Result<bool, String>;
    fn throttles(&self) -> Result<Vec<ThrottleInfo>, String>;
    fn allow(&self, target: Target) -> Result<(), String>;
    fn disallow(&self, target: Target) -> Result<bool, String>;
    fn allowed(&self) -> Result<Vec<Target>, String>;
    fn set_reflex(&self, r: ReflexSettings) -> Result<(), String>;
    /// Removes the expired blocks and throttles; returns the blocks removed.
    fn reap(&self) -> Result<Vec<BlockInfo>, String>;
    fn stats(&self) -> Result<FirewallStats, String>;
    /// The reflex's blocks from now on. Called once.
    fn reflex_events(&self) -> mpsc::Receiver<ReflexBlocked>;
}

/// How often expired entries are reaped (they stopped dropping at their expiry already).
pub const REAP_EVERY: Duration = Duration::from_secs(1);

/// Ids handed out for blocks and throttles, so `release_hackers 7` works as on an SDN agent.
/// Entries placed by others (the reflex, an earlier agent) get an id when first listed.
#[derive(Default)]
struct Ids {
    next: u64,
    blocks: BTreeMap<u64, Target>,
    throttles: BTreeMap<u64, Shaped>,
}

impl Ids {
    fn block_id(&mut self, t: Target) -> u64 {
        if let Some((&id, _)) = self.blocks.iter().find(|(_, v)| **v == t) {
            return id;
        }
        self.next += 1;
        self.blocks.insert(self.next, t);
        self.next
    }
    fn throttle_id(&mut self, t: &Shaped) -> u64 {
        if let Some((&id, _)) = self.throttles.iter().find(|(_, v)| *v == t) {
            return id;
        }
        self.next += 1;
        self.throttles.insert(self.next, t.clone());
        self.next
    }
    /// Forgets ids of entries no longer in the kernel.
    fn keep_blocks(&mut self, live: &[BlockInfo]) {
        self.blocks
            .retain(|_, t| live.iter().any(|b| b.target == *t));
    }
}

/// The firewall agent.
pub struct FirewallAgent {
    fw: Arc<dyn FirewallBackend>,
    default_ttl: Option<Duration>,
    /// Protected by the topology: in the kernel's allowlist, never removable.
    protected: Vec<(Target, String)>,
    ids: Mutex<Ids>,
}

#[derive(Serialize)]
struct Listed<T> {
    id: u64,
    #[serde(flatten)]
    entry: T,
}

/// Rows `status_hackers` answers at most: each is about 200 bytes of JSON, and the reply must
/// fit in one frame (1 MiB by default) however many blocks the kernel table holds.
pub const MAX_LISTED: usize = 2_000;

/// Keeps the `max` blocks that dropped the most (the newest first among equals), in that
/// order; true when some were left out.
fn most_active_first(blocks: &mut Vec<BlockInfo>, max: usize) -> bool {
    blocks.sort_by_key(|b| std::cmp::Reverse((b.packets, b.created_ns)));
    let cut = blocks.len() > max;
    blocks.truncate(max);
    cut
}

impl FirewallAgent {
    /// An agent over `fw`; blocks without a TTL last `default_ttl` (None: until released).
    pub fn new(fw: Arc<dyn FirewallBackend>, default_ttl: Option<Duration>) -> FirewallAgent {
        FirewallAgent {
            fw,
            default_ttl,
            protected: Vec::new(),
            ids: Mutex::new(Ids::default()),
        }
    }

    /// Protects `targets` (with why) for the agent's life: put in the kernel's allowlist now,
    /// refused by `disallow`.
    pub fn protect(mut self, targets: Vec<(Target, String)>) -> Result<FirewallAgent, String> {
        for (t, why) in &targets {
            self.fw
                .allow(*t)
                .map_err(|e| format!("protecting {t} ({why}): {e}"))?;
        }
        self.protected.extend(targets);
        Ok(self)
    }

    fn ids(&self) -> MutexGuard<'_, Ids> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why `t` may not be blocked or throttled: it is, holds or lies in a protected source
    /// (the topology's, or one added with `allow`).
    fn protected_by(&self, t: &Target) -> Result<Option<String>, String> {
        let hit = |p: &Target| covers(p, t) || covers(t, p);
        if let Some((_, why)) = self.protected.iter().find(|(p, _)| hit(p)) {
            return Ok(Some(why.clone()));
        }
        Ok(self
            .fw
            .allowed()?
            .into_iter()
            .find(hit)
            .map(|p| format!("allowlist entry {p}")))
    }

    fn block(&self, target: Target, ttl: Option<Ttl>) -> VerbResult {
        if let Some(why) = self.protected_by(&target)? {
            return Err(format!(
                "{target} is protected ({why}): the firewall never blocks it"
            ));
        }
        let ttl = ttl.map_or(self.default_ttl, Ttl::duration);
        self.fw.block(target, ttl)?;
        let id = self.ids().block_id(target);
        tracing::info!(%target, id, ttl_s = ttl.map(|t| t.as_secs_f64()), "blocked in the kernel");
        json(&serde_json::json!({
            "block": id,
            "target": target.to_string(),
            "ttl_s": ttl.map(|t| t.as_secs_f64()),
        }))
    }

    fn release(&self, which: Option<BlockSelector>) -> VerbResult {
        let targets: Vec<Target> = match which {
            None => self.fw.blocks()?.into_iter().map(|b| b.target).collect(),
            Some(BlockSelector::Target(t)) => vec![t],
            Some(BlockSelector::Id(id)) => match self.ids().blocks.get(&id) {
                Some(t) => vec![*t],
                None => return Err(format!("no block #{id}")),
            },
        };
        let mut released = Vec::new();
        for t in targets {
            if self.fw.unblock(t)? {
                let mut ids = self.ids();
                let id = ids.block_id(t);
                ids.blocks.remove(&id);
                released.push(id);
                tracing::info!(target = %t, id, "block released");
            } else if which.is_some() {
                return Err(format!("no block of {t}"));
            }
        }
        json(&serde_json::json!({ "released": released }))
    }

    fn status(&self) -> VerbResult {
        let mut blocks = self.fw.blocks()?;
        let mut ids = self.ids();
        ids.keep_blocks(&blocks);
        let total = blocks.len();
        if most_active_first(&mut blocks, MAX_LISTED) {
            tracing::warn!(
                total,
                listed = MAX_LISTED,
                "status_hackers lists the {MAX_LISTED} most active of {total} blocks (firewall_stats counts them all)"
            );
        }
        let listed: Vec<_> = blocks
            .into_iter()
            .map(|b| Listed {
                id: ids.block_id(b.target),
                entry: b,
            })
            .collect();
        json(&listed)
    }

    fn throttle(&self, target: Shaped, rate: Rate, ttl: Option<Ttl>) -> VerbResult {
        if let Shaped::Source(t) = &target {
            if let Some(why) = self.protected_by(t)? {
                return Err(format!(
                    "{t} is protected ({why}): the firewall never throttles it"
                ));
            }
        }
        let ttl = ttl.map_or(self.default_ttl, Ttl::duration);
        self.fw.throttle(&target, rate, ttl)?;
        let id = self.ids().throttle_id(&target);
        tracing::info!(%target, %rate, id, "throttled in the kernel");
        json(&serde_json::json!({
            "throttle": id,
            "target": target.to_string(),
            "rate": rate.to_string(),
            "ttl_s": ttl.map(|t| t.as_secs_f64()),
        }))
    }

    fn unthrottle(&self, which: Option<ShapedSelector>) -> VerbResult {
        let targets: Vec<Shaped> = match which.clone() {
            None => self.fw.throttles()?.into_iter().map(|t| t.target).collect(),
            Some(ShapedSelector::Target(t)) => vec![t],
            Some(ShapedSelector::Id(id)) => match self.ids().throttles.get(&id) {
                Some(t) => vec![t.clone()],
                None => return Err(format!("no throttle #{id}")),
            },
        };
        let mut released = Vec::new();
        for t in targets {
            if self.fw.unthrottle(&t)? {
                let mut ids = self.ids();
                let id = ids.throttle_id(&t);
                ids.throttles.remove(&id);
                released.push(id);
            } else if which.is_some() {
                return Err(format!("no throttle of {t}"));
            }
        }
        json(&serde_json::json!({ "released": released }))
    }

    fn throttles(&self) -> VerbResult {
        let list = self.fw.throttles()?;
        let mut ids = self.ids();
        let listed: Vec<_> = list
            .into_iter()
            .map(|t| Listed {
                id: ids.throttle_id(&t.target),
                entry: t,
            })
            .collect();
        json(&listed)
    }

    fn allowlist(&self) -> VerbResult {
        let kernel = self.fw.allowed()?;
        let list: Vec<_> = kernel
            .into_iter()
            .map(|t| {
                let why = self
                    .protected
                    .iter()
                    .find(|(p, _)| *p == t)
                    .map(|(_, w)| w.clone());
                serde_json::json!({
                    "target": t.to_string(),
                    "origin": if why.is_some() { "topology" } else { "operator" },
                    "note": why,
                })
            })
            .collect();
        json(&list)
    }

    fn disallow(&self, target: Target) -> VerbResult {
        if let Some((_, why)) = self.protected.iter().find(|(p, _)| *p == target) {
            return Err(format!(
                "{target} is protected by the topology ({why}) and stays"
            ));
        }
        if !self.fw.disallow(target)? {
            return Err(format!("{target} is not in the allowlist"));
        }
        json(&serde_json::json!({ "disallowed": target.to_string() }))
    }
}

/// The blocks after `after` in the targets' order, at most [`LIST_PAGE`] of them: every
/// entry the kernel holds, page by page (where `status_hackers` shows the most active only).
fn page_of_blocks(mut blocks: Vec<BlockInfo>, after: Option<Target>) -> Page<BlockInfo, Target> {
    blocks.retain(|b| after.is_none_or(|a| b.target > a));
    blocks.sort_by_key(|b| b.target);
    let more = blocks.len() > LIST_PAGE;
    blocks.truncate(LIST_PAGE);
    let next = more.then(|| blocks.last().map(|b| b.target)).flatten();
    Page { rows: blocks, next }
}

/// The throttles after `after` in their targets' order, at most [`LIST_PAGE`] of them: every
/// entry, page by page (the source and device tables together hold more than one frame of
/// `throttles` rows).
fn page_of_throttles(
    mut list: Vec<ThrottleInfo>,
    after: Option<Shaped>,
) -> Page<ThrottleInfo, Shaped> {
    list.retain(|t| after.as_ref().is_none_or(|a| t.target > *a));
    list.sort_by(|a, b| a.target.cmp(&b.target));
    let more = list.len() > LIST_PAGE;
    list.truncate(LIST_PAGE);
    let next = more
        .then(|| list.last().map(|t| t.target.clone()))
        .flatten();
    Page { rows: list, next }
}

/// Says when the reflex's cap held back blocks: at most once a minute, with how many.
#[derive(Default)]
struct CapWatch {
    seen: u64,
    last: Option<tokio::time::Instant>,
}

impl CapWatch {
    fn check(&mut self, s: &FirewallStats, now: tokio::time::Instant) -> Option<String> {
        let more = s.reflex_capped.saturating_sub(self.seen);
        if more == 0
            || self
                .last
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60))
        {
            return None;
        }
        self.seen = s.reflex_capped;
        self.last = Some(now);
        Some(format!(
            "kernel reflex cap reached: {more} reflex blocks not placed (at most {} at once, or the block table is full: {} of {}); nothing was evicted",
            s.reflex.max, s.blocks, s.block_capacity
        ))
    }
}

/// Whether `outer` contains `inner` (equal, or a prefix holding the address or prefix).
pub fn covers(outer: &Target, inner: &Target) -> bool {
    match (outer, inner) {
        (Target::Net(p), Target::Ip(ip)) => p.contains(*ip),
        (Target::Net(p), Target::Net(q)) => p.len <= q.len && p.contains(q.addr),
        (a, b) => a == b,
    }
}

impl Agent for FirewallAgent {
    type Verb = FirewallVerb;

    async fn call(&self, verb: FirewallVerb) -> VerbResult {
        match verb {
            FirewallVerb::BlockHackers { target, ttl } => self.block(target, ttl),
            FirewallVerb::ReleaseHackers { which } => self.release(which),
            FirewallVerb::StatusHackers {} => self.status(),
            FirewallVerb::Throttle { target, rate, ttl } => self.throttle(target, rate, ttl),
            FirewallVerb::Unthrottle { which } => self.unthrottle(which),
            FirewallVerb::Throttles {} => self.throttles(),
            FirewallVerb::Allowlist {} => self.allowlist(),
            FirewallVerb::Allow { target } => {
                self.fw.allow(target)?;
                json(&serde_json::json!({ "allowed": target.to_string() }))
            }
            FirewallVerb::Disallow { target } => self.disallow(target),
            FirewallVerb::Reflex {
                syn_per_s,
                conn,
                ttl,
                max,
            } => {
                let mut r = self.fw.stats()?.reflex;
                (r.syn_per_sec, r.conn, r.ttl, r.max) = (syn_per_s, conn, ttl.duration(), max);
                self.fw.set_reflex(r)?;
                tracing::info!(syn_per_s, conn, ?ttl, max, "kernel reflex set");
                json(&r)
            }
            FirewallVerb::FirewallStats {} => json(&self.fw.stats()?),
            FirewallVerb::Blocks { after } => json(&page_of_blocks(self.fw.blocks()?, after)),
            FirewallVerb::ThrottleList { after } => {
                json(&page_of_throttles(self.fw.throttles()?, after))
            }
        }
    }

    fn start(&self, node: NodeHandle) -> Vec<tokio::task::JoinHandle<()>> {
        let fw = self.fw.clone();
        let reaper_node = node.clone();
        let reaper = tokio::spawn(async move {
            let mut every = tokio::time::interval(REAP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut capped = CapWatch::default();
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = reaper_node.stopping() => break,
                }
                if let Some(text) = fw
                    .stats()
                    .ok()
                    .and_then(|s| capped.check(&s, tokio::time::Instant::now()))
                {
                    tracing::warn!("{text}");
                    if let Err(e) = reaper_node.raise(AlertBody::Text(text)) {
                        tracing::warn!(error = %e, "reflex cap alert refused by a full queue");
                    }
                }
                match fw.reap() {
                    Ok(gone) => {
                        for b in gone {
                            tracing::info!(target = %b.target, packets = b.packets, "block expired");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reaping expired blocks failed"),
                }
            }
        });
        let mut rx = self.fw.reflex_events();
        let events = tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = rx.recv() => {
                        let Some(r) = r else { break };
                        tracing::warn!(target = %r.target, cause = r.cause, value = r.value, threshold = r.threshold, "kernel reflex blocked a source");
                        let body = AlertBody::ReflexBlock {
                            target: r.target.to_string(),
                            cause: r.cause.to_string(),
                            value: r.value,
                            threshold: r.threshold,
                            ttl_s: r.ttl.map_or(0, |t| t.as_secs().max(1)),
                            kernel_ns: r.kernel_ns,
                        };
                        if let Err(e) = node.raise(body) {
                            tracing::warn!(error = %e, "reflex alert refused by a full queue");
                        }
                    }
                    _ = node.stopping() => break,
                }
            }
        });
        vec![reaper, events]
    }
}

/// The sources the firewall never blocks, from the topology and the host: every machine of
/// the tree, every SDN controller (the host of an agent's `url`), the host's gateways, and
/// the firewall node's own `protect` list (comma separated addresses, prefixes or MACs).
pub fn protected(
    topology: &vespa_node::config::Topology,
    node: &vespa_node::config::NodeDef,
    gateways: &[std::net::IpAddr],
) -> Result<Vec<(Target, String)>, String> {
    use vespa_proto::verbs::Word;
    let mut out: Vec<(Target, String)> = Vec::new();
    let mut add = |t: Target, why: String| {
        if !out.iter().any(|(o, _)| *o == t) {
            out.push((t, why));
        }
    };
    for m in &topology.machines {
        if !m.address.is_unspecified() {
            add(Target::Ip(m.address), format!("machine {}", m.name));
        }
    }
    for n in &topology.nodes {
        let Some(url) = n.params.get("url") else {
            continue;
        };
        let host = url
            .split("://")
            .nth(1)
            .unwrap_or(url)
            .split(['/', '?'])
            .next()
            .unwrap_or("");
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        if let Ok(ip) = host.parse() {
            add(Target::Ip(ip), format!("controller of {}", n.name));
        }
    }
    for g in gateways {
        add(Target::Ip(*g), "gateway of this host".to_string());
    }
    if let Some(list) = node.params.get("protect") {
        for w in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let t =
                Target::parse_word(w).map_err(|e| format!("node {}: protect: {e}", node.name))?;
            add(t, format!("protect list of {}", node.name));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vespa_proto::verbs::Word;

    fn t(s: &str) -> Target {
        Target::parse_word(s).expect("target")
    }

    #[test]
    fn a_reached_reflex_cap_is_said_once_a_minute() {
        let mut w = CapWatch::default();
        let t0 = tokio::time::Instant::now();
        let mut s = FirewallStats::default();
        assert_eq!(w.check(&s, t0), None);
        s.reflex_capped = 3;
        assert!(w
            .check(&s, t0)
            .is_some_and(|t| t.contains("3 reflex blocks")));
        s.reflex_capped = 5;
        assert_eq!(w.check(&s, t0 + Duration::from_secs(10)), None);
        let later = w
            .check(&s, t0 + Duration::from_secs(61))
            .expect("said again");
        assert!(later.contains("2 reflex blocks"), "{later}");
    }

    #[test]
    fn blocks_are_listed_whole_page_by_page_each_within_one_frame() {
        let block = |i: u64| BlockInfo {
            target: t(&format!("2001:db8:{:x}::/64", i)),
            expires_in_ms: Some(u64::MAX),
            reflex: true,
            packets: u64::MAX,
            bytes: u64::MAX,
            first_drop_after_ns: Some(u64::MAX),
            created_ns: u64::MAX,
        };
        let all: Vec<_> = (0..10_001).map(block).collect();
        let (mut seen, mut after, mut pages) = (Vec::new(), None, 0);
        loop {
            let page = page_of_blocks(all.clone(), after);
            let text = serde_json::to_vec(&page).expect("json");
            assert!(
                text.len() < vespa_proto::frame::DEFAULT_MAX_FRAME - 4096,
                "{} bytes",
                text.len()
            );
            seen.extend(page.rows.iter().map(|b| b.target));
            pages += 1;
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(pages, 6);
        let mut want: Vec<_> = all.iter().map(|b| b.target).collect();
        want.sort();
        assert_eq!(seen, want, "every block once, in order");
    }

    #[test]
    fn throttles_are_listed_whole_page_by_page_each_within_one_frame() {
        let throttle = |i: u64| ThrottleInfo {
            target: if i.is_multiple_of(7) {
                Shaped::Device(format!("vnet{i}"))
            } else {
                Shaped::Source(t(&format!("2001:db8:{:x}::/64", i)))
            },
            // The longest rate a call accepts (1e13 B/s).
            rate: Rate::Bytes(10_000_000_000_000),
            expires_in_ms: Some(u64::MAX),
            passed_packets: u64::MAX,
            passed_bytes: u64::MAX,
            dropped_packets: u64::MAX,
            dropped_bytes: u64::MAX,
        };
        let all: Vec<_> = (0..6_145).map(throttle).collect();
        let (mut seen, mut after, mut pages) = (Vec::new(), None, 0);
        loop {
            let page = page_of_throttles(all.clone(), after);
            let text = serde_json::to_vec(&page).expect("json");
            assert!(
                text.len() < vespa_proto::frame::DEFAULT_MAX_FRAME - 4096,
                "{} bytes",
                text.len()
            );
            let back: Page<ThrottleInfo, Shaped> =
                serde_json::from_slice(&text).expect("read back as the orchestrator reads it");
            assert_eq!(back, page);
            seen.extend(page.rows.iter().map(|r| r.target.clone()));
            pages += 1;
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(pages, 4);
        let mut want: Vec<_> = all.iter().map(|r| r.target.clone()).collect();
        want.sort();
        assert_eq!(seen, want, "every throttle once, in order");
    }

    #[test]
    fn status_lists_the_most_active_blocks_within_one_frame() {
        let block = |i: u64| BlockInfo {
            target: t(&format!("2001:db8:{:x}::/64", i % 65_536)),
            expires_in_ms: Some(3_600_000),
            reflex: i.is_multiple_of(2),
            packets: u64::MAX - i,
            bytes: u64::MAX,
            first_drop_after_ns: Some(u64::MAX),
            created_ns: u64::MAX - i,
        };
        let mut blocks: Vec<_> = (0..65_536).rev().map(block).collect();
        assert!(most_active_first(&mut blocks, MAX_LISTED));
        assert_eq!(blocks.len(), MAX_LISTED);
        assert_eq!(blocks[0], block(0));
        assert_eq!(blocks[MAX_LISTED - 1], block(MAX_LISTED as u64 - 1));
        let rows: Vec<_> = blocks
            .into_iter()
            .map(|entry| Listed {
                id: u64::MAX,
                entry,
            })
            .collect();
        let text = serde_json::to_vec(&rows).expect("json");
        assert!(
            text.len() < vespa_proto::frame::DEFAULT_MAX_FRAME - 4096,
            "{} bytes",
            text.len()
        );
        let mut few = vec![block(1), block(0)];
        assert!(!most_active_first(&mut few, MAX_LISTED));
        assert_eq!(few, [block(0), block(1)]);
    }

    #[test]
    fn prefixes_cover_addresses_and_narrower_prefixes() {
        assert!(covers(&t("10.0.0.0/8"), &t("10.1.2.3")));
        assert!(covers(&t("10.0.0.0/8"), &t("10.1.0.0/16")));
        assert!(!covers(&t("10.1.0.0/16"), &t("10.0.0.0/8")));
        assert!(!covers(&t("10.0.0.0/8"), &t("11.0.0.1")));
        assert!(covers(&t("2001:db8::/64"), &t("2001:db8::1234")));
        assert!(covers(&t("10.0.0.1"), &t("10.0.0.1")));
    }

    #[test]
    fn the_tree_its_controllers_and_gateways_are_protected() {
        let topo = vespa_node::config::Topology::from_toml(
            "test.toml",
            "[[machine]]\nname = \"h\"\naddress = \"10.9.0.1\"\n\
             [[node]]\nname = \"VO\"\nkind = \"vo\"\nlocation = \"h\"\nport = 9000\n\
             [[node]]\nname = \"fw\"\nkind = \"agent_firewall\"\nlocation = \"h\"\nmaster = \"VO\"\nport = 9001\n\
             [node.params]\nprotect = \"192.0.2.0/24, 52:54:00:00:00:01\"\n\
             [[node]]\nname = \"sdn\"\nkind = \"agent_controller_osken\"\nlocation = \"h\"\nmaster = \"VO\"\nport = 9002\n\
             [node.params]\nurl = \"http://10.9.0.7:8080/\"\n",
        )
        .expect("topology");
        let fw = topo.node("fw").expect("fw").clone();
        let p = protected(&topo, &fw, &["10.9.0.254".parse().unwrap()]).expect("list");
        let targets: Vec<String> = p.iter().map(|(t, _)| t.to_string()).collect();
        assert_eq!(
            targets,
            [
                "10.9.0.1",
                "10.9.0.7",
                "10.9.0.254",
                "192.0.2.0/24",
                "52:54:00:00:00:01"
            ]
        );
    }
}
