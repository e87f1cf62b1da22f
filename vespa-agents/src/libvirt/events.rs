//! The host tap device -> VM map, kept current by libvirt domain events.
//!
//! libvirt delivers events through an event loop the client must run: the process-wide
//! default implementation is registered once (before any connection is opened, or that
//! connection never delivers events) and driven by one thread forever ([`ensure_event_loop`]).
//! Each agent then has a watcher thread with its own connection: it registers lifecycle and
//! device hot-plug callbacks plus a close callback, rescans every domain, and on each event
//! re-reads that one domain's description. When the daemon goes away the close callback
//! fires; the watcher reconnects with backoff and rescans, so the map heals after a libvirtd
//! restart.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock, RwLock};
use std::thread;
use std::time::Duration;

use serde::Serialize;
use virt::connect::Connect;
use virt::sys;

use super::{xml, Domains};

/// One VM network interface seen from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmIface {
    pub vm: String,
    pub uuid: String,
    pub mac: String,
    /// The host device (e.g. `vnet3`).
    pub tap: String,
    /// Interface type (`ethernet`, `bridge`, `network`...).
    pub kind: String,
    pub link_up: bool,
}

/// Host tap device -> VM interface, shared by the agent and whoever labels per-interface
/// counters (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct TapMap(Arc<RwLock<HashMap<String, VmIface>>>);

impl TapMap {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, VmIface>> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, VmIface>> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The VM interface behind host device `tap`.
    pub fn get(&self, tap: &str) -> Option<VmIface> {
        self.read().get(tap).cloned()
    }

    /// The whole map, sorted by device.
    pub fn snapshot(&self) -> BTreeMap<String, VmIface> {
        self.read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The host devices of one VM (by name or UUID).
    pub fn taps_of(&self, vm: &str) -> Vec<VmIface> {
        let mut v: Vec<VmIface> = self
            .read()
            .values()
            .filter(|i| i.vm == vm || i.uuid == vm)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.tap.cmp(&b.tap));
        v
    }

    pub(crate) fn set_domain(&self, uuid: &str, ifaces: Vec<VmIface>) {
        let mut m = self.write();
        m.retain(|_, i| i.uuid != uuid);
        m.extend(ifaces.into_iter().map(|i| (i.tap.clone(), i)));
    }

    pub(crate) fn replace_all(&self, ifaces: Vec<VmIface>) {
        let mut m = self.write();
        m.clear();
        m.extend(ifaces.into_iter().map(|i| (i.tap.clone(), i)));
    }
}

/// What happened to a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmEventKind {
    Defined,
    Undefined,
    Started,
    Suspended,
    Resumed,
    Stopped,
    Shutdown,
    PmSuspended,
    Crashed,
    DeviceAdded,
    DeviceRemoved,
    Other,
}

/// A domain event, published after the tap map has been updated for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmEvent {
    pub vm: String,
    pub uuid: String,
    pub kind: VmEventKind,
}

fn kind_of(event: c_int) -> VmEventKind {
    match event as u32 {
        sys::VIR_DOMAIN_EVENT_DEFINED => VmEventKind::Defined,
        sys::VIR_DOMAIN_EVENT_UNDEFINED => VmEventKind::Undefined,
        sys::VIR_DOMAIN_EVENT_STARTED => VmEventKind::Started,
        sys::VIR_DOMAIN_EVENT_SUSPENDED => VmEventKind::Suspended,
        sys::VIR_DOMAIN_EVENT_RESUMED => VmEventKind::Resumed,
        sys::VIR_DOMAIN_EVENT_STOPPED => VmEventKind::Stopped,
        sys::VIR_DOMAIN_EVENT_SHUTDOWN => VmEventKind::Shutdown,
        sys::VIR_DOMAIN_EVENT_PMSUSPENDED => VmEventKind::PmSuspended,
        sys::VIR_DOMAIN_EVENT_CRASHED => VmEventKind::Crashed,
        _ => VmEventKind::Other,
    }
}

/// What the C callbacks hand to the watcher thread.
enum Raw {
    Domain {
        vm: String,
        uuid: String,
        kind: VmEventKind,
    },
    Closed(c_int),
}

static EVENT_LOOP: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers libvirt's default event loop and starts the thread that runs it (once per
/// process). Must precede the opening of any connection that should deliver events.
pub fn ensure_event_loop() -> Result<(), String> {
    EVENT_LOOP
        .get_or_init(|| {
            // SAFETY: plain libvirt call without arguments; guarded to run once per process.
            if unsafe { sys::virEventRegisterDefaultImpl() } < 0 {
                return Err(format!(
                    "virEventRegisterDefaultImpl failed: {}",
                    virt::error::Error::last_error()
                ));
            }
            thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| loop {
                    // SAFETY: the default implementation was registered above; running it from
                    // this single thread is the documented usage.
                    if unsafe { sys::virEventRunDefaultImpl() } < 0 {
                        thread::sleep(Duration::from_millis(100));
                    }
                })
                .map(drop)
                .map_err(|e| format!("cannot start the libvirt event thread: {e}"))
        })
        .clone()
}

/// Name and UUID of a domain handed to a callback.
///
/// # Safety
/// `dom` must be a valid domain pointer for the duration of the call.
unsafe fn ident(dom: sys::virDomainPtr) -> (String, String) {
    // SAFETY: `dom` is valid (caller).
    let p = unsafe { sys::virDomainGetName(dom) };
    let name = if p.is_null() {
        String::new()
    } else {
        // SAFETY: a non-null name is a NUL-terminated string owned by the domain object,
        // valid while `dom` is.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    };
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `buf` has the VIR_UUID_STRING_BUFLEN bytes libvirt writes (NUL included).
    let uuid = if unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) } == 0 {
        // SAFETY: on success libvirt wrote a NUL-terminated string into `buf`.
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    } else {
        String::new()
    };
    (name, uuid)
}

/// # Safety
/// Called by libvirt with the `opaque` given at registration: a `Box<mpsc::Sender<Raw>>`.
unsafe extern "C" fn on_lifecycle(
    _c: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: see the function's contract; the sender outlives the registration.
    let tx = unsafe { &*(opaque as *const mpsc::Sender<Raw>) };
    // SAFETY: libvirt passes a valid domain for the callback's duration.
    let (vm, uuid) = unsafe { ident(dom) };
    let _ = tx.send(Raw::Domain {
        vm,
        uuid,
        kind: kind_of(event),
    });
    0
}

/// # Safety
/// As [`on_lifecycle`].
unsafe fn on_device(kind: VmEventKind, dom: sys::virDomainPtr, opaque: *mut c_void) {
    // SAFETY: see the function's contract.
    let tx = unsafe { &*(opaque as *const mpsc::Sender<Raw>) };
    // SAFETY: libvirt passes a valid domain for the callback's duration.
    let (vm, uuid) = unsafe { ident(dom) };
    let _ = tx.send(Raw::Domain { vm, uuid, kind });
}

/// # Safety
/// As [`on_lifecycle`].
unsafe extern "C" fn on_device_added(
    _c: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _alias: *const c_char,
    opaque: *mut c_void,
) {
    // SAFETY: forwarded contract.
    unsafe { on_device(VmEventKind::DeviceAdded, dom, opaque) }
}

/// # Safety
/// As [`on_lifecycle`].
unsafe extern "C" fn on_device_removed(
    _c: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _alias: *const c_char,
    opaque: *mut c_void,
) {
    // SAFETY: forwarded contract.
    unsafe { on_device(VmEventKind::DeviceRemoved, dom, opaque) }
}

/// # Safety
/// As [`on_lifecycle`].
unsafe extern "C" fn on_close(_c: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    // SAFETY: see the function's contract.
    let tx = unsafe { &*(opaque as *const mpsc::Sender<Raw>) };
    let _ = tx.send(Raw::Closed(reason));
}

/// # Safety
/// `opaque` must come from `Box::into_raw(Box<mpsc::Sender<Raw>>)`; libvirt calls this once.
unsafe extern "C" fn free_sender(opaque: *mut c_void) {
    // SAFETY: see the function's contract.
    drop(unsafe { Box::from_raw(opaque as *mut mpsc::Sender<Raw>) });
}

fn boxed(tx: &mpsc::Sender<Raw>) -> *mut c_void {
    Box::into_raw(Box::new(tx.clone())) as *mut c_void
}

/// Callback registrations on one connection, undone on drop.
struct Registrations<'a> {
    conn: &'a Connect,
    ids: Vec<c_int>,
    close: bool,
}

impl<'a> Registrations<'a> {
    fn register(conn: &'a Connect, tx: &mpsc::Sender<Raw>) -> Result<Registrations<'a>, String> {
        let mut regs = Registrations {
            conn,
            ids: Vec::new(),
            close: false,
        };
        type Generic = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
        let generic = |cb: *const ()| {
            // SAFETY: libvirt calls each callback with the signature of its event id; the
            // generic type is only the registration's calling convention (as in libvirt's
            // own VIR_DOMAIN_EVENT_CALLBACK macro). Function pointers have the same size.
            unsafe { std::mem::transmute::<*const (), Generic>(cb) }
        };
        // SAFETY: the raw connection is used only while `conn`, borrowed for the life of the
        // registrations, keeps it open.
        let raw = unsafe { conn.as_ptr() };
        let cbs: [(u32, Generic); 3] = [
            (
                sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                generic(on_lifecycle as *const ()),
            ),
            (
                sys::VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
                generic(on_device_added as *const ()),
            ),
            (
                sys::VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                generic(on_device_removed as *const ()),
            ),
        ];
        for (id, cb) in cbs {
            let opaque = boxed(tx);
            // SAFETY: valid connection; `opaque` is a boxed sender freed by `free_sender`
            // (by libvirt on deregistration, or here if registration fails).
            let r = unsafe {
                sys::virConnectDomainEventRegisterAny(
                    raw,
                    std::ptr::null_mut(),
                    id as c_int,
                    Some(cb),
                    opaque,
                    Some(free_sender),
                )
            };
            if r < 0 {
                // SAFETY: libvirt did not take ownership of `opaque` on failure.
                unsafe { free_sender(opaque) };
                return Err(format!(
                    "cannot register domain event {id}: {}",
                    virt::error::Error::last_error()
                ));
            }
            regs.ids.push(r);
        }
        let opaque = boxed(tx);
        // SAFETY: as above, for the connection's close callback.
        let r = unsafe {
            sys::virConnectRegisterCloseCallback(raw, Some(on_close), opaque, Some(free_sender))
        };
        if r < 0 {
            // SAFETY: not taken by libvirt.
            unsafe { free_sender(opaque) };
            return Err(format!(
                "cannot register the close callback: {}",
                virt::error::Error::last_error()
            ));
        }
        regs.close = true;
        // Detect a hung (not just dead) daemon: 5 s interval, 3 missed answers.
        // SAFETY: valid connection; needs the event loop, which is running.
        unsafe { sys::virConnectSetKeepAlive(raw, 5, 3) };
        Ok(regs)
    }
}

impl Drop for Registrations<'_> {
    fn drop(&mut self) {
        // SAFETY: `self.conn` outlives the registrations (borrowed for 'a).
        let raw = unsafe { self.conn.as_ptr() };
        for id in &self.ids {
            // SAFETY: valid connection and an id it returned; failure (connection already
            // closed) is harmless.
            unsafe { sys::virConnectDomainEventDeregisterAny(raw, *id) };
        }
        if self.close {
            // SAFETY: as above.
            unsafe { sys::virConnectUnregisterCloseCallback(raw, Some(on_close)) };
        }
    }
}

/// The tap devices of one domain, read from its live description (empty if not running).
pub(crate) fn domain_ifaces(
    dom: &virt::domain::Domain,
) -> Result<Vec<VmIface>, virt::error::Error> {
    if !dom.is_active()? {
        return Ok(Vec::new());
    }
    let name = dom.name()?;
    let uuid = dom.uuid_string()?;
    let desc = dom.xml_desc(0)?;
    let ifaces = xml::interfaces(&desc).unwrap_or_else(|e| {
        tracing::warn!(vm = ?name, error = ?e.to_string(), "unparsable domain XML");
        Vec::new()
    });
    Ok(ifaces
        .into_iter()
        .filter_map(|i| {
            i.tap.map(|tap| VmIface {
                vm: name.clone(),
                uuid: uuid.clone(),
                mac: i.mac,
                tap,
                kind: i.kind,
                link_up: i.link_up,
            })
        })
        .collect())
}

/// The tap devices of every running domain the agent manages.
pub(crate) fn scan_all(
    conn: &Connect,
    domains: &Domains,
) -> Result<Vec<VmIface>, virt::error::Error> {
    let mut out = Vec::new();
    for dom in conn.list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)? {
        if domains.is_scoped() && !dom.name().is_ok_and(|n| domains.contains(&n)) {
            continue;
        }
        match domain_ifaces(&dom) {
            Ok(v) => out.extend(v),
            // Gone between the listing and the lookup.
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn refresh(conn: &Connect, taps: &TapMap, uuid: &str) {
    let ifaces = match conn.lookup_domain_by_uuid_string(uuid) {
        Ok(dom) => domain_ifaces(&dom),
        Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN => Ok(Vec::new()),
        Err(e) => Err(e),
    };
    match ifaces {
        Ok(v) => taps.set_domain(uuid, v),
        Err(e) => {
            tracing::warn!(uuid = ?uuid, error = ?e.to_string(), "cannot refresh the domain's interfaces")
        }
    }
}

/// The watcher thread of one agent; stopped and joined on drop.
pub(crate) struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    /// True while a session has its callbacks registered: events from then on are published.
    watching: tokio::sync::watch::Receiver<bool>,
}

/// How often the watcher checks whether it must stop.
const POLL: Duration = Duration::from_millis(100);

impl Watcher {
    pub(crate) fn start(
        uri: String,
        domains: Domains,
        taps: TapMap,
        events: tokio::sync::broadcast::Sender<VmEvent>,
    ) -> Result<Watcher, String> {
        ensure_event_loop()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let (watching_tx, watching) = tokio::sync::watch::channel(false);
        let thread = thread::Builder::new()
            .name("libvirt-watch".into())
            .spawn(move || run(&uri, &domains, &taps, &events, &watching_tx, &s))
            .map_err(|e| format!("cannot start the libvirt watcher: {e}"))?;
        Ok(Watcher {
            stop,
            thread: Some(thread),
            watching,
        })
    }

    /// Waits until events are watched (at once if they are).
    pub(crate) async fn watching(&self) {
        let mut rx = self.watching.clone();
        // Err only once the thread is gone, i.e. the agent is being dropped.
        let _ = rx.wait_for(|w| *w).await;
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    uri: &str,
    domains: &Domains,
    taps: &TapMap,
    events: &tokio::sync::broadcast::Sender<VmEvent>,
    watching: &tokio::sync::watch::Sender<bool>,
    stop: &AtomicBool,
) {
    let mut backoff = Duration::from_millis(200);
    while !stop.load(Ordering::Relaxed) {
        let result = session(uri, domains, taps, events, watching, stop);
        watching.send_replace(false);
        match result {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                tracing::warn!(%uri, error = ?e.to_string(), retry_in_ms = backoff.as_millis() as u64, "libvirt event session failed");
                let mut waited = Duration::ZERO;
                while waited < backoff && !stop.load(Ordering::Relaxed) {
                    thread::sleep(POLL);
                    waited += POLL;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One connection's worth of events; returns Ok when the connection closed.
fn session(
    uri: &str,
    domains: &Domains,
    taps: &TapMap,
    events: &tokio::sync::broadcast::Sender<VmEvent>,
    watching: &tokio::sync::watch::Sender<bool>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let conn = Connect::open(Some(uri)).map_err(|e| format!("cannot connect: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let regs = Registrations::register(&conn, &tx)?;
    drop(tx);
    // After registering, so a domain started in between is seen one way or the other.
    taps.replace_all(scan_all(&conn, domains).map_err(|e| format!("cannot list domains: {e}"))?);
    tracing::info!(%uri, taps = taps.snapshot().len(), "watching libvirt domain events");
    watching.send_replace(true);
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        match rx.recv_timeout(POLL) {
            // Another's domain (params.domains): neither mapped nor published.
            Ok(Raw::Domain { vm, .. }) if !domains.contains(&vm) => {}
            Ok(Raw::Domain { vm, uuid, kind }) => {
                tracing::debug!(vm = ?vm, uuid = ?uuid, ?kind, "domain event");
                refresh(&conn, taps, &uuid);
                let _ = events.send(VmEvent { vm, uuid, kind });
            }
            Ok(Raw::Closed(reason)) => {
                tracing::warn!(%uri, reason, "libvirt connection closed; reconnecting");
                break Ok(());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err("event channel closed".to_string())
            }
        }
    };
    drop(regs);
    drop(conn);
    result
}
