//! Deny events: every connect the policy denies (or would deny, in audit mode) is reported
//! to the agent through a ring buffer. A full buffer never delays or changes a decision:
//! the event is counted as dropped instead.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns};
use passthrough_common::{Event, Reason, event_kind};

use crate::maps::{EVENTS, EVENTS_DROPPED};

/// What an event is about: a destination, or a socket that was to be created.
#[derive(Clone, Copy)]
pub enum Subject {
    /// A `connect()` to (address as IPv6 bytes, IPv4-mapped for IPv4; port).
    Connect([u8; 16], u16),
    /// A datagram sent to (address, port).
    Datagram([u8; 16], u16),
    /// A socket of (family, type, protocol).
    Socket(u8, u8, u16),
}

/// Out of line: only a denial runs it, and kept inline it would spread every program's
/// allowed path over more instruction cache lines.
#[inline(never)]
pub fn report(workload: u64, reason: Reason, audit: bool, subject: Subject) {
    let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
        if let Some(n) = EVENTS_DROPPED.get_ptr_mut(0) {
            // Per-CPU slot: no other CPU writes it.
            unsafe { *n += 1 };
        }
        return;
    };
    let (kind, addr, port, family, sock_type) = match subject {
        Subject::Connect(a, p) => (event_kind::CONNECT, a, p, 0, 0),
        Subject::Datagram(a, p) => (event_kind::DATAGRAM, a, p, 0, 0),
        Subject::Socket(f, t, proto) => (event_kind::SOCKET, [0; 16], proto, f, t),
    };
    slot.write(Event {
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        workload,
        pid_tgid: bpf_get_current_pid_tgid(),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        addr,
        port,
        reason: reason as u8,
        audit: u8::from(audit),
        kind,
        family,
        sock_type,
        _pad: 0,
    });
    slot.submit(0);
}
