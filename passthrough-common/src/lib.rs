//! Types that cross the kernel boundary.
//!
//! Every map key and value the eBPF programs read is defined here once, `#[repr(C)]`, with
//! explicit padding and a size assertion, so that the policy compiler in user space writes
//! exactly the bytes the kernel reads. Multi-byte fields of LPM trie keys are big-endian
//! byte arrays (the trie matches prefixes bit by bit from the first byte); all other keys use
//! native integers.

#![no_std]

use core::mem::size_of;

pub mod podname;

/// A port value that stands for "any port" (an appendMatch entry without `port`).
pub const PORT_ANY: u16 = 0;

/// Version of the map layout: pins live under `maps_v<LAYOUT>/`, so an agent never reuses
/// maps of another layout (it attaches beside them and removes them once it enforces).
pub const LAYOUT: u32 = 2;

/// Names of the maps, as the loader finds them in the object and pins them.
pub mod map_names {
    pub const WORKLOADS: &str = "WORKLOADS";
    pub const CGROUPS: &str = "CGROUPS";
    pub const EXACT_V4: &str = "EXACT_V4";
    pub const EXACT_V6: &str = "EXACT_V6";
    pub const CIDR_V4: &str = "CIDR_V4";
    pub const CIDR_V6: &str = "CIDR_V6";
    pub const DOMAIN_PORTS: &str = "DOMAIN_PORTS";
    pub const MESH_V4: &str = "MESH_V4";
    pub const MESH_V6: &str = "MESH_V6";
    pub const CONFIG: &str = "CONFIG";
    pub const COUNTERS: &str = "COUNTERS";
    pub const REDIRECTS: &str = "REDIRECTS";
    pub const EVENTS: &str = "EVENTS";
    pub const EVENTS_DROPPED: &str = "EVENTS_DROPPED";
    pub const DNS_V4: &str = "DNS_V4";
    pub const DNS_V6: &str = "DNS_V6";
    pub const PENDING_PODS: &str = "PENDING_PODS";
    pub const POD_WATCH: &str = "POD_WATCH";
    pub const KERNEL_COVERED: &str = "KERNEL_COVERED";
    pub const FLOWS: &str = "FLOWS";
    pub const FLOW_INSERTS: &str = "FLOW_INSERTS";
    pub const FLOW_MEMO: &str = "FLOW_MEMO";
    pub const GENERATION: &str = "GENERATION";
    pub const CALLERS: &str = "CALLERS";
}

/// Names of the programs in the object.
pub mod program_names {
    pub const CONNECT4: &str = "passthrough_connect4";
    pub const CONNECT6: &str = "passthrough_connect6";
    pub const GETPEERNAME4: &str = "passthrough_getpeername4";
    pub const GETPEERNAME6: &str = "passthrough_getpeername6";
    pub const SENDMSG4: &str = "passthrough_sendmsg4";
    pub const SENDMSG6: &str = "passthrough_sendmsg6";
    pub const SOCK_CREATE: &str = "passthrough_sock_create";
    pub const SOCKET_CREATE_LSM: &str = "passthrough_socket_create";
    pub const CGROUP_MKDIR: &str = "passthrough_cgroup_mkdir";
}

/// The tracepoint `CGROUP_MKDIR` is attached to: (category, name).
pub const CGROUP_MKDIR_TRACEPOINT: (&str, &str) = ("cgroup", "cgroup_mkdir");

/// The LSM hook `SOCKET_CREATE_LSM` is attached to (per cgroup, `lsm_cgroup`).
pub const SOCKET_CREATE_HOOK: &str = "socket_create";

/// Capacities of the maps. The rule maps are per policy (map-in-map): each compiled policy
/// gets inner maps sized to its entries, so only the number of policies is bounded here.
/// User space refuses what does not fit, before writing.
pub mod capacity {
    /// Workload cgroups one agent manages (`WORKLOADS`).
    pub const WORKLOADS: u32 = 16_384;
    /// Cgroups below workloads whose workload is recorded (`CGROUPS`): containers of pods,
    /// children of services. Others fall back to the ancestor walk.
    pub const CGROUPS: u32 = 16_384;
    /// Compiled policies at once (the outer arrays of the rule maps); index 0 is "none".
    pub const POLICIES: u32 = 4_096;
    /// Mesh CIDRs of each family.
    pub const MESH: u32 = 1_024;
    /// Open connections handed to the peek proxy whose original destination is remembered
    /// (for the proxy and for `getpeername`); least recently used entries go first when
    /// full. The agent sizes it from `proxy.maxConnections` at load (at least this).
    pub const REDIRECTS: u32 = 8_192;
    /// Bytes of the event ring buffer: 16 384 events of 64 bytes (plus headers).
    pub const EVENTS_BYTES: u32 = 1 << 20;
    /// Resolver addresses UDP to port 53 may reach under `udp: Deny`, over all sets.
    pub const DNS: u32 = 4_096;
    /// Pods reported by the API server whose cgroup does not exist yet (`PENDING_PODS`).
    pub const PENDING_PODS: u32 = 4_096;
    /// Pod cgroups the `cgroup_mkdir` program covered that the agent has not taken in yet
    /// (`KERNEL_COVERED`).
    pub const KERNEL_COVERED: u32 = 4_096;
    /// Distinct flows (workload, destination, port, protocol) the kernel remembers
    /// (`FLOWS`), least recently used first out, between two readings of the agent (which
    /// keeps the history). The agent sizes it from `flows.capacity`; the default keeps the
    /// preallocated table near 2 MiB.
    pub const FLOWS: u32 = 16_384;
    /// Slots of the programs' per-CPU cache of callers' workloads (`CALLERS`), a power of
    /// two: a cgroup id maps to slot `id % CALLERS`.
    pub const CALLERS: u32 = 256;
    /// Slots of the programs' per-CPU write-combining buffer in front of `FLOWS`
    /// (`FLOW_MEMO`), a power of two: a flow maps to slot `hash % FLOW_MEMO`.
    pub const FLOW_MEMO: u32 = 256;
}

/// The merged `passthroughMode` of a workload, as the kernel reads it.
pub mod mode {
    /// `passthroughMode: All`: every destination is allowed.
    pub const ALL: u8 = 0;
    /// `passthroughMode: None`: every destination outside the mesh is denied.
    pub const NONE: u8 = 1;
    /// `passthroughMode: Matched` (or unset): only what an appendMatch entry allows.
    pub const MATCHED: u8 = 2;
    /// No policy selects the workload: it is not filtered.
    pub const UNFILTERED: u8 = 3;
}

/// Bits of [`Workload::flags`].
pub mod workload_flags {
    /// Connects the policy would deny are allowed and counted as such (audit mode).
    pub const AUDIT: u8 = 1;
    /// `udp: Deny`: UDP datagrams (and ping sockets) are refused, except DNS to the
    /// workload's resolver set, loopback and the mesh. Only set for `None` / `Matched`.
    pub const UDP_DENY: u8 = 2;
    /// `rawSockets: Deny`: raw IP sockets (and packet sockets, where the BPF LSM is
    /// active) cannot be created. Only set for `None` / `Matched`.
    pub const RAW_DENY: u8 = 4;
}

/// Value of the `WORKLOADS` map, keyed by cgroup id (`u64`): which compiled policy a workload
/// uses. User space flips this single value to swap a workload to a new policy atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Workload {
    /// Index of the workload's compiled policy in the outer rule maps (0: no entries).
    pub policy: u32,
    /// One of [`mode`].
    pub mode: u8,
    /// Bits from [`workload_flags`].
    pub flags: u8,
    /// The resolver set (`DNS_V4/6` keys) UDP to port 53 may reach under `udp: Deny`.
    pub dns_set: u16,
}
const _: () = assert!(size_of::<Workload>() == 8);

/// Key of `PENDING_PODS` and value of `KERNEL_COVERED`: a pod UID as its 16 bytes, in the
/// order its 32 hex digits are written (`1b4e28ba-2fa1-…` is `[0x1b, 0x4e, 0x28, 0xba, …]`),
/// whatever separators the cgroup driver puts between them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PodUid {
    pub bytes: [u8; 16],
}
const _: () = assert!(size_of::<PodUid>() == 16);

impl PodUid {
    /// A UID as the API server writes it (RFC 4122, with dashes) or as the kubelet names a
    /// static pod (32 hex digits); `None` for anything else.
    pub fn parse(uid: &str) -> Option<Self> {
        let b = uid.as_bytes();
        let dashed = b.len() == 36;
        if !dashed && b.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        let mut n = 0;
        for (i, &c) in b.iter().enumerate() {
            if dashed && matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return None;
                }
                continue;
            }
            let v = hex_value(c)?;
            let byte = &mut out[n / 2];
            *byte = (*byte << 4) | v;
            n += 1;
        }
        Some(Self { bytes: out })
    }
}

/// The value of one hex digit (either case).
pub const fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Bytes of [`PodWatch::prefix`]: the longest kubepods path the `cgroup_mkdir` program can
/// check.
pub const POD_WATCH_PREFIX: usize = 256;

/// The single entry of `POD_WATCH`: which new cgroups the `cgroup_mkdir` program may act
/// for. It only ever writes entries for a cgroup of the cgroup v2 hierarchy, one or two
/// levels below the kubepods cgroup (Guaranteed pods, and pods of a QoS class), whose path
/// starts with `prefix`, named after a pod UID found in `PENDING_PODS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodWatch {
    /// Non-zero: act. Zero (no Kubernetes, or no kubepods cgroup yet): do nothing.
    pub enabled: u8,
    pub _pad: [u8; 3],
    /// Hierarchy id of cgroup v2, as the tracepoint's `root` field reports it (0).
    pub hierarchy: u32,
    /// Level of the kubepods cgroup (the hierarchy's root is level 0).
    pub level: u32,
    /// Bytes of `prefix` in use.
    pub prefix_len: u32,
    /// The kubepods cgroup's path from the hierarchy's root, as the tracepoint reports paths
    /// (`/kubepods.slice`), zero-padded.
    pub prefix: [u8; POD_WATCH_PREFIX],
}
const _: () = assert!(size_of::<PodWatch>() == 16 + POD_WATCH_PREFIX);

impl Default for PodWatch {
    fn default() -> Self {
        Self {
            enabled: 0,
            _pad: [0; 3],
            hierarchy: 0,
            level: 0,
            prefix_len: 0,
            prefix: [0; POD_WATCH_PREFIX],
        }
    }
}

/// Bits of an LPM key of `DNS_V4` / `DNS_V6` that precede the address: the resolver set.
pub const DNS_FIXED_BITS: u32 = 16;

/// Data part of a `DNS_V4` LPM key: (resolver set BE, address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsV4Data {
    pub set: [u8; 2],
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<DnsV4Data>() == 6);

/// Data part of a `DNS_V6` LPM key: (resolver set BE, address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsV6Data {
    pub set: [u8; 2],
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<DnsV6Data>() == 18);

/// Key of an `EXACT_V4` inner map: an IP entry (or a /32 CIDR) for one port or [`PORT_ANY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExactV4Key {
    /// Destination port in host byte order, or [`PORT_ANY`].
    pub port: u16,
    pub _pad: u16,
    /// Address in network byte order (as `Ipv4Addr::octets`).
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<ExactV4Key>() == 8);

/// Key of an `EXACT_V6` inner map: an IP entry (or a /128 CIDR) for one port or [`PORT_ANY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExactV6Key {
    /// Destination port in host byte order, or [`PORT_ANY`].
    pub port: u16,
    pub _pad: u16,
    /// Address in network byte order (as `Ipv6Addr::octets`).
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<ExactV6Key>() == 20);

/// Bits of an LPM key that precede the address: the port (16), always matched in full, so
/// `prefix_len = LPM_FIXED_BITS + cidr prefix`.
pub const LPM_FIXED_BITS: u32 = 16;

/// Data part of a `CIDR_V4` inner LPM key. Big-endian, so the port forms the leading,
/// always-matched bits of the prefix; the trailing padding (for the value's alignment) lies
/// past every prefix and is never compared.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CidrV4Data {
    pub port: [u8; 2],
    pub addr: [u8; 4],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CidrV4Data>() == 8);

/// Data part of a `CIDR_V6` inner LPM key; see [`CidrV4Data`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CidrV6Data {
    pub port: [u8; 2],
    pub addr: [u8; 16],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CidrV6Data>() == 20);

impl DnsV4Data {
    pub const fn new(set: u16, addr: [u8; 4]) -> Self {
        Self {
            set: set.to_be_bytes(),
            addr,
        }
    }
}

impl DnsV6Data {
    pub const fn new(set: u16, addr: [u8; 16]) -> Self {
        Self {
            set: set.to_be_bytes(),
            addr,
        }
    }
}

impl CidrV4Data {
    pub const fn new(port: u16, addr: [u8; 4]) -> Self {
        Self {
            port: port.to_be_bytes(),
            addr,
            _pad: [0; 2],
        }
    }
}

impl CidrV6Data {
    pub const fn new(port: u16, addr: [u8; 16]) -> Self {
        Self {
            port: port.to_be_bytes(),
            addr,
            _pad: [0; 2],
        }
    }
}

/// Value of the rule maps (`EXACT_*`, `CIDR_*`, `DOMAIN_PORTS`): which entry of the
/// workload's merged appendMatch list produced it, so events and counters can name it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    /// Index into the merged appendMatch list of the slot's policy.
    pub rule: u32,
}
const _: () = assert!(size_of::<RuleRef>() == 4);

/// Key of a `DOMAIN_PORTS` inner map: the policy has at least one Domain entry for this
/// port (or for [`PORT_ANY`]), so a connect that no IP/CIDR entry allows is a candidate for
/// the peek proxy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainPortKey {
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<DomainPortKey>() == 4);

/// Where a connect handed to the peek proxy was going. Value of `REDIRECTS`, keyed by the
/// client socket's cookie: the proxy finds the cookie of the client end of an accepted
/// connection through `sock_diag`, and `getpeername` answers from it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrigDst {
    /// cgroup id of the workload (its key in `WORKLOADS`) the connect was judged for.
    pub workload: u64,
    /// Destination address as IPv6 bytes; an IPv4 destination is IPv4-mapped.
    pub addr: [u8; 16],
    /// Destination port in host byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<OrigDst>() == 32);

/// A denied connect, or one allowed only because of audit mode, as the kernel reports it
/// through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_boot_ns` at the decision.
    pub boot_ns: u64,
    /// cgroup id of the workload (its key in `WORKLOADS`).
    pub workload: u64,
    /// `bpf_get_current_pid_tgid`: the thread group id (pid) in the upper 32 bits.
    pub pid_tgid: u64,
    /// The calling thread's command name, NUL-padded.
    pub comm: [u8; 16],
    /// Destination as IPv6 bytes; an IPv4 destination is IPv4-mapped.
    pub addr: [u8; 16],
    /// Destination port in host byte order.
    pub port: u16,
    /// The [`Reason`] the connect was (or, in audit mode, would have been) denied for.
    pub reason: u8,
    /// Non-zero: audit mode let the connect through.
    pub audit: u8,
    /// What was refused: one of [`event_kind`].
    pub kind: u8,
    /// For [`event_kind::SOCKET`]: the socket's family (`AF_*`) and type (`SOCK_*`); its
    /// protocol is in `port` and `addr` is zero.
    pub family: u8,
    pub sock_type: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<Event>() == 64);

/// Values of [`Event::kind`].
pub mod event_kind {
    /// A `connect()` (TCP, or a UDP / ping socket's default destination).
    pub const CONNECT: u8 = 0;
    /// A UDP datagram sent to an address (`sendmsg`, `sendto`).
    pub const DATAGRAM: u8 = 1;
    /// A socket that may not be created (raw, packet, ping).
    pub const SOCKET: u8 = 2;
}

/// `addr` as IPv6 bytes, IPv4-mapped (`::ffff:a.b.c.d`).
pub const fn v4_mapped(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

/// The IPv4 address of an IPv4-mapped IPv6 address.
pub const fn unmapped_v4(addr: &[u8; 16]) -> Option<[u8; 4]> {
    let mut i = 0;
    while i < 10 {
        if addr[i] != 0 {
            return None;
        }
        i += 1;
    }
    if addr[10] == 0xff && addr[11] == 0xff {
        Some([addr[12], addr[13], addr[14], addr[15]])
    } else {
        None
    }
}

/// The single entry of the `CONFIG` array: agent-wide settings the programs read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Config {
    /// cgroup id of the agent itself: its processes and their children are never filtered.
    pub agent_cgroup: u64,
    /// Port of the peek proxy's IPv4 listener on 127.0.0.1 (of the caller's own network
    /// namespace), 0 when there is none.
    pub proxy_port_v4: u16,
    /// Port of the peek proxy's IPv6 listener on ::1, 0 when there is none.
    pub proxy_port_v6: u16,
    /// Non-zero: the programs log their decisions through aya-log.
    pub debug: u8,
    /// Bits from [`config_flags`]: what the fast path may skip.
    pub flags: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Config>() == 16);

/// Bits of [`Config::flags`], kept by the agent so the common case does no lookup it
/// cannot need.
pub mod config_flags {
    /// `MESH_V4` holds entries.
    pub const MESH_V4: u8 = 1;
    /// `MESH_V6` holds entries.
    pub const MESH_V6: u8 = 2;
    /// Some workload has `UDP_DENY`: without it, datagrams are not looked at.
    pub const UDP: u8 = 4;
    /// `flows.enabled`: the connect programs record each workload's connects in `FLOWS`.
    pub const FLOWS: u8 = 8;
}

/// Key of the `FLOWS` LRU map: one workload's connects to one destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// cgroup id of the workload (its key in `WORKLOADS`).
    pub workload: u64,
    /// Destination as IPv6 bytes; an IPv4 destination is IPv4-mapped.
    pub addr: [u8; 16],
    /// Destination port in host byte order.
    pub port: u16,
    /// The socket's IP protocol (`IPPROTO_TCP`, `IPPROTO_UDP`, ...), as the socket has it.
    pub protocol: u16,
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<FlowKey>() == 32);

/// Value of the `FLOWS` map. `count` is raised atomically in place; `last_ns`, `reason` and
/// `audit` are plain stores (the latest connect wins a race, which is what they describe).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowValue {
    /// Connects since the entry was created.
    pub count: u64,
    /// `bpf_ktime_get_boot_ns` when the entry was created: tells a re-created entry (after an
    /// eviction) from the one the agent read before.
    pub first_ns: u64,
    /// `bpf_ktime_get_coarse_ns` (`CLOCK_MONOTONIC` at the last tick) of the latest
    /// connect: coarse, because a precise clock read per connect costs more than the rest of
    /// the record.
    pub last_ns: u64,
    /// The [`Reason`] of the latest connect, before audit mode (`ToProxy` for a hand-off).
    pub reason: u8,
    /// Non-zero: audit mode let the latest connect through.
    pub audit: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<FlowValue>() == 32);

/// Value of the per-CPU `FLOW_MEMO` array: the connects of one flow a CPU has counted since
/// it last added them to that flow's `FLOWS` entry. A repeated connect to the same
/// destination raises `pending` here, in memory no other CPU touches, instead of looking the
/// flow up in `FLOWS`; the pending connects are added to `FLOWS` when the slot is taken for
/// another flow, when `pending` reaches [`FLOW_MEMO_FLUSH_COUNT`], or on the first connect
/// [`FLOW_MEMO_FLUSH_NS`] after the last addition. The agent reads both, `FLOWS` first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowMemo {
    /// 1 while a program on this CPU updates the slot (taken with a compare-and-exchange):
    /// a program that preempted the holder records in `FLOWS` directly.
    pub busy: u64,
    /// Connects counted here and not yet in `FLOWS`.
    pub pending: u32,
    /// The [`Reason`] of the latest of them, and whether audit mode let it through.
    pub reason: u8,
    pub audit: u8,
    pub _pad: [u8; 2],
    pub key: FlowKey,
    /// `first_ns` of the `FLOWS` entry the pending connects belong to (0: a free slot).
    pub first_ns: u64,
    /// Coarse monotonic time the pending connects were last added to `FLOWS`.
    pub flushed_ns: u64,
    /// Coarse monotonic time of the latest connect counted here.
    pub last_ns: u64,
}
const _: () = assert!(size_of::<FlowMemo>() == 72);

/// [`FlowMemo::pending`] at which the connects are added to `FLOWS`.
pub const FLOW_MEMO_FLUSH_COUNT: u32 = 4_096;
/// Nanoseconds after which a slot's next connect adds its pending ones to `FLOWS` (which
/// also keeps a busy flow recently used for the LRU).
pub const FLOW_MEMO_FLUSH_NS: u64 = 1_000_000_000;

/// Indexes of the per-CPU `FLOW_INSERTS` array.
pub mod flow_counter {
    /// `FLOWS` entries the programs created (an insert of a new key that succeeded). Entries
    /// evicted = the sum over CPUs minus the entries present: nothing else deletes one.
    pub const INSERTED: u32 = 0;
    /// Inserts that found the key created by another CPU in between (then counted there).
    pub const RACED: u32 = 1;
    /// Size of the array.
    pub const COUNT: u32 = 2;
}

/// Why a connect was decided as it was. Index of the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not a TCP socket (UDP, used by resolvers) of a workload whose UDP is not judged
    /// (`udp: Allow`, or mode `All`): passes untouched.
    NotTcp = 0,
    /// The caller is in no managed workload cgroup.
    Unmanaged = 1,
    /// The caller is the agent or one of its children.
    Agent = 2,
    /// Loopback destination.
    Loopback = 3,
    /// Destination in one of the agent's mesh CIDRs.
    MeshCidr = 4,
    /// The workload's merged mode is `All`.
    ModeAll = 5,
    /// No policy selects the workload.
    Unfiltered = 6,
    /// An IP entry allowed it.
    IpEntry = 7,
    /// A CIDR entry allowed it.
    CidrEntry = 8,
    /// The workload's merged mode is `None`.
    ModeNone = 9,
    /// Mode `Matched` and no entry covers the destination.
    NoMatch = 10,
    /// Only a Domain entry could allow it and no peek proxy is configured.
    DomainNoProxy = 11,
    /// Handed to the peek proxy, which decides from the name the client sends.
    ToProxy = 12,
    /// Would have been denied, allowed because the workload is in audit mode.
    Audit = 13,
    /// The peek proxy found a Domain entry for the name the client sent (user space only).
    DomainEntry = 14,
    /// The peek proxy found no Domain entry for the name the client sent (user space only).
    DomainNoMatch = 15,
    /// `domainCheck: Verify`: the dialled address is not one of the allowed name's addresses
    /// (user space only).
    NameAddressMismatch = 16,
    /// The allowed name could not be resolved in time (user space only).
    DnsTimeout = 17,
    /// The resolvers refused, failed or could not be reached (user space only).
    DnsUnreachable = 18,
    /// The allowed name does not exist (NXDOMAIN; user space only).
    DnsNxDomain = 19,
    /// The allowed name has no A or AAAA record (user space only).
    DnsNoAddress = 20,
    /// `udp: Deny`: a datagram to port 53 of the workload's resolvers, allowed.
    UdpDns = 21,
    /// `udp: Deny`: a datagram (or a ping socket) refused.
    UdpDenied = 22,
    /// `rawSockets: Deny`: a raw IP socket refused.
    RawSocket = 23,
    /// `rawSockets: Deny`: a packet socket (`AF_PACKET`, `AF_XDP`) refused (BPF LSM).
    PacketSocket = 24,
}

impl Reason {
    /// Number of reasons: the size of the `COUNTERS` array.
    pub const COUNT: u32 = 25;

    /// Every reason, in index order.
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::NotTcp,
        Reason::Unmanaged,
        Reason::Agent,
        Reason::Loopback,
        Reason::MeshCidr,
        Reason::ModeAll,
        Reason::Unfiltered,
        Reason::IpEntry,
        Reason::CidrEntry,
        Reason::ModeNone,
        Reason::NoMatch,
        Reason::DomainNoProxy,
        Reason::ToProxy,
        Reason::Audit,
        Reason::DomainEntry,
        Reason::DomainNoMatch,
        Reason::NameAddressMismatch,
        Reason::DnsTimeout,
        Reason::DnsUnreachable,
        Reason::DnsNxDomain,
        Reason::DnsNoAddress,
        Reason::UdpDns,
        Reason::UdpDenied,
        Reason::RawSocket,
        Reason::PacketSocket,
    ];

    /// Stable snake_case name, used in metrics labels and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::NotTcp => "not_tcp",
            Reason::Unmanaged => "unmanaged",
            Reason::Agent => "agent",
            Reason::Loopback => "loopback",
            Reason::MeshCidr => "mesh_cidr",
            Reason::ModeAll => "mode_all",
            Reason::Unfiltered => "unfiltered",
            Reason::IpEntry => "ip_entry",
            Reason::CidrEntry => "cidr_entry",
            Reason::ModeNone => "mode_none",
            Reason::NoMatch => "no_match",
            Reason::DomainNoProxy => "domain_no_proxy",
            Reason::ToProxy => "to_proxy",
            Reason::Audit => "audit",
            Reason::DomainEntry => "domain_entry",
            Reason::DomainNoMatch => "domain_no_match",
            Reason::NameAddressMismatch => "name_address_mismatch",
            Reason::DnsTimeout => "dns_timeout",
            Reason::DnsUnreachable => "dns_unreachable",
            Reason::DnsNxDomain => "dns_nxdomain",
            Reason::DnsNoAddress => "dns_no_address",
            Reason::UdpDns => "udp_dns",
            Reason::UdpDenied => "udp_denied",
            Reason::RawSocket => "raw_socket",
            Reason::PacketSocket => "packet_socket",
        }
    }

    /// Whether a connect with this reason is let through (possibly to the proxy).
    pub const fn allows(self) -> bool {
        !matches!(
            self,
            Reason::ModeNone
                | Reason::NoMatch
                | Reason::DomainNoProxy
                | Reason::DomainNoMatch
                | Reason::NameAddressMismatch
                | Reason::DnsTimeout
                | Reason::DnsUnreachable
                | Reason::DnsNxDomain
                | Reason::DnsNoAddress
                | Reason::UdpDenied
                | Reason::RawSocket
                | Reason::PacketSocket
        )
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: every type below is `#[repr(C)]`, `Copy`, made only of integers and byte arrays,
    // with its padding spelled out as fields, so any bit pattern is a valid value.
    unsafe impl aya::Pod for Workload {}
    unsafe impl aya::Pod for ExactV4Key {}
    unsafe impl aya::Pod for ExactV6Key {}
    unsafe impl aya::Pod for CidrV4Data {}
    unsafe impl aya::Pod for CidrV6Data {}
    unsafe impl aya::Pod for RuleRef {}
    unsafe impl aya::Pod for DomainPortKey {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for DnsV4Data {}
    unsafe impl aya::Pod for DnsV6Data {}
    unsafe impl aya::Pod for PodUid {}
    unsafe impl aya::Pod for PodWatch {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for FlowMemo {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_table_is_in_index_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.name());
        }
    }

    #[test]
    fn pod_uids_parse_in_both_forms_and_nothing_else() {
        let dashed = PodUid::parse("1b4e28ba-2fa1-11d2-883f-0016d3cca427").expect("uuid");
        assert_eq!(
            dashed.bytes,
            [
                0x1b, 0x4e, 0x28, 0xba, 0x2f, 0xa1, 0x11, 0xd2, 0x88, 0x3f, 0x00, 0x16, 0xd3, 0xcc,
                0xa4, 0x27
            ]
        );
        assert_eq!(
            PodUid::parse("1B4E28BA2FA111D2883F0016D3CCA427"),
            Some(dashed),
            "a static pod's 32 hex digits"
        );
        for bad in [
            "",
            "1b4e28ba_2fa1_11d2_883f_0016d3cca427",
            "1b4e28ba-2fa1-11d2-883f-0016d3cca42g",
            "1b4e28ba-2fa1-11d2-883f-0016d3cca4270",
            "../../../../../../../../../../etc/x",
        ] {
            assert_eq!(PodUid::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lpm_data_is_big_endian() {
        let d = CidrV4Data::new(443, [10, 0, 0, 1]);
        assert_eq!(d.port, [0x01, 0xbb]);
        assert_eq!(d.addr, [10, 0, 0, 1]);
    }
}
