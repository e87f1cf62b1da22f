//! What the tests of one process cannot each have to themselves, and the locks that let them
//! share it.
//!
//! The end-to-end tests run concurrently in one process. Most of what they touch is made
//! unique per test instead (namespace and interface names, subnets, ports, scratch
//! directories, MACs, KVM domain names: see [`crate::unique`], [`crate::subnet`],
//! [`crate::daemons::free_port`]). Two things cannot be:
//!
//! - [`LIBVIRTD`]: the one system libvirtd (fixed paths under `/var/run/libvirt`). Tests that
//!   talk to it share it; the test that stops and restarts it takes it alone.
//! - [`LOOPBACK`]: the connection counts the host's loopback carries. A connections agent on
//!   `lo` counts every socket of the host's namespace, whoever opened it, and a policy acts on
//!   those counts (the embedded default blocks a remote above 100 established connections).
//!   Tests whose agents count connections on `lo` share it; a test that opens hundreds of
//!   connections there at once takes it alone, so no other test's policy reacts to its flood.
//!
//! A test holds a guard for as long as it uses the resource; a guard is released when it
//! drops, also when the test panics (a failed test does not fail the others).

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// libvirtd on `qemu:///system`: shared by the tests that use it, taken alone to restart it.
pub static LIBVIRTD: Resource = Resource::new();

/// Connection counts on the host's loopback: shared by tests whose agents count connections
/// on `lo`, taken alone by a test that floods it.
pub static LOOPBACK: Resource = Resource::new();

/// A resource many tests may use together ([`Resource::share`]) or one alone
/// ([`Resource::take`]). A test waiting to take it goes before tests that ask to share it
/// later, so it is not kept waiting by a stream of sharers.
pub struct Resource {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    sharers: usize,
    taken: bool,
    takers_waiting: usize,
}

impl Resource {
    pub const fn new() -> Resource {
        Resource {
            state: Mutex::new(State {
                sharers: 0,
                taken: false,
                takers_waiting: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, s: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(s).unwrap_or_else(PoisonError::into_inner)
    }

    /// Uses the resource alongside other sharers; blocks while a test has it alone or waits
    /// to.
    pub fn share(&'static self) -> Shared {
        let mut s = self.lock();
        while s.taken || s.takers_waiting > 0 {
            s = self.wait(s);
        }
        s.sharers += 1;
        Shared(self)
    }

    /// Uses the resource alone; blocks until every sharer is done.
    pub fn take(&'static self) -> Taken {
        let mut s = self.lock();
        s.takers_waiting += 1;
        while s.taken || s.sharers > 0 {
            s = self.wait(s);
        }
        s.takers_waiting -= 1;
        s.taken = true;
        Taken(self)
    }
}

impl Default for Resource {
    fn default() -> Resource {
        Resource::new()
    }
}

/// A share of a [`Resource`], released on drop.
#[must_use = "the resource is shared only while the guard lives"]
pub struct Shared(&'static Resource);

impl Drop for Shared {
    fn drop(&mut self) {
        self.0.lock().sharers -= 1;
        self.0.changed.notify_all();
    }
}

/// A [`Resource`] held alone, released on drop.
#[must_use = "the resource is held only while the guard lives"]
pub struct Taken(&'static Resource);

impl Drop for Taken {
    fn drop(&mut self) {
        self.0.lock().taken = false;
        self.0.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn sharers_overlap_and_a_taker_waits_for_every_one_of_them() {
        static R: Resource = Resource::new();
        let a = R.share();
        let b = R.share();
        let taken = std::sync::Arc::new(AtomicBool::new(false));
        let t = taken.clone();
        let taker = std::thread::spawn(move || {
            let _alone = R.take();
            t.store(true, Ordering::SeqCst);
        });
        vespa_testkit::wait_until("the taker to wait", Duration::from_secs(5), || {
            R.lock().takers_waiting == 1
        });
        drop(a);
        assert!(!taken.load(Ordering::SeqCst), "one sharer still holds it");
        drop(b);
        taker.join().expect("taker");
        assert!(taken.load(Ordering::SeqCst));
        let s = R.lock();
        assert_eq!((s.sharers, s.taken, s.takers_waiting), (0, false, 0));
    }
}
