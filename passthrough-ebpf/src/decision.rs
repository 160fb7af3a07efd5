//! What every hook does with a decision: report a denial (or an audited one) as an event,
//! let an audited workload through, count the reason, and turn it into the return value.

use passthrough_common::Reason;

use crate::{
    events::{Subject, report},
    maps::COUNTERS,
};

/// Return value of a cgroup program that lets the operation proceed.
pub const ALLOW: i32 = 1;
/// Return value that makes the syscall fail with `EPERM`.
pub const DENY: i32 = 0;

/// What the policy says, before audit mode: the reason, the workload's cgroup id (0
/// outside every workload) and whether the workload is audited.
pub struct Judged {
    pub reason: Reason,
    pub workload: u64,
    pub audit: bool,
}

impl Judged {
    /// A verdict that does not depend on a workload's policy.
    #[inline(always)]
    pub const fn fixed(reason: Reason) -> Self {
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
pub fn settle(j: &Judged, subject: Subject) -> Reason {
    if j.reason.allows() {
        return j.reason;
    }
    report(j.workload, j.reason, j.audit, subject);
    if j.audit { Reason::Audit } else { j.reason }
}

/// Counts the decision and turns it into the program's return value.
#[inline(always)]
pub fn verdict(reason: Reason) -> i32 {
    if let Some(c) = COUNTERS.get_ptr_mut(reason as u32) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *c += 1 };
    }
    if reason.allows() { ALLOW } else { DENY }
}
