//! The watched directory: listed every `watch_interval`; a file is scanned when it appears
//! or when its size or modification time changes (so a file still being written is scanned
//! again once it is complete). Sub-directories are followed, symbolic links are not: neither
//! when listing nor when opening (the scan opens each file below the watched directory with no
//! link allowed on the way, so a file swapped for a link or a FIFO after the listing is refused).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::Verdict;
use crate::error::{AvError, Transient};

/// How deep sub-directories are followed.
const MAX_DEPTH: usize = 8;

/// Every regular file under `dir`, sorted (symbolic links are not followed).
pub(super) async fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(mut rd) = tokio::fs::read_dir(&d).await else {
            tracing::debug!(dir = ?d, "cannot list directory");
            continue;
        };
        while let Ok(Some(e)) = rd.next_entry().await {
            let Ok(ft) = e.file_type().await else {
                continue;
            };
            if ft.is_file() {
                out.push(e.path());
            } else if ft.is_dir() && depth < MAX_DEPTH {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    out.sort();
    out
}

/// Watches `dir` for `vm` every `every`, handing each new or changed file to `scan` with the
/// watched directory (`scan` records and reports the result).
pub(super) fn spawn<F, Fut>(
    vm: String,
    every: Duration,
    dir: PathBuf,
    scan: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(PathBuf, PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Verdict, AvError>> + Send,
{
    tokio::spawn(async move {
        tracing::info!(vm = ?vm, dir = ?dir, "watching directory");
        let mut seen: HashMap<PathBuf, (u64, Option<SystemTime>)> = HashMap::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let files = list_files(&dir).await;
            seen.retain(|p, _| files.binary_search(p).is_ok());
            for f in files {
                let Ok(meta) = tokio::fs::symlink_metadata(&f).await else {
                    continue;
                };
                let key = (meta.len(), meta.modified().ok());
                if seen.get(&f) == Some(&key) {
                    continue;
                }
                // Results and errors are recorded (and alerted) by scan_file. A file that could
                // not be scanned because clamd was unavailable is tried again next time.
                match scan(dir.clone(), f.clone()).await {
                    Err(e) if e.is_transient() => {}
                    _ => {
                        seen.insert(f, key);
                    }
                }
            }
        }
    })
}
