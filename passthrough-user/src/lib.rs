//! passthrough: Kuma `MeshPassthrough` egress policy enforced in the Linux kernel with eBPF.
//!
//! The modules form a one-way graph; each imports only those above it:
//!
//! - [`policy`]: the pure policy engine (parse, validate, merge, compile, decide).
//! - [`api`]: the wire types of the admin endpoint, shared by the agent and the CLI.
//! - [`cgroup`]: the cgroup v2 mount, cgroup ids and paths.
//! - [`config`]: the agent's config file, checked.
//! - [`view`]: what the proxy and the event reader decide and name with.
//! - [`events`]: the event log (kernel and proxy events).
//! - [`flows`]: the flow record (every connect, from the kernel table and the proxy).
//! - [`proxy`]: the peek proxy for Domain entries.
//! - [`k8s`]: Kubernetes pods and MeshPassthrough objects as workloads and policies.
//! - [`agent`]: the core that owns the state, the maps, the loader, the admin endpoint.
//! - [`cli`]: the `passthrough` command's verbs.

pub mod agent;
pub mod api;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod events;
pub mod flows;
pub mod k8s;
pub mod policy;
pub mod proxy;
pub mod view;
