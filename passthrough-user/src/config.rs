//! The agent's configuration file (`passthrough run --config FILE`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::SocketAddr,
    path::{Component, Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use crate::policy::containment::{Containment, RawSockets, UdpMode};
use crate::{
    cgroup,
    policy::{
        Severity,
        bind::DomainCheck,
        cache::FileCache,
        describe, hints,
        kuma::{Admission, KumaVersion},
        load::DEFAULT_MAX_FILE_BYTES,
        merge::{SelectOptions, select},
        model::{DEFAULT_MESH, DEFAULT_SYSTEM_NAMESPACE, Policy},
        prescan,
        set::{Finding, PolicySet},
        workload::{ProxyType, Workload},
    },
};

/// Where pins live unless the config says otherwise.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/passthrough";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9902";

/// The configuration file. Keys are camelCase; an unknown key is an error.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentConfig {
    /// Policy files or directories, watched for changes.
    #[serde(default)]
    pub policies: Vec<PathBuf>,
    /// The workloads to enforce on.
    #[serde(default)]
    pub workloads: Vec<WorkloadConfig>,
    /// In-mesh destinations, always allowed.
    #[serde(default, rename = "meshCIDRs")]
    pub mesh_cidrs: Vec<IpNet>,
    #[serde(default)]
    pub admin: AdminConfig,
    /// bpffs directory for the pinned maps and links.
    #[serde(default = "default_bpffs")]
    pub bpffs: PathBuf,
    /// Mode of a workload that no policy selects: unset leaves it unfiltered (as Kuma does);
    /// `None` denies everything outside the mesh, `All` is the same as unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<DefaultMode>,
    /// Audit mode for every workload: denials are reported, not enforced.
    #[serde(default)]
    pub audit: bool,
    /// Kuma's system namespace, for namespaced (Kubernetes-form) policies.
    #[serde(default = "default_system_namespace")]
    pub system_namespace: String,
    /// The Kuma the policies are written for: its validation, selection and name binding.
    #[serde(default)]
    pub kuma: KumaConfig,
    /// Log every kernel decision through aya-log (costly; for debugging only).
    #[serde(default)]
    pub debug: bool,
    /// The peek proxy for Domain entries: on by default, on 127.0.0.1:15001 and
    /// [::1]:15001. With `enabled: false`, a connect only a Domain entry could allow is
    /// denied (`domain_no_proxy`), and each reload says how many entries that leaves
    /// unenforceable. Read it through [`AgentConfig::proxy`].
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// Kubernetes as a second source: MeshPassthrough objects and this node's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesConfig>,
    /// The resolver the peek proxy binds allowed names to their addresses with.
    #[serde(default)]
    pub dns: DnsConfig,
    /// UDP (and ping sockets) of workloads in mode `None` or `Matched`.
    #[serde(default)]
    pub udp: UdpConfig,
    /// Raw IP and packet sockets of workloads in mode `None` or `Matched`.
    #[serde(default)]
    pub raw_sockets: RawSockets,
    /// The flow table: every workload's connects, for `passthrough flows` and `simulate`.
    #[serde(default)]
    pub flows: FlowsConfig,
    /// Largest policy file read, in bytes (default 64 MiB); a larger one is refused with the
    /// rest of its reload.
    #[serde(default = "default_max_policy_file_bytes")]
    pub max_policy_file_bytes: u64,
}

/// `flows`: the record of each workload's connects (allowed and denied) that
/// `passthrough flows`, `simulate` and `recommend` read.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FlowsConfig {
    /// Record flows (the default). `false`: the connect programs skip the table entirely.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How far back the record reaches, e.g. `24h` (the default).
    #[serde(default = "default_flows_window", with = "duration_text")]
    pub window: std::time::Duration,
    /// Distinct flows the kernel table holds (least recently used go first); read at start,
    /// a change needs `passthrough uninstall` (the table is pinned).
    #[serde(default = "default_flows_capacity")]
    pub capacity: u32,
    /// Flows the agent's history keeps (the kernel's and the proxy's names), oldest first out.
    #[serde(default = "default_flows_history")]
    pub history: usize,
    /// How often the agent reads the kernel table, e.g. `10s` (also on every `/flows`).
    #[serde(default = "default_flows_interval", with = "duration_text")]
    pub interval: std::time::Duration,
    /// Where the agent keeps its history across restarts (JSON, rewritten on each read);
    /// unset: only the kernel table survives a restart, the names the proxy saw do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: default_flows_window(),
            capacity: default_flows_capacity(),
            history: default_flows_history(),
            interval: default_flows_interval(),
            state_file: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_flows_window() -> std::time::Duration {
    std::time::Duration::from_secs(24 * 3600)
}

fn default_flows_capacity() -> u32 {
    passthrough_common::capacity::FLOWS
}

fn default_flows_history() -> usize {
    65_536
}

fn default_flows_interval() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

/// Largest `flows.capacity`: 16 Mi entries of 64 bytes and their LRU nodes, about 2 GiB.
pub const MAX_FLOWS_CAPACITY: u32 = 1 << 24;

impl FlowsConfig {
    fn check(&self, c: &mut Findings<'_>) {
        if self.capacity == 0 || self.capacity > MAX_FLOWS_CAPACITY {
            c.error(
                "flows.capacity",
                format!(
                    "{}: give 1 to {MAX_FLOWS_CAPACITY} entries (default {}), or set flows.enabled: false",
                    self.capacity,
                    passthrough_common::capacity::FLOWS
                ),
            );
        }
        if self.history == 0 {
            c.error(
                "flows.history",
                "0: give the number of flows to keep, e.g. 65536, or set flows.enabled: false",
            );
        }
        if self.window.is_zero() {
            c.error(
                "flows.window",
                "0: give how far back to keep flows, e.g. 24h",
            );
        }
        if self.interval.is_zero() || self.interval > self.window {
            c.error(
                "flows.interval",
                format!(
                    "{:?}: give how often to read the kernel table, between 1s and flows.window, e.g. 10s",
                    self.interval
                ),
            );
        }
        if let Some(f) = &self.state_file
            && !f.is_absolute()
        {
            c.error(
                "flows.stateFile",
                format!(
                    "{:?} is not absolute: give a file such as /var/lib/passthrough/flows.json",
                    f.display().to_string()
                ),
            );
        }
    }
}

fn default_max_policy_file_bytes() -> u64 {
    DEFAULT_MAX_FILE_BYTES
}

/// `kuma`: which Kuma the policies are written for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KumaConfig {
    /// `"2"` (the default: Kuma 2.x, the API with MeshSubset and proxyTypes) or `"3"` (Kuma 3:
    /// Mesh and Dataplane by labels, Domain entries with a port, exact names pinned to their
    /// resolved addresses whatever `proxy.domainCheck` says).
    #[serde(default)]
    pub version: KumaVersion,
}

/// `udp`: whether workloads in mode `None` or `Matched` may send UDP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UdpConfig {
    /// `Allow` (the default, as Kuma: UDP is not judged) or `Deny`.
    #[serde(default)]
    pub mode: UdpMode,
    /// Under `Deny`, where UDP to port 53 may go; default: any address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<IpNet>>,
}

/// A workload's own `udp` settings; what it leaves out comes from the agent's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadUdpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<UdpMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<IpNet>>,
}

/// `dns`: where the peek proxy resolves the names Domain entries allow (`proxy.domainCheck`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsConfig {
    /// Resolvers as `ADDR:PORT`; default: the nameservers of `/etc/resolv.conf` (port 53).
    #[serde(default)]
    pub servers: Vec<SocketAddr>,
    /// Longest wait for an answer, e.g. `2s`; past it the connection is refused.
    #[serde(default = "default_dns_timeout", with = "duration_text")]
    pub timeout: std::time::Duration,
    /// Answers kept (each for its TTL).
    #[serde(default = "default_dns_cache_size")]
    pub cache_size: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            timeout: default_dns_timeout(),
            cache_size: default_dns_cache_size(),
        }
    }
}

fn default_dns_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(2)
}

fn default_dns_cache_size() -> usize {
    4096
}

/// `kubernetes`: the API server is found from the in-cluster service account or
/// `KUBECONFIG`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesConfig {
    /// This node's name (the pods whose `spec.nodeName` it is are enforced); default: the
    /// `NODE_NAME` environment variable, which the DaemonSet sets from the downward API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Where pod cgroups are looked up; default: the cgroup2 mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_root: Option<PathBuf>,
    /// A kubeconfig file (an agent run as a node service); default: the in-cluster service
    /// account, else `KUBECONFIG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// Pods the agent does not know yet (created since the last watch event): `Allow` (the
    /// default, as Kuma leaves unselected workloads alone) or `Deny` (strict clusters).
    #[serde(default)]
    pub unknown_pods: UnknownPods,
}

/// `kubernetes.unknownPods`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum UnknownPods {
    #[default]
    Allow,
    Deny,
}

impl KubernetesConfig {
    /// The node name, from the config or `NODE_NAME`.
    pub fn node(&self) -> Option<String> {
        self.node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|n| !n.is_empty())
    }
}

/// `proxy`: whether the peek proxy runs, where it listens and its bounds.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyConfig {
    /// `false` turns the proxy off: Domain entries then deny (default `true`).
    #[serde(default = "default_proxy_enabled")]
    pub enabled: bool,
    /// Listener addresses: `127.0.0.1:PORT` and/or `[::1]:PORT` (default: both, port
    /// 15001). The kernel redirects a workload's connect to the loopback address of its own
    /// network namespace, so these are the only addresses a listener can have.
    #[serde(default = "default_proxy_listen")]
    pub listen: Vec<SocketAddr>,
    /// Most bytes read from a client while looking for the name.
    #[serde(default = "default_peek_bytes")]
    pub peek_bytes: usize,
    /// Longest wait for the client to send the name, e.g. `5s` or `500ms`.
    #[serde(default = "default_peek_timeout", with = "duration_text")]
    pub peek_timeout: std::time::Duration,
    /// Most connections through the proxy at once; more are refused and counted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// What an allowed name binds the connection to: `Pin` (the default: only the name's own
    /// addresses), `Verify` (refuse unless the dialled address is one of them) or `Trust`
    /// (the dialled address as given, Kuma 2.x).
    #[serde(default)]
    pub domain_check: DomainCheck,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            enabled: default_proxy_enabled(),
            listen: default_proxy_listen(),
            peek_bytes: default_peek_bytes(),
            peek_timeout: default_peek_timeout(),
            max_connections: default_max_connections(),
            domain_check: DomainCheck::default(),
        }
    }
}

/// The port of the default listeners, on both loopback addresses.
pub const DEFAULT_PROXY_PORT: u16 = 15001;

fn default_proxy_enabled() -> bool {
    true
}

fn default_proxy_listen() -> Vec<SocketAddr> {
    vec![
        SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, DEFAULT_PROXY_PORT)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, DEFAULT_PROXY_PORT)),
    ]
}

impl ProxyConfig {
    /// Port of the IPv4 (127.0.0.1) and IPv6 (::1) listeners, 0 for none.
    pub fn ports(&self) -> (u16, u16) {
        let port = |v4: bool| {
            self.listen
                .iter()
                .find(|a| a.is_ipv4() == v4)
                .map_or(0, SocketAddr::port)
        };
        (port(true), port(false))
    }
}

fn default_peek_bytes() -> usize {
    16 * 1024
}

fn default_peek_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

fn default_max_connections() -> usize {
    4096
}

/// Durations written as `500ms`, `5s`, `2m` or `1h`.
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// What a duration looks like, for messages.
    pub const EXPECTED: &str = "write a whole number with ms, s, m or h, e.g. 500ms, 5s, 30m, 2h";

    pub fn parse(s: &str) -> Option<Duration> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit())?;
        let (n, unit) = s.split_at(split);
        let n: u64 = n.parse().ok()?;
        match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
            "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
            _ => None,
        }
    }

    /// A duration as written: text, or a bare number (which lacks its unit).
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Number(u64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Written::deserialize(d)
            .map_err(|_| D::Error::custom(format!("not a duration: {EXPECTED}")))?
        {
            Written::Text(s) => parse(&s)
                .ok_or_else(|| D::Error::custom(format!("{s:?} is not a duration: {EXPECTED}"))),
            Written::Number(n) => Err(D::Error::custom(format!(
                "{n} has no unit: write {n}s, {n}ms, {n}m or {n}h"
            ))),
        }
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }
}

/// `defaultMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum DefaultMode {
    All,
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminConfig {
    /// Address of the admin endpoint (GET /ready, /status, /metrics).
    #[serde(default = "default_admin")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin(),
        }
    }
}

/// One workload: a cgroup v2 directory and the identity policies select on.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadConfig {
    /// Absolute path of the workload's cgroup v2 directory.
    pub cgroup: PathBuf,
    #[serde(default = "default_mesh")]
    pub mesh: String,
    #[serde(default)]
    pub proxy_type: ProxyType,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Audit mode for this workload only.
    #[serde(default)]
    pub audit: bool,
    /// This workload's UDP settings, over the agent's `udp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<WorkloadUdpConfig>,
    /// This workload's raw socket setting, over the agent's `rawSockets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_sockets: Option<RawSockets>,
}

impl WorkloadConfig {
    /// The agent's settings, overridden by this workload's.
    pub fn containment(&self, agent: &AgentConfig) -> Containment {
        let own = self.udp.clone().unwrap_or_default();
        Containment {
            udp: own.mode.unwrap_or(agent.udp.mode),
            dns: own.dns.or_else(|| agent.udp.dns.clone()),
            raw_sockets: self.raw_sockets.unwrap_or(agent.raw_sockets),
        }
    }

    pub fn identity(&self) -> Workload {
        Workload {
            mesh: self.mesh.clone(),
            proxy_type: self.proxy_type,
            tags: self.tags.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
        }
    }
}

fn default_bpffs() -> PathBuf {
    PathBuf::from(DEFAULT_BPFFS)
}

fn default_admin() -> SocketAddr {
    DEFAULT_ADMIN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9902)))
}

fn default_mesh() -> String {
    DEFAULT_MESH.into()
}

fn default_system_namespace() -> String {
    DEFAULT_SYSTEM_NAMESPACE.into()
}

/// One finding about a configuration file: the file, the field path
/// (`workloads[0].cgroup`), and a message that quotes the value and says what to write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigFinding {
    pub severity: Severity,
    pub file: String,
    /// Empty for the file as a whole.
    pub field: String,
    pub message: String,
}

impl ConfigFinding {
    /// `FILE: FIELD: MESSAGE`, with `warning: ` in front of a warning.
    pub fn line(&self) -> String {
        let prefix = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        if self.field.is_empty() {
            format!("{prefix}{}: {}", self.file, self.message)
        } else {
            format!("{prefix}{}: {}: {}", self.file, self.field, self.message)
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for ConfigFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line())
    }
}

/// A config file the agent will not run with, or the policies it names: every error.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.lines().join("\n"))]
pub struct ConfigError {
    /// The config file's errors.
    pub config: Vec<ConfigFinding>,
    /// The errors of the policies it names.
    pub policies: Vec<Finding>,
}

impl ConfigError {
    pub fn lines(&self) -> Vec<String> {
        self.config
            .iter()
            .map(ConfigFinding::line)
            .chain(self.policies.iter().map(Finding::line))
            .collect()
    }
}

/// Why a config file could not be parsed at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not readable, or not YAML: nothing in it can be checked (exit code 2).
    Unreadable(ConfigFinding),
    /// YAML, but an unknown key or a value of the wrong type (exit code 1).
    Invalid(ConfigFinding),
}

impl ParseError {
    pub fn finding(&self) -> &ConfigFinding {
        match self {
            ParseError::Unreadable(f) | ParseError::Invalid(f) => f,
        }
    }
}

/// What the checks need to know about the machine the agent runs on.
#[derive(Clone, Debug)]
pub struct Environment {
    /// The cgroup v2 mount, or why none was found.
    pub cgroup_root: Result<PathBuf, String>,
    /// `NODE_NAME`, which the DaemonSet sets from `spec.nodeName`.
    pub node_name: Option<String>,
}

impl Environment {
    /// This machine: the cgroup2 mount from `/proc/self/mountinfo`, `NODE_NAME` from the
    /// environment.
    pub fn this_machine() -> Self {
        Self {
            cgroup_root: cgroup::cgroup2_root().map_err(|e| e.to_string()),
            node_name: std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()),
        }
    }
}

/// Collects the findings of one file; each section of the config adds its own.
struct Findings<'a> {
    file: &'a str,
    out: Vec<ConfigFinding>,
}

impl Findings<'_> {
    fn push(&mut self, severity: Severity, field: impl Into<String>, message: impl Into<String>) {
        self.out.push(ConfigFinding {
            severity,
            file: self.file.to_string(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, field, message);
    }

    fn warning(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, field, message);
    }
}

impl AgentConfig {
    /// Reads a configuration file: its YAML, its keys and the types of its values. Relative
    /// policy paths are made relative to the file. Nothing is checked beyond that (see
    /// [`AgentConfig::check`]).
    pub fn parse(path: &Path) -> Result<Self, ParseError> {
        let file = path.display().to_string();
        let finding = |field: &str, message: String| ConfigFinding {
            severity: Severity::Error,
            file: file.clone(),
            field: field.to_string(),
            message,
        };
        let text = read_config(path)
            .map_err(|e| ParseError::Unreadable(finding("", format!("cannot read: {e}"))))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse_text(&file, &text, base)
    }

    /// [`AgentConfig::parse`] of a text already read: `file` names it in findings, and
    /// relative policy paths are made relative to `base`.
    pub fn parse_text(file: &str, text: &str, base: &Path) -> Result<Self, ParseError> {
        let finding = |field: &str, message: String| ConfigFinding {
            severity: Severity::Error,
            file: file.to_string(),
            field: field.to_string(),
            message,
        };
        if let Err(e) = prescan::check_depth(text, prescan::MAX_DEPTH) {
            return Err(ParseError::Unreadable(finding(
                "",
                format!(
                    "line {}: mappings and sequences nest deeper than {} levels; the agent config nests a few: this is not a config file",
                    e.line, e.bound
                ),
            )));
        }
        let value: serde_yaml::Value = serde_yaml::from_str(text)
            .map_err(|e| ParseError::Unreadable(finding("", format!("not valid YAML: {e}"))))?;
        // An empty file is a config with every default, which `check` then judges.
        let value = if value.is_null() {
            serde_yaml::Value::Mapping(serde_yaml::Mapping::new())
        } else {
            value
        };
        let mut cfg: AgentConfig = serde_path_to_error::deserialize(&value).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            let found = describe::value_at(&value, e.path());
            ParseError::Invalid(finding(
                &field,
                value_message(&e.inner().to_string(), found),
            ))
        })?;
        for p in &mut cfg.policies {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// Reads and checks a configuration file on this machine: any error refuses it; the
    /// warnings are returned with it.
    pub fn load_checked(
        path: &Path,
        env: &Environment,
    ) -> Result<(Self, Vec<ConfigFinding>), ConfigError> {
        let cfg = Self::parse(path).map_err(|e| ConfigError {
            config: vec![e.finding().clone()],
            policies: Vec::new(),
        })?;
        let (errors, warnings): (Vec<_>, Vec<_>) = cfg
            .check(&path.display().to_string(), env)
            .into_iter()
            .partition(ConfigFinding::is_error);
        if errors.is_empty() {
            Ok((cfg, warnings))
        } else {
            Err(ConfigError {
                config: errors,
                policies: Vec::new(),
            })
        }
    }

    /// How the agent reads its policies: the system namespace and the Kuma version. Policy
    /// files are applied by the agent itself, so Kuma 3 judges them as an apply; objects from
    /// the Kubernetes API are Kuma's stored objects.
    pub fn select_options(&self) -> SelectOptions {
        SelectOptions {
            system_namespace: self.system_namespace.clone(),
            kuma: self.kuma.version,
            files: Admission::Apply,
            max_file_bytes: self.max_policy_file_bytes,
        }
    }

    /// The peek proxy's settings, `None` when `proxy.enabled` is false.
    pub fn proxy(&self) -> Option<&ProxyConfig> {
        self.proxy.enabled.then_some(&self.proxy)
    }

    /// With the proxy off, the Domain entries of `policies` (those of a reload) that can
    /// allow nothing; `None` when the proxy runs or there are none.
    pub fn unenforceable_domains(&self, policies: &[Policy]) -> Option<Unenforceable> {
        if self.proxy().is_some() {
            return None;
        }
        let mut out = Unenforceable::default();
        for p in policies {
            let n = p
                .spec
                .default
                .matches()
                .iter()
                .filter(|m| m.kind == "Domain")
                .count();
            if n > 0 {
                out.entries += n;
                out.policies.push(p.name.clone());
            }
        }
        (out.entries > 0).then_some(out)
    }

    /// [`AgentConfig::load_checked`] on this machine, warnings dropped.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_checked(path, &Environment::this_machine()).map(|(cfg, _)| cfg)
    }

    /// Every check of the values that serde cannot make: paths, addresses, bounds, and the
    /// workloads' cgroups on the machine `env` describes. `file` names the file in findings.
    /// A new section of the config adds its own `check` here.
    pub fn check(&self, file: &str, env: &Environment) -> Vec<ConfigFinding> {
        let mut c = Findings {
            file,
            out: Vec::new(),
        };
        self.check_policies(&mut c);
        if let Some(k) = &self.kubernetes {
            k.check(env, &mut c);
        }
        if !self.bpffs.is_absolute() {
            c.error(
                "bpffs",
                format!(
                    "{:?} is not absolute: give a directory under a bpf filesystem, e.g. {DEFAULT_BPFFS}",
                    self.bpffs.display().to_string()
                ),
            );
        }
        self.admin.check(self.proxy(), &mut c);
        if let Some(p) = self.proxy() {
            p.check(&mut c);
            if self.kubernetes.is_some() {
                p.check_pod_ports(&mut c);
            }
        }
        self.dns.check(&mut c);
        self.flows.check(&mut c);
        for (i, net) in self.mesh_cidrs.iter().enumerate() {
            if net.addr() != net.network() {
                c.warning(
                    format!("meshCIDRs[{i}]"),
                    format!(
                        "{net} has host bits set: it is read as {}, the network it lies in; write {}",
                        net.trunc(),
                        net.trunc()
                    ),
                );
            }
        }
        let mut seen = BTreeSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let field = format!("workloads[{i}].cgroup");
            if w.cgroup.is_absolute() && !seen.insert(w.cgroup.clone()) {
                c.error(
                    field,
                    format!(
                        "{} is listed twice; list each cgroup once",
                        w.cgroup.display()
                    ),
                );
                continue;
            }
            w.check(&field, env, &mut c);
            if self.kuma.version == KumaVersion::V3 && !w.tags.is_empty() && w.labels.is_empty() {
                c.warning(
                    format!("workloads[{i}].tags"),
                    "Kuma 3 selects Dataplanes by labels only (it has no MeshSubset), so these tags select nothing: give the workload its Dataplane's labels",
                );
            }
        }
        c.out
    }

    fn check_policies(&self, c: &mut Findings<'_>) {
        if self.policies.is_empty() && self.kubernetes.is_none() {
            c.error(
                "policies",
                "list at least one policy file or directory (or configure `kubernetes`)",
            );
        }
        for (i, p) in self.policies.iter().enumerate() {
            match std::fs::metadata(p) {
                Err(e) => c.error(
                    format!("policies[{i}]"),
                    format!(
                        "{} cannot be read ({e}): create it, or fix the path (a relative path is relative to this file)",
                        p.display()
                    ),
                ),
                Ok(m) if !m.is_dir() && !m.is_file() => c.error(
                    format!("policies[{i}]"),
                    format!("{} is neither a file nor a directory", p.display()),
                ),
                Ok(_) => {}
            }
        }
    }
}

/// Domain entries a reload applied while the peek proxy is off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unenforceable {
    pub entries: usize,
    /// The policies that have them, in file order.
    pub policies: Vec<String>,
}

impl Unenforceable {
    /// The reload's warning, as the log and `/status` show it.
    pub fn warning(&self) -> String {
        format!(
            "warning: {} Domain entr{} (in {}) cannot be enforced: the peek proxy is off (proxy.enabled: false), so connects only they would allow are denied (domain_no_proxy); remove `enabled: false` to turn it on",
            self.entries,
            if self.entries == 1 { "y" } else { "ies" },
            self.policies.join(", ")
        )
    }
}

/// Largest config file read: a config lists workloads and paths, never megabytes of them.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The config file's text, refused past [`MAX_CONFIG_BYTES`].
fn read_config(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_CONFIG_BYTES} bytes: this is not an agent config"
        )));
    }
    Ok(text)
}

/// A serde message about a config value, with what to write for the types serde only names.
fn value_message(msg: &str, value: Option<&serde_yaml::Value>) -> String {
    let text = value.and_then(serde_yaml::Value::as_str);
    if msg == "invalid socket address syntax" {
        return format!(
            "{:?} is not an address with a port: write IP:PORT, e.g. 127.0.0.1:9902 or [::1]:9902",
            text.unwrap_or_default()
        );
    }
    if msg == "invalid IP address syntax"
        && let Some(t) = text
    {
        return hints::cidr(t);
    }
    describe::message(msg, value)
}

impl KubernetesConfig {
    fn check(&self, env: &Environment, c: &mut Findings<'_>) {
        if self.node_name.is_none() && env.node_name.is_none() {
            c.error(
                "kubernetes.nodeName",
                "not set, and NODE_NAME is not set in this environment: set one (the DaemonSet sets NODE_NAME from spec.nodeName)",
            );
        }
        if let Some(r) = &self.cgroup_root {
            if !r.is_absolute() {
                c.error(
                    "kubernetes.cgroupRoot",
                    format!(
                        "{} is not absolute: give a directory such as /sys/fs/cgroup",
                        r.display()
                    ),
                );
            } else if !r.is_dir() {
                c.error(
                    "kubernetes.cgroupRoot",
                    format!("{} is not a directory on this machine", r.display()),
                );
            }
        }
        if let Some(k) = &self.kubeconfig
            && let Err(e) = std::fs::metadata(k)
        {
            c.error(
                "kubernetes.kubeconfig",
                format!("{} cannot be read ({e})", k.display()),
            );
        }
    }
}

impl AdminConfig {
    fn check(&self, proxy: Option<&ProxyConfig>, c: &mut Findings<'_>) {
        if self.listen.port() == 0 {
            c.error(
                "admin.listen",
                format!(
                    "{}: give a fixed port, e.g. {DEFAULT_ADMIN}: `status`, `events` and probes connect to it",
                    self.listen
                ),
            );
        }
        if proxy.is_some_and(|p| p.listen.contains(&self.listen)) {
            c.error(
                "admin.listen",
                format!(
                    "{} is also a proxy.listen address: give the admin endpoint its own port",
                    self.listen
                ),
            );
        }
    }
}

impl ProxyConfig {
    fn check(&self, c: &mut Findings<'_>) {
        if self.listen.is_empty() {
            c.error(
                "proxy.listen",
                "list 127.0.0.1:PORT and/or [::1]:PORT, or leave `listen` out for both on port 15001, or turn the proxy off with `enabled: false`",
            );
        }
        let (mut v4, mut v6) = (false, false);
        for (i, a) in self.listen.iter().enumerate() {
            let field = format!("proxy.listen[{i}]");
            let seen = if a.is_ipv4() { &mut v4 } else { &mut v6 };
            if *seen {
                c.error(
                    field,
                    format!("{a}: one listener per address family (127.0.0.1 and ::1)"),
                );
                continue;
            }
            *seen = true;
            if a.ip() != std::net::Ipv4Addr::LOCALHOST && a.ip() != std::net::Ipv6Addr::LOCALHOST {
                c.error(
                    field,
                    format!(
                        "{a}: the kernel redirects to the workload's own loopback address, so listen on 127.0.0.1:PORT or [::1]:PORT"
                    ),
                );
            } else if a.port() == 0 {
                c.error(field, format!("{a}: give a fixed port, e.g. 15001"));
            }
        }
        if self.peek_bytes < 512 || self.peek_bytes > 1024 * 1024 {
            c.error(
                "proxy.peekBytes",
                format!(
                    "{} is out of range: between 512 and 1048576 (a ClientHello can exceed 1500 bytes)",
                    self.peek_bytes
                ),
            );
        }
        if self.peek_timeout.is_zero() {
            c.error(
                "proxy.peekTimeout",
                "0 is not a timeout: give a duration above zero, e.g. 5s",
            );
        }
        if self.max_connections == 0 {
            c.error(
                "proxy.maxConnections",
                "0 connections would refuse every one: give at least 1, e.g. 4096",
            );
        }
    }
}

impl ProxyConfig {
    /// In Kubernetes the proxy also listens in every pod's network namespace, where Kuma's
    /// sidecar holds its own ports.
    fn check_pod_ports(&self, c: &mut Findings<'_>) {
        const KUMA_SIDECAR_PORTS: [u16; 3] = [15001, 15006, 15053];
        for (i, a) in self.listen.iter().enumerate() {
            if KUMA_SIDECAR_PORTS.contains(&a.port()) {
                c.warning(
                    format!("proxy.listen[{i}]"),
                    format!(
                        "{a}: Kuma's sidecar uses port {} inside pods, where the proxy listens too; give another port, e.g. proxy: {{listen: [127.0.0.1:15100, \"[::1]:15100\"]}}",
                        a.port()
                    ),
                );
            }
        }
    }
}

impl DnsConfig {
    fn check(&self, c: &mut Findings<'_>) {
        for (i, s) in self.servers.iter().enumerate() {
            if s.port() == 0 || s.ip().is_unspecified() {
                c.error(
                    format!("dns.servers[{i}]"),
                    format!("{s}: give a resolver's address and port, e.g. 10.96.0.10:53"),
                );
            }
        }
        if self.timeout.is_zero() || self.timeout > std::time::Duration::from_secs(30) {
            c.error(
                "dns.timeout",
                format!(
                    "{}ms is out of range: above zero and at most 30s, e.g. 2s (connections wait for it)",
                    self.timeout.as_millis()
                ),
            );
        }
        if self.cache_size == 0 {
            c.error(
                "dns.cacheSize",
                "0 would keep no answer: give at least 1, e.g. 4096",
            );
        }
    }
}

impl WorkloadConfig {
    /// The cgroup: absolute, below the cgroup v2 mount, not its root; one that does not exist
    /// yet is waited for (a warning).
    fn check(&self, field: &str, env: &Environment, c: &mut Findings<'_>) {
        let cg = &self.cgroup;
        if !cg.is_absolute() {
            c.error(
                field,
                format!(
                    "{} is not absolute: give the cgroup v2 directory, e.g. /sys/fs/cgroup/system.slice/app.service",
                    cg.display()
                ),
            );
            return;
        }
        if cg
            .components()
            .any(|p| matches!(p, Component::ParentDir | Component::CurDir))
        {
            c.error(
                field,
                format!("{}: write the path without . or .. parts", cg.display()),
            );
            return;
        }
        let root = match &env.cgroup_root {
            Ok(root) => root,
            Err(e) => {
                c.error(field, format!("{}: cannot be checked: {e}", cg.display()));
                return;
            }
        };
        // A link into the tree is judged by where it leads.
        let real = std::fs::canonicalize(cg).unwrap_or_else(|_| cg.clone());
        if let Err(e) = cgroup::check_workload_cgroup(root, &real) {
            c.error(field, e);
            return;
        }
        match std::fs::metadata(cg) {
            Err(_) => c.warning(
                field,
                format!(
                    "{} does not exist (yet): the agent waits for it and enforces once it appears; check the path if the workload is already running",
                    cg.display()
                ),
            ),
            Ok(m) if !m.is_dir() || !cg.join("cgroup.procs").exists() => c.error(
                field,
                format!(
                    "{} is not a cgroup v2 directory (no cgroup.procs in it): give the workload's cgroup directory",
                    cg.display()
                ),
            ),
            Ok(_) => {}
        }
    }
}

/// `passthrough validate --config` and the agent's start: a config file and the policies it
/// names, checked without touching the kernel.
#[derive(Debug)]
pub struct Preflight {
    pub file: String,
    /// The config, when it could be parsed.
    pub config: Option<AgentConfig>,
    /// The config file's errors and warnings.
    pub findings: Vec<ConfigFinding>,
    /// The policies it names (those that exist), read and validated as the agent reads them.
    pub policies: Option<PolicySet>,
    /// The config file could not be read as YAML.
    pub unreadable: bool,
}

impl Preflight {
    /// Checks `path` on the machine `env` describes.
    pub fn run(path: &Path, env: &Environment) -> Self {
        Self::run_cached(path, env, &mut FileCache::default())
    }

    /// [`Preflight::run`], keeping what it read of the policy files in `files`: the agent's
    /// first reconcile then parses none of them again.
    pub fn run_cached(path: &Path, env: &Environment, files: &mut FileCache) -> Self {
        let file = path.display().to_string();
        let config = match AgentConfig::parse(path) {
            Ok(c) => c,
            Err(e) => {
                return Self {
                    file,
                    config: None,
                    findings: vec![e.finding().clone()],
                    policies: None,
                    unreadable: matches!(e, ParseError::Unreadable(_)),
                };
            }
        };
        let mut findings = config.check(&file, env);
        let present: Vec<PathBuf> = config
            .policies
            .iter()
            .filter(|p| p.exists())
            .cloned()
            .collect();
        let opts = config.select_options();
        let policies = (!present.is_empty())
            .then(|| PolicySet::load_cached(&present, Vec::new(), &opts, files));
        if let Some(set) = &policies
            && config.kubernetes.is_none()
            && config.default_mode != Some(DefaultMode::None)
            && !set.has_errors()
        {
            for (i, w) in config.workloads.iter().enumerate() {
                if select(&set.policies, &w.identity(), &opts).is_empty() {
                    findings.push(ConfigFinding {
                        severity: Severity::Warning,
                        file: file.clone(),
                        field: format!("workloads[{i}]"),
                        message: format!(
                            "no policy selects this workload ({}): it is not filtered, as in Kuma; write a policy that selects it, or set defaultMode: None",
                            w.identity()
                        ),
                    });
                }
            }
        }
        Self {
            file,
            config: Some(config),
            findings,
            policies,
            unreadable: false,
        }
    }

    /// Whether the agent would refuse to start (or, `strict`, whether anything was found).
    pub fn fails(&self, strict: bool) -> bool {
        let config = self.findings.iter().any(|f| strict || f.is_error());
        let policies = self
            .policies
            .as_ref()
            .is_some_and(|s| s.has_errors() || (strict && !s.problems.is_empty()));
        config || policies || self.unreadable
    }

    /// Whether some input could not be read at all (`validate`'s exit code 2).
    pub fn unreadable(&self) -> bool {
        self.unreadable
            || self
                .policies
                .as_ref()
                .is_some_and(PolicySet::has_unreadable)
    }

    /// Every warning, as lines.
    pub fn warnings(&self) -> Vec<String> {
        self.findings
            .iter()
            .filter(|f| !f.is_error())
            .map(ConfigFinding::line)
            .chain(
                self.policies
                    .iter()
                    .flat_map(PolicySet::warnings)
                    .map(|f| f.line()),
            )
            .collect()
    }

    /// The config to run with, or every error that stops the agent from starting.
    pub fn into_config(self) -> Result<AgentConfig, ConfigError> {
        match self.config {
            Some(c) if !self.fails(false) => Ok(c),
            _ => Err(ConfigError {
                config: self
                    .findings
                    .into_iter()
                    .filter(ConfigFinding::is_error)
                    .collect(),
                policies: self.policies.map(|s| s.errors()).unwrap_or_default(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize as _;

    use super::*;

    /// A directory holding a config file, a `policies` directory and a fake cgroup v2 tree
    /// (`cgroup/`, with `cgroup/app` a cgroup), and the environment that describes it.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tmp");
            std::fs::create_dir(dir.path().join("policies")).expect("policies");
            for cg in ["cgroup", "cgroup/app"] {
                std::fs::create_dir(dir.path().join(cg)).expect("cgroup");
                std::fs::write(dir.path().join(cg).join("cgroup.procs"), "").expect("procs");
            }
            Self { dir }
        }

        fn root(&self) -> String {
            self.dir.path().join("cgroup").display().to_string()
        }

        fn env(&self) -> Environment {
            Environment {
                cgroup_root: Ok(self.dir.path().join("cgroup")),
                node_name: None,
            }
        }

        /// `{root}` in the text stands for the fake cgroup mount.
        fn write(&self, text: &str) -> PathBuf {
            let p = self.dir.path().join("agent.yaml");
            std::fs::write(&p, text.replace("{root}", &self.root())).expect("write");
            p
        }

        /// Every finding: the parse error, or the checks'.
        fn findings(&self, text: &str) -> Vec<ConfigFinding> {
            let p = self.write(text);
            match AgentConfig::parse(&p) {
                Ok(c) => c.check("agent.yaml", &self.env()),
                Err(e) => vec![e.finding().clone()],
            }
        }
    }

    fn load(text: &str) -> Result<AgentConfig, ConfigError> {
        let f = Fixture::new();
        let p = f.write(text);
        AgentConfig::load_checked(&p, &f.env()).map(|(c, _)| c)
    }

    #[test]
    fn full_config_parses_with_defaults() {
        let c = load(
            r#"
policies: [policies]
workloads:
  - cgroup: {root}/app
    tags: {kuma.io/service: demo}
meshCIDRs: [10.0.0.0/8, "fd00:10::/64"]
"#,
        )
        .expect("config");
        assert!(c.policies[0].is_absolute());
        assert_eq!(c.workloads[0].mesh, "default");
        assert_eq!(c.workloads[0].proxy_type, ProxyType::Sidecar);
        assert_eq!(c.mesh_cidrs.len(), 2);
        assert_eq!(c.admin.listen.port(), 9902);
        assert_eq!(c.bpffs, PathBuf::from(DEFAULT_BPFFS));
    }

    /// One case per field path an error can name: the path is named once, right, and the
    /// message says what was found and what to write.
    #[test]
    fn each_error_names_its_field_once_with_the_value_and_the_fix() {
        let cases: &[(&str, &str, &str)] = &[
            ("[1, 2]", "", "expected a mapping of keys"),
            (
                "workloads: []\n",
                "policies",
                "list at least one policy file",
            ),
            ("polices: [policies]\n", "polices", "did you mean policies?"),
            (
                "policies: policies\n",
                "policies",
                "wrong type: string \"policies\", expected a sequence",
            ),
            (
                "policies: [policies, nope]\n",
                "policies[1]",
                "nope cannot be read",
            ),
            (
                "policies: [policies]\nworkloads: {}\n",
                "workloads",
                "expected a sequence",
            ),
            (
                "policies: [policies]\nworkloads: [{cgroup: app}]\n",
                "workloads[0].cgroup",
                "app is not absolute",
            ),
            (
                "policies: [policies]\nworkloads: [{cgroup: \"{root}/app/..\"}]\n",
                "workloads[0].cgroup",
                "without . or .. parts",
            ),
            (
                "policies: [policies]\nworkloads: [{cgroup: \"{root}\"}]\n",
                "workloads[0].cgroup",
                "is the root cgroup",
            ),
            (
                "policies: [policies]\nworkloads: [{cgroup: /elsewhere}]\n",
                "workloads[0].cgroup",
                "/elsewhere is not below the cgroup v2 mount",
            ),
            (
                "policies: [policies]\nworkloads: [{cgroup: \"{root}/app/cgroup.procs\"}]\n",
                "workloads[0].cgroup",
                "is not a cgroup v2 directory",
            ),
            (
                "policies: [policies]\nworkloads: [{cgroup: \"{root}/app\"}, {cgroup: \"{root}/app\"}]\n",
                "workloads[1].cgroup",
                "is listed twice",
            ),
            (
                "policies: [policies]\nworkloads: [{cgroup: \"{root}/app\", proxyType: Sidecr}]\n",
                "workloads[0].proxyType",
                "\"Sidecr\"; expected Sidecar or Gateway: write Sidecar",
            ),
            (
                "policies: [policies]\nworkloads: [{cgroup: \"{root}/app\", tags: {a: [1]}}]\n",
                "workloads[0].tags.a",
                "expected a string",
            ),
            (
                "policies: [policies]\nworkloads: [{cgroup: \"{root}/app\", tag: {}}]\n",
                "workloads[0].tag",
                "did you mean tags?",
            ),
            (
                "policies: [policies]\nmeshCIDRs: [10.0.0.0/33]\n",
                "meshCIDRs[0]",
                "\"10.0.0.0/33\": the prefix length /33 is above 32",
            ),
            (
                "policies: [policies]\nadmin: {listen: localhost:9902}\n",
                "admin.listen",
                "\"localhost:9902\" is not an address with a port",
            ),
            (
                "policies: [policies]\nadmin: {listen: 127.0.0.1:0}\n",
                "admin.listen",
                "give a fixed port",
            ),
            (
                "policies: [policies]\nadmin: {listen: 127.0.0.1:15001}\nproxy: {listen: [127.0.0.1:15001]}\n",
                "admin.listen",
                "is also a proxy.listen address",
            ),
            (
                "policies: [policies]\nbpffs: pins\n",
                "bpffs",
                "\"pins\" is not absolute",
            ),
            (
                "policies: [policies]\ndefaultMode: Nope\n",
                "defaultMode",
                "\"Nope\"; expected All or None",
            ),
            (
                "policies: [policies]\nproxy: {listen: []}\n",
                "proxy.listen",
                "list 127.0.0.1:PORT",
            ),
            (
                "policies: [policies]\nproxy: {listen: [10.0.0.1:15001]}\n",
                "proxy.listen[0]",
                "10.0.0.1:15001: the kernel redirects",
            ),
            (
                "policies: [policies]\nproxy: {listen: [127.0.0.1:1, 127.0.0.1:2]}\n",
                "proxy.listen[1]",
                "one listener per address family",
            ),
            (
                "policies: [policies]\nproxy: {listen: [127.0.0.1:0]}\n",
                "proxy.listen[0]",
                "give a fixed port",
            ),
            (
                "policies: [policies]\nproxy: {listen: [\"127.0.0.1\"]}\n",
                "proxy.listen[0]",
                "\"127.0.0.1\" is not an address with a port",
            ),
            (
                "policies: [policies]\nproxy: {listen: [127.0.0.1:1], peekBytes: 10}\n",
                "proxy.peekBytes",
                "10 is out of range",
            ),
            (
                "policies: [policies]\nproxy: {listen: [127.0.0.1:1], peekBytes: x}\n",
                "proxy.peekBytes",
                "wrong type: string \"x\", expected a whole number",
            ),
            (
                "policies: [policies]\nproxy: {listen: [127.0.0.1:1], peekTimeout: \"5\"}\n",
                "proxy.peekTimeout",
                "\"5\" is not a duration",
            ),
            (
                "policies: [policies]\nproxy: {listen: [127.0.0.1:1], peekTimeout: 5}\n",
                "proxy.peekTimeout",
                "5 has no unit: write 5s",
            ),
            (
                "policies: [policies]\nproxy: {listen: [127.0.0.1:1], peekTimeout: 0s}\n",
                "proxy.peekTimeout",
                "0 is not a timeout",
            ),
            (
                "policies: [policies]\nproxy: {listen: [127.0.0.1:1], maxConnections: 0}\n",
                "proxy.maxConnections",
                "give at least 1",
            ),
            (
                "policies: [policies]\nproxy: {listen: [127.0.0.1:1], domainCheck: pin}\n",
                "proxy.domainCheck",
                "write Pin",
            ),
            (
                "policies: [policies]\ndns: {servers: [\"0.0.0.0:53\"]}\n",
                "dns.servers[0]",
                "0.0.0.0:53: give a resolver's address and port",
            ),
            (
                "policies: [policies]\ndns: {timeout: 0s}\n",
                "dns.timeout",
                "0ms is out of range",
            ),
            (
                "policies: [policies]\ndns: {timeout: 31s}\n",
                "dns.timeout",
                "31000ms is out of range",
            ),
            (
                "policies: [policies]\ndns: {cacheSize: 0}\n",
                "dns.cacheSize",
                "give at least 1",
            ),
            (
                "policies: [policies]\ndns: {server: []}\n",
                "dns.server",
                "did you mean servers?",
            ),
            (
                "kubernetes: {}\n",
                "kubernetes.nodeName",
                "NODE_NAME is not set",
            ),
            (
                "kubernetes: {nodeName: n, cgroupRoot: cg}\n",
                "kubernetes.cgroupRoot",
                "cg is not absolute",
            ),
            (
                "kubernetes: {nodeName: n, kubeconfig: /nonexistent/kubeconfig}\n",
                "kubernetes.kubeconfig",
                "/nonexistent/kubeconfig cannot be read",
            ),
            (
                "kubernetes: {nodeName: n, unknownPods: deny}\n",
                "kubernetes.unknownPods",
                "write Deny",
            ),
        ];
        let f = Fixture::new();
        for (text, field, needle) in cases {
            let errors: Vec<ConfigFinding> = f
                .findings(text)
                .into_iter()
                .filter(ConfigFinding::is_error)
                .collect();
            assert_eq!(errors.len(), 1, "{text}: {errors:?}");
            let e = &errors[0];
            assert_eq!(e.field, *field, "{text}: {e:?}");
            assert!(
                e.message.contains(needle),
                "{text}: {:?} lacks {needle:?}",
                e.message
            );
            if !field.is_empty() {
                assert!(
                    !e.message.contains(&format!("{field}:")),
                    "{text}: path repeated: {}",
                    e.message
                );
            }
            assert!(!e.message.contains(" at line "), "{text}: {}", e.message);
            assert!(e.file.ends_with("agent.yaml"), "{e:?}");
            assert_eq!(
                e.line(),
                if field.is_empty() {
                    format!("{}: {}", e.file, e.message)
                } else {
                    format!("{}: {field}: {}", e.file, e.message)
                }
            );
        }
    }

    #[test]
    fn under_kubernetes_the_default_proxy_port_is_a_warning_kumas_sidecar_uses_it() {
        let f = Fixture::new();
        let found = f.findings("kubernetes: {nodeName: n}\n");
        let got: Vec<(Severity, &str)> = found
            .iter()
            .map(|f| (f.severity, f.field.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (Severity::Warning, "proxy.listen[0]"),
                (Severity::Warning, "proxy.listen[1]")
            ]
        );
        assert!(found[0].message.contains("15100"), "{}", found[0].message);
        let found = f.findings(
            "kubernetes: {nodeName: n}\nproxy: {listen: [127.0.0.1:15100, \"[::1]:15100\"]}\n",
        );
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn missing_cgroups_and_host_bits_are_warnings() {
        let f = Fixture::new();
        let found = f.findings(
            "policies: [policies]\nworkloads: [{cgroup: \"{root}/later\"}]\nmeshCIDRs: [10.1.2.3/16]\n",
        );
        let got: Vec<(Severity, &str)> = found
            .iter()
            .map(|f| (f.severity, f.field.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (Severity::Warning, "meshCIDRs[0]"),
                (Severity::Warning, "workloads[0].cgroup")
            ]
        );
        assert!(
            found[0].message.contains("write 10.1.0.0/16"),
            "{}",
            found[0].message
        );
        assert!(
            found[0]
                .line()
                .starts_with("warning: agent.yaml: meshCIDRs[0]: ")
        );
        assert!(
            found[1].message.contains("waits for it"),
            "{}",
            found[1].message
        );
    }

    #[test]
    fn unreadable_and_non_yaml_files_are_told_apart_from_invalid_ones() {
        let f = Fixture::new();
        let p = f.write("a: [\n");
        assert!(matches!(
            AgentConfig::parse(&p),
            Err(ParseError::Unreadable(_))
        ));
        assert!(matches!(
            AgentConfig::parse(&f.dir.path().join("nope.yaml")),
            Err(ParseError::Unreadable(_))
        ));
        let p = f.write("nope: 1\n");
        assert!(matches!(
            AgentConfig::parse(&p),
            Err(ParseError::Invalid(_))
        ));
    }

    #[test]
    fn preflight_checks_the_config_and_its_policies_and_the_workloads_they_select() {
        let f = Fixture::new();
        std::fs::write(
            f.dir.path().join("policies/p.yaml"),
            "type: MeshPassthrough\nname: p\nspec:\n  targetRef: {kind: MeshSubset, tags: {app: web}}\n  default: {appendMatch: [{type: IP, value: 1.2.3.300}]}\n",
        )
        .expect("w");
        let p = f.write("policies: [policies]\nworkloads: [{cgroup: \"{root}/app\"}]\n");
        let pre = Preflight::run(&p, &f.env());
        assert!(pre.fails(false));
        assert!(!pre.unreadable());
        let err = pre.into_config().expect_err("invalid policy");
        assert!(err.config.is_empty());
        assert_eq!(err.policies.len(), 1);
        assert!(
            err.to_string().contains("provided IP has incorrect value"),
            "{err}"
        );

        std::fs::write(
            f.dir.path().join("policies/p.yaml"),
            "type: MeshPassthrough\nname: p\nspec:\n  targetRef: {kind: MeshSubset, tags: {app: web}}\n  default: {passthroughMode: None}\n",
        )
        .expect("w");
        let pre = Preflight::run(&p, &f.env());
        assert!(!pre.fails(false));
        assert!(pre.fails(true), "the unselected workload is a warning");
        let w = pre.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("workloads[0]: no policy selects this workload"),
            "{w:?}"
        );
        assert!(pre.into_config().is_ok());
    }

    #[test]
    fn proxy_section_defaults() {
        let c = load("policies: [policies]\nproxy: {listen: [127.0.0.1:15001, \"[::1]:15002\"]}\n")
            .expect("proxy");
        let p = c.proxy().expect("proxy");
        assert_eq!(p.ports(), (15001, 15002));
        assert_eq!(p.peek_bytes, 16 * 1024);
        assert_eq!(p.peek_timeout, std::time::Duration::from_secs(5));
        let c = load("policies: [policies]\nproxy: {listen: [127.0.0.1:1], peekTimeout: 250ms}\n")
            .expect("ms");
        assert_eq!(
            c.proxy().expect("proxy").peek_timeout,
            std::time::Duration::from_millis(250)
        );
    }

    #[test]
    fn proxy_is_on_by_default_on_both_loopback_addresses_and_can_be_turned_off() {
        let c = load("policies: [policies]\n").expect("no proxy section");
        let p = c.proxy().expect("on by default");
        assert_eq!(
            p.listen,
            [
                "127.0.0.1:15001".parse::<SocketAddr>().expect("v4"),
                "[::1]:15001".parse().expect("v6")
            ]
        );
        assert_eq!(p.ports(), (15001, 15001));
        let c = load("policies: [policies]\nproxy: {peekBytes: 4096}\n").expect("partial");
        assert_eq!(c.proxy().expect("on").ports(), (15001, 15001));
        // Off: its other settings are not judged, and nothing else may then use port 15001.
        let c = load("policies: [policies]\nproxy: {enabled: false, listen: []}\n").expect("off");
        assert!(c.proxy().is_none());
        let e = load("policies: [policies]\nadmin: {listen: 127.0.0.1:15001}\n")
            .expect_err("admin on the default proxy port");
        assert!(
            e.to_string().contains("is also a proxy.listen address"),
            "{e}"
        );
        assert!(
            load(
                "policies: [policies]\nadmin: {listen: 127.0.0.1:15001}\nproxy: {enabled: false}\n"
            )
            .is_ok()
        );
    }

    #[test]
    fn domain_entries_are_counted_unenforceable_only_with_the_proxy_off() {
        let text = "type: MeshPassthrough\nname: p\nspec:\n  default:\n    passthroughMode: Matched\n    appendMatch:\n      - {type: Domain, value: a.example, protocol: tls, port: 443}\n      - {type: IP, value: 198.51.100.1}\n      - {type: Domain, value: b.example, protocol: http, port: 80}\n";
        let docs = crate::policy::load::parse_documents("p.yaml", text).expect("yaml");
        let policies: Vec<Policy> = docs
            .into_iter()
            .filter_map(|d| match d {
                crate::policy::load::Document::Policy(p) => Some(*p),
                crate::policy::load::Document::Invalid(_) => None,
            })
            .collect();
        let on = load("policies: [policies]\n").expect("on");
        assert_eq!(on.unenforceable_domains(&policies), None);
        let off = load("policies: [policies]\nproxy: {enabled: false}\n").expect("off");
        let u = off.unenforceable_domains(&policies).expect("two entries");
        assert_eq!(u.entries, 2);
        assert_eq!(u.policies, ["p"]);
        assert!(
            u.warning()
                .starts_with("warning: 2 Domain entries (in p) cannot be enforced")
        );
        assert_eq!(off.unenforceable_domains(&[]), None);
    }

    #[test]
    fn max_policy_file_bytes_defaults_to_64_mib_and_reaches_the_select_options() {
        let c = load("policies: [policies]\n").expect("default");
        assert_eq!(c.select_options().max_file_bytes, 64 << 20);
        let c = load("policies: [policies]\nmaxPolicyFileBytes: 1000\n").expect("set");
        assert_eq!(c.select_options().max_file_bytes, 1000);
    }

    #[test]
    fn deep_nesting_in_a_config_is_refused_with_its_line() {
        let text = format!("policies: [policies]\nworkloads: {}\n", "[".repeat(100_000));
        let e = AgentConfig::parse_text("agent.yaml", &text, Path::new("/")).expect_err("deep");
        let line = e.finding().line();
        assert!(line.contains("agent.yaml"), "{line}");
        assert!(
            line.contains("line 2: mappings and sequences nest deeper than 64"),
            "{line}"
        );
    }

    #[test]
    fn kuma_version_defaults_to_2_and_reaches_the_select_options() {
        let parse = |text: &str| -> Result<AgentConfig, String> {
            serde_yaml::from_str(text).map_err(|e| e.to_string())
        };
        let c = parse("policies: [/p]\n").expect("config");
        assert_eq!(c.kuma.version, KumaVersion::V2);
        assert_eq!(c.select_options().kuma, KumaVersion::V2);
        for text in [
            "kuma: {version: \"3\"}",
            "kuma: {version: 3}",
            "kuma: {version: \"3.0.1\"}",
        ] {
            let c = parse(text).expect(text);
            assert_eq!(c.select_options().kuma, KumaVersion::V3, "{text}");
            assert_eq!(c.select_options().files, Admission::Apply);
        }
        assert!(parse("kuma: {version: \"1\"}").is_err());
        assert!(parse("kuma: {flavour: kong}").is_err());
    }

    #[test]
    fn domain_check_and_dns_have_safe_defaults() {
        let c = load("policies: [policies]\nproxy: {listen: [127.0.0.1:15001]}\n").expect("config");
        assert_eq!(c.proxy().expect("proxy").domain_check, DomainCheck::Pin);
        assert!(
            c.dns.servers.is_empty(),
            "default: /etc/resolv.conf at start"
        );
        assert_eq!(c.dns.timeout, std::time::Duration::from_secs(2));
        let c = load(
            "policies: [policies]\nproxy: {listen: [127.0.0.1:15001], domainCheck: Verify}\ndns: {servers: [\"203.0.113.53:53\", \"[2001:db8::53]:5353\"], timeout: 500ms, cacheSize: 10}\n",
        )
        .expect("config");
        assert_eq!(c.proxy().expect("proxy").domain_check, DomainCheck::Verify);
        assert_eq!(c.dns.servers.len(), 2);
        assert_eq!(c.dns.cache_size, 10);
    }

    #[test]
    fn durations_take_ms_s_m_and_h() {
        use std::time::Duration;
        assert_eq!(
            duration_text::parse("500ms"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(duration_text::parse("5s"), Some(Duration::from_secs(5)));
        assert_eq!(duration_text::parse("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(duration_text::parse("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(duration_text::parse("2d"), None);
        assert_eq!(duration_text::parse("h"), None);
    }

    #[test]
    fn the_daemon_sets_config_is_valid() {
        let manifests = include_str!("../../deploy/kubernetes/passthrough.yaml");
        let config = serde_yaml::Deserializer::from_str(manifests)
            .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
            .find(|d| d["kind"] == "ConfigMap")
            .and_then(|d| d["data"]["agent.yaml"].as_str().map(str::to_string))
            .expect("the ConfigMap holds agent.yaml");
        // The DaemonSet sets NODE_NAME; stand in for it.
        let f = Fixture::new();
        let p = f.write(&config);
        let env = Environment {
            node_name: Some("node-a".into()),
            ..f.env()
        };
        let (c, _) = AgentConfig::load_checked(&p, &env).expect("the shipped config loads");
        assert!(c.kubernetes.is_some());
        assert_eq!(c.proxy().expect("proxy").ports(), (15100, 15100));
    }
}
