//! Deny events and audit mode (issue 5): what the kernel and the proxy report, exactly once
//! per connect, bounded under a flood.

use std::time::Duration;

use passthrough_tests::{
    DnsRecords, ProbeOptions, TestCgroup, Topology,
    agent::{AgentRun, sa},
};

const MATCHED: &str = r#"
type: MeshPassthrough
name: web
spec:
  default:
    passthroughMode: Matched
    appendMatch:
      - {type: IP, value: 198.51.100.10, port: 80, protocol: tcp}
      - {type: Domain, value: allowed.example, port: 80, protocol: http}
"#;

fn events_until(agent: &AgentRun, n: usize) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    agent.wait_until(Duration::from_secs(5), || {
        events = agent.events();
        events.len() >= n
    });
    events
}

#[test]
fn a_denied_connect_yields_exactly_one_event_naming_who_and_where() {
    let topo = Topology::new();
    let dest = sa("203.0.113.10:443");
    let _servers = topo.serve(&[dest, sa("198.51.100.10:80")]);
    let w = TestCgroup::new();
    let agent = AgentRun::start(&topo, &[(&w, &[][..])], &[("web.yaml", MATCHED)], "");
    // An allowed connect reports nothing.
    let ok = topo.connect(Some(&w), sa("198.51.100.10:80"), &ProbeOptions::default());
    assert!(ok.is_connected());
    let (r, pid) = topo.connect_pid(Some(&w), dest, &ProbeOptions::default());
    assert!(r.is_eperm(), "{r:?}");
    let events = events_until(&agent, 1);
    std::thread::sleep(Duration::from_millis(300));
    let events = if agent.events().len() > events.len() {
        agent.events()
    } else {
        events
    };
    assert_eq!(events.len(), 1, "exactly one event: {events:?}");
    let e = &events[0];
    assert_eq!(e["source"], "kernel");
    assert_eq!(e["verdict"], "deny");
    assert_eq!(e["reason"], "no_match");
    assert_eq!(e["pid"], pid);
    assert_eq!(e["command"], "probe");
    assert_eq!(e["destination"], "203.0.113.10:443");
    assert_eq!(e["workload"], w.path().display().to_string());
    assert_eq!(e["count"], 1);
    assert!(
        e["rule"].as_str().is_some_and(|r| r.contains("Matched")),
        "no entry matched, with the merged mode: {e}"
    );
    assert_eq!(agent.status()["events"]["received"], 1);
}

#[test]
fn audit_mode_lets_the_connect_through_and_reports_would_deny() {
    let topo = Topology::new();
    let dest = sa("203.0.113.10:443");
    let _servers = topo.serve(&[dest]);
    let w = TestCgroup::new();
    let agent = AgentRun::start(
        &topo,
        &[(&w, &[][..])],
        &[("web.yaml", MATCHED)],
        "audit: true\n",
    );
    let r = topo.connect(Some(&w), dest, &ProbeOptions::default());
    assert!(
        r.received().starts_with("hello from 203.0.113.10:443"),
        "audit mode lets it through: {r:?}"
    );
    let events = events_until(&agent, 1);
    assert_eq!(events[0]["verdict"], "would-deny", "{events:?}");
    assert_eq!(events[0]["reason"], "no_match");
    let status = agent.status();
    assert_eq!(status["workloads"][0]["audit"], true);
    assert_eq!(status["counters"]["audit"], 1);
    let metrics = agent.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("passthrough_workload_audit{") && l.ends_with(" 1")),
        "{metrics}"
    );
}

#[test]
fn proxy_decisions_are_events_with_the_name_the_client_sent() {
    let topo = Topology::new();
    let dest = sa("203.0.113.10:80");
    let _servers = topo.serve(&[dest]);
    let w = TestCgroup::new();
    let dns = topo.dns(&DnsRecords::example_hosts());
    let agent = AgentRun::start(
        &topo,
        &[(&w, &[][..])],
        &[("web.yaml", MATCHED)],
        &format!("proxy: {{listen: [127.0.0.1:15001]}}\n{}", dns.config()),
    );
    for host in ["allowed.example", "evil.example"] {
        topo.connect(Some(&w), dest, &ProbeOptions::http_get(host));
    }
    let events = events_until(&agent, 2);
    let find = |name: &str| {
        events
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no event for {name}: {events:?}"))
    };
    let allowed = find("allowed.example");
    assert_eq!(allowed["source"], "proxy");
    assert_eq!(allowed["verdict"], "allow");
    assert_eq!(allowed["protocol"], "http");
    assert_eq!(allowed["rule"], "web/appendMatch[1]");
    let denied = find("evil.example");
    assert_eq!(denied["verdict"], "deny");
    assert_eq!(denied["reason"], "domain_no_match");
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_flood_of_denials_never_blocks_and_every_event_is_received_or_counted_as_dropped() {
    const N: u64 = 100_000;
    /// What the agent may grow by while absorbing the flood.
    const MEMORY_BOUND_KIB: u64 = 32 * 1024;
    let topo = Topology::new();
    let w = TestCgroup::new();
    let agent = AgentRun::start(&topo, &[(&w, &[][..])], &[("web.yaml", MATCHED)], "");
    let before = rss_kib(agent.pid());
    // One process, one destination: the kernel reports each denial; the log aggregates.
    let report = topo.flood(&w, sa("203.0.113.10:443"), N);
    assert_eq!(report["eperm"], N, "every connect denied at once: {report}");
    let mut counts = serde_json::Value::Null;
    agent.wait_until(Duration::from_secs(10), || {
        counts = agent.status()["events"].clone();
        counts["received"].as_u64().unwrap_or(0) + counts["kernelDropped"].as_u64().unwrap_or(0)
            == N
    });
    let received = counts["received"].as_u64().unwrap_or(0);
    let dropped = counts["kernelDropped"].as_u64().unwrap_or(0);
    eprintln!(
        "flood: {N} denied connects in {:.2} s; {received} events received, {dropped} dropped",
        report["seconds"].as_f64().unwrap_or(0.0)
    );
    // The log aggregates what it received: identical denials are one record with a count.
    let total: u64 = agent
        .events()
        .iter()
        .filter_map(|e| e["count"].as_u64())
        .sum();
    assert_eq!(total, received);
    let grown = rss_kib(agent.pid()).saturating_sub(before);
    assert!(
        grown < MEMORY_BOUND_KIB,
        "the agent grew by {grown} KiB absorbing the flood"
    );
    let metrics = agent.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("passthrough_events_total {received}")),
        "{metrics}"
    );
}

#[test]
fn recommend_from_audit_mode_allows_what_was_seen_and_nothing_else() {
    let topo = Topology::new();
    let seen_ip = sa("203.0.113.10:443");
    let seen_v6 = sa("[2001:db8:1::10]:80");
    let named = sa("203.0.113.20:80");
    let unseen = sa("203.0.113.10:80");
    let _servers = topo.serve(&[seen_ip, seen_v6, named, unseen, sa("203.0.113.10:8443")]);
    let w = TestCgroup::new();
    // Audit mode from the policy's label; a Domain entry on port 80 sends HTTP to the proxy,
    // so the names clients use are observed too.
    let audit = r#"
type: MeshPassthrough
name: rollout
labels: {passthrough.io/audit: "true"}
spec:
  default:
    passthroughMode: Matched
    appendMatch:
      - {type: Domain, value: placeholder.invalid, port: 80, protocol: http}
"#;
    let tags = [("kuma.io/service", "web_default_svc_80")];
    // The names as the recommended Domain entries will bind them (domainCheck: Pin).
    let dns = topo.dns(&DnsRecords::hosts(&[
        ("api.example", named.ip()),
        ("v6.example", seen_v6.ip()),
    ]));
    let agent = AgentRun::start(
        &topo,
        &[(&w, &tags[..])],
        &[("rollout.yaml", audit)],
        &format!(
            "proxy: {{listen: [127.0.0.1:15001, \"[::1]:15001\"]}}\n{}",
            dns.config()
        ),
    );
    let get = ProbeOptions::http_get;
    // Observed, and let through because the policy is audited.
    for (dest, opts) in [
        (seen_ip, ProbeOptions::default()),
        (seen_v6, get("v6.example")),
        (named, get("api.example")),
    ] {
        let r = topo.connect(Some(&w), dest, &opts);
        assert!(r.received().starts_with("hello from"), "audited: {r:?}");
    }
    events_until(&agent, 3);
    let out = agent.cli(&["recommend", "--admin", passthrough_tests::agent::ADMIN]);
    let policy = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "recommend: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        policy.contains("kuma.io/service\": \"web_default_svc_80\""),
        "{policy}"
    );
    // Enforce it: the recommended policy replaces the audited one.
    agent.write_policy("rollout.yaml", &policy);
    agent.wait_until(Duration::from_secs(5), || {
        agent.status()["workloads"][0]["audit"] == false
    });
    for (dest, opts) in [
        (seen_ip, ProbeOptions::default()),
        (seen_v6, get("v6.example")),
        (named, get("api.example")),
    ] {
        let r = topo.connect(Some(&w), dest, &opts);
        assert!(
            r.received().starts_with("hello from"),
            "observed, so allowed: {dest} {r:?}\n{policy}"
        );
    }
    let r = topo.connect(Some(&w), unseen, &ProbeOptions::default());
    assert_eq!(
        r.received(),
        "",
        "not observed: port 80 now has Domain entries, so the proxy holds it and, with no allowed name, refuses it: {r:?}"
    );
    let r = topo.connect(Some(&w), sa("203.0.113.10:8443"), &ProbeOptions::default());
    assert!(r.is_eperm(), "not observed, so denied: {r:?}\n{policy}");
    let r = topo.connect(Some(&w), named, &get("other.example"));
    assert!(r.received().starts_with("HTTP/1.1 403"), "{r:?}");
}
