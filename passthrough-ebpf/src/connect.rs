//! The connect decision: semantics.md "Decision for one TCP connect() of a workload",
//! steps 1 to 5, for the caller's workload. `passthrough::policy::decide` in user space is
//! the reference these lines must agree with; the privileged tests check that they do.

use aya_ebpf::{maps::lpm_trie::Key, programs::SockAddrContext};
use aya_log_ebpf::debug;
use passthrough_common::{
    CidrV4Data, CidrV6Data, DomainPortKey, ExactV4Key, ExactV6Key, LPM_FIXED_BITS, PORT_ANY,
    Reason, Workload, config_flags, mode, v4_mapped, workload_flags,
};

pub use crate::decision::DENY;
use crate::{
    datagram,
    decision::{Judged, settle, verdict},
    events::Subject,
    flow,
    maps::{CIDR_V4, CIDR_V6, CONFIG, DOMAIN_PORTS, EXACT_V4, EXACT_V6, MESH_V4, MESH_V6},
    redirect::{PROXY_V6, Socket, redirect},
    workload::caller,
};

/// Sockets of this type are judged as connections (TCP, and MPTCP and SCTP in stream mode,
/// which would otherwise be a way around the filter); datagram sockets (UDP, ping) by the
/// workload's `udp` setting.
const SOCK_STREAM: u32 = 1;

/// Why reading the context failed; any error denies (see the entry points).
pub struct ContextError;

/// An IPv4 connect.
pub fn connect4(ctx: &SockAddrContext) -> Result<i32, ContextError> {
    let sa = unsafe { ctx.sock_addr.as_mut() }.ok_or(ContextError)?;
    // `user_ip4` and `user_port` are in network byte order.
    let addr = sa.user_ip4.to_ne_bytes();
    let port = u16::from_be(sa.user_port as u16);
    if sa.type_ != SOCK_STREAM {
        return Ok(datagram_connect(&v4_mapped(addr), port));
    }
    let mut j = judge_v4(addr, port);
    if j.reason == Reason::ToProxy {
        j.reason = to_proxy(sa, Socket::V4, j.workload, &v4_mapped(addr), port);
    }
    let reason = settle(&j, Subject::Connect(v4_mapped(addr), port));
    flow::record(
        j.workload,
        v4_mapped(addr),
        port,
        sa.protocol as u16,
        j.reason,
        reason == Reason::Audit,
    );
    if debug_enabled() {
        log_connect(ctx.sock_addr, &v4_mapped(addr), port, reason, Socket::V4);
    }
    Ok(verdict(reason))
}

/// An IPv6 connect. An IPv4-mapped destination (`::ffff:a.b.c.d`, what a dual-stack socket
/// uses for IPv4) is judged by the IPv4 rules, so it cannot bypass them.
pub fn connect6(ctx: &SockAddrContext) -> Result<i32, ContextError> {
    let sa = unsafe { ctx.sock_addr.as_mut() }.ok_or(ContextError)?;
    let addr = user_ip6(sa);
    let port = u16::from_be(sa.user_port as u16);
    let mapped = passthrough_common::unmapped_v4(&addr);
    if sa.type_ != SOCK_STREAM {
        return Ok(datagram_connect(&addr, port));
    }
    let mut j = match mapped {
        Some(v4) => judge_v4(v4, port),
        None => judge_v6(addr, port),
    };
    if j.reason == Reason::ToProxy {
        j.reason = to_proxy(sa, Socket::V6, j.workload, &addr, port);
    }
    let reason = settle(&j, Subject::Connect(addr, port));
    flow::record(
        j.workload,
        addr,
        port,
        sa.protocol as u16,
        j.reason,
        reason == Reason::Audit,
    );
    if debug_enabled() {
        log_connect(ctx.sock_addr, &addr, port, reason, Socket::V6);
    }
    Ok(verdict(reason))
}

// The paths an allowed TCP connect does not take, out of line (BPF subprograms): inlined,
// they spread the allowed path over more instruction cache lines, which the TCP stack then
// misses in the rest of the syscall (docs/architecture.md, "The connect() fast path").

/// A UDP or ping socket's default destination (`addr` as IPv6 bytes, IPv4-mapped for IPv4):
/// judged as its datagrams will be.
#[inline(never)]
fn datagram_connect(addr: &[u8; 16], port: u16) -> i32 {
    let j = match passthrough_common::unmapped_v4(addr) {
        Some(v4) => datagram::judge_v4(v4, port),
        None => datagram::judge_v6(*addr, port),
    };
    verdict(settle(&j, Subject::Connect(*addr, port)))
}

/// Hands the connect to the peek proxy ([`redirect`]).
#[inline(never)]
fn to_proxy(
    sa: &mut aya_ebpf::bindings::bpf_sock_addr,
    socket: Socket,
    workload: u64,
    addr: &[u8; 16],
    port: u16,
) -> Reason {
    let v4 = passthrough_common::unmapped_v4(addr).is_some();
    redirect(sa, socket, workload, *addr, port, v4)
}

/// `debug: true`: one log line per decision.
#[inline(never)]
fn log_connect(
    sock_addr: *mut aya_ebpf::bindings::bpf_sock_addr,
    addr: &[u8; 16],
    port: u16,
    reason: Reason,
    socket: Socket,
) {
    let ctx = SockAddrContext::new(sock_addr);
    match (socket, passthrough_common::unmapped_v4(addr)) {
        (Socket::V4, Some(v4)) => debug!(&ctx, "connect4 {:i}:{} {}", v4, port, reason.name()),
        _ => debug!(&ctx, "connect6 [{:i}]:{} {}", *addr, port, reason.name()),
    }
}

/// The destination of a sock_addr context as IPv6 bytes.
#[inline(always)]
pub fn user_ip6(sa: &aya_ebpf::bindings::bpf_sock_addr) -> [u8; 16] {
    let w = sa.user_ip6;
    let mut addr = [0u8; 16];
    for (i, word) in w.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    addr
}

/// `debug: true` in the agent config: log each decision through aya-log.
#[inline(always)]
fn debug_enabled() -> bool {
    CONFIG.get(0).is_some_and(|c| c.debug != 0)
}

/// Step 2 and the final denial, shared by both families: the mode decides unless it is
/// `Matched` (`None` here), in which case the workload's policy does.
#[inline(always)]
fn by_mode(w: &Workload) -> Option<Reason> {
    match w.mode {
        mode::UNFILTERED => Some(Reason::Unfiltered),
        mode::ALL => Some(Reason::ModeAll),
        mode::NONE => Some(Reason::ModeNone),
        _ => None,
    }
}

/// The policy's verdict for the workload `id` (with its audit flag).
#[inline(always)]
fn judged(id: u64, w: &Workload, reason: Reason) -> Judged {
    Judged {
        reason,
        workload: id,
        audit: w.flags & workload_flags::AUDIT != 0,
    }
}

/// Step 4: a Domain entry for this port or for any port hands the connect to the peek
/// proxy; with none, step 5 denies.
#[inline(always)]
fn domain_or_deny(policy: u32, port: u16) -> Reason {
    let Some(ports) = DOMAIN_PORTS.get(policy) else {
        return Reason::NoMatch;
    };
    if ports.get_ptr(DomainPortKey { port, _pad: 0 }).is_some()
        || ports
            .get_ptr(DomainPortKey {
                port: PORT_ANY,
                _pad: 0,
            })
            .is_some()
    {
        Reason::ToProxy
    } else {
        Reason::NoMatch
    }
}

/// Whether the agent wrote mesh CIDRs of a family (`Config::flags`): without, no lookup.
#[inline(always)]
fn has_mesh(flag: u8) -> bool {
    CONFIG.get(0).is_some_and(|c| c.flags & flag != 0)
}

#[inline(always)]
fn judge_v4(addr: [u8; 4], port: u16) -> Judged {
    let (id, w) = match caller() {
        Ok(w) => w,
        Err(reason) => return Judged::fixed(reason),
    };
    // Step 1: loopback, the unspecified address (the local host), the mesh.
    if addr[0] == 127 || addr == [0; 4] {
        return Judged::fixed(Reason::Loopback);
    }
    if has_mesh(config_flags::MESH_V4) && MESH_V4.get(Key::new(32, addr)).is_some() {
        return Judged::fixed(Reason::MeshCidr);
    }
    let reason = match by_mode(&w) {
        Some(r) => r,
        None => matched_v4(w.policy, addr, port),
    };
    judged(id, &w, reason)
}

/// Steps 3 to 5 for an IPv4 destination under the workload's policy. A function, not a
/// closure passed to the mode check: LLVM left that closure out of line, a BPF subprogram
/// call on every allowed connect.
#[inline(always)]
fn matched_v4(policy: u32, addr: [u8; 4], port: u16) -> Reason {
    if let Some(exact) = EXACT_V4.get(policy) {
        for p in [port, PORT_ANY] {
            let key = ExactV4Key {
                port: p,
                _pad: 0,
                addr,
            };
            if exact.get_ptr(key).is_some() {
                return Reason::IpEntry;
            }
        }
    }
    if let Some(cidrs) = CIDR_V4.get(policy) {
        for p in [port, PORT_ANY] {
            let key = Key::new(LPM_FIXED_BITS + 32, CidrV4Data::new(p, addr));
            if cidrs.get(&key).is_some() {
                return Reason::CidrEntry;
            }
        }
    }
    domain_or_deny(policy, port)
}

#[inline(always)]
fn judge_v6(addr: [u8; 16], port: u16) -> Judged {
    let (id, w) = match caller() {
        Ok(w) => w,
        Err(reason) => return Judged::fixed(reason),
    };
    if addr == PROXY_V6 || addr == [0; 16] {
        return Judged::fixed(Reason::Loopback);
    }
    if has_mesh(config_flags::MESH_V6) && MESH_V6.get(Key::new(128, addr)).is_some() {
        return Judged::fixed(Reason::MeshCidr);
    }
    let reason = match by_mode(&w) {
        Some(r) => r,
        None => matched_v6(w.policy, addr, port),
    };
    judged(id, &w, reason)
}

/// Steps 3 to 5 for an IPv6 destination under the workload's policy. A function, not a
/// closure passed to the mode check: LLVM left that closure out of line, a BPF subprogram
/// call on every allowed connect.
#[inline(always)]
fn matched_v6(policy: u32, addr: [u8; 16], port: u16) -> Reason {
    if let Some(exact) = EXACT_V6.get(policy) {
        for p in [port, PORT_ANY] {
            let key = ExactV6Key {
                port: p,
                _pad: 0,
                addr,
            };
            if exact.get_ptr(key).is_some() {
                return Reason::IpEntry;
            }
        }
    }
    if let Some(cidrs) = CIDR_V6.get(policy) {
        for p in [port, PORT_ANY] {
            let key = Key::new(LPM_FIXED_BITS + 128, CidrV6Data::new(p, addr));
            if cidrs.get(&key).is_some() {
                return Reason::CidrEntry;
            }
        }
    }
    domain_or_deny(policy, port)
}
