//! `passthrough run`: start, then reconcile whenever a policy file, a workload cgroup or the
//! config (SIGHUP) changes. SIGTERM and SIGINT stop the agent and leave the pins: the kernel
//! keeps enforcing the last state while no agent runs.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::signal::unix::{SignalKind, signal};

use super::{Agent, AgentError, admin, config::ProxyConfig, events};
use crate::{
    policy::{bind::DomainCheck, load::policy_files_in},
    proxy::{
        netns::{Netns, pid_in_cgroup},
        resolve::NameResolver,
        server::{Bounds, NameBinding, Proxy},
    },
};

/// How often files and cgroups are checked for changes. Policy changes apply within this
/// plus the time to compile and write them: well under a second.
pub const POLL: Duration = Duration::from_millis(200);

/// Identity of a watched path: (mtime ns, size, inode), or absent.
type Fingerprint = BTreeMap<PathBuf, Option<(i64, u64, u64)>>;

fn stamp(p: &Path) -> Option<(i64, u64, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        m.size(),
        m.ino(),
    ))
}

/// Every policy file (directories expanded) and every workload cgroup.
fn fingerprint(policies: &[PathBuf], cgroups: &[PathBuf]) -> Fingerprint {
    let mut fp = Fingerprint::new();
    for p in policies {
        fp.insert(p.clone(), stamp(p));
        if p.is_dir() {
            for f in policy_files_in(p).unwrap_or_default() {
                let s = stamp(&f);
                fp.insert(f, s);
            }
        }
    }
    for c in cgroups {
        fp.insert(c.clone(), stamp(c));
    }
    fp
}

pub async fn run(config_path: &Path) -> Result<(), AgentError> {
    let mut agent = Agent::start(config_path)?;
    if agent.config().debug {
        start_kernel_log(&mut agent);
    }
    let admin_addr = agent.config().admin.listen;
    start_events(&mut agent)?;
    let mut pod_listeners = None;
    if let Some(p) = agent.config().proxy.clone() {
        let proxy = start_proxy(&mut agent, p.clone()).await?;
        if agent.config().kubernetes.is_some() {
            pod_listeners = Some(PodListeners::new(proxy, p.listen)?);
        }
    }
    agent.reconcile();
    let (policies, cgroups) = agent.watched_paths();
    let mut last = fingerprint(&policies, &cgroups);
    let agent = Arc::new(Mutex::new(agent));

    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|e| AgentError::Other(format!("admin.listen {admin_addr}: {e}")))?;
    tracing::info!(%admin_addr, "admin endpoint listening");
    tokio::spawn(admin::serve(listener, agent.clone()));

    let sig = |k| signal(k).map_err(|e| AgentError::Other(format!("signal handler: {e}")));
    let mut hup = sig(SignalKind::hangup())?;
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(POLL);
    let mut kube = start_kubernetes(&lock(&agent));
    loop {
        tokio::select! {
            Some(state) = recv(&mut kube) => {
                let pods = {
                    let mut a = lock(&agent);
                    a.set_kubernetes(state);
                    a.reconcile();
                    let (policies, cgroups) = a.watched_paths();
                    last = fingerprint(&policies, &cgroups);
                    a.kube_cgroups()
                };
                if let Some(l) = &mut pod_listeners {
                    l.sync(&pods);
                }
            }
            _ = tick.tick() => {
                let (policies, cgroups) = lock(&agent).watched_paths();
                let now = fingerprint(&policies, &cgroups);
                if now != last {
                    last = now;
                    lock(&agent).reconcile();
                }
                if let Some(l) = &mut pod_listeners {
                    let pods = lock(&agent).kube_cgroups();
                    l.sync(&pods);
                }
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config and the policies");
                let mut a = lock(&agent);
                if let Err(e) = a.reload_config() {
                    tracing::error!("config refused, keeping the running one: {e}");
                }
                a.reconcile();
                let (policies, cgroups) = a.watched_paths();
                last = fingerprint(&policies, &cgroups);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping; the kernel keeps enforcing the pinned state");
    Ok(())
}

/// Starts the Kubernetes source when the config has one; its updates arrive on the channel.
fn start_kubernetes(agent: &Agent) -> Option<tokio::sync::mpsc::Receiver<super::KubeState>> {
    let k = agent.config().kubernetes.as_ref()?;
    let node = k.node()?;
    let root = k
        .cgroup_root
        .clone()
        .unwrap_or_else(|| agent.cgroup_root().to_path_buf());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tracing::info!(%node, root = %root.display(), "watching Kubernetes for this node's pods and MeshPassthrough objects");
    tokio::spawn(crate::k8s::source::run(
        node,
        root,
        k.kubeconfig.clone(),
        agent.kube_problems.clone(),
        tx,
    ));
    Some(rx)
}

/// The next Kubernetes update, or never without a source.
async fn recv(
    rx: &mut Option<tokio::sync::mpsc::Receiver<super::KubeState>>,
) -> Option<super::KubeState> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
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
        agent.proxy_view.clone(),
    ));
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
    let resolver = match cfg.domain_check {
        DomainCheck::Trust => None,
        check => {
            let r = NameResolver::new(&agent.config().dns)
                .map_err(|e| AgentError::Other(e.to_string()))?;
            tracing::info!(
                domain_check = %check,
                servers = ?r.servers(),
                "allowed names are bound to the addresses these resolvers give"
            );
            Some(Arc::new(r))
        }
    };
    let proxy = Arc::new(Proxy::new(
        agent.proxy_view.clone(),
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

/// The agent's state is only touched under this lock; a panic while holding it is a bug, and
/// the state is still the last one written to the kernel, so keep going with it.
pub fn lock(agent: &Mutex<Agent>) -> std::sync::MutexGuard<'_, Agent> {
    agent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
