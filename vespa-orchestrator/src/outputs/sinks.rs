//! Where the events go: one type per kind of output, each delivering a batch in order and
//! saying how far it got when it fails. Every wait is bounded (the output's `timeout_ms`, or
//! [`super::DEFAULT_TIMEOUT`]), so a destination that hangs fails like one that refuses.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket, UnixDatagram};
use vespa_node::config::outputs::{
    NatsOutput, SyslogOutput, SyslogTransport, WebhookOutput, WebhookTemplate,
};
use vespa_node::config::{OutputDef, OutputKind};

use super::event::{Event, Layers};
use super::{format, Failed, DEFAULT_TIMEOUT};

/// Largest line of the JSON-lines file and message on NATS (the JSON bounds the body already).
const MAX_JSON: usize = 64 * 1024;

pub(super) enum Sink {
    Webhook(Webhook),
    Syslog(Syslog),
    File(File),
    Nats(Nats),
}

impl Sink {
    pub(super) fn new(def: &OutputDef, layers: Arc<Layers>, vo: String) -> Result<Sink, String> {
        Ok(match &def.kind {
            OutputKind::Webhook(w) => Sink::Webhook(Webhook::new(w.clone(), layers)?),
            OutputKind::Syslog(s) => Sink::Syslog(Syslog {
                cfg: s.clone(),
                layers,
                vo,
                conn: None,
            }),
            OutputKind::File(f) => Sink::File(File::new(f.path.clone(), layers)),
            OutputKind::Nats(n) => Sink::Nats(Nats {
                cfg: n.clone(),
                layers,
                client: None,
            }),
        })
    }

    pub(super) async fn deliver(&mut self, batch: &[Event]) -> Result<(), Failed> {
        match self {
            Sink::Webhook(w) => w.deliver(batch).await,
            Sink::Syslog(s) => s.deliver(batch).await,
            Sink::File(f) => f.deliver(batch).await,
            Sink::Nats(n) => n.deliver(batch).await,
        }
    }
}

/// JSON POSTs; one per event, or one per batch for Alertmanager (which takes an array).
pub(super) struct Webhook {
    cfg: WebhookOutput,
    client: reqwest::Client,
    layers: Arc<Layers>,
}

impl Webhook {
    fn new(cfg: WebhookOutput, layers: Arc<Layers>) -> Result<Webhook, String> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("header {k:?}: {e}"))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| format!("header {k:?}: {e}"))?;
            headers.insert(name, value);
        }
        reqwest::Url::parse(&cfg.url).map_err(|e| format!("url {:?}: {e}", cfg.url))?;
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("vespa/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Webhook {
            cfg,
            client,
            layers,
        })
    }

    async fn post(&self, body: &serde_json::Value) -> Result<(), (String, bool)> {
        let r = self
            .client
            .post(&self.cfg.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            // Without the URL: a webhook's URL is often its secret (Slack's are), and this
            // error goes to the log.
            .map_err(|e| (error_chain(&e.without_url()), false))?;
        let status = r.status();
        if status.is_success() {
            return Ok(());
        }
        // A 4xx other than a timeout or a rate limit will be the same on every retry.
        let permanent = status.is_client_error()
            && status != reqwest::StatusCode::REQUEST_TIMEOUT
            && status != reqwest::StatusCode::TOO_MANY_REQUESTS;
        Err((format!("HTTP {status}"), permanent))
    }

    async fn deliver(&mut self, batch: &[Event]) -> Result<(), Failed> {
        if self.cfg.template == WebhookTemplate::Alertmanager {
            let body = format::alertmanager(batch, &self.layers);
            return self.post(&body).await.map_err(|(error, permanent)| Failed {
                // A refused batch is dropped whole: Alertmanager refuses the request, not an
                // alert of it.
                done: if permanent {
                    batch.len().saturating_sub(1)
                } else {
                    0
                },
                error,
                permanent,
            });
        }
        for (i, e) in batch.iter().enumerate() {
            let body = match self.cfg.template {
                WebhookTemplate::Slack => format::slack(e),
                _ => e.to_json(&self.layers),
            };
            self.post(&body)
                .await
                .map_err(|(error, permanent)| Failed {
                    done: i,
                    error,
                    permanent,
                })?;
        }
        Ok(())
    }
}

/// An error with its sources (reqwest's own message says little: "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut at = e.source();
    while let Some(cause) = at {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        at = cause.source();
    }
    s
}

enum SyslogConn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Unix(UnixDatagram),
}

/// Syslog records over UDP (a datagram each), TCP (octet counting, RFC 6587) or a local
/// datagram socket.
pub(super) struct Syslog {
    cfg: SyslogOutput,
    layers: Arc<Layers>,
    vo: String,
    conn: Option<SyslogConn>,
}

async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(DEFAULT_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out")),
    }
}

impl Syslog {
    async fn connect(&self) -> Result<SyslogConn, String> {
        Ok(match &self.cfg.transport {
            SyslogTransport::Udp(addr) => {
                let target = bounded("resolving", tokio::net::lookup_host(addr.as_str()))
                    .await?
                    .next()
                    .ok_or_else(|| format!("{addr}: no address"))?;
                let local: std::net::SocketAddr = if target.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
                s.connect(target)
                    .await
                    .map_err(|e| format!("{addr}: {e}"))?;
                SyslogConn::Udp(s)
            }
            SyslogTransport::Tcp(addr) => {
                let s = bounded(
                    &format!("connecting to {addr}"),
                    TcpStream::connect(addr.as_str()),
                )
                .await?;
                let _ = s.set_nodelay(true);
                SyslogConn::Tcp(s)
            }
            SyslogTransport::Unix(path) => {
                let s = UnixDatagram::unbound().map_err(|e| e.to_string())?;
                s.connect(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                SyslogConn::Unix(s)
            }
        })
    }

    async fn deliver(&mut self, batch: &[Event]) -> Result<(), Failed> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect().await.map_err(|e| Failed::new(0, e))?,
        };
        let mut conn = conn;
        for (i, e) in batch.iter().enumerate() {
            let record = format::syslog(e, &self.cfg, &self.layers, &self.vo);
            let sent = match &mut conn {
                SyslogConn::Udp(s) => bounded("sending", s.send(record.as_bytes()))
                    .await
                    .map(|_| ()),
                SyslogConn::Unix(s) => bounded("sending", s.send(record.as_bytes()))
                    .await
                    .map(|_| ()),
                SyslogConn::Tcp(s) => {
                    let framed = format!("{} {record}", record.len());
                    bounded("sending", s.write_all(framed.as_bytes())).await
                }
            };
            // A failed connection is dropped; the next attempt makes a new one.
            sent.map_err(|err| Failed::new(i, err))?;
        }
        self.conn = Some(conn);
        Ok(())
    }
}

/// Appends JSON lines; reopens the file on SIGHUP (after logrotate moved it).
pub(super) struct File {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    layers: Arc<Layers>,
    hangups: Arc<AtomicU64>,
    opened_at: u64,
}

/// Counts the SIGHUPs the process receives, from now on (one watcher per file output, on
/// the outputs' runtime).
fn watch_hangups() -> Arc<AtomicU64> {
    let count = Arc::new(AtomicU64::new(0));
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            let c = count.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "file outputs will not reopen on SIGHUP"),
    }
    count
}

impl File {
    fn new(path: PathBuf, layers: Arc<Layers>) -> File {
        File {
            path,
            file: None,
            layers,
            hangups: watch_hangups(),
            opened_at: 0,
        }
    }

    async fn deliver(&mut self, batch: &[Event]) -> Result<(), Failed> {
        let hangups = self.hangups.load(Ordering::Relaxed);
        if hangups != self.opened_at {
            self.file = None;
        }
        let mut file = match self.file.take() {
            Some(f) => f,
            None => {
                let f = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .await
                    .map_err(|e| Failed::new(0, format!("{}: {e}", self.path.display())))?;
                self.opened_at = hangups;
                f
            }
        };
        let mut buf = Vec::new();
        for e in batch {
            let line = e.to_json(&self.layers).to_string();
            buf.extend_from_slice(super::event::cut(&line, MAX_JSON).as_bytes());
            buf.push(b'\n');
        }
        // One write of whole lines: a failure leaves at most a piece of the batch, which
        // the retry writes again (at-least-once).
        bounded("writing", file.write_all(&buf))
            .await
            .map_err(|e| Failed::new(0, format!("{}: {e}", self.path.display())))?;
        bounded("writing", file.flush())
            .await
            .map_err(|e| Failed::new(0, format!("{}: {e}", self.path.display())))?;
        self.file = Some(file);
        Ok(())
    }
}

/// Publishes on `<prefix>.alerts.<layer>.<node>` and `<prefix>.decisions`; a batch is
/// confirmed by one flush (the server has read it).
pub(super) struct Nats {
    cfg: NatsOutput,
    layers: Arc<Layers>,
    client: Option<async_nats::Client>,
}

/// A node name as one subject token: no `.`, wildcard or whitespace, at most 64 bytes.
pub(super) fn subject_token(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '.' | '*' | '>') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

impl Nats {
    fn subject(&self, e: &Event) -> String {
        match e {
            Event::Alert(a) => format!(
                "{}.alerts.{}.{}",
                self.cfg.subject_prefix,
                self.layers.of(&a.origin),
                subject_token(&a.origin)
            ),
            Event::Decision(_) => format!("{}.decisions", self.cfg.subject_prefix),
        }
    }

    async fn connect(&self) -> Result<async_nats::Client, String> {
        let mut opts = async_nats::ConnectOptions::new()
            .name("vespa-orchestrator")
            .connection_timeout(self.cfg.timeout)
            // This output retries with its own backoff; a client reconnecting on its own
            // would hold messages we cannot count.
            .max_reconnects(Some(1));
        if let Some(creds) = &self.cfg.credentials {
            opts = opts
                .credentials_file(creds)
                .await
                .map_err(|e| format!("credentials {}: {e}", creds.display()))?;
        }
        bounded_nats(self.cfg.timeout, opts.connect(self.cfg.url.as_str())).await
    }

    async fn deliver(&mut self, batch: &[Event]) -> Result<(), Failed> {
        let client = match self.client.take() {
            Some(c) => c,
            None => self.connect().await.map_err(|e| Failed::new(0, e))?,
        };
        for e in batch {
            let payload = e.to_json(&self.layers).to_string();
            let payload = super::event::cut(&payload, MAX_JSON).to_string();
            let r = tokio::time::timeout(
                self.cfg.timeout,
                client.publish(self.subject(e), payload.into()),
            )
            .await;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(Failed::new(0, format!("publishing: {err}"))),
                Err(_) => return Err(Failed::new(0, "publishing: timed out")),
            }
        }
        match tokio::time::timeout(self.cfg.timeout, client.flush()).await {
            Ok(Ok(())) => {
                self.client = Some(client);
                Ok(())
            }
            // The client is dropped with what it still holds, and the batch is sent again
            // on a new connection.
            Ok(Err(e)) => Err(Failed::new(0, format!("flushing: {e}"))),
            Err(_) => Err(Failed::new(0, "flushing: timed out")),
        }
    }
}

async fn bounded_nats(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<async_nats::Client, async_nats::ConnectError>>,
) -> Result<async_nats::Client, String> {
    match tokio::time::timeout(timeout + Duration::from_secs(1), f).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("connecting: {e}")),
        Err(_) => Err("connecting: timed out".into()),
    }
}
