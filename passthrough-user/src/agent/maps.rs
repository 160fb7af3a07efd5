//! Typed handles on the kernel maps. The only module that touches `aya::maps`.

use std::{collections::BTreeSet, path::Path};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key},
};
use ipnet::IpNet;
use passthrough_common::{
    CidrV4Data, CidrV6Data, Config, DNS_FIXED_BITS, DnsV4Data, DnsV6Data, DomainPortKey,
    ExactV4Key, ExactV6Key, Reason, RuleRef, Workload, map_names as names,
};

use crate::policy::compile::CompiledPolicy;

/// A map could not be opened or used; names the map.
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

pub struct Maps {
    workloads: HashMap<MapData, u64, Workload>,
    exact_v4: HashMap<MapData, ExactV4Key, RuleRef>,
    exact_v6: HashMap<MapData, ExactV6Key, RuleRef>,
    cidr_v4: LpmTrie<MapData, CidrV4Data, RuleRef>,
    cidr_v6: LpmTrie<MapData, CidrV6Data, RuleRef>,
    domain_ports: HashMap<MapData, DomainPortKey, RuleRef>,
    mesh_v4: LpmTrie<MapData, [u8; 4], u32>,
    mesh_v6: LpmTrie<MapData, [u8; 16], u32>,
    dns_v4: LpmTrie<MapData, DnsV4Data, u32>,
    dns_v6: LpmTrie<MapData, DnsV6Data, u32>,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, u64>,
}

/// Entries of one policy slot, per map, as counted by [`Maps::slot_entries`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryCounts {
    pub exact_v4: usize,
    pub exact_v6: usize,
    pub cidr_v4: usize,
    pub cidr_v6: usize,
    pub domain_ports: usize,
}

impl EntryCounts {
    pub fn of(c: &CompiledPolicy) -> Self {
        Self {
            exact_v4: c.exact_v4.len(),
            exact_v6: c.exact_v6.len(),
            cidr_v4: c.cidr_v4.len(),
            cidr_v6: c.cidr_v6.len(),
            domain_ports: c.domains.len(),
        }
    }
}

impl Maps {
    /// Takes the maps out of a loaded object (they are pinned by name by the loader).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        Self::from_source(|name| ebpf.take_map(name))
    }

    /// Opens the pinned maps of an installation, without any program.
    pub fn open_pinned(dir: &Path) -> Result<Self, MapsError> {
        Self::from_source(|name| {
            MapData::from_pin(dir.join(name))
                .ok()
                .and_then(|m| Map::from_map_data(m).ok())
        })
    }

    fn from_source(mut get: impl FnMut(&'static str) -> Option<Map>) -> Result<Self, MapsError> {
        let mut take = |name: &'static str| get(name).ok_or(MapsError::Missing(name));
        Ok(Self {
            workloads: HashMap::try_from(take(names::WORKLOADS)?).map_err(at(names::WORKLOADS))?,
            exact_v4: HashMap::try_from(take(names::EXACT_V4)?).map_err(at(names::EXACT_V4))?,
            exact_v6: HashMap::try_from(take(names::EXACT_V6)?).map_err(at(names::EXACT_V6))?,
            cidr_v4: LpmTrie::try_from(take(names::CIDR_V4)?).map_err(at(names::CIDR_V4))?,
            cidr_v6: LpmTrie::try_from(take(names::CIDR_V6)?).map_err(at(names::CIDR_V6))?,
            domain_ports: HashMap::try_from(take(names::DOMAIN_PORTS)?)
                .map_err(at(names::DOMAIN_PORTS))?,
            mesh_v4: LpmTrie::try_from(take(names::MESH_V4)?).map_err(at(names::MESH_V4))?,
            mesh_v6: LpmTrie::try_from(take(names::MESH_V6)?).map_err(at(names::MESH_V6))?,
            dns_v4: LpmTrie::try_from(take(names::DNS_V4)?).map_err(at(names::DNS_V4))?,
            dns_v6: LpmTrie::try_from(take(names::DNS_V6)?).map_err(at(names::DNS_V6))?,
            config: Array::try_from(take(names::CONFIG)?).map_err(at(names::CONFIG))?,
            counters: PerCpuArray::try_from(take(names::COUNTERS)?).map_err(at(names::COUNTERS))?,
        })
    }

    /// Writes every entry of `c` into `slot`. On error the slot may be partly written: the
    /// caller clears it with [`Maps::clear_slot`] before reporting.
    pub fn write_slot(&mut self, slot: u32, c: &CompiledPolicy) -> Result<(), MapsError> {
        for (k, v) in c.exact_v4_entries(slot) {
            self.exact_v4.insert(k, v, 0).map_err(at(names::EXACT_V4))?;
        }
        for (k, v) in c.exact_v6_entries(slot) {
            self.exact_v6.insert(k, v, 0).map_err(at(names::EXACT_V6))?;
        }
        for (p, d, v) in c.cidr_v4_entries(slot) {
            self.cidr_v4
                .insert(&Key::new(p, d), v, 0)
                .map_err(at(names::CIDR_V4))?;
        }
        for (p, d, v) in c.cidr_v6_entries(slot) {
            self.cidr_v6
                .insert(&Key::new(p, d), v, 0)
                .map_err(at(names::CIDR_V6))?;
        }
        for (k, v) in c.domain_port_entries(slot) {
            self.domain_ports
                .insert(k, v, 0)
                .map_err(at(names::DOMAIN_PORTS))?;
        }
        Ok(())
    }

    /// Removes the entries `c` put into `slot`; entries already gone are no error.
    pub fn clear_slot(&mut self, slot: u32, c: &CompiledPolicy) {
        for (k, _) in c.exact_v4_entries(slot) {
            let _ = self.exact_v4.remove(&k);
        }
        for (k, _) in c.exact_v6_entries(slot) {
            let _ = self.exact_v6.remove(&k);
        }
        for (p, d, _) in c.cidr_v4_entries(slot) {
            let _ = self.cidr_v4.remove(&Key::new(p, d));
        }
        for (p, d, _) in c.cidr_v6_entries(slot) {
            let _ = self.cidr_v6.remove(&Key::new(p, d));
        }
        for (k, _) in c.domain_port_entries(slot) {
            let _ = self.domain_ports.remove(&k);
        }
    }

    /// Deletes every rule entry whose slot is not in `live` (used after adopting the state of
    /// an earlier agent, whose slot contents are unknown). Returns the number deleted.
    pub fn sweep(&mut self, live: &BTreeSet<u32>) -> usize {
        let mut n = 0;
        let keys: Vec<ExactV4Key> = self.exact_v4.keys().filter_map(Result::ok).collect();
        for k in keys.iter().filter(|k| !live.contains(&k.slot)) {
            n += usize::from(self.exact_v4.remove(k).is_ok());
        }
        let keys: Vec<ExactV6Key> = self.exact_v6.keys().filter_map(Result::ok).collect();
        for k in keys.iter().filter(|k| !live.contains(&k.slot)) {
            n += usize::from(self.exact_v6.remove(k).is_ok());
        }
        let keys: Vec<Key<CidrV4Data>> = self.cidr_v4.keys().filter_map(Result::ok).collect();
        for k in keys
            .iter()
            .filter(|k| !live.contains(&u32::from_be_bytes(k.data().slot)))
        {
            n += usize::from(self.cidr_v4.remove(k).is_ok());
        }
        let keys: Vec<Key<CidrV6Data>> = self.cidr_v6.keys().filter_map(Result::ok).collect();
        for k in keys
            .iter()
            .filter(|k| !live.contains(&u32::from_be_bytes(k.data().slot)))
        {
            n += usize::from(self.cidr_v6.remove(k).is_ok());
        }
        let keys: Vec<DomainPortKey> = self.domain_ports.keys().filter_map(Result::ok).collect();
        for k in keys.iter().filter(|k| !live.contains(&k.slot)) {
            n += usize::from(self.domain_ports.remove(k).is_ok());
        }
        n
    }

    /// Points a workload cgroup at a slot: one map update, so a connect sees either the old
    /// policy or the new one, never a mix.
    pub fn set_workload(&mut self, cgroup_id: u64, w: Workload) -> Result<(), MapsError> {
        self.workloads
            .insert(cgroup_id, w, 0)
            .map_err(at(names::WORKLOADS))
    }

    pub fn remove_workload(&mut self, cgroup_id: u64) {
        let _ = self.workloads.remove(&cgroup_id);
    }

    /// The workload table as the kernel sees it.
    pub fn workloads(&self) -> Vec<(u64, Workload)> {
        self.workloads.iter().filter_map(Result::ok).collect()
    }

    /// Replaces the mesh CIDRs with `cidrs`.
    pub fn set_mesh_cidrs(&mut self, cidrs: &[IpNet]) -> Result<(), MapsError> {
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
        Ok(())
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

    pub fn set_config(&mut self, c: Config) -> Result<(), MapsError> {
        self.config.set(0, c, 0).map_err(at(names::CONFIG))
    }

    /// Connects decided per [`Reason`], summed over CPUs.
    pub fn counters(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .map(|&r| {
                let n = self
                    .counters
                    .get(&(r as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (r, n)
            })
            .collect()
    }
}
