//! A set of policy files, read and validated as one: what the CLI and the agent work from.
//!
//! This is the one validation path: `validate`, `explain`, `compile` and the agent's reload
//! all call [`PolicySet::load_with`], so a set `validate` accepts is exactly a set the agent
//! applies, and they refuse it with the same lines.

use std::{collections::BTreeMap, fmt, path::PathBuf};

use serde::Serialize;

use super::{
    Severity, Violation,
    cache::{FileCache, FileRead, Outcome},
    kuma::{Admission, KumaVersion},
    kuma3,
    load::{Document, LoadError},
    merge::{Conflict, SelectOptions},
    model::{Format, Policy, Source},
    overlap,
    validate::validate_for,
    workload::Workload,
};

/// Something about the input worth reporting; [`Problem::severity`] says whether it refuses
/// the set.
#[derive(Debug)]
pub enum Problem {
    /// A file that could not be read as YAML: nothing in it can be trusted.
    Unreadable(LoadError),
    /// Findings about one document: violations (it is refused) and warnings.
    Document {
        source: Source,
        name: String,
        violations: Vec<Violation>,
    },
    /// Two policies that some workload would merge into two L7 protocols on one port.
    Conflict {
        conflict: Box<Conflict>,
        /// The least workload both policies select.
        workload: Box<Workload>,
    },
    /// A file in a directory that was not read for its name.
    Skipped { path: String },
    /// A file with no document in it.
    Empty { path: String },
    /// Nothing at all was read from the paths given.
    NoDocuments { paths: Vec<String> },
}

/// What kind of finding a [`Finding`] is (the JSON `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    Unreadable,
    Violation,
    Conflict,
    Skipped,
    Empty,
    NoDocuments,
}

/// One finding, flat: a line of `validate`'s output, or an object of its JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub kind: FindingKind,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Kuma's message where the rule is Kuma's, byte for byte.
    pub message: String,
    /// passthrough's explanation: the value, what was expected, the fix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Finding {
    /// The `validate` line: `FILE#DOC NAME: FIELD: MESSAGE`, with `warning: ` in front of a
    /// warning. The hint is not part of it (see [`Finding::hint_line`]).
    pub fn line(&self) -> String {
        let prefix = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        let place = match (self.doc, &self.name) {
            (Some(doc), Some(name)) => {
                let name = if name.is_empty() { "<unnamed>" } else { name };
                format!("{}#{doc} {name}", self.file)
            }
            _ => self.file.clone(),
        };
        let place = if place.is_empty() {
            String::new()
        } else {
            format!("{place}: ")
        };
        match self.field.as_deref() {
            Some(field) if !field.is_empty() => {
                format!("{prefix}{place}{field}: {}", self.message)
            }
            _ => format!("{prefix}{place}{}", self.message),
        }
    }

    /// The hint, indented under its line.
    pub fn hint_line(&self) -> Option<String> {
        self.hint.as_ref().map(|h| format!("  hint: {h}"))
    }
}

impl Problem {
    /// An error refuses the set; a warning does not.
    pub fn severity(&self) -> Severity {
        match self {
            Problem::Unreadable(_) | Problem::Conflict { .. } => Severity::Error,
            Problem::Document { violations, .. } => violations
                .iter()
                .map(|v| v.severity)
                .max()
                .unwrap_or(Severity::Warning),
            Problem::Skipped { .. } | Problem::Empty { .. } | Problem::NoDocuments { .. } => {
                Severity::Warning
            }
        }
    }

    /// The document this is about, where there is one (a conflict: the policy bringing the
    /// second protocol).
    pub fn source(&self) -> Option<&Source> {
        match self {
            Problem::Document { source, .. } => Some(source),
            Problem::Conflict { conflict, .. } => Some(&conflict.second.policy.source),
            _ => None,
        }
    }

    /// Every finding, in order.
    pub fn findings(&self) -> Vec<Finding> {
        let plain = |severity, kind, file: &str, message: String, hint: Option<String>| Finding {
            severity,
            kind,
            file: file.to_string(),
            doc: None,
            name: None,
            field: None,
            message,
            hint,
        };
        match self {
            Problem::Unreadable(e) => {
                let path = unreadable_path(e);
                let message = e.to_string();
                let message = message
                    .strip_prefix(&format!("{path}: "))
                    .map_or(message.clone(), str::to_string);
                vec![plain(Severity::Error, FindingKind::Unreadable, path, message, None)]
            }
            Problem::Document {
                source,
                name,
                violations,
            } => violations
                .iter()
                .map(|v| Finding {
                    severity: v.severity,
                    kind: FindingKind::Violation,
                    file: source.file.clone(),
                    doc: Some(source.doc),
                    name: Some(name.clone()),
                    field: Some(v.field.clone()),
                    message: v.message.clone(),
                    hint: v.hint.clone(),
                })
                .collect(),
            Problem::Conflict { conflict, workload } => vec![Finding {
                severity: Severity::Error,
                kind: FindingKind::Conflict,
                file: conflict.second.policy.source.file.clone(),
                doc: Some(conflict.second.policy.source.doc),
                name: Some(conflict.second.policy.name.clone()),
                field: Some(format!(
                    "spec.default.appendMatch[{}].port",
                    conflict.second.index
                )),
                message: conflict.to_string(),
                hint: Some(format!(
                    "both policies select a workload with {workload} (and any workload with more tags or labels); narrow one targetRef, or move one entry to another port"
                )),
            }],
            Problem::Skipped { path } => vec![plain(
                Severity::Warning,
                FindingKind::Skipped,
                path,
                "not read: only files ending in .yaml, .yml or .json are read from a directory".into(),
                Some("rename it if it is a policy file, or move it out of the policy directory".into()),
            )],
            Problem::Empty { path } => vec![plain(
                Severity::Warning,
                FindingKind::Empty,
                path,
                "no documents in this file: it holds no policy".into(),
                None,
            )],
            Problem::NoDocuments { paths } => vec![plain(
                Severity::Warning,
                FindingKind::NoDocuments,
                "",
                format!("0 documents read from {}", paths.join(", ")),
                Some("no policy was read, so none applies: check the paths (directories are read for *.yaml, *.yml and *.json)".into()),
            )],
        }
    }

    /// One line per finding (the `validate` contract), hints left out.
    pub fn lines(&self) -> Vec<String> {
        self.findings().iter().map(Finding::line).collect()
    }
}

fn unreadable_path(e: &LoadError) -> &str {
    match e {
        LoadError::Io { path, .. }
        | LoadError::TooLarge { path, .. }
        | LoadError::TooDeep { path, .. }
        | LoadError::NotText { path }
        | LoadError::Yaml { path, .. } => path,
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

/// The outcome of reading a set of paths.
#[derive(Debug, Default)]
pub struct PolicySet {
    /// Every policy without an error, in file order.
    pub policies: Vec<Policy>,
    /// Errors and warnings, in the order found.
    pub problems: Vec<Problem>,
    /// Files read (or attempted).
    pub files: usize,
    /// Documents read, valid or not.
    pub documents: usize,
}

impl PolicySet {
    /// Reads and validates every policy under `paths`.
    pub fn load(paths: &[PathBuf], opts: &SelectOptions) -> Self {
        Self::load_with(paths, Vec::new(), opts)
    }

    /// Reads and validates every policy under `paths` and the `extra` documents (policies
    /// from another source, such as the Kubernetes API), as one set: each document, names
    /// defined twice, and the merge conflicts any workload could meet.
    ///
    /// Each document is validated for `opts.kuma`. Under Kuma 3 the files are judged as
    /// `opts.files` says and the `extra` documents as stored objects (they come from a store
    /// Kuma 3 admitted them to, or that held them before the upgrade); the policies kept are
    /// what Kuma 3 applies ([`kuma3::effective`]).
    pub fn load_with(paths: &[PathBuf], extra: Vec<Document>, opts: &SelectOptions) -> Self {
        Self::load_cached(paths, extra, opts, &mut FileCache::default())
    }

    /// [`PolicySet::load_with`], reading, parsing and validating only the files that
    /// changed since `cache` saw them ([`FileCache`]); the result is the same.
    pub fn load_cached(
        paths: &[PathBuf],
        extra: Vec<Document>,
        opts: &SelectOptions,
        cache: &mut FileCache,
    ) -> Self {
        let mut set = PolicySet::default();
        let (kuma, admission) = (opts.kuma, opts.files);
        let (files, skipped) = cache.load(paths, (kuma, admission, opts.max_file_bytes), |docs| {
            let mut one = PolicySet::default();
            one.add(docs, kuma, admission);
            FileRead {
                documents: one.documents,
                policies: one.policies,
                findings: one
                    .problems
                    .into_iter()
                    .filter_map(|p| match p {
                        Problem::Document {
                            source,
                            name,
                            violations,
                        } => Some((source, name, violations)),
                        _ => None,
                    })
                    .collect(),
            }
        });
        for (path, outcome) in files {
            set.files += 1;
            match outcome {
                Outcome::Failed(e) => set.problems.push(Problem::Unreadable(e)),
                Outcome::Read(read) if read.documents == 0 => {
                    set.problems.push(Problem::Empty { path })
                }
                Outcome::Read(read) => {
                    set.documents += read.documents;
                    set.policies.extend(read.policies.iter().cloned());
                    set.problems.extend(read.findings.iter().cloned().map(
                        |(source, name, violations)| Problem::Document {
                            source,
                            name,
                            violations,
                        },
                    ));
                }
            }
        }
        for path in skipped {
            set.problems.push(Problem::Skipped {
                path: path.display().to_string(),
            });
        }
        set.add(extra, opts.kuma, Admission::Stored);
        if set.documents == 0 && !paths.is_empty() && !set.has_unreadable() {
            set.problems.push(Problem::NoDocuments {
                paths: paths.iter().map(|p| p.display().to_string()).collect(),
            });
        }
        set.reject_duplicates();
        set.reject_conflicts(opts);
        set
    }

    fn add(&mut self, docs: Vec<Document>, kuma: KumaVersion, admission: Admission) {
        for doc in docs {
            self.documents += 1;
            match doc {
                Document::Invalid(e) => self.problems.push(Problem::Document {
                    source: e.source,
                    name: e.name.unwrap_or_default(),
                    violations: vec![Violation::new(e.field, e.message)],
                }),
                Document::Policy(p) => {
                    let violations = validate_for(&p, kuma, admission);
                    let refused = violations.iter().any(Violation::is_error);
                    if !violations.is_empty() {
                        self.problems.push(Problem::Document {
                            source: p.source.clone(),
                            name: p.name.clone(),
                            violations,
                        });
                    }
                    if !refused {
                        self.policies.push(match kuma {
                            KumaVersion::V2 => *p,
                            KumaVersion::V3 => kuma3::effective(*p, admission),
                        });
                    }
                }
            }
        }
    }

    /// Two documents defining the same policy (same mesh, namespace and name) would silently
    /// replace each other in Kuma's store; here both are refused.
    fn reject_duplicates(&mut self) {
        let mut by_key: BTreeMap<(String, Option<String>, String), Vec<usize>> = BTreeMap::new();
        for (i, p) in self.policies.iter().enumerate() {
            by_key
                .entry((p.mesh.clone(), p.namespace.clone(), p.name.clone()))
                .or_default()
                .push(i);
        }
        let mut dup: Vec<usize> = by_key
            .into_values()
            .filter(|v| v.len() > 1)
            .flatten()
            .collect();
        if dup.is_empty() {
            return;
        }
        dup.sort_unstable();
        for &i in dup.iter().rev() {
            let p = self.policies.remove(i);
            let field = match p.format {
                Format::Kubernetes => "metadata.name",
                Format::Universal => "name",
            };
            self.problems.push(Problem::Document {
                source: p.source.clone(),
                name: p.name.clone(),
                violations: vec![Violation::new(
                    field,
                    format!(
                        "policy {} is defined more than once in mesh {}; give each policy a unique name",
                        p.qualified_name(),
                        p.mesh
                    ),
                )],
            });
        }
    }

    /// Merge conflicts between valid policies, for any workload they could both select.
    fn reject_conflicts(&mut self, opts: &SelectOptions) {
        for (conflict, workload) in overlap::conflicts(&self.policies, opts) {
            self.problems.push(Problem::Conflict {
                conflict: Box::new(conflict),
                workload: Box::new(workload),
            });
        }
    }

    /// Whether anything refuses the set.
    pub fn has_errors(&self) -> bool {
        self.problems
            .iter()
            .any(|p| p.severity() == Severity::Error)
    }

    /// Whether any file could not be read at all.
    pub fn has_unreadable(&self) -> bool {
        self.problems
            .iter()
            .any(|p| matches!(p, Problem::Unreadable(_)))
    }

    /// Every finding, errors and warnings, in order.
    pub fn findings(&self) -> Vec<Finding> {
        self.problems.iter().flat_map(Problem::findings).collect()
    }

    /// The findings that refuse the set.
    pub fn errors(&self) -> Vec<Finding> {
        self.findings()
            .into_iter()
            .filter(|f| f.severity == Severity::Error)
            .collect()
    }

    /// The findings that do not.
    pub fn warnings(&self) -> Vec<Finding> {
        self.findings()
            .into_iter()
            .filter(|f| f.severity == Severity::Warning)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn directory_of_mixed_files_keeps_the_valid_and_reports_each_problem() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path();
        fs::write(
            p.join("a-good.yaml"),
            "type: MeshPassthrough\nname: good\nspec:\n  default:\n    passthroughMode: None\n",
        )
        .expect("w");
        fs::write(
            p.join("b-bad.yaml"),
            "type: MeshPassthrough\nname: bad\nspec:\n  default:\n    appendMatch:\n      - {type: IP, value: nope, port: 80}\n",
        )
        .expect("w");
        fs::write(p.join("c-broken.yaml"), "type: [unclosed\n").expect("w");
        fs::write(p.join("d-junk.yaml"), [0u8, 159, 146, 150]).expect("w");
        let set = PolicySet::load(&[p.to_path_buf()], &SelectOptions::default());
        assert_eq!(set.files, 4);
        assert_eq!(set.policies.len(), 1);
        assert_eq!(set.policies[0].name, "good");
        let lines: Vec<String> = set.problems.iter().flat_map(Problem::lines).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].ends_with(
            "b-bad.yaml#0 bad: spec.default.appendMatch[0].value: provided IP has incorrect value"
        ));
        assert!(
            lines[1].contains("c-broken.yaml: not valid YAML"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains("d-junk.yaml: not a text file"),
            "{}",
            lines[2]
        );
        assert!(set.has_unreadable());
    }

    #[test]
    fn duplicate_policy_names_are_refused_both() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("p.yaml");
        fs::write(
            &f,
            "type: MeshPassthrough\nname: same\n---\ntype: MeshPassthrough\nname: same\n---\ntype: MeshPassthrough\nname: same\nmesh: other\n",
        )
        .expect("w");
        let set = PolicySet::load(&[f], &SelectOptions::default());
        assert_eq!(set.policies.len(), 1);
        assert_eq!(set.policies[0].mesh, "other");
        assert_eq!(set.problems.len(), 2);
        assert!(set.problems[0].lines()[0].contains("defined more than once"));
    }

    fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).expect("write");
        p
    }

    fn kinds(set: &PolicySet) -> Vec<(Severity, FindingKind)> {
        set.findings()
            .iter()
            .map(|f| (f.severity, f.kind))
            .collect()
    }

    #[test]
    fn two_l7_protocols_on_a_port_across_files_refuse_the_set() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = write(
            dir.path(),
            "a.yaml",
            "type: MeshPassthrough\nname: a\nspec: {default: {appendMatch: [{type: Domain, value: a.com, port: 8080, protocol: http}]}}\n",
        );
        let b = write(
            dir.path(),
            "b.yaml",
            "type: MeshPassthrough\nname: b\nspec: {default: {appendMatch: [{type: Domain, value: b.com, port: 8080, protocol: grpc}]}}\n",
        );
        let set = PolicySet::load(&[a, b], &SelectOptions::default());
        assert!(set.has_errors());
        assert_eq!(kinds(&set), [(Severity::Error, FindingKind::Conflict)]);
        let f = &set.findings()[0];
        // Reported at the entry of the stronger policy, which brings the second protocol.
        assert!(f.line().contains("a.yaml#0 a: spec.default.appendMatch[0].port: you cannot configure http, http2, grpc on the same port: port 8080"), "{}", f.line());
        assert!(
            f.hint
                .as_deref()
                .is_some_and(|h| h.contains("mesh=default")),
            "{f:?}"
        );
    }

    #[test]
    fn skipped_empty_and_nothing_read_are_warnings() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "notes.txt", "type: MeshPassthrough\nname: a\n");
        write(dir.path(), "empty.yaml", "# nothing yet\n");
        write(dir.path(), ".hidden", "x");
        let set = PolicySet::load(&[dir.path().to_path_buf()], &SelectOptions::default());
        assert!(!set.has_errors());
        assert_eq!(
            kinds(&set),
            [
                (Severity::Warning, FindingKind::Empty),
                (Severity::Warning, FindingKind::Skipped),
                (Severity::Warning, FindingKind::NoDocuments),
            ]
        );
        let lines: Vec<String> = set.findings().iter().map(Finding::line).collect();
        assert!(
            lines[1].starts_with("warning: ") && lines[1].contains("notes.txt: not read"),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with("warning: 0 documents read from "),
            "{lines:?}"
        );
    }

    #[test]
    fn under_kuma_3_files_are_applied_and_kubernetes_objects_are_stored() {
        use crate::policy::{kuma::KumaVersion, load::parse_documents};
        let text = "type: MeshPassthrough\nname: p\nspec:\n  targetRef: {kind: Dataplane, name: web}\n  default:\n    appendMatch:\n      - {type: Domain, value: a.example.com, protocol: tls}\n      - {type: Domain, value: b.example.com, protocol: tls, port: 443}\n";
        let dir = tempfile::tempdir().expect("tmp");
        let f = write(dir.path(), "p.yaml", text);
        let v3 = SelectOptions {
            kuma: KumaVersion::V3,
            ..SelectOptions::default()
        };
        // A file is what the operator applies: refused.
        let set = PolicySet::load(std::slice::from_ref(&f), &v3);
        assert!(set.has_errors());
        assert!(set.policies.is_empty());
        // The same object from the Kubernetes API was stored before the upgrade: applied as
        // Kuma 3 applies it, with warnings.
        let docs = parse_documents("kubernetes:kuma-system/p", text).expect("yaml");
        let set = PolicySet::load_with(&[], docs, &v3);
        assert!(!set.has_errors(), "{:?}", set.findings());
        assert_eq!(set.warnings().len(), 2, "{:?}", set.warnings());
        let p = &set.policies[0];
        assert_eq!(
            p.spec.default.dropped,
            std::collections::BTreeSet::from([0])
        );
        assert_eq!(p.target_ref().name, None, "Kuma 3 drops the name");
        // So does --stored for files.
        let stored = SelectOptions {
            files: crate::policy::kuma::Admission::Stored,
            ..v3
        };
        assert!(!PolicySet::load(std::slice::from_ref(&f), &stored).has_errors());
        // Kuma 2 takes the policy as it is.
        let set = PolicySet::load(&[f], &SelectOptions::default());
        assert!(set.findings().is_empty(), "{:?}", set.findings());
        assert_eq!(set.policies[0].target_ref().name.as_deref(), Some("web"));
    }

    #[test]
    fn under_kuma_3_http_on_an_ip_and_grpc_on_a_domain_share_a_port_across_policies() {
        use crate::policy::kuma::KumaVersion;
        let dir = tempfile::tempdir().expect("tmp");
        let a = write(
            dir.path(),
            "a.yaml",
            "type: MeshPassthrough\nname: a\nspec: {default: {appendMatch: [{type: IP, value: 1.1.1.1, port: 8080, protocol: http}]}}\n",
        );
        let b = write(
            dir.path(),
            "b.yaml",
            "type: MeshPassthrough\nname: b\nspec: {default: {appendMatch: [{type: Domain, value: b.com, port: 8080, protocol: grpc}]}}\n",
        );
        let c = write(
            dir.path(),
            "c.yaml",
            "type: MeshPassthrough\nname: c\nspec: {default: {appendMatch: [{type: Domain, value: c.com, port: 8080, protocol: http}]}}\n",
        );
        let v3 = SelectOptions {
            kuma: KumaVersion::V3,
            ..SelectOptions::default()
        };
        assert!(PolicySet::load(&[a.clone(), b.clone()], &SelectOptions::default()).has_errors());
        assert!(!PolicySet::load(&[a, b.clone()], &v3).has_errors());
        // Two domains' chains on one port still conflict.
        let set = PolicySet::load(&[b, c], &v3);
        assert_eq!(kinds(&set), [(Severity::Error, FindingKind::Conflict)]);
    }

    #[test]
    fn a_policy_with_only_warnings_is_applied_and_reported() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = write(
            dir.path(),
            "p.yaml",
            "type: MeshPassthrough\nname: p\nspec: {default: {appendMatch: [{type: CIDR, value: 10.1.2.3/16}]}}\n",
        );
        let set = PolicySet::load(&[f], &SelectOptions::default());
        assert_eq!(set.policies.len(), 1);
        assert!(!set.has_errors());
        let w = set.warnings();
        assert_eq!(w.len(), 1);
        assert_eq!(
            w[0].field.as_deref(),
            Some("spec.default.appendMatch[0].value")
        );
        assert!(
            w[0].message.contains("enforced as 10.1.0.0/16"),
            "{}",
            w[0].message
        );
        assert_eq!(w[0].hint.as_deref(), Some("write 10.1.0.0/16"));
    }
}
