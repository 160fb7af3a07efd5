//! The agent: desired state from the config file, the policy files and Kubernetes, enforced
//! in the kernel.
//!
//! One owner changes the state: the core ([`core`]) runs on its own thread, takes its inputs
//! (files changed, Kubernetes updates, SIGHUP, stop) from a channel, reconciles
//! ([`state::Agent::reconcile`]) and publishes a snapshot after each pass. Everything else
//! reads snapshots and never waits for a reconcile: the admin endpoint ([`admin`]), the peek
//! proxy (its [`crate::view`]), the event reader, the pods' listeners.
//!
//! ```text
//! files (watch) ─┐
//! Kubernetes ────┼─> core thread ── reconcile: plan ─> execute ─> maps (store) ─> kernel
//! SIGHUP, stop ──┘        │
//!                         └─ publishes ─> Snapshot (status) ─> admin, pod listeners
//!                                       └> View ─> proxy, events
//! ```

pub mod admin;
pub mod core;
pub mod loader;
pub mod maps;
pub mod memo;
pub mod plan;
pub mod podwatch;
pub mod run;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod syscall;
pub mod watch;

pub use state::{Agent, AgentError};
