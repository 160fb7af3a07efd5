//! `passthrough run`: start the agent and wire its parts. The core owns the state on its own
//! thread; the runtime serves the admin endpoint, the peek proxy, the event reader and the
//! Kubernetes watchers, none of which waits for a reconcile. SIGTERM and SIGINT stop the
//! agent within a second and leave the pins: the kernel keeps enforcing the last complete
//! state while no agent runs.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use tokio::signal::unix::{SignalKind, signal};

use super::{
    Agent, AgentError,
    admin::{self, Admin},
    core::{Core, Input, Inputs},
    snapshot::Snapshot,
    watch,
};
use crate::{
    config::ProxyConfig,
    events,
    policy::bind::needs_resolver,
    proxy::{
        netns::{Netns, pid_in_cgroup},
        resolve::NameResolver,
        server::{Bounds, NameBinding, Proxy},
    },
};

/// How long a stop waits for a reconcile in progress to give up.
const STOP_PATIENCE: Duration = Duration::from_millis(500);

pub async fn run(config_path: &std::path::Path) -> Result<(), AgentError> {
    let mut agent = Agent::start(config_path)?;
    if agent.config().debug {
        start_kernel_log(&mut agent);
    }
    let admin_addr = agent.config().admin.listen;
    start_events(&mut agent)?;
    start_flows(&mut agent)?;
    let proxy = match agent.config().proxy().cloned() {
        Some(p) => Some((start_proxy(&mut agent, p.clone()).await?, p.listen)),
        None => None,
    };
    let (counters, events, flows) = (
        agent.counters.clone(),
        agent.events.clone(),
        agent.flows.clone(),
    );
    let proxy_stats = proxy.as_ref().map(|_| agent.proxy_stats.clone());
    let kubernetes = kubernetes_source(&agent);
    let baseline = watch::fingerprint(&agent.snapshot().watched);

    let core = Core::spawn(agent)
        .map_err(|e| AgentError::Other(format!("cannot start the core thread: {e}")))?;
    let snapshots = core.snapshots();
    let admin = Admin {
        snapshots: snapshots.clone(),
        counters,
        proxy: proxy_stats,
        events,
        flows,
    };
    watch::spawn(baseline, snapshots.clone(), core.inputs())
        .map_err(|e| AgentError::Other(format!("cannot start the file watcher: {e}")))?;
    if let Some(source) = kubernetes {
        start_kubernetes(source, core.inputs());
        if let Some((proxy, listen)) = proxy {
            tokio::spawn(pod_listeners(
                PodListeners::new(proxy, listen)?,
                snapshots.clone(),
            ));
        }
    }

    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|e| AgentError::Other(format!("admin.listen {admin_addr}: {e}")))?;
    tracing::info!(%admin_addr, "admin endpoint listening");
    tokio::spawn(admin::serve(listener, admin));

    let sig = |k| signal(k).map_err(|e| AgentError::Other(format!("signal handler: {e}")));
    let mut hup = sig(SignalKind::hangup())?;
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let inputs = core.inputs();
    loop {
        tokio::select! {
            _ = hup.recv() => {
                inputs.send(Input::ReloadConfig);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Joining waits for the thread: off the runtime, so the endpoint keeps answering.
    let stopped = tokio::task::spawn_blocking(move || core.stop(STOP_PATIENCE))
        .await
        .unwrap_or(false);
    if !stopped {
        tracing::warn!(
            "the core did not end within {STOP_PATIENCE:?}: exiting anyway; the kernel keeps its last complete state"
        );
    }
    Ok(())
}

/// What the Kubernetes source needs, when the config has one.
struct KubeSource {
    node: String,
    root: PathBuf,
    kubeconfig: Option<PathBuf>,
    problems: Arc<crate::k8s::source::Problems>,
}

fn kubernetes_source(agent: &Agent) -> Option<KubeSource> {
    let k = agent.config().kubernetes.as_ref()?;
    Some(KubeSource {
        node: k.node()?,
        root: k
            .cgroup_root
            .clone()
            .unwrap_or_else(|| agent.cgroup_root().to_path_buf()),
        kubeconfig: k.kubeconfig.clone(),
        problems: agent.kube_problems.clone(),
    })
}

/// Starts the Kubernetes source; its updates go to the core.
fn start_kubernetes(k: KubeSource, inputs: Inputs) {
    tracing::info!(node = %k.node, root = %k.root.display(), "watching Kubernetes for this node's pods and MeshPassthrough objects");
    tokio::spawn(crate::k8s::source::run(
        k.node,
        k.root,
        k.kubeconfig,
        k.problems,
        move |state| inputs.send(Input::Kubernetes(Box::new(state))),
    ));
}

/// Takes a map that no other part of the agent holds out of the loaded object, as its type.
fn take_map<T>(agent: &mut Agent, name: &'static str) -> Result<T, AgentError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map =
        agent.loader.ebpf_mut().take_map(name).ok_or_else(|| {
            AgentError::Other(format!("map {name} is missing from the BPF object"))
        })?;
    T::try_from(map).map_err(|e| AgentError::Other(format!("map {name}: {e}")))
}

/// Reads the kernel's deny events into the agent's event log.
fn start_events(agent: &mut Agent) -> Result<(), AgentError> {
    let ring = take_map(agent, passthrough_common::map_names::EVENTS)?;
    let dropped = take_map(agent, passthrough_common::map_names::EVENTS_DROPPED)?;
    tokio::spawn(events::read_kernel(
        ring,
        dropped,
        agent.events.clone(),
        agent.view_reader.clone(),
    ));
    Ok(())
}

/// Gives the flow record the kernel table and reads it every `flows.interval`, on a thread of
/// its own (reading 100 000 entries takes a while and must not hold up the runtime).
fn start_flows(agent: &mut Agent) -> Result<(), AgentError> {
    let table = super::maps::FlowTable::take(agent.loader.ebpf_mut())?;
    let flows = agent.flows.clone();
    flows.attach(Box::new(table));
    let interval = agent.config().flows.interval;
    std::thread::Builder::new()
        .name("flows".into())
        .spawn(move || {
            loop {
                flows.refresh();
                std::thread::sleep(interval);
            }
        })
        .map_err(|e| AgentError::Other(format!("cannot start the flow reader: {e}")))?;
    Ok(())
}

/// Binds the peek proxy's listeners and serves them. Binding happens before `/ready`, so a
/// ready agent never redirects to a port nobody listens on.
async fn start_proxy(agent: &mut Agent, cfg: ProxyConfig) -> Result<Arc<Proxy>, AgentError> {
    let redirects = take_map(agent, passthrough_common::map_names::REDIRECTS)?;
    let bounds = Bounds {
        peek_bytes: cfg.peek_bytes,
        peek_timeout: cfg.peek_timeout,
        max_connections: cfg.max_connections,
    };
    let kuma = agent.config().kuma.version;
    let resolver = match cfg.domain_check {
        check if !needs_resolver(kuma, check) => None,
        check => {
            let r = NameResolver::new(&agent.config().dns)
                .map_err(|e| AgentError::Other(e.to_string()))?;
            tracing::info!(
                domain_check = %check,
                %kuma,
                servers = ?r.servers(),
                "allowed names are bound to the addresses these resolvers give"
            );
            Some(Arc::new(r))
        }
    };
    let proxy = Arc::new(Proxy::new(
        agent.view_reader.clone(),
        crate::proxy::origin::Origins::new(redirects),
        bounds,
        agent.proxy_stats.clone(),
        agent.events.clone(),
        NameBinding {
            check: cfg.domain_check,
            resolver,
        },
    ));
    for (i, addr) in cfg.listen.iter().enumerate() {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            AgentError::Other(format!(
                "proxy.listen[{i}] {addr}: {e}; pick a free port or stop what uses it"
            ))
        })?;
        tracing::info!(%addr, "peek proxy listening");
        tokio::spawn(proxy.clone().serve(listener, None));
    }
    Ok(proxy)
}

/// Keeps a listener in every enforced pod's namespace: on each snapshot, and on a tick for
/// pods whose first process had not started yet.
async fn pod_listeners(
    mut listeners: PodListeners,
    mut snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
) {
    let mut tick = tokio::time::interval(watch::POLL);
    loop {
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let pods = snapshots.borrow_and_update().pods.clone();
        listeners.sync(&pods);
    }
}

/// The peek proxy's listeners inside pods' network namespaces: the kernel redirects a pod's
/// connect to the loopback of the pod's own namespace, so each pod needs one there.
struct PodListeners {
    proxy: Arc<Proxy>,
    listen: Vec<std::net::SocketAddr>,
    /// The agent's namespace: a pod in it (host network) is served by the agent's listener.
    own: u64,
    /// Pod cgroup -> the serving tasks (aborting one closes its listener).
    pods: BTreeMap<PathBuf, Vec<tokio::task::JoinHandle<()>>>,
}

impl PodListeners {
    fn new(proxy: Arc<Proxy>, listen: Vec<std::net::SocketAddr>) -> Result<Self, AgentError> {
        let own = Netns::own()
            .map_err(|e| AgentError::Other(format!("the agent's network namespace: {e}")))?
            .inode;
        Ok(Self {
            proxy,
            listen,
            own,
            pods: BTreeMap::new(),
        })
    }

    /// Opens listeners for new pods (once a process runs in them) and closes those of pods
    /// that left.
    fn sync(&mut self, pods: &[PathBuf]) {
        self.pods.retain(|cgroup, tasks| {
            let keep = pods.contains(cgroup);
            if !keep {
                tasks.iter().for_each(tokio::task::JoinHandle::abort);
            }
            keep
        });
        for cgroup in pods {
            if self.pods.contains_key(cgroup) {
                continue;
            }
            // No process yet (the sandbox is starting): try again on the next tick.
            let Some(pid) = pid_in_cgroup(cgroup) else {
                continue;
            };
            let ns = match Netns::of_pid(pid) {
                Ok(ns) => ns,
                Err(e) => {
                    tracing::debug!(cgroup = %cgroup.display(), "pod network namespace: {e}");
                    continue;
                }
            };
            let mut tasks = Vec::new();
            if ns.inode != self.own {
                let ns = Arc::new(ns);
                for addr in &self.listen {
                    match ns.listen(*addr).and_then(tokio::net::TcpListener::from_std) {
                        Ok(l) => {
                            tasks.push(tokio::spawn(self.proxy.clone().serve(l, Some(ns.clone()))));
                        }
                        Err(e) => tracing::warn!(
                            cgroup = %cgroup.display(),
                            "peek proxy listener {addr} in the pod's namespace: {e}"
                        ),
                    }
                }
                tracing::info!(cgroup = %cgroup.display(), "peek proxy listening in the pod's network namespace");
            }
            self.pods.insert(cgroup.clone(), tasks);
        }
    }
}

/// Forwards the programs' aya-log records (`debug: true`) to the agent's log.
fn start_kernel_log(agent: &mut Agent) {
    match aya_log::EbpfLogger::init(agent.loader.ebpf_mut()) {
        // SAFETY: the logger owns its ring buffer fd and the AsyncFd owns the logger, so the
        // fd stays open, and is not closed behind tokio's back, for as long as it is registered.
        Ok(logger) => match unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        } {
            Ok(mut fd) => {
                tokio::spawn(async move {
                    loop {
                        let Ok(mut guard) = fd.readable_mut().await else {
                            break;
                        };
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                });
                tracing::info!("kernel decisions are logged (debug: true)");
            }
            Err(e) => tracing::warn!("kernel log unavailable: {e}"),
        },
        Err(e) => tracing::warn!("kernel log unavailable: {e}"),
    }
}
