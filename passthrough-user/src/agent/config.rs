//! The agent's configuration file (`passthrough run --config FILE`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use crate::policy::containment::{Containment, RawSockets, UdpMode};
use crate::policy::{
    bind::DomainCheck,
    model::{DEFAULT_MESH, DEFAULT_SYSTEM_NAMESPACE},
    workload::{ProxyType, Workload},
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
    /// Log every kernel decision through aya-log (costly; for debugging only).
    #[serde(default)]
    pub debug: bool,
    /// The peek proxy for Domain entries. Without it, a connect only a Domain entry could
    /// allow is denied (`domain_no_proxy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
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

/// `proxy`: where the peek proxy listens and its bounds.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyConfig {
    /// Listener addresses: `127.0.0.1:PORT` and/or `[::1]:PORT`. The kernel redirects a
    /// workload's connect to the loopback address of its own network namespace, so these
    /// are the only addresses a listener can have.
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

/// Durations written as `5s`, `500ms` or `2m`.
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn parse(s: &str) -> Option<Duration> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit())?;
        let (n, unit) = s.split_at(split);
        let n: u64 = n.parse().ok()?;
        match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
            _ => None,
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).ok_or_else(|| {
            D::Error::custom(format!(
                "{s:?} is not a duration: write a whole number with ms, s or m, e.g. 5s"
            ))
        })
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

/// A configuration file that cannot be used; the message names the file, the field and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}{sep}{message}", sep = if field.is_empty() { "" } else { ": " })]
pub struct ConfigError {
    pub file: String,
    pub field: String,
    pub message: String,
}

impl AgentConfig {
    /// Reads and checks a configuration file. Relative policy paths are relative to the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let err = |field: &str, message: String| ConfigError {
            file: file.clone(),
            field: field.to_string(),
            message,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| err("", format!("cannot read: {e}")))?;
        let de = serde_yaml::Deserializer::from_str(&text);
        let mut cfg: AgentConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            err(
                if field == "." { "" } else { &field },
                e.inner().to_string().replace('`', ""),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in &mut cfg.policies {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.check()
            .map_err(|(field, message)| err(&field, message))?;
        Ok(cfg)
    }

    /// Checks what serde cannot: paths, duplicates.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.policies.is_empty() && self.kubernetes.is_none() {
            return Err((
                "policies".into(),
                "list at least one policy file or directory (or configure `kubernetes`)".into(),
            ));
        }
        if let Some(k) = &self.kubernetes {
            if k.node().is_none() {
                return Err((
                    "kubernetes.nodeName".into(),
                    "set it, or set the NODE_NAME environment variable (the DaemonSet does, from spec.nodeName)".into(),
                ));
            }
            if let Some(r) = &k.cgroup_root
                && !r.is_absolute()
            {
                return Err((
                    "kubernetes.cgroupRoot".into(),
                    format!(
                        "{} is not absolute: give a directory such as /sys/fs/cgroup",
                        r.display()
                    ),
                ));
            }
        }
        if !self.bpffs.is_absolute() {
            return Err((
                "bpffs".into(),
                format!("must be an absolute path under a bpf filesystem, e.g. {DEFAULT_BPFFS}"),
            ));
        }
        if let Some(p) = &self.proxy {
            self.check_proxy(p)?;
        }
        self.check_dns()?;
        let mut seen = BTreeSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let field = format!("workloads[{i}].cgroup");
            if !w.cgroup.is_absolute() {
                return Err((
                    field,
                    format!(
                        "{} is not absolute: give the cgroup v2 directory, e.g. /sys/fs/cgroup/system.slice/app.service",
                        w.cgroup.display()
                    ),
                ));
            }
            if !seen.insert(w.cgroup.clone()) {
                return Err((
                    field,
                    format!(
                        "{} is listed twice; list each cgroup once",
                        w.cgroup.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl AgentConfig {
    fn check_dns(&self) -> Result<(), (String, String)> {
        for (i, s) in self.dns.servers.iter().enumerate() {
            if s.port() == 0 || s.ip().is_unspecified() {
                return Err((
                    format!("dns.servers[{i}]"),
                    format!("{s}: give a resolver's address and port, e.g. 10.96.0.10:53"),
                ));
            }
        }
        if self.dns.timeout.is_zero() || self.dns.timeout > std::time::Duration::from_secs(30) {
            return Err((
                "dns.timeout".into(),
                "must be above zero and at most 30s, e.g. 2s (connections wait for it)".into(),
            ));
        }
        if self.dns.cache_size == 0 {
            return Err((
                "dns.cacheSize".into(),
                "must be at least 1, e.g. 4096".into(),
            ));
        }
        Ok(())
    }

    fn check_proxy(&self, p: &ProxyConfig) -> Result<(), (String, String)> {
        if p.listen.is_empty() {
            return Err((
                "proxy.listen".into(),
                "list 127.0.0.1:PORT and/or [::1]:PORT, or remove `proxy`".into(),
            ));
        }
        let (mut v4, mut v6) = (false, false);
        for (i, a) in p.listen.iter().enumerate() {
            let field = format!("proxy.listen[{i}]");
            let seen = if a.is_ipv4() { &mut v4 } else { &mut v6 };
            if *seen {
                return Err((field, "one listener per address family".into()));
            }
            *seen = true;
            if a.ip() != std::net::Ipv4Addr::LOCALHOST && a.ip() != std::net::Ipv6Addr::LOCALHOST {
                return Err((
                    field,
                    format!(
                        "{a}: the kernel redirects to the workload's own loopback address, so listen on 127.0.0.1:PORT or [::1]:PORT"
                    ),
                ));
            }
            if a.port() == 0 {
                return Err((field, format!("{a}: give a fixed port, e.g. 15001")));
            }
        }
        if p.peek_bytes < 512 || p.peek_bytes > 1024 * 1024 {
            return Err((
                "proxy.peekBytes".into(),
                format!(
                    "{} is out of range: between 512 and 1048576 (a ClientHello can exceed 1500 bytes)",
                    p.peek_bytes
                ),
            ));
        }
        if p.peek_timeout.is_zero() {
            return Err((
                "proxy.peekTimeout".into(),
                "must be above zero, e.g. 5s".into(),
            ));
        }
        if p.max_connections == 0 {
            return Err((
                "proxy.maxConnections".into(),
                "must be at least 1, e.g. 4096".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize as _;

    use super::*;

    fn load(text: &str) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("agent.yaml");
        std::fs::write(&p, text).expect("write");
        AgentConfig::load(&p)
    }

    #[test]
    fn full_config_parses_with_defaults() {
        let c = load(
            r#"
policies: [policies]
workloads:
  - cgroup: /sys/fs/cgroup/system.slice/app.service
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

    #[test]
    fn unknown_key_names_file_and_field() {
        let e =
            load("policies: [p]\nworkloads:\n  - cgroup: /x\n    tag: {}\n").expect_err("unknown");
        let text = e.to_string();
        assert!(text.contains("agent.yaml: workloads[0]"), "{text}");
        assert!(text.contains("unknown field tag"), "{text}");
    }

    #[test]
    fn relative_cgroup_and_duplicates_are_refused() {
        let e = load("policies: [p]\nworkloads:\n  - cgroup: app.service\n").expect_err("relative");
        assert_eq!(e.field, "workloads[0].cgroup");
        let e =
            load("policies: [p]\nworkloads:\n  - cgroup: /a\n  - cgroup: /a\n").expect_err("dup");
        assert_eq!(e.field, "workloads[1].cgroup");
        let e = load("workloads: []\npolicies: []\n").expect_err("no policies");
        assert_eq!(e.field, "policies");
    }

    #[test]
    fn proxy_section_defaults_and_checks() {
        let c = load("policies: [p]\nproxy: {listen: [127.0.0.1:15001, \"[::1]:15002\"]}\n")
            .expect("proxy");
        let p = c.proxy.expect("proxy");
        assert_eq!(p.ports(), (15001, 15002));
        assert_eq!(p.peek_bytes, 16 * 1024);
        assert_eq!(p.peek_timeout, std::time::Duration::from_secs(5));
        let e = load("policies: [p]\nproxy: {listen: [10.0.0.1:15001]}\n").expect_err("addr");
        assert_eq!(e.field, "proxy.listen[0]");
        assert!(e.message.contains("127.0.0.1:PORT"), "{}", e.message);
        let e = load("policies: [p]\nproxy: {listen: [127.0.0.1:1], peekTimeout: 5}\n")
            .expect_err("duration");
        assert_eq!(e.field, "proxy.peekTimeout");
        let c = load("policies: [p]\nproxy: {listen: [127.0.0.1:1], peekTimeout: 250ms}\n")
            .expect("ms");
        assert_eq!(
            c.proxy.expect("proxy").peek_timeout,
            std::time::Duration::from_millis(250)
        );
        let e = load("policies: [p]\nproxy: {listen: [127.0.0.1:1, 127.0.0.1:2]}\n")
            .expect_err("two v4");
        assert_eq!(e.field, "proxy.listen[1]");
    }

    #[test]
    fn the_daemon_sets_config_is_valid() {
        let manifests = include_str!("../../../deploy/kubernetes/passthrough.yaml");
        let config = serde_yaml::Deserializer::from_str(manifests)
            .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
            .find(|d| d["kind"] == "ConfigMap")
            .and_then(|d| d["data"]["agent.yaml"].as_str().map(str::to_string))
            .expect("the ConfigMap holds agent.yaml");
        // The DaemonSet sets NODE_NAME; stand in for it.
        let c = load(&config.replace("kubernetes: {}", "kubernetes: {nodeName: node-a}"))
            .expect("the shipped config loads");
        assert!(c.kubernetes.is_some());
        assert_eq!(c.proxy.expect("proxy").ports(), (15100, 15100));
    }

    #[test]
    fn domain_check_and_dns_have_safe_defaults_and_checks() {
        let c = load("policies: [p]\nproxy: {listen: [127.0.0.1:15001]}\n").expect("config");
        assert_eq!(c.proxy.expect("proxy").domain_check, DomainCheck::Pin);
        assert!(
            c.dns.servers.is_empty(),
            "default: /etc/resolv.conf at start"
        );
        assert_eq!(c.dns.timeout, std::time::Duration::from_secs(2));
        let c = load(
            "policies: [p]\nproxy: {listen: [127.0.0.1:15001], domainCheck: Verify}\ndns: {servers: [\"203.0.113.53:53\", \"[2001:db8::53]:5353\"], timeout: 500ms, cacheSize: 10}\n",
        )
        .expect("config");
        assert_eq!(c.proxy.expect("proxy").domain_check, DomainCheck::Verify);
        assert_eq!(c.dns.servers.len(), 2);
        assert_eq!(c.dns.cache_size, 10);
        let e = load("policies: [p]\nproxy: {listen: [127.0.0.1:1], domainCheck: pin}\n")
            .expect_err("case");
        assert_eq!(e.field, "proxy.domainCheck");
        let e = load("policies: [p]\ndns: {servers: [\"0.0.0.0:53\"]}\n").expect_err("any");
        assert_eq!(e.field, "dns.servers[0]");
        let e = load("policies: [p]\ndns: {timeout: 0s}\n").expect_err("zero");
        assert_eq!(e.field, "dns.timeout");
        let e = load("policies: [p]\ndns: {server: []}\n").expect_err("unknown");
        assert!(e.to_string().contains("unknown field server"), "{e}");
    }

    #[test]
    fn bad_cidr_names_its_index() {
        let e = load("policies: [p]\nmeshCIDRs: [10.0.0.0/33]\n").expect_err("cidr");
        assert_eq!(e.field, "meshCIDRs[0]");
    }
}
