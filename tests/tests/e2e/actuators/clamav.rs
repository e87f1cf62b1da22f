//! The antivirus agent against a real clamd (one-line EICAR database, started by the test kit).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use vespa_agents::clamav::{AvAgent, AvConfig, ClamdAddr, RelayFuture, Route, Verdict, VmRelay};
use vespa_agents::{ActuatorAlert, AlertSink, AvError, RetryPolicy};
use vespa_node::Agent as _;
use vespa_proto::verbs::{LibvirtVerb, Verb};
use vespa_testkit::wait_until_async;
use vespa_tests::daemons::clamd::{eicar, Clamd, EICAR_SIGNATURE};
use vespa_tests::daemons::require_daemon;

const VM: &str = "web-vm-7";

fn clamd(test: &str, limit: &str) -> Option<Clamd> {
    require_daemon(test, "clamd", Clamd::start(limit))
}

fn agent(
    addr: ClamdAddr,
    watch: Option<PathBuf>,
    retry: RetryPolicy,
) -> (AvAgent, mpsc::Receiver<ActuatorAlert>) {
    let (tx, rx) = mpsc::channel(64);
    let mut cfg = AvConfig::new(VM, addr);
    cfg.watch_dir = watch;
    cfg.watch_interval = Duration::from_millis(50);
    cfg.retry = retry;
    cfg.timeout = Duration::from_secs(10);
    (AvAgent::new(cfg, AlertSink::new(tx)), rx)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {s}"))
}

async fn call(a: &AvAgent, verb: &str, args: &[&str]) -> Result<String, String> {
    a.call_words(verb, args.iter().map(|s| s.to_string()).collect())
        .await
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write test file");
    p
}

#[tokio::test]
async fn health_eicar_detected_with_alert_clean_file_passes() {
    let Some(c) = clamd("health_eicar_detected_with_alert_clean_file_passes", "1M") else {
        return;
    };
    let (a, mut alerts) = agent(
        ClamdAddr::Unix(c.socket.clone()),
        None,
        RetryPolicy::default(),
    );
    assert_eq!(call(&a, "ping", &[]).await, Ok("PONG".into()));
    let v = call(&a, "version", &[]).await.expect("VERSION");
    assert!(v.starts_with("ClamAV "), "{v}");

    let files = tempfile::tempdir().expect("tempdir");
    let bad = write(files.path(), "invoice.pdf.exe", &eicar());
    let good = write(files.path(), "notes.txt", b"nothing to see here\n");

    let r = json(
        &call(&a, "scan", &[bad.to_str().expect("utf-8")])
            .await
            .expect("scan EICAR"),
    );
    assert_eq!(r[0]["result"]["verdict"], "infected", "{r}");
    assert_eq!(r[0]["result"]["signature"], EICAR_SIGNATURE, "{r}");
    let alert = alerts.try_recv().expect("an alert for the infected file");
    assert_eq!(
        alert,
        ActuatorAlert::Infected {
            vm: VM.into(),
            file: bad.display().to_string(),
            signature: EICAR_SIGNATURE.into()
        }
    );

    let r = json(
        &call(&a, "scan", &[good.to_str().expect("utf-8")])
            .await
            .expect("scan clean file"),
    );
    assert_eq!(r[0]["result"]["verdict"], "clean", "{r}");
    assert!(alerts.try_recv().is_err(), "no alert for a clean file");

    // Scanning the directory scans both files (sorted), and alerts again for the bad one.
    let r = json(
        &call(&a, "scan", &[files.path().to_str().expect("utf-8")])
            .await
            .expect("scan dir"),
    );
    assert_eq!(r.as_array().map(Vec::len), Some(2), "{r}");
    assert!(matches!(
        alerts.try_recv(),
        Ok(ActuatorAlert::Infected { .. })
    ));

    let list = json(
        &call(&a, "dump_analyzed_file_list", &[])
            .await
            .expect("list"),
    );
    let rows: Vec<(String, String)> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|r| {
            (
                r["file"].as_str().unwrap_or("").to_string(),
                r["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(
        rows[0],
        (
            bad.display().to_string(),
            format!("{EICAR_SIGNATURE} FOUND")
        )
    );
    assert_eq!(rows[1], (good.display().to_string(), "OK".to_string()));

    // The same over clamd's TCP socket.
    let (t, _alerts) = agent(ClamdAddr::Tcp(c.tcp.clone()), None, RetryPolicy::default());
    assert_eq!(
        t.scan_file(&bad).await.expect("scan over TCP"),
        Verdict::Infected {
            signature: EICAR_SIGNATURE.into()
        }
    );
    assert_eq!(
        t.clamd()
            .scan_bytes("inline", b"hello")
            .await
            .expect("scan bytes"),
        Verdict::Clean
    );
}

#[tokio::test]
async fn watched_directory_new_and_changed_files_are_scanned() {
    let Some(c) = clamd("watched_directory_new_and_changed_files_are_scanned", "1M") else {
        return;
    };
    let watched = tempfile::tempdir().expect("tempdir");
    let staging = tempfile::tempdir().expect("tempdir");
    let (a, mut alerts) = agent(
        ClamdAddr::Unix(c.socket.clone()),
        Some(watched.path().to_path_buf()),
        RetryPolicy::default(),
    );

    // Files appear atomically (written elsewhere, renamed in), as a guest's upload would.
    let clean = watched.path().join("report.txt");
    std::fs::rename(write(staging.path(), "a", b"quarterly figures\n"), &clean).expect("rename");
    let sub = watched.path().join("downloads");
    std::fs::create_dir(&sub).expect("mkdir");
    let bad = sub.join("game.exe");
    std::fs::rename(write(staging.path(), "b", &eicar()), &bad).expect("rename");

    let alert = tokio::time::timeout(Duration::from_secs(15), alerts.recv())
        .await
        .expect("an alert within 15 s")
        .expect("alert channel open");
    assert_eq!(
        alert,
        ActuatorAlert::Infected {
            vm: VM.into(),
            file: bad.display().to_string(),
            signature: EICAR_SIGNATURE.into()
        }
    );
    let (agent, clean_file) = (&a, clean.display().to_string());
    let clean_file = &clean_file;
    let seen = wait_until_async(
        "the clean file's scan record",
        Duration::from_secs(15),
        move || async move { agent.analyzed().into_iter().find(|r| r.file == *clean_file) },
    )
    .await;
    assert_eq!(seen.status, "OK");

    // A changed file is scanned again: the clean report becomes infected.
    let replaced = write(staging.path(), "c", &eicar());
    std::fs::rename(replaced, &clean).expect("rename");
    let alert = tokio::time::timeout(Duration::from_secs(15), alerts.recv())
        .await
        .expect("a second alert")
        .expect("open");
    assert_eq!(
        alert,
        ActuatorAlert::Infected {
            vm: VM.into(),
            file: clean.display().to_string(),
            signature: EICAR_SIGNATURE.into()
        }
    );
    // Unchanged files are not rescanned: exactly one record per (file, version).
    let records = a.analyzed();
    assert_eq!(
        records
            .iter()
            .filter(|r| r.file == bad.display().to_string())
            .count(),
        1,
        "{records:?}"
    );
}

#[tokio::test]
async fn file_over_stream_limit_is_a_clear_error_and_agent_keeps_serving() {
    let Some(c) = clamd(
        "file_over_stream_limit_is_a_clear_error_and_agent_keeps_serving",
        "1M",
    ) else {
        return;
    };
    let (a, mut alerts) = agent(
        ClamdAddr::Unix(c.socket.clone()),
        None,
        RetryPolicy::default(),
    );
    let files = tempfile::tempdir().expect("tempdir");
    let big = write(files.path(), "disk.img", &vec![0x5a; 3 * 1024 * 1024]);
    match a.scan_file(&big).await {
        Err(AvError::SizeLimit { what, sent }) => {
            assert_eq!(what, big.display().to_string());
            assert!(sent >= 1024 * 1024, "clamd refused after {sent} bytes");
        }
        other => panic!("expected a SizeLimit error, got {other:?}"),
    }
    let r = json(
        &call(&a, "scan", &[big.to_str().expect("utf-8")])
            .await
            .expect("scan reports per-file errors"),
    );
    let msg = r[0]["error"].as_str().expect("an error entry");
    assert!(msg.contains("StreamMaxLength"), "{msg}");
    assert!(
        alerts.try_recv().is_err(),
        "a too-large file is not an infection nor an actuator failure"
    );
    // Just under the limit still scans.
    let ok = write(files.path(), "small.img", &vec![0x5a; 512 * 1024]);
    assert_eq!(
        a.scan_file(&ok).await.expect("scan under the limit"),
        Verdict::Clean
    );
    assert_eq!(call(&a, "ping", &[]).await, Ok("PONG".into()));
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(
        p,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .expect("mkfifo");
}

/// A guest that can write the watched directory plants a FIFO and a symbolic link to a host
/// file holding EICAR, then swaps a file between a regular file, such a link and a FIFO as fast
/// as it can, racing the watcher between its listing and its open. The watcher neither hangs
/// nor sends the host file to clamd, and still catches a real infected file afterwards.
#[tokio::test]
async fn links_and_fifos_in_the_watched_directory_neither_hang_the_watcher_nor_reach_clamd() {
    let Some(c) = clamd(
        "links_and_fifos_in_the_watched_directory_neither_hang_the_watcher_nor_reach_clamd",
        "1M",
    ) else {
        return;
    };
    let host = tempfile::tempdir().expect("tempdir");
    let secret = write(host.path(), "host-secret.bin", &eicar());
    let watched = tempfile::tempdir().expect("tempdir");
    let staging = tempfile::tempdir().expect("tempdir");
    let w = watched.path().to_path_buf();
    let (a, mut alerts) = agent(
        ClamdAddr::Unix(c.socket.clone()),
        Some(w.clone()),
        RetryPolicy::default(),
    );

    // Planted ones, scanned by name: refused at once, the FIFO without blocking.
    mkfifo(&w.join("pipe"));
    std::os::unix::fs::symlink(&secret, w.join("link")).expect("symlink");
    for (name, why) in [("pipe", "is a FIFO"), ("link", "is a symbolic link")] {
        let path = w.join(name);
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            call(&a, "scan", &[path.to_str().expect("utf-8")]),
        )
        .await
        .unwrap_or_else(|_| panic!("scanning {name} hangs"))
        .expect("per-file errors");
        let r = json(&r);
        let err = r[0]["error"].as_str().unwrap_or_default();
        assert!(
            err.contains(why) && err.contains("not scanned"),
            "{name}: {r}"
        );
    }

    // The race.
    let x = w.join("x");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (x, secret, stop) = (x.clone(), secret.clone(), stop.clone());
        let st = staging.path().to_path_buf();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let tmp = st.join(format!("t{i}"));
                match i % 3 {
                    0 => std::fs::write(&tmp, b"an ordinary upload\n").expect("write"),
                    1 => std::os::unix::fs::symlink(&secret, &tmp).expect("symlink"),
                    _ => mkfifo(&tmp),
                }
                std::fs::rename(&tmp, &x).expect("rename");
                i += 1;
                // Pacing, so that the swapper leaves the machine's other core to the watcher.
                std::thread::sleep(Duration::from_micros(200));
            }
            i
        })
    };
    let (agent, xs) = (&a, x.display().to_string());
    let xs = &xs;
    wait_until_async(
        "the watcher to scan the swapped file 20 times",
        Duration::from_secs(60),
        move || async move {
            let n = agent.analyzed().iter().filter(|r| r.file == *xs).count();
            if n >= 20 {
                Ok(())
            } else {
                Err(format!("{n} scans"))
            }
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().expect("swapper");
    assert!(swaps > 100, "{swaps} swaps");

    // A real infected file dropped afterwards is still caught, and it is the only infection.
    let real = w.join("real.exe");
    std::fs::rename(write(staging.path(), "real", &eicar()), &real).expect("rename");
    let alert = tokio::time::timeout(Duration::from_secs(15), alerts.recv())
        .await
        .expect("the watcher is alive: an alert within 15 s")
        .expect("alert channel open");
    assert_eq!(
        alert,
        ActuatorAlert::Infected {
            vm: VM.into(),
            file: real.display().to_string(),
            signature: EICAR_SIGNATURE.into()
        },
        "the host file never reached clamd"
    );
    let found: Vec<_> = a
        .analyzed()
        .into_iter()
        .filter(|r| r.status.contains("FOUND"))
        .collect();
    assert!(
        found.iter().all(|r| r.file == real.display().to_string()),
        "only the real file is infected: {found:?}"
    );
    let st = json(&call(&a, "status", &[]).await.expect("status"));
    assert!(
        st["skipped_not_regular"].as_u64().is_some_and(|n| n >= 2),
        "{st}"
    );
}

/// A file larger than the agent's scan limit is not sent to clamd: an error for that file, a
/// count in `status`, no alert.
#[tokio::test]
async fn a_file_over_the_agents_scan_limit_is_a_counted_skip() {
    let Some(c) = clamd("a_file_over_the_agents_scan_limit_is_a_counted_skip", "1M") else {
        return;
    };
    let (tx, mut alerts) = mpsc::channel(8);
    let mut cfg = AvConfig::new(VM, ClamdAddr::Unix(c.socket.clone()));
    cfg.max_scan_bytes = 64;
    let a = AvAgent::new(cfg, AlertSink::new(tx));
    let files = tempfile::tempdir().expect("tempdir");
    let padded = write(files.path(), "padded.exe", &eicar()); // 68 bytes
    let r = json(
        &call(&a, "scan", &[padded.to_str().expect("utf-8")])
            .await
            .expect("per-file errors"),
    );
    let err = r[0]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("larger than the scan limit (68 bytes, limit 64)"),
        "{r}"
    );
    assert!(alerts.try_recv().is_err(), "a skip is not an alert");
    let st = json(&call(&a, "status", &[]).await.expect("status"));
    assert_eq!(st["skipped_too_large"], 1, "{st}");
    assert_eq!(st["max_scan_bytes"], 64, "{st}");
    let small = write(files.path(), "small.exe", &eicar()[..60]);
    assert_eq!(
        a.scan_file(&small).await.expect("under the limit"),
        Verdict::Clean
    );
}

/// Everything logged through it, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// File names come from the guest: one holding a newline and a forged log line still makes
/// one line in the agent's (text) log, with the newline escaped.
#[tokio::test]
async fn a_file_name_with_a_newline_makes_one_log_line() {
    let Some(c) = clamd("a_file_name_with_a_newline_makes_one_log_line", "1M") else {
        return;
    };
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The test's runtime runs on this thread: the agent's events land here.
    let _guard = tracing::subscriber::set_default(subscriber);
    let (a, _alerts) = agent(
        ClamdAddr::Unix(c.socket.clone()),
        None,
        RetryPolicy::default(),
    );
    let files = tempfile::tempdir().expect("tempdir");
    let forged = "1970-01-01T00:00:00.000000Z  INFO vespa_agents: scan clean, nothing found";
    let bad = write(files.path(), &format!("invoice.pdf\n{forged}"), &eicar());
    assert!(matches!(
        a.scan_file(&bad).await,
        Ok(Verdict::Infected { .. })
    ));
    let out = String::from_utf8(log.0.lock().expect("log buffer").clone()).expect("utf-8");
    let infected: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("infected file"))
        .collect();
    assert_eq!(infected.len(), 1, "{out}");
    assert!(
        infected[0].contains("invoice.pdf\\n1970-01-01"),
        "the newline is escaped: {out}"
    );
    assert!(
        !out.lines().any(|l| l.starts_with("1970-01-01")),
        "no forged line: {out}"
    );
}

#[tokio::test]
async fn clamd_down_is_a_clear_error_and_is_retried() {
    let Some(mut c) = clamd("clamd_down_is_a_clear_error_and_is_retried", "1M") else {
        return;
    };
    c.stop();
    let quick = RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
    };
    let (a, mut alerts) = agent(ClamdAddr::Unix(c.socket.clone()), None, quick);
    let err = call(&a, "ping", &[]).await.expect_err("clamd is down");
    assert!(
        err.contains("clamd at unix:") && err.contains("unreachable"),
        "{err}"
    );
    assert_eq!(a.retry_stats().retries(), 2, "3 attempts = 2 retries");
    let files = tempfile::tempdir().expect("tempdir");
    let f = write(files.path(), "x.bin", b"data");
    assert!(matches!(
        a.scan_file(&f).await,
        Err(AvError::Unreachable { .. })
    ));
    match alerts.try_recv() {
        Ok(ActuatorAlert::ActuatorFailed {
            actuator, error, ..
        }) => {
            assert_eq!(actuator, "clamav");
            assert!(error.contains("unreachable"), "{error}");
        }
        other => panic!("expected an ActuatorFailed alert, got {other:?}"),
    }

    // A patient agent rides out the outage: clamd is restarted only once the agent has
    // observably failed and retried.
    let patient = RetryPolicy {
        attempts: 60,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
    };
    let (p, _alerts) = agent(ClamdAddr::Unix(c.socket.clone()), None, patient);
    let p = Arc::new(p);
    let task = {
        let (p, f) = (p.clone(), f.clone());
        tokio::spawn(async move { p.scan_file(&f).await })
    };
    let patient = &p;
    wait_until_async(
        "the patient agent's first retry",
        Duration::from_secs(10),
        move || async move { patient.retry_stats().retries() > 0 },
    )
    .await;
    let _clamd = tokio::task::spawn_blocking(move || {
        c.restart().expect("clamd restarts");
        c
    })
    .await
    .expect("restart");
    let verdict = task
        .await
        .expect("scan task")
        .expect("the scan succeeds once clamd is back");
    assert_eq!(verdict, Verdict::Clean);
    assert!(p.retry_stats().retries() >= 1);
}

struct Relay(Mutex<Vec<(String, String, Vec<String>)>>);

impl VmRelay for Relay {
    fn call<'a>(&'a self, node: &'a str, verb: LibvirtVerb) -> RelayFuture<'a> {
        self.0
            .lock()
            .expect("relay")
            .push((node.into(), verb.name().into(), verb.args()));
        Box::pin(async { Ok("keys sent".to_string()) })
    }
}

#[tokio::test]
async fn isolate_and_connect_warnings_switch_the_route_and_bad_input_is_an_error() {
    // No daemon needed: these never reach clamd.
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, _alerts) = agent(
        ClamdAddr::Unix(dir.path().join("none.sock")),
        None,
        RetryPolicy::none(),
    );
    let relay = Arc::new(Relay(Mutex::new(Vec::new())));
    a.set_relay(relay.clone());

    assert_eq!(a.route(), Route::Direct);
    let e = call(&a, "clean_image", &[])
        .await
        .expect_err("no route while connected");
    assert!(e.contains("only sent through the hypervisor agent"), "{e}");
    let r = json(
        &call(&a, "isolate_warning", &["hy-agent-1"])
            .await
            .expect("isolate"),
    );
    assert_eq!(
        r,
        serde_json::json!({ "route": "via_hypervisor", "agent": "hy-agent-1" })
    );
    assert_eq!(call(&a, "clean_image", &[]).await, Ok("keys sent".into()));
    assert_eq!(
        relay.0.lock().expect("relay").clone(),
        vec![(
            "hy-agent-1".to_string(),
            "send_key".to_string(),
            vec![VM.to_string()]
        )]
    );
    let r = json(&call(&a, "connect_warning", &[]).await.expect("connect"));
    assert_eq!(r["route"], "direct");
    assert!(call(&a, "clean_image", &[]).await.is_err());
    assert_eq!(
        relay.0.lock().expect("relay").len(),
        1,
        "nothing relayed once connected"
    );

    assert!(call(&a, "rm_rf", &["/"])
        .await
        .expect_err("unknown verb")
        .contains("unknown verb"));
    assert_eq!(
        call(&a, "scan", &[]).await,
        Err("usage: scan <path>".into())
    );
    let e = call(&a, "scan", &["/nonexistent/vespa/file"])
        .await
        .expect_err("missing file");
    assert!(e.contains("cannot read /nonexistent/vespa/file"), "{e}");
    let st = json(&call(&a, "status", &[]).await.expect("status"));
    assert_eq!(st["vm"], VM);
}
