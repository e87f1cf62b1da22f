//! How the command line reaches a running VO: its HTTP API with the bearer token ([`Api`]),
//! or the tree with a key ([`connect`]), as `vespa-orchestrator call` does.
//!
//! The HTTP client is hyper's HTTP/1 connection, one per request, over plain TCP: the API
//! listens on loopback (or behind a TLS proxy, which this client does not speak: from another
//! machine, use an SSH tunnel or the tree). Answers are bounded in size and time.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use vespa_node::launch::{self, KeySource, TopologyArgs};
use vespa_node::{Client, KeyRing, Security};

use crate::http::ApiToken;

/// Largest answer read from the API (a listing of 100,000 decisions fits).
const MAX_ANSWER: usize = 64 << 20;

/// The VO's HTTP API at one address.
pub struct Api {
    /// `host:port`, as sent in `Host`.
    authority: String,
    /// The path the API is under (empty, or `/prefix` behind a proxy).
    prefix: String,
    token: Option<ApiToken>,
    timeout: Duration,
}

/// An answer that is not a success: the status (0 when there was no answer) and the API's
/// `error`, or what went wrong on the way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    /// The HTTP status; 0 when the API was not reached.
    pub status: u16,
    /// Why.
    pub message: String,
}

impl Api {
    /// The API at `url` (`http://host:port`, optionally with a path prefix), calling
    /// mutations with `token`, each exchange within `timeout`.
    pub fn new(url: &str, token: Option<ApiToken>, timeout: Duration) -> anyhow::Result<Api> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--api {url:?}: not a URL (expected http://HOST:PORT)"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => anyhow::bail!(
                "--api {url}: this client speaks plain HTTP only; reach a remote API through an SSH tunnel (ssh -L 8080:127.0.0.1:8080 HOST) or use the tree (--operator)"
            ),
            _ => anyhow::bail!("--api {url:?}: expected http://HOST:PORT"),
        }
        let authority = uri
            .authority()
            .with_context(|| format!("--api {url:?}: no host"))?;
        let authority = if authority.port().is_some() {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Api {
            authority,
            prefix: uri.path().trim_end_matches('/').to_string(),
            token,
            timeout,
        })
    }

    /// One request: `method` on `path` (under the API's prefix, with its query), with a
    /// body of `content_type` if any; the answer's body on success.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Bytes, ApiFailure> {
        let failure = |message: String| ApiFailure { status: 0, message };
        let exchange = self.exchange(method, path, body);
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                failure(format!(
                    "the API at {} did not answer within {}s",
                    self.authority,
                    self.timeout.as_secs_f64()
                ))
            })?
            .map_err(failure)?;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let error = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
        let hint = match status {
            401 | 503 if self.token.is_none() && error.contains("token") => {
                " (give the token file with --token-file or VESPA_API_TOKEN_FILE)"
            }
            _ => "",
        };
        Err(ApiFailure {
            status,
            message: format!("{error}{hint}"),
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(u16, Bytes), String> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("cannot reach the API at {}: {e}", self.authority))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP with {}: {e}", self.authority))?;
        let driver = tokio::spawn(conn);
        let mutation = method != Method::GET;
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(hyper::header::HOST, &self.authority);
        if let (true, Some(t)) = (mutation, &self.token) {
            req = req.header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", t.secret()),
            );
        }
        let payload = match body {
            Some((content_type, bytes)) => {
                req = req.header(hyper::header::CONTENT_TYPE, content_type);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| format!("building the request: {e}"))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP with {}: {e}", self.authority))?;
        let status = res.status().as_u16();
        let bytes = Limited::new(res.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer of {}: {e}", self.authority))?
            .to_bytes();
        driver.abort();
        Ok((status, bytes))
    }
}

/// `s` as one path segment (or several, `/` kept): everything but unreserved characters,
/// `:` and `/` percent-encoded.
pub fn path_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A connection to a node of a running tree, ready for calls.
pub struct Connected {
    /// The connection.
    pub client: Client,
    /// The node connected to.
    pub node: String,
}

/// Connects to `via` (default: the VO) of the tree `cfg` describes: as `operator` with its
/// key (`keygen --per-node DIR --operator NAME`), or else with the node's own key (a tool on
/// that node's machine) or the shared key (which every holder uses as it is: `operator` is
/// then not used).
pub async fn connect(
    cfg: &TopologyArgs,
    via: Option<&str>,
    operator: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Connected> {
    let topo = cfg.load()?;
    let node = match via {
        Some(v) => topo
            .node(v)
            .with_context(|| format!("{}: no node named {v:?}", topo.source))?,
        None => topo.vo(),
    };
    let addr: SocketAddr = topo.listen_addr(node);
    let keys = cfg.keys(&topo).map_err(anyhow::Error::msg)?;
    let (security, me) = match (keys, operator) {
        (KeySource::PerNode(dir), Some(op)) => {
            let me = vespa_proto::key::operator_name(op);
            let key = vespa_proto::key::load(&launch::key_files(&dir, &me).0)?;
            let ring = KeyRing {
                own: vec![key],
                root: Vec::new(),
            };
            (Security::Keys(std::sync::Arc::new(ring)), me)
        }
        (keys @ KeySource::PerNode(_), None) => (
            keys.security(&node.name, false)
                .map_err(anyhow::Error::msg)?,
            node.name.clone(),
        ),
        (keys, _) => (
            keys.security(&node.name, false)
                .map_err(anyhow::Error::msg)?,
            "vespa-orchestrator-call".to_string(),
        ),
    };
    let client = Client::connect(addr, &security, &me, Some(&node.name), timeout)
        .await
        .with_context(|| format!("connecting to {} at {addr}", node.name))?;
    Ok(Connected {
        client,
        node: node.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_the_host_and_the_prefix() {
        let api = Api::new("http://127.0.0.1:8080", None, Duration::from_secs(1)).unwrap();
        assert_eq!(
            (api.authority.as_str(), api.prefix.as_str()),
            ("127.0.0.1:8080", "")
        );
        let api = Api::new("http://vespa.example/ops/", None, Duration::from_secs(1)).unwrap();
        assert_eq!(
            (api.authority.as_str(), api.prefix.as_str()),
            ("vespa.example:80", "/ops")
        );
        let e = Api::new("https://x:1", None, Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(e.to_string().contains("plain HTTP only"), "{e}");
        let e = Api::new("127.0.0.1:8080", None, Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(e.to_string().contains("expected http://HOST:PORT"), "{e}");
    }

    #[test]
    fn path_segments_keep_addresses_and_prefixes_readable() {
        assert_eq!(path_escape("10.0.0.0/24"), "10.0.0.0/24");
        assert_eq!(path_escape("fe80::1"), "fe80::1");
        assert_eq!(path_escape("web vm?#%"), "web%20vm%3F%23%25");
        assert_eq!(path_escape("é"), "%C3%A9");
    }
}
