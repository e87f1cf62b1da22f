//! VESPA kernel programs.
//!
//! * `traffic`: tc classifiers (ingress, egress) counting bytes and packets per interface and
//!   direction, and SYN-without-ACK packets per source address on ingress.
//! * `conntrack`: the BTF-typed tracepoint `inet_sock_set_state` tracking established TCP
//!   connections per remote address, with open/close events; `open_sockets`: which sockets it
//!   counted as open.
//!
//! * `firewall`: blocks and throttles on tc ingress (and XDP), and the reflex that blocks a
//!   source in the kernel the moment it crosses a threshold.
//!
//! Both report threshold crossings through the `EVENTS` ring buffer as they happen, so user
//! space never has to poll to detect an attack. Apart from what the firewall drops, the
//! programs only observe: the classifiers return `TC_ACT_UNSPEC`, which lets the next program
//! on the hook (or the qdisc) decide.
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod common;
mod conntrack;
mod firewall;
mod open_sockets;
mod traffic;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
