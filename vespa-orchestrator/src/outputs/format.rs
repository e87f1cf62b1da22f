//! The formats: Slack's and Alertmanager's JSON, RFC 5424 syslog records and CEF messages.
//! Hand-written: each is a few lines of a fixed grammar, and the escaping rules (the part that
//! matters, since alert texts come from watched traffic) are tested here one by one.

use std::fmt::Write as _;

use vespa_node::config::outputs::{SyslogFormat, SyslogOutput};

use super::event::{clean, cut, rfc3339, Event, Layers};

/// The SD-ID of VESPA's structured data (RFC 5424 §6.3.2: name@private-enterprise-number;
/// 32473 is the number RFC 5612 reserves for documentation and examples).
pub const SD_ID: &str = "vespa@32473";

/// Slack's incoming-webhook body: `{"text": "*[WARNING]* conn_threshold from agent1 #12: ..."}`.
/// Slack reads `&`, `<` and `>` as markup: they are escaped, so an alert's text cannot
/// mention a channel or forge a link.
pub fn slack(e: &Event) -> serde_json::Value {
    let head = match e {
        Event::Alert(a) => format!("`{}` from {} #{}", e.kind(), clean(&a.origin, 128), a.seq),
        Event::Decision(_) => "decision".to_string(),
    };
    let text = format!(
        "*[{}]* {}: {}",
        e.severity().as_str().to_ascii_uppercase(),
        slack_escape(&head),
        slack_escape(&e.summary())
    );
    serde_json::json!({ "text": text })
}

fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Alertmanager's `POST /api/v2/alerts` body for a batch: one alert per event, labelled
/// `alertname` (`vespa_<kind>`), `severity`, `kind`, `origin`, `layer` and `subject` (what it
/// is about), annotated with the summary, sequence number and path.
pub fn alertmanager(batch: &[Event], layers: &Layers) -> serde_json::Value {
    let alerts: Vec<serde_json::Value> = batch
        .iter()
        .map(|e| {
            let mut labels = serde_json::json!({
                "alertname": format!("vespa_{}", e.kind()),
                "severity": e.severity().as_str(),
                "kind": e.kind(),
                "source": "vespa",
            });
            let mut annotations = serde_json::json!({ "summary": e.summary() });
            match e {
                Event::Alert(a) => {
                    labels["origin"] = clean(&a.origin, 128).into();
                    labels["layer"] = layers.of(&a.origin).into();
                    annotations["seq"] = a.seq.to_string().into();
                    annotations["path"] = clean(&a.path.join(" > "), 512).into();
                }
                Event::Decision(d) => {
                    if let Some(r) = &d.rule {
                        labels["rule"] = clean(r, 128).into();
                    }
                    for k in ["action", "target"] {
                        if let Some(v) = d.json.get(k).and_then(|v| v.as_str()) {
                            labels[k] = clean(v, 128).into();
                        }
                    }
                }
            }
            if let Some(s) = e.subject() {
                labels["subject"] = s.into();
            }
            serde_json::json!({
                "labels": labels,
                "annotations": annotations,
                "startsAt": rfc3339(e.time_ns()),
            })
        })
        .collect();
    serde_json::Value::Array(alerts)
}

/// Printable US-ASCII (33..=126) of at most `max` bytes, `-` when empty: a HOSTNAME,
/// APP-NAME or MSGID field (RFC 5424 §6.2).
fn header_field(s: &str, max: usize) -> String {
    let f: String = s
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if f.is_empty() {
        "-".into()
    } else {
        f
    }
}

/// An SD-PARAM value: `"`, `\` and `]` escaped with a backslash (RFC 5424 §6.3.3), control
/// characters escaped, bounded.
pub fn sd_escape(s: &str) -> String {
    let mut out = String::new();
    for c in clean(s, 256).chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A CEF header field: `\` and `|` escaped (CEF rev. 25, "Character encoding").
pub fn cef_header_escape(s: &str) -> String {
    clean(s, 256).replace('\\', "\\\\").replace('|', "\\|")
}

/// A CEF extension value: `\` and `=` escaped, line breaks as `\n`/`\r` (CEF rev. 25).
/// [`clean`] has already made every control character printable, so a value cannot end a
/// record; the backslashes it wrote are escaped like any other.
pub fn cef_value_escape(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().take(max) {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// A CEF message: `CEF:0|VESPA|vespa|<version>|<kind>|<name>|<0-10>|<extension>`.
pub fn cef(e: &Event) -> String {
    let mut ext = format!("rt={}", e.time_ns() / 1_000_000);
    let mut kv = |k: &str, v: &str| {
        let _ = write!(ext, " {k}={}", cef_value_escape(v, 1024));
    };
    match e {
        Event::Alert(a) => {
            kv("dvchost", &clean(&a.origin, 128));
            kv(
                "externalId",
                &format!("{}:{}", clean(&a.origin, 128), a.seq),
            );
            kv("cs1Label", "path");
            kv("cs1", &clean(&a.path.join(" > "), 512));
        }
        Event::Decision(d) => {
            if let Some(r) = &d.rule {
                kv("cs2Label", "rule");
                kv("cs2", &clean(r, 128));
            }
        }
    }
    if let Some(s) = e.subject() {
        if s.parse::<std::net::IpAddr>().is_ok() {
            kv("src", &s);
        } else {
            kv("cs3Label", "subject");
            kv("cs3", &s);
        }
    }
    // The message last: it is the field a cut shortens.
    kv("msg", &e.summary());
    format!(
        "CEF:0|VESPA|vespa|{}|{}|{}|{}|{ext}",
        cef_header_escape(env!("CARGO_PKG_VERSION")),
        cef_header_escape(e.kind()),
        cef_header_escape(&e.kind().replace('_', " ")),
        e.severity().cef_code(),
    )
}

/// One RFC 5424 record for `e`, at most `cfg.max_bytes` long:
/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [vespa@32473 ...] MSG`. HOSTNAME is the
/// alert's origin node (the VO's name for decisions), MSGID its kind; MSG is the summary, or
/// with `format = "cef"` a CEF message. The cut, when one is needed, falls in MSG.
pub fn syslog(e: &Event, cfg: &SyslogOutput, layers: &Layers, vo: &str) -> String {
    let pri = u16::from(cfg.facility) * 8 + u16::from(e.severity().syslog_code());
    let host = match e {
        Event::Alert(a) => header_field(&a.origin, 255),
        Event::Decision(_) => header_field(vo, 255),
    };
    let mut sd = format!("[{SD_ID}");
    match e {
        Event::Alert(a) => {
            let _ = write!(
                sd,
                " origin=\"{}\" seq=\"{}\" layer=\"{}\" path=\"{}\"",
                sd_escape(&a.origin),
                a.seq,
                layers.of(&a.origin),
                sd_escape(&a.path.join(" > "))
            );
        }
        Event::Decision(d) => {
            if let Some(r) = &d.rule {
                let _ = write!(sd, " rule=\"{}\"", sd_escape(r));
            }
        }
    }
    let _ = write!(sd, " severity=\"{}\"]", e.severity().as_str());
    let head = format!(
        "<{pri}>1 {} {host} {} - {} {sd} ",
        rfc3339(e.time_ns()),
        header_field(&cfg.app_name, 48),
        header_field(e.kind(), 32),
    );
    let msg = match cfg.format {
        SyslogFormat::Rfc5424 => e.summary(),
        SyslogFormat::Cef => cef(e),
    };
    let room = cfg.max_bytes.saturating_sub(head.len());
    format!("{head}{}", cut(&msg, room))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vespa_node::config::outputs::SyslogTransport;
    use vespa_proto::{Alert, AlertBody};

    use super::super::event::Decision;
    use super::*;

    fn alert(origin: &str, body: AlertBody) -> Event {
        Event::Alert(Arc::new(Alert {
            origin: origin.into(),
            seq: 7,
            path: vec![origin.into(), "HO_VM".into(), "VO".into()],
            timestamp_ns: 1_700_000_000_000_000_000,
            body,
        }))
    }

    fn cfg(format: SyslogFormat, max_bytes: usize) -> SyslogOutput {
        SyslogOutput {
            transport: SyslogTransport::Udp("127.0.0.1:514".into()),
            format,
            facility: 16,
            app_name: "vespa".into(),
            max_bytes,
        }
    }

    #[test]
    fn rfc5424_escapes_sd_values_and_never_breaks_a_line() {
        let e = alert(
            "ag\"e]n\\t 1",
            AlertBody::Text("evil\n<13>1 forged record".into()),
        );
        let r = syslog(
            &e,
            &cfg(SyslogFormat::Rfc5424, 2048),
            &Layers::default(),
            "VO",
        );
        assert!(!r.contains('\n'), "{r}");
        // local0 (16) * 8 + notice (5)
        assert!(
            r.starts_with("<133>1 2023-11-14T22:13:20.000000Z ag\"e]n\\t_1 vespa - text [vespa@32473 origin=\"ag\\\"e\\]n\\\\t 1\" seq=\"7\""),
            "{r}"
        );
        assert!(r.ends_with("] evil\\n<13>1 forged record"), "{r}");
        assert_eq!(sd_escape("a\"b\\c]d"), "a\\\"b\\\\c\\]d");
    }

    #[test]
    fn rfc5424_records_are_cut_to_their_bound() {
        let e = alert("a1", AlertBody::Text("é".repeat(5000)));
        let r = syslog(
            &e,
            &cfg(SyslogFormat::Rfc5424, 480),
            &Layers::default(),
            "VO",
        );
        assert!(r.len() <= 480 && r.len() > 400, "{}", r.len());
        let e = alert(
            "a1",
            AlertBody::ConnThreshold {
                addr: [192, 0, 2, 9].into(),
                established: 50,
                threshold: 10,
            },
        );
        let r = syslog(
            &e,
            &cfg(SyslogFormat::Rfc5424, 2048),
            &Layers::default(),
            "VO",
        );
        assert!(r.starts_with("<132>1 "), "warning is 4: {r}");
    }

    #[test]
    fn cef_escapes_headers_and_extensions() {
        assert_eq!(cef_header_escape("a|b\\c"), "a\\|b\\\\c");
        assert_eq!(cef_value_escape("k=v\\x\ny", 100), "k\\=v\\\\x\\ny");
        let e = alert(
            "a|1",
            AlertBody::Infected {
                vm: "vm=1".into(),
                file: "/tmp/x|y\nz".into(),
                signature: "Eicar-Test-Signature".into(),
            },
        );
        let c = cef(&e);
        assert!(
            c.starts_with(&format!(
                "CEF:0|VESPA|vespa|{}|infected|infected|10|rt=1700000000000 dvchost=a|1 externalId=a|1:7",
                env!("CARGO_PKG_VERSION")
            )),
            "{c}"
        );
        assert!(c.contains(" cs3=vm\\=1 "), "{c}");
        assert!(
            c.ends_with("msg=infected file /tmp/x|y\\\\nz in VM vm\\=1: Eicar-Test-Signature"),
            "{c}"
        );
        assert!(!c.contains('\n'));
        let r = syslog(&e, &cfg(SyslogFormat::Cef, 2048), &Layers::default(), "VO");
        assert!(r.contains("] CEF:0|VESPA|"), "{r}");
        assert!(r.starts_with("<130>1 "), "critical is 2: {r}");
    }

    #[test]
    fn slack_and_alertmanager_shapes() {
        let e = alert(
            "agent1",
            AlertBody::SynThreshold {
                addr: [192, 0, 2, 9].into(),
                syns_in_second: 900,
                threshold: 100,
            },
        );
        assert_eq!(
            slack(&e),
            serde_json::json!({"text": "*[WARNING]* `syn_threshold` from agent1 #7: 192.0.2.9 sent 900 SYNs in one second (threshold 100)"})
        );
        let t = alert("a", AlertBody::Text("<!channel> & <http://x|y>".into()));
        assert_eq!(
            slack(&t)["text"],
            "*[NOTICE]* `text` from a #7: &lt;!channel&gt; &amp; &lt;http://x|y&gt;"
        );
        let d = Event::Decision(Arc::new(Decision {
            json: serde_json::json!({"action": "block", "target": "192.0.2.9", "rule": "syn-flood"}),
            rule: Some("syn-flood".into()),
            received_ns: 1_700_000_000_000_000_000,
        }));
        let am = alertmanager(&[e, d], &Layers::default());
        assert_eq!(
            am,
            serde_json::json!([
                {
                    "labels": {"alertname": "vespa_syn_threshold", "severity": "warning", "kind": "syn_threshold",
                               "source": "vespa", "origin": "agent1", "layer": "unknown", "subject": "192.0.2.9"},
                    "annotations": {"summary": "192.0.2.9 sent 900 SYNs in one second (threshold 100)",
                                    "seq": "7", "path": "agent1 > HO_VM > VO"},
                    "startsAt": "2023-11-14T22:13:20.000000Z"
                },
                {
                    "labels": {"alertname": "vespa_decision", "severity": "notice", "kind": "decision",
                               "source": "vespa", "rule": "syn-flood", "action": "block", "target": "192.0.2.9"},
                    "annotations": {"summary": "block 192.0.2.9 (rule syn-flood)"},
                    "startsAt": "2023-11-14T22:13:20.000000Z"
                }
            ])
        );
    }
}
