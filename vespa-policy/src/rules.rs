//! Declarative rules, read from TOML.
//!
//! ```toml
//! dry_run = false                 # record actions as Action::DryRun instead
//! own_macs = ["52:54:00:00:00:01"] # never blocked (2014 blocked its own MAC)
//!
//! [actuators]                     # agent names actions are sent through
//! sdn = "Agent_Controller"        # block / release
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
//! ladder = [{ action = "block", ttl_s = 600 }, { action = "cut_link" }, { action = "migrate" }]
//! ```
//!
//! Unknown keys are errors (`deny_unknown_fields`): a misspelt `belw = 20` silently ignored
//! would leave a block that is never released. Every error names the line and the field.

use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use crate::types::{Mac, Metric, Nanos, SECOND};

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

/// One rung of an escalation ladder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Block the offender (MAC when known and not ours, else IP) for a TTL.
    Block { ttl_ns: Nanos },
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
    rule: Vec<Spanned<RawRule>>,
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
}

/// Durations above this are refused: they would overflow nanoseconds or mean "forever" by
/// accident (a week is longer than any block an operator means to leave unattended).
const MAX_SECONDS: u64 = 7 * 24 * 3600;

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |head| head.matches('\n').count() + 1)
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
        let err = |offset: usize, field: &str, message: String| RulesError {
            line: Some(line_of(text, offset)),
            field: Some(field.to_string()),
            message,
        };
        let mut own_macs = Vec::new();
        for m in &raw.own_macs {
            own_macs.push(
                m.get_ref()
                    .parse::<Mac>()
                    .map_err(|e| err(m.span().start, "own_macs", e))?,
            );
        }
        let secs = |offset: usize, field: &str, s: u64| {
            if s > MAX_SECONDS {
                Err(err(
                    offset,
                    field,
                    format!("{s} s is more than the {MAX_SECONDS} s allowed"),
                ))
            } else {
                Ok(s * SECOND)
            }
        };
        let mut rules: Vec<Rule> = Vec::new();
        for spanned in &raw.rule {
            let at = spanned.span().start;
            let r = spanned.get_ref();
            let field = |f: &str| format!("rule {:?}: {f}", r.name);
            if r.name.is_empty() {
                return Err(err(at, "rule: name", "must not be empty".into()));
            }
            if rules.iter().any(|other| other.name == r.name) {
                return Err(err(
                    at,
                    &field("name"),
                    "a rule of this name is already defined".into(),
                ));
            }
            if r.below > r.above {
                return Err(err(
                    at,
                    &field("below"),
                    format!(
                        "{} is above `above` ({}): no hysteresis band",
                        r.below, r.above
                    ),
                ));
            }
            if r.window_s == 0 {
                return Err(err(at, &field("window_s"), "must be at least 1".into()));
            }
            if r.max_keys == 0 {
                return Err(err(at, &field("max_keys"), "must be at least 1".into()));
            }
            if r.ladder.is_empty() {
                return Err(err(at, &field("ladder"), "needs at least one step".into()));
            }
            if let Some(place) = &r.at {
                if place.get_ref().trim().is_empty() {
                    return Err(err(
                        place.span().start,
                        &field("at"),
                        "must name a horizontal orchestrator (leave `at` out to run the rule at the VO)"
                            .into(),
                    ));
                }
            }
            let mut ladder = Vec::new();
            for step in &r.ladder {
                let s_at = step.span().start;
                let s = step.get_ref();
                let parsed = match (s.action.as_str(), s.ttl_s) {
                    ("block", Some(ttl)) if ttl > 0 => Step::Block {
                        ttl_ns: secs(s_at, &field("ladder.ttl_s"), ttl)?,
                    },
                    ("block", _) => {
                        return Err(err(
                            s_at,
                            &field("ladder.ttl_s"),
                            "a block needs ttl_s > 0 (blocks always expire)".into(),
                        ))
                    }
                    ("cut_link", None) => Step::CutLink,
                    ("migrate", None) => Step::Migrate,
                    ("cut_link" | "migrate", Some(_)) => {
                        return Err(err(
                            s_at,
                            &field("ladder.ttl_s"),
                            format!("only block takes a ttl_s, not {}", s.action),
                        ))
                    }
                    (other, _) => {
                        return Err(err(
                            s_at,
                            &field("ladder.action"),
                            format!(
                                "unknown action {other:?} (expected block, cut_link or migrate)"
                            ),
                        ))
                    }
                };
                ladder.push(parsed);
            }
            rules.push(Rule {
                name: r.name.clone(),
                metric: match r.metric {
                    RawMetric::Established => Metric::Established,
                    RawMetric::SynRate => Metric::SynRate,
                    RawMetric::RxBytes => Metric::RxBytes,
                    RawMetric::TxBytes => Metric::TxBytes,
                },
                key: r.key,
                aggregate: r.aggregate,
                window_ns: secs(at, &field("window_s"), r.window_s)?,
                above: r.above,
                below: r.below,
                calm_ns: secs(at, &field("calm_s"), r.calm_s)?,
                cooldown_ns: secs(at, &field("cooldown_s"), r.cooldown_s)?,
                verify_ns: secs(at, &field("verify_s"), r.verify_s)?,
                forget_ns: secs(at, &field("forget_s"), r.forget_s)?,
                ladder,
                max_keys: r.max_keys,
                verify_max: r.verify_max.unwrap_or(r.above),
                at: r.at.as_ref().map(|p| p.get_ref().clone()),
            });
        }
        Ok(Rules {
            dry_run: raw.dry_run,
            own_macs,
            actuators: raw.actuators,
            blind_spot_cooldown_ns: raw.blind_spot.cooldown_s.min(MAX_SECONDS) * SECOND,
            isolate_infected: raw.infection.isolate,
            rules,
        })
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
}
