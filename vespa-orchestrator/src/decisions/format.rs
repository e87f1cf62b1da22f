//! Block lists as files: imported as text or JSON, exported as either.
//!
//! - **Text**: one address, prefix or MAC address per line; `#` starts a comment, and a
//!   comment after the target is that entry's reason (`203.0.113.0/24  # scanner`); blank
//!   lines are skipped; `\r\n` line ends are read too. The time-to-live is the request's.
//! - **JSON**: a list of entries, each `{"target", "ttl_s"?, "reason"?}` or just the target
//!   as a string; a single entry object is a list of one. Unknown fields are refused.
//!
//! Which is which: JSON when the first character that is not white space is `[` or `{`, text
//! otherwise (neither a target nor a comment starts so). A file is checked whole before
//! anything is applied, every bad line reported by its number ([`Refused`]), and bounded:
//! [`MAX_IMPORT_BYTES`], [`MAX_ENTRIES`].
//!
//! Exports are made from a [`Listing`]: the blocks, each target once; as text, one per line
//! under a comment that says what the list is; as JSON, entries with the time each block has
//! left, so an import gives back the same expiries (a block without one gets the importer's
//! TTL).

use serde::{Deserialize, Serialize};
use vespa_proto::verbs::{BlockEntry, Target, Word};

use super::{Item, Listing, Place, Placed, Refused, MAX_ENTRIES, MAX_IMPORT_BYTES, MAX_TTL_S};

/// A block list's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One target per line.
    Text,
    /// A JSON list of entries.
    Json,
}

impl Format {
    /// JSON when the first character that is not white space (nor a byte-order mark) is `[`
    /// or `{`; text otherwise.
    pub fn detect(bytes: &[u8]) -> Format {
        let body = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[' | b'{') => Format::Json,
            _ => Format::Text,
        }
    }
}

/// One entry of a JSON block list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonEntry {
    /// An address, prefix or MAC address.
    pub target: String,
    /// Seconds; absent: the request's TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    /// Why (logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A list's entry as sent: a bare target or a full entry.
#[derive(Deserialize)]
#[serde(untagged)]
enum AnyEntry {
    Target(String),
    Full(JsonEntry),
}

/// Parses a block list in `format`, whole: every bad line or entry is reported, and nothing
/// is returned unless all are good.
pub fn parse(bytes: &[u8], format: Format) -> Result<Vec<Placed>, Refused> {
    let mut refused = Refused::default();
    let mut out = Vec::new();
    for item in items(bytes, format)? {
        match item {
            Ok(p) => out.push(p),
            Err(problem) => refused.push(problem),
        }
    }
    refused.result()?;
    Ok(out)
}

/// Parses a block list in `format` line by line (entry by entry): each item is an entry or
/// what is wrong with its line, in order; `Err` when the list as a whole cannot be read (too
/// large, too many entries, not UTF-8, not JSON).
pub fn items(bytes: &[u8], format: Format) -> Result<Vec<Item>, Refused> {
    if bytes.len() > MAX_IMPORT_BYTES {
        return Err(refusal(format!(
            "the list is {} bytes long: at most {MAX_IMPORT_BYTES} bytes in one import (split it)",
            bytes.len()
        )));
    }
    match format {
        Format::Text => parse_text(bytes),
        Format::Json => parse_json(bytes),
    }
}

fn refusal(problem: String) -> Refused {
    let mut r = Refused::default();
    r.push(problem);
    r
}

fn too_many() -> Refused {
    refusal(format!(
        "more than {MAX_ENTRIES} entries: at most {MAX_ENTRIES} in one import"
    ))
}

/// A text list: one target per line.
fn parse_text(bytes: &[u8]) -> Result<Vec<Item>, Refused> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        refusal(format!("line {line}: not UTF-8 text"))
    })?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let at = Place::Line(i + 1);
        let (item, comment) = raw.split_once('#').unwrap_or((raw, ""));
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if out.len() == MAX_ENTRIES {
            return Err(too_many());
        }
        let mut words = item.split_whitespace();
        let (Some(word), None) = (words.next(), words.next()) else {
            out.push(Err(format!(
                "{at}: one address, prefix or MAC address per line (found {item:?})"
            )));
            continue;
        };
        out.push(
            Target::parse_word(word)
                .map(|target| Placed {
                    at,
                    entry: BlockEntry {
                        target,
                        ttl_s: None,
                        reason: Some(comment.trim())
                            .filter(|c| !c.is_empty())
                            .map(str::to_string),
                    },
                })
                .map_err(|e| format!("{at}: {e}")),
        );
    }
    Ok(out)
}

/// A JSON list (or one entry).
fn parse_json(bytes: &[u8]) -> Result<Vec<Item>, Refused> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| refusal(format!("invalid JSON: {e}")))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        one @ serde_json::Value::Object(_) => vec![one],
        other => {
            return Err(refusal(format!(
                "expected a list of entries ({{\"target\", \"ttl_s\", \"reason\"}}), found {}",
                kind_of(&other)
            )))
        }
    };
    if items.len() > MAX_ENTRIES {
        return Err(too_many());
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let at = Place::Entry(i + 1);
        let entry = match serde_json::from_value::<AnyEntry>(item.clone()) {
            Ok(AnyEntry::Target(target)) => JsonEntry {
                target,
                ttl_s: None,
                reason: None,
            },
            Ok(AnyEntry::Full(e)) => e,
            // Untagged enums lose the reason: ask the full form for it.
            Err(_) => match serde_json::from_value::<JsonEntry>(item) {
                Ok(e) => e,
                Err(e) => {
                    out.push(Err(format!("{at}: {e}")));
                    continue;
                }
            },
        };
        out.push(
            Target::parse_word(&entry.target)
                .map(|target| Placed {
                    at,
                    entry: BlockEntry {
                        target,
                        ttl_s: entry.ttl_s,
                        reason: entry
                            .reason
                            .map(|r| r.trim().to_string())
                            .filter(|r| !r.is_empty()),
                    },
                })
                .map_err(|e| format!("{at}: {e}")),
        );
    }
    Ok(out)
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The blocks of `listing` as a text list (importable as it is).
pub fn to_text(listing: &Listing) -> String {
    let blocked = listing.blocked();
    let mut out = format!(
        "# VESPA block list: {} target(s), one per line (vespa-orchestrator decisions import)\n",
        blocked.len()
    );
    for u in &listing.unreachable {
        out.push_str(&format!("# incomplete: {u}\n"));
    }
    for a in blocked {
        out.push_str(&a.target);
        out.push('\n');
    }
    out
}

/// The blocks of `listing` as JSON entries, each with the seconds it has left at `now_unix_s`
/// (at least 1, at most [`MAX_TTL_S`]; none for a block without an expiry).
pub fn to_json(listing: &Listing, now_unix_s: u64) -> Vec<JsonEntry> {
    listing
        .blocked()
        .into_iter()
        .map(|a| JsonEntry {
            target: a.target.clone(),
            ttl_s: a
                .expires_unix_s
                .map(|e| e.saturating_sub(now_unix_s).clamp(1, MAX_TTL_S)),
            reason: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ActiveAction;

    fn targets(p: &[Placed]) -> Vec<String> {
        p.iter().map(|p| p.entry.target.to_string()).collect()
    }

    #[test]
    fn a_text_list_has_one_target_per_line_with_comments() {
        let text = "# feed of 2024-05-01\r\n\n10.0.0.9\n  203.0.113.7/24   # scanner, twice\nAA:BB:CC:DD:EE:FF\n2001:db8::/64#\n";
        let got = parse(text.as_bytes(), Format::detect(text.as_bytes())).expect("good list");
        assert_eq!(
            targets(&got),
            [
                "10.0.0.9",
                "203.0.113.0/24",
                "aa:bb:cc:dd:ee:ff",
                "2001:db8::/64"
            ]
        );
        assert_eq!(got[1].at, Place::Line(4));
        assert_eq!(got[1].entry.reason.as_deref(), Some("scanner, twice"));
        assert_eq!(got[3].entry.reason, None);
        assert!(got.iter().all(|p| p.entry.ttl_s.is_none()));
    }

    #[test]
    fn every_bad_line_is_named_and_nothing_is_returned() {
        let text = "10.0.0.1\n10.0.0.300\n10.0.0.2 10.0.0.3\n# fine\n10.0.0.0/33\n";
        let r = parse(text.as_bytes(), Format::Text).expect_err("bad lines");
        assert_eq!(r.total, 3);
        assert!(
            r.problems[0].starts_with("line 2: invalid block target"),
            "{r}"
        );
        assert!(r.problems[1].starts_with("line 3: one address"), "{r}");
        assert!(r.problems[2].starts_with("line 5: invalid prefix"), "{r}");
        assert!(
            r.to_string()
                .starts_with("3 problems, nothing was applied:\n  line 2"),
            "{r}"
        );
        let bad_utf8 = b"10.0.0.1\n10.0.0.2\n\xff\n";
        let r = parse(bad_utf8, Format::Text).expect_err("not UTF-8");
        assert_eq!(r.problems, ["line 3: not UTF-8 text"]);
    }

    #[test]
    fn many_problems_are_counted_beyond_those_listed() {
        let text = "x\n".repeat(50);
        let r = parse(text.as_bytes(), Format::Text).expect_err("bad");
        assert_eq!((r.total, r.problems.len()), (50, super::super::MAX_LISTED));
        assert!(r.to_string().ends_with("... and 30 more"), "{r}");
    }

    #[test]
    fn imports_are_bounded_in_bytes_and_entries() {
        let big = vec![b'#'; MAX_IMPORT_BYTES + 1];
        let r = parse(&big, Format::Text).expect_err("too big");
        assert!(r.problems[0].contains("at most 1048576 bytes"), "{r}");
        let many = "::1\n".repeat(MAX_ENTRIES + 1);
        assert!(many.len() < MAX_IMPORT_BYTES);
        let r = items(many.as_bytes(), Format::Text).expect_err("too many");
        assert!(r.problems[0].starts_with("more than 100000 entries"), "{r}");
        let json = format!("[{}]", vec!["\"::1\""; MAX_ENTRIES + 1].join(","));
        let r = items(json.as_bytes(), Format::Json).expect_err("too many");
        assert!(r.problems[0].starts_with("more than 100000 entries"), "{r}");
    }

    #[test]
    fn a_json_list_takes_entries_or_bare_targets_and_names_bad_ones() {
        let json = br#" [{"target": "10.0.0.9", "ttl_s": 60, "reason": " scan "}, "2001:db8::1", {"target": "10.0.0.0/8"}]"#;
        assert_eq!(Format::detect(json), Format::Json);
        let got = parse(json, Format::Json).expect("good");
        assert_eq!(targets(&got), ["10.0.0.9", "2001:db8::1", "10.0.0.0/8"]);
        assert_eq!(
            (got[0].entry.ttl_s, got[0].entry.reason.as_deref()),
            (Some(60), Some("scan"))
        );
        assert_eq!(got[2].at, Place::Entry(3));
        let one = parse(br#"{"target": "10.0.0.1"}"#, Format::Json).expect("one entry");
        assert_eq!(targets(&one), ["10.0.0.1"]);

        let bad = br#"[{"target": "10.0.0.9", "ttl": 60}, 7, {"target": "nope"}, "10.0.0.1"]"#;
        let r = parse(bad, Format::Json).expect_err("bad");
        assert_eq!(r.total, 3, "{r}");
        assert!(
            r.problems[0].starts_with("entry 1: unknown field `ttl`"),
            "{r}"
        );
        assert!(
            r.problems[1].starts_with("entry 2: invalid type: integer"),
            "{r}"
        );
        assert!(
            r.problems[2].starts_with("entry 3: invalid block target \"nope\""),
            "{r}"
        );
        let r = parse(b"[{\"target\": \n", Format::Json).expect_err("syntax");
        assert!(r.problems[0].contains("line 2"), "{r}");
        let r = parse(b"\"10.0.0.1\"", Format::Json).expect_err("a string");
        assert!(r.problems[0].contains("found a string"), "{r}");
    }

    fn action(target: &str, action: &str, expires: Option<u64>) -> ActiveAction {
        ActiveAction {
            key: target.into(),
            action: action.into(),
            target: target.into(),
            actuator: "sdn".into(),
            since_unix_s: 100,
            expires_unix_s: expires,
            dry_run: false,
            decision: None,
            verification: None,
            at: None,
        }
    }

    #[test]
    fn exports_list_each_blocked_target_once_and_import_back() {
        let listing = Listing {
            dry_run: false,
            actions: vec![
                action("10.0.0.9", "block", Some(700)),
                action("web", "cut_link", None),
                action("10.0.0.0/24", "block", None),
                action("10.0.0.9", "block", Some(200_000)),
            ],
            unreachable: vec!["HO_PH: no answer".into()],
        };
        let text = to_text(&listing);
        assert!(
            text.contains("\n# incomplete: HO_PH: no answer\n"),
            "{text}"
        );
        assert!(text.ends_with("\n10.0.0.9\n10.0.0.0/24\n"), "{text}");
        let back = parse(text.as_bytes(), Format::detect(text.as_bytes())).expect("imports");
        assert_eq!(targets(&back), ["10.0.0.9", "10.0.0.0/24"]);

        let json = to_json(&listing, 160);
        assert_eq!(
            json,
            [
                JsonEntry {
                    target: "10.0.0.9".into(),
                    ttl_s: Some(540),
                    reason: None
                },
                JsonEntry {
                    target: "10.0.0.0/24".into(),
                    ttl_s: None,
                    reason: None
                }
            ]
        );
        let bytes = serde_json::to_vec(&json).expect("json");
        let back = parse(&bytes, Format::detect(&bytes)).expect("imports");
        assert_eq!(targets(&back), ["10.0.0.9", "10.0.0.0/24"]);
        assert_eq!(back[0].entry.ttl_s, Some(540));
        assert_eq!(
            to_json(&listing, 10_000)[0].ttl_s,
            Some(1),
            "at least a second"
        );
    }
}
