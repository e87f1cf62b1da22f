//! SDN agents: one trait, three controllers.
//!
//! A block drops every frame from and to a MAC address, or every IPv4/IPv6 packet from and to
//! an IP address, on every switch the controller manages. Each block has an id, a cookie that
//! marks its flows (`0x56455350_xxxxxxxx`, "VESP" + id) and usually a time-to-live; expiry and
//! bookkeeping live in one place ([`ttl`]), shared by all controllers. Releasing removes the
//! flows (the 2014 code re-sent the block instead).
//!
//! Ids stay unique across agent restarts: before its first block the agent asks the controller
//! for the VESPA flows it still holds and numbers its blocks above the highest one; a
//! controller that cannot list them (POX, Floodlight's firewall, a failed listing) gets a random
//! base instead. Where the controller can, the switch enforces the time-to-live itself
//! (`hard_timeout` = TTL + [`SWITCH_TTL_MARGIN`]), so a block whose agent died still expires.
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
use crate::error::{SdnError, Transient as _};
use crate::retry::{retry, RetryPolicy, RetryStats};
pub use ttl::{ActiveBlock, BlockBook};
use vespa_node::{Agent, VerbResult};
use vespa_proto::verbs::{BlockSelector, HeldFlow, Page, SdnVerb, Target, Ttl, Word, LIST_PAGE};

/// High 32 bits of every flow cookie VESPA installs ("VESP").
pub const COOKIE_TAG: u64 = 0x5645_5350 << 32;
/// Mask selecting [`COOKIE_TAG`].
pub const COOKIE_TAG_MASK: u64 = 0xffff_ffff << 32;
/// How much longer than its time-to-live a block's flows live in the switch (`hard_timeout`):
/// the agent's reaper normally releases the block first; the switch's timeout only ends the
/// blocks of an agent that died or lost its controller.
pub const SWITCH_TTL_MARGIN: Duration = Duration::from_secs(60);
/// Where block ids start when the controller cannot show which ones are in use: a random
/// point of the 32-bit cookie space, leaving 2^31 ids above it before the cookie wraps.
pub const RANDOM_ID_BASE: std::ops::Range<u64> = 1 << 16..1 << 31;

/// An Ethernet address (the protocol's: verbs carry it typed).
pub use vespa_proto::verbs::MacAddr;

/// The address or MAC a VESPA drop flow's match names (either side), as a controller lists
/// it: ofctl_rest's `dl_src`/`nw_src` for OpenFlow 1.3 or the OXM names it was given,
/// Floodlight v1.x's OXM names, Floodlight v0.90's `dataLayerSource`/`networkSource` (which
/// lists every field, the wildcarded ones as all zeros: those name nothing).
pub fn target_of_match(m: &Value) -> Option<Target> {
    const KEYS: [&str; 14] = [
        "eth_src",
        "eth_dst",
        "dl_src",
        "dl_dst",
        "ipv4_src",
        "ipv4_dst",
        "nw_src",
        "nw_dst",
        "ipv6_src",
        "ipv6_dst",
        "dataLayerSource",
        "dataLayerDestination",
        "networkSource",
        "networkDestination",
    ];
    KEYS.iter().find_map(|k| {
        let v = m.get(*k)?.as_str()?;
        // An exact match may be written with a full mask (`10.0.0.1/255.255.255.255`).
        let bare = v.split('/').next().unwrap_or(v);
        match Target::parse_word(bare).ok()? {
            Target::Ip(ip) if ip.is_unspecified() => None,
            Target::Mac(m) if m.to_string() == "00:00:00:00:00:00" => None,
            t @ (Target::Ip(_) | Target::Mac(_)) => Some(t),
            Target::Net(_) => None,
        }
    })
}

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
            .map_err(|_| SdnError::InvalidTarget(s.trim().to_string()))
            .and_then(BlockTarget::try_from)
    }
}

impl TryFrom<Target> for BlockTarget {
    type Error = SdnError;
    /// An address or a MAC; a prefix is refused (the controllers' agents block whole
    /// addresses; `agent_firewall` blocks prefixes in the host's kernel).
    fn try_from(t: Target) -> Result<BlockTarget, SdnError> {
        match t {
            Target::Ip(ip) => Ok(BlockTarget::Ip(ip)),
            Target::Mac(m) => Ok(BlockTarget::Mac(m)),
            Target::Net(p) => Err(SdnError::InvalidTarget(format!(
                "{p} (an SDN agent blocks addresses and MACs, not prefixes: use agent_firewall)"
            ))),
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

/// A block's identifier, unique for the agent's lifetime and (see the module's notes) across
/// its restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct BlockId(pub u64);

impl BlockId {
    /// The OpenFlow cookie marking this block's flows.
    pub fn cookie(self) -> u64 {
        COOKIE_TAG | (self.0 & 0xffff_ffff)
    }

    /// The block id a VESPA cookie carries (None for anybody else's cookie).
    pub fn of_cookie(cookie: u64) -> Option<BlockId> {
        (cookie & COOKIE_TAG_MASK == COOKIE_TAG).then_some(BlockId(cookie & 0xffff_ffff))
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

impl BlockSpec {
    /// The `hard_timeout` (seconds) the switch should enforce: the time-to-live rounded up
    /// plus [`SWITCH_TTL_MARGIN`]. None without a time-to-live, and when that exceeds
    /// OpenFlow's 16-bit field (about 18 h): the agent's reaper alone ends such a block.
    pub fn hard_timeout_s(&self) -> Option<u16> {
        let ttl = self.ttl?;
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0) + SWITCH_TTL_MARGIN.as_secs();
        u16::try_from(secs).ok()
    }
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
            .map_err(|_| SdnError::InvalidTarget(s.into()))
            .and_then(Release::try_from)
    }
}

impl TryFrom<BlockSelector> for Release {
    type Error = SdnError;
    fn try_from(sel: BlockSelector) -> Result<Release, SdnError> {
        Ok(match sel {
            BlockSelector::Id(id) => Release::Id(BlockId(id)),
            BlockSelector::Target(t) => Release::Target(t.try_into()?),
        })
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
    /// Installs a block again when its time-to-live changed, so that the switch's own timeout
    /// follows (re-adding a flow with the same match and priority replaces it). Returns the
    /// handles, or None when the controller holds no timeout (the book alone changes). Unlike
    /// [`install`](Self::install) it never removes anything when it fails: the block stays.
    fn reinstall(
        &self,
        _spec: &BlockSpec,
    ) -> impl Future<Output = Result<Option<Vec<String>>, SdnError>> + Send {
        async { Ok(None) }
    }
    /// The highest block id whose flows the controller still holds (0: none), for controllers
    /// that can list their flows; None when this one cannot.
    fn highest_installed(&self) -> impl Future<Output = Option<Result<u64, SdnError>>> + Send {
        async { None }
    }
    /// Removes a block's flows or rules.
    fn uninstall(&self, block: &ActiveBlock) -> impl Future<Output = Result<(), SdnError>> + Send;
    /// Best-effort removal of every VESPA block the controller still holds, including ones a
    /// previous agent left behind.
    fn purge(&self) -> impl Future<Output = Result<(), SdnError>> + Send;
    /// Every VESPA block the switches hold, by cookie, whoever placed it (this agent, a
    /// previous one, someone behind its back); None when this controller cannot list its
    /// flows (then the book is all there is to show).
    fn held(&self) -> impl Future<Output = Option<Result<Vec<HeldFlow>, SdnError>>> + Send {
        async { None }
    }
    /// Removes every flow carrying block `id`'s cookie from every switch, whether the book
    /// knows the block or not; None when this controller cannot remove flows by cookie.
    fn remove_cookie(
        &self,
        _id: BlockId,
    ) -> impl Future<Output = Option<Result<(), SdnError>>> + Send {
        async { None }
    }
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
                // Already in force: its time-to-live restarts, in the switch too when the
                // switch enforces one (Floodlight's firewall, which would refuse a "similar
                // rule", holds none and is not asked).
                let spec = BlockSpec {
                    id: b.id,
                    target,
                    ttl,
                };
                let handles = if b.ttl_s.is_some() || ttl.is_some() {
                    let what = format!("{} refresh {target}", self.name());
                    retry(&st.retry, &st.stats, &what, |_| self.reinstall(&spec)).await?
                } else {
                    None
                };
                st.blocks.refresh(b.id, ttl, handles);
                tracing::info!(controller = self.name(), block = b.id.0, %target, "block refreshed");
                return Ok(b.id);
            }
            if !st.blocks.is_seeded() {
                st.blocks.seed(self.first_id().await?);
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

    /// Where this agent's block ids start: above the highest VESPA block the controller still
    /// holds (a previous agent's), or at a random base when the controller cannot tell. A
    /// listing that fails for a passing reason fails the block (the install would fail too;
    /// the next block asks again); one the controller refuses for good falls back on the
    /// random base.
    fn first_id(&self) -> impl Future<Output = Result<BlockId, SdnError>> + Send {
        async move {
            let st = self.state();
            let what = format!("{} list VESPA flows", self.name());
            let listed = retry(&st.retry, &st.stats, &what, |_| async {
                self.highest_installed().await.transpose()
            })
            .await;
            let random = || {
                use rand::Rng;
                BlockId(rand::thread_rng().gen_range(RANDOM_ID_BASE))
            };
            Ok(match listed {
                Ok(Some(h)) => {
                    tracing::info!(
                        controller = self.name(),
                        highest_installed = h,
                        "block ids continue above the controller's VESPA flows"
                    );
                    BlockId(h + 1)
                }
                Ok(None) => random(),
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    let id = random();
                    tracing::warn!(controller = self.name(), error = ?crate::error::chain(&e), first = id.0, "cannot list the controller's VESPA flows; block ids start at a random base");
                    id
                }
            })
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
    /// The switches' VESPA flows as the first page of `vespa_flows` read them: the next
    /// pages are cut from it, so a listing is one snapshot and the controller is asked for
    /// its flow tables once per listing, not once per page.
    listing: std::sync::Mutex<Option<(tokio::time::Instant, Arc<Vec<HeldFlow>>)>>,
}

/// How long the first page's snapshot serves the following pages.
const LISTING_FOR: Duration = Duration::from_secs(30);

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
            listing: std::sync::Mutex::new(None),
        }
    }

    pub fn controller(&self) -> &Arc<C> {
        &self.ctrl
    }

    /// A block for `ttl`, or the agent's default time-to-live when the caller gave none.
    async fn block_verb(&self, target: Target, ttl: Option<Ttl>) -> VerbResult {
        let ttl = ttl.map_or(self.cfg.default_ttl, Ttl::duration);
        let target = BlockTarget::try_from(target).map_err(|e| self.fail("block", e))?;
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

impl<C: SdnController> SdnAgent<C> {
    /// One page of the VESPA blocks the switches hold (or, for a controller that cannot list
    /// its flows, the book's), each marked with whether the book knows it.
    async fn vespa_flows(&self, after: Option<u64>) -> VerbResult {
        let st = self.ctrl.state();
        let book = st.blocks.list();
        let snapshot = after.and_then(|_| {
            let kept = self.listing.lock().unwrap_or_else(|p| p.into_inner());
            kept.as_ref()
                .filter(|(at, _)| at.elapsed() < LISTING_FOR)
                .map(|(_, rows)| rows.clone())
        });
        if let Some(rows) = snapshot {
            return json(&page_of(rows.as_ref().clone(), &book, after));
        }
        let held = match self.ctrl.held().await {
            Some(r) => {
                let what = format!("{} list VESPA flows", self.ctrl.name());
                match r {
                    Ok(h) => h,
                    // Once more through the retry policy: the listing is what reconciliation
                    // judges by, a passing failure must not read as "nothing held".
                    Err(_) => retry(&st.retry, &st.stats, &what, |_| async {
                        self.ctrl.held().await.unwrap_or_else(|| Ok(Vec::new()))
                    })
                    .await
                    .map_err(|e| self.fail("vespa_flows", e))?,
                }
            }
            None => book
                .iter()
                .map(|b| HeldFlow {
                    id: b.id.0,
                    target: Some(b.target.into()),
                    remaining_s: b.expires_in_ms.map(|ms| ms.div_ceil(1000)),
                    flows: 0,
                    known: true,
                })
                .collect(),
        };
        let rows = Arc::new(held);
        *self.listing.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((tokio::time::Instant::now(), rows.clone()));
        json(&page_of(rows.as_ref().clone(), &book, after))
    }

    /// Records a block the switches hold that the book lost, so that its release and its
    /// time-to-live work again.
    async fn adopt(&self, id: u64, target: Target, ttl: Option<Ttl>) -> VerbResult {
        let target = BlockTarget::try_from(target).map_err(|e| self.fail("adopt_block", e))?;
        let st = self.ctrl.state();
        let _op = st.ops.lock().await;
        let id = BlockId(id);
        if let Some(b) = st.blocks.by_target(&target) {
            return Err(format!("{target} is already block {} of this agent", b.id));
        }
        if !st.blocks.matching(Release::Id(id)).is_empty() {
            return Err(format!("block {id} is already in this agent's book"));
        }
        let ttl = ttl.and_then(Ttl::duration);
        st.blocks.insert(&BlockSpec { id, target, ttl }, Vec::new());
        tracing::info!(controller = self.ctrl.name(), block = id.0, %target, "block adopted from the switches");
        json(&serde_json::json!({ "adopted": id, "target": target }))
    }

    /// Removes block `id`'s flows: through the book when it knows the block, else by cookie.
    async fn drop_flows(&self, id: u64) -> VerbResult {
        let bid = BlockId(id);
        let st = self.ctrl.state();
        if !st.blocks.matching(Release::Id(bid)).is_empty() {
            let ids = self
                .ctrl
                .release(Release::Id(bid))
                .await
                .map_err(|e| self.fail("drop_flows", e))?;
            return json(&serde_json::json!({ "released": ids }));
        }
        let _op = st.ops.lock().await;
        match self.ctrl.remove_cookie(bid).await {
            None => {
                return Err(format!(
                    "{} cannot remove flows by cookie: block {id} is unknown to this agent",
                    self.ctrl.name()
                ))
            }
            Some(Ok(())) => {}
            Some(Err(_)) => {
                let what = format!("{} remove cookie {:#x}", self.ctrl.name(), bid.cookie());
                retry(&st.retry, &st.stats, &what, |_| async {
                    self.ctrl.remove_cookie(bid).await.unwrap_or(Ok(()))
                })
                .await
                .map_err(|e| self.fail("drop_flows", e))?;
            }
        }
        tracing::info!(
            controller = self.ctrl.name(),
            block = id,
            "stray VESPA flows removed"
        );
        json(&serde_json::json!({ "released": [id] }))
    }
}

/// The rows of `held` above `after`, by id, at most [`LIST_PAGE`], each marked known when the
/// book has its id.
fn page_of(
    mut held: Vec<HeldFlow>,
    book: &[ActiveBlock],
    after: Option<u64>,
) -> Page<HeldFlow, u64> {
    held.retain(|h| after.is_none_or(|a| h.id > a));
    held.sort_by_key(|h| h.id);
    held.dedup_by_key(|h| h.id);
    let more = held.len() > LIST_PAGE;
    held.truncate(LIST_PAGE);
    let known: std::collections::HashSet<u64> = book.iter().map(|b| b.id.0).collect();
    for h in &mut held {
        h.known = known.contains(&h.id);
    }
    let next = more.then(|| held.last().map(|h| h.id)).flatten();
    Page { rows: held, next }
}

impl From<BlockTarget> for Target {
    fn from(t: BlockTarget) -> Target {
        match t {
            BlockTarget::Mac(m) => Target::Mac(m),
            BlockTarget::Ip(ip) => Target::Ip(ip),
        }
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
                        .release(sel.try_into().map_err(|e| self.fail("release", e))?)
                        .await
                        .map_err(|e| self.fail("release", e))?,
                };
                json(&serde_json::json!({ "released": ids }))
            }
            SdnVerb::StatusHackers {} => json(&self.ctrl.status()),
            SdnVerb::GetTopology {} => self.stats("topology", self.ctrl.topology()).await,
            SdnVerb::GetLinkStats {} => self.stats("link_stats", self.ctrl.link_stats()).await,
            SdnVerb::GetFlowStats {} => self.stats("flow_stats", self.ctrl.flow_stats()).await,
            SdnVerb::VespaFlows { after } => self.vespa_flows(after).await,
            SdnVerb::AdoptBlock { id, target, ttl } => self.adopt(id, target, ttl).await,
            SdnVerb::DropFlows { id } => self.drop_flows(id).await,
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
    fn flows_are_listed_by_id_page_by_page_and_marked_known() {
        let row = |id: u64| HeldFlow {
            id,
            target: Some(Target::Ip(IpAddr::from([10, 0, (id >> 8) as u8, id as u8]))),
            remaining_s: Some(u64::MAX),
            flows: u32::MAX,
            known: false,
        };
        let held: Vec<_> = (1..=4_500).rev().map(row).collect();
        let book_book = BlockBook::default();
        let spec = BlockSpec {
            id: BlockId(7),
            target: "10.0.0.7".parse().expect("ip"),
            ttl: None,
        };
        book_book.insert(&spec, Vec::new());
        let book = book_book.list();
        let first = page_of(held.clone(), &book, None);
        assert_eq!(first.rows.len(), LIST_PAGE);
        assert_eq!(first.next, Some(LIST_PAGE as u64));
        assert!(first.rows[6].known && !first.rows[5].known);
        let text = serde_json::to_vec(&first).expect("json");
        assert!(
            text.len() < vespa_proto::frame::DEFAULT_MAX_FRAME / 2,
            "{} bytes",
            text.len()
        );
        let last = page_of(held, &book, Some(4_000));
        assert_eq!(last.rows.len(), 500);
        assert_eq!(last.next, None);
    }

    #[test]
    fn cookies_are_tagged() {
        assert_eq!(BlockId(5).cookie(), 0x5645_5350_0000_0005);
        assert_eq!(BlockId(5).cookie() & COOKIE_TAG_MASK, COOKIE_TAG);
        assert_eq!(BlockId::of_cookie(BlockId(5).cookie()), Some(BlockId(5)));
        assert_eq!(BlockId::of_cookie(0x5), None);
        assert_eq!(BlockId::of_cookie(u64::MAX), None);
    }

    #[test]
    fn the_switch_timeout_is_the_ttl_rounded_up_plus_the_margin() {
        let spec = |ttl: Option<f64>| BlockSpec {
            id: BlockId(1),
            target: "10.0.0.1".parse().expect("ip"),
            ttl: ttl.map(Duration::from_secs_f64),
        };
        let m = SWITCH_TTL_MARGIN.as_secs() as u16;
        assert_eq!(spec(None).hard_timeout_s(), None);
        assert_eq!(spec(Some(300.0)).hard_timeout_s(), Some(300 + m));
        assert_eq!(spec(Some(0.3)).hard_timeout_s(), Some(1 + m));
        assert_eq!(spec(Some(65535.0)).hard_timeout_s(), None, "beyond 16 bits");
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
