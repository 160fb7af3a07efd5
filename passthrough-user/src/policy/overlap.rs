//! Merge conflicts of a policy set whose workloads are not known: `validate` has none, and the
//! agent's change when pods come and go, so a set is judged by every workload it could apply
//! to. Two policies conflict for some workload exactly when they conflict for the least
//! workload both select, so that one is built for every pair that could conflict and merged
//! as the agent would merge it.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    merge::{Conflict, Role, SelectOptions, merged_for, role_of, selects},
    model::Policy,
    workload::{ProxyType, Workload},
};

/// What a workload must have for a policy to select it. `None` fields ask for nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Needs {
    mesh: String,
    proxy_types: Option<BTreeSet<ProxyType>>,
    tags: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    name: Option<String>,
    /// `Some(None)`: no namespace at all.
    namespace: Option<Option<String>>,
}

fn needs(p: &Policy, opts: &SelectOptions) -> Option<Needs> {
    let tr = p.target_ref();
    let mut n = Needs {
        mesh: p.mesh.clone(),
        proxy_types: None,
        tags: BTreeMap::new(),
        labels: BTreeMap::new(),
        name: None,
        namespace: None,
    };
    if matches!(role_of(p, opts), Role::Consumer | Role::WorkloadOwner) {
        n.namespace = Some(p.namespace.clone());
    }
    let proxy_types = || {
        tr.proxy_types
            .as_ref()
            .filter(|t| !t.is_empty())
            .map(|t| t.iter().filter_map(|t| t.parse().ok()).collect())
    };
    match tr.kind.as_str() {
        "Mesh" => n.proxy_types = proxy_types(),
        "MeshSubset" => {
            n.proxy_types = proxy_types();
            n.tags = tr.tags.clone().unwrap_or_default();
        }
        "Dataplane" => {
            if let Some(labels) = &tr.labels {
                n.labels = labels.clone();
            } else if let Some(name) = &tr.name {
                n.name = Some(name.clone());
                if let Some(ns) = tr.namespace.as_ref().or(p.namespace.as_ref()) {
                    n = with_namespace(n, Some(ns.clone()))?;
                }
            }
        }
        _ => return None,
    }
    Some(n)
}

fn with_namespace(mut n: Needs, ns: Option<String>) -> Option<Needs> {
    match &n.namespace {
        Some(have) if *have != ns => None,
        _ => {
            n.namespace = Some(ns);
            Some(n)
        }
    }
}

/// Both maps at once, unless they disagree on a key.
fn union(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    let mut out = a.clone();
    for (k, v) in b {
        if out
            .insert(k.clone(), v.clone())
            .is_some_and(|old| old != *v)
        {
            return None;
        }
    }
    Some(out)
}

/// What a workload must have for both to select it; `None` when no workload can.
fn combine(a: &Needs, b: &Needs) -> Option<Needs> {
    if a.mesh != b.mesh {
        return None;
    }
    let proxy_types = match (&a.proxy_types, &b.proxy_types) {
        (Some(x), Some(y)) => Some(x.intersection(y).copied().collect::<BTreeSet<_>>()),
        (x, y) => x.clone().or_else(|| y.clone()),
    };
    if proxy_types.as_ref().is_some_and(BTreeSet::is_empty) {
        return None;
    }
    let name = match (&a.name, &b.name) {
        (Some(x), Some(y)) if x != y => return None,
        (x, y) => x.clone().or_else(|| y.clone()),
    };
    let n = Needs {
        mesh: a.mesh.clone(),
        proxy_types,
        tags: union(&a.tags, &b.tags)?,
        labels: union(&a.labels, &b.labels)?,
        name,
        namespace: a.namespace.clone(),
    };
    match &b.namespace {
        Some(ns) => with_namespace(n, ns.clone()),
        None => Some(n),
    }
}

fn workload(n: Needs) -> Workload {
    Workload {
        mesh: n.mesh,
        proxy_type: n
            .proxy_types
            .and_then(|t| t.into_iter().next())
            .unwrap_or_default(),
        tags: n.tags,
        name: n.name,
        namespace: n.namespace.flatten(),
        labels: n.labels,
    }
}

/// The (port, protocol) pairs of a policy's L7 entries; a port-less entry counts as port 0,
/// as the merge does.
fn l7_ports(p: &Policy) -> BTreeSet<(u32, &str)> {
    p.spec
        .default
        .applied_matches()
        .map(|(_, m)| m)
        .filter(|m| matches!(m.protocol.as_str(), "http" | "http2" | "grpc"))
        .map(|m| (m.port.unwrap_or(0), m.protocol.as_str()))
        .collect()
}

/// Whether the L7 entries of two policies (or of one, twice) put two protocols on a port.
fn may_conflict(a: &BTreeSet<(u32, &str)>, b: &BTreeSet<(u32, &str)>) -> bool {
    let mut by_port: BTreeMap<u32, &str> = BTreeMap::new();
    a.iter().chain(b).any(|(port, protocol)| {
        let first = *by_port.entry(*port).or_insert(protocol);
        first != *protocol
    })
}

/// A policy with L7 entries: what a workload needs for it to apply, and its L7 ports.
type Candidate<'a> = (&'a Policy, Needs, BTreeSet<(u32, &'a str)>);

/// Every merge conflict any workload of the set could meet, once each, with a workload that
/// meets it. The policies must be valid.
pub fn conflicts(policies: &[Policy], opts: &SelectOptions) -> Vec<(Conflict, Workload)> {
    let candidates: Vec<Candidate<'_>> = policies
        .iter()
        .filter_map(|p| {
            let ports = l7_ports(p);
            if ports.is_empty() {
                return None;
            }
            Some((p, needs(p, opts)?, ports))
        })
        .collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, (p, pn, pp)) in candidates.iter().enumerate() {
        for (q, qn, qp) in &candidates[i..] {
            if !may_conflict(pp, qp) {
                continue;
            }
            let Some(w) = combine(pn, qn).map(workload) else {
                continue;
            };
            // The least workload is checked against the real selection, so a conflict is only
            // ever reported for a workload that both policies select.
            if !(selects(p, &w, opts) && selects(q, &w, opts)) {
                continue;
            }
            let Err(found) = merged_for(policies, &w, opts) else {
                continue;
            };
            for c in found {
                let key = (
                    c.port,
                    c.first.policy.name.clone(),
                    c.first.index,
                    c.second.policy.name.clone(),
                    c.second.index,
                );
                if seen.insert(key) {
                    out.push((c, w.clone()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load::test_policies as policies;

    fn found(text: &str) -> Vec<String> {
        conflicts(&policies(text), &SelectOptions::default())
            .into_iter()
            .map(|(c, _)| {
                format!(
                    "{} {} {}",
                    c.port, c.first.policy.name, c.second.policy.name
                )
            })
            .collect()
    }

    const HTTP_8080: &str =
        "appendMatch: [{type: Domain, value: a.com, port: 8080, protocol: http}]";
    const GRPC_8080: &str =
        "appendMatch: [{type: Domain, value: b.com, port: 8080, protocol: grpc}]";

    fn doc(name: &str, target: &str, default: &str) -> String {
        format!(
            "type: MeshPassthrough\nname: {name}\nspec:\n  targetRef: {target}\n  default: {{{default}}}\n---\n"
        )
    }

    #[test]
    fn two_mesh_wide_policies_with_two_l7_protocols_on_a_port_conflict() {
        let text = doc("a", "{kind: Mesh}", HTTP_8080) + &doc("b", "{kind: Mesh}", GRPC_8080);
        assert_eq!(found(&text), ["8080 b a"]);
    }

    #[test]
    fn policies_no_workload_has_both_of_do_not_conflict() {
        let text = doc("a", "{kind: MeshSubset, tags: {app: x}}", HTTP_8080)
            + &doc("b", "{kind: MeshSubset, tags: {app: y}}", GRPC_8080);
        assert_eq!(found(&text), Vec::<String>::new());
        let text = doc("a", "{kind: Mesh, proxyTypes: [Sidecar]}", HTTP_8080)
            + &doc("b", "{kind: Mesh, proxyTypes: [Gateway]}", GRPC_8080);
        assert_eq!(found(&text), Vec::<String>::new());
        let text = doc("a", "{kind: Mesh}", HTTP_8080)
            + &format!(
                "type: MeshPassthrough\nname: b\nmesh: other\nspec: {{default: {{{GRPC_8080}}}}}\n"
            );
        assert_eq!(found(&text), Vec::<String>::new());
    }

    #[test]
    fn a_subset_and_a_dataplane_selector_meet_on_a_workload_with_both() {
        let text = doc("a", "{kind: MeshSubset, tags: {app: x}}", HTTP_8080)
            + &doc("b", "{kind: Dataplane, labels: {team: y}}", GRPC_8080);
        let got = conflicts(&policies(&text), &SelectOptions::default());
        assert_eq!(got.len(), 1);
        let w = &got[0].1;
        assert_eq!(w.tags.get("app").map(String::as_str), Some("x"));
        assert_eq!(w.labels.get("team").map(String::as_str), Some("y"));
    }

    #[test]
    fn workload_owner_policies_of_two_namespaces_never_meet() {
        let k8s = |name: &str, ns: &str, default: &str| {
            format!(
                "apiVersion: kuma.io/v1alpha1\nkind: MeshPassthrough\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  default: {{{default}}}\n---\n"
            )
        };
        let apart = k8s("a", "one", HTTP_8080) + &k8s("b", "two", GRPC_8080);
        assert_eq!(found(&apart), Vec::<String>::new());
        let together = k8s("a", "one", HTTP_8080) + &k8s("b", "one", GRPC_8080);
        assert_eq!(found(&together), ["8080 one/b one/a"]);
        // A system policy applies in every namespace.
        let system = k8s("a", "one", HTTP_8080) + &k8s("b", "kuma-system", GRPC_8080);
        assert_eq!(found(&system), ["8080 kuma-system/b one/a"]);
    }

    #[test]
    fn portless_l7_entries_of_one_policy_conflict_with_each_other() {
        // Kuma's same-port rule only compares entries with a port; the merge does not.
        let text = doc(
            "a",
            "{kind: Mesh}",
            "appendMatch: [{type: Domain, value: a.com, protocol: http}, {type: Domain, value: b.com, protocol: grpc}]",
        );
        assert_eq!(found(&text), ["0 a a"]);
    }
}
