//! Hostile and large policy input through the CLI: nesting refused fast with its line and
//! bound, the file size bound from the flag and the agent config, a proxy-off explanation.
//! No root needed. How long these take is measured in docs/testing.md, not asserted here.

use std::{fmt::Write as _, fs, path::Path};

mod support;
use support::{bin, run};

/// A Mesh-wide allow-list of `n` IP entries on port 443, block style (about 84 bytes each).
fn allow_list(n: u32) -> String {
    let mut text = String::from(
        "apiVersion: kuma.io/v1alpha1\nkind: MeshPassthrough\nmetadata:\n  name: allow-list\n  namespace: kuma-system\n  labels:\n    kuma.io/mesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  default:\n    passthroughMode: Matched\n    appendMatch:\n",
    );
    for i in 0..n {
        let [_, a, b, c] = i.to_be_bytes();
        writeln!(
            text,
            "      - type: IP\n        value: 10.{a}.{b}.{c}\n        port: 443\n        protocol: tcp"
        )
        .expect("write to string");
    }
    text
}

#[test]
fn nested_flow_sequences_are_refused_with_file_line_and_bound() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("deep.yaml");
    // The file: 200 KB of `[` after `spec: `, on the third line here.
    let text = format!(
        "type: MeshPassthrough\nname: deep\nspec: {}\n",
        "[".repeat(200_000)
    );
    fs::write(&file, text).expect("write");
    let (code, out, err) = run(bin().arg("validate").arg(&file));
    assert_eq!(code, 2, "unreadable input: {out}{err}");
    let want = format!(
        "{}: line 3: mappings and sequences nest deeper than 64 levels",
        file.display()
    );
    assert!(out.contains(&want), "{out}{err}");
    assert!(err.contains("1 unreadable file"), "{err}");
}

#[test]
fn the_size_bound_comes_from_the_flag() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("list.yaml");
    let text = allow_list(2_000);
    fs::write(&file, &text).expect("write");
    let (code, out, err) = run(bin().arg("validate").arg(&file));
    assert_eq!(code, 0, "fits the default: {out}{err}");
    assert!(err.contains("1 valid"), "{err}");

    let limit = (text.len() / 2).to_string();
    let (code, out, err) = run(bin()
        .arg("validate")
        .arg(&file)
        .args(["--max-policy-file-bytes", &limit]));
    assert_eq!(code, 2, "{out}{err}");
    let want = format!(
        "file is {} bytes, larger than the {limit}-byte limit for policy files",
        text.len()
    );
    assert!(out.contains(&want), "{out}{err}");

    // explain and compile read through the same bound.
    for verb in ["explain", "compile"] {
        let mut cmd = bin();
        cmd.arg(verb)
            .arg("--policy")
            .arg(&file)
            .args(["--max-policy-file-bytes", &limit]);
        if verb == "explain" {
            cmd.arg("10.0.0.1:443");
        }
        let (code, out, err) = run(&mut cmd);
        assert_eq!(code, 2, "{verb}: {out}{err}");
        assert!(format!("{out}{err}").contains(&want), "{verb}: {out}{err}");
    }
}

#[test]
fn the_size_bound_comes_from_the_agent_config() {
    let dir = tempfile::tempdir().expect("tmp");
    let policy = dir.path().join("list.yaml");
    let text = allow_list(100);
    fs::write(&policy, &text).expect("write");
    let config = dir.path().join("agent.yaml");
    let write_config = |limit: usize| {
        fs::write(
            &config,
            format!("policies: [list.yaml]\nmaxPolicyFileBytes: {limit}\n"),
        )
        .expect("write config");
    };
    write_config(text.len());
    let (code, out, err) = run(bin().arg("validate").arg("--config").arg(&config));
    assert_eq!(code, 0, "at the bound: {out}{err}");
    write_config(text.len() - 1);
    let (code, out, err) = run(bin().arg("validate").arg("--config").arg(&config));
    assert_eq!(code, 2, "one byte over: {out}{err}");
    assert!(
        out.contains(&format!("larger than the {}-byte limit", text.len() - 1)),
        "{out}{err}"
    );
}

#[test]
fn explain_says_a_domain_only_connect_is_denied_with_the_proxy_off() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let base = || {
        let mut cmd = bin();
        cmd.arg("explain")
            .arg("--policy")
            .arg(examples.join("allow-some.yaml"))
            .args(["--tag", "kuma.io/service=demo-app_kuma-demo_svc_5000"]);
        cmd
    };
    // With the proxy (the default), the kernel hands it over: exit code 3.
    let (code, out, err) = run(base().arg("198.51.100.20:443"));
    assert_eq!(code, 3, "{out}{err}");
    let (code, out, err) = run(base().args(["--proxy-off", "198.51.100.20:443"]));
    assert_eq!(code, 1, "denied: {out}{err}");
    assert!(
        out.contains("the peek proxy that reads the name is off"),
        "{out}"
    );
    // An IP entry does not need the proxy.
    let (code, out, err) = run(base().args(["--proxy-off", "10.240.15.39:8888"]));
    assert_eq!(code, 0, "{out}{err}");
}
