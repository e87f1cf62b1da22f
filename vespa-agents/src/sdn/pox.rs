//! POX through its messenger service (TCP 7790): an unframed stream of JSON objects.
//!
//! Each command opens a session: the server greets with
//! `{"CHANNEL":"","cmd":"welcome","session_id":".."}`, the agent joins the channel
//! (`{"CHANNEL":"","cmd":"join_channel","channel":"mac_redir","json":true}`, as in 2014) and
//! sends `{"CHANNEL":"mac_redir","cmd":C,...}` with C one of the 2014 commands
//! (`block_hackers`, `release_hackers`, `status_hackers`, `get_topology`, `get_link_stats`)
//! or `get_flow_stats`. Unlike 2014, block and release name their target (`"mac"` or `"ip"`)
//! and the block id (`"block"`), a block with a time-to-live carries it (`"ttl"`, seconds) and
//! the `"hard_timeout"` its flows must carry (whole seconds: TTL + [`super::SWITCH_TTL_MARGIN`],
//! so the switch ends the block if the agent does not; absent: no timeout), blocking a target
//! again re-sends `block_hackers` with the same id and the new timeouts (the component replaces
//! its flows), every command carries an `"xid"`, and the agent waits for
//! the component's reply on the channel (the first non-welcome message of that channel, with
//! the same `xid` when the reply echoes one); a reply with an `"error"` member is a refusal.
//! The POX-side component of 2014 was never published; this is the protocol it must speak.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::{ActiveBlock, BlockSpec, BlockTarget, SdnController, SdnState};
use crate::error::SdnError;
use crate::retry::RetryPolicy;

const NAME: &str = "pox";

#[derive(Debug, Clone)]
pub struct PoxConfig {
    /// `host:port` of the messenger (default `127.0.0.1:7790`).
    pub addr: String,
    /// The component's channel (2014: `mac_redir`).
    pub channel: String,
    /// Bound on one whole command (connect, greeting, reply).
    pub timeout: Duration,
    /// Wait for the component's reply to block/release (false: fire and forget, as in 2014).
    pub await_replies: bool,
    pub retry: RetryPolicy,
}

impl Default for PoxConfig {
    fn default() -> Self {
        PoxConfig {
            addr: "127.0.0.1:7790".into(),
            channel: "mac_redir".into(),
            timeout: Duration::from_secs(5),
            await_replies: true,
            retry: RetryPolicy::default(),
        }
    }
}

/// A POX controller reached through its messenger.
#[derive(Debug)]
pub struct Pox {
    cfg: PoxConfig,
    state: SdnState,
    xid: AtomicU64,
}

/// One messenger connection: a byte buffer over the socket, decoded one JSON value at a time.
struct Session<'a> {
    stream: TcpStream,
    buf: Vec<u8>,
    addr: &'a str,
    deadline: Instant,
}

impl Session<'_> {
    fn err(&self, what: impl Into<String>, source: Option<std::io::Error>) -> SdnError {
        SdnError::Messenger {
            addr: self.addr.to_string(),
            what: what.into(),
            source,
        }
    }

    async fn send(&mut self, v: &Value) -> Result<(), SdnError> {
        let bytes = v.to_string().into_bytes();
        match timeout_at(self.deadline, self.stream.write_all(&bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.err("send failed", Some(e))),
            Err(_) => Err(self.err(
                "timed out sending",
                Some(std::io::ErrorKind::TimedOut.into()),
            )),
        }
    }

    /// The next JSON object of the stream.
    async fn recv(&mut self) -> Result<Value, SdnError> {
        loop {
            let start = self
                .buf
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(self.buf.len());
            self.buf.drain(..start);
            if !self.buf.is_empty() {
                let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
                match it.next() {
                    Some(Ok(v)) => {
                        let used = it.byte_offset();
                        self.buf.drain(..used);
                        if !v.is_object() {
                            return Err(self.err(format!("expected a JSON object, got {v}"), None));
                        }
                        return Ok(v);
                    }
                    Some(Err(e)) if e.is_eof() => {}
                    Some(Err(e)) => {
                        let head: String = String::from_utf8_lossy(&self.buf)
                            .chars()
                            .take(120)
                            .collect();
                        return Err(
                            self.err(format!("garbage on the stream ({e}): {head:?}"), None)
                        );
                    }
                    None => {}
                }
            }
            let mut chunk = [0u8; 4096];
            match timeout_at(self.deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) => {
                    return Err(self.err(
                        "connection closed before a reply",
                        Some(std::io::ErrorKind::UnexpectedEof.into()),
                    ))
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(self.err("receive failed", Some(e))),
                Err(_) => {
                    return Err(self.err(
                        "timed out waiting for a reply",
                        Some(std::io::ErrorKind::TimedOut.into()),
                    ))
                }
            }
        }
    }
}

fn is_welcome(v: &Value) -> bool {
    v.get("cmd").and_then(Value::as_str) == Some("welcome")
}

impl Pox {
    pub fn new(cfg: PoxConfig) -> Pox {
        Pox {
            state: SdnState::new(cfg.retry.clone()),
            cfg,
            xid: AtomicU64::new(1),
        }
    }

    /// Sends `cmd` with `extra` members on the channel; returns the component's reply (None
    /// when `want_reply` is false).
    pub async fn command(
        &self,
        cmd: &str,
        extra: Map<String, Value>,
        want_reply: bool,
    ) -> Result<Option<Value>, SdnError> {
        let deadline = Instant::now() + self.cfg.timeout;
        let addr = self.cfg.addr.as_str();
        let stream = match timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(SdnError::Messenger {
                    addr: addr.into(),
                    what: "cannot connect".into(),
                    source: Some(e),
                })
            }
            Err(_) => {
                return Err(SdnError::Messenger {
                    addr: addr.into(),
                    what: "connect timed out".into(),
                    source: Some(std::io::ErrorKind::TimedOut.into()),
                })
            }
        };
        let _ = stream.set_nodelay(true);
        let mut s = Session {
            stream,
            buf: Vec::new(),
            addr,
            deadline,
        };
        let hello = s.recv().await?;
        if !is_welcome(&hello) {
            return Err(s.err(format!("expected the welcome message, got {hello}"), None));
        }
        let ch = self.cfg.channel.as_str();
        s.send(&json!({ "CHANNEL": "", "cmd": "join_channel", "channel": ch, "json": true }))
            .await?;
        let xid = self.xid.fetch_add(1, Ordering::Relaxed);
        let mut msg = Map::new();
        msg.insert("CHANNEL".into(), json!(ch));
        msg.insert("cmd".into(), json!(cmd));
        msg.insert("xid".into(), json!(xid));
        msg.extend(extra);
        s.send(&Value::Object(msg)).await?;
        if !want_reply {
            return Ok(None);
        }
        loop {
            let v = s.recv().await?;
            let on_channel = v.get("CHANNEL").and_then(Value::as_str) == Some(ch);
            let other_xid = v.get("xid").is_some_and(|x| x.as_u64() != Some(xid));
            if !on_channel || is_welcome(&v) || other_xid {
                continue;
            }
            if let Some(err) = v.get("error") {
                let detail = err
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| err.to_string());
                return Err(SdnError::Rejected {
                    controller: NAME,
                    what: cmd.to_string(),
                    detail,
                });
            }
            return Ok(Some(v));
        }
    }

    async fn query(&self, cmd: &str) -> Result<Value, SdnError> {
        let mut v = self
            .command(cmd, Map::new(), true)
            .await?
            .unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.remove("CHANNEL");
            o.remove("xid");
        }
        Ok(v)
    }
}

fn target_fields(t: &BlockTarget) -> Map<String, Value> {
    let mut m = Map::new();
    match t {
        BlockTarget::Mac(mac) => m.insert("mac".into(), json!(mac.to_string())),
        BlockTarget::Ip(ip) => m.insert("ip".into(), json!(ip.to_string())),
    };
    m
}

impl SdnController for Pox {
    fn name(&self) -> &'static str {
        NAME
    }

    fn state(&self) -> &SdnState {
        &self.state
    }

    async fn install(&self, spec: &BlockSpec) -> Result<Vec<String>, SdnError> {
        let mut m = target_fields(&spec.target);
        m.insert("block".into(), json!(spec.id.0));
        if let Some(ttl) = spec.ttl {
            m.insert("ttl".into(), json!(ttl.as_secs_f64()));
        }
        if let Some(t) = spec.hard_timeout_s() {
            m.insert("hard_timeout".into(), json!(t));
        }
        self.command("block_hackers", m, self.cfg.await_replies)
            .await?;
        Ok(Vec::new())
    }

    async fn reinstall(&self, spec: &BlockSpec) -> Result<Option<Vec<String>>, SdnError> {
        self.install(spec).await.map(Some)
    }

    async fn uninstall(&self, block: &ActiveBlock) -> Result<(), SdnError> {
        let mut m = target_fields(&block.target);
        m.insert("block".into(), json!(block.id.0));
        self.command("release_hackers", m, self.cfg.await_replies)
            .await?;
        Ok(())
    }

    /// `release_hackers` without a target: the 2014 "release everything".
    async fn purge(&self) -> Result<(), SdnError> {
        self.command("release_hackers", Map::new(), self.cfg.await_replies)
            .await?;
        Ok(())
    }

    async fn fetch_topology(&self) -> Result<Value, SdnError> {
        self.query("get_topology").await
    }

    async fn fetch_link_stats(&self) -> Result<Value, SdnError> {
        self.query("get_link_stats").await
    }

    async fn fetch_flow_stats(&self) -> Result<Value, SdnError> {
        self.query("get_flow_stats").await
    }
}
