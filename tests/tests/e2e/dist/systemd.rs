//! The package under a real systemd: a container (`systemd-nspawn --boot`) whose root is this
//! machine's own file system under a throw-away overlay, booted to a target that starts
//! nothing but the journal, in a network namespace of its own (its loopback only) with a
//! bpffs of its own. There the operator's install is done as the docs say it: `dpkg -i`, then
//! `systemctl enable --now vespa-orchestrator vespa-agent`; systemd starts the units as they
//! are written (user, capabilities, sandbox, `Type=notify`, the watchdog), and the test checks
//! what an operator would: `systemctl is-active`, the journal, a scrape of each service, a
//! reload, a SIGHUP, the exporter's unit taking the agent's place, and stops.
//!
//! The overlay, the bpffs and the container live in a mount namespace of the test's
//! (`unshare --mount`): nothing of them outlives it, and the machine's own files are never
//! written.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vespa_testkit::{try_wait_until, wait_until};
use vespa_tests::{cmd, privileged, tree::Scratch};

use super::package::package;

const BOOT: Duration = Duration::from_secs(60);
const BOUND: Duration = Duration::from_secs(30);

/// The target the container boots to: the system's early set-up and the journal, none of the
/// machine's own services (its databases, switches and servers stay off).
const TARGET: &str = "[Unit]
Description=The system alone (VESPA's systemd test)
Requires=sysinit.target
After=sysinit.target
AllowIsolate=yes
";

/// Mounts the container's root and its bpffs in the scratch directory `$1` (a tmpfs, so the
/// overlay's upper layer is not on the file system it covers), puts the package `$3` in its
/// upper layer as [`DEB_INSIDE`] (the build tree may be under `/tmp`, which the container
/// mounts afresh, so the host's path would not be seen there), then becomes
/// `systemd-nspawn`. Run inside `unshare --mount --propagation private`. nspawn's own
/// system-call filter, which every process its systemd starts inherits, refuses `bpf` and
/// `perf_event_open` unless told otherwise (`EPERM` on the first map, even for root): a
/// container's limit, not the unit's, so the container allows them as a host does.
const BOOT_SCRIPT: &str = r#"set -e
S=$1; M=$2; D=$3
mount -t tmpfs tmpfs "$S"
mkdir -p "$S/upper/etc/systemd/system" "$S/upper/var/cache/vespa-e2e" "$S/work" "$S/root" "$S/bpf"
cp "$D" "$S/upper/var/cache/vespa-e2e/vespa.deb"
cat > "$S/upper/etc/systemd/system/vespa-e2e.target"
mount -t overlay overlay -o lowerdir=/,upperdir="$S/upper",workdir="$S/work" "$S/root"
mount -t bpf bpf "$S/bpf"
exec systemd-nspawn -D "$S/root" --boot -M "$M" --register=no --keep-unit \
    --capability=all --system-call-filter='bpf perf_event_open' --private-network \
    --console=passive --bind="$S/bpf:/sys/fs/bpf" systemd.unit=vespa-e2e.target
"#;

/// Where the package is inside the container.
const DEB_INSIDE: &str = "/var/cache/vespa-e2e/vespa.deb";

/// The booted container: `systemd-nspawn`, and its init's pid (to enter it).
struct Container {
    nspawn: Child,
    init: u32,
    log: std::path::PathBuf,
}

impl Container {
    fn boot(scratch: &Path, name: &str, deb: &Path) -> Container {
        let root = scratch.join("container");
        std::fs::create_dir_all(&root).expect("container dir");
        let log = scratch.join("nspawn.log");
        let mut nspawn = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                BOOT_SCRIPT,
                "sh",
            ])
            .arg(&root)
            .arg(name)
            .arg(deb)
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(scratch.join("nspawn.err")).expect("log"))
            .spawn()
            .expect("systemd-nspawn");
        {
            use std::io::Write as _;
            let mut stdin = nspawn.stdin.take().expect("stdin");
            stdin.write_all(TARGET.as_bytes()).expect("the target");
        }
        let pid = nspawn.id();
        // The container's init: the `systemd` whose parent is nspawn (the shell exec'd it).
        let init = wait_until("the container's init", BOOT, || {
            std::fs::read_dir("/proc")
                .ok()?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .find(|p| {
                    let stat =
                        std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                    // pid (comm) state ppid ...
                    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
                    stat.contains("(systemd)")
                        && after.split_whitespace().nth(1) == Some(pid.to_string().as_str())
                })
        });
        Container { nspawn, init, log }
    }

    /// `argv` run inside the container (all its namespaces, its root), with its output.
    fn run(&self, argv: &str) -> std::process::Output {
        Command::new("nsenter")
            .args(["-t", &self.init.to_string(), "-a"])
            .args(argv.split_whitespace())
            .output()
            .unwrap_or_else(|e| panic!("nsenter {argv}: {e}"))
    }

    /// [`Container::run`], which must succeed; its stdout.
    fn ok(&self, argv: &str) -> String {
        let o = self.run(argv);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{argv}: {}\n{text}{}\njournal:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            self.journal()
        );
        text
    }

    fn journal(&self) -> String {
        let o = self.run(
            "journalctl --no-pager -n 200 -u vespa-agent -u vespa-orchestrator -u vespa-exporter",
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The MESSAGE fields of a unit's journal.
    fn messages(&self, unit: &str) -> Vec<String> {
        let o = self.run(&format!("journalctl --no-pager -o json -u {unit}"));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["MESSAGE"].as_str().map(str::to_string))
            .collect()
    }

    fn scrape(&self, url: &str) -> Option<String> {
        let o = self.run(&format!("curl -sf --max-time 2 {url}"));
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Powered off by the test on success; killed otherwise (its mounts go with it).
        if self.nspawn.try_wait().ok().flatten().is_none() {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
    }
}

#[test]
fn under_systemd_the_package_installs_enables_and_runs() {
    if !privileged("under_systemd_the_package_installs_enables_and_runs") {
        return;
    }
    for tool in ["systemd-nspawn", "unshare", "nsenter", "curl"] {
        assert!(cmd::have(tool), "{tool} is needed (cargo xtask setup)");
    }
    let deb = &package().deb;
    let scratch = Scratch::new("systemd");
    let name = vespa_tests::unique("vespa-e2e-");
    let c = Container::boot(&scratch.dir, &name[..name.len().min(60)], deb);
    let started = std::time::Instant::now();
    // Until its manager answers (nsenter can come before it listens), then until it booted.
    let state = try_wait_until("the container to boot", BOOT, || {
        let o = c.run("systemctl is-system-running --wait");
        let state = String::from_utf8_lossy(&o.stdout).trim().to_string();
        (state == "running" || state == "degraded").then_some(state)
    });
    assert!(
        state.is_ok(),
        "the container did not boot: {state:?}; nspawn:\n{}\n{}",
        std::fs::read_to_string(&c.log).unwrap_or_default(),
        std::fs::read_to_string(scratch.dir.join("nspawn.err")).unwrap_or_default()
    );
    eprintln!("booted in {:?}", started.elapsed());
    let running = c.ok("systemctl list-units --type=service --state=running --no-legend --plain");
    assert!(
        !running.contains("vespa"),
        "nothing of VESPA runs before the install: {running}"
    );

    // The install, as docs/install.md has it.
    let installed = c.ok(&format!("dpkg -i {DEB_INSIDE}"));
    assert!(installed.contains("Setting up vespa"), "{installed}");
    c.ok("systemctl enable --now vespa-orchestrator vespa-agent");
    for unit in ["vespa-orchestrator", "vespa-agent"] {
        assert_eq!(
            c.ok(&format!("systemctl is-active {unit}")).trim(),
            "active",
            "{unit}"
        );
        assert_eq!(
            c.ok(&format!("systemctl is-enabled {unit}")).trim(),
            "enabled"
        );
    }
    // As the unit says: the vespa user, the unit's capabilities and nothing more.
    let pid = c.ok("systemctl show -p MainPID --value vespa-agent");
    let status = c.ok(&format!("cat /proc/{}/status", pid.trim()));
    let user = c.ok("id -u vespa");
    assert!(
        status.contains(&format!("Uid:\t{0}\t{0}\t{0}\t{0}", user.trim())),
        "{status}"
    );
    let want = super::unit::mask(&super::unit::caps(
        &super::unit::read(&super::unit::deploy_dir().join("vespa-agent.service")),
        "AmbientCapabilities",
    ));
    assert!(
        status.contains(&format!("CapEff:\t{want:016x}")),
        "{status}"
    );
    assert!(
        c.ok("systemctl show -p StatusText --value vespa-agent")
            .contains("running Agent_"),
        "the agent's status line names its nodes"
    );

    // The journal has their structured entries; each serves its metrics.
    wait_until("the agent's journal", BOUND, || {
        c.messages("vespa-agent")
            .iter()
            .any(|m| m.contains("eBPF sensors"))
            .then_some(())
    });
    let agent = wait_until("a scrape of the agent", BOUND, || {
        c.scrape("http://127.0.0.1:9105/metrics")
            .filter(|m| m.contains("vespa_network_receive_bytes_total{device=\"lo\"}"))
    });
    assert!(agent.contains("vespa_sensor_up"), "{agent}");
    let vo = wait_until("a scrape of the VO", BOUND, || {
        c.scrape("http://127.0.0.1:8080/metrics")
            .filter(|m| m.contains("vespa_policy_alerts_total"))
    });
    assert!(vo.contains("vespa_vo_alerts_total"), "{vo}");

    // `systemctl reload` reaches the orchestrator's policy; a SIGHUP leaves the agent be.
    c.ok("systemctl reload vespa-orchestrator");
    wait_until("the policy reloaded", BOUND, || {
        c.messages("vespa-orchestrator")
            .iter()
            .any(|m| m.contains("policy reloaded"))
            .then_some(())
    });
    let refused = c.run("systemctl reload vespa-agent");
    assert!(
        !refused.status.success(),
        "the agent's unit offers no reload"
    );
    c.ok("systemctl kill -s HUP --kill-whom=main vespa-agent");
    wait_until("the agent to log the SIGHUP", BOUND, || {
        c.messages("vespa-agent")
            .iter()
            .any(|m| m.contains("SIGHUP received"))
            .then_some(())
    });
    assert_eq!(c.ok("systemctl is-active vespa-agent").trim(), "active");
    assert_eq!(
        c.ok("systemctl show -p MainPID --value vespa-agent"),
        pid,
        "the same process"
    );

    // The exporter's unit takes the agent's place (Conflicts=) at the same address.
    c.ok("systemctl start vespa-exporter");
    assert_eq!(c.ok("systemctl is-active vespa-exporter").trim(), "active");
    let agent_state = c.run("systemctl is-active vespa-agent");
    assert_eq!(
        String::from_utf8_lossy(&agent_state.stdout).trim(),
        "inactive"
    );
    wait_until("a scrape of the exporter", BOUND, || {
        c.scrape("http://127.0.0.1:9105/metrics")
            .filter(|m| m.contains("vespa_network_receive_bytes_total{device=\"lo\"}"))
    });

    // Stopped cleanly: no failed unit, the sensors detached.
    c.ok("systemctl stop vespa-exporter vespa-orchestrator");
    let failed = c.ok("systemctl list-units --failed --no-legend --plain");
    assert!(!failed.contains("vespa"), "{failed}");
    assert!(
        c.messages("vespa-exporter")
            .iter()
            .any(|m| m.contains("eBPF sensors detached")),
        "{}",
        c.journal()
    );
    let mut c = c;
    c.ok("systemctl poweroff --no-block");
    let off = try_wait_until("the container to power off", BOOT, || {
        c.nspawn.try_wait().ok().flatten()
    });
    assert!(off.is_ok(), "the container did not stop");
    eprintln!("the whole test in the container: {:?}", started.elapsed());
}
