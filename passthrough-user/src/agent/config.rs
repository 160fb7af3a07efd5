//! The agent's configuration file (`passthrough run --config FILE`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::policy::{
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
}

impl WorkloadConfig {
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
        if self.policies.is_empty() {
            return Err((
                "policies".into(),
                "list at least one policy file or directory".into(),
            ));
        }
        if !self.bpffs.is_absolute() {
            return Err((
                "bpffs".into(),
                format!("must be an absolute path under a bpf filesystem, e.g. {DEFAULT_BPFFS}"),
            ));
        }
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

#[cfg(test)]
mod tests {
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
    fn bad_cidr_names_its_index() {
        let e = load("policies: [p]\nmeshCIDRs: [10.0.0.0/33]\n").expect_err("cidr");
        assert_eq!(e.field, "meshCIDRs[0]");
    }
}
