//! The antivirus agent (2014 `Agent_AV`): scans with clamd on demand and from a watched
//! directory, keeps the list of analysed files, and raises an `Infected` alert naming its VM
//! for every infected file.
//!
//! As in 2014, `isolate_warning <hypervisor agent>` tells it its VM has been isolated: what
//! it would send to the VM then goes through the hypervisor agent instead (`clean_image`
//! becomes that agent's `send_key <vm>` with the 2014 keys), until `connect_warning`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Clamd, ClamdAddr, Verdict};
use crate::alerts::{json, ActuatorAlert, AlertSink};
use crate::error::{chain, AvError};
use crate::retry::{retry, RetryPolicy, RetryStats};
use vespa_node::{Agent, VerbResult};
use vespa_proto::verbs::{AvVerb, Keys, LibvirtVerb};

#[derive(Debug, Clone)]
pub struct AvConfig {
    /// The VM this agent protects (named in alerts).
    pub vm: String,
    pub clamd: ClamdAddr,
    /// Bound on one clamd command or scan.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// A directory whose new and changed files are scanned.
    pub watch_dir: Option<PathBuf>,
    /// How often the watched directory is listed.
    pub watch_interval: Duration,
    /// How many scan results `dump_analyzed_file_list` keeps.
    pub history: usize,
    /// The largest file scanned. A larger one is not sent to clamd: it is recorded as an error,
    /// counted (`skipped_too_large` in `status`) and logged, without an alert.
    pub max_scan_bytes: u64,
}

impl AvConfig {
    pub fn new(vm: &str, clamd: ClamdAddr) -> AvConfig {
        AvConfig {
            vm: vm.to_string(),
            clamd,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            watch_dir: None,
            watch_interval: Duration::from_millis(500),
            history: 10_000,
            max_scan_bytes: super::DEFAULT_MAX_SCAN_BYTES,
        }
    }
}

/// How the agent reaches its VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "route", rename_all = "snake_case")]
pub enum Route {
    /// Directly (the VM is connected).
    Direct,
    /// Through the hypervisor agent named here (the VM is isolated).
    ViaHypervisor { agent: String },
}

/// Calls a verb of the hypervisor agent, another node of the tree (provided by the node
/// runtime).
pub trait VmRelay: Send + Sync {
    fn call<'a>(&'a self, node: &'a str, verb: LibvirtVerb) -> RelayFuture<'a>;
}

/// A relayed call in progress.
pub type RelayFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = VerbResult> + Send + 'a>>;

/// One analysed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScanRecord {
    pub file: String,
    /// `OK`, `<signature> FOUND`, or `ERROR: <why>` (the clamd reply style of 2014).
    pub status: String,
    pub at_unix_ms: u64,
}

pub(super) struct Inner {
    pub(super) cfg: AvConfig,
    pub(super) clamd: Clamd,
    analyzed: Mutex<VecDeque<ScanRecord>>,
    route: Mutex<Route>,
    relay: Mutex<Option<Arc<dyn VmRelay>>>,
    alerts: AlertSink,
    stats: RetryStats,
    skipped: Skipped,
}

/// Files not scanned, by reason.
#[derive(Debug, Default)]
struct Skipped {
    too_large: AtomicU64,
    not_regular: AtomicU64,
}

/// The antivirus agent. Dropping it stops its directory watcher.
pub struct AvAgent {
    inner: Arc<Inner>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Inner {
    fn record(&self, file: &str, status: String) {
        let mut a = self.analyzed.lock().unwrap_or_else(|p| p.into_inner());
        a.push_back(ScanRecord {
            file: file.to_string(),
            status,
            at_unix_ms: now_ms(),
        });
        while a.len() > self.cfg.history.max(1) {
            a.pop_front();
        }
    }

    /// Scans one file (with retries), records the result, alerts on infection. `beneath`: the
    /// directory it was found in (see [`super::open_regular`]).
    pub(super) async fn scan_file(
        &self,
        path: &Path,
        beneath: Option<&Path>,
    ) -> Result<Verdict, AvError> {
        let what = format!("scan {}", path.display());
        let file = path.display().to_string();
        let res = retry(&self.cfg.retry, &self.stats, &what, |_| {
            self.clamd.scan_file(path, beneath)
        })
        .await;
        match &res {
            Ok(Verdict::Clean) => self.record(&file, "OK".into()),
            Ok(Verdict::Infected { signature }) => {
                self.record(&file, format!("{signature} FOUND"));
                tracing::warn!(vm = ?self.cfg.vm, file = ?file, signature = ?signature, "infected file");
                self.alerts.send(ActuatorAlert::Infected {
                    vm: self.cfg.vm.clone(),
                    file: file.clone(),
                    signature: signature.clone(),
                });
            }
            Err(e) => {
                self.record(&file, format!("ERROR: {}", chain(e)));
                match e {
                    AvError::TooLarge { size, limit, .. } => {
                        self.skipped.too_large.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(vm = ?self.cfg.vm, file = ?file, size, limit, "file larger than the scan limit: not scanned");
                    }
                    AvError::NotRegular { kind, .. } => {
                        self.skipped.not_regular.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(vm = ?self.cfg.vm, file = ?file, kind, "not a regular file: not opened, not scanned");
                    }
                    _ => {}
                }
                if matches!(
                    e,
                    AvError::Unreachable { .. }
                        | AvError::Timeout { .. }
                        | AvError::BadReply { .. }
                ) {
                    self.alerts.failed("clamav", &what, e);
                }
            }
        }
        res
    }
}

impl AvAgent {
    /// Starts the agent (and its directory watcher if configured: needs a tokio runtime).
    pub fn new(cfg: AvConfig, alerts: AlertSink) -> AvAgent {
        let clamd = Clamd::new(cfg.clamd.clone(), cfg.timeout).with_max_bytes(cfg.max_scan_bytes);
        let inner = Arc::new(Inner {
            cfg,
            clamd,
            analyzed: Mutex::default(),
            route: Mutex::new(Route::Direct),
            relay: Mutex::default(),
            alerts,
            stats: RetryStats::default(),
            skipped: Skipped::default(),
        });
        let watcher = inner.cfg.watch_dir.clone().map(|dir| {
            let scanner = inner.clone();
            super::watch::spawn(
                inner.cfg.vm.clone(),
                inner.cfg.watch_interval,
                dir,
                move |dir, file| {
                    let scanner = scanner.clone();
                    async move { scanner.scan_file(&file, Some(&dir)).await }
                },
            )
        });
        AvAgent { inner, watcher }
    }

    /// Lets the agent call other nodes (the node runtime provides this).
    pub fn set_relay(&self, relay: Arc<dyn VmRelay>) {
        *self.inner.relay.lock().unwrap_or_else(|p| p.into_inner()) = Some(relay);
    }

    pub fn clamd(&self) -> &Clamd {
        &self.inner.clamd
    }

    pub fn retry_stats(&self) -> &RetryStats {
        &self.inner.stats
    }

    pub async fn ping(&self) -> Result<(), AvError> {
        let i = &self.inner;
        retry(&i.cfg.retry, &i.stats, "clamd PING", |_| i.clamd.ping()).await
    }

    pub async fn version(&self) -> Result<String, AvError> {
        let i = &self.inner;
        retry(&i.cfg.retry, &i.stats, "clamd VERSION", |_| {
            i.clamd.version()
        })
        .await
    }

    /// Scans a file, or every regular file under a directory (results in path order). A
    /// symbolic link is not followed, whether `path` or below it.
    pub async fn scan(
        &self,
        path: &Path,
    ) -> Result<Vec<(PathBuf, Result<Verdict, AvError>)>, AvError> {
        let meta = tokio::fs::symlink_metadata(path)
            .await
            .map_err(|source| AvError::Read {
                path: path.display().to_string(),
                source,
            })?;
        let (files, beneath) = if meta.is_dir() {
            (super::watch::list_files(path).await, Some(path))
        } else {
            (vec![path.to_path_buf()], None)
        };
        let mut out = Vec::new();
        for f in files {
            let r = self.inner.scan_file(&f, beneath).await;
            out.push((f, r));
        }
        Ok(out)
    }

    /// Scans one file.
    pub async fn scan_file(&self, path: &Path) -> Result<Verdict, AvError> {
        self.inner.scan_file(path, None).await
    }

    /// The analysed files, oldest first.
    pub fn analyzed(&self) -> Vec<ScanRecord> {
        self.inner
            .analyzed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn route(&self) -> Route {
        self.inner
            .route
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The VM is isolated: reach it through `hypervisor_agent`.
    pub fn isolate(&self, hypervisor_agent: &str) {
        tracing::info!(vm = ?self.inner.cfg.vm, via = ?hypervisor_agent, "VM isolated; reaching it through the hypervisor agent");
        *self.inner.route.lock().unwrap_or_else(|p| p.into_inner()) = Route::ViaHypervisor {
            agent: hypervisor_agent.to_string(),
        };
    }

    /// The VM is connected again.
    pub fn connect(&self) {
        tracing::info!(vm = ?self.inner.cfg.vm, "VM connected; reaching it directly");
        *self.inner.route.lock().unwrap_or_else(|p| p.into_inner()) = Route::Direct;
    }

    /// 2014's `clean_image`: while isolated, the hypervisor agent sends the VM the sysrq keys
    /// (`send_key <vm>` with its defaults: win32 codes 0x12 0x42, 10 ms).
    pub async fn clean_image(&self) -> Result<String, AvError> {
        match self.route() {
            Route::Direct => Err(AvError::NoRoute(format!(
                "clean_image: VM {} is connected and no in-VM driver is configured; it is only sent through the hypervisor agent while the VM is isolated",
                self.inner.cfg.vm
            ))),
            Route::ViaHypervisor { agent } => {
                let relay = self.inner.relay.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let relay = relay.ok_or_else(|| AvError::NoRoute(format!("clean_image: no relay to reach hypervisor agent {agent}")))?;
                relay
                    .call(
                        &agent,
                        LibvirtVerb::SendKey {
                            vm: self.inner.cfg.vm.clone(),
                            keys: Keys::default(),
                        },
                    )
                    .await
                    .map_err(|e| AvError::NoRoute(format!("clean_image through {agent}: {e}")))
            }
        }
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "vm": self.inner.cfg.vm,
            "clamd": self.inner.cfg.clamd.to_string(),
            "route": self.route(),
            "watch_dir": self.inner.cfg.watch_dir,
            "analyzed": self.inner.analyzed.lock().unwrap_or_else(|p| p.into_inner()).len(),
            "retries": self.inner.stats.retries(),
            "max_scan_bytes": self.inner.cfg.max_scan_bytes,
            "skipped_too_large": self.inner.skipped.too_large.load(Ordering::Relaxed),
            "skipped_not_regular": self.inner.skipped.not_regular.load(Ordering::Relaxed),
            "failures": self.inner.stats.failures(),
        })
    }
}

impl Drop for AvAgent {
    fn drop(&mut self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
    }
}

impl Agent for AvAgent {
    type Verb = AvVerb;

    async fn call(&self, verb: AvVerb) -> VerbResult {
        let err = |e: AvError| chain(&e);
        match verb {
            AvVerb::Ping {} => {
                self.ping().await.map_err(err)?;
                Ok("PONG".into())
            }
            AvVerb::Version {} => self.version().await.map_err(err),
            AvVerb::Scan { path } => {
                let results = self.scan(Path::new(&path)).await.map_err(err)?;
                let v: Vec<serde_json::Value> = results
                    .into_iter()
                    .map(|(p, r)| match r {
                        Ok(v) => serde_json::json!({ "file": p, "result": v }),
                        Err(e) => serde_json::json!({ "file": p, "error": chain(&e) }),
                    })
                    .collect();
                json(&v)
            }
            AvVerb::DumpAnalyzedFileList {} => json(&self.analyzed()),
            AvVerb::IsolateWarning { hypervisor_agent } => {
                self.isolate(&hypervisor_agent);
                json(&self.route())
            }
            AvVerb::ConnectWarning {} => {
                self.connect();
                json(&self.route())
            }
            AvVerb::CleanImage {} => self.clean_image().await.map_err(err),
            AvVerb::Status {} => json(&self.status()),
        }
    }
}
