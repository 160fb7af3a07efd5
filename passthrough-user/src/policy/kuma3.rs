//! Kuma 3's MeshPassthrough (docs/policy.md, "Kuma 3"): what its validator adds to Kuma 2's
//! appendMatch rules, its `targetRef` (kinds `Mesh` and `Dataplane`, selection by labels
//! only), the listener filter chain conflicts it rejects on apply, and what it does with a
//! policy stored before the upgrade.
//!
//! `validate` calls these in Kuma's order; the messages Kuma 3 is known to print are kept byte
//! for byte (the constants below), the others are passthrough's own, and docs/policy.md says
//! which is which and what was verified against Kuma's source.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::{
    Violation, hints,
    kuma::Admission,
    model::{Conf, Match, Policy, Spec, TargetRef},
    validate::{parse_cidr, parse_ip},
};

/// The targetRef kinds of Kuma 3's schema.
pub const TARGET_KINDS: [&str; 2] = ["Mesh", "Dataplane"];
/// The schema's message for another kind (the CRD enum, as Kuma's REST API and the Kubernetes
/// API server print it for `spec.targetRef.kind`).
pub const KIND_NOT_IN_ENUM: &str = "in body should be one of [Mesh Dataplane]";
/// A non-wildcard Domain without a port.
pub const DOMAIN_NEEDS_PORT: &str =
    "port must be defined for a domain, the sidecar resolves the domain to pin the destination";
/// Two of http, http2, grpc on one address in entries without a port: Kuma's message for
/// the listener it cannot build (`port 0` is every port).
pub const PORTLESS_L7: &str = "you cannot configure http, http2, grpc on the same port 0";

const L7: [&str; 3] = ["grpc", "http", "http2"];

/// Kuma 3's `ValidateTargetRef` for MeshPassthrough, field prefix `spec.targetRef.`. A
/// missing kind, or one outside the schema's enum, ends the check.
pub fn validate_target_ref(tr: &TargetRef, out: &mut Vec<Violation>) {
    let at = |field: &str| format!("spec.targetRef.{field}");
    if tr.kind.is_empty() {
        out.push(Violation::new(at("kind"), "must be defined"));
        return;
    }
    if !TARGET_KINDS.contains(&tr.kind.as_str()) {
        out.push(Violation::new(at("kind"), KIND_NOT_IN_ENUM).with_hint(kind_hint(tr)));
        return;
    }
    let set = |s: &Option<String>| s.as_ref().is_some_and(|s| !s.is_empty());
    let labels = tr.labels.as_ref().is_some_and(|m| !m.is_empty());
    if tr.kind == "Mesh" {
        for (field, is_set) in [("labels", labels), ("sectionName", set(&tr.section_name))] {
            if is_set {
                out.push(
                    Violation::new(at(field), "must not be set with kind Mesh").with_hint(
                        "kind Mesh selects every proxy of the mesh; to select some, write kind: Dataplane with labels",
                    ),
                );
            }
        }
    } else if set(&tr.section_name) {
        // MeshPassthrough is not an inbound policy, so a section cannot be named.
        out.push(Violation::new(
            at("sectionName"),
            "can only be used with inbound policies",
        ));
    }
}

/// What to write instead of a kind Kuma 3 does not have.
fn kind_hint(tr: &TargetRef) -> String {
    let q = format!("{:?}", tr.kind);
    match tr.kind.as_str() {
        "MeshSubset" => format!(
            "{q}: Kuma 3 has no MeshSubset: write kind: Dataplane with labels{} (`passthrough migrate` rewrites it)",
            tr.tags
                .as_ref()
                .filter(|t| !t.is_empty())
                .map(|t| format!(" {}", map_text(t)))
                .unwrap_or_default()
        ),
        "MeshGateway" => format!(
            "{q}: Kuma 3 selects gateways like any proxy: write kind: Dataplane with the labels of the gateway's Dataplanes"
        ),
        k if TARGET_KINDS.iter().any(|t| t.eq_ignore_ascii_case(k)) => format!(
            "{q}: kinds are case-sensitive: write {}",
            TARGET_KINDS
                .iter()
                .find(|t| t.eq_ignore_ascii_case(k))
                .unwrap_or(&"Mesh")
        ),
        _ => format!("{q}: a MeshPassthrough selects with kind Mesh or Dataplane (by labels)"),
    }
}

/// `{k: v, ...}`, as YAML flow style.
pub fn map_text(m: &BTreeMap<String, String>) -> String {
    let items: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", items.join(", "))
}

/// What Kuma 3 accepts and quietly changes: the targetRef fields its schema does not have
/// (pruned by the Kubernetes API server, dropped by Kuma's REST API), and, for a stored
/// policy, the CIDR host bits Kuma 2 accepted. Warnings only.
pub fn warnings(spec: &Spec, admission: Admission) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Some(tr) = &spec.target_ref
        && TARGET_KINDS.contains(&tr.kind.as_str())
    {
        pruned(tr, &mut out);
    }
    if admission == Admission::Stored {
        for (i, m) in spec.default.matches().iter().enumerate() {
            if m.kind == "CIDR"
                && let Some(net) = hints::host_bits(&m.value)
            {
                out.push(
                    Violation::warning(
                        format!("spec.default.appendMatch[{i}].value"),
                        format!(
                            "{} has host bits set: it is enforced as {net}, the network it lies in, as Kuma 2 did (Kuma 3 refuses it on apply)",
                            m.value
                        ),
                    )
                    .with_hint(format!("write {net}")),
                );
            }
        }
    }
    out
}

/// One warning per targetRef field Kuma 3 drops, saying what the policy selects without it.
fn pruned(tr: &TargetRef, out: &mut Vec<Violation>) {
    let at = |field: &str| format!("spec.targetRef.{field}");
    let set = |s: &Option<String>| s.as_ref().is_some_and(|s| !s.is_empty());
    let labels = tr.labels.as_ref().is_some_and(|m| !m.is_empty());
    let dropped =
        "is not in Kuma 3's schema: it is dropped (pruned on Kubernetes, ignored on Universal)";
    if tr.kind == "Dataplane" && (set(&tr.name) || set(&tr.namespace)) {
        let field = if set(&tr.name) { "name" } else { "namespace" };
        let who = match (&tr.name, &tr.namespace) {
            (Some(n), Some(ns)) if !n.is_empty() && !ns.is_empty() => format!("{ns}/{n}"),
            (Some(n), _) if !n.is_empty() => n.clone(),
            (_, Some(ns)) => format!("namespace {ns}"),
            _ => String::new(),
        };
        let v = if labels {
            Violation::warning(
                at(field),
                format!(
                    "{field} {dropped}; Kuma 3 selects Dataplanes by labels only, so this policy selects the Dataplanes with labels {}, not the Dataplane {who}",
                    map_text(tr.labels.as_ref().unwrap_or(&BTreeMap::new()))
                ),
            )
        } else {
            Violation::warning(
                at(field),
                format!(
                    "{field} {dropped}; Kuma 3 selects Dataplanes by labels only, so this reference to the Dataplane {who} selects every Dataplane of the mesh"
                ),
            )
        };
        out.push(v.with_hint(
            "write labels that select this Dataplane (e.g. its pod's app label) instead of name and namespace",
        ));
    } else {
        for (field, is_set) in [("name", set(&tr.name)), ("namespace", set(&tr.namespace))] {
            if is_set {
                out.push(
                    Violation::warning(at(field), format!("{field} {dropped}"))
                        .with_hint(format!("remove {field}")),
                );
            }
        }
    }
    if set(&tr.mesh) {
        out.push(
            Violation::warning(
                at("mesh"),
                format!("mesh {dropped}; the policy's own mesh applies"),
            )
            .with_hint("remove mesh"),
        );
    }
    if let Some(tags) = tr.tags.as_ref().filter(|t| !t.is_empty()) {
        let rest = if labels {
            "the labels alone select"
        } else if tr.kind == "Mesh" {
            "the policy selects every proxy of the mesh"
        } else {
            "this reference selects every Dataplane of the mesh"
        };
        out.push(
            Violation::warning(at("tags"), format!("tags {dropped}; {rest}")).with_hint(format!(
                "select by Dataplane labels instead: kind: Dataplane, labels: {}",
                map_text(tags)
            )),
        );
    }
    if let Some(types) = tr.proxy_types.as_ref().filter(|t| !t.is_empty()) {
        let every = ["Sidecar", "Gateway"]
            .iter()
            .all(|t| types.iter().any(|x| x == t));
        let meaning = if every {
            "it listed every proxy type, so nothing changes".to_string()
        } else {
            format!(
                "the policy applies to every proxy type, not only {}",
                types.join(", ")
            )
        };
        out.push(
            Violation::warning(at("proxyTypes"), format!("proxyTypes {dropped}; {meaning}"))
                .with_hint(if every {
                    "remove proxyTypes".to_string()
                } else {
                    "remove proxyTypes, and select the proxies by Dataplane labels if some must be left out".to_string()
                }),
        );
    }
}

/// A CIDR with host bits set, refused on apply (`None`: none set, or a stored policy, where
/// Kuma 2's warning stays).
pub fn host_bits(i: usize, m: &Match, admission: Admission) -> Option<Violation> {
    if admission == Admission::Stored {
        return None;
    }
    let net = hints::host_bits(&m.value)?;
    Some(
        Violation::new(
            format!("spec.default.appendMatch[{i}].value"),
            format!(
                "{} has host bits set: Kuma 3 refuses it; the network it lies in is {net}",
                m.value
            ),
        )
        .with_hint(format!("write {net}")),
    )
}

/// A non-wildcard Domain entry without a port: refused on apply; in a stored policy the entry
/// stops applying.
pub fn domain_port(i: usize, m: &Match, admission: Admission) -> Option<Violation> {
    if !needs_port(m) {
        return None;
    }
    let field = format!("spec.default.appendMatch[{i}].port");
    let fix = format!(
        "give the port {} is reached on, e.g. port: {} (`passthrough migrate --port-for {}=PORT` adds it)",
        m.value,
        if m.protocol == "http" { 80 } else { 443 },
        m.value
    );
    Some(match admission {
        Admission::Apply => Violation::new(field, DOMAIN_NEEDS_PORT).with_hint(fix),
        Admission::Stored => Violation::warning(
            field,
            format!(
                "{DOMAIN_NEEDS_PORT}: this stored entry has none, so Kuma 3 stops applying it ({} is no longer allowed on any port)",
                m.value
            ),
        )
        .with_hint(fix),
    })
}

/// A Domain entry Kuma 3 needs a port for: an exact name (not `*`, not `*.suffix`) without
/// one.
pub fn needs_port(m: &Match) -> bool {
    m.kind == "Domain" && m.port.is_none() && !m.value.starts_with('*')
}

/// How two entries build the same listener filter chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainConflict {
    /// Two of http, http2, grpc on one address in entries without a port.
    PortlessL7,
    /// One address written two ways (an IP and its /32 or /128, a CIDR with host bits and its
    /// network, two spellings of an IPv6 address), same port and protocol.
    SameAddress { net: IpNet },
    /// `tcp` and `mysql` on one address and port (their chains are both plain TCP).
    TcpAndMysql { net: IpNet },
}

/// A conflict between entry `first` and the later entry `second` of one policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub first: usize,
    pub second: usize,
    pub kind: ChainConflict,
}

/// The protocols whose listener chains match alike: tcp and mysql are both plain TCP,
/// http, http2 and grpc are all plaintext HTTP.
fn chain_class(protocol: &str) -> Option<&'static str> {
    match protocol {
        "tcp" | "mysql" => Some("tcp"),
        "tls" => Some("tls"),
        "http" | "http2" | "grpc" => Some("http"),
        _ => None,
    }
}

/// The prefix an IP or CIDR entry's chain matches on, as Kuma builds it: an IP as its /32 or
/// /128, a CIDR as its network. IPv4-mapped IPv6 stays IPv6 (Kuma puts it in the IPv6
/// listener, apart from the IPv4 address).
fn chain_prefix(m: &Match) -> Option<IpNet> {
    let (ip, len) = match m.kind.as_str() {
        "IP" => {
            let ip = parse_ip(&m.value)?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
        "CIDR" => parse_cidr(&m.value)?,
        _ => return None,
    };
    IpNet::new(ip, len).ok().map(|n| n.trunc())
}

/// Which of a port's L7 entries share one listener filter chain in Kuma 3: all its Domain
/// entries (one aggregated chain per protocol, none of them matching an address), and each
/// address (IP or CIDR, by the prefix it matches). Two L7 protocols conflict only within a
/// scope: http on an IP and grpc on a domain may share a port.
pub fn l7_scope(m: &Match) -> String {
    match chain_prefix(m) {
        Some(net) => net.to_string(),
        None if m.kind == "Domain" => "domain".into(),
        None => format!("{}:{}", m.kind, m.value),
    }
}

/// The pairs of entries of `conf` that would build the same listener filter chain, each
/// reported once at its later entry against the first entry it meets. Entries `skip` lists
/// take no part (Kuma 3 has already dropped them). Exact repeats are left to Kuma 2's rules:
/// with a port they are its "already defiend" rule, without one they collapse into one
/// chain; two L7 protocols on one port are its same-port rule.
pub fn conflicts(conf: &Conf, skip: &BTreeSet<usize>) -> Vec<Conflict> {
    let mut out = Vec::new();
    let mut first_portless_l7: BTreeMap<String, (usize, &str)> = BTreeMap::new();
    let mut chains: BTreeMap<(&str, Option<u32>, IpNet), (usize, &Match)> = BTreeMap::new();
    for (i, m) in conf.matches().iter().enumerate() {
        if skip.contains(&i) || m.port.is_some_and(|p| p == 0 || p > 65535) {
            continue;
        }
        let Some(class) = chain_class(&m.protocol) else {
            continue;
        };
        let l7 = L7.contains(&m.protocol.as_str());
        if m.kind == "Domain" && m.port.is_none() && l7 {
            // Refused already: an exact name needs a port, an L7 wildcard too.
            continue;
        }
        if m.port.is_none() && l7 {
            let (first, protocol) = *first_portless_l7
                .entry(l7_scope(m))
                .or_insert((i, &m.protocol));
            if protocol != m.protocol {
                out.push(Conflict {
                    first,
                    second: i,
                    kind: ChainConflict::PortlessL7,
                });
                continue;
            }
        }
        let Some(net) = chain_prefix(m) else {
            continue;
        };
        let Some(&(first, seen)) = chains.get(&(class, m.port, net)) else {
            chains.insert((class, m.port, net), (i, m));
            continue;
        };
        let kind = if seen.protocol != m.protocol {
            if class == "http" {
                // Two L7 protocols: Kuma 2's same-port rule, or the port-less check above.
                continue;
            }
            ChainConflict::TcpAndMysql { net }
        } else if seen.value != m.value {
            ChainConflict::SameAddress { net }
        } else {
            continue;
        };
        out.push(Conflict {
            first,
            second: i,
            kind,
        });
    }
    out
}

/// The violations of the chain conflicts of `conf`: errors on apply; in a stored policy,
/// warnings that Kuma 3 drops the later entry.
pub fn conflict_violations(conf: &Conf, admission: Admission) -> Vec<Violation> {
    // Entries without a port that need one are refused (apply) or dropped (stored) already.
    let skip = portless_domains(conf);
    let matches: Vec<&Match> = conf.matches().iter().collect();
    conflicts(conf, &skip)
        .into_iter()
        .map(|c| {
            let (a, b) = (matches[c.first], matches[c.second]);
            let at = |field: &str| format!("spec.default.appendMatch[{}].{field}", c.second);
            let port = match b.port {
                Some(p) => format!("port {p}"),
                None => "every port".to_string(),
            };
            let (field, message, hint) = match &c.kind {
                ChainConflict::PortlessL7 => (
                    at("port"),
                    PORTLESS_L7.to_string(),
                    format!(
                        "appendMatch[{}] has protocol {} and no port, so {} without a port would share every port with it: give one of them a port, or use one of http, http2, grpc",
                        c.first, a.protocol, b.protocol
                    ),
                ),
                ChainConflict::SameAddress { net } => (
                    at("value"),
                    format!(
                        "value {} is the same address as appendMatch[{}] ({}) for {port} and protocol {}: both would build one listener filter chain",
                        b.value, c.first, a.value, b.protocol
                    ),
                    format!("both are {net}: keep one of them"),
                ),
                ChainConflict::TcpAndMysql { net } => (
                    at("protocol"),
                    format!(
                        "protocol {} on the address and port of appendMatch[{}] (protocol {}) would build the same listener filter chain: tcp and mysql cannot share an address and port",
                        b.protocol, c.first, a.protocol
                    ),
                    format!("{net} on {port}: keep one of the two; mysql only adds that nothing is inspected on the port"),
                ),
            };
            match admission {
                Admission::Apply => Violation::new(field, message).with_hint(hint),
                Admission::Stored => Violation::warning(
                    field,
                    format!(
                        "{message}; this policy was stored before Kuma 3, which keeps appendMatch[{}] and drops this entry",
                        c.first
                    ),
                )
                .with_hint(hint),
            }
        })
        .collect()
}

/// The exact Domain entries without a port: what Kuma 3 stops applying in a stored policy.
fn portless_domains(conf: &Conf) -> BTreeSet<usize> {
    conf.matches()
        .iter()
        .enumerate()
        .filter(|(_, m)| needs_port(m))
        .map(|(i, _)| i)
        .collect()
}

/// The policy as Kuma 3 applies it, once it has accepted it: the targetRef fields its schema
/// does not have are gone (so a Dataplane reference by name selects every Dataplane, and
/// proxyTypes no longer filter), and a stored policy's entries that Kuma 3 drops are marked
/// as dropped ([`Conf::dropped`]).
pub fn effective(mut policy: Policy, admission: Admission) -> Policy {
    if let Some(tr) = &mut policy.spec.target_ref {
        tr.name = None;
        tr.namespace = None;
        tr.mesh = None;
        tr.tags = None;
        tr.proxy_types = None;
    }
    if admission == Admission::Stored {
        let conf = &policy.spec.default;
        let mut dropped = portless_domains(conf);
        let later: Vec<usize> = conflicts(conf, &dropped)
            .into_iter()
            .map(|c| c.second)
            .collect();
        dropped.extend(later);
        policy.spec.default.dropped = dropped;
    }
    policy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{
        Severity,
        kuma::KumaVersion,
        load::{Document, parse_documents},
        validate::validate_for,
    };

    // Kuma's messages that Kuma 3 keeps, named once.
    const MUST_BE_DEFINED: &str = "must be defined";
    const TCP_DOMAIN: &str = "protocol tcp is not supported for a domain";
    const MYSQL_DOMAIN: &str = "protocol mysql is not supported for a domain";
    const MYSQL_PORT: &str = "port must be defined for Mysql protocol";
    const PARTIAL: &str =
        "provided DNS has incorrect value, partial wildcard is currently not supported";
    const WILDCARD_L7: &str = "wildcard domains doesn't work for all ports and layer 7 protocol";
    const SAME_PORT: &str = "using the same port in multiple matches requires the same protocol for the following protocols: [grpc http http2]";

    /// A Universal policy named `p` with this spec (YAML flow or block).
    fn policy(spec: &str) -> Policy {
        let text = format!("type: MeshPassthrough\nname: p\nspec: {spec}\n");
        match parse_documents("t.yaml", &text).expect("yaml").remove(0) {
            Document::Policy(p) => *p,
            Document::Invalid(e) => panic!("{e:?}"),
        }
    }

    /// Kuma 3's findings for a spec: `field: message`, warnings prefixed `warning: `.
    fn check(spec: &str, admission: Admission) -> Vec<String> {
        validate_for(&policy(spec), KumaVersion::V3, admission)
            .into_iter()
            .map(|v| {
                let w = if v.severity == Severity::Warning {
                    "warning: "
                } else {
                    ""
                };
                format!("{w}{}: {}", v.field, v.message)
            })
            .collect()
    }

    fn applied(spec: &str) -> Vec<String> {
        check(spec, Admission::Apply)
    }

    /// An appendMatch list in flow style, applied.
    fn matches(list: &str) -> Vec<String> {
        applied(&format!("{{default: {{appendMatch: {list}}}}}"))
    }

    fn at(i: usize, field: &str, message: &str) -> String {
        format!("spec.default.appendMatch[{i}].{field}: {message}")
    }

    fn none() -> Vec<String> {
        Vec::new()
    }

    #[derive(serde::Deserialize)]
    struct Expected {
        violations: Vec<ExpectedViolation>,
    }

    #[derive(serde::Deserialize)]
    struct ExpectedViolation {
        field: String,
        message: String,
    }

    fn expected(text: &str) -> Vec<(String, String)> {
        let e: Expected = serde_yaml::from_str(text).expect("expected output parses");
        e.violations
            .into_iter()
            .map(|v| (v.field, v.message))
            .collect()
    }

    /// Kuma 3's validator alone on a spec file, as Kuma's validator tests call it.
    fn spec_violations(text: &str) -> Vec<(String, String)> {
        let spec: Spec = serde_yaml::from_str(text).expect("spec parses");
        crate::policy::validate::validate_spec_for(&spec, KumaVersion::V3, Admission::Apply)
            .into_iter()
            .map(|v| {
                assert!(v.is_error() && v.hint.is_some(), "{v:?}");
                (v.field, v.message)
            })
            .collect()
    }

    #[test]
    fn the_documented_kuma_3_cases_are_valid_with_no_finding() {
        let docs = parse_documents(
            "valid.yaml",
            include_str!("../../tests/data/kuma3/valid.yaml"),
        )
        .expect("yaml");
        assert_eq!(docs.len(), 6);
        for d in docs {
            let Document::Policy(p) = d else {
                panic!("{d:?}")
            };
            assert_eq!(
                validate_for(&p, KumaVersion::V3, Admission::Apply),
                [],
                "{}",
                p.name
            );
        }
    }

    #[test]
    fn kuma_3_refuses_each_rule_of_its_invalid_case_in_order() {
        assert_eq!(
            spec_violations(include_str!("../../tests/data/kuma3/invalid.yaml")),
            expected(include_str!("../../tests/data/kuma3/invalid.output.yaml"))
        );
    }

    #[test]
    fn kumas_full_invalid_case_is_refused_alike_under_kuma_3() {
        // Every rule of Kuma 2's validator test is kept by Kuma 3, with its message.
        assert_eq!(
            spec_violations(include_str!("../../tests/data/validate/full-invalid.yaml")),
            expected(include_str!(
                "../../tests/data/validate/full-invalid.output.yaml"
            ))
        );
    }

    // targetRef.

    #[test]
    fn target_kinds_are_mesh_and_dataplane_with_the_schemas_message() {
        for kind in [
            "MeshSubset",
            "MeshService",
            "MeshServiceSubset",
            "MeshGateway",
            "mesh",
        ] {
            assert_eq!(
                applied(&format!("{{targetRef: {{kind: {kind}, tags: {{a: b}}}}}}")),
                [format!("spec.targetRef.kind: {KIND_NOT_IN_ENUM}")],
                "{kind}: the kind alone is reported"
            );
        }
        assert_eq!(
            applied("{targetRef: {kind: ''}}"),
            [format!("spec.targetRef.kind: {MUST_BE_DEFINED}")]
        );
        for ok in [
            "{targetRef: {kind: Mesh}}",
            "{targetRef: {kind: Dataplane}}",
            "{targetRef: {kind: Dataplane, labels: {app: web}}}",
            "{}",
        ] {
            assert_eq!(applied(ok), none(), "{ok}");
        }
    }

    #[test]
    fn mesh_refuses_labels_and_section_name_and_dataplane_a_section_name() {
        assert_eq!(
            applied("{targetRef: {kind: Mesh, labels: {app: web}, sectionName: http}}"),
            [
                "spec.targetRef.labels: must not be set with kind Mesh",
                "spec.targetRef.sectionName: must not be set with kind Mesh",
            ]
        );
        assert_eq!(
            applied("{targetRef: {kind: Dataplane, labels: {app: web}, sectionName: http}}"),
            ["spec.targetRef.sectionName: can only be used with inbound policies"]
        );
    }

    #[test]
    fn fields_kuma_3_drops_are_warnings_saying_what_is_selected_instead() {
        let w = applied("{targetRef: {kind: Dataplane, name: web, namespace: shop}}");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("warning: spec.targetRef.name: name is not in Kuma 3's schema")
                && w[0].ends_with(
                    "so this reference to the Dataplane shop/web selects every Dataplane of the mesh"
                ),
            "{w:?}"
        );
        // Kuma 2 refuses labels with a name; Kuma 3 drops the name and the labels select.
        let w = applied("{targetRef: {kind: Dataplane, name: web, labels: {app: web}}}");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("selects the Dataplanes with labels {app: web}, not the Dataplane web"),
            "{w:?}"
        );
        let w = applied("{targetRef: {kind: Mesh, proxyTypes: [Sidecar]}}");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("warning: spec.targetRef.proxyTypes: ")
                && w[0].ends_with("the policy applies to every proxy type, not only Sidecar"),
            "{w:?}"
        );
        let w = applied("{targetRef: {kind: Mesh, proxyTypes: [Sidecar, Gateway]}}");
        assert!(w[0].ends_with("so nothing changes"), "{w:?}");
        let w = applied("{targetRef: {kind: Mesh, name: x, mesh: m, tags: {a: b}}}");
        assert_eq!(
            w.iter()
                .map(|l| l.split(':').nth(1).unwrap_or_default().trim())
                .collect::<Vec<_>>(),
            [
                "spec.targetRef.name",
                "spec.targetRef.mesh",
                "spec.targetRef.tags"
            ],
            "{w:?}"
        );
        assert!(w.iter().all(|l| l.starts_with("warning: ")), "{w:?}");
    }

    // appendMatch: Kuma 2's rules that Kuma 3 keeps, and its own.

    #[test]
    fn domains_cannot_use_tcp_or_mysql_and_the_message_names_the_protocol() {
        assert_eq!(
            matches("[{type: Domain, value: a.com, port: 1, protocol: tcp}]"),
            [at(0, "protocol", TCP_DOMAIN)]
        );
        assert_eq!(
            matches("[{type: Domain, value: a.com, port: 3306, protocol: mysql}]"),
            [at(0, "protocol", MYSQL_DOMAIN)]
        );
        // The CRD default protocol is tcp, so a Domain that names none is refused too.
        assert_eq!(
            matches("[{type: Domain, value: a.com, port: 443}]"),
            [at(0, "protocol", TCP_DOMAIN)]
        );
    }

    #[test]
    fn an_exact_domain_needs_a_port_for_every_protocol() {
        for protocol in ["tls", "http", "http2", "grpc"] {
            assert_eq!(
                matches(&format!(
                    "[{{type: Domain, value: api.example.com, protocol: {protocol}}}]"
                )),
                [at(0, "port", DOMAIN_NEEDS_PORT)],
                "{protocol}"
            );
            assert_eq!(
                matches(&format!(
                    "[{{type: Domain, value: api.example.com, port: 8443, protocol: {protocol}}}]"
                )),
                none(),
                "{protocol}"
            );
        }
    }

    #[test]
    fn a_wildcard_needs_a_port_only_for_l7_protocols() {
        for value in ["'*.example.com'", "'*'"] {
            assert_eq!(
                matches(&format!(
                    "[{{type: Domain, value: {value}, protocol: tls}}]"
                )),
                none(),
                "{value}"
            );
        }
        for protocol in ["http", "http2", "grpc"] {
            assert_eq!(
                matches(&format!(
                    "[{{type: Domain, value: '*.example.com', protocol: {protocol}}}]"
                )),
                [at(0, "port", WILDCARD_L7)],
                "{protocol}"
            );
        }
    }

    #[test]
    fn partial_wildcards_and_mysql_without_a_port_are_refused() {
        assert_eq!(
            matches("[{type: Domain, value: '*w.example.com', port: 443, protocol: tls}]"),
            [at(0, "value", PARTIAL)]
        );
        assert_eq!(
            matches("[{type: IP, value: 10.0.0.1, protocol: mysql}]"),
            [at(0, "port", MYSQL_PORT)]
        );
    }

    #[test]
    fn a_cidr_with_host_bits_is_an_error() {
        let got = matches("[{type: CIDR, value: 10.1.2.3/16, port: 80}]");
        assert_eq!(
            got,
            [at(
                0,
                "value",
                "10.1.2.3/16 has host bits set: Kuma 3 refuses it; the network it lies in is 10.1.0.0/16"
            )]
        );
        assert_eq!(
            matches("[{type: CIDR, value: '2001:db8::1/32'}]").len(),
            1,
            "IPv6 too"
        );
        assert_eq!(matches("[{type: CIDR, value: 10.1.0.0/16}]"), none());
    }

    #[test]
    fn the_rules_of_one_domain_entry_come_in_kumas_order() {
        // mysql port (rule 1), protocol (rule 8), partial wildcard (rule 9); a wildcard needs
        // no port under rule 10b.
        assert_eq!(
            matches("[{type: Domain, value: '*w', protocol: mysql}]"),
            [
                at(0, "port", MYSQL_PORT),
                at(0, "protocol", MYSQL_DOMAIN),
                at(0, "value", PARTIAL),
            ]
        );
        // protocol (rule 8), then the port an exact name needs, then the name (rule 11).
        assert_eq!(
            matches("[{type: Domain, value: 'a..b'}]"),
            [
                at(0, "protocol", TCP_DOMAIN),
                at(0, "port", DOMAIN_NEEDS_PORT),
                at(0, "value", "provided DNS has incorrect value"),
            ]
        );
    }

    // Listener filter chain conflicts, rejected on apply.

    #[test]
    fn two_l7_protocols_conflict_on_one_port_within_a_scope() {
        // Two domains on one port: one aggregated chain each, matching alike.
        assert_eq!(
            matches(
                "[{type: Domain, value: a.com, port: 80, protocol: http}, \
                  {type: Domain, value: b.com, port: 80, protocol: grpc}]"
            ),
            [at(1, "port", SAME_PORT)]
        );
        // One address, one port.
        assert_eq!(
            matches(
                "[{type: IP, value: 1.1.1.1, port: 80, protocol: http}, \
                  {type: CIDR, value: 1.1.1.1/32, port: 80, protocol: http2}]"
            ),
            [at(1, "port", SAME_PORT)]
        );
        // One address, both without a port.
        assert_eq!(
            matches(
                "[{type: IP, value: 1.1.1.1, protocol: http}, \
                  {type: IP, value: 1.1.1.1, protocol: grpc}]"
            ),
            [at(1, "port", PORTLESS_L7)]
        );
    }

    #[test]
    fn what_kuma_3_allows_together() {
        for list in [
            // tls and http on one port.
            "[{type: Domain, value: a.com, port: 443, protocol: tls}, \
              {type: Domain, value: a.com, port: 443, protocol: http}]",
            // http on an IP and grpc on a domain, on one port.
            "[{type: IP, value: 1.1.1.1, port: 80, protocol: http}, \
              {type: Domain, value: a.com, port: 80, protocol: grpc}]",
            // several http domains on one port.
            "[{type: Domain, value: a.com, port: 80, protocol: http}, \
              {type: Domain, value: b.com, port: 80, protocol: http}, \
              {type: Domain, value: '*.c.com', port: 80, protocol: http}]",
            // Two L7 protocols on two addresses without a port.
            "[{type: IP, value: 1.1.1.1, protocol: http}, \
              {type: IP, value: 1.1.1.2, protocol: grpc}]",
            // tcp and mysql on two ports of one address, tls and tcp on one.
            "[{type: IP, value: 1.1.1.1, port: 3306, protocol: mysql}, \
              {type: IP, value: 1.1.1.1, port: 3307, protocol: tcp}, \
              {type: IP, value: 1.1.1.1, port: 3307, protocol: tls}]",
            // An IPv4 address and its IPv4-mapped IPv6 form are two listeners' entries.
            "[{type: IP, value: 1.1.1.1, port: 80}, {type: IP, value: '::ffff:1.1.1.1', port: 80}]",
            // The same value twice without a port is one chain.
            "[{type: IP, value: 1.1.1.1}, {type: IP, value: 1.1.1.1}]",
        ] {
            assert_eq!(matches(list), none(), "{list}");
        }
    }

    #[test]
    fn one_address_written_two_ways_conflicts() {
        let conflict = |list: &str, i: usize| {
            let got = matches(list);
            assert_eq!(got.len(), 1, "{list}: {got:?}");
            assert!(
                got[0].starts_with(&format!("spec.default.appendMatch[{i}].value: value "))
                    && got[0].ends_with("both would build one listener filter chain"),
                "{list}: {got:?}"
            );
        };
        conflict(
            "[{type: IP, value: 1.2.3.4, port: 80}, {type: CIDR, value: 1.2.3.4/32, port: 80}]",
            1,
        );
        conflict(
            "[{type: IP, value: '2001:db8::1', protocol: tls}, {type: IP, value: '2001:0db8:0::1', protocol: tls}]",
            1,
        );
        conflict(
            "[{type: CIDR, value: '2001:db8::/32'}, {type: CIDR, value: '2001:0db8::/32'}]",
            1,
        );
        // Host bits: the CIDR's own error, and the conflict with its network.
        let got = matches(
            "[{type: CIDR, value: 10.0.0.0/24, port: 80}, {type: CIDR, value: 10.0.0.7/24, port: 80}]",
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].contains("has host bits set"), "{got:?}");
        assert!(
            got[1].contains("is the same address as appendMatch[0] (10.0.0.0/24)"),
            "{got:?}"
        );
    }

    #[test]
    fn tcp_and_mysql_on_one_address_and_port_conflict() {
        let got = matches(
            "[{type: IP, value: 1.1.1.1, port: 3306, protocol: tcp}, \
              {type: CIDR, value: 1.1.1.1/32, port: 3306, protocol: mysql}]",
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("spec.default.appendMatch[1].protocol: protocol mysql on the address and port of appendMatch[0] (protocol tcp)"),
            "{got:?}"
        );
    }

    // Stored policies: accepted, and changed.

    #[test]
    fn a_stored_policy_gets_warnings_and_loses_what_kuma_3_drops() {
        let spec = "{default: {appendMatch: [\
            {type: Domain, value: api.example.com, protocol: tls}, \
            {type: IP, value: 1.1.1.1, port: 80}, \
            {type: CIDR, value: 1.1.1.1/32, port: 80}, \
            {type: Domain, value: web.example.com, port: 443, protocol: tls}]}}";
        let got = check(spec, Admission::Stored);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with(&format!(
                "warning: spec.default.appendMatch[0].port: {DOMAIN_NEEDS_PORT}: this stored entry has none"
            )),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("warning: spec.default.appendMatch[2].value: ")
                && got[1].ends_with("which keeps appendMatch[1] and drops this entry"),
            "{got:?}"
        );
        let p = effective(policy(spec), Admission::Stored);
        assert_eq!(p.spec.default.dropped, BTreeSet::from([0, 2]));
        let kept: Vec<usize> = p.spec.default.applied_matches().map(|(i, _)| i).collect();
        assert_eq!(kept, [1, 3], "every other entry keeps its index");
        // Applied, the same policy is refused.
        assert_eq!(check(spec, Admission::Apply).len(), 2);
        assert!(
            effective(policy(spec), Admission::Apply)
                .spec
                .default
                .dropped
                .is_empty()
        );
    }

    #[test]
    fn stored_host_bits_stay_a_warning_and_the_network_is_enforced() {
        let got = check(
            "{default: {appendMatch: [{type: CIDR, value: 10.1.2.3/16}]}}",
            Admission::Stored,
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("warning: spec.default.appendMatch[0].value: 10.1.2.3/16 has host bits set: it is enforced as 10.1.0.0/16"),
            "{got:?}"
        );
    }

    #[test]
    fn kuma_3_drops_the_fields_it_does_not_have() {
        let p = effective(
            policy(
                "{targetRef: {kind: Dataplane, name: web, namespace: shop, proxyTypes: [Sidecar]}}",
            ),
            Admission::Apply,
        );
        let tr = p.spec.target_ref.expect("targetRef");
        assert_eq!(
            (
                tr.kind.as_str(),
                tr.name,
                tr.namespace,
                tr.proxy_types,
                tr.labels
            ),
            ("Dataplane", None, None, None, None)
        );
    }

    #[test]
    fn kuma_2_keeps_its_own_rules_for_the_same_inputs() {
        // What Kuma 3 refuses, Kuma 2 accepts (and the other way round).
        let v2 = |spec: &str| {
            validate_for(&policy(spec), KumaVersion::V2, Admission::Apply)
                .into_iter()
                .filter(|v| v.is_error())
                .map(|v| format!("{}: {}", v.field, v.message))
                .collect::<Vec<_>>()
        };
        for spec in [
            "{default: {appendMatch: [{type: Domain, value: a.com, protocol: tls}]}}",
            "{default: {appendMatch: [{type: CIDR, value: 10.1.2.3/16}]}}",
            "{default: {appendMatch: [{type: IP, value: 1.1.1.1, port: 80}, {type: CIDR, value: 1.1.1.1/32, port: 80}]}}",
            "{targetRef: {kind: MeshSubset, tags: {a: b}}}",
            "{targetRef: {kind: Mesh, proxyTypes: [Sidecar]}}",
        ] {
            assert_eq!(v2(spec), none(), "{spec}");
            assert!(!applied(spec).is_empty(), "{spec}");
        }
        assert_eq!(
            v2(
                "{default: {appendMatch: [{type: IP, value: 1.1.1.1, port: 80, protocol: http}, {type: Domain, value: a.com, port: 80, protocol: grpc}]}}"
            ),
            [at(1, "port", SAME_PORT)]
        );
        assert_eq!(
            v2("{targetRef: {kind: Dataplane, name: web, labels: {app: web}}}"),
            ["spec.targetRef.labels: either labels or name and namespace must be specified"]
        );
    }
}
