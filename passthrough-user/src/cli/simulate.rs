//! `passthrough simulate`: replays the recorded flows against candidate policies, merged with
//! the agent's policies they do not replace, and lists the flows whose verdict would change.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::Args as ClapArgs;
use serde::Serialize;

use super::{
    Output,
    agent::AdminAddr,
    fail,
    flows::{fetch_flows, since, since_ms},
    print_findings_text, print_json,
};
use crate::{
    api::{FlowRecord, FlowSource, FlowsReport},
    config::DEFAULT_ADMIN,
    policy::{
        Policy,
        decide::{Exemptions, Peeked},
        kuma::Admission,
        load::{Document, parse_policy},
        merge::SelectOptions,
        set::PolicySet,
        simulate::{Change, Direction, Flow, Replay, Setting, kept},
    },
};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Candidate policy files or directories (repeatable): each replaces the agent's policy
    /// of the same mesh and name; the agent's others stay.
    #[arg(long = "policy", value_name = "PATH", required = true)]
    pub policies: Vec<PathBuf>,
    /// Also take out the agent's policy of this name (`namespace/name` on Kubernetes),
    /// repeatable: for a candidate of another name that takes its place.
    #[arg(long, value_name = "POLICY")]
    pub replace: Vec<String>,
    /// Only this workload: its cgroup path as in the agent's config, or its name.
    #[arg(long, value_name = "W")]
    pub workload: Option<String>,
    /// Only flows seen in the last DURATION: a whole number with ms, s, m or h (90s, 30m, 2h).
    #[arg(long, value_name = "DURATION", value_parser = since)]
    pub since: Option<Duration>,
    /// Address of a running agent's admin endpoint: IP:PORT or HOST:PORT.
    #[arg(long, default_value = DEFAULT_ADMIN, value_parser = AdminAddr::parse, conflicts_with = "flows")]
    pub admin: AdminAddr,
    /// A flow record saved with `passthrough flows -o json > FILE`, instead of the agent's.
    #[arg(long, value_name = "FILE")]
    pub flows: Option<PathBuf>,
}

/// One flow whose verdict would change.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowChange {
    pub workload: String,
    pub destination: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub count: u64,
    pub last: String,
    /// The entry that stops matching (cut) or starts to (opened); none when a mode decides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<crate::policy::merge::MergedEntry>,
    #[serde(flatten)]
    pub change: Change,
}

/// What `simulate -o json` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Simulation {
    /// Flows replayed, and those that could not be (not TCP, or of a workload the agent no
    /// longer has), each with why.
    pub replayed: usize,
    pub not_replayed: BTreeMap<String, usize>,
    pub cut: usize,
    pub opened: usize,
    pub changes: Vec<FlowChange>,
}

pub fn run(args: &Args, output: Output) -> ExitCode {
    let report = match &args.flows {
        Some(path) => std::fs::read(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))
            .and_then(|b| {
                serde_json::from_slice::<FlowsReport>(&b).map_err(|e| {
                    format!(
                        "{}: not a flow record ({e}); write one with `passthrough flows -o json > FILE`",
                        path.display()
                    )
                })
            }),
        None => fetch_flows(&args.admin, args.workload.as_deref(), args.since),
    };
    let report = match report {
        Ok(r) => r,
        Err(message) => return fail(output, &message),
    };
    let opts = SelectOptions {
        system_namespace: report.applied.system_namespace.clone(),
        kuma: report.applied.kuma,
        files: Admission::Apply,
        ..SelectOptions::default()
    };
    let candidates = match load_checked(&args.policies, Vec::new(), &opts, output, "candidate") {
        Ok(p) => p,
        Err(code) => return code,
    };
    let agent_docs = match agent_documents(&report) {
        Ok(d) => d,
        Err(message) => return fail(output, &message),
    };
    let before = match load_checked(&[], agent_docs.clone(), &opts, output, "agent's") {
        Ok(p) => p,
        Err(code) => return code,
    };
    let keep: HashSet<(String, String)> = kept(&before, &candidates)
        .iter()
        .filter(|p| !args.replace.contains(&p.qualified_name()))
        .map(|p| (p.mesh.clone(), p.qualified_name()))
        .collect();
    let kept_docs: Vec<Document> = agent_docs
        .into_iter()
        .filter(|d| match d {
            Document::Policy(p) => keep.contains(&(p.mesh.clone(), p.qualified_name())),
            Document::Invalid(_) => false,
        })
        .collect();
    let after = match load_checked(&args.policies, kept_docs, &opts, output, "merged") {
        Ok(p) => p,
        Err(code) => return code,
    };
    let setting = Setting {
        opts,
        default_none: report.applied.default_mode_none,
        exemptions: Exemptions {
            mesh_cidrs: report.applied.mesh_cidrs.clone(),
        },
    };
    let cutoff = args.since.map(since_ms);
    let flows: Vec<&FlowRecord> = report
        .flows
        .iter()
        .filter(|f| args.workload.as_deref().is_none_or(|w| f.is_of(w)))
        .filter(|f| cutoff.is_none_or(|t| f.last_unix_ms >= t))
        .collect();
    match simulate(&flows, &before, &after, &setting) {
        Ok(sim) => {
            match output {
                Output::Json => print_json(&sim),
                Output::Text => print!("{}", render(&sim)),
            }
            if sim.cut > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(message) => fail(output, &message),
    }
}

/// Reads and validates a policy set as the agent would; its findings, when it refuses it.
fn load_checked(
    paths: &[PathBuf],
    extra: Vec<Document>,
    opts: &SelectOptions,
    output: Output,
    what: &str,
) -> Result<Vec<Policy>, ExitCode> {
    let set = PolicySet::load_with(paths, extra, opts);
    if set.has_errors() || set.has_unreadable() {
        return Err(match output {
            Output::Text => {
                print_findings_text(&set.findings());
                fail(
                    output,
                    &format!(
                        "the {what} policies would be refused (see above); fix them or check them with `passthrough validate`"
                    ),
                )
            }
            Output::Json => {
                print_json(&serde_json::json!({
                    "error": format!("the {what} policies would be refused"),
                    "problems": set.findings(),
                }));
                ExitCode::from(2)
            }
        });
    }
    Ok(set.policies)
}

/// The agent's policies, read back from the record.
pub fn agent_documents(report: &FlowsReport) -> Result<Vec<Document>, String> {
    report
        .applied
        .policies
        .iter()
        .map(|p| {
            let value = serde_yaml::to_value(&p.resource)
                .map_err(|e| format!("the record's policy {}: {e}", p.source.file))?;
            parse_policy(p.source.clone(), value)
                .map(|p| Document::Policy(Box::new(p)))
                .map_err(|e| {
                    format!(
                        "the record's policy from {}#{}: {}: {}",
                        e.source.file, e.source.doc, e.field, e.message
                    )
                })
        })
        .collect()
}

/// What the proxy read of a named flow.
fn peeked(f: &FlowRecord) -> Option<Peeked> {
    if f.source != FlowSource::Proxy {
        return None;
    }
    let name = f.name.clone();
    Some(match f.protocol.as_deref() {
        Some("tls") => Peeked::Tls(name),
        Some("http") => Peeked::Http1(name),
        Some("http2") => Peeked::Http2(name),
        _ => Peeked::Unknown,
    })
}

/// Replays `flows` (the record's, filtered) under `before` and `after`.
pub fn simulate(
    flows: &[&FlowRecord],
    before: &[Policy],
    after: &[Policy],
    setting: &Setting,
) -> Result<Simulation, String> {
    // A kernel flow the proxy also recorded names for is judged by those names.
    let named: HashSet<(&str, SocketAddr)> = flows
        .iter()
        .filter(|f| f.source == FlowSource::Proxy)
        .map(|f| (f.workload.as_str(), f.destination))
        .collect();
    let mut replay = Replay::new(before, after, setting);
    let mut sim = Simulation {
        replayed: 0,
        not_replayed: BTreeMap::new(),
        cut: 0,
        opened: 0,
        changes: Vec::new(),
    };
    for f in flows {
        if f.source == FlowSource::Kernel && named.contains(&(f.workload.as_str(), f.destination)) {
            continue;
        }
        let skip = if f.ip_protocol != 6 {
            Some("not TCP (decided by the agent's udp setting, not by policies)")
        } else if f.identity.is_none() {
            Some("of a workload the agent no longer has")
        } else {
            None
        };
        if let Some(why) = skip {
            *sim.not_replayed.entry(why.to_string()).or_default() += 1;
            continue;
        }
        let Some(identity) = f.identity.clone() else {
            continue;
        };
        let flow = Flow {
            identity,
            destination: f.destination,
            peek: peeked(f),
        };
        let change = replay
            .replay(&f.workload, &flow)
            .map_err(|e| format!("workload {}: {e}", f.workload))?;
        sim.replayed += 1;
        if let Some(change) = change {
            match change.direction {
                Direction::Cut => sim.cut += 1,
                Direction::Opened => sim.opened += 1,
            }
            sim.changes.push(FlowChange {
                workload: f.workload.clone(),
                destination: f.destination,
                name: f.name.clone(),
                protocol: f.protocol.clone(),
                count: f.count,
                last: f.last.clone(),
                entry: change.entry().cloned(),
                change,
            });
        }
    }
    sim.changes.sort_by(|a, b| {
        (&a.workload, a.change.direction, a.destination, &a.name).cmp(&(
            &b.workload,
            b.change.direction,
            b.destination,
            &b.name,
        ))
    });
    Ok(sim)
}

/// The changes grouped by workload, each with the entry responsible.
pub fn render(sim: &Simulation) -> String {
    let mut out = String::new();
    let mut current: Option<&str> = None;
    for c in &sim.changes {
        if current != Some(c.workload.as_str()) {
            current = Some(&c.workload);
            let _ = writeln!(out, "workload {}", c.workload);
        }
        let what = match (&c.name, &c.protocol) {
            (Some(n), Some(p)) => format!("{} ({p} {n})", c.destination),
            _ => c.destination.to_string(),
        };
        let times = if c.count == 1 { "" } else { "s" };
        let before = &c.change.before;
        let after = &c.change.after;
        let reason = |o: &crate::policy::simulate::Outcome| {
            o.verdict.would_deny.unwrap_or(o.verdict.reason).name()
        };
        let entry = c.change.entry().map_or_else(
            || "no entry (the mode decides)".to_string(),
            ToString::to_string,
        );
        let line = match c.change.direction {
            Direction::Cut => format!(
                "  cut     {what}: {} connect{times}, last {}\n          stops matching: {entry}\n          now {} -> {}",
                c.count,
                c.last,
                reason(before),
                reason(after)
            ),
            Direction::Opened => format!(
                "  opened  {what}: {} connect{times}, last {}\n          starts to match: {entry}\n          now {} -> {}",
                c.count,
                c.last,
                reason(before),
                reason(after)
            ),
        };
        let _ = writeln!(out, "{line}");
    }
    let skipped: usize = sim.not_replayed.values().sum();
    let _ = writeln!(
        out,
        "{}{} flow{} replayed: {} would be cut, {} opened{}",
        if out.is_empty() { "" } else { "\n" },
        sim.replayed,
        if sim.replayed == 1 { "" } else { "s" },
        sim.cut,
        sim.opened,
        if skipped == 0 {
            String::new()
        } else {
            let why: Vec<String> = sim
                .not_replayed
                .iter()
                .map(|(w, n)| format!("{n} {w}"))
                .collect();
            format!("; not replayed: {}", why.join(", "))
        }
    );
    out
}
