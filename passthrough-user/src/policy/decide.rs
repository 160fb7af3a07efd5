//! The decision for one TCP `connect()` of a workload (semantics.md, "Decision").
//!
//! This is the reference: the kernel programs implement the steps up to the hand-off to the
//! peek proxy, the proxy implements the name step, and the privileged tests check both
//! against this function.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;
use passthrough_common::{PORT_ANY, Reason};
use serde::Serialize;

use super::compile::{
    CompiledPolicy, DomainRule, EffectiveMode, NamePattern, NameProtocol, normalize_name,
};

/// Destinations allowed for every workload, whatever its policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exemptions {
    /// The mesh's own address ranges (the agent config's `meshCIDRs`).
    pub mesh_cidrs: Vec<IpNet>,
}

impl Exemptions {
    fn covers(&self, ip: IpAddr) -> bool {
        self.mesh_cidrs.iter().any(|n| n.contains(&ip))
    }
}

/// What happens to the connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    /// Handed to the peek proxy, which decides from the name the client sends.
    Proxy,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Proxy => "proxy",
        })
    }
}

/// A decision and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub action: Action,
    #[serde(serialize_with = "reason_name")]
    pub reason: Reason,
    /// The deciding entry: an index into [`CompiledPolicy::rules`].
    pub rule: Option<u32>,
    /// In audit mode, the reason a connect that was let through would have been denied.
    #[serde(serialize_with = "opt_reason_name")]
    pub would_deny: Option<Reason>,
}

fn reason_name<S: serde::Serializer>(r: &Reason, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.name())
}

fn opt_reason_name<S: serde::Serializer>(r: &Option<Reason>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        Some(r) => s.serialize_some(r.name()),
        None => s.serialize_none(),
    }
}

impl Verdict {
    fn new(action: Action, reason: Reason, rule: Option<u32>) -> Self {
        Self {
            action,
            reason,
            rule,
            would_deny: None,
        }
    }

    /// A datagram's verdict (`policy::containment`): no entry decides it.
    pub fn datagram(action: Action, reason: Reason) -> Self {
        Verdict::new(action, reason, None)
    }

    /// A name the proxy allowed that the name to address binding refused (`policy::bind`),
    /// naming the entry that admitted the name. Audit mode still applies ([`Verdict::audited`]).
    pub fn refused(reason: Reason, rule: Option<u32>) -> Self {
        Verdict::new(Action::Deny, reason, rule)
    }

    /// The same verdict where no peek proxy runs: a hand-off becomes a denial.
    pub fn without_proxy(self) -> Self {
        match self.action {
            Action::Proxy => Verdict::new(Action::Deny, Reason::DomainNoProxy, self.rule),
            _ => self,
        }
    }

    /// Applies audit mode: a denial is let through and remembered.
    pub fn audited(self, audit: bool) -> Self {
        if audit && self.action == Action::Deny {
            Verdict {
                action: Action::Allow,
                reason: Reason::Audit,
                rule: self.rule,
                would_deny: Some(self.reason),
            }
        } else {
            self
        }
    }
}

/// What the peek proxy read from the client's first bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "protocol", content = "name")]
pub enum Peeked {
    /// A TLS ClientHello, with its SNI if it had one.
    Tls(Option<String>),
    /// An HTTP/1.x request head, with its Host if it had one.
    Http1(Option<String>),
    /// An HTTP/2 prior-knowledge connection, with the first request's `:authority`.
    Http2(Option<String>),
    /// Bytes of no protocol a Domain entry can match.
    Unknown,
}

/// The address a destination is judged as: an IPv4-mapped IPv6 address is its IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Loopback and the unspecified address (which Linux connects to the local host).
pub fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

/// Decides a connect from a workload with policy `c` to `dest`, given what the peek proxy
/// read (`None`: the kernel's view, before any byte is sent).
pub fn decide(
    c: &CompiledPolicy,
    ex: &Exemptions,
    dest: SocketAddr,
    peek: Option<&Peeked>,
) -> Verdict {
    decide_unaudited(c, ex, dest, peek).audited(c.audit)
}

fn decide_unaudited(
    c: &CompiledPolicy,
    ex: &Exemptions,
    dest: SocketAddr,
    peek: Option<&Peeked>,
) -> Verdict {
    let ip = canonical(dest.ip());
    let port = dest.port();
    if is_local(ip) {
        return Verdict::new(Action::Allow, Reason::Loopback, None);
    }
    if ex.covers(ip) {
        return Verdict::new(Action::Allow, Reason::MeshCidr, None);
    }
    match c.mode {
        EffectiveMode::Unfiltered => return Verdict::new(Action::Allow, Reason::Unfiltered, None),
        EffectiveMode::All => return Verdict::new(Action::Allow, Reason::ModeAll, None),
        EffectiveMode::None => return Verdict::new(Action::Deny, Reason::ModeNone, None),
        EffectiveMode::Matched => {}
    }
    if let Some(v) = ip_verdict(c, ip, port) {
        return v;
    }
    // An IP miss falls through to the Domain entries of this port (or of any port).
    let candidates: Vec<&DomainRule> = [port, PORT_ANY]
        .iter()
        .filter_map(|p| c.domains.get(p))
        .flatten()
        .collect();
    let Some(first) = candidates.first() else {
        return Verdict::new(Action::Deny, Reason::NoMatch, None);
    };
    let Some(peek) = peek else {
        return Verdict::new(Action::Proxy, Reason::ToProxy, Some(first.rule));
    };
    match domain_match(&candidates, peek) {
        Some(rule) => Verdict::new(Action::Allow, Reason::DomainEntry, Some(rule)),
        None => Verdict::new(Action::Deny, Reason::DomainNoMatch, None),
    }
}

/// Step 3: exact entries before CIDRs, the destination's own port before any port.
fn ip_verdict(c: &CompiledPolicy, ip: IpAddr, port: u16) -> Option<Verdict> {
    let t = &c.tables;
    let hit = |reason, rule| Some(Verdict::new(Action::Allow, reason, Some(rule)));
    match ip {
        IpAddr::V4(a) => {
            for p in [port, PORT_ANY] {
                if let Some(r) = t.exact_v4_rule(a, p) {
                    return hit(Reason::IpEntry, r);
                }
            }
            for p in [port, PORT_ANY] {
                if let Some(r) = t.longest_v4(a, p) {
                    return hit(Reason::CidrEntry, r);
                }
            }
        }
        IpAddr::V6(a) => {
            for p in [port, PORT_ANY] {
                if let Some(r) = t.exact_v6_rule(a, p) {
                    return hit(Reason::IpEntry, r);
                }
            }
            for p in [port, PORT_ANY] {
                if let Some(r) = t.longest_v6(a, p) {
                    return hit(Reason::CidrEntry, r);
                }
            }
        }
    }
    None
}

/// The host part of an HTTP `Host` / `:authority` value, normalised.
pub fn host_name(authority: &str) -> String {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => a,
        }
    };
    normalize_name(host)
}

/// The host a client named, normalised as Domain entries are matched: the SNI, or the host
/// part of `Host` / `:authority`. `None` when it sent none.
pub fn peeked_host(peek: &Peeked) -> Option<String> {
    match peek {
        Peeked::Tls(sni) => sni.as_deref().map(normalize_name),
        Peeked::Http1(host) | Peeked::Http2(host) => host.as_deref().map(host_name),
        Peeked::Unknown => None,
    }
}

/// The most specific Domain rule that admits what the client sent: an exact name before the
/// longest `*.` suffix before `*`, the port's own rules before port-less ones.
fn domain_match(candidates: &[&DomainRule], peek: &Peeked) -> Option<u32> {
    let accepts: fn(NameProtocol) -> bool = match peek {
        Peeked::Tls(_) => |p| p == NameProtocol::Tls,
        Peeked::Http1(_) => |p| p == NameProtocol::Http,
        Peeked::Http2(_) => |p| matches!(p, NameProtocol::Http2 | NameProtocol::Grpc),
        Peeked::Unknown => return None,
    };
    let name = peeked_host(peek);
    let specificity = |p: &NamePattern| match p {
        NamePattern::Exact(_) => usize::MAX,
        NamePattern::Subdomains(s) => s.len() + 1,
        NamePattern::Any => 0,
    };
    let mut best: Option<(usize, u32)> = None;
    for r in candidates {
        if accepts(r.protocol) && r.pattern.matches(name.as_deref()) {
            let s = specificity(&r.pattern);
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, r.rule));
            }
        }
    }
    best.map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{
        compile::compile,
        merge::{Merged, MergedEntry, Mode, PolicyRef},
        model::{Match, Source},
    };

    fn policy(mode: Mode, entries: &[(&str, &str, Option<u32>, &str)]) -> CompiledPolicy {
        let entries = entries
            .iter()
            .enumerate()
            .map(|(i, (kind, value, port, protocol))| MergedEntry {
                policy: PolicyRef {
                    name: "p".into(),
                    source: Source::file("t", 0),
                }
                .into(),
                index: i,
                entry: Match {
                    kind: (*kind).into(),
                    value: (*value).into(),
                    port: *port,
                    protocol: (*protocol).into(),
                },
            })
            .collect();
        compile(&Merged {
            policies: vec![],
            mode: Some(mode),
            mode_from: None,
            entries,
            audit: false,
            kuma: crate::policy::kuma::KumaVersion::V2,
        })
        .expect("compile")
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn none() -> Exemptions {
        Exemptions::default()
    }

    fn act(c: &CompiledPolicy, dest: &str) -> (Action, Reason, Option<u32>) {
        let v = decide(c, &none(), sa(dest), None);
        (v.action, v.reason, v.rule)
    }

    #[test]
    fn mode_none_denies_and_all_allows() {
        let c = policy(Mode::None, &[("IP", "198.51.100.1", None, "tcp")]);
        assert_eq!(act(&c, "198.51.100.1:80").1, Reason::ModeNone);
        let c = policy(Mode::All, &[]);
        assert_eq!(act(&c, "203.0.113.9:80").0, Action::Allow);
    }

    #[test]
    fn matched_without_entries_denies() {
        let c = policy(Mode::Matched, &[]);
        assert_eq!(
            act(&c, "203.0.113.9:443"),
            (Action::Deny, Reason::NoMatch, None)
        );
    }

    #[test]
    fn ip_entry_with_port_allows_only_that_port() {
        let c = policy(Mode::Matched, &[("IP", "198.51.100.10", Some(443), "tcp")]);
        assert_eq!(
            act(&c, "198.51.100.10:443"),
            (Action::Allow, Reason::IpEntry, Some(0))
        );
        assert_eq!(act(&c, "198.51.100.10:80").0, Action::Deny);
        assert_eq!(act(&c, "198.51.100.11:443").0, Action::Deny);
    }

    #[test]
    fn portless_cidr_allows_every_port_and_longest_prefix_names_the_rule() {
        let c = policy(
            Mode::Matched,
            &[
                ("CIDR", "203.0.113.0/24", None, "tcp"),
                ("CIDR", "203.0.113.128/25", None, "tcp"),
            ],
        );
        assert_eq!(
            act(&c, "203.0.113.200:1"),
            (Action::Allow, Reason::CidrEntry, Some(1))
        );
        assert_eq!(
            act(&c, "203.0.113.5:65535"),
            (Action::Allow, Reason::CidrEntry, Some(0))
        );
        assert_eq!(act(&c, "198.51.100.5:80").0, Action::Deny);
    }

    #[test]
    fn ipv6_and_ipv4_mapped_destinations() {
        let c = policy(
            Mode::Matched,
            &[
                ("IP", "2001:db8::10", Some(80), "tcp"),
                ("IP", "198.51.100.10", Some(80), "tcp"),
            ],
        );
        assert_eq!(act(&c, "[2001:db8::10]:80").1, Reason::IpEntry);
        assert_eq!(
            act(&c, "[::ffff:198.51.100.10]:80"),
            (Action::Allow, Reason::IpEntry, Some(1))
        );
        assert_eq!(act(&c, "[::ffff:198.51.100.11]:80").0, Action::Deny);
    }

    #[test]
    fn loopback_unspecified_and_mesh_cidrs_are_always_allowed() {
        let c = policy(Mode::None, &[]);
        assert_eq!(act(&c, "127.0.0.53:53").1, Reason::Loopback);
        assert_eq!(act(&c, "[::1]:80").1, Reason::Loopback);
        assert_eq!(act(&c, "0.0.0.0:80").1, Reason::Loopback);
        let ex = Exemptions {
            mesh_cidrs: vec!["10.0.0.0/8".parse().expect("net")],
        };
        assert_eq!(
            decide(&c, &ex, sa("10.1.2.3:80"), None).reason,
            Reason::MeshCidr
        );
        assert_eq!(
            decide(&c, &ex, sa("[::ffff:10.1.2.3]:80"), None).reason,
            Reason::MeshCidr
        );
    }

    #[test]
    fn ip_miss_falls_through_to_domain_entries_of_the_same_port() {
        let c = policy(
            Mode::Matched,
            &[
                ("IP", "198.51.100.10", Some(443), "tcp"),
                ("Domain", "api.example.com", Some(443), "tls"),
            ],
        );
        assert_eq!(act(&c, "198.51.100.10:443").1, Reason::IpEntry);
        assert_eq!(
            act(&c, "198.51.100.99:443"),
            (Action::Proxy, Reason::ToProxy, Some(1))
        );
        assert_eq!(act(&c, "198.51.100.99:80").0, Action::Deny);
        let v = decide(&c, &none(), sa("198.51.100.99:443"), None).without_proxy();
        assert_eq!((v.action, v.reason), (Action::Deny, Reason::DomainNoProxy));
    }

    #[test]
    fn names_decide_after_the_peek() {
        let c = policy(
            Mode::Matched,
            &[
                ("Domain", "*.example.com", Some(443), "tls"),
                ("Domain", "api.example.com", Some(443), "tls"),
                ("Domain", "example.org", None, "http"),
                ("Domain", "grpc.example.org", Some(8080), "grpc"),
            ],
        );
        let d = |dest: &str, p: Peeked| {
            let v = decide(&c, &none(), sa(dest), Some(&p));
            (v.action, v.rule)
        };
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            d("198.51.100.1:443", Peeked::Tls(s("API.example.com."))),
            (Action::Allow, Some(1))
        );
        assert_eq!(
            d("198.51.100.1:443", Peeked::Tls(s("a.b.example.com"))),
            (Action::Allow, Some(0))
        );
        assert_eq!(
            d("198.51.100.1:443", Peeked::Tls(s("example.com"))).0,
            Action::Deny
        );
        assert_eq!(
            d("198.51.100.1:443", Peeked::Tls(s("evilexample.com"))).0,
            Action::Deny
        );
        assert_eq!(d("198.51.100.1:443", Peeked::Tls(None)).0, Action::Deny);
        // An HTTP request on 443 may use the port-less http entry, not the tls ones.
        assert_eq!(
            d("198.51.100.1:443", Peeked::Http1(s("example.org:443"))),
            (Action::Allow, Some(2))
        );
        assert_eq!(
            d("198.51.100.1:443", Peeked::Http1(s("api.example.com"))).0,
            Action::Deny
        );
        assert_eq!(
            d(
                "198.51.100.1:8080",
                Peeked::Http2(s("grpc.example.org:8080"))
            ),
            (Action::Allow, Some(3))
        );
        assert_eq!(d("198.51.100.1:8080", Peeked::Unknown).0, Action::Deny);
    }

    #[test]
    fn host_name_strips_ports_and_brackets() {
        assert_eq!(host_name("Example.COM:8080"), "example.com");
        assert_eq!(host_name("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(host_name("example.com."), "example.com");
    }

    #[test]
    fn audit_turns_a_denial_into_an_allow_that_remembers_why() {
        let mut c = policy(Mode::None, &[]);
        c.audit = true;
        let v = decide(&c, &none(), sa("198.51.100.1:80"), None);
        assert_eq!(v.action, Action::Allow);
        assert_eq!(v.reason, Reason::Audit);
        assert_eq!(v.would_deny, Some(Reason::ModeNone));
    }
}
