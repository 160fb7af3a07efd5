//! Kuma's validation of one MeshPassthrough (spec §b), with Kuma's field paths, messages and
//! order, and the deliberate changes of semantics.md: the same-port rule is order-independent,
//! and cross-policy conflicts are found in `merge`, not here.
//!
//! The address and name checks reproduce the Go functions Kuma calls (`net.ParseIP`,
//! `net.ParseCIDR` and govalidator's `IsDNSName`), because their edge cases decide what is
//! valid: a value Kuma accepts must be accepted here, and the other way round.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::OnceLock,
};

use regex::Regex;

use super::{
    Violation, hints,
    kuma::{Admission, KumaVersion},
    kuma3,
    model::{Conf, Format, Policy, Spec, TargetRef},
};

/// The protocols rule 5 accepts, in the order Kuma's message lists them.
const PROTOCOLS: [&str; 6] = ["tcp", "tls", "grpc", "http", "http2", "mysql"];
/// The layer-7 protocols: at most one of them per port (rule 3), and none of them for a
/// wildcard domain without a port (rule 10).
const L7_PROTOCOLS: [&str; 3] = ["grpc", "http", "http2"];
/// The targetRef kinds Kuma v2.14 accepts for MeshPassthrough (master drops MeshSubset).
const TARGET_KINDS: [&str; 3] = ["Mesh", "MeshSubset", "Dataplane"];
/// The CRD enum of `spec.default.passthroughMode`.
const MODES: [&str; 3] = ["All", "Matched", "None"];
/// The CRD enum of `spec.targetRef.proxyTypes[]`.
const PROXY_TYPES: [&str; 2] = ["Sidecar", "Gateway"];

const SAME_PORT: &str = "using the same port in multiple matches requires the same protocol for the following protocols: [grpc http http2]";
const UNKNOWN_PROTOCOL: &str =
    r#""protocol" must be one of ["tcp", "tls", "grpc", "http", "http2", "mysql"]"#;

/// Every violation of a policy under Kuma 2 ([`validate_for`]).
pub fn validate(policy: &Policy) -> Vec<Violation> {
    validate_for(policy, KumaVersion::V2, Admission::Apply)
}

/// Every violation of a policy: its name, the schema enums that Kuma's CRD and REST schema
/// enforce before Kuma's Go validator runs, then that validator ([`validate_spec_for`]), then
/// passthrough's warnings. `admission` only matters under Kuma 3 (`policy::kuma`).
///
/// The schema checks come in document order (name, targetRef, default), like Kuma's own
/// targetRef-then-default order.
pub fn validate_for(policy: &Policy, kuma: KumaVersion, admission: Admission) -> Vec<Violation> {
    let mut out = Vec::new();
    validate_name(policy, &mut out);
    // Kuma 3's schema has no proxyTypes: it is dropped, and a warning says so.
    if let Some(types) = policy
        .spec
        .target_ref
        .as_ref()
        .and_then(|t| t.proxy_types.as_ref())
        .filter(|_| kuma == KumaVersion::V2)
    {
        for (i, t) in types.iter().enumerate() {
            if !PROXY_TYPES.contains(&t.as_str()) {
                let v = Violation::new(
                    format!("spec.targetRef.proxyTypes[{i}]"),
                    format!(
                        "unsupported value {}: must be one of \"Sidecar\", \"Gateway\"",
                        go_quote(t)
                    ),
                );
                out.push(match hints::enum_case(t, &PROXY_TYPES) {
                    Some(h) => v.with_hint(h),
                    None => v,
                });
            }
        }
    }
    // An absent mode means `Matched`; a present one, even empty, must be in the enum, as the
    // CRD's enum check applies to the empty string too.
    if let Some(mode) = &policy.spec.default.passthrough_mode
        && !MODES.contains(&mode.as_str())
    {
        let v = Violation::new(
            "spec.default.passthroughMode",
            format!(
                "unsupported value {}: must be one of \"All\", \"Matched\", \"None\"",
                go_quote(mode)
            ),
        );
        out.push(match hints::enum_case(mode, &MODES) {
            Some(h) => v.with_hint(h),
            None => v,
        });
    }
    out.extend(validate_spec_for(&policy.spec, kuma, admission));
    out.extend(match kuma {
        KumaVersion::V2 => warnings(&policy.spec),
        KumaVersion::V3 => kuma3::warnings(&policy.spec, admission),
    });
    out
}

/// What Kuma 2 accepts but passthrough reports: values that do not mean what they look like.
/// Warnings only: the policy is applied as Kuma would apply it.
pub fn warnings(spec: &Spec) -> Vec<Violation> {
    let mut out = Vec::new();
    for (i, m) in spec.default.matches().iter().enumerate() {
        if m.kind == "CIDR"
            && let Some(net) = hints::host_bits(&m.value)
        {
            out.push(
                Violation::warning(
                    format!("spec.default.appendMatch[{i}].value"),
                    format!(
                        "{} has host bits set: it is enforced as {net}, the network it lies in (Kuma 3 refuses it)",
                        m.value
                    ),
                )
                .with_hint(format!("write {net}")),
            );
        }
    }
    out
}

/// Kuma 2's Go validator alone, as Kuma's validator tests call it ([`validate_spec_for`]).
pub fn validate_spec(spec: &Spec) -> Vec<Violation> {
    validate_spec_for(spec, KumaVersion::V2, Admission::Apply)
}

/// Kuma's Go validator: the targetRef, then the default configuration, then (Kuma 3) the
/// listener filter chain conflicts it rejects on apply. Field paths are rooted at `spec.`.
pub fn validate_spec_for(spec: &Spec, kuma: KumaVersion, admission: Admission) -> Vec<Violation> {
    let mut out = Vec::new();
    // An omitted targetRef is Kuma's default `{kind: Mesh}` and is not checked.
    if let Some(target_ref) = &spec.target_ref {
        match kuma {
            KumaVersion::V2 => validate_target_ref(target_ref, &mut out),
            KumaVersion::V3 => kuma3::validate_target_ref(target_ref, &mut out),
        }
    }
    validate_conf(&spec.default, kuma, admission, &mut out);
    if kuma == KumaVersion::V3 {
        out.extend(kuma3::conflict_violations(&spec.default, admission));
    }
    out
}

/// The policy's own name: required, and on Kubernetes an object name (DNS-1123 subdomain).
fn validate_name(policy: &Policy, out: &mut Vec<Violation>) {
    let field = match policy.format {
        Format::Kubernetes => "metadata.name",
        Format::Universal => "name",
    };
    if policy.name.is_empty() {
        out.push(Violation::new(field, "must be defined"));
        return;
    }
    if policy.format == Format::Kubernetes {
        // Both problems are reported, as the Kubernetes API server does.
        if policy.name.len() > 253 {
            out.push(Violation::new(field, "must be no more than 253 characters"));
        }
        if !is_dns1123_subdomain(&policy.name) {
            out.push(
                Violation::new(
                    field,
                    "must be a lowercase RFC 1123 subdomain: dot-separated labels of lower case \
                     alphanumeric characters or '-', each starting and ending with an alphanumeric \
                     character",
                )
                .with_hint(format!(
                    "{:?}, e.g. {}",
                    policy.name,
                    object_name_like(&policy.name)
                )),
            );
        }
    }
}

/// Kuma's `ValidateTargetRef` for the kinds MeshPassthrough supports, field prefix
/// `spec.targetRef.`. A missing or unsupported kind ends the check: the other rules depend on it.
fn validate_target_ref(tr: &TargetRef, out: &mut Vec<Violation>) {
    let at = |field: &str| format!("spec.targetRef.{field}");
    if tr.kind.is_empty() {
        out.push(Violation::new(at("kind"), "must be defined"));
        return;
    }
    if !TARGET_KINDS.contains(&tr.kind.as_str()) {
        out.push(
            Violation::new(at("kind"), format!("value '{}' is not supported", tr.kind)).with_hint(
                format!(
                    "{:?}: a MeshPassthrough selects with kind {}",
                    tr.kind,
                    TARGET_KINDS.join(", ")
                ),
            ),
        );
        return;
    }
    // Kuma counts a field as set only when it is non-empty: `name: ""`, `tags: {}` and,
    // for this check, `proxyTypes: []` are as good as absent.
    let name = non_empty_str(tr.name.as_deref());
    let mesh = non_empty_str(tr.mesh.as_deref());
    let namespace = non_empty_str(tr.namespace.as_deref());
    let section_name = non_empty_str(tr.section_name.as_deref());
    let tags = tr.tags.as_ref().is_some_and(|m| !m.is_empty());
    let labels = tr.labels.as_ref().is_some_and(|m| !m.is_empty());
    let proxy_types = tr.proxy_types.as_ref().is_some_and(|v| !v.is_empty());

    let kind = tr.kind.as_str();
    let forbid = |out: &mut Vec<Violation>, field: &str, set: bool| {
        if set {
            out.push(Violation::new(
                at(field),
                format!("must not be set with kind {kind}"),
            ));
        }
    };
    // The order of the checks within each kind is Kuma's.
    match kind {
        "Mesh" => {
            if name {
                out.push(Violation::new(
                    at("name"),
                    "using name with kind Mesh is not yet supported",
                ));
            }
            forbid(out, "mesh", mesh);
            forbid(out, "tags", tags);
            forbid(out, "labels", labels);
            forbid(out, "namespace", namespace);
            forbid(out, "sectionName", section_name);
            validate_proxy_types(tr, out);
        }
        "MeshSubset" => {
            forbid(out, "name", name);
            forbid(out, "mesh", mesh);
            validate_tags(tr.tags.as_ref(), out);
            forbid(out, "labels", labels);
            forbid(out, "namespace", namespace);
            forbid(out, "sectionName", section_name);
            validate_proxy_types(tr, out);
        }
        _ => {
            // Dataplane, the remaining supported kind.
            forbid(out, "tags", tags);
            forbid(out, "mesh", mesh);
            forbid(out, "proxyTypes", proxy_types);
            if labels && (name || namespace) {
                out.push(Violation::new(
                    at("labels"),
                    "either labels or name and namespace must be specified",
                ));
            }
            // MeshPassthrough is not an inbound policy, so a section cannot be named.
            if section_name {
                out.push(Violation::new(
                    at("sectionName"),
                    "can only be used with inbound policies",
                ));
            }
        }
    }
}

fn non_empty_str(s: Option<&str>) -> bool {
    s.is_some_and(|s| !s.is_empty())
}

/// `proxyTypes: []` is refused for Mesh and MeshSubset; absent means every proxy type.
fn validate_proxy_types(tr: &TargetRef, out: &mut Vec<Violation>) {
    if tr.proxy_types.as_ref().is_some_and(Vec::is_empty) {
        out.push(Violation::new(
            "spec.targetRef.proxyTypes",
            "must be undefined or have at least one element",
        ));
    }
}

/// Kuma's tag rules for a MeshSubset, key by key in byte order (a `BTreeMap<String, _>`
/// iterates in the same order as Go's `sort.Strings`). An empty key is reported at `tags`
/// itself, the others at `tags["key"]` with the key quoted as Go's `%q` does.
fn validate_tags(tags: Option<&BTreeMap<String, String>>, out: &mut Vec<Violation>) {
    const KEY_CHARS: &str = ".-_:/";
    const VALUE_CHARS: &str = ".-_:";
    let only = |s: &str, extra: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    for (key, value) in tags.into_iter().flatten() {
        let at_key = || format!("spec.targetRef.tags[{}]", go_quote(key));
        if key.is_empty() {
            out.push(Violation::new(
                "spec.targetRef.tags",
                "tag name must be non-empty",
            ));
        }
        let offending = |s: &str, extra: &str| {
            s.chars()
                .find(|c| !(c.is_ascii_alphanumeric() || extra.contains(*c)))
                .map_or_else(String::new, |c| format!(": {c:?} is not accepted"))
        };
        if !only(key, KEY_CHARS) {
            out.push(
                Violation::new(
                    at_key(),
                    "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
                )
                .with_hint(format!("tag name {key:?}{}", offending(key, KEY_CHARS))),
            );
        }
        if value.is_empty() {
            out.push(
                Violation::new(at_key(), "tag value must be non-empty")
                    .with_hint(format!("give tag {key:?} a value, or remove it")),
            );
        }
        if !only(value, VALUE_CHARS) {
            out.push(
                Violation::new(
                    at_key(),
                    "tag value must consist of alphanumeric characters, dots, dashes and underscores",
                )
                .with_hint(format!("tag value {value:?}{}", offending(value, VALUE_CHARS))),
            );
        }
    }
}

/// The twelve appendMatch rules of spec §b.2, entry by entry, each entry's violations in rule
/// order, and under Kuma 3 its two more: no host bits in a CIDR (after rule 6) and a port for
/// an exact Domain (beside rule 10, the wildcard's). Field prefix `spec.default.appendMatch[i].`.
fn validate_conf(conf: &Conf, kuma: KumaVersion, admission: Admission, out: &mut Vec<Violation>) {
    let v3 = kuma == KumaVersion::V3;
    // Rule 3: the first L7 protocol seen on each port. Unlike Kuma, which remembers the last
    // protocol of any kind, tcp/tls/mysql entries never change it, so the outcome does not
    // depend on the order of the entries.
    // Under Kuma 3 only entries of one scope share a listener filter chain: the port's Domain
    // entries, or one address (`kuma3::l7_scope`); under Kuma 2 every entry of the port.
    let mut l7_of_port: BTreeMap<(u32, String), (&str, usize)> = BTreeMap::new();
    // Rule 4: (port, protocol, value) triples seen so far, with the first entry's index.
    let mut seen: BTreeMap<(u32, &str, &str), usize> = BTreeMap::new();
    for (i, m) in conf.matches().iter().enumerate() {
        let at = |field: &str| format!("spec.default.appendMatch[{i}].{field}");
        let protocol = m.protocol.as_str();
        let value = m.value.as_str();
        let is_l7 = L7_PROTOCOLS.contains(&protocol);

        // Rule 1.
        if protocol == "mysql" && m.port.is_none() {
            out.push(
                Violation::new(at("port"), "port must be defined for Mysql protocol")
                    .with_hint("mysql needs the server's port, e.g. port: 3306"),
            );
        }
        // Rule 2. An absent port means "every port" and is fine.
        if let Some(p) = m.port.filter(|p| *p == 0 || *p > 65535) {
            out.push(
                Violation::new(at("port"), "port must be a valid (1-65535)")
                    .with_hint(hints::port(p)),
            );
        }
        // Rules 3 and 4 only look at entries with a port, even an out-of-range one.
        if let Some(port) = m.port {
            if is_l7 {
                let scope = if v3 {
                    kuma3::l7_scope(m)
                } else {
                    String::new()
                };
                let (first, first_index) =
                    *l7_of_port.entry((port, scope)).or_insert((protocol, i));
                if first != protocol {
                    out.push(
                        Violation::new(at("port"), SAME_PORT).with_hint(hints::same_port(
                            port,
                            protocol,
                            first,
                            first_index,
                        )),
                    );
                }
            }
            // Exact, case-sensitive comparison of the value, as in Kuma.
            let first_index = *seen.entry((port, protocol, value)).or_insert(i);
            if first_index != i {
                out.push(
                    Violation::new(
                        at("value"),
                        format!("value {value} is already defiend for this port and protocol"),
                    )
                    .with_hint(hints::duplicate(
                        value,
                        port,
                        protocol,
                        first_index,
                    )),
                );
            }
        }
        // Rule 5. Exact and case-sensitive: `TCP` and an empty protocol are refused.
        if !PROTOCOLS.contains(&protocol) {
            out.push(
                Violation::new(at("protocol"), UNKNOWN_PROTOCOL)
                    .with_hint(hints::protocol(protocol, &PROTOCOLS)),
            );
        }
        match m.kind.as_str() {
            // Rule 6.
            "CIDR" => {
                if parse_cidr(value).is_none() {
                    out.push(
                        Violation::new(at("value"), "provided CIDR has incorrect value")
                            .with_hint(hints::cidr(value)),
                    );
                } else if v3 {
                    out.extend(kuma3::host_bits(i, m, admission));
                }
            }
            // Rule 7.
            "IP" => {
                if parse_ip(value).is_none() {
                    out.push(
                        Violation::new(at("value"), "provided IP has incorrect value")
                            .with_hint(hints::ip(value)),
                    );
                }
            }
            "Domain" => {
                // Rule 8: a domain is only known from TLS SNI or an HTTP authority.
                if protocol == "tcp" || protocol == "mysql" {
                    out.push(
                        Violation::new(
                            at("protocol"),
                            format!("protocol {protocol} is not supported for a domain"),
                        )
                        .with_hint(hints::domain_protocol(protocol)),
                    );
                }
                // Rule 9: `*` followed by anything but a dot (`*w.example.com`, `**.x`).
                let mut chars = value.chars();
                if chars.next() == Some('*') && chars.next().is_some_and(|c| c != '.') {
                    out.push(
                        Violation::new(
                            at("value"),
                            "provided DNS has incorrect value, partial wildcard is currently not supported",
                        )
                        .with_hint(hints::partial_wildcard(value)),
                    );
                }
                // Kuma 3: an exact name needs a port (the sidecar resolves it).
                if v3 {
                    out.extend(kuma3::domain_port(i, m, admission));
                }
                // Rule 10: an L7 wildcard needs a port.
                if m.port.is_none() && value.starts_with('*') && is_l7 {
                    out.push(
                        Violation::new(
                            at("port"),
                            "wildcard domains doesn't work for all ports and layer 7 protocol",
                        )
                        .with_hint(hints::wildcard_needs_port(value, protocol)),
                    );
                }
                // Rule 11: one leading `*.` is stripped; what still starts with `*` (`*`,
                // `*.*.x`, `**.x`) is not checked as a name (rule 9 covers the partial ones).
                let name = value.strip_prefix("*.").unwrap_or(value);
                if !name.starts_with('*') && !is_dns_name(name) {
                    out.push(
                        Violation::new(at("value"), "provided DNS has incorrect value")
                            .with_hint(hints::dns(value)),
                    );
                }
            }
            // Rule 12.
            other => out.push(
                Violation::new(
                    at("type"),
                    format!(
                        "provided type {other} is not supported, one of Domain, IP, or CIDR is supported"
                    ),
                )
                .with_hint(hints::kind(other)),
            ),
        }
    }
}

/// Go's `net.ParseIP` (Go ≥ 1.22, which parses with `netip.ParseAddr` and refuses zones):
/// a dotted-quad IPv4 address whose octets have no leading zeros, or any IPv6 form, including
/// `::` compression and an embedded dotted IPv4 tail (`::ffff:1.2.3.4`). No zone, no prefix,
/// no surrounding space.
///
/// Rust's standard parsers accept exactly this language (both refuse leading zeros in IPv4
/// octets, more than four hex digits in a group, a `::` that stands for no group, and an IPv4
/// part anywhere but at the end); the tests pin the edge cases. Go picks the family by the
/// first `.` or `:`; an IPv6 address always has a `:` before any `.`, so testing for `:`
/// chooses the same parser. An IPv4-mapped address stays IPv6 here; callers that care unmap it.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    if s.contains(':') {
        s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// Go's `net.ParseCIDR`: an address as [`parse_ip`] parses it, the first `/`, and a decimal
/// prefix length of at least one digit. Leading zeros in the length are allowed (`/024` is
/// 24), a sign is not. The length may not exceed the bits of the address as written: 32 for
/// dotted IPv4, 128 for any IPv6 form, so `::ffff:1.2.3.4/120` is an IPv6 /120. Host bits may
/// be set; the address is returned as written, not masked.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let ip = parse_ip(addr)?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = len.trim_start_matches('0');
    // At most three significant digits can be a valid length; more could overflow `u8`.
    if significant.len() > 3 {
        return None;
    }
    let bits: u16 = if significant.is_empty() {
        0
    } else {
        significant.parse().ok()?
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if bits > max {
        return None;
    }
    u8::try_from(bits).ok().map(|bits| (ip, bits))
}

/// govalidator's `IsDNSName` at the version Kuma pins: not empty, at most 255 bytes once the
/// dots are removed, not an IP address (so `1.2.3.4` is no name, though `01.2.3.4` is), and
/// matching `^([a-zA-Z0-9_]{1}[a-zA-Z0-9_-]{0,62}){1}(\.[a-zA-Z0-9_]{1}[a-zA-Z0-9_-]{0,62})*[\._]?$`.
///
/// The pattern is matched by hand: the name, less one optional trailing `.` or `_`, must be
/// dot-separated labels of 1 to 63 bytes of `[A-Za-z0-9_-]` not starting with `-`. Both
/// readings of a trailing `_` are tried, since it may end the last label or be the optional
/// suffix (`a{63}_` is valid only as the latter). A test checks this against the regex.
pub fn is_dns_name(s: &str) -> bool {
    if s.is_empty() || s.bytes().filter(|&b| b != b'.').count() > 255 || parse_ip(s).is_some() {
        return false;
    }
    let labels_ok = |name: &str| {
        name.split('.').all(|label| {
            let bytes = label.as_bytes();
            (1..=63).contains(&bytes.len())
                && bytes[0] != b'-'
                && bytes
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
    };
    labels_ok(s)
        || s.strip_suffix(['.', '_'])
            .is_some_and(|rest| !rest.is_empty() && labels_ok(rest))
}

/// A Kubernetes object name close to `name`: lower case, other characters as `-`.
fn object_name_like(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.') => c,
            _ => '-',
        })
        .collect();
    let labels: Vec<&str> = mapped
        .split('.')
        .map(|l| l.trim_matches('-'))
        .filter(|l| !l.is_empty())
        .collect();
    if labels.is_empty() {
        "my-policy".into()
    } else {
        labels.join(".")
    }
}

/// The pattern of a Kubernetes object name (its 253-byte limit is checked on its own):
/// dot-separated labels of lower-case alphanumerics and `-`, each starting and ending with an
/// alphanumeric.
fn is_dns1123_subdomain(s: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    s.split('.').all(|label| {
        let bytes = label.as_bytes();
        bytes.first().is_some_and(alnum)
            && bytes.last().is_some_and(alnum)
            && bytes.iter().all(|b| alnum(b) || *b == b'-')
    })
}

/// A string quoted as Go's `%q` (`strconv.Quote`) quotes it, so that field paths such as
/// `spec.targetRef.tags["a b"]` read as Kuma's do: printable characters as they are, `"` and
/// `\` escaped, the C escapes for their control characters, `\xHH` for other ASCII controls,
/// `\uHHHH` or `\UHHHHHHHH` for other non-printable characters.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if go_is_print(c) => out.push(c),
            // Writing to a String cannot fail.
            c if c < ' ' || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if u32::from(c) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08x}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

/// Go's `unicode.IsPrint`: letters, marks, numbers, punctuation, symbols and the ASCII space.
fn go_is_print(c: char) -> bool {
    static PRINT: OnceLock<Option<Regex>> = OnceLock::new();
    if c.is_ascii() {
        return c == ' ' || c.is_ascii_graphic();
    }
    // The pattern is fixed and valid; should it ever fail to compile, non-control characters
    // count as printable, which only changes how a rare field path is spelled.
    match PRINT.get_or_init(|| Regex::new(r"^[\p{L}\p{M}\p{N}\p{P}\p{S}]$").ok()) {
        Some(re) => re.is_match(c.encode_utf8(&mut [0; 4])),
        None => !c.is_control() && !c.is_whitespace(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::{super::model::Source, *};

    // Kuma's messages, named once so that the tables below stay readable.
    const PORT_RANGE: &str = "port must be a valid (1-65535)";
    const MYSQL_PORT: &str = "port must be defined for Mysql protocol";
    const BAD_CIDR: &str = "provided CIDR has incorrect value";
    const BAD_IP: &str = "provided IP has incorrect value";
    const BAD_DNS: &str = "provided DNS has incorrect value";
    const PARTIAL: &str =
        "provided DNS has incorrect value, partial wildcard is currently not supported";
    const WILDCARD_L7: &str = "wildcard domains doesn't work for all ports and layer 7 protocol";

    /// Kuma's validator on a spec written as YAML, as `field: message` lines.
    fn check(yaml: &str) -> Vec<String> {
        let spec: Spec = serde_yaml::from_str(yaml).expect("spec parses");
        lines(validate_spec(&spec))
    }

    fn lines(violations: Vec<Violation>) -> Vec<String> {
        violations
            .into_iter()
            .map(|v| format!("{}: {}", v.field, v.message))
            .collect()
    }

    /// Kuma's validator on an appendMatch list written in YAML flow style.
    fn matches(list: &str) -> Vec<String> {
        check(&format!("default:\n  appendMatch: {list}\n"))
    }

    /// The expected line for entry `i` of appendMatch.
    fn at(i: usize, field: &str, message: &str) -> String {
        format!("spec.default.appendMatch[{i}].{field}: {message}")
    }

    fn none() -> Vec<String> {
        Vec::new()
    }

    fn policy(format: Format, name: &str, spec: &str) -> Policy {
        Policy {
            source: Source::file("test.yaml", 0),
            format,
            name: name.into(),
            namespace: (format == Format::Kubernetes).then(|| "kuma-system".into()),
            mesh: "default".into(),
            labels: BTreeMap::new(),
            spec: serde_yaml::from_str(spec).expect("spec parses"),
        }
    }

    // Kuma's conformance cases (spec §e.1-§e.3), kept as our own data files.

    #[derive(Deserialize)]
    struct Expected {
        violations: Vec<ExpectedViolation>,
    }

    #[derive(Deserialize)]
    struct ExpectedViolation {
        field: String,
        message: String,
    }

    #[test]
    fn kuma_valid_case_has_no_violations() {
        assert_eq!(
            check(include_str!("../../tests/data/validate/valid.yaml")),
            none()
        );
    }

    #[test]
    fn kuma_full_invalid_case_yields_exactly_kumas_violations_in_order() {
        let want: Expected = serde_yaml::from_str(include_str!(
            "../../tests/data/validate/full-invalid.output.yaml"
        ))
        .expect("expected output parses");
        let want: Vec<(String, String)> = want
            .violations
            .into_iter()
            .map(|v| (v.field, v.message))
            .collect();
        let spec: Spec =
            serde_yaml::from_str(include_str!("../../tests/data/validate/full-invalid.yaml"))
                .expect("spec parses");
        // Kuma's field paths and messages, byte for byte; passthrough's hints ride beside them.
        let got: Vec<(String, String)> = validate_spec(&spec)
            .into_iter()
            .map(|v| {
                assert!(v.is_error() && v.hint.is_some(), "{v:?}");
                (v.field, v.message)
            })
            .collect();
        assert_eq!(got, want);
    }

    // appendMatch rules (spec §b.2), one or more tests per rule.

    #[test]
    fn rule01_mysql_without_port_is_refused() {
        assert_eq!(
            matches("[{type: IP, value: 172.1.1.1, protocol: mysql}]"),
            [at(0, "port", MYSQL_PORT)]
        );
        assert_eq!(
            matches("[{type: IP, value: 172.1.1.1, port: 3306, protocol: mysql}]"),
            none()
        );
    }

    #[test]
    fn rule02_port_zero_is_out_of_range() {
        assert_eq!(
            matches("[{type: IP, value: 1.1.1.1, port: 0}]"),
            [at(0, "port", PORT_RANGE)]
        );
    }

    #[test]
    fn rule02_port_above_65535_is_out_of_range() {
        assert_eq!(
            matches("[{type: IP, value: 1.1.1.1, port: 65536}]"),
            [at(0, "port", PORT_RANGE)]
        );
        assert_eq!(
            matches("[{type: IP, value: 1.1.1.1, port: 4294967295}]"),
            [at(0, "port", PORT_RANGE)]
        );
        assert_eq!(matches("[{type: IP, value: 1.1.1.1, port: 1}]"), none());
        assert_eq!(matches("[{type: IP, value: 1.1.1.1, port: 65535}]"), none());
    }

    #[test]
    fn rule02_absent_port_means_every_port() {
        assert_eq!(matches("[{type: IP, value: 1.1.1.1}]"), none());
    }

    #[test]
    fn rule03_second_l7_protocol_on_a_port_is_refused() {
        assert_eq!(
            matches(
                "[{type: Domain, value: a.com, port: 80, protocol: http}, \
                  {type: Domain, value: b.com, port: 80, protocol: grpc}]"
            ),
            [at(1, "port", SAME_PORT)]
        );
    }

    #[test]
    fn rule03_tcp_tls_mysql_and_one_l7_protocol_share_a_port_in_any_order() {
        // Kuma refuses the first of these orders; semantics.md makes the rule symmetric.
        let entries = [
            "{type: IP, value: 1.1.1.1, port: 80, protocol: tcp}",
            "{type: Domain, value: a.com, port: 80, protocol: tls}",
            "{type: IP, value: 1.1.1.2, port: 80, protocol: mysql}",
            "{type: Domain, value: b.com, port: 80, protocol: http2}",
        ];
        // Every rotation of the list, so the L7 entry is first, last and in between.
        for r in 0..entries.len() {
            let mut list = entries.to_vec();
            list.rotate_left(r);
            let list = format!("[{}]", list.join(", "));
            assert_eq!(matches(&list), none(), "{list}");
        }
    }

    #[test]
    fn rule03_error_is_on_every_entry_bringing_another_l7_protocol() {
        assert_eq!(
            matches(
                "[{type: Domain, value: a.com, port: 80, protocol: http}, \
                  {type: IP, value: 1.1.1.1, port: 80, protocol: tcp}, \
                  {type: Domain, value: b.com, port: 80, protocol: http2}, \
                  {type: Domain, value: c.com, port: 80, protocol: grpc}, \
                  {type: Domain, value: d.com, port: 80, protocol: http}]"
            ),
            [at(2, "port", SAME_PORT), at(3, "port", SAME_PORT)]
        );
    }

    #[test]
    fn rule03_ports_are_independent_and_portless_entries_are_not_compared() {
        assert_eq!(
            matches(
                "[{type: Domain, value: a.com, port: 80, protocol: http}, \
                  {type: Domain, value: a.com, port: 81, protocol: grpc}, \
                  {type: Domain, value: a.com, protocol: http}, \
                  {type: Domain, value: b.com, protocol: http2}]"
            ),
            none()
        );
    }

    #[test]
    fn rule04_duplicate_value_for_port_and_protocol_is_refused_with_kumas_typo() {
        assert_eq!(
            matches(
                "[{type: Domain, value: g.com, port: 10, protocol: http}, \
                  {type: Domain, value: g.com, port: 10, protocol: http}]"
            ),
            [at(
                1,
                "value",
                "value g.com is already defiend for this port and protocol"
            )]
        );
    }

    #[test]
    fn rule04_another_port_or_protocol_is_another_key() {
        assert_eq!(
            matches(
                "[{type: Domain, value: g.com, port: 10, protocol: http}, \
                  {type: Domain, value: g.com, port: 11, protocol: http}, \
                  {type: Domain, value: g.com, port: 10, protocol: tls}]"
            ),
            none()
        );
    }

    #[test]
    fn rule04_is_checked_even_after_a_port_error() {
        assert_eq!(
            matches(
                "[{type: Domain, value: a.com, port: 80, protocol: http}, \
                  {type: Domain, value: a.com, port: 80, protocol: grpc}, \
                  {type: Domain, value: a.com, port: 80, protocol: grpc}]"
            ),
            [
                at(1, "port", SAME_PORT),
                at(2, "port", SAME_PORT),
                at(
                    2,
                    "value",
                    "value a.com is already defiend for this port and protocol"
                ),
            ]
        );
        assert_eq!(
            matches("[{type: IP, value: 1.1.1.1, port: 0}, {type: IP, value: 1.1.1.1, port: 0}]"),
            [
                at(0, "port", PORT_RANGE),
                at(1, "port", PORT_RANGE),
                at(
                    1,
                    "value",
                    "value 1.1.1.1 is already defiend for this port and protocol"
                ),
            ]
        );
    }

    #[test]
    fn rule05_protocol_must_be_one_of_six_lower_case_names() {
        for bad in ["udp", "TCP", "Http", "''", "1", "https"] {
            assert_eq!(
                matches(&format!("[{{type: IP, value: 1.1.1.1, protocol: {bad}}}]")),
                [at(0, "protocol", UNKNOWN_PROTOCOL)],
                "{bad}"
            );
        }
        for good in ["tcp", "tls", "grpc", "http", "http2"] {
            assert_eq!(
                matches(&format!("[{{type: IP, value: 1.1.1.1, protocol: {good}}}]")),
                none(),
                "{good}"
            );
        }
    }

    #[test]
    fn rule06_cidr_needs_a_go_parsable_address_and_prefix() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/",
            "::/129",
            "example.com/8",
        ] {
            assert_eq!(
                matches(&format!("[{{type: CIDR, value: '{bad}'}}]")),
                [at(0, "value", BAD_CIDR)],
                "{bad}"
            );
        }
        for good in ["10.0.0.1/8", "0.0.0.0/0", "::/0", "2001:db8::/32"] {
            assert_eq!(
                matches(&format!("[{{type: CIDR, value: '{good}'}}]")),
                none(),
                "{good}"
            );
        }
    }

    #[test]
    fn rule07_ip_must_be_a_go_parsable_address() {
        for bad in ["2001:db8::1/128", "example.com", "01.2.3.4", "fe80::1%eth0"] {
            assert_eq!(
                matches(&format!("[{{type: IP, value: '{bad}'}}]")),
                [at(0, "value", BAD_IP)],
                "{bad}"
            );
        }
        for good in ["1.2.3.4", "::1", "::ffff:1.2.3.4"] {
            assert_eq!(
                matches(&format!("[{{type: IP, value: '{good}'}}]")),
                none(),
                "{good}"
            );
        }
    }

    #[test]
    fn rule08_domain_cannot_use_tcp_or_mysql() {
        assert_eq!(
            matches("[{type: Domain, value: a.com, port: 1, protocol: tcp}]"),
            [at(
                0,
                "protocol",
                "protocol tcp is not supported for a domain"
            )]
        );
        assert_eq!(
            matches("[{type: Domain, value: a.com, port: 1, protocol: mysql}]"),
            [at(
                0,
                "protocol",
                "protocol mysql is not supported for a domain"
            )]
        );
    }

    #[test]
    fn rule09_partial_wildcard_is_refused() {
        for bad in ["*w.example.com", "**.example.com", "*foo", "*-.x"] {
            assert_eq!(
                matches(&format!(
                    "[{{type: Domain, value: '{bad}', port: 1, protocol: tls}}]"
                )),
                [at(0, "value", PARTIAL)],
                "{bad}"
            );
        }
    }

    #[test]
    fn rule10_l7_wildcard_domain_needs_a_port() {
        for protocol in ["http", "http2", "grpc"] {
            assert_eq!(
                matches(&format!(
                    "[{{type: Domain, value: '*.example.com', protocol: {protocol}}}]"
                )),
                [at(0, "port", WILDCARD_L7)],
                "{protocol}"
            );
        }
        assert_eq!(
            matches("[{type: Domain, value: '*.example.com', protocol: tls}]"),
            none()
        );
        assert_eq!(
            matches("[{type: Domain, value: '*.example.com', port: 80, protocol: http}]"),
            none()
        );
    }

    #[test]
    fn rule11_domain_must_be_a_dns_name_after_one_leading_wildcard() {
        for bad in [
            "*.hello@world",
            "*.",
            "a.*.com",
            "1.2.3.4",
            "-a.com",
            "exämple.com",
        ] {
            assert_eq!(
                matches(&format!(
                    "[{{type: Domain, value: '{bad}', port: 443, protocol: tls}}]"
                )),
                [at(0, "value", BAD_DNS)],
                "{bad}"
            );
        }
        // What still starts with `*` after one `*.` is not checked as a name.
        for good in [
            "*",
            "*.*",
            "*.*.example.com",
            "*.example.com",
            "example.com",
        ] {
            assert_eq!(
                matches(&format!(
                    "[{{type: Domain, value: '{good}', port: 443, protocol: tls}}]"
                )),
                none(),
                "{good}"
            );
        }
    }

    #[test]
    fn rule12_unknown_type_is_refused() {
        for bad in ["Host", "ip", "domain", "''"] {
            let shown = if bad == "''" { "" } else { bad };
            assert_eq!(
                matches(&format!("[{{type: {bad}, value: a.com}}]")),
                [at(
                    0,
                    "type",
                    &format!(
                        "provided type {shown} is not supported, one of Domain, IP, or CIDR is supported"
                    )
                )],
                "{bad}"
            );
        }
    }

    #[test]
    fn rules_of_one_entry_are_reported_in_rule_order() {
        // Rules 1, 8 and 9 on one entry.
        assert_eq!(
            matches("[{type: Domain, value: '*w', protocol: mysql}]"),
            [
                at(0, "port", MYSQL_PORT),
                at(
                    0,
                    "protocol",
                    "protocol mysql is not supported for a domain"
                ),
                at(0, "value", PARTIAL),
            ]
        );
        // Rules 2, 5 and 12 on one entry.
        assert_eq!(
            matches("[{type: Host, value: x, port: 0, protocol: udp}]"),
            [
                at(0, "port", PORT_RANGE),
                at(0, "protocol", UNKNOWN_PROTOCOL),
                at(
                    0,
                    "type",
                    "provided type Host is not supported, one of Domain, IP, or CIDR is supported"
                ),
            ]
        );
        // Rules 9 and 10 on one entry (rule 11 is skipped: the value starts with `*`).
        assert_eq!(
            matches("[{type: Domain, value: '*x', protocol: http}]"),
            [at(0, "value", PARTIAL), at(0, "port", WILDCARD_L7)]
        );
    }

    #[test]
    fn rules_8_to_11_apply_only_to_domains() {
        assert_eq!(
            matches(
                "[{type: IP, value: 1.1.1.1, protocol: tcp}, \
                  {type: CIDR, value: 10.0.0.0/8, protocol: http}]"
            ),
            none()
        );
    }

    // targetRef rules (spec §b.3, the v2.14 line).

    #[test]
    fn targetref_omitted_is_valid() {
        assert_eq!(check("default: {}"), none());
        assert_eq!(check("{}"), none());
    }

    #[test]
    fn targetref_empty_kind_must_be_defined_and_stops_there() {
        assert_eq!(
            check("targetRef: {kind: '', name: x, proxyTypes: []}"),
            ["spec.targetRef.kind: must be defined"]
        );
        assert_eq!(
            check("targetRef: {}"),
            ["spec.targetRef.kind: must be defined"]
        );
    }

    #[test]
    fn targetref_unsupported_kind_is_refused_and_stops_there() {
        for kind in ["MeshService", "MeshGateway", "MeshHTTPRoute", "mesh"] {
            assert_eq!(
                check(&format!("targetRef: {{kind: {kind}, proxyTypes: []}}")),
                [format!(
                    "spec.targetRef.kind: value '{kind}' is not supported"
                )]
            );
        }
    }

    #[test]
    fn targetref_supported_kinds_are_mesh_meshsubset_and_dataplane() {
        for kind in ["Mesh", "MeshSubset", "Dataplane"] {
            assert_eq!(
                check(&format!("targetRef: {{kind: {kind}}}")),
                none(),
                "{kind}"
            );
        }
    }

    #[test]
    fn targetref_mesh_with_name_is_not_yet_supported() {
        assert_eq!(
            check("targetRef: {kind: Mesh, name: x}"),
            ["spec.targetRef.name: using name with kind Mesh is not yet supported"]
        );
    }

    #[test]
    fn targetref_mesh_refuses_other_selectors_in_kumas_order() {
        assert_eq!(
            check(
                "targetRef: {kind: Mesh, sectionName: s, namespace: n, labels: {a: b}, \
                 tags: {a: b}, mesh: m, name: x, proxyTypes: []}"
            ),
            [
                "spec.targetRef.name: using name with kind Mesh is not yet supported",
                "spec.targetRef.mesh: must not be set with kind Mesh",
                "spec.targetRef.tags: must not be set with kind Mesh",
                "spec.targetRef.labels: must not be set with kind Mesh",
                "spec.targetRef.namespace: must not be set with kind Mesh",
                "spec.targetRef.sectionName: must not be set with kind Mesh",
                "spec.targetRef.proxyTypes: must be undefined or have at least one element",
            ]
        );
    }

    #[test]
    fn targetref_empty_proxy_types_are_refused_for_mesh_and_meshsubset() {
        for kind in ["Mesh", "MeshSubset"] {
            assert_eq!(
                check(&format!("targetRef: {{kind: {kind}, proxyTypes: []}}")),
                ["spec.targetRef.proxyTypes: must be undefined or have at least one element"]
            );
            assert_eq!(
                check(&format!(
                    "targetRef: {{kind: {kind}, proxyTypes: [Sidecar, Gateway]}}"
                )),
                none()
            );
        }
    }

    #[test]
    fn targetref_dataplane_refuses_tags_mesh_and_proxy_types() {
        assert_eq!(
            check("targetRef: {kind: Dataplane, proxyTypes: [Sidecar], mesh: m, tags: {a: b}}"),
            [
                "spec.targetRef.tags: must not be set with kind Dataplane",
                "spec.targetRef.mesh: must not be set with kind Dataplane",
                "spec.targetRef.proxyTypes: must not be set with kind Dataplane",
            ]
        );
    }

    #[test]
    fn targetref_dataplane_labels_exclude_name_and_namespace() {
        let msg = "spec.targetRef.labels: either labels or name and namespace must be specified";
        assert_eq!(
            check("targetRef: {kind: Dataplane, labels: {app: x}, name: y}"),
            [msg]
        );
        assert_eq!(
            check("targetRef: {kind: Dataplane, labels: {app: x}, namespace: y}"),
            [msg]
        );
        assert_eq!(
            check("targetRef: {kind: Dataplane, labels: {app: x}}"),
            none()
        );
        assert_eq!(
            check("targetRef: {kind: Dataplane, name: x, namespace: y}"),
            none()
        );
    }

    #[test]
    fn targetref_dataplane_section_name_is_for_inbound_policies_only() {
        assert_eq!(
            check("targetRef: {kind: Dataplane, sectionName: http}"),
            ["spec.targetRef.sectionName: can only be used with inbound policies"]
        );
    }

    #[test]
    fn targetref_meshsubset_refuses_other_selectors_with_tags_checked_in_between() {
        assert_eq!(
            check(
                "targetRef: {kind: MeshSubset, proxyTypes: [], sectionName: s, namespace: n, \
                 labels: {a: b}, tags: {k: ''}, mesh: m, name: x}"
            ),
            [
                "spec.targetRef.name: must not be set with kind MeshSubset",
                "spec.targetRef.mesh: must not be set with kind MeshSubset",
                "spec.targetRef.tags[\"k\"]: tag value must be non-empty",
                "spec.targetRef.labels: must not be set with kind MeshSubset",
                "spec.targetRef.namespace: must not be set with kind MeshSubset",
                "spec.targetRef.sectionName: must not be set with kind MeshSubset",
                "spec.targetRef.proxyTypes: must be undefined or have at least one element",
            ]
        );
    }

    #[test]
    fn targetref_meshsubset_tag_names_and_values() {
        assert_eq!(
            check(
                "targetRef: {kind: MeshSubset, tags: {'a b': c, ok: '', k: 'v/w', \
                 'kuma.io/zone': 'z-1_x:y.z', '': v}}"
            ),
            [
                "spec.targetRef.tags: tag name must be non-empty",
                "spec.targetRef.tags[\"a b\"]: tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
                "spec.targetRef.tags[\"k\"]: tag value must consist of alphanumeric characters, dots, dashes and underscores",
                "spec.targetRef.tags[\"ok\"]: tag value must be non-empty",
            ]
        );
        // Keys are quoted as Go's %q quotes them.
        assert_eq!(
            check("targetRef: {kind: MeshSubset, tags: {\"a\\tb\": v}}"),
            [
                "spec.targetRef.tags[\"a\\tb\"]: tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores"
            ]
        );
        // No tags select every proxy.
        assert_eq!(check("targetRef: {kind: MeshSubset, tags: {}}"), none());
    }

    #[test]
    fn targetref_empty_values_count_as_unset() {
        assert_eq!(
            check(
                "targetRef: {kind: Mesh, name: '', mesh: '', tags: {}, labels: {}, \
                 namespace: '', sectionName: ''}"
            ),
            none()
        );
        assert_eq!(
            check("targetRef: {kind: Dataplane, proxyTypes: [], tags: {}, labels: {}, name: x}"),
            none()
        );
    }

    #[test]
    fn targetref_violations_come_before_append_match_violations() {
        assert_eq!(
            check(
                "default: {appendMatch: [{type: IP, value: x}]}\n\
                 targetRef: {kind: Mesh, name: x}"
            ),
            [
                "spec.targetRef.name: using name with kind Mesh is not yet supported".to_string(),
                at(0, "value", BAD_IP),
            ]
        );
    }

    // The derived vectors of spec §e.4, with the outcome passthrough's semantics give.

    #[test]
    fn d01_tcp_then_http_on_one_port_is_valid() {
        // Kuma: error on [1]; order-independent rule (semantics.md): valid.
        assert_eq!(
            matches(
                "[{type: IP, value: 1.1.1.1, port: 80, protocol: tcp}, \
                  {type: Domain, value: a.com, port: 80, protocol: http}]"
            ),
            none()
        );
    }

    #[test]
    fn d02_http_then_tcp_on_one_port_is_valid() {
        assert_eq!(
            matches(
                "[{type: Domain, value: a.com, port: 80, protocol: http}, \
                  {type: IP, value: 1.1.1.1, port: 80, protocol: tcp}]"
            ),
            none()
        );
    }

    #[test]
    fn d03_tls_then_http_on_one_port_is_valid() {
        // Kuma: error on [1]; order-independent rule: valid.
        assert_eq!(
            matches(
                "[{type: Domain, value: a.com, port: 443, protocol: tls}, \
                  {type: Domain, value: a.com, port: 443, protocol: http}]"
            ),
            none()
        );
    }

    #[test]
    fn d04_http_then_tls_on_one_port_is_valid() {
        assert_eq!(
            matches(
                "[{type: Domain, value: a.com, port: 443, protocol: http}, \
                  {type: Domain, value: a.com, port: 443, protocol: tls}]"
            ),
            none()
        );
    }

    #[test]
    fn d05_http_tls_http_on_one_port_is_valid() {
        // Kuma: error on [2]; one L7 protocol with tls: valid.
        assert_eq!(
            matches(
                "[{type: Domain, value: a.com, port: 80, protocol: http}, \
                  {type: Domain, value: b.com, port: 80, protocol: tls}, \
                  {type: Domain, value: c.com, port: 80, protocol: http}]"
            ),
            none()
        );
    }

    #[test]
    fn d06_port_65535_is_valid_and_65536_is_not() {
        assert_eq!(
            matches("[{type: IP, value: 1.1.1.1, port: 65535, protocol: tcp}]"),
            none()
        );
        assert_eq!(
            matches("[{type: IP, value: 1.1.1.1, port: 65536, protocol: tcp}]"),
            [at(0, "port", PORT_RANGE)]
        );
    }

    #[test]
    fn d07_ipv6_ip_and_cidr_are_valid() {
        assert_eq!(
            matches(
                "[{type: IP, value: '::1', port: 80, protocol: tcp}, \
                  {type: CIDR, value: '2001:db8::/32', protocol: tls}]"
            ),
            none()
        );
    }

    #[test]
    fn d08_ip_with_prefix_is_not_an_ip() {
        assert_eq!(
            matches("[{type: IP, value: '2001:db8::1/128', protocol: tcp}]"),
            [at(0, "value", BAD_IP)]
        );
    }

    #[test]
    fn d09_cidr_needs_a_prefix_and_may_have_host_bits() {
        assert_eq!(
            matches("[{type: CIDR, value: 10.0.0.0, protocol: tcp}]"),
            [at(0, "value", BAD_CIDR)]
        );
        assert_eq!(
            matches("[{type: CIDR, value: 10.0.0.1/8, protocol: tcp}]"),
            none()
        );
    }

    #[test]
    fn d10_bare_wildcard_tls_without_port_is_valid() {
        assert_eq!(
            matches("[{type: Domain, value: '*', protocol: tls}]"),
            none()
        );
    }

    #[test]
    fn d11_bare_wildcard_http_without_port_is_refused() {
        assert_eq!(
            matches("[{type: Domain, value: '*', protocol: http}]"),
            [at(0, "port", WILDCARD_L7)]
        );
    }

    #[test]
    fn d12_double_wildcard_label_is_valid() {
        assert_eq!(
            matches("[{type: Domain, value: '*.*.example.com', port: 443, protocol: tls}]"),
            none()
        );
    }

    #[test]
    fn d13_wildcard_dot_alone_is_not_a_name() {
        assert_eq!(
            matches("[{type: Domain, value: '*.', port: 443, protocol: tls}]"),
            [at(0, "value", BAD_DNS)]
        );
    }

    #[test]
    fn d14_double_star_is_a_partial_wildcard() {
        assert_eq!(
            matches("[{type: Domain, value: '**.example.com', port: 443, protocol: tls}]"),
            [at(0, "value", PARTIAL)]
        );
    }

    #[test]
    fn d15_domain_http_without_port_is_valid() {
        assert_eq!(
            matches("[{type: Domain, value: example.com, protocol: http}]"),
            none()
        );
    }

    #[test]
    fn d16_omitted_protocol_is_tcp_which_a_domain_cannot_use() {
        // Our model applies the CRD default `tcp`, as Kuma's REST and Kubernetes paths do.
        assert_eq!(
            matches("[{type: Domain, value: a.com}]"),
            [at(
                0,
                "protocol",
                "protocol tcp is not supported for a domain"
            )]
        );
        // Kuma's bare Go validator sees an empty protocol instead; so do we if it is written.
        assert_eq!(
            matches("[{type: Domain, value: a.com, protocol: ''}]"),
            [at(0, "protocol", UNKNOWN_PROTOCOL)]
        );
    }

    #[test]
    fn d17_portless_duplicates_are_not_detected() {
        assert_eq!(
            matches(
                "[{type: IP, value: 1.1.1.1, protocol: tcp}, \
                  {type: IP, value: 1.1.1.1, protocol: tcp}]"
            ),
            none()
        );
    }

    #[test]
    fn d18_duplicate_check_is_case_sensitive() {
        assert_eq!(
            matches(
                "[{type: Domain, value: A.com, port: 80, protocol: http}, \
                  {type: Domain, value: a.com, port: 80, protocol: http}]"
            ),
            none()
        );
    }

    #[test]
    fn d19_trailing_dot_underscore_and_single_label_are_names() {
        assert_eq!(
            matches(
                "[{type: Domain, value: example.com., port: 443, protocol: tls}, \
                  {type: Domain, value: ex_ample.com, port: 443, protocol: tls}, \
                  {type: Domain, value: localhost, port: 443, protocol: tls}]"
            ),
            none()
        );
    }

    #[test]
    fn d20_leading_dash_empty_label_and_long_label_are_not_names() {
        let long = format!("{}.com", "a".repeat(64));
        for bad in ["-example.com", "a..b", long.as_str()] {
            assert_eq!(
                matches(&format!(
                    "[{{type: Domain, value: '{bad}', port: 443, protocol: tls}}]"
                )),
                [at(0, "value", BAD_DNS)],
                "{bad}"
            );
        }
    }

    #[test]
    fn d21_mode_all_with_valid_matches_is_valid() {
        let spec = "default: {passthroughMode: All, appendMatch: \
                    [{type: Domain, value: a.com, port: 443, protocol: tls}]}";
        assert_eq!(check(spec), none());
        assert_eq!(validate(&policy(Format::Universal, "p", spec)), []);
    }

    #[test]
    fn d22_meshservice_target_is_not_supported() {
        assert_eq!(
            check("targetRef: {kind: MeshService, name: x}"),
            ["spec.targetRef.kind: value 'MeshService' is not supported"]
        );
    }

    #[test]
    fn d23_mesh_with_empty_proxy_types_is_refused() {
        assert_eq!(
            check("targetRef: {kind: Mesh, proxyTypes: []}"),
            ["spec.targetRef.proxyTypes: must be undefined or have at least one element"]
        );
    }

    #[test]
    fn d24_dataplane_with_labels_and_name_is_refused() {
        assert_eq!(
            check("targetRef: {kind: Dataplane, labels: {app: x}, name: y}"),
            ["spec.targetRef.labels: either labels or name and namespace must be specified"]
        );
    }

    #[test]
    fn d25_dataplane_with_section_name_is_refused() {
        assert_eq!(
            check("targetRef: {kind: Dataplane, sectionName: http}"),
            ["spec.targetRef.sectionName: can only be used with inbound policies"]
        );
    }

    #[test]
    fn d26_meshsubset_is_accepted_as_in_v2_14() {
        // Refused on Kuma master only; passthrough follows v2.14.
        assert_eq!(check("targetRef: {kind: MeshSubset, tags: {a: b}}"), none());
    }

    #[test]
    fn d27_tcp_and_mysql_on_one_ip_and_port_are_validator_valid() {
        assert_eq!(
            matches(
                "[{type: IP, value: 1.1.1.1, port: 3306, protocol: tcp}, \
                  {type: IP, value: 1.1.1.1, port: 3306, protocol: mysql}]"
            ),
            none()
        );
    }

    #[test]
    fn d28_http_and_http2_on_one_port_in_two_policies_are_each_valid() {
        // The conflict between the two is found when policies are merged, not here.
        assert_eq!(
            matches("[{type: Domain, value: a.com, port: 8080, protocol: http}]"),
            none()
        );
        assert_eq!(
            matches("[{type: Domain, value: b.com, port: 8080, protocol: http2}]"),
            none()
        );
    }

    // Schema-level checks of whole policies.

    #[test]
    fn schema_passthrough_mode_must_be_all_matched_or_none() {
        for good in ["All", "Matched", "None"] {
            let spec = format!("default: {{passthroughMode: {good}}}");
            assert_eq!(
                validate(&policy(Format::Universal, "p", &spec)),
                [],
                "{good}"
            );
        }
        assert_eq!(validate(&policy(Format::Universal, "p", "default: {}")), []);
        for (bad, shown) in [("all", "\"all\""), ("''", "\"\""), ("Some", "\"Some\"")] {
            let spec = format!("default: {{passthroughMode: {bad}}}");
            assert_eq!(
                lines(validate(&policy(Format::Universal, "p", &spec))),
                [format!(
                    "spec.default.passthroughMode: unsupported value {shown}: must be one of \"All\", \"Matched\", \"None\""
                )]
            );
        }
    }

    #[test]
    fn schema_proxy_types_must_be_sidecar_or_gateway() {
        assert_eq!(
            lines(validate(&policy(
                Format::Universal,
                "p",
                "targetRef: {kind: Mesh, proxyTypes: [Sidecar, Ingress, Gateway, sidecar]}"
            ))),
            [
                "spec.targetRef.proxyTypes[1]: unsupported value \"Ingress\": must be one of \"Sidecar\", \"Gateway\"",
                "spec.targetRef.proxyTypes[3]: unsupported value \"sidecar\": must be one of \"Sidecar\", \"Gateway\"",
            ]
        );
    }

    #[test]
    fn schema_name_is_required_at_the_formats_field() {
        assert_eq!(
            lines(validate(&policy(Format::Kubernetes, "", "{}"))),
            ["metadata.name: must be defined"]
        );
        assert_eq!(
            lines(validate(&policy(Format::Universal, "", "{}"))),
            ["name: must be defined"]
        );
    }

    #[test]
    fn schema_kubernetes_name_must_be_a_dns1123_subdomain() {
        for good in ["a", "mp-1", "allow.example.com", "0abc", &"a".repeat(253)] {
            assert_eq!(
                validate(&policy(Format::Kubernetes, good, "{}")),
                [],
                "{good}"
            );
        }
        for bad in ["Bad", "a_b", "-a", "a-", "a..b", "a.-b", ".a", "a.", "a b"] {
            let got = validate(&policy(Format::Kubernetes, bad, "{}"));
            assert_eq!(got.len(), 1, "{bad}: {got:?}");
            assert_eq!(got[0].field, "metadata.name");
            assert!(got[0].message.contains("RFC 1123"), "{bad}");
        }
        let got = validate(&policy(Format::Kubernetes, &"a".repeat(254), "{}"));
        assert_eq!(
            lines(got),
            ["metadata.name: must be no more than 253 characters"]
        );
    }

    #[test]
    fn schema_universal_names_are_not_dns1123_checked() {
        assert_eq!(validate(&policy(Format::Universal, "Allow_All", "{}")), []);
    }

    #[test]
    fn schema_violations_come_before_kumas_validator_in_document_order() {
        let p = policy(
            Format::Kubernetes,
            "Bad_Name",
            "targetRef: {kind: Mesh, proxyTypes: [Ingress], name: x}\n\
             default: {passthroughMode: Some, appendMatch: [{type: IP, value: x}]}",
        );
        let fields: Vec<String> = validate(&p).into_iter().map(|v| v.field).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.targetRef.proxyTypes[0]",
                "spec.default.passthroughMode",
                "spec.targetRef.name",
                "spec.default.appendMatch[0].value",
            ]
        );
    }

    // Go's net.ParseIP and net.ParseCIDR, and govalidator's IsDNSName.

    #[test]
    fn go_parse_ip_accepts_what_go_accepts() {
        for (s, want) in [
            ("1.2.3.4", "1.2.3.4"),
            ("0.0.0.0", "0.0.0.0"),
            ("255.255.255.255", "255.255.255.255"),
            ("10.0.0.10", "10.0.0.10"),
            ("::", "::"),
            ("::1", "::1"),
            ("2001:DB8::1", "2001:db8::1"),
            ("0001:0::1", "1::1"),
            ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
            ("::1.2.3.4", "::1.2.3.4"),
            ("1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304"),
            ("1::5:1.2.3.4", "1::5:102:304"),
            ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"),
            ("1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"),
            ("::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8"),
            ("1::", "1::"),
        ] {
            let want: IpAddr = want.parse().expect("test address");
            assert_eq!(parse_ip(s), Some(want), "{s}");
        }
        assert!(parse_ip("::ffff:1.2.3.4").is_some_and(|ip| ip.is_ipv6()));
    }

    #[test]
    fn go_parse_ip_refuses_what_go_refuses() {
        for s in [
            "",
            "01.2.3.4",
            "1.2.3.04",
            "1.2.3.00",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "1.2.3.-4",
            "1..2.3",
            ".1.2.3",
            "1.2.3.4.",
            "0x1.2.3.4",
            "1.2.3.4 ",
            " 1.2.3.4",
            "1.2.3.4/32",
            "1.2.3.4%eth0",
            "1.2.3.4:80",
            "\u{ff11}.2.3.4",
            "fe80::1%eth0",
            "fe80::1%",
            "[::1]",
            "::ffff:01.2.3.4",
            "::ffff:1.2.3",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7",
            "1::2::3",
            "1:::2",
            ":1::",
            "::1:",
            "1:2:3:4:5:6:7:8::",
            "1:2:3:4:5:6:7::8",
            "12345::",
            "1.2.3.4::",
            "::1.2.3.4:5",
            "1:2:3:4:5:6:7:1.2.3.4",
            "1:2:3:4:5:1.2.3.4",
            "::1:2:3:4:5:6:1.2.3.4",
            "g::1",
            "localhost",
        ] {
            assert_eq!(parse_ip(s), None, "{s:?}");
        }
    }

    #[test]
    fn go_parse_cidr_edge_cases() {
        let ip = |s: &str| -> IpAddr { s.parse().expect("test address") };
        for (s, want) in [
            ("1.2.3.4/24", Some((ip("1.2.3.4"), 24))),
            ("0.0.0.0/0", Some((ip("0.0.0.0"), 0))),
            ("10.0.0.1/32", Some((ip("10.0.0.1"), 32))),
            // Go's decimal parser takes leading zeros in the length.
            ("1.2.3.4/024", Some((ip("1.2.3.4"), 24))),
            ("1.2.3.4/00", Some((ip("1.2.3.4"), 0))),
            (
                "1.2.3.4/000000000000000000000000032",
                Some((ip("1.2.3.4"), 32)),
            ),
            ("::/0", Some((ip("::"), 0))),
            ("2001:db8::/32", Some((ip("2001:db8::"), 32))),
            ("::1/128", Some((ip("::1"), 128))),
            // A mapped IPv4 address is IPv6 for Go, lengths up to 128.
            ("::ffff:1.2.3.4/120", Some((ip("::ffff:1.2.3.4"), 120))),
            ("::ffff:1.2.3.4/33", Some((ip("::ffff:1.2.3.4"), 33))),
            ("1.2.3.4", None),
            ("1.2.3.4/", None),
            ("/8", None),
            ("1.2.3.4/33", None),
            ("1.2.3.4/-1", None),
            ("1.2.3.4/+8", None),
            ("1.2.3.4/ 8", None),
            ("1.2.3.4/8 ", None),
            ("1.2.3.4/8/8", None),
            ("1.2.3.4/0x8", None),
            ("1.2.3.4/4294967320", None),
            ("::/129", None),
            ("::ffff:1.2.3.4/129", None),
            ("01.2.3.4/8", None),
            ("fe80::1%eth0/64", None),
            ("1.2.3/8", None),
            ("example.com/8", None),
        ] {
            assert_eq!(parse_cidr(s), want, "{s:?}");
        }
    }

    #[test]
    fn govalidator_is_dns_name_accepts() {
        let label63 = "a".repeat(63);
        let with_suffix = format!("{label63}_");
        let four_labels = [label63.as_str(); 4].join(".");
        for s in [
            "example.com",
            "example.com.",
            "example.com_",
            "ex_ample.com",
            "_srv._tcp.example.com",
            "EXAMPLE.Com",
            "a",
            "_",
            "localhost",
            "1a.com",
            "a-.com",
            "a.com._",
            "a.com_.",
            // Not an IP for Go (leading zero, or three parts), so a name.
            "01.2.3.4",
            "1.2.3",
            label63.as_str(),
            // 63 characters and the optional trailing `_`.
            with_suffix.as_str(),
            // 252 bytes without the dots.
            four_labels.as_str(),
        ] {
            assert!(is_dns_name(s), "{s:?}");
        }
    }

    #[test]
    fn govalidator_is_dns_name_refuses() {
        let label64 = "a".repeat(64);
        let too_long = ["a".repeat(52).as_str(); 5].join(".");
        for s in [
            "",
            ".",
            ".a",
            "a..b",
            "a.com..",
            "a.-.",
            "-a.com",
            "a.-b",
            "a b",
            "a@b.com",
            "*.example.com",
            "exämple.com",
            "1.2.3.4",
            "::1",
            "a.com\n",
            label64.as_str(),
            // 260 bytes without the dots.
            too_long.as_str(),
        ] {
            assert!(!is_dns_name(s), "{s:?}");
        }
    }

    #[test]
    fn govalidator_is_dns_name_matches_the_regex_on_every_short_string() {
        // The hand-written matcher against govalidator's pattern, over every string of up to
        // six characters from an alphabet that exercises each part of it; the length and IP
        // exclusions are applied to both.
        let re = Regex::new(
            r"^([a-zA-Z0-9_]{1}[a-zA-Z0-9_-]{0,62}){1}(\.[a-zA-Z0-9_]{1}[a-zA-Z0-9_-]{0,62})*[\._]?$",
        )
        .expect("govalidator's pattern compiles");
        let alphabet = ['a', 'Z', '1', '_', '-', '.', '*'];
        let mut strings = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..6 {
            frontier = frontier
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            strings.extend(frontier.iter().cloned());
        }
        for long in [62, 63, 64] {
            for tail in ["", "_", ".", "-", ".a", "_.a"] {
                strings.push(format!("{}{tail}", "a".repeat(long)));
                strings.push(format!("b.{}{tail}", "a".repeat(long)));
            }
        }
        for s in &strings {
            let want = !s.is_empty() && parse_ip(s).is_none() && re.is_match(s);
            assert_eq!(is_dns_name(s), want, "{s:?}");
        }
    }

    #[test]
    fn go_quote_matches_strconv_quote() {
        for (s, want) in [
            ("", r#""""#),
            ("abc", r#""abc""#),
            ("a b", r#""a b""#),
            ("q\"b\\s", r#""q\"b\\s""#),
            ("\u{7}\u{8}\u{c}\n\r\t\u{b}", r#""\a\b\f\n\r\t\v""#),
            ("\u{0}\u{1b}\u{7f}", r#""\x00\x1b\x7f""#),
            ("ü日本", "\"ü日本\""),
            ("\u{a0}\u{ad}\u{200b}", r#""\u00a0\u00ad\u200b""#),
            ("\u{e000}", r#""\ue000""#),
            ("\u{f0000}", r#""\U000f0000""#),
            ("😀", "\"😀\""),
        ] {
            assert_eq!(go_quote(s), want, "{s:?}");
        }
    }
}
