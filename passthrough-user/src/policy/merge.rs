//! Which policies apply to a workload, in which priority, and what they merge to: Kuma §c.
//!
//! Every `MeshPassthrough` is proxy-wide (it has neither `to` nor `from`), so all the
//! policies that select a workload merge into one configuration: `passthroughMode` from the
//! strongest policy that sets it, `appendMatch` concatenated from the weakest to the strongest.

use std::{cmp::Ordering, collections::BTreeMap, fmt, sync::Arc};

use serde::Serialize;

use super::{
    kuma::{Admission, KumaVersion},
    kuma3,
    load::DEFAULT_MAX_FILE_BYTES,
    model::{DEFAULT_SYSTEM_NAMESPACE, Format, Match, Policy, Source, labels},
    rules::{Rule, Rules},
    workload::{ProxyType, Workload},
};

/// Settings that change which policies apply and how they are read.
#[derive(Clone, Debug)]
pub struct SelectOptions {
    /// Kuma's system namespace: Kubernetes policies elsewhere only apply in their own namespace.
    pub system_namespace: String,
    /// The Kuma the policies are written for: its validation rules, selection and the name to
    /// address binding of Domain entries.
    pub kuma: KumaVersion,
    /// How Kuma 3 meets the policy files (objects from the Kubernetes API are always
    /// [`Admission::Stored`]); no effect under Kuma 2.
    pub files: Admission,
    /// Largest policy file read (`maxPolicyFileBytes`, `--max-policy-file-bytes`).
    pub max_file_bytes: u64,
}

impl Default for SelectOptions {
    fn default() -> Self {
        Self {
            system_namespace: DEFAULT_SYSTEM_NAMESPACE.into(),
            kuma: KumaVersion::V2,
            files: Admission::Apply,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

impl SelectOptions {
    /// Kuma 2 defaults in `system_namespace`.
    pub fn in_namespace(system_namespace: impl Into<String>) -> Self {
        Self {
            system_namespace: system_namespace.into(),
            ..Self::default()
        }
    }
}

/// A merged `passthroughMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mode {
    All,
    None,
    Matched,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "All" => Some(Mode::All),
            "None" => Some(Mode::None),
            "Matched" => Some(Mode::Matched),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::All => "All",
            Mode::None => "None",
            Mode::Matched => "Matched",
        })
    }
}

/// Kuma's policy role (`kuma.io/policy-role`), weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    System,
    Producer,
    Consumer,
    WorkloadOwner,
}

impl Role {
    /// The `kuma.io/policy-role` value.
    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Producer => "producer",
            Role::Consumer => "consumer",
            Role::WorkloadOwner => "workload-owner",
        }
    }
}

/// The role of a policy: its `kuma.io/policy-role` label, else what Kuma computes for a
/// policy without `to`/`from`: workload-owner outside the system namespace, system elsewhere.
/// A Kubernetes-form policy read from a file without `metadata.namespace` counts as system.
pub fn role_of(policy: &Policy, opts: &SelectOptions) -> Role {
    match policy.labels.get(labels::POLICY_ROLE).map(String::as_str) {
        Some("system") => return Role::System,
        Some("producer") => return Role::Producer,
        Some("consumer") => return Role::Consumer,
        Some("workload-owner") => return Role::WorkloadOwner,
        _ => {}
    }
    match (&policy.format, &policy.namespace) {
        (Format::Kubernetes, Some(ns)) if *ns != opts.system_namespace => Role::WorkloadOwner,
        _ => Role::System,
    }
}

/// Whether `policy` selects `workload` (Kuma's `DppSelectedByPolicy`, less the zone check:
/// one agent serves one zone).
pub fn selects(policy: &Policy, workload: &Workload, opts: &SelectOptions) -> bool {
    mismatch(policy, workload, opts).is_none()
}

/// Why a policy does not select a workload: the first requirement of the policy that the
/// workload does not meet, in the order Kuma checks them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Mismatch {
    /// The policy is of another mesh.
    Mesh { wanted: String, actual: String },
    /// A consumer or workload-owner policy applies only in its own namespace.
    Namespace {
        role: Role,
        wanted: Option<String>,
        actual: Option<String>,
    },
    /// `targetRef.proxyTypes` leaves this proxy type out.
    ProxyType {
        wanted: Vec<String>,
        actual: ProxyType,
    },
    /// A `MeshSubset` tag the workload lacks or has another value of.
    Tag {
        key: String,
        wanted: String,
        actual: Option<String>,
    },
    /// A `Dataplane` label the workload lacks or has another value of.
    Label {
        key: String,
        wanted: String,
        actual: Option<String>,
    },
    /// A `Dataplane` reference by name: another name.
    Name {
        wanted: String,
        actual: Option<String>,
    },
    /// A `Dataplane` reference by name: another namespace.
    DataplaneNamespace {
        wanted: String,
        actual: Option<String>,
    },
    /// A targetRef kind that selects nothing (validation refuses it).
    Kind { kind: String },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_unset =
            |v: &Option<String>| v.as_ref().map_or("not set".into(), |v| format!("{v:?}"));
        match self {
            Mismatch::Mesh { wanted, actual } => write!(
                f,
                "mesh: the policy is in mesh {wanted:?}, the workload in mesh {actual:?}"
            ),
            Mismatch::Namespace {
                role,
                wanted,
                actual,
            } => write!(
                f,
                "namespace: a {} policy applies only to workloads of its own namespace {}; the workload's namespace is {}",
                role.name(),
                or_unset(wanted),
                or_unset(actual)
            ),
            Mismatch::ProxyType { wanted, actual } => write!(
                f,
                "proxyTypes: the policy selects {}, the workload is a {actual}",
                wanted.join(", ")
            ),
            Mismatch::Tag {
                key,
                wanted,
                actual,
            } => match actual {
                Some(a) => write!(
                    f,
                    "tag {key}: the policy wants {wanted:?}, the workload has {a:?}"
                ),
                None => write!(
                    f,
                    "tag {key}: the policy wants {wanted:?}, the workload has no such tag"
                ),
            },
            Mismatch::Label {
                key,
                wanted,
                actual,
            } => match actual {
                Some(a) => write!(
                    f,
                    "label {key}: the policy wants {wanted:?}, the workload has {a:?}"
                ),
                None => write!(
                    f,
                    "label {key}: the policy wants {wanted:?}, the workload has no such label"
                ),
            },
            Mismatch::Name { wanted, actual } => write!(
                f,
                "name: the policy selects the Dataplane named {wanted:?}, the workload's name is {}",
                or_unset(actual)
            ),
            Mismatch::DataplaneNamespace { wanted, actual } => write!(
                f,
                "namespace: the policy selects a Dataplane in namespace {wanted:?}, the workload's namespace is {}",
                or_unset(actual)
            ),
            Mismatch::Kind { kind } => write!(f, "kind: {kind:?} selects no workload"),
        }
    }
}

/// The first requirement of `policy` that `workload` does not meet; `None` when the policy
/// selects the workload.
pub fn mismatch(policy: &Policy, workload: &Workload, opts: &SelectOptions) -> Option<Mismatch> {
    if policy.mesh != workload.mesh {
        return Some(Mismatch::Mesh {
            wanted: policy.mesh.clone(),
            actual: workload.mesh.clone(),
        });
    }
    let role = role_of(policy, opts);
    if matches!(role, Role::Consumer | Role::WorkloadOwner)
        && policy.namespace.as_deref() != workload.effective_namespace()
    {
        return Some(Mismatch::Namespace {
            role,
            wanted: policy.namespace.clone(),
            actual: workload.effective_namespace().map(str::to_string),
        });
    }
    let tr = policy.target_ref();
    let proxy_type = || match &tr.proxy_types {
        Some(types)
            if !types.is_empty() && !types.iter().any(|t| t == workload.proxy_type.as_str()) =>
        {
            Some(Mismatch::ProxyType {
                wanted: types.clone(),
                actual: workload.proxy_type,
            })
        }
        _ => None,
    };
    let missing = |wanted: &BTreeMap<String, String>, have: &BTreeMap<String, String>| {
        wanted
            .iter()
            .find(|(k, v)| have.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone(), have.get(k).cloned()))
    };
    match tr.kind.as_str() {
        "Mesh" => proxy_type(),
        "MeshSubset" => proxy_type().or_else(|| {
            let (key, wanted, actual) = missing(tr.tags.as_ref()?, &workload.tags)?;
            Some(Mismatch::Tag {
                key,
                wanted,
                actual,
            })
        }),
        "Dataplane" => {
            if let Some(labels) = &tr.labels {
                let (key, wanted, actual) = missing(labels, &workload.labels)?;
                Some(Mismatch::Label {
                    key,
                    wanted,
                    actual,
                })
            } else if let Some(name) = &tr.name {
                if workload.name.as_ref() != Some(name) {
                    return Some(Mismatch::Name {
                        wanted: name.clone(),
                        actual: workload.name.clone(),
                    });
                }
                let ns = tr.namespace.as_ref().or(policy.namespace.as_ref())?;
                (workload.effective_namespace() != Some(ns.as_str())).then(|| {
                    Mismatch::DataplaneNamespace {
                        wanted: ns.clone(),
                        actual: workload.effective_namespace().map(str::to_string),
                    }
                })
            } else {
                None
            }
        }
        other => Some(Mismatch::Kind {
            kind: other.to_string(),
        }),
    }
}

/// Kuma's priority key of a policy; a greater key is a stronger policy.
fn priority(policy: &Policy, opts: &SelectOptions) -> (u8, u8, u8, Role) {
    let tr = policy.target_ref();
    let kind = match tr.kind.as_str() {
        "Mesh" => 1,
        "Dataplane" => 2,
        "MeshSubset" => 3,
        _ => 0,
    };
    // Between two Dataplane policies, selecting by name beats selecting by labels (or nothing).
    let dataplane_by_name = u8::from(tr.kind == "Dataplane" && tr.name.is_some());
    let origin = match policy.labels.get(labels::ORIGIN).map(String::as_str) {
        Some("global") => 1,
        Some("zone") => 3,
        _ => 2,
    };
    (kind, dataplane_by_name, origin, role_of(policy, opts))
}

/// Orders two policies from weakest to strongest. On equal keys the lexicographically
/// smallest display name is the strongest, as in Kuma; the qualified name breaks the
/// remaining ties so the order never depends on input order.
pub fn compare_priority(a: &Policy, b: &Policy, opts: &SelectOptions) -> Ordering {
    priority(a, opts)
        .cmp(&priority(b, opts))
        .then_with(|| b.display_name().cmp(a.display_name()))
        .then_with(|| b.qualified_name().cmp(&a.qualified_name()))
}

/// The policies that select `workload`, weakest first.
pub fn select<'a>(
    policies: &'a [Policy],
    workload: &Workload,
    opts: &SelectOptions,
) -> Vec<&'a Policy> {
    let mut out: Vec<&Policy> = policies
        .iter()
        .filter(|p| selects(p, workload, opts))
        .collect();
    out.sort_by(|a, b| compare_priority(a, b, opts));
    out
}

/// A policy as merged results refer to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PolicyRef {
    pub name: String,
    pub source: Source,
}

impl PolicyRef {
    pub fn of(p: &Policy) -> Self {
        Self {
            name: p.qualified_name(),
            source: p.source.clone(),
        }
    }
}

/// One entry of the merged appendMatch list, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MergedEntry {
    /// Shared by every entry of the policy: a large policy has a million entries.
    pub policy: Arc<PolicyRef>,
    /// Index of the entry in its policy's `spec.default.appendMatch`.
    pub index: usize,
    pub entry: Match,
}

impl fmt::Display for MergedEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} spec.default.appendMatch[{}] {}",
            self.policy.name, self.index, self.entry
        )
    }
}

/// The merged configuration of one workload.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Merged {
    /// The selecting policies, weakest first. Empty: nothing selects the workload.
    pub policies: Vec<PolicyRef>,
    /// The merged mode; `None` when no policy selects the workload.
    pub mode: Option<Mode>,
    /// The policy the mode came from; `None` when no selecting policy sets one (the mode is
    /// then Kuma's default, `Matched`).
    pub mode_from: Option<PolicyRef>,
    pub entries: Rules,
    /// Whether any selecting policy carries `passthrough.io/audit: "true"`.
    pub audit: bool,
    /// The Kuma the policies were read for.
    pub kuma: KumaVersion,
}

/// Two merged entries that cannot share a port: more than one of http, http2, grpc.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// The port, 0 for entries without one.
    pub port: u32,
    pub first: MergedEntry,
    pub second: MergedEntry,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = if self.port == 0 {
            "entries without a port".to_string()
        } else {
            format!("port {}", self.port)
        };
        write!(
            f,
            "you cannot configure http, http2, grpc on the same port: {port}: {} (protocol {}) of policy {} conflicts with {} (protocol {}) of policy {}; keep one of http, http2, grpc per port",
            format_args!("spec.default.appendMatch[{}]", self.first.index),
            self.first.entry.protocol,
            self.first.policy.name,
            format_args!("spec.default.appendMatch[{}]", self.second.index),
            self.second.entry.protocol,
            self.second.policy.name,
        )
    }
}

fn is_l7(protocol: &str) -> bool {
    matches!(protocol, "http" | "http2" | "grpc")
}

/// Merges the selected policies (weakest first, as [`select`] returns them), for Kuma 2.
pub fn merge(selected: &[&Policy]) -> Result<Merged, Vec<Conflict>> {
    merge_as(selected, KumaVersion::V2)
}

/// Merges the selected policies for `kuma`: its conflicts ([`l7_conflicts`]).
pub fn merge_as(selected: &[&Policy], kuma: KumaVersion) -> Result<Merged, Vec<Conflict>> {
    let mut mode = None;
    let mut mode_from = None;
    let mut entries = Rules::default();
    for p in selected {
        if let Some(m) = p.spec.default.passthrough_mode.as_deref() {
            // Validation has rejected any other value; a stronger policy overrides.
            if let Some(m) = Mode::parse(m) {
                mode = Some(m);
                mode_from = Some(PolicyRef::of(p));
            }
        }
        if let Some(matches) = &p.spec.default.append_match {
            entries.push_policy(Arc::new(PolicyRef::of(p)), matches, &p.spec.default.dropped);
        }
    }
    let conflicts = l7_conflicts(&entries, kuma);
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    Ok(Merged {
        policies: selected.iter().map(|p| PolicyRef::of(p)).collect(),
        mode: if selected.is_empty() {
            None
        } else {
            Some(mode.unwrap_or(Mode::Matched))
        },
        mode_from,
        entries,
        audit: selected.iter().any(|p| p.audit()),
        kuma,
    })
}

/// Entries that put a second L7 protocol on a port (0 = entries without a port), each
/// reported once against the first entry of the port's first L7 protocol. Under Kuma 3 only
/// entries of one scope conflict (`kuma3::l7_scope`: the port's domains, or one address).
pub fn l7_conflicts(entries: &Rules, kuma: KumaVersion) -> Vec<Conflict> {
    let mut first_l7: BTreeMap<(u32, String), Rule<'_>> = BTreeMap::new();
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| is_l7(&e.entry.protocol)) {
        let port = e.entry.port.unwrap_or(0);
        let scope = match kuma {
            KumaVersion::V2 => String::new(),
            KumaVersion::V3 => kuma3::l7_scope(e.entry),
        };
        match first_l7.get(&(port, scope.clone())) {
            Some(first) if first.entry.protocol != e.entry.protocol => out.push(Conflict {
                port,
                first: first.owned(),
                second: e.owned(),
            }),
            Some(_) => {}
            None => {
                first_l7.insert((port, scope), e);
            }
        }
    }
    out
}

/// Selects and merges in one step.
pub fn merged_for(
    policies: &[Policy],
    workload: &Workload,
    opts: &SelectOptions,
) -> Result<Merged, Vec<Conflict>> {
    merge_as(&select(policies, workload, opts), opts.kuma)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load::test_policies as policies;

    fn workload(tags: &[(&str, &str)]) -> Workload {
        Workload {
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Workload::default()
        }
    }

    fn names(v: &[&Policy]) -> Vec<String> {
        v.iter().map(|p| p.name.clone()).collect()
    }

    const APP: (&str, &str) = ("kuma.io/service", "app");

    #[test]
    fn kind_orders_mesh_below_dataplane_below_meshsubset() {
        let ps = policies(
            r#"
type: MeshPassthrough
name: a-subset
spec: {targetRef: {kind: MeshSubset, tags: {kuma.io/service: app}}}
---
type: MeshPassthrough
name: b-mesh
spec: {targetRef: {kind: Mesh}}
---
type: MeshPassthrough
name: c-dataplane
spec: {targetRef: {kind: Dataplane}}
"#,
        );
        let sel = select(&ps, &workload(&[APP]), &SelectOptions::default());
        assert_eq!(names(&sel), ["b-mesh", "c-dataplane", "a-subset"]);
    }

    #[test]
    fn equal_priority_smallest_name_is_strongest() {
        let ps = policies(
            "type: MeshPassthrough\nname: allow-specified\n---\ntype: MeshPassthrough\nname: disable-passthrough\n",
        );
        let sel = select(&ps, &workload(&[]), &SelectOptions::default());
        assert_eq!(names(&sel), ["disable-passthrough", "allow-specified"]);
    }

    #[test]
    fn display_name_label_orders_instead_of_name() {
        let ps = policies(
            "type: MeshPassthrough\nname: a\nlabels: {kuma.io/display-name: z}\n---\ntype: MeshPassthrough\nname: b\n",
        );
        let sel = select(&ps, &workload(&[]), &SelectOptions::default());
        assert_eq!(names(&sel), ["a", "b"]);
    }

    #[test]
    fn origin_then_role_order_policies_of_the_same_kind() {
        let ps = policies(
            r#"
type: MeshPassthrough
name: a-zone
labels: {kuma.io/origin: zone}
---
type: MeshPassthrough
name: b-unset
---
type: MeshPassthrough
name: c-global
labels: {kuma.io/origin: global}
---
type: MeshPassthrough
name: d-consumer
labels: {kuma.io/policy-role: consumer}
"#,
        );
        // d-consumer has no namespace, so it only selects workloads without one.
        let sel = select(&ps, &workload(&[]), &SelectOptions::default());
        assert_eq!(names(&sel), ["c-global", "b-unset", "d-consumer", "a-zone"]);
    }

    #[test]
    fn dataplane_by_name_beats_dataplane_by_labels() {
        let ps = policies(
            r#"
type: MeshPassthrough
name: a-labels
spec: {targetRef: {kind: Dataplane, labels: {app: x}}}
---
type: MeshPassthrough
name: b-name
spec: {targetRef: {kind: Dataplane, name: dp-1}}
"#,
        );
        let mut w = workload(&[]);
        w.name = Some("dp-1".into());
        w.labels.insert("app".into(), "x".into());
        let sel = select(&ps, &w, &SelectOptions::default());
        assert_eq!(names(&sel), ["a-labels", "b-name"]);
    }

    #[test]
    fn meshsubset_needs_every_tag_and_proxy_types_filter() {
        let ps = policies(
            r#"
type: MeshPassthrough
name: subset
spec: {targetRef: {kind: MeshSubset, tags: {kuma.io/service: app, version: v1}}}
---
type: MeshPassthrough
name: gateways
spec: {targetRef: {kind: Mesh, proxyTypes: [Gateway]}}
"#,
        );
        let opts = SelectOptions::default();
        assert!(select(&ps, &workload(&[APP]), &opts).is_empty());
        let sel = select(&ps, &workload(&[APP, ("version", "v1")]), &opts);
        assert_eq!(names(&sel), ["subset"]);
        let mut gw = workload(&[]);
        gw.proxy_type = crate::policy::workload::ProxyType::Gateway;
        assert_eq!(names(&select(&ps, &gw, &opts)), ["gateways"]);
    }

    #[test]
    fn other_mesh_is_not_selected() {
        let ps = policies("type: MeshPassthrough\nname: p\nmesh: other\n");
        assert!(select(&ps, &workload(&[]), &SelectOptions::default()).is_empty());
    }

    #[test]
    fn namespaced_kubernetes_policy_applies_only_in_its_namespace() {
        let ps = policies(
            r#"
apiVersion: kuma.io/v1alpha1
kind: MeshPassthrough
metadata: {name: p, namespace: shop}
---
apiVersion: kuma.io/v1alpha1
kind: MeshPassthrough
metadata: {name: q, namespace: kuma-system}
"#,
        );
        let opts = SelectOptions::default();
        let mut w = workload(&[]);
        w.namespace = Some("shop".into());
        assert_eq!(names(&select(&ps, &w, &opts)), ["q", "p"]);
        w.namespace = Some("blog".into());
        assert_eq!(names(&select(&ps, &w, &opts)), ["q"]);
        // Kuma's namespace tag counts when the workload has no namespace of its own.
        let w = workload(&[("k8s.kuma.io/namespace", "shop")]);
        assert_eq!(names(&select(&ps, &w, &opts)), ["q", "p"]);
    }

    #[test]
    fn mode_comes_from_strongest_policy_that_sets_it_and_matches_concatenate() {
        let ps = policies(
            r#"
type: MeshPassthrough
name: mesh-wide
spec:
  targetRef: {kind: Mesh}
  default:
    passthroughMode: All
    appendMatch: [{type: IP, value: 1.1.1.1}]
---
type: MeshPassthrough
name: subset
spec:
  targetRef: {kind: MeshSubset, tags: {kuma.io/service: app}}
  default:
    appendMatch: [{type: IP, value: 2.2.2.2}]
"#,
        );
        let m = merged_for(&ps, &workload(&[APP]), &SelectOptions::default()).expect("merge");
        // The more specific policy sets no mode, so the broader policy's All stands.
        assert_eq!(m.mode, Some(Mode::All));
        assert_eq!(
            m.mode_from.as_ref().map(|p| p.name.as_str()),
            Some("mesh-wide")
        );
        let values: Vec<_> = m.entries.iter().map(|e| e.entry.value.as_str()).collect();
        assert_eq!(values, ["1.1.1.1", "2.2.2.2"]);
    }

    #[test]
    fn unset_mode_defaults_to_matched_and_no_policy_means_unselected() {
        let ps = policies("type: MeshPassthrough\nname: p\n");
        let m = merged_for(&ps, &workload(&[]), &SelectOptions::default()).expect("merge");
        assert_eq!(m.mode, Some(Mode::Matched));
        assert_eq!(m.mode_from, None);
        let m = merged_for(&[], &workload(&[]), &SelectOptions::default()).expect("merge");
        assert_eq!(m.mode, None);
    }

    #[test]
    fn l7_conflict_across_policies_names_both() {
        let ps = policies(
            r#"
type: MeshPassthrough
name: a
spec: {default: {appendMatch: [{type: Domain, value: a.com, port: 8080, protocol: http}]}}
---
type: MeshPassthrough
name: b
spec: {default: {appendMatch: [{type: Domain, value: b.com, port: 8080, protocol: http2}, {type: Domain, value: c.com, port: 8080, protocol: tls}]}}
"#,
        );
        let err = merged_for(&ps, &workload(&[]), &SelectOptions::default()).expect_err("conflict");
        assert_eq!(err.len(), 1);
        let text = err[0].to_string();
        assert!(text.contains("port 8080"), "{text}");
        assert!(
            text.contains("policy a") && text.contains("policy b"),
            "{text}"
        );
    }

    #[test]
    fn audit_label_marks_the_merge() {
        let ps =
            policies("type: MeshPassthrough\nname: p\nlabels: {passthrough.io/audit: \"true\"}\n");
        let m = merged_for(&ps, &workload(&[]), &SelectOptions::default()).expect("merge");
        assert!(m.audit);
    }
}
