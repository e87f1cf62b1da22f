//! The connection tracker's counts from a `sock_ops` program on the root cgroup instead of
//! the tracepoint: the kernel calls it once when a socket becomes established (either end),
//! and, for the sockets it asks to (`BPF_SOCK_OPS_STATE_CB_FLAG`), at each later state
//! change, so a close is only seen for a socket whose open was counted, with no per-socket
//! table. Measured against the tracepoint by the benchmarks; the agent does not load it.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use vespa_common::{Addr, EVENT_CONN_THRESHOLD, STAT_TRACEPOINT_RUNS};

use crate::{
    common::{atomic_add, atomic_sub, bump, config},
    conntrack::remote_entry,
    firewall,
};

const TCP_ESTABLISHED: u32 = 1;
const AF_INET: u32 = 2;

#[sock_ops]
pub fn vespa_so_track(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        bump(STAT_TRACEPOINT_RUNS);
        let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        let remote = remote(&ctx);
        let Some(e) = remote_entry(&ctx, &remote) else {
            return 1;
        };
        // SAFETY: `e` points to a live LRU-hash value; the counters are updated atomically.
        let established = unsafe {
            atomic_add(&raw mut (*e).opened, 1);
            atomic_add(&raw mut (*e).established, 1) + 1
        };
        firewall::reflex(&ctx, &remote, EVENT_CONN_THRESHOLD, established);
        let cfg = config();
        if cfg.conn_threshold != 0 && established > cfg.conn_threshold {
            // SAFETY: as above.
            unsafe { (*e).over_threshold = 1 };
        }
    } else if op == BPF_SOCK_OPS_STATE_CB
        && ctx.arg(0) == TCP_ESTABLISHED
        && ctx.arg(1) != TCP_ESTABLISHED
    {
        bump(STAT_TRACEPOINT_RUNS);
        let remote = remote(&ctx);
        let Some(e) = remote_entry(&ctx, &remote) else {
            return 1;
        };
        // SAFETY: as above.
        unsafe {
            atomic_add(&raw mut (*e).closed, 1);
            if atomic_sub(&raw mut (*e).established, 1) == 0 {
                atomic_add(&raw mut (*e).established, 1);
            }
        }
    }
    1
}

#[inline(always)]
fn remote(ctx: &SockOpsContext) -> Addr {
    if ctx.family() == AF_INET {
        Addr::from_v4(ctx.remote_ip4().to_ne_bytes())
    } else {
        // The context allows 4-byte loads of the address only: one word at a time.
        let mut bytes = [0u8; 16];
        for i in 0..4 {
            // SAFETY: `ops` is the program's context; a 4-byte aligned load of one word.
            let x = unsafe {
                core::ptr::read_volatile((&raw const (*ctx.ops).remote_ip6).cast::<u32>().add(i))
            };
            bytes[i * 4..i * 4 + 4].copy_from_slice(&x.to_ne_bytes());
        }
        Addr { bytes }
    }
}

/// Does nothing: the benchmarks' baseline for the cost of the `sock_ops` hook itself.
#[sock_ops]
pub fn vespa_so_noop(_ctx: SockOpsContext) -> u32 {
    1
}
