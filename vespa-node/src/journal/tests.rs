//! The journal file: framing read back, damage in the middle, a torn tail, compaction, the
//! older format, memory held at load.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vespa_proto::{Alert, AlertBody};

use super::file::Journal;
use super::load::Mark;
use super::record::{append, Kind, FILE_MAGIC, HEADER_LEN};

/// A directory of its own for one test, removed when dropped.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().expect("temp dir"))
    }
    fn file(&self) -> PathBuf {
        self.0.path().join("vo.journal")
    }
}

fn alert(origin: &str, seq: u64) -> Alert {
    Alert {
        origin: origin.into(),
        seq,
        path: vec![origin.into(), "VO".into()],
        timestamp_ns: seq,
        body: AlertBody::Text(format!("{origin} #{seq}")),
    }
}

/// Writes `alerts` as one batch, as the VO's writer does.
fn write(j: &mut Journal, alerts: &[Alert]) {
    let mut bytes = Vec::new();
    for a in alerts {
        append(&mut bytes, Kind::Alert, a).expect("encode");
    }
    let keyed: Vec<(Arc<str>, Alert)> = alerts
        .iter()
        .map(|a| (Arc::from(a.origin.as_str()), a.clone()))
        .collect();
    j.write(&bytes, &keyed).expect("write");
}

fn record_len(a: &Alert) -> u64 {
    let mut b = Vec::new();
    append(&mut b, Kind::Alert, a).expect("encode");
    b.len() as u64
}

/// Offset of each alert's record in a journal holding exactly `alerts`, and its end.
fn offsets(alerts: &[Alert]) -> Vec<u64> {
    let mut at = FILE_MAGIC.len() as u64;
    let mut out = vec![];
    for a in alerts {
        out.push(at);
        at += record_len(a);
    }
    out.push(at);
    out
}

fn seqs<'a>(alerts: impl IntoIterator<Item = &'a Alert>) -> Vec<u64> {
    alerts.into_iter().map(|a| a.seq).collect()
}

fn open(path: &Path, budget: u64, keep: usize) -> (Journal, super::Loaded) {
    Journal::open(path, budget, keep).expect("open")
}

const BIG: u64 = 64 << 20;

#[test]
fn batches_come_back_in_order_with_every_origins_mark() {
    let dir = Dir::new();
    let (mut j, loaded) = open(&dir.file(), BIG, 100);
    assert!(loaded.recent.is_empty());
    write(&mut j, &[alert("a", 10), alert("b", 5)]);
    write(&mut j, &[alert("a", 11)]);
    drop(j);
    let bytes = std::fs::read(dir.file()).expect("read");
    assert!(bytes.starts_with(FILE_MAGIC), "framed, not JSON lines");
    let (j, loaded) = open(&dir.file(), BIG, 100);
    assert_eq!(seqs(&loaded.recent), [10, 5, 11]);
    assert_eq!(loaded.alerts_total, 3);
    assert_eq!((loaded.damaged, loaded.torn_at), (0, None));
    let mut marks: Vec<(String, Mark)> = j.marks().map(|(k, m)| (k.into(), *m)).collect();
    marks.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        marks,
        [
            (
                "a".to_string(),
                Mark {
                    highest: 11,
                    count: 2,
                    first: 10
                }
            ),
            (
                "b".to_string(),
                Mark {
                    highest: 5,
                    count: 1,
                    first: 5
                }
            ),
        ]
    );
}

#[test]
fn damaged_records_in_the_middle_are_skipped_and_counted_and_the_rest_is_read() {
    let dir = Dir::new();
    let alerts: Vec<Alert> = (1..=10).map(|i| alert("a", i)).collect();
    let (mut j, _) = open(&dir.file(), BIG, 100);
    write(&mut j, &alerts);
    drop(j);
    let at = offsets(&alerts);
    let mut bytes = std::fs::read(dir.file()).expect("read");
    // Alert 3: one flipped bit in its payload. Alert 6: a length that cannot be (its
    // header's checksum no longer matches). Alert 8: its magic overwritten.
    bytes[at[2] as usize + HEADER_LEN + 5] ^= 0x10;
    bytes[at[5] as usize + 9] ^= 0x01;
    bytes[at[7] as usize] = b'x';
    std::fs::write(dir.file(), &bytes).expect("write");

    let read = super::read(&dir.file()).expect("read");
    assert_eq!(seqs(&read.alerts), [1, 2, 4, 5, 7, 9, 10]);
    assert_eq!((read.damaged, read.torn_bytes), (3, 0));
    assert_eq!(read.origins["a"], (10, 7));

    let (_, loaded) = open(&dir.file(), BIG, 100);
    assert_eq!(seqs(&loaded.recent), [1, 2, 4, 5, 7, 9, 10]);
    assert_eq!(loaded.damaged, 3);
    // Opening rewrote the file without the damage.
    let (_, again) = open(&dir.file(), BIG, 100);
    assert_eq!(again.damaged, 0);
    assert_eq!(seqs(&again.recent), [1, 2, 4, 5, 7, 9, 10]);
    assert_eq!(again.alerts_total, 7);
}

#[test]
fn a_torn_tail_is_cut_and_the_next_batch_is_not_glued_to_it() {
    let dir = Dir::new();
    let alerts: Vec<Alert> = (1..=3).map(|i| alert("a", i)).collect();
    let (mut j, _) = open(&dir.file(), BIG, 100);
    write(&mut j, &alerts);
    drop(j);
    let good = *offsets(&alerts).last().expect("end");
    // Half of a fourth record, as a VO killed inside a write leaves it.
    let mut rec = Vec::new();
    append(&mut rec, Kind::Alert, &alert("a", 4)).expect("encode");
    let mut bytes = std::fs::read(dir.file()).expect("read");
    bytes.extend_from_slice(&rec[..rec.len() / 2]);
    std::fs::write(dir.file(), &bytes).expect("write");

    let (mut j, loaded) = open(&dir.file(), BIG, 100);
    assert_eq!(seqs(&loaded.recent), [1, 2, 3]);
    assert_eq!(loaded.torn_at, Some(good));
    assert_eq!(std::fs::metadata(dir.file()).expect("meta").len(), good);
    write(&mut j, &[alert("a", 5)]);
    drop(j);
    let (_, loaded) = open(&dir.file(), BIG, 100);
    assert_eq!(seqs(&loaded.recent), [1, 2, 3, 5]);
    assert_eq!((loaded.damaged, loaded.torn_at), (0, None));
}

#[test]
fn a_file_cut_inside_its_header_or_empty_opens_as_an_empty_journal() {
    let dir = Dir::new();
    std::fs::write(dir.file(), &FILE_MAGIC[..5]).expect("write");
    let (mut j, loaded) = open(&dir.file(), BIG, 100);
    assert!(loaded.recent.is_empty());
    write(&mut j, &[alert("a", 1)]);
    drop(j);
    let (_, loaded) = open(&dir.file(), BIG, 100);
    assert_eq!(seqs(&loaded.recent), [1]);
}

#[test]
fn compaction_keeps_the_file_within_its_budget_and_every_origins_mark() {
    let dir = Dir::new();
    let budget = 64 * 1024;
    let keep = 40;
    let (mut j, _) = open(&dir.file(), budget, keep);
    let mut recent: std::collections::VecDeque<Alert> = Default::default();
    let mut total = 0u64;
    let mut largest = 0;
    let origins = ["agent_a", "agent_b", "agent_c"];
    for round in 0..1000u64 {
        let batch: Vec<Alert> = origins
            .iter()
            .enumerate()
            .map(|(i, o)| alert(o, 1_000 + round * 3 + i as u64))
            .collect();
        write(&mut j, &batch);
        for a in batch {
            total += 1;
            if recent.len() == keep {
                recent.pop_front();
            }
            recent.push_back(a);
        }
        largest = largest.max(j.len());
        if j.compaction_due() {
            j.compact(recent.make_contiguous(), total).expect("compact");
        }
    }
    assert!(
        total * record_len(&alert("agent_a", 2000)) > 4 * budget,
        "the test writes well past the budget"
    );
    let batch_bytes = 3 * record_len(&alert("agent_a", 2000));
    assert!(largest <= budget + batch_bytes, "{largest} bytes on disk");
    drop(j);

    let (j, loaded) = open(&dir.file(), budget, keep);
    assert_eq!(loaded.alerts_total, total, "get_alerts numbering continues");
    assert_eq!(seqs(&loaded.recent), seqs(&recent));
    for (i, o) in origins.iter().enumerate() {
        let m = j.marks().find(|(k, _)| k == o).map(|(_, m)| *m);
        assert_eq!(
            m,
            Some(Mark {
                highest: 1_000 + 999 * 3 + i as u64,
                count: 1000,
                first: 1_000 + i as u64
            }),
            "{o}"
        );
    }
    assert!(
        !dir.0.path().join("vo.journal.compacting").exists(),
        "no temporary file left"
    );
}

#[test]
fn loading_holds_only_the_newest_alerts_whatever_the_file_holds() {
    let dir = Dir::new();
    let (mut j, _) = open(&dir.file(), BIG, 10);
    for chunk in 0..50u64 {
        let batch: Vec<Alert> = (0..100).map(|i| alert("a", 1 + chunk * 100 + i)).collect();
        write(&mut j, &batch);
    }
    drop(j);
    let (j, loaded) = open(&dir.file(), BIG, 10);
    assert_eq!(loaded.recent.len(), 10);
    assert_eq!(loaded.recent.front().map(|a| a.seq), Some(4991));
    assert_eq!(loaded.alerts_total, 5000);
    assert_eq!(
        j.marks().next().map(|(_, m)| *m),
        Some(Mark {
            highest: 5000,
            count: 5000,
            first: 1
        })
    );
}

#[test]
fn a_journal_of_one_json_line_per_alert_is_read_and_rewritten_framed() {
    let dir = Dir::new();
    let line = |a: &Alert| format!("{}\n", serde_json::to_string(a).expect("json"));
    let text = [
        line(&alert("a", 1)),
        line(&alert("b", 7)),
        "{\"origin\":\"a\", not json\n".to_string(),
        line(&alert("a", 2)),
        "{\"origin\":\"a\",\"se".to_string(),
    ]
    .concat();
    std::fs::write(dir.file(), text).expect("write");

    let (j, loaded) = open(&dir.file(), BIG, 100);
    assert_eq!(seqs(&loaded.recent), [1, 7, 2]);
    assert_eq!(loaded.damaged, 1);
    assert!(loaded.torn_at.is_some());
    drop(j);
    let bytes = std::fs::read(dir.file()).expect("read");
    assert!(
        bytes.starts_with(FILE_MAGIC),
        "rewritten in the framed format"
    );
    let (j, loaded) = open(&dir.file(), BIG, 100);
    assert_eq!(seqs(&loaded.recent), [1, 7, 2]);
    assert_eq!((loaded.damaged, loaded.alerts_total), (0, 3));
    assert_eq!(
        j.marks().find(|(k, _)| *k == "a").map(|(_, m)| *m),
        Some(Mark {
            highest: 2,
            count: 2,
            first: 1
        })
    );
}

#[test]
fn a_file_in_neither_format_is_refused_and_left_as_it_was() {
    let dir = Dir::new();
    let text = b"root:x:0:0:root:/root:/bin/bash\n".repeat(10);
    std::fs::write(dir.file(), &text).expect("write");
    let e = Journal::open(&dir.file(), BIG, 100).err().expect("refused");
    assert!(e.to_string().contains("not an alert journal"), "{e}");
    assert_eq!(std::fs::read(dir.file()).expect("read"), text);
}
