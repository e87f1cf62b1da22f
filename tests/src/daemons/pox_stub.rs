//! A POX messenger stand-in (upstream's TCP transport crashes: noxrepo/pox #306/#307) with a
//! `mac_redir` component as VESPA expects it: greets each connection with
//! `{"CHANNEL":"","cmd":"welcome","session_id":".."}`, handles `join_channel`, answers the
//! 2014 commands on the channel. It records every message received and, to exercise the
//! client's stream handling, precedes each reply with a message on another channel and one
//! carrying a different `xid`, and writes each reply in two pieces.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the component behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoxMode {
    Normal,
    /// Never replies to channel commands.
    Silent,
    /// Replies with bytes that are not JSON.
    Garbage,
    /// Replies with an `"error"` member.
    Refuse,
}

#[derive(Debug)]
struct Inner {
    received: Vec<Value>,
    blocked: BTreeSet<String>,
    mode: PoxMode,
    sessions: u64,
}

pub struct PoxStub {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl PoxStub {
    pub async fn start() -> PoxStub {
        let inner = Arc::new(Mutex::new(Inner {
            received: Vec::new(),
            blocked: BTreeSet::new(),
            mode: PoxMode::Normal,
            sessions: 0,
        }));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the POX stub");
        let addr = listener.local_addr().expect("stub address");
        let st = inner.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(session(sock, st.clone()));
            }
        });
        PoxStub { addr, inner, task }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("stub state")
    }

    /// Every message received so far, in order, across connections.
    pub fn received(&self) -> Vec<Value> {
        self.lock().received.clone()
    }

    pub fn take_received(&self) -> Vec<Value> {
        std::mem::take(&mut self.lock().received)
    }

    /// The targets the component currently blocks (`mac` or `ip` values).
    pub fn blocked(&self) -> BTreeSet<String> {
        self.lock().blocked.clone()
    }

    pub fn set_mode(&self, m: PoxMode) {
        self.lock().mode = m;
    }

    pub fn sessions(&self) -> u64 {
        self.lock().sessions
    }
}

impl Drop for PoxStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn send(sock: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    sock.write_all(v.to_string().as_bytes()).await
}

async fn session(mut sock: TcpStream, st: Arc<Mutex<Inner>>) {
    let id = {
        let mut s = st.lock().expect("stub state");
        s.sessions += 1;
        s.sessions
    };
    if send(
        &mut sock,
        &json!({ "CHANNEL": "", "cmd": "welcome", "session_id": format!("vespa-stub-{id}") }),
    )
    .await
    .is_err()
    {
        return;
    }
    let mut joined: Option<String> = None;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Decode every complete JSON value in the buffer.
        loop {
            let start = buf
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(buf.len());
            buf.drain(..start);
            if buf.is_empty() {
                break;
            }
            let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
            let msg = match it.next() {
                Some(Ok(v)) => {
                    let used = it.byte_offset();
                    buf.drain(..used);
                    v
                }
                Some(Err(e)) if e.is_eof() => break,
                _ => return, // garbage from the client: drop the connection, as POX does
            };
            let mode = {
                let mut s = st.lock().expect("stub state");
                s.received.push(msg.clone());
                s.mode
            };
            if msg["cmd"] == "join_channel" && msg["CHANNEL"] == "" {
                joined = msg["channel"].as_str().map(str::to_string);
                continue;
            }
            let Some(ch) = joined.clone().filter(|c| msg["CHANNEL"] == c.as_str()) else {
                continue;
            };
            let reply = match mode {
                PoxMode::Silent => continue,
                PoxMode::Garbage => {
                    let _ = sock
                        .write_all(b"{\"CHANNEL\": \"mac_redir\", this is not json")
                        .await;
                    continue;
                }
                PoxMode::Refuse => {
                    json!({ "CHANNEL": ch, "cmd": msg["cmd"], "xid": msg["xid"], "error": "component refused" })
                }
                PoxMode::Normal => answer(&st, &ch, &msg),
            };
            // Noise the client must skip: another channel, then another xid.
            let _ = send(&mut sock, &json!({ "CHANNEL": "other", "cmd": "chatter" })).await;
            let _ = send(
                &mut sock,
                &json!({ "CHANNEL": ch, "cmd": "status", "xid": 999_999_999u64 }),
            )
            .await;
            let text = reply.to_string().into_bytes();
            let (a, b) = text.split_at(text.len() / 2);
            if sock.write_all(a).await.is_err() {
                return;
            }
            let _ = sock.flush().await;
            if sock.write_all(b).await.is_err() {
                return;
            }
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn answer(st: &Arc<Mutex<Inner>>, ch: &str, msg: &Value) -> Value {
    let mut s = st.lock().expect("stub state");
    let target = msg
        .get("mac")
        .or_else(|| msg.get("ip"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let base = |extra: Value| {
        let mut v = json!({ "CHANNEL": ch, "cmd": msg["cmd"], "xid": msg["xid"] });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    };
    match msg["cmd"].as_str().unwrap_or("") {
        "block_hackers" => match target {
            Some(t) => {
                s.blocked.insert(t);
                base(json!({ "status": "blocked" }))
            }
            None => base(json!({ "error": "block_hackers needs mac or ip" })),
        },
        "release_hackers" => {
            match target {
                Some(t) => {
                    s.blocked.remove(&t);
                }
                None => s.blocked.clear(),
            }
            base(json!({ "status": "released" }))
        }
        "status_hackers" => base(json!({ "blocked": s.blocked.iter().collect::<Vec<_>>() })),
        "get_topology" => base(
            json!({ "switches": ["00-00-00-00-00-01", "00-00-00-00-00-02"], "links": [{ "dpid1": "00-00-00-00-00-01", "port1": 3, "dpid2": "00-00-00-00-00-02", "port2": 3 }] }),
        ),
        "get_link_stats" => base(
            json!({ "links": [{ "dpid": "00-00-00-00-00-01", "port": 3, "rx_packets": 10, "tx_packets": 12 }] }),
        ),
        "get_flow_stats" => base(json!({ "flows": [] })),
        other => base(json!({ "error": format!("unknown command {other}") })),
    }
}
