//! `vespa-agent --ebpf-log`: the kernel programs' own lines (aya-log) reach the agent's log
//! through the `log` crate and tracing's bridge, filtered by RUST_LOG like the agent's own;
//! without the flag there are none.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use vespa_tests::{net::Netns, privileged, workspace_bin};

const WAIT: Duration = Duration::from_secs(10);

/// `vespa-agent export` in `ns` on its loopback, connection threshold 3, its stderr lines
/// on a channel.
fn agent(ns: &Netns, ebpf_log: bool) -> (Child, mpsc::Receiver<String>) {
    let mut cmd = Command::new(workspace_bin("vespa-agent"));
    cmd.args(["--netns", &ns.name, "--mode", "ebpf", "-i", "lo"])
        .args(["--conn-threshold", "3"])
        .args(["export", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info,vespa::conntrack=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if ebpf_log {
        cmd.arg("--ebpf-log");
    }
    let mut child = cmd.spawn().expect("run vespa-agent");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Lines until one satisfies `done` (included), or every line seen by `WAIT` if none does.
fn lines_until(rx: &mpsc::Receiver<String>, done: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let stop = done(&line);
                seen.push(line);
                if stop {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    seen
}

/// Four loopback connections in `ns`: eight established sockets whose remote is 127.0.0.1,
/// over the threshold of 3. Kept open until dropped.
fn crowd(ns: &Netns) -> Vec<TcpStream> {
    ns.run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let mut streams = Vec::new();
        for _ in 0..4 {
            streams.push(TcpStream::connect(addr).expect("connect"));
            streams.push(listener.accept().expect("accept").0);
        }
        streams
    })
}

fn stop(mut child: Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
}

#[test]
fn kernel_log_lines_reach_the_agent_log_only_when_asked() {
    if !privileged("kernel_log_lines_reach_the_agent_log_only_when_asked") {
        return;
    }
    // Connections in another namespace: sockets the tracker must leave out, and says so.
    let other = Netns::new("vlo");
    for ebpf_log in [true, false] {
        let ns = Netns::new("vlg");
        let (child, rx) = agent(&ns, ebpf_log);
        let mut log = lines_until(&rx, |l| l.contains("serving metrics"));
        assert!(
            log.last().is_some_and(|l| l.contains("serving metrics")),
            "the agent starts: {log:#?}"
        );
        let _others = crowd(&other);
        let _ours = crowd(&ns);
        // The agent's own line for the threshold event comes from the event itself, which the
        // kernel writes after its log line; the log thread reads at least every 250 ms. With
        // the flag, each kernel line is awaited; then the agent stops and its log is read to
        // the end, so a line without the flag would be there too.
        let expected: &[&str] = if ebpf_log {
            &[
                "connection threshold crossed",
                "over the threshold of 3",
                "is not the watched",
            ]
        } else {
            &["connection threshold crossed"]
        };
        for text in expected {
            if !log.iter().any(|l| l.contains(text)) {
                log.extend(lines_until(&rx, |l| l.contains(text)));
            }
        }
        stop(child);
        log.extend(rx.iter());
        assert!(
            log.iter()
                .any(|l| l.contains("connection threshold crossed")),
            "the agent saw the crossing (ebpf_log {ebpf_log}): {log:#?}"
        );
        let kernel: Vec<&String> = log
            .iter()
            .filter(|l| l.contains("vespa::conntrack"))
            .collect();
        if !ebpf_log {
            assert!(
                kernel.is_empty(),
                "no kernel lines without --ebpf-log: {kernel:#?}"
            );
            continue;
        }
        let has =
            |level: &str, text: &str| kernel.iter().any(|l| l.contains(level) && l.contains(text));
        assert!(
            has(
                "INFO",
                "remote 127.0.0.1: 4 established connections, over the threshold of 3"
            ),
            "the threshold crossing, with its values, from the kernel: {log:#?}"
        );
        assert!(
            has("DEBUG", "is not the watched"),
            "the tracker's namespace filter leaves the other namespace out: {log:#?}"
        );
    }
}
