//! Reading a journal from the start with bounded memory: only what de-duplication needs (a
//! [`Mark`] per origin) and the last `keep` alerts are held, however long the file is.
//!
//! A damaged stretch (a bad checksum, a length that cannot be, a payload that does not parse)
//! is skipped and counted, and reading goes on at the next record whose header and payload
//! both check out. Damage with no valid record after it is a torn tail: the place where it
//! starts is reported, for the caller to cut there.
//!
//! The format before framing (one alert as a JSON line) is recognised by its first byte, `{`,
//! and read line by line with the same rules: a line that does not parse is skipped and
//! counted, a last line without its newline is a torn tail.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Seek, SeekFrom};

use vespa_proto::Alert;

use super::record::{
    Header, Kind, MetaRecord, OriginRecord, FILE_MAGIC, HEADER_LEN, MAGIC, MAX_PAYLOAD,
};

/// What de-duplication keeps of one origin: everything at or below `highest` was processed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    /// Highest sequence number journaled.
    pub highest: u64,
    /// Alerts of the origin processed.
    pub count: u64,
    /// First sequence number journaled.
    pub first: u64,
}

impl Mark {
    /// Records that alert `seq` was journaled.
    pub fn note(marks: &mut HashMap<String, Mark>, origin: &str, seq: u64) {
        match marks.get_mut(origin) {
            Some(m) => {
                if seq > m.highest {
                    m.highest = seq;
                    m.count += 1;
                }
            }
            None => {
                marks.insert(
                    origin.to_string(),
                    Mark {
                        highest: seq,
                        count: 1,
                        first: seq,
                    },
                );
            }
        }
    }
}

/// Which format a file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Nothing in it yet.
    Empty,
    /// Framed records (a damaged file header with valid records after it counts too).
    Framed,
    /// One JSON alert per line, as written before framing.
    Lines,
    /// Neither: no file header, no JSON line, and not one valid record.
    Unknown,
}

/// What a journal holds.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub format: Format,
    /// Per origin, what de-duplication needs.
    pub marks: HashMap<String, Mark>,
    /// The last `keep` alerts, oldest first.
    pub recent: VecDeque<Alert>,
    /// Alerts ever processed, those compacted away included (the next `get_alerts` index).
    pub alerts_total: u64,
    /// Damaged stretches skipped, with valid records after each.
    pub damaged: u64,
    /// Bytes in them.
    pub damaged_bytes: u64,
    /// Where an unreadable tail starts, if the file has one.
    pub torn_at: Option<u64>,
    /// The file's length when read.
    pub len: u64,
}

/// Folds records into a [`Loaded`].
struct Acc {
    keep: usize,
    marks: HashMap<String, Mark>,
    recent: VecDeque<Alert>,
    total: u64,
    damaged: u64,
    damaged_bytes: u64,
}

impl Acc {
    fn new(keep: usize) -> Acc {
        Acc {
            keep,
            marks: HashMap::new(),
            recent: VecDeque::new(),
            total: 0,
            damaged: 0,
            damaged_bytes: 0,
        }
    }

    fn alert(&mut self, a: Alert) {
        Mark::note(&mut self.marks, &a.origin, a.seq);
        self.total += 1;
        if self.keep == 0 {
            return;
        }
        if self.recent.len() == self.keep {
            self.recent.pop_front();
        }
        self.recent.push_back(a);
    }

    fn origin(&mut self, r: OriginRecord) {
        let m = self.marks.entry(r.origin).or_default();
        if r.highest >= m.highest {
            *m = Mark {
                highest: r.highest,
                count: r.count,
                first: r.first,
            };
        }
    }

    /// Applies one framed record; false if its payload does not parse.
    fn record(&mut self, kind: Option<Kind>, payload: &[u8]) -> bool {
        match kind {
            Some(Kind::Alert) => serde_json::from_slice(payload)
                .map(|a| self.alert(a))
                .is_ok(),
            Some(Kind::Origin) => serde_json::from_slice(payload)
                .map(|r| self.origin(r))
                .is_ok(),
            Some(Kind::Meta) => serde_json::from_slice::<MetaRecord>(payload)
                .map(|m| self.total = m.alerts_before)
                .is_ok(),
            Some(Kind::Acked) | None => false,
        }
    }

    /// A damaged stretch of `bytes`, skipped.
    fn damaged(&mut self, bytes: u64) {
        self.damaged += 1;
        self.damaged_bytes += bytes;
    }

    fn finish(self, format: Format, torn_at: Option<u64>, len: u64) -> Loaded {
        Loaded {
            format,
            marks: self.marks,
            recent: self.recent,
            alerts_total: self.total,
            damaged: self.damaged,
            damaged_bytes: self.damaged_bytes,
            torn_at,
            len,
        }
    }
}

impl Fold for Acc {
    fn record(&mut self, kind: Option<Kind>, payload: &[u8]) -> bool {
        Acc::record(self, kind, payload)
    }

    fn damaged(&mut self, bytes: u64) {
        Acc::damaged(self, bytes)
    }
}

/// What reads framed records: the journal's loader here, the spool's ([`crate::spool`]).
pub(crate) trait Fold {
    /// Applies one record whose checksums are right; false if its payload does not parse
    /// (or is of a kind this reader does not expect): then counted as damaged.
    fn record(&mut self, kind: Option<Kind>, payload: &[u8]) -> bool;
    /// A damaged stretch of `bytes`, skipped.
    fn damaged(&mut self, bytes: u64);
}

const CHUNK: usize = 64 * 1024;

/// A forward-moving window on the file: `get` keeps what is asked for in memory, dropping
/// what lies before it, so memory stays at one chunk or one record.
pub(crate) struct Window<'a> {
    file: &'a mut File,
    buf: Vec<u8>,
    /// File offset of `buf[0]`; the file's position is `start + buf.len()`.
    start: u64,
    at_end: bool,
}

impl<'a> Window<'a> {
    pub(crate) fn new(file: &'a mut File) -> std::io::Result<Window<'a>> {
        file.seek(SeekFrom::Start(0))?;
        Ok(Window {
            file,
            buf: Vec::new(),
            start: 0,
            at_end: false,
        })
    }

    /// Bytes `off..off + n`, or fewer where the file ends.
    pub(crate) fn get(&mut self, off: u64, n: usize) -> std::io::Result<&[u8]> {
        let buffered_end = self.start + self.buf.len() as u64;
        if off < self.start || off > buffered_end {
            self.file.seek(SeekFrom::Start(off))?;
            self.buf.clear();
            self.start = off;
            self.at_end = false;
        }
        let rel = (off - self.start) as usize;
        if self.buf.len() - rel < n && !self.at_end {
            self.buf.drain(..rel);
            self.start = off;
            while self.buf.len() < n && !self.at_end {
                let old = self.buf.len();
                self.buf.resize(old + (n - old).max(CHUNK), 0);
                let res = self.file.read(&mut self.buf[old..]);
                let got = *res.as_ref().unwrap_or(&0);
                self.buf.truncate(old + got);
                match res {
                    Ok(0) => self.at_end = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let rel = (off - self.start) as usize;
        let end = (rel + n).min(self.buf.len());
        Ok(&self.buf[rel..end])
    }

    /// The header of a record at `off` whose header and payload both check out.
    fn record_at(&mut self, off: u64) -> std::io::Result<Option<Header>> {
        let Some(h) = Header::parse(self.get(off, HEADER_LEN)?) else {
            return Ok(None);
        };
        let payload = self.get(off + HEADER_LEN as u64, h.len)?;
        Ok(h.matches(payload).then_some(h))
    }

    /// The first valid record at or after `from`.
    fn resync(&mut self, mut from: u64) -> std::io::Result<Option<u64>> {
        loop {
            let s = self.get(from, CHUNK)?;
            if s.len() < MAGIC.len() {
                return Ok(None);
            }
            let Some(i) = s.windows(MAGIC.len()).position(|w| w == MAGIC) else {
                from += (s.len() - (MAGIC.len() - 1)) as u64;
                continue;
            };
            let at = from + i as u64;
            if self.record_at(at)?.is_some() {
                return Ok(Some(at));
            }
            from = at + 1;
        }
    }
}

/// Reads the whole file, keeping the last `keep` alerts. Does not change the file.
pub(crate) fn scan(file: &mut File, keep: usize) -> std::io::Result<Loaded> {
    let len = file.metadata()?.len();
    let mut acc = Acc::new(keep);
    let mut w = Window::new(file)?;
    let head = w.get(0, FILE_MAGIC.len())?.to_vec();
    let (format, torn_at) = if head.is_empty() {
        (Format::Empty, None)
    } else if head == FILE_MAGIC {
        (
            Format::Framed,
            scan_framed(w, &mut acc, FILE_MAGIC.len() as u64, len)?,
        )
    } else if FILE_MAGIC.starts_with(&head) {
        // The file header itself was cut short: an empty journal.
        (Format::Empty, Some(0))
    } else if head[0] == b'{' {
        drop(w);
        (Format::Lines, scan_lines(file, &mut acc, MAX_PAYLOAD)?)
    } else {
        // A damaged file header: framed records may follow, or nothing of a journal.
        match scan_framed(w, &mut acc, 0, len)? {
            Some(0) => (Format::Unknown, Some(0)),
            torn => (Format::Framed, torn),
        }
    };
    Ok(acc.finish(format, torn_at, len))
}

/// Reads framed records from `pos`; returns where an unreadable tail starts, if anywhere.
pub(crate) fn scan_framed(
    mut w: Window<'_>,
    acc: &mut impl Fold,
    mut pos: u64,
    len: u64,
) -> std::io::Result<Option<u64>> {
    while pos < len {
        if let Some(h) = w.record_at(pos)? {
            let next = pos + (HEADER_LEN + h.len) as u64;
            let payload = w.get(pos + HEADER_LEN as u64, h.len)?;
            if !acc.record(h.kind, payload) {
                // Framed and checksummed, yet not a record this version reads.
                acc.damaged(next - pos);
            }
            pos = next;
            continue;
        }
        let Some(at) = w.resync(pos + 1)? else {
            return Ok(Some(pos));
        };
        acc.damaged(at - pos);
        pos = at;
    }
    Ok(None)
}

/// Reads one JSON alert per line, none longer than `max_line`; returns where an unreadable
/// tail starts, if anywhere.
fn scan_lines(file: &mut File, acc: &mut Acc, max_line: usize) -> std::io::Result<Option<u64>> {
    file.seek(SeekFrom::Start(0))?;
    let mut r = BufReader::with_capacity(CHUNK, file);
    let mut pos = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut r)
            .take(max_line as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        let mut len = n as u64;
        if line.last() == Some(&b'\n') {
            match serde_json::from_slice::<Alert>(&line[..n - 1]) {
                Ok(a) => acc.alert(a),
                Err(_) => acc.damaged(len),
            }
        } else if n <= max_line {
            // The last line, without its newline.
            return Ok(Some(pos));
        } else {
            // A line longer than any alert: skip to its end.
            loop {
                line.clear();
                let k = (&mut r).take(CHUNK as u64).read_until(b'\n', &mut line)?;
                if k == 0 {
                    return Ok(Some(pos));
                }
                len += k as u64;
                if line.last() == Some(&b'\n') {
                    break;
                }
            }
            acc.damaged(len);
        }
        pos += len;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_line_longer_than_any_alert_is_skipped_without_being_held() {
        let line = |seq: u64| {
            let a = Alert {
                origin: "a".into(),
                seq,
                path: vec!["a".into()],
                timestamp_ns: 0,
                body: vespa_proto::AlertBody::Text(String::new()),
            };
            format!("{}\n", serde_json::to_string(&a).expect("json"))
        };
        let mut f = tempfile::tempfile().expect("file");
        let long = format!("{{{}\n", "x".repeat(10_000));
        write!(f, "{}{long}{}", line(1), line(2)).expect("write");
        let mut acc = Acc::new(10);
        assert_eq!(scan_lines(&mut f, &mut acc, 1024).expect("scan"), None);
        assert_eq!(acc.recent.iter().map(|a| a.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!((acc.damaged, acc.damaged_bytes), (1, long.len() as u64));

        // Cut inside the long line: a torn tail from its start.
        let mut f = tempfile::tempfile().expect("file");
        write!(f, "{}{}", line(1), &long[..5_000]).expect("write");
        let mut acc = Acc::new(10);
        let torn = scan_lines(&mut f, &mut acc, 1024).expect("scan");
        assert_eq!(torn, Some(line(1).len() as u64));
    }
}
