//! The `vespa-agent` binary: bad input and missing capabilities give clear errors, never a
//! panic; the commands a user runs first work.

use std::process::{Command, Output};

use vespa_tests::{privileged, workspace_bin};

fn agent(args: &[&str]) -> Output {
    Command::new(workspace_bin("vespa-agent"))
        .args(args)
        .output()
        .expect("run vespa-agent")
}

use crate::kit::output_text as text;

fn no_panic(o: &Output) {
    let t = text(o);
    assert!(!t.contains("panicked"), "{t}");
    assert_ne!(o.status.code(), Some(101), "exit code 101 is a panic: {t}");
}

#[test]
fn help_describes_every_command() {
    let o = agent(&["--help"]);
    assert!(o.status.success());
    let t = text(&o);
    for word in [
        "export",
        "counters",
        "top",
        "--mode",
        "--interfaces",
        "--netns",
        "--conn-threshold",
        "/proc",
    ] {
        assert!(t.contains(word), "--help mentions {word}:\n{t}");
    }
    let o = agent(&["export", "--help"]);
    assert!(
        text(&o).contains("127.0.0.1:9105"),
        "the default listen address is shown"
    );
}

#[test]
fn an_unknown_interface_is_a_clear_error() {
    if !privileged("an_unknown_interface_is_a_clear_error") {
        return;
    }
    for mode in ["ebpf", "proc", "auto"] {
        let o = agent(&["--mode", mode, "-i", "nosuchif0", "counters"]);
        no_panic(&o);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            text(&o).contains("unknown interface \"nosuchif0\""),
            "{mode}: {}",
            text(&o)
        );
    }
    let o = agent(&["-i", "../../etc", "counters"]);
    no_panic(&o);
    assert!(!o.status.success());
}

#[test]
fn a_missing_namespace_is_a_clear_error() {
    let o = agent(&["--netns", "vespa-no-such-ns", "counters"]);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("network namespace vespa-no-such-ns"),
        "{}",
        text(&o)
    );
}

#[test]
fn without_root_ebpf_mode_fails_clearly_and_auto_falls_back_to_proc() {
    if !privileged("without_root_ebpf_mode_fails_clearly_and_auto_falls_back_to_proc") {
        return;
    }
    let bin = workspace_bin("vespa-agent");
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(&bin)
            .args(args)
            .output()
            .expect("setpriv")
    };
    let o = as_nobody(&["--mode", "ebpf", "counters"]);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1));
    // Not root, no capability: every one the sensors need is named.
    assert!(
        text(&o).contains("missing capabilities CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN:"),
        "{}",
        text(&o)
    );

    let o = as_nobody(&["--mode", "auto", "-i", "lo", "counters", "--json"]);
    no_panic(&o);
    assert!(o.status.success(), "{}", text(&o));
    let snap: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON snapshot");
    assert_eq!(snap["health"]["mode"], "proc");
    assert!(snap["health"]["fallback_reason"]
        .as_str()
        .unwrap_or("")
        .contains("missing capabilities CAP_BPF"));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("falling back to /proc"),
        "the fallback is announced with its reason"
    );
    assert_eq!(snap["interfaces"][0]["name"], "lo");
}

/// The connection tracker is a tp_btf program, found in the kernel's BTF: without tracefs
/// (as under `ip netns exec`, or a host that never mounts it) every sensor still loads, which
/// is why the service needs no CAP_DAC_READ_SEARCH for tracefs, root's.
#[test]
fn without_tracefs_the_sensors_still_load() {
    if !privileged("without_tracefs_the_sensors_still_load") {
        return;
    }
    // A private mount namespace without tracefs; the host's mounts are untouched.
    let bin = workspace_bin("vespa-agent");
    let script = format!("umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; test ! -d /sys/kernel/tracing/events || exit 3; exec {} --mode ebpf -i lo counters --json", bin.display());
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    no_panic(&o);
    assert!(o.status.success(), "{}", text(&o));
    let snap: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(snap["health"]["mode"], "ebpf", "{snap}");
    assert!(
        snap["health"]["program_runs"]["vespa_sock_state"].is_u64(),
        "the tracker loaded: {snap}"
    );
    assert!(
        std::path::Path::new("/sys/kernel/tracing/events").exists(),
        "the host's tracefs is still mounted"
    );
}

#[test]
fn counters_json_and_top_show_live_values() {
    if !privileged("counters_json_and_top_show_live_values") {
        return;
    }
    let o = agent(&["--mode", "ebpf", "-i", "lo", "counters", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let snap: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(snap["health"]["mode"], "ebpf");
    assert_eq!(snap["interfaces"][0]["name"], "lo");
    assert!(snap["health"]["program_runs"]["vespa_sock_state"].is_u64());

    let o = agent(&[
        "--mode",
        "ebpf",
        "-i",
        "lo",
        "top",
        "--interval",
        "0.2",
        "--count",
        "2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("INTERFACE") && t.contains("REMOTE ADDRESS") && t.contains("lo "),
        "{t}"
    );
    assert!(t.contains("sensors: ebpf"), "{t}");
}

/// Whether process `pid` catches SIGHUP (`SigCgt` of /proc/PID/status, bit 0).
fn catches_hangup(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let mask = s
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&mask, 16).ok()
        })
        .is_some_and(|m| m & 1 == 1)
}

/// A hang-up while the sensors are still loading (before the exporter serves, before it
/// would tell systemd it is ready) does not end it: SIGHUP is taken from its default action
/// on the daemon's first line, not once it runs.
#[test]
fn a_hangup_while_the_sensors_load_does_not_end_the_exporter() {
    if !privileged("a_hangup_while_the_sensors_load_does_not_end_the_exporter") {
        return;
    }
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};
    let addr = format!("127.0.0.1:{}", vespa_tests::daemons::free_port());
    let mut child = Command::new(workspace_bin("vespa-agent"))
        .args(["--mode", "ebpf", "-i", "lo", "export", "--listen", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn vespa-agent export");
    let pid = child.id();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push(l);
            }
        })
    };
    vespa_testkit::wait_until(
        "the exporter catching SIGHUP",
        std::time::Duration::from_secs(10),
        || catches_hangup(pid).then_some(()),
    );
    let serving = |lines: &[String]| lines.iter().any(|l| l.contains("serving metrics"));
    assert!(
        !serving(&lines.lock().unwrap()),
        "SIGHUP is held before the sensors load, not once the exporter serves"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    let scraped = vespa_testkit::try_wait_until(
        "the exporter serving after the hang-up",
        std::time::Duration::from_secs(30),
        || {
            vespa_tests::daemons::http_get(&addr, "/metrics")
                .ok()
                .filter(|(s, _)| *s == 200)
        },
    );
    let alive = child.try_wait().expect("wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    assert!(alive, "the exporter ended: {:?}", lines.lock().unwrap());
    let (_, body) =
        scraped.unwrap_or_else(|e| panic!("no scrape: {e:?} {:?}", lines.lock().unwrap()));
    assert!(body.contains("vespa_"), "{body}");
}
