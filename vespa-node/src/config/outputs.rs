//! `[[output]]` tables: where the VO sends alerts and decisions besides its own API, so that
//! the operator's tools (a chat channel, Alertmanager, rsyslog or a SIEM, a file, NATS
//! subscribers) follow the stream without polling.
//!
//! ```toml
//! [[output]]
//! name = "oncall"              # the `output` label of its metrics; default: its kind
//! kind = "webhook"             # webhook | syslog | file | nats
//! url = "https://hooks.slack.com/services/T000/B000/XXXX"
//! template = "slack"           # json | slack | alertmanager
//! min_severity = "warning"     # debug | info | notice | warning | error | critical
//! queue = 1024                 # bounded; a full queue drops (and counts) the newest
//! ```
//!
//! Only the TOML format has them (the 2014 INI had no such thing). Everything is checked here,
//! at load, with the file, line and field of the mistake: a misspelt URL found at start-up is
//! better than an output that silently never delivers.
//!
//! The severity of every alert kind is defined once, here ([`severity_of`]): the filters and
//! the formats (syslog's PRI, CEF's severity, Alertmanager's label) all read it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The `kind` of a decision event (the ledger's), for filters: `kinds = ["decision"]`.
pub const DECISION_KIND: &str = "decision";

/// How serious an alert is, in syslog's order (RFC 5424 §6.2.1, the levels VESPA uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Diagnostic detail.
    Debug,
    /// Periodic samples: normal operation.
    Info,
    /// Normal but significant: nodes coming and going, operators' notes, decisions.
    Notice,
    /// A threshold crossed, a sensor partly blind.
    Warning,
    /// Something VESPA tried failed (an actuator refused).
    Error,
    /// An infection found, a source blocked by the kernel by itself.
    Critical,
}

impl Severity {
    /// Every severity with its spelling, lowest first.
    pub const ALL: [(Severity, &'static str); 6] = [
        (Severity::Debug, "debug"),
        (Severity::Info, "info"),
        (Severity::Notice, "notice"),
        (Severity::Warning, "warning"),
        (Severity::Error, "error"),
        (Severity::Critical, "critical"),
    ];

    /// Parses a spelling of [`Severity::ALL`].
    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(s))
            .map(|(v, _)| *v)
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        Severity::ALL
            .iter()
            .find(|(v, _)| *v == self)
            .map_or("notice", |(_, n)| n)
    }

    /// RFC 5424's numerical severity (0 emergency .. 7 debug).
    pub fn syslog_code(self) -> u8 {
        match self {
            Severity::Debug => 7,
            Severity::Info => 6,
            Severity::Notice => 5,
            Severity::Warning => 4,
            Severity::Error => 3,
            Severity::Critical => 2,
        }
    }

    /// CEF's severity (0 lowest .. 10 highest).
    pub fn cef_code(self) -> u8 {
        match self {
            Severity::Debug => 0,
            Severity::Info => 1,
            Severity::Notice => 3,
            Severity::Warning => 5,
            Severity::Error => 7,
            Severity::Critical => 10,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The severity of each kind of alert body ([`vespa_proto::AlertBody::kind`]) and of
/// decisions: the one place it is defined.
pub const KIND_SEVERITY: [(&str, Severity); 13] = [
    ("bandwidth", Severity::Info),
    ("connections", Severity::Info),
    ("node", Severity::Notice),
    ("text", Severity::Notice),
    (DECISION_KIND, Severity::Notice),
    ("conn_threshold", Severity::Warning),
    ("syn_threshold", Severity::Warning),
    ("sensor_health", Severity::Warning),
    ("oversized", Severity::Warning),
    // The policy's own: a block that did not take, a blind spot, a cap reached.
    ("policy", Severity::Warning),
    ("actuator_failed", Severity::Error),
    ("reflex_block", Severity::Critical),
    ("infected", Severity::Critical),
];

/// The severity of alerts of `kind` (an unknown kind, from a newer agent: `notice`).
pub fn severity_of(kind: &str) -> Severity {
    KIND_SEVERITY
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(Severity::Notice, |(_, s)| *s)
}

/// What an output lets through. Every condition must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFilter {
    /// Kinds of alert (and `decision`) it takes; empty: every kind.
    pub kinds: Vec<String>,
    /// The least severity it takes.
    pub min_severity: Severity,
    /// Decisions: only those of these rules (empty: every rule). Alerts are not rules'.
    pub rules: Vec<String>,
}

impl Default for OutputFilter {
    fn default() -> Self {
        OutputFilter {
            kinds: Vec::new(),
            min_severity: Severity::Debug,
            rules: Vec::new(),
        }
    }
}

impl OutputFilter {
    /// Whether an alert of `kind` passes.
    pub fn takes_alert(&self, kind: &str) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
            && severity_of(kind) >= self.min_severity
    }

    /// Whether a decision by `rule` (none: the reflex's or an operator's) passes.
    pub fn takes_decision(&self, rule: Option<&str>) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == DECISION_KIND))
            && severity_of(DECISION_KIND) >= self.min_severity
            && (self.rules.is_empty() || rule.is_some_and(|r| self.rules.iter().any(|x| x == r)))
    }
}

/// The body a webhook posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookTemplate {
    /// The event as VESPA's JSON, one per request.
    Json,
    /// A Slack (or Mattermost, Rocket.Chat) incoming webhook: `{"text": ...}`.
    Slack,
    /// Alertmanager's `POST /api/v2/alerts`: an array of alerts with labels and annotations.
    Alertmanager,
}

/// How syslog records travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTransport {
    /// One datagram per record (RFC 5426).
    Udp(String),
    /// A stream, each record prefixed by its length (RFC 6587 octet counting).
    Tcp(String),
    /// A local datagram socket (`/dev/log`).
    Unix(PathBuf),
}

/// What a syslog record's message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogFormat {
    /// RFC 5424 with VESPA's fields as structured data.
    Rfc5424,
    /// An RFC 5424 header around an ArcSight CEF message, for SIEMs.
    Cef,
}

/// A webhook output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookOutput {
    /// `http://` or `https://` URL.
    pub url: String,
    /// What it posts.
    pub template: WebhookTemplate,
    /// Extra request headers (an `Authorization`, for example).
    pub headers: BTreeMap<String, String>,
    /// Bound of one request, connection included.
    pub timeout: Duration,
}

/// A syslog output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogOutput {
    /// Where to.
    pub transport: SyslogTransport,
    /// RFC 5424 or CEF.
    pub format: SyslogFormat,
    /// The facility number (`local0` is 16).
    pub facility: u8,
    /// APP-NAME (printable ASCII, at most 48).
    pub app_name: String,
    /// Longest record in bytes; longer messages are cut (on a character boundary).
    pub max_bytes: usize,
}

/// A JSON-lines file output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOutput {
    /// The file, appended to (relative to the topology file); reopened on SIGHUP, so that
    /// logrotate can move it away.
    pub path: PathBuf,
}

/// A NATS output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsOutput {
    /// `nats://host:port` (or `tls://`).
    pub url: String,
    /// The subjects' first token(s): `<prefix>.alerts.<layer>.<node>`, `<prefix>.decisions`.
    pub subject_prefix: String,
    /// A `.creds` file (JWT and NKey seed), relative to the topology file.
    pub credentials: Option<PathBuf>,
    /// Bound of connecting, and of publishing and flushing one batch.
    pub timeout: Duration,
}

/// What an output is and its own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    /// JSON POSTs.
    Webhook(WebhookOutput),
    /// Syslog records.
    Syslog(SyslogOutput),
    /// JSON lines in a file.
    File(FileOutput),
    /// Messages on NATS subjects.
    Nats(NatsOutput),
}

impl OutputKind {
    /// `webhook`, `syslog`, `file` or `nats`.
    pub fn as_str(&self) -> &'static str {
        match self {
            OutputKind::Webhook(_) => "webhook",
            OutputKind::Syslog(_) => "syslog",
            OutputKind::File(_) => "file",
            OutputKind::Nats(_) => "nats",
        }
    }
}

/// One `[[output]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputDef {
    /// Unique name: the `output` label of its metrics and its log lines.
    pub name: String,
    /// What it is.
    pub kind: OutputKind,
    /// What it takes.
    pub filter: OutputFilter,
    /// Events waiting for it, at most; past that the newest are dropped and counted.
    pub queue: usize,
    /// First retry delay after a failure; doubles, with jitter, up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Line of its `[[output]]`.
    pub line: usize,
}

/// Default of [`OutputDef::queue`].
pub const DEFAULT_OUTPUT_QUEUE: usize = 4096;
/// Largest [`OutputDef::queue`]: a bound is the point.
pub const MAX_OUTPUT_QUEUE: usize = 1 << 20;

/// An `[[output]]` as written: every kind's fields, checked against the kind after parsing
/// so that a field of another kind is named as such.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutput {
    name: Option<String>,
    kind: String,
    // filter
    kinds: Option<Vec<String>>,
    min_severity: Option<String>,
    rules: Option<Vec<String>>,
    queue: Option<usize>,
    backoff_min_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    // webhook, nats
    url: Option<String>,
    template: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    timeout_ms: Option<u64>,
    // syslog
    transport: Option<String>,
    address: Option<String>,
    format: Option<String>,
    facility: Option<String>,
    app_name: Option<String>,
    max_bytes: Option<usize>,
    // syslog (unix), file
    path: Option<PathBuf>,
    // nats
    subject_prefix: Option<String>,
    credentials: Option<PathBuf>,
}

/// A mistake in one field: (field, message). The caller adds file, line and table.
pub(super) type FieldError = (&'static str, String);

const FACILITIES: [(&str, u8); 20] = [
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// Checks `host:port` (an IP address or a DNS name, and a port other than 0).
fn check_host_port(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("{s:?} is not host:port (e.g. \"127.0.0.1:514\", \"logs.example:514\")");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !host_ok || port == 0 {
        return Err(bad());
    }
    Ok(())
}

/// Checks a URL of one of `schemes` with a host (and an optional port and path), without
/// whitespace or control characters.
fn check_url(s: &str, schemes: &[&str]) -> Result<(), String> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!(
            "{s:?} is not a URL (expected {}://host...)",
            schemes.join("://, ")
        ));
    };
    if !schemes.contains(&scheme) {
        return Err(format!(
            "{s:?}: scheme {scheme:?} is not one of {}",
            schemes.join(", ")
        ));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{s:?} contains whitespace or control characters"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hostport.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    // A bracketed IPv6 literal, or host[:port].
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: unclosed '['"))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{s:?}: {addr:?} is not an IPv6 address"));
        }
        (addr, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    if let Some(p) = port {
        if !matches!(p.parse::<u16>(), Ok(n) if n > 0) {
            return Err(format!("{s:?}: {p:?} is not a port"));
        }
    }
    Ok(())
}

/// A NATS subject prefix: dot-separated tokens of printable ASCII, none empty, no wildcard.
fn check_subject_prefix(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.split('.').all(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_graphic() && c != '*' && c != '>')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a subject prefix (dot-separated tokens, no wildcards, at most 128 bytes)"
        ))
    }
}

fn one_of<T: Copy>(field: &'static str, value: &str, table: &[(&str, T)]) -> Result<T, FieldError> {
    table
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(value))
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            (
                field,
                format!("{value:?} is not one of {}", names.join(", ")),
            )
        })
}

impl RawOutput {
    /// Its `name`, else its `kind` (for error messages, before validation).
    pub(super) fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.kind.clone())
    }

    /// The fields a kind does not use, written anyway.
    fn stray(&self, kind: &str) -> Option<&'static str> {
        let used: &[&str] = match kind {
            "webhook" => &["url", "template", "headers", "timeout_ms"],
            "syslog" => &[
                "transport",
                "address",
                "path",
                "format",
                "facility",
                "app_name",
                "max_bytes",
            ],
            "file" => &["path"],
            _ => &["url", "subject_prefix", "credentials", "timeout_ms"],
        };
        let present = [
            ("url", self.url.is_some()),
            ("template", self.template.is_some()),
            ("headers", self.headers.is_some()),
            ("timeout_ms", self.timeout_ms.is_some()),
            ("transport", self.transport.is_some()),
            ("address", self.address.is_some()),
            ("format", self.format.is_some()),
            ("facility", self.facility.is_some()),
            ("app_name", self.app_name.is_some()),
            ("max_bytes", self.max_bytes.is_some()),
            ("path", self.path.is_some()),
            ("subject_prefix", self.subject_prefix.is_some()),
            ("credentials", self.credentials.is_some()),
        ];
        present
            .into_iter()
            .find(|(f, p)| *p && !used.contains(f))
            .map(|(f, _)| f)
    }

    /// Validates one table; `line` is its header's.
    pub(super) fn validate(self, line: usize) -> Result<OutputDef, FieldError> {
        let kind_name = self.kind.to_ascii_lowercase();
        if !["webhook", "syslog", "file", "nats"].contains(&kind_name.as_str()) {
            return Err((
                "kind",
                format!(
                    "unknown output kind {:?} (expected one of webhook, syslog, file, nats)",
                    self.kind
                ),
            ));
        }
        if let Some(f) = self.stray(&kind_name) {
            return Err((f, format!("not a field of a {kind_name} output")));
        }
        let name = self.name.clone().unwrap_or_else(|| kind_name.clone());
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err((
                "name",
                format!("{name:?}: 1 to 64 of A-Z a-z 0-9 - _ . (it is a metrics label)"),
            ));
        }
        let known: Vec<&str> = KIND_SEVERITY.iter().map(|(k, _)| *k).collect();
        let kinds = self.kinds.clone().unwrap_or_default();
        if let Some(k) = kinds.iter().find(|k| !known.contains(&k.as_str())) {
            return Err((
                "kinds",
                format!("unknown kind {k:?} (expected any of {})", known.join(", ")),
            ));
        }
        let min_severity = match &self.min_severity {
            Some(s) => one_of("min_severity", s, &Severity::ALL.map(|(v, n)| (n, v)))?,
            None => Severity::Debug,
        };
        let filter = OutputFilter {
            kinds,
            min_severity,
            rules: self.rules.clone().unwrap_or_default(),
        };
        let queue = self.queue.unwrap_or(DEFAULT_OUTPUT_QUEUE);
        if !(1..=MAX_OUTPUT_QUEUE).contains(&queue) {
            return Err(("queue", format!("must be between 1 and {MAX_OUTPUT_QUEUE}")));
        }
        let backoff_min = Duration::from_millis(self.backoff_min_ms.unwrap_or(100).max(1));
        let backoff_max = Duration::from_millis(self.backoff_max_ms.unwrap_or(30_000));
        if backoff_max < backoff_min {
            return Err((
                "backoff_max_ms",
                format!(
                    "must be at least backoff_min_ms ({})",
                    backoff_min.as_millis()
                ),
            ));
        }
        let timeout = Duration::from_millis(self.timeout_ms.unwrap_or(5_000));
        if timeout.is_zero() {
            return Err(("timeout_ms", "must be at least 1".into()));
        }
        let kind = match kind_name.as_str() {
            "webhook" => {
                let url = self.url.ok_or(("url", "missing".to_string()))?;
                check_url(&url, &["http", "https"]).map_err(|m| ("url", m))?;
                let template = match &self.template {
                    Some(t) => one_of(
                        "template",
                        t,
                        &[
                            ("json", WebhookTemplate::Json),
                            ("slack", WebhookTemplate::Slack),
                            ("alertmanager", WebhookTemplate::Alertmanager),
                        ],
                    )?,
                    None => WebhookTemplate::Json,
                };
                let headers = self.headers.unwrap_or_default();
                for (k, v) in &headers {
                    let token = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
                    if !token || v.chars().any(|c| c.is_control() && c != '\t') {
                        return Err((
                            "headers",
                            format!("{k:?}: not a valid header name and value"),
                        ));
                    }
                }
                OutputKind::Webhook(WebhookOutput {
                    url,
                    template,
                    headers,
                    timeout,
                })
            }
            "syslog" => {
                let transport = self.transport.as_deref().unwrap_or("udp");
                let transport = match transport.to_ascii_lowercase().as_str() {
                    t @ ("udp" | "tcp") => {
                        if self.path.is_some() {
                            return Err((
                                "path",
                                format!("a {t} syslog output has an address, not a path"),
                            ));
                        }
                        let a = self.address.ok_or(("address", "missing".to_string()))?;
                        check_host_port(&a).map_err(|m| ("address", m))?;
                        if t == "udp" {
                            SyslogTransport::Udp(a)
                        } else {
                            SyslogTransport::Tcp(a)
                        }
                    }
                    "unix" => {
                        if self.address.is_some() {
                            return Err((
                                "address",
                                "a unix syslog output has a path, not an address".into(),
                            ));
                        }
                        SyslogTransport::Unix(
                            self.path.unwrap_or_else(|| PathBuf::from("/dev/log")),
                        )
                    }
                    other => {
                        return Err((
                            "transport",
                            format!("{other:?} is not one of udp, tcp, unix"),
                        ))
                    }
                };
                let format = match &self.format {
                    Some(f) => one_of(
                        "format",
                        f,
                        &[
                            ("rfc5424", SyslogFormat::Rfc5424),
                            ("cef", SyslogFormat::Cef),
                        ],
                    )?,
                    None => SyslogFormat::Rfc5424,
                };
                let facility = match &self.facility {
                    Some(f) => one_of("facility", f, &FACILITIES)?,
                    None => 16,
                };
                let app_name = self.app_name.unwrap_or_else(|| "vespa".into());
                if app_name.is_empty()
                    || app_name.len() > 48
                    || !app_name.chars().all(|c| c.is_ascii_graphic())
                {
                    return Err(("app_name", "1 to 48 printable ASCII characters".into()));
                }
                let max_bytes = self.max_bytes.unwrap_or(2048);
                if !(480..=65_000).contains(&max_bytes) {
                    return Err(("max_bytes", "must be between 480 and 65000".into()));
                }
                OutputKind::Syslog(SyslogOutput {
                    transport,
                    format,
                    facility,
                    app_name,
                    max_bytes,
                })
            }
            "file" => OutputKind::File(FileOutput {
                path: self.path.ok_or(("path", "missing".to_string()))?,
            }),
            _ => {
                let url = self.url.ok_or(("url", "missing".to_string()))?;
                check_url(&url, &["nats", "tls"]).map_err(|m| ("url", m))?;
                let subject_prefix = self.subject_prefix.unwrap_or_else(|| "vespa".into());
                check_subject_prefix(&subject_prefix).map_err(|m| ("subject_prefix", m))?;
                OutputKind::Nats(NatsOutput {
                    url,
                    subject_prefix,
                    credentials: self.credentials,
                    timeout,
                })
            }
        };
        Ok(OutputDef {
            name,
            kind,
            filter,
            queue,
            backoff_min,
            backoff_max,
            line,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_addresses_are_checked() {
        assert!(check_url("http://127.0.0.1:9/hook", &["http", "https"]).is_ok());
        assert!(check_url("https://hooks.slack.com/services/T/B/X", &["http", "https"]).is_ok());
        assert!(check_url("http://[::1]:8080/", &["http"]).is_ok());
        assert!(check_url("nats://127.0.0.1:4222", &["nats", "tls"]).is_ok());
        for bad in [
            "127.0.0.1:9",
            "ftp://x/",
            "http://",
            "http://:80/",
            "http://h:0/",
            "http://h:99999/",
            "http://h/a b",
            "http://[::1/",
        ] {
            assert!(check_url(bad, &["http", "https"]).is_err(), "{bad}");
        }
        assert!(check_host_port("127.0.0.1:514").is_ok());
        assert!(check_host_port("[::1]:514").is_ok());
        assert!(check_host_port("logs.example:6514").is_ok());
        for bad in ["127.0.0.1", "logs:0", ":514", "a b:514", "logs:x"] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
        assert!(check_subject_prefix("vespa").is_ok());
        assert!(check_subject_prefix("site.a").is_ok());
        for bad in ["", "a..b", "a.*", "a.>", "a b"] {
            assert!(check_subject_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn filters_take_kinds_severities_and_rules() {
        let all = OutputFilter::default();
        assert!(all.takes_alert("bandwidth"));
        assert!(all.takes_decision(None));
        let warn = OutputFilter {
            min_severity: Severity::Warning,
            ..OutputFilter::default()
        };
        assert!(!warn.takes_alert("bandwidth"));
        assert!(!warn.takes_alert("node"));
        assert!(warn.takes_alert("conn_threshold"));
        assert!(warn.takes_alert("infected"));
        assert!(!warn.takes_decision(Some("r")), "decisions are notices");
        let kinds = OutputFilter {
            kinds: vec!["infected".into(), DECISION_KIND.into()],
            rules: vec!["syn-flood".into()],
            ..OutputFilter::default()
        };
        assert!(kinds.takes_alert("infected"));
        assert!(!kinds.takes_alert("conn_threshold"));
        assert!(kinds.takes_decision(Some("syn-flood")));
        assert!(!kinds.takes_decision(Some("other")));
        assert!(!kinds.takes_decision(None));
        let no_decisions = OutputFilter {
            kinds: vec!["infected".into()],
            ..OutputFilter::default()
        };
        assert!(!no_decisions.takes_decision(Some("syn-flood")));
    }

    #[test]
    fn every_alert_kind_has_a_severity() {
        use vespa_proto::AlertBody;
        let ip = std::net::IpAddr::from([192, 0, 2, 1]);
        let bodies = [
            AlertBody::ConnThreshold {
                addr: ip,
                established: 1,
                threshold: 1,
            },
            AlertBody::SynThreshold {
                addr: ip,
                syns_in_second: 1,
                threshold: 1,
            },
            AlertBody::Bandwidth {
                iface: "lo".into(),
                rx_bytes: 0,
                tx_bytes: 0,
                vm: None,
            },
            AlertBody::Connections {
                per_remote: Vec::new(),
                rest_remotes: 0,
                rest_established: 0,
            },
            AlertBody::Infected {
                vm: "v".into(),
                file: "f".into(),
                signature: "s".into(),
            },
            AlertBody::ActuatorFailed {
                actuator: "a".into(),
                action: "b".into(),
                error: "c".into(),
            },
            AlertBody::Text("t".into()),
            AlertBody::SensorHealth {
                events_lost: 0,
                map_update_failures: 0,
                maps_full: 0,
            },
            AlertBody::Oversized {
                at: "a".into(),
                kind: "text".into(),
                size: 1,
                limit: 1,
            },
            AlertBody::ReflexBlock {
                target: "t".into(),
                cause: "syn".into(),
                value: 1,
                threshold: 1,
                ttl_s: 1,
                kernel_ns: 1,
            },
            AlertBody::Node {
                node: "n".into(),
                event: vespa_proto::NodeEvent::Lost,
                detail: String::new(),
            },
            AlertBody::Policy {
                kind: "did_not_take".into(),
                at: None,
                text: String::new(),
            },
        ];
        for b in &bodies {
            assert!(
                KIND_SEVERITY.iter().any(|(k, _)| *k == b.kind()),
                "{} has no severity",
                b.kind()
            );
        }
        assert_eq!(KIND_SEVERITY.len(), bodies.len() + 1, "and decisions");
    }
}
