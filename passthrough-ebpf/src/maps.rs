//! Every map the programs use. User space writes all of them except `COUNTERS`, which only
//! the programs write. All are pinned by name, so enforcement outlives the agent process and a
//! restarted agent adopts them.
//!
//! Hash maps are created without preallocation: sized for millions of entries, they would
//! otherwise pin hundreds of MiB of kernel memory whatever the policy. Only user space
//! inserts, so allocating on update costs the programs nothing.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use passthrough_common::{
    CidrV4Data, CidrV6Data, Config, DnsV4Data, DnsV6Data, DomainPortKey, ExactV4Key, ExactV6Key,
    OrigDst, PeerKey, Reason, RuleRef, Workload, capacity,
};

/// cgroup id -> [`Workload`] (policy slot, mode, flags). Written by the agent; one update flips
/// a workload to a new slot.
#[map]
pub static WORKLOADS: HashMap<u64, Workload> =
    HashMap::pinned(capacity::WORKLOADS, BPF_F_NO_PREALLOC);

/// (slot, port or any, IPv4 address) -> rule. IP entries and /32 CIDRs. Written by the agent.
#[map]
pub static EXACT_V4: HashMap<ExactV4Key, RuleRef> =
    HashMap::pinned(capacity::EXACT_V4, BPF_F_NO_PREALLOC);

/// (slot, port or any, IPv6 address) -> rule. IP entries and /128 CIDRs. Written by the agent.
#[map]
pub static EXACT_V6: HashMap<ExactV6Key, RuleRef> =
    HashMap::pinned(capacity::EXACT_V6, BPF_F_NO_PREALLOC);

/// LPM (slot, port or any, IPv4 prefix) -> rule. CIDR entries. Written by the agent.
#[map]
pub static CIDR_V4: LpmTrie<CidrV4Data, RuleRef> = LpmTrie::pinned(capacity::CIDR_V4, 0);

/// LPM (slot, port or any, IPv6 prefix) -> rule. CIDR entries. Written by the agent.
#[map]
pub static CIDR_V6: LpmTrie<CidrV6Data, RuleRef> = LpmTrie::pinned(capacity::CIDR_V6, 0);

/// (slot, port or any) -> first Domain rule of that port: the connect is for the peek proxy.
/// Written by the agent.
#[map]
pub static DOMAIN_PORTS: HashMap<DomainPortKey, RuleRef> =
    HashMap::pinned(capacity::DOMAIN_PORTS, BPF_F_NO_PREALLOC);

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

/// Socket cookie -> original destination of a connect handed to the peek proxy, so that
/// `getpeername()` answers what the application asked for. Written by the connect programs,
/// removed by `sock_ops` when the socket closes; LRU in case a close is never seen.
#[map]
pub static REDIRECTS: LruHashMap<u64, OrigDst> = LruHashMap::pinned(capacity::REDIRECTS, 0);

/// Client address and port -> original destination, for the proxy to look up when it
/// accepts. Written by `sock_ops` once the client's port is known, removed by the proxy.
#[map]
pub static PROXY_PEERS: LruHashMap<PeerKey, OrigDst> = LruHashMap::pinned(capacity::PROXY_PEERS, 0);

/// [`Reason`] -> connects decided for that reason, per CPU. Written by the programs only.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Reason::COUNT, 0);

/// Denied connects (and audited ones) for the agent's event log. Written by the programs.
#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(capacity::EVENTS_BYTES, 0);

/// Index 0: events the programs could not write because `EVENTS` was full, per CPU.
#[map]
pub static EVENTS_DROPPED: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);
