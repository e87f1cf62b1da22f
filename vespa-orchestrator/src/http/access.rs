//! Who may reach the API through a browser: the `Host` check and CORS.
//!
//! **Host.** A web page can make a browser send requests to the API under a name the
//! attacker controls: the page's name first resolves to the attacker's server, then to the
//! VO's address (DNS rebinding), and the browser, seeing one origin, lets the page read the
//! answers. What gives it away is the `Host` header, which carries the attacker's name. So a
//! request is served only when its `Host` names this server: the address it listens on, any
//! IP address when it listens on all of them (`0.0.0.0` or `[::]`), `localhost` when it
//! listens on loopback or on all addresses, or a name given with `--http-host`. Anything
//! else is answered 421 Misdirected Request. The port is not compared: rebinding is about
//! the name (a page can only ever send its own), and SSH tunnels and proxies change the
//! port. A request without `Host` (HTTP/1.0 tools) is served: browsers always send one.
//!
//! **CORS.** Without `--cors-origin`, no answer carries `Access-Control-Allow-Origin`, so a
//! page of another origin cannot read it (the 2014 endpoints answered `*`: any page an
//! operator opened could read the alerts and the topology). With it, a request whose
//! `Origin` is one of those given gets that origin back, with `Vary: Origin`. Preflight
//! requests (`OPTIONS`) are not answered, so a page of another origin can only make the
//! requests a browser sends without one: the reads, never a mutation with its token.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// A name the API answers to besides its listen address (`--http-host`): a DNS name or an
/// IP address, without a port. Compared without regard to case or a final dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostName(String);

impl FromStr for HostName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
        if let Ok(ip) = bare.unwrap_or(s).parse::<IpAddr>() {
            return Ok(HostName(ip.to_string()));
        }
        if s.contains(':') {
            return Err(format!(
                "{s:?}: give the name without a port (the port is not checked)"
            ));
        }
        let name = normalize_name(s);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err("not a host name (letters, digits, '-' and '.') nor an IP address".into());
        }
        Ok(HostName(name))
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An origin allowed to read the API from a browser (`--cors-origin`): `http://` or
/// `https://`, a host and an optional port, as a browser sends it in `Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsOrigin(String);

impl FromStr for CorsOrigin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let wrong = |why: &str| {
            Err(format!(
                "{why} (expected an origin like https://dashboard.example.org or http://10.0.0.5:8000)"
            ))
        };
        if s == "*" {
            return wrong("`*` would let any web page read the API; name the origins");
        }
        let lower = s.trim_end_matches('/').to_ascii_lowercase();
        let Some((scheme, rest)) = lower.split_once("://") else {
            return wrong("no scheme");
        };
        if scheme != "http" && scheme != "https" {
            return wrong("the scheme must be http or https");
        }
        if rest.is_empty()
            || rest
                .bytes()
                .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@') || !b.is_ascii_graphic())
        {
            return wrong("an origin is a scheme, a host and a port: no path, query or user");
        }
        if rest.parse::<axum::http::uri::Authority>().is_err() {
            return wrong("not a host with an optional port");
        }
        // Browsers leave the scheme's default port out of `Origin`.
        let default = if scheme == "http" { ":80" } else { ":443" };
        let rest = rest.strip_suffix(default).unwrap_or(rest);
        Ok(CorsOrigin(format!("{scheme}://{rest}")))
    }
}

impl fmt::Display for CorsOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn normalize_name(s: &str) -> String {
    s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase()
}

/// The Host check and the CORS origins of one listening server.
pub(crate) struct Access {
    listen: SocketAddr,
    hosts: Vec<HostName>,
    cors: Vec<CorsOrigin>,
}

impl Access {
    pub(crate) fn new(listen: SocketAddr, hosts: &[HostName], cors: &[CorsOrigin]) -> Access {
        Access {
            listen,
            hosts: hosts.to_vec(),
            cors: cors.to_vec(),
        }
    }

    /// Whether `authority` (a `Host` header's value, or a request target's authority) names
    /// this server (see the module comment).
    fn host_allowed(&self, authority: &str) -> bool {
        let Ok(a) = authority.parse::<axum::http::uri::Authority>() else {
            return false;
        };
        let host = a.host();
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let listen = self.listen.ip();
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return listen.is_unspecified()
                || ip == listen
                || (listen.is_loopback() && ip.is_loopback())
                || self.hosts.iter().any(|h| h.0 == ip.to_string());
        }
        let name = normalize_name(bare);
        (name == "localhost" && (listen.is_loopback() || listen.is_unspecified()))
            || self.hosts.iter().any(|h| h.0 == name)
    }

    /// The names a refused request is told about.
    fn names(&self) -> String {
        let listen = self.listen.ip();
        let mut names = vec![if listen.is_unspecified() {
            "any IP address of this machine".to_string()
        } else {
            listen.to_string()
        }];
        if listen.is_loopback() || listen.is_unspecified() {
            names.push("localhost".into());
        }
        names.extend(self.hosts.iter().map(ToString::to_string));
        names.join(", ")
    }

    /// The `Access-Control-Allow-Origin` for a request's `Origin`, if it is allowed.
    fn cors_for(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        let origin = origin.to_str().ok()?;
        self.cors
            .iter()
            .find(|c| c.0.eq_ignore_ascii_case(origin))
            .and_then(|c| HeaderValue::from_str(&c.0).ok())
    }
}

/// The middleware: refuses a request for another host (421), adds the CORS headers for an
/// allowed origin.
pub(crate) async fn guard(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    let hosts = [
        req.uri().authority().map(|a| a.as_str().to_string()),
        req.headers()
            .get(header::HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()),
    ];
    for host in hosts.into_iter().flatten() {
        if !access.host_allowed(&host) {
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this server does not answer to the host {host:?} (it answers to {}; more names with --http-host): a page that reached it under another name may be a DNS-rebinding attack",
                    access.names()
                ),
            )
            .into_response();
        }
    }
    let allowed = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| access.cors_for(o));
    let cors_configured = !access.cors.is_empty();
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    // Dropped whatever a handler set: only the configured origins are ever allowed.
    h.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
    if let Some(origin) = allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    if cors_configured {
        // The answer depends on Origin: caches must keep one per origin.
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(listen: &str, hosts: &[&str]) -> Access {
        let hosts: Vec<HostName> = hosts.iter().map(|h| h.parse().expect("name")).collect();
        Access::new(listen.parse().expect("addr"), &hosts, &[])
    }

    #[test]
    fn the_listen_address_localhost_on_loopback_and_given_names_pass() {
        let a = access("127.0.0.1:8080", &["vespa.example.org", "10.0.0.5"]);
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "127.0.0.1:9000",
            "localhost:8080",
            "LocalHost.:8080",
            "[::1]:8080",
            "vespa.example.org",
            "VESPA.example.org.:443",
            "10.0.0.5:8080",
        ] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "vespa.example.org.evil",
            "10.0.0.6:8080",
            "",
            "a b",
        ] {
            assert!(!a.host_allowed(refused), "{refused}");
        }
        let names = a.names();
        assert!(
            names.contains("127.0.0.1")
                && names.contains("localhost")
                && names.contains("vespa.example.org"),
            "{names}"
        );
    }

    #[test]
    fn off_loopback_only_that_address_and_on_all_addresses_any_ip() {
        let a = access("10.0.0.5:8080", &[]);
        assert!(a.host_allowed("10.0.0.5:8080"));
        assert!(!a.host_allowed("localhost:8080"), "not bound to loopback");
        assert!(!a.host_allowed("127.0.0.1:8080"));
        let any = access("0.0.0.0:8080", &[]);
        assert!(any.host_allowed("192.0.2.7:8080") && any.host_allowed("[2001:db8::1]:8080"));
        assert!(any.host_allowed("localhost"));
        assert!(
            !any.host_allowed("vo.example.org:8080"),
            "names must be given"
        );
        let v6 = access("[::]:8080", &["vo.example.org"]);
        assert!(v6.host_allowed("vo.example.org:8080") && v6.host_allowed("[::1]:8080"));
    }

    #[test]
    fn host_names_and_origins_are_checked_when_given() {
        assert_eq!(
            "Vo.Example.".parse::<HostName>().map(|h| h.to_string()),
            Ok("vo.example".into())
        );
        assert_eq!(
            "[::1]".parse::<HostName>().map(|h| h.to_string()),
            Ok("::1".into())
        );
        assert!("vo.example:8080"
            .parse::<HostName>()
            .unwrap_err()
            .contains("without a port"));
        assert!("vo/example".parse::<HostName>().is_err());
        assert!("".parse::<HostName>().is_err());

        let o = |s: &str| s.parse::<CorsOrigin>().map(|o| o.to_string());
        assert_eq!(
            o("https://Dash.Example.org/"),
            Ok("https://dash.example.org".into())
        );
        assert_eq!(
            o("https://dash.example.org:443"),
            Ok("https://dash.example.org".into())
        );
        assert_eq!(o("http://10.0.0.5:8000"), Ok("http://10.0.0.5:8000".into()));
        assert!(o("*").unwrap_err().contains("any web page"));
        assert!(o("dash.example.org").unwrap_err().contains("no scheme"));
        assert!(o("ftp://dash.example.org").is_err());
        assert!(o("https://dash.example.org/app")
            .unwrap_err()
            .contains("no path"));
        assert!(o("https://").is_err());
        assert!(o("null").is_err());
    }

    #[test]
    fn only_configured_origins_get_themselves_back() {
        let cors: Vec<CorsOrigin> = vec!["https://dash.example.org".parse().expect("origin")];
        let a = Access::new("127.0.0.1:8080".parse().expect("addr"), &[], &cors);
        let hv = HeaderValue::from_static;
        assert_eq!(
            a.cors_for(&hv("https://dash.example.org")),
            Some(hv("https://dash.example.org"))
        );
        assert_eq!(
            a.cors_for(&hv("http://dash.example.org")),
            None,
            "another scheme"
        );
        assert_eq!(a.cors_for(&hv("https://evil.example")), None);
        assert_eq!(a.cors_for(&hv("null")), None);
        let none = Access::new("127.0.0.1:8080".parse().expect("addr"), &[], &[]);
        assert_eq!(none.cors_for(&hv("https://dash.example.org")), None);
    }
}
