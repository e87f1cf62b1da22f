//! Headless Chromium (Debian's `chromium`) for the dashboard tests: render a page, run its
//! fetches and timers, and hand back the DOM (or whatever the extra flags print).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where Debian installs the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Longest a Chromium run may take before it is killed and the test fails.
pub const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// Whether Chromium is there; on CI (`VESPA_REQUIRE_EBPF=1`) its absence is a failure.
pub fn chromium_present(test: &str) -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    let why =
        format!("{CHROMIUM} not found (Debian package chromium; `cargo xtask setup` installs it)");
    if crate::daemons::required() {
        panic!("{test}: VESPA_REQUIRE_EBPF=1 but {why}");
    }
    eprintln!("SKIPPED {test}: {why} (set VESPA_REQUIRE_EBPF=1 to make this a failure)");
    false
}

/// Runs headless Chromium on `url` with `extra` flags and a fresh profile under `scratch`,
/// bounded in time; returns its stdout (with `--dump-dom`, the rendered DOM).
pub fn chromium(scratch: &Path, run: &str, url: &str, extra: &[&str]) -> String {
    let profile = scratch.join(format!("chromium-profile-{run}"));
    std::fs::create_dir_all(&profile).expect("profile dir");
    let (out_path, err_path) = (
        scratch.join(format!("chromium-{run}.out")),
        scratch.join(format!("chromium-{run}.err")),
    );
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args([
            "--virtual-time-budget=5000",
            "--run-all-compositor-stages-before-draw",
        ])
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {CHROMIUM}: {e}"));
    let finished = vespa_testkit::try_wait_until(
        &format!("chromium ({run}) to finish"),
        BROWSER_TIMEOUT,
        || {
            child
                .try_wait()
                .expect("wait for chromium")
                .ok_or("running")
        },
    );
    let status = finished.unwrap_or_else(|e| {
        kill_group(&mut child);
        panic!(
            "{e}; stderr: {}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        )
    });
    assert!(
        status.success(),
        "chromium ({run}) failed: {status}; stderr: {}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    std::fs::read_to_string(&out_path).expect("chromium output")
}

/// `tests/artifacts/` (git-ignored): screenshots and DOM dumps kept after a run.
pub fn artifacts() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts");
    std::fs::create_dir_all(&dir).expect("tests/artifacts");
    dir
}

/// Kills a child started with `process_group(0)` and everything it started (Chromium's
/// renderer and GPU processes, the browser chromedriver launched).
pub fn kill_group(child: &mut std::process::Child) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}
