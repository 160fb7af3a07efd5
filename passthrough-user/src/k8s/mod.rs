//! Kubernetes as a source of workloads and policies.
//!
//! - [`pods`]: which pods are in the mesh, and the identity (mesh, tags, name, labels) Kuma
//!   gives them.
//! - [`cgroups`]: a pod's cgroup v2 directory, for both kubelet cgroup drivers.
//! - [`source`]: the watchers that turn the API's objects into policies and workloads.

pub mod cgroups;
mod inotify;
pub mod pods;
pub mod source;

use std::path::PathBuf;

use passthrough_common::PodUid;

use crate::{
    config::WorkloadConfig,
    policy::{load::Document, workload::Workload},
};

/// A pod in the mesh the API server reported whose cgroup does not exist yet: the agent
/// leaves its entry in the kernel, for the cgroup to get the moment it is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingPod {
    pub uid: PodUid,
    /// `namespace/name`, for logs.
    pub label: String,
    pub identity: Workload,
}

/// A MeshPassthrough object the agent refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeProblem {
    pub namespace: String,
    pub name: String,
    pub message: String,
}

/// Policies and workloads from the Kubernetes API.
#[derive(Clone, Debug, Default)]
pub struct KubeState {
    /// MeshPassthrough objects, as documents (invalid ones included, so they are refused
    /// like an invalid file).
    pub policies: Vec<Document>,
    /// This node's pods in the mesh whose cgroup exists.
    pub workloads: Vec<WorkloadConfig>,
    /// This node's pods in the mesh whose cgroup does not exist yet.
    pub pending: Vec<PendingPod>,
    /// The cgroups of this node's other pods (not in the mesh): never filtered, also where
    /// `unknownPods: deny`.
    pub others: Vec<PathBuf>,
    /// Whether every collection has been listed once (until then the agent is not ready),
    /// whether the watches are connected now, and the last error.
    pub synced: bool,
    pub connected: bool,
    pub error: Option<String>,
}
