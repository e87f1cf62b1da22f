//! What the benchmark binaries (`cargo xtask bench`) share: pinning a thread to a CPU,
//! summaries of a series, and the orchestrator's JSON log lines the closed-loop figures are
//! read from.

use std::path::Path;
use std::time::Duration;

/// Moves the calling thread to `cpu` (best effort: a benchmark on a machine with fewer CPUs
/// still runs).
pub fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// The median of `v` (NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// p50, p99 and the largest of `v` (sorted in place); zeros when empty.
pub fn p50_p99_max(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    v.sort();
    let p = |q| crate::daemons::percentile(v, q);
    (p(50.0), p(99.0), v.last().copied().unwrap_or_default())
}

/// The fields of the JSON log lines in `log` whose message is `message`.
pub fn log_fields(log: &Path, message: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["fields"]["message"] == message)
        .map(|l| l["fields"].clone())
        .collect()
}

/// One block request a policy sent, from its `policy block sent` log line (Unix ns).
#[derive(Debug, Clone)]
pub struct BlockSent {
    /// The deciding node (`VO` or an HO).
    pub node: String,
    pub target: String,
    /// The alert's raise time: for a threshold event, the kernel event's own time.
    pub raised_ns: u64,
    /// When the deciding node saw the alert.
    pub seen_ns: u64,
    /// When the request left.
    pub sent_ns: u64,
}

/// The `policy block sent` lines of an orchestrator's log.
pub fn blocks_sent(log: &Path) -> Vec<BlockSent> {
    log_fields(log, "policy block sent")
        .iter()
        .map(|f| {
            let n = |k: &str| f[k].as_u64().unwrap_or(0);
            let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            BlockSent {
                node: s("node"),
                target: s("target"),
                raised_ns: n("alert_raised_ns"),
                seen_ns: n("alert_seen_ns"),
                sent_ns: n("sent_ns"),
            }
        })
        .collect()
}
