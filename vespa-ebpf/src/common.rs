//! Maps shared by every program: configuration, health counters and the event ring buffer.
//!
//! The programs log through aya-log (`AYA_LOGS`, read by `vespa-agent --ebpf-log`) where they
//! have something to say: a map update that fails, an event lost, a threshold crossed, the
//! tracker's namespace decisions. The agent sets aya-log's `AYA_LOG_LEVEL` at load time (0
//! unless asked): the verifier then sees a constant and removes every log statement's code,
//! so logging off costs the programs nothing, on the packet path or elsewhere.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    EbpfContext,
};
use aya_log_ebpf::warn;
use vespa_common::{
    EventHeader, SensorConfig, STAT_EVENTS_LOST, STAT_MAP_UPDATE_FAILED, STAT_SLOTS,
};

#[map(name = "CONFIG")]
pub static CONFIG: Array<SensorConfig> = Array::with_max_entries(1, 0);

#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// Size is set by user space at load time (`--ring-buffer-bytes`); this is the default.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[inline(always)]
pub fn bump(slot: u32) {
    if let Some(p) = STATS.get_ptr_mut(slot) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array, so it is
        // valid for this CPU and nothing else writes it concurrently.
        unsafe { *p += 1 };
    }
}

/// A map update failed (`map` full, or out of memory): counted in the health counters, and
/// logged with the helper's error code.
#[inline(always)]
pub fn update_failed<C: EbpfContext>(ctx: &C, map: &str, error: i32) {
    bump(STAT_MAP_UPDATE_FAILED);
    warn!(
        ctx,
        "{}: update failed (error {}), entry not counted", map, error
    );
}

#[inline(always)]
pub fn config() -> SensorConfig {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => SensorConfig::default(),
    }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn header(kind: u32, size: usize, timestamp_ns: u64) -> EventHeader {
    EventHeader {
        kind,
        size: size as u32,
        timestamp_ns,
    }
}

/// Writes `event` to the ring buffer; counts (and logs) it as lost when the buffer is full.
///
/// `urgent` events (threshold crossings) wake the reader at once. The others (per-connection
/// open/close) do not: the reader drains them on its next wake-up or poll, which batches
/// thousands of records per wake-up under load, unless the buffer is a quarter full.
#[inline(always)]
pub fn emit<C: EbpfContext, T: 'static>(ctx: &C, event: T, urgent: bool) {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    const BPF_RB_AVAIL_DATA: u64 = 0;
    const BPF_RB_RING_SIZE: u64 = 1;
    let flags = if urgent || EVENTS.query(BPF_RB_AVAIL_DATA) > EVENTS.query(BPF_RB_RING_SIZE) / 4 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(flags);
        }
        None => {
            bump(STAT_EVENTS_LOST);
            warn!(
                ctx,
                "EVENTS full: a {}-byte event lost",
                core::mem::size_of::<T>()
            );
        }
    }
}

/// Atomic fetch-and-add on a map value shared by all CPUs (BPF_ATOMIC | BPF_FETCH).
///
/// # Safety
/// `dst` must point to a live, 8-byte aligned map value.
#[inline(always)]
pub unsafe fn atomic_add(dst: *mut u64, v: u64) -> u64 {
    // SAFETY: forwarded to the caller. core's atomic types have no RMW methods on BPF, so the
    // intrinsic is used directly. SeqCst, not Relaxed: LLVM 22's BPF back end lowers a relaxed
    // fetch-add to the non-fetching `lock +=` even when the result is used (garbage result);
    // SeqCst yields BPF_ATOMIC|BPF_FETCH, which the connection tests depend on.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::SeqCst }>(
            dst, v,
        )
    }
}

/// Atomic fetch-and-subtract; see [`atomic_add`].
///
/// # Safety
/// `dst` must point to a live, 8-byte aligned map value.
#[inline(always)]
pub unsafe fn atomic_sub(dst: *mut u64, v: u64) -> u64 {
    // SAFETY: as in `atomic_add`.
    unsafe {
        core::intrinsics::atomic_xsub::<u64, u64, { core::intrinsics::AtomicOrdering::SeqCst }>(
            dst, v,
        )
    }
}

/// Atomic compare-and-swap (BPF_ATOMIC | BPF_CMPXCHG): stores `new` if `*dst` is `old`;
/// whether it did.
///
/// # Safety
/// `dst` must point to a live, 8-byte aligned map value.
#[inline(always)]
pub unsafe fn atomic_cas(dst: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: as in `atomic_add`.
    unsafe {
        core::intrinsics::atomic_cxchg::<
            u64,
            { core::intrinsics::AtomicOrdering::SeqCst },
            { core::intrinsics::AtomicOrdering::SeqCst },
        >(dst, old, new)
        .1
    }
}
