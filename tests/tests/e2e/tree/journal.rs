//! The VO's journal on a small tmpfs that fills up and is freed, with the nodes in this
//! process over loopback (agent -> HO_VM -> VO): while the journal cannot write, nothing is
//! acknowledged or processed and the file keeps no piece of a record; once there is room,
//! every alert is acknowledged and processed exactly once; a VO killed while alerts waited
//! for its journal, and restarted, processes those and nothing it had acknowledged.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Runtime;
use vespa_node::{
    AgentKind, Hooks, JournalStats, MasterAddr, Node, NodeHandle, NodeSpec, Role, Security,
};
use vespa_proto::{Alert, AlertBody, Psk};
use vespa_testkit::wait_until;
use vespa_tests::cmd;

const WAIT: Duration = Duration::from_secs(20);

/// A tmpfs mounted on a directory of its own; unmounted and removed when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = std::env::temp_dir().join(vespa_tests::unique("vjfs"));
        std::fs::create_dir_all(&dir).expect("mount point");
        let opts = format!("size={size},mode=0700");
        let at = dir.to_str().expect("a UTF-8 temp dir");
        cmd::sh(&["mount", "-t", "tmpfs", "-o", &opts, "tmpfs", at]);
        Tmpfs { dir }
    }

    /// Fills the file system up; removing the returned file frees it.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = [0xA5u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let at = self.dir.to_string_lossy().into_owned();
        if let Err(e) = cmd::run(&["umount", "-l", &at]) {
            eprintln!("{e}");
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn runtime(threads: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime")
}

fn spec(name: &str, role: Role, master: Option<(&str, SocketAddr)>, psk: &Psk) -> NodeSpec {
    let master = master.map(|(name, addr)| MasterAddr {
        name: name.into(),
        addr,
    });
    let mut spec = NodeSpec::new(name, role, master, Security::Psk(psk.clone()));
    spec.settings.heartbeat = Duration::from_millis(200);
    spec.settings.backoff_min = Duration::from_millis(20);
    spec.settings.backoff_max = Duration::from_millis(200);
    spec
}

/// Runs a node on `rt`, listening on `listen` (waiting for it to be free) or any port.
fn start(
    rt: &Runtime,
    spec: NodeSpec,
    hooks: Hooks,
    listen: Option<SocketAddr>,
) -> (NodeHandle, SocketAddr) {
    let _in = rt.enter();
    let name = spec.name.clone();
    let listener = match listen {
        Some(addr) => wait_until(&format!("{addr} to be free for {name}"), WAIT, || {
            vespa_node::launch::bind(&name, addr).map_err(|e| e.to_string())
        }),
        None => {
            vespa_node::launch::bind(&name, "127.0.0.1:0".parse().expect("addr")).expect("bind")
        }
    };
    let addr = listener.local_addr().expect("addr");
    let node = Node::new(spec, hooks).expect("node");
    let handle = node.handle();
    rt.spawn(node.run(Some(listener), std::future::pending()));
    (handle, addr)
}

/// A VO journaling to `journal` (compacted past 64 KiB) whose handler records the sequence
/// numbers of `agent1`'s alerts in `seen`.
fn vo(
    rt: &Runtime,
    journal: &Path,
    psk: &Psk,
    seen: Arc<Mutex<Vec<u64>>>,
    listen: Option<SocketAddr>,
) -> (NodeHandle, SocketAddr) {
    let mut s = spec("VO", Role::Vo, None, psk);
    s.journal = Some(journal.to_path_buf());
    s.settings.journal_max_bytes = 64 * 1024;
    let hooks = Hooks {
        agent: None,
        alert_handlers: vec![Arc::new(move |a: &Arc<Alert>| {
            if a.origin == "agent1" {
                seen.lock().expect("lock").push(a.seq);
            }
        })],
    };
    start(rt, s, hooks, listen)
}

fn raise(agent: &NodeHandle, n: usize, size: usize) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let text = format!("{i}:{}", "x".repeat(size));
            agent.raise(AlertBody::Text(text)).expect("queued")
        })
        .collect()
}

fn journal_of(vo: &NodeHandle) -> JournalStats {
    vo.stats().journal.expect("the VO keeps a journal")
}

fn queue_empty(node: &NodeHandle) -> Result<(), usize> {
    match node.stats().queue_len {
        0 => Ok(()),
        n => Err(n),
    }
}

#[test]
fn a_full_disk_withholds_acks_and_nothing_is_lost_or_processed_twice() {
    if !vespa_tests::privileged("tree::journal::a_full_disk_withholds_acks") {
        return;
    }
    let fs = Tmpfs::mount("1m");
    let journal = fs.dir.join("vo.journal");
    let psk = Psk::random();
    let nodes = runtime(2);
    let vo_rt = runtime(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (vo1, vo_addr) = vo(&vo_rt, &journal, &psk, seen.clone(), None);
    let (_ho, ho_addr) = start(
        &nodes,
        spec("HO_VM", Role::HoVm, Some(("VO", vo_addr)), &psk),
        Hooks::default(),
        None,
    );
    let (agent, _) = start(
        &nodes,
        spec(
            "agent1",
            Role::Agent(AgentKind::Bandwidth),
            Some(("HO_VM", ho_addr)),
            &psk,
        ),
        Hooks::default(),
        None,
    );

    // The journal writes: each alert is acknowledged and processed once.
    let mut raised = raise(&agent, 30, 100);
    wait_until("the first alerts acknowledged", WAIT, || {
        queue_empty(&agent)
    });
    assert_eq!(*seen.lock().expect("lock"), raised);

    // The disk is full. Each alert is larger than what is left of the file's last page, so
    // the first write fails, possibly part-way.
    let bytes_before = journal_of(&vo1).bytes;
    let filler = fs.fill();
    let during = raise(&agent, 20, 8 * 1024);
    let j = wait_until("the journal to fail, and fail again", WAIT, || {
        let j = journal_of(&vo1);
        if !j.writable && j.failures >= 3 && j.pending == 20 {
            Ok(j)
        } else {
            Err(j)
        }
    });
    assert_eq!(j.bytes, bytes_before, "nothing written");
    assert_eq!(agent.stats().queue_len, 20, "nothing acknowledged");
    assert_eq!(seen.lock().expect("lock").len(), 30, "nothing processed");
    // The 30, after the masters' notes of HO_VM's and agent1's registrations.
    assert_eq!(vo1.stats().alerts_processed, 32);
    assert_eq!(
        std::fs::metadata(&journal).expect("journal").len(),
        bytes_before,
        "no piece of a record left in the file"
    );
    let read = vespa_node::journal::read(&journal).expect("read");
    assert_eq!((read.damaged, read.torn_bytes), (0, 0));

    // Room again: all of them acknowledged and processed, once, in order.
    std::fs::remove_file(&filler).expect("free");
    wait_until("the alerts raised while full acknowledged", WAIT, || {
        queue_empty(&agent)
    });
    raised.extend(&during);
    assert_eq!(*seen.lock().expect("lock"), raised);
    let j = journal_of(&vo1);
    assert!(j.writable && j.pending == 0, "{j:?}");
    assert!(
        j.compactions >= 1,
        "160 KiB written past a 64 KiB budget: {j:?}"
    );
    assert!(j.bytes <= 64 * 1024, "{j:?}");

    // Full again, alerts waiting for the journal, and the VO dies (its runtime dropped at
    // once, as SIGKILL would).
    let filler = fs.fill();
    let waiting = raise(&agent, 10, 8 * 1024);
    wait_until("the alerts to wait at the VO", WAIT, || {
        let j = journal_of(&vo1);
        if !j.writable && j.pending == 10 {
            Ok(())
        } else {
            Err(j)
        }
    });
    assert_eq!(agent.stats().queue_len, 10);
    vo_rt.shutdown_background();
    std::fs::remove_file(&filler).expect("free");

    let vo_rt = runtime(1);
    let seen2 = Arc::new(Mutex::new(Vec::new()));
    let (vo2, _) = vo(&vo_rt, &journal, &psk, seen2.clone(), Some(vo_addr));
    let at_start = vo2.stats();
    assert_eq!(at_start.origins["agent1"].count, 50, "the journal's record");
    let j = at_start.journal.expect("journal");
    assert_eq!((j.damaged_at_start, j.torn_bytes_at_start), (0, 0));
    wait_until(
        "the alerts the dead VO never journaled acknowledged",
        WAIT,
        || queue_empty(&agent),
    );
    assert_eq!(
        *seen2.lock().expect("lock"),
        waiting,
        "the restarted VO processed what was never journaled, and nothing it had acknowledged"
    );
    let st = vo2.stats();
    let last = *waiting.last().expect("alerts");
    assert_eq!(
        (st.origins["agent1"].count, st.origins["agent1"].highest),
        (60, last)
    );
    let read = vespa_node::journal::read(&journal).expect("read");
    assert_eq!(read.origins["agent1"], (last, 60));
    assert_eq!(read.damaged, 0);

    // What an operator reads of it.
    let out = std::process::Command::new(vespa_tests::workspace_bin("vespa-orchestrator"))
        .arg("journal")
        .arg(&journal)
        .output()
        .expect("vespa-orchestrator journal");
    assert!(out.status.success(), "{out:?}");
    let printed: Vec<Alert> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("an alert per line"))
        .collect();
    assert_eq!(printed, read.alerts);
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains(&format!(
            "agent1: 60 alert(s) processed, highest sequence number {last}"
        )),
        "{summary}"
    );

    nodes.shutdown_background();
    vo_rt.shutdown_background();
}
