//! The sockets the tracker counted as open: a close is counted only for a socket found here,
//! so connections older than the tracker never make a count negative.
//!
//! Sockets are known by their cookie, which the kernel gives a socket once (on first request)
//! and never reuses. The table is set-associative: a socket's set is its cookie masked with the
//! number of sets, and a set holds four sockets in one cache line. Cookies are handed out in
//! increasing order (per CPU, in batches), so sockets opened one after the other land in
//! neighbouring sets: the lines the tracker touches stay few and warm, where a hash table keyed
//! by socket would reach into a new random bucket for each connection. A socket whose set is
//! full goes to a hash (`OPEN_SOCKETS_MORE`) instead; when that one is full too, the connection
//! is not counted, in either direction, and the failure is counted.
//!
//! Socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`) would need no table at all, but the kernel
//! allocates it for each new socket and frees it with the socket: it measured several times
//! slower than this table (docs/performance.md).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_socket_cookie,
    macros::map,
    maps::{Array, HashMap},
};

use crate::common::atomic_cas;

/// Sockets per set: 4 × 16 bytes, one cache line.
const WAYS: usize = 4;

const EEXIST: i32 = 17;

/// One open socket: its cookie (0: a free slot) and what the tracker keeps about it.
#[repr(C)]
struct Slot {
    cookie: u64,
    value: u64,
}

#[repr(C)]
struct Set {
    slots: [Slot; WAYS],
}

const _: () = assert!(core::mem::size_of::<Set>() == 64);

/// The sets; their number (a power of two) is set at load time from `--max-sockets`.
#[map(name = "OPEN_SOCKETS")]
static OPEN_SOCKETS: Array<Set> = Array::with_max_entries(32768, 0);

/// Sockets whose set was full: cookie -> value. A plain (preallocated) hash, not an LRU:
/// evicting an open socket would leave its remote's count one too high forever, while refusing
/// a new one when full only leaves that connection uncounted, in both directions.
#[map(name = "OPEN_SOCKETS_MORE")]
static OPEN_SOCKETS_MORE: HashMap<u64, u64> = HashMap::with_max_entries(32768, 0);

/// The socket's cookie, given to it now if it has none yet.
#[inline(always)]
pub fn cookie(sk: *mut c_void) -> u64 {
    // SAFETY: `sk` is the tracepoint's BTF-typed socket, which the helper accepts.
    unsafe { bpf_get_socket_cookie(sk) }
}

/// Marks the socket with cookie `cookie` open, keeping `value` (non-zero) for its close.
/// `Ok(true)`: marked now; `Ok(false)`: it already was; `Err`: no room (the hash's error).
#[inline(always)]
pub fn mark(cookie: u64, sets_mask: u32, value: u64) -> Result<bool, i32> {
    if let Some(set) = OPEN_SOCKETS.get_ptr_mut(cookie as u32 & sets_mask) {
        // SAFETY: `set` points to a live array value; a slot is claimed by an atomic
        // compare-and-swap of its cookie from 0, so two CPUs never claim the same one, and
        // only the socket's own close (after its open, under the socket's lock) frees it.
        unsafe {
            let slots = &raw mut (*set).slots;
            for w in 0..WAYS {
                if (*slots)[w].cookie == cookie {
                    return Ok(false);
                }
            }
            for w in 0..WAYS {
                let slot = &raw mut (*slots)[w];
                if (*slot).cookie == 0 && atomic_cas(&raw mut (*slot).cookie, 0, cookie) {
                    (*slot).value = value;
                    return Ok(true);
                }
            }
        }
    }
    match OPEN_SOCKETS_MORE.insert(&cookie, &value, BPF_NOEXIST as u64) {
        Ok(()) => Ok(true),
        Err(e) if e == -EEXIST => Ok(false),
        Err(e) => Err(e),
    }
}

/// Unmarks the socket with cookie `cookie` if it is in its set: the value kept at its open.
#[inline(always)]
pub fn take(cookie: u64, sets_mask: u32) -> Option<u64> {
    if cookie == 0 {
        // Never given a cookie, so never marked.
        return None;
    }
    let set = OPEN_SOCKETS.get_ptr_mut(cookie as u32 & sets_mask)?;
    // SAFETY: as in `mark`; the value is read before the slot is freed.
    unsafe {
        let slots = &raw mut (*set).slots;
        for w in 0..WAYS {
            let slot = &raw mut (*slots)[w];
            if (*slot).cookie == cookie {
                let value = (*slot).value;
                (*slot).cookie = 0;
                return Some(value);
            }
        }
    }
    None
}

/// Unmarks the socket with cookie `cookie` if it went to the hash: the value kept at its open.
#[inline(always)]
pub fn take_overflow(cookie: u64) -> Option<u64> {
    if cookie == 0 {
        return None;
    }
    // SAFETY: a value from a successful lookup, copied out at once.
    let value = (unsafe { OPEN_SOCKETS_MORE.get(&cookie) }).copied()?;
    let _ = OPEN_SOCKETS_MORE.remove(&cookie);
    Some(value)
}
