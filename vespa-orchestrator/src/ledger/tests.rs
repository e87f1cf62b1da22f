use super::*;

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

#[tokio::test]
async fn a_decision_is_placed_confirmed_ended_and_tells_its_story() {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = Ledger::open(&dir.path().join("ledger.db"))
        .await
        .expect("open");
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

#[tokio::test]
async fn listings_keep_in_force_by_default_and_history_with_all_or_since() {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = Ledger::open(&dir.path().join("l.db")).await.expect("open");
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

#[tokio::test]
async fn a_reopened_ledger_restores_what_is_in_force_and_keeps_counting_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("l.db");
    let (a, b) = {
        let l = Ledger::open(&path).await.expect("open");
        let (a, _) = l.place(block("192.0.2.1", rule()));
        let (b, w) = l.place(block("192.0.2.2", rule()));
        l.end(&subject("192.0.2.1"), "calm");
        w.wait().await.expect("written");
        l.flush().await.expect("flush");
        (a, b)
    };
    let l = Ledger::open(&path).await.expect("reopen");
    let back = l.to_restore("VO").await.expect("restore");
    assert_eq!(back.iter().map(|d| d.id).collect::<Vec<_>>(), [b]);
    assert!(l.to_restore("HO_PH").await.expect("restore").is_empty());
    assert_eq!(l.in_force(&subject("192.0.2.2")).map(|f| f.id), Some(b));
    let (c, _) = l.place(block("192.0.2.3", rule()));
    assert!(c > a.max(b), "ids are never reused");
}

#[tokio::test]
async fn text_from_the_outside_is_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = Ledger::open(&dir.path().join("l.db")).await.expect("open");
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
    let mut c = SqliteConnection::connect_with(&opts(&path))
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

#[tokio::test]
async fn a_verification_is_recorded_with_the_decision_in_force_and_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let l = Ledger::open(&path).await.expect("open");
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
    let l = Ledger::open(&path).await.expect("reopen");
    let all = l.list(&Query::default()).await.expect("list");
    let v: Vec<(DecisionId, Option<&str>)> = all
        .iter()
        .map(|d| (d.id, d.verification.as_deref()))
        .collect();
    assert_eq!(v, [(id, Some("passed")), (other, None)]);
}
