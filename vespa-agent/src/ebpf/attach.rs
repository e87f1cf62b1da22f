//! Attaching the classifiers to one interface, and detaching them: TCX links first in the
//! chain where the kernel has them, a clsact qdisc and priority-1 filters otherwise; and, with
//! `--xdp`, the firewall's XDP program where the driver supports it.
//!
//! With a pin directory, each link is pinned there (`links/<interface>_<hook>`), so the
//! programs stay attached if the agent dies, and an agent that finds a link pinned by an
//! earlier one attaches its own first and only then lets the old one go: the interface is
//! never without the firewall.

use std::path::{Path, PathBuf};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions},
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf,
};

use super::load::{classifier, PROG_EGRESS, PROG_INGRESS, PROG_INGRESS_L3, PROG_XDP};
use crate::{config::TcMode, error::SensorError, iface};

/// A program's link to an interface.
enum Link {
    /// Held by this process only: dropping it detaches the program.
    Owned(SchedClassifierLink),
    /// Pinned in bpffs: attached until unpinned.
    Pinned(PinnedLink),
}

/// The programs on one interface; dropping it detaches those not pinned.
pub(super) struct Attached {
    pub(super) name: String,
    links: Vec<Link>,
    /// We added the clsact qdisc (netlink mode) and remove it on detach if it is empty.
    clsact_ours: bool,
    /// An earlier agent's pinned programs were running here: its counters go on.
    pub(super) adopted: bool,
}

impl Attached {
    /// Adds the XDP program's pinned link.
    pub(super) fn add_pinned(&mut self, link: PinnedLink) {
        self.links.push(Link::Pinned(link));
    }

    /// Detaches the programs; `vanished` when the device is gone (nothing left to clean);
    /// `keep` leaves the pinned ones attached (they keep enforcing until a later agent
    /// replaces them).
    pub(super) fn detach(self, vanished: bool, keep: bool) {
        for link in self.links {
            match link {
                Link::Owned(l) => drop(l),
                Link::Pinned(p) if keep && !vanished => drop(p),
                Link::Pinned(p) => {
                    if let Err(e) = p.unpin() {
                        tracing::warn!(iface = %self.name, error = %e, "could not unpin a link");
                    }
                }
            }
        }
        if self.clsact_ours && !vanished {
            remove_clsact(&self.name);
        }
    }
}

/// Where the link of `hook` on `iface` is pinned (bpffs refuses dots in names: a VLAN's
/// `eth0.100` is pinned as `eth0_100`).
fn link_pin(dir: &Path, iface: &str, hook: &str) -> PathBuf {
    dir.join("links")
        .join(format!("{}_{hook}", iface.replace('.', "_")))
}

/// Pins `link` at `path`, taking over from a link an earlier agent pinned there (which
/// detaches once ours is in place). Returns the pinned link and whether it took over.
fn pin_over(link: FdLink, path: &Path) -> Result<(PinnedLink, bool), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let old = PinnedLink::from_pin(path).ok().and_then(|p| p.unpin().ok());
    let pinned = link
        .pin(path)
        .map_err(|e| format!("pinning at {}: {e:?}", path.display()))?;
    let adopted = old.is_some();
    // Ours is attached and pinned: the earlier agent's program may go.
    drop(old);
    Ok((pinned, adopted))
}

/// Attaches the firewall's XDP program to `i` in driver mode, pinned like the classifiers;
/// None (with a log line) when the driver has no XDP.
pub(super) fn attach_xdp(
    ebpf: &mut Ebpf,
    i: &iface::Interface,
    pin: Option<&Path>,
) -> Option<PinnedLink> {
    let Some(dir) = pin else {
        tracing::warn!(iface = %i.name, "XDP is only attached with a pin directory");
        return None;
    };
    let prog: &mut Xdp = ebpf.program_mut(PROG_XDP)?.try_into().ok()?;
    let res = prog
        .attach(&i.name, XdpMode::Driver)
        .and_then(|id| prog.take_link(id));
    match res {
        Ok(link) => match FdLink::try_from(link)
            .map_err(|e| e.to_string())
            .and_then(|fd| pin_over(fd, &link_pin(dir, &i.name, "xdp")))
        {
            Ok((p, _)) => Some(p),
            Err(e) => {
                tracing::warn!(iface = %i.name, error = %e, "XDP attached but not pinned: detached");
                None
            }
        },
        Err(e) => {
            tracing::info!(iface = %i.name, error = %e, "no native XDP on this device: its blocks are enforced at tc");
            None
        }
    }
}

/// Attaches ingress (Ethernet or raw-IP flavour) and egress to `i`; on failure nothing of
/// ours is left on the device.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    i: &iface::Interface,
    tc_mode: TcMode,
    pin: Option<&Path>,
) -> Result<Attached, SensorError> {
    let attach_err = |what: String, source: ProgramError| SensorError::Attach {
        iface: i.name.clone(),
        what,
        source: source.into(),
    };
    let mut clsact_ours = false;
    if tc_mode == TcMode::Netlink {
        match aya::programs::tc::qdisc_add_clsact(&i.name) {
            Ok(()) => clsact_ours = true,
            Err(aya::programs::tc::TcError::NetlinkError(e))
                if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(attach_err("adding clsact qdisc".into(), e.into())),
        }
    }
    let ingress = if i.ethernet {
        PROG_INGRESS
    } else {
        PROG_INGRESS_L3
    };
    let mut links = Vec::new();
    let mut adopted = false;
    for (prog, dir) in [
        (ingress, TcAttachType::Ingress),
        (PROG_EGRESS, TcAttachType::Egress),
    ] {
        let p = classifier(ebpf, prog)?;
        let res = match tc_mode {
            // First in the TCX chain, so a program before us that ends the chain (pass or
            // drop) cannot hide packets from the counters.
            TcMode::Auto if has_tcx() => p
                .attach_with_options(
                    &i.name,
                    dir,
                    TcAttachOptions::TcxOrder(tcx_first(&i.name, dir)),
                )
                .or_else(|_| {
                    p.attach_with_options(
                        &i.name,
                        dir,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                }),
            // Legacy tc stops at the first classifier that matches, so we go first (our
            // programs return TC_ACT_UNSPEC: "continue") and see every packet while the
            // filters behind us still decide. If priority 1 is taken, the kernel picks.
            _ => p
                .attach_with_options(
                    &i.name,
                    dir,
                    TcAttachOptions::Netlink(NlOptions {
                        priority: 1,
                        ..Default::default()
                    }),
                )
                .or_else(|_| {
                    p.attach_with_options(
                        &i.name,
                        dir,
                        TcAttachOptions::Netlink(NlOptions::default()),
                    )
                }),
        }
        .and_then(|id| p.take_link(id));
        let res = res.and_then(|link| match (pin, tc_mode) {
            // TCX links are bpf links: pinned, they outlive us.
            (Some(pin_dir), TcMode::Auto) if has_tcx() => {
                let hook = if dir == TcAttachType::Ingress {
                    "ingress"
                } else {
                    "egress"
                };
                let fd = FdLink::try_from(link)
                    .map_err(|e| ProgramError::IOError(std::io::Error::other(e.to_string())))?;
                match pin_over(fd, &link_pin(pin_dir, &i.name, hook)) {
                    Ok((p, took_over)) => {
                        adopted |= took_over;
                        Ok(Link::Pinned(p))
                    }
                    Err(e) => Err(ProgramError::IOError(std::io::Error::other(e))),
                }
            }
            _ => Ok(Link::Owned(link)),
        });
        match res {
            Ok(link) => links.push(link),
            Err(e) => {
                drop(links);
                if clsact_ours {
                    remove_clsact(&i.name);
                }
                return Err(attach_err(format!("{prog} ({dir:?})"), e));
            }
        }
    }
    Ok(Attached {
        name: i.name.clone(),
        links,
        clsact_ours,
        adopted,
    })
}

fn remove_clsact(name: &str) {
    // Only remove the qdisc we created, and only when nobody else put a filter on it.
    let has = |dir: &str| {
        std::process::Command::new("tc")
            .args(["filter", "show", "dev", name, dir])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(true)
    };
    if !has("ingress") && !has("egress") {
        let _ = std::process::Command::new("tc")
            .args(["qdisc", "del", "dev", name, "clsact"])
            .status();
    }
}

/// Position before whatever runs first on the hook now (or anywhere on an empty hook).
fn tcx_first(ifname: &str, dir: TcAttachType) -> LinkOrder {
    match SchedClassifier::query_tcx(ifname, dir) {
        Ok((_, progs)) => match progs.first() {
            Some(p) => {
                // SAFETY: the id was just returned by the kernel for a program attached to
                // this hook. Should that program detach before we attach, the kernel rejects
                // the anchor (ENOENT) and the caller retries at the end of the chain.
                let id = unsafe { aya::programs::ProgramId::new(p.id()) };
                LinkOrder::before_program_id(id)
            }
            None => LinkOrder::default(),
        },
        Err(_) => LinkOrder::default(),
    }
}

/// TCX (multi-program tc links) arrived in Linux 6.6.
fn has_tcx() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}
