//! Kuma's validation of one MeshPassthrough (spec §b), with Kuma's field paths, messages and
//! order, and the two deliberate changes of semantics.md (an order-independent same-port
//! rule; cross-policy conflicts are found in `merge`).
//!
//! The address and name checks reproduce the Go functions Kuma calls (`net.ParseIP`,
//! `net.ParseCIDR`, govalidator's `IsDNSName`), because their edge cases decide what is valid.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::OnceLock,
};

use regex::Regex;

use super::{
    Violation,
    model::{Conf, Format, Match, Policy, Spec, TargetRef},
};

const PROTOCOLS: [&str; 6] = ["tcp", "tls", "grpc", "http", "http2", "mysql"];
const L7: [&str; 3] = ["grpc", "http", "http2"];
const MODES: [&str; 3] = ["All", "Matched", "None"];
const PROXY_TYPES: [&str; 2] = ["Sidecar", "Gateway"];

/// Every violation of a policy: its name, the schema enums Kuma's CRD enforces, then Kuma's
/// validator.
pub fn validate(policy: &Policy) -> Vec<Violation> {
    let mut out = Vec::new();
    let name_field = match policy.format {
        Format::Kubernetes => "metadata.name",
        Format::Universal => "name",
    };
    if policy.name.is_empty() {
        out.push(Violation::new(name_field, "must be defined"));
    } else if policy.format == Format::Kubernetes && !is_dns1123_subdomain(&policy.name) {
        out.push(Violation::new(
            name_field,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ));
    }
    if let Some(mode) = &policy.spec.default.passthrough_mode
        && !MODES.contains(&mode.as_str())
    {
        out.push(Violation::new(
            "spec.default.passthroughMode",
            format!("unsupported value {mode:?}: must be one of \"All\", \"Matched\", \"None\""),
        ));
    }
    if let Some(types) = policy
        .spec
        .target_ref
        .as_ref()
        .and_then(|t| t.proxy_types.as_ref())
    {
        for (i, t) in types.iter().enumerate() {
            if !PROXY_TYPES.contains(&t.as_str()) {
                out.push(Violation::new(
                    format!("spec.targetRef.proxyTypes[{i}]"),
                    format!("unsupported value {t:?}: must be one of \"Sidecar\", \"Gateway\""),
                ));
            }
        }
    }
    out.extend(validate_spec(&policy.spec));
    out
}

/// Kuma's Go validator alone (what Kuma's own validator tests exercise): targetRef, then
/// the default configuration.
pub fn validate_spec(spec: &Spec) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Some(tr) = &spec.target_ref {
        out.extend(validate_target_ref(tr));
    }
    out.extend(validate_conf(&spec.default));
    out
}

fn validate_target_ref(tr: &TargetRef) -> Vec<Violation> {
    let mut out = Vec::new();
    let at = |field: &str| format!("spec.targetRef.{field}");
    if tr.kind.is_empty() {
        out.push(Violation::new(at("kind"), "must be defined"));
        return out;
    }
    if !["Mesh", "MeshSubset", "Dataplane"].contains(&tr.kind.as_str()) {
        out.push(Violation::new(
            at("kind"),
            format!("value '{}' is not supported", tr.kind),
        ));
        return out;
    }
    let not_with = |out: &mut Vec<Violation>, field: &str, set: bool| {
        if set {
            out.push(Violation::new(
                at(field),
                format!("must not be set with kind {}", tr.kind),
            ));
        }
    };
    let proxy_types = |out: &mut Vec<Violation>| {
        if tr.proxy_types.as_ref().is_some_and(Vec::is_empty) {
            out.push(Violation::new(
                at("proxyTypes"),
                "must be undefined or have at least one element",
            ));
        }
    };
    let section_name = tr.section_name.as_ref().is_some_and(|s| !s.is_empty());
    match tr.kind.as_str() {
        "Mesh" => {
            if tr.name.as_ref().is_some_and(|n| !n.is_empty()) {
                out.push(Violation::new(
                    at("name"),
                    "using name with kind Mesh is not yet supported",
                ));
            }
            not_with(&mut out, "mesh", tr.mesh.is_some());
            not_with(&mut out, "tags", tr.tags.is_some());
            not_with(&mut out, "labels", tr.labels.is_some());
            not_with(&mut out, "namespace", tr.namespace.is_some());
            not_with(&mut out, "sectionName", section_name);
            proxy_types(&mut out);
        }
        "MeshSubset" => {
            not_with(&mut out, "name", tr.name.is_some());
            not_with(&mut out, "mesh", tr.mesh.is_some());
            not_with(&mut out, "labels", tr.labels.is_some());
            not_with(&mut out, "namespace", tr.namespace.is_some());
            not_with(&mut out, "sectionName", section_name);
            out.extend(validate_tags(tr.tags.as_ref()));
            proxy_types(&mut out);
        }
        _ => {
            not_with(&mut out, "tags", tr.tags.is_some());
            not_with(&mut out, "mesh", tr.mesh.is_some());
            not_with(&mut out, "proxyTypes", tr.proxy_types.is_some());
            if tr.labels.is_some() && (tr.name.is_some() || tr.namespace.is_some()) {
                out.push(Violation::new(
                    at("labels"),
                    "either labels or name and namespace must be specified",
                ));
            }
            if section_name {
                out.push(Violation::new(
                    at("sectionName"),
                    "can only be used with inbound policies",
                ));
            }
        }
    }
    out
}

fn validate_tags(tags: Option<&BTreeMap<String, String>>) -> Vec<Violation> {
    static KEY: OnceLock<Regex> = OnceLock::new();
    static VALUE: OnceLock<Regex> = OnceLock::new();
    let key_re = KEY.get_or_init(|| Regex::new(r"^[a-zA-Z0-9.\-_:/]*$").expect("regex"));
    let value_re = VALUE.get_or_init(|| Regex::new(r"^[a-zA-Z0-9.\-_:]*$").expect("regex"));
    let mut out = Vec::new();
    for (k, v) in tags.into_iter().flatten() {
        let field = format!("spec.targetRef.tags[{k:?}]");
        if k.is_empty() {
            out.push(Violation::new(&field, "tag name must be non-empty"));
        } else if !key_re.is_match(k) {
            out.push(Violation::new(
                &field,
                "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
            ));
        }
        if v.is_empty() {
            out.push(Violation::new(&field, "tag value must be non-empty"));
        } else if !value_re.is_match(v) {
            out.push(Violation::new(
                &field,
                "tag value must consist of alphanumeric characters, dots, dashes and underscores",
            ));
        }
    }
    out
}

fn validate_conf(conf: &Conf) -> Vec<Violation> {
    static PARTIAL_WILDCARD: OnceLock<Regex> = OnceLock::new();
    let partial = PARTIAL_WILDCARD.get_or_init(|| Regex::new(r"^\*[^.]+").expect("regex"));
    let mut out = Vec::new();
    // The L7 protocol a port carries (order-independent same-port rule, semantics.md #1).
    let mut l7_of_port: BTreeMap<u32, &str> = BTreeMap::new();
    let mut seen: BTreeSet<(u32, &str, &str)> = BTreeSet::new();
    for (i, m) in conf.append_match.iter().flatten().enumerate() {
        let at = |field: &str| format!("spec.default.appendMatch[{i}].{field}");
        let Match {
            kind,
            value,
            port,
            protocol,
        } = m;
        let protocol = protocol.as_str();
        // 1
        if protocol == "mysql" && port.is_none() {
            out.push(Violation::new(
                at("port"),
                "port must be defined for Mysql protocol",
            ));
        }
        // 2: an absent port is "all ports", not an invalid one.
        if port.is_some_and(|p| p == 0 || p > 65535) {
            out.push(Violation::new(at("port"), "port must be a valid (1-65535)"));
        }
        if let Some(p) = *port {
            // 3: on one port, tcp, tls (and mysql) and at most one of http, http2, grpc.
            if L7.contains(&protocol) {
                match l7_of_port.get(&p) {
                    Some(first) if *first != protocol => out.push(Violation::new(
                        at("port"),
                        "using the same port in multiple matches requires the same protocol for the following protocols: [grpc http http2]",
                    )),
                    Some(_) => {}
                    None => {
                        l7_of_port.insert(p, protocol);
                    }
                }
            }
            // 4: exact, case-sensitive value per (port, protocol).
            if !seen.insert((p, protocol, value.as_str())) {
                out.push(Violation::new(
                    at("value"),
                    format!("value {value} is already defiend for this port and protocol"),
                ));
            }
        }
        // 5
        if !PROTOCOLS.contains(&protocol) {
            out.push(Violation::new(
                at("protocol"),
                r#""protocol" must be one of ["tcp", "tls", "grpc", "http", "http2", "mysql"]"#,
            ));
        }
        match kind.as_str() {
            // 6
            "CIDR" if parse_cidr(value).is_none() => out.push(Violation::new(
                at("value"),
                "provided CIDR has incorrect value",
            )),
            // 7
            "IP" if parse_ip(value).is_none() => out.push(Violation::new(
                at("value"),
                "provided IP has incorrect value",
            )),
            "Domain" => {
                // 8
                if protocol == "tcp" || protocol == "mysql" {
                    out.push(Violation::new(
                        at("protocol"),
                        format!("protocol {protocol} is not supported for a domain"),
                    ));
                }
                // 9
                if partial.is_match(value) {
                    out.push(Violation::new(
                        at("value"),
                        "provided DNS has incorrect value, partial wildcard is currently not supported",
                    ));
                }
                // 10
                if port.is_none() && value.starts_with('*') && L7.contains(&protocol) {
                    out.push(Violation::new(
                        at("port"),
                        "wildcard domains doesn't work for all ports and layer 7 protocol",
                    ));
                }
                // 11: a leading `*.` is stripped; what still starts with `*` is left to rule 9.
                let name = value.strip_prefix("*.").unwrap_or(value);
                if !name.starts_with('*') && !is_dns_name(name) {
                    out.push(Violation::new(at("value"), "provided DNS has incorrect value"));
                }
            }
            "CIDR" | "IP" => {}
            // 12
            other => out.push(Violation::new(
                at("type"),
                format!(
                    "provided type {other} is not supported, one of Domain, IP, or CIDR is supported"
                ),
            )),
        }
    }
    out
}

/// Go's `net.ParseIP`: dotted-quad IPv4 without leading zeros, or any IPv6 form (including
/// an embedded dotted IPv4), no zone, no prefix.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    if s.contains(':') {
        s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        // Rust's parser, like Go's since 1.17, refuses octets with leading zeros.
        s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// Go's `net.ParseCIDR`: an address (as [`parse_ip`]), `/`, and a decimal prefix length
/// within the family's bits. Host bits may be set.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, bits) = s.split_once('/')?;
    let ip = parse_ip(addr)?;
    if bits.is_empty() || bits.len() > 3 || !bits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u8 = bits.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (n <= max).then_some((ip, n))
}

/// govalidator's `IsDNSName`, the version Kuma pins.
pub fn is_dns_name(s: &str) -> bool {
    static DNS: OnceLock<Regex> = OnceLock::new();
    let re = DNS.get_or_init(|| {
        Regex::new(
            r"^([a-zA-Z0-9_]{1}[a-zA-Z0-9_-]{0,62}){1}(\.[a-zA-Z0-9_]{1}[a-zA-Z0-9_-]{0,62})*[\._]?$",
        )
        .expect("regex")
    });
    if s.is_empty() || s.replace('.', "").len() > 255 || parse_ip(s).is_some() {
        return false;
    }
    re.is_match(s)
}

/// A Kubernetes object name: lower-case alphanumerics, `-` and `.`, starting and ending
/// with an alphanumeric, at most 253 characters.
fn is_dns1123_subdomain(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.len() <= 253
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load::parse_spec;

    /// Validates a spec written as YAML (the Go validator only, as Kuma's tests do).
    fn check(yaml: &str) -> Vec<String> {
        let spec = parse_spec(yaml).expect("spec parses");
        validate_spec(&spec)
            .into_iter()
            .map(|v| format!("{}: {}", v.field, v.message))
            .collect()
    }

    /// Validates one appendMatch list written in flow style.
    fn matches(list: &str) -> Vec<String> {
        check(&format!("default:\n  appendMatch: {list}\n"))
    }

    fn one(list: &str) -> String {
        let v = matches(list);
        assert_eq!(v.len(), 1, "{v:?}");
        v[0].clone()
    }

    const SAME_PORT: &str = "using the same port in multiple matches requires the same protocol for the following protocols: [grpc http http2]";

    // Kuma's conformance cases, rewritten from the rules as our own data files.

    #[test]
    fn kuma_valid_case_has_no_violations() {
        assert_eq!(
            check(include_str!("testdata/valid.yaml")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn kuma_full_invalid_case_yields_exactly_kumas_violations() {
        let got = check(include_str!("testdata/full-invalid.yaml"));
        let want: Vec<String> = include_str!("testdata/full-invalid.expected")
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        assert_eq!(got, want);
    }

    // One case per appendMatch rule (§b.2).

    #[test]
    fn rule1_mysql_needs_a_port() {
        assert_eq!(
            one("[{type: IP, value: 172.1.1.1, protocol: mysql}]"),
            "spec.default.appendMatch[0].port: port must be defined for Mysql protocol"
        );
    }

    #[test]
    fn rule2_port_zero_and_above_65535_are_out_of_range_but_absent_is_fine() {
        let msg = "spec.default.appendMatch[0].port: port must be a valid (1-65535)";
        assert_eq!(one("[{type: IP, value: 1.1.1.1, port: 0}]"), msg);
        assert_eq!(one("[{type: IP, value: 1.1.1.1, port: 65536}]"), msg);
        assert!(matches("[{type: IP, value: 1.1.1.1, port: 65535}]").is_empty());
        assert!(matches("[{type: IP, value: 1.1.1.1}]").is_empty());
    }

    #[test]
    fn rule3_second_l7_protocol_on_a_port_is_refused_in_any_order() {
        assert_eq!(
            one(
                "[{type: Domain, value: a.com, port: 80, protocol: http}, {type: Domain, value: b.com, port: 80, protocol: grpc}]"
            ),
            format!("spec.default.appendMatch[1].port: {SAME_PORT}")
        );
        // Deliberate change: tcp and tls may share a port with one L7 protocol, in any order.
        assert!(matches("[{type: IP, value: 1.1.1.1, port: 80, protocol: tcp}, {type: Domain, value: a.com, port: 80, protocol: http}]").is_empty());
        assert!(matches("[{type: Domain, value: a.com, port: 80, protocol: http}, {type: IP, value: 1.1.1.1, port: 80, protocol: tcp}]").is_empty());
    }

    #[test]
    fn rule4_duplicate_value_for_port_and_protocol_with_kumas_typo() {
        assert_eq!(
            one(
                "[{type: Domain, value: g.com, port: 10, protocol: http}, {type: Domain, value: g.com, port: 10, protocol: http}]"
            ),
            "spec.default.appendMatch[1].value: value g.com is already defiend for this port and protocol"
        );
        // Another protocol or port is another key.
        assert!(matches("[{type: Domain, value: g.com, port: 10, protocol: http}, {type: Domain, value: g.com, port: 11, protocol: http}]").is_empty());
    }

    #[test]
    fn rule5_protocol_must_be_known_and_lower_case() {
        let msg = r#"spec.default.appendMatch[0].protocol: "protocol" must be one of ["tcp", "tls", "grpc", "http", "http2", "mysql"]"#;
        assert_eq!(one("[{type: IP, value: 1.1.1.1, protocol: udp}]"), msg);
        assert_eq!(one("[{type: IP, value: 1.1.1.1, protocol: TCP}]"), msg);
        assert_eq!(one("[{type: IP, value: 1.1.1.1, protocol: ''}]"), msg);
    }

    #[test]
    fn rule6_cidr_needs_a_prefix() {
        assert_eq!(
            one("[{type: CIDR, value: 10.0.0.0}]"),
            "spec.default.appendMatch[0].value: provided CIDR has incorrect value"
        );
        assert!(matches("[{type: CIDR, value: 10.0.0.1/8}]").is_empty());
        assert!(matches("[{type: CIDR, value: '::/0'}]").is_empty());
    }

    #[test]
    fn rule7_ip_must_parse_as_go_does() {
        assert_eq!(
            one("[{type: IP, value: 2001:db8::1/128}]"),
            "spec.default.appendMatch[0].value: provided IP has incorrect value"
        );
    }

    #[test]
    fn rule8_domain_cannot_use_tcp_or_mysql() {
        assert_eq!(
            one("[{type: Domain, value: a.com, port: 1, protocol: tcp}]"),
            "spec.default.appendMatch[0].protocol: protocol tcp is not supported for a domain"
        );
        assert_eq!(
            one("[{type: Domain, value: a.com, port: 1, protocol: mysql}]"),
            "spec.default.appendMatch[0].protocol: protocol mysql is not supported for a domain"
        );
    }

    #[test]
    fn rule9_partial_wildcards_are_refused() {
        let msg = "spec.default.appendMatch[0].value: provided DNS has incorrect value, partial wildcard is currently not supported";
        assert_eq!(
            one("[{type: Domain, value: '*w.example.com', port: 1, protocol: tls}]"),
            msg
        );
        assert_eq!(
            one("[{type: Domain, value: '**.example.com', port: 1, protocol: tls}]"),
            msg
        );
    }

    #[test]
    fn rule10_wildcard_l7_domain_needs_a_port() {
        assert_eq!(
            one("[{type: Domain, value: '*.example.com', protocol: http}]"),
            "spec.default.appendMatch[0].port: wildcard domains doesn't work for all ports and layer 7 protocol"
        );
        assert!(matches("[{type: Domain, value: '*.example.com', protocol: tls}]").is_empty());
    }

    #[test]
    fn rule11_domain_must_be_a_dns_name_after_the_wildcard() {
        let msg = "spec.default.appendMatch[0].value: provided DNS has incorrect value";
        assert_eq!(
            one("[{type: Domain, value: '*.hello@world', port: 443, protocol: tls}]"),
            msg
        );
        assert_eq!(
            one("[{type: Domain, value: '*.', port: 443, protocol: tls}]"),
            msg
        );
        assert_eq!(
            one("[{type: Domain, value: 'a.*.com', port: 443, protocol: tls}]"),
            msg
        );
    }

    #[test]
    fn rule12_type_must_be_domain_ip_or_cidr() {
        assert_eq!(
            one("[{type: Host, value: a.com}]"),
            "spec.default.appendMatch[0].type: provided type Host is not supported, one of Domain, IP, or CIDR is supported"
        );
    }

    // One case per targetRef rule (§b.3).

    #[test]
    fn targetref_kind_must_be_defined_and_supported() {
        assert_eq!(
            check("targetRef: {kind: ''}"),
            ["spec.targetRef.kind: must be defined"]
        );
        assert_eq!(
            check("targetRef: {kind: MeshService, name: x}"),
            ["spec.targetRef.kind: value 'MeshService' is not supported"]
        );
        assert!(check("targetRef: {kind: MeshSubset, tags: {a: b}}").is_empty());
    }

    #[test]
    fn targetref_mesh_takes_no_selectors() {
        assert_eq!(
            check(
                "targetRef: {kind: Mesh, name: x, mesh: m, tags: {a: b}, labels: {a: b}, namespace: n, sectionName: s}"
            ),
            [
                "spec.targetRef.name: using name with kind Mesh is not yet supported",
                "spec.targetRef.mesh: must not be set with kind Mesh",
                "spec.targetRef.tags: must not be set with kind Mesh",
                "spec.targetRef.labels: must not be set with kind Mesh",
                "spec.targetRef.namespace: must not be set with kind Mesh",
                "spec.targetRef.sectionName: must not be set with kind Mesh",
            ]
        );
    }

    #[test]
    fn targetref_empty_proxy_types_are_refused() {
        assert_eq!(
            check("targetRef: {kind: Mesh, proxyTypes: []}"),
            ["spec.targetRef.proxyTypes: must be undefined or have at least one element"]
        );
        assert_eq!(
            check("targetRef: {kind: MeshSubset, proxyTypes: []}"),
            ["spec.targetRef.proxyTypes: must be undefined or have at least one element"]
        );
    }

    #[test]
    fn targetref_dataplane_rules() {
        assert_eq!(
            check("targetRef: {kind: Dataplane, tags: {a: b}, mesh: m, proxyTypes: [Sidecar]}"),
            [
                "spec.targetRef.tags: must not be set with kind Dataplane",
                "spec.targetRef.mesh: must not be set with kind Dataplane",
                "spec.targetRef.proxyTypes: must not be set with kind Dataplane",
            ]
        );
        assert_eq!(
            check("targetRef: {kind: Dataplane, labels: {app: x}, name: y}"),
            ["spec.targetRef.labels: either labels or name and namespace must be specified"]
        );
        assert_eq!(
            check("targetRef: {kind: Dataplane, sectionName: http}"),
            ["spec.targetRef.sectionName: can only be used with inbound policies"]
        );
    }

    #[test]
    fn targetref_meshsubset_takes_only_tags() {
        assert_eq!(
            check(
                "targetRef: {kind: MeshSubset, name: x, mesh: m, labels: {a: b}, namespace: n, sectionName: s}"
            ),
            [
                "spec.targetRef.name: must not be set with kind MeshSubset",
                "spec.targetRef.mesh: must not be set with kind MeshSubset",
                "spec.targetRef.labels: must not be set with kind MeshSubset",
                "spec.targetRef.namespace: must not be set with kind MeshSubset",
                "spec.targetRef.sectionName: must not be set with kind MeshSubset",
            ]
        );
    }

    #[test]
    fn targetref_tag_names_and_values() {
        assert_eq!(
            check("targetRef: {kind: MeshSubset, tags: {'a b': 'c', ok: '', k: 'v/w'}}"),
            [
                "spec.targetRef.tags[\"a b\"]: tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
                "spec.targetRef.tags[\"k\"]: tag value must consist of alphanumeric characters, dots, dashes and underscores",
                "spec.targetRef.tags[\"ok\"]: tag value must be non-empty",
            ]
        );
        assert_eq!(
            check("targetRef: {kind: MeshSubset, tags: {'': v}}"),
            ["spec.targetRef.tags[\"\"]: tag name must be non-empty"]
        );
    }

    // The derived vectors of §e.4, with the outcome our semantics give.

    #[test]
    fn d1_d2_tcp_then_http_on_one_port_is_valid_in_both_orders() {
        assert!(matches("[{type: IP, value: 1.1.1.1, port: 80, protocol: tcp}, {type: Domain, value: a.com, port: 80, protocol: http}]").is_empty());
        assert!(matches("[{type: Domain, value: a.com, port: 80, protocol: http}, {type: IP, value: 1.1.1.1, port: 80, protocol: tcp}]").is_empty());
    }

    #[test]
    fn d3_d4_tls_and_http_on_one_port_are_valid_in_both_orders() {
        assert!(matches("[{type: Domain, value: a.com, port: 443, protocol: tls}, {type: Domain, value: a.com, port: 443, protocol: http}]").is_empty());
        assert!(matches("[{type: Domain, value: a.com, port: 443, protocol: http}, {type: Domain, value: a.com, port: 443, protocol: tls}]").is_empty());
    }

    #[test]
    fn d5_http_tls_http_on_one_port_is_valid() {
        assert!(matches("[{type: Domain, value: a.com, port: 80, protocol: http}, {type: Domain, value: b.com, port: 80, protocol: tls}, {type: Domain, value: c.com, port: 80, protocol: http}]").is_empty());
    }

    #[test]
    fn d6_to_d9_ports_and_addresses() {
        assert!(matches("[{type: IP, value: 1.1.1.1, port: 65535}]").is_empty());
        assert_eq!(
            matches("[{type: IP, value: 1.1.1.1, port: 65536}]").len(),
            1
        );
        assert!(matches("[{type: IP, value: '::1', port: 80}, {type: CIDR, value: '2001:db8::/32', protocol: tls}]").is_empty());
        assert_eq!(matches("[{type: IP, value: 2001:db8::1/128}]").len(), 1);
        assert_eq!(matches("[{type: CIDR, value: 10.0.0.0}]").len(), 1);
        assert!(matches("[{type: CIDR, value: 10.0.0.1/8}]").is_empty());
    }

    #[test]
    fn d10_to_d15_wildcards() {
        assert!(matches("[{type: Domain, value: '*', protocol: tls}]").is_empty());
        assert_eq!(
            one("[{type: Domain, value: '*', protocol: http}]"),
            "spec.default.appendMatch[0].port: wildcard domains doesn't work for all ports and layer 7 protocol"
        );
        assert!(
            matches("[{type: Domain, value: '*.*.example.com', port: 443, protocol: tls}]")
                .is_empty()
        );
        assert_eq!(
            matches("[{type: Domain, value: '*.', port: 443, protocol: tls}]").len(),
            1
        );
        assert_eq!(
            matches("[{type: Domain, value: '**.example.com', port: 443, protocol: tls}]").len(),
            1
        );
        assert!(matches("[{type: Domain, value: example.com, protocol: http}]").is_empty());
    }

    #[test]
    fn d16_omitted_protocol_defaults_to_tcp_which_a_domain_cannot_use() {
        assert_eq!(
            one("[{type: Domain, value: a.com}]"),
            "spec.default.appendMatch[0].protocol: protocol tcp is not supported for a domain"
        );
    }

    #[test]
    fn d17_d18_undetected_duplicates_stay_valid() {
        assert!(matches("[{type: IP, value: 1.1.1.1}, {type: IP, value: 1.1.1.1}]").is_empty());
        assert!(matches("[{type: Domain, value: A.com, port: 80, protocol: http}, {type: Domain, value: a.com, port: 80, protocol: http}]").is_empty());
    }

    #[test]
    fn d19_d20_dns_names() {
        assert!(matches("[{type: Domain, value: example.com., port: 443, protocol: tls}, {type: Domain, value: ex_ample.com, port: 443, protocol: tls}, {type: Domain, value: localhost, port: 443, protocol: tls}]").is_empty());
        let long = "a".repeat(64);
        for bad in ["-example.com", "a..b", long.as_str()] {
            assert_eq!(
                one(&format!(
                    "[{{type: Domain, value: '{bad}', port: 443, protocol: tls}}]"
                )),
                "spec.default.appendMatch[0].value: provided DNS has incorrect value",
                "{bad}"
            );
        }
    }

    #[test]
    fn d21_mode_all_with_matches_is_valid() {
        assert!(
            check("default: {passthroughMode: All, appendMatch: [{type: IP, value: 1.1.1.1}]}")
                .is_empty()
        );
    }

    #[test]
    fn d22_to_d26_target_refs() {
        assert_eq!(check("targetRef: {kind: MeshService, name: x}").len(), 1);
        assert_eq!(check("targetRef: {kind: Mesh, proxyTypes: []}").len(), 1);
        assert_eq!(
            check("targetRef: {kind: Dataplane, labels: {app: x}, name: y}").len(),
            1
        );
        assert_eq!(
            check("targetRef: {kind: Dataplane, sectionName: http}").len(),
            1
        );
        // D26 is master-only: v2.14, which passthrough follows, accepts MeshSubset.
        assert!(check("targetRef: {kind: MeshSubset, tags: {a: b}}").is_empty());
    }

    #[test]
    fn d27_d28_validator_valid_runtime_cases() {
        // D27: tcp and mysql on one IP and port: valid (they compile to one kernel entry).
        assert!(matches("[{type: IP, value: 1.1.1.1, port: 3306, protocol: tcp}, {type: IP, value: 1.1.1.1, port: 3306, protocol: mysql}]").is_empty());
        // D28: each policy alone is valid; the conflict is found by merge (merge.rs tests).
        assert!(matches("[{type: Domain, value: a.com, port: 8080, protocol: http}]").is_empty());
        assert!(matches("[{type: Domain, value: b.com, port: 8080, protocol: http2}]").is_empty());
    }

    // Schema-level checks of whole policies.

    #[test]
    fn schema_enums_and_names_are_checked_for_whole_policies() {
        use crate::policy::load::{Document, parse_documents};
        let docs = parse_documents(
            "t.yaml",
            "apiVersion: kuma.io/v1alpha1\nkind: MeshPassthrough\nmetadata: {name: Bad_Name}\nspec:\n  targetRef: {kind: Mesh, proxyTypes: [Ingress]}\n  default: {passthroughMode: Some}\n",
        )
        .expect("yaml");
        let Document::Policy(p) = &docs[0] else {
            panic!("parse error")
        };
        let fields: Vec<String> = validate(p).into_iter().map(|v| v.field).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.default.passthroughMode",
                "spec.targetRef.proxyTypes[0]"
            ]
        );
    }

    // The Go parsers' edge cases.

    #[test]
    fn go_ip_parsing_edge_cases() {
        for ok in [
            "1.2.3.4",
            "::ffff:1.2.3.4",
            "::1.2.3.4",
            "2001:db8::1",
            "0001:0::1",
            "::",
        ] {
            assert!(parse_ip(ok).is_some(), "{ok}");
        }
        for bad in [
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "fe80::1%eth0",
            "1.2.3.4/32",
            "",
            " 1.2.3.4",
        ] {
            assert!(parse_ip(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn go_cidr_parsing_edge_cases() {
        assert_eq!(
            parse_cidr("1.2.3.4/24"),
            Some(("1.2.3.4".parse().expect("ip"), 24))
        );
        assert_eq!(parse_cidr("::ffff:1.2.3.4/120").map(|c| c.1), Some(120));
        assert!(parse_cidr("0.0.0.0/0").is_some());
        for bad in [
            "1.2.3.4",
            "1.2.3.4/33",
            "::/129",
            "1.2.3.4/-1",
            "1.2.3.4/",
            "/8",
            "1.2.3.4/+8",
        ] {
            assert!(parse_cidr(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn govalidator_dns_name_edge_cases() {
        for ok in [
            "example.com",
            "example.com.",
            "ex_ample.com",
            "EXAMPLE.com",
            "a",
            "x_",
            "1a.com",
        ] {
            assert!(is_dns_name(ok), "{ok}");
        }
        let long_total = ["a"; 300].join(".");
        for bad in [
            "",
            "1.2.3.4",
            "-a.com",
            "a..b",
            "a b",
            "a.-b",
            long_total.as_str(),
        ] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }
}
