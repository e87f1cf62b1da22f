//! Throughput of [`step`](crate::step), for the report and for regressions.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use crate::types::{Input, Key, Metric, SECOND};
use crate::{step, Rules, State};

/// Inputs per second through `step` with the default rules and `keys` tracked remote
/// addresses: `inputs` connection-count samples spread over the keys (every 97th one over the
/// threshold, so blocks, verifications and releases happen too) with a tick every `keys` inputs.
///
/// The only clock read in the crate, and it times the loop, not the policy.
pub fn bench_step(keys: usize, inputs: usize) -> f64 {
    let keys = keys.max(1);
    let mut state = State::new(Rules::default_rules());
    let addr = |k: usize| IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32.wrapping_add(k as u32)));
    let mut now = 0;
    // Populate the tracked keys first, so the measurement runs against `keys` entries.
    for k in 0..keys {
        step(
            &mut state,
            Input::Sample {
                key: Key::Remote(addr(k)),
                metric: Metric::Established,
                value: 5,
            },
            now,
        );
    }
    let start = Instant::now();
    let mut produced = 0usize;
    for n in 0..inputs {
        let k = n % keys;
        if k == 0 {
            now += SECOND;
            produced += step(&mut state, Input::Tick, now).len();
        }
        let value = if n % 97 == 0 { 150 } else { (n % 19) as u64 };
        produced += step(
            &mut state,
            Input::Sample {
                key: Key::Remote(addr(k)),
                metric: Metric::Established,
                value,
            },
            now,
        )
        .len();
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    std::hint::black_box(produced);
    inputs as f64 / secs
}
