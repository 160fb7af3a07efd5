//! Reading policy files: single files, multi-document files and directories, in Kuma's
//! Kubernetes or Universal form.
//!
//! Two kinds of failure are kept apart, because operators act on them differently:
//! a file that cannot be read as YAML at all ([`LoadError`], the CLI's exit code 2), and a
//! YAML document that is not a well-formed MeshPassthrough ([`DocError`], reported like a
//! validation violation, exit code 1).

use std::{
    collections::BTreeMap,
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use thiserror::Error;

mod direct;
mod stream;

use super::{
    describe,
    model::{DEFAULT_MESH, Format, KubernetesDoc, Policy, Source, Spec, UniversalDoc, labels},
    prescan::{self, MAX_DEPTH},
};

/// Largest policy file read unless the config (`maxPolicyFileBytes`) or the CLI
/// (`--max-policy-file-bytes`) says otherwise: room for a generated allow-list of about half
/// a million entries in one file (120 000 IP entries take 10 MB), while a runaway file is
/// still refused before it is read whole.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 << 20;

/// File name endings read when a directory is given.
pub const POLICY_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

pub const API_VERSION: &str = "kuma.io/v1alpha1";
pub const KIND: &str = "MeshPassthrough";

/// A file that could not be read as YAML.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: file is {size} bytes, larger than the {limit}-byte limit for policy files; split it, or raise maxPolicyFileBytes in the agent config (--max-policy-file-bytes for the CLI)"
    )]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error(
        "{path}: line {line}: mappings and sequences nest deeper than {bound} levels; a MeshPassthrough nests about six: this is not a policy file"
    )]
    TooDeep {
        path: String,
        line: u64,
        bound: usize,
    },
    #[error("{path}: not a text file (it is not valid UTF-8); give YAML or JSON policy files")]
    NotText { path: String },
    #[error("{path}: not valid YAML: {message}")]
    Yaml { path: String, message: String },
}

/// A YAML document that is not a well-formed MeshPassthrough: wrong kind, unknown field,
/// wrong type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocError {
    pub source: Source,
    /// The policy's name, where the document got far enough to have one.
    pub name: Option<String>,
    pub field: String,
    pub message: String,
}

/// What one document of a file turned out to be.
#[derive(Clone, Debug)]
pub enum Document {
    Policy(Box<Policy>),
    Invalid(DocError),
}

/// The documents of one file, or why the file could not be read.
#[derive(Debug)]
pub struct FileResult {
    pub path: String,
    pub outcome: Result<Vec<Document>, LoadError>,
}

/// Reads every policy file named by `paths`: files as given, directories recursively for
/// files ending in `.yaml`, `.yml` or `.json` (names starting with `.` are skipped, which
/// also skips the `..data` links of Kubernetes ConfigMap volumes). Results are in path order.
/// A file larger than `max_bytes` is refused unread.
pub fn load_paths(paths: &[PathBuf], max_bytes: u64) -> Vec<FileResult> {
    load_paths_reporting(paths, max_bytes).0
}

/// [`load_paths`], and the files of the directories that were left out for their name
/// (hidden files are not counted: they are never policies).
pub fn load_paths_reporting(paths: &[PathBuf], max_bytes: u64) -> (Vec<FileResult>, Vec<PathBuf>) {
    let (items, skipped) = list_paths(paths);
    let files: Vec<&Path> = items
        .iter()
        .filter_map(|i| match i {
            Listed::File(p) => Some(p.as_path()),
            Listed::Unwalkable(_) => None,
        })
        .collect();
    let mut loaded = in_parallel(&files, |f| load_file(f, max_bytes)).into_iter();
    let out = items
        .into_iter()
        .filter_map(|i| match i {
            Listed::File(_) => loaded.next(),
            Listed::Unwalkable(r) => Some(r),
        })
        .collect();
    (out, skipped)
}

/// What one named path turned into: a file to read, or a directory that could not be
/// walked.
pub(crate) enum Listed {
    File(PathBuf),
    Unwalkable(FileResult),
}

/// The files `paths` name, in order (directories walked as [`load_paths`] says), and the
/// files of the directories that were left out for their name.
pub(crate) fn list_paths(paths: &[PathBuf]) -> (Vec<Listed>, Vec<PathBuf>) {
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        match fs::metadata(path) {
            Ok(meta) if meta.is_dir() => match scan_dir(path) {
                Ok(scan) => {
                    items.extend(scan.files.into_iter().map(Listed::File));
                    skipped.extend(scan.skipped);
                }
                Err(source) => items.push(Listed::Unwalkable(FileResult {
                    path: path.display().to_string(),
                    outcome: Err(LoadError::Io {
                        path: path.display().to_string(),
                        source,
                    }),
                })),
            },
            _ => items.push(Listed::File(path.clone())),
        }
    }
    (items, skipped)
}

/// `work` on every item on every available core, results in the order given. Parsing is
/// most of a large policy set's load time and each file is independent.
pub(crate) fn in_parallel<I: Sync, R: Send>(items: &[I], work: impl Fn(&I) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(items.len());
    if workers <= 1 {
        return items.iter().map(work).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        mine.push((i, work(item)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// The files below a directory, sorted: those read as policies and those left out.
#[derive(Debug, Default)]
pub struct DirScan {
    pub files: Vec<PathBuf>,
    pub skipped: Vec<PathBuf>,
}

/// The policy files below a directory, sorted.
pub fn policy_files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(scan_dir(dir)?.files)
}

/// Walks a directory: policy files by their extension, and the other (non-hidden) files.
pub fn scan_dir(dir: &Path) -> std::io::Result<DirScan> {
    let mut scan = DirScan::default();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            // Follow links: ConfigMap volumes present files as symlinks.
            let meta = fs::metadata(&path)?;
            if meta.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| POLICY_EXTENSIONS.contains(&e))
            {
                scan.files.push(path);
            } else {
                scan.skipped.push(path);
            }
        }
    }
    scan.files.sort();
    scan.skipped.sort();
    Ok(scan)
}

/// Reads one file, refusing it unread if it is larger than `max_bytes`.
pub fn load_file(path: &Path, max_bytes: u64) -> FileResult {
    let name = path.display().to_string();
    let outcome = read_text(path, &name, max_bytes).and_then(|text| parse_documents(&name, &text));
    FileResult {
        path: name,
        outcome,
    }
}

pub(crate) fn read_text(path: &Path, name: &str, max_bytes: u64) -> Result<String, LoadError> {
    let io = |source| LoadError::Io {
        path: name.to_string(),
        source,
    };
    let file = fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if meta.is_dir() {
        return Err(LoadError::Io {
            path: name.to_string(),
            source: std::io::Error::other("is a directory"),
        });
    }
    let too_large = |size: u64| LoadError::TooLarge {
        path: name.to_string(),
        size,
        limit: max_bytes,
    };
    // Refused before reading when the size is known, so a huge file costs nothing.
    if meta.len() > max_bytes {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::new();
    // Read one byte past the limit, so a file that grows while being read is still refused.
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(meta.len().max(bytes.len() as u64)));
    }
    let text = String::from_utf8(bytes).map_err(|_| LoadError::NotText {
        path: name.to_string(),
    })?;
    if text.contains('\0') {
        return Err(LoadError::NotText {
            path: name.to_string(),
        });
    }
    Ok(text)
}

/// Parses every document of a YAML text. `file` names the text in sources and errors.
/// Nesting deeper than [`MAX_DEPTH`] is refused first, in time linear in the text.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Document>, LoadError> {
    // The stream bounds the nesting itself; the `Value` reader needs the prescan first.
    if let Some(docs) = direct::parse_documents(file, text) {
        return Ok(docs);
    }
    prescan::check_depth(text, MAX_DEPTH).map_err(|e| LoadError::TooDeep {
        path: file.to_string(),
        line: e.line,
        bound: e.bound,
    })?;
    parse_documents_via_values(file, text)
}

/// [`parse_documents`] through a [`serde_yaml::Value`] per document: slower, and the path
/// that names the field and value of every problem. The caller has checked the nesting.
pub fn parse_documents_via_values(file: &str, text: &str) -> Result<Vec<Document>, LoadError> {
    let mut values = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| LoadError::Yaml {
            path: file.to_string(),
            message: e.to_string(),
        })?;
        values.push(value);
    }
    Ok(values
        .into_iter()
        .enumerate()
        // An empty document (a leading or trailing `---`) holds nothing to apply.
        .filter(|(_, v)| !v.is_null())
        .map(|(doc, value)| {
            let source = Source::file(file.to_string(), doc);
            match parse_policy(source.clone(), value) {
                Ok(p) => Document::Policy(Box::new(p)),
                Err(e) => Document::Invalid(e),
            }
        })
        .collect())
}

/// Interprets one YAML document as a MeshPassthrough.
pub fn parse_policy(source: Source, value: serde_yaml::Value) -> Result<Policy, DocError> {
    let err = |name: Option<String>, field: &str, message: String| DocError {
        source: source.clone(),
        name,
        field: field.to_string(),
        message,
    };
    let Some(map) = value.as_mapping() else {
        return Err(err(
            None,
            "",
            "expected a MeshPassthrough resource (a YAML mapping)".into(),
        ));
    };
    let has = |k: &str| map.contains_key(serde_yaml::Value::from(k));
    let name_hint = guess_name(map);
    if has("apiVersion") || has("kind") || has("metadata") {
        let doc: KubernetesDoc = typed(value, |field, message| {
            err(name_hint.clone(), &field, message)
        })?;
        if doc.api_version != API_VERSION {
            return Err(err(
                doc.metadata.name,
                "apiVersion",
                format!("must be {API_VERSION:?}, found {:?}", doc.api_version),
            ));
        }
        if doc.kind != KIND {
            return Err(err(
                doc.metadata.name,
                "kind",
                format!("must be {KIND:?}, found {:?}", doc.kind),
            ));
        }
        let labels = doc.metadata.labels.unwrap_or_default();
        Ok(Policy {
            source,
            format: Format::Kubernetes,
            name: doc.metadata.name.unwrap_or_default(),
            namespace: doc.metadata.namespace,
            mesh: mesh_of(&labels, None),
            labels,
            spec: doc.spec,
        })
    } else if has("type") {
        let doc: UniversalDoc = typed(value, |field, message| {
            err(name_hint.clone(), &field, message)
        })?;
        if doc.kind != KIND {
            return Err(err(
                doc.name,
                "type",
                format!("must be {KIND:?}, found {:?}", doc.kind),
            ));
        }
        let labels = doc.labels.unwrap_or_default();
        Ok(Policy {
            source,
            format: Format::Universal,
            name: doc.name.unwrap_or_default(),
            namespace: None,
            mesh: mesh_of(&labels, doc.mesh),
            labels,
            spec: doc.spec,
        })
    } else {
        Err(err(
            None,
            "",
            "neither a Kubernetes resource (apiVersion, kind, metadata, spec) nor a Universal one (type, name, mesh, spec)".into(),
        ))
    }
}

/// Parses only a `spec` (the form Kuma's own validator tests use).
pub fn parse_spec(text: &str) -> Result<Spec, String> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

pub(super) fn mesh_of(labels: &BTreeMap<String, String>, universal_mesh: Option<String>) -> String {
    universal_mesh
        .or_else(|| labels.get(labels::MESH).cloned())
        .unwrap_or_else(|| DEFAULT_MESH.to_string())
}

fn guess_name(map: &serde_yaml::Mapping) -> Option<String> {
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .or_else(|| map.get("name"))?;
    name.as_str().map(str::to_string)
}

/// Deserializes with the field path of the first error, e.g. `spec.default.appendMatch[2].port`.
fn typed<T: for<'de> Deserialize<'de>>(
    value: serde_yaml::Value,
    err: impl Fn(String, String) -> DocError,
) -> Result<T, DocError> {
    serde_path_to_error::deserialize(&value).map_err(|e| {
        let field = e.path().to_string();
        let found = describe::value_at(&value, e.path());
        let field = if field == "." { String::new() } else { field };
        err(field, describe::message(&e.inner().to_string(), found))
    })
}

/// The policies of a YAML text that must hold only valid documents (unit tests).
#[cfg(test)]
pub(crate) fn test_policies(text: &str) -> Vec<Policy> {
    parse_documents("t.yaml", text)
        .expect("yaml")
        .into_iter()
        .map(|d| match d {
            Document::Policy(p) => *p,
            Document::Invalid(e) => panic!("{e:?}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(text: &str) -> Vec<Document> {
        parse_documents("t.yaml", text).expect("yaml")
    }

    fn policy(d: &Document) -> &Policy {
        match d {
            Document::Policy(p) => p,
            Document::Invalid(e) => panic!("unexpected error {e:?}"),
        }
    }

    fn invalid(d: &Document) -> &DocError {
        match d {
            Document::Invalid(e) => e,
            Document::Policy(p) => panic!("unexpected policy {p:?}"),
        }
    }

    #[test]
    fn kubernetes_form_takes_mesh_from_label_and_defaults_protocol_to_tcp() {
        let d = docs(
            r#"
apiVersion: kuma.io/v1alpha1
kind: MeshPassthrough
metadata:
  name: allow-some
  namespace: kuma-system
  labels:
    kuma.io/mesh: other
spec:
  targetRef:
    kind: Mesh
  default:
    passthroughMode: Matched
    appendMatch:
      - type: IP
        value: 1.2.3.4
"#,
        );
        let p = policy(&d[0]);
        assert_eq!(p.format, Format::Kubernetes);
        assert_eq!(p.name, "allow-some");
        assert_eq!(p.namespace.as_deref(), Some("kuma-system"));
        assert_eq!(p.mesh, "other");
        let m = &p.spec.default.append_match.as_ref().expect("matches")[0];
        assert_eq!(m.protocol, "tcp");
        assert_eq!(m.port, None);
    }

    #[test]
    fn universal_form_defaults_mesh() {
        let d =
            docs("type: MeshPassthrough\nname: p\nspec:\n  default:\n    passthroughMode: None\n");
        let p = policy(&d[0]);
        assert_eq!(p.format, Format::Universal);
        assert_eq!(p.mesh, "default");
        assert_eq!(p.spec.default.passthrough_mode.as_deref(), Some("None"));
    }

    #[test]
    fn multi_document_files_keep_document_indexes_and_skip_empty_ones() {
        let d =
            docs("---\ntype: MeshPassthrough\nname: a\n---\n---\ntype: MeshPassthrough\nname: b\n");
        // A leading `---` opens the first document; `---` twice in a row makes an empty one.
        assert_eq!(d.len(), 2);
        assert_eq!(policy(&d[0]).source.doc, 0);
        assert_eq!(policy(&d[1]).source.doc, 2);
    }

    #[test]
    fn unknown_field_names_its_path_and_the_accepted_fields() {
        let d = docs(
            "type: MeshPassthrough\nname: p\nspec:\n  default:\n    appendMatch:\n      - type: IP\n        value: 1.1.1.1\n        prot: tcp\n",
        );
        let e = invalid(&d[0]);
        assert_eq!(e.field, "spec.default.appendMatch[0].prot");
        assert!(e.message.contains("unknown field prot"), "{}", e.message);
        assert!(e.message.contains("protocol"), "{}", e.message);
        assert_eq!(e.name.as_deref(), Some("p"));
    }

    #[test]
    fn wrong_type_names_its_path() {
        let d = docs(
            "type: MeshPassthrough\nname: p\nspec:\n  default:\n    appendMatch:\n      - type: IP\n        value: 1.1.1.1\n        port: eighty\n",
        );
        let e = invalid(&d[0]);
        assert_eq!(e.field, "spec.default.appendMatch[0].port");
        assert!(e.message.contains("wrong type"), "{}", e.message);
    }

    #[test]
    fn scalar_protocol_is_read_as_text_like_kuma() {
        let d = docs(
            "type: MeshPassthrough\nname: p\nspec:\n  default:\n    appendMatch:\n      - {type: IP, value: 1.1.1.1, protocol: 1}\n",
        );
        let p = policy(&d[0]);
        assert_eq!(
            p.spec.default.append_match.as_ref().expect("m")[0].protocol,
            "1"
        );
    }

    #[test]
    fn other_kinds_are_errors_not_silently_skipped() {
        let d = docs("apiVersion: kuma.io/v1alpha1\nkind: MeshTrace\nmetadata: {name: x}\n");
        let e = invalid(&d[0]);
        assert_eq!(e.field, "kind");
        let d = docs("- a\n- b\n");
        assert!(invalid(&d[0]).message.contains("mapping"));
        let d = docs("foo: bar\n");
        assert!(invalid(&d[0]).message.contains("neither"));
    }

    #[test]
    fn malformed_yaml_is_a_load_error() {
        let e = parse_documents("t.yaml", "a: [1, 2\n").expect_err("must fail");
        assert!(matches!(e, LoadError::Yaml { .. }));
        assert!(e.to_string().starts_with("t.yaml: not valid YAML"));
    }

    #[test]
    fn binary_and_oversized_files_are_refused_with_clear_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let bin = dir.path().join("junk.yaml");
        fs::write(&bin, [0xff, 0xfe, 0x00, 0x12, 0x80]).expect("write");
        let r = load_file(&bin, DEFAULT_MAX_FILE_BYTES);
        assert!(matches!(r.outcome, Err(LoadError::NotText { .. })));

        let big = dir.path().join("big.yaml");
        let line = "# padding padding padding padding padding padding padding padding\n";
        let text = line.repeat((1 << 20) / line.len() + 1);
        fs::write(&big, &text).expect("write");
        let r = load_file(&big, 1 << 20);
        match r.outcome {
            Err(e @ LoadError::TooLarge { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("larger than the 1048576-byte limit"), "{msg}");
                assert!(msg.contains("maxPolicyFileBytes"), "{msg}");
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // The same file under the default bound is read (and is empty: only comments).
        let r = load_file(&big, DEFAULT_MAX_FILE_BYTES);
        assert!(
            matches!(r.outcome, Ok(ref d) if d.is_empty()),
            "{:?}",
            r.outcome
        );
    }

    #[test]
    fn deep_nesting_is_refused_with_the_file_line_and_bound() {
        let text = format!(
            "type: MeshPassthrough\nname: p\nspec: {}\n",
            "[".repeat(200_000)
        );
        let e = parse_documents("deep.yaml", &text).expect_err("must fail");
        assert!(
            matches!(
                e,
                LoadError::TooDeep {
                    line: 3,
                    bound: MAX_DEPTH,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with(
                "deep.yaml: line 3: mappings and sequences nest deeper than 64 levels"
            ),
            "{e}"
        );
    }

    #[test]
    fn directories_are_read_recursively_in_order_skipping_hidden_and_other_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path();
        fs::create_dir(p.join("sub")).expect("mkdir");
        fs::create_dir(p.join("..data")).expect("mkdir");
        fs::write(p.join("b.yaml"), "type: MeshPassthrough\nname: b\n").expect("w");
        fs::write(p.join("sub/a.yml"), "type: MeshPassthrough\nname: a\n").expect("w");
        fs::write(p.join("..data/c.yaml"), "type: MeshPassthrough\nname: c\n").expect("w");
        fs::write(p.join("README.md"), "# not a policy").expect("w");
        let files = policy_files_in(p).expect("list");
        let names: Vec<_> = files
            .iter()
            .map(|f| f.strip_prefix(p).expect("prefix").display().to_string())
            .collect();
        assert_eq!(names, ["b.yaml", "sub/a.yml"]);
        let skipped = scan_dir(p).expect("scan").skipped;
        assert_eq!(skipped, [p.join("README.md")]);
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let r = load_paths(
            &[PathBuf::from("/nonexistent/passthrough.yaml")],
            DEFAULT_MAX_FILE_BYTES,
        );
        assert!(matches!(r[0].outcome, Err(LoadError::Io { .. })));
    }
}
