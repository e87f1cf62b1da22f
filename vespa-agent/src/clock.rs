//! The kernel's clock and the wall clock. Kernel programs stamp events with
//! `bpf_ktime_get_ns` (CLOCK_MONOTONIC); alerts carry Unix time, converted once, in the agent.

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns` and of event timestamps.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// A CLOCK_MONOTONIC time (an event's timestamp) on the Unix-epoch clock, through the
/// current offset between the two (exact up to the microseconds between the two reads, and
/// to any clock step since the event).
pub fn monotonic_to_unix_ns(t: u64) -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    unix.saturating_sub(monotonic_ns().saturating_sub(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monotonic_time_lands_at_its_place_on_the_unix_clock() {
        let unix_now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        };
        // The conversion reads the two clocks one after the other: it may be off by the time
        // between those reads (microseconds; more if the thread is preempted between them).
        let slack = 10_000_000;
        let before = unix_now();
        let second_ago = monotonic_to_unix_ns(monotonic_ns() - 1_000_000_000);
        let after = unix_now();
        assert!(
            (before - 1_000_000_000 - slack..=after - 1_000_000_000).contains(&second_ago),
            "{before} <= {second_ago} + 1 s <= {after}"
        );
    }
}
