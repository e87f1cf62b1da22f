//! A thread pinned to the network namespace the sensors were started in.
//!
//! Namespaces are per thread, and /proc/thread-self/net and netlink sockets answer for the
//! calling thread's namespace. Queries that depend on the namespace (interface list, MAC
//! addresses, /proc/net) therefore run on this thread, whatever thread asks.

use std::{
    sync::{mpsc, Mutex},
    thread,
    time::Duration,
};

type Job = Box<dyn FnOnce() + Send>;

pub(crate) struct NsWorker {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl NsWorker {
    /// Spawns the worker in the caller's namespace. `tick` runs every `period` between jobs.
    pub(crate) fn spawn(
        name: &str,
        period: Duration,
        mut tick: impl FnMut() + Send + 'static,
    ) -> NsWorker {
        let (tx, rx) = mpsc::channel::<Job>();
        let handle = thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut next = std::time::Instant::now();
                loop {
                    let now = std::time::Instant::now();
                    if now >= next {
                        tick();
                        next = now + period;
                    }
                    match rx.recv_timeout(next.saturating_duration_since(std::time::Instant::now()))
                    {
                        Ok(job) => job(),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .expect("spawning the namespace worker");
        NsWorker {
            tx: Mutex::new(Some(tx)),
            handle: Some(handle),
        }
    }

    /// Runs `f` on the worker and returns its result.
    pub(crate) fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (rtx, rrx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = rtx.send(f());
        });
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|tx| tx.send(job).is_ok());
        assert_eq!(sent, Some(true), "namespace worker is gone");
        rrx.recv().expect("namespace worker dropped a job")
    }
}

impl Drop for NsWorker {
    fn drop(&mut self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
