//! The flow table: each workload's connects, allowed and denied alike, by destination, for
//! `passthrough flows` and `simulate`. Nothing here changes a decision.
//!
//! Two levels, so that a repeated connect costs no hash lookup:
//! - `FLOW_MEMO`, per CPU, a direct-mapped write-combining buffer: a connect to the flow its
//!   slot holds raises the slot's `pending` count (memory no other CPU touches, no atomic
//!   add on a shared line, the coarse clock only). The pending connects go to `FLOWS` when the
//!   slot is taken for another flow, when there are `FLOW_MEMO_FLUSH_COUNT` of them, or on
//!   the first connect `FLOW_MEMO_FLUSH_NS` after the last addition, which also keeps a busy
//!   flow recently used for the LRU. The agent adds the pending connects of a slot to the
//!   `FLOWS` entry whose `first_ns` the slot carries.
//! - `FLOWS`, the bounded LRU table: a known flow costs one lookup and an atomic add in
//!   place; a new one an insert.
//!
//! A slot is taken with a compare-and-exchange on `busy`: a program that preempted the
//! holder on the same CPU (cgroup programs run with migration, not preemption, disabled)
//! finds it busy and records in `FLOWS` directly, so no connect is counted twice or lost.
//!
//! Evictions are exact without the kernel telling: only these programs create entries
//! (counted in `FLOW_INSERTS`) and only the LRU removes them, so the entries evicted are the
//! inserts counted minus the entries present.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_boot_ns, bpf_ktime_get_coarse_ns},
};
use passthrough_common::{
    FLOW_MEMO_FLUSH_COUNT, FLOW_MEMO_FLUSH_NS, FlowKey, FlowValue, Reason, capacity, config_flags,
    flow_counter,
};

use crate::maps::{CONFIG, FLOW_INSERTS, FLOW_MEMO, FLOWS};

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
    // The coarse clock (the last tick's time, no clock source read): a precise read costs
    // more than the rest of the record on a VM's connect path (docs/architecture.md).
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let (reason, audit) = (reason as u8, u8::from(audit));
    let Some(m) = FLOW_MEMO.get_ptr_mut(slot(&key)) else {
        table(&key, 1, now, reason, audit);
        return;
    };
    // SAFETY: `m` points at this CPU's slot, a valid map value for the program's run.
    unsafe {
        if !take(&raw mut (*m).busy) {
            // A program this one preempted holds the slot.
            table(&key, 1, now, reason, audit);
            return;
        }
        let hit = (*m).first_ns != 0 && same(&(*m).key, &key);
        if hit
            && (*m).pending < FLOW_MEMO_FLUSH_COUNT
            && now.wrapping_sub((*m).flushed_ns) < FLOW_MEMO_FLUSH_NS
        {
            (*m).pending += 1;
            (*m).last_ns = now;
            (*m).reason = reason;
            (*m).audit = audit;
            release(&raw mut (*m).busy);
            return;
        }
        if hit {
            // Due: this connect and the pending ones go to the table together.
            let n = u64::from((*m).pending) + 1;
            (*m).pending = 0;
            (*m).first_ns = table(&key, n, now, reason, audit);
            (*m).flushed_ns = now;
            release(&raw mut (*m).busy);
            return;
        }
        // Another flow's slot (or a free one): its pending connects go to the table, and
        // the slot is this flow's from now on.
        if (*m).first_ns != 0 && (*m).pending != 0 {
            let old = (*m).key;
            table(
                &old,
                u64::from((*m).pending),
                (*m).last_ns,
                (*m).reason,
                (*m).audit,
            );
        }
        (*m).key = key;
        (*m).pending = 0;
        (*m).first_ns = table(&key, 1, now, reason, audit);
        (*m).flushed_ns = now;
        (*m).last_ns = now;
        (*m).reason = reason;
        (*m).audit = audit;
        release(&raw mut (*m).busy);
    }
}

/// The `FLOW_MEMO` slot of a flow: the key's words folded and mixed.
#[inline(always)]
fn slot(k: &FlowKey) -> u32 {
    let a = u64::from_ne_bytes([
        k.addr[0], k.addr[1], k.addr[2], k.addr[3], k.addr[4], k.addr[5], k.addr[6], k.addr[7],
    ]);
    let b = u64::from_ne_bytes([
        k.addr[8], k.addr[9], k.addr[10], k.addr[11], k.addr[12], k.addr[13], k.addr[14],
        k.addr[15],
    ]);
    let h = (k.workload ^ a ^ b.rotate_left(17) ^ (u64::from(k.port) << 40))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((h >> 32) as u32) & (capacity::FLOW_MEMO - 1)
}

/// Whether two keys are the same flow (padding excluded).
#[inline(always)]
fn same(a: &FlowKey, b: &FlowKey) -> bool {
    a.workload == b.workload && a.port == b.port && a.protocol == b.protocol && a.addr == b.addr
}

/// Adds `n` connects, the latest at `last` for (`reason`, `audit`), to the flow's `FLOWS`
/// entry, creating it if absent; returns the entry's `first_ns` (0 if there is no room).
/// Out of line: a repeated connect is counted in its `FLOW_MEMO` slot and never gets here.
#[inline(never)]
fn table(key: &FlowKey, n: u64, last: u64, reason: u8, audit: u8) -> u64 {
    if let Some(v) = FLOWS.get_ptr_mut(*key) {
        // Another CPU may raise the same entry: the add is atomic; the rest describes the
        // latest connect, whichever store lands last.
        unsafe {
            add(&raw mut (*v).count, n);
            (*v).last_ns = last;
            (*v).reason = reason;
            (*v).audit = audit;
            return (*v).first_ns;
        }
    }
    let value = FlowValue {
        count: n,
        // Precise: it tells this entry from one re-created after an eviction, also within
        // one tick. Inserts are the rare case (a new destination).
        first_ns: unsafe { bpf_ktime_get_boot_ns() },
        last_ns: last,
        reason,
        audit,
        _pad: [0; 6],
    };
    match FLOWS.insert(*key, value, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            count(flow_counter::INSERTED);
            value.first_ns
        }
        Err(_) => {
            // Created by another CPU since the lookup (or no room at all): add to it if there.
            count(flow_counter::RACED);
            match FLOWS.get_ptr_mut(*key) {
                Some(v) => unsafe {
                    add(&raw mut (*v).count, n);
                    (*v).first_ns
                },
                None => 0,
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

/// Takes a slot's `busy` flag: a compare-and-exchange from 0 to 1, so that of two programs
/// on one CPU (one preempting the other) only one holds it.
///
/// # Safety
/// `busy` points into a map value.
#[inline(always)]
unsafe fn take(busy: *mut u64) -> bool {
    use core::intrinsics::{AtomicOrdering::Relaxed, atomic_cxchg};
    unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(busy, 0, 1).1 }
}

/// Gives a slot's `busy` flag back. The slot is only ever touched from its own CPU, so a
/// plain store after the updates, in program order, is enough.
///
/// # Safety
/// As [`take`].
#[inline(always)]
unsafe fn release(busy: *mut u64) {
    unsafe { core::ptr::write_volatile(busy, 0) };
}

/// An atomic `*n += d` (BPF `lock xadd`): `core`'s atomics offer no read-modify-write on
/// the BPF target, so the intrinsic is called directly; the result is unused, which lets
/// LLVM emit the plain add every kernel accepts.
///
/// # Safety
/// `n` points into a map value.
#[inline(always)]
unsafe fn add(n: *mut u64, d: u64) {
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            n, d,
        )
    };
}
