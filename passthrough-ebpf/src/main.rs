//! The passthrough eBPF programs.
//!
//! Entry points only: each hook's logic lives in its own module, every map in `maps.rs`.

#![no_std]
#![no_main]

mod connect;
mod maps;

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

/// `cgroup/connect4`: decides every IPv4 `connect()` of a workload.
///
/// Fails closed: should the program ever be unable to read its context it denies, because an
/// egress filter that lets traffic through on an internal error is no filter.
#[cgroup_sock_addr(connect4)]
pub fn passthrough_connect4(ctx: SockAddrContext) -> i32 {
    connect::connect4(&ctx).unwrap_or(connect::DENY)
}

/// `cgroup/connect6`: decides every IPv6 `connect()` of a workload, IPv4-mapped destinations
/// as IPv4. Fails closed, as `passthrough_connect4`.
#[cgroup_sock_addr(connect6)]
pub fn passthrough_connect6(ctx: SockAddrContext) -> i32 {
    connect::connect6(&ctx).unwrap_or(connect::DENY)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
