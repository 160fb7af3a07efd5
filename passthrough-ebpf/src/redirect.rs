//! The hand-off to the peek proxy (semantics.md, "Decision", step 4, and "Peek proxy"):
//! a connect that only a Domain entry could allow is sent to the proxy's listener on the
//! loopback address of the caller's own network namespace, and the original destination is
//! kept by the client socket's cookie in `REDIRECTS`. The proxy finds that cookie for a
//! connection it accepted by asking the kernel (`sock_diag`) for the client end of it, and
//! `getpeername()` answers from the same entry, so the redirect stays invisible to the
//! application. Nothing runs for the workload's other sockets.

use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::bpf_get_socket_cookie, programs::SockAddrContext,
};
use passthrough_common::{OrigDst, Reason, unmapped_v4, v4_mapped};

use crate::maps::{CONFIG, REDIRECTS};

/// The proxy's listeners: the loopback addresses.
pub const PROXY_V4: [u8; 4] = [127, 0, 0, 1];
pub const PROXY_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// The socket family a program sees: `connect4`/`getpeername4` run for IPv4 sockets only
/// and may touch only `user_ip4`; the `6` programs only `user_ip6`, in 4-byte accesses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    V4,
    V6,
}

/// Rewrites the connect's destination to the proxy listener of the same family (IPv4 for an
/// IPv4-mapped destination) and remembers where it was going. `addr` is the destination as
/// IPv6 bytes (IPv4-mapped for IPv4). Denies when there is no listener of that family or no
/// room to remember.
#[inline(always)]
pub fn redirect(
    sa: &mut bpf_sock_addr,
    socket: Socket,
    workload: u64,
    addr: [u8; 16],
    port: u16,
    v4: bool,
) -> Reason {
    let Some(cfg) = CONFIG.get(0) else {
        return Reason::DomainNoProxy;
    };
    let proxy_port = if v4 {
        cfg.proxy_port_v4
    } else {
        cfg.proxy_port_v6
    };
    if proxy_port == 0 {
        return Reason::DomainNoProxy;
    }
    let cookie = unsafe { bpf_get_socket_cookie((sa as *mut bpf_sock_addr).cast()) };
    let orig = OrigDst {
        workload,
        addr,
        port,
        _pad: [0; 6],
    };
    if REDIRECTS.insert(cookie, orig, 0).is_err() {
        return Reason::DomainNoProxy;
    }
    sa.user_port = u32::from(proxy_port.to_be());
    match socket {
        Socket::V4 => sa.user_ip4 = u32::from_ne_bytes(PROXY_V4),
        Socket::V6 => set_ip6(sa, &if v4 { v4_mapped(PROXY_V4) } else { PROXY_V6 }),
    }
    Reason::ToProxy
}

/// `getpeername()` of a redirected socket: the original destination.
pub fn getpeername(ctx: &SockAddrContext, socket: Socket) {
    let Some(sa) = (unsafe { ctx.sock_addr.as_mut() }) else {
        return;
    };
    let cookie = unsafe { bpf_get_socket_cookie((sa as *mut bpf_sock_addr).cast()) };
    let Some(orig) = (unsafe { REDIRECTS.get(cookie) }) else {
        return;
    };
    let orig = *orig;
    match socket {
        Socket::V4 => {
            if let Some(v4) = unmapped_v4(&orig.addr) {
                sa.user_ip4 = u32::from_ne_bytes(v4);
                sa.user_port = u32::from(orig.port.to_be());
            }
        }
        Socket::V6 => {
            set_ip6(sa, &orig.addr);
            sa.user_port = u32::from(orig.port.to_be());
        }
    }
}

/// Writes `bpf_sock_addr::user_ip6` one 4-byte word at a time: the verifier refuses wider
/// stores to it, which the compiler would otherwise merge the words into.
#[inline(always)]
fn set_ip6(sa: &mut bpf_sock_addr, a: &[u8; 16]) {
    for i in 0..4 {
        let word = u32::from_ne_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]]);
        // SAFETY: a valid, aligned field of the context.
        unsafe { core::ptr::write_volatile(&mut sa.user_ip6[i], word) };
    }
}
