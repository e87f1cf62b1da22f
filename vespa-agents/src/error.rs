//! Typed errors of every actuator. Each variant keeps the underlying error as its `#[source]`,
//! and says whether retrying can help ([`Transient`]); the verb layer turns the whole chain
//! into one line of text for the caller ([`chain`]).

use std::error::Error as StdError;

/// Whether retrying the failed operation can help (see [`crate::retry`]).
pub trait Transient {
    fn is_transient(&self) -> bool;
}

/// Errors of the libvirt agent.
#[cfg(feature = "libvirt")]
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// No domain with that name (or UUID) is known to the hypervisor.
    #[error("unknown VM {vm:?} on {uri}")]
    UnknownVm { vm: String, uri: String },
    /// The domain exists but is outside the agent's `domains`: it is never acted on.
    #[error("VM {vm:?} on {uri} is not among this agent's domains (params.domains: {patterns})")]
    NotManaged {
        vm: String,
        uri: String,
        patterns: String,
    },
    /// The daemon could not be reached, or the connection to it broke.
    #[error("libvirt daemon at {uri} is unreachable")]
    DaemonDown {
        uri: String,
        #[source]
        source: virt::error::Error,
    },
    /// The hypervisor driver does not implement the operation (e.g. link state on `test:///`).
    #[error("{op} is not supported by the libvirt driver behind {uri}")]
    Unsupported {
        op: &'static str,
        uri: String,
        #[source]
        source: virt::error::Error,
    },
    /// The domain has no network interface matching the request.
    #[error("VM {vm:?} has no network interface {which}")]
    NoInterface { vm: String, which: String },
    /// The domain is not in a state that allows the operation (e.g. not running).
    #[error("{op} on VM {vm:?}: {source}")]
    InvalidState {
        op: &'static str,
        vm: String,
        #[source]
        source: virt::error::Error,
    },
    /// A malformed argument (MAC address, key code, URI...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operation failed for another reason reported by libvirt.
    #[error("{op} on VM {vm:?} failed")]
    Failed {
        op: &'static str,
        vm: String,
        #[source]
        source: virt::error::Error,
    },
    /// libvirt accepted a change but reading the domain back shows it did not take effect.
    #[error("{op} on VM {vm:?} was accepted but not applied: {detail}")]
    NotApplied {
        op: &'static str,
        vm: String,
        detail: String,
    },
    /// The domain XML could not be understood.
    #[error("cannot parse the XML description of VM {vm:?}: {detail}")]
    Xml { vm: String, detail: String },
    /// The blocking worker running the libvirt call died (a bug, reported instead of a panic).
    #[error("libvirt worker failed: {0}")]
    Worker(String),
}

#[cfg(feature = "libvirt")]
impl Transient for LibvirtError {
    fn is_transient(&self) -> bool {
        matches!(
            self,
            LibvirtError::DaemonDown { .. } | LibvirtError::Worker(_)
        )
    }
}

/// Errors of the SDN agents (os-ken, Floodlight, POX).
#[cfg(feature = "sdn")]
#[derive(Debug, thiserror::Error)]
pub enum SdnError {
    /// The target is neither a MAC address nor an IP address.
    #[error("invalid block target {0:?}: expected a MAC address (aa:bb:cc:dd:ee:ff) or an IPv4/IPv6 address")]
    InvalidTarget(String),
    /// The controller cannot express this block (e.g. IPv6 with Floodlight v0.90 names).
    #[error("{controller} cannot block {target}: {why}")]
    UnsupportedTarget {
        controller: &'static str,
        target: String,
        why: &'static str,
    },
    /// No active block matches the release request.
    #[error("no active block matches {0:?}")]
    NoSuchBlock(String),
    /// The controller could not be reached (connection refused, reset, timeout).
    #[error("{controller} unreachable at {url}")]
    Unreachable {
        controller: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The controller answered with an HTTP error status.
    #[error("{controller} answered HTTP {status} to {method} {url}: {body}")]
    Http {
        controller: &'static str,
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    /// The controller answered something that is not the documented reply.
    #[error("{controller} sent an unexpected reply to {what}: {detail}")]
    BadReply {
        controller: &'static str,
        what: String,
        detail: String,
    },
    /// The controller refused the request in its reply body (Floodlight answers 200 with an
    /// error status text).
    #[error("{controller} rejected {what}: {detail}")]
    Rejected {
        controller: &'static str,
        what: String,
        detail: String,
    },
    /// No switch is connected to the controller, so nothing can be blocked.
    #[error("{controller} has no switch connected")]
    NoSwitch { controller: &'static str },
    /// The POX messenger connection failed.
    #[error("POX messenger at {addr}: {what}")]
    Messenger {
        addr: String,
        what: String,
        #[source]
        source: Option<std::io::Error>,
    },
}

#[cfg(feature = "sdn")]
impl Transient for SdnError {
    fn is_transient(&self) -> bool {
        match self {
            SdnError::Unreachable { .. } => true,
            SdnError::Http { status, .. } => *status >= 500 || *status == 429,
            SdnError::Messenger { source, .. } => source.is_some(),
            _ => false,
        }
    }
}

/// Errors of the antivirus agent.
#[cfg(feature = "av")]
#[derive(Debug, thiserror::Error)]
pub enum AvError {
    /// clamd could not be reached.
    #[error("clamd at {addr} is unreachable")]
    Unreachable {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// clamd did not answer in time.
    #[error("clamd at {addr} did not answer {what} within {secs} s")]
    Timeout {
        addr: String,
        what: String,
        secs: u64,
    },
    /// The stream was larger than clamd's `StreamMaxLength`.
    #[error(
        "{what} is larger than clamd's StreamMaxLength ({sent} bytes sent before clamd refused it)"
    )]
    SizeLimit { what: String, sent: u64 },
    /// clamd reported an error for this request.
    #[error("clamd failed to scan {what}: {reply}")]
    Clamd { what: String, reply: String },
    /// clamd's reply does not follow its protocol.
    #[error("unexpected reply from clamd to {what}: {reply:?}")]
    BadReply { what: String, reply: String },
    /// The path is not a regular file reached without a symbolic link (a FIFO, a device, a
    /// socket, a link, a directory): it is not opened for reading, let alone sent to clamd.
    #[error("{path} is {kind}: not scanned")]
    NotRegular { path: String, kind: &'static str },
    /// The file is larger than the agent scans (`max_scan_bytes`); nothing was sent.
    #[error("{path} is larger than the scan limit ({size} bytes, limit {limit}): not scanned")]
    TooLarge { path: String, size: u64, limit: u64 },
    /// The file to scan could not be read.
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The operation needs a route to the VM that is not available.
    #[error("{0}")]
    NoRoute(String),
}

#[cfg(feature = "av")]
impl Transient for AvError {
    fn is_transient(&self) -> bool {
        matches!(self, AvError::Unreachable { .. } | AvError::Timeout { .. })
    }
}

/// An error and all its sources on one line: `outer: inner: innermost`.
pub fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        // Variants that print their source inline would otherwise repeat it.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(all(test, any(feature = "sdn", feature = "av")))]
mod tests {
    use super::*;

    #[cfg(feature = "av")]
    #[test]
    fn chain_prints_every_source_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = AvError::Unreachable {
            addr: "/run/clamd.sock".into(),
            source: io,
        };
        assert_eq!(
            chain(&e),
            "clamd at /run/clamd.sock is unreachable: refused"
        );
        assert!(e.is_transient());
        let e = AvError::SizeLimit {
            what: "big.bin".into(),
            sent: 10,
        };
        assert!(!e.is_transient());
    }

    #[cfg(feature = "sdn")]
    #[test]
    fn http_5xx_is_transient_4xx_is_not() {
        let e = |status| SdnError::Http {
            controller: "os-ken",
            method: "GET",
            url: "u".into(),
            status,
            body: String::new(),
        };
        assert!(e(500).is_transient());
        assert!(e(503).is_transient());
        assert!(!e(404).is_transient());
        assert!(!SdnError::InvalidTarget("x".into()).is_transient());
    }
}
