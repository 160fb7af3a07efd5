//! Sockets that bypass `connect()` (semantics.md, "Beyond connect()"): for a workload whose
//! `rawSockets` setting is `Deny`, raw IP sockets (`cgroup/sock_create`) and packet sockets
//! (`lsm_cgroup/socket_create`, where the BPF LSM is active) cannot be created; under
//! `udp: Deny`, neither can ping sockets, whose datagrams no sendmsg hook sees.

use aya_ebpf::programs::{LsmContext, SockContext};
use passthrough_common::{Reason, workload_flags};

use crate::{
    decision::{Judged, settle, verdict},
    events::Subject,
    workload::caller,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const AF_PACKET: u32 = 17;
const AF_XDP: u32 = 44;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_ICMPV6: u32 = 58;

/// Why creating a socket of this kind is refused, given the workload's flags; `None` when
/// it is not one the settings govern.
#[inline(always)]
fn refusal(family: u32, sock_type: u32, protocol: u32, flags: u8) -> Option<Reason> {
    let inet = family == AF_INET || family == AF_INET6;
    if inet && sock_type == SOCK_RAW && flags & workload_flags::RAW_DENY != 0 {
        return Some(Reason::RawSocket);
    }
    let ping = sock_type == SOCK_DGRAM
        && ((family == AF_INET && protocol == IPPROTO_ICMP)
            || (family == AF_INET6 && protocol == IPPROTO_ICMPV6));
    if ping && flags & workload_flags::UDP_DENY != 0 {
        return Some(Reason::UdpDenied);
    }
    if (family == AF_PACKET || family == AF_XDP) && flags & workload_flags::RAW_DENY != 0 {
        return Some(Reason::PacketSocket);
    }
    None
}

/// Decides the creation of a socket of (family, type, protocol) by the caller.
#[inline(always)]
fn decide(family: u32, sock_type: u32, protocol: u32) -> i32 {
    // Most sockets (TCP, UDP) no setting refuses: no need to know whose they are.
    const ANY: u8 = workload_flags::RAW_DENY | workload_flags::UDP_DENY;
    if refusal(family, sock_type, protocol, ANY).is_none() {
        return crate::decision::ALLOW;
    }
    let Ok((workload, w)) = caller() else {
        return crate::decision::ALLOW;
    };
    let Some(reason) = refusal(family, sock_type, protocol, w.flags) else {
        return crate::decision::ALLOW;
    };
    let j = Judged {
        reason,
        workload,
        audit: w.flags & workload_flags::AUDIT != 0,
    };
    let subject = Subject::Socket(family as u8, sock_type as u8, protocol as u16);
    verdict(settle(&j, subject))
}

/// `cgroup/sock_create`: every `AF_INET` / `AF_INET6` socket a workload creates.
pub fn sock_create(ctx: &SockContext) -> Option<i32> {
    let sk = unsafe { ctx.sock.as_ref() }?;
    Some(decide(sk.family, sk.type_, sk.protocol))
}

/// `lsm_cgroup/socket_create(family, type, protocol, kern)`: sockets of every family,
/// for the ones `cgroup/sock_create` never sees (packet sockets).
pub fn socket_create_lsm(ctx: &LsmContext) -> i32 {
    let family: i32 = ctx.arg(0);
    let sock_type: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    let kern: i32 = ctx.arg(3);
    if kern != 0 {
        // The kernel's own sockets are not the workload's.
        return crate::decision::ALLOW;
    }
    let family = family as u32;
    if family == AF_INET || family == AF_INET6 {
        // cgroup/sock_create decides these, also where no BPF LSM runs.
        return crate::decision::ALLOW;
    }
    // The type argument carries SOCK_NONBLOCK / SOCK_CLOEXEC in its high bits.
    decide(family, (sock_type as u32) & 0xf, protocol as u32)
}
