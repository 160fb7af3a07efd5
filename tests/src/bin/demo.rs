//! `cargo xtask demo`: the agent enforcing Kuma's "allow some" example on two workloads,
//! in a throw-away topology (a client network namespace and an "internet" one with test
//! hosts). Prints every attempted connection with the kernel's verdict and the rule that
//! decided it, checked against the policy engine, then removes everything it created.

use std::{net::SocketAddr, process::ExitCode};

use passthrough::policy::decide::Action;
use passthrough_tests::{
    ProbeOptions, TestCgroup, Topology,
    agent::{AgentRun, sa},
};

const DEMO_APP: (&str, &str) = ("kuma.io/service", "demo-app_kuma-demo_svc_5000");
const BATCH: (&str, &str) = ("kuma.io/service", "batch_kuma-demo_svc_8080");

/// The seed's "allow some" example with its addresses moved to the demo's test hosts
/// (10.240.15.39 -> 198.51.100.10, 10.250.0.0/16 -> 203.0.113.0/24), and the "disable
/// passthrough" example for every other sidecar.
const POLICIES: &str = r#"
apiVersion: kuma.io/v1alpha1
kind: MeshPassthrough
metadata:
  name: allow-some
  namespace: kuma-system
  labels: {kuma.io/mesh: default}
spec:
  targetRef:
    kind: MeshSubset
    proxyTypes: ["Sidecar"]
    tags: {kuma.io/service: demo-app_kuma-demo_svc_5000}
  default:
    passthroughMode: Matched
    appendMatch:
      - {type: Domain, value: httpbin.org, protocol: tls, port: 443}
      - {type: IP, value: 198.51.100.10, protocol: tcp, port: 8888}
      - {type: CIDR, value: 203.0.113.0/24, protocol: tcp, port: 10000}
      - {type: Domain, value: "*.wikipedia.org", protocol: tls, port: 443}
      - {type: Domain, value: httpbin.dev, protocol: http, port: 80}
      - {type: IP, value: "2001:db8:1::10", protocol: tls, port: 443}
---
apiVersion: kuma.io/v1alpha1
kind: MeshPassthrough
metadata:
  name: disable-passthrough
  namespace: kuma-system
  labels: {kuma.io/mesh: default}
spec:
  targetRef:
    kind: Mesh
    proxyTypes: ["Sidecar"]
  default:
    passthroughMode: None
"#;

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the demo creates network namespaces and cgroups and loads eBPF programs: run it as root"
        );
        return ExitCode::from(2);
    }
    let attempts: Vec<(&str, (&str, &str), SocketAddr, bool)> = vec![
        ("demo-app", DEMO_APP, sa("198.51.100.10:8888"), false),
        ("demo-app", DEMO_APP, sa("198.51.100.10:8889"), false),
        ("demo-app", DEMO_APP, sa("198.51.100.11:8888"), false),
        ("demo-app", DEMO_APP, sa("203.0.113.10:10000"), false),
        ("demo-app", DEMO_APP, sa("203.0.113.200:10000"), false),
        ("demo-app", DEMO_APP, sa("203.0.113.10:10001"), false),
        ("demo-app", DEMO_APP, sa("198.51.100.10:8888"), true),
        ("demo-app", DEMO_APP, sa("198.51.100.11:8888"), true),
        ("demo-app", DEMO_APP, sa("[2001:db8:1::10]:443"), false),
        ("demo-app", DEMO_APP, sa("[2001:db8:1::11]:443"), false),
        ("demo-app", DEMO_APP, sa("203.0.113.20:53"), false),
        ("batch", BATCH, sa("198.51.100.10:8888"), false),
        ("batch", BATCH, sa("203.0.113.10:10000"), false),
        ("batch", BATCH, sa("[2001:db8:1::10]:443"), false),
    ];
    let mut listen: Vec<SocketAddr> = attempts.iter().map(|a| a.2).collect();
    listen.sort();
    listen.dedup();

    println!("creating the demo topology: client netns -- veth -- internet netns with test hosts");
    let topo = Topology::new();
    let _servers = topo.serve(&listen);
    let demo_app = TestCgroup::new();
    let batch = TestCgroup::new();
    println!(
        "workloads: demo-app = {}\n           batch    = {}",
        demo_app.path().display(),
        batch.path().display()
    );
    let agent = AgentRun::start(
        &topo,
        &[(&demo_app, &[DEMO_APP][..]), (&batch, &[BATCH][..])],
        &[("demo.yaml", POLICIES)],
        "",
    );
    println!("agent ready; connecting from each workload:\n");
    println!(
        "{:<9} {:<28} {:<7} {:<16} DECIDED BY",
        "WORKLOAD", "DESTINATION", "KERNEL", "REASON"
    );
    let mut disagreements = 0;
    for (name, tag, dest, v4mapped) in &attempts {
        let got = topo.connect(
            Some(if *name == "batch" { &batch } else { &demo_app }),
            *dest,
            &ProbeOptions {
                v4mapped: *v4mapped,
                ..ProbeOptions::default()
            },
        );
        let (verdict, rule) = agent.oracle(&[*tag], *dest);
        let kernel = if got.is_eperm() {
            "EPERM"
        } else if got.received().starts_with("hello from") {
            "allowed"
        } else {
            "error"
        };
        let agrees = matches!(
            (verdict.action, kernel),
            (Action::Allow, "allowed") | (Action::Deny, "EPERM")
        );
        if !agrees {
            disagreements += 1;
        }
        let shown = if *v4mapped {
            format!("[::ffff:{}]:{}", dest.ip(), dest.port())
        } else {
            dest.to_string()
        };
        let by = match (verdict.reason.name(), rule) {
            ("mode_none", _) => "passthroughMode None (disable-passthrough)".to_string(),
            ("no_match", _) => "no appendMatch entry covers it".to_string(),
            ("domain_no_proxy", _) => format!(
                "only Domain entries cover port {} (they need the peek proxy)",
                dest.port()
            ),
            (_, Some(r)) => r.to_string(),
            (other, None) => other.to_string(),
        };
        println!(
            "{name:<9} {shown:<28} {kernel:<7} {:<16} {by}{}",
            verdict.reason.name(),
            if agrees {
                ""
            } else {
                "   <-- differs from the policy engine"
            }
        );
    }
    let status = agent.status();
    println!("\nkernel counters (/status):");
    if let Some(c) = status["counters"].as_object() {
        for (k, v) in c {
            if v.as_u64().unwrap_or(0) > 0 {
                println!("  {k:<16} {v}");
            }
        }
    }
    println!("\ncleaning up (agent, pins, cgroups, namespaces)");
    drop(agent);
    if disagreements > 0 {
        eprintln!("{disagreements} kernel verdicts differ from the policy engine");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
