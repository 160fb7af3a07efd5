//! One reconcile's compiled policies, by the policies that select a workload: the 250 pods
//! one Mesh-wide policy selects are merged and compiled once, not 250 times, and share one
//! compiled policy (and so one set of inner maps, `plan`). Selecting stays per workload (it
//! depends on the workload's mesh, namespace and tags); merging and compiling depend only on
//! which policies were selected, in which order.

use std::{collections::HashMap, sync::Arc};

use crate::policy::{
    compile::{CompiledPolicy, compile},
    merge::{PolicyRef, SelectOptions, merge_as, select},
    model::Policy,
    workload::Workload,
};

/// A workload's compiled policy, and what it came from (for `/status`).
#[derive(Debug, PartialEq, Eq)]
pub struct Chosen {
    pub compiled: Arc<CompiledPolicy>,
    /// The selecting policies, weakest first.
    pub policies: Vec<PolicyRef>,
    pub mode_from: Option<PolicyRef>,
}

/// The compiled policy of each distinct selection seen since the last [`Memo::clear`].
#[derive(Debug, Default)]
pub struct Memo {
    /// (positions of the selected policies in the policy set, strongest last; the workload's
    /// own audit switch) -> its result. Errors are kept too: a conflict is reported once per
    /// workload, found once.
    by_selection: HashMap<(Vec<usize>, bool), Result<Arc<Chosen>, String>>,
    /// How many merges and compilations ran (for tests).
    compiled: usize,
}

impl Memo {
    /// Forgets everything: a new reconcile has a new policy set.
    pub fn clear(&mut self) {
        self.by_selection.clear();
    }

    pub fn compilations(&self) -> usize {
        self.compiled
    }

    /// The compiled policy of `workload` under `policies`; `adjust` applies the agent's
    /// defaults (the `defaultMode`, the audit switches) to a fresh compilation.
    pub fn get(
        &mut self,
        policies: &[Policy],
        workload: &Workload,
        audit: bool,
        opts: &SelectOptions,
        adjust: impl FnOnce(&mut CompiledPolicy, bool),
    ) -> Result<Arc<Chosen>, String> {
        let selected = select(policies, workload, opts);
        let base = policies.as_ptr().addr();
        let key: Vec<usize> = selected
            .iter()
            .map(|p| (std::ptr::from_ref(*p).addr() - base) / size_of::<Policy>())
            .collect();
        let key = (key, audit);
        if let Some(known) = self.by_selection.get(&key) {
            return known.clone();
        }
        self.compiled += 1;
        let result = merge_as(&selected, opts.kuma)
            .map_err(|conflicts| {
                let text: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
                format!("{}; keeping the last good state", text.join("; "))
            })
            .and_then(|merged| {
                let mut compiled = compile(&merged).map_err(|e| e.to_string())?;
                adjust(&mut compiled, audit);
                Ok(Arc::new(Chosen {
                    compiled: Arc::new(compiled),
                    policies: merged.policies,
                    mode_from: merged.mode_from,
                }))
            });
        self.by_selection.insert(key, result.clone());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load::test_policies as policies;

    fn pod(n: usize, app: &str) -> Workload {
        Workload {
            name: Some(format!("p-{n}")),
            namespace: Some("shop".into()),
            tags: [("app".to_string(), app.to_string())].into(),
            ..Workload::default()
        }
    }

    const SET: &str = r#"
type: MeshPassthrough
name: mesh-wide
spec: {targetRef: {kind: Mesh}, default: {passthroughMode: Matched, appendMatch: [{type: IP, value: 203.0.113.10, port: 80, protocol: tcp}]}}
---
type: MeshPassthrough
name: web-only
spec: {targetRef: {kind: MeshSubset, tags: {app: web}}, default: {appendMatch: [{type: IP, value: 203.0.113.11, port: 80, protocol: tcp}]}}
"#;

    #[test]
    fn identical_workloads_compile_once_and_share_one_compiled_policy() {
        let ps = policies(SET);
        let opts = SelectOptions::default();
        let mut memo = Memo::default();
        let chosen: Vec<Arc<Chosen>> = (0..250)
            .map(|n| {
                memo.get(&ps, &pod(n, "db"), false, &opts, |_, _| {})
                    .expect("compiles")
            })
            .collect();
        assert_eq!(memo.compilations(), 1);
        assert!(
            chosen
                .iter()
                .all(|c| Arc::ptr_eq(&c.compiled, &chosen[0].compiled))
        );
        assert_eq!(chosen[0].policies.len(), 1, "only the Mesh-wide policy");
    }

    #[test]
    fn another_selection_or_audit_switch_compiles_again_and_a_new_reconcile_starts_over() {
        let ps = policies(SET);
        let opts = SelectOptions::default();
        let mut memo = Memo::default();
        let db = memo
            .get(&ps, &pod(0, "db"), false, &opts, |_, _| {})
            .expect("compiles");
        let web = memo
            .get(&ps, &pod(1, "web"), false, &opts, |_, _| {})
            .expect("compiles");
        let audited = memo
            .get(&ps, &pod(2, "db"), true, &opts, |c, audit| c.audit |= audit)
            .expect("compiles");
        assert_eq!(memo.compilations(), 3);
        assert_eq!(web.policies.len(), 2, "both policies select a web pod");
        assert_ne!(db.compiled.tables, web.compiled.tables);
        assert!(audited.compiled.audit && !db.compiled.audit);
        memo.clear();
        memo.get(&ps, &pod(3, "db"), false, &opts, |_, _| {})
            .expect("compiles");
        assert_eq!(memo.compilations(), 4, "the cache is per reconcile");
    }
}
