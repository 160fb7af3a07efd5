//! What a workload may do beside `connect()` (semantics.md, "Beyond connect(): datagrams,
//! raw and packet sockets"): its UDP and raw socket settings, and the decision for one
//! datagram, which the kernel's `sendmsg` and datagram `connect` hooks implement.

use std::net::SocketAddr;

use ipnet::IpNet;
use passthrough_common::Reason;
use serde::{Deserialize, Serialize};

use super::{
    compile::{CompiledPolicy, EffectiveMode},
    decide::{Action, Exemptions, Verdict, canonical, is_local},
};

/// `udp.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum UdpMode {
    /// As Kuma: UDP is not judged.
    #[default]
    Allow,
    /// Workloads in mode `None` or `Matched` may send UDP only to loopback, the mesh and
    /// port 53 of their resolvers; ping sockets cannot be created.
    Deny,
}

/// `rawSockets`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum RawSockets {
    Allow,
    /// Workloads in mode `None` or `Matched` cannot create raw IP sockets, nor packet
    /// sockets where the kernel's BPF LSM is active.
    #[default]
    Deny,
}

/// The datagram and raw socket settings that apply to one workload.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Containment {
    pub udp: UdpMode,
    /// Under `udp: Deny`, where UDP to port 53 may go (`None`: any address).
    pub dns: Option<Vec<IpNet>>,
    pub raw_sockets: RawSockets,
}

impl Containment {
    /// Whether the settings are enforced for a workload of this mode: `All` and unselected
    /// workloads are untouched.
    pub fn applies_to(mode: EffectiveMode) -> bool {
        matches!(mode, EffectiveMode::None | EffectiveMode::Matched)
    }
}

/// The decision for one UDP datagram (or a UDP socket's `connect()`) from a workload with
/// policy `c` and settings `k`.
pub fn decide_datagram(
    c: &CompiledPolicy,
    k: &Containment,
    ex: &Exemptions,
    dest: SocketAddr,
) -> Verdict {
    let v = |action, reason| Verdict::datagram(action, reason);
    let verdict = if k.udp == UdpMode::Allow || !Containment::applies_to(c.mode) {
        v(Action::Allow, Reason::NotTcp)
    } else {
        let ip = canonical(dest.ip());
        if is_local(ip) {
            v(Action::Allow, Reason::Loopback)
        } else if ex.mesh_cidrs.iter().any(|n| n.contains(&ip)) {
            v(Action::Allow, Reason::MeshCidr)
        } else if dest.port() == 53
            && k.dns
                .as_ref()
                .is_none_or(|nets| nets.iter().any(|n| n.contains(&ip)))
        {
            v(Action::Allow, Reason::UdpDns)
        } else {
            v(Action::Deny, Reason::UdpDenied)
        }
    };
    verdict.audited(c.audit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{compile::compile, merge::Merged};

    fn policy(mode: super::super::merge::Mode, audit: bool) -> CompiledPolicy {
        compile(&Merged {
            policies: vec![],
            mode: Some(mode),
            mode_from: None,
            entries: Default::default(),
            audit,
            kuma: crate::policy::kuma::KumaVersion::V2,
        })
        .expect("compile")
    }

    fn deny(dns: Option<&[&str]>) -> Containment {
        Containment {
            udp: UdpMode::Deny,
            dns: dns.map(|d| d.iter().map(|n| n.parse().expect("net")).collect()),
            raw_sockets: RawSockets::Deny,
        }
    }

    fn reason(c: &CompiledPolicy, k: &Containment, mesh: &[&str], dest: &str) -> Reason {
        let ex = Exemptions {
            mesh_cidrs: mesh.iter().map(|n| n.parse().expect("net")).collect(),
        };
        decide_datagram(c, k, &ex, dest.parse().expect("addr")).reason
    }

    #[test]
    fn deny_keeps_dns_loopback_and_the_mesh_only() {
        use super::super::merge::Mode;
        let c = policy(Mode::Matched, false);
        let k = deny(Some(&["203.0.113.53/32", "2001:db8:2::53/128"]));
        assert_eq!(reason(&c, &k, &[], "203.0.113.53:53"), Reason::UdpDns);
        assert_eq!(reason(&c, &k, &[], "[2001:db8:2::53]:53"), Reason::UdpDns);
        assert_eq!(
            reason(&c, &k, &[], "[::ffff:203.0.113.53]:53"),
            Reason::UdpDns
        );
        assert_eq!(reason(&c, &k, &[], "203.0.113.54:53"), Reason::UdpDenied);
        assert_eq!(reason(&c, &k, &[], "203.0.113.53:443"), Reason::UdpDenied);
        assert_eq!(reason(&c, &k, &[], "127.0.0.1:9999"), Reason::Loopback);
        assert_eq!(
            reason(&c, &k, &["10.0.0.0/8"], "10.1.2.3:4789"),
            Reason::MeshCidr
        );
        // Without a list, port 53 of any address.
        assert_eq!(
            reason(&c, &deny(None), &[], "198.51.100.10:53"),
            Reason::UdpDns
        );
        assert_eq!(
            reason(&c, &deny(None), &[], "198.51.100.10:443"),
            Reason::UdpDenied
        );
    }

    #[test]
    fn allow_all_and_unselected_workloads_are_untouched_and_audit_lets_through() {
        use super::super::merge::Mode;
        let k = deny(None);
        assert_eq!(
            reason(&policy(Mode::All, false), &k, &[], "198.51.100.10:443"),
            Reason::NotTcp
        );
        let allow = Containment {
            udp: UdpMode::Allow,
            ..k.clone()
        };
        assert_eq!(
            reason(&policy(Mode::None, false), &allow, &[], "198.51.100.10:443"),
            Reason::NotTcp
        );
        assert_eq!(
            reason(&policy(Mode::None, false), &k, &[], "198.51.100.10:443"),
            Reason::UdpDenied
        );
        let audited = decide_datagram(
            &policy(Mode::Matched, true),
            &k,
            &Exemptions::default(),
            "198.51.100.10:443".parse().expect("addr"),
        );
        assert_eq!(audited.action, Action::Allow);
        assert_eq!(audited.would_deny, Some(Reason::UdpDenied));
    }
}
