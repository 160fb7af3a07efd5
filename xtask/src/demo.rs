//! `cargo xtask demo`: the policy engine on the shipped examples (validate, explain), then the
//! agent enforcing one of them in the kernel, in a throw-away topology.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{cargo, root, run};

const SERVICE: &str = "kuma.io/service=demo-app_kuma-demo_svc_5000";

/// (example file, extra arguments, destination, what the example documents)
const CASES: &[(&str, &[&str], &str, &str)] = &[
    ("disable-passthrough.yaml", &[], "203.0.113.10:443", "deny"),
    ("disable-passthrough.yaml", &[], "127.0.0.1:5432", "allow"),
    (
        "enable-for-subset.yaml",
        &["--tag", SERVICE],
        "203.0.113.10:443",
        "allow",
    ),
    ("enable-for-subset.yaml", &[], "203.0.113.10:443", "allow"),
    (
        "allow-some.yaml",
        &["--tag", SERVICE],
        "10.240.15.39:8888",
        "allow",
    ),
    (
        "allow-some.yaml",
        &["--tag", SERVICE],
        "10.240.15.39:8889",
        "deny",
    ),
    (
        "allow-some.yaml",
        &["--tag", SERVICE],
        "10.250.7.1:10000",
        "allow",
    ),
    (
        "allow-some.yaml",
        &["--tag", SERVICE, "--sni", "httpbin.org"],
        "198.51.100.20:443",
        "allow",
    ),
    (
        "allow-some.yaml",
        &["--tag", SERVICE, "--sni", "en.wikipedia.org"],
        "198.51.100.20:443",
        "allow",
    ),
    (
        "allow-some.yaml",
        &["--tag", SERVICE, "--sni", "wikipedia.org"],
        "198.51.100.20:443",
        "deny",
    ),
    (
        "allow-some.yaml",
        &["--tag", SERVICE, "--host", "httpbin.dev"],
        "198.51.100.21:80",
        "allow",
    ),
    (
        "allow-some.yaml",
        &["--tag", SERVICE],
        "198.51.100.21:80",
        "proxy",
    ),
    (
        "wildcard.yaml",
        &["--sni", "api.eu.example.com"],
        "198.51.100.30:443",
        "allow",
    ),
    (
        "wildcard.yaml",
        &["--sni", "evilexample.com"],
        "198.51.100.30:443",
        "deny",
    ),
];

pub fn run_demo() -> Result<()> {
    if !crate::is_root() {
        anyhow::bail!(
            "the demo loads eBPF programs and creates network namespaces and cgroups: run `cargo xtask demo` as root"
        );
    }
    crate::setup::ensure()?;
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "passthrough-user",
        "--package",
        "passthrough-tests",
        "--bins",
    ]))?;
    explain_examples()?;
    println!();
    let _lock = crate::privileged_lock()?;
    run(&mut Command::new(root().join("target/release/demo")))
}

fn explain_examples() -> Result<()> {
    let bin = root().join("target/release/passthrough");
    let examples = root().join("examples");
    run(Command::new(&bin).arg("validate").arg(&examples))?;
    println!();
    println!(
        "{:<26} {:<10} {:<24} {:<18} {:<8} WHY",
        "EXAMPLE", "WORKLOAD", "NAME SENT", "DESTINATION", "VERDICT"
    );
    let mut mismatches = 0;
    for (file, extra, dest, documented) in CASES {
        let out = Command::new(&bin)
            .args(["-o", "json", "explain", "--policy"])
            .arg(examples.join(file))
            .args(*extra)
            .arg(dest)
            .output()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("explain printed no JSON for {file} {dest}"))?;
        let verdict = json["verdict"]["action"].as_str().unwrap_or("?");
        let why = json["summary"].as_str().unwrap_or("");
        let mark = if verdict == *documented {
            ""
        } else {
            "  <-- differs from the example's comment"
        };
        if !mark.is_empty() {
            mismatches += 1;
        }
        let workload = if extra.contains(&SERVICE) {
            "demo-app"
        } else {
            "(any)"
        };
        let name = extra
            .iter()
            .position(|a| ["--sni", "--host", "--authority"].contains(a))
            .and_then(|i| {
                Some(format!(
                    "{} {}",
                    extra[i].trim_start_matches('-'),
                    extra.get(i + 1)?
                ))
            })
            .unwrap_or_else(|| "-".into());
        println!("{file:<26} {workload:<10} {name:<24} {dest:<18} {verdict:<8} {why}{mark}");
    }
    anyhow::ensure!(
        mismatches == 0,
        "{mismatches} verdicts differ from the examples' comments"
    );
    Ok(())
}
