//! What the peek proxy and the event reader decide and name with: each enforced workload's
//! compiled policy by cgroup id. The agent's core publishes a new one after every
//! reconcile; readers never wait for it.

use std::{collections::HashMap, sync::Arc};

use tokio::sync::watch;

use crate::policy::{
    compile::CompiledPolicy, decide::Exemptions, kuma::KumaVersion, model::Policy,
    workload::Workload,
};

/// What the proxy decides with: each workload's compiled policy, by cgroup id. The agent
/// replaces it whole after every reconcile.
#[derive(Default)]
pub struct View {
    pub workloads: HashMap<u64, WorkloadView>,
    pub exemptions: Exemptions,
    /// The policies in force and how they were read: what `simulate` replays against.
    pub applied: Arc<Applied>,
}

/// The policy set the agent applies, with the settings that shape what it means.
#[derive(Debug, Default)]
pub struct Applied {
    pub policies: Vec<Policy>,
    pub kuma: KumaVersion,
    pub system_namespace: String,
    /// `defaultMode: None`.
    pub default_none: bool,
}

pub struct WorkloadView {
    /// The workload as operators name it (its cgroup path in the config).
    pub name: String,
    /// Its name where it has one (`namespace/name`, or `name`), for events.
    pub label: Option<String>,
    /// Its mesh and tags, for events and `recommend`.
    pub mesh: String,
    pub tags: Vec<(String, String)>,
    /// What policies select it by, for `simulate`.
    pub identity: Workload,
    pub policy: Arc<CompiledPolicy>,
}

/// The latest view, for readers on any thread: reading clones an `Arc`, never waits for a
/// reconcile.
#[derive(Clone)]
pub struct SharedView(watch::Receiver<Arc<View>>);

impl SharedView {
    pub fn current(&self) -> Arc<View> {
        self.0.borrow().clone()
    }
}

/// The one writer of the view: the agent's core.
pub struct ViewPublisher(watch::Sender<Arc<View>>);

impl ViewPublisher {
    pub fn publish(&self, view: View) {
        self.0.send_replace(Arc::new(view));
    }
}

/// An empty view and its publisher.
pub fn channel() -> (ViewPublisher, SharedView) {
    let (tx, rx) = watch::channel(Arc::new(View::default()));
    (ViewPublisher(tx), SharedView(rx))
}
