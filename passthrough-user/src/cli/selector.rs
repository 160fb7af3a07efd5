//! Arguments shared by the verbs that work on one workload: the policies and the workload's
//! identity.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use clap::Args as ClapArgs;

use super::{Output, fail, print_findings_text, print_json};
use crate::policy::{
    kuma::{Admission, KumaVersion},
    load::DEFAULT_MAX_FILE_BYTES,
    merge::SelectOptions,
    model::{DEFAULT_MESH, DEFAULT_SYSTEM_NAMESPACE, Policy},
    set::{Finding, PolicySet},
    workload::{ProxyType, Workload},
};

/// Policies and the workload they are applied to.
#[derive(Debug, ClapArgs)]
pub struct WorkloadArgs {
    /// Policy files or directories (repeatable).
    #[arg(long = "policy", required = true, value_name = "PATH")]
    pub policies: Vec<PathBuf>,

    /// The workload's mesh.
    #[arg(long, default_value = DEFAULT_MESH)]
    pub mesh: String,

    /// The workload's proxy type, for targetRef proxyTypes.
    #[arg(long, default_value = "Sidecar", value_parser = clap::value_parser!(ProxyType))]
    pub proxy_type: ProxyType,

    /// A tag of the workload, for MeshSubset (repeatable). Example: --tag kuma.io/service=web
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = key_value)]
    pub tags: Vec<(String, String)>,

    /// The workload's name, for Dataplane with name.
    #[arg(long)]
    pub name: Option<String>,

    /// The workload's Kubernetes namespace, for Dataplane and namespaced policies.
    #[arg(long)]
    pub namespace: Option<String>,

    /// A label of the workload, for Dataplane with labels (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
    pub labels: Vec<(String, String)>,

    /// Kuma's system namespace: Kubernetes policies in other namespaces apply only there.
    #[arg(long, default_value = DEFAULT_SYSTEM_NAMESPACE)]
    pub system_namespace: String,

    #[command(flatten)]
    pub kuma: KumaArgs,

    /// Largest policy file read, in bytes (the agent's maxPolicyFileBytes); a larger file is
    /// refused unread.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FILE_BYTES)]
    pub max_policy_file_bytes: u64,
}

/// Which Kuma the policies are written for, and how Kuma 3 meets them.
#[derive(Clone, Copy, Debug, ClapArgs)]
pub struct KumaArgs {
    /// The Kuma the policies are written for: 2 (the default: Kuma 2.x, with MeshSubset and
    /// proxyTypes) or 3 (Kuma 3: Mesh and Dataplane by labels, Domain entries with a port,
    /// exact names pinned to their resolved addresses).
    #[arg(long = "kuma-version", value_name = "VERSION", default_value = "2")]
    pub version: KumaVersion,

    /// With --kuma-version 3: the policies are already in Kuma's store (from before the
    /// upgrade, e.g. `kubectl get meshpassthroughs -A -o yaml`). What Kuma 3 refuses on apply
    /// (a Domain without a port, two matches building one listener filter chain) is then a
    /// warning, and the policy means what Kuma 3 makes of it (that entry is dropped).
    #[arg(long)]
    pub stored: bool,
}

impl KumaArgs {
    pub fn admission(&self) -> Admission {
        if self.stored {
            Admission::Stored
        } else {
            Admission::Apply
        }
    }

    /// Select options for these Kuma settings in `system_namespace`, reading files of up to
    /// `max_file_bytes`.
    pub fn select_options(&self, system_namespace: &str, max_file_bytes: u64) -> SelectOptions {
        SelectOptions {
            system_namespace: system_namespace.to_string(),
            kuma: self.version,
            files: self.admission(),
            max_file_bytes,
        }
    }
}

impl clap::builder::ValueParserFactory for KumaVersion {
    type Parser = clap::builder::ValueParser;
    fn value_parser() -> Self::Parser {
        clap::builder::ValueParser::new(|s: &str| s.parse::<KumaVersion>())
    }
}

impl clap::builder::ValueParserFactory for ProxyType {
    type Parser = clap::builder::ValueParser;
    fn value_parser() -> Self::Parser {
        clap::builder::ValueParser::new(|s: &str| s.parse::<ProxyType>())
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

impl WorkloadArgs {
    pub fn workload(&self) -> Workload {
        Workload {
            mesh: self.mesh.clone(),
            proxy_type: self.proxy_type,
            tags: self.tags.iter().cloned().collect::<BTreeMap<_, _>>(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            labels: self.labels.iter().cloned().collect(),
        }
    }

    pub fn select_options(&self) -> SelectOptions {
        self.kuma
            .select_options(&self.system_namespace, self.max_policy_file_bytes)
    }

    /// Loads the policies through the agent's validation path; any error is an error here
    /// too (exit code 2), since a verdict computed from part of the input would be wrong.
    /// Warnings are printed on stderr (text) or returned for the JSON output.
    pub fn load(&self, output: Output) -> Result<Loaded, ExitCode> {
        let set = PolicySet::load(&self.policies, &self.select_options());
        if set.has_errors() {
            return Err(match output {
                Output::Text => {
                    print_findings_text(&set.findings());
                    fail(
                        output,
                        "the policies are not valid (see above); fix them or check them with `passthrough validate`",
                    )
                }
                Output::Json => {
                    print_json(&serde_json::json!({
                        "error": "the policies are not valid",
                        "problems": set.findings(),
                    }));
                    ExitCode::from(2)
                }
            });
        }
        let warnings = set.warnings();
        if output == Output::Text {
            print_findings_text(&warnings);
        }
        Ok(Loaded {
            files: set.files,
            policies: set.policies,
            warnings,
        })
    }
}

/// Policies read for one verb.
#[derive(Debug)]
pub struct Loaded {
    pub policies: Vec<Policy>,
    /// Files read.
    pub files: usize,
    /// What was reported without refusing the set.
    pub warnings: Vec<Finding>,
}
