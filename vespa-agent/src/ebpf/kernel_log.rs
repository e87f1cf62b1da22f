//! The kernel programs' own log (`ebpf_log`, `vespa-agent --ebpf-log`): aya-log records from
//! the `AYA_LOGS` ring buffer, handed to the `log` crate's logger. In the binary that logger
//! is tracing's (`tracing-subscriber` installs the `tracing-log` bridge with the subscriber),
//! so the kernel's lines come out with the agent's own, filtered by the same RUST_LOG, under
//! the programs' module paths as targets (`vespa::conntrack`, `vespa::traffic`).

use std::{
    os::fd::AsFd,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use aya::Ebpf;
use aya_log::{EbpfLogger, Level};
use log::LevelFilter;

use super::wait_readable;
use crate::{config::SensorConfig, error::SensorError};

pub(super) type KernelLogger = EbpfLogger<&'static dyn log::Log>;

/// The value of aya-log's `AYA_LOG_LEVEL` for the programs: 0 (nothing) unless asked, and
/// then no more than the `log` logger lets through, so that no record is written only to be
/// dropped. A constant of the loaded object: the verifier removes every statement above it.
pub(super) fn level(cfg: &SensorConfig) -> u8 {
    if !cfg.ebpf_log {
        return 0;
    }
    let level = match log::max_level() {
        LevelFilter::Off => return 0,
        LevelFilter::Error => Level::Error,
        LevelFilter::Warn => Level::Warn,
        LevelFilter::Info => Level::Info,
        LevelFilter::Debug => Level::Debug,
        LevelFilter::Trace => Level::Trace,
    };
    level as u8
}

/// Takes the log buffer out of the loaded object, when the programs log.
pub(super) fn take(
    ebpf: &mut Ebpf,
    cfg: &SensorConfig,
) -> Result<Option<KernelLogger>, SensorError> {
    if !cfg.ebpf_log {
        return Ok(None);
    }
    EbpfLogger::init(ebpf)
        .map(Some)
        .map_err(|source| SensorError::Log {
            source: source.into(),
        })
}

/// Hands the records to the logger until `stop`. The programs write their records without a
/// forced wake-up: they are read on the next wake-up or after POLL at the latest. (aya-log
/// panics on a record it cannot parse; this thread alone would end.)
pub(super) fn forward(mut logger: KernelLogger, stop: &AtomicBool) {
    const POLL: Duration = Duration::from_millis(250);
    while !stop.load(Ordering::Relaxed) {
        wait_readable(logger.as_fd(), POLL);
        logger.flush();
    }
}
