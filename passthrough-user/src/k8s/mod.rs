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
