//! The agent: desired state from the config file and policy files, enforced in the kernel.
//!
//! `Agent::reconcile` is the one place that changes kernel state. For each workload it
//! compiles the merged policy, writes it into a policy slot (or reuses an identical one),
//! then flips the workload's `WORKLOADS` entry to that slot in one update, and only then
//! frees the old slot. An invalid policy set changes nothing: every workload keeps its last
//! good state.

pub mod admin;
pub mod cgroup;
pub mod config;
pub mod events;
pub mod loader;
pub mod maps;
pub mod run;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::SystemTime,
};

use ipnet::IpNet;
use passthrough_common::{Config, Workload as KernelWorkload, workload_flags};
use serde::Serialize;

use self::{
    config::{
        AgentConfig, Containment, DefaultMode, RawSockets, UdpMode, UnknownPods, WorkloadConfig,
    },
    events::{EventCounts, EventLog},
    loader::Loader,
    maps::{EntryCounts, Maps, MapsError},
};
use crate::{
    policy::{
        Severity,
        compile::{CompiledPolicy, EffectiveMode, compile},
        decide::Exemptions,
        load::Document,
        merge::{PolicyRef, SelectOptions, merged_for},
        set::{Finding, PolicySet},
    },
    proxy::server::{SharedView, Stats as ProxyStats, StatsSnapshot, View, WorkloadView},
};

/// Slot 0 holds no entries: workloads whose mode needs none, or whose Matched list compiles
/// to nothing, point at it.
const EMPTY_SLOT: u32 = 0;

/// A policy slot in the rule maps.
struct Slot {
    id: u32,
    tables: CompiledPolicy,
    users: usize,
}

/// What is enforced for one workload.
#[derive(Clone, Debug)]
struct Applied {
    cgroup_id: u64,
    containment: Containment,
    compiled: CompiledPolicy,
    policies: Vec<PolicyRef>,
    mode_from: Option<PolicyRef>,
    slot: u32,
    generation: u64,
}

struct WorkloadState {
    config: WorkloadConfig,
    applied: Option<Applied>,
    attached: Option<u64>,
    error: Option<String>,
}

impl WorkloadState {
    /// Its policy is in the maps and the programs are attached to the same cgroup.
    fn enforced(&self) -> bool {
        self.applied
            .as_ref()
            .is_some_and(|a| self.attached == Some(a.cgroup_id))
    }
}

/// Result of the last reload, as `/status` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    pub at: String,
    /// The same instant in seconds since the Unix epoch, for `/metrics`.
    pub unix: u64,
    /// `applied`, `unchanged`, or `refused` (invalid policies: nothing was changed).
    pub result: &'static str,
    /// What refused the set (or, for `partial`, the workloads it could not be applied to).
    pub problems: Vec<String>,
    /// What was reported without refusing anything (`warning: ` lines, as `validate` prints).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

pub struct Agent {
    config: AgentConfig,
    config_path: PathBuf,
    cgroup_root: PathBuf,
    pub(crate) loader: Loader,
    maps: Maps,
    slots: Vec<Slot>,
    /// Slots an earlier agent run left in the maps; swept once every workload is reconciled.
    adopted: BTreeSet<u32>,
    workloads: Vec<WorkloadState>,
    generation: u64,
    last_reload: Option<ReloadReport>,
    /// What the peek proxy decides with, replaced after every reconcile.
    pub(crate) proxy_view: SharedView,
    pub(crate) proxy_stats: Arc<ProxyStats>,
    /// Deny, audit and proxy events.
    pub(crate) events: Arc<EventLog>,
    /// What the Kubernetes source contributes (empty without one).
    kube: KubeState,
    /// Invalid MeshPassthrough objects, for the source to report as Events.
    pub(crate) kube_problems: Arc<crate::k8s::source::Problems>,
    /// The kubepods cgroup (path, id) once the programs are attached to it.
    kubepods: Option<(PathBuf, u64)>,
    /// Entries written for pods outside the mesh (`unknownPods: deny` only).
    left_alone: BTreeSet<u64>,
    /// The resolver sets in `DNS_V4/6`: set 0 is the agent's `udp.dns`, then each
    /// workload's own list.
    dns_sets: Vec<Option<Vec<IpNet>>>,
}

/// A MeshPassthrough object the agent refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeProblem {
    pub namespace: String,
    pub name: String,
    pub message: String,
}

/// Policies and workloads from the Kubernetes API.
#[derive(Clone, Debug, Default)]
pub struct KubeState {
    /// MeshPassthrough objects, as documents (invalid ones included, so they are refused
    /// like an invalid file).
    pub policies: Vec<Document>,
    /// This node's pods in the mesh whose cgroup exists.
    pub workloads: Vec<WorkloadConfig>,
    /// The cgroups of this node's other pods (not in the mesh): never filtered, also where
    /// `unknownPods: deny`.
    pub others: Vec<PathBuf>,
    /// Whether every collection has been listed once (until then the agent is not ready),
    /// whether the watches are connected now, and the last error.
    pub synced: bool,
    pub connected: bool,
    pub error: Option<String>,
}

/// The Kubernetes source in `/status`.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeStatus {
    pub synced: bool,
    pub connected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub policies: usize,
    pub pods: usize,
}

/// Errors that stop the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Load(#[from] loader::LoadError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("{0}")]
    Other(String),
}

impl Agent {
    /// Loads the programs and adopts whatever an earlier run left pinned; enforces nothing
    /// new until [`Agent::reconcile`].
    ///
    /// Before anything touches the kernel, the config and the policies it names get every
    /// check of `passthrough validate --config` ([`config::Preflight`]): an error stops the
    /// start, warnings are logged.
    pub fn start(config_path: &Path) -> Result<Self, AgentError> {
        let preflight = config::Preflight::run(config_path, &config::Environment::this_machine());
        for w in preflight.warnings() {
            tracing::warn!("{w}");
        }
        let config = preflight.into_config()?;
        let cgroup_root = cgroup::cgroup2_root().map_err(|e| AgentError::Other(e.to_string()))?;
        let mut loader = Loader::load(&config.bpffs)?;
        let mut maps = Maps::take(loader.ebpf_mut())?;
        let agent_cgroup = agent_cgroup(&config, &cgroup_root)?;
        let (proxy_port_v4, proxy_port_v6) = config.proxy.as_ref().map_or((0, 0), |p| p.ports());
        maps.set_config(Config {
            agent_cgroup,
            proxy_port_v4,
            proxy_port_v6,
            debug: u8::from(config.debug),
            ..Config::default()
        })?;
        maps.set_mesh_cidrs(&config.mesh_cidrs)?;
        let dns_sets = dns_sets(&config);
        maps.set_dns_sets(&dns_networks(&dns_sets))?;
        let adopted: BTreeSet<u32> = maps
            .workloads()
            .iter()
            .map(|(_, w)| w.slot)
            .filter(|s| *s != EMPTY_SLOT)
            .collect();
        if !adopted.is_empty() {
            tracing::info!(
                slots = adopted.len(),
                "adopted the enforcement state left by an earlier run"
            );
        }
        let workloads = config
            .workloads
            .iter()
            .map(|w| WorkloadState {
                config: w.clone(),
                applied: None,
                attached: None,
                error: None,
            })
            .collect();
        Ok(Self {
            config,
            config_path: config_path.to_path_buf(),
            cgroup_root,
            loader,
            maps,
            slots: Vec::new(),
            adopted,
            workloads,
            generation: 0,
            last_reload: None,
            proxy_view: Arc::new(RwLock::new(Arc::new(View::default()))),
            proxy_stats: Arc::new(ProxyStats::default()),
            events: Arc::new(EventLog::default()),
            kube: KubeState::default(),
            kube_problems: Arc::default(),
            kubepods: None,
            left_alone: BTreeSet::new(),
            dns_sets,
        })
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The detected cgroup v2 mount.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// Re-reads the config file (SIGHUP): workloads and mesh CIDRs change, bpffs and the
    /// admin address need a restart.
    pub fn reload_config(&mut self) -> Result<(), AgentError> {
        let (new, warnings) =
            AgentConfig::load_checked(&self.config_path, &config::Environment::this_machine())?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        if new.bpffs != self.config.bpffs
            || new.admin != self.config.admin
            || new.proxy != self.config.proxy
        {
            tracing::warn!("bpffs, admin and proxy changes take effect after a restart");
        }
        self.maps.set_mesh_cidrs(&new.mesh_cidrs)?;
        let sets = dns_sets(&new);
        self.maps.set_dns_sets(&dns_networks(&sets))?;
        self.dns_sets = sets;
        self.config = new;
        self.sync_workloads();
        Ok(())
    }

    /// The cgroups of the pods the Kubernetes source reported.
    pub fn kube_cgroups(&self) -> Vec<PathBuf> {
        self.kube
            .workloads
            .iter()
            .map(|w| w.cgroup.clone())
            .collect()
    }

    /// Replaces what the Kubernetes source contributes: its policies and its pods.
    pub fn set_kubernetes(&mut self, state: KubeState) {
        self.kube = state;
        self.sync_workloads();
    }

    /// The workloads are those of the config file and those of Kubernetes (a cgroup listed
    /// by both is the config's). Existing state is kept for a workload that stays; one that
    /// left is forgotten (detached, its slot freed).
    fn sync_workloads(&mut self) {
        let mut old: BTreeMap<PathBuf, WorkloadState> = self
            .workloads
            .drain(..)
            .map(|w| (w.config.cgroup.clone(), w))
            .collect();
        let mut seen = BTreeSet::new();
        let wanted: Vec<WorkloadConfig> = self
            .config
            .workloads
            .iter()
            .chain(self.kube.workloads.iter())
            .filter(|w| seen.insert(w.cgroup.clone()))
            .cloned()
            .collect();
        for w in wanted {
            let mut state = old.remove(&w.cgroup).unwrap_or(WorkloadState {
                config: w.clone(),
                applied: None,
                attached: None,
                error: None,
            });
            state.config = w;
            self.workloads.push(state);
        }
        for (_, gone) in old {
            self.forget(gone);
        }
    }

    /// Stops enforcing on a workload that left the config.
    fn forget(&mut self, w: WorkloadState) {
        if let Some(a) = w.applied {
            self.maps.remove_workload(a.cgroup_id);
            self.release(a.slot);
        }
        if let Some(id) = w.attached {
            loader::detach(&self.config.bpffs, id);
        }
        tracing::info!(cgroup = %w.config.cgroup.display(), "workload removed");
    }

    /// Brings the kernel in line with the config and the policy files.
    pub fn reconcile(&mut self) -> &ReloadReport {
        let opts = SelectOptions {
            system_namespace: self.config.system_namespace.clone(),
        };
        let set = PolicySet::load_with(&self.config.policies, self.kube.policies.clone(), &opts);
        let at = humantime_now();
        self.report_kube_problems(&set);
        let warned = set.warnings();
        for w in &warned {
            tracing::warn!(hint = w.hint.as_deref().unwrap_or(""), "{}", w.line());
        }
        let warnings: Vec<String> = warned.iter().map(Finding::line).collect();
        if set.has_errors() {
            let errors = set.errors();
            for e in &errors {
                tracing::error!(hint = e.hint.as_deref().unwrap_or(""), "{}", e.line());
            }
            tracing::error!(
                "policies refused: every workload keeps its last good state until they are fixed"
            );
            // Cgroups that appeared still get the programs, with whatever state they have.
            self.attach_all();
            self.publish_proxy_view();
            return self.last_reload.insert(ReloadReport {
                at,
                unix: unix_now(),
                result: "refused",
                problems: errors.iter().map(Finding::line).collect(),
                warnings,
            });
        }
        let mut changed = false;
        let mut problems = Vec::new();
        for i in 0..self.workloads.len() {
            match self.reconcile_one(i, &set, &opts) {
                Ok(c) => {
                    changed |= c;
                    self.workloads[i].error = None;
                }
                Err(e) => {
                    tracing::error!(cgroup = %self.workloads[i].config.cgroup.display(), "{e}");
                    problems.push(format!(
                        "{}: {e}",
                        self.workloads[i].config.cgroup.display()
                    ));
                    self.workloads[i].error = Some(e);
                }
            }
        }
        self.attach_all();
        self.sweep();
        self.publish_proxy_view();
        if changed {
            self.generation += 1;
            tracing::info!(generation = self.generation, "policy applied");
        }
        self.last_reload.insert(ReloadReport {
            at,
            unix: unix_now(),
            result: if !problems.is_empty() {
                "partial"
            } else if changed {
                "applied"
            } else {
                "unchanged"
            },
            problems,
            warnings,
        })
    }

    /// Hands the violations of MeshPassthrough objects to the Kubernetes source, which
    /// reports them as Events on those objects.
    fn report_kube_problems(&self, set: &PolicySet) {
        if self.config.kubernetes.is_none() {
            return;
        }
        let problems: Vec<KubeProblem> = set
            .problems
            .iter()
            .filter(|p| p.severity() == Severity::Error)
            .filter_map(|p| {
                let source = p.source()?;
                let object = source
                    .file
                    .strip_prefix(crate::k8s::source::SOURCE_PREFIX)?;
                let (namespace, name) = object.split_once('/')?;
                Some(KubeProblem {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    message: p.lines().join("; "),
                })
            })
            .collect();
        self.kube_problems.set(problems);
    }

    /// Gives the peek proxy the policies now in the kernel, in one swap.
    fn publish_proxy_view(&self) {
        let view = View {
            workloads: self
                .workloads
                .iter()
                .filter_map(|w| {
                    let a = w.applied.as_ref()?;
                    Some((
                        a.cgroup_id,
                        WorkloadView {
                            name: w.config.cgroup.display().to_string(),
                            label: match (&w.config.namespace, &w.config.name) {
                                (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
                                (None, Some(n)) => Some(n.clone()),
                                _ => None,
                            },
                            mesh: w.config.mesh.clone(),
                            tags: w
                                .config
                                .tags
                                .iter()
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect(),
                            policy: Arc::new(a.compiled.clone()),
                        },
                    ))
                })
                .collect(),
            exemptions: Exemptions {
                mesh_cidrs: self.config.mesh_cidrs.clone(),
            },
        };
        *self
            .proxy_view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(view);
    }

    /// Reconciles one workload; `Ok(true)` when its kernel state changed.
    fn reconcile_one(
        &mut self,
        i: usize,
        set: &PolicySet,
        opts: &SelectOptions,
    ) -> Result<bool, String> {
        let wc = self.workloads[i].config.clone();
        cgroup::check_workload_cgroup(&self.cgroup_root, &wc.cgroup)?;
        let cgroup_id = match cgroup::cgroup_id(&wc.cgroup) {
            Ok(id) => id,
            Err(e) => {
                // The cgroup is gone (or not there yet): nothing to enforce on.
                if let Some(a) = self.workloads[i].applied.take() {
                    self.maps.remove_workload(a.cgroup_id);
                    self.release(a.slot);
                }
                if let Some(id) = self.workloads[i].attached.take() {
                    loader::detach(&self.config.bpffs, id);
                }
                return Err(format!(
                    "cgroup {} is not there ({e}): waiting for it to appear",
                    wc.cgroup.display()
                ));
            }
        };
        let merged = merged_for(&set.policies, &wc.identity(), opts).map_err(|conflicts| {
            let text: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
            format!("{}; keeping the last good state", text.join("; "))
        })?;
        let mut compiled = compile(&merged).map_err(|e| e.to_string())?;
        if compiled.mode == EffectiveMode::Unfiltered
            && self.config.default_mode == Some(DefaultMode::None)
        {
            compiled.mode = EffectiveMode::None;
        }
        compiled.audit |= self.config.audit || wc.audit;
        let containment = wc.containment(&self.config);
        if let Some(a) = &self.workloads[i].applied
            && a.cgroup_id == cgroup_id
            && a.compiled == compiled
            && a.containment == containment
        {
            return Ok(false);
        }
        let slot = self.acquire(&compiled).map_err(|e| {
            format!(
                "cannot write the policy into the kernel maps: {e}; keeping the last good state"
            )
        })?;
        let entry = KernelWorkload {
            slot,
            ..self.kernel_entry(compiled.mode.kernel(), compiled.audit, &containment)
        };
        if let Err(e) = self.maps.set_workload(cgroup_id, entry) {
            self.release(slot);
            return Err(e.to_string());
        }
        let old = self.workloads[i].applied.replace(Applied {
            cgroup_id,
            containment,
            compiled,
            policies: merged.policies,
            mode_from: merged.mode_from,
            slot,
            generation: self.generation + 1,
        });
        if let Some(old) = old {
            if old.cgroup_id != cgroup_id {
                // Same path, new cgroup (the service was restarted): drop the stale entry.
                self.maps.remove_workload(old.cgroup_id);
            }
            self.release(old.slot);
        }
        Ok(true)
    }

    /// The `WORKLOADS` value for a workload of kernel mode `mode` (slot left empty): the
    /// datagram and raw socket settings apply to modes `None` and `Matched` only.
    fn kernel_entry(&self, mode: u8, audit: bool, c: &Containment) -> KernelWorkload {
        use passthrough_common::mode as m;
        let judged = mode == m::NONE || mode == m::MATCHED;
        let mut flags = 0;
        if audit {
            flags |= workload_flags::AUDIT;
        }
        if judged && c.udp == UdpMode::Deny {
            flags |= workload_flags::UDP_DENY;
        }
        if judged && c.raw_sockets == RawSockets::Deny {
            flags |= workload_flags::RAW_DENY;
        }
        let dns_set = self
            .dns_sets
            .iter()
            .position(|s| *s == c.dns)
            .and_then(|i| u16::try_from(i).ok())
            .unwrap_or(0);
        KernelWorkload {
            slot: EMPTY_SLOT,
            mode,
            flags,
            dns_set,
        }
    }

    /// The agent's own settings, for entries no workload config stands behind (the
    /// kubepods default).
    fn agent_containment(&self) -> Containment {
        Containment {
            udp: self.config.udp.mode,
            dns: self.config.udp.dns.clone(),
            raw_sockets: self.config.raw_sockets,
        }
    }

    /// A slot holding `c`'s tables: an existing identical one, or a new one written in full.
    fn acquire(&mut self, c: &CompiledPolicy) -> Result<u32, MapsError> {
        let tables = c.tables();
        if tables.kernel_entries() == 0 {
            return Ok(EMPTY_SLOT);
        }
        if let Some(s) = self.slots.iter_mut().find(|s| s.tables == tables) {
            s.users += 1;
            return Ok(s.id);
        }
        let used: BTreeSet<u32> = self.slots.iter().map(|s| s.id).collect();
        let id = (1..)
            .find(|id| !used.contains(id) && !self.adopted.contains(id))
            .unwrap_or(u32::MAX);
        if let Err(e) = self.maps.write_slot(id, &tables) {
            self.maps.clear_slot(id, &tables);
            return Err(e);
        }
        self.slots.push(Slot {
            id,
            tables,
            users: 1,
        });
        Ok(id)
    }

    fn release(&mut self, id: u32) {
        if id == EMPTY_SLOT {
            return;
        }
        if let Some(pos) = self.slots.iter().position(|s| s.id == id) {
            self.slots[pos].users -= 1;
            if self.slots[pos].users == 0 {
                let s = self.slots.swap_remove(pos);
                self.maps.clear_slot(s.id, &s.tables);
            }
        }
    }

    /// Attaches the programs to every workload cgroup that has its state written.
    fn attach_all(&mut self) {
        self.attach_kubepods();
        self.leave_others_alone();
        for i in 0..self.workloads.len() {
            let Some(id) = self.workloads[i].applied.as_ref().map(|a| a.cgroup_id) else {
                continue;
            };
            if self.workloads[i].attached == Some(id) {
                continue;
            }
            // A pod below the kubepods cgroup is covered by its attachment: the programs
            // find the pod's entry among the caller's ancestors.
            if let Some((kubepods, _)) = &self.kubepods
                && self.workloads[i].config.cgroup.starts_with(kubepods)
            {
                self.workloads[i].attached = Some(id);
                continue;
            }
            let path = self.workloads[i].config.cgroup.clone();
            match self.loader.attach(&path, id) {
                Ok(()) => {
                    if let Some(old) = self.workloads[i].attached.replace(id) {
                        loader::detach(&self.config.bpffs, old);
                    }
                    tracing::info!(cgroup = %path.display(), id, "enforcing");
                }
                Err(e) => {
                    tracing::error!(cgroup = %path.display(), "{e}");
                    self.workloads[i].error = Some(e.to_string());
                }
            }
        }
    }

    /// With Kubernetes, attaches the programs once to the parent of all pod cgroups, so a pod
    /// is covered the moment its entry is written (and new pods need no attachment).
    fn attach_kubepods(&mut self) {
        let Some(k) = &self.config.kubernetes else {
            return;
        };
        if self.kubepods.is_some() {
            return;
        }
        let root = k
            .cgroup_root
            .clone()
            .unwrap_or_else(|| self.cgroup_root.clone());
        let Some(path) = crate::k8s::cgroups::kubepods_root(&root) else {
            return;
        };
        if let Err(e) = cgroup::check_workload_cgroup(&self.cgroup_root, &path) {
            tracing::error!("kubepods cgroup {}: {e}", path.display());
            return;
        }
        let id = match cgroup::cgroup_id(&path) {
            Ok(id) => id,
            Err(e) => {
                tracing::error!("kubepods cgroup {}: {e}", path.display());
                return;
            }
        };
        // Pods the agent has not been told about yet: as the config says. The entry is
        // written before the programs are attached, so no pod is ever judged without it.
        if k.unknown_pods == UnknownPods::Deny
            && let Err(e) = self.maps.set_workload(
                id,
                self.kernel_entry(
                    passthrough_common::mode::NONE,
                    self.config.audit,
                    &self.agent_containment(),
                ),
            )
        {
            tracing::error!("kubepods default entry: {e}");
            return;
        }
        match self.loader.attach(&path, id) {
            Ok(()) => {
                tracing::info!(cgroup = %path.display(), "enforcing on every pod of this node");
                self.kubepods = Some((path, id));
            }
            Err(e) => tracing::error!(cgroup = %path.display(), "{e}"),
        }
    }

    /// With `unknownPods: deny`, pods outside the mesh get an entry that leaves them
    /// unfiltered (below the kubepods default, the deeper entry wins).
    fn leave_others_alone(&mut self) {
        let deny = self
            .config
            .kubernetes
            .as_ref()
            .is_some_and(|k| k.unknown_pods == UnknownPods::Deny);
        let wanted: BTreeSet<u64> = if deny {
            self.kube
                .others
                .iter()
                .filter_map(|p| cgroup::cgroup_id(p).ok())
                .collect()
        } else {
            BTreeSet::new()
        };
        for id in self
            .left_alone
            .difference(&wanted)
            .copied()
            .collect::<Vec<_>>()
        {
            self.maps.remove_workload(id);
            self.left_alone.remove(&id);
        }
        for id in wanted {
            if self.left_alone.contains(&id) {
                continue;
            }
            match self.maps.set_workload(
                id,
                self.kernel_entry(
                    passthrough_common::mode::UNFILTERED,
                    false,
                    &self.agent_containment(),
                ),
            ) {
                Ok(()) => {
                    self.left_alone.insert(id);
                }
                Err(e) => tracing::error!("entry for a pod outside the mesh: {e}"),
            }
        }
    }

    /// Once every workload is reconciled, removes what earlier runs left that no current
    /// workload uses: slots, workload entries and links of cgroups that left the config.
    fn sweep(&mut self) {
        if self.workloads.iter().any(|w| w.applied.is_none()) {
            return;
        }
        let mut live_ids: BTreeSet<u64> = self
            .workloads
            .iter()
            .filter_map(|w| w.applied.as_ref().map(|a| a.cgroup_id))
            .collect();
        if let Some((_, id)) = &self.kubepods {
            live_ids.insert(*id);
        }
        live_ids.extend(self.left_alone.iter().copied());
        for (id, _) in self.maps.workloads() {
            if !live_ids.contains(&id) {
                self.maps.remove_workload(id);
            }
        }
        for id in loader::attached_cgroups(&self.config.bpffs) {
            if !live_ids.contains(&id) {
                loader::detach(&self.config.bpffs, id);
            }
        }
        if !self.adopted.is_empty() {
            let live: BTreeSet<u32> = self.slots.iter().map(|s| s.id).collect();
            let removed = self.maps.sweep(&live);
            tracing::info!(removed, "removed the entries of an earlier run");
            self.adopted.clear();
        }
    }

    /// Ready once every workload has its policy applied and its programs attached (and,
    /// with Kubernetes, once its collections have been listed).
    pub fn ready(&self) -> bool {
        if self.config.kubernetes.is_some() {
            // Not ready while the API server cannot be watched: enforcement goes on with the
            // last state, but it no longer follows the cluster.
            return self.kube.synced
                && self.kube.connected
                && self.workloads.iter().all(WorkloadState::enforced);
        }
        !self.workloads.is_empty() && self.workloads.iter().all(WorkloadState::enforced)
    }

    /// Why the agent is not ready, for `/ready`.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        if self.config.kubernetes.is_some() && self.kube.synced && !self.kube.connected {
            return vec![format!(
                "the Kubernetes API cannot be watched ({}); enforcing the last state, retrying",
                self.kube.error.as_deref().unwrap_or("disconnected")
            )];
        }
        if self.config.kubernetes.is_some() && !self.kube.synced {
            return vec![format!(
                "the Kubernetes API has not been listed yet{}",
                self.kube
                    .error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )];
        }
        if self.workloads.is_empty() && self.config.kubernetes.is_none() {
            return vec!["no workloads are configured".into()];
        }
        self.workloads
            .iter()
            .filter(|w| !w.enforced())
            .map(|w| {
                format!(
                    "{}: {}",
                    w.config.cgroup.display(),
                    w.error.as_deref().unwrap_or("no policy applied yet")
                )
            })
            .collect()
    }

    /// Policy files and workload cgroups, so the run loop can notice a change.
    pub fn watched_paths(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        (
            self.config.policies.clone(),
            self.workloads
                .iter()
                .map(|w| w.config.cgroup.clone())
                .collect(),
        )
    }

    /// Entries of every live slot, per map, against the map's capacity.
    fn map_fill(&self) -> Vec<MapFill> {
        use passthrough_common::{capacity, map_names};
        let mut total = EntryCounts::default();
        for s in &self.slots {
            let c = EntryCounts::of(&s.tables);
            total.exact_v4 += c.exact_v4;
            total.exact_v6 += c.exact_v6;
            total.cidr_v4 += c.cidr_v4;
            total.cidr_v6 += c.cidr_v6;
            total.domain_ports += c.domain_ports;
        }
        [
            (map_names::EXACT_V4, total.exact_v4, capacity::EXACT_V4),
            (map_names::EXACT_V6, total.exact_v6, capacity::EXACT_V6),
            (map_names::CIDR_V4, total.cidr_v4, capacity::CIDR_V4),
            (map_names::CIDR_V6, total.cidr_v6, capacity::CIDR_V6),
            (
                map_names::DOMAIN_PORTS,
                total.domain_ports,
                capacity::DOMAIN_PORTS,
            ),
            (
                map_names::WORKLOADS,
                self.workloads
                    .iter()
                    .filter(|w| w.applied.is_some())
                    .count(),
                capacity::WORKLOADS,
            ),
        ]
        .into_iter()
        .map(|(map, entries, capacity)| MapFill {
            map: map.to_string(),
            entries,
            capacity,
        })
        .collect()
    }

    pub fn status(&self) -> Status {
        let counters = self
            .maps
            .counters()
            .into_iter()
            .map(|(r, n)| (r.name().to_string(), n))
            .collect();
        Status {
            ready: self.ready(),
            not_ready: if self.ready() {
                Vec::new()
            } else {
                self.not_ready_reasons()
            },
            generation: self.generation,
            last_reload: self.last_reload.clone(),
            bpffs: self.config.bpffs.clone(),
            slots: self.slots.len(),
            maps: self.map_fill(),
            workloads: self
                .workloads
                .iter()
                .map(|w| WorkloadStatus {
                    cgroup: w.config.cgroup.clone(),
                    cgroup_id: w.applied.as_ref().map(|a| a.cgroup_id),
                    name: w.config.name.clone(),
                    namespace: w.config.namespace.clone(),
                    enforced: w.enforced(),
                    mode: w.applied.as_ref().map(|a| a.compiled.mode),
                    mode_from: w.applied.as_ref().and_then(|a| a.mode_from.clone()),
                    audit: w.applied.as_ref().is_some_and(|a| a.compiled.audit),
                    policies: w
                        .applied
                        .as_ref()
                        .map(|a| a.policies.clone())
                        .unwrap_or_default(),
                    entries: w
                        .applied
                        .as_ref()
                        .map(|a| EntryCounts::of(&a.compiled))
                        .unwrap_or_default(),
                    slot: w.applied.as_ref().map(|a| a.slot),
                    containment: w.applied.as_ref().map(|a| a.containment.clone()),
                    generation: w.applied.as_ref().map(|a| a.generation),
                    error: w.error.clone(),
                })
                .collect(),
            counters,
            packet_sockets: self.loader.packet_sockets().clone(),
            proxy: self
                .config
                .proxy
                .as_ref()
                .map(|_| self.proxy_stats.snapshot()),
            events: self.events.counts(),
            kubernetes: self.config.kubernetes.as_ref().map(|_| KubeStatus {
                synced: self.kube.synced,
                connected: self.kube.connected,
                error: self.kube.error.clone(),
                policies: self.kube.policies.len(),
                pods: self.kube.workloads.len(),
            }),
        }
    }
}

/// How full one rule map is.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MapFill {
    pub map: String,
    pub entries: usize,
    pub capacity: u32,
}

/// `/status` and `passthrough status -o json`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<String>,
    pub generation: u64,
    #[serde(skip_deserializing)]
    pub last_reload: Option<ReloadReport>,
    pub bpffs: PathBuf,
    pub slots: usize,
    /// Entries in each rule map against its capacity.
    #[serde(default)]
    pub maps: Vec<MapFill>,
    pub workloads: Vec<WorkloadStatus>,
    /// Connects decided in the kernel, by reason, since the maps were created.
    pub counters: BTreeMap<String, u64>,
    /// Whether packet sockets can be refused on this kernel (`rawSockets: Deny`).
    #[serde(default = "packet_sockets_unknown")]
    pub packet_sockets: loader::PacketSockets,
    /// The peek proxy's decisions and refusals since the agent started, when it runs.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<StatsSnapshot>,
    /// Deny, audit and proxy events received and lost.
    #[serde(default)]
    pub events: EventCounts,
    /// The Kubernetes source, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeStatus>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    pub cgroup: PathBuf,
    pub cgroup_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub enforced: bool,
    #[serde(skip_deserializing)]
    pub mode: Option<EffectiveMode>,
    #[serde(skip_deserializing)]
    pub mode_from: Option<PolicyRef>,
    pub audit: bool,
    #[serde(skip_deserializing)]
    pub policies: Vec<PolicyRef>,
    #[serde(skip_deserializing)]
    pub entries: EntryCounts,
    pub slot: Option<u32>,
    /// The UDP and raw socket settings that apply (in the kernel for modes None and
    /// Matched only).
    #[serde(skip_deserializing)]
    pub containment: Option<Containment>,
    pub generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn packet_sockets_unknown() -> loader::PacketSockets {
    loader::PacketSockets::Open("not reported by this agent".into())
}

/// The cgroup whose processes (and those below it) are never filtered: the agent's own.
/// On Kubernetes the agent's container usually has a private cgroup namespace, so its own
/// view says `/`; there the pod's cgroup is found by the pod's UID (`POD_UID`, from the
/// downward API). The root cgroup is never exempted: that would exempt every process.
fn agent_cgroup(config: &AgentConfig, root: &Path) -> Result<u64, AgentError> {
    let own = if let Some(uid) = std::env::var("POD_UID").ok().filter(|u| !u.is_empty())
        && config.kubernetes.is_some()
    {
        let kroot = config
            .kubernetes
            .as_ref()
            .and_then(|k| k.cgroup_root.clone())
            .unwrap_or_else(|| root.to_path_buf());
        crate::k8s::cgroups::pod_cgroup(&kroot, &uid).ok_or_else(|| {
            AgentError::Other(format!(
                "POD_UID {uid}: no pod cgroup for it under {}",
                kroot.display()
            ))
        })?
    } else {
        cgroup::own_cgroup(root)
            .map_err(|e| AgentError::Other(format!("cannot find the agent's own cgroup: {e}")))?
    };
    if own == root {
        tracing::warn!(
            "the agent's own cgroup looks like the root cgroup (a private cgroup namespace?): \
             its connections are not exempted; set POD_UID on Kubernetes"
        );
        return Ok(0);
    }
    cgroup::cgroup_id(&own)
        .map_err(|e| AgentError::Other(format!("the agent's cgroup {}: {e}", own.display())))
}

/// The resolver sets a config needs: the agent's `udp.dns` first (set 0), then each
/// workload's own list, once each.
fn dns_sets(config: &AgentConfig) -> Vec<Option<Vec<IpNet>>> {
    let mut sets = vec![config.udp.dns.clone()];
    for w in &config.workloads {
        if let Some(dns) = w.udp.as_ref().and_then(|u| u.dns.clone()).map(Some)
            && !sets.contains(&dns)
        {
            sets.push(dns);
        }
    }
    sets
}

/// The networks of each resolver set, "any address" spelled out for both families.
fn dns_networks(sets: &[Option<Vec<IpNet>>]) -> Vec<Vec<IpNet>> {
    sets.iter()
        .map(|s| match s {
            Some(nets) => nets.clone(),
            None => vec![
                IpNet::V4(ipnet::Ipv4Net::default()),
                IpNet::V6(ipnet::Ipv6Net::default()),
            ],
        })
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 UTC time without a date crate.
pub fn humantime_now() -> String {
    humantime_at(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

/// RFC 3339 UTC time of a Unix time in seconds.
pub fn humantime_at(secs: u64) -> String {
    let days = secs / 86_400;
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}
