//! `--log-format journald`, as the units run both binaries: each log event reaches the
//! journal's socket as one entry, its message and its fields as journal fields. The socket is
//! the test's, bound where journald's would be in a private mount namespace.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use vespa_tests::{privileged, tree::Scratch, workspace_bin};

#[test]
fn both_binaries_log_to_the_journal_with_their_fields() {
    if !privileged("both_binaries_log_to_the_journal_with_their_fields") {
        return;
    }
    let scratch = Scratch::new("journal");
    let path = scratch.dir.join("journal.socket");
    let journal = UnixDatagram::bind(&path).expect("bind the journal's socket");
    journal
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    for bin in ["vespa-orchestrator", "vespa-agent"] {
        // The embedded loopback topology: this host is its machine, and the log says why.
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/journal \
                 && touch /run/systemd/journal/socket \
                 && mount --bind \"$0\" /run/systemd/journal/socket && exec \"$@\"",
            )
            .arg(&path)
            .arg(workspace_bin(bin))
            .args(["--log-format", "journald", "run", "--check-config"])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{bin}: {stderr}");
        assert!(stderr.trim().is_empty(), "{bin} logged on stderr: {stderr}");
        let mut buf = vec![0u8; 65536];
        let entry = loop {
            let n = journal.recv(&mut buf).expect("an entry");
            let e = fields(&buf[..n]);
            if e.iter()
                .any(|(k, v)| k == "MESSAGE" && v.contains("this host is a machine"))
            {
                break e;
            }
        };
        let get = |key: &str| {
            entry
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{bin}: no {key} in {entry:?}"))
        };
        assert_eq!(get("MESSAGE"), "this host is a machine of the topology");
        assert_eq!(get("F_MACHINE"), "\"localhost\"");
        assert!(get("F_WHY").contains("127.0.0.1"), "{entry:?}");
        assert_eq!(get("SYSLOG_IDENTIFIER"), bin);
        assert_eq!(get("TARGET"), "vespa_node::launch");
        // Info: the journal's notice level, as tracing-journald maps it.
        assert_eq!(get("PRIORITY"), "5");
    }
}

/// The fields of one entry of the journal's native protocol: `KEY=value\n`, or for values
/// that may hold a newline `KEY\n`, their length (64 bits, little-endian), the value, `\n`.
fn fields(mut b: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(end) = b.iter().position(|&c| c == b'=' || c == b'\n') {
        let key = String::from_utf8_lossy(&b[..end]).into_owned();
        if b[end] == b'=' {
            let rest = &b[end + 1..];
            let stop = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            out.push((key, String::from_utf8_lossy(&rest[..stop]).into_owned()));
            b = rest.get(stop + 1..).unwrap_or_default();
        } else {
            let rest = &b[end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
            out.push((key, String::from_utf8_lossy(&rest[8..8 + len]).into_owned()));
            b = rest.get(8 + len + 1..).unwrap_or_default();
        }
    }
    out
}
