//! The flow table: each workload's connects, allowed and denied alike, by destination, for
//! `passthrough flows` and `simulate`. A known flow costs one lookup and an atomic add in
//! place; a new one an insert. Nothing here changes a decision.
//!
//! Evictions are exact without the kernel telling: only these programs create entries
//! (counted in `FLOW_INSERTS`) and only the LRU removes them, so the entries evicted are the
//! inserts counted minus the entries present.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_boot_ns};
use passthrough_common::{FlowKey, FlowValue, Reason, config_flags, flow_counter};

use crate::maps::{CONFIG, FLOW_INSERTS, FLOWS};

/// Records one connect of `workload` (0: no workload, not recorded) to (`addr`, `port`) over
/// `protocol`, decided for `reason` (before audit mode; `audit` when it let it through).
#[inline(always)]
pub fn record(
    workload: u64,
    addr: [u8; 16],
    port: u16,
    protocol: u16,
    reason: Reason,
    audit: bool,
) {
    if workload == 0
        || !CONFIG
            .get(0)
            .is_some_and(|c| c.flags & config_flags::FLOWS != 0)
    {
        return;
    }
    let key = FlowKey {
        workload,
        addr,
        port,
        protocol,
        _pad: [0; 4],
    };
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if let Some(v) = FLOWS.get_ptr_mut(key) {
        // Another CPU may raise the same entry: the add is atomic; the rest describes the
        // latest connect, whichever store lands last.
        unsafe {
            add(&raw mut (*v).count);
            (*v).last_ns = now;
            (*v).reason = reason as u8;
            (*v).audit = u8::from(audit);
        }
        return;
    }
    let value = FlowValue {
        count: 1,
        first_ns: now,
        last_ns: now,
        reason: reason as u8,
        audit: u8::from(audit),
        _pad: [0; 6],
    };
    match FLOWS.insert(key, value, u64::from(BPF_NOEXIST)) {
        Ok(()) => count(flow_counter::INSERTED),
        Err(_) => {
            // Created by another CPU since the lookup (or no room at all): add to it if there.
            count(flow_counter::RACED);
            if let Some(v) = FLOWS.get_ptr_mut(key) {
                unsafe { add(&raw mut (*v).count) };
            }
        }
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(n) = FLOW_INSERTS.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *n += 1 };
    }
}

/// An atomic `*n += 1` (BPF `lock xadd`): `core`'s atomics offer no read-modify-write on
/// the BPF target, so the intrinsic is called directly; the result is unused, which lets
/// LLVM emit the plain add every kernel accepts.
///
/// # Safety
/// `n` points into a map value.
#[inline(always)]
unsafe fn add(n: *mut u64) {
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            n, 1,
        )
    };
}
