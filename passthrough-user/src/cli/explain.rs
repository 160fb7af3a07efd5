//! `passthrough explain`: the verdict for one destination, and why.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    process::ExitCode,
};

use clap::Args as ClapArgs;
use ipnet::IpNet;
use serde::Serialize;

use super::{Output, fail, print_json, selector::WorkloadArgs};
use crate::policy::{
    bind::{DomainCheck, domain_check_for},
    compile::{CompiledPolicy, EffectiveMode, NamePattern, compile},
    containment::{Containment, RawSockets, UdpMode, decide_datagram},
    decide::{Action, Exemptions, Peeked, Verdict, decide},
    hints,
    kuma::KumaVersion,
    merge::{Merged, MergedEntry, Mismatch, PolicyRef, merged_for, mismatch},
    set::Finding,
    validate::is_dns_name,
    workload::Workload,
};

#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(flatten)]
    pub workload: WorkloadArgs,

    /// The TLS SNI the client sends (decides tls Domain entries).
    #[arg(long, group = "peeked")]
    pub sni: Option<String>,

    /// The HTTP/1 Host the client sends (decides http Domain entries).
    #[arg(long, group = "peeked")]
    pub host: Option<String>,

    /// The HTTP/2 :authority the client sends (decides http2 and grpc Domain entries).
    #[arg(long, group = "peeked")]
    pub authority: Option<String>,

    /// The agent's `proxy.domainCheck`: what an allowed name binds the connection to
    /// (Pin, Verify or Trust).
    #[arg(long = "domain-check", value_name = "CHECK", default_value = "Pin")]
    pub domain_check: DomainCheck,

    /// The agent's `udp.mode` for this workload: Allow (Kuma's default) or Deny.
    #[arg(long = "udp", value_name = "MODE", default_value = "Allow", value_parser = parse_udp)]
    pub udp: UdpMode,

    /// Under `--udp Deny`, a resolver network UDP to port 53 may reach (repeatable;
    /// default: any address).
    #[arg(long = "dns", value_name = "CIDR")]
    pub dns: Vec<IpNet>,

    /// The agent's `rawSockets` for this workload: Deny (the default) or Allow.
    #[arg(long = "raw-sockets", value_name = "SETTING", default_value = "Deny", value_parser = parse_raw)]
    pub raw_sockets: RawSockets,

    /// The agent runs with `proxy: {enabled: false}`: a connect only a Domain entry could
    /// allow is then denied in the kernel (domain_no_proxy), whatever name the client sends.
    #[arg(long, conflicts_with = "peeked")]
    pub proxy_off: bool,

    /// Explain a UDP datagram to DESTINATION instead of a TCP connect.
    #[arg(long, conflicts_with = "peeked")]
    pub datagram: bool,

    /// A mesh CIDR of the agent config, always allowed (repeatable).
    #[arg(long = "mesh-cidr", value_name = "CIDR", value_parser = mesh_cidr)]
    pub mesh_cidrs: Vec<IpNet>,

    /// Destination address and port: 1.2.3.4:443 or [2001:db8::1]:443. For a name, give the
    /// address it resolves to and the name with --sni, --host or --authority.
    #[arg(value_name = "DESTINATION", value_parser = destination)]
    pub destination: SocketAddr,
}

/// A `--mesh-cidr` value; the message says what is wrong with it.
fn mesh_cidr(s: &str) -> Result<IpNet, String> {
    s.parse().map_err(|_| hints::cidr(s))
}

/// The destination, or what to write instead: a name points to --sni/--host/--authority, an
/// IPv6 address with a port to the bracketed form.
pub fn destination(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let split = s.rsplit_once(':');
    let port_of = |p: &str| {
        p.parse::<u32>()
            .ok()
            .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some((host, port)) = split
        && host.contains(':')
        && host.parse::<Ipv6Addr>().is_ok()
        && port_of(port).is_some_and(|p| p <= 65535)
    {
        return Err(format!(
            "{s:?} has no brackets, so it is read as one IPv6 address; an IPv6 address with a port is written [{host}]:{port}"
        ));
    }
    if s.parse::<IpAddr>().is_ok() {
        let example = if s.contains(':') {
            format!("[{s}]:443")
        } else {
            format!("{s}:443")
        };
        return Err(format!(
            "{s:?} has no port: write the port too, e.g. {example}"
        ));
    }
    if let Some((host, port)) = split
        && let Some(p) = port_of(port)
    {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if p > 65535 && bare.parse::<IpAddr>().is_ok() {
            return Err(format!("{s:?}: port {p} is outside 1-65535"));
        }
        if is_dns_name(host) {
            return Err(format!(
                "{s:?} is a name, not an address: explain judges the address the client connects to and the name it sends; give the address {host} resolves to and the name, e.g. --sni {host} 198.51.100.10:{port} (TLS), --host {host} (HTTP/1) or --authority {host} (HTTP/2)"
            ));
        }
    }
    if is_dns_name(s) {
        return Err(format!(
            "{s:?} is a name without a port: give the address it resolves to with a port, and the name with --sni, --host or --authority, e.g. --sni {s} 198.51.100.10:443"
        ));
    }
    Err(format!(
        "{s:?} is not an address with a port: write 198.51.100.10:443 or [2001:db8::1]:443"
    ))
}

/// A policy that was read and does not select the workload, and why.
#[derive(Debug, Serialize)]
pub struct NotSelected {
    pub policy: PolicyRef,
    #[serde(flatten)]
    pub why: Mismatch,
    pub message: String,
}

/// What `explain -o json` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The Kuma the policies were read for.
    pub kuma: KumaVersion,
    pub workload: Workload,
    pub destination: SocketAddr,
    /// Policies read (every one of them valid) and the files they came from.
    pub policies_read: usize,
    pub files_read: usize,
    /// Selected policies, weakest first.
    pub policies: Vec<PolicyRef>,
    /// The policies read that do not select the workload, each with the reason.
    pub not_selected: Vec<NotSelected>,
    pub mode: EffectiveMode,
    pub mode_from: Option<PolicyRef>,
    pub audit: bool,
    pub peeked: Option<Peeked>,
    pub verdict: Verdict,
    /// The deciding appendMatch entry.
    pub rule: Option<MergedEntry>,
    /// For a proxy verdict: the Domain entries that could admit the connection.
    pub candidates: Vec<MergedEntry>,
    /// For a name a Domain entry admits (or may admit): the name to address binding the
    /// proxy applies before it connects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_check: Option<String>,
    /// The UDP and raw socket settings and whether they bind this workload (modes None and
    /// Matched only).
    pub containment: Containment,
    pub containment_applies: bool,
    pub summary: String,
    /// What was reported about the policies without refusing them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Finding>,
}

pub fn run(args: &Args, output: Output) -> ExitCode {
    let loaded = match args.workload.load(output) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let policies = &loaded.policies;
    let workload = args.workload.workload();
    let opts = args.workload.select_options();
    let not_selected = policies
        .iter()
        .filter_map(|p| {
            let why = mismatch(p, &workload, &opts)?;
            Some(NotSelected {
                policy: PolicyRef::of(p),
                message: why.to_string(),
                why,
            })
        })
        .collect();
    let merged = match merged_for(policies, &workload, &opts) {
        Ok(m) => m,
        Err(conflicts) => {
            let text: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
            return fail(output, &text.join("; "));
        }
    };
    let compiled = match compile(&merged) {
        Ok(c) => c,
        Err(e) => return fail(output, &e.to_string()),
    };
    let peeked = if let Some(s) = &args.sni {
        Some(Peeked::Tls(Some(s.clone())))
    } else if let Some(h) = &args.host {
        Some(Peeked::Http1(Some(h.clone())))
    } else {
        args.authority
            .as_ref()
            .map(|a| Peeked::Http2(Some(a.clone())))
    };
    let exemptions = Exemptions {
        mesh_cidrs: args.mesh_cidrs.clone(),
    };
    let containment = Containment {
        udp: args.udp,
        dns: (!args.dns.is_empty()).then(|| args.dns.clone()),
        raw_sockets: args.raw_sockets,
    };
    let verdict = if args.datagram {
        decide_datagram(&compiled, &containment, &exemptions, args.destination)
    } else if args.proxy_off {
        // The hand-off the kernel would make has no proxy to go to.
        decide(&compiled, &exemptions, args.destination, None)
            .without_proxy()
            .audited(compiled.audit)
    } else {
        decide(&compiled, &exemptions, args.destination, peeked.as_ref())
    };
    let mut e = explanation(
        workload,
        args.destination,
        &merged,
        &compiled,
        peeked,
        verdict,
    );
    e.name_check = name_check(&compiled, &e.verdict, args.domain_check);
    e.containment_applies = Containment::applies_to(compiled.mode);
    e.containment = containment;
    e.policies_read = loaded.policies.len();
    e.files_read = loaded.files;
    e.not_selected = not_selected;
    e.warnings = loaded.warnings;
    match output {
        Output::Json => print_json(&e),
        Output::Text => print_text(&e),
    }
    ExitCode::from(match e.verdict.action {
        Action::Allow => 0,
        Action::Deny => 1,
        Action::Proxy => 3,
    })
}

fn explanation(
    workload: Workload,
    destination: SocketAddr,
    merged: &Merged,
    compiled: &CompiledPolicy,
    peeked: Option<Peeked>,
    verdict: Verdict,
) -> Explanation {
    let rule = verdict.rule.and_then(|r| compiled.rules.get(r as usize));
    let candidates = if verdict.action == Action::Proxy {
        [destination.port(), passthrough_common::PORT_ANY]
            .iter()
            .filter_map(|p| compiled.domains.get(p))
            .flatten()
            .filter_map(|d| compiled.rules.get(d.rule as usize))
            .collect()
    } else {
        Vec::new()
    };
    let summary = summary(&verdict, compiled.mode, rule.as_ref(), &peeked);
    Explanation {
        kuma: compiled.kuma,
        workload,
        destination,
        policies_read: 0,
        files_read: 0,
        policies: merged.policies.clone(),
        not_selected: Vec::new(),
        mode: compiled.mode,
        mode_from: merged.mode_from.clone(),
        audit: compiled.audit,
        peeked,
        verdict,
        rule,
        candidates,
        name_check: None,
        containment: Containment {
            udp: UdpMode::Allow,
            dns: None,
            raw_sockets: RawSockets::Deny,
        },
        containment_applies: false,
        summary,
        warnings: Vec::new(),
    }
}

fn parse_udp(s: &str) -> Result<UdpMode, String> {
    match s {
        "Allow" => Ok(UdpMode::Allow),
        "Deny" => Ok(UdpMode::Deny),
        other => Err(format!("{other:?}: write Allow or Deny")),
    }
}

fn parse_raw(s: &str) -> Result<RawSockets, String> {
    match s {
        "Allow" => Ok(RawSockets::Allow),
        "Deny" => Ok(RawSockets::Deny),
        other => Err(format!("{other:?}: write Allow or Deny")),
    }
}

/// The binding that applies to a verdict the peek proxy makes or made: the deciding entry's
/// ([`domain_check_for`]), none for `*`, which admits any name and so any address.
fn name_check(c: &CompiledPolicy, v: &Verdict, configured: DomainCheck) -> Option<String> {
    use passthrough_common::Reason as R;
    let text = |check: DomainCheck| {
        let mut s = check.describe().to_string();
        if check != DomainCheck::Trust {
            s.push_str("; a name that does not resolve is refused");
        }
        s
    };
    match v.reason {
        R::DomainEntry => {
            let pattern = c.domain_pattern(v.rule?)?;
            if *pattern == NamePattern::Any {
                return None;
            }
            let check = domain_check_for(c.kuma, configured, pattern);
            let mut s = text(check);
            if check != configured {
                s.push_str(&format!(
                    " (Kuma 3 pins an exact name to its resolved addresses, whatever proxy.domainCheck {configured} says)"
                ));
            }
            Some(s)
        }
        R::ToProxy => {
            let mut s = text(configured);
            if c.kuma == KumaVersion::V3 && configured == DomainCheck::Trust {
                s.push_str("; exact names are pinned to their resolved addresses (Kuma 3)");
            }
            Some(s)
        }
        _ => None,
    }
}

fn summary(
    v: &Verdict,
    mode: EffectiveMode,
    rule: Option<&MergedEntry>,
    peeked: &Option<Peeked>,
) -> String {
    use passthrough_common::Reason as R;
    let by_rule = || rule.map_or_else(String::new, |r| format!(" by {r}"));
    let base = match v.would_deny.unwrap_or(v.reason) {
        R::Loopback => "loopback (and the unspecified address) is always allowed".into(),
        R::MeshCidr => "the destination is in a mesh CIDR, always allowed".into(),
        R::Unfiltered => "no policy selects this workload: it is not filtered".into(),
        R::ModeAll => "passthroughMode All allows every destination".into(),
        R::ModeNone => "passthroughMode None denies every destination outside the mesh".into(),
        R::IpEntry => format!("allowed in the kernel{}", by_rule()),
        R::CidrEntry => format!("allowed in the kernel{}", by_rule()),
        R::NoMatch => format!(
            "no appendMatch entry covers this address and port (mode {mode}); connect() fails with EPERM"
        ),
        R::ToProxy => "no IP or CIDR entry allows it, but Domain entries exist for this port: the peek proxy decides from the name the client sends".into(),
        R::DomainEntry => format!("the name the client sends is allowed{}", by_rule()),
        R::DomainNoProxy => "only a Domain entry could allow it, and the peek proxy that reads the name is off (proxy.enabled: false); connect() fails with EPERM: remove `enabled: false` from the agent config's proxy section".into(),
        R::NotTcp => "a UDP datagram of a workload whose UDP is not judged (udp: Allow, or mode All / unfiltered)".into(),
        R::UdpDns => "udp: Deny keeps DNS: port 53 of the workload's resolvers".into(),
        R::UdpDenied => "udp: Deny refuses UDP outside loopback, the mesh and DNS; sendmsg() or connect() fails with EPERM (MeshPassthrough has no UDP entries)".into(),
        R::DomainNoMatch => match peeked {
            Some(Peeked::Tls(Some(n))) => format!("no tls Domain entry on this port allows SNI {n}"),
            Some(Peeked::Http1(Some(n))) => format!("no http Domain entry on this port allows Host {n}"),
            Some(Peeked::Http2(Some(n))) => format!("no http2/grpc Domain entry on this port allows :authority {n}"),
            _ => "the client sent no name a Domain entry admits".into(),
        },
        other => other.name().to_string(),
    };
    if v.would_deny.is_some() {
        format!("audit mode: allowed, but would be denied: {base}")
    } else {
        base
    }
}

fn print_text(e: &Explanation) {
    if e.kuma != KumaVersion::V2 {
        println!(
            "kuma         {} (its rules, selection and name binding)",
            e.kuma
        );
    }
    println!("workload     {}", e.workload);
    println!("destination  {}", e.destination);
    println!(
        "read         {} {} from {} {}",
        e.policies_read,
        if e.policies_read == 1 {
            "policy"
        } else {
            "policies"
        },
        e.files_read,
        if e.files_read == 1 { "file" } else { "files" },
    );
    if e.policies.is_empty() {
        println!("policies     (none select this workload)");
        for (i, n) in e.not_selected.iter().enumerate() {
            let label = if i == 0 { "not selected" } else { "" };
            let flag = to_select(&n.why)
                .map(|f| format!(" (to select it: {f})"))
                .unwrap_or_default();
            println!(
                "{label:<12} {} ({}): {}{flag}",
                n.policy.name, n.policy.source, n.message
            );
        }
    } else {
        for (i, p) in e.policies.iter().enumerate() {
            let label = if i == 0 { "policies" } else { "" };
            let strength = if i + 1 == e.policies.len() {
                "  (strongest)"
            } else {
                ""
            };
            println!("{label:<12} {} ({}){strength}", p.name, p.source);
        }
    }
    match (&e.mode, &e.mode_from) {
        (EffectiveMode::Unfiltered, _) => println!("mode         {}", e.mode),
        (m, Some(from)) => println!("mode         {m} (from {})", from.name),
        (m, None) => println!("mode         {m} (no policy sets it; Kuma's default)"),
    }
    if e.audit {
        println!("audit        on: denials are reported, not enforced");
    }
    match &e.peeked {
        Some(Peeked::Tls(Some(n))) => println!("sni          {n}"),
        Some(Peeked::Http1(Some(n))) => println!("host         {n}"),
        Some(Peeked::Http2(Some(n))) => println!("authority    {n}"),
        _ => {}
    }
    println!("verdict      {}", e.verdict.action);
    println!("reason       {}", e.summary);
    if let Some(r) = &e.rule {
        println!("rule         {r}");
    }
    for (i, c) in e.candidates.iter().enumerate() {
        let label = if i == 0 { "candidates" } else { "" };
        println!("{label:<12} {c}");
    }
    if let Some(check) = &e.name_check {
        println!("name check   {check}");
    }
    let k = &e.containment;
    if e.containment_applies {
        let dns = k.dns.as_ref().map_or_else(
            || "port 53 of any address".to_string(),
            |d| {
                let nets: Vec<String> = d.iter().map(ToString::to_string).collect();
                format!("port 53 of {}", nets.join(", "))
            },
        );
        println!(
            "udp          {:?}{}",
            k.udp,
            if k.udp == UdpMode::Deny {
                format!(" (except loopback, the mesh and DNS: {dns}; ping sockets refused)")
            } else {
                " (not judged, as Kuma)".into()
            }
        );
        println!(
            "raw sockets  {:?}{}",
            k.raw_sockets,
            if k.raw_sockets == RawSockets::Deny {
                " (raw IP sockets refused; packet sockets too where the BPF LSM runs)"
            } else {
                ""
            }
        );
    } else {
        println!("udp, raw     not judged for mode {}", e.mode);
    }
}

/// The flag that would make a policy select the workload.
fn to_select(why: &Mismatch) -> Option<String> {
    Some(match why {
        Mismatch::Mesh { wanted, .. } => format!("--mesh {wanted}"),
        Mismatch::Namespace {
            wanted: Some(ns), ..
        }
        | Mismatch::DataplaneNamespace { wanted: ns, .. } => format!("--namespace {ns}"),
        Mismatch::ProxyType { wanted, .. } => format!("--proxy-type {}", wanted.first()?),
        Mismatch::Tag { key, wanted, .. } => format!("--tag {key}={wanted}"),
        Mismatch::Label { key, wanted, .. } => format!("--label {key}={wanted}"),
        Mismatch::Name { wanted, .. } => format!("--name {wanted}"),
        Mismatch::Namespace { wanted: None, .. } | Mismatch::Kind { .. } => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_that_are_not_addresses_say_what_to_write() {
        assert!(destination("10.1.2.3:443").is_ok());
        assert!(destination("[2001:db8::1]:443").is_ok());
        let e = destination("httpbin.org:443").expect_err("name");
        assert!(e.contains("--sni httpbin.org"), "{e}");
        let e = destination("2001:db8::1:443").expect_err("v6");
        assert!(e.contains("[2001:db8::1]:443"), "{e}");
        let e = destination("10.240.15.39").expect_err("no port");
        assert!(e.contains("e.g. 10.240.15.39:443"), "{e}");
        let e = destination("10.1.2.3:70000").expect_err("port");
        assert!(e.contains("port 70000 is outside 1-65535"), "{e}");
        let e = destination("httpbin.org").expect_err("bare name");
        assert!(e.contains("--sni httpbin.org"), "{e}");
    }
}
