//! The flow table and `passthrough simulate` (issue 19): every connect of a workload,
//! allowed or denied, counted exactly in the kernel; the names the proxy read; a candidate
//! policy replayed against them; the record across an agent restart; the LRU bound.

use std::time::Duration;

use passthrough_tests::{
    DnsRecords, ProbeOptions, TestCgroup, Topology,
    agent::{AgentRun, sa},
};
use serde_json::Value;

const PROXY: &str = "proxy: {listen: [127.0.0.1:15001, \"[::1]:15001\"], peekTimeout: 1s}\n";

const WEB: &str = r#"
type: MeshPassthrough
name: web
spec:
  default:
    passthroughMode: Matched
    appendMatch:
      - {type: IP, value: 198.51.100.10, port: 80, protocol: tcp}
      - {type: CIDR, value: 203.0.113.16/28, port: 80, protocol: tcp}
      - {type: Domain, value: allowed.example, port: 80, protocol: http}
"#;

/// `web` without the IP entry for 198.51.100.10, and with one for 203.0.113.30:443.
const CANDIDATE: &str = r#"
type: MeshPassthrough
name: web
spec:
  default:
    passthroughMode: Matched
    appendMatch:
      - {type: CIDR, value: 203.0.113.16/28, port: 80, protocol: tcp}
      - {type: Domain, value: allowed.example, port: 80, protocol: http}
      - {type: IP, value: 203.0.113.30, port: 443, protocol: tcp}
"#;

/// (source, destination, name) -> (count, verdict, reason, rule) of every flow recorded.
fn table(flows: &Value) -> Vec<(String, String, String, u64, String, String, String)> {
    let mut rows: Vec<_> = flows["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or("-").to_string();
            (
                s("source"),
                s("destination"),
                s("name"),
                f["count"].as_u64().expect("count"),
                s("verdict"),
                s("reason"),
                s("rule"),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn row(
    source: &str,
    dest: &str,
    name: &str,
    count: u64,
    verdict: &str,
    reason: &str,
    rule: &str,
) -> (String, String, String, u64, String, String, String) {
    (
        source.into(),
        dest.into(),
        name.into(),
        count,
        verdict.into(),
        reason.into(),
        rule.into(),
    )
}

/// What the connects below must leave in the record, exactly.
fn expected() -> Vec<(String, String, String, u64, String, String, String)> {
    let mut rows = vec![
        row(
            "kernel",
            "198.51.100.10:80",
            "-",
            3,
            "allow",
            "ip_entry",
            "web/appendMatch[0]",
        ),
        row(
            "kernel",
            "203.0.113.20:80",
            "-",
            2,
            "allow",
            "cidr_entry",
            "web/appendMatch[1]",
        ),
        row(
            "kernel",
            "203.0.113.30:443",
            "-",
            4,
            "deny",
            "no_match",
            "-",
        ),
        row(
            "kernel",
            "203.0.113.10:80",
            "-",
            3,
            "allow",
            "to_proxy",
            "-",
        ),
        row(
            "proxy",
            "203.0.113.10:80",
            "allowed.example",
            2,
            "allow",
            "domain_entry",
            "web/appendMatch[2]",
        ),
        row(
            "proxy",
            "203.0.113.10:80",
            "evil.example",
            1,
            "deny",
            "domain_no_match",
            "-",
        ),
    ];
    rows.sort();
    rows
}

#[test]
fn flows_count_every_connect_and_simulate_reports_exactly_the_two_changes_across_a_restart() {
    let topo = Topology::new();
    let _servers = topo.serve(&[
        sa("198.51.100.10:80"),
        sa("203.0.113.20:80"),
        sa("203.0.113.10:80"),
    ]);
    let dns = topo.dns(&DnsRecords::example_hosts());
    let w = TestCgroup::new();
    let state = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "{PROXY}{}flows: {{stateFile: {}}}\n",
        dns.config(),
        state.path().join("flows.json").display()
    );
    let mut agent = AgentRun::start(&topo, &[(&w, &[][..])], &[("web.yaml", WEB)], &config);
    let plain = ProbeOptions::default();
    for (dest, times) in [
        ("198.51.100.10:80", 3),
        ("203.0.113.20:80", 2),
        ("203.0.113.30:443", 4),
    ] {
        for _ in 0..times {
            let r = topo.connect(Some(&w), sa(dest), &plain);
            if dest == "203.0.113.30:443" {
                assert!(r.is_eperm(), "{dest}: {r:?}");
            } else {
                assert!(r.received().starts_with("hello from"), "{dest}: {r:?}");
            }
        }
    }
    for (host, times) in [("allowed.example", 2), ("evil.example", 1)] {
        for _ in 0..times {
            let r = topo.connect(
                Some(&w),
                sa("203.0.113.10:80"),
                &ProbeOptions::http_get(host),
            );
            let answer = if host == "allowed.example" {
                "hello from 203.0.113.10:80"
            } else {
                "HTTP/1.1 403 Forbidden"
            };
            assert!(r.received().starts_with(answer), "{host}: {r:?}");
        }
    }
    // The proxy records a name once it has decided: wait for the last one.
    let mut flows = Value::Null;
    agent.wait_until(Duration::from_secs(5), || {
        flows = agent.flows();
        table(&flows) == expected()
    });
    assert_eq!(table(&flows), expected(), "{flows:#}");
    assert_eq!(
        flows["table"]["inserted"], 4,
        "one kernel entry per destination"
    );
    assert_eq!(flows["table"]["evicted"], 0);

    // The CLI: text names every destination, -o json is the record simulate reads offline.
    let out = agent.cli(&["flows"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for dest in [
        "198.51.100.10:80",
        "203.0.113.20:80",
        "203.0.113.30:443",
        "allowed.example",
    ] {
        assert!(text.contains(dest), "{dest} missing:\n{text}");
    }
    let saved = state.path().join("saved.json");
    let out = agent.cli(&["flows", "-o", "json"]);
    assert!(out.status.success());
    std::fs::write(&saved, &out.stdout).expect("save the record");
    let candidate = state.path().join("candidate.yaml");
    std::fs::write(&candidate, CANDIDATE).expect("candidate");

    let check = |out: std::process::Output, how: &str| {
        let sim: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{how}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(
            out.status.code(),
            Some(1),
            "{how}: something is cut: {sim:#}"
        );
        let changes: Vec<(String, String, String, u64, u64)> = sim["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .map(|c| {
                (
                    c["direction"].as_str().unwrap_or("").to_string(),
                    c["destination"].as_str().unwrap_or("").to_string(),
                    c["entry"]["entry"]["value"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    c["entry"]["index"].as_u64().unwrap_or(99),
                    c["count"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(
            changes,
            [
                (
                    "cut".into(),
                    "198.51.100.10:80".into(),
                    "198.51.100.10".into(),
                    0,
                    3
                ),
                (
                    "opened".into(),
                    "203.0.113.30:443".into(),
                    "203.0.113.30".into(),
                    2,
                    4
                ),
            ],
            "{how}: exactly the two changes, with their entries: {sim:#}"
        );
        assert_eq!(
            (sim["cut"].as_u64(), sim["opened"].as_u64()),
            (Some(1), Some(1))
        );
    };
    let policy = candidate.display().to_string();
    let admin = agent.cli(&["simulate", "--policy", &policy, "-o", "json"]);
    check(admin, "against the agent");
    let offline = agent.cli(&[
        "simulate",
        "--policy",
        &policy,
        "--flows",
        &saved.display().to_string(),
        "-o",
        "json",
    ]);
    check(offline, "on the saved record");
    // The agent's own policy changes nothing.
    let same = agent.cli(&[
        "simulate",
        "--policy",
        &agent.policies_dir().join("web.yaml").display().to_string(),
        "--flows",
        &saved.display().to_string(),
    ]);
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );

    // A restarted agent keeps the record: the kernel table is pinned and the names are in
    // the state file; nothing is counted twice.
    agent.stop();
    agent.spawn();
    agent.wait_ready();
    let after = agent.flows();
    assert_eq!(table(&after), expected(), "after a restart: {after:#}");
    // And goes on counting.
    let r = topo.connect(Some(&w), sa("198.51.100.10:80"), &plain);
    assert!(r.received().starts_with("hello from"), "{r:?}");
    let again = agent.flows();
    let ip = table(&again)
        .into_iter()
        .find(|r| r.1 == "198.51.100.10:80")
        .expect("the IP flow");
    assert_eq!(ip.3, 4, "{again:#}");
}

#[test]
fn the_lru_bound_holds_under_100000_destinations_and_evictions_are_exact() {
    const N: u64 = 100_000;
    const CAPACITY: u64 = 4096;
    let topo = Topology::new();
    let w = TestCgroup::new();
    // Read only on request, so the history holds exactly what one reading finds.
    let agent = AgentRun::start(
        &topo,
        &[(&w, &[][..])],
        &[("web.yaml", WEB)],
        // The proxy off: the flood's destinations include the Domain entry's port, which
        // would otherwise be sent to the proxy instead of refused.
        &format!("flows: {{capacity: {CAPACITY}, interval: 24h}}\nproxy: {{enabled: false}}\n"),
    );
    let report = topo.flood_distinct(&w, sa("203.0.113.100:1"), N);
    assert_eq!(report["eperm"], N, "every connect denied: {report}");
    let flows = agent.flows();
    let t = &flows["table"];
    let (present, inserted, evicted) = (
        t["present"].as_u64().expect("present"),
        t["inserted"].as_u64().expect("inserted"),
        t["evicted"].as_u64().expect("evicted"),
    );
    eprintln!(
        "{N} distinct destinations in {:.2} s: {present} present, {inserted} inserted, {evicted} evicted",
        report["seconds"].as_f64().unwrap_or(0.0)
    );
    assert_eq!(inserted, N, "one entry created per destination");
    assert!(present <= CAPACITY, "the bound holds: {present}");
    assert!(present >= CAPACITY / 2, "the table is used: {present}");
    assert_eq!(evicted, N - present);
    // What the record holds is exactly what was not evicted: one connect per flow.
    let recorded: u64 = flows["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .map(|f| f["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(recorded, present);
    assert_eq!(recorded + evicted, N, "coverage is exact");
    // The metric says the same.
    let metrics = agent.metrics();
    assert!(
        metrics.contains(&format!("passthrough_flows_evicted_total {evicted}")),
        "{metrics}"
    );
}
