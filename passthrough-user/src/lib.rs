//! passthrough: Kuma `MeshPassthrough` egress policy enforced in the Linux kernel with eBPF.
//!
//! - [`policy`]: the pure policy engine (parse, validate, merge, compile, decide).
//! - [`api`]: the wire types of the admin endpoint, shared by the agent and the CLI.
//! - [`agent`]: loads the eBPF programs, writes the maps, serves the admin endpoint.
//! - [`proxy`]: the peek proxy for Domain entries.
//! - [`k8s`]: Kubernetes pods as workloads.
//! - [`cli`]: the `passthrough` command's verbs.

pub mod agent;
pub mod api;
pub mod cli;
pub mod k8s;
pub mod policy;
pub mod proxy;
