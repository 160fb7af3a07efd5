//! The agent's state, and `Agent::reconcile`, the one place that changes kernel state.
//!
//! A reconcile compiles each workload's merged policy, builds the desired kernel state, and
//! hands it with what the kernel holds to the planner (`plan`), whose operations the executor
//! applies through the maps (`store`): new policies installed in full, then workloads
//! flipped, then unused policies freed. An invalid policy set changes nothing: every
//! workload keeps its last good state. Only the core's thread (`core`) calls it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use ipnet::IpNet;
use passthrough_common::{
    Config, PodUid, Workload as KernelWorkload, config_flags, workload_flags,
};

use super::{
    loader::{self, Loader},
    maps::{Counters, Maps, MapsError},
    memo::{Chosen, Memo},
    plan::{self, Desired, DesiredWorkload},
    snapshot::{Snapshot, Watched},
    store::{Cancel, KernelStore as _, NO_POLICY, PolicyId},
};
use crate::{
    api::{
        CoveredBy, EntryCounts, KubeStatus, MapFill, PodWatchStatus, ReloadReport, ReloadResult,
        Status, WorkloadStatus,
    },
    cgroup,
    config::{
        self, AgentConfig, Containment, DefaultMode, RawSockets, UdpMode, UnknownPods,
        WorkloadConfig,
    },
    events::EventLog,
    flows::{self, FlowLog},
    k8s::{KubeProblem, KubeState},
    policy::{
        Severity,
        cache::FileCache,
        compile::{CompiledPolicy, EffectiveMode},
        decide::Exemptions,
        merge::{PolicyRef, SelectOptions},
        set::{Finding, PolicySet},
    },
    proxy::server::Stats as ProxyStats,
    view::{self as proxy_view, SharedView, View, ViewPublisher, WorkloadView},
};

/// What is enforced for one workload.
#[derive(Clone, Debug)]
struct Applied {
    cgroup_id: u64,
    containment: Containment,
    compiled: Arc<CompiledPolicy>,
    policies: Vec<PolicyRef>,
    mode_from: Option<PolicyRef>,
    /// Its policy's id in the kernel's rule maps.
    policy: PolicyId,
    generation: u64,
}

struct WorkloadState {
    config: WorkloadConfig,
    applied: Option<Applied>,
    attached: Option<u64>,
    error: Option<String>,
}

impl WorkloadState {
    fn new(config: WorkloadConfig) -> Self {
        Self {
            config,
            applied: None,
            attached: None,
            error: None,
        }
    }

    /// Its policy is in the maps and the programs are attached to the same cgroup.
    fn enforced(&self) -> bool {
        self.applied
            .as_ref()
            .is_some_and(|a| self.attached == Some(a.cgroup_id))
    }
}

pub struct Agent {
    config: AgentConfig,
    config_path: PathBuf,
    cgroup_root: PathBuf,
    pub(crate) loader: Loader,
    maps: Maps,
    /// What the kernel holds, as the planner sees it.
    kernel: plan::Applied,
    /// Set when the agent stops: a long reconcile gives up between steps.
    pub(crate) cancel: Cancel,
    workloads: Vec<WorkloadState>,
    generation: u64,
    last_reload: Option<ReloadReport>,
    /// What the peek proxy decides with, replaced after every reconcile.
    view: ViewPublisher,
    pub(crate) view_reader: SharedView,
    /// The programs' decision counters, also read live by the admin endpoint.
    pub(crate) counters: Arc<Counters>,
    pub(crate) proxy_stats: Arc<ProxyStats>,
    /// Deny, audit and proxy events.
    pub(crate) events: Arc<EventLog>,
    /// What the Kubernetes source contributes (empty without one).
    kube: KubeState,
    /// Invalid MeshPassthrough objects, for the source to report as Events.
    pub(crate) kube_problems: Arc<crate::k8s::source::Problems>,
    /// The kubepods cgroup (path, id) once the programs are attached to it.
    kubepods: Option<(PathBuf, u64)>,
    /// The resolver sets in `DNS_V4/6`: set 0 is the agent's `udp.dns`, then each
    /// workload's own list.
    dns_sets: Vec<Option<Vec<IpNet>>>,
    /// Kernel memory of the installed policies' maps, as of the last reconcile.
    policy_memory: u64,
    /// Pod cgroups the `cgroup_mkdir` program gave their first entry, while their pod is
    /// pending or a workload.
    kernel_covered: BTreeMap<u64, PodUid>,
    /// Whether the `cgroup_mkdir` program covers new pod cgroups.
    pod_watch: PodWatchStatus,
    /// This reconcile's compiled policies by the policies that select a workload: the
    /// workloads one Mesh-wide policy selects alike merge and compile once, not once each.
    compiled: std::cell::RefCell<Memo>,
    /// The policy files as last read: a reconcile reads and parses only those that changed.
    files: FileCache,
    /// The policy set of the last reconcile that applied one (for `simulate`).
    applied_policies: Arc<proxy_view::Applied>,
    /// The flow record (`flows`), fed by the flow reader and the proxy's decisions.
    pub(crate) flows: Arc<FlowLog>,
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

/// One workload's part of the desired state, or why it has none yet.
struct Wanted {
    cgroup_id: u64,
    desired: DesiredWorkload,
    applied: Applied,
}

impl Agent {
    /// Loads the programs and adopts whatever an earlier run left pinned; enforces nothing
    /// new until [`Agent::reconcile`].
    ///
    /// Before anything touches the kernel, the config and the policies it names get every
    /// check of `passthrough validate --config` ([`config::Preflight`]): an error stops the
    /// start, warnings are logged.
    pub fn start(config_path: &Path) -> Result<Self, AgentError> {
        let mut files = FileCache::default();
        let preflight = config::Preflight::run_cached(
            config_path,
            &config::Environment::this_machine(),
            &mut files,
        );
        for w in preflight.warnings() {
            tracing::warn!("{w}");
        }
        let config = preflight.into_config()?;
        tracing::debug!(peak_kib = peak_kib(), "preflight done");
        let cgroup_root = cgroup::cgroup2_root().map_err(|e| AgentError::Other(e.to_string()))?;
        let redirects = config.proxy().map_or(0, |p| {
            u32::try_from(p.max_connections.saturating_mul(4)).unwrap_or(u32::MAX)
        });
        let mut loader = Loader::load(&config.bpffs, redirects, config.flows.capacity)?;
        let mut maps = Maps::take(loader.ebpf_mut())?;
        let counters = Arc::new(Counters::take(loader.ebpf_mut())?);
        let agent_cgroup = agent_cgroup(&config, &cgroup_root)?;
        let (proxy_port_v4, proxy_port_v6) = config.proxy().map_or((0, 0), |p| p.ports());
        maps.set_config(Config {
            agent_cgroup,
            proxy_port_v4,
            proxy_port_v6,
            debug: u8::from(config.debug),
            flags: if config.flows.enabled {
                config_flags::FLOWS
            } else {
                0
            },
            ..Config::default()
        })?;
        let dns_sets = dns_sets(&config);
        maps.set_dns_sets(&dns_networks(&dns_sets))?;
        let kernel = plan::Applied::adopt(maps.read());
        if !kernel.workloads.is_empty() {
            tracing::info!(
                workloads = kernel.workloads.len(),
                policies = kernel.policies.len(),
                "adopted the enforcement state left by an earlier run"
            );
        }
        let (view, view_reader) = proxy_view::channel();
        let flows = Arc::new(FlowLog::new(
            flows::Settings {
                enabled: config.flows.enabled,
                window: config.flows.window,
                capacity: config.flows.capacity,
                history: config.flows.history,
                state_file: config.flows.state_file.clone(),
            },
            view_reader.clone(),
        ));
        let events = Arc::new(EventLog::default());
        events.send_names_to(flows.clone());
        let workloads = config
            .workloads
            .iter()
            .cloned()
            .map(WorkloadState::new)
            .collect();
        let mut agent = Self {
            config,
            config_path: config_path.to_path_buf(),
            cgroup_root,
            loader,
            maps,
            kernel,
            cancel: Cancel::default(),
            workloads,
            generation: 0,
            last_reload: None,
            view,
            view_reader,
            counters,
            proxy_stats: Arc::new(ProxyStats::default()),
            events,
            kube: KubeState::default(),
            kube_problems: Arc::default(),
            kubepods: None,
            dns_sets,
            policy_memory: 0,
            kernel_covered: BTreeMap::new(),
            pod_watch: PodWatchStatus::Inactive,
            compiled: std::cell::RefCell::default(),
            files,
            applied_policies: Arc::default(),
            flows,
        };
        agent.set_mesh_cidrs()?;
        Ok(agent)
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The detected cgroup v2 mount.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// Writes the mesh CIDRs and tells the programs which families have any.
    fn set_mesh_cidrs(&mut self) -> Result<(), AgentError> {
        let (v4, v6) = self.maps.set_mesh_cidrs(&self.config.mesh_cidrs)?;
        let mut c = self.maps.config();
        c.flags &= !(config_flags::MESH_V4 | config_flags::MESH_V6);
        if v4 {
            c.flags |= config_flags::MESH_V4;
        }
        if v6 {
            c.flags |= config_flags::MESH_V6;
        }
        self.maps.set_config(c)?;
        Ok(())
    }

    /// Tells the programs whether any workload has `udp: Deny` (else datagrams are not
    /// looked at).
    fn set_udp_flag(&mut self) {
        let any = self
            .kernel
            .workloads
            .values()
            .any(|w| w.flags & workload_flags::UDP_DENY != 0);
        let mut c = self.maps.config();
        let want = if any {
            c.flags | config_flags::UDP
        } else {
            c.flags & !config_flags::UDP
        };
        if want != c.flags {
            c.flags = want;
            if let Err(e) = self.maps.set_config(c) {
                tracing::error!("{e}");
            }
        }
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
        let sets = dns_sets(&new);
        self.maps.set_dns_sets(&dns_networks(&sets))?;
        self.dns_sets = sets;
        self.config = new;
        self.set_mesh_cidrs()?;
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
    /// left is detached (its kernel entries go with the next reconcile).
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
            let mut state = old
                .remove(&w.cgroup)
                .unwrap_or_else(|| WorkloadState::new(w.clone()));
            state.config = w;
            self.workloads.push(state);
        }
        for (_, gone) in old {
            if let Some(id) = gone.attached {
                loader::detach(&self.config.bpffs, id);
            }
            tracing::info!(cgroup = %gone.config.cgroup.display(), "workload removed");
        }
    }

    /// Brings the kernel in line with the config and the policy files.
    pub fn reconcile(&mut self) -> &ReloadReport {
        let started = std::time::Instant::now();
        self.compiled.get_mut().clear();
        let opts = self.config.select_options();
        let mut set = PolicySet::load_cached(
            &self.config.policies,
            self.kube.policies.clone(),
            &opts,
            &mut self.files,
        );
        let loaded = started.elapsed();
        let loaded_hwm = peak_kib();
        let now = jiff::Timestamp::now();
        let at = format!("{now:.0}");
        self.report_kube_problems(&set);
        let warned = set.warnings();
        for w in &warned {
            tracing::warn!(hint = w.hint.as_deref().unwrap_or(""), "{}", w.line());
        }
        let mut warnings: Vec<String> = warned.iter().map(Finding::line).collect();
        let unenforceable = self.config.unenforceable_domains(&set.policies);
        if let Some(u) = &unenforceable
            && !set.has_errors()
        {
            tracing::warn!(entries = u.entries, "{}", u.warning());
            warnings.push(u.warning());
        }
        let unenforceable_domains = unenforceable.map_or(0, |u| u.entries);
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
                unix: u64::try_from(now.as_second()).unwrap_or(0),
                result: ReloadResult::Refused,
                problems: errors.iter().map(Finding::line).collect(),
                warnings,
                // Nothing changed: the kernel keeps what the last applied set left.
                unenforceable_domains: self
                    .last_reload
                    .as_ref()
                    .map_or(0, |r| r.unenforceable_domains),
            });
        }
        let mut problems = Vec::new();
        let mut wanted: Vec<Option<Wanted>> = Vec::with_capacity(self.workloads.len());
        for i in 0..self.workloads.len() {
            match self.wanted(i, &set, &opts) {
                Ok(w) => {
                    self.workloads[i].error = None;
                    wanted.push(Some(w));
                }
                Err(e) => {
                    tracing::error!(cgroup = %self.workloads[i].config.cgroup.display(), "{e}");
                    problems.push(format!(
                        "{}: {e}",
                        self.workloads[i].config.cgroup.display()
                    ));
                    self.workloads[i].error = Some(e);
                    wanted.push(None);
                }
            }
        }
        let merged = started.elapsed();
        self.attach_kubepods();
        self.take_covered();
        let pending = self.pending(&set, &opts);
        let mut desired = self.desired(&wanted);
        self.add_pending(&mut desired, pending);
        let computed = started.elapsed();
        let computed_hwm = peak_kib();
        let (changed, planned) = self.apply(desired, &mut wanted, &mut problems);
        let applied = started.elapsed();
        self.attach_all();
        self.set_udp_flag();
        self.policy_memory = self
            .maps
            .policy_memory(self.kernel.policies.keys().copied());
        self.applied_policies = Arc::new(proxy_view::Applied {
            policies: std::mem::take(&mut set.policies),
            kuma: opts.kuma,
            system_namespace: opts.system_namespace.clone(),
            default_none: self.config.default_mode == Some(DefaultMode::None),
        });
        self.publish_proxy_view();
        drop(set);
        // What this pass compiled is held by the workloads that use it; the rest goes now.
        self.compiled.get_mut().clear();
        release_freed_memory();
        if changed {
            self.generation += 1;
            tracing::info!(generation = self.generation, "policy applied");
        }
        // Where a reconcile's time goes (docs/architecture.md, "Change propagation").
        tracing::debug!(
            workloads = self.workloads.len(),
            files_parsed = self.files.parsed_last,
            load_us = loaded.as_micros(),
            merge_us = (merged - loaded).as_micros(),
            desired_us = (computed - merged).as_micros(),
            plan_us = planned.as_micros(),
            compute_us = (computed + planned).as_micros(),
            write_us = (applied - computed - planned).as_micros(),
            after_us = (started.elapsed() - applied).as_micros(),
            peak_kib_loaded = loaded_hwm,
            peak_kib_computed = computed_hwm,
            peak_kib = peak_kib(),
            "reconciled"
        );
        self.last_reload.insert(ReloadReport {
            at,
            unix: u64::try_from(now.as_second()).unwrap_or(0),
            result: if !problems.is_empty() {
                ReloadResult::Partial
            } else if changed {
                ReloadResult::Applied
            } else {
                ReloadResult::Unchanged
            },
            problems,
            warnings,
            unenforceable_domains,
        })
    }

    /// Plans and executes; records what each workload now has. `true` when the kernel
    /// changed, and how long the planning took.
    fn apply(
        &mut self,
        desired: Desired,
        wanted: &mut [Option<Wanted>],
        problems: &mut Vec<String>,
    ) -> (bool, std::time::Duration) {
        let started = std::time::Instant::now();
        let planned = plan::plan(&desired, &self.kernel);
        let took = started.elapsed();
        let ops = match planned {
            Ok(ops) => ops,
            Err(e) => {
                tracing::error!("{e}");
                problems.push(e.to_string());
                return (false, took);
            }
        };
        if ops.is_empty() {
            return (false, took);
        }
        let outcome = plan::execute(ops, &mut self.maps, &mut self.kernel, &self.cancel);
        if outcome.cancelled {
            tracing::warn!(
                "reconcile abandoned: the agent is stopping; the kernel keeps its last complete state"
            );
        }
        for f in &outcome.failures {
            tracing::error!("{}", f.error);
        }
        let failed: BTreeSet<u64> = outcome.failures.iter().filter_map(|f| f.cgroup).collect();
        for f in outcome.failures.iter().filter(|f| f.cgroup.is_none()) {
            problems.push(f.error.to_string());
        }
        let mut changed = false;
        for (i, w) in wanted.iter_mut().enumerate() {
            let Some(w) = w.take() else { continue };
            // What the kernel now holds for the workload decides what it has.
            let Some(value) = self.kernel.workloads.get(&w.cgroup_id).copied() else {
                continue;
            };
            let holds = value.mode == w.desired.mode
                && value.flags == w.desired.flags
                && value.dns_set == w.desired.dns_set
                && (w.desired.tables.is_empty() && value.policy == NO_POLICY
                    || self
                        .kernel
                        .policies
                        .get(&value.policy)
                        .and_then(|p| p.tables.as_ref())
                        .is_some_and(|t| *t == w.desired.tables));
            if !holds {
                if failed.contains(&w.cgroup_id) {
                    let cgroup = self.workloads[i].config.cgroup.display().to_string();
                    let e = "its new policy could not be written to the kernel (see the log); it keeps its last good state";
                    problems.push(format!("{cgroup}: {e}"));
                    self.workloads[i].error = Some(e.into());
                }
                continue;
            }
            let unchanged = self.workloads[i].applied.as_ref().is_some_and(|a| {
                a.cgroup_id == w.cgroup_id
                    && a.compiled == w.applied.compiled
                    && a.containment == w.applied.containment
            });
            if !unchanged {
                changed = true;
                self.workloads[i].applied = Some(Applied {
                    policy: value.policy,
                    generation: self.generation + 1,
                    ..w.applied
                });
            }
        }
        (changed || outcome.done > 0, took)
    }

    /// One workload's desired kernel state.
    fn wanted(&self, i: usize, set: &PolicySet, opts: &SelectOptions) -> Result<Wanted, String> {
        let wc = &self.workloads[i].config;
        cgroup::check_workload_cgroup(&self.cgroup_root, &wc.cgroup)?;
        let cgroup_id = cgroup::cgroup_id(&wc.cgroup).map_err(|e| {
            format!(
                "cgroup {} is not there ({e}): waiting for it to appear",
                wc.cgroup.display()
            )
        })?;
        let chosen = self.compiled_for(&wc.identity(), wc.audit, set, opts)?;
        let compiled = chosen.compiled.clone();
        let containment = wc.containment(&self.config);
        let k = self.kernel_entry(compiled.mode.kernel(), compiled.audit, &containment);
        Ok(Wanted {
            cgroup_id,
            desired: DesiredWorkload {
                tables: compiled.tables.clone(),
                mode: k.mode,
                flags: k.flags,
                dns_set: k.dns_set,
            },
            applied: Applied {
                cgroup_id,
                containment,
                compiled,
                policies: chosen.policies.clone(),
                mode_from: chosen.mode_from.clone(),
                policy: NO_POLICY,
                generation: 0,
            },
        })
    }

    /// A workload's merged and compiled policy, with the agent's defaults applied.
    fn compiled_for(
        &self,
        identity: &crate::policy::workload::Workload,
        audit: bool,
        set: &PolicySet,
        opts: &SelectOptions,
    ) -> Result<Arc<Chosen>, String> {
        let default_none = self.config.default_mode == Some(DefaultMode::None);
        let agent_audit = self.config.audit;
        self.compiled
            .borrow_mut()
            .get(&set.policies, identity, audit, opts, |c, audit| {
                if c.mode == EffectiveMode::Unfiltered && default_none {
                    c.mode = EffectiveMode::None;
                }
                c.audit |= agent_audit || audit;
            })
    }

    /// The entries of the pods reported without a cgroup yet, for `PENDING_PODS`. A pod
    /// whose policy cannot be computed gets none (its cgroup then gets the kubepods default
    /// until the agent sees it, and the agent reports why).
    fn pending(&self, set: &PolicySet, opts: &SelectOptions) -> BTreeMap<PodUid, DesiredWorkload> {
        let containment = self.agent_containment();
        let mut out = BTreeMap::new();
        if !matches!(self.pod_watch, PodWatchStatus::Active) {
            return out;
        }
        for p in &self.kube.pending {
            match self.compiled_for(&p.identity, false, set, opts) {
                Ok(chosen) => {
                    let compiled = &chosen.compiled;
                    let k = self.kernel_entry(compiled.mode.kernel(), compiled.audit, &containment);
                    out.insert(
                        p.uid,
                        DesiredWorkload {
                            tables: compiled.tables.clone(),
                            mode: k.mode,
                            flags: k.flags,
                            dns_set: k.dns_set,
                        },
                    );
                }
                Err(e) => tracing::warn!(pod = %p.label, "no pending entry: {e}"),
            }
        }
        out
    }

    /// Takes in the pod cgroups the `cgroup_mkdir` program covered: from now on their
    /// entries are the agent's, to correct or remove like any other.
    fn take_covered(&mut self) {
        if !matches!(self.pod_watch, PodWatchStatus::Active) {
            return;
        }
        for c in self.maps.take_covered() {
            if let Some(w) = c.workload {
                self.kernel.workloads.insert(c.cgroup, w);
            }
            if let Some(owner) = c.link {
                self.kernel.links.insert(c.cgroup, owner);
            }
            tracing::debug!(
                cgroup = c.cgroup,
                "a new pod cgroup was covered by the kernel"
            );
            self.kernel_covered.insert(c.cgroup, c.uid);
        }
    }

    /// Adds the pending pods' entries, and keeps the entries the kernel wrote for the
    /// cgroups of pods still pending (the agent has not seen the cgroup yet): they get the
    /// pod's current entry, so a policy change reaches them too.
    fn add_pending(&mut self, d: &mut Desired, pending: BTreeMap<PodUid, DesiredWorkload>) {
        let workloads: BTreeSet<u64> = self
            .workloads
            .iter()
            .filter_map(|w| w.applied.as_ref().map(|a| a.cgroup_id))
            .collect();
        self.kernel_covered.retain(|id, uid| {
            if let Some(w) = pending.get(uid) {
                d.workloads.entry(*id).or_insert_with(|| w.clone());
                d.links.entry(*id).or_insert(*id);
                true
            } else {
                workloads.contains(id) || d.workloads.contains_key(id)
            }
        });
        d.pending = pending;
    }

    /// The whole desired kernel state: the workloads, the entries of Kubernetes' unknown
    /// and left-alone pods, and the links of every cgroup below a workload.
    fn desired(&self, wanted: &[Option<Wanted>]) -> Desired {
        let mut d = Desired::default();
        let empty = Arc::new(crate::policy::tables::Tables::default());
        let mode_only = |entry: KernelWorkload| DesiredWorkload {
            tables: empty.clone(),
            mode: entry.mode,
            flags: entry.flags,
            dns_set: entry.dns_set,
        };
        if let (Some(k), Some((_, id))) = (&self.config.kubernetes, &self.kubepods)
            && k.unknown_pods == UnknownPods::Deny
        {
            // Pods the agent has not been told about yet: denied. Below it, the deeper
            // entry of each known pod wins.
            d.workloads.insert(
                *id,
                mode_only(self.kernel_entry(
                    passthrough_common::mode::NONE,
                    self.config.audit,
                    &self.agent_containment(),
                )),
            );
            for p in &self.kube.others {
                if let Ok(id) = cgroup::cgroup_id(p) {
                    d.workloads.insert(
                        id,
                        mode_only(self.kernel_entry(
                            passthrough_common::mode::UNFILTERED,
                            false,
                            &self.agent_containment(),
                        )),
                    );
                }
            }
        }
        let mut roots: Vec<(&Path, u64)> = Vec::new();
        for (w, state) in wanted.iter().zip(&self.workloads) {
            match w {
                Some(w) => {
                    d.workloads.insert(w.cgroup_id, w.desired.clone());
                    roots.push((&state.config.cgroup, w.cgroup_id));
                }
                // Not computable now: it keeps what the kernel has, and nothing is swept.
                None => {
                    d.complete = false;
                    if let Some(a) = &state.applied
                        && let Some(value) = self.kernel.workloads.get(&a.cgroup_id)
                    {
                        d.workloads.insert(
                            a.cgroup_id,
                            DesiredWorkload {
                                tables: self
                                    .kernel
                                    .policies
                                    .get(&value.policy)
                                    .and_then(|p| p.tables.clone())
                                    .unwrap_or_else(|| a.compiled.tables.clone()),
                                mode: value.mode,
                                flags: value.flags,
                                dns_set: value.dns_set,
                            },
                        );
                    }
                }
            }
        }
        if wanted.iter().all(Option::is_some)
            && (self.config.kubernetes.is_none() || self.kube.synced)
        {
            d.complete = true;
        }
        d.links = links(&roots);
        d
    }

    /// The `WORKLOADS` value for a workload of kernel mode `mode` (policy left empty): the
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
            policy: NO_POLICY,
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
                let object = p.source()?.object.as_ref()?;
                Some(KubeProblem {
                    namespace: object.namespace.clone(),
                    name: object.name.clone(),
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
                            identity: w.config.identity(),
                            policy: a.compiled.clone(),
                        },
                    ))
                })
                .collect(),
            exemptions: Exemptions {
                mesh_cidrs: self.config.mesh_cidrs.clone(),
            },
            applied: self.applied_policies.clone(),
        };
        self.view.publish(view);
    }

    /// Attaches the programs to every workload cgroup that has its state written.
    fn attach_all(&mut self) {
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
        if self.last_reload.is_some() || !self.kernel.workloads.is_empty() {
            self.detach_leftovers();
        }
    }

    /// Links of cgroups no current workload (or the kubepods attachment) stands for: left by
    /// an earlier run or by workloads that left. Only once every workload is enforced.
    fn detach_leftovers(&mut self) {
        if !self.workloads.iter().all(WorkloadState::enforced) {
            return;
        }
        let mut live: BTreeSet<u64> = self.workloads.iter().filter_map(|w| w.attached).collect();
        if let Some((_, id)) = &self.kubepods {
            live.insert(*id);
        }
        for id in loader::attached_cgroups(&self.config.bpffs) {
            if !live.contains(&id) {
                loader::detach(&self.config.bpffs, id);
            }
        }
        let old = loader::remove_old_layouts(&self.config.bpffs);
        if old > 0 {
            tracing::info!(pins = old, "removed the maps of an earlier map layout");
        }
    }

    /// With Kubernetes, attaches the programs once to the parent of all pod cgroups, so a pod
    /// is covered the moment its entry is written (and new pods need no attachment). With
    /// `unknownPods: Deny`, its default entry is written first, so that no pod is ever judged
    /// without it.
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
        if k.unknown_pods == UnknownPods::Deny {
            let entry = self.kernel_entry(
                passthrough_common::mode::NONE,
                self.config.audit,
                &self.agent_containment(),
            );
            match self.maps.set_workload(id, entry) {
                Ok(()) => {
                    self.kernel.workloads.insert(id, entry);
                }
                Err(e) => {
                    tracing::error!("kubepods default entry: {e}");
                    return;
                }
            }
        }
        match self.loader.attach(&path, id) {
            Ok(()) => {
                tracing::info!(cgroup = %path.display(), "enforcing on every pod of this node");
                self.start_pod_watch(&path);
                self.kubepods = Some((path, id));
            }
            Err(e) => tracing::error!(cgroup = %path.display(), "{e}"),
        }
    }

    /// Has the kernel give new pod cgroups below `kubepods` their pending entry.
    fn start_pod_watch(&mut self, kubepods: &Path) {
        let watch = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("/proc/self/mountinfo: {e}"))
            .and_then(|text| {
                super::podwatch::mount_root(&text, &self.cgroup_root).ok_or_else(|| {
                    format!(
                        "no cgroup2 mount at {} in /proc/self/mountinfo",
                        self.cgroup_root.display()
                    )
                })
            })
            .and_then(|root| super::podwatch::pod_watch(&self.cgroup_root, &root, kubepods));
        let started = watch.and_then(|w| {
            self.maps.set_pod_watch(&w).map_err(|e| e.to_string())?;
            self.loader.attach_pod_watch().map_err(|e| e.to_string())
        });
        self.pod_watch = match started {
            Ok(()) => {
                tracing::info!(cgroup = %kubepods.display(), "new pod cgroups are covered as they are created");
                PodWatchStatus::Active
            }
            Err(e) => {
                tracing::warn!("new pod cgroups are covered only once the agent sees them: {e}");
                PodWatchStatus::Failed(e)
            }
        };
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

    /// What the core publishes after a pass.
    /// Frees the proxy views replaced since, once no reader holds them; how many remain.
    pub fn release_views(&self) -> usize {
        self.view.release()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            status: self.status(),
            watched: Watched {
                policies: self.config.policies.clone(),
                cgroups: self
                    .workloads
                    .iter()
                    .map(|w| w.config.cgroup.clone())
                    .collect(),
            },
            pods: self.kube_cgroups(),
        }
    }

    /// The kernel maps' fill: workloads, links and policies against their capacity.
    fn map_fill(&self) -> Vec<MapFill> {
        use passthrough_common::{capacity, map_names};
        [
            (
                map_names::WORKLOADS,
                self.kernel.workloads.len(),
                capacity::WORKLOADS,
            ),
            (
                map_names::CGROUPS,
                self.kernel.links.len(),
                capacity::CGROUPS,
            ),
            (
                "POLICIES",
                self.kernel.policies.len(),
                capacity::POLICIES - 1,
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

    /// Entries over every installed policy's tables.
    fn policy_entries(&self) -> EntryCounts {
        let mut total = EntryCounts::default();
        for p in self.kernel.policies.values() {
            if let Some(t) = &p.tables {
                let c = EntryCounts::of(t);
                total.exact_v4 += c.exact_v4;
                total.exact_v6 += c.exact_v6;
                total.cidr_v4 += c.cidr_v4;
                total.cidr_v6 += c.cidr_v6;
                total.domain_ports += c.domain_ports;
            }
        }
        total
    }

    pub fn status(&self) -> Status {
        let counters = self
            .counters
            .read()
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
            slots: self.kernel.policies.len(),
            maps: self.map_fill(),
            policy_entries: self.policy_entries(),
            policy_memory_bytes: self.policy_memory,
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
                        .map(|a| EntryCounts::of(&a.compiled.tables))
                        .unwrap_or_default(),
                    slot: w.applied.as_ref().map(|a| a.policy),
                    containment: w.applied.as_ref().map(|a| a.containment.clone()),
                    generation: w.applied.as_ref().map(|a| a.generation),
                    covered_by: w.applied.as_ref().map(|a| {
                        if self.kernel_covered.contains_key(&a.cgroup_id) {
                            CoveredBy::Kernel
                        } else {
                            CoveredBy::Agent
                        }
                    }),
                    error: w.error.clone(),
                })
                .collect(),
            counters,
            packet_sockets: self.loader.packet_sockets().clone(),
            proxy: self.config.proxy().map(|_| self.proxy_stats.snapshot()),
            events: self.events.counts(),
            kubernetes: self.config.kubernetes.as_ref().map(|_| KubeStatus {
                synced: self.kube.synced,
                connected: self.kube.connected,
                error: self.kube.error.clone(),
                policies: self.kube.policies.len(),
                pods: self.kube.workloads.len(),
                pending: self.kube.pending.len(),
                pod_watch: self.pod_watch.clone(),
            }),
            flows: Some(self.flows.table()),
        }
    }
}

/// Every cgroup below a workload (and the workload's own) -> the deepest workload on its
/// path, as the programs' ancestor walk would find it.
fn links(roots: &[(&Path, u64)]) -> BTreeMap<u64, u64> {
    let mut roots: Vec<(&Path, u64)> = roots.to_vec();
    // Deepest first: a cgroup below two workloads belongs to the deeper one.
    roots.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    let mut out = BTreeMap::new();
    for (path, id) in roots {
        if out.len() >= passthrough_common::capacity::CGROUPS as usize {
            tracing::warn!(
                "more cgroups below workloads than CGROUPS holds ({}): the rest use the ancestor walk",
                passthrough_common::capacity::CGROUPS
            );
            break;
        }
        out.entry(id).or_insert(id);
        for (_, child) in cgroup::descendants(path) {
            out.entry(child).or_insert(id);
        }
    }
    out
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

/// Gives the memory a reconcile freed (the parsed policy files) back to the system: the
/// allocator keeps it otherwise, and a large policy set would hold the agent at its peak.
/// The process's peak resident memory so far (`VmHWM`), for the reconcile's debug line.
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's heaps to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
