//! Kernel enforcement (issue 3): real connect() calls from test cgroups in a test network
//! namespace, judged by the agent's cgroup programs, each checked against the policy
//! engine's `decide` as the oracle.

use std::{net::SocketAddr, time::Duration};

use passthrough_tests::{
    ProbeOptions, TestCgroup, Topology,
    agent::{AgentRun, Expect, sa},
};

const WEB_TAG: (&str, &str) = ("kuma.io/service", "web");

/// Every address and port the tests connect to; the internet namespace serves them all.
fn destinations() -> Vec<SocketAddr> {
    [
        "198.51.100.10:80",
        "198.51.100.10:443",
        "198.51.100.11:80",
        "198.51.100.11:443",
        "203.0.113.10:80",
        "203.0.113.200:8443",
        "203.0.113.20:80",
        "[2001:db8:1::10]:443",
        "[2001:db8:1::10]:80",
        "[2001:db8:1::11]:80",
        "[2001:db8:2::20]:8080",
        "[2001:db8:2::20]:80",
    ]
    .iter()
    .map(|s| sa(s))
    .collect()
}

const MATCHED_POLICIES: &str = r#"
type: MeshPassthrough
name: mesh-wide
spec:
  targetRef: {kind: Mesh}
  default:
    passthroughMode: Matched
    appendMatch:
      - {type: IP, value: 198.51.100.10, port: 80, protocol: tcp}
---
type: MeshPassthrough
name: web-only
spec:
  targetRef:
    kind: MeshSubset
    tags: {kuma.io/service: web}
  default:
    appendMatch:
      - {type: CIDR, value: 203.0.113.0/25, protocol: tcp}
      - {type: IP, value: "2001:db8:1::10", port: 443, protocol: tls}
      - {type: CIDR, value: "2001:db8:2::/48", port: 8080, protocol: tcp}
      - {type: IP, value: 198.51.100.11, protocol: tcp}
"#;

/// Checks every destination from `cgroup` against the oracle; returns (allowed, denied).
fn check_all(
    topo: &Topology,
    agent: &AgentRun,
    cgroup: &TestCgroup,
    tags: &[(&str, &str)],
    v4mapped: bool,
) -> (usize, usize) {
    let (mut allowed, mut denied) = (0, 0);
    for dest in destinations() {
        let v4mapped = v4mapped && dest.is_ipv4();
        let expect = agent.expect(tags, dest);
        let got = topo.connect(
            Some(cgroup),
            dest,
            &ProbeOptions {
                v4mapped,
                ..ProbeOptions::default()
            },
        );
        expect.assert(&got, &format!("{dest} (v4mapped={v4mapped}) tags={tags:?}"));
        match expect {
            Expect::Allow => allowed += 1,
            Expect::Deny => denied += 1,
        }
    }
    (allowed, denied)
}

#[test]
fn matched_ip_cidr_port_and_portless_entries_in_ipv4_and_ipv6_follow_the_oracle() {
    let topo = Topology::new();
    let _servers = topo.serve(&destinations());
    let web = TestCgroup::new();
    let other = TestCgroup::new();
    let agent = AgentRun::start(
        &topo,
        &[(&web, &[WEB_TAG][..]), (&other, &[][..])],
        &[("p.yaml", MATCHED_POLICIES)],
        "",
    );
    let (a, d) = check_all(&topo, &agent, &web, &[WEB_TAG], false);
    assert!(a >= 5 && d >= 4, "web: {a} allowed, {d} denied");
    // The Mesh-wide policy alone: only 198.51.100.10:80.
    let (a, d) = check_all(&topo, &agent, &other, &[], false);
    assert_eq!(a, 1, "the other workload gets only the Mesh-wide entry");
    assert!(d > 0);
}

#[test]
fn ipv4_mapped_ipv6_destinations_are_judged_by_ipv4_rules() {
    let topo = Topology::new();
    let _servers = topo.serve(&destinations());
    let web = TestCgroup::new();
    let agent = AgentRun::start(
        &topo,
        &[(&web, &[WEB_TAG][..])],
        &[("p.yaml", MATCHED_POLICIES)],
        "",
    );
    let (a, d) = check_all(&topo, &agent, &web, &[WEB_TAG], true);
    assert!(a > 0 && d > 0);
    // Concretely: an IPv6 socket cannot reach a denied IPv4 host through ::ffff:a.b.c.d.
    let got = topo.connect(
        Some(&web),
        sa("198.51.100.10:443"),
        &ProbeOptions {
            v4mapped: true,
            ..ProbeOptions::default()
        },
    );
    assert!(got.is_eperm(), "{got:?}");
}

#[test]
fn mode_none_denies_all_but_mesh_cidrs_and_loopback_and_udp_passes() {
    let topo = Topology::new();
    let _servers = topo.serve(&destinations());
    let w = TestCgroup::new();
    let agent = AgentRun::start(
        &topo,
        &[(&w, &[][..])],
        &[(
            "none.yaml",
            "type: MeshPassthrough\nname: none\nspec:\n  default:\n    passthroughMode: None\n",
        )],
        "meshCIDRs: [203.0.113.0/24, \"2001:db8:2::/48\"]\n",
    );
    let (a, d) = check_all(&topo, &agent, &w, &[], false);
    assert_eq!(a, 5, "exactly the mesh CIDR destinations are allowed");
    assert_eq!(d, destinations().len() - 5);
    let udp = topo.connect(
        Some(&w),
        sa("198.51.100.10:53"),
        &ProbeOptions {
            udp: true,
            ..ProbeOptions::default()
        },
    );
    assert!(
        !udp.is_eperm(),
        "UDP is out of scope and must pass: {udp:?}"
    );
}

#[test]
fn mode_all_allows_everything() {
    let topo = Topology::new();
    let _servers = topo.serve(&destinations());
    let w = TestCgroup::new();
    let agent = AgentRun::start(
        &topo,
        &[(&w, &[][..])],
        &[(
            "all.yaml",
            "type: MeshPassthrough\nname: all\nspec:\n  default:\n    passthroughMode: All\n    appendMatch: [{type: IP, value: 198.51.100.10, port: 80}]\n",
        )],
        "",
    );
    let (a, d) = check_all(&topo, &agent, &w, &[], false);
    assert_eq!((a, d), (destinations().len(), 0));
}

#[test]
fn processes_in_nested_cgroups_belong_to_the_workload() {
    let topo = Topology::new();
    let _servers = topo.serve(&destinations());
    let web = TestCgroup::new();
    let container = web.child("container");
    let agent = AgentRun::start(
        &topo,
        &[(&web, &[WEB_TAG][..])],
        &[("p.yaml", MATCHED_POLICIES)],
        "",
    );
    let (a, d) = check_all(&topo, &agent, &container, &[WEB_TAG], false);
    assert!(a > 0 && d > 0);
}

#[test]
fn a_process_outside_every_workload_is_not_filtered() {
    let topo = Topology::new();
    let _servers = topo.serve(&destinations());
    let w = TestCgroup::new();
    let outside = TestCgroup::new();
    let _agent = AgentRun::start(
        &topo,
        &[(&w, &[][..])],
        &[(
            "none.yaml",
            "type: MeshPassthrough\nname: none\nspec:\n  default:\n    passthroughMode: None\n",
        )],
        "",
    );
    let dest = sa("198.51.100.10:80");
    assert!(
        topo.connect(Some(&w), dest, &ProbeOptions::default())
            .is_eperm()
    );
    let got = topo.connect(Some(&outside), dest, &ProbeOptions::default());
    assert!(
        got.received().starts_with("hello from 198.51.100.10:80"),
        "{got:?}"
    );
}

#[test]
fn live_reload_applies_changes_and_an_invalid_policy_keeps_the_last_good_state() {
    let topo = Topology::new();
    let _servers = topo.serve(&destinations());
    let w = TestCgroup::new();
    let mut agent = AgentRun::start(
        &topo,
        &[(&w, &[][..])],
        &[(
            "p.yaml",
            "type: MeshPassthrough\nname: p\nspec:\n  default:\n    passthroughMode: None\n",
        )],
        "",
    );
    let dest = sa("198.51.100.11:443");
    assert!(
        topo.connect(Some(&w), dest, &ProbeOptions::default())
            .is_eperm()
    );

    // Allow it: the change takes effect without a restart.
    agent.write_policy(
        "p.yaml",
        "type: MeshPassthrough\nname: p\nspec:\n  default:\n    appendMatch: [{type: IP, value: 198.51.100.11, port: 443}]\n",
    );
    let took = agent.wait_until(Duration::from_secs(5), || {
        topo.connect(Some(&w), dest, &ProbeOptions::default())
            .is_connected()
    });
    eprintln!("policy change took effect after {took:?}");

    // An invalid policy is refused: the verdict stays, the agent reports it.
    agent.write_policy(
        "bad.yaml",
        "type: MeshPassthrough\nname: bad\nspec:\n  default:\n    appendMatch: [{type: IP, value: not-an-ip, port: 443}]\n",
    );
    agent.wait_until(Duration::from_secs(5), || {
        agent.status()["lastReload"]["result"] == "refused"
    });
    let status = agent.status();
    let problems = status["lastReload"]["problems"].to_string();
    assert!(
        problems.contains("provided IP has incorrect value"),
        "{problems}"
    );
    assert!(
        topo.connect(Some(&w), dest, &ProbeOptions::default())
            .is_connected()
    );
    assert!(agent.is_running());

    // Fixing it applies the fixed set.
    agent.remove_policy("bad.yaml");
    agent.write_policy(
        "p.yaml",
        "type: MeshPassthrough\nname: p\nspec:\n  default:\n    passthroughMode: None\n",
    );
    agent.wait_until(Duration::from_secs(5), || {
        topo.connect(Some(&w), dest, &ProbeOptions::default())
            .is_eperm()
    });
}

#[test]
fn enforcement_survives_sigkill_and_a_restart_adopts_it_without_a_window() {
    let topo = Topology::new();
    let _servers = topo.serve(&destinations());
    let w = TestCgroup::new();
    let mut agent = AgentRun::start(
        &topo,
        &[(&w, &[WEB_TAG][..])],
        &[("p.yaml", MATCHED_POLICIES)],
        "",
    );
    check_all(&topo, &agent, &w, &[WEB_TAG], false);

    agent.kill();
    // No agent runs: the pinned programs and maps decide exactly as before.
    check_all(&topo, &agent, &w, &[WEB_TAG], false);

    // Restart with a changed policy; while it starts, a denied destination stays denied.
    agent.write_policy(
        "p.yaml",
        &MATCHED_POLICIES.replace("203.0.113.0/25", "203.0.113.0/24"),
    );
    agent.spawn();
    let denied = sa("198.51.100.10:443");
    let mut probes = 0;
    while !agent.is_ready() {
        let got = topo.connect(Some(&w), denied, &ProbeOptions::default());
        assert!(
            got.is_eperm(),
            "a denied connect got through during the restart: {got:?}"
        );
        probes += 1;
    }
    eprintln!("{probes} denied probes during the restart");
    agent.wait_ready();
    // 203.0.113.200 is now inside the widened CIDR.
    check_all(&topo, &agent, &w, &[WEB_TAG], false);
    let got = topo.connect(Some(&w), sa("203.0.113.200:8443"), &ProbeOptions::default());
    assert!(got.is_connected(), "{got:?}");
}

#[test]
fn uninstall_detaches_everything() {
    let topo = Topology::new();
    let _servers = topo.serve(&destinations());
    let w = TestCgroup::new();
    let mut agent = AgentRun::start(
        &topo,
        &[(&w, &[][..])],
        &[(
            "none.yaml",
            "type: MeshPassthrough\nname: none\nspec:\n  default:\n    passthroughMode: None\n",
        )],
        "",
    );
    let dest = sa("198.51.100.10:80");
    assert!(
        topo.connect(Some(&w), dest, &ProbeOptions::default())
            .is_eperm()
    );
    agent.stop();
    assert!(
        topo.connect(Some(&w), dest, &ProbeOptions::default())
            .is_eperm()
    );
    agent.uninstall();
    assert!(
        topo.connect(Some(&w), dest, &ProbeOptions::default())
            .is_connected()
    );
    assert!(!agent.bpffs().exists(), "pins remain after uninstall");
}

#[test]
fn the_agent_and_its_children_are_never_filtered() {
    let topo = Topology::new();
    let _servers = topo.serve(&destinations());
    let w = TestCgroup::new();
    // The agent runs inside the workload's subtree (as a DaemonSet pod sits below kubepods).
    let agent_cg = w.child("agent");
    let agent = AgentRun::start_in(
        Some(&agent_cg),
        &topo,
        &[(&w, &[][..])],
        &[(
            "none.yaml",
            "type: MeshPassthrough\nname: none\nspec:\n  default:\n    passthroughMode: None\n",
        )],
        "",
    );
    let dest = sa("198.51.100.10:80");
    assert!(
        topo.connect(Some(&w), dest, &ProbeOptions::default())
            .is_eperm()
    );
    // A process in the agent's own cgroup, as a child it spawns would be, passes.
    let got = topo.connect(Some(&agent_cg), dest, &ProbeOptions::default());
    assert!(got.is_connected(), "{got:?}");
    let metrics = agent.metrics();
    assert!(
        metrics.contains("passthrough_connect_total{verdict=\"allow\",reason=\"agent\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("passthrough_connect_total{verdict=\"deny\",reason=\"mode_none\"} 1"),
        "{metrics}"
    );
}

#[test]
fn status_reports_each_workload_its_mode_entries_and_policies() {
    let topo = Topology::new();
    let w = TestCgroup::new();
    let agent = AgentRun::start(
        &topo,
        &[(&w, &[WEB_TAG][..])],
        &[("p.yaml", MATCHED_POLICIES)],
        "",
    );
    let status = agent.status();
    assert_eq!(status["ready"], true);
    let wl = &status["workloads"][0];
    assert_eq!(wl["enforced"], true);
    // Map fill levels: two exact IPv4 entries (one per port), one of each other kind.
    let metrics = agent.metrics();
    for (map, n) in [
        ("EXACT_V4", 2),
        ("EXACT_V6", 1),
        ("CIDR_V4", 1),
        ("CIDR_V6", 1),
        ("WORKLOADS", 1),
    ] {
        let line = format!("passthrough_map_entries{{map=\"{map}\"}} {n}");
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("passthrough_last_reload_timestamp_seconds ")),
        "{metrics}"
    );
    assert_eq!(wl["mode"], "Matched");
    assert_eq!(wl["cgroupId"], w.id());
    assert_eq!(wl["entries"]["cidrV4"], 1);
    assert_eq!(wl["entries"]["exactV4"], 2);
    assert_eq!(wl["entries"]["exactV6"], 1);
    assert_eq!(wl["entries"]["cidrV6"], 1);
    let names: Vec<&str> = wl["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["mesh-wide", "web-only"]);
}

#[test]
fn a_workload_cgroup_that_appears_later_is_enforced_once_it_exists() {
    let topo = Topology::new();
    let _servers = topo.serve(&destinations());
    let parent = TestCgroup::new();
    let later = parent.path().join("later");
    let agent = AgentRun::launch(
        None,
        &topo,
        &[(&later, &[][..])],
        &[(
            "none.yaml",
            "type: MeshPassthrough\nname: none\nspec:\n  default:\n    passthroughMode: None\n",
        )],
        "",
    );
    // The first reconcile has ended (the agent answers before it does).
    agent.wait_until(Duration::from_secs(10), || {
        agent
            .try_status()
            .is_some_and(|s| !s["lastReload"].is_null())
    });
    assert!(!agent.is_ready(), "ready before the workload cgroup exists");
    let status = agent.status();
    assert!(
        status["workloads"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("waiting for it to appear")),
        "{status}"
    );
    let cg = parent.child("later");
    agent.wait_until(Duration::from_secs(5), || agent.is_ready());
    assert!(
        topo.connect(Some(&cg), sa("198.51.100.10:80"), &ProbeOptions::default())
            .is_eperm()
    );
}

#[test]
fn sighup_reloads_the_config_file() {
    let topo = Topology::new();
    let _servers = topo.serve(&destinations());
    let w = TestCgroup::new();
    let agent = AgentRun::start(
        &topo,
        &[(&w, &[][..])],
        &[(
            "none.yaml",
            "type: MeshPassthrough\nname: none\nspec:\n  default:\n    passthroughMode: None\n",
        )],
        "",
    );
    let dest = sa("203.0.113.20:80");
    assert!(
        topo.connect(Some(&w), dest, &ProbeOptions::default())
            .is_eperm()
    );
    // The mesh grows: its CIDRs are always allowed once the agent re-reads its config.
    agent.append_config("meshCIDRs: [203.0.113.0/24]\n");
    agent.signal(libc::SIGHUP);
    let took = agent.wait_until(Duration::from_secs(5), || {
        topo.connect(Some(&w), dest, &ProbeOptions::default())
            .is_connected()
    });
    eprintln!("SIGHUP took effect after {took:?}");
    assert!(agent.is_ready());
}
