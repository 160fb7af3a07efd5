//! Decisions apart from effects: [`plan`] turns the desired kernel state and what the kernel
//! holds into an ordered list of operations (pure), and [`execute`] applies them through a
//! [`KernelStore`], keeping every workload on its last good state when a step fails.
//!
//! The order is what makes a change safe: every new policy is installed in full at a free id
//! before any workload points at it; workloads then flip, one map update each; only then are
//! policies no workload uses any more removed. Workloads whose compiled tables are equal share
//! one policy. An agent that restarts adopts the kernel's state: policies it cannot read back
//! are replaced, not trusted, and removed once nothing points at them.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use passthrough_common::{PodUid, Workload as KernelWorkload, capacity};

use super::store::{Cancel, KernelState, KernelStore, NO_POLICY, PolicyId, StoreError};
use crate::policy::tables::{Patch, Tables};

/// The largest change made in place ([`Op::Patch`]), also at most an eighth of the policy:
/// more is installed anew.
pub const PATCH_MAX: usize = 65_536;
/// The smallest policy changed in place: a smaller one is installed anew, which is cheap and
/// switches every entry at once.
pub const PATCH_FROM: usize = 4096;

/// What one workload cgroup should get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredWorkload {
    pub tables: Arc<Tables>,
    pub mode: u8,
    pub flags: u8,
    pub dns_set: u16,
}

/// The kernel state the agent wants.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub workloads: BTreeMap<u64, DesiredWorkload>,
    /// cgroup -> its workload's cgroup, for the one-lookup path.
    pub links: BTreeMap<u64, u64>,
    /// Pod UID -> what its cgroup gets when it is created (`PENDING_PODS`).
    pub pending: BTreeMap<PodUid, DesiredWorkload>,
    /// The desired state is complete: what the kernel holds beyond it was left by an earlier
    /// run (or by a workload that left) and goes. Until then it is kept.
    pub complete: bool,
}

/// A policy in the kernel: its tables, or `None` when an earlier run put it there and its
/// contents are unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedPolicy {
    pub tables: Option<Arc<Tables>>,
}

/// What the kernel holds, as the agent knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub policies: BTreeMap<PolicyId, AppliedPolicy>,
    pub workloads: BTreeMap<u64, KernelWorkload>,
    pub links: BTreeMap<u64, u64>,
    pub pending: BTreeMap<PodUid, KernelWorkload>,
}

impl Applied {
    /// The state an earlier run left: every policy's contents unknown.
    pub fn adopt(k: KernelState) -> Self {
        Self {
            policies: k
                .policies
                .into_iter()
                .map(|id| (id, AppliedPolicy { tables: None }))
                .collect(),
            workloads: k.workloads,
            links: k.links,
            pending: k.pending,
        }
    }

    /// The id of an installed policy with exactly these tables.
    fn find(&self, t: &Tables) -> Option<PolicyId> {
        self.policies
            .iter()
            .find(|(_, p)| p.tables.as_deref().is_some_and(|have| have == t))
            .map(|(id, _)| *id)
    }

    /// Whether some workload (or pending pod) points at `id`.
    fn used(&self, id: PolicyId) -> bool {
        self.workloads
            .values()
            .chain(self.pending.values())
            .any(|w| w.policy == id)
    }
}

/// One kernel operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Install {
        id: PolicyId,
        tables: Arc<Tables>,
    },
    /// Changes an installed policy in place to `tables`: its entries that go are deleted,
    /// then the new ones written. For a small change of a large policy (one entry of a
    /// million) this is a few map operations instead of a new policy of a million entries.
    /// In between, a connect is decided by the old or the new entry for each key, never by
    /// one that is in neither.
    Patch {
        id: PolicyId,
        tables: Arc<Tables>,
        patch: Arc<Patch>,
    },
    SetWorkload {
        cgroup: u64,
        value: KernelWorkload,
    },
    SetLink {
        cgroup: u64,
        owner: u64,
    },
    RemoveLink {
        cgroup: u64,
    },
    RemoveWorkload {
        cgroup: u64,
    },
    SetPending {
        uid: PodUid,
        value: KernelWorkload,
    },
    RemovePending {
        uid: PodUid,
    },
    RemovePolicy {
        id: PolicyId,
    },
}

/// No free policy id is left.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{wanted} distinct compiled policies do not fit the {} the kernel maps hold; workloads with equal policies share one, so merge policies or split the node's workloads",
    capacity::POLICIES - 1
)]
pub struct TooManyPolicies {
    pub wanted: usize,
}

/// The operations that bring `applied` to `desired`, in the order they must run.
pub fn plan(desired: &Desired, applied: &Applied) -> Result<Vec<Op>, TooManyPolicies> {
    let mut installs = Vec::new();
    // Distinct tables -> the id they get: a patched one, an installed equal one, or a free id.
    let mut chosen: Vec<(Arc<Tables>, PolicyId)> = patches(desired, applied, &mut installs);
    let mut taken: BTreeSet<PolicyId> = applied.policies.keys().copied().collect();
    let mut next_free = 1;
    let mut id_for =
        |tables: &Arc<Tables>, installs: &mut Vec<Op>| -> Result<PolicyId, TooManyPolicies> {
            if tables.is_empty() {
                return Ok(NO_POLICY);
            }
            if let Some((_, id)) = chosen.iter().find(|(t, _)| t == tables) {
                return Ok(*id);
            }
            let id = match applied.find(tables) {
                Some(id) => id,
                None => {
                    while taken.contains(&next_free) {
                        next_free += 1;
                    }
                    if next_free >= capacity::POLICIES {
                        return Err(TooManyPolicies {
                            wanted: chosen.len() + 1,
                        });
                    }
                    taken.insert(next_free);
                    installs.push(Op::Install {
                        id: next_free,
                        tables: tables.clone(),
                    });
                    next_free
                }
            };
            chosen.push((tables.clone(), id));
            Ok(id)
        };
    let mut sets = Vec::new();
    let mut id = |tables: &Arc<Tables>| id_for(tables, &mut installs);
    let after = kernel_values(
        &desired.workloads,
        &applied.workloads,
        desired.complete,
        &mut id,
        |cgroup, value| Op::SetWorkload { cgroup, value },
        &mut sets,
    )?;
    // Pending pods point at policies like workloads do: installed first, freed last.
    let after_pending = kernel_values(
        &desired.pending,
        &applied.pending,
        desired.complete,
        &mut id,
        |uid, value| Op::SetPending { uid, value },
        &mut sets,
    )?;
    let mut ops = installs;
    ops.append(&mut sets);
    for (&cgroup, &owner) in &desired.links {
        if applied.links.get(&cgroup) != Some(&owner) {
            ops.push(Op::SetLink { cgroup, owner });
        }
    }
    if desired.complete {
        for &cgroup in applied.links.keys() {
            if !desired.links.contains_key(&cgroup) {
                ops.push(Op::RemoveLink { cgroup });
            }
        }
        for &cgroup in applied.workloads.keys() {
            if !desired.workloads.contains_key(&cgroup) {
                ops.push(Op::RemoveWorkload { cgroup });
            }
        }
        for &uid in applied.pending.keys() {
            if !desired.pending.contains_key(&uid) {
                ops.push(Op::RemovePending { uid });
            }
        }
    }
    for &id in applied.policies.keys() {
        if !after
            .values()
            .chain(after_pending.values())
            .any(|w| w.policy == id)
        {
            ops.push(Op::RemovePolicy { id });
        }
    }
    Ok(ops)
}

/// The kernel value each of `wanted` (workloads by cgroup, or pending pods by UID) gets,
/// its policy id from `id`; a `set` for each value that differs from `applied`. Returns the
/// values after the pass: `applied`'s own are kept beside them until the desired state is
/// complete.
fn kernel_values<K: Ord + Copy>(
    wanted: &BTreeMap<K, DesiredWorkload>,
    applied: &BTreeMap<K, KernelWorkload>,
    complete: bool,
    id: &mut impl FnMut(&Arc<Tables>) -> Result<PolicyId, TooManyPolicies>,
    set: impl Fn(K, KernelWorkload) -> Op,
    sets: &mut Vec<Op>,
) -> Result<BTreeMap<K, KernelWorkload>, TooManyPolicies> {
    let mut after = if complete {
        BTreeMap::new()
    } else {
        applied.clone()
    };
    for (&key, w) in wanted {
        let value = KernelWorkload {
            policy: id(&w.tables)?,
            mode: w.mode,
            flags: w.flags,
            dns_set: w.dns_set,
        };
        if applied.get(&key) != Some(&value) {
            sets.push(set(key, value));
        }
        after.insert(key, value);
    }
    Ok(after)
}

/// The installed policies to change in place: those whose users (every workload and pending
/// pod pointing at it) all want the same other tables, which no other policy has, when the
/// change is small ([`Tables::patch_to`]) and nothing wants the old tables any more.
fn patches(
    desired: &Desired,
    applied: &Applied,
    ops: &mut Vec<Op>,
) -> Vec<(Arc<Tables>, PolicyId)> {
    let mut out: Vec<(Arc<Tables>, PolicyId)> = Vec::new();
    let wanted: Vec<(Option<&KernelWorkload>, &Arc<Tables>)> = desired
        .workloads
        .iter()
        .map(|(c, w)| (applied.workloads.get(c), &w.tables))
        .chain(
            desired
                .pending
                .iter()
                .map(|(u, w)| (applied.pending.get(u), &w.tables)),
        )
        .collect();
    for (&id, p) in &applied.policies {
        let Some(old) = &p.tables else { continue };
        let users: Vec<&Arc<Tables>> = wanted
            .iter()
            .filter(|(now, _)| now.is_some_and(|w| w.policy == id))
            .map(|(_, t)| *t)
            .collect();
        let pointing = applied
            .workloads
            .values()
            .chain(applied.pending.values())
            .filter(|w| w.policy == id)
            .count();
        let Some(&new) = users.first() else { continue };
        if users.len() != pointing
            || users.iter().any(|t| *t != new)
            || new.is_empty()
            || **new == **old
            || wanted.iter().any(|(_, t)| ***t == **old)
            || applied.find(new).is_some()
            || out.iter().any(|(t, _)| t == new)
        {
            continue;
        }
        if old.len() < PATCH_FROM {
            continue;
        }
        if let Some(patch) = old.patch_to(new, PATCH_MAX.min(old.len() / 8)) {
            ops.push(Op::Patch {
                id,
                tables: new.clone(),
                patch: Arc::new(patch),
            });
            out.push((new.clone(), id));
        }
    }
    out
}

/// A step that failed, and what it kept.
#[derive(Debug)]
pub struct Failure {
    /// The workload cgroup that kept its last good state, if the failure was about one.
    pub cgroup: Option<u64>,
    pub error: StoreError,
}

/// What [`execute`] did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub failures: Vec<Failure>,
    /// The agent is stopping: the operations after the last complete one were not run.
    pub cancelled: bool,
    /// Operations run.
    pub done: usize,
}

/// Runs `ops` in order, keeping `applied` equal to what the kernel holds. A policy that cannot
/// be installed leaves every workload that was to use it on its current policy; a policy is
/// only removed once no workload points at it.
pub fn execute(
    ops: Vec<Op>,
    store: &mut impl KernelStore,
    applied: &mut Applied,
    cancel: &Cancel,
) -> Outcome {
    let mut out = Outcome::default();
    let mut failed: BTreeSet<PolicyId> = BTreeSet::new();
    let mut ops = ops.into_iter().peekable();
    while let Some(op) = ops.next() {
        if cancel.is_cancelled() {
            out.cancelled = true;
            break;
        }
        match op {
            // A run of workload flips (the planner puts them together) goes in one call.
            Op::SetWorkload { cgroup, value } => {
                let mut run = vec![(cgroup, value)];
                while let Some(&Op::SetWorkload { cgroup, value }) = ops.peek() {
                    run.push((cgroup, value));
                    ops.next();
                }
                set_workloads(&run, store, applied, &failed, &mut out);
                continue;
            }
            Op::Install { id, tables } => match store.install_policy(id, &tables, cancel) {
                Ok(()) => {
                    applied.policies.insert(
                        id,
                        AppliedPolicy {
                            tables: Some(tables),
                        },
                    );
                }
                Err(StoreError::Cancelled) => {
                    out.cancelled = true;
                    break;
                }
                Err(error) => {
                    failed.insert(id);
                    out.failures.push(Failure {
                        cgroup: None,
                        error,
                    });
                }
            },
            Op::Patch { id, tables, patch } => match store.patch_policy(id, &tables, &patch) {
                Ok(()) => {
                    applied.policies.insert(
                        id,
                        AppliedPolicy {
                            tables: Some(tables),
                        },
                    );
                }
                Err(error) => {
                    // Part of it may be written: its contents are unknown until replaced.
                    applied.policies.insert(id, AppliedPolicy { tables: None });
                    out.failures.push(Failure {
                        cgroup: None,
                        error,
                    });
                }
            },
            Op::SetLink { cgroup, owner } => match store.set_link(cgroup, owner) {
                Ok(()) => {
                    applied.links.insert(cgroup, owner);
                }
                // A missing link only costs the fallback walk: worth a report, not a stop.
                Err(error) => out.failures.push(Failure {
                    cgroup: None,
                    error,
                }),
            },
            Op::RemoveLink { cgroup } => {
                store.remove_link(cgroup);
                applied.links.remove(&cgroup);
            }
            Op::RemoveWorkload { cgroup } => {
                store.remove_workload(cgroup);
                applied.workloads.remove(&cgroup);
            }
            Op::SetPending { uid, value } => {
                if failed.contains(&value.policy) {
                    out.failures.push(Failure {
                        cgroup: None,
                        error: StoreError::Full {
                            map: "policy",
                            capacity: 0,
                            what: "a pending pod's policy could not be installed; its cgroup will get the kubepods default until the agent sees it",
                        },
                    });
                    continue;
                }
                match store.set_pending(uid, value) {
                    Ok(()) => {
                        applied.pending.insert(uid, value);
                    }
                    // The pod is still covered once the agent sees its cgroup.
                    Err(error) => out.failures.push(Failure {
                        cgroup: None,
                        error,
                    }),
                }
            }
            Op::RemovePending { uid } => {
                store.remove_pending(uid);
                applied.pending.remove(&uid);
            }
            Op::RemovePolicy { id } => {
                // A workload whose flip failed may still point at it.
                if applied.used(id) {
                    continue;
                }
                store.remove_policy(id);
                applied.policies.remove(&id);
            }
        }
        out.done += 1;
    }
    out
}

/// Flips the workloads of `run`, each to a policy that is in place: one whose install failed
/// leaves its workloads on their current policy.
fn set_workloads(
    run: &[(u64, KernelWorkload)],
    store: &mut impl KernelStore,
    applied: &mut Applied,
    failed: &BTreeSet<PolicyId>,
    out: &mut Outcome,
) {
    let (ready, refused): (Vec<_>, Vec<_>) = run
        .iter()
        .copied()
        .partition(|(_, v)| !failed.contains(&v.policy));
    for (cgroup, _) in refused {
        out.failures.push(Failure {
            cgroup: Some(cgroup),
            error: StoreError::Full {
                map: "policy",
                capacity: 0,
                what: "its new policy could not be installed; it keeps its last good state",
            },
        });
    }
    let results = store.set_workloads(&ready);
    for ((cgroup, value), result) in ready.into_iter().zip(results) {
        match result {
            Ok(()) => {
                applied.workloads.insert(cgroup, value);
            }
            Err(error) => out.failures.push(Failure {
                cgroup: Some(cgroup),
                error,
            }),
        }
        out.done += 1;
    }
}

#[cfg(test)]
mod tests {
    use passthrough_common::mode;

    use super::*;
    use crate::{agent::store::FakeStore, policy::tables::TablesBuilder};

    fn tables(ips: &[u8]) -> Arc<Tables> {
        let mut b = TablesBuilder::default();
        for (rule, last) in ips.iter().enumerate() {
            b.exact_v4([10, 0, 0, *last].into(), 80, rule as u32);
        }
        Arc::new(b.build())
    }

    fn want(t: &Arc<Tables>) -> DesiredWorkload {
        DesiredWorkload {
            tables: t.clone(),
            mode: mode::MATCHED,
            flags: 0,
            dns_set: 0,
        }
    }

    fn desired(ws: &[(u64, &Arc<Tables>)]) -> Desired {
        Desired {
            workloads: ws.iter().map(|(c, t)| (*c, want(t))).collect(),
            links: BTreeMap::new(),
            pending: BTreeMap::new(),
            complete: true,
        }
    }

    /// Plans and executes until nothing is left to do; returns the ops of the first pass.
    fn converge(d: &Desired, store: &mut FakeStore, applied: &mut Applied) -> Vec<Op> {
        let ops = plan(d, applied).expect("plan");
        let out = execute(ops.clone(), store, applied, &Cancel::default());
        assert!(out.failures.is_empty(), "{:?}", out.failures);
        assert_eq!(
            store.read(),
            kernel_of(applied),
            "applied mirrors the kernel"
        );
        ops
    }

    fn kernel_of(a: &Applied) -> KernelState {
        KernelState {
            workloads: a.workloads.clone(),
            links: a.links.clone(),
            pending: a.pending.clone(),
            policies: a.policies.keys().copied().collect(),
        }
    }

    fn uid(n: u8) -> PodUid {
        PodUid { bytes: [n; 16] }
    }

    /// `n` entries 10.x.y.z, with `changed` replaced by 198.51.100.1.
    fn large(n: u32, changed: Option<u32>) -> Arc<Tables> {
        let mut b = TablesBuilder::default();
        for rule in 0..n {
            let addr = match changed {
                Some(c) if c == rule => [198, 51, 100, 1].into(),
                _ => (0x0a00_0000 + rule).into(),
            };
            b.exact_v4(addr, 80, rule);
        }
        Arc::new(b.build())
    }

    #[test]
    fn one_entry_changed_in_a_large_policy_is_patched_in_place_not_reinstalled() {
        let before = large(PATCH_FROM as u32, None);
        let after = large(PATCH_FROM as u32, Some(3));
        let mut store = FakeStore::default();
        let mut applied = Applied::default();
        converge(
            &desired(&[(10, &before), (11, &before)]),
            &mut store,
            &mut applied,
        );
        store.log.clear();
        let ops = converge(
            &desired(&[(10, &after), (11, &after)]),
            &mut store,
            &mut applied,
        );
        assert_eq!(store.log, ["patch 1"], "{ops:?}");
        let Some(Op::Patch { patch, .. }) = ops.first() else {
            panic!("a patch: {ops:?}");
        };
        assert_eq!((patch.removed.len(), patch.written.len()), (1, 1));
        assert_eq!(
            store.installed[&1], *after,
            "the kernel holds the new tables"
        );
        assert_eq!(applied.policies[&1].tables.as_deref(), Some(&*after));
        // Nothing left to do.
        assert!(
            plan(&desired(&[(10, &after), (11, &after)]), &applied)
                .expect("plan")
                .is_empty()
        );
    }

    #[test]
    fn a_shared_policy_one_workload_leaves_is_installed_anew_not_patched() {
        let before = large(PATCH_FROM as u32, None);
        let after = large(PATCH_FROM as u32, Some(3));
        let mut store = FakeStore::default();
        let mut applied = Applied::default();
        converge(
            &desired(&[(10, &before), (11, &before)]),
            &mut store,
            &mut applied,
        );
        store.log.clear();
        // 11 keeps the old tables: patching them would change its policy too.
        converge(
            &desired(&[(10, &after), (11, &before)]),
            &mut store,
            &mut applied,
        );
        assert_eq!(store.log, ["install 2", "set 10 -> 2"]);
        // A change that makes a table grow is installed anew too.
        store.log.clear();
        let grown = large(PATCH_FROM as u32 + 1, None);
        converge(
            &desired(&[(10, &after), (11, &grown)]),
            &mut store,
            &mut applied,
        );
        assert_eq!(store.log, ["install 3", "set 11 -> 3", "remove policy 1"]);
    }

    #[test]
    fn a_policy_change_of_250_workloads_installs_once_and_flips_them_in_one_batch() {
        let (old, new) = (tables(&[1]), tables(&[2]));
        let cgroups: Vec<u64> = (100..350).collect();
        let on = |t: &Arc<Tables>| {
            let mut d = desired(&cgroups.iter().map(|c| (*c, t)).collect::<Vec<_>>());
            d.links = cgroups.iter().map(|c| (*c, *c)).collect();
            d
        };
        let mut store = FakeStore::default();
        let mut applied = Applied::default();
        converge(&on(&old), &mut store, &mut applied);
        store.log.clear();
        store.batches.clear();
        let ops = converge(&on(&new), &mut store, &mut applied);
        assert_eq!(store.batches, [250], "one batch of every flip");
        assert_eq!(store.log.first().map(String::as_str), Some("install 2"));
        assert_eq!(
            store.log.last().map(String::as_str),
            Some("remove policy 1")
        );
        assert_eq!(
            ops.len(),
            252,
            "one install, 250 flips, one removal: {ops:?}"
        );
        assert!(
            !ops.iter().any(|o| matches!(o, Op::SetLink { .. })),
            "the links did not change"
        );
        assert!(plan(&on(&new), &applied).expect("plan").is_empty());
    }

    #[test]
    fn a_batch_with_a_refused_entry_keeps_that_workload_on_its_policy() {
        let (old, new) = (tables(&[1]), tables(&[2]));
        let mut store = FakeStore::default();
        let mut applied = Applied::default();
        converge(&desired(&[(1, &old), (2, &old)]), &mut store, &mut applied);
        store.fail_set.insert(2);
        let ops = plan(&desired(&[(1, &new), (2, &new)]), &applied).expect("plan");
        let out = execute(ops, &mut store, &mut applied, &Cancel::default());
        assert_eq!(out.failures.len(), 1);
        assert_eq!(out.failures[0].cgroup, Some(2));
        assert_eq!(applied.workloads[&1].policy, 2);
        assert_eq!(applied.workloads[&2].policy, 1, "kept its last good state");
        assert!(
            applied.policies.contains_key(&1),
            "the old policy stays while a workload points at it"
        );
        assert_eq!(store.read(), kernel_of(&applied));
    }

    #[test]
    fn a_pending_pod_keeps_its_policy_installed_until_it_is_no_longer_pending() {
        let t = tables(&[7]);
        let mut store = FakeStore::default();
        let mut applied = Applied::default();
        let mut d = desired(&[]);
        d.pending.insert(uid(1), want(&t));
        let ops = converge(&d, &mut store, &mut applied);
        assert_eq!(store.log, ["install 1", "pending 01 -> 1"], "{ops:?}");
        // Its cgroup appeared: a workload on the same policy, and the pending entry goes.
        store.log.clear();
        let mut d = desired(&[(10, &t)]);
        converge(&d, &mut store, &mut applied);
        assert_eq!(store.log, ["set 10 -> 1", "unpend 01"]);
        // A policy change reaches pending pods too; the old policy is freed last.
        store.log.clear();
        let t2 = tables(&[8]);
        d.workloads.clear();
        d.pending.insert(uid(2), want(&t2));
        converge(&d, &mut store, &mut applied);
        assert_eq!(
            store.log,
            [
                "install 2",
                "pending 02 -> 2",
                "remove 10",
                "remove policy 1"
            ]
        );
    }

    #[test]
    fn an_incomplete_desired_state_keeps_pending_entries() {
        let t = tables(&[7]);
        let mut store = FakeStore::default();
        let mut applied = Applied::default();
        let mut d = desired(&[]);
        d.pending.insert(uid(1), want(&t));
        converge(&d, &mut store, &mut applied);
        store.log.clear();
        let mut partial = desired(&[]);
        partial.complete = false;
        converge(&partial, &mut store, &mut applied);
        assert!(store.log.is_empty(), "{:?}", store.log);
        assert!(store.state.pending.contains_key(&uid(1)));
        assert!(store.state.policies.contains(&1), "its policy stays");
    }

    #[test]
    fn equal_tables_share_one_policy_and_empty_ones_take_none() {
        let (t, empty) = (tables(&[1, 2]), Arc::new(Tables::default()));
        let mut store = FakeStore::default();
        let mut applied = Applied::default();
        converge(
            &desired(&[(10, &t), (11, &tables(&[1, 2])), (12, &empty)]),
            &mut store,
            &mut applied,
        );
        assert_eq!(store.installed.len(), 1, "one install for two equal tables");
        assert_eq!(applied.workloads[&10].policy, applied.workloads[&11].policy);
        assert_eq!(applied.workloads[&12].policy, NO_POLICY);
        // Nothing changed: nothing to do.
        let again = plan(&desired(&[(10, &t), (11, &t), (12, &empty)]), &applied).expect("plan");
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn a_change_installs_in_full_then_flips_then_frees() {
        let mut store = FakeStore::default();
        let mut applied = Applied::default();
        converge(&desired(&[(10, &tables(&[1]))]), &mut store, &mut applied);
        let old = applied.workloads[&10].policy;
        store.log.clear();
        converge(
            &desired(&[(10, &tables(&[1, 2]))]),
            &mut store,
            &mut applied,
        );
        let new = applied.workloads[&10].policy;
        assert_ne!(
            old, new,
            "a change goes to a fresh id, never into the live one"
        );
        assert_eq!(
            store.log,
            vec![
                format!("install {new}"),
                format!("set 10 -> {new}"),
                format!("remove policy {old}"),
            ]
        );
    }

    #[test]
    fn a_failed_install_keeps_every_workload_on_its_last_good_state() {
        let mut store = FakeStore::default();
        let mut applied = Applied::default();
        converge(
            &desired(&[(10, &tables(&[1])), (11, &tables(&[1]))]),
            &mut store,
            &mut applied,
        );
        let before = applied.clone();
        let ops = plan(
            &desired(&[(10, &tables(&[7])), (11, &tables(&[7]))]),
            &applied,
        )
        .expect("plan");
        let Op::Install { id, .. } = &ops[0] else {
            panic!("first an install: {ops:?}");
        };
        store.fail_install.insert(*id);
        let out = execute(ops, &mut store, &mut applied, &Cancel::default());
        assert_eq!(applied, before, "nothing flipped, nothing freed");
        assert_eq!(store.read(), kernel_of(&applied));
        let errors: Vec<String> = out.failures.iter().map(|f| f.error.to_string()).collect();
        assert_eq!(out.failures.len(), 3, "{errors:?}");
        assert!(errors[0].contains("Cannot allocate memory"), "{errors:?}");
        assert!(
            errors[0].contains("raise the agent's memory limit"),
            "{errors:?}"
        );
        assert_eq!(
            out.failures
                .iter()
                .filter_map(|f| f.cgroup)
                .collect::<Vec<_>>(),
            vec![10, 11]
        );
    }

    #[test]
    fn a_failed_flip_keeps_the_policy_the_workload_still_uses() {
        let mut store = FakeStore::default();
        let mut applied = Applied::default();
        converge(&desired(&[(10, &tables(&[1]))]), &mut store, &mut applied);
        let old = applied.workloads[&10].policy;
        store.fail_set.insert(10);
        let ops = plan(&desired(&[(10, &tables(&[2]))]), &applied).expect("plan");
        let out = execute(ops, &mut store, &mut applied, &Cancel::default());
        assert_eq!(applied.workloads[&10].policy, old);
        assert!(
            applied.policies.contains_key(&old),
            "not freed while in use"
        );
        assert_eq!(out.failures.len(), 1);
        assert!(
            out.failures[0]
                .error
                .to_string()
                .contains("WORKLOADS is full")
        );
        // The next pass, once the map has room, finishes the job and frees the old policy.
        store.fail_set.clear();
        converge(&desired(&[(10, &tables(&[2]))]), &mut store, &mut applied);
        assert!(!applied.policies.contains_key(&old));
        assert_eq!(applied.policies.len(), 1);
    }

    #[test]
    fn a_restart_adopts_replaces_unknown_policies_and_sweeps_them() {
        let mut store = FakeStore::default();
        let mut applied = Applied::default();
        converge(
            &desired(&[(10, &tables(&[1])), (20, &tables(&[9]))]),
            &mut store,
            &mut applied,
        );
        // A new agent: it cannot read the policies' contents back.
        let mut adopted = Applied::adopt(store.read());
        assert!(adopted.policies.values().all(|p| p.tables.is_none()));
        // Until its desired state is complete (a workload still waits for its cgroup), what
        // the kernel holds for others stays.
        let mut partial = desired(&[(10, &tables(&[1]))]);
        partial.complete = false;
        let ops = plan(&partial, &adopted).expect("plan");
        assert!(
            matches!(ops[0], Op::Install { .. }),
            "unknown contents are never trusted"
        );
        let out = execute(ops, &mut store, &mut adopted, &Cancel::default());
        assert!(out.failures.is_empty());
        assert!(adopted.workloads.contains_key(&20), "kept while incomplete");
        assert_eq!(
            adopted.policies.len(),
            2,
            "10's new policy and 20's adopted one"
        );
        // Complete: the leftover workload and its policy go.
        converge(&desired(&[(10, &tables(&[1]))]), &mut store, &mut adopted);
        assert_eq!(
            adopted.workloads.keys().copied().collect::<Vec<_>>(),
            vec![10]
        );
        assert_eq!(adopted.policies.len(), 1);
        assert_eq!(store.installed.len(), 1);
    }

    #[test]
    fn links_follow_the_desired_state() {
        let t = tables(&[1]);
        let mut store = FakeStore::default();
        let mut applied = Applied::default();
        let mut d = desired(&[(10, &t)]);
        d.links = [(10, 10), (11, 10), (12, 10)].into();
        converge(&d, &mut store, &mut applied);
        assert_eq!(store.state.links.len(), 3);
        d.links = [(10, 10), (12, 10)].into();
        let ops = converge(&d, &mut store, &mut applied);
        assert_eq!(ops, vec![Op::RemoveLink { cgroup: 11 }]);
    }

    #[test]
    fn a_stop_during_an_install_leaves_the_last_complete_state() {
        let mut store = FakeStore::default();
        let mut applied = Applied::default();
        converge(&desired(&[(10, &tables(&[1]))]), &mut store, &mut applied);
        let before = applied.clone();
        let ops = plan(&desired(&[(10, &tables(&[5]))]), &applied).expect("plan");
        let Op::Install { id, .. } = &ops[0] else {
            panic!("{ops:?}");
        };
        let cancel = Cancel::default();
        store.cancel_during = Some((*id, cancel.clone()));
        let out = execute(ops, &mut store, &mut applied, &cancel);
        assert!(out.cancelled);
        assert_eq!(out.done, 0);
        assert_eq!(applied, before);
        assert_eq!(store.read(), kernel_of(&applied));
    }

    #[test]
    fn ids_run_out_with_a_clear_error() {
        let ws: Vec<(u64, Arc<Tables>)> = (0..u64::from(capacity::POLICIES))
            .map(|i| {
                let mut b = TablesBuilder::default();
                b.exact_v4([10, 0, (i >> 8) as u8, i as u8].into(), 80, 0);
                (i, Arc::new(b.build()))
            })
            .collect();
        let refs: Vec<(u64, &Arc<Tables>)> = ws.iter().map(|(c, t)| (*c, t)).collect();
        let e = plan(&desired(&refs), &Applied::default()).expect_err("too many");
        assert!(e.to_string().contains("share one"), "{e}");
    }
}
