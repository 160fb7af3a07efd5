//! The replay behind `passthrough simulate`: recorded flows judged by [`decide`] under the
//! policies a workload has now and under a candidate set, and the flows whose verdict
//! differs. Pure: the CLI reads the record and the files, this module only decides.

use std::{collections::HashMap, net::SocketAddr};

use serde::Serialize;

use super::{
    compile::{CompiledPolicy, EffectiveMode, compile},
    decide::{Action, Exemptions, Peeked, Verdict, decide},
    merge::{MergedEntry, SelectOptions, merged_for},
    model::Policy,
    workload::Workload,
};

/// The agent settings a replay needs besides the policies.
#[derive(Clone, Debug)]
pub struct Setting {
    pub opts: SelectOptions,
    /// `defaultMode: None`: a workload no policy selects is denied everything.
    pub default_none: bool,
    pub exemptions: Exemptions,
}

/// A recorded flow as the replay sees it: who, where to, and the name the proxy read.
#[derive(Clone, Debug)]
pub struct Flow {
    pub identity: Workload,
    pub destination: SocketAddr,
    pub peek: Option<Peeked>,
}

/// The compiled policy `policies` give workload `w`, as the agent compiles it.
pub fn compiled_for(
    policies: &[Policy],
    w: &Workload,
    s: &Setting,
) -> Result<CompiledPolicy, String> {
    let merged = merged_for(policies, w, &s.opts).map_err(|conflicts| {
        conflicts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let mut compiled = compile(&merged).map_err(|e| e.to_string())?;
    if compiled.mode == EffectiveMode::Unfiltered && s.default_none {
        compiled.mode = EffectiveMode::None;
    }
    Ok(compiled)
}

/// Whether the policy lets a flow through. Audit mode does not count: a connect it let
/// through that the policy denies is `Denied`, which is what enforcing would do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    Allowed,
    Denied,
    /// Handed to the peek proxy, and no name of it recorded: the name the client sends
    /// decides.
    ByName,
}

/// A flow's verdict under one policy set, and the entry that decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub class: Class,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<MergedEntry>,
}

/// Judges one flow with a workload's compiled policy.
pub fn judge(c: &CompiledPolicy, ex: &Exemptions, flow: &Flow) -> Outcome {
    let verdict = decide(c, ex, flow.destination, flow.peek.as_ref());
    let class = if verdict.action == Action::Deny || verdict.would_deny.is_some() {
        Class::Denied
    } else if verdict.action == Action::Proxy {
        Class::ByName
    } else {
        Class::Allowed
    };
    Outcome {
        class,
        entry: verdict.rule.and_then(|r| c.rules.get(r as usize)),
        verdict,
    }
}

/// Which way a verdict changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Allowed now, denied under the candidate (or left to a name none of its recorded
    /// connects is known to send): the candidate would cut it.
    Cut,
    /// Denied now (or left to the name), allowed or left to the name under the candidate.
    Opened,
}

/// A flow whose verdict the candidate changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub direction: Direction,
    pub before: Outcome,
    pub after: Outcome,
}

impl Change {
    /// The entry responsible: the one that stops matching (cut) or starts to (opened); `None`
    /// when a mode, not an entry, decides.
    pub fn entry(&self) -> Option<&MergedEntry> {
        match self.direction {
            Direction::Cut => self.before.entry.as_ref(),
            Direction::Opened => self.after.entry.as_ref(),
        }
    }
}

/// The change between two outcomes of one flow, if its class differs.
pub fn compare(before: Outcome, after: Outcome) -> Option<Change> {
    let direction = match (before.class, after.class) {
        (a, b) if a == b => return None,
        (_, Class::Denied) | (Class::Allowed, Class::ByName) => Direction::Cut,
        _ => Direction::Opened,
    };
    Some(Change {
        direction,
        before,
        after,
    })
}

/// The name a policy is replaced by: a candidate with the same mesh and (namespaced) name
/// takes the place of the agent's.
fn identity(p: &Policy) -> (String, String) {
    (p.mesh.clone(), p.qualified_name())
}

/// The agent's policies a candidate set leaves in place: those no candidate replaces.
pub fn kept<'a>(agent: &'a [Policy], candidates: &[Policy]) -> Vec<&'a Policy> {
    let replaced: Vec<(String, String)> = candidates.iter().map(identity).collect();
    agent
        .iter()
        .filter(|p| !replaced.contains(&identity(p)))
        .collect()
}

/// Replays flows under the policies now (`before`) and a candidate set (`after`), each
/// workload's policies compiled once.
pub struct Replay<'a> {
    before: &'a [Policy],
    after: &'a [Policy],
    setting: &'a Setting,
    compiled: HashMap<String, Compiled>,
}

type Compiled = (
    Result<CompiledPolicy, String>,
    Result<CompiledPolicy, String>,
);

impl<'a> Replay<'a> {
    pub fn new(before: &'a [Policy], after: &'a [Policy], setting: &'a Setting) -> Self {
        Self {
            before,
            after,
            setting,
            compiled: HashMap::new(),
        }
    }

    /// The change to `flow` of workload `key` (any string that names one identity), or the
    /// reason its policies cannot be compiled (the agent would refuse them for it).
    pub fn replay(&mut self, key: &str, flow: &Flow) -> Result<Option<Change>, String> {
        let (before, after) = self.compiled.entry(key.to_string()).or_insert_with(|| {
            (
                compiled_for(self.before, &flow.identity, self.setting),
                compiled_for(self.after, &flow.identity, self.setting),
            )
        });
        let before = before.as_ref().map_err(|e| format!("now: {e}"))?;
        let after = after
            .as_ref()
            .map_err(|e| format!("under the candidate policies: {e}"))?;
        let ex = &self.setting.exemptions;
        Ok(compare(judge(before, ex, flow), judge(after, ex, flow)))
    }
}

#[cfg(test)]
mod tests {
    use passthrough_common::Reason;

    use super::*;
    use crate::policy::load::test_policies as policies;

    fn web() -> Workload {
        Workload {
            tags: [("kuma.io/service".to_string(), "web".to_string())].into(),
            ..Workload::default()
        }
    }

    fn flow(dest: &str, peek: Option<Peeked>) -> Flow {
        Flow {
            identity: web(),
            destination: dest.parse().expect("addr"),
            peek,
        }
    }

    fn setting() -> Setting {
        Setting {
            opts: SelectOptions::default(),
            default_none: false,
            exemptions: Exemptions::default(),
        }
    }

    fn policy(name: &str, audit: bool, entries: &str) -> String {
        format!(
            "apiVersion: kuma.io/v1alpha1\nkind: MeshPassthrough\nmetadata:\n  name: {name}\n  namespace: kuma-system\n  labels: {{passthrough.io/audit: \"{audit}\"}}\nspec:\n  targetRef: {{kind: MeshSubset, tags: {{kuma.io/service: web}}}}\n  default:\n    passthroughMode: Matched\n    appendMatch:\n{entries}"
        )
    }

    const NOW: &str = "      - {type: IP, value: 203.0.113.10}\n      - {type: CIDR, value: 198.51.100.0/24}\n      - {type: Domain, value: api.example.com, port: 443, protocol: tls}\n";

    /// Every outcome of the replay must be exactly what `decide` says of each side.
    fn agrees_with_decide(before: &[Policy], after: &[Policy], f: &Flow) -> Option<Change> {
        let s = setting();
        let change = Replay::new(before, after, &s)
            .replay("web", f)
            .expect("compiles");
        let b = decide(
            &compiled_for(before, &f.identity, &s).expect("before"),
            &s.exemptions,
            f.destination,
            f.peek.as_ref(),
        );
        let a = decide(
            &compiled_for(after, &f.identity, &s).expect("after"),
            &s.exemptions,
            f.destination,
            f.peek.as_ref(),
        );
        let class = |v: &Verdict| match (v.action, v.would_deny) {
            (Action::Deny, _) | (_, Some(_)) => 0,
            (Action::Proxy, None) => 1,
            (Action::Allow, None) => 2,
        };
        assert_eq!(change.is_some(), class(&b) != class(&a), "{f:?}");
        if let Some(c) = &change {
            assert_eq!(c.before.verdict, b);
            assert_eq!(c.after.verdict, a);
        }
        change
    }

    #[test]
    fn dropping_an_ip_entry_cuts_its_flows_naming_the_entry() {
        let before = policies(&policy("p", false, NOW));
        let after = policies(&policy(
            "p",
            false,
            "      - {type: CIDR, value: 198.51.100.0/24}\n      - {type: IP, value: 203.0.113.20, port: 8443}\n      - {type: Domain, value: api.example.com, port: 443, protocol: tls}\n      - {type: IP, value: 203.0.113.11, port: 443}\n",
        ));
        let cut =
            agrees_with_decide(&before, &after, &flow("203.0.113.10:8443", None)).expect("cut");
        assert_eq!(cut.direction, Direction::Cut);
        let e = cut.entry().expect("entry");
        assert_eq!((e.index, e.entry.value.as_str()), (0, "203.0.113.10"));
        assert_eq!(cut.after.verdict.reason, Reason::NoMatch);
        // On a port with a Domain entry, the IP entry's loss leaves the connect to the name.
        let to_name = agrees_with_decide(&before, &after, &flow("203.0.113.10:443", None))
            .expect("left to the name");
        assert_eq!(
            (to_name.direction, to_name.after.class),
            (Direction::Cut, Class::ByName)
        );

        let opened =
            agrees_with_decide(&before, &after, &flow("203.0.113.20:8443", None)).expect("opened");
        assert_eq!(opened.direction, Direction::Opened);
        let e = opened.entry().expect("entry");
        assert_eq!((e.index, e.entry.value.as_str()), (1, "203.0.113.20"));

        for same in [
            flow("198.51.100.7:80", None),
            flow("203.0.113.99:443", None),
            flow("203.0.113.99:8443", None),
            flow("203.0.113.20:443", None),
            flow(
                "192.0.2.50:443",
                Some(Peeked::Tls(Some("api.example.com".into()))),
            ),
            flow(
                "192.0.2.50:443",
                Some(Peeked::Tls(Some("other.example".into()))),
            ),
        ] {
            assert_eq!(agrees_with_decide(&before, &after, &same), None, "{same:?}");
        }
    }

    #[test]
    fn names_are_judged_with_what_the_proxy_read() {
        let before = policies(&policy("p", false, NOW));
        let after = policies(&policy(
            "p",
            false,
            "      - {type: IP, value: 203.0.113.10, port: 443}\n",
        ));
        let named = flow(
            "192.0.2.50:443",
            Some(Peeked::Tls(Some("api.example.com".into()))),
        );
        let cut = agrees_with_decide(&before, &after, &named).expect("cut");
        assert_eq!(cut.before.verdict.reason, Reason::DomainEntry);
        assert_eq!(cut.entry().expect("entry").entry.value, "api.example.com");
        // The kernel's view of the same connect (no name read): a hand-off now, a denial after.
        let handoff =
            agrees_with_decide(&before, &after, &flow("192.0.2.50:443", None)).expect("cut");
        assert_eq!(handoff.before.verdict.action, Action::Proxy);
    }

    #[test]
    fn audit_mode_does_not_hide_what_enforcing_would_change() {
        let before = policies(&policy("p", true, NOW));
        let after = policies(&policy(
            "p",
            true,
            "      - {type: IP, value: 203.0.113.10, port: 443}\n",
        ));
        let cut = agrees_with_decide(&before, &after, &flow("198.51.100.7:80", None))
            .expect("cut although audit lets both through");
        assert_eq!(cut.after.verdict.reason, Reason::Audit);
        assert_eq!(cut.after.verdict.would_deny, Some(Reason::NoMatch));
    }

    #[test]
    fn a_candidate_replaces_the_policy_of_its_name_only() {
        let agent = policies(&format!(
            "{}\n---\n{}",
            policy("p", false, NOW),
            policy("q", false, "      - {type: IP, value: 192.0.2.1}\n")
        ));
        let candidates = policies(&policy(
            "p",
            false,
            "      - {type: IP, value: 192.0.2.2}\n",
        ));
        let kept: Vec<&str> = kept(&agent, &candidates)
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(kept, ["q"]);
    }

    #[test]
    fn default_mode_none_applies_to_unselected_workloads_as_in_the_agent() {
        let s = Setting {
            default_none: true,
            ..setting()
        };
        let c = compiled_for(&[], &web(), &s).expect("compiles");
        assert_eq!(c.mode, EffectiveMode::None);
        let o = judge(&c, &s.exemptions, &flow("203.0.113.10:443", None));
        assert_eq!(
            (o.class, o.verdict.reason),
            (Class::Denied, Reason::ModeNone)
        );
    }
}
