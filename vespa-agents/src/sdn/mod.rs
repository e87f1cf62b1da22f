//! SDN agents: one trait, three controllers.
//!
//! A block drops every frame from and to a MAC address, or every IPv4/IPv6 packet from and to
//! an IP address, on every switch the controller manages. Each block has an id, a cookie that
//! marks its flows (`0x56455350_xxxxxxxx`, "VESP" + id) and usually a time-to-live; expiry and
//! bookkeeping live in one place ([`ttl`]), shared by all controllers. Releasing removes the
//! flows (the 2014 code re-sent the block instead).
//!
//! - [`osken::OsKen`]: os-ken's `ofctl_rest` (the maintained Ryu fork) driving Open vSwitch.
//! - [`floodlight::Floodlight`]: static flow pusher (v1.x or v0.90 field names) or firewall.
//! - [`pox::Pox`]: the POX messenger JSON protocol on TCP 7790, channel `mac_redir`.
//!
//! [`SdnAgent`] puts any of them behind the 2014 verbs (`alert_ip`, `block_hackers`,
//! `release_hackers`, `status_hackers`, `get_topology`, `get_link_stats`) plus
//! `get_flow_stats`.

pub mod floodlight;
mod http;
pub mod osken;
pub mod pox;
pub mod ttl;

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::alerts::{json, AlertSink};
use crate::error::SdnError;
use crate::retry::{retry, RetryPolicy, RetryStats};
pub use ttl::{ActiveBlock, BlockBook};
use vespa_node::{Agent, VerbResult};
use vespa_proto::verbs::{BlockSelector, SdnVerb, Target, Ttl, Word};

/// High 32 bits of every flow cookie VESPA installs ("VESP").
pub const COOKIE_TAG: u64 = 0x5645_5350 << 32;
/// Mask selecting [`COOKIE_TAG`].
pub const COOKIE_TAG_MASK: u64 = 0xffff_ffff << 32;

/// An Ethernet address (the protocol's: verbs carry it typed).
pub use vespa_proto::verbs::MacAddr;

/// What a block applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockTarget {
    Mac(MacAddr),
    Ip(IpAddr),
}

impl FromStr for BlockTarget {
    type Err = SdnError;
    /// A MAC or IP address, as a verb's word.
    fn from_str(s: &str) -> Result<BlockTarget, SdnError> {
        Target::parse_word(s)
            .map(BlockTarget::from)
            .map_err(|_| SdnError::InvalidTarget(s.trim().to_string()))
    }
}

impl From<Target> for BlockTarget {
    fn from(t: Target) -> BlockTarget {
        match t {
            Target::Ip(ip) => BlockTarget::Ip(ip),
            Target::Mac(m) => BlockTarget::Mac(m),
        }
    }
}

impl fmt::Display for BlockTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockTarget::Mac(m) => write!(f, "mac {m}"),
            BlockTarget::Ip(ip) => write!(f, "ip {ip}"),
        }
    }
}

impl BlockTarget {
    /// The bare address (`aa:bb:..` or `10.0.0.1`).
    pub fn addr(&self) -> String {
        match self {
            BlockTarget::Mac(m) => m.to_string(),
            BlockTarget::Ip(ip) => ip.to_string(),
        }
    }
}

impl Serialize for BlockTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            BlockTarget::Mac(mac) => m.serialize_entry("mac", &mac.to_string())?,
            BlockTarget::Ip(ip) => m.serialize_entry("ip", &ip.to_string())?,
        }
        m.end()
    }
}

/// A block's identifier, unique for the agent's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct BlockId(pub u64);

impl BlockId {
    /// The OpenFlow cookie marking this block's flows.
    pub fn cookie(self) -> u64 {
        COOKIE_TAG | (self.0 & 0xffff_ffff)
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a controller is asked to install.
#[derive(Debug, Clone)]
pub struct BlockSpec {
    pub id: BlockId,
    pub target: BlockTarget,
    pub ttl: Option<Duration>,
}

/// Which blocks to release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Id(BlockId),
    Target(BlockTarget),
}

impl FromStr for Release {
    type Err = SdnError;
    /// A decimal block id (`7`, `#7`), or a target (MAC or IP), as a verb's word.
    fn from_str(s: &str) -> Result<Release, SdnError> {
        BlockSelector::parse_word(s)
            .map(Release::from)
            .map_err(|_| SdnError::InvalidTarget(s.into()))
    }
}

impl From<BlockSelector> for Release {
    fn from(sel: BlockSelector) -> Release {
        match sel {
            BlockSelector::Id(id) => Release::Id(BlockId(id)),
            BlockSelector::Target(t) => Release::Target(t.into()),
        }
    }
}

/// Bookkeeping and retry settings common to every controller.
#[derive(Debug, Default)]
pub struct SdnState {
    pub blocks: BlockBook,
    pub retry: RetryPolicy,
    pub stats: RetryStats,
    /// Serialises block and release of one controller, so that two concurrent blocks of the
    /// same target share one id and a release never races the install it undoes.
    ops: tokio::sync::Mutex<()>,
}

impl SdnState {
    pub fn new(retry: RetryPolicy) -> SdnState {
        SdnState {
            retry,
            ..SdnState::default()
        }
    }
}

/// An SDN controller VESPA can drive.
///
/// Implementations provide the controller-specific operations (`install`, `uninstall`,
/// `fetch_*`); the block lifecycle (ids, bookkeeping, idempotence, retries, release by id or
/// target) is provided once, here.
pub trait SdnController: Send + Sync + 'static {
    /// Short name for logs and errors (`os-ken`, `floodlight`, `pox`).
    fn name(&self) -> &'static str;
    fn state(&self) -> &SdnState;

    /// Installs a block on every switch; returns controller-side handles (flow names, rule
    /// ids) needed to remove it. Cleans up after itself if it fails half way.
    fn install(
        &self,
        spec: &BlockSpec,
    ) -> impl Future<Output = Result<Vec<String>, SdnError>> + Send;
    /// Removes a block's flows or rules.
    fn uninstall(&self, block: &ActiveBlock) -> impl Future<Output = Result<(), SdnError>> + Send;
    /// Best-effort removal of every VESPA block the controller still holds, including ones a
    /// previous agent left behind.
    fn purge(&self) -> impl Future<Output = Result<(), SdnError>> + Send;
    fn fetch_topology(&self) -> impl Future<Output = Result<Value, SdnError>> + Send;
    fn fetch_link_stats(&self) -> impl Future<Output = Result<Value, SdnError>> + Send;
    fn fetch_flow_stats(&self) -> impl Future<Output = Result<Value, SdnError>> + Send;

    /// Blocks `target` for `ttl` (None: until released). Blocking a target that is already
    /// blocked restarts its time-to-live and returns the same id.
    fn block(
        &self,
        target: BlockTarget,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<BlockId, SdnError>> + Send {
        async move {
            let st = self.state();
            let _op = st.ops.lock().await;
            if let Some(b) = st.blocks.by_target(&target) {
                // Already in force: only its time-to-live restarts (re-pushing would make
                // Floodlight's firewall refuse a "similar rule").
                st.blocks.refresh(b.id, ttl);
                tracing::info!(controller = self.name(), block = b.id.0, %target, "block refreshed");
                return Ok(b.id);
            }
            let id = st.blocks.next_id();
            let spec = BlockSpec { id, target, ttl };
            let what = format!("{} block {target}", self.name());
            let handles = retry(&st.retry, &st.stats, &what, |_| self.install(&spec)).await?;
            st.blocks.insert(&spec, handles);
            tracing::info!(controller = self.name(), block = id.0, %target, ttl_s = ttl.map(|t| t.as_secs_f64()), "blocked");
            Ok(id)
        }
    }

    /// Releases the blocks matching `sel`; returns their ids.
    fn release(&self, sel: Release) -> impl Future<Output = Result<Vec<BlockId>, SdnError>> + Send {
        async move {
            let st = self.state();
            let _op = st.ops.lock().await;
            let found = st.blocks.matching(sel);
            if found.is_empty() {
                return Err(SdnError::NoSuchBlock(match sel {
                    Release::Id(id) => format!("block {id}"),
                    Release::Target(t) => t.to_string(),
                }));
            }
            let mut released = Vec::new();
            for b in found {
                let what = format!("{} release {} ({})", self.name(), b.id, b.target);
                retry(&st.retry, &st.stats, &what, |_| self.uninstall(&b)).await?;
                st.blocks.remove(b.id);
                tracing::info!(controller = self.name(), block = b.id.0, target = %b.target, "released");
                released.push(b.id);
            }
            Ok(released)
        }
    }

    /// Releases every block, then purges stray VESPA flows; returns the released ids.
    fn release_all(&self) -> impl Future<Output = Result<Vec<BlockId>, SdnError>> + Send {
        async move {
            let mut ids = Vec::new();
            for b in self.state().blocks.list() {
                ids.extend(self.release(Release::Id(b.id)).await?);
            }
            let st = self.state();
            retry(&st.retry, &st.stats, "purge", |_| self.purge()).await?;
            Ok(ids)
        }
    }

    /// The active blocks, oldest first, with their remaining time-to-live.
    fn status(&self) -> Vec<ActiveBlock> {
        self.state().blocks.list()
    }

    fn topology(&self) -> impl Future<Output = Result<Value, SdnError>> + Send {
        async move {
            let st = self.state();
            retry(&st.retry, &st.stats, "topology", |_| self.fetch_topology()).await
        }
    }

    fn link_stats(&self) -> impl Future<Output = Result<Value, SdnError>> + Send {
        async move {
            let st = self.state();
            retry(&st.retry, &st.stats, "link stats", |_| {
                self.fetch_link_stats()
            })
            .await
        }
    }

    fn flow_stats(&self) -> impl Future<Output = Result<Value, SdnError>> + Send {
        async move {
            let st = self.state();
            retry(&st.retry, &st.stats, "flow stats", |_| {
                self.fetch_flow_stats()
            })
            .await
        }
    }
}

/// Agent settings common to every controller.
#[derive(Debug, Clone)]
pub struct SdnAgentConfig {
    /// Time-to-live of a block when the caller gives none (None: blocks last until released).
    pub default_ttl: Option<Duration>,
}

impl Default for SdnAgentConfig {
    fn default() -> Self {
        SdnAgentConfig {
            default_ttl: Some(Duration::from_secs(300)),
        }
    }
}

/// Any [`SdnController`] behind the 2014 verbs, with its TTL reaper running.
pub struct SdnAgent<C: SdnController> {
    ctrl: Arc<C>,
    cfg: SdnAgentConfig,
    alerts: AlertSink,
    reaper: tokio::task::JoinHandle<()>,
}

impl<C: SdnController> SdnAgent<C> {
    /// Starts the agent (and its TTL reaper, so this must run inside a tokio runtime).
    pub fn new(ctrl: C, cfg: SdnAgentConfig, alerts: AlertSink) -> SdnAgent<C> {
        let ctrl = Arc::new(ctrl);
        let reaper = ttl::spawn_reaper(ctrl.clone(), alerts.clone());
        SdnAgent {
            ctrl,
            cfg,
            alerts,
            reaper,
        }
    }

    pub fn controller(&self) -> &Arc<C> {
        &self.ctrl
    }

    /// A block for `ttl`, or the agent's default time-to-live when the caller gave none.
    async fn block_verb(&self, target: Target, ttl: Option<Ttl>) -> VerbResult {
        let ttl = ttl.map_or(self.cfg.default_ttl, Ttl::duration);
        let target = BlockTarget::from(target);
        let id = self
            .ctrl
            .block(target, ttl)
            .await
            .map_err(|e| self.fail("block", e))?;
        json(
            &serde_json::json!({ "block": id, "target": target, "ttl_s": ttl.map(|t| t.as_secs_f64()) }),
        )
    }

    async fn stats(
        &self,
        action: &str,
        fut: impl Future<Output = Result<Value, SdnError>>,
    ) -> VerbResult {
        let v = fut.await.map_err(|e| self.fail(action, e))?;
        json(&v)
    }

    fn fail(&self, action: &str, e: SdnError) -> String {
        // Bad input is the caller's business; a failing controller is everybody's.
        if !matches!(
            e,
            SdnError::InvalidTarget(_)
                | SdnError::NoSuchBlock(_)
                | SdnError::UnsupportedTarget { .. }
        ) {
            self.alerts.failed(self.ctrl.name(), action, &e);
        }
        crate::error::chain(&e)
    }
}

impl<C: SdnController> Drop for SdnAgent<C> {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

impl<C: SdnController> Agent for SdnAgent<C> {
    type Verb = SdnVerb;

    async fn call(&self, verb: SdnVerb) -> VerbResult {
        match verb {
            SdnVerb::AlertIp { ip, mac, ttl } => {
                let target = mac.and_then(|m| m.0).unwrap_or(Target::Ip(ip));
                self.block_verb(target, ttl).await
            }
            SdnVerb::BlockHackers { target, ttl } => self.block_verb(target, ttl).await,
            SdnVerb::ReleaseHackers { which } => {
                let ids = match which {
                    None => self
                        .ctrl
                        .release_all()
                        .await
                        .map_err(|e| self.fail("release_all", e))?,
                    Some(sel) => self
                        .ctrl
                        .release(sel.into())
                        .await
                        .map_err(|e| self.fail("release", e))?,
                };
                json(&serde_json::json!({ "released": ids }))
            }
            SdnVerb::StatusHackers {} => json(&self.ctrl.status()),
            SdnVerb::GetTopology {} => self.stats("topology", self.ctrl.topology()).await,
            SdnVerb::GetLinkStats {} => self.stats("link_stats", self.ctrl.link_stats()).await,
            SdnVerb::GetFlowStats {} => self.stats("flow_stats", self.ctrl.flow_stats()).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_reject_garbage() {
        assert_eq!(
            "52:54:00:AB:cd:01"
                .parse::<BlockTarget>()
                .expect("mac")
                .addr(),
            "52:54:00:ab:cd:01"
        );
        assert_eq!(
            "52-54-00-ab-cd-01"
                .parse::<BlockTarget>()
                .expect("mac")
                .addr(),
            "52:54:00:ab:cd:01"
        );
        assert!(matches!(
            "10.0.0.7".parse::<BlockTarget>(),
            Ok(BlockTarget::Ip(_))
        ));
        assert!(matches!(
            "fd00::7".parse::<BlockTarget>(),
            Ok(BlockTarget::Ip(_))
        ));
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:zz",
            "52:54:00:ab:cd:001",
            "10.0.0.256",
            "hello",
            "52:54:00:ab:cd:01:02",
        ] {
            assert!(
                matches!(bad.parse::<BlockTarget>(), Err(SdnError::InvalidTarget(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn release_selectors() {
        assert_eq!("7".parse::<Release>().expect("id"), Release::Id(BlockId(7)));
        assert_eq!(
            "#7".parse::<Release>().expect("id"),
            Release::Id(BlockId(7))
        );
        assert!(matches!(
            "10.1.2.3".parse::<Release>(),
            Ok(Release::Target(BlockTarget::Ip(_)))
        ));
        assert!("x7".parse::<Release>().is_err());
    }

    #[test]
    fn cookies_are_tagged() {
        assert_eq!(BlockId(5).cookie(), 0x5645_5350_0000_0005);
        assert_eq!(BlockId(5).cookie() & COOKIE_TAG_MASK, COOKIE_TAG);
    }

    #[test]
    fn targets_serialise_as_tagged_addresses() {
        let t: BlockTarget = "10.0.0.1".parse().expect("ip");
        assert_eq!(
            serde_json::to_string(&t).expect("json"),
            r#"{"ip":"10.0.0.1"}"#
        );
    }
}
