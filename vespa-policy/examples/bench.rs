//! `cargo run --release -p vespa-policy --example bench [keys] [inputs]`: inputs/s through
//! `step` with the default rules (10,000 keys and 2,000,000 inputs unless given).

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let keys = args.next().and_then(Result::ok).unwrap_or(10_000);
    let inputs = args.next().and_then(Result::ok).unwrap_or(2_000_000);
    let rate = vespa_policy::bench_step(keys, inputs);
    println!(
        "{keys} keys, {inputs} inputs: {rate:.0} inputs/s ({:.0} ns/input)",
        1e9 / rate
    );
}
