//! The fast way to read a policy file: each document deserialized straight from libyaml's
//! events into the policy types ([`stream`]), in one pass that also bounds the nesting, with
//! no intermediate `serde_yaml::Value` tree (which costs a dozen allocations per
//! `appendMatch` entry and is most of a large allow-list's load time).
//!
//! It only ever answers for documents that are well formed: anything unusual (a syntax error,
//! a wrong type, an unknown field, a duplicate key, a `null` where a section belongs, a wrong
//! `apiVersion` or `kind`) makes it give up on the whole file, and the reader takes the
//! [`Value`](serde_yaml::Value) path, which produces the precise error. So both paths give
//! the same [`Policy`] for every file this one accepts; a test checks it on every policy file
//! of the repository.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::{API_VERSION, Document, KIND, mesh_of, stream};
use crate::policy::{
    model::{Format, Policy, ScalarText, Source, Spec, UniqueMap},
    prescan::MAX_DEPTH,
};

/// A top-level field: not written, written as `null`, or given.
#[derive(Default)]
enum Slot<T> {
    #[default]
    Absent,
    Null,
    Given(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Slot<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Option::<T>::deserialize(d)?.map_or(Slot::Null, Slot::Given))
    }
}

impl<T> Slot<T> {
    fn is_absent(&self) -> bool {
        matches!(self, Self::Absent)
    }
}

fn texts(map: UniqueMap<ScalarText>) -> BTreeMap<String, String> {
    map.0.into_iter().map(|(k, v)| (k, v.into())).collect()
}

/// `metadata`: the fields of [`ObjectMeta`](super::model::ObjectMeta), its maps checked for
/// duplicate and non-string keys.
#[expect(dead_code, reason = "accepted as ObjectMeta accepts them; never used")]
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    name: Slot<ScalarText>,
    #[serde(default)]
    namespace: Slot<ScalarText>,
    #[serde(default)]
    labels: Slot<UniqueMap<ScalarText>>,
    #[serde(default)]
    annotations: Slot<UniqueMap<serde_yaml::Value>>,
    #[serde(default)]
    generate_name: Option<serde_yaml::Value>,
    #[serde(default)]
    uid: Option<serde_yaml::Value>,
    #[serde(default)]
    resource_version: Option<serde_yaml::Value>,
    #[serde(default)]
    generation: Option<serde_yaml::Value>,
    #[serde(default)]
    creation_timestamp: Option<serde_yaml::Value>,
    #[serde(default)]
    deletion_timestamp: Option<serde_yaml::Value>,
    #[serde(default)]
    deletion_grace_period_seconds: Option<serde_yaml::Value>,
    #[serde(default)]
    managed_fields: Option<serde_yaml::Value>,
    #[serde(default)]
    owner_references: Option<serde_yaml::Value>,
    #[serde(default)]
    finalizers: Option<serde_yaml::Value>,
    #[serde(default)]
    self_link: Option<serde_yaml::Value>,
}

/// Both resource forms at once; which one a document used is decided after reading it, by
/// the same rule as the `Value` reader.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AnyDoc {
    #[serde(default)]
    api_version: Slot<ScalarText>,
    #[serde(default)]
    kind: Slot<ScalarText>,
    #[serde(default)]
    metadata: Slot<Meta>,
    #[serde(default)]
    spec: Slot<Spec>,
    /// Kubernetes may add an empty status; MeshPassthrough defines none.
    #[serde(default)]
    status: Slot<serde_yaml::Value>,
    #[serde(rename = "type", default)]
    universal_type: Slot<ScalarText>,
    #[serde(default)]
    name: Slot<ScalarText>,
    #[serde(default)]
    mesh: Slot<ScalarText>,
    #[serde(default)]
    labels: Slot<UniqueMap<ScalarText>>,
    #[serde(default)]
    creation_time: Slot<serde_yaml::Value>,
    #[serde(default)]
    modification_time: Slot<serde_yaml::Value>,
}

/// The documents of `text`, or `None` when the `Value` reader must look at it.
pub fn parse_documents(file: &str, text: &str) -> Option<Vec<Document>> {
    let mut out = Vec::new();
    let mut doc = 0;
    stream::for_each_document::<AnyDoc>(text, MAX_DEPTH, |any| {
        let source = Source::file(file.to_string(), doc);
        doc += 1;
        // An empty document holds nothing to apply.
        if let Some(any) = any {
            out.push(Document::Policy(Box::new(policy(source, any)?)));
        }
        Some(())
    })?;
    Some(out)
}

fn given<T>(slot: Slot<T>) -> Option<Option<T>> {
    match slot {
        Slot::Absent => Some(None),
        Slot::Null => None,
        Slot::Given(v) => Some(Some(v)),
    }
}

fn policy(source: Source, doc: AnyDoc) -> Option<Policy> {
    let spec = given(doc.spec)?.unwrap_or_default();
    let kubernetes =
        !doc.api_version.is_absent() || !doc.kind.is_absent() || !doc.metadata.is_absent();
    if kubernetes {
        let universal_only = !doc.universal_type.is_absent()
            || !doc.name.is_absent()
            || !doc.mesh.is_absent()
            || !doc.labels.is_absent()
            || !doc.creation_time.is_absent()
            || !doc.modification_time.is_absent();
        if universal_only {
            return None;
        }
        let api_version: String = given(doc.api_version)??.into();
        let kind: String = given(doc.kind)??.into();
        if api_version != API_VERSION || kind != KIND {
            return None;
        }
        let meta = given(doc.metadata)?;
        let (name, namespace, labels) = match meta {
            None => (None, None, BTreeMap::new()),
            Some(m) => {
                let _ = given(m.annotations)?;
                (
                    given(m.name)?.map(String::from),
                    given(m.namespace)?.map(String::from),
                    given(m.labels)?.map(texts).unwrap_or_default(),
                )
            }
        };
        Some(Policy {
            source,
            format: Format::Kubernetes,
            name: name.unwrap_or_default(),
            namespace,
            mesh: mesh_of(&labels, None),
            labels,
            spec,
        })
    } else {
        // The Universal form has no status.
        if !doc.status.is_absent() {
            return None;
        }
        let kind: String = given(doc.universal_type)??.into();
        if kind != KIND {
            return None;
        }
        let labels = given(doc.labels)?.map(texts).unwrap_or_default();
        Some(Policy {
            source,
            format: Format::Universal,
            name: given(doc.name)?.map(String::from).unwrap_or_default(),
            namespace: None,
            mesh: mesh_of(&labels, given(doc.mesh)?.map(String::from)),
            labels,
            spec,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::parse_documents;
    use crate::policy::load::parse_documents_via_values;

    fn both(text: &str) -> (Option<String>, String) {
        let fast = parse_documents("t.yaml", text).map(|d| format!("{d:?}"));
        let slow = format!("{:?}", parse_documents_via_values("t.yaml", text));
        (fast, slow)
    }

    fn policy_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                policy_files(&path, out);
            } else if path
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_policy_file_of_the_repository_reads_the_same_both_ways() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for dir in ["examples", "passthrough-user/tests/data", "deploy"] {
            policy_files(&root.join(dir), &mut files);
        }
        assert!(files.len() > 10, "found only {} files", files.len());
        let mut fast = 0;
        let mut variants = 0;
        for file in &files {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            let name = file.display().to_string();
            if let Some(docs) = parse_documents(&name, &text) {
                fast += 1;
                let slow =
                    parse_documents_via_values(&name, &text).expect("the Value path reads it");
                assert_eq!(format!("{docs:?}"), format!("{slow:?}"), "{name}");
            }
            // Every file with one line left out, and with one line written twice (which
            // makes duplicate keys, missing fields, wrong nesting): whenever the fast path
            // answers, it answers as the Value path does.
            let lines: Vec<&str> = text.lines().collect();
            for i in 0..lines.len() {
                let mut dropped = lines.clone();
                dropped.remove(i);
                let mut doubled = lines.clone();
                doubled.insert(i, lines[i]);
                for variant in [dropped.join("\n"), doubled.join("\n")] {
                    let (f, slow) = both(&variant);
                    if let Some(f) = f {
                        variants += 1;
                        assert_eq!(format!("Ok({f})"), slow, "{name} variant:\n{variant}");
                    }
                }
            }
        }
        assert!(
            variants > 100,
            "only {variants} variants took the fast path"
        );
        // The examples are valid policies: each takes the fast path.
        let examples = files
            .iter()
            .filter(|f| f.starts_with(root.join("examples")))
            .count();
        assert!(
            fast >= examples,
            "fast path read {fast} of {} files",
            files.len()
        );
    }

    #[test]
    fn anything_unusual_is_left_to_the_value_path() {
        let head = "apiVersion: kuma.io/v1alpha1\nkind: MeshPassthrough\n";
        for text in [
            // A number key, a duplicate label, a duplicate annotation.
            format!("{head}metadata:\n  name: a\n  labels:\n    1: x\n"),
            format!("{head}metadata:\n  name: a\n  labels:\n    a: x\n    a: y\n"),
            format!("{head}metadata:\n  name: a\n  annotations:\n    a: x\n    a: y\n"),
            // Sections written as null.
            format!("{head}metadata: null\n"),
            format!("{head}metadata:\n  name: a\nspec: ~\n"),
            // Wrong resource, unknown field, mixed forms, merge keys, wrong types.
            "apiVersion: kuma.io/v1beta1\nkind: MeshPassthrough\n".to_string(),
            format!("{head}metadata:\n  name: a\nspce: {{}}\n"),
            format!("{head}type: MeshPassthrough\n"),
            "type: MeshPassthrough\nname: u\nstatus: {}\n".to_string(),
            format!("{head}metadata:\n  <<: {{name: a}}\n"),
            format!(
                "{head}metadata:\n  name: a\nspec:\n  default:\n    appendMatch:\n    - {{type: IP, value: 1.2.3.4, port: \"443\"}}\n"
            ),
            "type: MeshPassthrough\nname: a\nmesh: [x]\n".to_string(),
            "- a\n- b\n".to_string(),
            "a: [\n".to_string(),
        ] {
            let (fast, _) = both(&text);
            assert!(fast.is_none(), "{text}: the fast path answered {fast:?}");
        }
    }

    #[test]
    fn empty_documents_numbers_and_json_read_the_same() {
        for text in [
            "---\n---\napiVersion: kuma.io/v1alpha1\nkind: MeshPassthrough\nmetadata:\n  name: a\n  labels:\n    kuma.io/mesh: m\nspec:\n  targetRef:\n    kind: MeshSubset\n    tags: {kuma.io/mesh: m}\n  default:\n    passthroughMode: Matched\n    appendMatch:\n    - {type: IP, value: 1.2.3.4, port: 443, protocol: tcp}\n    - type: Domain\n      value: 15\n---\n",
            "type: MeshPassthrough\nname: u\nmesh: m\nlabels: {a: 'true', b: 2, c: true}\nspec:\n  default:\n    passthroughMode: None\n",
            r#"{"apiVersion": "kuma.io/v1alpha1", "kind": "MeshPassthrough", "metadata": {"name": "j", "namespace": "kuma-system"}, "spec": {"default": {"appendMatch": [{"type": "CIDR", "value": "10.0.0.0/8"}]}}}"#,
        ] {
            let (fast, slow) = both(text);
            let fast = fast.unwrap_or_else(|| panic!("{text}: left to the Value path"));
            assert_eq!(format!("Ok({fast})"), slow, "{text}");
        }
    }

    #[test]
    fn anchors_floats_and_deep_nesting_read_the_same_through_the_value_path() {
        for text in [
            "apiVersion: kuma.io/v1alpha1\nkind: MeshPassthrough\nmetadata:\n  name: a\n  labels: &l\n    kuma.io/mesh: m\nspec:\n  targetRef:\n    kind: MeshSubset\n    tags: *l\n",
            "type: MeshPassthrough\nname: u\nspec:\n  default:\n    appendMatch:\n    - {type: Domain, value: 1.5}\n",
        ] {
            let (fast, slow) = both(text);
            assert!(fast.is_none(), "{text}: the fast path answered {fast:?}");
            assert!(slow.starts_with("Ok("), "{text}: {slow}");
        }
        let deep = format!(
            "type: MeshPassthrough\nname: u\nx: {}\n",
            "[".repeat(100_000)
        );
        assert!(parse_documents("t.yaml", &deep).is_none());
        assert!(matches!(
            crate::policy::load::parse_documents("t.yaml", &deep),
            Err(crate::policy::load::LoadError::TooDeep { line: 3, .. })
        ));
    }
}
