//! Plain-HTTP JSON calls to a local controller, with HTTP errors, unreachable controllers and
//! malformed replies mapped onto [`SdnError`].

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::error::SdnError;

#[derive(Debug, Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    base: String,
    controller: &'static str,
}

/// Longest error body quoted in an error.
const BODY_QUOTE: usize = 300;

impl Http {
    pub(crate) fn new(controller: &'static str, base: &str, timeout: Duration) -> Http {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            // Only fails when the TLS backend cannot initialise; none is compiled in.
            .unwrap_or_default();
        Http {
            client,
            base: base.trim_end_matches('/').to_string(),
            controller,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request; returns the body of a 2xx reply.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<String, SdnError> {
        let url = self.url(path);
        let mname: &'static str = match method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            _ => "HTTP",
        };
        let mut req = self.client.request(method, &url);
        if let Some(b) = body {
            // Serialised by hand: os-ken parses bodies with Python's ast.literal_eval, which
            // takes JSON objects, strings and numbers (the only things sent here) as they are.
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(|source| SdnError::Unreachable {
            controller: self.controller,
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|source| SdnError::Unreachable {
            controller: self.controller,
            url: url.clone(),
            source,
        })?;
        if !status.is_success() {
            let mut body: String = text.chars().take(BODY_QUOTE).collect();
            if body.len() < text.len() {
                body.push('…');
            }
            return Err(SdnError::Http {
                controller: self.controller,
                method: mname,
                url,
                status: status.as_u16(),
                body,
            });
        }
        Ok(text)
    }

    /// GET and parse JSON.
    pub(crate) async fn get_json(&self, path: &str) -> Result<Value, SdnError> {
        let text = self.send(Method::GET, path, None).await?;
        self.parse(path, &text)
    }

    /// Sends a JSON body and parses a JSON reply.
    pub(crate) async fn json(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<Value, SdnError> {
        let text = self.send(method, path, Some(body)).await?;
        self.parse(path, &text)
    }

    pub(crate) fn parse(&self, path: &str, text: &str) -> Result<Value, SdnError> {
        serde_json::from_str(text).map_err(|e| SdnError::BadReply {
            controller: self.controller,
            what: path.to_string(),
            detail: format!(
                "not JSON ({e}): {:?}",
                text.chars().take(BODY_QUOTE).collect::<String>()
            ),
        })
    }

    pub(crate) fn bad(&self, what: &str, detail: impl Into<String>) -> SdnError {
        SdnError::BadReply {
            controller: self.controller,
            what: what.to_string(),
            detail: detail.into(),
        }
    }
}
