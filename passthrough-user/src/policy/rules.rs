//! A merged `appendMatch` list, kept as runs of the selecting policies' own lists: merging
//! a million-entry policy copies no entry, and the compiled policy's rules (what names the
//! entry that decided a connection) point at the same memory as the parsed policy.

use std::{collections::BTreeSet, fmt, sync::Arc};

use serde::{Serialize, ser::SerializeSeq};

use super::{
    merge::{MergedEntry, PolicyRef},
    model::Match,
};

/// Consecutive entries of one policy.
#[derive(Clone, Debug)]
struct Run {
    /// The rule number of the run's first entry.
    first: usize,
    policy: Arc<PolicyRef>,
    matches: Arc<[Match]>,
    /// (position in `matches`, index reported) of each entry; `None`: every entry of
    /// `matches`, at its own position.
    picks: Option<Arc<[(u32, u32)]>>,
}

impl Run {
    fn len(&self) -> usize {
        self.picks.as_ref().map_or(self.matches.len(), |p| p.len())
    }

    fn at(&self, k: usize) -> Option<Rule<'_>> {
        let (pos, index) = match &self.picks {
            None => (k, k),
            Some(p) => p.get(k).map(|&(p, i)| (p as usize, i as usize))?,
        };
        Some(Rule {
            policy: &self.policy,
            index,
            entry: self.matches.get(pos)?,
        })
    }
}

/// The entries, in merge order: rule `n` is the `n`th.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    runs: Vec<Run>,
    len: usize,
}

/// One entry, borrowed from its policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rule<'a> {
    pub policy: &'a PolicyRef,
    /// Index of the entry in its policy's `spec.default.appendMatch`.
    pub index: usize,
    pub entry: &'a Match,
}

impl Rule<'_> {
    pub fn owned(self) -> MergedEntry {
        MergedEntry {
            policy: Arc::new(self.policy.clone()),
            index: self.index,
            entry: self.entry.clone(),
        }
    }
}

impl fmt::Display for Rule<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} spec.default.appendMatch[{}] {}",
            self.policy.name, self.index, self.entry
        )
    }
}

impl Rules {
    /// Appends the entries of `matches` whose index `dropped` does not hold.
    pub fn push_policy(
        &mut self,
        policy: Arc<PolicyRef>,
        matches: &Arc<[Match]>,
        dropped: &BTreeSet<usize>,
    ) {
        let picks = (!dropped.is_empty()).then(|| {
            (0..matches.len())
                .filter(|i| !dropped.contains(i))
                .filter_map(|i| u32::try_from(i).ok().map(|i| (i, i)))
                .collect::<Arc<[(u32, u32)]>>()
        });
        let run = Run {
            first: self.len,
            policy,
            matches: matches.clone(),
            picks,
        };
        if run.len() > 0 {
            self.len += run.len();
            self.runs.push(run);
        }
    }

    /// One entry, with where it came from.
    pub fn push_entry(&mut self, e: MergedEntry) {
        let index = u32::try_from(e.index).unwrap_or(u32::MAX);
        self.runs.push(Run {
            first: self.len,
            policy: e.policy,
            matches: Arc::new([e.entry]),
            picks: Some(Arc::new([(0, index)])),
        });
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rule `n`.
    pub fn at(&self, n: usize) -> Option<Rule<'_>> {
        let i = self.runs.partition_point(|r| r.first <= n).checked_sub(1)?;
        let run = &self.runs[i];
        run.at(n - run.first)
    }

    /// Rule `n`, owned.
    pub fn get(&self, n: usize) -> Option<MergedEntry> {
        self.at(n).map(Rule::owned)
    }

    pub fn iter(&self) -> impl Iterator<Item = Rule<'_>> + '_ {
        self.runs
            .iter()
            .flat_map(|r| (0..r.len()).filter_map(move |k| r.at(k)))
    }
}

impl FromIterator<MergedEntry> for Rules {
    fn from_iter<I: IntoIterator<Item = MergedEntry>>(iter: I) -> Self {
        let mut r = Rules::default();
        for e in iter {
            r.push_entry(e);
        }
        r
    }
}

impl PartialEq for Rules {
    fn eq(&self, other: &Self) -> bool {
        if self.len != other.len {
            return false;
        }
        // The same runs of the same lists (the usual case: one parsed set) are equal at once.
        let same_runs = self.runs.len() == other.runs.len()
            && self.runs.iter().zip(&other.runs).all(|(a, b)| {
                Arc::ptr_eq(&a.matches, &b.matches)
                    && a.first == b.first
                    && a.picks == b.picks
                    && a.policy == b.policy
            });
        same_runs || self.iter().eq(other.iter())
    }
}

impl Eq for Rules {}

impl Serialize for Rules {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len))?;
        for r in self.iter() {
            seq.serialize_element(&r)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::Source;

    fn m(value: &str) -> Match {
        Match {
            kind: "IP".into(),
            value: value.into(),
            port: Some(443),
            protocol: "tcp".into(),
        }
    }

    fn policy(name: &str) -> Arc<PolicyRef> {
        Arc::new(PolicyRef {
            name: name.into(),
            source: Source::file("t.yaml", 0),
        })
    }

    #[test]
    fn rules_number_the_entries_of_every_run_in_order_without_dropped_ones() {
        let a: Arc<[Match]> = vec![m("10.0.0.1"), m("10.0.0.2"), m("10.0.0.3")].into();
        let b: Arc<[Match]> = vec![m("10.0.1.1")].into();
        let mut r = Rules::default();
        r.push_policy(policy("a"), &a, &BTreeSet::from([1]));
        r.push_policy(policy("empty"), &Arc::from([]), &BTreeSet::new());
        r.push_policy(policy("b"), &b, &BTreeSet::new());
        let seen: Vec<(String, usize, String)> = r
            .iter()
            .map(|e| (e.policy.name.clone(), e.index, e.entry.value.to_string()))
            .collect();
        assert_eq!(
            seen,
            [
                ("a".into(), 0, "10.0.0.1".into()),
                ("a".into(), 2, "10.0.0.3".into()),
                ("b".into(), 0, "10.0.1.1".into()),
            ]
        );
        assert_eq!(r.len(), 3);
        for (n, e) in r.iter().enumerate() {
            assert_eq!(r.at(n), Some(e));
        }
        assert_eq!(r.at(3), None);
        let owned = r.get(1).expect("rule 1");
        assert_eq!((owned.index, owned.entry.value.as_str()), (2, "10.0.0.3"));
    }

    #[test]
    fn rules_equal_by_contents_whether_shared_or_rebuilt_entry_by_entry() {
        let a: Arc<[Match]> = vec![m("10.0.0.1"), m("10.0.0.2")].into();
        let mut shared = Rules::default();
        shared.push_policy(policy("a"), &a, &BTreeSet::new());
        let rebuilt: Rules = shared.iter().map(Rule::owned).collect();
        assert_eq!(shared, rebuilt);
        assert_eq!(shared, shared.clone());
        let other: Rules = [MergedEntry {
            index: 5,
            ..rebuilt.get(0).expect("rule 0")
        }]
        .into_iter()
        .collect();
        assert_ne!(shared, other);
        assert_eq!(
            serde_json::to_value(&shared).expect("json"),
            serde_json::to_value(shared.iter().map(Rule::owned).collect::<Vec<_>>()).expect("json")
        );
    }
}
