//! The CLI as a CI gate: `validate` refuses exactly what the agent refuses, configs are
//! checked offline, every error names the value and the fix, and `-o json` is JSON for every
//! outcome. Each test is one reproduction of the issue that asked for this, in text and JSON.
//! No root needed: nothing here loads a program.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
};

mod support;
use serde_json::Value;
use support::{bin, run};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(&p, text).expect("write");
    p
}

/// Lines of output that are not hints.
fn main_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| !l.starts_with("  hint: ")).collect()
}

const HTTP_8080: &str = "type: MeshPassthrough\nname: web-http\nspec:\n  default:\n    appendMatch:\n      - {type: Domain, value: a.example.com, port: 8080, protocol: http}\n";
const GRPC_8080: &str = "type: MeshPassthrough\nname: web-grpc\nspec:\n  default:\n    appendMatch:\n      - {type: Domain, value: b.example.com, port: 8080, protocol: grpc}\n";

/// JSON keys are camelCase; maps keyed by data (tags, labels, ports, counter names) are not
/// keys of ours and are only looked into.
fn assert_camel_case_keys(v: &Value, at: &str) {
    match v {
        Value::Object(m) => {
            let data = ["tags", "labels", "domains", "counters", "refused"]
                .iter()
                .any(|k| at.ends_with(&format!(".{k}")));
            for (k, v) in m {
                if !data {
                    assert!(
                        k.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                            && k.chars().all(|c| c.is_ascii_alphanumeric()),
                        "JSON key {at}.{k} is not camelCase"
                    );
                }
                assert_camel_case_keys(v, &format!("{at}.{k}"));
            }
        }
        Value::Array(a) => a.iter().for_each(|v| assert_camel_case_keys(v, at)),
        _ => {}
    }
}

// 1. One validation path: what the agent refuses, validate refuses, with the same lines.

#[test]
fn validate_refuses_two_l7_protocols_on_one_port_across_policies_like_explain_and_the_agent() {
    let dir = tempfile::tempdir().expect("tmp");
    write(dir.path(), "a.yaml", HTTP_8080);
    write(dir.path(), "b.yaml", GRPC_8080);
    let (code, out, _) = run(bin().arg("validate").arg(dir.path()));
    assert_eq!(code, 1, "{out}");
    let lines = main_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains(": spec.default.appendMatch[0].port: you cannot configure http, http2, grpc on the same port: port 8080"),
        "{out}"
    );
    assert!(
        out.contains("  hint: both policies select a workload with mesh=default"),
        "{out}"
    );

    // explain and compile refuse the same set with the same line.
    for verb in [&["explain", "--policy"][..], &["compile", "--policy"]] {
        let mut cmd = bin();
        cmd.args(verb).arg(dir.path());
        if verb[0] == "explain" {
            cmd.arg("198.51.100.10:8080");
        }
        let (code, _, err) = run(&mut cmd);
        assert_eq!(code, 2, "{verb:?}: {err}");
        assert!(err.lines().any(|l| l == lines[0]), "{verb:?}:\n{err}");
    }

    let (code, out, _) = run(bin().args(["-o", "json", "validate"]).arg(dir.path()));
    assert_eq!(code, 1);
    let v = json(&out);
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"][0]["kind"], "conflict");
    assert_eq!(v["problems"][0]["severity"], "error");
    assert_eq!(
        v["problems"][0]["field"],
        "spec.default.appendMatch[0].port"
    );
    assert!(v["problems"][0]["hint"].is_string());
    assert_camel_case_keys(&v, "");
}

#[test]
fn policies_no_workload_has_both_of_do_not_conflict() {
    let dir = tempfile::tempdir().expect("tmp");
    write(
        dir.path(),
        "a.yaml",
        &HTTP_8080.replace(
            "spec:\n",
            "spec:\n  targetRef: {kind: MeshSubset, tags: {app: web}}\n",
        ),
    );
    write(
        dir.path(),
        "b.yaml",
        &GRPC_8080.replace(
            "spec:\n",
            "spec:\n  targetRef: {kind: MeshSubset, tags: {app: api}}\n",
        ),
    );
    let (code, out, err) = run(bin().arg("validate").arg(dir.path()));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "");
}

#[test]
fn empty_inputs_and_skipped_files_are_warnings_and_strict_fails_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let empty_file = write(dir.path(), "empty.yaml", "");
    let empty_dir = dir.path().join("nothing");
    fs::create_dir(&empty_dir).expect("mkdir");
    let txt_dir = dir.path().join("txt");
    write(&txt_dir, "policy.txt", HTTP_8080);

    let (code, out, err) = run(bin().arg("validate").arg(&empty_file));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "warning: {}: no documents in this file",
            empty_file.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "warning: 0 documents read from {}",
            empty_file.display()
        )),
        "{out}"
    );

    let (code, out, _) = run(bin().arg("validate").arg(&empty_dir));
    assert_eq!(code, 0);
    assert!(out.contains("warning: 0 documents read from"), "{out}");

    let (code, out, _) = run(bin().arg("validate").arg(&txt_dir));
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!(
            "warning: {}: not read: only files ending in .yaml, .yml or .json are read from a directory",
            txt_dir.join("policy.txt").display()
        )),
        "{out}"
    );

    for path in [&empty_file, &empty_dir, &txt_dir] {
        let (code, _, err) = run(bin().args(["validate", "--strict"]).arg(path));
        assert_eq!(code, 1, "{}: {err}", path.display());
        assert!(err.contains("--strict: warnings fail"), "{err}");
    }

    let (code, out, _) = run(bin().args(["-o", "json", "validate"]).arg(&txt_dir));
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(v["valid"], true);
    assert_eq!(v["documents"], 0);
    let kinds: Vec<(&str, &str)> = v["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap_or(""),
                p["severity"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(kinds, [("skipped", "warning"), ("no_documents", "warning")]);
    let (code, out, _) = run(bin()
        .args(["-o", "json", "validate", "--strict"])
        .arg(&txt_dir));
    assert_eq!(code, 1);
    assert_eq!(json(&out)["valid"], false);
}

// 2. Agent configs, checked offline, and the same checks before `run` touches the kernel.

/// A fake cgroup v2 tree (`cgroup/`, `cgroup/app` a cgroup) and a policy directory.
fn config_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    for cg in ["cgroup", "cgroup/app"] {
        write(dir.path(), &format!("{cg}/cgroup.procs"), "");
    }
    write(
        dir.path(),
        "policies/none.yaml",
        "type: MeshPassthrough\nname: none\nspec: {default: {passthroughMode: None}}\n",
    );
    dir
}

fn validate_config(dir: &Path, config: &str, json_out: bool) -> (i32, String, String) {
    let file = write(
        dir,
        "agent.yaml",
        &config.replace("{dir}", &dir.display().to_string()),
    );
    let mut cmd = bin();
    if json_out {
        cmd.args(["-o", "json"]);
    }
    run(cmd
        .args(["validate", "--config"])
        .arg(&file)
        .arg("--cgroup-root")
        .arg(dir.join("cgroup")))
}

#[test]
fn validate_config_accepts_a_good_config_and_loads_nothing() {
    let dir = config_fixture();
    let (code, out, err) = validate_config(
        dir.path(),
        "policies: [policies]\nworkloads: [{cgroup: \"{dir}/cgroup/app\"}]\nbpffs: \"{dir}/pins\"\n",
        false,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "");
    assert!(
        err.contains("0 errors, 0 warnings; policies: 1 valid"),
        "{err}"
    );
    assert!(
        !dir.path().join("pins").exists(),
        "validate --config created pins"
    );
}

#[test]
fn validate_config_refuses_the_root_cgroup_and_a_missing_policy_directory() {
    let dir = config_fixture();
    let config = "policies: [policies, missing-dir]\nworkloads: [{cgroup: \"{dir}/cgroup\"}, {cgroup: \"{dir}/cgroup/later\"}]\n";
    let (code, out, _) = validate_config(dir.path(), config, false);
    assert_eq!(code, 1, "{out}");
    let file = dir.path().join("agent.yaml").display().to_string();
    let root = dir.path().join("cgroup").display().to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with(&format!(
            "{file}: policies[1]: {} cannot be read",
            dir.path().join("missing-dir").display()
        )),
        "{out}"
    );
    assert_eq!(
        lines[1],
        format!(
            "{file}: workloads[0].cgroup: {root} is the root cgroup: filtering it would filter the whole machine; give the workload's own cgroup"
        )
    );
    assert!(
        lines[2].starts_with(&format!(
            "warning: {file}: workloads[1].cgroup: {root}/later does not exist (yet)"
        )),
        "{out}"
    );

    let (code, out, _) = validate_config(dir.path(), config, true);
    assert_eq!(code, 1);
    let v = json(&out);
    assert_eq!(v["valid"], false);
    let f = &v["config"]["findings"];
    assert_eq!(f[1]["file"], file);
    assert_eq!(f[1]["field"], "workloads[0].cgroup");
    assert_eq!(f[1]["severity"], "error");
    assert!(
        f[1]["message"]
            .as_str()
            .is_some_and(|m| m.contains("is the root cgroup")),
        "{f}"
    );
    assert_eq!(f[2]["severity"], "warning");
    assert_camel_case_keys(&v, "");
}

#[test]
fn validate_config_checks_the_policies_it_names_and_what_they_select() {
    let dir = config_fixture();
    write(
        dir.path(),
        "policies/bad.yaml",
        "type: MeshPassthrough\nname: bad\nspec: {default: {appendMatch: [{type: IP, value: 198.51.100.300}]}}\n",
    );
    let (code, out, _) = validate_config(
        dir.path(),
        "policies: [policies]\nworkloads: [{cgroup: \"{dir}/cgroup/app\"}]\n",
        false,
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "bad.yaml#0 bad: spec.default.appendMatch[0].value: provided IP has incorrect value"
        ),
        "{out}"
    );

    // A workload no policy selects is a warning.
    fs::remove_file(dir.path().join("policies/bad.yaml")).expect("rm");
    write(
        dir.path(),
        "policies/none.yaml",
        "type: MeshPassthrough\nname: none\nspec: {targetRef: {kind: MeshSubset, tags: {app: other}}, default: {passthroughMode: None}}\n",
    );
    let (code, out, _) = validate_config(
        dir.path(),
        "policies: [policies]\nworkloads: [{cgroup: \"{dir}/cgroup/app\"}]\n",
        false,
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("workloads[0]: no policy selects this workload"),
        "{out}"
    );
}

#[test]
fn validate_config_exits_2_for_a_config_that_is_not_yaml() {
    let dir = config_fixture();
    let (code, out, _) = validate_config(dir.path(), "policies: [\n", false);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("agent.yaml: not valid YAML"), "{out}");
    let (code, out, _) = validate_config(dir.path(), "policies: [\n", true);
    assert_eq!(code, 2);
    assert_eq!(json(&out)["config"]["findings"][0]["field"], "");
}

#[test]
fn config_errors_name_their_field_once_and_the_right_one() {
    let dir = config_fixture();
    for (config, field, message) in [
        (
            "policies: [policies]\nworkloads: [{cgroup: \"{dir}/cgroup/app\", proxyType: Sidecr}]\n",
            "workloads[0].proxyType",
            "unknown value \"Sidecr\"; expected Sidecar or Gateway: write Sidecar",
        ),
        (
            "policies: [policies]\nproxy: {listen: [127.0.0.1:15001], peekTimeout: \"5\"}\n",
            "proxy.peekTimeout",
            "\"5\" is not a duration: write a whole number with ms, s, m or h, e.g. 500ms, 5s, 30m, 2h",
        ),
    ] {
        let file = dir.path().join("agent.yaml").display().to_string();
        let (code, out, _) = validate_config(dir.path(), config, false);
        assert_eq!(code, 1, "{out}");
        assert_eq!(out.trim_end(), format!("{file}: {field}: {message}"));
        let (_, out, _) = validate_config(dir.path(), config, true);
        let f = &json(&out)["config"]["findings"][0];
        assert_eq!(f["file"], file);
        assert_eq!(f["field"], field);
        assert_eq!(f["message"], message);
    }
}

#[test]
fn run_refuses_a_config_validate_refuses_before_touching_the_kernel() {
    let dir = tempfile::tempdir().expect("tmp");
    write(
        dir.path(),
        "policies/none.yaml",
        "type: MeshPassthrough\nname: none\nspec: {default: {passthroughMode: None}}\n",
    );
    // This machine's cgroup2 root, as the agent finds it; pins in a directory that must stay
    // absent (nothing may be loaded).
    let root = passthrough::cgroup::cgroup2_root().map_or_else(
        |_| "/sys/fs/cgroup".to_string(),
        |p| p.display().to_string(),
    );
    let pins = dir.path().join("pins");
    let config = write(
        dir.path(),
        "agent.yaml",
        &format!(
            "policies: [policies, missing-dir]\nworkloads: [{{cgroup: \"{root}\"}}]\nbpffs: \"{}\"\n",
            pins.display()
        ),
    );
    let (code, out, _) = run(bin().args(["validate", "--config"]).arg(&config));
    assert_eq!(code, 1, "{out}");
    let (code, _, err) = run(bin().args(["run", "--config"]).arg(&config));
    assert_eq!(code, 2, "{err}");
    // The same lines, then why nothing started.
    for line in out.lines() {
        assert!(err.contains(line), "run does not report {line:?}:\n{err}");
    }
    assert!(err.contains("nothing was loaded into the kernel"), "{err}");
    let (code, out, _) = run(bin().args(["-o", "json", "run", "--config"]).arg(&config));
    assert_eq!(code, 2);
    let v = json(&out);
    assert!(v["error"].is_string());
    assert_eq!(v["config"][0]["field"], "policies[1]");
    assert_eq!(v["config"][1]["field"], "workloads[0].cgroup");
    assert!(!pins.exists(), "run created pins for a refused config");
}

// 3. explain says what it read and why nothing selected the workload.

#[test]
fn explain_with_a_mistyped_tag_says_what_it_read_and_why_nothing_selects() {
    let (code, out, _) = run(bin()
        .args(["explain", "--policy"])
        .arg(examples().join("allow-some.yaml"))
        .args([
            "--tag",
            "kuma.io/service=demo-app_kuma-demo_svc_500",
            "10.240.15.39:8888",
        ]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("read         1 policy from 1 file"), "{out}");
    assert!(
        out.contains("policies     (none select this workload)"),
        "{out}"
    );
    assert!(
        out.contains("not selected kuma-system/allow-some (")
            && out.contains("tag kuma.io/service: the policy wants \"demo-app_kuma-demo_svc_5000\", the workload has \"demo-app_kuma-demo_svc_500\" (to select it: --tag kuma.io/service=demo-app_kuma-demo_svc_5000)"),
        "{out}"
    );

    let (_, out, _) = run(bin()
        .args(["-o", "json", "explain", "--policy"])
        .arg(examples())
        .args([
            "--tag",
            "kuma.io/service=demo-app_kuma-demo_svc_500",
            "10.240.15.39:8888",
        ]));
    let v = json(&out);
    assert_eq!(v["policiesRead"], 4);
    let tag = v["notSelected"]
        .as_array()
        .expect("notSelected")
        .iter()
        .find(|n| n["policy"]["name"] == "kuma-system/allow-some")
        .expect("allow-some is not selected");
    assert_eq!(tag["reason"], "tag");
    assert_eq!(tag["key"], "kuma.io/service");
    assert_eq!(tag["wanted"], "demo-app_kuma-demo_svc_5000");
    assert_eq!(tag["actual"], "demo-app_kuma-demo_svc_500");
    assert_camel_case_keys(&v, "");
}

#[test]
fn explain_of_a_namespaced_policy_without_namespace_names_the_namespace() {
    let dir = tempfile::tempdir().expect("tmp");
    write(
        dir.path(),
        "team.yaml",
        "apiVersion: kuma.io/v1alpha1\nkind: MeshPassthrough\nmetadata: {name: team, namespace: payments}\nspec: {default: {passthroughMode: None}}\n",
    );
    let (code, out, _) = run(bin()
        .args(["explain", "--policy"])
        .arg(dir.path())
        .arg("203.0.113.10:443"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("not selected payments/team"), "{out}");
    assert!(
        out.contains("(to select it: --namespace payments)"),
        "{out}"
    );
    let (code, _, _) = run(bin()
        .args(["explain", "--namespace", "payments", "--policy"])
        .arg(dir.path())
        .arg("203.0.113.10:443"));
    assert_eq!(code, 1, "selected with --namespace: mode None denies");
    let (_, out, _) = run(bin()
        .args(["-o", "json", "explain", "--policy"])
        .arg(dir.path())
        .arg("203.0.113.10:443"));
    let v = json(&out);
    assert_eq!(v["notSelected"][0]["reason"], "namespace");
    assert_eq!(v["notSelected"][0]["wanted"], "payments");
    assert_eq!(v["notSelected"][0]["role"], "workload-owner");
}

// 4. Every value error quotes the value, says what was expected, and the fix.

#[test]
fn value_errors_keep_kumas_line_and_add_a_hint_with_the_value() {
    let dir = tempfile::tempdir().expect("tmp");
    write(
        dir.path(),
        "p.yaml",
        "type: MeshPassthrough\nname: p\nspec:\n  default:\n    appendMatch:\n      - {type: IP, value: 198.51.100.300}\n      - {type: CIDR, value: 10.0.0.0/33}\n      - {type: IP, value: \"1.2.3.4:443\"}\n      - {type: Domain, value: exa mple.com, protocol: tls}\n      - {type: IP, value: 1.2.3.4, port: 0}\n",
    );
    let (code, out, _) = run(bin().arg("validate").arg(dir.path()));
    assert_eq!(code, 1, "{out}");
    let want = [
        (
            "appendMatch[0].value: provided IP has incorrect value",
            "\"198.51.100.300\" is not an IPv4 address: 300 is above 255",
        ),
        (
            "appendMatch[1].value: provided CIDR has incorrect value",
            "\"10.0.0.0/33\": the prefix length /33 is above 32",
        ),
        (
            "appendMatch[2].value: provided IP has incorrect value",
            "\"1.2.3.4:443\" has a port in it: write value: 1.2.3.4 and port: 443",
        ),
        (
            "appendMatch[3].value: provided DNS has incorrect value",
            "\"exa mple.com\" contains a space",
        ),
        (
            "appendMatch[4].port: port must be a valid (1-65535)",
            "0 is outside 1-65535; omit port to match every port",
        ),
    ];
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), want.len() * 2, "{out}");
    for (pair, (line, hint)) in lines.chunks(2).zip(want) {
        assert!(
            pair[0].ends_with(line),
            "{} does not end with {line}",
            pair[0]
        );
        assert!(
            pair[1].starts_with(&format!("  hint: {hint}")),
            "{} lacks {hint}",
            pair[1]
        );
    }
    let (_, out, _) = run(bin().args(["-o", "json", "validate"]).arg(dir.path()));
    let v = json(&out);
    let problems = v["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), want.len());
    for (p, (line, hint)) in problems.iter().zip(want) {
        let (_, message) = line.split_once(": ").expect("line");
        assert_eq!(p["message"], message);
        assert!(
            p["hint"].as_str().is_some_and(|h| h.starts_with(hint)),
            "{p}"
        );
    }
}

#[test]
fn a_cidr_with_host_bits_is_a_warning_naming_the_network() {
    let dir = tempfile::tempdir().expect("tmp");
    write(
        dir.path(),
        "p.yaml",
        "type: MeshPassthrough\nname: p\nspec: {default: {appendMatch: [{type: CIDR, value: 10.1.2.3/16}]}}\n",
    );
    let (code, out, _) = run(bin().arg("validate").arg(dir.path()));
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("warning: "), "{out}");
    assert!(out.contains("spec.default.appendMatch[0].value: 10.1.2.3/16 has host bits set: it is enforced as 10.1.0.0/16"), "{out}");
    assert!(out.contains("  hint: write 10.1.0.0/16"), "{out}");
    let (code, _, _) = run(bin().args(["validate", "--strict"]).arg(dir.path()));
    assert_eq!(code, 1);
    let (_, out, _) = run(bin().args(["-o", "json", "validate"]).arg(dir.path()));
    let v = json(&out);
    assert_eq!(v["problems"][0]["severity"], "warning");
    assert_eq!(v["warnings"], 1);
    assert_eq!(v["policies"][0], "p");
}

#[test]
fn explain_destinations_that_are_names_or_bare_ipv6_say_what_to_write() {
    for (dest, needle) in [
        ("httpbin.org:443", "--sni httpbin.org"),
        ("2001:db8::1:443", "[2001:db8::1]:443"),
        ("10.240.15.39", "e.g. 10.240.15.39:443"),
    ] {
        let (code, _, err) = run(bin()
            .args(["explain", "--policy"])
            .arg(examples())
            .arg(dest));
        assert_eq!(code, 2, "{dest}");
        assert!(err.contains(needle), "{dest}: {err}");
        assert!(!err.contains("invalid socket address syntax"), "{err}");
    }
}

// 5. -o json means JSON for every error, clap's included; one key style.

#[test]
fn argument_errors_are_json_with_json_output() {
    let (code, out, err) = run(bin()
        .args(["-o", "json", "explain", "--policy"])
        .arg(examples())
        .arg("10.240.15.39"));
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(err, "");
    let v = json(&out);
    assert_eq!(v["kind"], "value_validation");
    assert_eq!(v["argument"], "<DESTINATION>");
    assert_eq!(v["value"], "10.240.15.39");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("has no port")),
        "{v}"
    );

    for args in [
        &["--output=json", "validate"][..],
        &["validate", "-o", "json", "--no-such-flag", "x"],
        &["-o", "json", "status", "--admin", "nope"],
        &["-o", "json", "recommend", "--since", "2d"],
    ] {
        let (code, out, _) = run(bin().args(args));
        assert_eq!(code, 2, "{args:?}");
        let v = json(&out);
        assert!(
            v["error"].is_string() && v["kind"].is_string(),
            "{args:?}: {v}"
        );
    }
    // Without -o json, clap's own text.
    let (code, out, err) = run(bin().args(["explain", "--policy", "x", "10.240.15.39"]));
    assert_eq!(code, 2);
    assert_eq!(out, "");
    assert!(
        err.starts_with("error: invalid value '10.240.15.39'"),
        "{err}"
    );
    // Help is still help.
    let (code, out, _) = run(bin().args(["-o", "json", "validate", "--help"]));
    assert_eq!(code, 0);
    assert!(out.contains("--config"), "{out}");
}

#[test]
fn json_keys_are_camel_case_would_deny_included() {
    let dir = tempfile::tempdir().expect("tmp");
    write(
        dir.path(),
        "audit.yaml",
        "type: MeshPassthrough\nname: audit\nlabels: {passthrough.io/audit: \"true\"}\nspec: {default: {passthroughMode: None}}\n",
    );
    let (code, out, _) = run(bin()
        .args(["-o", "json", "explain", "--policy"])
        .arg(dir.path())
        .arg("203.0.113.10:443"));
    assert_eq!(code, 0, "{out}");
    let v = json(&out);
    assert_eq!(v["verdict"]["wouldDeny"], "mode_none");
    assert!(v["verdict"].get("would_deny").is_none());
    assert_camel_case_keys(&v, "");

    let (code, out, _) = run(bin()
        .args(["-o", "json", "compile", "--policy"])
        .arg(examples().join("allow-some.yaml"))
        .args(["--tag", "kuma.io/service=demo-app_kuma-demo_svc_5000"]));
    assert_eq!(code, 0);
    assert_camel_case_keys(&json(&out), "");
}

// 6. Durations in hours, and --admin with a host name.

/// An admin endpoint on 127.0.0.1 that answers `/status` and `/events` like an agent with
/// nothing to report.
fn fake_agent() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            // The rest of the head, so the client is done writing before the answer.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim() != "" {
                line.clear();
            }
            let body = if request.contains("/status") {
                r#"{"ready":true,"generation":1,"bpffs":"/sys/fs/bpf/passthrough","slots":0,"workloads":[],"counters":{}}"#
            } else {
                "[]"
            };
            let mut s = &stream;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn admin_takes_a_host_name_and_since_takes_hours() {
    let port = fake_agent();
    let admin = format!("localhost:{port}");
    let (code, out, err) = run(bin().args(["status", "--admin", &admin]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ready: true"), "{out}");
    let (code, out, _) = run(bin().args(["-o", "json", "status", "--admin", &admin]));
    assert_eq!(code, 0);
    assert_eq!(json(&out)["ready"], true);
    let (code, _, err) = run(bin().args(["events", "--admin", &admin]));
    assert_eq!(code, 0, "{err}");
    // Nothing observed in the last two hours: exit 1, not a refused duration.
    let (code, _, err) = run(bin().args(["recommend", "--since", "2h", "--admin", &admin]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no events observed"), "{err}");

    let (code, _, err) = run(bin().args(["recommend", "--since", "2d"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("write a whole number with ms, s, m or h"),
        "{err}"
    );
    let (code, _, err) = run(bin().args(["status", "--admin", "localhost"]));
    assert_eq!(code, 2);
    assert!(err.contains("has no port"), "{err}");
}
