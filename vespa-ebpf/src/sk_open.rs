//! The sockets the tracker counted as open, in socket-local storage
//! (`BPF_MAP_TYPE_SK_STORAGE`): the kernel keeps the value with the socket and frees it with
//! the socket, so there is no table to size, fill or search.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE, btf_maps::SkStorage, helpers::bpf_sk_storage_get,
    macros::btf_map,
};

/// Per socket: 0 while not counted open, else what the tracker keeps for its close.
#[btf_map]
static SK_OPEN: SkStorage<u64> = SkStorage::new();

#[inline(always)]
fn storage(sk: *mut c_void, create: bool) -> *mut u64 {
    let flags = if create {
        BPF_SK_STORAGE_GET_F_CREATE as u64
    } else {
        0
    };
    // SAFETY: `sk` is the tracepoint's BTF-typed socket, which the helper accepts (it
    // returns null for anything else); a null initial value creates a zeroed one.
    unsafe {
        bpf_sk_storage_get(
            (&raw const SK_OPEN).cast_mut().cast(),
            sk,
            ptr::null_mut(),
            flags,
        )
    }
    .cast()
}

/// Marks the socket open, keeping `value` (non-zero) for its close. `Ok(true)`: marked now;
/// `Ok(false)`: it already was; `Err`: the kernel could not allocate its storage.
#[inline(always)]
pub fn mark(sk: *mut c_void, value: u64) -> Result<bool, i32> {
    let p = storage(sk, true);
    if p.is_null() {
        return Err(-12);
    }
    // SAFETY: a pointer to this socket's storage; the socket's state changes are serialised
    // by its lock, so its open and close never race.
    unsafe {
        if *p != 0 {
            return Ok(false);
        }
        *p = value;
    }
    Ok(true)
}

/// Unmarks the socket if it was marked open: the value kept at its open.
#[inline(always)]
pub fn take(sk: *mut c_void) -> Option<u64> {
    let p = storage(sk, false);
    if p.is_null() {
        return None;
    }
    // SAFETY: as in `mark`.
    unsafe {
        let v = *p;
        if v == 0 {
            return None;
        }
        *p = 0;
        Some(v)
    }
}
