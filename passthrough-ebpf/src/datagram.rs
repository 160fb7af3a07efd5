//! Datagrams (semantics.md, "Beyond connect()"): a workload whose `udp` setting is `Deny`
//! (the agent sets it only for mode `None` or `Matched`) may send UDP only to loopback, the
//! mesh, and port 53 of its resolvers. `cgroup/sendmsg4|6` judge each datagram sent to an
//! address; a connected UDP (or ping) socket is judged once, at `connect()`.

use aya_ebpf::{maps::lpm_trie::Key, programs::SockAddrContext};
use passthrough_common::{
    DNS_FIXED_BITS, DnsV4Data, DnsV6Data, Reason, config_flags, unmapped_v4, v4_mapped,
    workload_flags,
};

use crate::{
    connect::{ContextError, user_ip6},
    decision::{Judged, settle, verdict},
    events::Subject,
    maps::{CONFIG, DNS_V4, DNS_V6, MESH_V4, MESH_V6},
    redirect::PROXY_V6,
    workload::caller,
};

/// DNS: the one UDP service a `udp: Deny` workload keeps (to its resolvers).
const DNS_PORT: u16 = 53;

/// A datagram sent to an IPv4 address.
pub fn sendmsg4(ctx: &SockAddrContext) -> Result<i32, ContextError> {
    let sa = unsafe { ctx.sock_addr.as_mut() }.ok_or(ContextError)?;
    let addr = sa.user_ip4.to_ne_bytes();
    let port = u16::from_be(sa.user_port as u16);
    let j = judge_v4(addr, port);
    Ok(verdict(settle(
        &j,
        Subject::Datagram(v4_mapped(addr), port),
    )))
}

/// A datagram sent to an IPv6 address; an IPv4-mapped one is judged as IPv4.
pub fn sendmsg6(ctx: &SockAddrContext) -> Result<i32, ContextError> {
    let sa = unsafe { ctx.sock_addr.as_mut() }.ok_or(ContextError)?;
    let addr = user_ip6(sa);
    let port = u16::from_be(sa.user_port as u16);
    let j = match unmapped_v4(&addr) {
        Some(v4) => judge_v4(v4, port),
        None => judge_v6(addr, port),
    };
    Ok(verdict(settle(&j, Subject::Datagram(addr, port))))
}

/// The workload, when its UDP is judged; otherwise the reason to pass untouched. Where no
/// workload has `udp: Deny` (`Config::flags`), nothing is looked up.
#[inline(always)]
fn judged_workload() -> Result<(u64, u16, bool), Reason> {
    if !CONFIG
        .get(0)
        .is_some_and(|c| c.flags & config_flags::UDP != 0)
    {
        return Err(Reason::NotTcp);
    }
    let (id, w) = caller()?;
    if w.flags & workload_flags::UDP_DENY == 0 {
        return Err(Reason::NotTcp);
    }
    Ok((id, w.dns_set, w.flags & workload_flags::AUDIT != 0))
}

#[inline(always)]
pub fn judge_v4(addr: [u8; 4], port: u16) -> Judged {
    let (workload, dns_set, audit) = match judged_workload() {
        Ok(w) => w,
        Err(reason) => return Judged::fixed(reason),
    };
    if addr[0] == 127 || addr == [0; 4] {
        return Judged::fixed(Reason::Loopback);
    }
    if MESH_V4.get(Key::new(32, addr)).is_some() {
        return Judged::fixed(Reason::MeshCidr);
    }
    let dns = port == DNS_PORT
        && DNS_V4
            .get(Key::new(DNS_FIXED_BITS + 32, DnsV4Data::new(dns_set, addr)))
            .is_some();
    Judged {
        reason: if dns {
            Reason::UdpDns
        } else {
            Reason::UdpDenied
        },
        workload,
        audit,
    }
}

#[inline(always)]
pub fn judge_v6(addr: [u8; 16], port: u16) -> Judged {
    let (workload, dns_set, audit) = match judged_workload() {
        Ok(w) => w,
        Err(reason) => return Judged::fixed(reason),
    };
    if addr == PROXY_V6 || addr == [0; 16] {
        return Judged::fixed(Reason::Loopback);
    }
    if MESH_V6.get(Key::new(128, addr)).is_some() {
        return Judged::fixed(Reason::MeshCidr);
    }
    let dns = port == DNS_PORT
        && DNS_V6
            .get(Key::new(
                DNS_FIXED_BITS + 128,
                DnsV6Data::new(dns_set, addr),
            ))
            .is_some();
    Judged {
        reason: if dns {
            Reason::UdpDns
        } else {
            Reason::UdpDenied
        },
        workload,
        audit,
    }
}
