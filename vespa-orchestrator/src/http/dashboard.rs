//! The dashboard (the 2014 View, issue 5 §4): one page at `/` that polls the API every
//! second and shows the node tree, rx/tx rate charts per interface (VM taps marked), the top
//! remote addresses, the live alert log, the active blocks and isolations with a release
//! button (which needs the API token, pasted into the page and kept in `sessionStorage`), and
//! the kernel firewalls (each firewall agent's totals and busiest blocks from
//! `/api/v1/firewall`, polled on its own so that a slow agent holds up no other panel).
//!
//! The files are plain HTML, JavaScript and CSS embedded in the binary: no build step, no
//! external resource (the page must work on a hypervisor without internet). A strict
//! Content-Security-Policy keeps the page to its own origin.
//!
//! `/?selftest=release` makes the page click its own release button on a stub action, with
//! the token kept in the tab, and write the answer into `#selftest-result` (the browser test
//! reads it). The page never takes the token from its address (`?token=` is ignored): an
//! address is kept in the history and in proxy logs, and shown on screen.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::Shared;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// Only this origin; no inline script; no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `/`, `/dashboard/app.js`, `/dashboard/style.css`.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/",
            get(|| async { file("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { file("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { file("text/css; charset=utf-8", STYLE_CSS) }),
        )
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut res = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_references_only_its_own_files() {
        assert!(
            INDEX_HTML.contains("/dashboard/app.js") && INDEX_HTML.contains("/dashboard/style.css")
        );
        for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
            // The SVG namespace is a name, not a fetched address.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "no external resource (no internet on a hypervisor)"
            );
        }
        assert!(
            !INDEX_HTML.contains("<script>"),
            "no inline script (the CSP forbids it)"
        );
        assert!(
            !APP_JS.contains("get('token')") && !APP_JS.contains("location.hash"),
            "the token is never read from the address"
        );
    }
}
