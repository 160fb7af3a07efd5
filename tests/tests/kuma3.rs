//! Kuma 3's name binding (issue 17): an agent with `kuma: {version: "3"}` pins an exact Domain
//! entry to the name's resolved addresses whatever `proxy.domainCheck` says, with no fallback
//! to the dialled address, while wildcard entries, and every entry of a Kuma 2 agent, follow
//! `domainCheck`. A real resolver (dnsmasq) in the internet namespace; greeting test hosts
//! report where each connection arrived.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use passthrough_tests::{
    DnsRecords, DnsServer, ProbeOptions, ProbeResult, ServerGuard, TestCgroup, Topology,
    agent::AgentRun, client_hello,
};

/// Valid for both versions (every exact name has a port); `proxyTypes` is one of the fields
/// Kuma 3 drops, which its agent reports as a warning.
const POLICY: &str = r#"
type: MeshPassthrough
name: names
spec:
  targetRef: {kind: Mesh, proxyTypes: [Sidecar]}
  default:
    passthroughMode: Matched
    appendMatch:
      - {type: Domain, value: tls.example, port: 443, protocol: tls}
      - {type: Domain, value: http.example, port: 80, protocol: http}
      - {type: Domain, value: missing.example, port: 443, protocol: tls}
      - {type: Domain, value: "*.wild.example", port: 443, protocol: tls}
"#;

const EXACT_V4: &str = "198.51.100.10";
const EXACT_V6: &str = "2001:db8:1::10";
const WILD_V4: &str = "198.51.100.11";
/// An address no allowed name has: where a forged name asks to go.
const OTHER_V4: &str = "203.0.113.200";
const OTHER_V6: &str = "2001:db8:2::20";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn at(host: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(host), port)
}

fn records() -> DnsRecords {
    let mut r = DnsRecords::default();
    for name in ["tls.example", "http.example"] {
        r.hosts.push((name.into(), ip(EXACT_V4)));
        r.hosts.push((name.into(), ip(EXACT_V6)));
    }
    r.domains.push(("wild.example".into(), ip(WILD_V4)));
    r
}

fn servers(topo: &Topology) -> ServerGuard {
    let mut addrs = Vec::new();
    for host in [EXACT_V4, WILD_V4, OTHER_V4, EXACT_V6, OTHER_V6] {
        for port in [80, 443] {
            addrs.push(at(host, port));
        }
    }
    topo.serve(&addrs)
}

fn start(topo: &Topology, w: &TestCgroup, dns: &DnsServer, kuma: &str, check: &str) -> AgentRun {
    let config = format!(
        "kuma: {{version: \"{kuma}\"}}\nproxy: {{listen: [127.0.0.1:15001, \"[::1]:15001\"], peekTimeout: 2s, domainCheck: {check}}}\n{}",
        dns.config()
    );
    AgentRun::start(topo, &[(w, &[][..])], &[("names.yaml", POLICY)], &config)
}

/// A TLS ClientHello naming `name`, or an HTTP/1 request with Host `name`, to `dest`: what
/// the client got and where the connection arrived.
fn attempt(
    topo: &Topology,
    w: &TestCgroup,
    hosts: &ServerGuard,
    name: &str,
    dest: SocketAddr,
) -> (ProbeResult, Vec<SocketAddr>) {
    let bytes = if dest.port() == 80 {
        format!("GET / HTTP/1.1\r\nHost: {name}\r\n\r\n").into_bytes()
    } else {
        client_hello(Some(name), 0)
    };
    hosts.clear_accepted();
    let r = topo.connect(
        Some(w),
        dest,
        &ProbeOptions {
            send_bytes: Some(bytes),
            read: 8192,
            ..ProbeOptions::default()
        },
    );
    // The greeting is sent after the server logs the connection; give the pipe a moment.
    std::thread::sleep(Duration::from_millis(20));
    (r, hosts.accepted())
}

/// Asserts the connection naming `name` to `dest` arrived at `expect`, and nowhere else.
fn lands(
    topo: &Topology,
    w: &TestCgroup,
    hosts: &ServerGuard,
    name: &str,
    dest: SocketAddr,
    expect: SocketAddr,
    why: &str,
) {
    let (r, arrived) = attempt(topo, w, hosts, name, dest);
    assert!(
        r.received().starts_with(&format!("hello from {expect}")),
        "{why}: {name} to {dest} must reach {expect}: {r:?}"
    );
    assert_eq!(arrived, vec![expect], "{why}: {name} to {dest}");
    assert_eq!(
        r.peer(),
        Some(dest.to_string().as_str()),
        "the application still sees what it dialled"
    );
}

#[test]
fn a_kuma_3_agent_pins_an_exact_domain_while_a_kuma_2_agent_follows_domain_check() {
    let topo = Topology::new();
    let dns = topo.dns(&records());
    let hosts = servers(&topo);
    let w = TestCgroup::new();
    let (tls, http) = (at(EXACT_V4, 443), at(EXACT_V4, 80));
    let (forged_tls, forged_http) = (at(OTHER_V4, 443), at(OTHER_V4, 80));
    let wild = "deep.a.wild.example";
    {
        // Kuma 2, Trust: every name reaches what was dialled, as Kuma 2.x does.
        let agent = start(&topo, &w, &dns, "2", "Trust");
        lands(
            &topo,
            &w,
            &hosts,
            "tls.example",
            forged_tls,
            forged_tls,
            "2/Trust exact",
        );
        lands(
            &topo,
            &w,
            &hosts,
            "http.example",
            forged_http,
            forged_http,
            "2/Trust exact http",
        );
        lands(
            &topo,
            &w,
            &hosts,
            wild,
            forged_tls,
            forged_tls,
            "2/Trust wildcard",
        );
        // Trust resolves nothing: a name with no address still reaches the dialled one.
        lands(
            &topo,
            &w,
            &hosts,
            "missing.example",
            forged_tls,
            forged_tls,
            "2/Trust unresolved",
        );
        let status = agent.status();
        assert!(
            status["lastReload"]["warnings"]
                .as_array()
                .is_none_or(|w| w.is_empty()),
            "Kuma 2 has nothing to warn about: {status}"
        );
    }
    {
        // Kuma 2, Pin: the configured check binds the wildcard too.
        let _agent = start(&topo, &w, &dns, "2", "Pin");
        lands(
            &topo,
            &w,
            &hosts,
            "tls.example",
            forged_tls,
            tls,
            "2/Pin exact",
        );
        lands(
            &topo,
            &w,
            &hosts,
            wild,
            forged_tls,
            at(WILD_V4, 443),
            "2/Pin wildcard",
        );
    }
    // Kuma 3, Trust: exact names are pinned anyway, wildcards keep Trust.
    let agent = start(&topo, &w, &dns, "3", "Trust");
    lands(
        &topo,
        &w,
        &hosts,
        "tls.example",
        tls,
        tls,
        "3/Trust genuine",
    );
    lands(
        &topo,
        &w,
        &hosts,
        "tls.example",
        forged_tls,
        tls,
        "3/Trust exact",
    );
    lands(
        &topo,
        &w,
        &hosts,
        "http.example",
        forged_http,
        http,
        "3/Trust exact http",
    );
    lands(
        &topo,
        &w,
        &hosts,
        "tls.example",
        at(OTHER_V6, 443),
        at(EXACT_V6, 443),
        "3/Trust exact, IPv6 to its IPv6 address",
    );
    lands(
        &topo,
        &w,
        &hosts,
        wild,
        forged_tls,
        forged_tls,
        "3/Trust wildcard",
    );
    // No fallback: a name that does not resolve is refused, nothing reaches the dialled
    // address.
    let (r, arrived) = attempt(&topo, &w, &hosts, "missing.example", forged_tls);
    assert_eq!(
        r.received_bytes(),
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31],
        "a TLS access_denied alert: {r:?}"
    );
    assert!(arrived.is_empty(), "nothing reached {arrived:?}");
    let events = agent.events();
    assert!(
        events
            .iter()
            .any(|e| e["name"] == "missing.example" && e["reason"] == "dns_nxdomain"),
        "{events:?}"
    );
    let pinned: Vec<_> = events
        .iter()
        .filter(|e| e["source"] == "proxy" && e["pinnedTo"].is_string())
        .collect();
    assert_eq!(pinned.len(), 3, "the three forged exact names: {events:?}");
    assert!(
        pinned
            .iter()
            .all(|e| e["rule"] == "names/appendMatch[0]" || e["rule"] == "names/appendMatch[1]"),
        "{pinned:?}"
    );
    // The field Kuma 3 drops is reported by the agent, in /status.
    let status = agent.status();
    let warnings = status["lastReload"]["warnings"]
        .as_array()
        .expect("warnings");
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.starts_with("warning: ")
                && w.contains("spec.targetRef.proxyTypes: proxyTypes is not in Kuma 3's schema"))),
        "{status}"
    );
    assert_eq!(status["lastReload"]["result"], "applied", "{status}");
}
