//! Running under a service manager: what both binaries tell systemd (readiness, the
//! watchdog, stopping) and the man pages and completions the packages ship.
//!
//! Every notification goes to `$NOTIFY_SOCKET` and is a no-op without it, so a binary started
//! by hand, by a test or by `cargo xtask run` behaves exactly as before. The units
//! (`deploy/systemd/`) are `Type=notify` with `WatchdogSec=`: `READY=1` is sent once every
//! node of the process is built and listening (the agent's kernel programs are loaded and
//! attached before that), `WATCHDOG=1` at half the manager's interval from a task of the
//! process's runtime (a runtime that stops scheduling stops feeding it, and systemd restarts
//! the service), `STOPPING=1` when a stop begins.

use std::path::Path;
use std::time::Duration;

use sd_notify::NotifyState;

/// `READY=1`, with a status line (`systemctl status` shows it).
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1`: the stop sequence has begun.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// A free-form status line.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify the service manager ($NOTIFY_SOCKET)");
    }
}

/// The watchdog's interval when the service manager asked for one (`WatchdogSec=`, for this
/// very process).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Feeds the watchdog at half its interval until dropped (the task is aborted with the
/// handle). `None` when no watchdog is asked for. Call from within a tokio runtime.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let every = watchdog_interval()? / 2;
    tracing::info!(every = ?every, "feeding the service manager's watchdog");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            notify(&[NotifyState::Watchdog]);
        }
    }))
}

/// Writes what the packages ship for the binary `cmd` describes into `dir`: its man pages
/// (`man1/<bin>.1`, and `man1/<bin>-<sub>.1` for each visible subcommand) and its shell
/// completions (`completions/<bin>.bash`, `_<bin>` for zsh, `<bin>.fish`).
pub fn write_docs(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    let mut cmd = cmd;
    cmd.build();
    let bin = cmd.get_name().to_string();
    let man = dir.join("man1");
    std::fs::create_dir_all(&man)?;
    let page = |c: clap::Command, name: &str| -> std::io::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(c).render(&mut out)?;
        std::fs::write(man.join(format!("{name}.1")), out)
    };
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("{bin}-{}", sub.get_name());
        // Built: its display name is already `<bin>-<sub>`, its usage `<bin> <sub>`.
        page(sub.clone(), &name)?;
    }
    page(cmd.clone(), &bin)?;
    let comp = dir.join("completions");
    std::fs::create_dir_all(&comp)?;
    use clap_complete::Shell;
    for (shell, file) in [
        (Shell::Bash, format!("{bin}.bash")),
        (Shell::Zsh, format!("_{bin}")),
        (Shell::Fish, format!("{bin}.fish")),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd, bin.clone(), &mut out);
        std::fs::write(comp.join(file), out)?;
    }
    Ok(())
}
