//! What does not go through `connect()` (issue 11): UDP and QUIC, DNS, raw IP sockets, ping
//! sockets and packet sockets, from workloads in the client namespace, with a capture on the
//! internet side of the veth proving what did and did not arrive.

use std::{net::IpAddr, time::Duration};

use passthrough_tests::{
    Capture, DnsRecords, TestCgroup, Topology,
    agent::{AgentRun, sa},
};

const UDP: u8 = 17;
const TCP: u8 = 6;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// How long a capture is watched before claiming nothing arrived.
const QUIET: Duration = Duration::from_millis(400);

/// `Matched`, one IP allowed, one name allowed: the issue's starting point.
const MATCHED: &str = r#"
type: MeshPassthrough
name: matched
spec:
  default:
    passthroughMode: Matched
    appendMatch:
      - {type: IP, value: 198.51.100.10, port: 443, protocol: tcp}
      - {type: Domain, value: allowed.example, port: 443, protocol: tls}
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn eperm_at(r: &serde_json::Value, stage: &str) -> bool {
    r["ok"] == false && r["errno"] == libc::EPERM && r["stage"] == stage
}

/// The probe's UDP datagram to `dest`, and whether it arrived.
fn udp(
    topo: &Topology,
    w: &TestCgroup,
    cap: &Capture,
    dest: &str,
    extra: &[&str],
) -> (serde_json::Value, bool) {
    cap.clear();
    let mut args = vec!["udp"];
    args.extend_from_slice(extra);
    args.push(dest);
    let r = topo.side_door(w, &args);
    let d = sa(dest);
    let arrived = cap
        .to(UDP, d.ip(), QUIET)
        .iter()
        .any(|p| p.dport == Some(d.port()) && p.payload);
    (r, arrived)
}

/// A raw, ping or packet socket probe of `kind` to `dest`, and whether its packet arrived.
fn raw(
    topo: &Topology,
    w: &TestCgroup,
    cap: &Capture,
    kind: &str,
    dest: &str,
) -> (serde_json::Value, bool) {
    cap.clear();
    let d = sa(dest);
    let iface = topo.client_iface().to_string();
    let mut args = vec!["raw", "--kind", kind];
    if kind == "packet" {
        args.extend_from_slice(&["--iface", &iface]);
    }
    args.push(dest);
    let r = topo.side_door(w, &args);
    let proto = match (kind, d.is_ipv6()) {
        ("tcp-syn", _) => TCP,
        ("packet", _) => UDP,
        (_, false) => ICMP,
        (_, true) => ICMPV6,
    };
    let arrived = !cap.to(proto, d.ip(), QUIET).is_empty();
    (r, arrived)
}

#[test]
fn udp_deny_refuses_datagrams_in_the_kernel_and_keeps_dns() {
    let topo = Topology::new();
    let dns = topo.dns(&DnsRecords::hosts(&[(
        "allowed.example",
        ip("198.51.100.10"),
    )]));
    let cap = topo.capture();
    let strict = TestCgroup::new();
    let open = TestCgroup::new();
    // The agent's default is Kuma's (Allow); the strict workload overrides it.
    let agent = AgentRun::start_workloads(
        &topo,
        &[(&strict, &[], "udp: {mode: Deny}"), (&open, &[], "")],
        &[("matched.yaml", MATCHED)],
        &format!(
            "udp: {{mode: Allow, dns: [203.0.113.53/32, \"2001:db8:2::53/128\"]}}\n{}",
            dns.config()
        ),
    );
    let denied = ["203.0.113.200:443", "[2001:db8:2::20]:443"];
    for dest in denied {
        for extra in [&[][..], &["--connected"][..]] {
            let (r, arrived) = udp(&topo, &strict, &cap, dest, extra);
            let stage = if extra.is_empty() { "send" } else { "connect" };
            assert!(eperm_at(&r, stage), "{dest} {extra:?}: {r}");
            assert!(!arrived, "{dest} {extra:?}: a refused datagram arrived");
            // udp: Allow (Kuma's default): the same datagram leaves.
            let (r, arrived) = udp(&topo, &open, &cap, dest, extra);
            assert_eq!(r["ok"], true, "{r}");
            assert!(
                arrived,
                "{dest} {extra:?}: an allowed datagram did not arrive"
            );
        }
    }
    // IPv4-mapped IPv6 is judged as IPv4.
    let (r, arrived) = udp(&topo, &strict, &cap, "203.0.113.200:443", &["--v4mapped"]);
    assert!(eperm_at(&r, "send"), "{r}");
    assert!(!arrived);
    // QUIC is UDP: refused, so a client falls back to TCP, where the proxy decides.
    let (r, _) = udp(&topo, &strict, &cap, "198.51.100.10:443", &[]);
    assert!(
        eperm_at(&r, "send"),
        "QUIC to an allowed IP is still UDP: {r}"
    );
    // DNS to the listed resolver is answered; port 53 elsewhere is not DNS to it.
    let r = topo.side_door(&strict, &["dns", "203.0.113.53:53", "allowed.example"]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["addresses"], serde_json::json!(["198.51.100.10"]), "{r}");
    let (r, arrived) = udp(&topo, &strict, &cap, "203.0.113.10:53", &[]);
    assert!(eperm_at(&r, "send"), "{r}");
    assert!(!arrived);
    // Loopback stays allowed.
    let (r, _) = udp(&topo, &strict, &cap, "127.0.0.1:9", &[]);
    assert_eq!(r["ok"], true, "{r}");
    // Every refusal is an event and a counter.
    let events = agent.events();
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e["reason"] == "udp_denied" && e["verdict"] == "deny")
        .collect();
    assert!(
        refused
            .iter()
            .any(|e| e["kind"] == "datagram" && e["destination"] == "203.0.113.200:443"),
        "{events:?}"
    );
    assert!(
        refused
            .iter()
            .any(|e| e["kind"] == "connect" && e["destination"] == "[2001:db8:2::20]:443"),
        "{events:?}"
    );
    let status = agent.status();
    assert!(
        status["counters"]["udp_denied"].as_u64().unwrap_or(0) >= 6,
        "{status}"
    );
    assert!(
        status["counters"]["udp_dns"].as_u64().unwrap_or(0) >= 1,
        "{status}"
    );
    let strict_status = status["workloads"]
        .as_array()
        .and_then(|w| {
            w.iter()
                .find(|w| w["cgroup"] == strict.path().display().to_string())
        })
        .cloned()
        .expect("the strict workload");
    assert_eq!(strict_status["containment"]["udp"], "Deny", "{status}");
}

#[test]
fn raw_ping_and_packet_sockets_are_refused_and_nothing_leaves() {
    let topo = Topology::new();
    let cap = topo.capture();
    let w = TestCgroup::new();
    let agent = AgentRun::start(
        &topo,
        &[(&w, &[][..])],
        &[("matched.yaml", MATCHED)],
        "udp: {mode: Deny}\n",
    );
    for (kind, dest, reason) in [
        ("tcp-syn", "203.0.113.200:22", "raw_socket"),
        ("tcp-syn", "[2001:db8:2::20]:22", "raw_socket"),
        ("icmp-echo", "203.0.113.200:0", "raw_socket"),
        ("icmp-echo", "[2001:db8:2::20]:0", "raw_socket"),
        ("ping", "203.0.113.200:0", "udp_denied"),
        ("ping", "[2001:db8:2::20]:0", "udp_denied"),
    ] {
        let (r, arrived) = raw(&topo, &w, &cap, kind, dest);
        assert!(eperm_at(&r, "socket"), "{kind} {dest}: {r}");
        assert!(!arrived, "{kind} to {dest} arrived");
        let events = agent.events();
        assert!(
            events
                .iter()
                .any(|e| e["kind"] == "socket" && e["reason"] == reason && e["verdict"] == "deny"),
            "{kind}: no {reason} event: {events:?}"
        );
    }
    // Packet sockets need the BPF LSM (lsm_cgroup). Where this kernel cannot run it, the
    // agent must say so, and the door is then shown to be open: the report is the truth.
    let status = agent.status();
    let refused = status["packetSockets"]["state"] == "refused";
    if !refused {
        let why = status["packetSockets"]["reason"].as_str().unwrap_or("");
        assert!(
            !why.is_empty(),
            "an open door is reported with its reason: {status}"
        );
        assert!(
            agent
                .log()
                .contains("packet sockets (AF_PACKET, AF_XDP) cannot be refused"),
            "and logged at start"
        );
    }
    for dest in ["203.0.113.200:9", "[2001:db8:2::20]:9"] {
        let (r, arrived) = raw(&topo, &w, &cap, "packet", dest);
        if refused {
            assert!(eperm_at(&r, "socket"), "packet {dest}: {r}");
            assert!(!arrived, "packet to {dest} arrived");
            assert!(
                agent
                    .events()
                    .iter()
                    .any(|e| e["reason"] == "packet_socket"),
                "no packet_socket event"
            );
        } else {
            assert_eq!(r["ok"], true, "{r}");
            assert!(arrived, "the reported open door is open: {dest}");
        }
    }
}

#[test]
fn with_the_settings_allowed_audited_or_mode_all_everything_leaves() {
    let topo = Topology::new();
    let cap = topo.capture();
    let allowed = TestCgroup::new();
    let audited = TestCgroup::new();
    let all = TestCgroup::new();
    let all_tag: &[(&str, &str)] = &[("app", "all")];
    let audit_policy = MATCHED.replace(
        "name: matched\n",
        "name: matched\nlabels: {passthrough.io/audit: \"true\"}\n",
    );
    let mode_all = r#"
type: MeshPassthrough
name: everything
spec:
  targetRef: {kind: MeshSubset, tags: {app: all}}
  default: {passthroughMode: All}
"#;
    let agent = AgentRun::start_workloads(
        &topo,
        &[
            (&allowed, &[], "udp: {mode: Allow}\nrawSockets: Allow"),
            (&audited, &[("app", "audited")], ""),
            (&all, all_tag, ""),
        ],
        &[
            ("matched.yaml", MATCHED),
            (
                "audited.yaml",
                &audit_policy
                    .replace("name: matched", "name: audited")
                    .replace(
                        "spec:\n",
                        "spec:\n  targetRef: {kind: MeshSubset, tags: {app: audited}}\n",
                    ),
            ),
            ("all.yaml", mode_all),
        ],
        "udp: {mode: Deny}\n",
    );
    for w in [&allowed, &audited, &all] {
        for (kind, dest) in [
            ("tcp-syn", "203.0.113.200:22"),
            ("icmp-echo", "[2001:db8:2::20]:0"),
            ("ping", "203.0.113.200:0"),
            ("packet", "203.0.113.200:9"),
        ] {
            if kind == "packet" && agent.status()["packetSockets"]["state"] != "refused" {
                // Open everywhere on this kernel (see the test above): nothing to show.
                continue;
            }
            let (r, arrived) = raw(&topo, w, &cap, kind, dest);
            assert_eq!(r["ok"], true, "{} {kind}: {r}", w.path().display());
            assert!(
                arrived,
                "{} {kind} to {dest} did not arrive",
                w.path().display()
            );
        }
        let (r, arrived) = udp(&topo, w, &cap, "203.0.113.200:443", &[]);
        assert_eq!(r["ok"], true, "{r}");
        assert!(arrived);
    }
    // The audited workload's would-be refusals are reported, each with its reason.
    let events = agent.events();
    let audited_path = audited.path().display().to_string();
    let mut reasons = vec!["raw_socket", "udp_denied"];
    if agent.status()["packetSockets"]["state"] == "refused" {
        reasons.push("packet_socket");
    }
    for reason in reasons {
        assert!(
            events.iter().any(|e| e["workload"] == audited_path
                && e["verdict"] == "would-deny"
                && e["reason"] == reason),
            "{reason}: {events:?}"
        );
    }
    assert!(
        !events
            .iter()
            .any(|e| e["workload"] != audited_path && e["verdict"] != "allow"),
        "only the audited workload reports anything: {events:?}"
    );
}

#[test]
fn the_agents_own_processes_keep_udp_and_raw_sockets() {
    let topo = Topology::new();
    let cap = topo.capture();
    let w = TestCgroup::new();
    // The agent inside the workload's subtree, as a DaemonSet pod sits below kubepods.
    let agent_cg = w.child("agent");
    let _agent = AgentRun::start_in(
        Some(&agent_cg),
        &topo,
        &[(&w, &[][..])],
        &[("matched.yaml", MATCHED)],
        "udp: {mode: Deny}\n",
    );
    let (r, arrived) = udp(&topo, &w, &cap, "203.0.113.200:443", &[]);
    assert!(eperm_at(&r, "send"), "the workload is judged: {r}");
    assert!(!arrived);
    // A process in the agent's own cgroup (the agent's resolver, its children) is not.
    let (r, arrived) = udp(&topo, &agent_cg, &cap, "203.0.113.200:443", &[]);
    assert_eq!(r["ok"], true, "{r}");
    assert!(arrived);
    let (r, arrived) = raw(&topo, &agent_cg, &cap, "tcp-syn", "203.0.113.200:22");
    assert_eq!(r["ok"], true, "{r}");
    assert!(arrived);
}
