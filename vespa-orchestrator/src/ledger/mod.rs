//! The decision ledger: every effect a policy driver places (block, throttle, cut link,
//! quarantine, isolation), who decided it and why, what the actuator answered, and when and
//! why it ended, in an SQLite database in WAL mode that an operator can open with `sqlite3`,
//! or in a PostgreSQL database (`postgres://...`, the `postgres` feature) that a VO failing
//! over to a second machine finds there.
//!
//! ```text
//! driver's execute ──place/end (sync: ids, in-force map)──► queue ──► writer ──► SQLite (WAL)
//!        │                                                         │ one transaction    or PostgreSQL
//!        └── call task: waits for "written", then sends ◄── written ┤ per batch
//!                                                                  └──► subscribe(): DecisionEvent
//! ```
//!
//! **Written before sent.** [`Ledger::place`] and [`Ledger::end`] answer at once (the id, a
//! [`Written`] to wait on) and queue the rows; a single writer task commits what is queued in
//! one transaction and then signals every waiter, so a burst (an import of thousands of
//! blocks) costs one commit per batch, not one per block. The driver's call task waits for
//! its row before the call leaves; the driver's own task never waits. The queue keeps the
//! driver's order, so a release is never written before the block it ends.
//!
//! **One hand-over each way on SQLite.** The writer of a file is a thread of its own calling
//! SQLite directly ([`direct`]): a call task's write is one hand-over to it (a channel) and
//! one back (the oneshot [`Written`] waits on), where through sqlx it was two more (sqlx
//! runs a connection on a worker thread of its own, answering through a writer task): on a
//! loaded host each hand-over is a scheduler wake-up in the closed loop's path. Statements of
//! the shapes that recur (one decision, one reply) are prepared once and kept. On PostgreSQL
//! the writer is a task on sqlx's connection, one statement per message with parameters.
//! Both run the same statements ([`plan`]); reads go through sqlx on both.
//!
//! **Durability.** On SQLite, `synchronous = NORMAL` in WAL mode: a commit is in the WAL file
//! when the call leaves, so SIGKILL of the orchestrator loses nothing it sent; a power loss
//! may lose the last commits (`FULL` would fsync each batch, a disk's flush time in the closed
//! loop's path). On PostgreSQL a commit is as durable as the server's `synchronous_commit`
//! makes it. What the actuators hold after a power loss is what reconciliation compares.
//!
//! **Never emptied.** Opening checks the file (`PRAGMA quick_check`); a file that is not a
//! database, is damaged or holds a newer schema stops the start with its path named. Nothing
//! here recreates, truncates or deletes a ledger.
//!
//! **No password in logs.** A PostgreSQL URL is only ever shown with its password replaced
//! ([`Location`]), and an error text that would carry it has it replaced too.
//!
//! One database per orchestrator process, enforced for a file: opening takes an exclusive
//! lock on `<ledger>.lock` ([`owner`]) held while the ledger is open, so a second process on
//! the same file stops at start with the path and the holder named. Each row names the node
//! (the VO, or the HO of a fast-path rule) whose driver decided, so the drivers of one process
//! share it. Ids are assigned by the process (the next after the largest in the database):
//! one orchestrator writes a PostgreSQL ledger at a time, the one a failover made active.

mod direct;
mod owner;
mod schema;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Connection, Row};
use tokio::sync::{broadcast, mpsc, oneshot};

/// A decision's id: assigned by the orchestrator, never reused (the next after the largest
/// in the file).
pub type DecisionId = i64;

/// Longest target, actuator, node, rule list or identity kept (characters).
pub const MAX_NAME: usize = 200;
/// Longest reply, error, reason or event detail kept (characters): replies and alerts come
/// from watched traffic and peers.
pub const MAX_TEXT: usize = 512;
/// Jobs committed in one transaction at most.
const MAX_BATCH: usize = 4096;
/// Decision events buffered for a slow subscriber (it then misses the oldest, and is told).
const EVENTS_BUFFER: usize = 4096;
/// How often the WAL is copied back into the database file, off the writer's path.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// Rows a history read returns at most.
pub const MAX_LISTED: i64 = 10_000;

/// `text` cut to `max` characters (on a character boundary), control characters replaced.
pub fn bounded(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Who decided an effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Decider {
    /// Rules of the policy file (names joined by `, `), and the file's SHA-256.
    Rule {
        /// The rules, joined by `, `.
        rules: String,
        /// SHA-256 of the policy file's text (hex).
        policy_sha256: String,
    },
    /// The firewall agent's kernel reflex, adopted by these rules.
    Reflex {
        /// The rules, joined by `, `.
        rules: String,
        /// SHA-256 of the policy file's text (hex).
        policy_sha256: String,
    },
    /// An operator: an API token's id (`token:<hash>`, never the token) or the tree key's
    /// name (`key:<name>`), with their reason.
    Operator {
        /// `token:<hash>` or `key:<name>`.
        identity: String,
        /// The operator's reason, when they gave one.
        reason: Option<String>,
    },
    /// An infected VM's isolation (the AV agent's alert).
    Infection,
}

impl Decider {
    fn by(&self) -> &'static str {
        match self {
            Decider::Rule { .. } => "rule",
            Decider::Reflex { .. } => "reflex",
            Decider::Operator { .. } => "operator",
            Decider::Infection => "infection",
        }
    }
}

/// The alert that caused a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    /// The agent that raised it.
    pub origin: String,
    /// Its per-origin sequence number.
    pub seq: u64,
    /// Its time: the kernel event's for a threshold alert (Unix ns).
    pub kernel_ns: u64,
    /// What it said, briefly.
    pub summary: String,
}

/// A decision about to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDecision {
    /// The node whose driver decided (VO, or an HO).
    pub node: String,
    /// `block`, `throttle`, `cut_link`, `migrate`, `av_isolate`.
    pub kind: String,
    /// An address, prefix, MAC or VM (`vm@av_agent` for an isolation).
    pub target: String,
    /// The agent that carries it out.
    pub actuator: String,
    /// Whether the actuator is a firewall agent.
    pub actuator_firewall: bool,
    /// Who decided.
    pub decider: Decider,
    /// The alert that caused it, when one did.
    pub cause: Option<Cause>,
    /// Unix seconds.
    pub placed_at: u64,
    /// Its time-to-live (blocks and throttles).
    pub ttl_s: Option<u64>,
    /// Unix seconds.
    pub expires_at: Option<u64>,
    /// A throttle's rate (`1000pps`, `1mbps`).
    pub rate: Option<String>,
    /// Only recorded (dry-run): nothing was sent.
    pub dry_run: bool,
}

/// One decision as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The decision's id.
    pub id: DecisionId,
    /// The node whose driver decided (VO, or an HO).
    pub node: String,
    /// `block`, `throttle`, `cut_link`, `migrate`, `av_isolate`.
    pub kind: String,
    /// An address, prefix, MAC or VM.
    pub target: String,
    /// The agent that carries it out (and undoes it).
    pub actuator: String,
    /// Whether that agent is a firewall agent.
    pub actuator_firewall: bool,
    /// `rule`, `reflex`, `operator`, `infection`.
    pub decided_by: String,
    /// The rules behind it, joined by `, `.
    pub rules: Option<String>,
    /// SHA-256 of the policy file's text when it was decided (hex).
    pub policy_sha256: Option<String>,
    /// The operator's identity: `token:<hash>` or `key:<name>`.
    pub operator: Option<String>,
    /// The operator's reason, when they gave one.
    pub reason: Option<String>,
    /// The agent that raised the alert that caused it.
    pub alert_origin: Option<String>,
    /// That alert's per-origin sequence number.
    pub alert_seq: Option<u64>,
    /// That alert's time: the kernel event's, for a threshold (Unix ns).
    pub alert_kernel_ns: Option<u64>,
    /// When it was decided (Unix seconds).
    pub placed_at: u64,
    /// Its time-to-live (blocks and throttles).
    pub ttl_s: Option<u64>,
    /// When the actuator's reaper ends it (Unix seconds).
    pub expires_at: Option<u64>,
    /// A throttle's rate.
    pub rate: Option<String>,
    /// Only recorded (dry-run): nothing was sent.
    pub dry_run: bool,
    /// When the actuator confirmed it (Unix seconds).
    pub confirmed_at: Option<u64>,
    /// The actuator's reply (bounded).
    pub reply: Option<String>,
    /// When the actuator refused it or did not answer (Unix seconds).
    pub failed_at: Option<u64>,
    /// Why (bounded).
    pub error: Option<String>,
    /// The policy's verification by counters: `passed`, `failed` or `not_verifiable`;
    /// `None` until the policy has said (its deadline is still ahead).
    pub verification: Option<String>,
    /// When it ended (Unix seconds); `None` while in force.
    pub ended_at: Option<u64>,
    /// Why it ended: released by an operator, calm, TTL, allowlist, ...
    pub end_reason: Option<String>,
}

/// One line of a decision's story.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The decision it is about.
    pub decision: DecisionId,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// `alert`, `decided`, `renewed`, `confirmed`, `failed`, `verified`, `ended`,
    /// `undo_confirmed`, `undo_failed`, `restored`.
    pub kind: String,
    /// What happened (bounded).
    pub detail: String,
}

/// A decision and its story (`decisions show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Story {
    /// The decision it is about.
    pub decision: Decision,
    /// Its story, in order.
    pub events: Vec<Event>,
}

/// What [`Ledger::subscribe`] delivers once a row is committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionEvent {
    /// The decision it is about.
    pub decision: DecisionId,
    /// The node whose driver decided (VO, or an HO).
    pub node: String,
    /// The decision's kind (`block`, ...) and target.
    pub action: String,
    /// An address, prefix, MAC or VM.
    pub target: String,
    /// When (Unix milliseconds).
    pub at_ms: u64,
    /// As [`Event::kind`].
    pub kind: String,
    /// What happened (bounded).
    pub detail: String,
}

/// Which decisions a history read returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Only those in force (not ended), else ended ones too.
    pub in_force_only: bool,
    /// Only those placed, or ended, at or after this Unix second.
    pub since: Option<u64>,
    /// Only those of this node.
    pub node: Option<String>,
    /// Only ids below this one (the pages of a history read through the tree).
    #[serde(default)]
    pub before: Option<DecisionId>,
    /// At most this many, the newest (capped at [`MAX_LISTED`]).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Resolves when the rows queued with it are committed (or the commit failed).
#[must_use = "the call must wait for its row"]
pub struct Written(Option<oneshot::Receiver<Result<(), String>>>);

impl Written {
    /// Nothing to wait for (no ledger).
    pub fn none() -> Written {
        Written(None)
    }

    /// Waits for the commit; `Err` says why the rows could not be written.
    pub async fn wait(self) -> Result<(), String> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Err("the ledger's writer stopped".into())),
        }
    }
}

/// What identifies an effect in force: (node, kind, target).
type Slot = (String, String, String);

/// What a decision is about: the node whose driver decided, the kind (`block`, ...) and the
/// target, as the ledger records them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Subject {
    /// The node whose driver decided (VO, or an HO).
    pub node: String,
    /// `block`, `throttle`, `cut_link`, `migrate`, `av_isolate`.
    pub kind: String,
    /// An address, prefix, MAC or VM.
    pub target: String,
}

impl Subject {
    fn slot(&self) -> Slot {
        (
            bounded(&self.node, MAX_NAME),
            bounded(&self.kind, MAX_NAME),
            bounded(&self.target, MAX_NAME),
        )
    }
}

/// An effect in force as the ledger knows it (kept in memory, the `ended_at IS NULL` rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InForce {
    /// The decision's id.
    pub id: DecisionId,
    /// When it was decided (Unix seconds).
    pub placed_at: u64,
    /// When the actuator's reaper ends it (Unix seconds).
    pub expires_at: Option<u64>,
    /// `rule`, `reflex`, `operator`, `infection`.
    pub decided_by: String,
    /// The policy's verification by counters, once it has said (`passed`, ...).
    pub verification: Option<String>,
}

enum Op {
    Insert(Box<NewDecision>, DecisionId),
    Renew {
        id: DecisionId,
        ttl_s: Option<u64>,
        expires_at: Option<u64>,
    },
    Reply {
        id: DecisionId,
        undo: bool,
        ok: bool,
        text: String,
    },
    End {
        id: DecisionId,
        at: u64,
        reason: String,
    },
    Note {
        id: DecisionId,
        kind: &'static str,
        detail: String,
    },
    Verified {
        id: DecisionId,
        outcome: &'static str,
        detail: String,
    },
}

struct Job {
    /// (node, action, target) of the decision, for the subscribers.
    slot: Slot,
    op: Op,
    at_ms: i64,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// Where a ledger is kept: an SQLite file, or a PostgreSQL database.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite database file (created when missing).
    File(PathBuf),
    /// A PostgreSQL URL (`postgres://user[:password]@host[:port]/database[?...]`, or a unix
    /// socket's directory in `?host=/run/postgresql`).
    Postgres(String),
}

impl Location {
    /// `postgres://...` or `postgresql://...` is a PostgreSQL URL; anything else a file.
    pub fn of(path: &Path) -> Location {
        match path.to_str() {
            Some(t) if is_postgres_url(t) => Location::Postgres(t.to_string()),
            _ => Location::File(path.to_path_buf()),
        }
    }

    /// What logs and errors show: the path, or the URL with its password replaced.
    pub fn redacted(&self) -> String {
        match self {
            Location::File(p) => p.display().to_string(),
            Location::Postgres(url) => redact_url(url),
        }
    }

    /// The password a PostgreSQL URL carries (to scrub it from error texts).
    fn password(&self) -> Option<String> {
        let Location::Postgres(url) = self else {
            return None;
        };
        let u = url::Url::parse(url).ok()?;
        let in_query = u
            .query_pairs()
            .find(|(k, _)| k == "password")
            .map(|(_, v)| v.into_owned());
        let in_userinfo = u.password().map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        });
        in_userinfo.or(in_query).filter(|p| !p.is_empty())
    }
}

/// Never the password, even in `{:?}`.
impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Whether `text` names a PostgreSQL database rather than a file.
pub fn is_postgres_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// `url` with its password (in the user part or a `password=` parameter) replaced by `***`;
/// a URL that does not parse is shown by its scheme alone, since where its password is
/// cannot be told.
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        let scheme = url.split("://").next().unwrap_or("postgres");
        return format!("{}://(a URL that does not parse)", bounded(scheme, 16));
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" {
                    "***".to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// Where queued rows go: the writer thread of an SQLite file, the writer task of a
/// PostgreSQL database.
enum Queue {
    Thread(direct::Direct),
    Task(mpsc::UnboundedSender<Job>),
}

impl Queue {
    /// Whether the writer took `job` (it is gone only if it stopped); a job someone waits
    /// for is committed by the caller itself when it can (see [`direct::Direct`]).
    fn send(&self, job: Job) -> bool {
        match self {
            Queue::Thread(d) => {
                let waited = job.done.is_some();
                d.send(job, waited)
            }
            Queue::Task(tx) => tx.send(job).is_ok(),
        }
    }
}

struct Inner {
    location: Location,
    /// [`Location::redacted`], for every message.
    label: String,
    read: AnyPool,
    queue: Queue,
    /// Held while the ledger is open: the checkpointer stops when it is gone.
    _alive: Arc<()>,
    next_id: AtomicI64,
    in_force: Mutex<HashMap<Slot, InForce>>,
    events: broadcast::Sender<DecisionEvent>,
    failures: Arc<AtomicU64>,
    /// This process's hold of the file ([`owner`]).
    /// The file's lock (a PostgreSQL ledger has none: see the module's text).
    _owner: Option<owner::Owner>,
}

/// The ledger (cheap to clone). Open it inside a tokio runtime.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("location", &self.inner.label)
            .finish()
    }
}

/// The connection options of the SQLite file at `path`, through sqlx's `Any` driver (its
/// URL, so `?` or `#` in a file name are escaped). `mode`: `rwc` (create), `rw`, `ro`.
fn sqlite_opts(path: &Path, mode: &str) -> anyhow::Result<AnyConnectOptions> {
    let abs = std::path::absolute(path)
        .with_context(|| format!("the decision ledger {}", path.display()))?;
    let mut url = SqliteConnectOptions::new().filename(&abs).to_url_lossy();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "mode" {
                mode.into()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    AnyConnectOptions::from_url(&url).map_err(|e| unusable_file(path, e))
}

fn unusable_file(path: &Path, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "the decision ledger {} cannot be used: {why}; VESPA never empties or recreates it: \
         move it aside (or repair it with sqlite3's .recover) to start with another",
        path.display()
    )
}

impl Location {
    /// An error about this ledger, its password scrubbed from `why`.
    fn unusable(&self, why: impl std::fmt::Display) -> anyhow::Error {
        match self {
            Location::File(p) => unusable_file(p, why),
            Location::Postgres(_) => {
                let mut why = why.to_string();
                if let Some(pw) = self.password() {
                    why = why.replace(&pw, "***");
                }
                anyhow!(
                    "the decision ledger {} cannot be used: {why}; VESPA never empties or \
                     recreates it",
                    self.redacted()
                )
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The opener's connection (PostgreSQL: the writer's), the readers' pool, and (SQLite) the
/// checkpointer's connection.
struct Opened {
    /// The file's lock, taken before anything is read (none on PostgreSQL).
    owner: Option<owner::Owner>,
    writer: AnyConnection,
    read: AnyPool,
    checkpointer: Option<AnyConnection>,
}

/// Opens and checks an SQLite ledger: the file must be a sound database of a schema this
/// build knows; WAL, `synchronous = NORMAL`, no automatic checkpoint on the writer (set
/// again on the writer thread's own connection, [`direct::open`]).
async fn open_sqlite(at: &Location, path: &Path) -> anyhow::Result<Opened> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "creating the directory of the decision ledger {}",
                path.display()
            )
        })?;
    }
    // Before anything is read: a second process must not open the file at all.
    let owner = owner::hold(path)?;
    let mut conn = AnyConnection::connect_with(&sqlite_opts(path, "rwc")?)
        .await
        .map_err(|e| at.unusable(e))?;
    let check: Vec<String> = sqlx::query_scalar("PRAGMA quick_check")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| at.unusable(e))?;
    if check != ["ok"] {
        let first: Vec<String> = check.iter().take(3).map(|l| bounded(l, 200)).collect();
        return Err(at.unusable(format!("it is damaged (quick_check: {})", first.join("; "))));
    }
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| at.unusable(e))?;
    if version > schema::VERSION {
        return Err(at.unusable(format!(
            "its schema is version {version}, this build knows {} at most",
            schema::VERSION
        )));
    }
    // The writer never checkpoints (a checkpoint fsyncs: milliseconds to tens of them on a
    // busy disk, in the closed loop's path); a task of its own does, every few seconds.
    for pragma in [
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = NORMAL",
        "PRAGMA wal_autocheckpoint = 0",
    ] {
        sqlx::query(pragma)
            .execute(&mut conn)
            .await
            .map_err(|e| at.unusable(e))?;
    }
    for stmt in schema::CREATE {
        sqlx::query(stmt)
            .execute(&mut conn)
            .await
            .map_err(|e| at.unusable(e))?;
    }
    sqlx::query(&format!("PRAGMA user_version = {}", schema::VERSION))
        .execute(&mut conn)
        .await
        .map_err(|e| at.unusable(e))?;
    let read = AnyPoolOptions::new()
        .max_connections(2)
        .connect_with(sqlite_opts(path, "ro")?)
        .await
        .map_err(|e| at.unusable(e))?;
    let checkpointer = AnyConnection::connect_with(&sqlite_opts(path, "rw")?)
        .await
        .map_err(|e| at.unusable(e))?;
    Ok(Opened {
        owner: Some(owner),
        writer: conn,
        read,
        checkpointer: Some(checkpointer),
    })
}

/// Opens a PostgreSQL ledger: its tables created when missing, its schema version (a table,
/// PostgreSQL has no `user_version`) one this build knows.
#[cfg(feature = "postgres")]
async fn open_postgres(at: &Location, url: &str) -> anyhow::Result<Opened> {
    use std::str::FromStr as _;
    let opts = AnyConnectOptions::from_str(url).map_err(|e| at.unusable(e))?;
    let mut conn = AnyConnection::connect_with(&opts)
        .await
        .map_err(|e| at.unusable(e))?;
    // Before anything is read, as for a file: one orchestrator per ledger.
    owner::hold_postgres(&mut conn, &at.redacted())
        .await
        .map_err(|e| match e.downcast::<sqlx::Error>() {
            Ok(db) => at.unusable(db),
            Err(refused) => refused,
        })?;
    for stmt in schema::CREATE.iter().chain(schema::POSTGRES_VERSION_TABLE) {
        sqlx::query(stmt)
            .execute(&mut conn)
            .await
            .map_err(|e| at.unusable(e))?;
    }
    let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM ledger_schema")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| at.unusable(e))?;
    match version {
        Some(v) if v > schema::VERSION => {
            return Err(at.unusable(format!(
                "its schema is version {v}, this build knows {} at most",
                schema::VERSION
            )))
        }
        Some(_) => {}
        None => {
            sqlx::query("INSERT INTO ledger_schema (version) VALUES ($1)")
                .bind(schema::VERSION)
                .execute(&mut conn)
                .await
                .map_err(|e| at.unusable(e))?;
        }
    }
    let read = AnyPoolOptions::new()
        .max_connections(2)
        .connect_with(opts)
        .await
        .map_err(|e| at.unusable(e))?;
    Ok(Opened {
        owner: None,
        writer: conn,
        read,
        checkpointer: None,
    })
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(at: &Location, _url: &str) -> anyhow::Result<Opened> {
    Err(at.unusable("this build has no PostgreSQL support (cargo feature `postgres`)"))
}

impl Ledger {
    /// Opens (or creates) the ledger at `path` (a file, or a `postgres://` URL: see
    /// [`Location::of`]), checks it, and starts its writer. A file that is not a database, is
    /// damaged or holds a newer schema is an error naming `path`.
    pub async fn open(path: &Path) -> anyhow::Result<Ledger> {
        Ledger::open_at(Location::of(path)).await
    }

    /// Opens (or creates) the ledger at `at`, checks it, and starts its writer.
    pub async fn open_at(at: Location) -> anyhow::Result<Ledger> {
        sqlx::any::install_default_drivers();
        let Opened {
            owner,
            writer: mut conn,
            read,
            checkpointer,
        } = match &at {
            Location::File(p) => open_sqlite(&at, p).await?,
            Location::Postgres(url) => open_postgres(&at, url).await?,
        };
        let max_id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM decisions")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| at.unusable(e))?;
        let max_event: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM decision_events")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| at.unusable(e))?;
        let rows = sqlx::query(
            "SELECT id, node, kind, target, placed_at, expires_at, decided_by, verification FROM decisions WHERE ended_at IS NULL",
        )
        .fetch_all(&mut conn)
        .await
        .map_err(|e| at.unusable(e))?;
        let mut in_force = HashMap::new();
        for r in rows {
            let slot = (r.get("node"), r.get("kind"), r.get("target"));
            in_force.insert(
                slot,
                InForce {
                    id: r.get("id"),
                    placed_at: r.get::<i64, _>("placed_at").max(0) as u64,
                    expires_at: r
                        .get::<Option<i64>, _>("expires_at")
                        .map(|x| x.max(0) as u64),
                    decided_by: r.get("decided_by"),
                    verification: r.get("verification"),
                },
            );
        }
        let label = at.redacted();
        let (events, _) = broadcast::channel(EVENTS_BUFFER);
        let failures = Arc::new(AtomicU64::new(0));
        let batches = Batches {
            label: label.clone(),
            next_event: max_event.unwrap_or(0) + 1,
            events: events.clone(),
            failures: failures.clone(),
        };
        let queue = match &at {
            Location::File(path) => {
                // The opener's connection is done with: the thread writes through its own.
                if let Err(e) = conn.close().await {
                    tracing::warn!(location = %label, error = %e, "decision ledger: closing the opener's connection");
                }
                let direct = direct::open(path).map_err(|e| at.unusable(e))?;
                Queue::Thread(
                    direct::spawn(direct, batches)
                        .map_err(|e| at.unusable(format!("starting its writer thread: {e}")))?,
                )
            }
            Location::Postgres(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(write_loop(
                    Writer {
                        conn,
                        location: at.clone(),
                    },
                    rx,
                    batches,
                ));
                Queue::Task(tx)
            }
        };
        let alive = Arc::new(());
        if let Some(c) = checkpointer {
            tokio::spawn(checkpoint_loop(c, Arc::downgrade(&alive), label.clone()));
        }
        tracing::info!(location = %label, in_force = in_force.len(), "decision ledger open");
        Ok(Ledger {
            inner: Arc::new(Inner {
                location: at,
                label,
                read,
                queue,
                _alive: alive,
                next_id: AtomicI64::new(max_id.unwrap_or(0) + 1),
                in_force: Mutex::new(in_force),
                events,
                failures,
                _owner: owner,
            }),
        })
    }

    /// Where the database is: the file's path, or the URL without its password.
    pub fn location(&self) -> &str {
        &self.inner.label
    }

    /// Where the database is.
    pub fn at(&self) -> &Location {
        &self.inner.location
    }

    /// Batches the writer could not commit (each logged).
    pub fn write_failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// Every decision event, once committed. A subscriber that falls more than a few
    /// thousand events behind misses the oldest (`RecvError::Lagged` says how many).
    pub fn subscribe(&self) -> broadcast::Receiver<DecisionEvent> {
        self.inner.events.subscribe()
    }

    fn queue(&self, slot: Slot, op: Op, wait: bool) -> Written {
        let (done, rx) = if wait {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        let job = Job {
            slot,
            op,
            at_ms: unix_ms(),
            done,
        };
        if !self.inner.queue.send(job) {
            tracing::error!(location = %self.inner.label, "decision ledger writer stopped: decision not recorded");
        }
        Written(rx)
    }

    /// Records a decision about to be sent and returns its id with what to wait for before
    /// sending. An effect already in force for the same node, kind and target is the same
    /// decision, renewed (a longer TTL, another rate): its id is returned.
    pub fn place(&self, d: NewDecision) -> (DecisionId, Written) {
        let mut d = d;
        d.node = bounded(&d.node, MAX_NAME);
        d.kind = bounded(&d.kind, MAX_NAME);
        d.target = bounded(&d.target, MAX_NAME);
        d.actuator = bounded(&d.actuator, MAX_NAME);
        let slot: Slot = (d.node.clone(), d.kind.clone(), d.target.clone());
        let mut in_force = lock(&self.inner.in_force);
        if let Some(f) = in_force.get_mut(&slot) {
            f.expires_at = d.expires_at.max(f.expires_at);
            let (id, expires_at) = (f.id, f.expires_at);
            drop(in_force);
            let op = Op::Renew {
                id,
                ttl_s: d.ttl_s,
                expires_at,
            };
            return (id, self.queue(slot, op, true));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        in_force.insert(
            slot.clone(),
            InForce {
                id,
                placed_at: d.placed_at,
                expires_at: d.expires_at,
                decided_by: d.decider.by().to_string(),
                verification: None,
            },
        );
        drop(in_force);
        (id, self.queue(slot, Op::Insert(Box::new(d), id), true))
    }

    /// The actuator's answer to decision `id` (`undo`: to its release), `ok` or not, with
    /// its reply or error text.
    pub fn reply(&self, id: DecisionId, about: &Subject, undo: bool, ok: bool, text: &str) {
        let op = Op::Reply {
            id,
            undo,
            ok,
            text: bounded(text.trim(), MAX_TEXT),
        };
        let _ = self.queue(about.slot(), op, false);
    }

    /// Ends the decision in force for (node, kind, target), if any, with `reason`; returns its
    /// id and what to wait for before the undo is sent.
    pub fn end(&self, about: &Subject, reason: &str) -> Option<(DecisionId, Written)> {
        let slot = about.slot();
        let f = lock(&self.inner.in_force).remove(&slot)?;
        let op = Op::End {
            id: f.id,
            at: (unix_ms() / 1000) as u64,
            reason: bounded(reason, MAX_TEXT),
        };
        Some((f.id, self.queue(slot, op, true)))
    }

    /// Adds a line to decision `id`'s story.
    pub fn note(&self, id: DecisionId, about: &Subject, kind: &'static str, detail: &str) {
        let op = Op::Note {
            id,
            kind,
            detail: bounded(detail, MAX_TEXT),
        };
        let _ = self.queue(about.slot(), op, false);
    }

    /// The outcome of verifying the decision in force for (node, kind, target) by counters:
    /// `passed`, `failed` or `not_verifiable` (the column), with its figures (the story).
    /// Returns the decision's id, `None` when nothing is in force for it (the outcome is then
    /// not recorded).
    pub fn verified(
        &self,
        about: &Subject,
        outcome: &'static str,
        detail: &str,
    ) -> Option<DecisionId> {
        let slot = about.slot();
        let id = {
            let mut in_force = lock(&self.inner.in_force);
            let f = in_force.get_mut(&slot)?;
            f.verification = Some(outcome.to_string());
            f.id
        };
        let op = Op::Verified {
            id,
            outcome,
            detail: bounded(detail, MAX_TEXT),
        };
        let _ = self.queue(slot, op, false);
        Some(id)
    }

    /// Ends every decision in force whose expiry is at or before `now_s` (Unix seconds), with
    /// `reason`: the actuator's reaper removed them. Returns how many.
    pub fn expire(&self, now_s: u64, reason: &str) -> usize {
        let ended: Vec<(Slot, InForce)> = {
            let mut in_force = lock(&self.inner.in_force);
            let due: Vec<Slot> = in_force
                .iter()
                .filter(|(_, f)| f.expires_at.is_some_and(|t| t <= now_s))
                .map(|(s, _)| s.clone())
                .collect();
            due.into_iter()
                .filter_map(|s| in_force.remove(&s).map(|f| (s, f)))
                .collect()
        };
        for (slot, f) in &ended {
            let op = Op::End {
                id: f.id,
                at: f.expires_at.unwrap_or(now_s),
                reason: reason.to_string(),
            };
            let _ = self.queue(slot.clone(), op, false);
        }
        ended.len()
    }

    /// The decision in force for (node, kind, target), as the ledger knows it (no I/O): for
    /// the API's listing (the decision's id and true start) and for reconciliation ("did VESPA
    /// place this, and does it still hold it?").
    pub fn in_force(&self, about: &Subject) -> Option<InForce> {
        lock(&self.inner.in_force).get(&about.slot()).cloned()
    }

    /// Every decision in force, with (node, kind, target).
    pub fn all_in_force(&self) -> Vec<(String, String, String, InForce)> {
        lock(&self.inner.in_force)
            .iter()
            .map(|((n, k, t), f)| (n.clone(), k.clone(), t.clone(), f.clone()))
            .collect()
    }

    /// Waits until everything queued so far is committed.
    pub async fn flush(&self) -> Result<(), String> {
        self.queue(
            Default::default(),
            Op::Note {
                id: 0,
                kind: "",
                detail: String::new(),
            },
            true,
        )
        .wait()
        .await
    }

    /// Decisions, oldest first (at most [`MAX_LISTED`], the newest of them).
    pub async fn list(&self, q: &Query) -> anyhow::Result<Vec<Decision>> {
        let mut sql = String::from("SELECT * FROM decisions WHERE 1 = 1");
        if q.in_force_only {
            sql.push_str(" AND ended_at IS NULL");
        }
        if q.since.is_some() {
            sql.push_str(" AND (placed_at >= $1 OR ended_at >= $1 OR ended_at IS NULL)");
        }
        let mut n = i32::from(q.since.is_some());
        if q.node.is_some() {
            n += 1;
            sql.push_str(&format!(" AND node = ${n}"));
        }
        if q.before.is_some() {
            n += 1;
            sql.push_str(&format!(" AND id < ${n}"));
        }
        let limit = q.limit.map_or(MAX_LISTED, |l| (l as i64).min(MAX_LISTED));
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let mut query = sqlx::query(&sql);
        if let Some(s) = q.since {
            query = query.bind(s as i64);
        }
        if let Some(n) = &q.node {
            query = query.bind(n.clone());
        }
        if let Some(b) = q.before {
            query = query.bind(b);
        }
        let rows = query
            .fetch_all(&self.inner.read)
            .await
            .with_context(|| format!("reading the decision ledger {}", self.location()))?;
        let mut out: Vec<Decision> = rows.iter().map(decision_of).collect();
        out.reverse();
        Ok(out)
    }

    /// Decision `id` and its story, or `None`.
    pub async fn show(&self, id: DecisionId) -> anyhow::Result<Option<Story>> {
        let ctx = || format!("reading the decision ledger {}", self.location());
        let Some(row) = sqlx::query("SELECT * FROM decisions WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.inner.read)
            .await
            .with_context(ctx)?
        else {
            return Ok(None);
        };
        let events = sqlx::query(
            "SELECT decision, at_ms, kind, detail FROM decision_events WHERE decision = $1 ORDER BY id LIMIT 1000",
        )
        .bind(id)
        .fetch_all(&self.inner.read)
        .await
        .with_context(ctx)?
        .iter()
        .map(|r| Event {
            decision: r.get("decision"),
            at_ms: r.get::<i64, _>("at_ms").max(0) as u64,
            kind: r.get("kind"),
            detail: r.get("detail"),
        })
        .collect();
        Ok(Some(Story {
            decision: decision_of(&row),
            events,
        }))
    }

    /// The latest decision about `about`, in force or ended: for reconciliation, "did VESPA
    /// place this, and did it end it (when, why)?".
    pub async fn last(&self, about: &Subject) -> anyhow::Result<Option<Decision>> {
        let (node, kind, target) = about.slot();
        let row = sqlx::query(
            "SELECT * FROM decisions WHERE node = $1 AND kind = $2 AND target = $3 ORDER BY id DESC LIMIT 1",
        )
        .bind(node)
        .bind(kind)
        .bind(target)
        .fetch_optional(&self.inner.read)
        .await
        .with_context(|| format!("reading the decision ledger {}", self.location()))?;
        Ok(row.as_ref().map(decision_of))
    }

    /// The decisions of `node` in force, for its driver to restore at start.
    pub async fn to_restore(&self, node: &str) -> anyhow::Result<Vec<Decision>> {
        self.list(&Query {
            in_force_only: true,
            node: Some(node.to_string()),
            ..Query::default()
        })
        .await
    }
}

fn opt_u(r: &AnyRow, c: &str) -> Option<u64> {
    r.get::<Option<i64>, _>(c).map(|x| x.max(0) as u64)
}

fn decision_of(r: &AnyRow) -> Decision {
    Decision {
        id: r.get("id"),
        node: r.get("node"),
        kind: r.get("kind"),
        target: r.get("target"),
        actuator: r.get("actuator"),
        actuator_firewall: r.get::<i64, _>("actuator_firewall") != 0,
        decided_by: r.get("decided_by"),
        rules: r.get("rules"),
        policy_sha256: r.get("policy_sha256"),
        operator: r.get("operator"),
        reason: r.get("reason"),
        alert_origin: r.get("alert_origin"),
        alert_seq: opt_u(r, "alert_seq"),
        alert_kernel_ns: opt_u(r, "alert_kernel_ns"),
        placed_at: r.get::<i64, _>("placed_at").max(0) as u64,
        ttl_s: opt_u(r, "ttl_s"),
        expires_at: opt_u(r, "expires_at"),
        rate: r.get("rate"),
        dry_run: r.get::<i64, _>("dry_run") != 0,
        confirmed_at: opt_u(r, "confirmed_at"),
        reply: r.get("reply"),
        failed_at: opt_u(r, "failed_at"),
        error: r.get("error"),
        verification: r.get("verification"),
        ended_at: opt_u(r, "ended_at"),
        end_reason: r.get("end_reason"),
    }
}

/// The story line a decision starts with.
fn decided_detail(d: &NewDecision) -> String {
    let who = match &d.decider {
        Decider::Rule { rules, .. } => format!("rule {rules}"),
        Decider::Reflex { rules, .. } => format!("kernel reflex, adopted by rule {rules}"),
        Decider::Operator { identity, reason } => match reason {
            Some(r) => format!("operator {identity} ({r})"),
            None => format!("operator {identity}"),
        },
        Decider::Infection => "infection".into(),
    };
    let ttl = d.ttl_s.map(|t| format!(" for {t} s")).unwrap_or_default();
    let rate = d
        .rate
        .as_deref()
        .map(|r| format!(" at {r}"))
        .unwrap_or_default();
    let dry = if d.dry_run {
        " (dry-run: recorded, not sent)"
    } else {
        ""
    };
    format!(
        "{} {} via {}{ttl}{rate}, decided by {who}{dry}",
        d.kind, d.target, d.actuator
    )
}

/// Copies the WAL back into the database every [`CHECKPOINT_EVERY`] (PASSIVE: it never waits
/// for the writer nor stops it), until the ledger is dropped.
async fn checkpoint_loop(mut conn: AnyConnection, alive: Weak<()>, label: String) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        if alive.upgrade().is_none() {
            break;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(location = %label, error = %e, "decision ledger: checkpoint failed (the WAL grows until one succeeds)");
        }
    }
    let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await;
}

/// The PostgreSQL writer's connection and where it is (to scrub its password from errors).
struct Writer {
    conn: AnyConnection,
    location: Location,
}

/// What both writers do around a batch: number its story lines, and once it is committed
/// (or not) publish its events, count a failure, and answer its waiters.
struct Batches {
    /// [`Location::redacted`].
    label: String,
    /// The id of the next story line.
    next_event: i64,
    events: broadcast::Sender<DecisionEvent>,
    failures: Arc<AtomicU64>,
}

/// A batch's statements and what to publish once they are committed.
struct Planned {
    /// The first story line's id, taken again if the batch fails.
    first_event: i64,
    stmts: Vec<Stmt>,
    published: Vec<DecisionEvent>,
}

impl Batches {
    fn plan(&mut self, jobs: &[Job]) -> Planned {
        let first_event = self.next_event;
        let (stmts, published) = plan(jobs, &mut self.next_event);
        Planned {
            first_event,
            stmts,
            published,
        }
    }

    fn settle(&mut self, jobs: Vec<Job>, planned: Planned, result: Result<(), String>) {
        match &result {
            Ok(()) => {
                for e in planned.published {
                    let _ = self.events.send(e);
                }
            }
            Err(e) => {
                self.next_event = planned.first_event;
                let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(location = %self.label, error = %e, failures = n, rows = jobs.len(), "decision ledger: write failed, these decisions are not recorded");
            }
        }
        for j in jobs {
            if let Some(done) = j.done {
                let _ = done.send(result.clone());
            }
        }
    }
}

/// The PostgreSQL writer: commits what is queued, a batch per transaction, until the ledger
/// is dropped.
async fn write_loop(mut w: Writer, mut rx: mpsc::UnboundedReceiver<Job>, mut batches: Batches) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let planned = batches.plan(&jobs);
        let result = run(&mut w, &planned.stmts).await;
        batches.settle(jobs, planned, result);
    }
}

/// A value bound to a statement: the ledger's columns are integers and texts.
enum Val {
    Int(Option<i64>),
    Text(Option<String>),
}

/// One statement: its SQL with `?` for each parameter (SQLite takes it as it is; numbered
/// `$n` for PostgreSQL), and its values in order.
struct Stmt {
    sql: String,
    vals: Vec<Val>,
}

/// Story lines in one multi-row insert at most.
const LINES_PER_INSERT: usize = 500;
/// Statements with at most this many parameters are prepared once and kept (one decision, a
/// reply, an end: the shapes that recur); longer ones are one-offs.
const CACHED_PARAMS: usize = 64;

/// The statements that write `jobs` (the decisions' rows first, then their story lines in
/// multi-row inserts), and the events to publish once they are committed.
fn plan(jobs: &[Job], next_event: &mut i64) -> (Vec<Stmt>, Vec<DecisionEvent>) {
    let mut stmts = Vec::new();
    let mut published = Vec::new();
    let mut lines: Vec<(i64, DecisionId, i64, &'static str, String)> = Vec::new();
    for job in jobs {
        let at_s = job.at_ms / 1000;
        let mut story: Vec<(DecisionId, &'static str, String)> = Vec::new();
        match &job.op {
            Op::Insert(d, id) => {
                let (rules, sha, operator, reason) = match &d.decider {
                    Decider::Rule {
                        rules,
                        policy_sha256,
                    }
                    | Decider::Reflex {
                        rules,
                        policy_sha256,
                    } => (
                        Some(bounded(rules, MAX_NAME)),
                        Some(bounded(policy_sha256, 64)),
                        None,
                        None,
                    ),
                    Decider::Operator { identity, reason } => (
                        None,
                        None,
                        Some(bounded(identity, MAX_NAME)),
                        reason.as_deref().map(|r| bounded(r, MAX_TEXT)),
                    ),
                    Decider::Infection => (None, None, None, None),
                };
                stmts.push(Stmt {
                    sql: "INSERT INTO decisions (id, node, kind, target, actuator, actuator_firewall, decided_by, rules, policy_sha256, operator, reason, alert_origin, alert_seq, alert_kernel_ns, placed_at, ttl_s, expires_at, rate, dry_run) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)".into(),
                    vals: vec![
                        Val::Int(Some(*id)),
                        Val::Text(Some(d.node.clone())),
                        Val::Text(Some(d.kind.clone())),
                        Val::Text(Some(d.target.clone())),
                        Val::Text(Some(d.actuator.clone())),
                        Val::Int(Some(i64::from(d.actuator_firewall))),
                        Val::Text(Some(d.decider.by().into())),
                        Val::Text(rules),
                        Val::Text(sha),
                        Val::Text(operator),
                        Val::Text(reason),
                        Val::Text(d.cause.as_ref().map(|c| bounded(&c.origin, MAX_NAME))),
                        Val::Int(d.cause.as_ref().map(|c| c.seq as i64)),
                        Val::Int(d.cause.as_ref().map(|c| c.kernel_ns as i64)),
                        Val::Int(Some(d.placed_at as i64)),
                        Val::Int(d.ttl_s.map(|t| t as i64)),
                        Val::Int(d.expires_at.map(|t| t as i64)),
                        Val::Text(d.rate.as_deref().map(|r| bounded(r, MAX_NAME))),
                        Val::Int(Some(i64::from(d.dry_run))),
                    ],
                });
                if let Some(c) = &d.cause {
                    let detail = format!(
                        "{} (from {}, seq {}, raised at {} ns)",
                        bounded(&c.summary, MAX_TEXT),
                        bounded(&c.origin, MAX_NAME),
                        c.seq,
                        c.kernel_ns
                    );
                    story.push((*id, "alert", detail));
                }
                story.push((*id, "decided", decided_detail(d)));
            }
            Op::Renew {
                id,
                ttl_s,
                expires_at,
            } => {
                // `expires_at`: the later of the two, as the in-force map holds it.
                stmts.push(Stmt {
                    sql: "UPDATE decisions SET ttl_s = COALESCE(?, ttl_s), expires_at = ? WHERE id = ?".into(),
                    vals: vec![
                        Val::Int(ttl_s.map(|t| t as i64)),
                        Val::Int(expires_at.map(|t| t as i64)),
                        Val::Int(Some(*id)),
                    ],
                });
                let ttl = ttl_s.map(|t| format!(" for {t} s")).unwrap_or_default();
                story.push((*id, "renewed", format!("sent again{ttl}")));
            }
            Op::Reply { id, undo, ok, text } => {
                if !undo {
                    let sql = if *ok {
                        "UPDATE decisions SET confirmed_at = ?, reply = ? WHERE id = ?"
                    } else {
                        "UPDATE decisions SET failed_at = ?, error = ? WHERE id = ?"
                    };
                    stmts.push(Stmt {
                        sql: sql.into(),
                        vals: vec![
                            Val::Int(Some(at_s)),
                            Val::Text(Some(text.clone())),
                            Val::Int(Some(*id)),
                        ],
                    });
                }
                let kind = match (undo, ok) {
                    (false, true) => "confirmed",
                    (false, false) => "failed",
                    (true, true) => "undo_confirmed",
                    (true, false) => "undo_failed",
                };
                story.push((*id, kind, text.clone()));
            }
            Op::End { id, at, reason } => {
                stmts.push(Stmt {
                    sql: "UPDATE decisions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL".into(),
                    vals: vec![
                        Val::Int(Some(*at as i64)),
                        Val::Text(Some(reason.clone())),
                        Val::Int(Some(*id)),
                    ],
                });
                story.push((*id, "ended", reason.clone()));
            }
            Op::Note { id, kind, detail } => {
                if *id != 0 {
                    story.push((*id, kind, detail.clone()));
                }
            }
            Op::Verified {
                id,
                outcome,
                detail,
            } => {
                stmts.push(Stmt {
                    sql: "UPDATE decisions SET verification = ? WHERE id = ?".into(),
                    vals: vec![Val::Text(Some((*outcome).to_string())), Val::Int(Some(*id))],
                });
                story.push((*id, "verified", detail.clone()));
            }
        }
        for (decision, kind, detail) in story {
            published.push(DecisionEvent {
                decision,
                node: job.slot.0.clone(),
                action: job.slot.1.clone(),
                target: job.slot.2.clone(),
                at_ms: job.at_ms.max(0) as u64,
                kind: kind.to_string(),
                detail: detail.clone(),
            });
            lines.push((*next_event, decision, job.at_ms, kind, detail));
            *next_event += 1;
        }
    }
    // After every decision's row, which each line refers to.
    for chunk in lines.chunks(LINES_PER_INSERT) {
        let mut sql =
            String::from("INSERT INTO decision_events (id, decision, at_ms, kind, detail) VALUES ");
        let mut vals = Vec::with_capacity(chunk.len() * 5);
        for (i, (id, decision, at_ms, kind, detail)) in chunk.iter().enumerate() {
            sql.push_str(if i == 0 {
                "(?, ?, ?, ?, ?)"
            } else {
                ", (?, ?, ?, ?, ?)"
            });
            vals.extend([
                Val::Int(Some(*id)),
                Val::Int(Some(*decision)),
                Val::Int(Some(*at_ms)),
                Val::Text(Some((*kind).to_string())),
                Val::Text(Some(detail.clone())),
            ]);
        }
        stmts.push(Stmt { sql, vals });
    }
    (stmts, published)
}

/// `sql` with each `?` numbered `$n` from `*next` on (PostgreSQL takes only `$n`).
fn number(sql: &str, next: &mut usize, out: &mut String) {
    for c in sql.chars() {
        if c == '?' {
            out.push('$');
            out.push_str(&next.to_string());
            *next += 1;
        } else {
            out.push(c);
        }
    }
}

/// Commits `stmts` in one transaction on PostgreSQL (a single statement commits on its own),
/// one statement per round trip; on an error, nothing of them stays.
async fn run(w: &mut Writer, stmts: &[Stmt]) -> Result<(), String> {
    let wrap = stmts.len() > 1;
    let Err(e) = commit(&mut w.conn, stmts, wrap).await else {
        return Ok(());
    };
    if wrap {
        // Nothing of the batch stays; an error here means no transaction is open.
        let _ = sqlx::query("ROLLBACK").execute(&mut w.conn).await;
    }
    let mut text = e.to_string();
    if let Some(pw) = w.location.password() {
        text = text.replace(&pw, "***");
    }
    Err(text)
}

async fn commit(conn: &mut AnyConnection, stmts: &[Stmt], wrap: bool) -> Result<(), sqlx::Error> {
    if wrap {
        sqlx::query("BEGIN").execute(&mut *conn).await?;
    }
    for s in stmts {
        send(conn, s).await?;
    }
    if wrap {
        sqlx::query("COMMIT").execute(&mut *conn).await?;
    }
    Ok(())
}

/// One statement, its `?` numbered `$n` and its values bound in order.
async fn send(conn: &mut AnyConnection, s: &Stmt) -> Result<(), sqlx::Error> {
    let mut sql = String::new();
    let mut next = 1;
    number(&s.sql, &mut next, &mut sql);
    let mut q = sqlx::query(&sql).persistent(s.vals.len() <= CACHED_PARAMS);
    for v in &s.vals {
        q = match v {
            Val::Int(i) => q.bind(*i),
            Val::Text(t) => q.bind(t.clone()),
        };
    }
    q.execute(&mut *conn).await.map(|_| ())
}
