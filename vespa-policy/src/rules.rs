//! Declarative rules, read from TOML.
//!
//! ```toml
//! dry_run = false                 # record actions as Action::DryRun instead
//! own_macs = ["52:54:00:00:00:01"] # never blocked (2014 blocked its own MAC)
//!
//! [actuators]                     # agent names actions are sent through
//! sdn = "Agent_Controller"        # block / release (when no firewall is named)
//! firewall = "Agent_Firewall"     # optional: block / release in the host's kernel, throttle,
//!                                 # the kernel reflex, the allowlist (default for blocks)
//! libvirt = "Agent_Libvirt"       # cut_link / connect_link / migrate
//! quarantine = "quarantine"       # migration destination
//! av = "Agent_AV"
//! hypervisor = "Agent_HY"         # the AV agent's path to an isolated VM
//!
//! [blind_spot]
//! cooldown_s = 60                 # at most one blind-spot alert per source per minute
//!
//! [infection]
//! isolate = true                  # infected VM: cut its link, AV through the hypervisor
//!
//! [reconcile]                     # what the actuators hold compared with what is wanted
//! every_s = 60                    # at start and this often (0: never)
//! reflex_grace_s = 30             # a kernel reflex block not adopted is left this long
//!
//! [allowlist]                     # never blocked nor throttled (besides the tree's own
//! targets = ["10.0.0.0/8", "52:54:00:00:00:01"]  # machines and controllers, automatically)
//!
//! [[rule]]
//! name = "conn-flood"             # state survives a reload under the same name
//! at = "HO_PH"                    # where it runs: an HO whose subtree holds the rule's
//!                                 # sensors and actuators (fast path); default: the VO
//! metric = "established"          # established | syn_rate | rx_bytes | tx_bytes
//! key = "remote"                  # remote | vm | iface | mac
//! aggregate = "max"               # max | mean | rate (per second), over window_s
//! window_s = 1
//! above = 100                     # offending when the aggregate is > above
//! below = 20                      # calm when < below (hysteresis between the two)
//! calm_s = 120                    # calm this long -> release
//! cooldown_s = 30                 # minimum time between two actions on a key
//! verify_s = 30                   # deadline for the action to show (0: no verification)
//! verify_max = 100                # "it took" = current value <= this (default: above)
//! forget_s = 3600                 # calm this long -> back to the ladder's first rung
//! max_keys = 100000               # keys tracked at most (blind-spot alert beyond)
//! max_blocks = 1000               # blocks and throttles this rule holds at once, at most
//! max_blocks_per_min = 100        # new ones per minute, at most (an alert says when capped)
//! v6_prefix = 64                  # key remote: IPv6 addresses count as their /64
//! reflex = true                   # the firewall's kernel blocks at `above` by itself
//! reflex_ttl_s = 600              # (syn_rate or established, key remote; default: the
//! reflex_max = 1024               #  first block's ttl_s) at most this many at once
//! ladder = [{ action = "throttle", rate = "8mbit", ttl_s = 600 },  # or "1000pps"
//!           { action = "block", ttl_s = 600, via = "firewall" },   # or "sdn" (not with
//!                                                         # v6_prefix); default: firewall if named
//!           { action = "cut_link" }, { action = "migrate" }]
//! ```
//!
//! Unknown keys are errors (`deny_unknown_fields`): a misspelt `belw = 20` silently ignored
//! would leave a block that is never released. Every error names the line and the field.

use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use crate::types::{Key, Mac, Metric, Nanos, Prefix, Rate, Target, SECOND};

/// The shipped policy: the 2014 one with its defects fixed.
///
/// 2014 blocked the monitored host's *own* eth0 MAC and "released" by blocking again; here the
/// block targets the attacker (its MAC when the neighbour view knows it, else its address),
/// `own_macs` can never be blocked, and calm sends a real release. Repeated offences climb a
/// ladder instead of repeating the same block forever.
pub const DEFAULT_RULES: &str = r#"
dry_run = false
# The VO host's own MACs: never blocked, whatever the neighbour view says.
own_macs = []

[actuators]
sdn = "Agent_Controller"
libvirt = "Agent_Libvirt"
quarantine = "quarantine"
av = "Agent_AV"
hypervisor = "Agent_HY"

[blind_spot]
cooldown_s = 60

[infection]
# Infected file in a VM: cut its link and switch the AV agent to the hypervisor path.
isolate = true

[[rule]]
name = "conn-flood"
metric = "established"
key = "remote"
aggregate = "max"
# Max over 5 s: one missed or late 1 Hz sample neither starts nor interrupts "calm".
window_s = 5
above = 100
below = 20
calm_s = 120
cooldown_s = 30
verify_s = 30
forget_s = 3600
max_keys = 100000
ladder = [
  { action = "block", ttl_s = 600 },
  { action = "block", ttl_s = 3600 },
  { action = "cut_link" },
  { action = "migrate" },
]
"#;

/// How a rule reduces its window of samples to one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// The largest sample in the window (gauges: connections, SYNs per second).
    Max,
    /// The mean of the samples in the window.
    Mean,
    /// Increase per second across the window (running totals: bytes).
    Rate,
}

/// Which kind of key a rule tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Remote,
    Vm,
    Iface,
    Mac,
}

/// The agent a block goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `[actuators] sdn`: the SDN controller's agent (addresses and MACs).
    Sdn,
    /// `[actuators] firewall`: the firewall agent, in the host's kernel (prefixes too).
    Firewall,
}

/// One rung of an escalation ladder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Block the offender (MAC when known and not ours, else IP; its prefix for a
    /// `v6_prefix` rule) for a TTL, through `via`.
    Block { ttl_ns: Nanos, via: Via },
    /// Limit the offender's traffic to `rate` for a TTL, through the firewall agent.
    Throttle { rate: Rate, ttl_ns: Nanos },
    /// Cut the offending VM's link.
    CutLink,
    /// Migrate the offending VM to the quarantine host.
    Migrate,
}

/// One threshold rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique; a reload keeps the state of the rule with the same name, metric and key kind.
    pub name: String,
    /// The counter this rule watches.
    pub metric: Metric,
    /// What the counter is tracked by (one window and one ladder position per key).
    pub key: KeyKind,
    /// How the window becomes one value.
    pub aggregate: Aggregate,
    /// Length of the sliding window.
    pub window_ns: Nanos,
    /// Offending when the aggregate is strictly above this.
    pub above: u64,
    /// Calm when strictly below this (hysteresis: between the two nothing changes).
    pub below: u64,
    /// Calm this long before release.
    pub calm_ns: Nanos,
    /// Minimum time between two actions on one key (escalation on failed verification excepted).
    pub cooldown_ns: Nanos,
    /// Deadline for the counters to show the traffic stopped; 0 disables verification.
    pub verify_ns: Nanos,
    /// Calm this long after release and the key starts again at the ladder's bottom.
    pub forget_ns: Nanos,
    /// What successive offences do, bottom first; the top rung repeats no further.
    pub ladder: Vec<Step>,
    /// After `verify_ns`, the current value must be at most this for the action to count.
    pub verify_max: u64,
    /// Keys tracked at most; beyond, new keys are ignored and a blind-spot alert says so
    /// (spoofed sources must not grow the VO's memory without bound).
    pub max_keys: usize,
    /// The horizontal orchestrator that runs this rule (a fast path within its layer), or
    /// `None` for the VO. The engine does not read it: whoever drives a [`crate::State`]
    /// gives it the rules placed at its node ([`Rules::placed_at`]).
    pub at: Option<String>,
    /// The firewall agent's kernel blocks by itself at `above` (`reflex = true`).
    pub reflex: Option<Reflex>,
    /// Blocks and throttles the rule holds at once, at most (`None`: no cap).
    pub max_blocks: Option<usize>,
    /// New blocks and throttles per minute, at most (`None`: no cap).
    pub max_blocks_per_min: Option<usize>,
    /// IPv6 remotes are tracked, escalated and blocked as their prefix of this length.
    pub v6_prefix: Option<u8>,
}

/// A rule's kernel reflex: how long the kernel's own blocks last, and how many at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reflex {
    pub ttl_ns: Nanos,
    pub max: u64,
}

/// What the firewall agent's `reflex` verb is told: the thresholds of the reflex rules (0 for
/// a cause no rule uses), the longest TTL and the largest maximum among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReflexSetting {
    pub syn_per_s: u64,
    pub conn: u64,
    pub ttl_ns: Nanos,
    pub max: u64,
}

impl ReflexSetting {
    /// The reflex off (no rule asks for it).
    pub const OFF: ReflexSetting = ReflexSetting {
        syn_per_s: 0,
        conn: 0,
        ttl_ns: 0,
        max: 0,
    };
}

impl Rule {
    /// The key this rule tracks `key` as: an IPv6 remote as its `v6_prefix` prefix.
    pub fn key_of<'k>(&self, key: &'k Key) -> std::borrow::Cow<'k, Key> {
        use std::borrow::Cow;
        match (key, self.v6_prefix) {
            (Key::Remote(ip @ std::net::IpAddr::V6(_)), Some(bits)) if bits < 128 => {
                Prefix::new(*ip, bits).map_or(Cow::Borrowed(key), |p| Cow::Owned(Key::Net(p)))
            }
            _ => Cow::Borrowed(key),
        }
    }
}

/// Agent names the actions are sent through.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actuators {
    pub sdn: String,
    pub libvirt: String,
    pub quarantine: String,
    pub av: String,
    pub hypervisor: String,
    /// The firewall agent (`agent_firewall`): blocks go there unless a rung says
    /// `via = "sdn"`; throttles, the kernel reflex and the allowlist need it.
    #[serde(default)]
    pub firewall: Option<String>,
}

impl Actuators {
    /// The agent of `via`; the SDN agent when `via` is the firewall but none is named (a
    /// loaded rule never asks that: the file is refused).
    pub fn of(&self, via: Via) -> &str {
        match (via, &self.firewall) {
            (Via::Firewall, Some(fw)) => fw,
            _ => &self.sdn,
        }
    }

    /// Where a block goes unless a rung says otherwise: the firewall agent when one is
    /// named, else the SDN agent.
    pub fn default_block(&self) -> Via {
        if self.firewall.is_some() {
            Via::Firewall
        } else {
            Via::Sdn
        }
    }
}

/// The whole policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Start in dry-run (`Input::SetDryRun` overrides it).
    pub dry_run: bool,
    /// The VO side's own MACs, never a block target.
    pub own_macs: Vec<Mac>,
    pub actuators: Actuators,
    /// Minimum time between two blind-spot alerts from one source.
    pub blind_spot_cooldown_ns: Nanos,
    /// Isolate a VM with an infected file (cut link, AV through the hypervisor).
    pub isolate_infected: bool,
    /// Protected sources (`[allowlist] targets`): never blocked nor throttled.
    pub allowlist: Vec<Target>,
    /// How often the driver compares what the actuators hold with what is in place
    /// (`[reconcile] every_s`; 0: never). The policy itself never reads it.
    pub reconcile_every_ns: Nanos,
    /// How long a kernel reflex block the policy has not adopted is left alone by
    /// reconciliation (`[reconcile] reflex_grace_s`).
    pub reflex_grace_ns: Nanos,
    pub rules: Vec<Rule>,
}

/// A rules file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RulesError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The offending field, when known.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rules")?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    own_macs: Vec<Spanned<String>>,
    actuators: Actuators,
    #[serde(default)]
    blind_spot: RawBlindSpot,
    #[serde(default)]
    infection: RawInfection,
    #[serde(default)]
    reconcile: RawReconcile,
    #[serde(default)]
    allowlist: RawAllowlist,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAllowlist {
    #[serde(default)]
    targets: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlindSpot {
    cooldown_s: u64,
}

impl Default for RawBlindSpot {
    fn default() -> Self {
        RawBlindSpot { cooldown_s: 60 }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawReconcile {
    every_s: u64,
    reflex_grace_s: u64,
}

impl Default for RawReconcile {
    fn default() -> Self {
        RawReconcile {
            every_s: 60,
            reflex_grace_s: 30,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInfection {
    isolate: bool,
}

impl Default for RawInfection {
    fn default() -> Self {
        RawInfection { isolate: true }
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawMetric {
    Established,
    SynRate,
    RxBytes,
    TxBytes,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    metric: RawMetric,
    key: KeyKind,
    #[serde(default = "default_aggregate")]
    aggregate: Aggregate,
    window_s: u64,
    above: u64,
    below: u64,
    calm_s: u64,
    #[serde(default)]
    cooldown_s: u64,
    #[serde(default)]
    verify_s: u64,
    #[serde(default = "default_forget")]
    forget_s: u64,
    ladder: Vec<Spanned<RawStep>>,
    verify_max: Option<u64>,
    #[serde(default = "default_max_keys")]
    max_keys: usize,
    at: Option<Spanned<String>>,
    reflex: Option<Spanned<bool>>,
    reflex_ttl_s: Option<Spanned<u64>>,
    reflex_max: Option<Spanned<u64>>,
    max_blocks: Option<Spanned<usize>>,
    max_blocks_per_min: Option<Spanned<usize>>,
    v6_prefix: Option<Spanned<u8>>,
}

fn default_max_keys() -> usize {
    100_000
}

fn default_aggregate() -> Aggregate {
    Aggregate::Max
}

fn default_forget() -> u64 {
    3600
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    action: String,
    ttl_s: Option<u64>,
    rate: Option<String>,
    via: Option<String>,
}

/// The kernel reflex's maximum of blocks unless a rule says `reflex_max`.
const DEFAULT_REFLEX_MAX: u64 = 1024;

/// Durations above this are refused: they would overflow nanoseconds or mean "forever" by
/// accident (a week is longer than any block an operator means to leave unattended).
const MAX_SECONDS: u64 = 7 * 24 * 3600;

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |head| head.matches('\n').count() + 1)
}

/// Builds the errors of one file: each names the line of an offset and a field.
struct Errors<'a> {
    text: &'a str,
}

impl Errors<'_> {
    fn at(&self, offset: usize, field: &str, message: impl Into<String>) -> RulesError {
        RulesError {
            line: Some(line_of(self.text, offset)),
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    /// Seconds as nanoseconds, refused above [`MAX_SECONDS`].
    fn secs(&self, offset: usize, field: &str, s: u64) -> Result<Nanos, RulesError> {
        if s > MAX_SECONDS {
            Err(self.at(
                offset,
                field,
                format!("{s} s is more than the {MAX_SECONDS} s allowed"),
            ))
        } else {
            Ok(s * SECOND)
        }
    }

    /// A count that must be at least 1 when given (leave it out for no limit).
    fn at_least_one<T: Copy + PartialEq + From<u8>>(
        &self,
        v: &Option<Spanned<T>>,
        field: &str,
    ) -> Result<Option<T>, RulesError> {
        match v {
            Some(n) if *n.get_ref() == T::from(0) => Err(self.at(
                n.span().start,
                field,
                "must be at least 1 (leave it out for no limit)",
            )),
            Some(n) => Ok(Some(*n.get_ref())),
            None => Ok(None),
        }
    }
}

/// One rung of a ladder, checked against the actuators (`field` names the rule's fields).
fn parse_step(
    e: &Errors<'_>,
    step: &Spanned<RawStep>,
    actuators: &Actuators,
    field: &dyn Fn(&str) -> String,
) -> Result<Step, RulesError> {
    let at = step.span().start;
    let s = step.get_ref();
    let bad = |f: &str, m: String| e.at(at, &field(f), m);
    let only = |what: &str, of: &str| format!("only {of} takes a {what}, not {}", s.action);
    let ttl = |what: &str| match s.ttl_s {
        Some(ttl) if ttl > 0 => e.secs(at, &field("ladder.ttl_s"), ttl),
        _ => Err(bad(
            "ladder.ttl_s",
            format!("a {what} needs ttl_s > 0 ({what}s always expire)"),
        )),
    };
    let has_firewall = actuators.firewall.is_some();
    match s.action.as_str() {
        "block" => {
            if s.rate.is_some() {
                return Err(bad("ladder.rate", only("rate", "throttle")));
            }
            let via = match s.via.as_deref() {
                None => actuators.default_block(),
                Some("sdn") => Via::Sdn,
                Some("firewall") if has_firewall => Via::Firewall,
                Some("firewall") => {
                    return Err(bad(
                        "ladder.via",
                        "\"firewall\" needs a firewall agent: name it in [actuators] firewall"
                            .into(),
                    ))
                }
                Some(other) => {
                    return Err(bad(
                        "ladder.via",
                        format!("unknown {other:?} (expected \"firewall\" or \"sdn\")"),
                    ))
                }
            };
            Ok(Step::Block {
                ttl_ns: ttl("block")?,
                via,
            })
        }
        "throttle" => {
            if !has_firewall {
                return Err(bad(
                    "ladder.action",
                    "a throttle needs a firewall agent: name it in [actuators] firewall".into(),
                ));
            }
            if s.via.as_deref().is_some_and(|v| v != "firewall") {
                return Err(bad(
                    "ladder.via",
                    "a throttle goes to the firewall agent only".into(),
                ));
            }
            let rate = match s.rate.as_deref().map(str::parse::<Rate>) {
                Some(Ok(rate)) => rate,
                Some(Err(m)) => return Err(bad("ladder.rate", m)),
                None => {
                    return Err(bad(
                        "ladder.rate",
                        "a throttle needs a rate (\"8mbit\", \"1000pps\")".into(),
                    ))
                }
            };
            Ok(Step::Throttle {
                rate,
                ttl_ns: ttl("throttle")?,
            })
        }
        "cut_link" | "migrate" => {
            if s.ttl_s.is_some() {
                return Err(bad("ladder.ttl_s", only("ttl_s", "a block or a throttle")));
            }
            if s.rate.is_some() {
                return Err(bad("ladder.rate", only("rate", "throttle")));
            }
            if s.via.is_some() {
                return Err(bad("ladder.via", only("via", "block")));
            }
            Ok(if s.action == "cut_link" {
                Step::CutLink
            } else {
                Step::Migrate
            })
        }
        other => Err(bad(
            "ladder.action",
            format!("unknown action {other:?} (expected block, throttle, cut_link or migrate)"),
        )),
    }
}

/// A rule's `reflex`, `reflex_ttl_s` and `reflex_max`, checked; `ladder` is already parsed.
fn parse_reflex(
    e: &Errors<'_>,
    r: &RawRule,
    metric: Metric,
    ladder: &[Step],
    actuators: &Actuators,
    field: &dyn Fn(&str) -> String,
) -> Result<Option<Reflex>, RulesError> {
    let Some(on) = r.reflex.as_ref().filter(|on| *on.get_ref()) else {
        for (extra, name) in [
            (&r.reflex_ttl_s, "reflex_ttl_s"),
            (&r.reflex_max, "reflex_max"),
        ] {
            if let Some(x) = extra {
                return Err(e.at(x.span().start, &field(name), "only with reflex = true"));
            }
        }
        return Ok(None);
    };
    let at = on.span().start;
    if r.key != KeyKind::Remote || !matches!(metric, Metric::SynRate | Metric::Established) {
        return Err(e.at(
            at,
            &field("reflex"),
            "the kernel reflex counts SYNs per second and established connections per remote: \
             only a rule on syn_rate or established with key = \"remote\" can have one",
        ));
    }
    if actuators.firewall.is_none() {
        return Err(e.at(
            at,
            &field("reflex"),
            "the kernel reflex needs a firewall agent: name it in [actuators] firewall",
        ));
    }
    let first_block = ladder.iter().find_map(|s| match s {
        Step::Block { ttl_ns, .. } => Some(*ttl_ns),
        _ => None,
    });
    let ttl_ns = match (&r.reflex_ttl_s, first_block) {
        (Some(t), _) if *t.get_ref() == 0 => {
            return Err(e.at(
                t.span().start,
                &field("reflex_ttl_s"),
                "must be more than 0 (blocks always expire)",
            ))
        }
        (Some(t), _) => e.secs(t.span().start, &field("reflex_ttl_s"), *t.get_ref())?,
        (None, Some(ttl)) => ttl,
        (None, None) => {
            return Err(e.at(
                at,
                &field("reflex_ttl_s"),
                "needed: the ladder has no block to take the kernel's block TTL from",
            ))
        }
    };
    let max = e
        .at_least_one(&r.reflex_max, &field("reflex_max"))?
        .unwrap_or(DEFAULT_REFLEX_MAX);
    Ok(Some(Reflex { ttl_ns, max }))
}

impl Rules {
    /// Parses and validates a rules file.
    pub fn from_toml(text: &str) -> Result<Rules, RulesError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| RulesError {
            line: e.span().map(|s| line_of(text, s.start)),
            // serde names the key in backticks ("unknown field `belw`, expected ...").
            field: e.message().split('`').nth(1).map(str::to_string),
            message: e.message().trim().to_string(),
        })?;
        let e = Errors { text };
        let mut own_macs = Vec::new();
        for m in &raw.own_macs {
            own_macs.push(
                m.get_ref()
                    .parse::<Mac>()
                    .map_err(|why| e.at(m.span().start, "own_macs", why))?,
            );
        }
        let mut allowlist = Vec::new();
        for t in &raw.allowlist.targets {
            let target = t
                .get_ref()
                .parse::<Target>()
                .map_err(|why| e.at(t.span().start, "allowlist.targets", why))?;
            if !allowlist.contains(&target) {
                allowlist.push(target);
            }
        }
        let mut rules: Vec<Rule> = Vec::new();
        for spanned in &raw.rule {
            rules.push(Rules::parse_rule(&e, spanned, &raw.actuators, &rules)?);
        }
        Ok(Rules {
            dry_run: raw.dry_run,
            own_macs,
            actuators: raw.actuators,
            blind_spot_cooldown_ns: raw.blind_spot.cooldown_s.min(MAX_SECONDS) * SECOND,
            isolate_infected: raw.infection.isolate,
            allowlist,
            reconcile_every_ns: raw.reconcile.every_s.min(MAX_SECONDS) * SECOND,
            reflex_grace_ns: raw.reconcile.reflex_grace_s.min(MAX_SECONDS) * SECOND,
            rules,
        })
    }

    /// One `[[rule]]`, checked against the actuators and the rules before it.
    fn parse_rule(
        e: &Errors<'_>,
        spanned: &Spanned<RawRule>,
        actuators: &Actuators,
        before: &[Rule],
    ) -> Result<Rule, RulesError> {
        let at = spanned.span().start;
        let r = spanned.get_ref();
        let field = |f: &str| format!("rule {:?}: {f}", r.name);
        if r.name.is_empty() {
            return Err(e.at(at, "rule: name", "must not be empty"));
        }
        if before.iter().any(|other| other.name == r.name) {
            return Err(e.at(at, &field("name"), "a rule of this name is already defined"));
        }
        if r.below > r.above {
            return Err(e.at(
                at,
                &field("below"),
                format!(
                    "{} is above `above` ({}): no hysteresis band",
                    r.below, r.above
                ),
            ));
        }
        if r.window_s == 0 {
            return Err(e.at(at, &field("window_s"), "must be at least 1"));
        }
        if r.max_keys == 0 {
            return Err(e.at(at, &field("max_keys"), "must be at least 1"));
        }
        if r.ladder.is_empty() {
            return Err(e.at(at, &field("ladder"), "needs at least one step"));
        }
        if let Some(place) = &r.at {
            if place.get_ref().trim().is_empty() {
                return Err(e.at(
                    place.span().start,
                    &field("at"),
                    "must name a horizontal orchestrator (leave `at` out to run the rule at the VO)",
                ));
            }
        }
        let ladder = r
            .ladder
            .iter()
            .map(|step| parse_step(e, step, actuators, &field))
            .collect::<Result<Vec<Step>, RulesError>>()?;
        let metric = match r.metric {
            RawMetric::Established => Metric::Established,
            RawMetric::SynRate => Metric::SynRate,
            RawMetric::RxBytes => Metric::RxBytes,
            RawMetric::TxBytes => Metric::TxBytes,
        };
        let reflex = parse_reflex(e, r, metric, &ladder, actuators, &field)?;
        let twice = before
            .iter()
            .find(|o| o.reflex.is_some() && o.metric == metric);
        if let (Some(on), Some(other), Some(_)) = (&r.reflex, twice, reflex) {
            return Err(e.at(
                on.span().start,
                &field("reflex"),
                format!(
                    "rule {:?} already sets the kernel reflex on this metric",
                    other.name
                ),
            ));
        }
        let v6_prefix = match &r.v6_prefix {
            Some(p) if !(1..=128).contains(p.get_ref()) => {
                return Err(e.at(p.span().start, &field("v6_prefix"), "must be 1 to 128"))
            }
            Some(p) if r.key != KeyKind::Remote => {
                return Err(e.at(
                    p.span().start,
                    &field("v6_prefix"),
                    "aggregates remote addresses: only with key = \"remote\"",
                ))
            }
            Some(p)
                if ladder
                    .iter()
                    .any(|s| matches!(s, Step::Block { via: Via::Sdn, .. })) =>
            {
                return Err(e.at(
                    p.span().start,
                    &field("v6_prefix"),
                    "a prefix is blocked by a firewall agent only, and a block of this ladder \
                     goes to the SDN agent",
                ))
            }
            p => p.as_ref().map(|p| *p.get_ref()),
        };
        Ok(Rule {
            name: r.name.clone(),
            metric,
            key: r.key,
            aggregate: r.aggregate,
            window_ns: e.secs(at, &field("window_s"), r.window_s)?,
            above: r.above,
            below: r.below,
            calm_ns: e.secs(at, &field("calm_s"), r.calm_s)?,
            cooldown_ns: e.secs(at, &field("cooldown_s"), r.cooldown_s)?,
            verify_ns: e.secs(at, &field("verify_s"), r.verify_s)?,
            forget_ns: e.secs(at, &field("forget_s"), r.forget_s)?,
            ladder,
            max_keys: r.max_keys,
            verify_max: r.verify_max.unwrap_or(r.above),
            at: r.at.as_ref().map(|p| p.get_ref().clone()),
            reflex,
            max_blocks: e.at_least_one(&r.max_blocks, &field("max_blocks"))?,
            max_blocks_per_min: e
                .at_least_one(&r.max_blocks_per_min, &field("max_blocks_per_min"))?,
            v6_prefix,
        })
    }

    /// What the rules ask of the firewall agent's kernel reflex; `None` when no rule has
    /// `reflex = true`.
    pub fn reflex(&self) -> Option<ReflexSetting> {
        let mut out: Option<ReflexSetting> = None;
        for rule in &self.rules {
            let Some(reflex) = rule.reflex else { continue };
            let s = out.get_or_insert(ReflexSetting::OFF);
            match rule.metric {
                Metric::SynRate => s.syn_per_s = rule.above,
                _ => s.conn = rule.above,
            }
            s.ttl_ns = s.ttl_ns.max(reflex.ttl_ns);
            s.max = s.max.max(reflex.max);
        }
        out
    }

    /// The same policy with only the rules that run at `at` (`None`: the VO's, those without
    /// `at`). Everything else (actuators, own MACs, dry-run, blind-spot cool-down) is shared.
    pub fn placed_at(&self, at: Option<&str>) -> Rules {
        Rules {
            rules: self
                .rules
                .iter()
                .filter(|r| r.at.as_deref() == at)
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    /// The nodes other than the VO that rules are placed at, each once, in name order.
    pub fn placements(&self) -> Vec<&str> {
        let set: std::collections::BTreeSet<&str> =
            self.rules.iter().filter_map(|r| r.at.as_deref()).collect();
        set.into_iter().collect()
    }

    /// The shipped policy ([`DEFAULT_RULES`]); also `Rules::default()`.
    pub fn default_rules() -> Rules {
        // A constant checked by `default_rules_parse`; no input reaches this expect.
        Rules::from_toml(DEFAULT_RULES).expect("DEFAULT_RULES is valid (unit-tested)")
    }
}

impl Default for Rules {
    fn default() -> Rules {
        Rules::default_rules()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Target;

    #[test]
    fn default_rules_parse() {
        let r = Rules::from_toml(DEFAULT_RULES).expect("default rules must parse");
        assert_eq!(r.rules.len(), 1);
        let conn = &r.rules[0];
        assert_eq!(
            (conn.above, conn.below, conn.calm_ns),
            (100, 20, 120 * SECOND)
        );
        assert_eq!(
            conn.ladder.len(),
            4,
            "block, longer block, cut link, migrate"
        );
        assert!(r.isolate_infected);
        assert_eq!(
            (r.reconcile_every_ns, r.reflex_grace_ns),
            (60 * SECOND, 30 * SECOND),
            "reconciliation's defaults"
        );
    }

    #[test]
    fn reconciliation_settings_are_read_and_checked() {
        let with =
            |extra: &str| Rules::from_toml(&format!("{DEFAULT_RULES}\n[reconcile]\n{extra}\n"));
        let r = with("every_s = 5").expect("parses");
        assert_eq!(
            (r.reconcile_every_ns, r.reflex_grace_ns),
            (5 * SECOND, 30 * SECOND)
        );
        let r = with("every_s = 0\nreflex_grace_s = 2").expect("parses");
        assert_eq!((r.reconcile_every_ns, r.reflex_grace_ns), (0, 2 * SECOND));
        let e = with("every = 5").expect_err("unknown field");
        assert!(e.to_string().contains("every"), "{e}");
    }

    #[test]
    fn errors_name_line_and_field() {
        // (body, line within the body or 0 for "somewhere in it", text the error must show)
        let top: &[(&str, usize, &str)] = &[
            ("belw = 20", 1, "belw"),
            ("own_macs = [\"zz\"]", 1, "own_macs"),
        ];
        for (body, line, needle) in top {
            let text = format!("{body}\n[actuators]\nsdn = \"s\"\nlibvirt = \"l\"\nquarantine = \"q\"\nav = \"a\"\nhypervisor = \"h\"\n");
            let e = Rules::from_toml(&text).expect_err(&format!("{body:?} must be refused"));
            assert_eq!(e.field.as_deref(), Some(*needle), "{body:?}: {e}");
            assert!(
                e.to_string().contains(needle),
                "{body:?}: {e} should mention {needle:?}"
            );
            assert_eq!(e.line, Some(*line), "{body:?}: {e}");
        }
        let cases: &[(&str, usize, &str)] = &[
            ("[[rule]]\nname = \"x\"\nmetric = \"established\"\nkey = \"remote\"\nwindow_s = 1\nabove = 10\nbelow = 50\ncalm_s = 1\nladder = [{ action = \"block\", ttl_s = 1 }]", 0, "below"),
            ("[[rule]]\nname = \"x\"\nmetric = \"established\"\nkey = \"remote\"\nwindow_s = 1\nabove = 10\nbelow = 5\ncalm_s = 1\nladder = [\n{ action = \"block\" }]", 10, "ttl_s"),
            ("[[rule]]\nname = \"x\"\nmetric = \"established\"\nkey = \"remote\"\nwindow_s = 1\nabove = 10\nbelow = 5\ncalm_s = 1\nladder = [\n{ action = \"nuke\" }]", 10, "ladder.action"),
        ];
        let head = "[actuators]\nsdn = \"s\"\nlibvirt = \"l\"\nquarantine = \"q\"\nav = \"a\"\nhypervisor = \"h\"\n";
        let head_lines = head.matches('\n').count();
        for (body, line, needle) in cases {
            let text = format!("{head}{body}");
            let e = Rules::from_toml(&text).expect_err(&format!("{body:?} must be refused"));
            let shown = e.to_string();
            assert!(
                shown.contains(needle),
                "{body:?}: {shown:?} should mention {needle:?}"
            );
            if *line > 0 {
                assert_eq!(e.line, Some(head_lines + line), "{body:?}: {shown}");
            } else {
                assert!(e.line.is_some_and(|l| l > head_lines), "{body:?}: {shown}");
            }
        }
    }

    const HEAD: &str = "[actuators]\nsdn = \"s\"\nlibvirt = \"l\"\nquarantine = \"q\"\nav = \"a\"\nhypervisor = \"h\"\n";

    fn rule(name: &str, at: &str) -> String {
        format!("\n[[rule]]\nname = \"{name}\"\n{at}metric = \"established\"\nkey = \"remote\"\nwindow_s = 1\nabove = 10\nbelow = 5\ncalm_s = 1\nladder = [{{ action = \"block\", ttl_s = 1 }}]\n")
    }

    #[test]
    fn rules_are_placed_at_the_vo_unless_they_name_a_node() {
        let text = format!(
            "{HEAD}{}{}{}",
            rule("vo-rule", ""),
            rule("ph-rule", "at = \"HO_PH\"\n"),
            rule("vm-rule", "at = \"HO_VM\"\n")
        );
        let r = Rules::from_toml(&text).expect("rules with `at` parse");
        let at: Vec<Option<&str>> = r.rules.iter().map(|x| x.at.as_deref()).collect();
        assert_eq!(at, [None, Some("HO_PH"), Some("HO_VM")]);
        assert_eq!(r.placements(), ["HO_PH", "HO_VM"]);
        let names = |r: &Rules| -> Vec<String> { r.rules.iter().map(|x| x.name.clone()).collect() };
        assert_eq!(names(&r.placed_at(None)), ["vo-rule"]);
        assert_eq!(names(&r.placed_at(Some("HO_PH"))), ["ph-rule"]);
        assert!(r.placed_at(Some("HO_HY")).rules.is_empty());
        let share = r.placed_at(Some("HO_VM"));
        assert_eq!(
            (share.actuators, share.dry_run),
            (r.actuators.clone(), r.dry_run),
            "the rest is shared"
        );
        assert!(
            Rules::default_rules().placements().is_empty(),
            "the shipped rules run at the VO"
        );
    }

    #[test]
    fn an_empty_or_misspelt_at_is_refused_with_its_line() {
        let text = format!("{HEAD}{}", rule("x", "at = \" \"\n"));
        let e = Rules::from_toml(&text).expect_err("an empty `at` names nothing");
        assert_eq!(e.field.as_deref(), Some("rule \"x\": at"), "{e}");
        assert_eq!(e.line, Some(HEAD.matches('\n').count() + 4), "{e}");
        let text = format!("{HEAD}{}", rule("x", "at = 3\n"));
        let e = Rules::from_toml(&text).expect_err("`at` is a node name");
        assert!(e.to_string().contains("string"), "{e}");
        let text = format!("{HEAD}{}", rule("x", "where = \"HO_PH\"\n"));
        let e = Rules::from_toml(&text).expect_err("unknown key");
        assert_eq!(e.field.as_deref(), Some("where"), "{e}");
    }

    const FIREWALL: &str = "[actuators]\nsdn = \"s\"\nlibvirt = \"l\"\nquarantine = \"q\"\nav = \"a\"\nhypervisor = \"h\"\nfirewall = \"fw\"\n";

    /// A rule of `metric` and `key` with `extra` lines before its ladder.
    fn fw_rule(name: &str, metric: &str, key: &str, extra: &str, ladder: &str) -> String {
        format!("\n[[rule]]\nname = \"{name}\"\nmetric = \"{metric}\"\nkey = \"{key}\"\nwindow_s = 1\nabove = 100\nbelow = 20\ncalm_s = 10\n{extra}ladder = [{ladder}]\n")
    }

    #[test]
    fn throttle_via_reflex_caps_v6_prefix_and_the_allowlist_parse() {
        let text = format!(
            "{FIREWALL}\n[allowlist]\ntargets = [\"10.0.0.0/8\", \"52:54:00:00:00:01\", \"192.0.2.1/32\"]\n{}{}",
            fw_rule(
                "syn",
                "syn_rate",
                "remote",
                "reflex = true\nreflex_max = 64\nmax_blocks = 10\nmax_blocks_per_min = 5\nv6_prefix = 64\n",
                "{ action = \"throttle\", rate = \"8mbit\", ttl_s = 60 }, { action = \"block\", ttl_s = 600 }, { action = \"block\", ttl_s = 900, via = \"sdn\" }"
            )
            .replace("v6_prefix = 64\n", ""),
            fw_rule("conn", "established", "remote", "reflex = true\nreflex_ttl_s = 1200\nv6_prefix = 56\n", "{ action = \"throttle\", rate = \"1000pps\", ttl_s = 30, via = \"firewall\" }"),
        );
        let r = Rules::from_toml(&text).expect("firewall rules parse");
        assert_eq!(r.actuators.firewall.as_deref(), Some("fw"));
        assert_eq!(
            r.allowlist,
            [
                Target::Net("10.0.0.0/8".parse().unwrap()),
                Target::Mac("52:54:00:00:00:01".parse().unwrap()),
                Target::Ip("192.0.2.1".parse().unwrap()),
            ]
        );
        let syn = &r.rules[0];
        assert_eq!(
            syn.ladder,
            [
                Step::Throttle {
                    rate: Rate::Bytes(1_000_000),
                    ttl_ns: 60 * SECOND
                },
                Step::Block {
                    ttl_ns: 600 * SECOND,
                    via: Via::Firewall
                },
                Step::Block {
                    ttl_ns: 900 * SECOND,
                    via: Via::Sdn
                },
            ],
            "a block goes to the firewall unless it says sdn"
        );
        assert_eq!(
            syn.reflex,
            Some(Reflex {
                ttl_ns: 600 * SECOND,
                max: 64
            }),
            "the first block's TTL"
        );
        assert_eq!(
            (syn.max_blocks, syn.max_blocks_per_min),
            (Some(10), Some(5))
        );
        let conn = &r.rules[1];
        assert_eq!(
            conn.ladder,
            [Step::Throttle {
                rate: Rate::Packets(1000),
                ttl_ns: 30 * SECOND
            }]
        );
        assert_eq!((conn.v6_prefix, conn.max_blocks), (Some(56), None));
        assert_eq!(
            r.reflex(),
            Some(ReflexSetting {
                syn_per_s: 100,
                conn: 100,
                ttl_ns: 1200 * SECOND,
                max: 1024
            }),
            "both causes, the longer TTL, the larger maximum"
        );
        assert_eq!(Rules::default_rules().reflex(), None);
        let key = |s: &str| Key::Remote(s.parse().unwrap());
        assert_eq!(
            *conn.key_of(&key("2001:db8:0:ab::7")),
            Key::Net("2001:db8::/56".parse().unwrap())
        );
        assert_eq!(
            *conn.key_of(&key("192.0.2.7")),
            key("192.0.2.7"),
            "IPv4 stays"
        );
        assert_eq!(
            *syn.key_of(&key("2001:db8::7")),
            key("2001:db8::7"),
            "no v6_prefix"
        );
        // Without a firewall, blocks go to the SDN agent.
        let sdn_only = format!("{HEAD}{}", rule("x", ""));
        assert_eq!(
            Rules::from_toml(&sdn_only).unwrap().rules[0].ladder,
            [Step::Block {
                ttl_ns: SECOND,
                via: Via::Sdn
            }]
        );
    }

    #[test]
    fn firewall_errors_name_line_and_field() {
        let block = "{ action = \"block\", ttl_s = 60 }";
        let throttle = "{ action = \"throttle\", rate = \"8mbit\", ttl_s = 60 }";
        // (actuators, rule body lines, ladder, field, text the message must show); the
        // error's line is the rule's `[[rule]]` line, or the ladder's for ladder fields.
        let cases: &[(&str, &str, &str, &str, &str)] = &[
            (
                HEAD,
                "",
                throttle,
                "ladder.action",
                "a throttle needs a firewall agent: name it in [actuators] firewall",
            ),
            (
                FIREWALL,
                "",
                "{ action = \"throttle\", rate = \"8 furlongs\", ttl_s = 60 }",
                "ladder.rate",
                "is not a rate",
            ),
            (
                FIREWALL,
                "",
                "{ action = \"throttle\", ttl_s = 60 }",
                "ladder.rate",
                "needs a rate",
            ),
            (
                FIREWALL,
                "",
                "{ action = \"throttle\", rate = \"8mbit\" }",
                "ladder.ttl_s",
                "a throttle needs ttl_s > 0",
            ),
            (
                FIREWALL,
                "",
                "{ action = \"throttle\", rate = \"8mbit\", ttl_s = 60, via = \"sdn\" }",
                "ladder.via",
                "firewall agent only",
            ),
            (
                HEAD,
                "",
                "{ action = \"block\", ttl_s = 60, via = \"firewall\" }",
                "ladder.via",
                "needs a firewall agent",
            ),
            (
                FIREWALL,
                "",
                "{ action = \"block\", ttl_s = 60, via = \"nft\" }",
                "ladder.via",
                "unknown \"nft\"",
            ),
            (
                FIREWALL,
                "",
                "{ action = \"block\", ttl_s = 60, rate = \"1pps\" }",
                "ladder.rate",
                "only throttle takes a rate",
            ),
            (
                FIREWALL,
                "",
                "{ action = \"cut_link\", via = \"sdn\" }",
                "ladder.via",
                "only block takes a via",
            ),
            (
                HEAD,
                "reflex = true\n",
                block,
                "reflex",
                "needs a firewall agent",
            ),
            (
                FIREWALL,
                "reflex_ttl_s = 5\n",
                block,
                "reflex_ttl_s",
                "only with reflex = true",
            ),
            (
                FIREWALL,
                "reflex = true\n",
                throttle,
                "reflex_ttl_s",
                "the ladder has no block",
            ),
            (
                FIREWALL,
                "reflex = true\nreflex_max = 0\n",
                block,
                "reflex_max",
                "at least 1",
            ),
            (
                FIREWALL,
                "max_blocks = 0\n",
                block,
                "max_blocks",
                "at least 1",
            ),
            (
                FIREWALL,
                "max_blocks_per_min = 0\n",
                block,
                "max_blocks_per_min",
                "at least 1",
            ),
            (FIREWALL, "v6_prefix = 0\n", block, "v6_prefix", "1 to 128"),
            (
                FIREWALL,
                "v6_prefix = 64\n",
                "{ action = \"block\", ttl_s = 60, via = \"sdn\" }",
                "v6_prefix",
                "firewall agent only",
            ),
        ];
        let head_lines = |h: &str| h.matches('\n').count();
        for (actuators, extra, ladder, field, needle) in cases {
            let text = format!(
                "{actuators}{}",
                fw_rule("x", "syn_rate", "remote", extra, ladder)
            );
            let e = Rules::from_toml(&text).expect_err(&format!("{extra}{ladder} must be refused"));
            assert_eq!(
                e.field.as_deref(),
                Some(format!("rule \"x\": {field}").as_str()),
                "{e}"
            );
            assert!(e.message.contains(needle), "{e} should say {needle:?}");
            // The rule text starts with an empty line, then `[[rule]]`; its ladder is 8 lines
            // below that, plus the extra lines.
            let rule_line = head_lines(actuators) + 2;
            let ladder_line = rule_line + 8 + extra.matches('\n').count();
            let line = e.line.expect("a line");
            assert!(
                line == rule_line
                    || line == ladder_line
                    || (line > rule_line && line < ladder_line),
                "{e}: line {line} outside the rule ({rule_line}..={ladder_line})"
            );
            if field.starts_with("ladder") {
                assert_eq!(line, ladder_line, "{e}");
            }
        }
        // Only syn_rate or established per remote have a reflex; key vm has no v6_prefix.
        for (metric, key, extra, field) in [
            ("rx_bytes", "iface", "reflex = true\n", "reflex"),
            ("established", "vm", "reflex = true\n", "reflex"),
            ("established", "vm", "v6_prefix = 64\n", "v6_prefix"),
        ] {
            let text = format!("{FIREWALL}{}", fw_rule("x", metric, key, extra, block));
            let e = Rules::from_toml(&text).expect_err(extra);
            assert_eq!(e.field, Some(format!("rule \"x\": {field}")), "{e}");
        }
        // One reflex per metric.
        let text = format!(
            "{FIREWALL}{}{}",
            fw_rule("a", "syn_rate", "remote", "reflex = true\n", block),
            fw_rule("b", "syn_rate", "remote", "reflex = true\n", block)
        );
        let e = Rules::from_toml(&text).expect_err("two syn reflexes");
        assert!(
            e.to_string()
                .contains("rule \"a\" already sets the kernel reflex"),
            "{e}"
        );
        // The allowlist names its line.
        let text =
            format!("{FIREWALL}[allowlist]\ntargets = [\n\"10.0.0.0/8\",\n\"10.0.0.0/40\"]\n");
        let e = Rules::from_toml(&text).expect_err("a /40 of IPv4");
        assert_eq!(e.field.as_deref(), Some("allowlist.targets"), "{e}");
        assert_eq!(e.line, Some(head_lines(FIREWALL) + 4), "{e}");
    }
}
