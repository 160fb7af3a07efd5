//! The name to address binding (issue 10): an allowed name reaches only that name's own
//! servers. A real resolver (dnsmasq) in the internet namespace, greeting test hosts that
//! report the address each connection arrived on, and clients in a workload cgroup sending
//! a TLS ClientHello (SNI), an HTTP/1 request (Host) and an h2c request (`:authority`),
//! genuine and forged, exact and wildcard, IPv4 and IPv6.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use passthrough_tests::{
    DnsRecords, DnsServer, ProbeOptions, ProbeResult, ServerGuard, TestCgroup, Topology,
    agent::AgentRun, client_hello, h2c_request,
};

const POLICY: &str = r#"
type: MeshPassthrough
name: names
spec:
  default:
    passthroughMode: Matched
    appendMatch:
      - {type: Domain, value: tls.example, port: 443, protocol: tls}
      - {type: Domain, value: "*.wild.example", port: 443, protocol: tls}
      - {type: Domain, value: http.example, port: 80, protocol: http}
      - {type: Domain, value: "*.wild.example", port: 80, protocol: http}
      - {type: Domain, value: h2.example, port: 8080, protocol: http2}
      - {type: Domain, value: "*.wild.example", port: 8080, protocol: http2}
"#;

/// The exact names' servers, and the wildcard's.
const EXACT_V4: &str = "198.51.100.10";
const EXACT_V6: &str = "2001:db8:1::10";
const WILD_V4: &str = "198.51.100.11";
const WILD_V6: &str = "2001:db8:1::11";
/// An address no allowed name has: where a forged name asks to go.
const OTHER_V4: &str = "203.0.113.200";
const OTHER_V6: &str = "2001:db8:2::20";

#[derive(Clone, Copy, Debug)]
enum Proto {
    Tls,
    Http,
    H2,
}

impl Proto {
    const ALL: [Proto; 3] = [Proto::Tls, Proto::Http, Proto::H2];

    fn port(self) -> u16 {
        match self {
            Proto::Tls => 443,
            Proto::Http => 80,
            Proto::H2 => 8080,
        }
    }

    fn exact_name(self) -> &'static str {
        match self {
            Proto::Tls => "tls.example",
            Proto::Http => "http.example",
            Proto::H2 => "h2.example",
        }
    }

    /// What a client of this protocol sends first, naming `name`.
    fn request(self, name: &str) -> ProbeOptions {
        let bytes = match self {
            Proto::Tls => client_hello(Some(name), 0),
            Proto::Http => format!("GET / HTTP/1.1\r\nHost: {name}\r\n\r\n").into_bytes(),
            Proto::H2 => h2c_request(name),
        };
        ProbeOptions {
            send_bytes: Some(bytes),
            read: 8192,
            ..ProbeOptions::default()
        }
    }

    /// Whether `r` is this protocol's refusal (TLS access_denied alert, HTTP 403, GOAWAY).
    fn is_refusal(self, r: &ProbeResult) -> bool {
        let b = r.received_bytes();
        match self {
            Proto::Tls => b == [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31],
            Proto::Http => r.received().starts_with("HTTP/1.1 403 Forbidden"),
            // SETTINGS, then a GOAWAY frame (type 7).
            Proto::H2 => b.len() > 12 && b.get(12) == Some(&0x7),
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn records() -> DnsRecords {
    let mut r = DnsRecords::default();
    for p in Proto::ALL {
        r.hosts.push((p.exact_name().into(), ip(EXACT_V4)));
        r.hosts.push((p.exact_name().into(), ip(EXACT_V6)));
    }
    r.domains.push(("wild.example".into(), ip(WILD_V4)));
    r.domains.push(("wild.example".into(), ip(WILD_V6)));
    r
}

fn servers(topo: &Topology) -> ServerGuard {
    let mut addrs = Vec::new();
    for p in Proto::ALL {
        for host in [EXACT_V4, EXACT_V6, WILD_V4, WILD_V6, OTHER_V4, OTHER_V6] {
            addrs.push(SocketAddr::new(ip(host), p.port()));
        }
    }
    topo.serve(&addrs)
}

fn start(topo: &Topology, w: &TestCgroup, dns: &DnsServer, check: &str) -> AgentRun {
    let config = format!(
        "proxy: {{listen: [127.0.0.1:15001, \"[::1]:15001\"], peekTimeout: 2s, domainCheck: {check}}}\n{}",
        dns.config()
    );
    AgentRun::start(topo, &[(w, &[][..])], &[("names.yaml", POLICY)], &config)
}

/// One name of each kind: (name, its address of the family of `v6`).
fn names(p: Proto, v6: bool) -> [(String, &'static str); 2] {
    let (exact, wild) = if v6 {
        (EXACT_V6, WILD_V6)
    } else {
        (EXACT_V4, WILD_V4)
    };
    [
        (p.exact_name().to_string(), exact),
        ("deep.a.wild.example".to_string(), wild),
    ]
}

fn other(v6: bool) -> &'static str {
    if v6 { OTHER_V6 } else { OTHER_V4 }
}

/// Connects from the workload to `dest` naming `name`; returns what the client got and where
/// the connection arrived (the far side's record).
fn attempt(
    topo: &Topology,
    w: &TestCgroup,
    hosts: &ServerGuard,
    p: Proto,
    name: &str,
    dest: SocketAddr,
) -> (ProbeResult, Vec<SocketAddr>) {
    hosts.clear_accepted();
    let r = topo.connect(Some(w), dest, &p.request(name));
    // The greeting is sent after the server logs the connection; give the pipe a moment.
    std::thread::sleep(Duration::from_millis(20));
    (r, hosts.accepted())
}

#[test]
fn pin_sends_a_forged_name_to_the_names_own_server() {
    let topo = Topology::new();
    let dns = topo.dns(&records());
    let hosts = servers(&topo);
    let w = TestCgroup::new();
    let agent = start(&topo, &w, &dns, "Pin");
    for p in Proto::ALL {
        for v6 in [false, true] {
            for (name, own) in names(p, v6) {
                let own = SocketAddr::new(ip(own), p.port());
                let (r, arrived) = attempt(&topo, &w, &hosts, p, &name, own);
                assert!(
                    r.received().starts_with(&format!("hello from {own}")),
                    "{p:?} {name} to its own {own}: {r:?}"
                );
                assert_eq!(arrived, vec![own], "{p:?} {name}");
                let forged = SocketAddr::new(ip(other(v6)), p.port());
                let (r, arrived) = attempt(&topo, &w, &hosts, p, &name, forged);
                assert!(
                    r.received().starts_with(&format!("hello from {own}")),
                    "{p:?} {name} forged to {forged} must land on {own}: {r:?}"
                );
                assert_eq!(
                    arrived,
                    vec![own],
                    "{p:?} {name}: nothing may reach {forged}"
                );
                assert_eq!(
                    r.peer(),
                    Some(forged.to_string().as_str()),
                    "the application still sees what it dialled"
                );
            }
        }
    }
    // The events say where a pinned connection went.
    let events = agent.events();
    let pinned = events
        .iter()
        .filter(|e| e["source"] == "proxy" && e["pinnedTo"].is_string())
        .count();
    assert_eq!(
        pinned, 12,
        "3 protocols x 2 families x 2 names were pinned: {events:?}"
    );
    let e = events
        .iter()
        .find(|e| e["pinnedTo"] == format!("{EXACT_V4}:443"))
        .expect("the tls forged event");
    assert_eq!(e["destination"], format!("{OTHER_V4}:443"), "{e}");
    assert_eq!(e["verdict"], "allow", "{e}");
    assert_eq!(e["rule"], "names/appendMatch[0]", "{e}");
}

#[test]
fn verify_refuses_a_forged_name_and_trust_lets_it_through() {
    let topo = Topology::new();
    let dns = topo.dns(&records());
    let hosts = servers(&topo);
    let w = TestCgroup::new();
    {
        let agent = start(&topo, &w, &dns, "Verify");
        for p in Proto::ALL {
            for v6 in [false, true] {
                for (name, own) in names(p, v6) {
                    let own = SocketAddr::new(ip(own), p.port());
                    let (r, arrived) = attempt(&topo, &w, &hosts, p, &name, own);
                    assert!(
                        r.received().starts_with(&format!("hello from {own}")),
                        "Verify keeps a genuine {p:?} {name}: {r:?}"
                    );
                    assert_eq!(arrived, vec![own]);
                    let forged = SocketAddr::new(ip(other(v6)), p.port());
                    let (r, arrived) = attempt(&topo, &w, &hosts, p, &name, forged);
                    assert!(
                        p.is_refusal(&r),
                        "Verify refuses {p:?} {name} to {forged}: {r:?}"
                    );
                    assert!(arrived.is_empty(), "nothing reached {arrived:?}");
                }
            }
        }
        let events = agent.events();
        let mismatches: Vec<_> = events
            .iter()
            .filter(|e| e["reason"] == "name_address_mismatch")
            .collect();
        assert_eq!(mismatches.len(), 12, "{events:?}");
        assert!(
            mismatches.iter().all(|e| e["verdict"] == "deny"
                && e["rule"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("names/appendMatch["))),
            "each refusal names the entry that admitted the name: {mismatches:?}"
        );
        let metrics = agent.metrics();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("passthrough_proxy_decisions_total{")
                    && l.contains("rule=\"name_address_mismatch\"")
                    && l.ends_with(" 12")),
            "{metrics}"
        );
    }
    let _agent = start(&topo, &w, &dns, "Trust");
    for p in Proto::ALL {
        for v6 in [false, true] {
            for (name, _) in names(p, v6) {
                let forged = SocketAddr::new(ip(other(v6)), p.port());
                let (r, arrived) = attempt(&topo, &w, &hosts, p, &name, forged);
                assert!(
                    r.received().starts_with(&format!("hello from {forged}")),
                    "Trust (Kuma 2.x) lets {p:?} {name} reach {forged}: {r:?}"
                );
                assert_eq!(arrived, vec![forged]);
            }
        }
    }
}

#[test]
fn each_of_several_addresses_is_the_name_and_a_changed_answer_is_followed() {
    let topo = Topology::new();
    let name = "tls.example";
    let dns = topo.dns(&DnsRecords::hosts(&[
        (name, ip(EXACT_V4)),
        (name, ip(WILD_V4)),
    ]));
    let hosts = servers(&topo);
    let w = TestCgroup::new();
    let _agent = start(&topo, &w, &dns, "Verify");
    for addr in [EXACT_V4, WILD_V4] {
        let dest = SocketAddr::new(ip(addr), 443);
        let (r, arrived) = attempt(&topo, &w, &hosts, Proto::Tls, name, dest);
        assert!(
            r.received().starts_with(&format!("hello from {dest}")),
            "{r:?}"
        );
        assert_eq!(arrived, vec![dest]);
    }
    // The name moves to another address: once the 1 s TTL has passed, the old address is
    // refused and the new one accepted.
    dns.set_hosts(&[(name, ip(OTHER_V4))]);
    let old = SocketAddr::new(ip(EXACT_V4), 443);
    let new = SocketAddr::new(ip(OTHER_V4), 443);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (r, arrived) = attempt(&topo, &w, &hosts, Proto::Tls, name, old);
        if Proto::Tls.is_refusal(&r) {
            assert!(arrived.is_empty(), "{arrived:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old address is still accepted 10 s after the answer changed"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let (r, arrived) = attempt(&topo, &w, &hosts, Proto::Tls, name, new);
    assert!(
        r.received().starts_with(&format!("hello from {new}")),
        "{r:?}"
    );
    assert_eq!(arrived, vec![new]);
}

#[test]
fn a_name_that_does_not_resolve_is_refused_promptly() {
    let topo = Topology::new();
    let mut records = records();
    records.no_address.push("empty.example".into());
    let mut dns = topo.dns(&records);
    let hosts = servers(&topo);
    let w = TestCgroup::new();
    let policy = POLICY.replace(
        "      - {type: Domain, value: tls.example, port: 443, protocol: tls}\n",
        "      - {type: Domain, value: tls.example, port: 443, protocol: tls}\n      - {type: Domain, value: missing.example, port: 443, protocol: tls}\n      - {type: Domain, value: empty.example, port: 443, protocol: tls}\n",
    );
    let config = format!(
        "proxy: {{listen: [127.0.0.1:15001, \"[::1]:15001\"], peekTimeout: 2s}}\n{}",
        dns.config()
    );
    let agent = AgentRun::start(&topo, &[(&w, &[][..])], &[("names.yaml", &policy)], &config);
    let dest = SocketAddr::new(ip(EXACT_V4), 443);
    for (name, reason) in [
        ("missing.example", "dns_nxdomain"),
        ("empty.example", "dns_no_address"),
    ] {
        let (r, arrived) = attempt(&topo, &w, &hosts, Proto::Tls, name, dest);
        assert!(Proto::Tls.is_refusal(&r), "{name}: {r:?}");
        assert!(arrived.is_empty(), "{name}: {arrived:?}");
        let events = agent.events();
        assert!(
            events
                .iter()
                .any(|e| e["name"] == name && e["reason"] == reason && e["verdict"] == "deny"),
            "{name} is refused as {reason}: {events:?}"
        );
    }
    // The resolver goes away: refused within the 1 s DNS timeout (plus the probe's own
    // overhead), never a hang, and the agent keeps serving.
    dns.stop();
    let started = Instant::now();
    let (r, arrived) = attempt(&topo, &w, &hosts, Proto::Tls, "tls.example", dest);
    let took = started.elapsed();
    assert!(Proto::Tls.is_refusal(&r), "{r:?}");
    assert!(arrived.is_empty(), "{arrived:?}");
    assert!(
        took < Duration::from_millis(2500),
        "refused after {took:?}: the DNS timeout is 1 s"
    );
    let events = agent.events();
    assert!(
        events.iter().any(|e| e["name"] == "tls.example"
            && (e["reason"] == "dns_unreachable" || e["reason"] == "dns_timeout")),
        "{events:?}"
    );
    let status = agent.status();
    assert_eq!(status["ready"], true, "{status}");
}
