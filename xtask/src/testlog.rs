//! Reads `cargo test`'s output as it streams past and keeps what a reader of a long CI log
//! needs at its end: which tests failed and what each one printed when it did.

/// Lines kept per failed test; the whole output is still in the log above the digest.
const LINES_PER_FAILURE: usize = 60;

#[derive(Default)]
pub struct Digest {
    failed: Vec<String>,
    blocks: Vec<(String, Vec<String>)>,
    in_block: bool,
}

impl Digest {
    /// Feeds one line of the test harness's stdout.
    pub fn line(&mut self, line: &str) {
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            self.blocks.push((name.to_string(), Vec::new()));
            self.in_block = true;
            return;
        }
        // The failure blocks end where the harness lists the failed names again.
        if line == "failures:" || line.starts_with("test result:") {
            self.in_block = false;
        }
        if self.in_block {
            if let Some((_, lines)) = self.blocks.last_mut() {
                lines.push(line.to_string());
            }
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            self.failed.push(name.to_string());
        }
    }

    /// The digest to print after everything else, or None when nothing failed.
    pub fn render(&self) -> Option<String> {
        if self.failed.is_empty() && self.blocks.is_empty() {
            return None;
        }
        let mut out = format!(
            "xtask: {} test(s) failed: {}\n",
            self.failed.len(),
            self.failed.join(", ")
        );
        for (name, lines) in &self.blocks {
            out.push_str(&format!("---- {name} ----\n"));
            let start = lines.len().saturating_sub(LINES_PER_FAILURE);
            if start > 0 {
                out.push_str(&format!("[{start} earlier lines above in the log]\n"));
            }
            for l in &lines[start..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_failed_names_and_their_output() {
        let log = "running 2 tests\n\
                   test a::ok ... ok\n\
                   test a::bad ... FAILED\n\
                   \n\
                   failures:\n\
                   \n\
                   ---- a::bad stdout ----\n\
                   thread 'a::bad' panicked at tests/a.rs:3:5:\n\
                   assertion failed\n\
                   \n\
                   failures:\n    a::bad\n\
                   \n\
                   test result: FAILED. 1 passed; 1 failed\n";
        let mut d = Digest::default();
        log.lines().for_each(|l| d.line(l));
        let r = d.render().unwrap();
        assert!(r.starts_with("xtask: 1 test(s) failed: a::bad\n"), "{r}");
        assert!(
            r.contains(
                "---- a::bad ----\nthread 'a::bad' panicked at tests/a.rs:3:5:\nassertion failed\n"
            ),
            "{r}"
        );
        assert!(!r.contains("test result"), "{r}");
    }

    #[test]
    fn nothing_failed_nothing_printed() {
        let mut d = Digest::default();
        "test a ... ok\ntest result: ok. 1 passed"
            .lines()
            .for_each(|l| d.line(l));
        assert!(d.render().is_none());
    }
}
