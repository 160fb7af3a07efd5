//! Kubernetes as a source of workloads and policies (issue 6, in progress).
//!
//! - [`pods`]: which pods are in the mesh, and the identity (mesh, tags, name, labels) Kuma
//!   gives them.
//! - [`cgroups`]: a pod's cgroup v2 directory, for both kubelet cgroup drivers.

pub mod cgroups;
pub mod pods;
