//! Deny events: every connect the policy denies (or would deny, in audit mode) is reported
//! to the agent through a ring buffer. A full buffer never delays or changes a decision:
//! the event is counted as dropped instead.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns};
use passthrough_common::{Event, Reason};

use crate::maps::{EVENTS, EVENTS_DROPPED};

#[inline(always)]
pub fn report(workload: u64, reason: Reason, audit: bool, addr: [u8; 16], port: u16) {
    let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
        if let Some(n) = EVENTS_DROPPED.get_ptr_mut(0) {
            // Per-CPU slot: no other CPU writes it.
            unsafe { *n += 1 };
        }
        return;
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
        _pad: [0; 4],
    });
    slot.submit(0);
}
