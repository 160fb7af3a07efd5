//! The `MeshPassthrough` resource as Kuma accepts it, in both its Kubernetes and Universal forms.
//!
//! Enumerated fields (`type`, `protocol`, `passthroughMode`, `targetRef.kind`, `proxyTypes`)
//! are kept as strings: Kuma's validator reports unsupported values as violations with its own
//! messages, so they must survive parsing. Like Kuma's YAML reader, a scalar given to a string
//! field is taken as its text (`protocol: 1` is the protocol `"1"`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::Arc,
};

use serde::{Deserialize, Deserializer, Serialize};

/// The namespace Kuma's control plane runs in; a policy there is a `system` policy.
pub const DEFAULT_SYSTEM_NAMESPACE: &str = "kuma-system";
/// The mesh of a policy or workload that names none.
pub const DEFAULT_MESH: &str = "default";

pub mod labels {
    pub const MESH: &str = "kuma.io/mesh";
    pub const ORIGIN: &str = "kuma.io/origin";
    pub const ZONE: &str = "kuma.io/zone";
    pub const POLICY_ROLE: &str = "kuma.io/policy-role";
    pub const DISPLAY_NAME: &str = "kuma.io/display-name";
    /// passthrough's own label: the policy is enforced in audit mode.
    pub const AUDIT: &str = "passthrough.io/audit";
}

/// Where a policy document came from: a file and the document's index in it, or a
/// Kubernetes object (then `file` is how messages name it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Source {
    pub file: String,
    pub doc: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Box<ObjectRef>>,
}

/// A Kubernetes object by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl Source {
    /// Document `doc` of a file.
    pub fn file(file: impl Into<String>, doc: usize) -> Self {
        Self {
            file: file.into(),
            doc,
            object: None,
        }
    }

    /// A MeshPassthrough object read from the Kubernetes API.
    pub fn kubernetes(namespace: &str, name: &str) -> Self {
        Self {
            file: format!("kubernetes:{namespace}/{name}"),
            doc: 0,
            object: Some(Box::new(ObjectRef {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.file, self.doc)
    }
}

/// Which of Kuma's two resource forms a document used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Kubernetes,
    Universal,
}

/// One `MeshPassthrough` policy, with the metadata that selection and priority need.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Policy {
    #[serde(skip)]
    pub source: Source,
    pub format: Format,
    pub name: String,
    /// Kubernetes namespace; `None` on Universal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub mesh: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub spec: Spec,
}

impl Policy {
    /// The name Kuma orders by and shows: the `kuma.io/display-name` label, else the name.
    pub fn display_name(&self) -> &str {
        self.labels
            .get(labels::DISPLAY_NAME)
            .map_or(self.name.as_str(), String::as_str)
    }

    /// The name operators know the policy by: `namespace/name` on Kubernetes.
    pub fn qualified_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// The targetRef, with Kuma's default `{kind: Mesh}` when omitted.
    pub fn target_ref(&self) -> TargetRef {
        self.spec.target_ref.clone().unwrap_or_else(|| TargetRef {
            kind: "Mesh".into(),
            ..TargetRef::default()
        })
    }

    /// Whether the policy asks for audit mode (`passthrough.io/audit: "true"`).
    pub fn audit(&self) -> bool {
        self.labels.get(labels::AUDIT).is_some_and(|v| v == "true")
    }
}

/// `spec` of a MeshPassthrough.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default)]
    pub default: Conf,
}

/// `spec.targetRef`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    #[serde(default, deserialize_with = "scalar")]
    pub kind: String,
    #[serde(
        default,
        deserialize_with = "opt_scalar",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_scalar",
        skip_serializing_if = "Option::is_none"
    )]
    pub namespace: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_scalar",
        skip_serializing_if = "Option::is_none"
    )]
    pub mesh: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_scalar_map",
        skip_serializing_if = "Option::is_none"
    )]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(
        default,
        deserialize_with = "opt_scalar_map",
        skip_serializing_if = "Option::is_none"
    )]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(
        default,
        deserialize_with = "opt_scalar_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub proxy_types: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "opt_scalar",
        skip_serializing_if = "Option::is_none"
    )]
    pub section_name: Option<String>,
}

/// `spec.default`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Conf {
    #[serde(
        default,
        deserialize_with = "opt_scalar",
        skip_serializing_if = "Option::is_none"
    )]
    pub passthrough_mode: Option<String>,
    /// Shared, never copied: the agent's parsed-file cache, the applied set and every compiled
    /// policy's rules point at this one list (a large allow-list has a million entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_match: Option<Arc<[Match]>>,
    /// Indexes of `appendMatch` entries that Kuma 3 drops from a policy stored before the
    /// upgrade (an exact Domain without a port, the later match of a conflicting pair): kept in
    /// the list so that every other entry keeps its index, never merged. Not part of the
    /// resource; validation fills it (`policy::kuma3`).
    #[serde(skip)]
    pub dropped: BTreeSet<usize>,
}

impl Conf {
    /// `appendMatch`, empty when not given.
    pub fn matches(&self) -> &[Match] {
        self.append_match.as_deref().unwrap_or_default()
    }

    /// The entries that apply, with their index in `appendMatch`.
    pub fn applied_matches(&self) -> impl Iterator<Item = (usize, &Match)> {
        self.matches()
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.dropped.contains(i))
    }
}

/// The text of an `appendMatch` field: kept inline up to 24 bytes (every type, protocol,
/// address and most names), so that a million entries are not three million allocations.
pub type Text = compact_str::CompactString;

/// One `spec.default.appendMatch[]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Match {
    #[serde(rename = "type", deserialize_with = "scalar_text")]
    pub kind: Text,
    #[serde(deserialize_with = "scalar_text")]
    pub value: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Defaults to `tcp`, as the CRD and Kuma's REST API default it.
    #[serde(default = "default_protocol", deserialize_with = "scalar_text")]
    pub protocol: Text,
}

fn default_protocol() -> Text {
    Text::const_new("tcp")
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{type: {}, value: {}", self.kind, self.value)?;
        if let Some(port) = self.port {
            write!(f, ", port: {port}")?;
        }
        write!(f, ", protocol: {}}}", self.protocol)
    }
}

/// A YAML scalar read as text, as Kuma's YAML-to-JSON reader does for string fields:
/// strings, booleans and numbers are accepted, anything else is not. Read straight from the
/// parser (no buffering), since a large policy has millions of these.
pub(crate) struct ScalarText(String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ScalarText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<ScalarText, E> {
                Ok(ScalarText(v))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl From<ScalarText> for String {
    fn from(s: ScalarText) -> Self {
        s.0
    }
}

fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    ScalarText::deserialize(d)
        .map(String::from)
        .map_err(|_| serde::de::Error::custom("expected a string"))
}

/// [`scalar`] into inline text: read from the parser's borrowed string, no allocation for a
/// short one.
fn scalar_text<'de, D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Text;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
            Ok(Text::new(v))
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Text, E> {
            Ok(Text::new(v.to_string()))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Text, E> {
            Ok(Text::new(v.to_string()))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Text, E> {
            Ok(Text::new(v.to_string()))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Text, E> {
            Ok(Text::new(v.to_string()))
        }
    }
    d.deserialize_any(Visitor)
        .map_err(|_| serde::de::Error::custom("expected a string"))
}

fn opt_scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<ScalarText>::deserialize(d)
        .map(|o| o.map(String::from))
        .map_err(|_| serde::de::Error::custom("expected a string"))
}

/// A map key that must be a string: `1: x` is a number key, which Kuma's reader refuses for
/// a map of strings. Read with `deserialize_any` so that every YAML reader sees the same.
struct StrKey(String);

impl<'de> Deserialize<'de> for StrKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = StrKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StrKey, E> {
                Ok(StrKey(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<StrKey, E> {
                Ok(StrKey(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A map whose keys are unique strings, as the `Value` reader insists (it refuses a
/// duplicate key anywhere; a plain map would keep the last).
pub(crate) struct UniqueMap<V>(pub(crate) BTreeMap<String, V>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(StrKey(key)) = map.next_key::<StrKey>()? {
                    if out.contains_key(&key) {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                    let value = map.next_value()?;
                    out.insert(key, value);
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

fn opt_scalar_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    Option::<UniqueMap<ScalarText>>::deserialize(d)
        .map(|o| o.map(|m| m.0.into_iter().map(|(k, v)| (k, v.into())).collect()))
        .map_err(|_| serde::de::Error::custom("expected a map of strings to strings"))
}

fn opt_scalar_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    Option::<Vec<ScalarText>>::deserialize(d)
        .map(|o| o.map(|v| v.into_iter().map(String::from).collect()))
        .map_err(|_| serde::de::Error::custom("expected a list of strings"))
}

/// Kubernetes `metadata` of a MeshPassthrough: the fields of ObjectMeta a manifest or
/// `kubectl get -o yaml` may carry. Only name, namespace and labels are used.
#[expect(
    dead_code,
    reason = "accepted so that real manifests and kubectl/kumactl output parse; never used"
)]
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ObjectMeta {
    #[serde(default, deserialize_with = "opt_scalar")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "opt_scalar")]
    pub namespace: Option<String>,
    #[serde(default, deserialize_with = "opt_scalar_map")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, serde_yaml::Value>>,
    #[serde(default)]
    pub generate_name: Option<serde_yaml::Value>,
    #[serde(default)]
    pub uid: Option<serde_yaml::Value>,
    #[serde(default)]
    pub resource_version: Option<serde_yaml::Value>,
    #[serde(default)]
    pub generation: Option<serde_yaml::Value>,
    #[serde(default)]
    pub creation_timestamp: Option<serde_yaml::Value>,
    #[serde(default)]
    pub deletion_timestamp: Option<serde_yaml::Value>,
    #[serde(default)]
    pub deletion_grace_period_seconds: Option<serde_yaml::Value>,
    #[serde(default)]
    pub managed_fields: Option<serde_yaml::Value>,
    #[serde(default)]
    pub owner_references: Option<serde_yaml::Value>,
    #[serde(default)]
    pub finalizers: Option<serde_yaml::Value>,
    #[serde(default)]
    pub self_link: Option<serde_yaml::Value>,
}

/// The Kubernetes form: `apiVersion`, `kind`, `metadata`, `spec`.
#[expect(
    dead_code,
    reason = "accepted so that real manifests and kubectl/kumactl output parse; never used"
)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct KubernetesDoc {
    #[serde(deserialize_with = "scalar")]
    pub api_version: String,
    #[serde(deserialize_with = "scalar")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Spec,
    /// Kubernetes may add an empty status; MeshPassthrough defines none.
    #[serde(default)]
    pub status: Option<serde_yaml::Value>,
}

/// The Universal form: `type`, `name`, `mesh`, `labels`, `spec` (and the timestamps
/// `kumactl get -o yaml` prints).
#[expect(
    dead_code,
    reason = "accepted so that real manifests and kubectl/kumactl output parse; never used"
)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct UniversalDoc {
    #[serde(rename = "type", deserialize_with = "scalar")]
    pub kind: String,
    #[serde(default, deserialize_with = "opt_scalar")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "opt_scalar")]
    pub mesh: Option<String>,
    #[serde(default, deserialize_with = "opt_scalar_map")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub spec: Spec,
    #[serde(default)]
    pub creation_time: Option<serde_yaml::Value>,
    #[serde(default)]
    pub modification_time: Option<serde_yaml::Value>,
}
