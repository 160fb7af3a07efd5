//! Typed handles on the kernel maps, and the [`KernelStore`] on them. The only module that
//! touches `aya::maps`.
//!
//! A compiled policy is installed as up to five inner maps (exact IPv4 and IPv6 entries, IPv4
//! and IPv6 CIDRs, Domain ports), each created for exactly its entries, filled with batch
//! updates, and only then put into the outer arrays at the policy's id.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsFd as _,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key},
};
use ipnet::IpNet;
use passthrough_common::{
    Config, DNS_FIXED_BITS, DnsV4Data, DnsV6Data, FlowKey, FlowMemo, FlowValue, PodUid, PodWatch,
    Reason, RuleRef, Workload, capacity, flow_counter, map_names as names,
};

use super::{
    store::{Cancel, KernelState, KernelStore, PolicyId, StoreError},
    syscall::{self, UpdateError},
};
use crate::policy::tables::{Patch, Tables};

/// A map could not be opened; names the map.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {0} is missing from the BPF object or its pin directory")]
    Missing(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

fn at(map: &'static str) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError::Map { map, source }
}

/// `BPF_F_NO_PREALLOC`: the inner maps' flags must equal their templates' (maps.rs of the
/// programs).
const INNER_FLAGS: u32 = 1;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;

/// An outer array of a rule map: policy id -> inner map.
pub struct Outer {
    name: &'static str,
    data: MapData,
}

impl Outer {
    fn new(name: &'static str, map: Map) -> Result<Self, MapsError> {
        match map {
            Map::ArrayOfMaps(data) => Ok(Self { name, data }),
            _ => Err(MapsError::Map {
                map: name,
                source: MapError::InvalidName { name: name.into() },
            }),
        }
    }

    /// Puts `inner` at `id`.
    fn set(&self, id: PolicyId, inner: &MapData) -> Result<(), StoreError> {
        use std::os::fd::AsRawFd as _;
        let fd: u32 = inner.fd().as_fd().as_raw_fd() as u32;
        syscall::update_one(self.data.fd().as_fd(), &id, &fd).map_err(|source| StoreError::Kernel {
            map: self.name,
            op: "install",
            source,
        })
    }

    /// The inner map at `id`, if any.
    fn get(&self, id: PolicyId) -> Option<MapData> {
        let map_id: u32 = syscall::lookup(self.data.fd().as_fd(), &id).ok()??;
        MapData::from_id(map_id).ok()
    }

    fn remove(&self, id: PolicyId) {
        let _ = syscall::delete(self.data.fd().as_fd(), &id);
    }
}

pub struct Maps {
    workloads: HashMap<MapData, u64, Workload>,
    cgroups: HashMap<MapData, u64, u64>,
    exact_v4: Outer,
    exact_v6: Outer,
    cidr_v4: Outer,
    cidr_v6: Outer,
    domain_ports: Outer,
    mesh_v4: LpmTrie<MapData, [u8; 4], u32>,
    mesh_v6: LpmTrie<MapData, [u8; 16], u32>,
    dns_v4: LpmTrie<MapData, DnsV4Data, u32>,
    dns_v6: LpmTrie<MapData, DnsV6Data, u32>,
    config: Array<MapData, Config>,
    pending: HashMap<MapData, PodUid, Workload>,
    pod_watch: Array<MapData, PodWatch>,
    covered: HashMap<MapData, u64, PodUid>,
    /// `GENERATION`: bumped after every write to `WORKLOADS`, `CGROUPS` and `CONFIG`, so the
    /// programs' per-CPU cache of callers' workloads (`CALLERS`) forgets what they said.
    generation: Array<MapData, u64>,
    /// The last value written to `generation` (continued from the pinned value on restart,
    /// so it never repeats one the programs may have cached).
    last_generation: u64,
}

/// A pod cgroup the `cgroup_mkdir` program gave an entry, and what it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Covered {
    pub cgroup: u64,
    pub uid: PodUid,
    /// Its `WORKLOADS` entry now (`None` if the cgroup's entry is already gone).
    pub workload: Option<Workload>,
    /// Its `CGROUPS` entry now.
    pub link: Option<u64>,
}

/// The programs' decision counters (`COUNTERS`), read live by the admin endpoint: reading
/// them takes no lock the reconcile holds.
pub struct Counters(PerCpuArray<MapData, u64>);

impl Counters {
    /// Takes `COUNTERS` out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        let map = ebpf
            .take_map(names::COUNTERS)
            .ok_or(MapsError::Missing(names::COUNTERS))?;
        Ok(Self(
            PerCpuArray::try_from(map).map_err(at(names::COUNTERS))?,
        ))
    }

    /// Decisions per [`Reason`], summed over CPUs.
    pub fn read(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .map(|&r| {
                let n = self
                    .0
                    .get(&(r as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (r, n)
            })
            .collect()
    }
}

/// `FLOWS` and `FLOW_INSERTS`: the flow table, read (never written) for the flow record.
pub struct FlowTable {
    flows: HashMap<MapData, FlowKey, FlowValue>,
    inserts: PerCpuArray<MapData, u64>,
    memo: PerCpuArray<MapData, FlowMemo>,
}

impl FlowTable {
    /// Takes `FLOWS` and `FLOW_INSERTS` out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(MapsError::Missing(name));
        let flows = take(names::FLOWS)?;
        let inserts = take(names::FLOW_INSERTS)?;
        let memo = take(names::FLOW_MEMO)?;
        Ok(Self {
            flows: HashMap::try_from(flows).map_err(at(names::FLOWS))?,
            inserts: PerCpuArray::try_from(inserts).map_err(at(names::FLOW_INSERTS))?,
            memo: PerCpuArray::try_from(memo).map_err(at(names::FLOW_MEMO))?,
        })
    }

    fn counter(&self, index: u32) -> Result<u64, String> {
        self.inserts
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .map_err(|e| format!("map {}: reading counter {index}: {e}", names::FLOW_INSERTS))
    }
}

impl crate::flows::KernelFlows for FlowTable {
    /// Every entry, each once (an iteration that restarts after a concurrent eviction may
    /// meet an entry twice; the later reading wins), with the connects the CPUs' `FLOW_MEMO`
    /// slots hold for it. `FLOWS` is read first: a slot's connects added to `FLOWS` in
    /// between are then missed once, never counted twice.
    fn read(&mut self) -> Result<crate::flows::KernelRead, String> {
        let inserted = self.counter(flow_counter::INSERTED)?;
        let raced = self.counter(flow_counter::RACED)?;
        let mut seen = std::collections::HashMap::new();
        for entry in self.flows.iter() {
            match entry {
                Ok((k, v)) => {
                    seen.insert(k, v);
                }
                // Evicted between finding its key and reading it: it is not present.
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(format!("map {}: reading entries: {e}", names::FLOWS)),
            }
        }
        let mut slots = Vec::new();
        for index in 0..capacity::FLOW_MEMO {
            let values = self
                .memo
                .get(&index, 0)
                .map_err(|e| format!("map {}: reading slot {index}: {e}", names::FLOW_MEMO))?;
            slots.extend(values.iter().copied());
        }
        crate::flows::add_pending(&mut seen, &slots);
        Ok(crate::flows::KernelRead {
            entries: seen.into_iter().collect(),
            inserted,
            raced,
        })
    }
}

/// An inner map for `n` entries of `key_size` -> `value_size` bytes.
fn inner(
    map: &'static str,
    kind: u32,
    key_size: usize,
    value_size: usize,
    n: usize,
) -> Result<MapData, StoreError> {
    let max = u32::try_from(n.max(1)).map_err(|_| StoreError::Full {
        map,
        capacity: u32::MAX,
        what: "one policy's entries of one table",
    })?;
    let obj =
        aya_obj::Map::new_from_params(kind, key_size as u32, value_size as u32, max, INNER_FLAGS);
    MapData::create(obj, &format!("pt_{}", map.to_ascii_lowercase()), None).map_err(|e| {
        StoreError::Kernel {
            map,
            op: "create",
            source: match e {
                MapError::CreateError { io_error, .. } => io_error,
                other => std::io::Error::other(other.to_string()),
            },
        }
    })
}

/// Fills an inner map, one batch of keys and values in memory at a time (a million entries
/// laid out whole would be tens of MiB more at the agent's peak).
fn fill<K: Copy, V: Copy>(
    map: &'static str,
    data: &MapData,
    mut entries: impl Iterator<Item = (K, V)>,
    cancel: &Cancel,
) -> Result<(), StoreError> {
    let mut keys = Vec::with_capacity(syscall::BATCH);
    let mut values = Vec::with_capacity(syscall::BATCH);
    loop {
        keys.clear();
        values.clear();
        for (k, v) in entries.by_ref().take(syscall::BATCH) {
            keys.push(k);
            values.push(v);
        }
        if keys.is_empty() {
            return Ok(());
        }
        syscall::update_all(data.fd().as_fd(), &keys, &values, cancel).map_err(|e| match e {
            UpdateError::Cancelled => StoreError::Cancelled,
            UpdateError::Kernel(source) => StoreError::Kernel {
                map,
                op: "write",
                source,
            },
        })?;
    }
}

/// Tables at least this large get a thread of their own; smaller ones are not worth one.
const PARALLEL_FROM: usize = 16 * 1024;

/// A build job: one inner map made and filled, with the number of entries it writes.
type Job<'a> = (
    usize,
    Box<dyn FnOnce() -> Result<(&'static str, MapData), StoreError> + Send + 'a>,
);

/// The job that creates an inner map of `map` sized for `entries` and fills it; `None` when
/// there are no entries (the program finds no table and matches nothing).
fn job<'a, K: Copy + 'a>(
    map: &'static str,
    kind: u32,
    entries: impl ExactSizeIterator<Item = (K, RuleRef)> + Send + 'a,
    cancel: &'a Cancel,
) -> Option<Job<'a>> {
    let n = entries.len();
    (n > 0).then(|| -> Job<'a> {
        (
            n,
            Box::new(move || {
                let m = inner(map, kind, size_of::<K>(), size_of::<RuleRef>(), n)?;
                fill(map, &m, entries, cancel)?;
                Ok((map, m))
            }),
        )
    })
}

/// Runs the jobs, each of at least [`PARALLEL_FROM`] entries on a thread of its own, and
/// returns their maps in the jobs' order, or the first error (maps already built are closed,
/// never placed). A thread that cannot be had leaves its job to this one.
fn run_jobs(jobs: Vec<Job<'_>>) -> Result<Vec<(&'static str, MapData)>, StoreError> {
    type Slot<'a> = std::sync::Mutex<Option<Job<'a>>>;
    let sizes: Vec<usize> = jobs.iter().map(|(n, _)| *n).collect();
    let slots: Vec<Slot<'_>> = jobs
        .into_iter()
        .map(|job| std::sync::Mutex::new(Some(job)))
        .collect();
    let take = |slot: &Slot<'_>| {
        let job = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        job.map(|(_, run)| run())
    };
    std::thread::scope(|s| {
        let threads: Vec<_> = slots
            .iter()
            .zip(sizes)
            .map(|(slot, n)| {
                (n >= PARALLEL_FROM)
                    .then(|| {
                        std::thread::Builder::new()
                            .name("passthrough-fill".into())
                            .spawn_scoped(s, || take(slot))
                            .ok()
                    })
                    .flatten()
            })
            .collect();
        // The small jobs (and any whose thread could not be had) run here meanwhile.
        let mut results: Vec<_> = slots
            .iter()
            .zip(&threads)
            .map(|(slot, thread)| if thread.is_none() { take(slot) } else { None })
            .collect();
        for (result, thread) in results.iter_mut().zip(threads) {
            if let Some(handle) = thread {
                *result = handle
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p));
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(StoreError::Cancelled)))
            .collect()
    })
}

/// Deletes `removed` from the inner map of `outer` at `id`, then writes `written` (nothing
/// to do leaves the map alone).
fn patch_inner<K: Copy, V: Copy>(
    outer: &Outer,
    id: PolicyId,
    removed: impl ExactSizeIterator<Item = K>,
    written: impl ExactSizeIterator<Item = (K, V)>,
) -> Result<(), StoreError> {
    if removed.len() == 0 && written.len() == 0 {
        return Ok(());
    }
    let Some(inner) = outer.get(id) else {
        return Err(StoreError::Kernel {
            map: outer.name,
            op: "patch",
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
    };
    for k in removed {
        syscall::delete(inner.fd().as_fd(), &k).map_err(|source| StoreError::Kernel {
            map: outer.name,
            op: "delete",
            source,
        })?;
    }
    fill(outer.name, &inner, written, &Cancel::default())
}

impl Maps {
    /// Takes the maps out of a loaded object (the loader pinned them).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        Self::from_source(|name| ebpf.take_map(name))
    }

    fn from_source(mut get: impl FnMut(&'static str) -> Option<Map>) -> Result<Self, MapsError> {
        let mut take = |name: &'static str| get(name).ok_or(MapsError::Missing(name));
        let generation: Array<MapData, u64> =
            Array::try_from(take(names::GENERATION)?).map_err(at(names::GENERATION))?;
        let last_generation = generation.get(&0, 0).unwrap_or(0);
        Ok(Self {
            workloads: HashMap::try_from(take(names::WORKLOADS)?).map_err(at(names::WORKLOADS))?,
            cgroups: HashMap::try_from(take(names::CGROUPS)?).map_err(at(names::CGROUPS))?,
            exact_v4: Outer::new(names::EXACT_V4, take(names::EXACT_V4)?)?,
            exact_v6: Outer::new(names::EXACT_V6, take(names::EXACT_V6)?)?,
            cidr_v4: Outer::new(names::CIDR_V4, take(names::CIDR_V4)?)?,
            cidr_v6: Outer::new(names::CIDR_V6, take(names::CIDR_V6)?)?,
            domain_ports: Outer::new(names::DOMAIN_PORTS, take(names::DOMAIN_PORTS)?)?,
            mesh_v4: LpmTrie::try_from(take(names::MESH_V4)?).map_err(at(names::MESH_V4))?,
            mesh_v6: LpmTrie::try_from(take(names::MESH_V6)?).map_err(at(names::MESH_V6))?,
            dns_v4: LpmTrie::try_from(take(names::DNS_V4)?).map_err(at(names::DNS_V4))?,
            dns_v6: LpmTrie::try_from(take(names::DNS_V6)?).map_err(at(names::DNS_V6))?,
            config: Array::try_from(take(names::CONFIG)?).map_err(at(names::CONFIG))?,
            pending: HashMap::try_from(take(names::PENDING_PODS)?)
                .map_err(at(names::PENDING_PODS))?,
            pod_watch: Array::try_from(take(names::POD_WATCH)?).map_err(at(names::POD_WATCH))?,
            covered: HashMap::try_from(take(names::KERNEL_COVERED)?)
                .map_err(at(names::KERNEL_COVERED))?,
            generation,
            last_generation,
        })
    }

    /// Tells the `cgroup_mkdir` program which new cgroups it may act for.
    pub fn set_pod_watch(&mut self, w: &PodWatch) -> Result<(), MapsError> {
        self.pod_watch.set(0, *w, 0).map_err(at(names::POD_WATCH))
    }

    /// The pod cgroups the `cgroup_mkdir` program covered since the last call, with the
    /// entries it wrote for them (`WORKLOADS`, `CGROUPS`); each is removed from
    /// `KERNEL_COVERED` as it is taken.
    pub fn take_covered(&mut self) -> Vec<Covered> {
        let ids: Vec<(u64, PodUid)> = self.covered.iter().filter_map(Result::ok).collect();
        ids.into_iter()
            .map(|(cgroup, uid)| {
                let _ = self.covered.remove(&cgroup);
                Covered {
                    cgroup,
                    uid,
                    workload: self.workloads.get(&cgroup, 0).ok(),
                    link: self.cgroups.get(&cgroup, 0).ok(),
                }
            })
            .collect()
    }

    fn outers(&self) -> [&Outer; 5] {
        [
            &self.exact_v4,
            &self.exact_v6,
            &self.cidr_v4,
            &self.cidr_v6,
            &self.domain_ports,
        ]
    }

    /// Replaces the mesh CIDRs with `cidrs`; returns which families have any.
    pub fn set_mesh_cidrs(&mut self, cidrs: &[IpNet]) -> Result<(bool, bool), MapsError> {
        let mut want_v4 = BTreeSet::new();
        let mut want_v6 = BTreeSet::new();
        for (i, n) in cidrs.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            match n.trunc() {
                IpNet::V4(n) => {
                    let k = (u32::from(n.prefix_len()), n.network().octets());
                    self.mesh_v4
                        .insert(&Key::new(k.0, k.1), i, 0)
                        .map_err(at(names::MESH_V4))?;
                    want_v4.insert(k);
                }
                IpNet::V6(n) => {
                    let k = (u32::from(n.prefix_len()), n.network().octets());
                    self.mesh_v6
                        .insert(&Key::new(k.0, k.1), i, 0)
                        .map_err(at(names::MESH_V6))?;
                    want_v6.insert(k);
                }
            }
        }
        let old: Vec<Key<[u8; 4]>> = self.mesh_v4.keys().filter_map(Result::ok).collect();
        for k in old {
            if !want_v4.contains(&(k.prefix_len(), k.data())) {
                let _ = self.mesh_v4.remove(&k);
            }
        }
        let old: Vec<Key<[u8; 16]>> = self.mesh_v6.keys().filter_map(Result::ok).collect();
        for k in old {
            if !want_v6.contains(&(k.prefix_len(), k.data())) {
                let _ = self.mesh_v6.remove(&k);
            }
        }
        Ok((!want_v4.is_empty(), !want_v6.is_empty()))
    }

    /// Replaces the resolver sets: set `i` holds the networks of `sets[i]` (both families:
    /// `0.0.0.0/0` and `::/0` stand for "any address").
    pub fn set_dns_sets(&mut self, sets: &[Vec<IpNet>]) -> Result<(), MapsError> {
        let mut want_v4 = BTreeSet::new();
        let mut want_v6 = BTreeSet::new();
        for (set, nets) in sets.iter().enumerate() {
            let set = u16::try_from(set).unwrap_or(u16::MAX);
            for (i, n) in nets.iter().enumerate() {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                match n.trunc() {
                    IpNet::V4(n) => {
                        let k = Key::new(
                            DNS_FIXED_BITS + u32::from(n.prefix_len()),
                            DnsV4Data::new(set, n.network().octets()),
                        );
                        self.dns_v4.insert(&k, i, 0).map_err(at(names::DNS_V4))?;
                        want_v4.insert((k.prefix_len(), k.data()));
                    }
                    IpNet::V6(n) => {
                        let k = Key::new(
                            DNS_FIXED_BITS + u32::from(n.prefix_len()),
                            DnsV6Data::new(set, n.network().octets()),
                        );
                        self.dns_v6.insert(&k, i, 0).map_err(at(names::DNS_V6))?;
                        want_v6.insert((k.prefix_len(), k.data()));
                    }
                }
            }
        }
        let old: Vec<Key<DnsV4Data>> = self.dns_v4.keys().filter_map(Result::ok).collect();
        for k in old {
            if !want_v4.contains(&(k.prefix_len(), k.data())) {
                let _ = self.dns_v4.remove(&k);
            }
        }
        let old: Vec<Key<DnsV6Data>> = self.dns_v6.keys().filter_map(Result::ok).collect();
        for k in old {
            if !want_v6.contains(&(k.prefix_len(), k.data())) {
                let _ = self.dns_v6.remove(&k);
            }
        }
        Ok(())
    }

    pub fn config(&self) -> Config {
        self.config.get(&0, 0).unwrap_or_default()
    }

    pub fn set_config(&mut self, c: Config) -> Result<(), MapsError> {
        self.config.set(0, c, 0).map_err(at(names::CONFIG))?;
        self.bump().map_err(at(names::GENERATION))
    }

    /// Moves `GENERATION` on, after a write the programs' cached workload lookups may
    /// depend on.
    fn bump(&mut self) -> Result<(), MapError> {
        let next = self.last_generation.wrapping_add(1).max(1);
        self.generation.set(0, next, 0)?;
        self.last_generation = next;
        Ok(())
    }

    /// [`Maps::bump`] after a removal or a batch, which report no error of their own: a
    /// failure is logged (the cache could otherwise keep an old entry's answer).
    fn bump_after_removal(&mut self) {
        if let Err(e) = self.bump() {
            tracing::error!(
                "writing {}: {e}; cached workload lookups may be stale until the next write",
                names::GENERATION
            );
        }
    }

    /// Kernel memory charged to the inner maps of the policies at `ids` (fdinfo `memlock`).
    /// Only those ids are looked at: every id of every outer map would be 20 000 system
    /// calls after each reconcile.
    pub fn policy_memory(&self, ids: impl Iterator<Item = PolicyId> + Clone) -> u64 {
        let mut total = 0;
        for outer in self.outers() {
            for id in ids.clone() {
                if let Some(m) = outer.get(id) {
                    total += memlock(&m);
                }
            }
        }
        total
    }
}

/// The `memlock` a map is charged, from its fdinfo.
pub fn memlock(m: &MapData) -> u64 {
    use std::os::fd::AsRawFd as _;
    let fd = m.fd().as_fd().as_raw_fd();
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

impl KernelStore for Maps {
    fn install_policy(
        &mut self,
        id: PolicyId,
        t: &Tables,
        cancel: &Cancel,
    ) -> Result<(), StoreError> {
        // Every inner map is built and filled before any is put in place. The tables fill
        // in parallel: a large insert is bound by the kernel's bucket writes, one CPU each.
        let jobs = [
            job(
                names::EXACT_V4,
                BPF_MAP_TYPE_HASH,
                t.exact_v4_entries(),
                cancel,
            ),
            job(
                names::EXACT_V6,
                BPF_MAP_TYPE_HASH,
                t.exact_v6_entries(),
                cancel,
            ),
            job(
                names::CIDR_V4,
                BPF_MAP_TYPE_LPM_TRIE,
                t.cidr_v4_entries().map(|(p, d, v)| (Key::new(p, d), v)),
                cancel,
            ),
            job(
                names::CIDR_V6,
                BPF_MAP_TYPE_LPM_TRIE,
                t.cidr_v6_entries().map(|(p, d, v)| (Key::new(p, d), v)),
                cancel,
            ),
            job(
                names::DOMAIN_PORTS,
                BPF_MAP_TYPE_HASH,
                t.domain_port_entries(),
                cancel,
            ),
        ];
        let built = run_jobs(jobs.into_iter().flatten().collect())?;
        if cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        // The outer entries: the program sees a table from the moment it is set, but no
        // workload points at `id` yet.
        let mut placed: Vec<&Outer> = Vec::new();
        for (map, m) in &built {
            let outer = match *map {
                names::EXACT_V4 => &self.exact_v4,
                names::EXACT_V6 => &self.exact_v6,
                names::CIDR_V4 => &self.cidr_v4,
                names::CIDR_V6 => &self.cidr_v6,
                _ => &self.domain_ports,
            };
            if let Err(e) = outer.set(id, m) {
                for done in placed {
                    done.remove(id);
                }
                return Err(e);
            }
            placed.push(outer);
        }
        Ok(())
    }

    fn patch_policy(
        &mut self,
        id: PolicyId,
        _tables: &Tables,
        patch: &Patch,
    ) -> Result<(), StoreError> {
        let (r, w) = (&patch.removed, &patch.written);
        patch_inner(
            &self.exact_v4,
            id,
            r.exact_v4_entries().map(|(k, _)| k),
            w.exact_v4_entries(),
        )?;
        patch_inner(
            &self.exact_v6,
            id,
            r.exact_v6_entries().map(|(k, _)| k),
            w.exact_v6_entries(),
        )?;
        patch_inner(
            &self.cidr_v4,
            id,
            r.cidr_v4_entries().map(|(p, d, _)| Key::new(p, d)),
            w.cidr_v4_entries().map(|(p, d, v)| (Key::new(p, d), v)),
        )?;
        patch_inner(
            &self.cidr_v6,
            id,
            r.cidr_v6_entries().map(|(p, d, _)| Key::new(p, d)),
            w.cidr_v6_entries().map(|(p, d, v)| (Key::new(p, d), v)),
        )?;
        patch_inner(
            &self.domain_ports,
            id,
            r.domain_port_entries().map(|(k, _)| k),
            w.domain_port_entries(),
        )
    }

    fn remove_policy(&mut self, id: PolicyId) {
        for outer in self.outers() {
            outer.remove(id);
        }
    }

    fn set_workload(&mut self, cgroup: u64, value: Workload) -> Result<(), StoreError> {
        self.workloads
            .insert(cgroup, value, 0)
            .map_err(|e| kernel_error(names::WORKLOADS, "write", e, capacity::WORKLOADS))?;
        self.bump()
            .map_err(|e| kernel_error(names::GENERATION, "write", e, 1))
    }

    fn set_workloads(&mut self, entries: &[(u64, Workload)]) -> Vec<Result<(), StoreError>> {
        use aya::maps::IterableMap as _;
        if entries.len() < 2 {
            return entries
                .iter()
                .map(|&(cgroup, value)| self.set_workload(cgroup, value))
                .collect();
        }
        let (keys, values): (Vec<u64>, Vec<Workload>) = entries.iter().copied().unzip();
        let fd = self.workloads.map().fd().as_fd();
        match syscall::update_all(fd, &keys, &values, &Cancel::default()) {
            Ok(()) => {
                // Once for the whole batch; a failure is logged (the entries are written).
                self.bump_after_removal();
                entries.iter().map(|_| Ok(())).collect()
            }
            // Some entry was refused (a full map): one by one, so each gets its own result.
            Err(_) => entries
                .iter()
                .map(|&(cgroup, value)| self.set_workload(cgroup, value))
                .collect(),
        }
    }

    fn remove_workload(&mut self, cgroup: u64) {
        let _ = self.workloads.remove(&cgroup);
        self.bump_after_removal();
    }

    fn set_link(&mut self, cgroup: u64, owner: u64) -> Result<(), StoreError> {
        self.cgroups
            .insert(cgroup, owner, 0)
            .map_err(|e| kernel_error(names::CGROUPS, "write", e, capacity::CGROUPS))?;
        self.bump()
            .map_err(|e| kernel_error(names::GENERATION, "write", e, 1))
    }

    fn remove_link(&mut self, cgroup: u64) {
        let _ = self.cgroups.remove(&cgroup);
        self.bump_after_removal();
    }

    fn set_pending(&mut self, uid: PodUid, value: Workload) -> Result<(), StoreError> {
        self.pending
            .insert(uid, value, 0)
            .map_err(|e| kernel_error(names::PENDING_PODS, "write", e, capacity::PENDING_PODS))
    }

    fn remove_pending(&mut self, uid: PodUid) {
        let _ = self.pending.remove(&uid);
    }

    fn read(&self) -> KernelState {
        let mut policies = BTreeSet::new();
        for outer in self.outers() {
            for id in 1..capacity::POLICIES {
                let present: Option<u32> =
                    syscall::lookup(outer.data.fd().as_fd(), &id).ok().flatten();
                if present.is_some() {
                    policies.insert(id);
                }
            }
        }
        KernelState {
            workloads: self.workloads.iter().filter_map(Result::ok).collect(),
            links: self
                .cgroups
                .iter()
                .filter_map(Result::ok)
                .collect::<BTreeMap<_, _>>(),
            pending: self.pending.iter().filter_map(Result::ok).collect(),
            policies,
        }
    }
}

/// A map write that failed: full maps are said so.
fn kernel_error(map: &'static str, op: &'static str, e: MapError, capacity: u32) -> StoreError {
    match e {
        MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
            StoreError::Full {
                map,
                capacity,
                what: "remove workloads or raise the capacity",
            }
        }
        MapError::SyscallError(s) => StoreError::Kernel {
            map,
            op,
            source: s.io_error,
        },
        other => StoreError::Kernel {
            map,
            op,
            source: std::io::Error::other(other.to_string()),
        },
    }
}
