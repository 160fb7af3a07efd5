//! What the core publishes after each pass, for readers that must not wait for it.

use std::path::PathBuf;

use crate::api::Status;

/// What the agent publishes after each pass.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The status as of the pass; the admin endpoint adds the live counters.
    pub status: Status,
    /// Policy files and directories, and workload cgroups: what the watcher stats.
    pub watched: Watched,
    /// The cgroups of the Kubernetes pods the agent enforces (for their listeners).
    pub pods: Vec<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watched {
    pub policies: Vec<PathBuf>,
    pub cgroups: Vec<PathBuf>,
}
