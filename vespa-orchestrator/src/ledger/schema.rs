//! The ledger's tables, created at open when missing. Plain SQL that SQLite and PostgreSQL
//! both take: `BIGINT` keys assigned by the orchestrator (no `AUTOINCREMENT`/`SERIAL`, no
//! `RETURNING`), `$n` parameters, every number a `BIGINT` (Unix seconds, events in Unix
//! milliseconds, 0/1 flags) so that both hand back the same 64-bit integers (a file made
//! with `INTEGER` flags reads the same: SQLite gives both the same affinity).
//!
//! Which schema a database holds: `PRAGMA user_version` in an SQLite file, the
//! `ledger_schema` table in PostgreSQL (which has no such pragma). A newer one than this
//! build knows stops the start rather than being written to.

/// The schema this build writes.
pub const VERSION: i64 = 1;

/// Statements run in order at open (each idempotent).
pub const CREATE: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS decisions (
        id BIGINT PRIMARY KEY,
        node TEXT NOT NULL,
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        actuator TEXT NOT NULL,
        actuator_firewall BIGINT NOT NULL DEFAULT 0,
        decided_by TEXT NOT NULL,
        rules TEXT,
        policy_sha256 TEXT,
        operator TEXT,
        reason TEXT,
        alert_origin TEXT,
        alert_seq BIGINT,
        alert_kernel_ns BIGINT,
        placed_at BIGINT NOT NULL,
        ttl_s BIGINT,
        expires_at BIGINT,
        rate TEXT,
        dry_run BIGINT NOT NULL DEFAULT 0,
        confirmed_at BIGINT,
        reply TEXT,
        failed_at BIGINT,
        error TEXT,
        verification TEXT,
        ended_at BIGINT,
        end_reason TEXT
    )",
    "CREATE INDEX IF NOT EXISTS decisions_in_force ON decisions (ended_at, node, kind, target)",
    "CREATE INDEX IF NOT EXISTS decisions_placed ON decisions (placed_at)",
    "CREATE TABLE IF NOT EXISTS decision_events (
        id BIGINT PRIMARY KEY,
        decision BIGINT NOT NULL REFERENCES decisions (id),
        at_ms BIGINT NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS decision_events_of ON decision_events (decision, id)",
];

/// PostgreSQL's record of the schema version (one row).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub const POSTGRES_VERSION_TABLE: &[&str] =
    &["CREATE TABLE IF NOT EXISTS ledger_schema (version BIGINT NOT NULL)"];
