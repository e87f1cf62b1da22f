//! Config loading: the 2014 file, the TOML twin, the default, and one fixture per error class
//! (fixtures live in tests/fixtures/config so the CLI tests share them).

use std::path::{Path, PathBuf};

use super::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/config")
        .join(name)
}

fn load_err(name: &str) -> String {
    match Topology::load(&fixture(name)) {
        Ok(_) => panic!("{name} must be rejected"),
        Err(e) => {
            let s = e.to_string();
            // Errors name the file as given; strip the directory for the comparison.
            s.split_once("config/")
                .map_or(s.clone(), |(_, rest)| rest.to_string())
        }
    }
}

#[test]
fn the_2014_config_ini_maps_onto_the_same_model_as_its_toml_twin() {
    let ini = Topology::load(&fixture("vespa-2014-config.ini")).expect("2014 config.ini loads");
    let toml = Topology::load(&fixture("vespa-2014-config.toml")).expect("TOML twin loads");
    assert_eq!(ini.format, Format::Ini);
    let strip = |t: &Topology| {
        let nodes: Vec<_> = t
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    n.role,
                    n.location.clone(),
                    n.master.clone(),
                    n.port,
                )
            })
            .collect();
        let machines: Vec<_> = t
            .machines
            .iter()
            .map(|m| (m.name.clone(), m.address))
            .collect();
        (nodes, machines)
    };
    assert_eq!(strip(&ini), strip(&toml));
    assert_eq!(ini.machines.len(), 2);
    assert_eq!(ini.nodes.len(), 7);
    assert_eq!(ini.vo().name, "VO");
    let fl = ini
        .node("Agent_Controller_Floodlight")
        .expect("floodlight agent");
    assert_eq!(fl.role, Role::Agent(AgentKind::ControllerFloodlight));
    assert_eq!(ini.listen_addr(fl), "192.0.2.1:4155".parse().expect("addr"));
    let kids: Vec<&str> = ini.children_of("HO_VM").map(|n| n.name.as_str()).collect();
    assert_eq!(kids, ["Agent_Bandwidth", "Agent_Connections"]);
    let tree = ini.render_tree();
    assert!(
        tree.contains("|-- HO_VM (ho_vm) on firewall at 192.0.2.1:4151"),
        "{tree}"
    );
    assert!(
        tree.contains("|   |-- Agent_Bandwidth (agent_bandwidth) on web at 192.0.2.10:4152"),
        "{tree}"
    );
}

#[test]
fn the_embedded_default_is_the_2014_tree_on_loopback() {
    let t = Topology::embedded_default();
    assert_eq!(t.vo().port, 4150);
    assert!(t.machines.iter().all(|m| m.address.is_loopback()));
    assert_eq!(t.nodes.iter().filter(|n| n.role.is_ho()).count(), 3);
    assert_eq!(t.nodes.iter().filter(|n| n.role.is_agent()).count(), 2);
}

#[test]
fn every_error_names_file_line_table_and_field() {
    let cases = [
        ("broken-unknown-key.toml", "broken-unknown-key.toml:22: unknown field `mastr`"),
        ("broken-missing-master.toml", "broken-missing-master.toml:22: [[node]] \"agent\": field `master`: no node named \"vo2\""),
        ("broken-two-vos.toml", "broken-two-vos.toml:18: [[node]] \"VO2\": field `kind`: a second VO"),
        ("broken-duplicate-port.toml", "broken-duplicate-port.toml:23: [[node]] \"agent\": field `port`: port 4151 on machine \"host\" is already used by node \"HO_VM\""),
        ("broken-duplicate-name.toml", "broken-duplicate-name.toml:18: [[node]] \"HO_VM\": field `name`: a node of this name is already defined"),
        ("broken-unknown-kind.toml", "broken-unknown-kind.toml:20: [[node]] \"agent\": field `kind`: unknown kind \"agent_teleport\""),
        ("broken-unknown-machine.toml", "broken-unknown-machine.toml:21: [[node]] \"agent\": field `location`: no machine named \"mars\""),
        ("broken-agent-under-agent.toml", "broken-agent-under-agent.toml:29: [[node]] \"a2\": field `master`: the master of a node of kind agent_connections must be an HO or the VO, but \"a1\" is of kind agent_bandwidth"),
        ("broken-cycle.toml", "broken-cycle.toml:22: [[node]] \"HO_A\": field `master`: the master of a node of kind ho_hy must be the VO, but \"HO_B\" is of kind ho_ph"),
        ("broken-port-range.toml", "broken-port-range.toml:23: invalid value"),
        ("broken-syntax.toml", "broken-syntax.toml:18: "),
        ("broken-bad-address.toml", "broken-bad-address.toml:3: [[machine]] \"host\": field `address`: \"localhost.example\" is not an IP address"),
        ("broken-no-vo.toml", "broken-no-vo.toml: no VO"),
        ("broken-settings.toml", "broken-settings.toml:19: [settings]: field `queue_capacity`: must be at least 1"),
        ("broken-2014-unknown-key.ini", "broken-2014-unknown-key.ini:57: [Agent_Connections]: field `port`: missing (this agent's other keys are taken as its parameters: prot)"),
        ("broken-2014-missing-master.ini", "broken-2014-missing-master.ini:54: [Agent_Controller_Floodlight]: field `master`: no node named \"HO_XX\""),
        ("broken-2014-bad-port.ini", "broken-2014-bad-port.ini:50: [Agent_Bandwidth]: field `port`: \"web\" is not a port number"),
    ];
    let mut wrong = Vec::new();
    for (file, want) in cases {
        let got = load_err(file);
        if !got.starts_with(want) {
            wrong.push(format!(
                "{file}:\n   want prefix: {want}\n   got:         {got}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_missing_file_is_named() {
    let e =
        Topology::load(std::path::Path::new("/nonexistent/vespa.toml")).expect_err("missing file");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/vespa.toml: cannot read:"),
        "{e}"
    );
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let dir = std::env::temp_dir().join(format!("vespa-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("t.toml");
    let text = format!(
        "[settings]\nkey_file = \"psk\"\nspool_dir = \"state\"\n{}",
        DEFAULT_TOPOLOGY
            .split_once("[[machine]]")
            .map(|(_, r)| format!("[[machine]]{r}"))
            .expect("default has machines")
    );
    std::fs::write(
        &path,
        text.replace("port = 4150", "port = 4150\njournal = \"vo.jsonl\""),
    )
    .expect("write");
    let t = Topology::load(&path).expect("loads");
    assert_eq!(t.settings.key_file, dir.join("psk"));
    std::fs::write(
        &path,
        text.replace(
            "key_file = \"psk\"",
            "key_file = \"psk\"\nledger = \"state/ledger.db\"",
        ),
    )
    .expect("write");
    let l = Topology::load(&path).expect("loads").settings.ledger;
    assert_eq!(l, Some(dir.join("state/ledger.db")));
    let url = "postgres://vespa@db.example/vespa";
    std::fs::write(
        &path,
        text.replace(
            "key_file = \"psk\"",
            &format!("key_file = \"psk\"\nledger = \"{url}\""),
        ),
    )
    .expect("write");
    let l = Topology::load(&path).expect("loads").settings.ledger;
    assert_eq!(l.as_deref(), Some(Path::new(url)), "a URL is not a path");
    assert_eq!(
        t.vo().journal.as_deref(),
        Some(dir.join("vo.jsonl").as_path())
    );
    assert_eq!(t.settings.spool_dir, Some(dir.join("state")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_journal_budget_defaults_to_64_mib_and_refuses_less_than_64_kib() {
    let with = |line: &str| {
        Topology::from_toml(
            "t.toml",
            &DEFAULT_TOPOLOGY.replace(
                "key_file = \"/etc/vespa/psk\"",
                &format!("key_file = \"/etc/vespa/psk\"\n{line}"),
            ),
        )
    };
    assert_eq!(
        Topology::embedded_default().settings.journal_max_bytes,
        64 << 20
    );
    let t = with("journal_max_bytes = 1048576").expect("valid");
    assert_eq!(t.settings.journal_max_bytes, 1 << 20);
    let e = with("journal_max_bytes = 4096").expect_err("too small");
    assert_eq!(
        e.to_string(),
        "t.toml:6: [settings]: field `journal_max_bytes`: must be at least 65536 bytes"
    );
    assert_eq!(Topology::embedded_default().settings.ledger, None);
    let t = with("ledger = \"/var/lib/vespa/ledger.db\"").expect("valid");
    assert_eq!(
        t.settings.ledger.as_deref(),
        Some(std::path::Path::new("/var/lib/vespa/ledger.db"))
    );
    let e = with("ledger = \"\"").expect_err("empty");
    assert_eq!(
        e.to_string(),
        "t.toml:6: [settings]: field `ledger`: must name a file (the decision ledger's SQLite database) or a postgres:// URL"
    );
}

#[test]
fn the_spool_is_off_by_default_its_budget_64_mib_and_each_node_has_its_own_file() {
    let with = |line: &str| {
        Topology::from_toml(
            "t.toml",
            &DEFAULT_TOPOLOGY.replace(
                "key_file = \"/etc/vespa/psk\"",
                &format!("key_file = \"/etc/vespa/psk\"\n{line}"),
            ),
        )
    };
    let psk = || crate::Security::Psk(vespa_proto::Psk::random());
    let t = Topology::embedded_default();
    assert_eq!(
        (t.settings.spool_dir.as_ref(), t.settings.spool_max_bytes),
        (None, 64 << 20)
    );
    let agent = t
        .nodes
        .iter()
        .find(|n| n.role.is_agent())
        .expect("an agent");
    let spec = crate::NodeSpec::from_topology(&t, &agent.name, psk()).expect("spec");
    assert_eq!(spec.spool, None, "no spool_dir: in memory, as before");

    let t = with("spool_dir = \"/var/lib/vespa\"\nspool_max_bytes = 1048576").expect("valid");
    assert_eq!(t.settings.spool_max_bytes, 1 << 20);
    let spec = crate::NodeSpec::from_topology(&t, &agent.name, psk()).expect("spec");
    let expected = std::path::Path::new("/var/lib/vespa").join(format!("{}.spool", agent.name));
    assert_eq!(spec.spool.as_deref(), Some(expected.as_path()));
    let vo = crate::NodeSpec::from_topology(&t, &t.vo().name, psk()).expect("spec");
    assert_eq!(
        vo.spool, None,
        "the VO has no master: its journal is its record"
    );

    let e = with("spool_max_bytes = 4096").expect_err("too small");
    assert_eq!(
        e.to_string(),
        "t.toml:6: [settings]: field `spool_max_bytes`: must be at least 65536 bytes"
    );
    let e = with("spool_dir = \"\"").expect_err("empty");
    assert_eq!(
        e.to_string(),
        "t.toml:6: [settings]: field `spool_dir`: must name a directory (leave it out for no spool)"
    );
}

#[test]
fn ini_agent_sections_carry_their_parameters_and_the_others_refuse_unknown_keys() {
    let base = include_str!("../../../tests/fixtures/config/vespa-2014-config.ini");
    let with = base.replace(
        "[Agent_Controller_Floodlight]\nLocation= firewall",
        "[Agent_Controller_Floodlight]\nurl= http://192.0.2.1:8080\nAPI= v1\nLocation= firewall",
    );
    let t = Topology::from_ini("config.ini", &with).expect("valid");
    let fl = t.node("Agent_Controller_Floodlight").expect("floodlight");
    let params: Vec<(&str, &str)> = fl
        .params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(params, [("api", "v1"), ("url", "http://192.0.2.1:8080")]);
    assert!(t.node("Agent_Bandwidth").expect("bw").params.is_empty());

    let ho = base.replace(
        "[HO_VM]\nLocation= firewall",
        "[HO_VM]\nvm= web1\nLocation= firewall",
    );
    let e = Topology::from_ini("config.ini", &ho).expect_err("an HO takes no parameters");
    assert!(
        e.to_string().contains("[HO_VM]: field `vm`: unknown key (a node of kind ho_vm has Type, Location, Master and Port; only agents take parameters)"),
        "{e}"
    );
    let machine = base.replace(
        "Interfaces= 192.0.2.1\n",
        "Interfaces= 192.0.2.1\nvm= web1\n",
    );
    let e = Topology::from_ini("config.ini", &machine).expect_err("a machine neither");
    assert!(
        e.to_string()
            .contains("[firewall]: field `vm`: unknown key (a machine has Type and Interfaces)"),
        "{e}"
    );
}

const OUTPUT_BASE: &str = r#"
[[machine]]
name = "h"
address = "127.0.0.1"

[[node]]
name = "VO"
kind = "vo"
location = "h"
port = 4150
"#;

fn with_outputs(outputs: &str) -> Result<Topology, String> {
    Topology::from_toml("t.toml", &format!("{OUTPUT_BASE}{outputs}")).map_err(|e| e.to_string())
}

#[test]
fn outputs_are_read_with_their_defaults() {
    let t = with_outputs(
        r#"
[[output]]
kind = "webhook"
url = "https://hooks.example/services/x"
template = "slack"
min_severity = "warning"
headers = { Authorization = "Bearer x" }

[[output]]
name = "siem"
kind = "syslog"
transport = "tcp"
address = "127.0.0.1:6514"
format = "cef"
facility = "local4"
kinds = ["infected", "decision"]

[[output]]
kind = "file"
path = "alerts.jsonl"
queue = 10

[[output]]
kind = "nats"
url = "nats://127.0.0.1:4222"
rules = ["syn-flood"]
"#,
    )
    .expect("valid");
    let names: Vec<&str> = t.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["webhook", "siem", "file", "nats"]);
    let OutputKind::Webhook(w) = &t.outputs[0].kind else {
        panic!("webhook")
    };
    assert_eq!(w.template, outputs::WebhookTemplate::Slack);
    assert_eq!(w.timeout, Duration::from_secs(5));
    assert_eq!(t.outputs[0].filter.min_severity, Severity::Warning);
    let OutputKind::Syslog(s) = &t.outputs[1].kind else {
        panic!("syslog")
    };
    assert_eq!(
        s.transport,
        outputs::SyslogTransport::Tcp("127.0.0.1:6514".into())
    );
    assert_eq!((s.facility, s.format), (20, outputs::SyslogFormat::Cef));
    assert_eq!(t.outputs[2].queue, 10);
    assert_eq!(t.outputs[1].queue, outputs::DEFAULT_OUTPUT_QUEUE);
    let OutputKind::Nats(n) = &t.outputs[3].kind else {
        panic!("nats")
    };
    assert_eq!(n.subject_prefix, "vespa");
    assert_eq!(t.outputs[3].filter.rules, ["syn-flood"]);
}

#[test]
fn output_mistakes_name_the_line_and_the_field() {
    let base_lines = OUTPUT_BASE.lines().count();
    let cases = [
        (
            "[[output]]\nkind = \"webhook\"\nurl = \"hooks.example/x\"\n",
            3,
            "[[output]] \"webhook\": field `url`: \"hooks.example/x\" is not a URL",
        ),
        (
            "[[output]]\nkind = \"syslog\"\naddress = \"127.0.0.1\"\n",
            3,
            "field `address`: \"127.0.0.1\" is not host:port",
        ),
        (
            "[[output]]\nkind = \"smtp\"\n",
            2,
            "field `kind`: unknown output kind \"smtp\"",
        ),
        (
            "[[output]]\nkind = \"file\"\npath = \"a\"\ntemplate = \"slack\"\n",
            4,
            "field `template`: not a field of a file output",
        ),
        (
            "[[output]]\nkind = \"file\"\npath = \"a\"\nkinds = [\"bandwith\"]\n",
            4,
            "field `kinds`: unknown kind \"bandwith\"",
        ),
        (
            "[[output]]\nkind = \"file\"\npath = \"a\"\nqueue = 0\n",
            4,
            "field `queue`: must be between 1",
        ),
        (
            "[[output]]\nkind = \"nats\"\nurl = \"http://127.0.0.1:4222\"\n",
            3,
            "field `url`: \"http://127.0.0.1:4222\": scheme \"http\" is not one of nats, tls",
        ),
        (
            "[[output]]\nkind = \"file\"\npath = \"a\"\n\n[[output]]\nkind = \"file\"\npath = \"b\"\n",
            5,
            "field `name`: an output named \"file\" is already defined",
        ),
        (
            "[[output]]\nkind = \"webhook\"\nurl = \"http://h/\"\nmin_severity = \"loud\"\n",
            4,
            "field `min_severity`: \"loud\" is not one of debug",
        ),
    ];
    for (text, line, want) in cases {
        let e = with_outputs(text).expect_err(text);
        let at = format!("t.toml:{}:", base_lines + line);
        assert!(e.starts_with(&at), "{e} (want {at})");
        assert!(e.contains(want), "{e} (want {want})");
    }
}

#[test]
fn output_paths_are_relative_to_the_topology_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        format!("{OUTPUT_BASE}\n[[output]]\nkind = \"file\"\npath = \"out/alerts.jsonl\"\n"),
    )
    .expect("write");
    let t = Topology::load(&path).expect("valid");
    let OutputKind::File(f) = &t.outputs[0].kind else {
        panic!("file")
    };
    assert_eq!(f.path, dir.path().join("out/alerts.jsonl"));
}
