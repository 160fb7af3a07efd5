//! From a merged configuration to the tables the kernel and the peek proxy read.
//!
//! Normalisation happens here, once: IPv4-mapped IPv6 values become IPv4, CIDR host bits are
//! cleared, a /32 (/128) CIDR is an exact entry, and entries that normalise to the same key are
//! merged (the first one, in merge order, names the rule). IP and CIDR entries allow a
//! destination whatever their `protocol` (a documented deviation from Kuma, which would also
//! inspect the bytes); Domain entries become per-port name rules for the proxy.

use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

use ipnet::{Ipv4Net, Ipv6Net};
use passthrough_common::{PORT_ANY, mode};
use serde::Serialize;

use super::{
    kuma::KumaVersion,
    merge::{Merged, Mode},
    rules::Rules,
    tables::{Tables, TablesBuilder},
    validate::{parse_cidr, parse_ip},
};

/// What the kernel does for a workload before looking at any entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum EffectiveMode {
    All,
    None,
    Matched,
    /// No policy selects the workload: it is not filtered.
    Unfiltered,
}

impl EffectiveMode {
    pub fn from_merged(mode: Option<Mode>) -> Self {
        match mode {
            Some(Mode::All) => EffectiveMode::All,
            Some(Mode::None) => EffectiveMode::None,
            Some(Mode::Matched) => EffectiveMode::Matched,
            None => EffectiveMode::Unfiltered,
        }
    }

    /// The value the kernel reads ([`passthrough_common::mode`]).
    pub fn kernel(self) -> u8 {
        match self {
            EffectiveMode::All => mode::ALL,
            EffectiveMode::None => mode::NONE,
            EffectiveMode::Matched => mode::MATCHED,
            EffectiveMode::Unfiltered => mode::UNFILTERED,
        }
    }
}

impl fmt::Display for EffectiveMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EffectiveMode::All => "All",
            EffectiveMode::None => "None",
            EffectiveMode::Matched => "Matched",
            EffectiveMode::Unfiltered => "unfiltered (no policy selects it)",
        })
    }
}

/// The application protocol a Domain entry matches a name in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NameProtocol {
    /// TLS ClientHello SNI.
    Tls,
    /// HTTP/1.x `Host`.
    Http,
    /// HTTP/2 `:authority`.
    Http2,
    /// gRPC (HTTP/2) `:authority`.
    Grpc,
}

impl NameProtocol {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "tls" => Some(NameProtocol::Tls),
            "http" => Some(NameProtocol::Http),
            "http2" => Some(NameProtocol::Http2),
            "grpc" => Some(NameProtocol::Grpc),
            _ => None,
        }
    }
}

/// A Domain entry's name pattern, normalised (lower case, no trailing dot).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "name")]
pub enum NamePattern {
    /// Exactly this name.
    Exact(String),
    /// `*.suffix`: any name ending in `.suffix`, at any depth, never `suffix` itself.
    Subdomains(String),
    /// `*`: any name, and no name at all.
    Any,
}

impl NamePattern {
    pub fn parse(value: &str) -> Self {
        let v = normalize_name(value);
        if v == "*" {
            NamePattern::Any
        } else if let Some(suffix) = v.strip_prefix("*.") {
            NamePattern::Subdomains(suffix.to_string())
        } else {
            NamePattern::Exact(v)
        }
    }

    /// Whether a name the client sent (already normalised) matches. `None` is a client that
    /// sent no name, which only `*` admits.
    pub fn matches(&self, name: Option<&str>) -> bool {
        match (self, name) {
            (NamePattern::Any, _) => true,
            (NamePattern::Exact(e), Some(n)) => e == n,
            (NamePattern::Subdomains(s), Some(n)) => n
                .strip_suffix(s.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            (_, None) => false,
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamePattern::Exact(n) => f.write_str(n),
            NamePattern::Subdomains(s) => write!(f, "*.{s}"),
            NamePattern::Any => f.write_str("*"),
        }
    }
}

/// Lower case, without surrounding blanks and without a trailing dot.
pub fn normalize_name(name: &str) -> String {
    let name = name.trim();
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

/// One Domain rule for the proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DomainRule {
    pub pattern: NamePattern,
    pub protocol: NameProtocol,
    /// Index into [`CompiledPolicy::rules`].
    pub rule: u32,
}

/// The compiled policy of one workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledPolicy {
    pub mode: EffectiveMode,
    pub audit: bool,
    /// The merged appendMatch list; map values index into it.
    pub rules: Rules,
    /// The kernel's tables: IP and CIDR entries, and the ports with Domain entries.
    pub tables: Arc<Tables>,
    /// Domain rules by port ([`PORT_ANY`] for entries without a port), for the proxy.
    pub domains: BTreeMap<u16, Vec<DomainRule>>,
    /// The Kuma the policies were read for: how the peek proxy binds an allowed name
    /// ([`crate::policy::bind::domain_check_for`]).
    pub kuma: KumaVersion,
}

impl CompiledPolicy {
    /// The name pattern of Domain rule `rule` (an index into [`CompiledPolicy::rules`]).
    pub fn domain_pattern(&self, rule: u32) -> Option<&NamePattern> {
        self.domains
            .values()
            .flatten()
            .find(|d| d.rule == rule)
            .map(|d| &d.pattern)
    }
}

/// An entry that validation should have refused; compiling never guesses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{entry}: cannot compile: {reason}")]
pub struct CompileError {
    pub entry: String,
    pub reason: String,
}

/// An IP or CIDR value in its normal form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    V4(Ipv4Net),
    V6(Ipv6Net),
}

/// Normalises an IP or CIDR entry value: IPv4-mapped IPv6 becomes IPv4 (a v6 CIDR counts as
/// IPv4 only when it lies inside `::ffff:0:0/96`), host bits are cleared.
pub fn normalize_net(kind: &str, value: &str) -> Option<Net> {
    let (addr, prefix) = match kind {
        "IP" => {
            let a = parse_ip(value)?;
            let p = if a.is_ipv4() { 32 } else { 128 };
            (a, p)
        }
        "CIDR" => parse_cidr(value)?,
        _ => return None,
    };
    match addr {
        IpAddr::V4(a) => Ipv4Net::new(a, prefix).ok().map(|n| Net::V4(n.trunc())),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) if prefix >= 96 => Ipv4Net::new(v4, prefix - 96)
                .ok()
                .map(|n| Net::V4(n.trunc())),
            _ => Ipv6Net::new(a, prefix).ok().map(|n| Net::V6(n.trunc())),
        },
    }
}

/// Compiles a merged configuration.
pub fn compile(merged: &Merged) -> Result<CompiledPolicy, CompileError> {
    let mode = EffectiveMode::from_merged(merged.mode);
    let mut c = CompiledPolicy {
        mode,
        audit: merged.audit,
        rules: merged.entries.clone(),
        tables: Arc::default(),
        domains: BTreeMap::new(),
        kuma: merged.kuma,
    };
    // Outside Matched, Kuma ignores appendMatch, and so does the kernel.
    if mode != EffectiveMode::Matched {
        return Ok(c);
    }
    let mut t = TablesBuilder::default();
    for (i, e) in merged.entries.iter().enumerate() {
        let rule = u32::try_from(i).map_err(|_| CompileError {
            entry: e.to_string(),
            reason: "more than 2^32 entries".into(),
        })?;
        let bad = |reason: &str| CompileError {
            entry: e.to_string(),
            reason: reason.to_string(),
        };
        let port = match e.entry.port {
            None => PORT_ANY,
            Some(p) => u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("port must be 1-65535"))?,
        };
        match e.entry.kind.as_str() {
            "IP" | "CIDR" => {
                let net = normalize_net(&e.entry.kind, &e.entry.value)
                    .ok_or_else(|| bad("not an IP address or CIDR"))?;
                match net {
                    Net::V4(n) if n.prefix_len() == 32 => t.exact_v4(n.addr(), port, rule),
                    Net::V4(n) => t.cidr_v4(port, n, rule),
                    Net::V6(n) if n.prefix_len() == 128 => t.exact_v6(n.addr(), port, rule),
                    Net::V6(n) => t.cidr_v6(port, n, rule),
                }
            }
            "Domain" => {
                let protocol = NameProtocol::parse(&e.entry.protocol)
                    .ok_or_else(|| bad("a Domain entry needs protocol tls, http, http2 or grpc"))?;
                let pattern = NamePattern::parse(&e.entry.value);
                let rules = c.domains.entry(port).or_default();
                if !rules
                    .iter()
                    .any(|r| r.pattern == pattern && r.protocol == protocol)
                {
                    rules.push(DomainRule {
                        pattern,
                        protocol,
                        rule,
                    });
                }
            }
            _ => return Err(bad("type must be Domain, IP or CIDR")),
        }
    }
    for (&port, rules) in &c.domains {
        if let Some(first) = rules.first() {
            t.domain_port(port, first.rule);
        }
    }
    c.tables = Arc::new(t.build());
    Ok(c)
}

impl CompiledPolicy {
    /// Number of kernel map entries this policy takes.
    pub fn kernel_entries(&self) -> usize {
        self.tables.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use passthrough_common::{CidrV4Data, ExactV4Key};

    use super::*;
    use crate::policy::{
        merge::{MergedEntry, PolicyRef},
        model::{Match, Source},
    };

    fn entry(kind: &str, value: &str, port: Option<u32>, protocol: &str) -> MergedEntry {
        MergedEntry {
            policy: PolicyRef {
                name: "p".into(),
                source: Source::file("t.yaml", 0),
            }
            .into(),
            index: 0,
            entry: Match {
                kind: kind.into(),
                value: value.into(),
                port,
                protocol: protocol.into(),
            },
        }
    }

    fn merged(mode: Mode, entries: Vec<MergedEntry>) -> Merged {
        Merged {
            policies: vec![],
            mode: Some(mode),
            mode_from: None,
            entries: entries.into_iter().collect(),
            audit: false,
            kuma: crate::policy::kuma::KumaVersion::V2,
        }
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().expect("v4")
    }

    #[test]
    fn ipv4_mapped_ipv6_ip_is_compiled_as_ipv4() {
        let c = compile(&merged(
            Mode::Matched,
            vec![entry("IP", "::ffff:198.51.100.7", Some(443), "tcp")],
        ))
        .expect("compile");
        assert_eq!(c.tables.exact_v4_rule(v4("198.51.100.7"), 443), Some(0));
        assert!(c.tables.exact_v6.is_empty());
    }

    #[test]
    fn ipv4_mapped_cidr_becomes_ipv4_cidr_but_wider_v6_cidr_stays_v6() {
        let c = compile(&merged(
            Mode::Matched,
            vec![
                entry("CIDR", "::ffff:198.51.100.0/120", None, "tcp"),
                entry("CIDR", "::/0", None, "tcp"),
            ],
        ))
        .expect("compile");
        let n: Ipv4Net = "198.51.100.0/24".parse().expect("net");
        assert_eq!(c.tables.cidr_v4, vec![((PORT_ANY, n), 0)]);
        let all: Ipv6Net = "::/0".parse().expect("net");
        assert_eq!(c.tables.cidr_v6, vec![((PORT_ANY, all), 1)]);
    }

    #[test]
    fn cidr_host_bits_are_cleared_and_duplicates_merge_to_first_rule() {
        let c = compile(&merged(
            Mode::Matched,
            vec![
                entry("CIDR", "10.0.0.7/24", Some(80), "tcp"),
                entry("CIDR", "10.0.0.0/24", Some(80), "tls"),
            ],
        ))
        .expect("compile");
        let n: Ipv4Net = "10.0.0.0/24".parse().expect("net");
        assert_eq!(c.tables.cidr_v4, vec![((80, n), 0)]);
    }

    #[test]
    fn host_cidr_and_ip_are_one_exact_entry() {
        let c = compile(&merged(
            Mode::Matched,
            vec![
                entry("CIDR", "1.2.3.4/32", Some(80), "tcp"),
                entry("IP", "1.2.3.4", Some(80), "tcp"),
                entry("CIDR", "2001:db8::1/128", None, "tcp"),
                entry("IP", "2001:db8::1", None, "tls"),
            ],
        ))
        .expect("compile");
        assert_eq!(c.tables.exact_v4.len(), 1);
        assert!(c.tables.cidr_v4.is_empty());
        assert_eq!(c.tables.exact_v6.len(), 1);
        assert!(c.tables.cidr_v6.is_empty());
    }

    #[test]
    fn modes_other_than_matched_compile_no_entries() {
        for mode in [Mode::All, Mode::None] {
            let c =
                compile(&merged(mode, vec![entry("IP", "1.2.3.4", None, "tcp")])).expect("compile");
            assert_eq!(c.kernel_entries(), 0);
        }
    }

    #[test]
    fn domains_are_normalised_and_grouped_by_port() {
        let c = compile(&merged(
            Mode::Matched,
            vec![
                entry("Domain", "API.Example.com.", Some(443), "tls"),
                entry("Domain", "api.example.com", Some(443), "tls"),
                entry("Domain", "*.example.com", Some(443), "tls"),
                entry("Domain", "example.com", None, "http"),
            ],
        ))
        .expect("compile");
        let r443 = &c.domains[&443];
        assert_eq!(r443.len(), 2);
        assert_eq!(
            r443[0].pattern,
            NamePattern::Exact("api.example.com".into())
        );
        assert_eq!(
            r443[1].pattern,
            NamePattern::Subdomains("example.com".into())
        );
        assert_eq!(c.domains[&PORT_ANY][0].protocol, NameProtocol::Http);
    }

    #[test]
    fn wildcard_matches_any_depth_but_not_apex_or_lookalike() {
        let p = NamePattern::parse("*.example.com");
        assert!(p.matches(Some("a.example.com")));
        assert!(p.matches(Some("a.b.example.com")));
        assert!(!p.matches(Some("example.com")));
        assert!(!p.matches(Some("evilexample.com")));
        assert!(!p.matches(Some(".example.com")));
        assert!(!p.matches(None));
        assert!(NamePattern::Any.matches(None));
    }

    #[test]
    fn lpm_keys_put_the_port_before_the_prefix() {
        let c = compile(&merged(
            Mode::Matched,
            vec![entry("CIDR", "203.0.113.0/24", Some(8080), "tcp")],
        ))
        .expect("compile");
        let (prefix, data, value) = c.tables.cidr_v4_entries().next().expect("entry");
        assert_eq!(prefix, 16 + 24);
        assert_eq!(data, CidrV4Data::new(8080, [203, 0, 113, 0]));
        assert_eq!(value.rule, 0);
        let c = compile(&merged(
            Mode::Matched,
            vec![entry("IP", "198.51.100.1", None, "tcp")],
        ))
        .expect("compile");
        let (key, _) = c.tables.exact_v4_entries().next().expect("entry");
        assert_eq!(
            key,
            ExactV4Key {
                port: PORT_ANY,
                _pad: 0,
                addr: [198, 51, 100, 1]
            }
        );
    }

    #[test]
    fn domain_ports_are_kernel_entries() {
        let c = compile(&merged(
            Mode::Matched,
            vec![
                entry("Domain", "a.example", Some(443), "tls"),
                entry("Domain", "b.example", None, "http"),
            ],
        ))
        .expect("compile");
        assert_eq!(c.tables.domain_ports, vec![(PORT_ANY, 1), (443, 0)]);
    }
}
