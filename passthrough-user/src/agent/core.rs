//! The core: the one owner of the agent's state, on its own thread.
//!
//! Inputs arrive on a channel; those that queued up during a reconcile are folded into one
//! pass ([`Batch`]). After each pass the core publishes an immutable [`Snapshot`], which the
//! admin endpoint and the pods' listeners read without waiting. Stopping sets the shared
//! [`Cancel`] first, so a long reconcile gives up between kernel operations, keeping the
//! kernel's last complete state.

use std::{
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{snapshot::Snapshot, state::Agent, store::Cancel};
use crate::{api::Status, k8s::KubeState};

/// What the core acts on.
#[derive(Debug)]
pub enum Input {
    /// A policy file, a workload cgroup or the config file's directory changed.
    Changed,
    /// The Kubernetes source's latest state.
    Kubernetes(Box<KubeState>),
    /// SIGHUP: read the config file again.
    ReloadConfig,
    /// SIGTERM or SIGINT.
    Stop,
}

/// The inputs of one pass, folded: only the latest Kubernetes state counts, a config reload
/// also reloads the policies, and a stop wins over everything.
#[derive(Debug, Default)]
pub struct Batch {
    pub changed: bool,
    pub kubernetes: Option<Box<KubeState>>,
    pub reload_config: bool,
    pub stop: bool,
}

impl Batch {
    pub fn add(&mut self, input: Input) {
        match input {
            Input::Changed => self.changed = true,
            Input::Kubernetes(k) => self.kubernetes = Some(k),
            Input::ReloadConfig => self.reload_config = true,
            Input::Stop => self.stop = true,
        }
    }

    /// The first input and whatever else is already queued, without waiting.
    pub fn drain(first: Input, rx: &mpsc::Receiver<Input>) -> Self {
        let mut b = Self::default();
        b.add(first);
        while let Ok(i) = rx.try_recv() {
            b.add(i);
        }
        b
    }
}

/// The running core, as the rest of the agent holds it.
pub struct Core {
    tx: mpsc::Sender<Input>,
    cancel: Cancel,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// Sends inputs to the core from any thread or task.
#[derive(Clone)]
pub struct Inputs(mpsc::Sender<Input>);

impl Inputs {
    /// `false` once the core has stopped.
    pub fn send(&self, input: Input) -> bool {
        self.0.send(input).is_ok()
    }
}

impl Core {
    /// Starts the core with its first reconcile; until that ends the snapshot says not ready.
    pub fn spawn(agent: Agent) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let cancel = agent.cancel.clone();
        let first = agent.snapshot();
        let (publish, snapshots) = watch::channel(Arc::new(Snapshot {
            status: Status {
                ready: false,
                not_ready: vec!["the first reconcile has not ended yet".into()],
                ..first.status
            },
            ..first
        }));
        let thread = thread::Builder::new()
            .name("passthrough-core".into())
            .spawn(move || run(agent, &rx, &publish))?;
        Ok(Self {
            tx,
            cancel,
            snapshots,
            thread: Some(thread),
        })
    }

    pub fn inputs(&self) -> Inputs {
        Inputs(self.tx.clone())
    }

    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    /// Abandons any reconcile in progress and waits up to `patience` for the thread. The
    /// kernel keeps the last complete state whether or not the thread ended in time.
    pub fn stop(mut self, patience: Duration) -> bool {
        self.cancel.cancel();
        let _ = self.tx.send(Input::Stop);
        let Some(thread) = self.thread.take() else {
            return true;
        };
        let deadline = Instant::now() + patience;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        thread.join().is_ok()
    }
}

/// The nice value of the core thread when `SCHED_IDLE` cannot be had.
const CORE_NICE: libc::c_int = 10;

/// Puts the calling thread (and the threads it starts, which inherit it) under
/// `SCHED_IDLE`; the core and the file watcher run there. A reconcile of a large policy is
/// seconds of CPU, and it must not delay the peek proxy's connections or the admin
/// endpoint, which stay at the default priority. A waking normal thread preempts an
/// idle-class one at once, where a niced one could keep its CPU for the rest of its slice
/// (up to a scheduler tick, 4 ms, on every wakeup of the proxy). The class is relative to
/// the agent's own cgroup where the CPU controller is on, so other pods do not starve the
/// core; where it is off, the core still gets the CPU the node leaves idle. Failing to
/// lower it only costs latency, so it is logged, not fatal.
pub(super) fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; `param` is a valid sched_param for the
    // policy (priority 0 is the only one SCHED_IDLE takes).
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
        return;
    }
    let idle = std::io::Error::last_os_error();
    // SAFETY: gettid has no preconditions; setpriority on one's own thread id only changes
    // that thread's nice value (Linux applies PRIO_PROCESS to the thread named).
    let rc =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, CORE_NICE) };
    if rc != 0 {
        tracing::warn!(
            "could not lower the core thread's priority (SCHED_IDLE: {idle}; setpriority: {}): a large reconcile competes with the proxy for CPU",
            std::io::Error::last_os_error()
        );
    }
}

/// How often the core, when idle, frees the proxy views it replaced.
const RELEASE_EVERY: Duration = Duration::from_millis(500);

fn run(mut agent: Agent, rx: &mpsc::Receiver<Input>, publish: &watch::Sender<Arc<Snapshot>>) {
    lower_priority();
    agent.reconcile();
    publish.send_replace(Arc::new(agent.snapshot()));
    loop {
        // Replaced views still read by the proxy are freed here once it lets go of them.
        let first = match rx.recv_timeout(RELEASE_EVERY) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                agent.release_views();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let batch = Batch::drain(first, rx);
        if batch.stop || agent.cancel.is_cancelled() {
            break;
        }
        if batch.reload_config {
            tracing::info!("SIGHUP: reloading the config and the policies");
            if let Err(e) = agent.reload_config() {
                tracing::error!("config refused, keeping the running one: {e}");
            }
        }
        if let Some(k) = batch.kubernetes {
            agent.set_kubernetes(*k);
        }
        agent.reconcile();
        publish.send_replace(Arc::new(agent.snapshot()));
    }
    tracing::info!("stopping; the kernel keeps enforcing the pinned state");
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn queued_inputs_fold_into_one_pass_with_the_latest_kubernetes_state() {
        let (tx, rx) = mpsc::channel();
        let k = |n: usize| {
            Input::Kubernetes(Box::new(KubeState {
                others: vec![PathBuf::from(format!("/pod{n}"))],
                ..KubeState::default()
            }))
        };
        tx.send(k(1)).expect("test setup");
        tx.send(Input::Changed).expect("test setup");
        tx.send(k(2)).expect("test setup");
        let b = Batch::drain(Input::ReloadConfig, &rx);
        assert!(b.changed && b.reload_config && !b.stop);
        assert_eq!(b.kubernetes.expect("kube").others, [PathBuf::from("/pod2")]);
        assert!(rx.try_recv().is_err(), "everything queued was taken");
    }

    #[test]
    fn a_stop_anywhere_in_the_queue_is_seen() {
        let (tx, rx) = mpsc::channel();
        tx.send(Input::Stop).expect("test setup");
        tx.send(Input::Changed).expect("test setup");
        assert!(Batch::drain(Input::Changed, &rx).stop);
        assert!(!Batch::drain(Input::Changed, &rx).stop);
    }
}
