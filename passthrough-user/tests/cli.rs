//! The CLI contract operators' scripts rely on: exit codes, line formats, JSON, and the
//! documented verdicts of the shipped examples. No root needed.

use std::{
    fs,
    path::{Path, PathBuf},
};

mod support;
use support::{bin, run};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

const SERVICE: &str = "kuma.io/service=demo-app_kuma-demo_svc_5000";

#[test]
fn validate_accepts_the_shipped_examples() {
    let (code, out, err) = run(bin().arg("validate").arg(examples()));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "");
    assert!(err.contains("4 valid"), "{err}");
}

#[test]
fn validate_prints_one_line_per_violation_and_exits_1() {
    let dir = tempfile::tempdir().expect("tmp");
    fs::write(
        dir.path().join("a.yaml"),
        "type: MeshPassthrough\nname: allow-some\nspec:\n  default:\n    appendMatch:\n      - {type: IP, value: 1.1.1.1, port: 80}\n      - {type: IP, value: 1.1.1, port: 0}\n",
    )
    .expect("write");
    let (code, out, _) = run(bin().arg("validate").arg(dir.path()));
    assert_eq!(code, 1);
    let file = dir.path().join("a.yaml");
    // Each violation's line is Kuma's; passthrough's hint follows it, indented.
    let (hints, lines): (Vec<&str>, Vec<&str>) =
        out.lines().partition(|l| l.starts_with("  hint: "));
    assert_eq!(
        hints,
        [
            "  hint: 0 is outside 1-65535; omit port to match every port",
            "  hint: \"1.1.1\" is not an IPv4 address: it has 3 numbers; an IPv4 address has four, 0-255 each, e.g. 198.51.100.10",
        ]
    );
    assert_eq!(
        lines,
        [
            format!(
                "{}#0 allow-some: spec.default.appendMatch[1].port: port must be a valid (1-65535)",
                file.display()
            ),
            format!(
                "{}#0 allow-some: spec.default.appendMatch[1].value: provided IP has incorrect value",
                file.display()
            ),
        ]
    );
}

#[test]
fn validate_json_lists_problems() {
    let dir = tempfile::tempdir().expect("tmp");
    fs::write(
        dir.path().join("a.yaml"),
        "type: MeshPassthrough\nname: x\nspec: {default: {passthroughMode: Sometimes}}\n",
    )
    .expect("w");
    let (code, out, _) = run(bin().args(["-o", "json", "validate"]).arg(dir.path()));
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"][0]["field"], "spec.default.passthroughMode");
    assert_eq!(v["problems"][0]["kind"], "violation");
}

#[test]
fn unreadable_input_exits_2_and_never_panics() {
    let dir = tempfile::tempdir().expect("tmp");
    let junk = dir.path().join("junk.yaml");
    fs::write(&junk, (0..=255u8).cycle().take(5000).collect::<Vec<u8>>()).expect("w");
    let malformed = dir.path().join("bad.yaml");
    fs::write(&malformed, "spec: [\n  - {\n").expect("w");
    let big = dir.path().join("big.yaml");
    fs::write(&big, "# x\n".repeat(10 << 18)).expect("w");
    for (path, needle) in [
        (junk, "not a text file"),
        (malformed, "not valid YAML"),
        (big, "limit"),
        (dir.path().join("missing.yaml"), "cannot read"),
    ] {
        // The 10 MB file is over a 4 MiB bound given here (the default is 64 MiB).
        let (code, out, err) = run(bin()
            .arg("validate")
            .args(["--max-policy-file-bytes", "4194304"])
            .arg(&path));
        assert_eq!(code, 2, "{}: {out}{err}", path.display());
        assert!(out.contains(needle), "{}: {out}", path.display());
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_directory_of_mixed_files_reports_each_and_exits_by_the_worst() {
    let dir = tempfile::tempdir().expect("tmp");
    fs::copy(
        examples().join("wildcard.yaml"),
        dir.path().join("good.yaml"),
    )
    .expect("copy");
    fs::write(dir.path().join("invalid.yaml"), "type: MeshPassthrough\nname: i\nspec: {default: {appendMatch: [{type: Domain, value: a.com}]}}\n").expect("w");
    let (code, out, _) = run(bin().arg("validate").arg(dir.path()));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("protocol tcp is not supported for a domain"),
        "{out}"
    );
    fs::write(dir.path().join("z-junk.yaml"), [0xffu8, 0, 1]).expect("w");
    let (code, out, _) = run(bin().arg("validate").arg(dir.path()));
    assert_eq!(code, 2, "{out}");
    assert_eq!(
        out.lines().filter(|l| !l.starts_with("  hint: ")).count(),
        2,
        "{out}"
    );
}

/// Each example's comment documents verdicts; `explain` must give them.
#[test]
fn explain_gives_the_documented_verdict_for_each_example() {
    let cases: &[(&str, &[&str], &str, i32)] = &[
        ("disable-passthrough.yaml", &[], "203.0.113.10:443", 1),
        ("disable-passthrough.yaml", &[], "127.0.0.1:5432", 0),
        (
            "enable-for-subset.yaml",
            &["--tag", SERVICE],
            "203.0.113.10:443",
            0,
        ),
        (
            "allow-some.yaml",
            &["--tag", SERVICE],
            "10.240.15.39:8888",
            0,
        ),
        (
            "allow-some.yaml",
            &["--tag", SERVICE],
            "10.240.15.39:8889",
            1,
        ),
        (
            "allow-some.yaml",
            &["--tag", SERVICE],
            "10.250.3.4:10000",
            0,
        ),
        (
            "allow-some.yaml",
            &["--tag", SERVICE, "--sni", "en.wikipedia.org"],
            "198.51.100.20:443",
            0,
        ),
        (
            "allow-some.yaml",
            &["--tag", SERVICE, "--sni", "example.com"],
            "198.51.100.20:443",
            1,
        ),
        (
            "allow-some.yaml",
            &["--tag", SERVICE, "--host", "httpbin.dev:80"],
            "198.51.100.21:80",
            0,
        ),
        (
            "allow-some.yaml",
            &["--tag", SERVICE],
            "198.51.100.21:443",
            3,
        ),
        (
            "wildcard.yaml",
            &["--sni", "api.eu.example.com"],
            "198.51.100.30:443",
            0,
        ),
        (
            "wildcard.yaml",
            &["--sni", "example.com"],
            "198.51.100.30:443",
            1,
        ),
        (
            "wildcard.yaml",
            &["--sni", "evilexample.com"],
            "198.51.100.30:443",
            1,
        ),
    ];
    for (file, extra, dest, want) in cases {
        let (code, out, err) = run(bin()
            .args(["explain", "--policy"])
            .arg(examples().join(file))
            .args(*extra)
            .arg(dest));
        assert_eq!(code, *want, "{file} {extra:?} {dest}:\n{out}{err}");
    }
}

#[test]
fn explain_names_the_deciding_entry_and_policy() {
    let (code, out, _) = run(bin()
        .args(["-o", "json", "explain", "--policy"])
        .arg(examples().join("allow-some.yaml"))
        .args(["--tag", SERVICE, "10.240.15.39:8888"]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["verdict"]["action"], "allow");
    assert_eq!(v["verdict"]["reason"], "ip_entry");
    assert_eq!(v["rule"]["policy"]["name"], "kuma-system/allow-some");
    assert_eq!(v["rule"]["index"], 1);
    assert_eq!(v["mode"], "Matched");
}

#[test]
fn explain_says_which_name_check_binds_an_allowed_name() {
    let explain = |extra: &[&str]| {
        run(bin()
            .args(["-o", "json", "explain", "--policy"])
            .arg(examples().join("allow-some.yaml"))
            .args(["--tag", SERVICE, "--sni", "httpbin.org"])
            .args(extra)
            .arg("203.0.113.200:443"))
    };
    let (code, out, _) = explain(&[]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["verdict"]["reason"], "domain_entry");
    let check = v["nameCheck"].as_str().expect("nameCheck");
    assert!(check.starts_with("Pin: "), "the default check: {check}");
    let (_, out, _) = explain(&["--domain-check", "Trust"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(
        v["nameCheck"]
            .as_str()
            .is_some_and(|c| c.starts_with("Trust: ")),
        "{out}"
    );
    let (code, _, err) = explain(&["--domain-check", "resolve"]);
    assert_eq!(code, 2, "{err}");
    // A kernel verdict involves no name: no check is shown.
    let (_, out, _) = run(bin()
        .args(["explain", "--policy"])
        .arg(examples().join("allow-some.yaml"))
        .args(["--tag", SERVICE, "10.240.15.39:8888"]));
    assert!(!out.contains("name check"), "{out}");
}

#[test]
fn explain_judges_a_datagram_by_the_udp_setting() {
    let explain = |extra: &[&str], dest: &str| {
        run(bin()
            .args(["-o", "json", "explain", "--policy"])
            .arg(examples().join("allow-some.yaml"))
            .args(["--tag", SERVICE, "--datagram"])
            .args(extra)
            .arg(dest))
    };
    let reason = |out: &str| {
        let v: serde_json::Value = serde_json::from_str(out).expect("json");
        v["verdict"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // Kuma's default: UDP is not judged.
    let (code, out, _) = explain(&[], "203.0.113.200:443");
    assert_eq!((code, reason(&out).as_str()), (0, "not_tcp"), "{out}");
    let (code, out, _) = explain(&["--udp", "Deny"], "203.0.113.200:443");
    assert_eq!((code, reason(&out).as_str()), (1, "udp_denied"), "{out}");
    let (code, out, _) = explain(
        &["--udp", "Deny", "--dns", "10.96.0.10/32"],
        "10.96.0.10:53",
    );
    assert_eq!((code, reason(&out).as_str()), (0, "udp_dns"), "{out}");
    let (code, out, _) = explain(
        &["--udp", "Deny", "--dns", "10.96.0.10/32"],
        "10.96.0.11:53",
    );
    assert_eq!((code, reason(&out).as_str()), (1, "udp_denied"), "{out}");
    // The text shows the settings that bind the workload.
    let (_, out, _) = run(bin()
        .args(["explain", "--policy"])
        .arg(examples().join("allow-some.yaml"))
        .args(["--tag", SERVICE, "--udp", "Deny", "10.240.15.39:8888"]));
    assert!(out.contains("udp          Deny"), "{out}");
    assert!(out.contains("raw sockets  Deny"), "{out}");
}

#[test]
fn explain_unselected_workload_is_not_filtered() {
    let (code, out, _) = run(bin()
        .args(["explain", "--policy"])
        .arg(examples().join("allow-some.yaml"))
        .arg("203.0.113.10:443"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no policy selects this workload"), "{out}");
}

#[test]
fn explain_refuses_invalid_policies_with_exit_2() {
    let dir = tempfile::tempdir().expect("tmp");
    fs::write(
        dir.path().join("a.yaml"),
        "type: MeshPassthrough\nname: a\nspec: {default: {appendMatch: [{type: IP, value: x}]}}\n",
    )
    .expect("w");
    let (code, _, err) = run(bin()
        .args(["explain", "--policy"])
        .arg(dir.path())
        .arg("1.2.3.4:80"));
    assert_eq!(code, 2);
    assert!(err.contains("provided IP has incorrect value"), "{err}");
    let (code, out, _) = run(bin()
        .args(["-o", "json", "explain", "--policy"])
        .arg(dir.path())
        .arg("1.2.3.4:80"));
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&out).expect("errors are json with -o json");
    assert!(v["error"].is_string());
}

#[test]
fn compile_shows_kernel_entries_with_key_bytes() {
    let (code, out, _) = run(bin()
        .args(["-o", "json", "compile", "--policy"])
        .arg(examples().join("allow-some.yaml"))
        .args(["--tag", SERVICE]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let tables = v["tables"].as_array().expect("tables");
    let exact = tables
        .iter()
        .find(|t| t["map"] == "EXACT_V4")
        .expect("exact entry");
    // The policy's inner map: port 8888 (native u16), pad, 10.240.15.39.
    let mut want = Vec::new();
    want.extend_from_slice(&8888u16.to_ne_bytes());
    want.extend_from_slice(&[0, 0, 10, 240, 15, 39]);
    let hex: String = want.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(exact["keyBytes"], hex);
    let cidr = tables
        .iter()
        .find(|t| t["map"] == "CIDR_V4")
        .expect("cidr entry");
    // Port 10000 big-endian, then 10.250.0.0, then the padding past every prefix.
    assert_eq!(cidr["prefixLen"], 16 + 16);
    assert_eq!(cidr["keyBytes"], "2710".to_string() + "0afa0000" + "0000");
}
