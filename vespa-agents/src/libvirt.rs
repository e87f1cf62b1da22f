//! The libvirt agent (2014 `Agent_Libvirt`), on the `virt` crate.
//!
//! Verbs: `contains_vm`, `cut_link` / `connect_link` (the interface's link state through
//! `virDomainUpdateDeviceFlags`, as `virsh domif-setlink` does — not `brctl`), `migrate`
//! (live, to a quarantine URI), `restart` (reboot), `restart_hard` (destroy + create),
//! `send_key`, plus `suspend`, `resume`, `list_vms`, `vm_state`, `link_state`, `iface_stats`
//! and `tap_map`.
//!
//! libvirt calls block, so each runs on tokio's blocking pool over one shared connection
//! (opened lazily, reopened after the daemon went away). Errors are typed
//! ([`LibvirtError`]): unknown VM, daemon down (retried with backoff, reconnecting), operation
//! unsupported by the driver (e.g. link state on `test:///default`), invalid state.

mod domains;
mod events;
pub mod xml;

use std::sync::{Arc, Mutex};

use serde::Serialize;
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;
use virt::sys;

pub use domains::Domains;
pub use events::{ensure_event_loop, TapMap, VmEvent, VmEventKind, VmIface};

use crate::alerts::{json, AlertSink};
use crate::error::{chain, LibvirtError};
use crate::retry::{retry, RetryPolicy, RetryStats};
use vespa_node::{Agent, VerbResult};
use vespa_proto::verbs::{Codeset, Keys, LibvirtVerb};

#[derive(Debug, Clone)]
pub struct LibvirtConfig {
    /// Connection URI (default `qemu:///system`; `test:///default` for the in-process driver).
    pub uri: String,
    pub retry: RetryPolicy,
    /// Keep the tap map current from domain events (a watcher thread with its own
    /// connection). Without it the map is refreshed by [`LibvirtAgent::refresh_taps`].
    pub watch_events: bool,
    /// User for `migrate <vm> <host>` when no user is given (2014: `quarantine_user`).
    pub quarantine_user: String,
    /// Where `migrate` may send a VM: destination name -> libvirt URI. A caller names a
    /// destination; it never supplies a URI (a URI would let it stream a VM's memory to any
    /// host, or run a command through libvirt's `ext` transport). Empty: no migration.
    pub destinations: std::collections::BTreeMap<String, String>,
    /// The domains this agent manages (all by default); see [`Domains`].
    pub domains: Domains,
    /// Where a destination takes the VM's memory: destination name -> migration URI
    /// (`tcp://<address>[:<port>]`). Without one the destination picks it (its host name,
    /// a port of its own, listening on every address); with one it listens on that address
    /// only.
    pub migrate_uris: std::collections::BTreeMap<String, MigrateUri>,
}

/// A destination's migration URI: where the source's QEMU sends the VM's memory, and the
/// address the destination's QEMU listens on for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateUri {
    /// `tcp://<address>[:<port>]` as written.
    pub uri: String,
    /// The address alone (an IPv6 one without its brackets).
    pub listen: String,
}

impl MigrateUri {
    /// Parses `tcp://<address>[:<port>]`: an IP address (IPv6 in brackets) or a host name,
    /// and an optional port (without one the destination picks one from its range).
    pub fn parse(s: &str) -> Result<MigrateUri, String> {
        let bad =
            |why: &str| format!("{s:?} is not a migration URI tcp://<address>[:<port>]: {why}");
        let rest = s
            .strip_prefix("tcp://")
            .ok_or_else(|| bad("only tcp:// is taken"))?;
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("no closing ]"))?;
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address in brackets"))?;
            (h, after.strip_prefix(':'))
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.parse::<std::net::IpAddr>().is_err() {
            check_host(host).map_err(|_| bad("bad address"))?;
        }
        if let Some(p) = port {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("bad port"))?;
        }
        Ok(MigrateUri {
            uri: s.to_string(),
            listen: host.to_string(),
        })
    }
}

impl Default for LibvirtConfig {
    fn default() -> Self {
        LibvirtConfig {
            uri: "qemu:///system".into(),
            retry: RetryPolicy::default(),
            watch_events: true,
            quarantine_user: "root".into(),
            destinations: std::collections::BTreeMap::new(),
            domains: Domains::all(),
            migrate_uris: std::collections::BTreeMap::new(),
        }
    }
}

impl LibvirtConfig {
    /// Adds the destinations of a `migrate_to` parameter: comma-separated entries, each
    /// `name=URI` (any libvirt URI, as the operator writes it) or a bare host name, which
    /// becomes `qemu+ssh://<quarantine_user>@<host>/system`.
    pub fn add_destinations(&mut self, list: &str) -> Result<(), String> {
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, uri) = match entry.split_once('=') {
                Some((n, u)) => (n.trim().to_string(), u.trim().to_string()),
                None => {
                    check_host(entry)?;
                    let user = &self.quarantine_user;
                    (
                        entry.to_string(),
                        format!("qemu+ssh://{user}@{entry}/system"),
                    )
                }
            };
            check_host(&name)?;
            self.destinations.insert(name, uri);
        }
        Ok(())
    }

    /// Adds the migration URIs of a `migrate_uri` parameter: comma-separated entries, each
    /// `name=tcp://<address>[:<port>]` for a destination already in `migrate_to`.
    pub fn add_migrate_uris(&mut self, list: &str) -> Result<(), String> {
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((name, uri)) = entry.split_once('=') else {
                return Err(format!("{entry:?} is not name=tcp://<address>[:<port>]"));
            };
            let name = name.trim();
            if !self.destinations.contains_key(name) {
                return Err(format!(
                    "{name:?} is not a migration destination of this agent (migrate_to)"
                ));
            }
            self.migrate_uris
                .insert(name.to_string(), MigrateUri::parse(uri.trim())?);
        }
        Ok(())
    }

    /// The URI `migrate` uses for the caller's destination `name`, with its migration URI.
    fn destination(&self, name: &str) -> Result<(&str, Option<&MigrateUri>), String> {
        if let Some(uri) = self.destinations.get(name) {
            return Ok((uri, self.migrate_uris.get(name)));
        }
        let known: Vec<&str> = self.destinations.keys().map(String::as_str).collect();
        Err(if name.contains(':') || name.contains('/') {
            format!("migrate takes a destination name, not a URI ({known:?} are configured in migrate_to)")
        } else if known.is_empty() {
            "this agent has no migration destination (params: migrate_to)".to_string()
        } else {
            format!("{name:?} is not a migration destination of this agent ({known:?} are)")
        })
    }
}

/// A host or destination name: letters, digits, `.`, `-` and `_`.
fn check_host(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid migration destination name"
        ))
    }
}

impl LibvirtConfig {
    pub fn new(uri: &str) -> LibvirtConfig {
        LibvirtConfig {
            uri: uri.to_string(),
            ..LibvirtConfig::default()
        }
    }
}

/// A VM as `list_vms` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmInfo {
    pub name: String,
    pub uuid: String,
    pub state: String,
    pub interfaces: Vec<xml::Iface>,
}

/// One interface's link state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkState {
    pub mac: String,
    pub tap: Option<String>,
    pub up: bool,
}

/// Counters of one VM interface (from the hypervisor's view of the host device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IfaceStats {
    pub vm: String,
    pub mac: String,
    pub tap: String,
    pub rx_bytes: i64,
    pub rx_packets: i64,
    pub rx_errs: i64,
    pub rx_drop: i64,
    pub tx_bytes: i64,
    pub tx_packets: i64,
    pub tx_errs: i64,
    pub tx_drop: i64,
}

/// Key codes for `send_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPress {
    pub codeset: u32,
    pub holdtime_ms: u32,
    pub keycodes: Vec<u32>,
}

impl Default for KeyPress {
    /// What 2014 sent: win32 codes 0x12 0x42 (Alt+B), held 10 ms.
    fn default() -> Self {
        KeyPress {
            codeset: sys::VIR_KEYCODE_SET_WIN32,
            holdtime_ms: 10,
            keycodes: vec![0x12, 0x42],
        }
    }
}

impl From<Keys> for KeyPress {
    /// The keys of a `send_key` call: none at all means the 2014 default.
    fn from(keys: Keys) -> KeyPress {
        if keys.keycodes.is_empty() {
            return KeyPress::default();
        }
        let codeset = match keys.codeset.unwrap_or(Codeset::Win32) {
            Codeset::Linux => sys::VIR_KEYCODE_SET_LINUX,
            Codeset::Xt => sys::VIR_KEYCODE_SET_XT,
            Codeset::Atset1 => sys::VIR_KEYCODE_SET_ATSET1,
            Codeset::Atset2 => sys::VIR_KEYCODE_SET_ATSET2,
            Codeset::Atset3 => sys::VIR_KEYCODE_SET_ATSET3,
            Codeset::Osx => sys::VIR_KEYCODE_SET_OSX,
            Codeset::XtKbd => sys::VIR_KEYCODE_SET_XT_KBD,
            Codeset::Usb => sys::VIR_KEYCODE_SET_USB,
            Codeset::Win32 => sys::VIR_KEYCODE_SET_WIN32,
            Codeset::Qnum => sys::VIR_KEYCODE_SET_QNUM,
        };
        KeyPress {
            codeset,
            holdtime_ms: 10,
            keycodes: keys.keycodes,
        }
    }
}

struct Inner {
    cfg: LibvirtConfig,
    conn: Mutex<Option<Connect>>,
    stats: RetryStats,
    taps: TapMap,
    events: tokio::sync::broadcast::Sender<VmEvent>,
}

/// Maps a libvirt error to the agent's error for operation `op` on `vm`.
fn classify(e: virt::error::Error, op: &'static str, vm: &str, uri: &str) -> LibvirtError {
    let code = e.code().to_raw();
    let from = e.domain().to_raw();
    match code {
        sys::VIR_ERR_NO_DOMAIN => LibvirtError::UnknownVm {
            vm: vm.to_string(),
            uri: uri.to_string(),
        },
        sys::VIR_ERR_NO_SUPPORT
        | sys::VIR_ERR_OPERATION_UNSUPPORTED
        | sys::VIR_ERR_ARGUMENT_UNSUPPORTED => LibvirtError::Unsupported {
            op,
            uri: uri.to_string(),
            source: e,
        },
        sys::VIR_ERR_NO_CONNECT | sys::VIR_ERR_INVALID_CONN | sys::VIR_ERR_RPC => {
            LibvirtError::DaemonDown {
                uri: uri.to_string(),
                source: e,
            }
        }
        sys::VIR_ERR_SYSTEM_ERROR if from == sys::VIR_FROM_RPC || from == sys::VIR_FROM_REMOTE => {
            LibvirtError::DaemonDown {
                uri: uri.to_string(),
                source: e,
            }
        }
        sys::VIR_ERR_OPERATION_INVALID => LibvirtError::InvalidState {
            op,
            vm: vm.to_string(),
            source: e,
        },
        _ => LibvirtError::Failed {
            op,
            vm: vm.to_string(),
            source: e,
        },
    }
}

fn state_name(s: virt::domain::DomainStateEnum) -> String {
    match s {
        Enum::Known(DomainState::NoState) => "nostate",
        Enum::Known(DomainState::Running) => "running",
        Enum::Known(DomainState::Blocked) => "blocked",
        Enum::Known(DomainState::Paused) => "paused",
        Enum::Known(DomainState::Shutdown) => "shutdown",
        Enum::Known(DomainState::Shutoff) => "shutoff",
        Enum::Known(DomainState::Crashed) => "crashed",
        Enum::Known(DomainState::PMSuspended) => "pmsuspended",
        Enum::Unknown(n) => return format!("unknown({n})"),
    }
    .to_string()
}

/// The context a blocking libvirt operation runs in.
pub struct Ctx<'a> {
    pub conn: &'a Connect,
    uri: &'a str,
    op: &'static str,
    vm: &'a str,
    domains: &'a Domains,
}

impl Ctx<'_> {
    /// Maps a libvirt error for this operation.
    pub fn err(&self, e: virt::error::Error) -> LibvirtError {
        classify(e, self.op, self.vm, self.uri)
    }

    /// The domain named (or with the UUID) `self.vm`, if this agent manages it.
    pub fn domain(&self) -> Result<Domain, LibvirtError> {
        let dom = match self.conn.lookup_domain_by_name(self.vm) {
            Ok(d) => d,
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN && self.vm.len() == 36 => self
                .conn
                .lookup_domain_by_uuid_string(self.vm)
                .map_err(|e| self.err(e))?,
            Err(e) => return Err(self.err(e)),
        };
        if self.domains.is_scoped() {
            let name = dom.name().map_err(|e| self.err(e))?;
            if !self.domains.contains(&name) {
                return Err(LibvirtError::NotManaged {
                    vm: self.vm.to_string(),
                    uri: self.uri.to_string(),
                    patterns: self.domains.to_string(),
                });
            }
        }
        Ok(dom)
    }

    fn interfaces(&self, dom: &Domain) -> Result<(String, Vec<xml::Iface>), LibvirtError> {
        let desc = dom.xml_desc(0).map_err(|e| self.err(e))?;
        let ifs = xml::interfaces(&desc).map_err(|detail| LibvirtError::Xml {
            vm: self.vm.to_string(),
            detail,
        })?;
        Ok((desc, ifs))
    }
}

impl Inner {
    /// The shared connection, opened if needed (blocking).
    fn connection(&self) -> Result<Connect, LibvirtError> {
        let mut g = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.as_ref() {
            if c.is_alive().unwrap_or(false) {
                return Ok(c.clone());
            }
            *g = None;
        }
        let c = Connect::open(Some(&self.cfg.uri)).map_err(|source| LibvirtError::DaemonDown {
            uri: self.cfg.uri.clone(),
            source,
        })?;
        *g = Some(c.clone());
        Ok(c)
    }

    fn forget_connection(&self) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The libvirt agent. Dropping it stops its event watcher.
pub struct LibvirtAgent {
    inner: Arc<Inner>,
    alerts: AlertSink,
    // Declared last: stopped after the rest is dropped.
    _watcher: Option<events::Watcher>,
}

impl LibvirtAgent {
    /// Creates the agent. No connection is opened yet except the event watcher's (which
    /// retries in the background if the daemon is down).
    pub fn new(cfg: LibvirtConfig, alerts: AlertSink) -> Result<LibvirtAgent, LibvirtError> {
        // libvirt prints every error on stderr by default; they are returned and logged here.
        virt::error::clear_error_callback();
        // Before any connection is opened (see events.rs).
        events::ensure_event_loop().map_err(LibvirtError::Worker)?;
        let (events_tx, _) = tokio::sync::broadcast::channel(256);
        let taps = TapMap::default();
        let watcher = if cfg.watch_events {
            Some(
                events::Watcher::start(
                    cfg.uri.clone(),
                    cfg.domains.clone(),
                    taps.clone(),
                    events_tx.clone(),
                )
                .map_err(LibvirtError::Worker)?,
            )
        } else {
            None
        };
        let inner = Arc::new(Inner {
            cfg,
            conn: Mutex::new(None),
            stats: RetryStats::default(),
            taps,
            events: events_tx,
        });
        Ok(LibvirtAgent {
            inner,
            alerts,
            _watcher: watcher,
        })
    }

    pub fn uri(&self) -> &str {
        &self.inner.cfg.uri
    }

    /// The tap device -> VM map (current while events are watched).
    pub fn taps(&self) -> TapMap {
        self.inner.taps.clone()
    }

    /// Domain events, published after the tap map has been updated for each.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<VmEvent> {
        self.inner.events.subscribe()
    }

    /// Waits until the event watcher has its callbacks registered with libvirt, so a domain
    /// started from then on is published as an event (one started earlier is only in the tap
    /// map); returns at once when events are not watched. The watcher connects in the
    /// background, reconnecting after a daemon restart: this waits for that too.
    pub async fn events_watched(&self) {
        if let Some(w) = &self._watcher {
            w.watching().await;
        }
    }

    pub fn retry_stats(&self) -> &RetryStats {
        &self.inner.stats
    }

    /// Runs `f` on the blocking pool with the shared connection; transient failures (daemon
    /// down) are retried after reconnecting. Errors are logged, alerted and returned.
    pub async fn run<T, F>(&self, op: &'static str, vm: &str, f: F) -> Result<T, LibvirtError>
    where
        T: Send + 'static,
        F: Fn(&Ctx<'_>) -> Result<T, LibvirtError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let what = format!("libvirt {op} {vm}");
        let res = retry(&self.inner.cfg.retry, &self.inner.stats, &what, |_| {
            let inner = self.inner.clone();
            let f = f.clone();
            let vm = vm.to_string();
            async move {
                let joined = tokio::task::spawn_blocking(move || {
                    let conn = inner.connection()?;
                    let ctx = Ctx {
                        conn: &conn,
                        uri: &inner.cfg.uri,
                        op,
                        vm: &vm,
                        domains: &inner.cfg.domains,
                    };
                    let r = f(&ctx);
                    if matches!(r, Err(LibvirtError::DaemonDown { .. })) {
                        inner.forget_connection();
                    }
                    r
                })
                .await;
                joined.unwrap_or_else(|e| Err(LibvirtError::Worker(e.to_string())))
            }
        })
        .await;
        if let Err(e) = &res {
            if !matches!(
                e,
                LibvirtError::UnknownVm { .. }
                    | LibvirtError::NotManaged { .. }
                    | LibvirtError::InvalidArgument(_)
                    | LibvirtError::NoInterface { .. }
            ) {
                self.alerts.failed("libvirt", &format!("{op} {vm}"), e);
            }
        }
        res
    }

    /// Whether the hypervisor knows a VM of that name (or UUID).
    pub async fn contains_vm(&self, vm: &str) -> Result<bool, LibvirtError> {
        match self.run("contains_vm", vm, |c| c.domain().map(drop)).await {
            Ok(()) => Ok(true),
            Err(LibvirtError::UnknownVm { .. } | LibvirtError::NotManaged { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn list_vms(&self) -> Result<Vec<VmInfo>, LibvirtError> {
        self.run("list_vms", "*", |c| {
            let doms = c.conn.list_all_domains(0).map_err(|e| c.err(e))?;
            let mut out = Vec::new();
            for d in doms {
                let name = d.name().map_err(|e| c.err(e))?;
                if !c.domains.contains(&name) {
                    continue;
                }
                let uuid = d.uuid_string().map_err(|e| c.err(e))?;
                let state = d
                    .state()
                    .map(|(s, _)| state_name(s))
                    .map_err(|e| c.err(e))?;
                let desc = d.xml_desc(0).map_err(|e| c.err(e))?;
                let interfaces = xml::interfaces(&desc).map_err(|detail| LibvirtError::Xml {
                    vm: name.clone(),
                    detail,
                })?;
                out.push(VmInfo {
                    name,
                    uuid,
                    state,
                    interfaces,
                });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    /// `running`, `paused`, `shutoff`, ...
    pub async fn vm_state(&self, vm: &str) -> Result<String, LibvirtError> {
        self.run("vm_state", vm, |c| {
            c.domain()?
                .state()
                .map(|(s, _)| state_name(s))
                .map_err(|e| c.err(e))
        })
        .await
    }

    /// The link state of each interface, read back from libvirt.
    pub async fn link_state(&self, vm: &str) -> Result<Vec<LinkState>, LibvirtError> {
        self.run("link_state", vm, |c| {
            let (_, ifs) = c.interfaces(&c.domain()?)?;
            Ok(ifs
                .into_iter()
                .map(|i| LinkState {
                    mac: i.mac,
                    tap: i.tap,
                    up: i.link_up,
                })
                .collect())
        })
        .await
    }

    /// Sets the link state of one interface (by MAC) or of all of them, then reads the state
    /// back from libvirt and fails unless every one changed.
    pub async fn set_link(
        &self,
        vm: &str,
        mac: Option<&str>,
        up: bool,
    ) -> Result<Vec<LinkState>, LibvirtError> {
        let mac = match mac {
            None => None,
            Some(m) => Some(xml::normalize_mac(m).ok_or_else(|| {
                LibvirtError::InvalidArgument(format!("malformed MAC address {m:?}"))
            })?),
        };
        let op = if up { "connect_link" } else { "cut_link" };
        let vm_name = vm.to_string();
        self.run(op, vm, move |c| {
            let dom = c.domain()?;
            let (desc, ifs) = c.interfaces(&dom)?;
            let chosen: Vec<&xml::Iface> = ifs
                .iter()
                .filter(|i| mac.as_ref().is_none_or(|m| &i.mac == m))
                .collect();
            if chosen.is_empty() {
                return Err(LibvirtError::NoInterface {
                    vm: vm_name.clone(),
                    which: mac.clone().unwrap_or_else(|| "at all".into()),
                });
            }
            for i in &chosen {
                let dev = xml::with_link_state(&desc, i, up);
                dom.update_device_flags(&dev, sys::VIR_DOMAIN_AFFECT_LIVE)
                    .map_err(|e| c.err(e))?;
            }
            let (_, after) = c.interfaces(&dom)?;
            let states: Vec<LinkState> = after
                .into_iter()
                .filter(|i| chosen.iter().any(|c| c.mac == i.mac))
                .map(|i| LinkState {
                    mac: i.mac,
                    tap: i.tap,
                    up: i.link_up,
                })
                .collect();
            if let Some(bad) = states.iter().find(|s| s.up != up) {
                return Err(LibvirtError::NotApplied {
                    op: if up { "connect_link" } else { "cut_link" },
                    vm: vm_name.clone(),
                    detail: format!(
                        "interface {} is still {}",
                        bad.mac,
                        if up { "down" } else { "up" }
                    ),
                });
            }
            Ok(states)
        })
        .await
    }

    pub async fn suspend(&self, vm: &str) -> Result<(), LibvirtError> {
        self.run("suspend", vm, |c| {
            c.domain()?.suspend().map_err(|e| c.err(e))
        })
        .await
    }

    pub async fn resume(&self, vm: &str) -> Result<(), LibvirtError> {
        self.run("resume", vm, |c| c.domain()?.resume().map_err(|e| c.err(e)))
            .await
    }

    /// Reboots a running VM (2014's `restart` on a stopped one started it: so does this).
    pub async fn restart(&self, vm: &str) -> Result<(), LibvirtError> {
        self.run("restart", vm, |c| {
            let d = c.domain()?;
            if d.is_active().map_err(|e| c.err(e))? {
                d.reboot(sys::VIR_DOMAIN_REBOOT_DEFAULT)
                    .map_err(|e| c.err(e))
            } else {
                d.create().map(drop).map_err(|e| c.err(e))
            }
        })
        .await
    }

    /// Destroy (power off, if running) then create (start). Needs a persistent domain.
    pub async fn restart_hard(&self, vm: &str) -> Result<(), LibvirtError> {
        self.run("restart_hard", vm, |c| {
            let d = c.domain()?;
            if d.is_active().map_err(|e| c.err(e))? {
                match d.destroy() {
                    Ok(()) => {}
                    // Stopped meanwhile (or by a previous attempt): fine.
                    Err(e) if e.code().to_raw() == sys::VIR_ERR_OPERATION_INVALID => {}
                    Err(e) => return Err(c.err(e)),
                }
            }
            d.create().map(drop).map_err(|e| c.err(e))
        })
        .await
    }

    /// Live migration to `dest_uri` (2014: to the quarantine host), the memory sent to
    /// `data` when given (the destination then listens on its address only).
    pub async fn migrate(
        &self,
        vm: &str,
        dest_uri: &str,
        data: Option<&MigrateUri>,
    ) -> Result<(), LibvirtError> {
        let dest = dest_uri.to_string();
        let params = virt::domain::MigrateParameters {
            uri: data.map(|d| d.uri.clone()),
            listen_address: data.map(|d| d.listen.clone()),
            ..Default::default()
        };
        self.run("migrate", vm, move |c| {
            let d = c.domain()?;
            let dconn = Connect::open(Some(&dest)).map_err(|source| LibvirtError::DaemonDown {
                uri: dest.clone(),
                source,
            })?;
            d.migrate3(&dconn, params.clone(), sys::VIR_MIGRATE_LIVE)
                .map(drop)
                .map_err(|e| c.err(e))
        })
        .await
    }

    pub async fn send_key(&self, vm: &str, keys: KeyPress) -> Result<(), LibvirtError> {
        self.run("send_key", vm, move |c| {
            let mut codes = keys.keycodes.clone();
            c.domain()?
                .send_key(
                    keys.codeset,
                    keys.holdtime_ms,
                    codes.as_mut_ptr(),
                    codes.len() as i32,
                    0,
                )
                .map_err(|e| c.err(e))
        })
        .await
    }

    /// Counters of one VM's interfaces (all, or the one whose MAC or host device is `which`).
    pub async fn iface_stats(
        &self,
        vm: &str,
        which: Option<&str>,
    ) -> Result<Vec<IfaceStats>, LibvirtError> {
        let which = which.map(|w| xml::normalize_mac(w).unwrap_or_else(|| w.to_string()));
        let vm_name = vm.to_string();
        self.run("iface_stats", vm, move |c| {
            let dom = c.domain()?;
            let (_, ifs) = c.interfaces(&dom)?;
            let mut out = Vec::new();
            for i in ifs {
                let Some(tap) = i.tap else { continue };
                if which.as_ref().is_some_and(|w| *w != i.mac && *w != tap) {
                    continue;
                }
                let s = dom.interface_stats(&tap).map_err(|e| c.err(e))?;
                out.push(IfaceStats {
                    vm: vm_name.clone(),
                    mac: i.mac,
                    tap,
                    rx_bytes: s.rx_bytes,
                    rx_packets: s.rx_packets,
                    rx_errs: s.rx_errs,
                    rx_drop: s.rx_drop,
                    tx_bytes: s.tx_bytes,
                    tx_packets: s.tx_packets,
                    tx_errs: s.tx_errs,
                    tx_drop: s.tx_drop,
                });
            }
            if out.is_empty() {
                return Err(LibvirtError::NoInterface {
                    vm: vm_name.clone(),
                    which: which.clone().unwrap_or_else(|| "with a host device".into()),
                });
            }
            Ok(out)
        })
        .await
    }

    /// Rescans every running domain into the tap map now.
    pub async fn refresh_taps(&self) -> Result<(), LibvirtError> {
        let taps = self.inner.taps.clone();
        let all = self
            .run("tap_map", "*", |c| {
                events::scan_all(c.conn, c.domains).map_err(|e| c.err(e))
            })
            .await?;
        taps.replace_all(all);
        Ok(())
    }
}

impl Agent for LibvirtAgent {
    type Verb = LibvirtVerb;

    async fn call(&self, verb: LibvirtVerb) -> VerbResult {
        let e = |e: LibvirtError| chain(&e);
        let ok = |what: &str, vm: &str| json(&serde_json::json!({ "ok": what, "vm": vm }));
        match verb {
            LibvirtVerb::ContainsVm { vm } => json(&self.contains_vm(&vm).await.map_err(e)?),
            LibvirtVerb::CutLink { vm, mac } => {
                let mac = mac.map(|m| m.to_string());
                json(&self.set_link(&vm, mac.as_deref(), false).await.map_err(e)?)
            }
            LibvirtVerb::ConnectLink { vm, mac } => {
                let mac = mac.map(|m| m.to_string());
                json(&self.set_link(&vm, mac.as_deref(), true).await.map_err(e)?)
            }
            LibvirtVerb::LinkState { vm } => json(&self.link_state(&vm).await.map_err(e)?),
            LibvirtVerb::Migrate {
                vm,
                quarantine_host,
                user: _,
            } => {
                // The user travels with the 2014 verb; the destination's URI, configured
                // with the agent, says which user it connects as.
                let (dest, data) = self.inner.cfg.destination(&quarantine_host)?;
                let (dest, data) = (dest.to_string(), data.cloned());
                self.migrate(&vm, &dest, data.as_ref()).await.map_err(e)?;
                json(&serde_json::json!({ "ok": "migrated", "vm": vm, "to": dest }))
            }
            LibvirtVerb::Restart { vm } => {
                self.restart(&vm).await.map_err(e)?;
                ok("restarted", &vm)
            }
            LibvirtVerb::RestartHard { vm } => {
                self.restart_hard(&vm).await.map_err(e)?;
                ok("restarted (hard)", &vm)
            }
            LibvirtVerb::SendKey { vm, keys } => {
                self.send_key(&vm, keys.into()).await.map_err(e)?;
                ok("keys sent", &vm)
            }
            LibvirtVerb::Suspend { vm } => {
                self.suspend(&vm).await.map_err(e)?;
                ok("suspended", &vm)
            }
            LibvirtVerb::Resume { vm } => {
                self.resume(&vm).await.map_err(e)?;
                ok("resumed", &vm)
            }
            LibvirtVerb::VmState { vm } => self.vm_state(&vm).await.map_err(e),
            LibvirtVerb::ListVms {} => json(&self.list_vms().await.map_err(e)?),
            LibvirtVerb::IfaceStats { vm, iface } => {
                json(&self.iface_stats(&vm, iface.as_deref()).await.map_err(e)?)
            }
            LibvirtVerb::TapMap {} => {
                if self._watcher.is_none() {
                    self.refresh_taps().await.map_err(e)?;
                }
                json(&self.inner.taps.snapshot())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_uris_name_a_destination_and_an_address() {
        let mut cfg = LibvirtConfig::default();
        cfg.add_destinations(
            "q=qemu+unix:///system?socket=/run/q/libvirt-sock, q6=qemu+ssh://h/system",
        )
        .unwrap();
        cfg.add_migrate_uris("q=tcp://127.0.0.1, q6=tcp://[::1]:49200")
            .unwrap();
        assert_eq!(
            cfg.destination("q").unwrap(),
            (
                "qemu+unix:///system?socket=/run/q/libvirt-sock",
                Some(&MigrateUri {
                    uri: "tcp://127.0.0.1".into(),
                    listen: "127.0.0.1".into()
                })
            )
        );
        assert_eq!(cfg.migrate_uris["q6"].listen, "::1");
        for (bad, why) in [
            ("elsewhere=tcp://127.0.0.1", "not a migration destination"),
            ("q", "is not name="),
            ("q=unix:///tmp/s", "only tcp://"),
            ("q=tcp://127.0.0.1:0", "bad port"),
            ("q=tcp://127.0.0.1:x", "bad port"),
            ("q=tcp://[::1", "no closing"),
            ("q=tcp://a b", "bad address"),
            ("q=tcp://h/path", "bad address"),
        ] {
            let e = cfg.add_migrate_uris(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
