//! What the image and the package are made of: the release `passthrough` binary, the version
//! they carry, the commit time that stamps every file in them, and where they are written.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, root, run};

/// The agent's version: xtask and passthrough-user share the workspace version (a test
/// below keeps it so), so this is the version `passthrough --version` prints.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where `cargo xtask image` and `cargo xtask deb` write what they build.
pub fn dist_dir() -> PathBuf {
    root().join("target/dist")
}

/// Builds the release binary, as the Dockerfile and any operator would, and returns its path.
/// The eBPF programs are inside it (passthrough-user's build script compiles them).
pub fn binary() -> Result<PathBuf> {
    run(cargo().args([
        "build",
        "--release",
        "--locked",
        "--package",
        "passthrough-user",
        "--bin",
        "passthrough",
    ]))?;
    let bin = root().join("target/release/passthrough");
    if !bin.is_file() {
        bail!("cargo built passthrough but {} is missing", bin.display());
    }
    Ok(bin)
}

/// The time every file, layer and package member is stamped with: `$SOURCE_DATE_EPOCH` if
/// set (the reproducible-builds convention), else the commit time of `HEAD`, so that one
/// commit always gives the same bytes.
pub fn source_date_epoch() -> Result<i64> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970")
        });
    }
    let out = git(&["log", "-1", "--format=%ct", "HEAD"])?;
    out.parse().with_context(|| {
        format!("`git log -1 --format=%ct` printed {out:?}, not a time: set SOURCE_DATE_EPOCH")
    })
}

/// The commit the artifacts are built from, for their labels.
pub fn commit() -> Result<String> {
    git(&["rev-parse", "HEAD"])
}

fn git(args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root())
        .output()
        .context("running git: the image and package are stamped with the commit's time")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}; outside a git checkout set SOURCE_DATE_EPOCH",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The architecture name Debian and OCI both use for this machine (the binary is built for it).
pub fn arch() -> Result<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("amd64"),
        "aarch64" => Ok("arm64"),
        other => bail!("no Debian/OCI architecture name known for {other}: add it in release.rs"),
    }
}

/// The shared libraries `binary` loads, as `ldd` resolves them on this machine (the dynamic
/// loader included, the kernel's vDSO left out).
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (Debian package libc-bin)")?;
    if !out.status.success() {
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_ldd(&String::from_utf8_lossy(&out.stdout))
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!(
                        "ldd: {} not found: install the package that provides it",
                        name.trim()
                    );
                }
                rest.split(" (").next().unwrap_or(rest).trim()
            }
            None => line.split(" (").next().unwrap_or(line).trim(),
        };
        // `linux-vdso.so.1 (0x...)` is the kernel's, in no file.
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_each_library_and_the_loader_once() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc2c5f5000)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0c1a000000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c19e00000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f0c1a100000)\n";
        assert_eq!(
            parse_ldd(text).expect("parses"),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn a_missing_library_is_an_error_naming_it() {
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").expect_err("refused");
        assert!(err.to_string().contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn the_agent_carries_the_workspace_version() {
        let manifest = std::fs::read_to_string(root().join("passthrough-user/Cargo.toml"))
            .expect("passthrough-user/Cargo.toml");
        assert!(
            manifest.contains("version.workspace = true"),
            "passthrough-user must take the workspace version, which the image tag and the \
             package version are"
        );
    }
}
