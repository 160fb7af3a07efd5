//! New pod cgroups, as the kubelet creates them: the `cgroup_mkdir` tracepoint runs in the
//! `mkdir` of the cgroup, after the directory exists and before the call returns, so no
//! process can have been moved into the cgroup yet by whoever created it. For a pod the API
//! server already reported, the agent left the pod's entry in `PENDING_PODS`, keyed by its
//! UID; this program finds the UID in the new directory's name, for both kubelet cgroup
//! drivers, and copies the entry into `WORKLOADS` (and `CGROUPS`, the one-lookup path).
//!
//! It acts only for what the agent configured in `POD_WATCH`: the cgroup v2 hierarchy, one
//! or two levels below the kubepods cgroup, whose path starts with the kubepods path. It
//! never overwrites an entry (`BPF_NOEXIST`), and it refuses nothing: a cgroup it cannot
//! read or place keeps what it would have had without it.
//!
//! The names it reads are those of `passthrough_common::podname` (host-tested there).

use aya_ebpf::{
    EbpfContext as _, bindings::BPF_NOEXIST, helpers::generated::bpf_probe_read_kernel_str,
    programs::TracePointContext,
};
use passthrough_common::{POD_WATCH_PREFIX, podname::pod_uid};

use crate::maps::{
    CGROUPS, KERNEL_COVERED, PATH_BYTES, PATH_SCRATCH, PENDING_PODS, POD_WATCH, WORKLOADS,
};

// Offsets in the tracepoint's record, from
// /sys/kernel/tracing/events/cgroup/cgroup_mkdir/format (stable since Linux 5.0):
//   field:int root;               offset:8;  size:4
//   field:int level;              offset:12; size:4
//   field:u64 id;                 offset:16; size:8
//   field:__data_loc char[] path; offset:24; size:4
const ROOT: usize = 8;
const LEVEL: usize = 12;
const ID: usize = 16;
/// A `__data_loc`: the string's offset in the record (low 16 bits) and length (high 16).
const PATH: usize = 24;

/// Keeps every index into the path buffer provably in bounds for the verifier.
const MASK: usize = PATH_BYTES - 1;
const _: () = assert!(PATH_BYTES.is_power_of_two());

pub fn cgroup_mkdir(ctx: &TracePointContext) {
    let _ = try_cgroup_mkdir(ctx);
}

fn try_cgroup_mkdir(ctx: &TracePointContext) -> Option<()> {
    let watch = POD_WATCH.get(0)?;
    if watch.enabled == 0 {
        return None;
    }
    let root: i32 = unsafe { ctx.read_at(ROOT) }.ok()?;
    if root as u32 != watch.hierarchy {
        return None;
    }
    let level: i32 = unsafe { ctx.read_at(LEVEL) }.ok()?;
    let level = level as u32;
    if level != watch.level + 1 && level != watch.level + 2 {
        return None;
    }
    let id: u64 = unsafe { ctx.read_at(ID) }.ok()?;
    let loc: u32 = unsafe { ctx.read_at(PATH) }.ok()?;
    let buf = unsafe { &mut *PATH_SCRATCH.get_ptr_mut(0)? };
    let src = unsafe { ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize) };
    // The length with its NUL; a path cut at the buffer's end names no pod.
    let read = unsafe {
        bpf_probe_read_kernel_str(buf.bytes.as_mut_ptr().cast(), PATH_BYTES as u32, src.cast())
    };
    if read <= 1 || read as usize >= PATH_BYTES {
        return None;
    }
    let n = (read - 1) as usize & MASK;
    let bytes = &buf.bytes;

    // Below the kubepods cgroup: its path, then a '/'.
    let prefix = watch.prefix_len as usize;
    if prefix == 0 || prefix >= POD_WATCH_PREFIX || prefix >= n {
        return None;
    }
    for i in 0..POD_WATCH_PREFIX {
        if i >= prefix {
            break;
        }
        if bytes[i & MASK] != watch.prefix[i] {
            return None;
        }
    }
    if bytes[prefix & MASK] != b'/' {
        return None;
    }

    let uid = pod_uid(bytes, n, prefix)?;
    let entry = unsafe { PENDING_PODS.get(uid) }?;
    // A new cgroup id has no entry; should the agent have written one already, it stays.
    WORKLOADS.insert(id, entry, BPF_NOEXIST as u64).ok()?;
    let _ = CGROUPS.insert(id, id, BPF_NOEXIST as u64);
    let _ = KERNEL_COVERED.insert(id, uid, 0);
    Some(())
}
