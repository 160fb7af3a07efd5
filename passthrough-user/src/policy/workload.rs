//! A workload: what Kuma calls a dataplane, here a cgroup (a service or a pod) with the
//! identity that policies select on.

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use super::model::DEFAULT_MESH;

/// Tag Kuma puts on a Kubernetes dataplane's inbounds: the pod's namespace.
pub const NAMESPACE_TAG: &str = "k8s.kuma.io/namespace";

/// Kuma's two proxy types (`targetRef.proxyTypes`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum ProxyType {
    #[default]
    Sidecar,
    Gateway,
}

impl ProxyType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyType::Sidecar => "Sidecar",
            ProxyType::Gateway => "Gateway",
        }
    }
}

impl FromStr for ProxyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Sidecar" => Ok(ProxyType::Sidecar),
            "Gateway" => Ok(ProxyType::Gateway),
            other => Err(format!(
                "unknown proxy type {other:?}: use Sidecar or Gateway"
            )),
        }
    }
}

impl fmt::Display for ProxyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of a workload, as `targetRef` selects on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub mesh: String,
    pub proxy_type: ProxyType,
    /// Inbound tags (`kuma.io/service`, ...), for `MeshSubset`.
    pub tags: BTreeMap<String, String>,
    /// Dataplane name, for `Dataplane` with `name`.
    pub name: Option<String>,
    /// Kubernetes namespace, for `Dataplane` with `namespace` and for namespaced policies.
    pub namespace: Option<String>,
    /// Dataplane labels, for `Dataplane` with `labels`.
    pub labels: BTreeMap<String, String>,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            mesh: DEFAULT_MESH.into(),
            proxy_type: ProxyType::Sidecar,
            tags: BTreeMap::new(),
            name: None,
            namespace: None,
            labels: BTreeMap::new(),
        }
    }
}

impl Workload {
    /// The namespace namespaced policies compare with: the workload's own, else the
    /// `k8s.kuma.io/namespace` tag Kuma puts on Kubernetes dataplanes.
    pub fn effective_namespace(&self) -> Option<&str> {
        self.namespace
            .as_deref()
            .or_else(|| self.tags.get(NAMESPACE_TAG).map(String::as_str))
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mesh={} proxyType={}", self.mesh, self.proxy_type)?;
        if let Some(ns) = &self.namespace {
            write!(f, " namespace={ns}")?;
        }
        if let Some(name) = &self.name {
            write!(f, " name={name}")?;
        }
        for (k, v) in &self.tags {
            write!(f, " tag:{k}={v}")?;
        }
        for (k, v) in &self.labels {
            write!(f, " label:{k}={v}")?;
        }
        Ok(())
    }
}
