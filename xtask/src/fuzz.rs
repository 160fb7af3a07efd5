//! `cargo xtask fuzz`: the cargo-fuzz (libFuzzer) targets of `fuzz/`, each for a bounded
//! time on its committed corpus (`fuzz/corpus/TARGET`). What a run finds goes to a scratch
//! corpus under `target/`, so the committed one changes only with `--merge`, which keeps an
//! input only if it adds coverage. A crash is left in `fuzz/artifacts/TARGET/` and fails the
//! run; docs/testing.md says how to reproduce it.

use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::{root, run, setup};

/// Each target and the longest input it is given: the peek readers see at most the proxy's
/// `peekBytes` (16 KiB by default), policies and configs are kept small enough to mutate well.
pub const TARGETS: &[(&str, usize)] = &[
    ("peek_tls", 20_000),
    ("peek_http1", 20_000),
    ("peek_http2", 20_000),
    ("hpack", 20_000),
    ("policy_yaml", 65_536),
    ("policy_json", 65_536),
    ("agent_config", 16_384),
];

/// Seconds per target in CI (`cargo xtask test`).
pub const CI_SECONDS: u64 = 15;

/// How the targets are compiled.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// Optimised: the speed a long run needs.
    Release,
    /// Unoptimised (`cargo fuzz --dev`): a fraction of the compile time, for CI's short
    /// pass, whose seconds go to replaying the corpus rather than to exploring.
    Dev,
}

/// Bounds every input is held to: one input running longer than this many seconds, or the
/// process growing past this many MiB, is a failure like a crash.
const TIMEOUT_SECONDS: u64 = 5;
const RSS_LIMIT_MB: u64 = 1024;

fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly");
    cmd
}

/// Fuzzes each of `only` (every target when empty) for `seconds`.
pub fn run_targets(seconds: u64, only: &[String], merge: bool, build: Build) -> Result<()> {
    setup::cargo_fuzz()?;
    let unknown: Vec<&String> = only
        .iter()
        .filter(|t| !TARGETS.iter().any(|(name, _)| name == t))
        .collect();
    if !unknown.is_empty() {
        let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
        bail!(
            "unknown fuzz target(s) {unknown:?}: the targets are {}",
            names.join(", ")
        );
    }
    let profile: &[&str] = match build {
        Build::Release => &[],
        Build::Dev => &["--dev"],
    };
    run(nightly_cargo().args(["fuzz", "build"]).args(profile))?;
    for (target, max_len) in TARGETS {
        if !only.is_empty() && !only.iter().any(|t| t == target) {
            continue;
        }
        let corpus = root().join("fuzz/corpus").join(target);
        let scratch = scratch_dir(target);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&scratch)?;
        eprintln!("xtask: fuzzing {target} for {seconds}s");
        // The first corpus directory is the one libFuzzer writes new inputs to.
        run(nightly_cargo()
            .args(["fuzz", "run", target])
            .args(profile)
            .arg(&scratch)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-max_len={max_len}"))
            .arg(format!("-timeout={TIMEOUT_SECONDS}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg("-print_final_stats=1"))?;
        if merge {
            eprintln!(
                "xtask: merging what {target} found into {}",
                corpus.display()
            );
            run(nightly_cargo()
                .args(["fuzz", "run", target])
                .args(profile)
                .arg(&corpus)
                .arg(&scratch)
                .arg("--")
                .arg("-merge=1")
                .arg(format!("-max_len={max_len}")))?;
        }
    }
    Ok(())
}

fn scratch_dir(target: &str) -> PathBuf {
    root().join("target/fuzz-scratch").join(target)
}
