//! Issue 13 in the kernel: the README's "allow some" example enforced with no `proxy:`
//! section (the peek proxy is on by default), what the agent says when it is turned off, and
//! a 10 MB allow-list of 120 000 IP entries validated, applied and enforced.

use std::{fmt::Write as _, net::IpAddr, path::Path, time::Duration};

use passthrough_tests::{
    DnsRecords, ProbeOptions, TestCgroup, Topology,
    agent::{AgentRun, sa},
};

const SERVICE: (&str, &str) = ("kuma.io/service", "demo-app_kuma-demo_svc_5000");

fn allow_some() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/allow-some.yaml");
    std::fs::read_to_string(path).expect("examples/allow-some.yaml")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn the_allow_some_example_works_through_the_agent_without_a_proxy_section() {
    let topo = Topology::new();
    let host = sa("203.0.113.10:80");
    let _servers = topo.serve(&[host, sa("203.0.113.10:9000")]);
    let w = TestCgroup::new();
    // The example's http entry allows httpbin.dev on port 80; the default domainCheck (Pin)
    // binds it to the addresses this resolver gives. The config has no `proxy:` at all.
    let dns = topo.dns(&DnsRecords::hosts(&[("httpbin.dev", ip("203.0.113.10"))]));
    let config = dns.config();
    assert!(!config.contains("proxy"), "no proxy section: {config}");
    let agent = AgentRun::start(
        &topo,
        &[(&w, &[SERVICE][..])],
        &[("allow-some.yaml", &allow_some())],
        &config,
    );
    let r = topo.connect(Some(&w), host, &ProbeOptions::http_get("httpbin.dev"));
    assert!(
        r.received().starts_with("hello from 203.0.113.10:80"),
        "the example's Domain entry lets httpbin.dev through: {r:?}"
    );
    assert!(r.received().contains("Host: httpbin.dev"), "{r:?}");
    let r = topo.connect(Some(&w), host, &ProbeOptions::http_get("example.com"));
    assert!(
        r.received().starts_with("HTTP/1.1 403 Forbidden"),
        "a name no entry allows is refused by the proxy: {r:?}"
    );
    assert!(!r.received().contains("hello from"), "{r:?}");
    // No entry at all for port 9000: denied in the kernel.
    let r = topo.connect(Some(&w), sa("203.0.113.10:9000"), &ProbeOptions::default());
    assert!(r.is_eperm(), "{r:?}");
    let status = agent.status();
    assert_eq!(status["lastReload"]["unenforceableDomains"], 0, "{status}");
    assert!(status["proxy"].is_object(), "the proxy reports: {status}");
}

#[test]
fn with_the_proxy_turned_off_domain_entries_deny_and_every_reload_says_how_many() {
    let topo = Topology::new();
    let host = sa("203.0.113.10:80");
    let _servers = topo.serve(&[host]);
    let w = TestCgroup::new();
    let agent = AgentRun::start(
        &topo,
        &[(&w, &[SERVICE][..])],
        &[("allow-some.yaml", &allow_some())],
        "proxy: {enabled: false}\n",
    );
    let r = topo.connect(Some(&w), host, &ProbeOptions::http_get("httpbin.dev"));
    assert!(
        r.is_eperm(),
        "no proxy: the Domain entry cannot allow: {r:?}"
    );
    // The example has three Domain entries.
    let status = agent.status();
    assert_eq!(status["lastReload"]["unenforceableDomains"], 3, "{status}");
    let warned = status["lastReload"]["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .any(|w| {
            w.as_str()
                .is_some_and(|w| w.contains("3 Domain entries (in allow-some) cannot be enforced"))
        });
    assert!(warned, "{status}");
    assert!(status["proxy"].is_null(), "{status}");
    let metrics = agent.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l == "passthrough_domain_entries_unenforceable 3"),
        "{metrics}"
    );
    assert!(
        agent
            .log()
            .contains("3 Domain entries (in allow-some) cannot be enforced"),
        "{}",
        agent.log()
    );
    // A reload warns again.
    let before = agent.log().matches("cannot be enforced").count();
    agent.write_policy(
        "other.yaml",
        "type: MeshPassthrough\nname: other\nspec:\n  default:\n    appendMatch:\n      - {type: Domain, value: b.example, port: 443, protocol: tls}\n",
    );
    agent.wait_until(Duration::from_secs(10), || {
        agent.status()["lastReload"]["unenforceableDomains"] == 4
    });
    assert!(agent.log().matches("cannot be enforced").count() > before);
    assert!(
        agent.log().contains("in allow-some, other"),
        "{}",
        agent.log()
    );
}

/// 120 000 IP entries of 10.0.0.0/8 on port 443, block style, and one entry in the middle
/// for the test host: about 10 MB.
fn big_allow_list() -> String {
    let mut text = String::from(
        "apiVersion: kuma.io/v1alpha1\nkind: MeshPassthrough\nmetadata:\n  name: big\n  namespace: kuma-system\n  labels:\n    kuma.io/mesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  default:\n    passthroughMode: Matched\n    appendMatch:\n",
    );
    for i in 0u32..120_000 {
        let [_, a, b, c] = i.to_be_bytes();
        writeln!(
            text,
            "      - type: IP\n        value: 10.{a}.{b}.{c}\n        port: 443\n        protocol: tcp"
        )
        .expect("write");
        if i == 60_000 {
            text.push_str("      - type: IP\n        value: 203.0.113.10\n        port: 80\n        protocol: tcp\n");
        }
    }
    text
}

#[test]
fn a_10_mb_allow_list_validates_and_is_enforced() {
    let text = big_allow_list();
    assert!(text.len() > 10_000_000, "{} bytes", text.len());
    let topo = Topology::new();
    let listed = sa("203.0.113.10:80");
    let unlisted = sa("203.0.113.20:80");
    let _servers = topo.serve(&[listed, unlisted]);
    let w = TestCgroup::new();
    let agent = AgentRun::launch(
        None,
        &topo,
        &[(w.path(), &[][..])],
        &[("big.yaml", &text)],
        "",
    );
    // The agent's start validates the file as `passthrough validate --config` does, then
    // applies it. A debug build on a shared machine takes seconds for 10 MB; the time is in
    // docs/testing.md, not asserted.
    agent.wait_until(Duration::from_secs(180), || agent.is_ready());
    let status = agent.status();
    assert_eq!(status["lastReload"]["result"], "applied", "{status}");
    let r = topo.connect(Some(&w), listed, &ProbeOptions::default());
    assert!(
        r.received().starts_with("hello from 203.0.113.10:80"),
        "the listed address is allowed: {r:?}"
    );
    let r = topo.connect(Some(&w), unlisted, &ProbeOptions::default());
    assert!(r.is_eperm(), "an unlisted address is denied: {r:?}");
}
