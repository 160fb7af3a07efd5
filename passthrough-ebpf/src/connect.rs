//! The connect decision: semantics.md "Decision for one TCP connect() of a workload",
//! steps 1 to 5, for the caller's workload. `passthrough::policy::decide` in user space is
//! the reference these lines must agree with; the privileged tests check that they do.

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use passthrough_common::{
    CidrV4Data, CidrV6Data, DomainPortKey, ExactV4Key, ExactV6Key, LPM_FIXED_BITS, PORT_ANY,
    Reason, Workload, mode, v4_mapped, workload_flags,
};

use crate::{
    events::report,
    maps::{
        CIDR_V4, CIDR_V6, CONFIG, COUNTERS, DOMAIN_PORTS, EXACT_V4, EXACT_V6, MESH_V4, MESH_V6,
        WORKLOADS,
    },
    redirect::{PROXY_V6, Socket, redirect},
};

/// Return value of a cgroup sock_addr program that lets the connect proceed.
pub const ALLOW: i32 = 1;
/// Return value that makes `connect()` fail with `EPERM`.
pub const DENY: i32 = 0;

/// Sockets of this type are judged (TCP, and MPTCP and SCTP in stream mode, which would
/// otherwise be a way around the filter); datagram sockets (DNS over UDP) pass.
const SOCK_STREAM: u32 = 1;

/// Deepest cgroup level searched for a workload. Kubernetes pods sit at level 3 to 5.
const MAX_CGROUP_DEPTH: i32 = 32;

/// Why reading the context failed; any error denies (see the entry points).
pub struct ContextError;

/// An IPv4 connect.
pub fn connect4(ctx: &SockAddrContext) -> Result<i32, ContextError> {
    let sa = unsafe { ctx.sock_addr.as_mut() }.ok_or(ContextError)?;
    if sa.type_ != SOCK_STREAM {
        return Ok(verdict(Reason::NotTcp));
    }
    // `user_ip4` and `user_port` are in network byte order.
    let addr = sa.user_ip4.to_ne_bytes();
    let port = u16::from_be(sa.user_port as u16);
    let mut j = judge_v4(addr, port);
    if j.reason == Reason::ToProxy {
        j.reason = redirect(sa, Socket::V4, j.workload, v4_mapped(addr), port, true);
    }
    let reason = settle(&j, v4_mapped(addr), port);
    if debug_enabled() {
        debug!(ctx, "connect4 {:i}:{} {}", addr, port, reason.name());
    }
    Ok(verdict(reason))
}

/// An IPv6 connect. An IPv4-mapped destination (`::ffff:a.b.c.d`, what a dual-stack socket
/// uses for IPv4) is judged by the IPv4 rules, so it cannot bypass them.
pub fn connect6(ctx: &SockAddrContext) -> Result<i32, ContextError> {
    let sa = unsafe { ctx.sock_addr.as_mut() }.ok_or(ContextError)?;
    if sa.type_ != SOCK_STREAM {
        return Ok(verdict(Reason::NotTcp));
    }
    let w = sa.user_ip6;
    let mut addr = [0u8; 16];
    for (i, word) in w.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let port = u16::from_be(sa.user_port as u16);
    let mapped = addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff;
    let mut j = if mapped {
        judge_v4([addr[12], addr[13], addr[14], addr[15]], port)
    } else {
        judge_v6(addr, port)
    };
    if j.reason == Reason::ToProxy {
        j.reason = redirect(sa, Socket::V6, j.workload, addr, port, mapped);
    }
    let reason = settle(&j, addr, port);
    if debug_enabled() {
        debug!(ctx, "connect6 [{:i}]:{} {}", addr, port, reason.name());
    }
    Ok(verdict(reason))
}

/// What the policy says about a connect, before audit mode: the reason, the workload's
/// cgroup id (0 outside every workload) and whether the workload is audited.
struct Judged {
    reason: Reason,
    workload: u64,
    audit: bool,
}

impl Judged {
    /// A verdict that does not depend on a workload's policy.
    #[inline(always)]
    const fn fixed(reason: Reason) -> Self {
        Self {
            reason,
            workload: 0,
            audit: false,
        }
    }
}

/// The final reason: a denial is reported as an event and, for an audited workload, let
/// through as `Audit`.
#[inline(always)]
fn settle(j: &Judged, addr: [u8; 16], port: u16) -> Reason {
    if j.reason.allows() {
        return j.reason;
    }
    report(j.workload, j.reason, j.audit, addr, port);
    if j.audit { Reason::Audit } else { j.reason }
}

/// `debug: true` in the agent config: log each decision through aya-log.
#[inline(always)]
fn debug_enabled() -> bool {
    CONFIG.get(0).is_some_and(|c| c.debug != 0)
}

/// Counts the decision and turns it into the program's return value.
#[inline(always)]
fn verdict(reason: Reason) -> i32 {
    if let Some(c) = COUNTERS.get_ptr_mut(reason as u32) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *c += 1 };
    }
    if reason.allows() { ALLOW } else { DENY }
}

/// The caller's workload and its cgroup id: the deepest cgroup on its path that the agent
/// manages, so a process in a container cgroup below a pod's cgroup belongs to the pod.
/// `Err` carries the reason to pass untouched (the agent itself, or no workload).
#[inline(always)]
fn workload() -> Result<(u64, Workload), Reason> {
    // The agent's cgroup and everything below it (its children; on Kubernetes, the
    // containers of the agent's pod). User space never sets it to the root cgroup.
    let agent = CONFIG.get(0).map_or(0, |c| c.agent_cgroup);
    let current = unsafe { bpf_get_current_cgroup_id() };
    if agent != 0 && agent == current {
        return Err(Reason::Agent);
    }
    let mut found = None;
    for level in 0..MAX_CGROUP_DEPTH {
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            // Past the caller's own level.
            break;
        }
        if agent != 0 && id == agent {
            return Err(Reason::Agent);
        }
        if let Some(w) = unsafe { WORKLOADS.get(id) } {
            found = Some((id, *w));
        }
    }
    found.ok_or(Reason::Unmanaged)
}

/// Steps 2 and the final denial, shared by both families: the mode decides unless it is
/// `Matched`, in which case `matched` does.
#[inline(always)]
fn by_mode(id: u64, w: &Workload, matched: impl FnOnce(u32) -> Reason) -> Judged {
    let reason = match w.mode {
        mode::UNFILTERED => Reason::Unfiltered,
        mode::ALL => Reason::ModeAll,
        mode::NONE => Reason::ModeNone,
        _ => matched(w.slot),
    };
    Judged {
        reason,
        workload: id,
        audit: w.flags & workload_flags::AUDIT != 0,
    }
}

/// Step 4: a Domain entry for this port or for any port hands the connect to the peek
/// proxy; with none, step 5 denies.
#[inline(always)]
fn domain_or_deny(slot: u32, port: u16) -> Reason {
    let has = |port| {
        DOMAIN_PORTS
            .get_ptr(DomainPortKey {
                slot,
                port,
                _pad: 0,
            })
            .is_some()
    };
    if has(port) || has(PORT_ANY) {
        Reason::ToProxy
    } else {
        Reason::NoMatch
    }
}

fn judge_v4(addr: [u8; 4], port: u16) -> Judged {
    let (id, w) = match workload() {
        Ok(w) => w,
        Err(reason) => return Judged::fixed(reason),
    };
    // Step 1: loopback, the unspecified address (the local host), the mesh.
    if addr[0] == 127 || addr == [0; 4] {
        return Judged::fixed(Reason::Loopback);
    }
    if MESH_V4.get(Key::new(32, addr)).is_some() {
        return Judged::fixed(Reason::MeshCidr);
    }
    by_mode(id, &w, |slot| {
        for p in [port, PORT_ANY] {
            let key = ExactV4Key {
                slot,
                port: p,
                _pad: 0,
                addr,
            };
            if EXACT_V4.get_ptr(key).is_some() {
                return Reason::IpEntry;
            }
        }
        for p in [port, PORT_ANY] {
            let key = Key::new(LPM_FIXED_BITS + 32, CidrV4Data::new(slot, p, addr));
            if CIDR_V4.get(key).is_some() {
                return Reason::CidrEntry;
            }
        }
        domain_or_deny(slot, port)
    })
}

fn judge_v6(addr: [u8; 16], port: u16) -> Judged {
    let (id, w) = match workload() {
        Ok(w) => w,
        Err(reason) => return Judged::fixed(reason),
    };
    if addr == PROXY_V6 || addr == [0; 16] {
        return Judged::fixed(Reason::Loopback);
    }
    if MESH_V6.get(Key::new(128, addr)).is_some() {
        return Judged::fixed(Reason::MeshCidr);
    }
    by_mode(id, &w, |slot| {
        for p in [port, PORT_ANY] {
            let key = ExactV6Key {
                slot,
                port: p,
                _pad: 0,
                addr,
            };
            if EXACT_V6.get_ptr(key).is_some() {
                return Reason::IpEntry;
            }
        }
        for p in [port, PORT_ANY] {
            let key = Key::new(LPM_FIXED_BITS + 128, CidrV6Data::new(slot, p, addr));
            if CIDR_V6.get(key).is_some() {
                return Reason::CidrEntry;
            }
        }
        domain_or_deny(slot, port)
    })
}
