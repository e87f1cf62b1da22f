//! The package a host installs: `cargo xtask dist` builds it (the release binaries: cargo
//! rebuilds them only if the sources changed), `dpkg-deb` inspects it, `dpkg --root` installs,
//! upgrades and purges it in a scratch root with its maintainer scripts, and `dpkg-deb -x`
//! unpacks it into another, which is then laid over the machine's own /usr and /etc in private mount
//! namespaces (read-only overlays: the machine as if the package were installed, and nothing
//! of it seen outside). There `systemd-analyze` verifies its units and rates them, and its
//! binaries start the tree from its /etc/vespa files with its units' exact ExecStart lines,
//! each as its unit's service would run (`setpriv` with the unit's capabilities, as an
//! unprivileged user; a tmpfs as its StateDirectory), in a network namespace of their own
//! (the tree on its loopback), told of systemd's notification socket and watchdog.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vespa_tests::{cmd, net::Netns, privileged, tree::Scratch, workspace_bin};

use super::unit;

const BOUND: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn run(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{c:?} failed:\n{text}");
    text
}

/// A service's process, killed if the test ends before it stops.
struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a service sent to its `$NOTIFY_SOCKET`.
struct Notifications {
    sock: UnixDatagram,
    seen: String,
}

impl Notifications {
    fn bind(path: &Path) -> Notifications {
        let sock = UnixDatagram::bind(path).expect("bind the notification socket");
        // The services run as another user.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        Notifications {
            sock,
            seen: String::new(),
        }
    }

    /// Waits until a datagram held the line `line`.
    fn wait_for(&mut self, line: &str, service: &Service) {
        let end = Instant::now() + BOUND;
        let mut buf = [0u8; 4096];
        while !self.seen.lines().any(|l| l == line) {
            assert!(
                Instant::now() < end,
                "no {line} within {BOUND:?}; got {:?}; log:\n{}",
                self.seen,
                service.log()
            );
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                self.seen.push('\n');
            }
        }
    }
}

/// `argv` run on the machine as if the package in `root` were installed: in a private mount
/// namespace, `root`'s /usr and /etc laid over the machine's (read-only overlays) and a tmpfs
/// owned by the service's user at /var/lib/vespa (the units' StateDirectory).
fn installed(root: &Path, argv: &[String]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t overlay overlay -o lowerdir={r}/usr:/usr /usr \
             && mount -t overlay overlay -o lowerdir={r}/etc:/etc /etc \
             && mkdir -p /var/lib/vespa \
             && mount -t tmpfs -o mode=0750,uid={u},gid={u} tmpfs /var/lib/vespa \
             && exec \"$@\"",
            r = root.display(),
            u = unit::UID
        ))
        .arg("sh")
        .args(argv);
    c
}

/// [`installed`], in network namespace `netns`.
fn installed_in(netns: &str, root: &Path, argv: &[String]) -> Command {
    let inner = installed(root, argv);
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{netns}"))
        .arg(inner.get_program())
        .args(inner.get_args());
    c
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// The unit's ExecStart run as its service: the unit's capability sets, its user's stand-in.
fn service_argv(unit_text: &str) -> Vec<String> {
    let mut argv = unit::setpriv(
        &unit::caps(unit_text, "AmbientCapabilities"),
        &unit::caps(unit_text, "CapabilityBoundingSet"),
    );
    argv.extend(words(&unit::setting(unit_text, "ExecStart")));
    argv
}

/// The package and the tarball `cargo xtask dist` made.
pub(super) struct Package {
    pub deb: PathBuf,
    pub tarball: PathBuf,
}

/// Builds the package once per test process (the release binaries: cargo does nothing when
/// they are current), for every test that installs it.
pub(super) fn package() -> &'static Package {
    static BUILT: std::sync::OnceLock<Package> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = run(Command::new(cargo)
            .current_dir(repo())
            .args(["xtask", "dist"]));
        eprintln!("{built}");
        let target = workspace_bin("vespa-agent")
            .parent()
            .and_then(Path::parent)
            .expect("target/")
            .to_path_buf();
        let dist = target.join("dist");
        let find = |suffix: &str| -> PathBuf {
            std::fs::read_dir(&dist)
                .expect("target/dist")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.to_string_lossy().ends_with(suffix))
                .unwrap_or_else(|| panic!("no *{suffix} in {}", dist.display()))
        };
        Package {
            deb: find(".deb"),
            tarball: find(".tar.gz"),
        }
    })
}

#[test]
fn the_package_installs_and_its_units_start_the_tree() {
    if !privileged("the_package_installs_and_its_units_start_the_tree") {
        return;
    }
    for tool in [
        "dpkg-deb",
        "systemd-analyze",
        "setpriv",
        "nsenter",
        "unshare",
    ] {
        assert!(cmd::have(tool), "{tool} is needed (cargo xtask setup)");
    }
    let Package { deb, tarball } = package();
    for f in [deb, tarball] {
        let len = std::fs::metadata(f).expect("size").len();
        eprintln!("{}: {:.1} MiB", f.display(), len as f64 / 1048576.0);
    }

    // Inspect it.
    let fields = run(Command::new("dpkg-deb").arg("-f").arg(deb).args([
        "Package",
        "Architecture",
        "Depends",
    ]));
    assert!(fields.contains("Package: vespa"), "{fields}");
    assert!(fields.contains("libc6"), "{fields}");
    let info = run(Command::new("dpkg-deb").arg("-I").arg(deb));
    for member in ["postinst", "prerm", "postrm", "conffiles", "control"] {
        assert!(info.contains(member), "no {member} in:\n{info}");
    }
    let files = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    let tarred = run(Command::new("tar").arg("-tzf").arg(tarball));
    for path in [
        "usr/bin/vespa-agent",
        "usr/bin/vespa-orchestrator",
        "usr/bin/vespa-exporter",
        "usr/lib/systemd/system/vespa-agent.service",
        "usr/lib/systemd/system/vespa-orchestrator.service",
        "usr/lib/systemd/system/vespa-exporter.service",
        "usr/lib/sysusers.d/vespa.conf",
        "usr/lib/vespa/setup",
        "etc/vespa/topology.toml",
        "etc/vespa/policy.toml",
        "usr/share/man/man1/vespa-agent.1.gz",
        "usr/share/man/man1/vespa-agent-run.1.gz",
        "usr/share/man/man1/vespa-orchestrator.1.gz",
        "usr/share/man/man1/vespa-orchestrator-run.1.gz",
        "usr/share/man/man1/vespa-exporter.1.gz",
        "usr/share/man/man1/vespa-exporter-export.1.gz",
        "usr/share/bash-completion/completions/vespa-agent",
        "usr/share/zsh/vendor-completions/_vespa-orchestrator",
        "usr/share/fish/vendor_completions.d/vespa-agent.fish",
        "usr/share/bash-completion/completions/vespa-exporter",
    ] {
        assert!(
            files.contains(&format!("./{path}\n")),
            "{path} not in the .deb:\n{files}"
        );
        assert!(
            tarred.contains(&format!("/{path}\n")),
            "{path} not in the tarball:\n{tarred}"
        );
    }
    // Root's, whoever built it.
    assert!(files.contains("root/root"), "{files}");

    // Installed with dpkg into a scratch root, its maintainer scripts run (chrootless, on
    // that root): the user, the key and the token made once, kept by an upgrade, the key and
    // the token removed by a purge.
    let scratch = Scratch::new("dist");
    let dpkg_root = scratch.dir.join("dpkg-root");
    std::fs::create_dir_all(dpkg_root.join("var/lib/dpkg/info")).expect("dpkg database");
    std::fs::create_dir_all(dpkg_root.join("var/lib/dpkg/updates")).expect("dpkg database");
    std::fs::write(dpkg_root.join("var/lib/dpkg/status"), "").expect("dpkg status");
    let dpkg = |args: &[&str]| -> String {
        run(Command::new("dpkg")
            .arg(format!("--root={}", dpkg_root.display()))
            // The root holds no libc6 and such: only this package is installed there.
            .args(["--force-script-chrootless", "--force-depends"])
            .args(args))
    };
    let deb_arg = deb.to_string_lossy().into_owned();
    let installed_out = dpkg(&["-i", &deb_arg]);
    assert!(
        installed_out.contains("made the system user vespa"),
        "{installed_out}"
    );
    let passwd = std::fs::read_to_string(dpkg_root.join("etc/passwd")).expect("passwd");
    let vespa_uid: u32 = passwd
        .lines()
        .find_map(|l| l.strip_prefix("vespa:x:"))
        .and_then(|l| l.split(':').next())
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no vespa user in {passwd}"));
    let psk = dpkg_root.join("etc/vespa/psk");
    let secret = std::fs::read(&psk).expect("the postinst made the key");
    for f in ["psk", "api-token"] {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(dpkg_root.join("etc/vespa").join(f)).expect(f);
        assert_eq!((m.uid(), m.mode() & 0o777), (vespa_uid, 0o600), "{f}");
    }
    let listed = dpkg(&["-L", "vespa"]);
    assert!(listed.contains("/usr/bin/vespa-agent\n"), "{listed}");
    let again = dpkg(&["-i", &deb_arg]);
    assert!(
        !again.contains("made"),
        "an upgrade makes nothing again: {again}"
    );
    assert_eq!(
        std::fs::read(&psk).expect("key"),
        secret,
        "an upgrade keeps the key"
    );
    dpkg(&["--purge", "vespa"]);
    assert!(!dpkg_root.join("etc/vespa").exists(), "purged");
    assert!(!dpkg_root.join("usr/bin/vespa-agent").exists(), "purged");

    // Unpacked into a scratch root, for the services below.
    let root = scratch.dir.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    let ctrl = scratch.dir.join("DEBIAN");
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&ctrl));
    let conffiles = std::fs::read_to_string(ctrl.join("conffiles")).expect("conffiles");
    assert_eq!(
        conffiles,
        "/etc/vespa/topology.toml\n/etc/vespa/policy.toml\n"
    );
    let page = run(Command::new("sh").arg("-c").arg(format!(
        "gzip -dc {}",
        root.join("usr/share/man/man1/vespa-agent.1.gz").display()
    )));
    assert!(page.contains(".TH vespa-agent 1"), "{page}");
    // The exporter is the agent without its acting agents: neither libvirt's library nor an
    // HTTP client is linked, nor are the acting agents' commands there.
    let exporter = root.join("usr/bin/vespa-exporter");
    let linked = run(Command::new("objdump").arg("-p").arg(&exporter));
    assert!(!linked.contains("libvirt"), "{linked}");
    let help = run(Command::new(&exporter).arg("--help"));
    assert!(help.contains("Usage: vespa-exporter"), "{help}");

    // Its units, installed: verified, and rated.
    let units = root.join("usr/lib/systemd/system");
    let names = [
        "vespa-agent.service",
        "vespa-orchestrator.service",
        "vespa-exporter.service",
    ];
    let mut verify = words("systemd-analyze verify --man=no");
    verify.extend(names.iter().map(|n| n.to_string()));
    let verified = run(&mut installed(&root, &verify));
    assert!(
        verified.trim().is_empty(),
        "systemd-analyze verify: {verified}"
    );
    for n in names {
        let mut rate = words("systemd-analyze security --offline=true");
        rate.push(n.to_string());
        let rated = run(&mut installed(&root, &rate));
        let score = rated
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .unwrap_or_else(|| panic!("no exposure level:\n{rated}"))
            .to_string();
        eprintln!("systemd-analyze security: {score}");
        let value: f64 = score
            .split(": ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{score}"));
        assert!(value <= 2.5, "{n} exposed more than it was: {score}");
    }

    // The files the set-up makes for the vespa user (here, the uid that stands for it).
    let etc = root.join("etc/vespa");
    run(Command::new(root.join("usr/bin/vespa-orchestrator"))
        .arg("keygen")
        .arg(etc.join("psk")));
    std::fs::write(etc.join("api-token"), "0123456789abcdef0123456789abcdef").expect("token");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        etc.join("api-token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    for f in ["psk", "api-token"] {
        std::os::unix::fs::chown(etc.join(f), Some(unit::UID), Some(unit::UID)).expect("chown");
    }

    // Start both as their units say, in a network namespace of their own.
    let ns = Netns::new("vpkg");
    let orch_unit = unit::read(&units.join(names[1]));
    let agent_unit = unit::read(&units.join(names[0]));
    let mut orch_notes = Notifications::bind(&scratch.dir.join("orchestrator.notify"));
    let mut agent_notes = Notifications::bind(&scratch.dir.join("agent.notify"));
    let start = |name: &str, unit_text: &str, notify: &str| -> Service {
        let log = scratch.dir.join(format!("{name}.log"));
        let err = std::fs::File::create(&log).expect("log file");
        let mut c = installed_in(&ns.name, &root, &service_argv(unit_text));
        c.env("NOTIFY_SOCKET", scratch.dir.join(notify))
            .env("WATCHDOG_USEC", "1000000")
            .stdout(Stdio::null())
            .stderr(err);
        Service {
            child: c.spawn().unwrap_or_else(|e| panic!("{name}: {e}")),
            log,
        }
    };
    let mut orch = start("orchestrator", &orch_unit, "orchestrator.notify");
    orch_notes.wait_for("READY=1", &orch);
    let mut agent = start("agent", &agent_unit, "agent.notify");
    agent_notes.wait_for("READY=1", &agent);
    orch_notes.wait_for("WATCHDOG=1", &orch);
    agent_notes.wait_for("WATCHDOG=1", &agent);

    // The tree forms: a call from the VO down to each agent is answered.
    for (node, verb) in [
        ("Agent_Bandwidth", "interfaces"),
        ("Agent_Connections", "help"),
    ] {
        let argv = words(&format!(
            "/usr/bin/vespa-orchestrator call --config /etc/vespa/topology.toml {node} {verb}"
        ));
        vespa_testkit::wait_until(&format!("{node} to answer through the tree"), BOUND, || {
            installed_in(&ns.name, &root, &argv)
                .output()
                .is_ok_and(|o| o.status.success())
        });
    }

    // `systemctl reload`: the policy is read again, the process stays.
    let hup = |s: &Service| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(s.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP")
    };
    hup(&orch);
    vespa_testkit::wait_until("the policy reloaded", BOUND, || {
        orch.log().contains("SIGHUP: policy reloaded")
    });
    assert!(
        orch.child.try_wait().expect("wait").is_none(),
        "{}",
        orch.log()
    );
    // The agent's unit offers no reload: a SIGHUP (a `kill -HUP` for everything, a hang-up)
    // is said in its log and changes nothing; the tree still answers through it.
    assert!(
        unit::settings(&agent_unit, "ExecReload").is_empty(),
        "{agent_unit}"
    );
    hup(&agent);
    vespa_testkit::wait_until("the agent to log the SIGHUP", BOUND, || {
        agent.log().contains("SIGHUP received")
    });
    let argv = words(
        "/usr/bin/vespa-orchestrator call --config /etc/vespa/topology.toml Agent_Bandwidth interfaces",
    );
    let answer = run(&mut installed_in(&ns.name, &root, &argv));
    assert!(answer.contains("lo"), "{answer}");
    assert!(
        agent.child.try_wait().expect("wait").is_none(),
        "{}",
        agent.log()
    );

    // `systemctl stop`: both say so, stop cleanly, and the agent detaches.
    for s in [&agent, &orch] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(s.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
    }
    agent_notes.wait_for("STOPPING=1", &agent);
    orch_notes.wait_for("STOPPING=1", &orch);
    for s in [&mut agent, &mut orch] {
        let status = s.child.wait().expect("wait");
        assert!(status.success(), "{status}: {}", s.log());
    }
    assert!(
        agent.log().contains("eBPF sensors detached"),
        "{}",
        agent.log()
    );

    // The exporter's unit, on the same address now that the agent is gone (Conflicts=):
    // ready, scraped, deaf to SIGHUP, stopped cleanly.
    let exporter_unit = unit::read(&units.join(names[2]));
    assert_eq!(
        unit::setting(&exporter_unit, "Conflicts"),
        "vespa-agent.service"
    );
    assert!(unit::settings(&exporter_unit, "ExecReload").is_empty());
    let mut exporter_notes = Notifications::bind(&scratch.dir.join("exporter.notify"));
    let exporter = start("exporter", &exporter_unit, "exporter.notify");
    exporter_notes.wait_for("READY=1", &exporter);
    exporter_notes.wait_for("WATCHDOG=1", &exporter);
    let scrape = words("curl -sf http://127.0.0.1:9105/metrics");
    let metrics = run(&mut installed_in(&ns.name, &root, &scrape));
    assert!(
        metrics.contains("vespa_network_receive_bytes_total{device=\"lo\"}"),
        "{metrics}"
    );
    hup(&exporter);
    vespa_testkit::wait_until("the exporter to log the SIGHUP", BOUND, || {
        exporter
            .log()
            .contains("SIGHUP received: nothing to reload")
    });
    run(&mut installed_in(&ns.name, &root, &scrape));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(exporter.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    exporter_notes.wait_for("STOPPING=1", &exporter);
    let mut exporter = exporter;
    let status = exporter.child.wait().expect("wait");
    assert!(status.success(), "{status}: {}", exporter.log());
    assert!(
        exporter.log().contains("eBPF sensors detached"),
        "{}",
        exporter.log()
    );
}
