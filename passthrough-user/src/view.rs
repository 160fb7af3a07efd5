//! What the peek proxy and the event reader decide and name with: each enforced workload's
//! compiled policy by cgroup id. The agent's core publishes a new one after every
//! reconcile; readers never wait for it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

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
pub struct ViewPublisher {
    tx: watch::Sender<Arc<View>>,
    /// Views replaced while a reader may still hold them. They are freed here, on the
    /// publisher's thread, once no reader does: a reader never frees a large policy (a
    /// million entries take milliseconds to give back) on the proxy's runtime.
    retired: Mutex<Vec<Arc<View>>>,
}

impl ViewPublisher {
    pub fn publish(&self, view: View) {
        let old = self.tx.send_replace(Arc::new(view));
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        retired.push(old);
        release(&mut retired);
    }

    /// Frees the replaced views that no reader holds any more; how many are still held.
    pub fn release(&self) -> usize {
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        release(&mut retired);
        retired.len()
    }
}

/// Drops the views only `retired` holds. One that is not in the channel any more cannot be
/// cloned again, so a count of one stays one.
fn release(retired: &mut Vec<Arc<View>>) {
    retired.retain(|v| Arc::strong_count(v) > 1);
}

/// An empty view and its publisher.
pub fn channel() -> (ViewPublisher, SharedView) {
    let (tx, rx) = watch::channel(Arc::new(View::default()));
    (
        ViewPublisher {
            tx,
            retired: Mutex::new(Vec::new()),
        },
        SharedView(rx),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_view_is_freed_by_the_publisher_not_by_its_last_reader() {
        let (publisher, reader) = channel();
        publisher.publish(View::default());
        let held = reader.current();
        let weak = Arc::downgrade(&held);
        publisher.publish(View::default());
        assert_eq!(publisher.release(), 1, "a reader still holds the old view");
        drop(held);
        assert!(
            weak.upgrade().is_some(),
            "the reader's drop did not free the view"
        );
        assert_eq!(publisher.release(), 0);
        assert!(weak.upgrade().is_none(), "released by the publisher");
        // Views no reader took are freed at the next publish.
        let unread = Arc::downgrade(&reader.current());
        publisher.publish(View::default());
        assert!(unread.upgrade().is_none());
    }
}
