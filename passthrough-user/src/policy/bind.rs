//! Name to address binding (semantics.md, "Peek proxy"): a Domain entry admits a name, and the
//! name the client sends is the client's own choice. Binding decides where an allowed
//! connection may go once the name's addresses are known, so that a forged name reaches only
//! that name's own servers. Pure: the proxy resolves, this decides.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use super::{compile::NamePattern, decide::canonical, kuma::KumaVersion};

/// `proxy.domainCheck`: what the proxy does with an allowed name before it connects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DomainCheck {
    /// Connect to the dialled address if it is one of the name's addresses, else to one of
    /// the name's addresses (same family first), on the dialled port.
    #[default]
    Pin,
    /// Connect only if the dialled address is one of the name's addresses; refuse otherwise.
    Verify,
    /// Connect to the dialled address as given (Kuma 2.x): the name is not checked.
    Trust,
}

impl DomainCheck {
    /// What `explain` and the docs say the check guarantees.
    pub const fn describe(self) -> &'static str {
        match self {
            DomainCheck::Pin => {
                "Pin: the proxy resolves the name and connects only to one of its addresses (the dialled one if it is among them)"
            }
            DomainCheck::Verify => {
                "Verify: the proxy resolves the name and refuses unless the dialled address is one of its addresses"
            }
            DomainCheck::Trust => {
                "Trust: the proxy connects to the dialled address without checking the name (Kuma 2.x)"
            }
        }
    }
}

impl std::str::FromStr for DomainCheck {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Pin" => Ok(DomainCheck::Pin),
            "Verify" => Ok(DomainCheck::Verify),
            "Trust" => Ok(DomainCheck::Trust),
            other => Err(format!(
                "{other:?} is not a domain check: Pin, Verify or Trust"
            )),
        }
    }
}

impl fmt::Display for DomainCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DomainCheck::Pin => "Pin",
            DomainCheck::Verify => "Verify",
            DomainCheck::Trust => "Trust",
        })
    }
}

/// The binding of one Domain entry: the one place that decides it from the entry's name
/// pattern, the Kuma version and `proxy.domainCheck`.
///
/// - `*` admits every name (and none), so it binds to nothing: [`DomainCheck::Trust`].
/// - Under Kuma 3 an exact name is always pinned to its resolved addresses: the sidecar
///   resolves the name and connects there, the dialled address never counts as such. So
///   `Trust` becomes [`DomainCheck::Pin`] for exact entries; `Pin` stays, and so does
///   `Verify`, which connects only to a resolved address too (and refuses instead of
///   redirecting, which is stricter than Kuma 3).
/// - Everything else (every entry under Kuma 2, wildcard entries under Kuma 3, which keep the
///   dialled address in Kuma 3 as in 2.x) follows `proxy.domainCheck`.
///
/// "No fallback" under Kuma 3 therefore means: an exact entry's connection goes to an address
/// the agent's resolver gives for the name, or nowhere. The dialled address is used only when
/// it is one of them; a name that does not resolve is refused (as in every mode); and
/// `domainCheck: Trust` cannot send it to the dialled address.
pub fn domain_check_for(
    kuma: KumaVersion,
    configured: DomainCheck,
    pattern: &NamePattern,
) -> DomainCheck {
    match (pattern, kuma) {
        (NamePattern::Any, _) => DomainCheck::Trust,
        (NamePattern::Exact(_), KumaVersion::V3) if configured == DomainCheck::Trust => {
            DomainCheck::Pin
        }
        _ => configured,
    }
}

/// Whether the proxy needs a resolver: some entry may bind ([`domain_check_for`] can give
/// something other than `Trust`).
pub fn needs_resolver(kuma: KumaVersion, configured: DomainCheck) -> bool {
    configured != DomainCheck::Trust || kuma == KumaVersion::V3
}

/// Where an allowed connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// To the address the client dialled.
    Dialled,
    /// To another address of the name (Pin), on the dialled port.
    Pinned(SocketAddr),
    /// Nowhere: the dialled address is not one of the name's (Verify).
    Mismatch,
}

/// Binds an allowed connection to `dest` (what the client dialled) given the name's
/// addresses. `resolved` must not be empty: a name without addresses is refused before this.
pub fn bind(check: DomainCheck, dest: SocketAddr, resolved: &[IpAddr]) -> Binding {
    let dialled = canonical(dest.ip());
    if check == DomainCheck::Trust || resolved.iter().any(|a| canonical(*a) == dialled) {
        return Binding::Dialled;
    }
    if check == DomainCheck::Verify {
        return Binding::Mismatch;
    }
    let same_family = resolved
        .iter()
        .map(|a| canonical(*a))
        .find(|a| a.is_ipv4() == dialled.is_ipv4());
    match same_family.or_else(|| resolved.first().map(|a| canonical(*a))) {
        Some(ip) => Binding::Pinned(SocketAddr::new(ip, dest.port())),
        None => Binding::Mismatch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn a_genuine_name_keeps_the_dialled_address_in_every_mode() {
        let resolved = ips(&["198.51.100.10", "2001:db8:1::10"]);
        for check in [DomainCheck::Pin, DomainCheck::Verify, DomainCheck::Trust] {
            assert_eq!(
                bind(check, sa("198.51.100.10:443"), &resolved),
                Binding::Dialled
            );
            assert_eq!(
                bind(check, sa("[2001:db8:1::10]:443"), &resolved),
                Binding::Dialled
            );
        }
    }

    #[test]
    fn a_forged_name_is_pinned_verified_or_trusted() {
        let resolved = ips(&["198.51.100.10"]);
        let forged = sa("203.0.113.200:443");
        assert_eq!(
            bind(DomainCheck::Pin, forged, &resolved),
            Binding::Pinned(sa("198.51.100.10:443"))
        );
        assert_eq!(
            bind(DomainCheck::Verify, forged, &resolved),
            Binding::Mismatch
        );
        assert_eq!(
            bind(DomainCheck::Trust, forged, &resolved),
            Binding::Dialled
        );
    }

    #[test]
    fn pin_prefers_the_dialled_family_and_keeps_the_port() {
        let resolved = ips(&["2001:db8:1::10", "198.51.100.10", "198.51.100.11"]);
        assert_eq!(
            bind(DomainCheck::Pin, sa("203.0.113.200:8443"), &resolved),
            Binding::Pinned(sa("198.51.100.10:8443"))
        );
        assert_eq!(
            bind(DomainCheck::Pin, sa("[2001:db8:2::20]:80"), &resolved),
            Binding::Pinned(sa("[2001:db8:1::10]:80"))
        );
        // Only the other family: still one of the name's addresses.
        assert_eq!(
            bind(
                DomainCheck::Pin,
                sa("[2001:db8:2::20]:80"),
                &ips(&["198.51.100.10"])
            ),
            Binding::Pinned(sa("198.51.100.10:80"))
        );
    }

    #[test]
    fn any_of_several_addresses_is_the_name_and_mapped_addresses_are_ipv4() {
        let resolved = ips(&["198.51.100.10", "198.51.100.11"]);
        assert_eq!(
            bind(DomainCheck::Verify, sa("198.51.100.11:443"), &resolved),
            Binding::Dialled
        );
        assert_eq!(
            bind(
                DomainCheck::Verify,
                sa("[::ffff:198.51.100.11]:443"),
                &resolved
            ),
            Binding::Dialled
        );
        assert_eq!(
            bind(
                DomainCheck::Pin,
                sa("198.51.100.10:443"),
                &ips(&["::ffff:198.51.100.10"])
            ),
            Binding::Dialled
        );
    }

    #[test]
    fn the_check_of_each_entry_kind_under_each_kuma_version() {
        use DomainCheck::{Pin, Trust, Verify};
        use KumaVersion::{V2, V3};
        let exact = NamePattern::parse("api.example.com");
        let wild = NamePattern::parse("*.example.com");
        let any = NamePattern::parse("*");
        // (version, configured, pattern) -> the check applied.
        let table = [
            (V2, Pin, &exact, Pin),
            (V2, Verify, &exact, Verify),
            (V2, Trust, &exact, Trust),
            (V2, Pin, &wild, Pin),
            (V2, Verify, &wild, Verify),
            (V2, Trust, &wild, Trust),
            (V2, Pin, &any, Trust),
            (V2, Verify, &any, Trust),
            // Kuma 3 pins exact names whatever domainCheck says, and keeps Verify.
            (V3, Pin, &exact, Pin),
            (V3, Verify, &exact, Verify),
            (V3, Trust, &exact, Pin),
            // Wildcards keep the configured check under 3.
            (V3, Pin, &wild, Pin),
            (V3, Verify, &wild, Verify),
            (V3, Trust, &wild, Trust),
            (V3, Pin, &any, Trust),
            (V3, Trust, &any, Trust),
        ];
        for (kuma, configured, pattern, want) in table {
            assert_eq!(
                domain_check_for(kuma, configured, pattern),
                want,
                "{kuma} {configured} {pattern}"
            );
        }
        assert!(!needs_resolver(V2, Trust));
        assert!(needs_resolver(V3, Trust));
        assert!(needs_resolver(V2, Pin) && needs_resolver(V2, Verify));
    }

    #[test]
    fn under_kuma_3_a_forged_exact_name_never_reaches_the_dialled_address() {
        let resolved = ips(&["198.51.100.10"]);
        let forged = sa("203.0.113.200:443");
        let exact = NamePattern::parse("api.example.com");
        for configured in [DomainCheck::Pin, DomainCheck::Verify, DomainCheck::Trust] {
            let check = domain_check_for(KumaVersion::V3, configured, &exact);
            assert_ne!(
                bind(check, forged, &resolved),
                Binding::Dialled,
                "{configured}"
            );
        }
    }

    #[test]
    fn no_address_is_never_a_destination() {
        assert_eq!(
            bind(DomainCheck::Pin, sa("203.0.113.200:443"), &[]),
            Binding::Mismatch
        );
        assert_eq!(
            bind(DomainCheck::Verify, sa("203.0.113.200:443"), &[]),
            Binding::Mismatch
        );
    }
}
