//! `vespa-agent top`: a live table of interface rates and the busiest remote addresses.

use std::{collections::HashMap, fmt::Write as _, time::Duration};

use crate::{Sensors, Snapshot};

/// Formats a rate in bytes/s with binary prefixes.
pub fn human_rate(bytes_per_sec: f64) -> String {
    let units = ["B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s"];
    let mut v = bytes_per_sec;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

/// Renders one screen: rates between `prev` and `cur` over `dt`.
pub fn render(prev: Option<&Snapshot>, cur: &Snapshot, dt: Duration, rows: usize) -> String {
    let secs = dt.as_secs_f64().max(1e-9);
    let before: HashMap<&str, &crate::InterfaceCounters> = prev
        .map(|p| p.interfaces.iter().map(|i| (i.name.as_str(), i)).collect())
        .unwrap_or_default();
    let mut s = String::new();
    let h = &cur.health;
    let _ = writeln!(
        s,
        "VESPA agent — sensors: {}{}   events lost: {}   interfaces: {}",
        h.mode,
        h.fallback_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        h.events_lost,
        cur.interfaces.len()
    );
    let _ = writeln!(
        s,
        "\n{:<16} {:>14} {:>12} {:>14} {:>12}",
        "INTERFACE", "RX", "RX pkt/s", "TX", "TX pkt/s"
    );
    for i in &cur.interfaces {
        let (rb, rp, tb, tp) = match before.get(i.name.as_str()) {
            Some(p) => (
                i.rx_bytes.saturating_sub(p.rx_bytes),
                i.rx_packets.saturating_sub(p.rx_packets),
                i.tx_bytes.saturating_sub(p.tx_bytes),
                i.tx_packets.saturating_sub(p.tx_packets),
            ),
            None => (0, 0, 0, 0),
        };
        let _ = writeln!(
            s,
            "{:<16} {:>14} {:>12.0} {:>14} {:>12.0}",
            i.name,
            human_rate(rb as f64 / secs),
            rp as f64 / secs,
            human_rate(tb as f64 / secs),
            tp as f64 / secs
        );
    }
    let _ = writeln!(
        s,
        "\n{:<40} {:>12} {:>10} {:>10}",
        "REMOTE ADDRESS", "ESTABLISHED", "OPENED", "CLOSED"
    );
    for c in cur
        .connections
        .iter()
        .filter(|c| c.established > 0 || c.opened.unwrap_or(0) > 0)
        .take(rows)
    {
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "{:<40} {:>12} {:>10} {:>10}",
            c.addr.to_string(),
            c.established,
            opt(c.opened),
            opt(c.closed)
        );
    }
    if !cur.syn_sources.is_empty() {
        let _ = writeln!(s, "\n{:<40} {:>12}", "SYN SOURCE", "SYNS");
        for x in cur.syn_sources.iter().take(rows) {
            let _ = writeln!(s, "{:<40} {:>12}", x.addr.to_string(), x.syns);
        }
    }
    s
}

/// Redraws every `interval` until Ctrl-C, or `count` screens when given.
pub async fn run(
    sensors: Sensors,
    interval: Duration,
    count: Option<u64>,
    rows: usize,
) -> anyhow::Result<()> {
    let mut prev: Option<Snapshot> = None;
    let mut last = std::time::Instant::now();
    let mut tick = tokio::time::interval(interval);
    let mut shown = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let cur = sensors.snapshot()?;
        let now = std::time::Instant::now();
        // Clear the screen and home the cursor, then draw.
        print!(
            "\x1b[2J\x1b[H{}",
            render(prev.as_ref(), &cur, now - last, rows)
        );
        prev = Some(cur);
        last = now;
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_human_readable() {
        assert_eq!(human_rate(512.0), "512.0 B/s");
        assert_eq!(human_rate(1536.0), "1.5 KiB/s");
        assert_eq!(human_rate(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB/s");
    }
}
