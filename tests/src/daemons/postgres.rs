//! PostgreSQL 15 (Debian's package) for a test: `initdb` into a private directory and the
//! server on a unix socket there only, run as `nobody` through `runuser` when the test is
//! root (PostgreSQL refuses root), stopped and removed when its guard drops.
//!
//! The helper itself is in `vespa_testkit::postgres`, so that the orchestrator's own unit
//! tests (the decision ledger's, on both databases) start the same server: that crate is a
//! dependency of this one, not the other way round.

pub use vespa_testkit::postgres::{start_for, Postgres};
