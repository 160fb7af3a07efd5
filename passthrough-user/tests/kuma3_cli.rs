//! Kuma 3 on the command line (issue 17): `--kuma-version 3` on validate, explain, compile and
//! recommend, `validate --stored`, the agent config's `kuma.version`, and `migrate`, whose
//! output for each shipped example is a committed fixture. No root needed.

use std::{
    fs,
    path::{Path, PathBuf},
};

mod support;
use serde_json::Value;
use support::{bin, run};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/migrate")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).expect("write");
    p
}

/// Compares with a committed fixture; `PASSTHROUGH_BLESS=1` rewrites it instead.
fn same_as_fixture(name: &str, got: &str) {
    let path = fixtures().join(name);
    if std::env::var_os("PASSTHROUGH_BLESS").is_some() {
        fs::write(&path, got).expect("bless");
        return;
    }
    let want = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        got, want,
        "{name} differs from its fixture (PASSTHROUGH_BLESS=1 rewrites it)"
    );
}

#[test]
fn migrate_rewrites_each_shipped_example_with_its_report() {
    let mut names = Vec::new();
    for entry in fs::read_dir(repo().join("examples")).expect("examples") {
        let path = entry.expect("entry").path();
        names.push(
            path.file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned(),
        );
    }
    names.sort();
    assert_eq!(names.len(), 4, "{names:?}");
    for name in &names {
        let (code, out, err) = run(bin()
            .current_dir(repo())
            .args(["migrate", "--to", "3"])
            .arg(format!("examples/{name}.yaml")));
        assert_eq!(code, 0, "{name}: {err}");
        same_as_fixture(&format!("{name}.yaml"), &out);
        same_as_fixture(&format!("{name}.report.txt"), &err);
        // What it wrote is valid for Kuma 3, with nothing to warn about.
        let dir = tempfile::tempdir().expect("tmp");
        let f = write(dir.path(), "m.yaml", &out);
        let (code, vout, verr) = run(bin()
            .args(["validate", "--strict", "--kuma-version", "3"])
            .arg(&f));
        assert_eq!(code, 0, "{name}: {vout}{verr}");
    }
    // All four at once: one report, in file order.
    let (code, _, err) = run(bin().current_dir(repo()).args(["migrate", "examples/"]));
    assert_eq!(code, 0, "{err}");
    same_as_fixture("examples.report.txt", &err);
}

#[test]
fn migrate_out_and_write_put_the_files_where_asked() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("policies");
    fs::create_dir_all(src.join("team")).expect("dirs");
    let p = write(
        &src.join("team"),
        "a.yaml",
        "# notes\ntype: MeshPassthrough\nname: a\nspec:\n  targetRef: {kind: MeshSubset, tags: {app: web}}\n  default:\n    appendMatch:\n      - {type: Domain, value: api.example.com, protocol: tls}\n      - {type: Domain, value: web.example.com, protocol: tls, port: 443}\n",
    );
    let untouched = write(
        &src,
        "b.yaml",
        "# kept as written\ntype: MeshPassthrough\nname: b\nspec:\n  default:\n    passthroughMode: None\n",
    );
    let out = dir.path().join("kuma3");
    let (code, stdout, err) = run(bin().arg("migrate").arg(&src).arg("--out").arg(&out));
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(err.is_empty(), "{err}");
    let report: Vec<&str> = stdout.lines().collect();
    assert!(
        report.iter().any(|l| l.ends_with(
            "spec.default.appendMatch[0].port: added port 443 (the port of this policy's other tls entries): Kuma 3 needs a port for a domain: the sidecar resolves api.example.com and connects on that port"
        )),
        "{stdout}"
    );
    assert!(
        report.contains(&"  meaning: Kuma 3 changed it: api.example.com over tls was allowed on every port; now only on port 443: add ports with --port-for api.example.com=PORT"),
        "{stdout}"
    );
    let migrated = fs::read_to_string(out.join("team/a.yaml")).expect("team/a.yaml under --out");
    assert!(
        migrated.contains("kind: Dataplane\n    labels:\n      app: web"),
        "{migrated}"
    );
    assert!(out.join("b.yaml").exists());
    // The input is untouched without --write.
    assert!(fs::read_to_string(&p).expect("a").starts_with("# notes"));
    // --write rewrites only the files with a policy that changed.
    let (code, _, _) = run(bin().arg("migrate").arg("--write").arg(&src));
    assert_eq!(code, 0);
    assert_eq!(
        fs::read_to_string(&p).expect("a"),
        migrated.replace(
            &out.join("team/a.yaml").display().to_string(),
            &p.display().to_string()
        )
    );
    assert!(
        fs::read_to_string(&untouched)
            .expect("b")
            .starts_with("# kept as written")
    );
    let (code, out, err) = run(bin()
        .args(["validate", "--strict", "--kuma-version", "3"])
        .arg(&src));
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn migrate_says_what_to_choose_where_it_cannot_decide_and_exits_1() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = write(
        dir.path(),
        "p.yaml",
        r#"type: MeshPassthrough
name: by-name
spec:
  targetRef: {kind: Dataplane, name: web, namespace: shop}
  default:
    appendMatch:
      - {type: Domain, value: api.example.com, protocol: tls}
---
type: MeshPassthrough
name: gateways
spec:
  targetRef: {kind: Mesh, proxyTypes: [Gateway]}
  default: {passthroughMode: None}
---
type: MeshPassthrough
name: gateway-kind
spec:
  targetRef: {kind: MeshGateway, name: edge}
  default: {passthroughMode: All}
---
type: MeshPassthrough
name: broken
spec:
  default:
    appendMatch:
      - {type: IP, value: nope}
"#,
    );
    let (code, out, err) = run(bin().arg("migrate").arg(&f));
    assert_eq!(code, 1, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    let has = |prefix: &str| lines.iter().any(|l| l.contains(prefix));
    assert!(
        has(
            "#0 by-name: spec.targetRef.name: undecided: the policy selects the Dataplane shop/web by name"
        ),
        "{err}"
    );
    assert!(
        has(
            "#0 by-name: spec.default.appendMatch[0].port: undecided: api.example.com over tls has no port"
        ),
        "{err}"
    );
    assert!(
        has(
            "  choose: the port api.example.com is reached on: pass --port-for api.example.com=PORT"
        ),
        "{err}"
    );
    assert!(
        has("#1 gateways: spec.targetRef.proxyTypes: undecided: the policy selects gateways only"),
        "{err}"
    );
    assert!(
        has("#2 gateway-kind: spec.targetRef.kind: undecided: a MeshGateway selector"),
        "{err}"
    );
    assert!(
        has("#3 broken: not migrated: invalid under Kuma 2, fix it first"),
        "{err}"
    );
    assert!(
        has("  spec.default.appendMatch[0].value: provided IP has incorrect value"),
        "{err}"
    );
    assert!(
        err.ends_with("4 policies in 1 file: 0 migrated, 0 unchanged, 3 need a choice, 1 not migrated; 0 changes, 0 of them change what a policy means (Kuma 3 did)\n"),
        "{err}"
    );
    // The undecided parts stay in their 2.x form, so Kuma 3's validation still flags them.
    assert!(out.contains("name: web"), "{out}");
    // A port given on the command line decides the Domain; the Dataplane still waits.
    let (code, _, err) = run(bin().arg("migrate").arg(&f).args([
        "--port-for",
        "API.example.com.=443",
        "--port-for",
        "api.example.com=8443",
    ]));
    assert_eq!(code, 1);
    assert!(
        err.contains("#0 by-name: spec.default.appendMatch[0].port: added port 443, 8443 (--port-for api.example.com)"),
        "{err}"
    );
    // JSON: every document with its status, changes and choices.
    let (code, out, _) = run(bin().args(["-o", "json", "migrate"]).arg(&f));
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).expect("json");
    let docs = v["files"][0]["documents"].as_array().expect("documents");
    let status: Vec<&str> = docs.iter().filter_map(|d| d["status"].as_str()).collect();
    assert_eq!(
        status,
        [
            "needs_choice",
            "needs_choice",
            "needs_choice",
            "not_migrated"
        ]
    );
    assert_eq!(docs[0]["undecided"][0]["field"], "spec.targetRef.name");
}

#[test]
fn migrate_refuses_bad_arguments_and_unreadable_files() {
    let (code, _, err) = run(bin().args(["migrate", "--to", "2", "x.yaml"]));
    assert_eq!(code, 2);
    assert!(err.contains("write --to 3"), "{err}");
    for bad in [
        "api.example.com",
        "api.example.com=0",
        "*.example.com=443",
        "a=b",
    ] {
        let (code, _, err) = run(bin().args(["migrate", "--port-for", bad, "x.yaml"]));
        assert_eq!(code, 2, "{bad}: {err}");
    }
    let dir = tempfile::tempdir().expect("tmp");
    let f = write(dir.path(), "bad.yaml", "type: [unclosed\n");
    let (code, _, err) = run(bin().arg("migrate").arg(&f));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.yaml: not migrated: not valid YAML"),
        "{err}"
    );
}

#[test]
fn migrate_reports_a_priority_kuma_3_reverses() {
    let dir = tempfile::tempdir().expect("tmp");
    write(
        dir.path(),
        "a.yaml",
        "type: MeshPassthrough\nname: z-subset\nspec:\n  targetRef: {kind: MeshSubset, tags: {app: web}}\n  default: {passthroughMode: None}\n",
    );
    write(
        dir.path(),
        "b.yaml",
        "type: MeshPassthrough\nname: a-dataplane\nspec:\n  targetRef: {kind: Dataplane, labels: {app: web}}\n  default: {passthroughMode: All}\n",
    );
    let (code, _, err) = run(bin().arg("migrate").arg(dir.path()));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("z-subset: spec.targetRef: ranks below a-dataplane now"),
        "{err}"
    );
    assert!(
        err.contains("  meaning: Kuma 3 changed it: in Kuma 2 this policy outranked a-dataplane"),
        "{err}"
    );
    // And it is so: Kuma 2 denies (the MeshSubset's None), Kuma 3 allows (a-dataplane's All).
    let migrated = tempfile::tempdir().expect("tmp");
    run(bin()
        .arg("migrate")
        .arg(dir.path())
        .arg("--out")
        .arg(migrated.path()));
    let explain = |policies: &Path, v: &str| {
        run(bin()
            .args([
                "explain",
                "--kuma-version",
                v,
                "--tag",
                "app=web",
                "--label",
                "app=web",
                "--policy",
            ])
            .arg(policies)
            .arg("203.0.113.1:443"))
        .0
    };
    assert_eq!(explain(dir.path(), "2"), 1);
    assert_eq!(explain(migrated.path(), "3"), 0);
}

#[test]
fn validate_under_kuma_3_refuses_what_kuma_3_refuses_and_warns_for_stored_policies() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = write(
        dir.path(),
        "p.yaml",
        "type: MeshPassthrough\nname: p\nspec:\n  targetRef: {kind: Dataplane, name: web}\n  default:\n    appendMatch:\n      - {type: Domain, value: api.example.com, protocol: tls}\n      - {type: IP, value: 1.2.3.4, port: 80}\n      - {type: CIDR, value: 1.2.3.4/32, port: 80}\n",
    );
    // Kuma 2: valid.
    let (code, _, err) = run(bin().arg("validate").arg(&f));
    assert_eq!(code, 0, "{err}");
    // Kuma 3, applied: refused with Kuma 3's message, and the Dataplane name warned about.
    let (code, out, err) = run(bin().args(["validate", "--kuma-version", "3"]).arg(&f));
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with("  hint: ")).collect();
    let file = f.display();
    assert_eq!(
        lines,
        [
            format!(
                "{file}#0 p: spec.default.appendMatch[0].port: port must be defined for a domain, the sidecar resolves the domain to pin the destination"
            ),
            format!(
                "{file}#0 p: spec.default.appendMatch[2].value: value 1.2.3.4/32 is the same address as appendMatch[1] (1.2.3.4) for port 80 and protocol tcp: both would build one listener filter chain"
            ),
            format!(
                "warning: {file}#0 p: spec.targetRef.name: name is not in Kuma 3's schema: it is dropped (pruned on Kubernetes, ignored on Universal); Kuma 3 selects Dataplanes by labels only, so this reference to the Dataplane web selects every Dataplane of the mesh"
            ),
        ]
    );
    // Stored before the upgrade: Kuma 3 keeps it, and changes it; warnings, exit 0.
    let (code, out, err) = run(bin()
        .args(["validate", "--kuma-version", "3", "--stored"])
        .arg(&f));
    assert_eq!(code, 0, "{out}{err}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 3, "{out}");
    assert!(
        warnings[0].contains("this stored entry has none, so Kuma 3 stops applying it"),
        "{out}"
    );
    assert!(
        warnings[1].contains("which keeps appendMatch[1] and drops this entry"),
        "{out}"
    );
    assert!(
        err.contains("1 valid, 0 invalid documents, 0 unreadable files, 0 conflicts, 3 warnings"),
        "{err}"
    );
    let (code, _, _) = run(bin()
        .args(["validate", "--kuma-version", "3", "--stored", "--strict"])
        .arg(&f));
    assert_eq!(code, 1, "--strict fails warnings");
    // The stored policy is enforced as Kuma 3 has it: the Domain without a port is gone, and
    // the Dataplane name no longer narrows the selection.
    let (code, out, _) = run(bin()
        .args([
            "explain",
            "--kuma-version",
            "3",
            "--stored",
            "--name",
            "other",
            "--sni",
            "api.example.com",
            "--policy",
        ])
        .arg(&f)
        .arg("203.0.113.1:443"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("policies     p ("),
        "selected although named otherwise: {out}"
    );
    let (code, _, _) = run(bin()
        .args([
            "explain",
            "--sni",
            "api.example.com",
            "--name",
            "web",
            "--policy",
        ])
        .arg(&f)
        .arg("203.0.113.1:443"));
    assert_eq!(code, 0, "Kuma 2 allows the name on any port");
    let (code, _, err) = run(bin().args(["validate", "--kuma-version", "4"]).arg(&f));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("write \"2\""), "{err}");
}

#[test]
fn explain_under_kuma_3_pins_exact_names_whatever_domain_check_says() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = write(
        dir.path(),
        "p.yaml",
        "type: MeshPassthrough\nname: p\nspec:\n  default:\n    appendMatch:\n      - {type: Domain, value: api.example.com, protocol: tls, port: 443}\n      - {type: Domain, value: '*.example.org', protocol: tls, port: 443}\n",
    );
    let check = |v: &str, sni: &str| {
        let (code, out, err) = run(bin()
            .args([
                "-o",
                "json",
                "explain",
                "--domain-check",
                "Trust",
                "--kuma-version",
                v,
                "--sni",
                sni,
                "--policy",
            ])
            .arg(&f)
            .arg("203.0.113.1:443"));
        assert_eq!(code, 0, "{out}{err}");
        let j: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(j["kuma"], v);
        j["nameCheck"].as_str().expect("nameCheck").to_string()
    };
    assert!(check("2", "api.example.com").starts_with("Trust: "));
    let pinned = check("3", "api.example.com");
    assert!(
        pinned.starts_with("Pin: ") && pinned.contains("Kuma 3 pins an exact name"),
        "{pinned}"
    );
    assert!(
        check("3", "www.example.org").starts_with("Trust: "),
        "wildcards follow domainCheck"
    );
    let (_, out, _) = run(bin()
        .args([
            "explain",
            "--kuma-version",
            "3",
            "--sni",
            "api.example.com",
            "--policy",
        ])
        .arg(&f)
        .arg("203.0.113.1:443"));
    assert!(out.starts_with("kuma         3 "), "{out}");
    let (code, out, _) = run(bin()
        .args(["-o", "json", "compile", "--kuma-version", "3", "--policy"])
        .arg(&f));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn the_agent_config_names_the_kuma_version_and_validate_config_applies_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let policies = dir.path().join("policies");
    fs::create_dir(&policies).expect("policies");
    write(
        &policies,
        "p.yaml",
        "type: MeshPassthrough\nname: p\nspec:\n  targetRef: {kind: MeshSubset, tags: {app: web}}\n  default: {passthroughMode: None}\n",
    );
    let cgroups = dir.path().join("cgroup");
    fs::create_dir_all(cgroups.join("app")).expect("cgroup");
    fs::write(cgroups.join("app/cgroup.procs"), "").expect("procs");
    let config = |kuma: &str| {
        write(
            dir.path(),
            "agent.yaml",
            &format!(
                "policies: [policies]\n{kuma}workloads:\n  - cgroup: {}\n    tags: {{app: web}}\n",
                cgroups.join("app").display()
            ),
        )
    };
    let validate = |f: &Path| {
        run(bin()
            .args(["validate", "--config"])
            .arg(f)
            .arg("--cgroup-root")
            .arg(&cgroups))
    };
    let (code, out, err) = validate(&config(""));
    assert_eq!(code, 0, "Kuma 2 by default: {out}{err}");
    for kuma in ["kuma: {version: \"3\"}\n", "kuma: {version: 3}\n"] {
        let (code, out, _) = validate(&config(kuma));
        assert_eq!(code, 1, "{kuma}: {out}");
        assert!(
            out.contains("spec.targetRef.kind: in body should be one of [Mesh Dataplane]"),
            "{out}"
        );
        assert!(
            out.contains("workloads[0].tags: Kuma 3 selects Dataplanes by labels only"),
            "{out}"
        );
    }
    let (code, out, _) = validate(&config("kuma: {version: \"4\"}\n"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("kuma.version") && out.contains("write \"2\""),
        "{out}"
    );
    let (code, out, _) = validate(&config("kuma: {versoin: \"3\"}\n"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("did you mean version?"), "{out}");
}

#[test]
fn recommend_writes_kuma_3_policies_when_asked() {
    // The recommendation itself is unit-tested in cli::recommend; here only the flag.
    let (code, _, err) =
        run(bin().args(["recommend", "--kuma-version", "3", "--admin", "127.0.0.1:1"]));
    assert_eq!(code, 2, "no agent: {err}");
    let (code, _, err) = run(bin().args(["recommend", "--kuma-version", "5"]));
    assert_eq!(code, 2, "{err}");
}
