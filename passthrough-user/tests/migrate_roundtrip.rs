//! The round-trip property of `passthrough migrate` (issue 17): a migrated policy set
//! validates under Kuma 3, and for every workload and destination tried, its verdict under
//! Kuma 3 is the original's under Kuma 2, except where Kuma 3 itself changed the meaning, and
//! then the migration report says so, precisely enough to name the verdicts it changes.
//!
//! The sets are the shipped examples and a few hundred generated 2.x sets (a fixed seed, so
//! a failure reproduces), each judged through the one validation path (`PolicySet::load`)
//! and the engine `explain` uses.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use passthrough::policy::{
    compile::{compile, normalize_name},
    decide::{Action, Exemptions, Peeked, decide, peeked_host},
    kuma::{Admission, KumaVersion},
    merge::{SelectOptions, merged_for, select},
    migrate::{Input, Kuma3Change, Meaning, Migration, Options, migrate},
    set::PolicySet,
    workload::{ProxyType, Workload},
};

/// A small deterministic generator (xorshift64*), so the property needs no dependency and a
/// failing case is reproduced by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const TAG_SETS: [&str; 4] = ["{}", "{app: a}", "{app: b}", "{app: a, tier: x}"];

/// One random 2.x policy, as YAML.
fn policy_yaml(rng: &mut Rng, name: &str) -> String {
    let proxy_types = *rng.pick(&[
        "",
        ", proxyTypes: [Sidecar]",
        ", proxyTypes: [Sidecar, Gateway]",
    ]);
    let target = match rng.below(5) {
        0 => String::new(),
        1 => format!("targetRef: {{kind: Mesh{proxy_types}}}"),
        2 | 3 => format!(
            "targetRef: {{kind: MeshSubset, tags: {}{proxy_types}}}",
            rng.pick(&TAG_SETS[1..])
        ),
        _ => format!(
            "targetRef: {{kind: Dataplane, labels: {}}}",
            rng.pick(&TAG_SETS[1..])
        ),
    };
    let mode = *rng.pick(&[
        "",
        "passthroughMode: All, ",
        "passthroughMode: None, ",
        "passthroughMode: Matched, ",
    ]);
    let mut entries = Vec::new();
    for _ in 0..rng.below(6) {
        let port = *rng.pick(&[
            "",
            ", port: 80",
            ", port: 443",
            ", port: 8080",
            ", port: 8443",
        ]);
        entries.push(match rng.below(9) {
            0 | 1 => format!(
                "{{type: IP, value: '{}'{port}, protocol: {}}}",
                rng.pick(&[
                    "203.0.113.1",
                    "203.0.113.2",
                    "2001:db8::1",
                    "::ffff:203.0.113.3"
                ]),
                rng.pick(&["tcp", "tls", "http"])
            ),
            2 => format!(
                "{{type: CIDR, value: '{}'{port}, protocol: {}}}",
                rng.pick(&[
                    "203.0.113.0/24",
                    "203.0.113.7/24",
                    "198.51.100.0/25",
                    "2001:db8::/64"
                ]),
                rng.pick(&["tcp", "tls"])
            ),
            3 => "{type: IP, value: 203.0.113.9, port: 3306, protocol: mysql}".to_string(),
            4..=6 => format!(
                "{{type: Domain, value: {}{port}, protocol: {}}}",
                rng.pick(&["a.example.com", "b.example.com", "B.Example.com."]),
                rng.pick(&["tls", "http", "http2"])
            ),
            _ => format!(
                "{{type: Domain, value: '{}'{}, protocol: {}}}",
                rng.pick(&["*.example.com", "*"]),
                port,
                rng.pick(&["tls", "tls", "http"])
            ),
        });
    }
    let spec = format!(
        "{{{target}{}default: {{{mode}appendMatch: [{}]}}}}",
        if target.is_empty() { "" } else { ", " },
        entries.join(", ")
    );
    if rng.chance(50) {
        format!("type: MeshPassthrough\nname: {name}\nmesh: default\nspec: {spec}\n")
    } else {
        format!(
            "apiVersion: kuma.io/v1alpha1\nkind: MeshPassthrough\nmetadata:\n  name: {name}\n  namespace: kuma-system\n  labels:\n    kuma.io/mesh: default\nspec: {spec}\n"
        )
    }
}

/// Writes `files` (name, text) into a new directory.
fn write_set(files: &[(String, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    dir
}

fn opts(kuma: KumaVersion) -> SelectOptions {
    SelectOptions {
        kuma,
        files: Admission::Apply,
        ..SelectOptions::default()
    }
}

/// Every workload tried: each tag set as tags and labels (what migrate asks the operator to
/// make sure of), as tags only, and no identity at all, both proxy types.
fn workloads() -> Vec<Workload> {
    let mut out = Vec::new();
    for tags in TAG_SETS {
        let map: BTreeMap<String, String> = serde_yaml::from_str(tags).expect("tags");
        for proxy_type in [ProxyType::Sidecar, ProxyType::Gateway] {
            out.push(Workload {
                proxy_type,
                tags: map.clone(),
                labels: map.clone(),
                ..Workload::default()
            });
            if !map.is_empty() {
                out.push(Workload {
                    proxy_type,
                    tags: map.clone(),
                    ..Workload::default()
                });
            }
        }
    }
    out
}

/// Every connection tried: addresses the generator uses and others, on its ports and others,
/// with no name (the kernel's view) and with each name over each protocol.
fn probes() -> Vec<(SocketAddr, Option<Peeked>)> {
    let mut out = Vec::new();
    let ips = [
        "203.0.113.1",
        "203.0.113.3",
        "203.0.113.7",
        "203.0.113.9",
        "198.51.100.99",
        "[2001:db8::1]",
        "[2001:db8:1::1]",
    ];
    let names = [
        "a.example.com",
        "b.example.com",
        "x.example.com",
        "example.com",
    ];
    for ip in ips {
        for port in [80, 443, 3306, 8080, 8443, 9999] {
            let dest: SocketAddr = format!("{ip}:{port}").parse().expect("addr");
            out.push((dest, None));
            for n in names {
                out.push((dest, Some(Peeked::Tls(Some(n.into())))));
                out.push((dest, Some(Peeked::Http1(Some(n.into())))));
                out.push((dest, Some(Peeked::Http2(Some(n.into())))));
            }
        }
    }
    out
}

/// The verdict `explain` gives: selection, merge, compile, decide.
fn verdict(
    set: &PolicySet,
    w: &Workload,
    o: &SelectOptions,
    dest: SocketAddr,
    peek: Option<&Peeked>,
) -> Action {
    let merged = merged_for(&set.policies, w, o).expect("no merge conflict");
    let compiled = compile(&merged).expect("compiles");
    decide(&compiled, &Exemptions::default(), dest, peek).action
}

fn protocol_of(peek: &Peeked) -> &'static [&'static str] {
    match peek {
        Peeked::Tls(_) => &["tls"],
        Peeked::Http1(_) => &["http"],
        Peeked::Http2(_) => &["http2", "grpc"],
        Peeked::Unknown => &[],
    }
}

/// The Kuma 3 meaning changes the report gives for each policy (by name).
fn reported(m: &Migration) -> BTreeMap<String, Vec<Kuma3Change>> {
    let mut out: BTreeMap<String, Vec<Kuma3Change>> = BTreeMap::new();
    for d in m.documents() {
        for c in &d.changes {
            if let Meaning::ChangedByKuma3 { change } = &c.meaning {
                out.entry(d.name.clone()).or_default().push(change.clone());
            }
        }
    }
    out
}

/// Why a verdict may differ, from the report: `None` when nothing reported explains it.
fn explained(
    changes: &BTreeMap<String, Vec<Kuma3Change>>,
    s2: &BTreeSet<String>,
    s3: &BTreeSet<String>,
    w: &Workload,
    dest: SocketAddr,
    peek: Option<&Peeked>,
) -> Option<&'static str> {
    let of = |name: &String| changes.get(name).into_iter().flatten();
    if s2 != s3 {
        // Each policy selected by one version only must have a reported selection change
        // that covers this workload.
        let all = s2.symmetric_difference(s3).all(|name| {
            of(name).any(|c| match c {
                Kuma3Change::Labels { labels } => {
                    !labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))
                }
                Kuma3Change::ProxyTypes { now_also } => now_also.contains(&w.proxy_type),
                _ => false,
            })
        });
        return all.then_some("selection (labels or proxy types)");
    }
    if s3
        .iter()
        .any(|n| of(n).any(|c| matches!(c, Kuma3Change::Priority { .. })))
    {
        return Some("priority");
    }
    let ports = s3.iter().any(|n| {
        of(n).any(|c| match c {
            Kuma3Change::DomainPorts {
                value,
                protocol,
                ports,
            } => {
                !ports.contains(&dest.port())
                    && peek.is_none_or(|p| {
                        protocol_of(p).contains(&protocol.as_str())
                            && peeked_host(p).as_deref() == Some(normalize_name(value).as_str())
                    })
            }
            _ => false,
        })
    });
    ports.then_some("domain ports")
}

struct Outcome {
    probes: usize,
    differing: usize,
}

/// The property for one set of files: `None` when the set is not a valid 2.x set or needs a
/// choice (not what the property is about).
fn check_set(label: &str, files: &[(String, String)], options: &Options) -> Option<Outcome> {
    let original = write_set(files);
    let before = PolicySet::load(&[original.path().to_path_buf()], &opts(KumaVersion::V2));
    if before.has_errors() {
        return None;
    }
    let inputs: Vec<Input> = files
        .iter()
        .map(|(name, text)| Input {
            path: name.clone(),
            text: text.clone(),
        })
        .collect();
    let m = migrate(&inputs, options);
    if !m.complete() {
        return None;
    }
    let migrated: Vec<(String, String)> = m
        .files
        .iter()
        .map(|f| (f.path.clone(), f.text.clone().expect("text")))
        .collect();
    let dir = write_set(&migrated);
    let after = PolicySet::load(&[dir.path().to_path_buf()], &opts(KumaVersion::V3));
    let findings: Vec<String> = after.findings().iter().map(|f| f.line()).collect();
    assert!(
        findings.is_empty(),
        "{label}: the migrated set must validate under Kuma 3 with no finding: {findings:#?}\n{files:#?}\n{migrated:#?}"
    );
    assert_eq!(after.policies.len(), before.policies.len(), "{label}");
    let changes = reported(&m);
    let (o2, o3) = (opts(KumaVersion::V2), opts(KumaVersion::V3));
    let mut outcome = Outcome {
        probes: 0,
        differing: 0,
    };
    for w in workloads() {
        let names = |set: &PolicySet, o| -> BTreeSet<String> {
            select(&set.policies, &w, o)
                .iter()
                .map(|p| p.name.clone())
                .collect()
        };
        let (s2, s3) = (names(&before, &o2), names(&after, &o3));
        for (dest, peek) in probes() {
            outcome.probes += 1;
            let v2 = verdict(&before, &w, &o2, dest, peek.as_ref());
            let v3 = verdict(&after, &w, &o3, dest, peek.as_ref());
            if v2 == v3 {
                continue;
            }
            outcome.differing += 1;
            assert!(
                explained(&changes, &s2, &s3, &w, dest, peek.as_ref()).is_some(),
                "{label}: {w} -> {dest} {peek:?}: Kuma 2 says {v2}, Kuma 3 {v3}, and the report says nothing that explains it\nreport: {:#?}\n{files:#?}\n{migrated:#?}",
                m.report_lines()
            );
        }
    }
    Some(outcome)
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn the_shipped_examples_keep_their_verdicts_except_where_the_report_says() {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(examples()).expect("examples") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        files.push((name, std::fs::read_to_string(&path).expect("read")));
    }
    files.sort();
    assert_eq!(files.len(), 4);
    // Together, and each alone.
    let all = check_set("examples", &files, &Options::default()).expect("the examples migrate");
    assert!(all.probes > 5_000, "{}", all.probes);
    // Gateways are now selected (Kuma 3 has no proxyTypes): some verdicts do change, and
    // every one of them was explained above.
    assert!(all.differing > 0);
    for f in &files {
        check_set(&f.0, std::slice::from_ref(f), &Options::default()).expect("migrates");
    }
}

#[test]
fn generated_2x_sets_round_trip_through_kuma_3() {
    let mut rng = Rng(0x5eed_0017_2026_0001);
    let (mut tried, mut checked, mut differing, mut with_changes) = (0, 0, 0, 0);
    for round in 0..300 {
        let n = 1 + rng.below(3);
        let files: Vec<(String, String)> = (0..n)
            .map(|i| {
                (
                    format!("p{i}.yaml"),
                    policy_yaml(&mut rng, &format!("p{i}")),
                )
            })
            .collect();
        let mut options = Options::default();
        if rng.chance(50) {
            options
                .port_for
                .insert("a.example.com".into(), BTreeSet::from([443, 8443]));
        }
        tried += 1;
        if let Some(o) = check_set(&format!("round {round}"), &files, &options) {
            checked += 1;
            differing += o.differing;
            with_changes += usize::from(o.differing > 0);
        }
    }
    eprintln!(
        "{checked} of {tried} sets checked, {with_changes} with verdicts Kuma 3 changed ({differing} probes, all explained by the report)"
    );
    // The property is about sets that are valid 2.x and need no choice: most generated sets
    // must be such, and Kuma 3 must have changed the verdicts of some (or nothing was tested).
    assert!(
        checked * 2 > tried,
        "only {checked} of {tried} sets checked"
    );
    assert!(
        with_changes > 20,
        "{with_changes} sets with explained differences ({differing} probes)"
    );
}
