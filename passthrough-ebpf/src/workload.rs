//! The caller's workload: the deepest cgroup on its path that the agent manages, so a
//! process in a container cgroup below a pod's cgroup belongs to the pod.
//!
//! Fast path: `CGROUPS` maps the caller's own cgroup to its workload (the agent writes it for
//! every cgroup it sees below a workload, and for the workload's own cgroup), so the common
//! case is two lookups whatever the depth. Any other cgroup (one created since the agent last
//! looked) takes the ancestor walk, one `WORKLOADS` lookup per level; both give the same
//! answer because the agent writes a `CGROUPS` entry only for what the walk would find.

use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id};
use passthrough_common::{Reason, Workload};

use crate::maps::{CGROUPS, CONFIG, WORKLOADS};

/// Deepest cgroup level searched for a workload. Kubernetes pods sit at level 3 to 5.
const MAX_CGROUP_DEPTH: i32 = 32;

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
