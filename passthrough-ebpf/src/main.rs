//! The passthrough eBPF programs.
//!
//! Entry points only: each hook's logic lives in its own module, every map in `maps.rs`.

#![no_std]
#![no_main]
// `flow.rs`: the atomic add of a shared map value (core has no atomic RMW on BPF).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod connect;
mod datagram;
mod decision;
mod events;
mod flow;
mod maps;
mod podwatch;
mod redirect;
mod socket;
mod workload;

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr, lsm_cgroup, tracepoint},
    programs::{LsmContext, SockAddrContext, SockContext, TracePointContext},
};

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

/// `cgroup/sendmsg4`: decides every UDP datagram a workload sends to an IPv4 address
/// (`udp: Deny`). Fails closed, as `passthrough_connect4`.
#[cgroup_sock_addr(sendmsg4)]
pub fn passthrough_sendmsg4(ctx: SockAddrContext) -> i32 {
    datagram::sendmsg4(&ctx).unwrap_or(connect::DENY)
}

/// `cgroup/sendmsg6`: as `passthrough_sendmsg4`, for IPv6 (IPv4-mapped judged as IPv4).
#[cgroup_sock_addr(sendmsg6)]
pub fn passthrough_sendmsg6(ctx: SockAddrContext) -> i32 {
    datagram::sendmsg6(&ctx).unwrap_or(connect::DENY)
}

/// `cgroup/sock_create`: raw IP sockets (`rawSockets: Deny`) and ping sockets
/// (`udp: Deny`) cannot be created. Fails closed.
#[cgroup_sock(sock_create)]
pub fn passthrough_sock_create(ctx: SockContext) -> i32 {
    socket::sock_create(&ctx).unwrap_or(connect::DENY)
}

/// `lsm_cgroup/socket_create`, attached per workload cgroup (never globally): packet
/// sockets (`AF_PACKET`, `AF_XDP`) cannot be created under `rawSockets: Deny`.
#[lsm_cgroup(hook = "socket_create")]
pub fn passthrough_socket_create(ctx: LsmContext) -> i32 {
    socket::socket_create_lsm(&ctx)
}

/// `cgroup/getpeername4`: a connect handed to the peek proxy reports its original
/// destination, so the redirect is invisible to the application.
#[cgroup_sock_addr(getpeername4)]
pub fn passthrough_getpeername4(ctx: SockAddrContext) -> i32 {
    redirect::getpeername(&ctx, redirect::Socket::V4);
    1
}

/// `cgroup/getpeername6`: as `passthrough_getpeername4`, for IPv6 sockets.
#[cgroup_sock_addr(getpeername6)]
pub fn passthrough_getpeername6(ctx: SockAddrContext) -> i32 {
    redirect::getpeername(&ctx, redirect::Socket::V6);
    1
}

/// `tracepoint/cgroup/cgroup_mkdir`: a new pod cgroup of a pod the API server already
/// reported gets its `WORKLOADS` entry before `mkdir` returns, so the pod's first process is
/// judged by its policy. It refuses nothing: a cgroup it cannot read or place keeps what it
/// would have had without it (the kubepods default, then the agent's entry).
#[tracepoint(category = "cgroup", name = "cgroup_mkdir")]
pub fn passthrough_cgroup_mkdir(ctx: TracePointContext) -> u32 {
    podwatch::cgroup_mkdir(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
