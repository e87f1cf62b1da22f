//! The ledger's behaviour, each test on both databases: an SQLite file in a temporary
//! directory (`::sqlite`) and a PostgreSQL server of the test's own (`::postgres`, see
//! `vespa_testkit::postgres`: it fails under VESPA_REQUIRE_EBPF=1 when the server cannot
//! start, else skips saying why). What only a file can show (a damaged one) is SQLite's.

use super::*;
use sqlx::sqlite::SqliteConnection;
use vespa_testkit::postgres::{self, Postgres};

/// A fresh, empty ledger database of one kind, removed when dropped.
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(Postgres),
}

impl Db {
    fn sqlite() -> Db {
        Db::Sqlite(tempfile::tempdir().expect("tempdir"))
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    fn postgres(test: &str) -> Option<Db> {
        postgres::start_for(test).map(Db::Postgres)
    }

    fn location(&self) -> Location {
        match self {
            Db::Sqlite(dir) => Location::File(dir.path().join("ledger.db")),
            Db::Postgres(p) => Location::Postgres(p.url()),
        }
    }

    async fn open(&self) -> Ledger {
        Ledger::open_at(self.location()).await.expect("open")
    }
}

/// Runs each named test (an `async fn(Db)`) on SQLite and on PostgreSQL.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Db::sqlite()).await
            }

            #[cfg(feature = "postgres")]
            #[tokio::test]
            async fn postgres() {
                let test = concat!("ledger::tests::", stringify!($name), "::postgres");
                if let Some(db) = super::Db::postgres(test) {
                    super::$name(db).await
                }
            }
        }
    )*};
}

on_both!(
    a_decision_is_placed_confirmed_ended_and_tells_its_story,
    listings_keep_in_force_by_default_and_history_with_all_or_since,
    a_reopened_ledger_restores_what_is_in_force_and_keeps_counting_ids,
    text_from_the_outside_is_bounded,
    a_burst_is_written_in_few_commits_and_in_order,
    a_verification_is_recorded_with_the_decision_in_force_and_survives_reopening,
    a_failed_batch_is_reported_to_its_waiters_and_the_writer_goes_on,
    every_field_written_reads_back_as_it_was_decided,
);

fn block(target: &str, decider: Decider) -> NewDecision {
    NewDecision {
        node: "VO".into(),
        kind: "block".into(),
        target: target.into(),
        actuator: "Agent_FW".into(),
        actuator_firewall: true,
        decider,
        cause: None,
        placed_at: 1_000,
        ttl_s: Some(600),
        expires_at: Some(1_600),
        rate: None,
        dry_run: false,
    }
}

fn rule() -> Decider {
    Decider::Rule {
        rules: "syn-flood".into(),
        policy_sha256: "ab".repeat(32),
    }
}

fn subject(target: &str) -> Subject {
    Subject {
        node: "VO".into(),
        kind: "block".into(),
        target: target.into(),
    }
}

async fn a_decision_is_placed_confirmed_ended_and_tells_its_story(db: Db) {
    let l = db.open().await;
    let mut events = l.subscribe();
    let mut d = block("198.51.100.7", rule());
    d.cause = Some(Cause {
        origin: "Agent_Conn".into(),
        seq: 42,
        kernel_ns: 123_456,
        summary: "syn threshold".into(),
    });
    let (id, written) = l.place(d);
    written.wait().await.expect("written");
    assert_eq!(l.in_force(&subject("198.51.100.7")).map(|f| f.id), Some(id));
    l.reply(
        id,
        &subject("198.51.100.7"),
        false,
        true,
        "blocked 198.51.100.7\n",
    );
    let (again, w) = l.place(block("198.51.100.7", rule()));
    w.wait().await.expect("renewal written");
    assert_eq!(again, id, "the same effect in force is the same decision");
    let (ended, w) = l
        .end(&subject("198.51.100.7"), "released by operator token:1234")
        .expect("in force");
    w.wait().await.expect("end written");
    assert_eq!(ended, id);
    assert!(l.end(&subject("198.51.100.7"), "again").is_none());
    l.reply(id, &subject("198.51.100.7"), true, true, "released");
    l.flush().await.expect("flush");

    let story = l.show(id).await.expect("show").expect("found");
    let d = &story.decision;
    assert_eq!(d.decided_by, "rule");
    assert_eq!(d.rules.as_deref(), Some("syn-flood"));
    assert_eq!(d.alert_origin.as_deref(), Some("Agent_Conn"));
    assert_eq!((d.alert_seq, d.alert_kernel_ns), (Some(42), Some(123_456)));
    assert_eq!(d.reply.as_deref(), Some("blocked 198.51.100.7"));
    assert!(d.confirmed_at.is_some() && d.ended_at.is_some());
    assert_eq!(
        d.end_reason.as_deref(),
        Some("released by operator token:1234")
    );
    let kinds: Vec<&str> = story.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "alert",
            "decided",
            "confirmed",
            "renewed",
            "ended",
            "undo_confirmed"
        ]
    );
    let first = events.recv().await.expect("event");
    assert_eq!((first.decision, first.kind.as_str()), (id, "alert"));
    assert_eq!(first.target, "198.51.100.7");
    assert!(l.show(id + 100).await.expect("show").is_none());
    let last = l.last(&subject("198.51.100.7")).await.expect("last");
    assert_eq!(last.map(|d| (d.id, d.ended_at.is_some())), Some((id, true)));
    assert!(l
        .last(&subject("192.0.2.99"))
        .await
        .expect("last")
        .is_none());
}

async fn listings_keep_in_force_by_default_and_history_with_all_or_since(db: Db) {
    let l = db.open().await;
    let mut old = block("192.0.2.1", rule());
    old.placed_at = 100;
    old.expires_at = Some(700);
    let (a, _) = l.place(old);
    let (b, _) = l.place(block(
        "192.0.2.2",
        Decider::Operator {
            identity: "token:ab12".into(),
            reason: Some("ticket 7".into()),
        },
    ));
    assert_eq!(l.expire(800, "ttl"), 1, "the first ran out");
    l.flush().await.expect("flush");
    let in_force = l
        .list(&Query {
            in_force_only: true,
            ..Query::default()
        })
        .await
        .expect("list");
    assert_eq!(in_force.iter().map(|d| d.id).collect::<Vec<_>>(), [b]);
    assert_eq!(in_force[0].operator.as_deref(), Some("token:ab12"));
    assert_eq!(in_force[0].reason.as_deref(), Some("ticket 7"));
    let all = l.list(&Query::default()).await.expect("list");
    assert_eq!(all.iter().map(|d| d.id).collect::<Vec<_>>(), [a, b]);
    assert_eq!(all[0].end_reason.as_deref(), Some("ttl"));
    assert_eq!(all[0].ended_at, Some(700), "ended at its expiry");
    let since = l
        .list(&Query {
            since: Some(900),
            ..Query::default()
        })
        .await
        .expect("list");
    assert_eq!(
        since.iter().map(|d| d.id).collect::<Vec<_>>(),
        [b],
        "the first ended before"
    );
}

async fn a_reopened_ledger_restores_what_is_in_force_and_keeps_counting_ids(db: Db) {
    let (a, b) = {
        let l = db.open().await;
        let (a, _) = l.place(block("192.0.2.1", rule()));
        let (b, w) = l.place(block("192.0.2.2", rule()));
        l.end(&subject("192.0.2.1"), "calm");
        w.wait().await.expect("written");
        l.flush().await.expect("flush");
        (a, b)
    };
    let l = db.open().await;
    let back = l.to_restore("VO").await.expect("restore");
    assert_eq!(back.iter().map(|d| d.id).collect::<Vec<_>>(), [b]);
    assert!(l.to_restore("HO_PH").await.expect("restore").is_empty());
    assert_eq!(l.in_force(&subject("192.0.2.2")).map(|f| f.id), Some(b));
    let (c, _) = l.place(block("192.0.2.3", rule()));
    assert!(c > a.max(b), "ids are never reused");
}

async fn text_from_the_outside_is_bounded(db: Db) {
    let l = db.open().await;
    let long = "x".repeat(100_000);
    let (id, w) = l.place(block(&long, rule()));
    w.wait().await.expect("written");
    l.reply(
        id,
        &subject(&long),
        false,
        false,
        &format!("{long}\n\u{1b}[31m"),
    );
    l.flush().await.expect("flush");
    let d = l.show(id).await.expect("show").expect("found").decision;
    assert_eq!(d.target.chars().count(), MAX_NAME);
    let error = d.error.expect("failed");
    assert_eq!(error.chars().count(), MAX_TEXT);
    assert!(!error.chars().any(char::is_control));
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_with_its_path_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let garbage = b"this is not an SQLite database, but someone's notes\n".repeat(200);
    std::fs::write(&path, &garbage).expect("write");
    let e = Ledger::open(&path).await.expect_err("refused").to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("never empties"), "{e}");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        garbage,
        "left as it was"
    );
}

#[tokio::test]
async fn a_damaged_database_is_refused_with_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    {
        let l = Ledger::open(&path).await.expect("open");
        for i in 0..2_000 {
            let _ = l.place(block(&format!("10.0.{}.{}", i / 250, i % 250), rule()));
        }
        l.flush().await.expect("flush");
    }
    // Everything into the main file, then damage its pages past the header (the header
    // itself still says SQLite).
    let mut c =
        SqliteConnection::connect_with(&sqlx::sqlite::SqliteConnectOptions::new().filename(&path))
            .await
            .expect("connect");
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut c)
        .await
        .expect("checkpoint");
    c.close().await.expect("close");
    let mut bytes = std::fs::read(&path).expect("read");
    assert!(bytes.len() > 16_384, "{} bytes", bytes.len());
    for b in &mut bytes[4096 + 100..12_288] {
        *b = 0xa5;
    }
    std::fs::write(&path, &bytes).expect("write");
    let _ = std::fs::remove_file(dir.path().join("ledger.db-wal"));
    let e = Ledger::open(&path).await.expect_err("refused").to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert_eq!(std::fs::read(&path).expect("read"), bytes, "left as it was");
}

async fn a_verification_is_recorded_with_the_decision_in_force_and_survives_reopening(db: Db) {
    let l = db.open().await;
    let (id, w) = l.place(block("198.51.100.7", rule()));
    w.wait().await.expect("written");
    let (other, w) = l.place(block("198.51.100.8", rule()));
    w.wait().await.expect("written");
    assert_eq!(
        l.verified(
            &subject("198.51.100.7"),
            "failed",
            "failed: 150 > 100 at the deadline"
        ),
        Some(id)
    );
    assert_eq!(
        l.verified(&subject("203.0.113.1"), "passed", "passed: 0 <= 100"),
        None,
        "nothing in force for it: not recorded"
    );
    l.flush().await.expect("flush");
    let story = l.show(id).await.expect("read").expect("the decision");
    assert_eq!(story.decision.verification.as_deref(), Some("failed"));
    let line = story.events.last().expect("a line");
    assert_eq!(
        (line.kind.as_str(), line.detail.as_str()),
        ("verified", "failed: 150 > 100 at the deadline")
    );
    // The later outcome of a renewed decision replaces the earlier one.
    l.verified(&subject("198.51.100.7"), "passed", "passed: 3 <= 100");
    l.flush().await.expect("flush");
    drop(l);
    let l = db.open().await;
    let all = l.list(&Query::default()).await.expect("list");
    let v: Vec<(DecisionId, Option<&str>)> = all
        .iter()
        .map(|d| (d.id, d.verification.as_deref()))
        .collect();
    assert_eq!(v, [(id, Some("passed")), (other, None)]);
}

/// A burst (an import) is committed in batches, every row and story line in the order it was
/// queued, and a reply queued behind its decision lands on it.
async fn a_burst_is_written_in_few_commits_and_in_order(db: Db) {
    let l = db.open().await;
    let mut ids = Vec::new();
    for i in 0..1_500 {
        let (id, _) = l.place(block(&format!("10.1.{}.{}", i / 250, i % 250), rule()));
        l.reply(id, &subject("unused"), false, true, &format!("blocked {i}"));
        ids.push(id);
    }
    let (gone, w) = l.end(&subject("10.1.0.0"), "released").expect("in force");
    w.wait().await.expect("written");
    assert_eq!(l.write_failures(), 0);
    let all = l.list(&Query::default()).await.expect("list");
    assert_eq!(all.iter().map(|d| d.id).collect::<Vec<_>>(), ids);
    assert!(
        all.iter().all(|d| d.confirmed_at.is_some()),
        "every reply on its row"
    );
    assert_eq!(all[0].id, gone);
    assert_eq!(all[0].end_reason.as_deref(), Some("released"));
    let story = l.show(gone).await.expect("show").expect("found");
    let kinds: Vec<&str> = story.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["decided", "confirmed", "ended"]);
    assert_eq!(story.events[1].detail, "blocked 0");
}

#[test]
fn a_postgres_url_is_shown_without_its_password() {
    let at = Location::of(Path::new(
        "postgres://vespa:s3cr%40t@db.example:5433/ledger",
    ));
    assert!(matches!(at, Location::Postgres(_)));
    assert_eq!(at.redacted(), "postgres://vespa:***@db.example:5433/ledger");
    assert_eq!(format!("{at:?}"), at.redacted());
    assert_eq!(at.password().as_deref(), Some("s3cr@t"));
    let q = Location::of(Path::new(
        "postgresql://vespa@localhost/ledger?host=/run/pg&password=hunter2",
    ));
    assert!(!q.redacted().contains("hunter2"), "{}", q.redacted());
    assert!(
        q.redacted().contains("host=%2Frun%2Fpg"),
        "{}",
        q.redacted()
    );
    let bad = redact_url("postgres://vespa:hunter2@[::1");
    assert!(!bad.contains("hunter2"), "{bad}");
    assert!(matches!(
        Location::of(Path::new("state/ledger.db")),
        Location::File(_)
    ));
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_refused_postgres_login_names_the_database_without_the_password() {
    let Some(pg) = postgres::start_for(
        "ledger::tests::a_refused_postgres_login_names_the_database_without_the_password",
    ) else {
        return;
    };
    let wrong = "Wr0ngPassw0rd";
    let url = pg.url_with_password(wrong);
    let e = Ledger::open(Path::new(&url)).await.expect_err("refused");
    let e = format!("{e:#}");
    assert!(!e.contains(wrong), "{e}");
    assert!(e.contains("postgres://vespa:***@localhost/postgres"), "{e}");
    assert!(e.contains("cannot be used"), "{e}");
    let l = Ledger::open(Path::new(&pg.url())).await.expect("open");
    assert!(!l.location().contains(&pg.password), "{}", l.location());
    assert!(!format!("{l:?}").contains(&pg.password));
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_postgres_ledger_of_a_newer_schema_is_refused() {
    let Some(pg) =
        postgres::start_for("ledger::tests::a_postgres_ledger_of_a_newer_schema_is_refused")
    else {
        return;
    };
    let at = Location::Postgres(pg.url());
    {
        let l = Ledger::open_at(at.clone()).await.expect("open");
        let mut c = l.inner.read.acquire().await.expect("connection");
        sqlx::query("UPDATE ledger_schema SET version = 99")
            .execute(&mut *c)
            .await
            .expect("update");
    }
    let e = Ledger::open_at(at).await.expect_err("refused").to_string();
    assert!(e.contains("schema is version 99"), "{e}");
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_second_orchestrator_on_one_postgres_ledger_is_refused_naming_the_holder() {
    let Some(pg) = postgres::start_for(
        "ledger::tests::a_second_orchestrator_on_one_postgres_ledger_is_refused_naming_the_holder",
    ) else {
        return;
    };
    let at = Location::Postgres(pg.url());
    let first = Ledger::open_at(at.clone()).await.expect("first");
    let (id, w) = first.place(block("198.51.100.9", rule()));
    w.wait().await.expect("written");
    let e = format!(
        "{:#}",
        Ledger::open_at(at.clone())
            .await
            .expect_err("the second must be refused")
    );
    assert!(e.contains("is in use by another process"), "{e}");
    assert!(
        e.contains(&format!("vespa-orchestrator pid {}", std::process::id())),
        "{e}"
    );
    assert!(!e.contains(&pg.password), "{e}");
    // The refused one wrote nothing: the holder's decision is the only one.
    let listed = first.list(&Query::default()).await.expect("list");
    assert_eq!(listed.iter().map(|d| d.id).collect::<Vec<_>>(), [id]);
    // Released with its holder: the next opener takes it (its wait covers the server ending
    // the first session) and keeps counting ids.
    drop(first);
    let next = Ledger::open_at(at).await.expect("free again");
    let (again, w) = next.place(block("198.51.100.10", rule()));
    w.wait().await.expect("written");
    assert_eq!(again, id + 1);
}

/// Runs `sql` on the ledger's database from outside the ledger (an operator's hand).
async fn outside(db: &Db, l: &Ledger, sql: &str) {
    match db {
        Db::Sqlite(_) => {
            let Location::File(path) = db.location() else {
                unreachable!("a file")
            };
            let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
            let mut c = SqliteConnection::connect_with(&opts)
                .await
                .expect("connect");
            sqlx::query(sql).execute(&mut c).await.expect("outside");
            c.close().await.expect("close");
        }
        Db::Postgres(_) => {
            let mut c = l.inner.read.acquire().await.expect("connection");
            sqlx::query(sql).execute(&mut *c).await.expect("outside");
        }
    }
}

/// A batch the database refuses is counted, answered as an error to whoever waits on it,
/// leaves nothing, and the writer goes on with the next. (Here: the decision's row was
/// deleted by hand, so its end's story line breaks the foreign key.)
async fn a_failed_batch_is_reported_to_its_waiters_and_the_writer_goes_on(db: Db) {
    let l = db.open().await;
    let (gone, w) = l.place(block("192.0.2.50", rule()));
    w.wait().await.expect("written");
    let (kept, w) = l.place(block("192.0.2.51", rule()));
    w.wait().await.expect("written");
    outside(
        &db,
        &l,
        &format!("DELETE FROM decision_events WHERE decision = {gone}"),
    )
    .await;
    outside(&db, &l, &format!("DELETE FROM decisions WHERE id = {gone}")).await;
    let (_, w) = l.end(&subject("192.0.2.50"), "calm").expect("in force");
    let e = w.wait().await.expect_err("its line has no decision");
    assert!(e.to_lowercase().contains("foreign key"), "{e}");
    assert_eq!(l.write_failures(), 1, "the refused batch is counted");
    // Nothing of it stays, and the next write lands, its story numbered on.
    let (next, w) = l.place(block("192.0.2.52", rule()));
    w.wait().await.expect("the writer goes on");
    assert_eq!(l.write_failures(), 1);
    let story = l.show(next).await.expect("show").expect("written");
    let kinds: Vec<&str> = story.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["decided"]);
    assert!(l.show(gone).await.expect("show").is_none());
    let all = l.list(&Query::default()).await.expect("list");
    assert_eq!(all.iter().map(|d| d.id).collect::<Vec<_>>(), [kept, next]);
}

/// What the writer stores is what the readers give back, every column of both kinds of
/// decider: the writer and the readers are different drivers on SQLite.
async fn every_field_written_reads_back_as_it_was_decided(db: Db) {
    let l = db.open().await;
    let before = (unix_ms() / 1000) as u64;
    let mut d = block("2001:db8::7", rule());
    d.kind = "throttle".into();
    d.rate = Some("1000pps".into());
    d.cause = Some(Cause {
        origin: "Agent_Conn".into(),
        seq: u64::from(u32::MAX) + 5,
        kernel_ns: 1_700_000_000_123_456_789,
        summary: "rate above 10000/s".into(),
    });
    let about = Subject {
        node: "VO".into(),
        kind: "throttle".into(),
        target: "2001:db8::7".into(),
    };
    let (a, w) = l.place(d);
    w.wait().await.expect("written");
    l.reply(a, &about, false, true, "throttled 2001:db8::7 at 1000pps");
    assert_eq!(l.verified(&about, "passed", "passed: 3 <= 100"), Some(a));
    let (_, w) = l.end(&about, "calm for 120 s").expect("in force");
    w.wait().await.expect("written");
    let mut op = block(
        "198.51.100.9",
        Decider::Operator {
            identity: "key:ops".into(),
            reason: Some("ticket 12".into()),
        },
    );
    op.ttl_s = None;
    op.expires_at = None;
    op.dry_run = true;
    op.actuator_firewall = false;
    let (b, w) = l.place(op);
    w.wait().await.expect("written");
    l.reply(b, &subject("198.51.100.9"), false, false, "no such device");
    l.flush().await.expect("flush");
    let after = (unix_ms() / 1000) as u64;

    let got = l.list(&Query::default()).await.expect("list");
    assert_eq!(got.len(), 2);
    let (ga, gb) = (&got[0], &got[1]);
    let within = |t: Option<u64>| t.is_some_and(|t| (before..=after).contains(&t));
    assert!(within(ga.confirmed_at) && within(ga.ended_at), "{ga:?}");
    assert!(within(gb.failed_at), "{gb:?}");
    let want_a = Decision {
        id: a,
        node: "VO".into(),
        kind: "throttle".into(),
        target: "2001:db8::7".into(),
        actuator: "Agent_FW".into(),
        actuator_firewall: true,
        decided_by: "rule".into(),
        rules: Some("syn-flood".into()),
        policy_sha256: Some("ab".repeat(32)),
        operator: None,
        reason: None,
        alert_origin: Some("Agent_Conn".into()),
        alert_seq: Some(u64::from(u32::MAX) + 5),
        alert_kernel_ns: Some(1_700_000_000_123_456_789),
        placed_at: 1_000,
        ttl_s: Some(600),
        expires_at: Some(1_600),
        rate: Some("1000pps".into()),
        dry_run: false,
        confirmed_at: ga.confirmed_at,
        reply: Some("throttled 2001:db8::7 at 1000pps".into()),
        failed_at: None,
        error: None,
        verification: Some("passed".into()),
        ended_at: ga.ended_at,
        end_reason: Some("calm for 120 s".into()),
    };
    assert_eq!(ga, &want_a);
    let want_b = Decision {
        id: b,
        node: "VO".into(),
        kind: "block".into(),
        target: "198.51.100.9".into(),
        actuator: "Agent_FW".into(),
        actuator_firewall: false,
        decided_by: "operator".into(),
        rules: None,
        policy_sha256: None,
        operator: Some("key:ops".into()),
        reason: Some("ticket 12".into()),
        alert_origin: None,
        alert_seq: None,
        alert_kernel_ns: None,
        placed_at: 1_000,
        ttl_s: None,
        expires_at: None,
        rate: None,
        dry_run: true,
        confirmed_at: None,
        reply: None,
        failed_at: gb.failed_at,
        error: Some("no such device".into()),
        verification: None,
        ended_at: None,
        end_reason: None,
    };
    assert_eq!(gb, &want_b);
    let story = l.show(a).await.expect("show").expect("found");
    let lines: Vec<(&str, &str)> = story
        .events
        .iter()
        .map(|e| (e.kind.as_str(), e.detail.as_str()))
        .collect();
    assert_eq!(
        lines,
        [
            (
                "alert",
                "rate above 10000/s (from Agent_Conn, seq 4294967300, raised at \
                 1700000000123456789 ns)"
            ),
            (
                "decided",
                "throttle 2001:db8::7 via Agent_FW for 600 s at 1000pps, decided by rule \
                 syn-flood"
            ),
            ("confirmed", "throttled 2001:db8::7 at 1000pps"),
            ("verified", "passed: 3 <= 100"),
            ("ended", "calm for 120 s"),
        ]
    );
    assert!(story.events.iter().all(|e| e.decision == a));
    let ms = (before * 1000)..=((after + 1) * 1000);
    assert!(
        story.events.iter().all(|e| ms.contains(&e.at_ms)),
        "{story:?}"
    );
}

/// Written before sent, under contention: many call tasks on several runtime threads place at
/// once, and each, once its wait is over, finds its row and story through the readers (the
/// writer thread answers only after the commit, each waiter with its own batch's outcome).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_each_find_their_row_committed_once_their_wait_is_over() {
    let db = Db::sqlite();
    let l = db.open().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..400u32 {
        let l = l.clone();
        tasks.spawn(async move {
            let target = format!("10.9.{}.{}", i / 200, i % 200);
            let (id, w) = l.place(block(&target, rule()));
            w.wait().await.expect("written");
            let story = l
                .show(id)
                .await
                .expect("show")
                .expect("committed before the answer");
            assert_eq!(story.decision.target, target);
            assert_eq!(story.events.len(), 1, "its story line in the same commit");
            id
        });
    }
    let mut ids = Vec::new();
    while let Some(id) = tasks.join_next().await {
        ids.push(id.expect("a caller failed"));
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 400, "one id each");
    assert_eq!(l.write_failures(), 0);
    let all = l.list(&Query::default()).await.expect("list");
    assert_eq!(all.iter().map(|d| d.id).collect::<Vec<_>>(), ids);
}

/// The writer thread's connection keeps the durability the module promises (each setting is
/// per connection but WAL, so a writer opened without them would commit differently).
#[tokio::test]
async fn the_writer_threads_connection_is_in_wal_with_synchronous_normal_and_no_autocheckpoint() {
    let db = Db::sqlite();
    let Location::File(path) = db.location() else {
        unreachable!("an SQLite database")
    };
    drop(db.open().await);
    let conn = direct::open(&path).expect("open");
    assert_eq!(
        direct::settings(&conn).expect("settings"),
        ("wal", 1, 0, 1),
        "journal_mode, synchronous, wal_autocheckpoint, foreign_keys"
    );
}

/// On SQLite a decision the caller waits for is committed by the caller itself when nobody
/// else is committing: its wait is over before it is first polled, with the rows queued
/// before it (not waited for) committed ahead of it, in order.
#[tokio::test]
async fn a_waited_decision_is_committed_by_its_caller_with_what_was_queued_before_it() {
    let db = Db::sqlite();
    let l = db.open().await;
    let (first, w) = l.place(block("192.0.2.60", rule()));
    w.wait().await.expect("written");
    // Not waited for: queued for the thread.
    l.reply(first, &subject("192.0.2.60"), false, true, "blocked\n");
    let (second, w) = l.place(block("192.0.2.61", rule()));
    tokio::time::timeout(Duration::ZERO, w.wait())
        .await
        .expect("committed before its wait was polled")
        .expect("written");
    let story = l.show(first).await.expect("show").expect("the first");
    assert_eq!(
        story.decision.reply.as_deref(),
        Some("blocked"),
        "the reply queued before it"
    );
    assert!(l.show(second).await.expect("show").is_some());
}
