//! The SQLite ledger's writer: a thread of its own with its own connection, calling SQLite
//! directly (rusqlite, over the same bundled SQLite as sqlx).
//!
//! Why not sqlx here: sqlx runs a connection on a worker thread and answers through the
//! async runtime, so a decision's write went call task -> writer task -> sqlx's thread ->
//! writer task -> call task, four scheduler wake-ups in the closed loop's path; on a loaded
//! two-core host each can wait for a core. Here a caller waiting for its row commits the queue
//! itself when nobody else is (see [`Direct`]), and otherwise this thread does, answering
//! each waiter's oneshot. The statements are the ones [`super::plan`] makes for both
//! databases (`?` parameters); reads stay on sqlx.

use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql};

use super::{Batches, Job, Stmt, Val, CACHED_PARAMS, MAX_BATCH};

/// How long a write waits for a lock another connection holds (sqlx's default, which the
/// writer had): the checkpointer's PASSIVE checkpoint and an operator's `sqlite3` take locks.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Statements kept prepared: the shapes that recur (a decision, a renewal, a reply, an end,
/// a verification, story inserts of one to a dozen lines), with room to spare.
const CACHED_STATEMENTS: usize = 32;

/// Opens the writer's connection to the ledger file at `path` (already checked and created
/// by the opener): WAL, `synchronous = NORMAL`, no automatic checkpoint (the checkpointer
/// does it off this path), foreign keys enforced (as sqlx's connections have them). Each
/// setting is read back: a connection that did not take one is refused rather than written
/// with another durability.
pub(super) fn open(path: &Path) -> Result<Connection, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| e.to_string())?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA wal_autocheckpoint = 0; PRAGMA foreign_keys = ON",
    )
    .map_err(|e| e.to_string())?;
    conn.set_prepared_statement_cache_capacity(CACHED_STATEMENTS);
    let settings = settings(&conn).map_err(|e| e.to_string())?;
    if settings != WANTED {
        return Err(format!(
            "its writer's connection did not take its settings (journal_mode, synchronous, \
             wal_autocheckpoint, foreign_keys: {settings:?})"
        ));
    }
    Ok(conn)
}

/// What [`open`] sets: WAL, `synchronous = NORMAL` (1), no automatic checkpoint, foreign keys.
const WANTED: (&str, i64, i64, i64) = ("wal", 1, 0, 1);

/// The connection's journal mode, synchronous level, automatic checkpoint and foreign keys.
pub(super) fn settings(conn: &Connection) -> rusqlite::Result<(&'static str, i64, i64, i64)> {
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    let auto: i64 = conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))?;
    let fk: i64 = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    let mode = if mode.eq_ignore_ascii_case("wal") {
        "wal"
    } else {
        "not wal"
    };
    Ok((mode, sync, auto, fk))
}

/// The writer's connection and what it writes, held by whoever commits: the caller that
/// waits for its row (inline), or the thread.
struct State {
    conn: Connection,
    rx: Receiver<Job>,
    batches: Batches,
}

impl State {
    /// Commits everything queued, in order, in batches of at most [`MAX_BATCH`].
    fn drain(&mut self) {
        loop {
            let mut jobs = Vec::new();
            while jobs.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            if jobs.is_empty() {
                return;
            }
            let planned = self.batches.plan(&jobs);
            let result = run(&mut self.conn, &planned.stmts);
            self.batches.settle(jobs, planned, result);
        }
    }
}

/// The writing side of an SQLite ledger. Every row goes through one queue, so rows are
/// committed in the order they were queued whoever commits them. A caller that waits for its
/// row (a decision about to be sent) commits the queue itself when nobody else is committing:
/// the commit is a WAL append without fsync (tens of microseconds), cheaper than waking a
/// thread and being woken back, two scheduler wake-ups that on a busy two-core host can
/// each wait for a core. Otherwise (someone is committing, or nobody waits) the thread is
/// woken and commits it.
pub(super) struct Direct {
    tx: Sender<Job>,
    state: Arc<Mutex<State>>,
    /// Wakes the thread; one pending wake is enough, it drains everything.
    wake: SyncSender<()>,
}

impl Direct {
    /// Queues `job`; commits the queue at once if `inline` and nobody else is committing.
    /// False only if the writer is gone.
    pub(super) fn send(&self, job: Job, inline: bool) -> bool {
        if self.tx.send(job).is_err() {
            return false;
        }
        if inline {
            if let Ok(mut st) = self.state.try_lock() {
                st.drain();
                return true;
            }
        }
        match self.wake.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => true,
            Err(TrySendError::Disconnected(())) => false,
        }
    }
}

/// Starts the writer thread over the connection: it commits what is queued each time it is
/// woken, and once more after the ledger is dropped, then closes the connection.
pub(super) fn spawn(conn: Connection, batches: Batches) -> std::io::Result<Direct> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (wake, woken) = std::sync::mpsc::sync_channel(1);
    let state = Arc::new(Mutex::new(State { conn, rx, batches }));
    let st = state.clone();
    std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || write_thread(&st, &woken))?;
    Ok(Direct { tx, state, wake })
}

fn write_thread(state: &Mutex<State>, woken: &Receiver<()>) {
    let drain = || state.lock().unwrap_or_else(PoisonError::into_inner).drain();
    while woken.recv().is_ok() {
        drain();
    }
    // The ledger is gone: what it queued last is still written.
    drain();
}

/// Commits `stmts` in one transaction (a single statement commits on its own); on an error
/// nothing of them stays (the transaction is rolled back when dropped uncommitted).
fn run(conn: &mut Connection, stmts: &[Stmt]) -> Result<(), String> {
    match stmts {
        [] => Ok(()),
        [one] => execute(conn, one),
        _ => {
            let tx = conn.transaction().map_err(|e| e.to_string())?;
            for s in stmts {
                execute(&tx, s)?;
            }
            tx.commit().map_err(|e| e.to_string())
        }
    }
}

/// One statement, its values bound in order: prepared once and kept when it is of a shape
/// that recurs (few parameters), prepared for this once otherwise (a burst's story lines).
fn execute(conn: &Connection, s: &Stmt) -> Result<(), String> {
    let params = rusqlite::params_from_iter(s.vals.iter());
    let done = if s.vals.len() <= CACHED_PARAMS {
        conn.prepare_cached(&s.sql)
            .and_then(|mut st| st.execute(params))
    } else {
        conn.prepare(&s.sql).and_then(|mut st| st.execute(params))
    };
    done.map(|_| ()).map_err(|e| e.to_string())
}

impl ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Val::Int(Some(i)) => ToSqlOutput::from(*i),
            Val::Text(Some(t)) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            Val::Int(None) | Val::Text(None) => ToSqlOutput::Borrowed(ValueRef::Null),
        })
    }
}
