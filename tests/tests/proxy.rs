//! Domain entries through the peek proxy (issue 4): real clients in a workload cgroup, real
//! servers in the internet namespace, the agent's proxy deciding from SNI, Host and
//! `:authority`.

use std::{path::Path, time::Duration};

use passthrough_tests::{
    DnsRecords, DnsServer, ProbeOptions, TestCgroup, Topology,
    agent::{AgentRun, sa},
    client_hello,
};

const PROXY: &str = "proxy: {listen: [127.0.0.1:15001, \"[::1]:15001\"], peekTimeout: 1s}\n";

const DOMAINS: &str = r#"
type: MeshPassthrough
name: domains
spec:
  default:
    passthroughMode: Matched
    appendMatch:
      - {type: Domain, value: allowed.example, port: 80, protocol: http}
      - {type: Domain, value: "*.wild.example", port: 80, protocol: http}
      - {type: Domain, value: tls.example, port: 443, protocol: tls}
      - {type: Domain, value: "*.wild.example", port: 443, protocol: tls}
      - {type: Domain, value: h2.example, port: 8080, protocol: http2}
      - {type: Domain, value: grpc.example, port: 8081, protocol: grpc}
      - {type: Domain, value: both.example, port: 8443, protocol: tls}
      - {type: Domain, value: both.example, port: 8443, protocol: http}
      - {type: IP, value: 203.0.113.20, port: 80, protocol: tcp}
"#;

/// The agent with its peek proxy, and a resolver that gives every `.example` name the test
/// hosts these tests dial, so the default `domainCheck: Pin` keeps their destinations (the
/// binding itself is tested in domain_check.rs).
fn start(topo: &Topology, w: &TestCgroup) -> (AgentRun, DnsServer) {
    start_with(topo, w, PROXY)
}

fn start_with(topo: &Topology, w: &TestCgroup, proxy: &str) -> (AgentRun, DnsServer) {
    let dns = topo.dns(&DnsRecords::example_hosts());
    let config = format!("{proxy}{}", dns.config());
    let agent = AgentRun::start(topo, &[(w, &[][..])], &[("domains.yaml", DOMAINS)], &config);
    (agent, dns)
}

#[test]
fn http_host_decides_and_the_application_sees_the_original_peer() {
    let topo = Topology::new();
    let hosts = [sa("203.0.113.10:80"), sa("[2001:db8:1::10]:80")];
    let _servers = topo.serve(&hosts);
    let w = TestCgroup::new();
    let (agent, _dns) = start(&topo, &w);
    for dest in hosts {
        for host in [
            "allowed.example",
            "ALLOWED.Example",
            "allowed.example.",
            "allowed.example:80",
            "a.wild.example",
            "deep.a.wild.example",
        ] {
            let r = topo.connect(Some(&w), dest, &ProbeOptions::http_get(host));
            assert!(
                r.received().starts_with(&format!("hello from {dest}")),
                "{host} to {dest} must reach the server: {r:?}"
            );
            assert!(r.received().contains(&format!("Host: {host}")), "{r:?}");
            assert_eq!(r.peer(), Some(dest.to_string().as_str()), "getpeername");
        }
        for host in ["evil.example", "wild.example", "evilwild.example"] {
            let r = topo.connect(Some(&w), dest, &ProbeOptions::http_get(host));
            assert!(
                r.received().starts_with("HTTP/1.1 403 Forbidden"),
                "{host} to {dest} must be refused: {r:?}"
            );
            assert!(
                r.received().contains(host),
                "the refusal names the host: {r:?}"
            );
            assert!(!r.received().contains("hello from"), "{r:?}");
        }
    }
    // Every decision is counted by workload, verdict and deciding entry: per address family,
    // four names allowed by entry 0, two by entry 1, three refused.
    let metrics = agent.metrics();
    let count = |verdict: &str, rule: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("passthrough_proxy_decisions_total{")
                    && l.contains(&format!("verdict=\"{verdict}\""))
                    && l.contains(&format!("rule=\"{rule}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("allow", "domains/appendMatch[0]"), 8, "{metrics}");
    assert_eq!(count("allow", "domains/appendMatch[1]"), 4, "{metrics}");
    assert_eq!(count("deny", "domain_no_match"), 6, "{metrics}");
}

#[test]
fn a_server_that_speaks_first_is_never_heard_without_an_allowed_name() {
    let topo = Topology::new();
    let dest = sa("203.0.113.10:80");
    let _servers = topo.serve(&[dest]);
    let w = TestCgroup::new();
    let (agent, _dns) = start(&topo, &w);
    // The client sends nothing: the proxy waits for a name (peekTimeout 1s), then closes.
    let opts = ProbeOptions {
        timeout: Duration::from_secs(3),
        read: 4096,
        ..ProbeOptions::default()
    };
    let r = topo.connect(Some(&w), dest, &opts);
    assert!(r.is_connected(), "the connect itself succeeds: {r:?}");
    assert_eq!(r.received(), "", "no greeting may reach the client");
    // Junk instead of a name: refused as well, and counted.
    let junk = ProbeOptions {
        send: Some("\u{1}\u{2}\u{3} not a protocol\r\n\r\n".into()),
        ..opts
    };
    let r = topo.connect(Some(&w), dest, &junk);
    assert_eq!(r.received(), "", "{r:?}");
    let status = agent.status();
    let refused = &status["proxy"]["refused"];
    assert!(
        refused.as_object().is_some_and(|m| !m.is_empty()),
        "refusals are counted: {status}"
    );
}

#[test]
fn an_ip_miss_falls_through_to_the_domain_entries_of_the_port() {
    let topo = Topology::new();
    let ip_host = sa("203.0.113.20:80");
    let named = sa("203.0.113.10:80");
    let _servers = topo.serve(&[ip_host, named]);
    let w = TestCgroup::new();
    let (_agent, _dns) = start(&topo, &w);
    // The IP entry allows 203.0.113.20:80 in the kernel: the greeting arrives unasked.
    let r = topo.connect(Some(&w), ip_host, &ProbeOptions::default());
    assert!(
        r.received().starts_with("hello from 203.0.113.20:80"),
        "{r:?}"
    );
    // Another address on the same port is not hidden by the IP entry: the Domain entry
    // decides.
    let r = topo.connect(Some(&w), named, &ProbeOptions::http_get("allowed.example"));
    assert!(
        r.received().starts_with("hello from 203.0.113.10:80"),
        "{r:?}"
    );
    // A port with no entry at all is still denied in the kernel.
    let r = topo.connect(Some(&w), sa("203.0.113.10:9000"), &ProbeOptions::default());
    assert!(r.is_eperm(), "{r:?}");
}

/// A self-signed certificate for the TLS test host, which accepts any SNI.
fn certificate(dir: &Path) -> (String, String) {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=passthrough-test",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl req");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert.display().to_string(), key.display().to_string())
}

#[test]
fn tls_sni_decides_for_curl() {
    let topo = Topology::new();
    let dir = tempfile::tempdir().expect("tmp");
    let (cert, key) = certificate(dir.path());
    let host = sa("203.0.113.10:443");
    let _tls = topo.spawn_host(
        "openssl",
        &[
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            "203.0.113.10:443",
            "-cert",
            &cert,
            "-key",
            &key,
        ],
        host,
    );
    let host6 = sa("[2001:db8:1::10]:443");
    let _tls6 = topo.spawn_host(
        "openssl",
        &[
            "s_server",
            "-quiet",
            "-www",
            "-6",
            "-accept",
            "[2001:db8:1::10]:443",
            "-cert",
            &cert,
            "-key",
            &key,
        ],
        host6,
    );
    let w = TestCgroup::new();
    let (_agent, _dns) = start(&topo, &w);
    let curl = |name: &str, addr: &str| {
        let resolve = format!("{name}:443:{addr}");
        let url = format!("https://{name}/");
        topo.run_client(
            &w,
            "curl",
            &["-sS", "-k", "--max-time", "5", "--resolve", &resolve, &url],
            b"",
        )
    };
    for addr in ["203.0.113.10", "[2001:db8:1::10]"] {
        for name in ["tls.example", "TLS.EXAMPLE", "x.wild.example"] {
            let out = curl(name, addr);
            let body = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && body.contains("s_server"),
                "{name} at {addr} must reach the TLS server: {} {}",
                body,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // openssl s_client as well: the SNI decides, the server answers through the proxy.
        let connect = format!("{addr}:443");
        let s_client = |sni: &str| {
            topo.run_client(
                &w,
                "openssl",
                &[
                    "s_client",
                    "-connect",
                    &connect,
                    "-servername",
                    sni,
                    "-quiet",
                    "-ign_eof",
                ],
                b"GET / HTTP/1.0\r\n\r\n",
            )
        };
        let out = s_client("tls.example");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("s_server"),
            "s_client tls.example at {addr}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = s_client("evil.example");
        assert!(
            !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("s_server"),
            "s_client evil.example at {addr} must be refused"
        );
        for name in ["evil.example", "wild.example"] {
            let out = curl(name, addr);
            assert!(!out.status.success(), "{name} at {addr} must be refused");
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains("s_server"),
                "no byte of the server may reach a refused client"
            );
        }
    }
}

#[test]
fn tls_without_sni_and_a_client_hello_larger_than_a_segment() {
    let topo = Topology::new();
    let dest = sa("203.0.113.10:443");
    let _servers = topo.serve(&[dest]);
    let w = TestCgroup::new();
    let (_agent, _dns) = start(&topo, &w);
    let opts = |hello: Vec<u8>| ProbeOptions {
        send_bytes: Some(hello),
        read: 64 * 1024,
        ..ProbeOptions::default()
    };
    // A 4000-byte ClientHello (post-quantum key shares are this large) naming an allowed
    // host: reassembled, allowed, and replayed to the server byte for byte.
    let big = client_hello(Some("tls.example"), 4000);
    assert!(big.len() > 4000);
    let r = topo.connect(Some(&w), dest, &opts(big.clone()));
    let got = r.received_bytes();
    let greeting = format!("hello from {dest}\n");
    assert!(
        got.starts_with(greeting.as_bytes()),
        "allowed: {:?}",
        r.received()
    );
    // The test host ends its echo with a newline when the client's bytes do not.
    let echoed = got
        .get(greeting.len()..got.len() - 1)
        .expect("an echo after the greeting");
    assert!(
        echoed == &big[..],
        "the server must get the exact ClientHello ({} bytes echoed, {} sent)",
        echoed.len(),
        big.len()
    );
    // Without SNI no tls entry can match: refused with an alert, nothing from the server.
    let r = topo.connect(Some(&w), dest, &opts(client_hello(None, 0)));
    let got = r.received_bytes();
    assert_eq!(
        got,
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31],
        "an access_denied alert"
    );
}

#[test]
fn http2_prior_knowledge_authority_decides() {
    let topo = Topology::new();
    let docroot = tempfile::tempdir().expect("tmp");
    std::fs::write(docroot.path().join("index.html"), "h2 hello\n").expect("index");
    let host = sa("203.0.113.10:8080");
    let root = docroot.path().display().to_string();
    let _h2 = topo.spawn_host(
        "nghttpd",
        &["--no-tls", "-a", "203.0.113.10", "-d", &root, "8080"],
        host,
    );
    // The grpc entry is on its own port: one port carries at most one of http/http2/grpc.
    let _grpc = topo.spawn_host(
        "nghttpd",
        &["--no-tls", "-a", "203.0.113.10", "-d", &root, "8081"],
        sa("203.0.113.10:8081"),
    );
    let w = TestCgroup::new();
    let (_agent, _dns) = start(&topo, &w);
    let curl = |name: &str| {
        let port = if name.starts_with("grpc") { 8081 } else { 8080 };
        let resolve = format!("{name}:{port}:203.0.113.10");
        let url = format!("http://{name}:{port}/index.html");
        topo.run_client(
            &w,
            "curl",
            &[
                "-sS",
                "--http2-prior-knowledge",
                "--max-time",
                "5",
                "--resolve",
                &resolve,
                &url,
            ],
            b"",
        )
    };
    let out = curl("h2.example");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == "h2 hello\n",
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A grpc entry admits the same HTTP/2 request by its :authority.
    let out = curl("grpc.example");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == "h2 hello\n",
        "grpc.example: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = curl("evil.example");
    assert!(!out.status.success(), "evil.example must be refused");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("h2 hello"));
}

#[test]
fn one_gibibyte_through_an_allowed_connection_arrives_intact() {
    let topo = Topology::new();
    let dest = sa("203.0.113.10:80");
    let _echo = topo.echo(&[dest]);
    let w = TestCgroup::new();
    let (_agent, _dns) = start(&topo, &w);
    let gib = 1u64 << 30;
    let head = "POST /upload HTTP/1.1\r\nHost: allowed.example\r\n\r\n";
    let report = topo.bulk(&w, dest, head, gib);
    let sent = report["sent"].as_u64().expect("sent");
    assert_eq!(sent, gib + head.len() as u64);
    assert_eq!(report["received"], report["sent"], "{report}");
    assert_eq!(
        report["receivedChecksum"], report["sentChecksum"],
        "{report}"
    );
    eprintln!("1 GiB each way through the proxy: {report}");
}

#[test]
fn the_hello_builder_makes_records_a_reader_can_walk() {
    let h = client_hello(Some("a.example"), 3000);
    let mut i = 0;
    let mut records = 0;
    while i < h.len() {
        assert_eq!(h[i], 0x16);
        let len = u16::from_be_bytes([h[i + 3], h[i + 4]]) as usize;
        i += 5 + len;
        records += 1;
    }
    assert_eq!(i, h.len());
    assert!(records >= 3);
}

#[test]
fn the_bounds_refuse_cleanly_and_are_counted() {
    let topo = Topology::new();
    let dest = sa("203.0.113.10:80");
    let _servers = topo.serve(&[dest]);
    let w = TestCgroup::new();
    let (agent, _dns) = start_with(
        &topo,
        &w,
        "proxy: {listen: [127.0.0.1:15001], peekTimeout: 1s, peekBytes: 4096, maxConnections: 1}\n",
    );
    let quiet = ProbeOptions {
        timeout: Duration::from_secs(3),
        ..ProbeOptions::default()
    };
    // One client holds the only slot while it sends nothing (until peekTimeout).
    let holding = ProbeOptions {
        hold: Duration::from_secs(2),
        ..quiet.clone()
    };
    std::thread::scope(|s| {
        let holder = s.spawn(|| topo.connect(Some(&w), dest, &holding));
        std::thread::sleep(Duration::from_millis(300));
        let r = topo.connect(Some(&w), dest, &ProbeOptions::http_get("allowed.example"));
        assert_eq!(
            r.received(),
            "",
            "over maxConnections: closed at once: {r:?}"
        );
        assert_eq!(holder.join().expect("holder").received(), "");
    });
    // A header block larger than peekBytes, and a ClientHello cut short.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: allowed.example\r\nX-Big: {}\r\n",
        "a".repeat(8000)
    );
    let r = topo.connect(
        Some(&w),
        dest,
        &ProbeOptions {
            send: Some(huge),
            ..quiet.clone()
        },
    );
    assert_eq!(r.received(), "", "{r:?}");
    let hello = client_hello(Some("tls.example"), 0);
    let r = topo.connect(
        Some(&w),
        sa("203.0.113.10:443"),
        &ProbeOptions {
            send_bytes: Some(hello[..40].to_vec()),
            ..quiet
        },
    );
    assert_eq!(r.received(), "", "{r:?}");
    let status = agent.status();
    let refused = &status["proxy"]["refused"];
    for (cause, n) in [
        ("max_connections", 1),
        ("peek_timeout", 1),
        ("peek_bytes", 1),
        ("client_closed", 1),
    ] {
        assert_eq!(refused[cause], n, "{cause}: {refused}");
    }
    // The proxy is still serving.
    let r = topo.connect(Some(&w), dest, &ProbeOptions::http_get("allowed.example"));
    assert!(r.received().starts_with("hello from"), "{r:?}");
}

#[test]
fn one_port_with_tls_and_http_entries_decides_by_what_the_client_sends() {
    let topo = Topology::new();
    let dest = sa("203.0.113.10:8443");
    let _servers = topo.serve(&[dest]);
    let w = TestCgroup::new();
    let (_agent, _dns) = start(&topo, &w);
    let tls = |sni: &str| ProbeOptions {
        send_bytes: Some(client_hello(Some(sni), 0)),
        read: 4096,
        ..ProbeOptions::default()
    };
    let r = topo.connect(Some(&w), dest, &ProbeOptions::http_get("both.example"));
    assert!(
        r.received().starts_with("hello from"),
        "HTTP both.example: {r:?}"
    );
    let r = topo.connect(Some(&w), dest, &tls("both.example"));
    assert!(
        r.received().starts_with("hello from"),
        "TLS both.example: {r:?}"
    );
    let r = topo.connect(Some(&w), dest, &ProbeOptions::http_get("other.example"));
    assert!(r.received().starts_with("HTTP/1.1 403"), "{r:?}");
    let r = topo.connect(Some(&w), dest, &tls("other.example"));
    assert_eq!(
        r.received_bytes(),
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31]
    );
    // A name of one protocol does not open the other: the tls entry for tls.example is on
    // port 443 only, and an HTTP request naming a tls-only host is refused.
    let r = topo.connect(
        Some(&w),
        sa("203.0.113.10:443"),
        &ProbeOptions::http_get("tls.example"),
    );
    assert!(r.received().starts_with("HTTP/1.1 403"), "{r:?}");
}
