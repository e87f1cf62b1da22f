//! Small helpers every module of the runtime uses. This module imports nothing from the crate,
//! so using it never ties two modules together.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Locks `m`, carrying on after a panic elsewhere: no code path panics while holding one of
/// the runtime's locks, and the state behind each stays structurally valid if one ever did,
/// so poisoning every later use would only turn one failure into many.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The wall clock in Unix nanoseconds (0 if it is before 1970).
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
