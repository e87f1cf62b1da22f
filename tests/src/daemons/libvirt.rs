//! libvirtd for tests, throw-away KVM domains, and a second libvirtd to migrate them to
//! ([`QuarantineLibvirtd`]).
//!
//! libvirtd is a system daemon with fixed paths (`/var/run/libvirt`), so one instance serves
//! the whole test process (its tests hold a share of [`crate::shared::LIBVIRTD`]; stopping
//! it takes it alone): started on first use (unless one already answers, which is then
//! reused and never stopped), from a keeper thread that lives as long as the process, with
//! a parent-death signal — so the daemons end with the test process even though a static is
//! never dropped. Without systemd the machine lacks what the Debian packages' hooks would have
//! made: the `libvirt-qemu` user, the `kvm` and `libvirt-qemu` groups, libvirt's run/log
//! directories, and `/dev/kvm` owned by group `kvm` mode 0660 (udev's rule). Without the last
//! one libvirt re-probes QEMU on every call and each domain start takes ~40 s.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::Duration;

use vespa_testkit::try_wait_until;

use crate::cmd::{have, run};

pub const URI: &str = "qemu:///system";
const LOG: &str = "/var/log/libvirt/vespa-tests-libvirtd.log";

/// The test process's libvirtd.
#[derive(Debug)]
pub struct Libvirtd {
    /// False when a libvirtd was already running (it is left alone).
    pub started_here: bool,
    keeper: Mutex<Option<mpsc::Sender<Cmd>>>,
}

/// Requests to the keeper thread (which owns the daemon processes).
#[derive(Debug)]
enum Cmd {
    Stop(mpsc::Sender<Result<(), String>>),
    Start(mpsc::Sender<Result<(), String>>),
}

static LIBVIRTD: OnceLock<Result<Libvirtd, String>> = OnceLock::new();

/// libvirtd answering on `qemu:///system`, started if needed.
pub fn libvirtd() -> Result<&'static Libvirtd, String> {
    LIBVIRTD.get_or_init(start).as_ref().map_err(Clone::clone)
}

impl Libvirtd {
    fn ask(&self, cmd: impl FnOnce(mpsc::Sender<Result<(), String>>) -> Cmd) -> Result<(), String> {
        let keeper = self.keeper.lock().map_err(|e| e.to_string())?;
        let Some(k) = keeper.as_ref().filter(|_| self.started_here) else {
            return Err("this libvirtd was not started by the tests: it is left alone".into());
        };
        let (tx, rx) = mpsc::channel();
        k.send(cmd(tx)).map_err(|e| e.to_string())?;
        rx.recv().map_err(|e| e.to_string())?
    }

    /// Stops the daemon (SIGTERM, waits for it to exit). Running domains keep running.
    pub fn stop(&self) -> Result<(), String> {
        self.ask(Cmd::Stop)
    }

    /// Starts it again and waits until it answers.
    pub fn start_again(&self) -> Result<(), String> {
        self.ask(Cmd::Start)?;
        try_wait_until("libvirtd to answer again", Duration::from_secs(60), answers)
            .map_err(|e| e.to_string())
    }
}

/// Ok once the daemon answers `virsh version`; the error otherwise.
fn answers() -> Result<(), String> {
    run(&["virsh", "-c", URI, "version"]).map(drop)
}

fn prepare_host() -> Result<(), String> {
    for d in [
        "/var/log/libvirt",
        "/var/run/libvirt",
        "/var/lib/libvirt",
        "/var/cache/libvirt",
    ] {
        std::fs::create_dir_all(d).map_err(|e| format!("{d}: {e}"))?;
    }
    for g in ["kvm", "libvirt-qemu"] {
        if run(&["getent", "group", g]).is_err() {
            run(&["groupadd", "-r", g])?;
        }
    }
    if run(&["getent", "passwd", "libvirt-qemu"]).is_err() {
        run(&[
            "useradd",
            "-r",
            "-g",
            "kvm",
            "-G",
            "libvirt-qemu",
            "-d",
            "/var/lib/libvirt",
            "-s",
            "/usr/sbin/nologin",
            "libvirt-qemu",
        ])?;
    }
    // What udev's 50-udev-default rule does on a normal Debian system.
    run(&["chgrp", "kvm", "/dev/kvm"])?;
    run(&["chmod", "0660", "/dev/kvm"])?;
    Ok(())
}

/// Spawns a daemon that gets SIGTERM when the calling thread (the keeper) dies.
fn spawn_tied(args: &[&str]) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(LOG)
        .map_err(|e| format!("{LOG}: {e}"))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    die_with_parent(&mut cmd);
    cmd.spawn()
        .map_err(|e| format!("cannot start {}: {e}", args[0]))
}

/// The keeper thread: starts the daemons, then serves stop/start requests; it never ends, so
/// the daemons live exactly as long as the test process.
fn keeper(ready: mpsc::Sender<Result<u32, String>>, cmds: mpsc::Receiver<Cmd>) {
    let mut _virtlogd: Option<Child> = None;
    let mut libvirtd: Option<Child> = None;
    let r = (|| {
        if !std::path::Path::new("/var/run/libvirt/virtlogd-sock").exists() {
            _virtlogd = Some(spawn_tied(&["/usr/sbin/virtlogd"])?);
        }
        let c = spawn_tied(&["/usr/sbin/libvirtd"])?;
        let pid = c.id();
        libvirtd = Some(c);
        Ok(pid)
    })();
    let _ = ready.send(r);
    while let Ok(cmd) = cmds.recv() {
        match cmd {
            Cmd::Stop(reply) => {
                if let Some(mut c) = libvirtd.take() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(c.id() as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                    let _ = c.wait();
                }
                let _ = reply.send(Ok(()));
            }
            Cmd::Start(reply) => {
                let r = if libvirtd.is_some() {
                    Ok(())
                } else {
                    spawn_tied(&["/usr/sbin/libvirtd"]).map(|c| {
                        libvirtd = Some(c);
                    })
                };
                let _ = reply.send(r);
            }
        }
    }
    loop {
        std::thread::park();
    }
}

fn start() -> Result<Libvirtd, String> {
    for p in ["libvirtd", "virtlogd", "virsh", "qemu-system-x86_64"] {
        if !have(p) && !have(&format!("/usr/sbin/{p}")) {
            return Err(format!("{p} not installed (cargo xtask setup)"));
        }
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".into());
    }
    if !std::path::Path::new("/dev/kvm").exists() {
        return Err("no /dev/kvm".into());
    }
    prepare_host()?;
    if answers().is_ok() {
        return Ok(Libvirtd {
            started_here: false,
            keeper: Mutex::new(None),
        });
    }
    let (ready_tx, ready_rx) = mpsc::channel();
    let (cmd_tx, cmd_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("libvirtd-keeper".into())
        .spawn(move || keeper(ready_tx, cmd_rx))
        .map_err(|e| e.to_string())?;
    let pid = ready_rx.recv().map_err(|e| e.to_string())??;
    try_wait_until(
        "libvirtd to answer on qemu:///system",
        Duration::from_secs(60),
        answers,
    )
    .map_err(|e| format!("{e} (libvirtd pid {pid}, log {LOG})"))?;
    Ok(Libvirtd {
        started_here: true,
        keeper: Mutex::new(Some(cmd_tx)),
    })
}

/// A persistent KVM domain with one `<interface type='ethernet'>` (a host tap device) and no
/// disk: QEMU runs the BIOS and idles, which is all the link/lifecycle tests need. Destroyed
/// and undefined on drop.
pub struct KvmDomain {
    pub name: String,
    pub mac: String,
    pub uuid: String,
}

/// A locally administered MAC unique to this process and call.
pub fn unique_mac() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    format!(
        "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
        (pid >> 8) & 0xff,
        pid & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

impl KvmDomain {
    pub fn xml(name: &str, mac: &str) -> String {
        KvmDomain::xml_of(name, mac, false)
    }

    /// The domain's XML; `quiet`: no boot ROM on the interface (no iPXE) and no reboot after
    /// "no bootable device", so the firmware only halts. A VM migrated while iPXE runs was
    /// seen to stop on the destination with "KVM internal error" (an emulation failure of
    /// this machine's nested KVM), and then could not be resumed nor migrated back.
    fn xml_of(name: &str, mac: &str, quiet: bool) -> String {
        let (bios, rom) = if quiet {
            ("<bios rebootTimeout='-1'/>", "\n      <rom enabled='no'/>")
        } else {
            ("", "")
        };
        format!(
            "<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>{bios}</os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <devices>
    <interface type='ethernet'>
      <mac address='{mac}'/>
      <model type='virtio'/>{rom}
    </interface>
  </devices>
</domain>
"
        )
    }

    /// Defines the domain (not started).
    pub fn define(prefix: &str) -> Result<KvmDomain, String> {
        KvmDomain::define_as(prefix, false)
    }

    fn define_as(prefix: &str, quiet: bool) -> Result<KvmDomain, String> {
        libvirtd()?;
        let name = crate::unique(prefix);
        let mac = unique_mac();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("domain.xml");
        std::fs::write(&path, KvmDomain::xml_of(&name, &mac, quiet)).map_err(|e| e.to_string())?;
        run(&[
            "virsh",
            "-c",
            URI,
            "define",
            path.to_str().unwrap_or_default(),
        ])?;
        let uuid = run(&["virsh", "-c", URI, "domuuid", &name])
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Ok(KvmDomain { name, mac, uuid })
    }

    /// Defines and starts a domain whose firmware only halts (see [`KvmDomain::xml_of`]): the
    /// one to live-migrate.
    pub fn start_quiet(prefix: &str) -> Result<KvmDomain, String> {
        let d = KvmDomain::define_as(prefix, true)?;
        d.virsh(&["start", &d.name])?;
        Ok(d)
    }

    /// Defines and starts the domain.
    pub fn start(prefix: &str) -> Result<KvmDomain, String> {
        let d = KvmDomain::define(prefix)?;
        d.virsh(&["start", &d.name])?;
        Ok(d)
    }

    pub fn virsh(&self, args: &[&str]) -> Result<String, String> {
        let mut v = vec!["virsh", "-c", URI];
        v.extend_from_slice(args);
        run(&v)
    }

    /// `virsh domstate`: running, paused, shut off...
    pub fn state(&self) -> String {
        self.virsh(&["domstate", &self.name])
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| e)
    }

    /// `virsh domif-getlink`: up or down.
    pub fn link(&self) -> String {
        self.virsh(&["domif-getlink", &self.name, &self.mac])
            .map(|s| s.split_whitespace().last().unwrap_or("").to_string())
            .unwrap_or_else(|e| e)
    }

    /// `virsh domiflist` as (host device, MAC) pairs.
    pub fn iflist(&self) -> Vec<(String, String)> {
        let out = self.virsh(&["domiflist", &self.name]).unwrap_or_default();
        out.lines()
            .skip(2)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 5).then(|| (f[0].to_string(), f[4].to_string()))
            })
            .collect()
    }

    /// The QEMU process id (changes when the domain is restarted).
    pub fn qemu_pid(&self) -> Option<u32> {
        std::fs::read_to_string(format!("/var/run/libvirt/qemu/{}.pid", self.name))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

impl Drop for KvmDomain {
    fn drop(&mut self) {
        let _ = self.virsh(&["destroy", &self.name]);
        let _ = self.virsh(&["undefine", &self.name]);
    }
}

/// A second libvirtd on this machine, owned by one test: the quarantine hypervisor that
/// `migrate` sends VMs to. libvirt refuses to migrate a domain to the host it runs on (same
/// host UUID), and a privileged libvirtd has fixed paths; so this one runs in a mount namespace
/// of its own (`unshare -m`) where private directories are bind-mounted over `/etc/libvirt`
/// (a `libvirtd.conf` with a `host_uuid` of its own, a `qemu.conf`), `/run/libvirt`,
/// `/var/lib/libvirt`, `/var/cache/libvirt` and `/var/log/libvirt`. The host's namespace and
/// its libvirtd see none of it; its socket is reachable from the host as
/// `<dir>/run/libvirt-sock` ([`QuarantineLibvirtd::uri`]). Its QEMU logs to files (no
/// virtlogd of its own) and uses no cgroups: the host's libvirtd already has the machine's
/// cgroup tree, and a VM being migrated runs under both daemons at once with one name.
///
/// Dropping it destroys and undefines every domain it holds, stops the daemon (SIGTERM, also
/// sent if the thread that started it dies; SIGKILL after 30 s), kills any QEMU it left behind
/// (its pid files) and removes its directories; the namespace ends with its last process.
pub struct QuarantineLibvirtd {
    /// `qemu+unix:///system?socket=<dir>/run/libvirt-sock`.
    pub uri: String,
    daemon: Option<Child>,
    dir: tempfile::TempDir,
}

impl QuarantineLibvirtd {
    /// Starts it and waits until it answers. Starts (or reuses) the system libvirtd first:
    /// the host preparation it makes (users, groups, `/dev/kvm`) serves both.
    pub fn start() -> Result<QuarantineLibvirtd, String> {
        use std::os::unix::fs::PermissionsExt;
        libvirtd()?;
        if !have("unshare") || !have("mount") {
            return Err("unshare or mount missing (util-linux, mount)".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("vespa-quarantine-libvirtd")
            .tempdir()
            .map_err(|e| e.to_string())?;
        // QEMU runs as libvirt-qemu and must reach its monitor socket under lib/.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        for d in ["etc", "run", "lib", "cache", "log"] {
            std::fs::create_dir(dir.path().join(d)).map_err(|e| format!("{d}: {e}"))?;
        }
        let host_uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
            .map_err(|e| format!("a host UUID: {e}"))?;
        std::fs::write(
            dir.path().join("etc/libvirtd.conf"),
            format!(
                "host_uuid = \"{}\"\nunix_sock_group = \"root\"\nunix_sock_rw_perms = \"0770\"\n",
                host_uuid.trim()
            ),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(
            dir.path().join("etc/qemu.conf"),
            "stdio_handler = \"file\"\ncgroup_controllers = [ ]\n",
        )
        .map_err(|e| e.to_string())?;
        let d = dir.path().to_str().ok_or("temporary directory not UTF-8")?;
        let log =
            std::fs::File::create(dir.path().join("libvirtd.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        // The mounts exist only in the new namespace (private propagation): the host's
        // /run/libvirt and the system libvirtd are untouched.
        let script = "set -e; d=$1; \
            mount --bind \"$d/etc\" /etc/libvirt; \
            mount --bind \"$d/run\" /run/libvirt; \
            mount --bind \"$d/lib\" /var/lib/libvirt; \
            mount --bind \"$d/cache\" /var/cache/libvirt; \
            mount --bind \"$d/log\" /var/log/libvirt; \
            exec /usr/sbin/libvirtd --pid-file \"$d/libvirtd.pid\"";
        let mut cmd = Command::new("unshare");
        cmd.args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            d,
        ])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
        die_with_parent(&mut cmd);
        let daemon = cmd
            .spawn()
            .map_err(|e| format!("cannot start unshare: {e}"))?;
        let q = QuarantineLibvirtd {
            uri: format!("qemu+unix:///system?socket={d}/run/libvirt-sock"),
            daemon: Some(daemon),
            dir,
        };
        try_wait_until(
            "the quarantine libvirtd to answer",
            Duration::from_secs(60),
            || q.virsh(&["version"]).map(drop),
        )
        .map_err(|e| format!("{e}\nits log:\n{}", q.log()))?;
        Ok(q)
    }

    /// `virsh -c <its URI> args...`.
    pub fn virsh(&self, args: &[&str]) -> Result<String, String> {
        let mut v = vec!["virsh", "-c", &self.uri];
        v.extend_from_slice(args);
        run(&v)
    }

    /// `virsh domstate` of `name` here: running, shut off..., or the error (e.g. no such
    /// domain).
    pub fn state(&self, name: &str) -> String {
        self.virsh(&["domstate", name])
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| e)
    }

    /// The daemon's log (libvirtd's own, then each domain's QEMU log).
    pub fn log(&self) -> String {
        let mut out =
            std::fs::read_to_string(self.dir.path().join("libvirtd.log")).unwrap_or_default();
        if let Ok(rd) = std::fs::read_dir(self.dir.path().join("log/qemu")) {
            for e in rd.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                out.push_str(&format!("\n{}:\n{text}", e.path().display()));
            }
        }
        out
    }
}

impl Drop for QuarantineLibvirtd {
    fn drop(&mut self) {
        let names = self.virsh(&["list", "--all", "--name"]).unwrap_or_default();
        for n in names.lines().map(str::trim).filter(|n| !n.is_empty()) {
            let _ = self.virsh(&["destroy", n]);
            let _ = self.virsh(&["undefine", n]);
        }
        if let Some(mut c) = self.daemon.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let exited = try_wait_until(
                "the quarantine libvirtd to exit",
                Duration::from_secs(30),
                || match c.try_wait() {
                    Ok(Some(_)) => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            );
            if exited.is_err() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // A QEMU the daemon left running (a domain that could not be destroyed) would keep
        // the namespace and its tap device alive.
        if let Ok(rd) = std::fs::read_dir(self.dir.path().join("run/qemu")) {
            for e in rd.flatten() {
                let pid = std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                    .filter(|p| *p > 1 && e.path().extension().is_some_and(|x| x == "pid"));
                if let Some(p) = pid {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

/// Has the child get SIGTERM when the test process dies, so a daemon never outlives it.
fn die_with_parent(cmd: &mut Command) {
    let hook = || {
        // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook only calls prctl, which is async-signal-safe and touches no memory of
    // the parent.
    unsafe { cmd.pre_exec(hook) };
}
