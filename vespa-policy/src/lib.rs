//! The vertical orchestrator's policy engine, as a pure state machine.
//!
//! ```text
//! Input (alerts, samples, ticks, acks, operator) ──► step(&mut State, input, now) ──► Vec<Action>
//! ```
//!
//! **Architecture invariant: the policy does no I/O and reads no clock.** The VO feeds it
//! alerts, counter samples, periodic ticks and actuator acknowledgements, and carries out the
//! actions it returns (except [`Action::DryRun`] records, which it only logs). That keeps every
//! behaviour — thresholds with hysteresis, cool-downs, escalation ladders, verification,
//! release when calm — testable and replayable without tokio or actuators.
//!
//! Rules are declarative TOML ([`Rules::from_toml`], [`DEFAULT_RULES`]); [`Input::Reload`]
//! swaps them while keeping the state of rules that still exist.

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
pub use engine::{step, Effect, State};
pub use rules::{Actuators, Aggregate, KeyKind, Rule, Rules, RulesError, Step, DEFAULT_RULES};
pub use types::{
    Action, ActionId, AlertBody, AlertKind, Input, Key, Mac, Metric, Nanos, Target, SECOND,
};
