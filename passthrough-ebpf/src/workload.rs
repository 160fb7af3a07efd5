//! The caller's workload: the deepest cgroup on its path that the agent manages, so a
//! process in a container cgroup below a pod's cgroup belongs to the pod.

use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id};
use passthrough_common::{Reason, Workload};

use crate::maps::{CONFIG, WORKLOADS};

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
