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

mod events;
pub mod xml;

use std::sync::{Arc, Mutex};

use serde::Serialize;
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;
use virt::sys;

pub use events::{ensure_event_loop, TapMap, VmEvent, VmEventKind, VmIface};

use crate::error::{chain, LibvirtError};
use crate::retry::{retry, RetryPolicy, RetryStats};
use crate::verbs::{arity, find, json, ActuatorVerbs, AlertSink, VerbFuture, VerbSpec};

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
}

impl Default for LibvirtConfig {
    fn default() -> Self {
        LibvirtConfig {
            uri: "qemu:///system".into(),
            retry: RetryPolicy::default(),
            watch_events: true,
            quarantine_user: "root".into(),
        }
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

impl KeyPress {
    /// `[codeset] <keycode>...` with codeset one of linux, xt, atset1/2/3, osx, xt_kbd, usb,
    /// win32, qnum (default win32); key codes in decimal or 0x-hex. No arguments: the default.
    pub fn parse(args: &[String]) -> Result<KeyPress, LibvirtError> {
        if args.is_empty() {
            return Ok(KeyPress::default());
        }
        let sets = [
            ("linux", sys::VIR_KEYCODE_SET_LINUX),
            ("xt", sys::VIR_KEYCODE_SET_XT),
            ("atset1", sys::VIR_KEYCODE_SET_ATSET1),
            ("atset2", sys::VIR_KEYCODE_SET_ATSET2),
            ("atset3", sys::VIR_KEYCODE_SET_ATSET3),
            ("osx", sys::VIR_KEYCODE_SET_OSX),
            ("xt_kbd", sys::VIR_KEYCODE_SET_XT_KBD),
            ("usb", sys::VIR_KEYCODE_SET_USB),
            ("win32", sys::VIR_KEYCODE_SET_WIN32),
            ("qnum", sys::VIR_KEYCODE_SET_QNUM),
        ];
        let (codeset, rest) = match sets.iter().find(|(n, _)| *n == args[0]) {
            Some((_, c)) => (*c, &args[1..]),
            None => (sys::VIR_KEYCODE_SET_WIN32, args),
        };
        let keycodes = rest
            .iter()
            .map(|k| {
                let k = k.trim();
                let r = match k.strip_prefix("0x") {
                    Some(h) => u32::from_str_radix(h, 16),
                    None => k.parse(),
                };
                r.map_err(|_| LibvirtError::InvalidArgument(format!("bad key code {k:?}")))
            })
            .collect::<Result<Vec<u32>, _>>()?;
        if keycodes.is_empty() || keycodes.len() > 16 {
            return Err(LibvirtError::InvalidArgument(
                "send_key takes 1 to 16 key codes".into(),
            ));
        }
        Ok(KeyPress {
            codeset,
            holdtime_ms: 10,
            keycodes,
        })
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
}

impl Ctx<'_> {
    /// Maps a libvirt error for this operation.
    pub fn err(&self, e: virt::error::Error) -> LibvirtError {
        classify(e, self.op, self.vm, self.uri)
    }

    /// The domain named (or with the UUID) `self.vm`.
    pub fn domain(&self) -> Result<Domain, LibvirtError> {
        match self.conn.lookup_domain_by_name(self.vm) {
            Ok(d) => Ok(d),
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN && self.vm.len() == 36 => self
                .conn
                .lookup_domain_by_uuid_string(self.vm)
                .map_err(|e| self.err(e)),
            Err(e) => Err(self.err(e)),
        }
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
                events::Watcher::start(cfg.uri.clone(), taps.clone(), events_tx.clone())
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
            Err(LibvirtError::UnknownVm { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn list_vms(&self) -> Result<Vec<VmInfo>, LibvirtError> {
        self.run("list_vms", "*", |c| {
            let doms = c.conn.list_all_domains(0).map_err(|e| c.err(e))?;
            let mut out = Vec::new();
            for d in doms {
                let name = d.name().map_err(|e| c.err(e))?;
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

    /// Live migration to `dest_uri` (2014: to the quarantine host).
    pub async fn migrate(&self, vm: &str, dest_uri: &str) -> Result<(), LibvirtError> {
        let dest = dest_uri.to_string();
        self.run("migrate", vm, move |c| {
            let d = c.domain()?;
            let dconn = Connect::open(Some(&dest)).map_err(|source| LibvirtError::DaemonDown {
                uri: dest.clone(),
                source,
            })?;
            d.migrate(&dconn, sys::VIR_MIGRATE_LIVE, None, None, 0)
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
                events::scan_all(c.conn).map_err(|e| c.err(e))
            })
            .await?;
        taps.replace_all(all);
        Ok(())
    }
}

/// The verbs of the libvirt agent.
pub const LIBVIRT_VERBS: &[VerbSpec] = &[
    VerbSpec { name: "contains_vm", usage: "<vm>", help: "whether the hypervisor has this VM (true/false)" },
    VerbSpec { name: "cut_link", usage: "<vm> [mac]", help: "set the VM's interface (or all of them) link down, confirmed from libvirt" },
    VerbSpec { name: "connect_link", usage: "<vm> [mac]", help: "set the VM's interface (or all of them) link up, confirmed from libvirt" },
    VerbSpec { name: "link_state", usage: "<vm>", help: "the link state of each interface of the VM (JSON)" },
    VerbSpec {
        name: "migrate",
        usage: "<vm> <quarantine_host|uri> [user]",
        help: "live-migrate the VM to the quarantine hypervisor (qemu+ssh://user@host/system unless a URI is given)",
    },
    VerbSpec { name: "restart", usage: "<vm>", help: "reboot the VM (start it if it is off)" },
    VerbSpec { name: "restart_hard", usage: "<vm>", help: "destroy then start the VM" },
    VerbSpec { name: "send_key", usage: "<vm> [codeset] [keycode...]", help: "send key codes (default: the 2014 win32 0x12 0x42)" },
    VerbSpec { name: "suspend", usage: "<vm>", help: "pause the VM's vCPUs" },
    VerbSpec { name: "resume", usage: "<vm>", help: "resume a paused VM" },
    VerbSpec { name: "vm_state", usage: "<vm>", help: "running, paused, shutoff, ..." },
    VerbSpec { name: "list_vms", usage: "", help: "every VM with its state and interfaces (JSON)" },
    VerbSpec { name: "iface_stats", usage: "<vm> [mac|tap]", help: "per-interface counters of the VM (JSON)" },
    VerbSpec { name: "tap_map", usage: "", help: "host tap device -> VM name, UUID, MAC (JSON)" },
];

impl ActuatorVerbs for LibvirtAgent {
    fn verbs(&self) -> Vec<VerbSpec> {
        LIBVIRT_VERBS.to_vec()
    }

    fn call<'a>(&'a self, verb: &'a str, args: Vec<String>) -> VerbFuture<'a> {
        Box::pin(async move {
            let spec = find(LIBVIRT_VERBS, verb)?;
            let e = |e: LibvirtError| chain(&e);
            let ok = |what: &str, vm: &str| json(&serde_json::json!({ "ok": what, "vm": vm }));
            match verb {
                "contains_vm" => {
                    arity(&spec, &args, 1, 1)?;
                    json(&self.contains_vm(&args[0]).await.map_err(e)?)
                }
                "cut_link" | "connect_link" => {
                    arity(&spec, &args, 1, 2)?;
                    json(
                        &self
                            .set_link(
                                &args[0],
                                args.get(1).map(String::as_str),
                                verb == "connect_link",
                            )
                            .await
                            .map_err(e)?,
                    )
                }
                "link_state" => {
                    arity(&spec, &args, 1, 1)?;
                    json(&self.link_state(&args[0]).await.map_err(e)?)
                }
                "migrate" => {
                    arity(&spec, &args, 2, 3)?;
                    let dest = if args[1].contains("://") {
                        args[1].clone()
                    } else {
                        let user = args.get(2).unwrap_or(&self.inner.cfg.quarantine_user);
                        format!("qemu+ssh://{user}@{}/system", args[1])
                    };
                    self.migrate(&args[0], &dest).await.map_err(e)?;
                    json(&serde_json::json!({ "ok": "migrated", "vm": args[0], "to": dest }))
                }
                "restart" => {
                    arity(&spec, &args, 1, 1)?;
                    self.restart(&args[0]).await.map_err(e)?;
                    ok("restarted", &args[0])
                }
                "restart_hard" => {
                    arity(&spec, &args, 1, 1)?;
                    self.restart_hard(&args[0]).await.map_err(e)?;
                    ok("restarted (hard)", &args[0])
                }
                "send_key" => {
                    arity(&spec, &args, 1, 18)?;
                    let keys = KeyPress::parse(&args[1..]).map_err(e)?;
                    self.send_key(&args[0], keys).await.map_err(e)?;
                    ok("keys sent", &args[0])
                }
                "suspend" => {
                    arity(&spec, &args, 1, 1)?;
                    self.suspend(&args[0]).await.map_err(e)?;
                    ok("suspended", &args[0])
                }
                "resume" => {
                    arity(&spec, &args, 1, 1)?;
                    self.resume(&args[0]).await.map_err(e)?;
                    ok("resumed", &args[0])
                }
                "vm_state" => {
                    arity(&spec, &args, 1, 1)?;
                    self.vm_state(&args[0]).await.map_err(e)
                }
                "list_vms" => {
                    arity(&spec, &args, 0, 0)?;
                    json(&self.list_vms().await.map_err(e)?)
                }
                "iface_stats" => {
                    arity(&spec, &args, 1, 2)?;
                    json(
                        &self
                            .iface_stats(&args[0], args.get(1).map(String::as_str))
                            .await
                            .map_err(e)?,
                    )
                }
                "tap_map" => {
                    arity(&spec, &args, 0, 0)?;
                    if self._watcher.is_none() {
                        self.refresh_taps().await.map_err(e)?;
                    }
                    json(&self.inner.taps.snapshot())
                }
                _ => Err(format!("verb {verb} not implemented")),
            }
        })
    }
}
