//! `passthrough recommend`: a MeshPassthrough policy that allows exactly the connections a
//! running agent observed (audit mode's would-deny events, denials, and the peek proxy's
//! decisions), one policy per workload, each entry commented with what it covers; and, from
//! the flow record, the entries of the applied policies nothing used in the window, as
//! comments (never removed silently).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use clap::Args as ClapArgs;

use super::{
    Output,
    agent::{AdminAddr, fetch},
    fail,
    flows::fetch_flows,
    simulate::agent_documents,
};
use crate::{
    api::{EventKind, EventRecord, FlowsReport},
    config::{DEFAULT_ADMIN, duration_text},
    events::rfc3339,
    policy::{
        decide::{Exemptions, host_name},
        kuma::{Admission, KumaVersion},
        merge::{MergedEntry, SelectOptions},
        rules::Rule,
        set::PolicySet,
        simulate::{Setting, compiled_for},
    },
};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Address of a running agent's admin endpoint: IP:PORT or HOST:PORT.
    #[arg(long, default_value = DEFAULT_ADMIN, value_parser = AdminAddr::parse)]
    pub admin: AdminAddr,
    /// Only events of the last DURATION: a whole number with ms, s, m or h (90s, 30m, 2h).
    #[arg(long, value_name = "DURATION", value_parser = since)]
    pub since: Option<Duration>,
    /// Only this workload: its cgroup path as in the agent's config, or its name.
    #[arg(long, value_name = "W")]
    pub workload: Option<String>,
    /// The Kuma the policy is for: 2 (the default: selected by MeshSubset tags) or 3
    /// (selected by Dataplane labels).
    #[arg(long = "kuma-version", value_name = "VERSION", default_value = "2")]
    pub kuma_version: KumaVersion,
}

pub fn run(args: &Args, output: Output) -> ExitCode {
    let cutoff = args.since.map(|d| {
        rfc3339(
            SystemTime::now()
                .checked_sub(d)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        )
    });
    let body = match fetch(&args.admin, "/events") {
        Ok(body) => body,
        Err(message) => return fail(output, &message),
    };
    let events: Vec<EventRecord> = match serde_json::from_str(&body) {
        Ok(e) => e,
        Err(e) => {
            return fail(
                output,
                &format!("unexpected answer from {}: {e}", args.admin),
            );
        }
    };
    let selected: Vec<EventRecord> = events
        .into_iter()
        .filter(|e| cutoff.as_ref().is_none_or(|c| e.time >= *c))
        .filter(|e| args.workload.as_ref().is_none_or(|w| e.is_of(w)))
        .collect();
    // An agent without a flow record (an older one) still gets its recommendation.
    let unused = match fetch_flows(&args.admin, args.workload.as_deref(), args.since) {
        Ok(report) => match unused_entries(&report) {
            Ok(u) => u,
            Err(e) => return fail(output, &e),
        },
        Err(e) => {
            eprintln!("note: no flow record ({e}): unused entries are not looked for");
            BTreeMap::new()
        }
    };
    if selected.is_empty() && unused.is_empty() {
        eprintln!(
            "no events observed and no unused entries{}: nothing to recommend",
            since_text(args)
        );
        return ExitCode::from(1);
    }
    print!("{}", unused_text(&unused));
    if !selected.is_empty() {
        print!("{}", recommend(&selected, args.kuma_version));
    }
    ExitCode::SUCCESS
}

/// Per workload of the flow record, the entries of the policies it has now that no recorded
/// flow was decided by.
pub fn unused_entries(report: &FlowsReport) -> Result<BTreeMap<String, Vec<MergedEntry>>, String> {
    let opts = SelectOptions {
        system_namespace: report.applied.system_namespace.clone(),
        kuma: report.applied.kuma,
        files: Admission::Apply,
        ..SelectOptions::default()
    };
    let set = PolicySet::load_with(&[], agent_documents(report)?, &opts);
    let setting = Setting {
        opts,
        default_none: report.applied.default_mode_none,
        exemptions: Exemptions {
            mesh_cidrs: report.applied.mesh_cidrs.clone(),
        },
    };
    let mut used: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut identities = BTreeMap::new();
    for f in &report.flows {
        let names = used.entry(f.workload.as_str()).or_default();
        if let Some(rule) = &f.rule {
            names.insert(rule.as_str());
        }
        if let Some(id) = &f.identity {
            identities.entry(f.workload.as_str()).or_insert(id);
        }
    }
    let mut out = BTreeMap::new();
    for (workload, identity) in identities {
        let compiled = compiled_for(&set.policies, identity, &setting)
            .map_err(|e| format!("workload {workload}: {e}"))?;
        let names = &used[workload];
        let unused: Vec<MergedEntry> = compiled
            .rules
            .iter()
            .filter(|e| {
                !names.contains(format!("{}/appendMatch[{}]", e.policy.name, e.index).as_str())
            })
            .map(Rule::owned)
            .collect();
        if !unused.is_empty() {
            out.insert(workload.to_string(), unused);
        }
    }
    Ok(out)
}

/// The unused entries as YAML comments, before the recommended policies.
fn unused_text(unused: &BTreeMap<String, Vec<MergedEntry>>) -> String {
    let mut out = String::new();
    if unused.is_empty() {
        return out;
    }
    out.push_str(
        "# Entries no recorded connection used in the flow record's window: each may be
# removed from its policy if nothing else needs it (check with `passthrough simulate`).
",
    );
    for (workload, entries) in unused {
        let _ = writeln!(out, "#   workload {workload}:");
        for e in entries {
            let _ = writeln!(
                out,
                "#     unused: {e} ({}#{})",
                e.policy.source.file, e.policy.source.doc
            );
        }
    }
    out
}

fn since_text(args: &Args) -> String {
    args.since
        .map(|d| format!(" in the last {}s", d.as_secs()))
        .unwrap_or_default()
}

/// A `--since` value.
fn since(s: &str) -> Result<Duration, String> {
    duration_text::parse(s)
        .ok_or_else(|| format!("{s:?} is not a duration: {}", duration_text::EXPECTED))
}

/// One appendMatch entry, as it will be written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    kind: &'static str,
    value: String,
    port: u16,
    protocol: String,
}

#[derive(Default)]
struct Seen {
    count: u64,
    verdicts: BTreeMap<String, u64>,
    last: String,
}

/// The policies, as Kubernetes YAML documents, for the given events, in the form of `kuma`.
pub fn recommend(events: &[EventRecord], kuma: KumaVersion) -> String {
    let mut by_workload: BTreeMap<&str, Vec<&EventRecord>> = BTreeMap::new();
    for e in events {
        by_workload.entry(&e.workload).or_default().push(e);
    }
    let mut out = String::new();
    for (i, (workload, events)) in by_workload.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        render(&mut out, workload, events, kuma);
    }
    out
}

/// The appendMatch entry a connection event asks for; `None` for what MeshPassthrough has no
/// entry for (datagrams, sockets).
fn entry_of(e: &EventRecord) -> Option<Entry> {
    let dest = e.destination.filter(|_| e.kind == EventKind::Connect)?;
    Some(match (&e.name, &e.protocol) {
        (Some(name), Some(protocol)) => Entry {
            kind: "Domain",
            value: host_name(name),
            port: dest.port(),
            protocol: protocol.clone(),
        },
        _ => Entry {
            kind: "IP",
            value: dest.ip().to_string(),
            port: dest.port(),
            protocol: "tcp".into(),
        },
    })
}

fn render(out: &mut String, workload: &str, events: &[&EventRecord], kuma: KumaVersion) {
    let mut entries: BTreeMap<Entry, Seen> = BTreeMap::new();
    // Datagram destinations and refused sockets: MeshPassthrough cannot allow them, so they
    // are listed for the operator (the agent's `udp` and `rawSockets` settings decide them).
    let mut other: BTreeMap<String, u64> = BTreeMap::new();
    for e in events {
        let Some(entry) = entry_of(e) else {
            let what = match (e.kind, e.destination, &e.socket) {
                (EventKind::Datagram, Some(d), _) => format!("UDP to {d}"),
                (_, _, Some(s)) => format!("socket {s}"),
                (_, Some(d), _) => format!("{d}"),
                _ => "unknown".into(),
            };
            *other.entry(what).or_default() += e.count;
            continue;
        };
        let seen = entries.entry(entry).or_default();
        seen.count += e.count;
        *seen.verdicts.entry(e.verdict.to_string()).or_default() += e.count;
        if e.time > seen.last {
            seen.last = e.time.clone();
        }
    }
    let first = events[0];
    let mesh = if first.mesh.is_empty() {
        "default"
    } else {
        &first.mesh
    };
    let total: u64 = events.iter().map(|e| e.count).sum();
    let _ = writeln!(
        out,
        "# Recommended by `passthrough recommend` from {total} observed connections of\n# workload {workload}: allows exactly what it was seen to connect to."
    );
    let _ = writeln!(
        out,
        "apiVersion: kuma.io/v1alpha1\nkind: MeshPassthrough\nmetadata:\n  name: {}\n  namespace: kuma-system\n  labels:\n    kuma.io/mesh: {}\nspec:\n  targetRef:",
        policy_name(workload, &first.tags),
        quote(mesh)
    );
    if first.tags.is_empty() {
        out.push_str("    # The workload has no tags to select it by: this policy applies to the whole mesh.\n    kind: Mesh\n");
    } else if kuma == KumaVersion::V3 {
        out.push_str("    # Kuma 3 selects Dataplanes by labels: these are the workload's tags; check that\n    # its Dataplane carries them as labels.\n    kind: Dataplane\n    labels:\n");
        for (k, v) in &first.tags {
            let _ = writeln!(out, "      {}: {}", quote(k), quote(v));
        }
    } else {
        out.push_str("    kind: MeshSubset\n    tags:\n");
        for (k, v) in &first.tags {
            let _ = writeln!(out, "      {}: {}", quote(k), quote(v));
        }
    }
    if !other.is_empty() {
        out.push_str("# Also observed, which MeshPassthrough has no entry for (UDP and raw or packet\n# sockets are decided by the agent's `udp` and `rawSockets` settings):\n");
        for (what, n) in &other {
            let _ = writeln!(
                out,
                "#   {what}: {n} time{}",
                if *n == 1 { "" } else { "s" }
            );
        }
    }
    out.push_str("  default:\n    passthroughMode: Matched\n    appendMatch:\n");
    // Kuma allows one of http, http2 and grpc per port; a second one observed on a port
    // is left out, and said so.
    let mut l7_on_port: BTreeMap<u16, String> = BTreeMap::new();
    for (entry, seen) in &entries {
        let verdicts: Vec<String> = seen
            .verdicts
            .iter()
            .map(|(v, n)| format!("{n} {v}"))
            .collect();
        let note = format!(
            "{} connection{} ({}), last {}",
            seen.count,
            if seen.count == 1 { "" } else { "s" },
            verdicts.join(", "),
            seen.last
        );
        if matches!(entry.protocol.as_str(), "http" | "http2" | "grpc") {
            let first_l7 = l7_on_port
                .entry(entry.port)
                .or_insert_with(|| entry.protocol.clone());
            if *first_l7 != entry.protocol {
                let _ = writeln!(
                    out,
                    "      # left out: {} {} on port {} over {} ({note}): Kuma allows one of http, http2, grpc per port",
                    entry.kind, entry.value, entry.port, entry.protocol
                );
                continue;
            }
        }
        let _ = writeln!(
            out,
            "      # {note}\n      - type: {}\n        value: {}\n        port: {}\n        protocol: {}",
            entry.kind,
            quote(&entry.value),
            entry.port,
            entry.protocol
        );
    }
}

/// A Kubernetes object name from the workload's service tag or its cgroup's last component.
fn policy_name(workload: &str, tags: &[(String, String)]) -> String {
    let base = tags
        .iter()
        .find(|(k, _)| k == "kuma.io/service")
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| workload.rsplit('/').next().unwrap_or(workload));
    let mut name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(63 - "recommended-".len());
    let name = name.trim_matches('-');
    format!(
        "recommended-{}",
        if name.is_empty() { "workload" } else { name }
    )
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{EventSource, Verdict},
        policy::{
            kuma::Admission,
            load::{Document, parse_documents},
            validate::{validate, validate_for},
        },
    };

    fn event(dest: &str, name: Option<(&str, &str)>, verdict: &str, count: u64) -> EventRecord {
        EventRecord {
            time: "2026-11-22T10:00:00.000Z".into(),
            source: if name.is_some() {
                EventSource::Proxy
            } else {
                EventSource::Kernel
            },
            workload: "/sys/fs/cgroup/app.service".into(),
            workload_name: None,
            mesh: "default".into(),
            tags: vec![("kuma.io/service".into(), "web_default_svc_80".into())],
            pid: None,
            command: None,
            kind: EventKind::Connect,
            destination: Some(dest.parse().expect("addr")),
            socket: None,
            pinned_to: None,
            name: name.map(|(n, _)| n.to_string()),
            protocol: name.map(|(_, p)| p.to_string()),
            verdict: match verdict {
                "deny" => Verdict::Deny,
                "would-deny" => Verdict::WouldDeny,
                _ => Verdict::Allow,
            },
            reason: passthrough_common::Reason::NoMatch,
            rule: "no entry matched".into(),
            count,
        }
    }

    #[test]
    fn kuma_3_recommendations_select_by_dataplane_labels_and_are_valid_kuma_3() {
        let events = [
            event("203.0.113.10:443", None, "would-deny", 1),
            event(
                "198.51.100.7:443",
                Some(("api.example.com", "tls")),
                "deny",
                1,
            ),
        ];
        let text = recommend(&events, KumaVersion::V3);
        assert!(
            text.contains(
                "kind: Dataplane\n    labels:\n      \"kuma.io/service\": \"web_default_svc_80\""
            ),
            "{text}"
        );
        let docs = parse_documents("recommended.yaml", &text).expect("YAML");
        let Document::Policy(p) = &docs[0] else {
            panic!("{text}")
        };
        assert_eq!(
            validate_for(p, KumaVersion::V3, Admission::Apply),
            [],
            "{text}"
        );
        assert!(recommend(&events, KumaVersion::V2).contains("kind: MeshSubset"));
    }

    #[test]
    fn observed_connections_become_valid_entries_with_their_counts() {
        let text = recommend(
            &[
                event("203.0.113.10:443", None, "would-deny", 3),
                event("203.0.113.10:443", None, "deny", 2),
                event("[2001:db8::1]:8080", None, "would-deny", 1),
                event(
                    "198.51.100.7:443",
                    Some(("API.Example.com.", "tls")),
                    "would-deny",
                    4,
                ),
                event(
                    "198.51.100.7:80",
                    Some(("api.example.com:80", "http")),
                    "allow",
                    1,
                ),
                event(
                    "198.51.100.7:80",
                    Some(("h2.example.com", "http2")),
                    "deny",
                    1,
                ),
            ],
            KumaVersion::V2,
        );
        assert!(
            text.contains("name: recommended-web-default-svc-80"),
            "{text}"
        );
        assert!(
            text.contains("# 5 connections (2 deny, 3 would-deny)"),
            "{text}"
        );
        assert!(
            text.contains("value: \"api.example.com\"\n        port: 443\n        protocol: tls"),
            "{text}"
        );
        assert!(text.contains("value: \"2001:db8::1\""), "{text}");
        assert!(
            text.contains("left out: Domain h2.example.com on port 80 over http2"),
            "{text}"
        );
        let docs = parse_documents("recommended.yaml", &text).expect("YAML");
        assert_eq!(docs.len(), 1);
        for d in &docs {
            let Document::Policy(p) = d else {
                panic!("not a policy: {d:?}\n{text}");
            };
            let v = validate(p);
            assert!(
                v.is_empty(),
                "recommend must write valid policies: {v:?}\n{text}"
            );
        }
    }

    #[test]
    fn entries_no_flow_used_are_listed_and_used_ones_are_not() {
        use crate::{
            api::{AppliedPolicy, FlowRecord, FlowSource},
            policy::{document::to_resource, workload::Workload},
        };
        let text = "type: MeshPassthrough\nname: web\nspec:\n  targetRef: {kind: MeshSubset, tags: {kuma.io/service: web}}\n  default:\n    appendMatch:\n      - {type: IP, value: 203.0.113.10, port: 443}\n      - {type: CIDR, value: 198.51.100.0/24}\n      - {type: Domain, value: api.example.com, port: 443, protocol: tls}\n";
        let docs = parse_documents("p.yaml", text).expect("yaml");
        let Document::Policy(p) = &docs[0] else {
            panic!()
        };
        let identity = Workload {
            tags: [("kuma.io/service".into(), "web".into())].into(),
            ..Workload::default()
        };
        let flow = |rule: Option<&str>, verdict| FlowRecord {
            source: FlowSource::Kernel,
            workload: "/w".into(),
            workload_name: None,
            identity: Some(identity.clone()),
            destination: "203.0.113.10:443".parse().expect("addr"),
            ip_protocol: 6,
            name: None,
            protocol: None,
            verdict,
            reason: passthrough_common::Reason::IpEntry,
            rule: rule.map(str::to_string),
            count: 1,
            first: String::new(),
            last: String::new(),
            last_unix_ms: 0,
        };
        let mut report = FlowsReport::default();
        report.applied.policies = vec![AppliedPolicy {
            source: p.source.clone(),
            resource: to_resource(p),
        }];
        report.flows = vec![
            flow(Some("web/appendMatch[0]"), Verdict::Allow),
            flow(None, Verdict::Deny),
        ];
        let unused = unused_entries(&report).expect("compiles");
        let listed: Vec<usize> = unused["/w"].iter().map(|e| e.index).collect();
        assert_eq!(listed, [1, 2]);
        let text = unused_text(&unused);
        assert!(
            text.contains("unused: web spec.default.appendMatch[1]"),
            "{text}"
        );
        assert!(
            text.lines().all(|l| l.starts_with('#')),
            "comments only: {text}"
        );
    }

    #[test]
    fn names_are_kubernetes_names() {
        assert_eq!(
            policy_name("/sys/fs/cgroup/system.slice/App_1.service", &[]),
            "recommended-app-1-service"
        );
        assert_eq!(policy_name("/", &[]), "recommended-workload");
    }
}
