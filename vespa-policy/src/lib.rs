//! The vertical orchestrator's policy engine, as a pure state machine.
//!
//! ```text
//! Input (alerts, samples, ticks, acks, operator) ──► step(&mut State, input, now) ──► Vec<Action>
//! ```
//!
//! **Architecture invariant: the policy does no I/O and reads no clock.** The VO feeds it
//! alerts, counter samples, periodic ticks and actuator acknowledgements, and carries out the
//! actions it returns (except [`Action::DryRun`] records, which it only logs, and
//! [`Action::Verified`], the outcome of a verification by counters, which it records with the
//! decision). That keeps every
//! behaviour — thresholds with hysteresis, cool-downs, escalation ladders, verification,
//! release when calm — testable and replayable without tokio or actuators.
//!
//! ```
//! use vespa_policy::{step, Action, Input, Key, Metric, Rules, State, Target, SECOND};
//!
//! let mut state = State::new(Rules::default_rules());
//! let attacker = Key::Remote("198.51.100.7".parse().expect("address"));
//! let sample = |value| Input::Sample { key: attacker.clone(), metric: Metric::Established, value };
//! let out = step(&mut state, sample(150), 0);
//! assert!(matches!(out.as_slice(), [Action::Block { target: Target::Ip(_), .. }]));
//! // Calm (< 20) for 120 s: released.
//! step(&mut state, sample(3), SECOND);
//! step(&mut state, Input::Tick, 10 * SECOND);
//! let out = step(&mut state, Input::Tick, 130 * SECOND);
//! // Its verification first (calm before the deadline: it took), then the release.
//! assert!(matches!(out.as_slice(), [Action::Verified { .. }, Action::Release { .. }]));
//! ```
//!
//! The [`State`] is also the record of what is in place: [`State::effects`] lists each effect
//! with when it was placed and when it expires (on the caller's clock), whether it was only
//! recorded in dry-run, and who holds it (rules, an infection, the operator's
//! [`Input::ManualBlock`]); the caller converts the times and shows it, it keeps no copy.
//!
//! Some sources are never blocked nor throttled: the allowlist ([`State::allowlist`]: the
//! rules file's, the tree's own machines given as [`Input::TopologyAllow`], the operator's
//! [`Input::Allow`]). A rule may hand its first reaction to a firewall agent's kernel
//! (`reflex = true`, [`Rules::reflex`]); the block the kernel placed comes back as an
//! [`AlertBody::ReflexBlock`] and becomes the rule's own.
//!
//! Rules are declarative TOML ([`Rules::from_toml`], [`DEFAULT_RULES`]); [`Input::Reload`]
//! swaps them while keeping the state of rules that still exist. A rule may name the
//! horizontal orchestrator that runs it (`at`, the fast path): the engine does not care where
//! it runs; each node's driver gives its [`State`] the rules placed there
//! ([`Rules::placed_at`]).

mod bench;
mod engine;
mod rules;
mod types;
mod window;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

pub use bench::bench_step;
pub use engine::{step, AllowOrigin, Allowed, InPlace, State, MAX_ALLOWED_BY_HAND};
pub use rules::{
    Actuators, Aggregate, KeyKind, Reflex, ReflexSetting, Rule, Rules, RulesError, Step, Via,
    DEFAULT_RULES,
};
pub use types::{
    Action, ActionId, AlertBody, AlertKind, Effect, Input, Key, Mac, Metric, Nanos, Prefix, Rate,
    ReflexCause, Restored, Target, Verification, SECOND,
};
