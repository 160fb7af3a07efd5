//! `cargo xtask demo`: the agent enforcing Kuma's "allow some" example on two workloads,
//! in a throw-away topology (a client network namespace and an "internet" one with test
//! hosts). Prints every attempted connection with the kernel's verdict and the rule that
//! decided it, checked against the policy engine, then removes everything it created.

use std::{net::SocketAddr, process::ExitCode};

use passthrough::policy::decide::{Action, Peeked};
use passthrough_tests::{
    DnsRecords, ProbeOptions, TestCgroup, Topology,
    agent::{ADMIN, AgentRun, sa},
    client_hello,
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

/// One connection of the demo: workload name and tag, destination, whether it is dialled as
/// `::ffff:a.b.c.d`, and what the client sends first.
type Attempt = (
    &'static str,
    (&'static str, &'static str),
    SocketAddr,
    bool,
    Name,
);

/// What the client sends first: nothing, a TLS ClientHello with an SNI, or an HTTP/1 request
/// with a Host.
enum Name {
    None,
    Sni(&'static str),
    Host(&'static str),
}

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the demo creates network namespaces and cgroups and loads eBPF programs: run it as root"
        );
        return ExitCode::from(2);
    }
    use Name::{Host, None as Nameless, Sni};
    let attempts: Vec<Attempt> = vec![
        (
            "demo-app",
            DEMO_APP,
            sa("198.51.100.10:8888"),
            false,
            Nameless,
        ),
        (
            "demo-app",
            DEMO_APP,
            sa("198.51.100.10:8889"),
            false,
            Nameless,
        ),
        (
            "demo-app",
            DEMO_APP,
            sa("198.51.100.11:8888"),
            false,
            Nameless,
        ),
        (
            "demo-app",
            DEMO_APP,
            sa("203.0.113.10:10000"),
            false,
            Nameless,
        ),
        (
            "demo-app",
            DEMO_APP,
            sa("203.0.113.200:10000"),
            false,
            Nameless,
        ),
        (
            "demo-app",
            DEMO_APP,
            sa("203.0.113.10:10001"),
            false,
            Nameless,
        ),
        (
            "demo-app",
            DEMO_APP,
            sa("198.51.100.10:8888"),
            true,
            Nameless,
        ),
        (
            "demo-app",
            DEMO_APP,
            sa("198.51.100.11:8888"),
            true,
            Nameless,
        ),
        (
            "demo-app",
            DEMO_APP,
            sa("[2001:db8:1::10]:443"),
            false,
            Nameless,
        ),
        (
            "demo-app",
            DEMO_APP,
            sa("198.51.100.11:443"),
            false,
            Sni("en.wikipedia.org"),
        ),
        (
            "demo-app",
            DEMO_APP,
            sa("198.51.100.11:443"),
            false,
            Sni("example.com"),
        ),
        // A forged name: an allowed SNI sent to an unrelated server. domainCheck: Pin sends
        // the connection to the name's own address instead.
        (
            "demo-app",
            DEMO_APP,
            sa("203.0.113.200:443"),
            false,
            Sni("en.wikipedia.org"),
        ),
        (
            "demo-app",
            DEMO_APP,
            sa("[2001:db8:1::11]:443"),
            false,
            Sni("httpbin.org"),
        ),
        (
            "demo-app",
            DEMO_APP,
            sa("203.0.113.20:80"),
            false,
            Host("httpbin.dev"),
        ),
        (
            "demo-app",
            DEMO_APP,
            sa("203.0.113.20:80"),
            false,
            Host("example.com"),
        ),
        ("demo-app", DEMO_APP, sa("203.0.113.20:53"), false, Nameless),
        ("batch", BATCH, sa("198.51.100.10:8888"), false, Nameless),
        ("batch", BATCH, sa("203.0.113.10:10000"), false, Nameless),
        ("batch", BATCH, sa("[2001:db8:1::10]:443"), false, Nameless),
        (
            "batch",
            BATCH,
            sa("198.51.100.11:443"),
            false,
            Sni("en.wikipedia.org"),
        ),
    ];
    let mut listen: Vec<SocketAddr> = attempts.iter().map(|a| a.2).collect();
    listen.sort();
    listen.dedup();

    println!("creating the demo topology: client netns -- veth -- internet netns with test hosts");
    let topo = Topology::new();
    let _servers = topo.serve(&listen);
    // The demo's resolver: the names of the policy's Domain entries at the demo's hosts (the
    // peek proxy binds each allowed name to these addresses).
    let ip = |s: &str| s.parse().expect("address");
    let dns = topo.dns(&DnsRecords::hosts(&[
        ("httpbin.org", ip("2001:db8:1::11")),
        ("en.wikipedia.org", ip("198.51.100.11")),
        ("httpbin.dev", ip("203.0.113.20")),
    ]));
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
        &format!(
            "proxy: {{listen: [127.0.0.1:15001, \"[::1]:15001\"]}}\n{}",
            dns.config()
        ),
    );
    println!("agent ready; connecting from each workload:\n");
    println!(
        "{:<9} {:<28} {:<20} {:<10} {:<16} DECIDED BY",
        "WORKLOAD", "DESTINATION", "NAME SENT", "RESULT", "REASON"
    );
    let mut disagreements = 0;
    for (name, tag, dest, v4mapped, sent) in &attempts {
        let (send, send_bytes, peeked) = match sent {
            Nameless => (None, None, None),
            Sni(n) => (
                None,
                Some(client_hello(Some(n), 0)),
                Some(Peeked::Tls(Some(n.to_string()))),
            ),
            Host(n) => (
                Some(format!("GET / HTTP/1.1\r\nHost: {n}\r\n\r\n")),
                None,
                Some(Peeked::Http1(Some(n.to_string()))),
            ),
        };
        let got = topo.connect(
            Some(if *name == "batch" { &batch } else { &demo_app }),
            *dest,
            &ProbeOptions {
                v4mapped: *v4mapped,
                send,
                send_bytes,
                read: 1024,
                ..ProbeOptions::default()
            },
        );
        let (verdict, rule) = match &peeked {
            Some(p) => agent.oracle_peeked(&[*tag], *dest, p),
            None => agent.oracle(&[*tag], *dest),
        };
        let reached = got
            .received()
            .strip_prefix("hello from ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let result = if got.is_eperm() {
            "EPERM"
        } else if reached
            .is_some_and(|a| a.ip() != passthrough::policy::decide::canonical(dest.ip()))
        {
            "pinned"
        } else if reached.is_some() {
            "allowed"
        } else if got.received().starts_with("HTTP/1.1 403") {
            "HTTP 403"
        } else if got.received_bytes().starts_with(&[0x15, 0x03]) {
            "TLS alert"
        } else {
            "error"
        };
        // What the verdict means for the client: a kernel denial fails connect(); the
        // proxy's refusal is an answer in the client's protocol.
        let expected = match (verdict.action, verdict.reason.name(), sent) {
            // The policy engine allows the name; where it goes is the resolver's answer.
            (Action::Allow, "domain_entry", _) if result == "pinned" => "pinned",
            (Action::Allow, _, _) => "allowed",
            (_, "domain_no_match", Sni(_)) => "TLS alert",
            (_, "domain_no_match", Host(_)) => "HTTP 403",
            _ => "EPERM",
        };
        let agrees = result == expected;
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
            ("domain_no_match", _) => format!(
                "peek proxy: no Domain entry of port {} admits this name",
                dest.port()
            ),
            (_, Some(r)) if result == "pinned" => format!(
                "{r}; Pin: connected to {} instead",
                reached.map_or_else(String::new, |a| a.to_string())
            ),
            (_, Some(r)) => r.to_string(),
            (other, None) => other.to_string(),
        };
        let name_sent = match sent {
            Nameless => "-".to_string(),
            Sni(n) => format!("SNI {n}"),
            Host(n) => format!("Host {n}"),
        };
        println!(
            "{name:<9} {shown:<28} {name_sent:<20} {result:<10} {:<16} {by}{}",
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
    if let Some(d) = status["proxy"]["decisions"].as_array() {
        println!("\npeek proxy decisions (/status):");
        for entry in d {
            let (k, n) = (&entry[0], &entry[1]);
            println!(
                "  {:<8} {:<36} {}",
                k["verdict"].as_str().unwrap_or("?"),
                k["rule"].as_str().unwrap_or("?"),
                n
            );
        }
    }
    if let Err(e) = rollout(&topo, &agent, &batch) {
        eprintln!("rollout: {e}");
        disagreements += 1;
    }
    println!("\ncleaning up (agent, pins, cgroups, namespaces)");
    drop(agent);
    if disagreements > 0 {
        eprintln!("{disagreements} kernel verdicts differ from the policy engine");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Audit first, then enforce: `batch` (passthrough disabled) is put in audit mode by a
/// labelled policy, its connections are observed, `passthrough recommend` writes the policy
/// that allows them, `passthrough simulate` replays the recorded flows against it, and that
/// policy is enforced.
fn rollout(topo: &Topology, agent: &AgentRun, batch: &TestCgroup) -> Result<(), String> {
    let workload = batch.path().display().to_string();
    println!("\nrollout for batch: 1. audit mode (policy label passthrough.io/audit: \"true\")");
    agent.write_policy("rollout.yaml", ROLLOUT_AUDIT);
    agent.wait_until(std::time::Duration::from_secs(5), || {
        agent.status()["workloads"][1]["audit"] == true
    });
    for dest in [sa("198.51.100.10:8888"), sa("203.0.113.10:10000")] {
        let r = topo.connect(Some(batch), dest, &ProbeOptions::default());
        println!(
            "   batch -> {dest:<20} {}",
            if r.received().starts_with("hello from") {
                "allowed (audit: reported as would-deny)"
            } else {
                "not allowed"
            }
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    println!("\n2. passthrough events --workload {workload}");
    let out = agent.cli(&["events", "--admin", ADMIN, "--workload", &workload]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("\n3. passthrough recommend --workload {workload}");
    let out = agent.cli(&["recommend", "--admin", ADMIN, "--workload", &workload]);
    let policy = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    print!("{policy}");
    let candidate = agent.policies_dir().with_file_name("recommended.yaml");
    std::fs::write(&candidate, &policy).map_err(|e| e.to_string())?;
    println!(
        "\n4. passthrough simulate --policy recommended.yaml --replace kuma-system/batch-rollout --workload {workload}"
    );
    let out = agent.cli(&[
        "simulate",
        "--admin",
        ADMIN,
        "--policy",
        &candidate.display().to_string(),
        "--replace",
        "kuma-system/batch-rollout",
        "--workload",
        &workload,
    ]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    println!("   (exit code {})", out.status.code().unwrap_or(-1));
    println!("\n5. enforce it (it replaces the audited policy)");
    agent.write_policy("rollout.yaml", &policy);
    agent.wait_until(std::time::Duration::from_secs(5), || {
        agent.status()["workloads"][1]["audit"] == false
    });
    let mut ok = true;
    for (dest, want) in [
        (sa("198.51.100.10:8888"), true),
        (sa("203.0.113.10:10000"), true),
        (sa("203.0.113.10:10001"), false),
    ] {
        let r = topo.connect(Some(batch), dest, &ProbeOptions::default());
        let allowed = r.received().starts_with("hello from");
        ok &= allowed == want;
        println!(
            "   batch -> {dest:<20} {}",
            if allowed {
                "allowed"
            } else if r.is_eperm() {
                "EPERM"
            } else {
                "error"
            }
        );
    }
    if ok {
        Ok(())
    } else {
        Err("the enforced recommendation did not allow exactly what was observed".into())
    }
}

/// Puts `batch` in audit mode without changing what its policy says.
const ROLLOUT_AUDIT: &str = r#"
apiVersion: kuma.io/v1alpha1
kind: MeshPassthrough
metadata:
  name: batch-rollout
  namespace: kuma-system
  labels:
    kuma.io/mesh: default
    passthrough.io/audit: "true"
spec:
  targetRef:
    kind: MeshSubset
    tags: {kuma.io/service: batch_kuma-demo_svc_8080}
  default:
    passthroughMode: None
"#;
