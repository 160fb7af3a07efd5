//! A [`Policy`] written back as the resource it was read from, so that another process
//! (`simulate` on a saved flow file) reads the same policy with [`super::load::parse_policy`].

use serde_json::{Value, json};

use super::{
    load::{API_VERSION, KIND},
    model::{Format, Policy},
};

/// The resource: Kubernetes (`apiVersion`, `kind`, `metadata`, `spec`) or Universal
/// (`type`, `name`, `mesh`, `labels`, `spec`), as the policy was written.
pub fn to_resource(p: &Policy) -> Value {
    let spec = serde_json::to_value(&p.spec).unwrap_or(Value::Null);
    match p.format {
        Format::Kubernetes => {
            let mut metadata = json!({ "name": p.name, "labels": p.labels });
            if let Some(ns) = &p.namespace {
                metadata["namespace"] = ns.clone().into();
            }
            json!({ "apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec })
        }
        Format::Universal => {
            json!({ "type": KIND, "name": p.name, "mesh": p.mesh, "labels": p.labels, "spec": spec })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load::{Document, parse_documents, parse_policy};

    #[test]
    fn both_forms_read_back_as_the_same_policy() {
        let text = r#"
apiVersion: kuma.io/v1alpha1
kind: MeshPassthrough
metadata: {name: k, namespace: kuma-system, labels: {kuma.io/mesh: m1, passthrough.io/audit: "true"}}
spec:
  targetRef: {kind: MeshSubset, tags: {kuma.io/service: web}}
  default:
    passthroughMode: Matched
    appendMatch:
      - {type: IP, value: 203.0.113.10, port: 443}
      - {type: Domain, value: api.example.com, port: 443, protocol: tls}
---
type: MeshPassthrough
name: u
mesh: m2
spec:
  default: {passthroughMode: None}
"#;
        for d in parse_documents("p.yaml", text).expect("yaml") {
            let Document::Policy(p) = d else {
                panic!("{d:?}")
            };
            let value = serde_yaml::to_value(to_resource(&p)).expect("value");
            let back = parse_policy(p.source.clone(), value).expect("reads back");
            assert_eq!(back, *p);
        }
    }
}
