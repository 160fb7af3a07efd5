//! The wire types of the admin endpoint (`/status`, `/events`) and of `passthrough status`,
//! `events` and `recommend`: one set of structs the agent serializes and the CLI
//! deserializes. Verdicts, reasons, sources and results are enums, never strings built in one
//! place and parsed in another.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use passthrough_common::Reason;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::policy::{
    compile::EffectiveMode, containment::Containment, merge::PolicyRef, tables::Tables,
};

/// Whether `lsm_cgroup/socket_create` can refuse packet sockets here.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "state", content = "reason")]
pub enum PacketSockets {
    /// The program is loaded and attached with the others.
    Refused,
    /// It cannot be: why, and what to do.
    Open(String),
}

/// Entries of one policy, per table, for `/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryCounts {
    pub exact_v4: usize,
    pub exact_v6: usize,
    pub cidr_v4: usize,
    pub cidr_v6: usize,
    pub domain_ports: usize,
}

impl EntryCounts {
    pub fn of(t: &Tables) -> Self {
        Self {
            exact_v4: t.exact_v4.len(),
            exact_v6: t.exact_v6.len(),
            cidr_v4: t.cidr_v4.len(),
            cidr_v6: t.cidr_v6.len(),
            domain_ports: t.domain_ports.len(),
        }
    }
}

/// A [`Reason`] by its stable name (`no_match`, `udp_denied`, ...).
pub mod reason_name {
    use super::*;

    pub fn serialize<S: Serializer>(r: &Reason, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(r.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Reason, D::Error> {
        let name = String::deserialize(d)?;
        from_name(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown reason {name:?}")))
    }

    /// The reason named `name`.
    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.name() == name)
    }
}

/// What happened to a connection, datagram or socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Allow,
    Deny,
    /// Audit mode let it through; the policy would have denied it.
    WouldDeny,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Verdict {
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::WouldDeny => "would-deny",
        }
    }
}

/// Who decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSource {
    /// A program in the kernel.
    Kernel,
    /// The peek proxy.
    Proxy,
}

/// One event, or several identical ones (`count`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    /// When the first of them happened (RFC 3339, UTC).
    pub time: String,
    /// A program in the kernel, or the peek proxy.
    pub source: EventSource,
    /// The workload's cgroup, as in the config, its mesh and its tags.
    pub workload: String,
    /// Its name where it has one: `namespace/name` (Kubernetes) or `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_name: Option<String>,
    #[serde(default)]
    pub mesh: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, String)>,
    /// Process id and command (kernel events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// What was refused: a connection, a datagram, or a socket.
    #[serde(default)]
    pub kind: EventKind,
    /// Where it was going (connections and datagrams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<SocketAddr>,
    /// The socket that was to be created (socket events): family, type and protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// Where the peek proxy connected instead, when `domainCheck: Pin` bound the name to
    /// another of its addresses than the one dialled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_to: Option<SocketAddr>,
    /// The name the client sent (proxy events): SNI, Host or `:authority`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The protocol the proxy recognised: `tls`, `http`, `http2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `deny`, `would-deny` (audit mode let it through) or `allow` (proxy).
    pub verdict: Verdict,
    /// Why, as in the kernel counters (`no_match`, `mode_none`, `domain_no_match`, ...).
    #[serde(with = "reason_name")]
    pub reason: Reason,
    /// The deciding entry (`policy/appendMatch[i]`), or "no entry matched (mode M)".
    pub rule: String,
    pub count: u64,
}

impl EventRecord {
    /// Whether the event is of workload `w`: its cgroup path, or its name.
    pub fn is_of(&self, w: &str) -> bool {
        self.workload == w || self.workload_name.as_deref() == Some(w)
    }

    /// Two events that are the same occurrence repeated.
    pub fn same(&self, other: &EventRecord) -> bool {
        self.source == other.source
            && self.workload == other.workload
            && self.pid == other.pid
            && self.kind == other.kind
            && self.destination == other.destination
            && self.socket == other.socket
            && self.name == other.name
            && self.verdict == other.verdict
            && self.reason == other.reason
            && self.rule == other.rule
    }
}

/// What an event is about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A `connect()` (or a connection through the peek proxy).
    #[default]
    Connect,
    /// A UDP datagram sent to an address.
    Datagram,
    /// A socket that was to be created (raw, packet, ping).
    Socket,
}

/// Counters of the event path, for `/status` and `/metrics`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventCounts {
    /// Events received (each aggregated repeat counts).
    pub received: u64,
    /// Events the kernel could not queue because the ring buffer was full.
    pub kernel_dropped: u64,
    /// Events followers missed because they fell behind.
    pub follower_dropped: u64,
}

/// How a reload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadResult {
    /// Policies or workloads changed and are enforced.
    Applied,
    /// Nothing changed.
    Unchanged,
    /// Some workloads could not be given their new state; they keep their last good one.
    Partial,
    /// Invalid policies: nothing was changed.
    Refused,
}

impl ReloadResult {
    pub const fn name(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Partial => "partial",
            ReloadResult::Refused => "refused",
        }
    }
}

/// Result of the last reload, as `/status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    pub at: String,
    /// The same instant in seconds since the Unix epoch, for `/metrics`.
    pub unix: u64,
    pub result: ReloadResult,
    /// What refused the set (or, for `partial`, the workloads it could not be applied to).
    pub problems: Vec<String>,
    /// What was reported without refusing anything (`warning: ` lines, as `validate` prints).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Domain entries of the applied policies that allow nothing because the peek proxy is
    /// off (`proxy.enabled: false`); each reload with some warns.
    #[serde(default)]
    pub unenforceable_domains: usize,
}

/// The Kubernetes source in `/status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeStatus {
    pub synced: bool,
    pub connected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub policies: usize,
    pub pods: usize,
    /// Pods in the mesh the API server reported whose cgroup does not exist yet: their
    /// entries wait in `PENDING_PODS`, for the kernel to give the cgroup when it is created.
    #[serde(default)]
    pub pending: usize,
    /// Whether the `cgroup_mkdir` program covers new pod cgroups, or why not.
    #[serde(default)]
    pub pod_watch: PodWatchStatus,
}

/// Whether new pod cgroups get their entry in the kernel, as they are created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PodWatchStatus {
    /// The `cgroup_mkdir` program is attached and watches the kubepods cgroup.
    Active,
    /// Not (yet) attached: new pods are covered when the agent sees their cgroup.
    #[default]
    Inactive,
    /// It could not be attached, and why.
    Failed(String),
}

/// Which path gave a workload its first kernel entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CoveredBy {
    /// The `cgroup_mkdir` program, from the pod's pending entry, as the cgroup was created.
    Kernel,
    /// The agent, once it saw the cgroup.
    Agent,
}

/// How full one rule map is.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MapFill {
    pub map: String,
    pub entries: usize,
    pub capacity: u32,
}

/// `/status` and `passthrough status -o json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<String>,
    pub generation: u64,
    pub last_reload: Option<ReloadReport>,
    pub bpffs: PathBuf,
    /// Compiled policies installed in the kernel (workloads with equal tables share one).
    pub slots: usize,
    /// Fill of the kernel maps with a fixed capacity.
    #[serde(default)]
    pub maps: Vec<MapFill>,
    /// Entries over every installed policy (each policy's maps are sized to its entries).
    #[serde(default)]
    pub policy_entries: EntryCounts,
    /// Kernel memory of the installed policies' maps, in bytes.
    #[serde(default)]
    pub policy_memory_bytes: u64,
    pub workloads: Vec<WorkloadStatus>,
    /// Connects decided in the kernel, by reason, since the maps were created.
    pub counters: BTreeMap<String, u64>,
    /// Whether packet sockets can be refused on this kernel (`rawSockets: Deny`).
    #[serde(default = "packet_sockets_unknown")]
    pub packet_sockets: PacketSockets,
    /// The peek proxy's decisions and refusals since the agent started, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyStats>,
    /// Deny, audit and proxy events received and lost.
    #[serde(default)]
    pub events: EventCounts,
    /// The Kubernetes source, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeStatus>,
    /// The kernel flow table as of the agent's last reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<FlowTableStats>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    pub cgroup: PathBuf,
    pub cgroup_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub enforced: bool,
    pub mode: Option<EffectiveMode>,
    pub mode_from: Option<PolicyRef>,
    pub audit: bool,
    pub policies: Vec<PolicyRef>,
    pub entries: EntryCounts,
    pub slot: Option<u32>,
    /// The UDP and raw socket settings that apply (in the kernel for modes None and
    /// Matched only).
    pub containment: Option<Containment>,
    pub generation: Option<u64>,
    /// Which path gave it its first kernel entry (unset until it has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covered_by: Option<CoveredBy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn packet_sockets_unknown() -> PacketSockets {
    PacketSockets::Open("not reported by this agent".into())
}

/// The peek proxy's counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStats {
    /// Connections it holds now.
    pub active: u64,
    /// Decisions by workload, verdict and deciding entry.
    pub decisions: Vec<(DecisionKey, u64)>,
    /// Connections closed before any decision, by cause.
    pub refused: BTreeMap<String, u64>,
}

/// What the proxy counts its decisions by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionKey {
    pub workload: String,
    pub verdict: Verdict,
    /// `policy/appendMatch[i]` that allowed it, or why it was denied.
    pub rule: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys of ours are camelCase; maps keyed by data (counter reasons, refusal causes) are
    /// only looked into.
    fn camel_case_keys(v: &serde_json::Value, at: &str, bad: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                let data = at.ends_with(".counters") || at.ends_with(".refused");
                for (k, v) in m {
                    if !data && !k.chars().all(|c| c.is_ascii_alphanumeric()) {
                        bad.push(format!("{at}.{k}"));
                    }
                    camel_case_keys(v, &format!("{at}.{k}"), bad);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| camel_case_keys(v, at, bad)),
            _ => {}
        }
    }

    #[test]
    fn status_and_event_json_keys_are_camel_case() {
        use crate::policy::compile::EffectiveMode;
        let status = Status {
            ready: false,
            not_ready: vec!["x".into()],
            generation: 1,
            last_reload: Some(ReloadReport {
                at: "t".into(),
                unix: 1,
                result: ReloadResult::Applied,
                problems: vec!["p".into()],
                warnings: vec!["w".into()],
                unenforceable_domains: 2,
            }),
            bpffs: "/sys/fs/bpf/passthrough".into(),
            slots: 1,
            maps: vec![MapFill {
                map: "WORKLOADS".into(),
                entries: 1,
                capacity: 2,
            }],
            policy_entries: EntryCounts::default(),
            policy_memory_bytes: 1,
            workloads: vec![WorkloadStatus {
                cgroup: "/w".into(),
                cgroup_id: Some(1),
                name: Some("n".into()),
                namespace: Some("ns".into()),
                enforced: true,
                mode: Some(EffectiveMode::Matched),
                mode_from: None,
                audit: false,
                policies: Vec::new(),
                entries: EntryCounts::default(),
                slot: Some(1),
                containment: Some(crate::policy::containment::Containment {
                    udp: crate::policy::containment::UdpMode::Deny,
                    dns: None,
                    raw_sockets: crate::policy::containment::RawSockets::Deny,
                }),
                generation: Some(1),
                covered_by: Some(CoveredBy::Kernel),
                error: Some("e".into()),
            }],
            counters: [("no_match".to_string(), 1)].into(),
            packet_sockets: PacketSockets::Open("r".into()),
            proxy: Some(ProxyStats {
                active: 1,
                decisions: vec![(
                    DecisionKey {
                        workload: "/w".into(),
                        verdict: Verdict::Allow,
                        rule: "r".into(),
                    },
                    1,
                )],
                refused: [("peek_timeout".to_string(), 1)].into(),
            }),
            events: Default::default(),
            kubernetes: Some(KubeStatus {
                error: Some("e".into()),
                ..KubeStatus::default()
            }),
            flows: None,
        };
        let event = EventRecord {
            time: "t".into(),
            source: EventSource::Proxy,
            workload: "/w".into(),
            workload_name: Some("ns/n".into()),
            mesh: "default".into(),
            tags: vec![("k".into(), "v".into())],
            pid: Some(1),
            command: Some("c".into()),
            kind: EventKind::Datagram,
            destination: Some("192.0.2.1:443".parse().expect("addr")),
            socket: Some("AF_PACKET SOCK_RAW protocol 768".into()),
            pinned_to: Some("192.0.2.2:443".parse().expect("addr")),
            name: Some("example.com".into()),
            protocol: Some("tls".into()),
            verdict: Verdict::WouldDeny,
            reason: passthrough_common::Reason::DomainNoMatch,
            rule: "r".into(),
            count: 1,
        };
        let mut bad = Vec::new();
        camel_case_keys(&serde_json::to_value(&status).expect("json"), "", &mut bad);
        camel_case_keys(&serde_json::to_value(&event).expect("json"), "", &mut bad);
        assert!(bad.is_empty(), "keys not in camelCase: {bad:?}");
    }
}

/// Who recorded a flow, and what it is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowSource {
    /// The connect programs' table: (workload, destination, protocol).
    Kernel,
    /// The peek proxy: (workload, destination, the name the client sent).
    Proxy,
}

/// One workload's connects to one destination (and, for the proxy, one name) in the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowRecord {
    pub source: FlowSource,
    /// The workload's cgroup, as in the config (`cgroup id N` for one the agent no longer has).
    pub workload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_name: Option<String>,
    /// What policies select the workload by (mesh, tags, labels, ...); `None` when the agent
    /// no longer has the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::policy::workload::Workload>,
    pub destination: SocketAddr,
    /// The socket's IP protocol number (6: TCP).
    pub ip_protocol: u16,
    /// The name the client sent, and how (`tls`, `http`, `http2`): proxy flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The latest connect's verdict: `allow`, `deny` or `would-deny` (audit mode).
    pub verdict: Verdict,
    /// Why, as the policy decided it (before audit mode): `ip_entry`, `no_match`, `to_proxy`...
    #[serde(with = "reason_name")]
    pub reason: Reason,
    /// The deciding entry (`policy/appendMatch[i]`), where one decided and is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub count: u64,
    /// First and latest connect in the window (RFC 3339, UTC), and the latest in ms since the
    /// Unix epoch (for `--since`).
    pub first: String,
    pub last: String,
    pub last_unix_ms: u64,
}

impl FlowRecord {
    /// Whether the flow is of workload `w`: its cgroup path, or its name.
    pub fn is_of(&self, w: &str) -> bool {
        self.workload == w || self.workload_name.as_deref() == Some(w)
    }
}

/// The kernel table's state. `evicted` is exact: only the programs create entries
/// (`inserted`) and only the LRU removes them, so `evicted = inserted - present`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowTableStats {
    pub enabled: bool,
    pub capacity: u32,
    pub present: u64,
    pub inserted: u64,
    pub evicted: u64,
    /// Inserts that lost a race with another CPU creating the same entry.
    pub raced: u64,
}

/// What the agent enforces, as `simulate` needs it to replay flows the way the agent would.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedPolicies {
    pub kuma: crate::policy::kuma::KumaVersion,
    pub system_namespace: String,
    /// `defaultMode: None`: a workload no policy selects is denied everything.
    pub default_mode_none: bool,
    #[serde(rename = "meshCIDRs")]
    pub mesh_cidrs: Vec<ipnet::IpNet>,
    /// Every policy the agent applies (files and Kubernetes), as resources.
    pub policies: Vec<AppliedPolicy>,
}

/// One policy the agent applies: where it came from, and the resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppliedPolicy {
    pub source: crate::policy::Source,
    pub resource: serde_json::Value,
}

/// `/flows` and `passthrough flows -o json`: the record and what it was decided with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowsReport {
    /// When the report was made (RFC 3339, UTC).
    pub generated: String,
    /// How far back the record reaches (`flows.window`), in seconds.
    pub window_secs: u64,
    pub table: FlowTableStats,
    /// Flows in the agent's history, its bound, and flows it dropped for room.
    pub history_entries: usize,
    pub history_capacity: usize,
    pub history_dropped: u64,
    pub applied: AppliedPolicies,
    pub flows: Vec<FlowRecord>,
}
