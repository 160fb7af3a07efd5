//! A set of policy files, read and validated as one: what the CLI and the agent work from.

use std::{collections::BTreeMap, fmt, path::PathBuf};

use serde::Serialize;

use super::{
    Violation,
    load::{Document, LoadError, load_paths},
    model::{Policy, Source},
    validate::validate,
};

/// Something wrong with the input.
#[derive(Debug)]
pub enum Problem {
    /// A file that could not be read as YAML: nothing in it can be trusted.
    Unreadable(LoadError),
    /// A document that is not a valid MeshPassthrough.
    Invalid {
        source: Source,
        name: String,
        violations: Vec<Violation>,
    },
}

impl Problem {
    /// One line per violation, `FILE#DOC NAME: FIELD: MESSAGE` (the `validate` contract).
    pub fn lines(&self) -> Vec<String> {
        match self {
            Problem::Unreadable(e) => vec![e.to_string()],
            Problem::Invalid {
                source,
                name,
                violations,
            } => violations
                .iter()
                .map(|v| {
                    let name = if name.is_empty() { "<unnamed>" } else { name };
                    if v.field.is_empty() {
                        format!("{source} {name}: {}", v.message)
                    } else {
                        format!("{source} {name}: {}: {}", v.field, v.message)
                    }
                })
                .collect(),
        }
    }

    /// The same, as JSON objects.
    pub fn records(&self) -> Vec<ProblemRecord> {
        match self {
            Problem::Unreadable(e) => vec![ProblemRecord {
                kind: "unreadable",
                file: unreadable_path(e).to_string(),
                doc: None,
                name: None,
                field: None,
                message: e.to_string(),
            }],
            Problem::Invalid {
                source,
                name,
                violations,
            } => violations
                .iter()
                .map(|v| ProblemRecord {
                    kind: "violation",
                    file: source.file.clone(),
                    doc: Some(source.doc),
                    name: Some(name.clone()),
                    field: Some(v.field.clone()),
                    message: v.message.clone(),
                })
                .collect(),
        }
    }
}

fn unreadable_path(e: &LoadError) -> &str {
    match e {
        LoadError::Io { path, .. }
        | LoadError::TooLarge { path, .. }
        | LoadError::NotText { path }
        | LoadError::Yaml { path, .. } => path,
    }
}

/// A problem as `-o json` prints it.
#[derive(Debug, Serialize)]
pub struct ProblemRecord {
    pub kind: &'static str,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

/// The outcome of reading a set of paths.
#[derive(Debug, Default)]
pub struct PolicySet {
    /// Every valid policy, in file order.
    pub policies: Vec<Policy>,
    /// Everything that was not.
    pub problems: Vec<Problem>,
    /// Files read (or attempted).
    pub files: usize,
}

impl PolicySet {
    /// Reads and validates every policy under `paths`.
    pub fn load(paths: &[PathBuf]) -> Self {
        Self::load_with(paths, Vec::new())
    }

    /// Reads and validates every policy under `paths` and the `extra` documents (policies
    /// from another source, such as the Kubernetes API), as one set.
    pub fn load_with(paths: &[PathBuf], extra: Vec<Document>) -> Self {
        let mut set = PolicySet::default();
        for file in load_paths(paths) {
            set.files += 1;
            match file.outcome {
                Err(e) => set.problems.push(Problem::Unreadable(e)),
                Ok(docs) => set.add(docs),
            }
        }
        set.add(extra);
        set.reject_duplicates();
        set
    }

    fn add(&mut self, docs: Vec<Document>) {
        for doc in docs {
            match doc {
                Document::Invalid(e) => self.problems.push(Problem::Invalid {
                    source: e.source,
                    name: e.name.unwrap_or_default(),
                    violations: vec![Violation::new(e.field, e.message)],
                }),
                Document::Policy(p) => {
                    let violations = validate(&p);
                    if violations.is_empty() {
                        self.policies.push(*p);
                    } else {
                        self.problems.push(Problem::Invalid {
                            source: p.source.clone(),
                            name: p.name.clone(),
                            violations,
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
                super::model::Format::Kubernetes => "metadata.name",
                super::model::Format::Universal => "name",
            };
            self.problems.push(Problem::Invalid {
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

    /// Whether any file could not be read at all.
    pub fn has_unreadable(&self) -> bool {
        self.problems
            .iter()
            .any(|p| matches!(p, Problem::Unreadable(_)))
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
        let set = PolicySet::load(&[p.to_path_buf()]);
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
        let set = PolicySet::load(&[f]);
        assert_eq!(set.policies.len(), 1);
        assert_eq!(set.policies[0].mesh, "other");
        assert_eq!(set.problems.len(), 2);
        assert!(set.problems[0].lines()[0].contains("defined more than once"));
    }
}
