//! `passthrough validate`: policies, or an agent config and the policies it names, checked
//! exactly as the agent checks them, for a CI gate.

use std::{path::PathBuf, process::ExitCode};

use clap::Args as ClapArgs;

use super::{Output, print_json, selector::KumaArgs};
use crate::{
    config::{Environment, Preflight},
    policy::{
        Severity,
        kuma::KumaVersion,
        load::DEFAULT_MAX_FILE_BYTES,
        model::DEFAULT_SYSTEM_NAMESPACE,
        set::{Finding, FindingKind, PolicySet},
    },
};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Policy files or directories (directories are read recursively for *.yaml, *.yml, *.json).
    #[arg(
        value_name = "PATH",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub paths: Vec<PathBuf>,

    /// Check an agent config file instead, offline: its keys and values, its workloads'
    /// cgroups (they must not be the root cgroup), the proxy and admin addresses, and the
    /// policies it names. Loads nothing into the kernel.
    ///
    /// Example: passthrough validate --config /etc/passthrough/agent.yaml
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Warnings fail too (exit code 1): nothing read, files skipped for their name, CIDRs
    /// with host bits, workloads no policy selects, cgroups that do not exist yet.
    #[arg(long)]
    pub strict: bool,

    /// Kuma's system namespace: Kubernetes policies in other namespaces apply only there
    /// (with --config, the config's systemNamespace).
    #[arg(long, default_value = DEFAULT_SYSTEM_NAMESPACE, conflicts_with = "config")]
    pub system_namespace: String,

    /// With --config: the cgroup v2 mount of the node the config is for (default: this
    /// machine's, from /proc/self/mountinfo).
    #[arg(long, value_name = "DIR", requires = "config")]
    pub cgroup_root: Option<PathBuf>,

    /// The Kuma the policies are written for: 2 (the default) or 3, whose rules and messages
    /// are then applied (with --config, the config's kuma.version).
    #[arg(
        long = "kuma-version",
        value_name = "VERSION",
        default_value = "2",
        conflicts_with = "config"
    )]
    pub kuma_version: KumaVersion,

    /// With --kuma-version 3: the policies are already in Kuma's store (from before the
    /// upgrade, e.g. a `kubectl get meshpassthroughs -A -o yaml` dump). What Kuma 3 refuses on
    /// apply is then a warning saying what Kuma 3 makes of the stored policy.
    #[arg(long, conflicts_with = "config")]
    pub stored: bool,

    /// Largest policy file read, in bytes (default 64 MiB; with --config, the config's
    /// maxPolicyFileBytes). A larger file is refused unread.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FILE_BYTES, conflicts_with = "config")]
    pub max_policy_file_bytes: u64,
}

pub fn run(args: &Args, output: Output) -> ExitCode {
    match &args.config {
        Some(config) => run_config(args, config, output),
        None => run_policies(args, output),
    }
}

fn run_policies(args: &Args, output: Output) -> ExitCode {
    let opts = KumaArgs {
        version: args.kuma_version,
        stored: args.stored,
    }
    .select_options(&args.system_namespace, args.max_policy_file_bytes);
    let set = PolicySet::load(&args.paths, &opts);
    let code = exit_code(set.has_unreadable(), fails(&set, args.strict));
    match output {
        Output::Text => {
            print_lines(&set.findings());
            eprintln!("{}", summary(&set, args.strict));
        }
        Output::Json => print_json(&policies_json(&set, code)),
    }
    ExitCode::from(code)
}

fn run_config(args: &Args, config: &std::path::Path, output: Output) -> ExitCode {
    let mut env = Environment::this_machine();
    if let Some(root) = &args.cgroup_root {
        env.cgroup_root = Ok(root.clone());
    }
    let pre = Preflight::run(config, &env);
    let code = exit_code(pre.unreadable(), pre.fails(args.strict));
    let errors = pre.findings.iter().filter(|f| f.is_error()).count();
    let warnings = pre.findings.len() - errors;
    match output {
        Output::Text => {
            for f in &pre.findings {
                println!("{}", f.line());
            }
            if let Some(set) = &pre.policies {
                print_lines(&set.findings());
            }
            eprintln!(
                "config {}: {errors} {}, {warnings} {}{}",
                pre.file,
                plural(errors, "error", "errors"),
                plural(warnings, "warning", "warnings"),
                match &pre.policies {
                    Some(set) => format!("; policies: {}", summary(set, args.strict)),
                    None => String::new(),
                }
            );
        }
        Output::Json => {
            let mut out = pre
                .policies
                .as_ref()
                .map_or_else(|| serde_json::json!({}), |set| policies_json(set, code));
            out["valid"] = (code == 0).into();
            out["config"] = serde_json::json!({
                "file": pre.file,
                "findings": pre.findings,
            });
            print_json(&out);
        }
    }
    ExitCode::from(code)
}

/// 2: something could not be read at all; 1: the agent would refuse it (or, --strict,
/// something was reported); 0.
fn exit_code(unreadable: bool, fails: bool) -> u8 {
    if unreadable {
        2
    } else if fails {
        1
    } else {
        0
    }
}

fn fails(set: &PolicySet, strict: bool) -> bool {
    set.has_errors() || (strict && !set.problems.is_empty())
}

/// Each finding's line on stdout, its hint indented below it.
fn print_lines(findings: &[Finding]) {
    for f in findings {
        println!("{}", f.line());
        if let Some(h) = f.hint_line() {
            println!("{h}");
        }
    }
}

fn policies_json(set: &PolicySet, code: u8) -> serde_json::Value {
    let names: Vec<String> = set.policies.iter().map(|p| p.qualified_name()).collect();
    let findings = set.findings();
    let warnings = findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    serde_json::json!({
        "valid": code == 0,
        "files": set.files,
        "documents": set.documents,
        "policies": names,
        "errors": findings.len() - warnings,
        "warnings": warnings,
        "problems": findings,
    })
}

/// `4 valid, 0 invalid documents, 0 unreadable files, 0 conflicts, 0 warnings (4 files, 4
/// documents read)`.
fn summary(set: &PolicySet, strict: bool) -> String {
    let findings = set.findings();
    let count = |kind: FindingKind, severity: Severity| {
        findings
            .iter()
            .filter(|f| f.kind == kind && f.severity == severity)
            .count()
    };
    let invalid = set
        .problems
        .iter()
        .filter(|p| {
            p.severity() == Severity::Error
                && matches!(p, crate::policy::set::Problem::Document { .. })
        })
        .count();
    let unreadable = count(FindingKind::Unreadable, Severity::Error);
    let conflicts = count(FindingKind::Conflict, Severity::Error);
    let warnings = findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    format!(
        "{} valid, {invalid} invalid {}, {unreadable} unreadable {}, {conflicts} {}, {warnings} {} ({} {}, {} {} read{})",
        set.policies.len(),
        plural(invalid, "document", "documents"),
        plural(unreadable, "file", "files"),
        plural(conflicts, "conflict", "conflicts"),
        plural(warnings, "warning", "warnings"),
        set.files,
        plural(set.files, "file", "files"),
        set.documents,
        plural(set.documents, "document", "documents"),
        if strict && warnings > 0 {
            "; --strict: warnings fail"
        } else {
            ""
        },
    )
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigFinding;

    #[test]
    fn exit_codes_rank_unreadable_over_refused() {
        assert_eq!(exit_code(true, true), 2);
        assert_eq!(exit_code(false, true), 1);
        assert_eq!(exit_code(false, false), 0);
    }

    #[test]
    fn config_findings_are_file_field_message_in_json() {
        let f = ConfigFinding {
            severity: Severity::Error,
            file: "a.yaml".into(),
            field: "workloads[0].cgroup".into(),
            message: "m".into(),
        };
        let v = serde_json::to_value(&f).expect("json");
        assert_eq!(v["file"], "a.yaml");
        assert_eq!(v["field"], "workloads[0].cgroup");
        assert_eq!(v["message"], "m");
        assert_eq!(v["severity"], "error");
    }
}
