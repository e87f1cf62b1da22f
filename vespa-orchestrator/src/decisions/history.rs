//! The ledger's history and a decision's story as people read them (`decisions list --all`,
//! `decisions show <id>`, and the API's `format=text`), and `--since`'s parser.

use std::fmt::Write as _;

use super::History;
use crate::ledger::{Decision, Story};

/// Seconds in each unit `--since` takes.
const UNITS: [(&str, u64); 4] = [("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)];

/// `--since`: Unix seconds (`1767225600`), or a duration back from `now_s` (`90s`, `15m`,
/// `2h`, `7d`).
pub fn parse_since(text: &str, now_s: u64) -> Result<u64, String> {
    let t = text.trim();
    if let Ok(at) = t.parse::<u64>() {
        return Ok(at);
    }
    for (unit, secs) in UNITS {
        if let Some(n) = t.strip_suffix(unit).and_then(|n| n.parse::<u64>().ok()) {
            return Ok(now_s.saturating_sub(n.saturating_mul(secs)));
        }
    }
    Err(format!(
        "since {t:?}: expected Unix seconds or a duration back from now (90s, 15m, 2h, 7d)"
    ))
}

/// A Unix time as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn utc(unix_s: u64) -> String {
    // RFC 3339 with a space and without the fraction: `2026-12-05 03:27:16`.
    let t = crate::outputs::rfc3339(unix_s.saturating_mul(1_000_000_000));
    format!("{} {}", &t[..10], &t[11..19])
}

fn who(d: &Decision) -> String {
    match d.decided_by.as_str() {
        "rule" | "reflex" => format!(
            "{} {}",
            d.decided_by,
            d.rules.as_deref().unwrap_or_default()
        ),
        "operator" => format!("operator {}", d.operator.as_deref().unwrap_or("?")),
        other => other.to_string(),
    }
}

fn state(d: &Decision) -> String {
    match (&d.ended_at, &d.end_reason) {
        (Some(at), reason) => format!("ended {} ({})", utc(*at), reason.as_deref().unwrap_or("-")),
        (None, _) if d.dry_run => "in force (dry-run)".into(),
        (None, _) => "in force".into(),
    }
}

/// The verification column: the policy's outcome, `-` while it has not said (its deadline
/// is ahead, or the decision was only recorded in dry-run).
fn verified(d: &Decision) -> &str {
    d.verification.as_deref().unwrap_or("-")
}

/// The history as a table: one decision a line.
pub fn history_text(h: &History) -> String {
    let mut out =
        String::from("ID\tPLACED (UTC)\tNODE\tACTION\tTARGET\tACTUATOR\tBY\tVERIFIED\tSTATE\n");
    for d in &h.decisions {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            d.id,
            utc(d.placed_at),
            d.node,
            d.kind,
            d.target,
            d.actuator,
            who(d),
            verified(d),
            state(d)
        );
    }
    out
}

/// One decision and its story, in order.
pub fn story_text(s: &Story) -> String {
    let d = &s.decision;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "decision {}: {} {} via {} (node {})",
        d.id, d.kind, d.target, d.actuator, d.node
    );
    let _ = writeln!(out, "  decided by: {}", who(d));
    if let Some(sha) = &d.policy_sha256 {
        let _ = writeln!(out, "  policy sha256: {sha}");
    }
    if let Some(r) = &d.reason {
        let _ = writeln!(out, "  reason: {r}");
    }
    if let Some(o) = &d.alert_origin {
        let _ = writeln!(
            out,
            "  alert: from {o}, seq {}, at {} ns",
            d.alert_seq.unwrap_or_default(),
            d.alert_kernel_ns.unwrap_or_default()
        );
    }
    let ttl = d.ttl_s.map(|t| format!(", ttl {t} s")).unwrap_or_default();
    let exp = d
        .expires_at
        .map(|t| format!(", expires {}", utc(t)))
        .unwrap_or_default();
    let _ = writeln!(out, "  placed: {}{ttl}{exp}", utc(d.placed_at));
    match (&d.confirmed_at, &d.failed_at) {
        (Some(at), _) => {
            let _ = writeln!(
                out,
                "  actuator: confirmed {} ({})",
                utc(*at),
                d.reply.as_deref().unwrap_or("")
            );
        }
        (None, Some(at)) => {
            let _ = writeln!(
                out,
                "  actuator: FAILED {} ({})",
                utc(*at),
                d.error.as_deref().unwrap_or("")
            );
        }
        (None, None) if d.dry_run => {
            let _ = writeln!(out, "  actuator: not asked (dry-run)");
        }
        (None, None) => {
            let _ = writeln!(out, "  actuator: no answer recorded");
        }
    }
    // The outcome with its figures is the story's last `verified` line.
    let told = s.events.iter().rev().find(|e| e.kind == "verified");
    let verification = match (d.verification.as_deref(), told) {
        (Some(_), Some(e)) => e.detail.clone(),
        (Some(v), None) => v.to_string(),
        (None, _) if d.dry_run => "none (dry-run)".into(),
        (None, _) if d.ended_at.is_some() => "not recorded".into(),
        (None, _) => "pending (its deadline is ahead)".into(),
    };
    let _ = writeln!(out, "  verification: {verification}");
    let _ = writeln!(out, "  state: {}", state(d));
    let _ = writeln!(out, "story:");
    for e in &s.events {
        let _ = writeln!(
            out,
            "  {}.{:03}  {:<14} {}",
            utc(e.at_ms / 1000),
            e.at_ms % 1000,
            e.kind,
            e.detail
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Event;

    #[test]
    fn since_takes_unix_seconds_or_a_duration_back() {
        assert_eq!(parse_since("1767225600", 0), Ok(1_767_225_600));
        assert_eq!(parse_since("15m", 10_000), Ok(10_000 - 900));
        assert_eq!(parse_since("2h", 10_000), Ok(10_000 - 7200));
        assert_eq!(parse_since("7d", 10), Ok(0));
        assert!(parse_since("yesterday", 10)
            .unwrap_err()
            .contains("expected Unix seconds"));
    }

    fn decision(verification: Option<&str>, ended: bool) -> Decision {
        Decision {
            id: 7,
            node: "VO".into(),
            kind: "block".into(),
            target: "198.51.100.7".into(),
            actuator: "fw".into(),
            actuator_firewall: true,
            decided_by: "rule".into(),
            rules: Some("syn-flood".into()),
            policy_sha256: None,
            operator: None,
            reason: None,
            alert_origin: None,
            alert_seq: None,
            alert_kernel_ns: None,
            placed_at: 1_767_225_600,
            ttl_s: Some(600),
            expires_at: None,
            rate: None,
            dry_run: false,
            confirmed_at: None,
            reply: None,
            failed_at: None,
            error: None,
            verification: verification.map(str::to_string),
            ended_at: ended.then_some(1_767_225_700),
            end_reason: ended.then(|| "calm".into()),
        }
    }

    #[test]
    fn the_verification_is_a_column_of_the_history_and_a_line_of_the_story() {
        let h = History {
            decisions: vec![decision(Some("failed"), false), decision(None, false)],
        };
        let text = history_text(&h);
        let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(rows[0][7], "VERIFIED", "{text}");
        assert_eq!((rows[1][7], rows[2][7]), ("failed", "-"), "{text}");

        let verified = Event {
            decision: 7,
            at_ms: 1_767_225_630_000,
            kind: "verified".into(),
            detail: "failed: 150 > 100 at the deadline".into(),
        };
        let story = |d, events| {
            story_text(&Story {
                decision: d,
                events,
            })
        };
        let told = story(decision(Some("failed"), false), vec![verified.clone()]);
        assert!(
            told.contains("  verification: failed: 150 > 100 at the deadline\n")
                && told.contains("verified       failed: 150 > 100"),
            "{told}"
        );
        let pending = story(decision(None, false), vec![]);
        assert!(pending.contains("verification: pending"), "{pending}");
        let ended = story(decision(None, true), vec![]);
        assert!(ended.contains("verification: not recorded"), "{ended}");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_767_225_600), "2026-01-01 00:00:00");
        assert_eq!(utc(951_782_400 + 3661), "2000-02-29 01:01:01");
    }
}
