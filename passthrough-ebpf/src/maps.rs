//! Every map the programs use. User space writes all of them except `COUNTERS`, `EVENTS`,
//! `EVENTS_DROPPED`, `REDIRECTS`, `KERNEL_COVERED`, `FLOWS`, `FLOW_INSERTS` and `CALLERS`,
//! which the programs write; the `cgroup_mkdir` program also adds entries of new pod cgroups
//! to `WORKLOADS` and `CGROUPS`. All are pinned, so enforcement outlives the agent process
//! and a restarted agent adopts them.
//!
//! The rule maps are maps of maps: an outer array indexed by a compiled policy's number
//! (`Workload::policy`), each entry an inner map the agent builds to the policy's size, fills
//! in full, and only then puts in place. A policy change never needs spare room in a shared
//! map, and a 10-entry policy costs 10 entries' worth of kernel memory.
//!
//! Hash maps are created without preallocation; the connect programs never insert into
//! them, so allocating on update costs them nothing (the `cgroup_mkdir` program inserts a
//! few entries per new pod, off every hot path).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{self, ArrayOfMaps},
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use passthrough_common::{
    CidrV4Data, CidrV6Data, Config, DnsV4Data, DnsV6Data, DomainPortKey, ExactV4Key, ExactV6Key,
    FlowKey, FlowMemo, FlowValue, OrigDst, POD_WATCH_PREFIX, PodUid, PodWatch, Reason, RuleRef,
    Workload, capacity, flow_counter,
};

use crate::workload::CachedCaller;

/// Flags of the inner hash maps and LPM tries (the templates below and the agent's maps must
/// agree, or the kernel refuses the inner map).
const INNER_FLAGS: usize = BPF_F_NO_PREALLOC as usize;
const POLICIES: usize = capacity::POLICIES as usize;

/// cgroup id -> [`Workload`] (policy, mode, flags). Written by the agent; one update flips a
/// workload to a new policy.
#[map]
pub static WORKLOADS: HashMap<u64, Workload> =
    HashMap::pinned(capacity::WORKLOADS, BPF_F_NO_PREALLOC);

/// Pod UID -> the [`Workload`] its cgroup gets the moment it is created: pods the API server
/// reported whose cgroup does not exist yet. Written by the agent; read by the
/// `cgroup_mkdir` program, which copies the entry into `WORKLOADS` before `mkdir` returns.
#[map]
pub static PENDING_PODS: HashMap<PodUid, Workload> =
    HashMap::pinned(capacity::PENDING_PODS, BPF_F_NO_PREALLOC);

/// Index 0 -> [`PodWatch`]: which new cgroups the `cgroup_mkdir` program may act for (the
/// kubepods cgroup's path and level). Written by the agent; all zero means "act for none".
#[map]
pub static POD_WATCH: Array<PodWatch> = Array::pinned(1, 0);

/// cgroup id -> pod UID: the pod cgroups the `cgroup_mkdir` program gave a `WORKLOADS`
/// entry. Written by the program; the agent takes each in (it becomes the agent's entry to
/// correct or remove) and deletes it.
#[map]
pub static KERNEL_COVERED: HashMap<u64, PodUid> =
    HashMap::pinned(capacity::KERNEL_COVERED, BPF_F_NO_PREALLOC);

/// A path as the `cgroup_mkdir` tracepoint reports it.
#[repr(C)]
pub struct PathBuf {
    pub bytes: [u8; PATH_BYTES],
}

/// Bytes of a path the `cgroup_mkdir` program reads; longer paths are cut, and a cut path
/// never names a pod. Twice [`POD_WATCH_PREFIX`]: the prefix plus a pod's two levels.
pub const PATH_BYTES: usize = 2 * POD_WATCH_PREFIX;

/// Index 0: scratch space for the `cgroup_mkdir` program's path (the stack is too small).
#[map]
pub static PATH_SCRATCH: PerCpuArray<PathBuf> = PerCpuArray::with_max_entries(1, 0);

/// cgroup id -> cgroup id of its workload (the deepest workload cgroup on its path, itself
/// for a workload's own cgroup): the one-lookup path to `WORKLOADS`. Written by the agent for
/// the cgroups it sees; any other cgroup falls back to walking its ancestors.
#[map]
pub static CGROUPS: HashMap<u64, u64> = HashMap::pinned(capacity::CGROUPS, BPF_F_NO_PREALLOC);

/// Index 0 -> generation of `WORKLOADS`, `CGROUPS` and `CONFIG`: the agent increments it
/// after every write to them (never 0 once it has written), so `CALLERS` entries of an
/// older generation are stale.
#[map]
pub static GENERATION: Array<u64> = Array::pinned(1, 0);

/// cgroup id % slots -> what the workload lookup found for that cgroup, in which
/// generation, per CPU. Written by the programs (`workload.rs`): the one-lookup path for a
/// caller seen before.
#[map]
pub static CALLERS: PerCpuArray<CachedCaller> = PerCpuArray::pinned(capacity::CALLERS, 0);

/// policy -> (port or any, IPv4 address) -> rule. IP entries and /32 CIDRs. Written by the
/// agent.
#[btf_map]
pub static EXACT_V4: ArrayOfMaps<btf_maps::HashMap<ExactV4Key, RuleRef, 1, INNER_FLAGS>, POLICIES> =
    ArrayOfMaps::new();

/// policy -> (port or any, IPv6 address) -> rule. IP entries and /128 CIDRs.
#[btf_map]
pub static EXACT_V6: ArrayOfMaps<btf_maps::HashMap<ExactV6Key, RuleRef, 1, INNER_FLAGS>, POLICIES> =
    ArrayOfMaps::new();

/// policy -> LPM (port or any, IPv4 prefix) -> rule. CIDR entries.
#[btf_map]
pub static CIDR_V4: ArrayOfMaps<btf_maps::LpmTrie<CidrV4Data, RuleRef, 1, INNER_FLAGS>, POLICIES> =
    ArrayOfMaps::new();

/// policy -> LPM (port or any, IPv6 prefix) -> rule. CIDR entries.
#[btf_map]
pub static CIDR_V6: ArrayOfMaps<btf_maps::LpmTrie<CidrV6Data, RuleRef, 1, INNER_FLAGS>, POLICIES> =
    ArrayOfMaps::new();

/// policy -> (port or any) -> first Domain rule of that port: the connect is for the peek
/// proxy.
#[btf_map]
pub static DOMAIN_PORTS: ArrayOfMaps<
    btf_maps::HashMap<DomainPortKey, RuleRef, 1, INNER_FLAGS>,
    POLICIES,
> = ArrayOfMaps::new();

/// LPM IPv4 prefix -> index: the agent's `meshCIDRs`, allowed for every workload.
#[map]
pub static MESH_V4: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(capacity::MESH, 0);

/// LPM IPv6 prefix -> index: the agent's `meshCIDRs`, allowed for every workload.
#[map]
pub static MESH_V6: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(capacity::MESH, 0);

/// LPM (resolver set, IPv4 prefix) -> index: where UDP to port 53 may go under `udp: Deny`.
/// Written by the agent.
#[map]
pub static DNS_V4: LpmTrie<DnsV4Data, u32> = LpmTrie::pinned(capacity::DNS, 0);

/// LPM (resolver set, IPv6 prefix) -> index; see [`DNS_V4`]. Written by the agent.
#[map]
pub static DNS_V6: LpmTrie<DnsV6Data, u32> = LpmTrie::pinned(capacity::DNS, 0);

/// Index 0 -> [`Config`]: agent-wide settings. Written by the agent.
#[map]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

/// Socket cookie -> original destination of a connect handed to the peek proxy. Written by
/// the connect programs; read by the proxy (which finds the client socket's cookie with
/// `sock_diag`) and by `getpeername`, so the redirect stays invisible; removed by the proxy
/// when the connection ends, LRU in case it never learns of one.
#[map]
pub static REDIRECTS: LruHashMap<u64, OrigDst> = LruHashMap::pinned(capacity::REDIRECTS, 0);

/// [`Reason`] -> decisions for that reason, per CPU. Written by the programs only.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Reason::COUNT, 0);

/// Denied connects (and audited ones) for the agent's event log. Written by the programs.
#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(capacity::EVENTS_BYTES, 0);

/// Index 0: events the programs could not write because `EVENTS` was full, per CPU.
#[map]
pub static EVENTS_DROPPED: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// (workload, destination, port, protocol) -> [`FlowValue`]: every connect of a workload,
/// allowed or denied, while `flows.enabled`. Written by the connect programs (`flow.rs`);
/// read, never written, by the agent, so the LRU is the only thing that removes entries.
/// The agent sizes it from `flows.capacity` at load.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(capacity::FLOWS, 0);

/// [`flow_counter`] -> count, per CPU: `FLOWS` entries created, and inserts that raced.
/// Written by the connect programs only.
#[map]
pub static FLOW_INSERTS: PerCpuArray<u64> = PerCpuArray::pinned(flow_counter::COUNT, 0);

/// Per CPU, flow hash % [`capacity::FLOW_MEMO`] -> [`FlowMemo`]: connects counted but not
/// yet added to `FLOWS` (`flow.rs`). Read, never written, by the agent.
#[map]
pub static FLOW_MEMO: PerCpuArray<FlowMemo> = PerCpuArray::pinned(capacity::FLOW_MEMO, 0);
