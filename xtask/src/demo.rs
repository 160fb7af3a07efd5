//! `cargo xtask demo`: the policy engine on the shipped examples, as a table of verdicts.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{cargo, root, run};

const SERVICE: &str = "kuma.io/service=demo-app_kuma-demo_svc_5000";

/// (example file, extra arguments, destination, what the example documents)
const CASES: &[(&str, &[&str], &str, &str)] = &[
    ("disable-passthrough.yaml", &[], "203.0.113.10:443", "deny"),
    ("disable-passthrough.yaml", &[], "127.0.0.1:5432", "allow"),
    ("enable-for-subset.yaml", &["--tag", SERVICE], "203.0.113.10:443", "allow"),
    ("enable-for-subset.yaml", &[], "203.0.113.10:443", "allow"),
    ("allow-some.yaml", &["--tag", SERVICE], "10.240.15.39:8888", "allow"),
    ("allow-some.yaml", &["--tag", SERVICE], "10.240.15.39:8889", "deny"),
    ("allow-some.yaml", &["--tag", SERVICE], "10.250.7.1:10000", "allow"),
    ("allow-some.yaml", &["--tag", SERVICE, "--sni", "httpbin.org"], "198.51.100.20:443", "allow"),
    ("allow-some.yaml", &["--tag", SERVICE, "--sni", "en.wikipedia.org"], "198.51.100.20:443", "allow"),
    ("allow-some.yaml", &["--tag", SERVICE, "--sni", "wikipedia.org"], "198.51.100.20:443", "deny"),
    ("allow-some.yaml", &["--tag", SERVICE, "--host", "httpbin.dev"], "198.51.100.21:80", "allow"),
    ("allow-some.yaml", &["--tag", SERVICE], "198.51.100.21:80", "proxy"),
    ("wildcard.yaml", &["--sni", "api.eu.example.com"], "198.51.100.30:443", "allow"),
    ("wildcard.yaml", &["--sni", "evilexample.com"], "198.51.100.30:443", "deny"),
];

pub fn run_demo() -> Result<()> {
    run(cargo().args(["build", "--release", "--package", "passthrough-user"]))?;
    let bin = root().join("target/release/passthrough");
    let examples = root().join("examples");
    run(Command::new(&bin).arg("validate").arg(&examples))?;
    println!();
    println!(
        "{:<26} {:<44} {:<20} {:<8} {}",
        "example", "workload and name", "destination", "verdict", "why"
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
        let mark = if verdict == *documented { "" } else { "  <-- differs from the example's comment" };
        if !mark.is_empty() {
            mismatches += 1;
        }
        let who: Vec<&str> = extra.iter().filter(|a| !a.starts_with("--")).copied().collect();
        println!(
            "{file:<26} {:<44} {dest:<20} {verdict:<8} {why}{mark}",
            if who.is_empty() { "(any workload)".to_string() } else { who.join(" ") }
        );
    }
    anyhow::ensure!(mismatches == 0, "{mismatches} verdicts differ from the examples' comments");
    Ok(())
}
