//! passthrough: Kuma `MeshPassthrough` egress policy enforced in the Linux kernel with eBPF.
//!
//! - [`policy`]: the pure policy engine (parse, validate, merge, compile, decide).
//! - [`agent`]: loads the eBPF programs, writes the maps, serves the admin endpoint.
//! - [`proxy`]: the peek proxy for Domain entries.
//! - [`cli`]: the `passthrough` command's verbs.

pub mod agent;
pub mod cli;
pub mod policy;
pub mod proxy;
