//! `passthrough migrate`: Kuma 2.x MeshPassthrough policies rewritten for Kuma 3, and for every
//! change what was done and why, whether Kuma 3 itself changes what the policy means, and for
//! every case that cannot be decided from the policy what the operator must choose.
//!
//! Pure: texts in, texts and a report out (`cli::migrate` reads and writes the files). Each
//! document is rewritten as a YAML tree, so every field migrate does not touch (metadata,
//! labels, annotations) is kept as it was; comments are not (YAML trees have none).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use serde::{Deserialize as _, Serialize};
use serde_yaml::{Mapping, Value};

use super::{
    compile::normalize_name,
    hints,
    kuma::{Admission, KumaVersion},
    kuma3,
    load::parse_policy,
    merge::{SelectOptions, compare_priority},
    model::{Conf, DEFAULT_SYSTEM_NAMESPACE, Match, Policy, Source},
    validate::validate_for,
    workload::ProxyType,
};

/// What the operator decided beforehand.
#[derive(Clone, Debug)]
pub struct Options {
    /// The ports of exact Domain entries written without one, by name (lower case, no
    /// trailing dot): `--port-for NAME=PORT`.
    pub port_for: BTreeMap<String, BTreeSet<u16>>,
    /// Kuma's system namespace (for the priority of namespaced policies).
    pub system_namespace: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            port_for: BTreeMap::new(),
            system_namespace: DEFAULT_SYSTEM_NAMESPACE.into(),
        }
    }
}

/// One file to migrate.
#[derive(Clone, Debug)]
pub struct Input {
    pub path: String,
    pub text: String,
}

/// What a change does to the policy's meaning.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "meaning")]
pub enum Meaning {
    /// The same workloads and destinations, with the same verdicts.
    Kept,
    /// Kuma 3 itself changed what the 2.x form means; no Kuma 3 policy says the same.
    ChangedByKuma3 { change: Kuma3Change },
}

/// What Kuma 3 means differently, precisely enough to tell which verdicts it changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Kuma3Change {
    /// Kuma 3 has no proxyTypes: the policy now also applies to these proxy types.
    ProxyTypes { now_also: Vec<ProxyType> },
    /// Kuma 3 selects Dataplanes by labels, not by inbound tags: the policy selects the
    /// workloads whose Dataplane carries these labels.
    Labels { labels: BTreeMap<String, String> },
    /// An exact Domain entry without a port matched on every port; Kuma 3 needs a port, and
    /// the migrated entries match on these ports only.
    DomainPorts {
        value: String,
        protocol: String,
        ports: Vec<u16>,
    },
    /// In Kuma 2 this policy outranked `other` (a MeshSubset over a Dataplane policy); in
    /// Kuma 3 `other` outranks it, so where both select a workload, `other`'s
    /// passthroughMode wins.
    Priority { other: String },
}

/// One change migrate made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// The field of the input policy it is about.
    pub field: String,
    /// What migrate did.
    pub did: String,
    /// Why.
    pub why: String,
    #[serde(flatten)]
    pub meaning: Meaning,
}

/// Something migrate cannot decide from the policy: left in its 2.x form, and what the
/// operator must choose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Undecided {
    pub field: String,
    pub why: String,
    pub choose: String,
}

/// What became of one document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Rewritten for Kuma 3.
    Migrated,
    /// Already Kuma 3's form.
    Unchanged,
    /// Rewritten as far as it can be; some part waits for the operator's choice.
    NeedsChoice,
    /// Invalid under Kuma 2: fix it first (nothing was changed).
    NotMigrated,
    /// Not a MeshPassthrough: left as it is.
    Skipped,
}

/// One document's outcome.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocReport {
    pub source: Source,
    pub name: String,
    pub status: Status,
    pub changes: Vec<Change>,
    pub undecided: Vec<Undecided>,
    /// For a document that was not migrated: why (Kuma 2's violations, or what it is).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One file's outcome.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileReport {
    pub path: String,
    /// The migrated text; `None` when the file is not YAML (see `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Whether `text` differs from the input in a policy.
    pub changed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub documents: Vec<DocReport>,
}

/// The whole migration.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Migration {
    pub files: Vec<FileReport>,
    /// What `validate --kuma-version 3` says of the migrated policies that need no choice
    /// (nothing, when migrate did its job).
    pub validation: Vec<String>,
}

impl Migration {
    pub fn documents(&self) -> impl Iterator<Item = &DocReport> {
        self.files.iter().flat_map(|f| &f.documents)
    }

    /// Whether some input could not be read as YAML.
    pub fn unreadable(&self) -> bool {
        self.files.iter().any(|f| f.error.is_some())
    }

    /// Whether everything was migrated without a choice left and validates under Kuma 3.
    pub fn complete(&self) -> bool {
        self.validation.is_empty()
            && self
                .documents()
                .all(|d| matches!(d.status, Status::Migrated | Status::Unchanged))
    }

    /// The report, one finding per line: `FILE#DOC NAME: FIELD: WHAT: WHY`, with the meaning
    /// or the choice indented under it, then a summary line.
    pub fn report_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for f in &self.files {
            if let Some(e) = &f.error {
                out.push(format!("{}: not migrated: {e}", f.path));
            }
            for d in &f.documents {
                let place = format!("{} {}", d.source, display_name(&d.name));
                match d.status {
                    Status::Unchanged => {
                        out.push(format!("{place}: unchanged: already valid for Kuma 3"));
                    }
                    Status::NotMigrated => out.push(format!(
                        "{place}: not migrated: invalid under Kuma 2, fix it first"
                    )),
                    Status::Skipped => out.push(format!("{place}: left as it is")),
                    Status::NeedsChoice if d.changes.is_empty() && !d.notes.is_empty() => {
                        out.push(format!("{place}: left as it is"));
                    }
                    Status::Migrated | Status::NeedsChoice => {}
                }
                out.extend(d.notes.iter().map(|n| format!("  {n}")));
                for c in &d.changes {
                    out.push(format!("{place}: {}: {}: {}", c.field, c.did, c.why));
                    if let Meaning::ChangedByKuma3 { change } = &c.meaning {
                        out.push(format!("  meaning: Kuma 3 changed it: {change}"));
                    }
                }
                for u in &d.undecided {
                    out.push(format!("{place}: {}: undecided: {}", u.field, u.why));
                    out.push(format!("  choose: {}", u.choose));
                }
            }
        }
        out.extend(
            self.validation
                .iter()
                .map(|l| format!("after migration: {l}")),
        );
        out.push(self.summary());
        out
    }

    /// `4 policies in 4 files: 3 migrated, 1 unchanged, 0 need a choice, 0 not migrated; 6
    /// changes, 4 of them meaning changes Kuma 3 made`.
    pub fn summary(&self) -> String {
        let count = |s: Status| self.documents().filter(|d| d.status == s).count();
        let policies = self
            .documents()
            .filter(|d| d.status != Status::Skipped)
            .count();
        let changes: Vec<&Change> = self.documents().flat_map(|d| &d.changes).collect();
        let kuma3 = changes
            .iter()
            .filter(|c| matches!(c.meaning, Meaning::ChangedByKuma3 { .. }))
            .count();
        format!(
            "{policies} {} in {} {}: {} migrated, {} unchanged, {} need a choice, {} not migrated; {} {}, {kuma3} of them {} what a policy means (Kuma 3 did){}",
            plural(policies, "policy", "policies"),
            self.files.len(),
            plural(self.files.len(), "file", "files"),
            count(Status::Migrated),
            count(Status::Unchanged),
            count(Status::NeedsChoice),
            count(Status::NotMigrated),
            changes.len(),
            plural(changes.len(), "change", "changes"),
            if kuma3 == 1 { "changes" } else { "change" },
            if self.validation.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} finding{} of validate --kuma-version 3 left",
                    self.validation.len(),
                    if self.validation.len() == 1 { "" } else { "s" }
                )
            },
        )
    }
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

fn display_name(name: &str) -> &str {
    if name.is_empty() { "<unnamed>" } else { name }
}

impl fmt::Display for Kuma3Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kuma3Change::ProxyTypes { now_also } => {
                let types: Vec<&str> = now_also.iter().map(|t| t.as_str()).collect();
                write!(
                    f,
                    "the policy now applies to {} proxies too (Kuma 3 cannot select by proxy type); if they must be left out, select the others by Dataplane labels",
                    types.join(", ")
                )
            }
            Kuma3Change::Labels { labels } => write!(
                f,
                "the policy selects the workloads whose Dataplane carries the labels {}, where Kuma 2 matched inbound tags: check that the workloads carry them (kuma.io/service is a tag Kuma sets on inbounds, not necessarily a Dataplane label)",
                kuma3::map_text(labels)
            ),
            Kuma3Change::DomainPorts {
                value,
                protocol,
                ports,
            } => {
                let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "{value} over {protocol} was allowed on every port; now only on port {}: add ports with --port-for {value}=PORT",
                    ports.join(", ")
                )
            }
            Kuma3Change::Priority { other } => write!(
                f,
                "in Kuma 2 this policy outranked {other} (MeshSubset over Dataplane); in Kuma 3 both are Dataplane policies and {other} outranks it (by name), so where both select a workload its passthroughMode wins"
            ),
        }
    }
}

/// Migrates every input, as one set (priorities are compared across all of them).
pub fn migrate(inputs: &[Input], opts: &Options) -> Migration {
    let mut files = Vec::new();
    // (file, doc index in the file's report, original, migrated) of every policy migrated
    // without a choice left: for the priority comparison.
    let mut migrated: Vec<(usize, usize, Policy, Policy)> = Vec::new();
    for input in inputs {
        let (report, pairs) = migrate_file(input, opts);
        let fi = files.len();
        migrated.extend(pairs.into_iter().map(|(di, a, b)| (fi, di, a, b)));
        files.push(report);
    }
    priority_changes(&mut files, &migrated, opts);
    let validation = validate_migrated(&files, &migrated);
    Migration { files, validation }
}

/// One migrated policy: (index in the file's documents, original, migrated).
type Pair = (usize, Policy, Policy);

fn migrate_file(input: &Input, opts: &Options) -> (FileReport, Vec<Pair>) {
    let mut values = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&input.text) {
        match Value::deserialize(doc) {
            Ok(v) => values.push(v),
            Err(e) => {
                return (
                    FileReport {
                        path: input.path.clone(),
                        text: None,
                        changed: false,
                        error: Some(format!("not valid YAML: {e}")),
                        documents: Vec::new(),
                    },
                    Vec::new(),
                );
            }
        }
    }
    let mut documents = Vec::new();
    let mut pairs = Vec::new();
    let mut out_values = Vec::new();
    let mut changed = false;
    for (doc, value) in values.into_iter().enumerate() {
        if value.is_null() {
            continue;
        }
        let source = Source::file(input.path.clone(), doc);
        let (report, new_value, pair) = migrate_document(source, value, opts);
        changed |= matches!(report.status, Status::Migrated | Status::NeedsChoice);
        if let Some((original, migrated)) = pair {
            pairs.push((documents.len(), original, migrated));
        }
        documents.push(report);
        out_values.push(new_value);
    }
    let mut text = format!(
        "# Migrated for Kuma 3 by `passthrough migrate --to 3` from {}.\n# Its report says what changed and why; comments of the original are not kept.\n",
        input.path
    );
    for (i, v) in out_values.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&serde_yaml::to_string(v).unwrap_or_default());
    }
    (
        FileReport {
            path: input.path.clone(),
            text: Some(text),
            changed,
            error: None,
            documents,
        },
        pairs,
    )
}

/// Migrates one document: its report, its new YAML tree, and (when nothing is left to choose)
/// the policy before and after.
fn migrate_document(
    source: Source,
    value: Value,
    opts: &Options,
) -> (DocReport, Value, Option<(Policy, Policy)>) {
    let mut report = DocReport {
        source: source.clone(),
        name: String::new(),
        status: Status::Skipped,
        changes: Vec::new(),
        undecided: Vec::new(),
        notes: Vec::new(),
    };
    let policy = match parse_policy(source.clone(), value.clone()) {
        Ok(p) => p,
        Err(e) => {
            report.name = e.name.clone().unwrap_or_default();
            report.notes.push(match mesh_passthrough_off(&value) {
                Some(mesh) => {
                    report.status = Status::NeedsChoice;
                    report.undecided.push(Undecided {
                        field: "networking.outbound.passthrough".into(),
                        why: format!(
                            "Mesh {mesh} sets passthrough: false, which Kuma 3 ignores: its proxies would reach every destination"
                        ),
                        choose: format!(
                            "add a MeshPassthrough for mesh {mesh} with targetRef kind Mesh and passthroughMode None (Kuma's upgrade notes), and set passthroughMode: Matched in the policies whose workloads relied on Kuma's default"
                        ),
                    });
                    format!("a Mesh resource, not a MeshPassthrough ({})", e.message)
                }
                None => format!("not a MeshPassthrough: {}: {}", e.field, e.message),
            });
            return (report, value, None);
        }
    };
    report.name = policy.name.clone();
    let violations = validate_for(&policy, KumaVersion::V2, Admission::Apply);
    let gateway_kind = policy.target_ref().kind == "MeshGateway";
    let errors: Vec<String> = violations
        .iter()
        .filter(|v| v.is_error())
        // A MeshGateway selector is migrate's to report: Kuma 3 has its own answer to it.
        .filter(|v| !(gateway_kind && v.field == "spec.targetRef.kind"))
        .map(|v| format!("{}: {}", v.field, v.message))
        .collect();
    if !errors.is_empty() {
        report.status = Status::NotMigrated;
        report.notes = errors;
        return (report, value, None);
    }
    let mut value = value;
    let Some(spec) = value.get_mut("spec").and_then(Value::as_mapping_mut) else {
        // A policy without a spec: Mesh-wide, mode Matched, nothing to rewrite.
        report.status = Status::Unchanged;
        let migrated = kuma3::effective(policy.clone(), Admission::Apply);
        return (report, value, Some((policy, migrated)));
    };
    migrate_target_ref(&policy, spec, &mut report);
    migrate_matches(&policy, spec, opts, &mut report);
    report.status = if !report.undecided.is_empty() {
        Status::NeedsChoice
    } else if report.changes.is_empty() {
        Status::Unchanged
    } else {
        Status::Migrated
    };
    if report.status == Status::NeedsChoice {
        return (report, value, None);
    }
    let pair = parse_policy(source, value.clone())
        .ok()
        .map(|m| (policy, kuma3::effective(m, Admission::Apply)));
    (report, value, pair)
}

/// A Mesh resource that sets `networking.outbound.passthrough: false`: its name.
fn mesh_passthrough_off(value: &Value) -> Option<String> {
    let kind = value
        .get("kind")
        .or_else(|| value.get("type"))
        .and_then(Value::as_str)?;
    if kind != "Mesh" {
        return None;
    }
    let (name, networking) = match value.get("metadata") {
        Some(meta) => (
            meta.get("name"),
            value.get("spec").and_then(|s| s.get("networking")),
        ),
        None => (value.get("name"), value.get("networking")),
    };
    let off = networking
        .and_then(|n| n.get("outbound"))
        .and_then(|o| o.get("passthrough"))
        .and_then(Value::as_bool)
        == Some(false);
    off.then(|| {
        name.and_then(Value::as_str)
            .unwrap_or("default")
            .to_string()
    })
}

fn key(s: &str) -> Value {
    Value::String(s.to_string())
}

/// A mapping with `from` renamed `to` (in place of it) and `drop` left out.
fn rebuilt(map: &Mapping, rename: Option<(&str, &str)>, drop: &[&str]) -> Mapping {
    let mut out = Mapping::new();
    for (k, v) in map {
        let name = k.as_str().unwrap_or_default();
        if drop.contains(&name) {
            continue;
        }
        match rename {
            Some((from, to)) if name == from => {
                out.insert(key(to), v.clone());
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// `spec.targetRef`: MeshSubset tags to Dataplane labels, proxyTypes removed; a Dataplane by
/// name and a gateway selector are left to the operator.
fn migrate_target_ref(policy: &Policy, spec: &mut Mapping, report: &mut DocReport) {
    let Some(tr) = &policy.spec.target_ref else {
        return;
    };
    let Some(map) = spec
        .get(key("targetRef"))
        .and_then(Value::as_mapping)
        .cloned()
    else {
        return;
    };
    let mut map = map;
    let tags = tr.tags.clone().filter(|t| !t.is_empty());
    match tr.kind.as_str() {
        "MeshSubset" => {
            map.insert(key("kind"), key("Dataplane"));
            map = rebuilt(&map, Some(("tags", "labels")), &[]);
            let (did, meaning) = match &tags {
                Some(t) => (
                    format!(
                        "kind MeshSubset with tags {} became kind Dataplane with labels {}",
                        kuma3::map_text(t),
                        kuma3::map_text(t)
                    ),
                    Meaning::ChangedByKuma3 {
                        change: Kuma3Change::Labels { labels: t.clone() },
                    },
                ),
                None => (
                    "kind MeshSubset without tags became kind Dataplane without labels (every Dataplane of the mesh)".into(),
                    Meaning::Kept,
                ),
            };
            report.changes.push(Change {
                field: "spec.targetRef.kind".into(),
                did,
                why: "Kuma 3 has no MeshSubset; it selects Dataplanes by their labels".into(),
                meaning,
            });
        }
        "Dataplane" if tr.labels.is_none() && (tr.name.is_some() || tr.namespace.is_some()) => {
            let who = match (&tr.namespace, &tr.name) {
                (Some(ns), Some(n)) => format!("{ns}/{n}"),
                (None, Some(n)) => n.clone(),
                (Some(ns), None) => format!("namespace {ns}"),
                (None, None) => String::new(),
            };
            report.undecided.push(Undecided {
                field: "spec.targetRef.name".into(),
                why: format!(
                    "the policy selects the Dataplane {who} by name; Kuma 3 selects by labels only and drops name and namespace, which would select every Dataplane of the mesh"
                ),
                choose: "labels that select this Dataplane (e.g. its pod's app label): replace name and namespace with labels".into(),
            });
        }
        "MeshGateway" => {
            report.undecided.push(Undecided {
                field: "spec.targetRef.kind".into(),
                why: "a MeshGateway selector: Kuma 3 has no MeshGateway kind in a MeshPassthrough's targetRef (nor does Kuma 2.14's validator)".into(),
                choose: "kind: Dataplane with the labels of the gateway's Dataplanes".into(),
            });
        }
        _ => {}
    }
    if let Some(types) = &tr.proxy_types {
        let has = |t: &str| types.iter().any(|x| x == t);
        match (has("Sidecar"), has("Gateway")) {
            (true, false) => {
                map = rebuilt(&map, None, &["proxyTypes"]);
                report.changes.push(Change {
                    field: "spec.targetRef.proxyTypes".into(),
                    did: "removed [Sidecar]".into(),
                    why: "Kuma 3 has no proxyTypes".into(),
                    meaning: Meaning::ChangedByKuma3 {
                        change: Kuma3Change::ProxyTypes {
                            now_also: vec![ProxyType::Gateway],
                        },
                    },
                });
            }
            (false, true) => report.undecided.push(Undecided {
                field: "spec.targetRef.proxyTypes".into(),
                why: "the policy selects gateways only (proxyTypes [Gateway]); Kuma 3 has no proxyTypes and would apply it to every proxy".into(),
                choose: "kind: Dataplane with the labels of the gateways' Dataplanes, and remove proxyTypes".into(),
            }),
            _ => {
                map = rebuilt(&map, None, &["proxyTypes"]);
                report.changes.push(Change {
                    field: "spec.targetRef.proxyTypes".into(),
                    did: format!("removed [{}]", types.join(", ")),
                    why: "Kuma 3 has no proxyTypes; these are every proxy type, which is what Kuma 3 selects".into(),
                    meaning: Meaning::Kept,
                });
            }
        }
    }
    spec.insert(key("targetRef"), Value::Mapping(map));
}

/// An entry of the new appendMatch list: the input entry it comes from, its YAML, its model.
struct NewEntry {
    from: usize,
    value: Value,
    entry: Match,
}

/// `spec.default.appendMatch`: ports for exact Domain entries, CIDRs without host bits, and
/// the later match of each listener filter chain conflict dropped, as Kuma 3 drops it.
fn migrate_matches(policy: &Policy, spec: &mut Mapping, opts: &Options, report: &mut DocReport) {
    let Some(matches) = &policy.spec.default.append_match else {
        return;
    };
    let Some(items) = spec
        .get(key("default"))
        .and_then(|d| d.get("appendMatch"))
        .and_then(Value::as_sequence)
        .cloned()
    else {
        return;
    };
    let at = |i: usize, field: &str| format!("spec.default.appendMatch[{i}].{field}");
    let mut out: Vec<NewEntry> = Vec::new();
    for (i, (m, item)) in matches.iter().zip(items).enumerate() {
        if kuma3::needs_port(m) {
            match domain_ports(matches, i, opts) {
                Ok((ports, from_flag)) => {
                    let mut added = Vec::new();
                    let mut covered = Vec::new();
                    for &p in &ports {
                        let same = |o: &Match| {
                            o.kind == m.kind
                                && o.protocol == m.protocol
                                && o.port == Some(u32::from(p))
                                && normalize_name(&o.value) == normalize_name(&m.value)
                        };
                        let exists = matches.iter().any(same) || out.iter().any(|e| same(&e.entry));
                        if exists {
                            covered.push(p);
                            continue;
                        }
                        added.push(p);
                        out.push(NewEntry {
                            from: i,
                            value: with_port(&item, p),
                            entry: Match {
                                port: Some(u32::from(p)),
                                ..m.clone()
                            },
                        });
                    }
                    let list = |ps: &[u16]| {
                        ps.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let did = match (added.is_empty(), covered.is_empty()) {
                        (false, true) => format!("added port {}", list(&added)),
                        (false, false) => format!(
                            "added port {} (port {} already has this entry)",
                            list(&added),
                            list(&covered)
                        ),
                        _ => format!(
                            "removed: the entry already exists with port {}",
                            list(&covered)
                        ),
                    };
                    let source = if from_flag {
                        format!("--port-for {}", m.value)
                    } else {
                        format!("the port of this policy's other {} entries", m.protocol)
                    };
                    report.changes.push(Change {
                        field: at(i, "port"),
                        did: format!("{did} ({source})"),
                        why: format!(
                            "Kuma 3 needs a port for a domain: the sidecar resolves {} and connects on that port",
                            m.value
                        ),
                        meaning: Meaning::ChangedByKuma3 {
                            change: Kuma3Change::DomainPorts {
                                value: m.value.to_string(),
                                protocol: m.protocol.to_string(),
                                ports,
                            },
                        },
                    });
                }
                Err(u) => {
                    report.undecided.push(u);
                    out.push(NewEntry {
                        from: i,
                        value: item,
                        entry: m.clone(),
                    });
                }
            }
            continue;
        }
        if m.kind == "CIDR"
            && let Some(net) = hints::host_bits(&m.value)
        {
            report.changes.push(Change {
                field: at(i, "value"),
                did: format!("{} became {net}", m.value),
                why: "Kuma 3 refuses a CIDR with host bits set; Kuma 2 (and passthrough) enforced the network it lies in".into(),
                meaning: Meaning::Kept,
            });
            let mut item = item;
            if let Some(map) = item.as_mapping_mut() {
                map.insert(key("value"), key(&net.to_string()));
            }
            out.push(NewEntry {
                from: i,
                value: item,
                entry: Match {
                    value: net.to_string().into(),
                    ..m.clone()
                },
            });
            continue;
        }
        out.push(NewEntry {
            from: i,
            value: item,
            entry: m.clone(),
        });
    }
    // The listener filter chain conflicts Kuma 3 rejects: the later entry goes, as Kuma 3
    // drops it from a stored policy.
    let conf = Conf {
        append_match: Some(out.iter().map(|e| e.entry.clone()).collect()),
        ..Conf::default()
    };
    let mut drop = BTreeSet::new();
    for c in kuma3::conflicts(&conf, &BTreeSet::new()) {
        if !drop.insert(c.second) {
            continue;
        }
        let (first, second) = (&out[c.first], &out[c.second]);
        let (what, meaning) = match &c.kind {
            kuma3::ChainConflict::PortlessL7 => (
                format!(
                    "{} without a port beside {} without a port (appendMatch[{}]): Kuma 2 could not build this listener either",
                    second.entry.protocol, first.entry.protocol, first.from
                ),
                Meaning::Kept,
            ),
            kuma3::ChainConflict::SameAddress { net } => (
                format!(
                    "{} is {net}, as appendMatch[{}] ({}) is: the same destinations",
                    second.entry.value, first.from, first.entry.value
                ),
                Meaning::Kept,
            ),
            kuma3::ChainConflict::TcpAndMysql { net } => (
                format!(
                    "{} on {net} beside {} on it (appendMatch[{}]): passthrough allows the address and port either way",
                    second.entry.protocol, first.entry.protocol, first.from
                ),
                Meaning::Kept,
            ),
        };
        report.changes.push(Change {
            field: format!("spec.default.appendMatch[{}]", second.from),
            did: "removed".into(),
            why: format!(
                "it would build the same listener filter chain as appendMatch[{}], which Kuma 3 rejects; Kuma 3 keeps the first of the two: {what}",
                first.from
            ),
            meaning,
        });
    }
    let changed = out.len() != matches.len()
        || !drop.is_empty()
        || out.iter().zip(matches.iter()).any(|(n, m)| n.entry != *m);
    if !changed {
        return;
    }
    let list: Vec<Value> = out
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !drop.contains(i))
        .map(|(_, e)| e.value)
        .collect();
    if let Some(default) = spec.get_mut(key("default")).and_then(Value::as_mapping_mut) {
        default.insert(key("appendMatch"), Value::Sequence(list));
    }
}

/// An appendMatch item with `port: p`, placed after `value`.
fn with_port(item: &Value, p: u16) -> Value {
    let Some(map) = item.as_mapping() else {
        return item.clone();
    };
    let mut out = Mapping::new();
    for (k, v) in map {
        out.insert(k.clone(), v.clone());
        if k.as_str() == Some("value") {
            out.insert(key("port"), Value::Number(p.into()));
        }
    }
    if !out.contains_key(key("port")) {
        out.insert(key("port"), Value::Number(p.into()));
    }
    Value::Mapping(out)
}

/// The ports for exact Domain entry `i`, which has none: the operator's (`--port-for`), else
/// those of the policy's other entries of the same protocol (the ports Kuma 2 copied the
/// entry onto); `true` when they are the operator's.
fn domain_ports(
    matches: &[Match],
    i: usize,
    opts: &Options,
) -> Result<(Vec<u16>, bool), Undecided> {
    let m = &matches[i];
    let field = format!("spec.default.appendMatch[{i}].port");
    if let Some(ports) = opts.port_for.get(&normalize_name(&m.value)) {
        // A flag's port must not put a second L7 protocol on a port.
        if let Some((p, other)) = ports.iter().find_map(|&p| {
            matches
                .iter()
                .find(|o| {
                    o.port == Some(u32::from(p))
                        && ["http", "http2", "grpc"].contains(&o.protocol.as_str())
                        && ["http", "http2", "grpc"].contains(&m.protocol.as_str())
                        && o.protocol != m.protocol
                })
                .map(|o| (p, o.protocol.clone()))
        }) {
            return Err(Undecided {
                field,
                why: format!(
                    "--port-for {}={p}: port {p} already has protocol {other} in this policy, and one port takes one of http, http2, grpc",
                    m.value
                ),
                choose: format!("another port for {} over {}", m.value, m.protocol),
            });
        }
        return Ok((ports.iter().copied().collect(), true));
    }
    let ports: BTreeSet<u16> = matches
        .iter()
        .filter(|o| o.protocol == m.protocol)
        .filter_map(|o| o.port.and_then(|p| u16::try_from(p).ok()))
        .filter(|p| *p != 0)
        .collect();
    if ports.is_empty() {
        return Err(Undecided {
            field,
            why: format!(
                "{} over {} has no port, Kuma 3 needs one, and no other {} entry of the policy has one",
                m.value, m.protocol, m.protocol
            ),
            choose: format!(
                "the port {} is reached on: pass --port-for {}=PORT (repeat it for several ports), or write port: in the entry",
                m.value, m.value
            ),
        });
    }
    Ok((ports.into_iter().collect(), false))
}

/// Where Kuma 2 ranked a MeshSubset policy above a Dataplane policy and Kuma 3 ranks the two
/// the other way, and both set a different passthroughMode: the stronger one's mode no longer
/// wins.
fn priority_changes(
    files: &mut [FileReport],
    migrated: &[(usize, usize, Policy, Policy)],
    opts: &Options,
) {
    let v2 = SelectOptions::in_namespace(opts.system_namespace.clone());
    let v3 = SelectOptions {
        kuma: KumaVersion::V3,
        ..v2.clone()
    };
    for (fa, da, a2, a3) in migrated {
        for (_, _, b2, b3) in migrated {
            if a2.mesh != b2.mesh || a2.source == b2.source {
                continue;
            }
            let (Some(ma), Some(mb)) = (
                a2.spec.default.passthrough_mode.as_deref(),
                b2.spec.default.passthrough_mode.as_deref(),
            ) else {
                continue;
            };
            if ma == mb {
                continue;
            }
            let before = compare_priority(a2, b2, &v2);
            let after = compare_priority(a3, b3, &v3);
            if before == std::cmp::Ordering::Greater && after == std::cmp::Ordering::Less {
                files[*fa].documents[*da].changes.push(Change {
                    field: "spec.targetRef".into(),
                    did: format!("ranks below {} now", b2.qualified_name()),
                    why: format!(
                        "Kuma 3 has only Mesh and Dataplane policies, which it orders by origin, role and name; this policy's passthroughMode {ma} gives way to {}'s {mb}",
                        b2.qualified_name()
                    ),
                    meaning: Meaning::ChangedByKuma3 {
                        change: Kuma3Change::Priority {
                            other: b2.qualified_name(),
                        },
                    },
                });
            }
        }
    }
}

/// `validate --kuma-version 3` of the migrated policies that need no choice: each document
/// alone (the set is the operator's to validate with what else it holds).
fn validate_migrated(
    files: &[FileReport],
    migrated: &[(usize, usize, Policy, Policy)],
) -> Vec<String> {
    let mut out = Vec::new();
    for f in files {
        let Some(text) = &f.text else { continue };
        let Ok(docs) = super::load::parse_documents(&f.path, text) else {
            out.push(format!("{}: the migrated text does not parse", f.path));
            continue;
        };
        for d in docs {
            let super::load::Document::Policy(p) = d else {
                continue;
            };
            let wanted = migrated.iter().any(|(_, _, a, _)| {
                a.source.file == p.source.file && a.name == p.name && a.mesh == p.mesh
            });
            if !wanted {
                continue;
            }
            for v in validate_for(&p, KumaVersion::V3, Admission::Apply) {
                out.push(format!(
                    "{}{} {}: {}: {}",
                    if v.is_error() { "" } else { "warning: " },
                    f.path,
                    p.name,
                    v.field,
                    v.message
                ));
            }
        }
    }
    out
}
