//! Attaching the classifiers to one interface, and detaching them: TCX links first in the
//! chain where the kernel has them, a clsact qdisc and priority-1 filters otherwise.

use aya::{
    programs::{
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions},
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    },
    Ebpf,
};

use super::load::{classifier, PROG_EGRESS, PROG_INGRESS, PROG_INGRESS_L3};
use crate::{config::TcMode, error::SensorError, iface};

/// The classifiers on one interface; dropping it detaches them.
pub(super) struct Attached {
    pub(super) name: String,
    links: Vec<SchedClassifierLink>,
    /// We added the clsact qdisc (netlink mode) and remove it on detach if it is empty.
    clsact_ours: bool,
}

impl Attached {
    /// Detaches the classifiers; `vanished` when the device is gone (nothing left to clean).
    pub(super) fn detach(self, vanished: bool) {
        drop(self.links);
        if self.clsact_ours && !vanished {
            remove_clsact(&self.name);
        }
    }
}

/// Attaches ingress (Ethernet or raw-IP flavour) and egress to `i`; on failure nothing of
/// ours is left on the device.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    i: &iface::Interface,
    tc_mode: TcMode,
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
