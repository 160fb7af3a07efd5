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

/// The changes that turn one sorted table into another: the keys to delete (rule 0) and
/// the entries to write (new keys, and keys whose rule changed).
fn diff<K: Ord + Copy>(
    old: &[(K, u32)],
    new: &[(K, u32)],
    removed: &mut Vec<(K, u32)>,
    written: &mut Vec<(K, u32)>,
) {
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.0 == n.0 => {
                if o.1 != n.1 {
                    written.push(*n);
                }
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if o.0 < n.0 => {
                removed.push((o.0, 0));
                i += 1;
            }
            (Some(o), None) => {
                removed.push((o.0, 0));
                i += 1;
            }
            (_, Some(n)) => {
                written.push(*n);
                j += 1;
            }
            (None, None) => break,
        }
    }
}

/// What changes in place when a policy's tables become others: the entries to delete,
/// then those to write (see [`Tables::patch_to`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Patch {
    /// Keys to delete (their rules are 0).
    pub removed: Tables,
    pub written: Tables,
}

impl Patch {
    /// Map operations it takes.
    pub fn len(&self) -> usize {
        self.removed.len() + self.written.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    /// The in-place changes from these tables to `to`, when they are at most `limit` map
    /// operations and no table grows (an inner map holds as many entries as it was created
    /// for; a table that grows is installed anew).
    pub fn patch_to(&self, to: &Tables, limit: usize) -> Option<Patch> {
        let grows = to.exact_v4.len() > self.exact_v4.len()
            || to.exact_v6.len() > self.exact_v6.len()
            || to.cidr_v4.len() > self.cidr_v4.len()
            || to.cidr_v6.len() > self.cidr_v6.len()
            || to.domain_ports.len() > self.domain_ports.len();
        if grows {
            return None;
        }
        // A cheap bound first: tables of very different sizes are not a small change.
        if self.len().abs_diff(to.len()) > limit {
            return None;
        }
        let mut p = Patch::default();
        let (r, w) = (&mut p.removed, &mut p.written);
        diff(
            &self.exact_v4,
            &to.exact_v4,
            &mut r.exact_v4,
            &mut w.exact_v4,
        );
        diff(
            &self.exact_v6,
            &to.exact_v6,
            &mut r.exact_v6,
            &mut w.exact_v6,
        );
        diff(&self.cidr_v4, &to.cidr_v4, &mut r.cidr_v4, &mut w.cidr_v4);
        diff(&self.cidr_v6, &to.cidr_v6, &mut r.cidr_v6, &mut w.cidr_v6);
        diff(
            &self.domain_ports,
            &to.domain_ports,
            &mut r.domain_ports,
            &mut w.domain_ports,
        );
        (p.len() <= limit).then_some(p)
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
    fn a_patch_deletes_what_went_and_writes_what_is_new_or_renumbered() {
        let ip = |s: &str| -> Ipv4Addr { s.parse().expect("ip") };
        let build = |entries: &[(&str, u32)]| {
            let mut b = TablesBuilder::default();
            for (a, rule) in entries {
                b.exact_v4(ip(a), 443, *rule);
            }
            b.build()
        };
        let old = build(&[("10.0.0.1", 0), ("10.0.0.2", 1), ("10.0.0.3", 2)]);
        let new = build(&[("10.0.0.9", 0), ("10.0.0.2", 1), ("10.0.0.3", 5)]);
        let p = old.patch_to(&new, 10).expect("a small change");
        assert_eq!(p.removed.exact_v4, [((ip("10.0.0.1"), 443), 0)]);
        assert_eq!(
            p.written.exact_v4,
            [((ip("10.0.0.3"), 443), 5), ((ip("10.0.0.9"), 443), 0)]
        );
        assert_eq!(p.len(), 3);
        assert!(old.patch_to(&new, 2).is_none(), "over the limit");
        let bigger = build(&[
            ("10.0.0.1", 0),
            ("10.0.0.2", 1),
            ("10.0.0.3", 2),
            ("10.0.0.4", 3),
        ]);
        assert!(old.patch_to(&bigger, 10).is_none(), "a table that grows");
        assert!(old.patch_to(&old, 10).expect("no change").is_empty());
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
