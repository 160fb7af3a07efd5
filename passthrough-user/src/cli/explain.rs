//! `passthrough explain`: the verdict for one destination, and why.

use std::{net::SocketAddr, process::ExitCode};

use clap::Args as ClapArgs;
use ipnet::IpNet;
use serde::Serialize;

use super::{Output, fail, print_json, selector::WorkloadArgs};
use crate::policy::{
    bind::DomainCheck,
    compile::{CompiledPolicy, EffectiveMode, NamePattern, compile},
    containment::{Containment, RawSockets, UdpMode, decide_datagram},
    decide::{Action, Exemptions, Peeked, Verdict, decide},
    merge::{Merged, MergedEntry, PolicyRef, merged_for},
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

    /// Explain a UDP datagram to DESTINATION instead of a TCP connect.
    #[arg(long, conflicts_with = "peeked")]
    pub datagram: bool,

    /// A mesh CIDR of the agent config, always allowed (repeatable).
    #[arg(long = "mesh-cidr", value_name = "CIDR")]
    pub mesh_cidrs: Vec<IpNet>,

    /// Destination: 1.2.3.4:443 or [2001:db8::1]:443.
    #[arg(value_name = "DESTINATION")]
    pub destination: SocketAddr,
}

/// What `explain -o json` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub workload: Workload,
    pub destination: SocketAddr,
    /// Selected policies, weakest first.
    pub policies: Vec<PolicyRef>,
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
}

pub fn run(args: &Args, output: Output) -> ExitCode {
    let policies = match args.workload.load(output) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let workload = args.workload.workload();
    let opts = args.workload.select_options();
    let merged = match merged_for(&policies, &workload, &opts) {
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
    let rule = verdict
        .rule
        .and_then(|r| compiled.rules.get(r as usize).cloned());
    let candidates = if verdict.action == Action::Proxy {
        [destination.port(), passthrough_common::PORT_ANY]
            .iter()
            .filter_map(|p| compiled.domains.get(p))
            .flatten()
            .filter_map(|d| compiled.rules.get(d.rule as usize).cloned())
            .collect()
    } else {
        Vec::new()
    };
    let summary = summary(&verdict, compiled.mode, rule.as_ref(), &peeked);
    Explanation {
        workload,
        destination,
        policies: merged.policies.clone(),
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

/// The binding that applies to a verdict the peek proxy makes or made: every Domain entry but
/// `*`, which admits any name and so any address.
fn name_check(c: &CompiledPolicy, v: &Verdict, check: DomainCheck) -> Option<String> {
    use passthrough_common::Reason as R;
    let binds = match v.reason {
        R::DomainEntry => v
            .rule
            .is_some_and(|r| c.domain_pattern(r) != Some(&NamePattern::Any)),
        R::ToProxy => true,
        _ => false,
    };
    binds.then(|| {
        let mut s = check.describe().to_string();
        if check != DomainCheck::Trust {
            s.push_str("; a name that does not resolve is refused");
        }
        s
    })
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
    println!("workload     {}", e.workload);
    println!("destination  {}", e.destination);
    if e.policies.is_empty() {
        println!("policies     (none select this workload)");
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
