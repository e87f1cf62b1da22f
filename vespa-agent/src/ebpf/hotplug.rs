//! Following the interfaces: attach to every wanted one present, forget those that vanish,
//! on every RTM_NEWLINK/RTM_DELLINK and every `rescan_interval` anyway (VM tap devices come
//! and go while the agent runs).

use std::{os::fd::AsFd, sync::atomic::Ordering, thread, time::Duration};

use super::{
    attach::{attach, attach_xdp},
    wait_readable, Inner, Shared,
};
use crate::{clock::monotonic_ns, error::SensorError, event::SensorEvent, iface};

impl Shared {
    /// Attaches to every wanted interface not yet attached and forgets vanished ones.
    /// With `strict`, failing to attach an explicitly configured interface is an error.
    pub(super) fn reconcile(&self, strict: bool) -> Result<(), SensorError> {
        let present = iface::list().map_err(|source| SensorError::Read {
            what: "the interface list (RTM_GETLINK)",
            source,
        })?;
        let mut inner = self.lock();
        let gone: Vec<u32> = inner
            .attached
            .iter()
            .filter(|(ifindex, a)| {
                !present
                    .iter()
                    .any(|i| i.ifindex == **ifindex && i.name == a.name)
            })
            .map(|(i, _)| *i)
            .collect();
        for ifindex in gone {
            self.detach(&mut inner, ifindex, true, false);
        }
        for i in present.iter().filter(|i| self.cfg.wants(&i.name)) {
            if inner.attached.contains_key(&i.ifindex) {
                continue;
            }
            let pin = self.cfg.pin_dir.as_deref();
            match attach(&mut inner.ebpf, i, self.cfg.tc_mode, pin) {
                Ok(mut a) => {
                    if self.cfg.xdp {
                        if let Some(x) = attach_xdp(&mut inner.ebpf, i, pin) {
                            a.add_pinned(x);
                        }
                    }
                    // Counters start at attach (an ifindex may have been counted for a
                    // previous device), unless an earlier agent's programs were counting
                    // here: then they go on from where they are.
                    if !a.adopted {
                        inner.maps.reset_stats(i.ifindex);
                    }
                    inner.attached.insert(i.ifindex, a);
                    tracing::debug!(iface = ?i.name, ifindex = i.ifindex, "attached");
                    let _ = self.events.send(SensorEvent::InterfaceAttached {
                        name: i.name.clone(),
                        ifindex: i.ifindex,
                    });
                }
                Err(e) if strict && !self.cfg.interfaces.is_empty() => return Err(e),
                // Interfaces can vanish between listing and attaching; the next pass retries.
                Err(e) => {
                    tracing::warn!(iface = ?i.name, error = %e, "could not attach; will retry")
                }
            }
        }
        Ok(())
    }

    /// Detaches from `ifindex` (`vanished`: the device is gone) and says so; `keep` leaves
    /// pinned programs enforcing and the interface's counters as they are.
    pub(super) fn detach(&self, inner: &mut Inner, ifindex: u32, vanished: bool, keep: bool) {
        let Some(a) = inner.attached.remove(&ifindex) else {
            return;
        };
        let name = a.name.clone();
        a.detach(vanished, keep);
        if !keep {
            inner.maps.reset_stats(ifindex);
        }
        tracing::debug!(iface = ?name, ifindex, "detached");
        let _ = self
            .events
            .send(SensorEvent::InterfaceDetached { name, ifindex });
    }

    /// Reconciles on every RTM_NEWLINK/RTM_DELLINK, and every `rescan_interval` anyway.
    pub(super) fn watch_links(&self) {
        use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr as NlAddr};
        let sock = Socket::new(NETLINK_ROUTE).and_then(|mut s| {
            s.bind(&NlAddr::new(0, libc::RTMGRP_LINK as u32))?;
            s.set_non_blocking(true)?;
            Ok(s)
        });
        let sock = match sock {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no netlink link notifications; rescanning interfaces periodically");
                None
            }
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut last_scan = monotonic_ns();
        while !self.stop.load(Ordering::Relaxed) {
            let woke = match &sock {
                Some(s) => wait_readable(
                    s.as_fd(),
                    self.cfg.rescan_interval.min(Duration::from_millis(250)),
                ),
                None => {
                    thread::sleep(Duration::from_millis(250));
                    false
                }
            };
            if let (true, Some(s)) = (woke, &sock) {
                while s.recv(&mut &mut buf[..], 0).is_ok_and(|n| n > 0) {}
            }
            let now = monotonic_ns();
            if woke || now.saturating_sub(last_scan) >= self.cfg.rescan_interval.as_nanos() as u64 {
                last_scan = now;
                if let Err(e) = self.reconcile(false) {
                    tracing::warn!(error = %e, "interface rescan failed");
                }
            }
        }
    }
}
