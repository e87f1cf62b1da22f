//! The binaries' configuration surface: --check-config on the 2014 config.ini, its TOML twin
//! and the embedded default; one broken fixture per error class, each reported as
//! `file:line: table: field: problem` with exit status 1 and no panic; the key file.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use vespa_tests::workspace_bin;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/config")
        .join(name)
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(workspace_bin(program))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run")
}

use crate::kit::output_text as text;

fn no_panic(o: &Output) {
    assert!(!text(o).contains("panicked"), "{}", text(o));
    assert_ne!(
        o.status.code(),
        Some(101),
        "exit 101 is a panic: {}",
        text(o)
    );
}

#[test]
fn check_config_prints_the_2014_tree_from_ini_and_toml_alike() {
    let ini = fixture("vespa-2014-config.ini");
    let toml = fixture("vespa-2014-config.toml");
    let a = run(
        "vespa-orchestrator",
        &[
            "run",
            "--check-config",
            "--config",
            ini.to_str().expect("utf-8"),
            "--machine",
            "firewall",
        ],
    );
    assert!(a.status.success(), "{}", text(&a));
    let out = String::from_utf8_lossy(&a.stdout).to_string();
    for line in [
        "2 machine(s), 7 node(s)",
        "VO (vo) on firewall at 192.0.2.1:4150",
        "|-- HO_VM (ho_vm) on firewall at 192.0.2.1:4151",
        "|   |-- Agent_Bandwidth (agent_bandwidth) on web at 192.0.2.10:4152",
        "|   `-- Agent_Connections (agent_connections) on web at 192.0.2.10:4156",
        "|   `-- Agent_Controller_Floodlight (agent_controller_floodlight) on firewall at 192.0.2.1:4155",
        "this process would run: VO, HO_VM, HO_HY, HO_PH",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    let b = run(
        "vespa-orchestrator",
        &[
            "run",
            "--check-config",
            "--config",
            toml.to_str().expect("utf-8"),
            "--machine",
            "firewall",
        ],
    );
    let tree = |s: &str| {
        s.lines()
            .skip(1)
            .filter(|l| !l.starts_with("key file"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        tree(&out),
        tree(&String::from_utf8_lossy(&b.stdout)),
        "INI and TOML give the same tree"
    );

    let c = run(
        "vespa-agent",
        &[
            "run",
            "--check-config",
            "--config",
            ini.to_str().expect("utf-8"),
            "--machine",
            "firewall",
        ],
    );
    assert!(c.status.success(), "{}", text(&c));
    assert!(
        text(&c).contains("this process would run: Agent_Controller_Floodlight"),
        "{}",
        text(&c)
    );
    let d = run(
        "vespa-agent",
        &[
            "run",
            "--check-config",
            "--config",
            ini.to_str().expect("utf-8"),
            "--machine",
            "web",
        ],
    );
    assert!(
        text(&d).contains("this process would run: Agent_Bandwidth, Agent_Connections"),
        "{}",
        text(&d)
    );
    let e = run(
        "vespa-orchestrator",
        &[
            "run",
            "--check-config",
            "--config",
            ini.to_str().expect("utf-8"),
            "--node",
            "Agent_Bandwidth",
        ],
    );
    assert_eq!(e.status.code(), Some(1));
    assert!(
        text(&e).contains(
            "node \"Agent_Bandwidth\" is of kind agent_bandwidth, which this program does not run"
        ),
        "{}",
        text(&e)
    );
}

#[test]
fn without_config_the_embedded_loopback_default_is_used() {
    let o = run("vespa-orchestrator", &["run", "--check-config"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("<embedded default>")
            && out.contains("VO (vo) on localhost at 127.0.0.1:4150"),
        "{out}"
    );
    // Its one machine is on loopback, as every machine of it: it is this host, whatever the
    // host's name.
    assert!(
        out.contains("this host is machine \"localhost\": its address 127.0.0.1 is on this host's lo (loopback, and every machine of the topology is on loopback)")
            && out.contains("this process would run: VO, HO_VM, HO_HY, HO_PH"),
        "{out}"
    );
}

#[test]
fn a_topology_with_no_machine_of_this_host_is_refused_naming_what_was_tried() {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let ini = fixture("vespa-2014-config.ini");
    for program in ["vespa-orchestrator", "vespa-agent"] {
        let o = run(
            program,
            &[
                "run",
                "--check-config",
                "--config",
                ini.to_str().expect("utf-8"),
            ],
        );
        no_panic(&o);
        assert_eq!(o.status.code(), Some(1), "{program}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        for want in [
            "no machine of the topology is this host".to_string(),
            format!("the host name {:?}", hostname.trim()),
            "127.0.0.1 (lo)".to_string(),
            "web (192.0.2.10), firewall (192.0.2.1)".to_string(),
        ] {
            assert!(err.contains(&want), "{program}: want {want:?} in:\n{err}");
        }
    }
}

#[test]
fn every_broken_fixture_is_one_clear_error() {
    let cases = [
        ("broken-unknown-key.toml", ":22: unknown field `mastr`"),
        (
            "broken-missing-master.toml",
            ":22: [[node]] \"agent\": field `master`: no node named \"vo2\"",
        ),
        (
            "broken-two-vos.toml",
            ":18: [[node]] \"VO2\": field `kind`: a second VO",
        ),
        (
            "broken-duplicate-port.toml",
            ":23: [[node]] \"agent\": field `port`: port 4151",
        ),
        (
            "broken-duplicate-name.toml",
            ":18: [[node]] \"HO_VM\": field `name`",
        ),
        (
            "broken-unknown-kind.toml",
            ":20: [[node]] \"agent\": field `kind`: unknown kind \"agent_teleport\"",
        ),
        (
            "broken-unknown-machine.toml",
            ":21: [[node]] \"agent\": field `location`: no machine named \"mars\"",
        ),
        (
            "broken-agent-under-agent.toml",
            ":29: [[node]] \"a2\": field `master`",
        ),
        (
            "broken-cycle.toml",
            ":22: [[node]] \"HO_A\": field `master`",
        ),
        ("broken-port-range.toml", ":23: "),
        ("broken-syntax.toml", ":18: "),
        (
            "broken-bad-address.toml",
            ":3: [[machine]] \"host\": field `address`",
        ),
        ("broken-no-vo.toml", ": no VO"),
        (
            "broken-settings.toml",
            ":19: [settings]: field `queue_capacity`",
        ),
        (
            "broken-2014-unknown-key.ini",
            ":57: [Agent_Connections]: field `port`: missing (this agent's other keys are taken as its parameters: prot)",
        ),
        (
            "broken-2014-missing-master.ini",
            ":54: [Agent_Controller_Floodlight]: field `master`: no node named \"HO_XX\"",
        ),
        (
            "broken-2014-bad-port.ini",
            ":50: [Agent_Bandwidth]: field `port`",
        ),
    ];
    for (file, want) in cases {
        let path = fixture(file);
        let p = path.to_str().expect("utf-8");
        for program in ["vespa-orchestrator", "vespa-agent"] {
            let o = run(program, &["run", "--check-config", "--config", p]);
            no_panic(&o);
            assert_eq!(o.status.code(), Some(1), "{program} {file}: {}", text(&o));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains(&format!("{p}{want}")),
                "{program} {file}: want `{p}{want}` in:\n{err}"
            );
            assert_eq!(
                err.trim().lines().count(),
                1,
                "{program} {file}: one line:\n{err}"
            );
        }
    }
}

#[test]
fn keygen_writes_an_owner_only_key_and_run_refuses_a_loose_one() {
    let s = crate::kit::Scratch::new("keygen");
    let key = s.dir.join("psk");
    let k = key.to_str().expect("utf-8");
    let o = run("vespa-orchestrator", &["keygen", k]);
    assert!(o.status.success(), "{}", text(&o));
    let meta = std::fs::metadata(&key).expect("key written");
    assert_eq!(meta.len(), 32);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let again = run("vespa-orchestrator", &["keygen", k]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    assert!(run("vespa-orchestrator", &["keygen", "--force", k])
        .status
        .success());

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let ini = fixture("vespa-2014-config.toml");
    let o = run(
        "vespa-orchestrator",
        &[
            "run",
            "--config",
            ini.to_str().expect("utf-8"),
            "--machine",
            "firewall",
            "--key",
            k,
        ],
    );
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("chmod 600"), "{}", text(&o));
    let o = run(
        "vespa-orchestrator",
        &[
            "run",
            "--config",
            ini.to_str().expect("utf-8"),
            "--machine",
            "firewall",
            "--key",
            "/nonexistent/psk",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("/nonexistent/psk") && text(&o).contains("keygen"),
        "{}",
        text(&o)
    );
}

#[test]
fn help_describes_the_commands_and_flags() {
    let o = run("vespa-orchestrator", &["--help"]);
    for w in ["run", "keygen", "call", "--log-format"] {
        assert!(text(&o).contains(w), "--help mentions {w}:\n{}", text(&o));
    }
    let o = run("vespa-orchestrator", &["run", "--help"]);
    for w in ["--config", "--check-config", "--key", "--node", "--machine"] {
        assert!(
            text(&o).contains(w),
            "run --help mentions {w}:\n{}",
            text(&o)
        );
    }
    let o = run("vespa-agent", &["run", "--help"]);
    for w in [
        "--config",
        "--check-config",
        "--key",
        "--node",
        "--log-format",
    ] {
        assert!(
            text(&o).contains(w),
            "vespa-agent run --help mentions {w}:\n{}",
            text(&o)
        );
    }
}
