//! The kernel state the agent changes, behind a small trait: the pinned maps implement it
//! (`agent::maps`), and so does an in-memory fake, so that every decision of the planner and
//! every error path of the executor (`agent::plan`) is a unit test that needs no root.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use passthrough_common::{PodUid, Workload as KernelWorkload};

use crate::policy::tables::{Patch, Tables};

/// Index of a compiled policy in the outer rule maps; 0 means "no entries".
pub type PolicyId = u32;

/// The policy id every mode-only workload (and every empty policy) uses.
pub const NO_POLICY: PolicyId = 0;

/// Set when the agent stops: long operations give up between steps, leaving the kernel in
/// its last complete state.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A kernel operation that failed: which map, what, the errno, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("map {map}: {op} failed: {source}; {}", hint(.source))]
    Kernel {
        map: &'static str,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("map {map} is full ({capacity} entries): {what}")]
    Full {
        map: &'static str,
        capacity: u32,
        what: &'static str,
    },
    /// The agent is stopping; nothing after the last complete step was changed.
    #[error("cancelled: the agent is stopping")]
    Cancelled,
}

/// What to do about an errno from the kernel.
fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOMEM) => {
            "the kernel could not allocate the map's memory: raise the agent's memory limit (BPF maps are charged to its memory cgroup) or make the policy smaller"
        }
        Some(libc::E2BIG) => "the map is full: remove entries or workloads",
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "the agent lacks CAP_BPF (or CAP_SYS_ADMIN): run it as root or with the DaemonSet's capabilities"
        }
        Some(libc::EINVAL) => {
            "the kernel refused the request: this kernel may be too old for passthrough (Linux 5.15 or later)"
        }
        _ => "see the errno",
    }
}

/// What the kernel holds, as read back after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    pub workloads: BTreeMap<u64, KernelWorkload>,
    pub links: BTreeMap<u64, u64>,
    /// Pending pods' entries (`PENDING_PODS`).
    pub pending: BTreeMap<PodUid, KernelWorkload>,
    /// Policy ids whose inner maps are in place (contents not read back).
    pub policies: BTreeSet<PolicyId>,
}

/// The operations the executor needs.
pub trait KernelStore {
    /// Builds the inner maps of a policy in full, then puts them in place at `id` (an id no
    /// workload uses): a connect sees either nothing at `id` or all of it.
    fn install_policy(
        &mut self,
        id: PolicyId,
        tables: &Tables,
        cancel: &Cancel,
    ) -> Result<(), StoreError>;
    /// Changes the installed policy at `id` in place: deletes `patch.removed`, then writes
    /// `patch.written` (no table grows beyond what its inner map was created for), which
    /// makes it `tables`.
    fn patch_policy(
        &mut self,
        id: PolicyId,
        tables: &Tables,
        patch: &Patch,
    ) -> Result<(), StoreError>;
    /// Takes the policy's inner maps out (the kernel frees them once unused).
    fn remove_policy(&mut self, id: PolicyId);
    /// Points a workload cgroup at its policy and mode: one map update.
    fn set_workload(&mut self, cgroup: u64, value: KernelWorkload) -> Result<(), StoreError>;
    /// [`KernelStore::set_workload`] for each entry, one result each, in order. The maps
    /// write them in one batch (a policy change that flips 250 pods is one system call, not
    /// 500); each entry is still one atomic update.
    fn set_workloads(&mut self, entries: &[(u64, KernelWorkload)]) -> Vec<Result<(), StoreError>> {
        entries
            .iter()
            .map(|&(cgroup, value)| self.set_workload(cgroup, value))
            .collect()
    }
    fn remove_workload(&mut self, cgroup: u64);
    /// Records the workload of a cgroup (the one-lookup path).
    fn set_link(&mut self, cgroup: u64, owner: u64) -> Result<(), StoreError>;
    fn remove_link(&mut self, cgroup: u64);
    /// Leaves a pending pod's entry for its cgroup to get when it is created.
    fn set_pending(&mut self, uid: PodUid, value: KernelWorkload) -> Result<(), StoreError>;
    fn remove_pending(&mut self, uid: PodUid);
    /// The kernel's current state.
    fn read(&self) -> KernelState;
}

/// The store in memory, with failures on demand.
#[derive(Debug, Default)]
pub struct FakeStore {
    pub state: KernelState,
    /// The tables installed at each id.
    pub installed: BTreeMap<PolicyId, Tables>,
    /// `install_policy` fails for these ids (ENOMEM).
    pub fail_install: BTreeSet<PolicyId>,
    /// `set_workload` fails for these cgroups (E2BIG).
    pub fail_set: BTreeSet<u64>,
    /// Cancels while installing the policy at this id, after the install started.
    pub cancel_during: Option<(PolicyId, Cancel)>,
    /// Every call, in order, for tests that check the order of effects.
    pub log: Vec<String>,
    /// The size of each `set_workloads` batch.
    pub batches: Vec<usize>,
}

impl KernelStore for FakeStore {
    fn install_policy(
        &mut self,
        id: PolicyId,
        tables: &Tables,
        cancel: &Cancel,
    ) -> Result<(), StoreError> {
        assert!(
            !self.state.policies.contains(&id),
            "the planner installs only at free ids (policy {id})"
        );
        if let Some((at, c)) = &self.cancel_during
            && *at == id
        {
            c.cancel();
        }
        if cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        if self.fail_install.contains(&id) {
            self.log.push(format!("install {id} failed"));
            return Err(StoreError::Kernel {
                map: "EXACT_V4",
                op: "create",
                source: io::Error::from_raw_os_error(libc::ENOMEM),
            });
        }
        self.log.push(format!("install {id}"));
        self.state.policies.insert(id);
        self.installed.insert(id, tables.clone());
        Ok(())
    }

    fn patch_policy(
        &mut self,
        id: PolicyId,
        tables: &Tables,
        patch: &Patch,
    ) -> Result<(), StoreError> {
        let Some(t) = self.installed.get_mut(&id) else {
            panic!("the planner patches only installed policies (policy {id})");
        };
        fn apply<K: Ord + Copy>(v: &mut Vec<(K, u32)>, removed: &[(K, u32)], written: &[(K, u32)]) {
            v.retain(|(k, _)| !removed.iter().any(|(r, _)| r == k));
            for &(k, rule) in written {
                match v.iter_mut().find(|(have, _)| *have == k) {
                    Some(e) => e.1 = rule,
                    None => v.push((k, rule)),
                }
            }
            v.sort_unstable();
        }
        let (r, w) = (&patch.removed, &patch.written);
        apply(&mut t.exact_v4, &r.exact_v4, &w.exact_v4);
        apply(&mut t.exact_v6, &r.exact_v6, &w.exact_v6);
        apply(&mut t.cidr_v4, &r.cidr_v4, &w.cidr_v4);
        apply(&mut t.cidr_v6, &r.cidr_v6, &w.cidr_v6);
        apply(&mut t.domain_ports, &r.domain_ports, &w.domain_ports);
        assert!(
            t.exact_v4 == tables.exact_v4
                && t.exact_v6 == tables.exact_v6
                && t.cidr_v4 == tables.cidr_v4
                && t.cidr_v6 == tables.cidr_v6
                && t.domain_ports == tables.domain_ports,
            "the patch makes the policy what the planner wants"
        );
        *t = tables.clone();
        self.log.push(format!("patch {id}"));
        Ok(())
    }

    fn remove_policy(&mut self, id: PolicyId) {
        self.log.push(format!("remove policy {id}"));
        self.state.policies.remove(&id);
        self.installed.remove(&id);
    }

    fn set_workload(&mut self, cgroup: u64, value: KernelWorkload) -> Result<(), StoreError> {
        if self.fail_set.contains(&cgroup) {
            return Err(StoreError::Full {
                map: "WORKLOADS",
                capacity: 1,
                what: "a workload entry",
            });
        }
        assert!(
            value.policy == NO_POLICY || self.state.policies.contains(&value.policy),
            "workload {cgroup} pointed at policy {} before it was installed",
            value.policy
        );
        self.log.push(format!("set {cgroup} -> {}", value.policy));
        self.state.workloads.insert(cgroup, value);
        Ok(())
    }

    fn set_workloads(&mut self, entries: &[(u64, KernelWorkload)]) -> Vec<Result<(), StoreError>> {
        self.batches.push(entries.len());
        entries
            .iter()
            .map(|&(cgroup, value)| self.set_workload(cgroup, value))
            .collect()
    }

    fn remove_workload(&mut self, cgroup: u64) {
        self.log.push(format!("remove {cgroup}"));
        self.state.workloads.remove(&cgroup);
    }

    fn set_link(&mut self, cgroup: u64, owner: u64) -> Result<(), StoreError> {
        self.log.push(format!("link {cgroup} -> {owner}"));
        self.state.links.insert(cgroup, owner);
        Ok(())
    }

    fn remove_link(&mut self, cgroup: u64) {
        self.log.push(format!("unlink {cgroup}"));
        self.state.links.remove(&cgroup);
    }

    fn set_pending(&mut self, uid: PodUid, value: KernelWorkload) -> Result<(), StoreError> {
        assert!(
            value.policy == NO_POLICY || self.state.policies.contains(&value.policy),
            "a pending pod pointed at policy {} before it was installed",
            value.policy
        );
        self.log
            .push(format!("pending {:02x} -> {}", uid.bytes[0], value.policy));
        self.state.pending.insert(uid, value);
        Ok(())
    }

    fn remove_pending(&mut self, uid: PodUid) {
        self.log.push(format!("unpend {:02x}", uid.bytes[0]));
        self.state.pending.remove(&uid);
    }

    fn read(&self) -> KernelState {
        self.state.clone()
    }
}
