//! The caller's workload: the deepest cgroup on its path that the agent manages, so a
//! process in a container cgroup below a pod's cgroup belongs to the pod.
//!
//! Three ways to the same answer, cheapest first:
//! - `CALLERS`, a per-CPU cache indexed by the caller's cgroup id: what one of the ways below
//!   found for that cgroup, valid while `GENERATION` (bumped by the agent after every write
//!   to `WORKLOADS`, `CGROUPS` or `CONFIG`) has not moved. A hit costs no hash lookup.
//! - `CGROUPS` maps the caller's own cgroup to its workload (the agent writes it for every
//!   cgroup it sees below a workload, and for the workload's own cgroup): two lookups
//!   whatever the depth.
//! - Any other cgroup (one created since the agent last looked) takes the ancestor walk, one
//!   `WORKLOADS` lookup per level. The agent writes a `CGROUPS` entry only for what the walk
//!   would find, so both give the same answer.
//!
//! A cache entry is written by the program that missed, on its CPU; another program on that
//! CPU can preempt the write half-way (cgroup programs run with migration, not preemption,
//! disabled), so each entry carries a checksum of its fields and a torn one reads as a miss.
//! Reads and writes of one CPU's entry are ordered as that CPU executes them, so no barrier
//! is needed; the cache only stores results that depend on maps the agent writes before it
//! bumps `GENERATION`.

use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id};
use passthrough_common::{Reason, Workload, capacity};

use crate::maps::{CALLERS, CGROUPS, CONFIG, GENERATION, WORKLOADS};

/// Deepest cgroup level searched for a workload. Kubernetes pods sit at level 3 to 5.
const MAX_CGROUP_DEPTH: i32 = 32;

/// Value of `CALLERS`: the workload found for a cgroup in a generation.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedCaller {
    cgroup: u64,
    generation: u64,
    owner: u64,
    /// The [`Workload`] value, as its 8 bytes.
    workload: u64,
    /// [`checksum`] of the fields above.
    check: u64,
}
const _: () = assert!(size_of::<CachedCaller>() == 40);
const _: () = assert!(size_of::<Workload>() == 8);

/// Mixes the fields so that an entry combining the words of two different writes (a torn
/// write) does not match its check word, but for a 2^-64 chance.
#[inline(always)]
fn checksum(cgroup: u64, generation: u64, owner: u64, workload: u64) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for w in [cgroup, generation, owner, workload] {
        h = (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
    }
    h
}

/// The caller's workload and its cgroup id. `Err` carries the reason to pass untouched (the
/// agent itself, or no workload).
#[inline(always)]
pub fn caller() -> Result<(u64, Workload), Reason> {
    // The agent's cgroup and everything below it (its children; on Kubernetes, the
    // containers of the agent's pod). User space never sets it to the root cgroup.
    let agent = CONFIG.get(0).map_or(0, |c| c.agent_cgroup);
    let current = unsafe { bpf_get_current_cgroup_id() };
    if agent != 0 && agent == current {
        return Err(Reason::Agent);
    }
    // 0: an agent that does not keep the generation; nothing is cached (no entry is ever
    // written with generation 0, so none matches). Not a branch of its own: a second call
    // of `lookup` per caller would have the verifier explore the walk twice as often.
    let generation = GENERATION.get(0).map_or(0, |g| *g);
    let index = (current as u32) & (capacity::CALLERS - 1);
    if let Some(slot) = CALLERS.get_ptr_mut(index) {
        let e = unsafe { *slot };
        if e.cgroup == current
            && e.generation == generation
            && e.check == checksum(e.cgroup, e.generation, e.owner, e.workload)
        {
            // SAFETY: any 8 bytes are a valid `Workload` (integers only).
            return Ok((e.owner, unsafe {
                core::mem::transmute::<u64, Workload>(e.workload)
            }));
        }
    }
    let found = lookup(agent, current)?;
    if generation == 0 {
        return Ok(found);
    }
    // The slot is looked up again rather than kept across `lookup`: a pointer that may be
    // null, live across the walk, doubles the states the verifier explores.
    if let Some(slot) = CALLERS.get_ptr_mut(index) {
        // SAFETY: as above, a `Workload` is 8 bytes of integers.
        let workload = unsafe { core::mem::transmute::<Workload, u64>(found.1) };
        let entry = CachedCaller {
            cgroup: current,
            generation,
            owner: found.0,
            workload,
            check: checksum(current, generation, found.0, workload),
        };
        // Per-CPU slot: only a program preempting this one on this CPU can write it too.
        unsafe { *slot = entry };
    }
    Ok(found)
}

/// `CGROUPS`, else the ancestor walk. Out of line: only a cache miss runs it.
#[inline(never)]
fn lookup(agent: u64, current: u64) -> Result<(u64, Workload), Reason> {
    if let Some(&owner) = unsafe { CGROUPS.get(current) } {
        if owner == agent {
            return Err(Reason::Agent);
        }
        if let Some(w) = unsafe { WORKLOADS.get(owner) } {
            return Ok((owner, *w));
        }
    }
    walk(agent)
}

/// The ancestor walk: every level from the root down, the deepest workload wins.
#[inline(never)]
fn walk(agent: u64) -> Result<(u64, Workload), Reason> {
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
