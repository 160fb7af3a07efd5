//! The IP, CIDR and Domain-port tables of one compiled policy: what its kernel inner maps
//! hold, kept compactly (sorted vectors, not one heap object per entry) so that a million
//! entries cost tens of MiB, and searchable the way the kernel searches them (exact entries by
//! binary search, CIDRs longest prefix first), so `decide` answers as the kernel does.

use std::{
    hash::{Hash, Hasher as _},
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{Ipv4Net, Ipv6Net};
use passthrough_common::{
    CidrV4Data, CidrV6Data, DomainPortKey, ExactV4Key, ExactV6Key, LPM_FIXED_BITS, RuleRef,
};
use serde::Serialize;

/// The tables. Each vector is sorted by key with one entry per key (the first rule in merge
/// order wins), which [`TablesBuilder::build`] guarantees.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tables {
    /// ((address, port or [`passthrough_common::PORT_ANY`]), rule).
    pub exact_v4: Vec<((Ipv4Addr, u16), u32)>,
    pub exact_v6: Vec<((Ipv6Addr, u16), u32)>,
    /// ((port or any, network), rule).
    pub cidr_v4: Vec<((u16, Ipv4Net), u32)>,
    pub cidr_v6: Vec<((u16, Ipv6Net), u32)>,
    /// (port or any, first Domain rule of that port).
    pub domain_ports: Vec<(u16, u32)>,
    /// The CIDR prefix lengths present, longest first, for longest-prefix lookups.
    #[serde(skip)]
    v4_prefixes: Vec<u8>,
    #[serde(skip)]
    v6_prefixes: Vec<u8>,
}

/// Collects entries in merge order.
#[derive(Default)]
pub struct TablesBuilder {
    t: Tables,
}

/// Sorts by key and keeps, of equal keys, the lowest rule (the first in merge order).
fn settle<K: Ord + Copy>(v: &mut Vec<(K, u32)>) {
    v.sort_unstable();
    v.dedup_by_key(|(k, _)| *k);
    v.shrink_to_fit();
}

fn prefixes<K>(v: &[((u16, K), u32)], len: impl Fn(&K) -> u8) -> Vec<u8> {
    let mut p: Vec<u8> = v.iter().map(|((_, n), _)| len(n)).collect();
    p.sort_unstable_by(|a, b| b.cmp(a));
    p.dedup();
    p
}

impl TablesBuilder {
    pub fn exact_v4(&mut self, addr: Ipv4Addr, port: u16, rule: u32) {
        self.t.exact_v4.push(((addr, port), rule));
    }

    pub fn exact_v6(&mut self, addr: Ipv6Addr, port: u16, rule: u32) {
        self.t.exact_v6.push(((addr, port), rule));
    }

    pub fn cidr_v4(&mut self, port: u16, net: Ipv4Net, rule: u32) {
        self.t.cidr_v4.push(((port, net.trunc()), rule));
    }

    pub fn cidr_v6(&mut self, port: u16, net: Ipv6Net, rule: u32) {
        self.t.cidr_v6.push(((port, net.trunc()), rule));
    }

    pub fn domain_port(&mut self, port: u16, rule: u32) {
        self.t.domain_ports.push((port, rule));
    }

    pub fn build(mut self) -> Tables {
        let t = &mut self.t;
        settle(&mut t.exact_v4);
        settle(&mut t.exact_v6);
        settle(&mut t.cidr_v4);
        settle(&mut t.cidr_v6);
        settle(&mut t.domain_ports);
        t.v4_prefixes = prefixes(&t.cidr_v4, Ipv4Net::prefix_len);
        t.v6_prefixes = prefixes(&t.cidr_v6, Ipv6Net::prefix_len);
        self.t
    }
}

fn find<K: Ord>(v: &[(K, u32)], key: &K) -> Option<u32> {
    v.binary_search_by(|(k, _)| k.cmp(key)).ok().map(|i| v[i].1)
}

impl Tables {
    /// Entries over all tables: the kernel map entries the policy takes.
    pub fn len(&self) -> usize {
        self.exact_v4.len()
            + self.exact_v6.len()
            + self.cidr_v4.len()
            + self.cidr_v6.len()
            + self.domain_ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A digest of the contents: equal tables have equal digests (workloads share a policy
    /// in the kernel when theirs are equal, which is then checked in full).
    pub fn digest(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    pub fn exact_v4_rule(&self, addr: Ipv4Addr, port: u16) -> Option<u32> {
        find(&self.exact_v4, &(addr, port))
    }

    pub fn exact_v6_rule(&self, addr: Ipv6Addr, port: u16) -> Option<u32> {
        find(&self.exact_v6, &(addr, port))
    }

    /// The longest CIDR of `port` (exactly) containing `addr`, as the kernel's LPM finds it.
    pub fn longest_v4(&self, addr: Ipv4Addr, port: u16) -> Option<u32> {
        self.v4_prefixes.iter().find_map(|&len| {
            let net = Ipv4Net::new(addr, len).ok()?.trunc();
            find(&self.cidr_v4, &(port, net))
        })
    }

    pub fn longest_v6(&self, addr: Ipv6Addr, port: u16) -> Option<u32> {
        self.v6_prefixes.iter().find_map(|&len| {
            let net = Ipv6Net::new(addr, len).ok()?.trunc();
            find(&self.cidr_v6, &(port, net))
        })
    }

    /// The inner map entries, as the kernel reads them.
    pub fn exact_v4_entries(&self) -> impl ExactSizeIterator<Item = (ExactV4Key, RuleRef)> + '_ {
        self.exact_v4.iter().map(|&((addr, port), rule)| {
            (
                ExactV4Key {
                    port,
                    _pad: 0,
                    addr: addr.octets(),
                },
                RuleRef { rule },
            )
        })
    }

    pub fn exact_v6_entries(&self) -> impl ExactSizeIterator<Item = (ExactV6Key, RuleRef)> + '_ {
        self.exact_v6.iter().map(|&((addr, port), rule)| {
            (
                ExactV6Key {
                    port,
                    _pad: 0,
                    addr: addr.octets(),
                },
                RuleRef { rule },
            )
        })
    }

    /// `(prefix_len, data, value)` for the IPv4 LPM trie: the port is always matched.
    pub fn cidr_v4_entries(
        &self,
    ) -> impl ExactSizeIterator<Item = (u32, CidrV4Data, RuleRef)> + '_ {
        self.cidr_v4.iter().map(|&((port, net), rule)| {
            (
                LPM_FIXED_BITS + u32::from(net.prefix_len()),
                CidrV4Data::new(port, net.network().octets()),
                RuleRef { rule },
            )
        })
    }

    pub fn cidr_v6_entries(
        &self,
    ) -> impl ExactSizeIterator<Item = (u32, CidrV6Data, RuleRef)> + '_ {
        self.cidr_v6.iter().map(|&((port, net), rule)| {
            (
                LPM_FIXED_BITS + u32::from(net.prefix_len()),
                CidrV6Data::new(port, net.network().octets()),
                RuleRef { rule },
            )
        })
    }

    pub fn domain_port_entries(
        &self,
    ) -> impl ExactSizeIterator<Item = (DomainPortKey, RuleRef)> + '_ {
        self.domain_ports
            .iter()
            .map(|&(port, rule)| (DomainPortKey { port, _pad: 0 }, RuleRef { rule }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net4(s: &str) -> Ipv4Net {
        s.parse().expect("net")
    }

    #[test]
    fn equal_keys_keep_the_first_rule_and_lookups_find_it() {
        let mut b = TablesBuilder::default();
        let a: Ipv4Addr = "10.0.0.1".parse().expect("ip");
        b.exact_v4(a, 80, 3);
        b.exact_v4(a, 80, 1);
        b.exact_v4(a, 0, 2);
        let t = b.build();
        assert_eq!(t.exact_v4.len(), 2);
        assert_eq!(t.exact_v4_rule(a, 80), Some(1));
        assert_eq!(t.exact_v4_rule(a, 0), Some(2));
        assert_eq!(t.exact_v4_rule(a, 81), None);
    }

    #[test]
    fn the_longest_prefix_of_the_exact_port_wins() {
        let mut b = TablesBuilder::default();
        b.cidr_v4(80, net4("10.0.0.0/8"), 0);
        b.cidr_v4(80, net4("10.1.0.0/16"), 1);
        b.cidr_v4(443, net4("10.1.2.0/24"), 2);
        b.cidr_v4(80, net4("10.1.2.3/16"), 5);
        let t = b.build();
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
        assert_eq!(
            t.longest_v4(ip("10.1.2.3"), 80),
            Some(1),
            "host bits cleared, first kept"
        );
        assert_eq!(t.longest_v4(ip("10.9.9.9"), 80), Some(0));
        assert_eq!(t.longest_v4(ip("10.1.2.3"), 443), Some(2));
        assert_eq!(t.longest_v4(ip("11.0.0.1"), 80), None);
        assert_eq!(t.longest_v4(ip("10.1.2.3"), 22), None);
    }

    #[test]
    fn kernel_keys_lead_with_the_port_and_digests_follow_contents() {
        let mut b = TablesBuilder::default();
        b.cidr_v4(443, net4("198.51.100.0/24"), 0);
        b.exact_v6("2001:db8::1".parse().expect("ip"), 0, 1);
        let t = b.build();
        let (prefix, data, value) = t.cidr_v4_entries().next().expect("entry");
        assert_eq!(prefix, 16 + 24);
        assert_eq!(data.port, [0x01, 0xbb]);
        assert_eq!(data.addr, [198, 51, 100, 0]);
        assert_eq!(value.rule, 0);
        let (k, _) = t.exact_v6_entries().next().expect("entry");
        assert_eq!(k.port, 0);
        let same = t.clone();
        assert_eq!(t.digest(), same.digest());
        let mut b = TablesBuilder::default();
        b.cidr_v4(443, net4("198.51.100.0/24"), 0);
        assert_ne!(t.digest(), b.build().digest());
    }
}
