//! passthrough's explanations beside Kuma's validation messages: the offending value, quoted,
//! what was expected, and the fix where there is one.
//!
//! Kuma's messages stay byte for byte as Kuma prints them (tooling greps them); these hints
//! are shown on their own line (text) or as a `hint` key (JSON). Each function is given a
//! value its rule already refused and only explains it: none decides validity.

use std::net::IpAddr;

use ipnet::IpNet;

use super::validate::{is_dns_name, parse_cidr, parse_ip};

/// An address with a port, `1.2.3.4:443` or `[2001:db8::1]:443`: (address, port).
fn address_and_port(s: &str) -> Option<(IpAddr, &str)> {
    let (host, port) = s.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    parse_ip(host).map(|ip| (ip, port))
}

/// A name with a port, `example.com:443`: (name, port).
fn name_and_port(s: &str) -> Option<(&str, &str)> {
    let (host, port) = s.rsplit_once(':')?;
    (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && is_dns_name(host))
        .then_some((host, port))
}

/// Why a dotted IPv4 address does not parse, where that can be said precisely.
fn ipv4_detail(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() < 2 || !parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    if parts.len() != 4 {
        return Some(format!(
            "it has {} numbers; an IPv4 address has four, 0-255 each, e.g. 198.51.100.10",
            parts.len()
        ));
    }
    if let Some(p) = parts.iter().find(|p| p.is_empty()) {
        return Some(format!("{p:?} is an empty part"));
    }
    if let Some(p) = parts
        .iter()
        .find(|p| p.len() > 3 || p.parse::<u16>().is_ok_and(|n| n > 255))
    {
        return Some(format!("{p} is above 255"));
    }
    if parts.iter().any(|p| p.len() > 1 && p.starts_with('0')) {
        let fixed: Vec<String> = parts
            .iter()
            .map(|p| {
                p.parse::<u8>()
                    .map_or_else(|_| (*p).to_string(), |n| n.to_string())
            })
            .collect();
        return Some(format!(
            "leading zeros are not accepted (Kuma's parser refuses them): write {}",
            fixed.join(".")
        ));
    }
    None
}

/// Why an IP entry's value is not an address.
pub fn ip(value: &str) -> String {
    let q = format!("{value:?}");
    if value.trim() != value {
        return format!("{q} has blanks around it: write {}", value.trim());
    }
    if value.contains('/') && parse_cidr(value).is_some() {
        return format!("{q} is a CIDR, not an IP address: write type: CIDR");
    }
    if let Some((ip, port)) = address_and_port(value) {
        return format!("{q} has a port in it: write value: {ip} and port: {port}");
    }
    if value.contains('%') {
        return format!("{q} has an IPv6 zone: zones are not accepted, write the address alone");
    }
    if let Some(detail) = ipv4_detail(value) {
        return format!("{q} is not an IPv4 address: {detail}");
    }
    if is_dns_name(value) {
        return format!(
            "{q} is a name, not an address: write type: Domain with protocol tls, http, http2 or grpc"
        );
    }
    format!(
        "{q} is not an IP address: expected IPv4 such as 198.51.100.10 or IPv6 such as 2001:db8::1"
    )
}

/// Why a CIDR entry's value is not a CIDR.
pub fn cidr(value: &str) -> String {
    let q = format!("{value:?}");
    if value.trim() != value {
        return format!("{q} has blanks around it: write {}", value.trim());
    }
    let Some((addr, len)) = value.split_once('/') else {
        return match parse_ip(value) {
            Some(ip) => format!(
                "{q} has no prefix length: write {value}/{} for this one address, or type: IP",
                if ip.is_ipv4() { 32 } else { 128 }
            ),
            None => format!(
                "{q} is not a CIDR: expected ADDRESS/LENGTH such as 203.0.113.0/24 or 2001:db8::/32"
            ),
        };
    };
    let Some(ip) = parse_ip(addr) else {
        return format!("{q}: the address part {}", ip(addr));
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return format!("{q}: the prefix length {len:?} must be a number from 0 to {max}");
    }
    format!(
        "{q}: the prefix length /{len} is above {max}, the most for an {} address",
        if ip.is_ipv4() { "IPv4" } else { "IPv6" }
    )
}

/// Why a Domain entry's value is not a name.
pub fn dns(value: &str) -> String {
    let q = format!("{value:?}");
    if value.is_empty() {
        return "the value is empty: write a host name such as httpbin.org or *.example.com".into();
    }
    if parse_ip(value).is_some() {
        return format!("{q} is an IP address, not a name: write type: IP");
    }
    if parse_cidr(value).is_some() {
        return format!("{q} is a CIDR, not a name: write type: CIDR");
    }
    if value.contains("://") {
        return format!("{q} is a URL: write the host name alone");
    }
    if let Some((ip, port)) = address_and_port(value) {
        return format!(
            "{q} is an address with a port: write type: IP, value: {ip} and port: {port}"
        );
    }
    let bare = value.strip_prefix("*.").unwrap_or(value);
    if let Some((host, port)) = name_and_port(bare) {
        let star = if bare.len() == value.len() { "" } else { "*." };
        return format!("{q} has a port in it: write value: {star}{host} and port: {port}");
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace()) {
        return format!(
            "{q} contains {}: a name has no blanks",
            if c == ' ' {
                "a space".into()
            } else {
                format!("{c:?}")
            }
        );
    }
    if let Some(c) = bare
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return format!(
            "{q} contains {c:?}: a name is letters, digits, '-' and '_', in labels separated by dots"
        );
    }
    if let Some(label) = bare.split('.').find(|l| l.len() > 63) {
        return format!("{q}: the label {label:?} is longer than 63 characters");
    }
    if bare.split('.').any(str::is_empty) {
        return format!("{q} has an empty label (two dots in a row, or a leading dot)");
    }
    if bare.split('.').any(|l| l.starts_with('-')) {
        return format!("{q}: a label cannot start with '-'");
    }
    format!("{q} is not a host name: expected a name such as httpbin.org or *.example.com")
}

/// A port outside 1-65535.
pub fn port(port: u32) -> String {
    format!("{port} is outside 1-65535; omit port to match every port")
}

/// A protocol Kuma does not know.
pub fn protocol(protocol: &str, known: &[&str]) -> String {
    let lower = protocol.to_ascii_lowercase();
    if known.contains(&lower.as_str()) {
        return format!("{protocol:?}: protocols are lower case: write {lower}");
    }
    format!(
        "{protocol:?} is not a protocol; write one of {}",
        known.join(", ")
    )
}

/// An appendMatch `type` Kuma does not know.
pub fn kind(kind: &str) -> String {
    for known in ["Domain", "IP", "CIDR"] {
        if kind.eq_ignore_ascii_case(known) {
            return format!("{kind:?}: the type is case-sensitive: write {known}");
        }
    }
    format!("{kind:?} is not a type; write Domain, IP or CIDR")
}

/// A `passthroughMode` or other enum written in the wrong case.
pub fn enum_case(value: &str, known: &[&str]) -> Option<String> {
    known
        .iter()
        .find(|k| k.eq_ignore_ascii_case(value))
        .map(|k| format!("{value:?}: values are case-sensitive: write {k}"))
}

/// A partial wildcard: `*` must be a whole leading label.
pub fn partial_wildcard(value: &str) -> String {
    let rest = value.trim_start_matches('*');
    let rest = rest.split_once('.').map_or(rest, |(_, r)| r);
    format!(
        "{value:?}: a wildcard is a whole leading label: write *.{rest} (any subdomain of {rest})"
    )
}

/// A wildcard Domain with an L7 protocol and no port.
pub fn wildcard_needs_port(value: &str, protocol: &str) -> String {
    format!(
        "{value:?} with protocol {protocol} needs a port, e.g. port: {}",
        if protocol == "http" { 80 } else { 443 }
    )
}

/// A Domain entry with a protocol that carries no name.
pub fn domain_protocol(protocol: &str) -> String {
    format!(
        "{protocol} carries no name: use tls (SNI), or http, http2, grpc (Host, :authority); for addresses use type: IP or CIDR"
    )
}

/// A second L7 protocol on a port within one policy.
pub fn same_port(port: u32, protocol: &str, first: &str, first_index: usize) -> String {
    format!(
        "port {port} already has protocol {first} (appendMatch[{first_index}]), so {protocol} cannot be used on it: keep one of http, http2, grpc per port (tcp and tls may join it)"
    )
}

/// The same value twice for one port and protocol.
pub fn duplicate(value: &str, port: u32, protocol: &str, first_index: usize) -> String {
    format!(
        "{value:?} on port {port} with protocol {protocol} is already appendMatch[{first_index}]: remove one of them"
    )
}

/// A CIDR written with host bits set: the network it is enforced as, if so.
pub fn host_bits(value: &str) -> Option<IpNet> {
    let (ip, len) = parse_cidr(value)?;
    let net = IpNet::new(ip, len).ok()?;
    (net.network() != ip).then(|| net.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_hints_quote_the_value_and_name_the_fix() {
        assert!(
            ip("198.51.100.300")
                .contains("\"198.51.100.300\" is not an IPv4 address: 300 is above 255")
        );
        assert!(ip("1.2.3.4:443").contains("write value: 1.2.3.4 and port: 443"));
        assert!(ip("[2001:db8::1]:443").contains("write value: 2001:db8::1 and port: 443"));
        assert!(ip("10.0.0.0/8").contains("write type: CIDR"));
        assert!(ip("httpbin.org").contains("write type: Domain"));
        assert!(ip("010.1.1.1").contains("write 10.1.1.1"));
        assert!(ip(" 1.1.1.1").contains("blanks"));
        assert!(ip("1.1.1").contains("it has 3 numbers; an IPv4 address has four"));
    }

    #[test]
    fn cidr_hints_say_which_part_is_wrong() {
        assert!(cidr("10.0.0.0/33").contains("/33 is above 32"));
        assert!(cidr("2001:db8::/129").contains("/129 is above 128"));
        assert!(cidr("1.2.3.4").contains("write 1.2.3.4/32"));
        assert!(cidr("1.2.3/24").contains("the address part"));
        assert!(cidr("1.2.3.0/x").contains("must be a number"));
    }

    #[test]
    fn dns_hints_point_at_the_offending_character_or_form() {
        assert!(dns("exa mple.com").contains("contains a space"));
        assert!(dns("1.2.3.4:443").contains("write type: IP, value: 1.2.3.4 and port: 443"));
        assert!(dns("example.com:443").contains("write value: example.com and port: 443"));
        assert!(dns("*.example.com:443").contains("write value: *.example.com and port: 443"));
        assert!(dns("1.2.3.4").contains("write type: IP"));
        assert!(dns("https://example.com").contains("URL"));
        assert!(dns("a..b").contains("empty label"));
        assert!(dns("hello@world").contains("'@'"));
    }

    #[test]
    fn host_bits_give_the_network_enforced() {
        assert_eq!(host_bits("10.1.2.3/16"), "10.1.0.0/16".parse().ok());
        assert_eq!(host_bits("10.1.0.0/16"), None);
        assert_eq!(host_bits("2001:db8::1/32"), "2001:db8::/32".parse().ok());
        assert_eq!(host_bits("nope"), None);
    }

    #[test]
    fn protocol_and_type_hints_catch_the_case() {
        assert!(protocol("TCP", &["tcp", "tls"]).contains("write tcp"));
        assert!(protocol("udp", &["tcp", "tls"]).contains("write one of tcp, tls"));
        assert!(kind("ip").contains("write IP"));
        assert!(kind("Host").contains("write Domain, IP or CIDR"));
    }
}
