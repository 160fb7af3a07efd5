//! `cargo xtask deb`: the Debian package, for node operators without Kubernetes.
//!
//! `dpkg-deb` builds it from a staged tree (no debian/ source package, no debhelper):
//!
//! - `/usr/bin/passthrough`, the release binary;
//! - `/lib/systemd/system/passthrough.service`, `deploy/systemd/passthrough.service`;
//! - `/etc/passthrough/agent.yaml` (a conffile: dpkg keeps the operator's edits), from
//!   `deploy/debian/agent.yaml`, and the empty `/etc/passthrough/policies/` it watches;
//! - `/usr/share/doc/passthrough/`: README, copyright, the example policies;
//! - the maintainer scripts in `deploy/debian/`, which act only where systemd runs.
//!
//! `Depends` comes from `dpkg-shlibdeps` on the binary. Every file is stamped with the commit
//! time (dpkg-deb clamps to `SOURCE_DATE_EPOCH`) and owned by root, so one commit gives one
//! package; `build` builds it twice and compares.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

use crate::{
    release::{self, VERSION},
    root, run,
};

pub const PACKAGE: &str = "passthrough";

const CONFFILE: &str = "etc/passthrough/agent.yaml";

/// Builds the release binary and the package from it (twice, to check it is reproducible);
/// returns the package's path.
pub fn build() -> Result<PathBuf> {
    let binary = release::binary()?;
    let arch = release::arch()?;
    let epoch = release::source_date_epoch()?;
    let depends = shlib_depends(&binary)?;
    let dir = release::dist_dir();
    let out = dir.join(format!("{PACKAGE}_{VERSION}_{arch}.deb"));
    let mut digests = Vec::new();
    for _ in 0..2 {
        let stage = dir.join("deb-root");
        if stage.exists() {
            fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
        }
        stage_tree(&stage, &binary, arch, &depends)?;
        run(Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&out)
            .env("SOURCE_DATE_EPOCH", epoch.to_string()))?;
        fs::remove_dir_all(&stage)?;
        let bytes = fs::read(&out).with_context(|| out.display().to_string())?;
        digests.push(format!("{:x}", Sha256::digest(&bytes)));
    }
    if digests[0] != digests[1] {
        bail!(
            "two builds of {} differ (sha256 {} and {}): something in deb.rs is not \
             deterministic",
            out.display(),
            digests[0],
            digests[1]
        );
    }
    eprintln!(
        "xtask: wrote {} (sha256 {}), reproduced",
        out.display(),
        digests[0]
    );
    Ok(out)
}

/// The package's files under `stage`, with `DEBIAN/` holding its control files.
fn stage_tree(stage: &Path, binary: &Path, arch: &str, depends: &str) -> Result<()> {
    let src = root();
    let doc = "usr/share/doc/passthrough";
    copy(binary, stage, "usr/bin/passthrough", 0o755)?;
    copy(
        &src.join("deploy/systemd/passthrough.service"),
        stage,
        "lib/systemd/system/passthrough.service",
        0o644,
    )?;
    copy(
        &src.join("deploy/debian/agent.yaml"),
        stage,
        CONFFILE,
        0o644,
    )?;
    mkdir(&stage.join("etc/passthrough/policies"))?;
    copy(
        &src.join("README.md"),
        stage,
        &format!("{doc}/README.md"),
        0o644,
    )?;
    let mut examples: Vec<PathBuf> = fs::read_dir(src.join("examples"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    for e in &examples {
        let name = e.file_name().unwrap_or_default().to_string_lossy();
        copy(e, stage, &format!("{doc}/examples/{name}"), 0o644)?;
    }
    write(stage, &format!("{doc}/copyright"), COPYRIGHT, 0o644)?;

    let installed_kib = installed_size_kib(stage)?;
    let control = format!(
        "Package: {PACKAGE}\n\
         Version: {VERSION}\n\
         Architecture: {arch}\n\
         Maintainer: passthrough developers <passthrough@example.invalid>\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: https://example.invalid/passthrough\n\
         Description: MeshPassthrough egress enforcement in the kernel\n \
         A node agent that enforces Kuma's MeshPassthrough egress policy with eBPF cgroup\n \
         programs: connections a workload's policy does not allow are refused at connect().\n \
         Runs as the systemd service passthrough.service, configured in\n \
         /etc/passthrough/agent.yaml, with policies in /etc/passthrough/policies/.\n"
    );
    write(stage, "DEBIAN/control", &control, 0o644)?;
    write(stage, "DEBIAN/conffiles", &format!("/{CONFFILE}\n"), 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        copy(
            &src.join("deploy/debian").join(script),
            stage,
            &format!("DEBIAN/{script}"),
            0o755,
        )?;
    }
    let md5sums = md5sums(stage)?;
    write(stage, "DEBIAN/md5sums", &md5sums, 0o644)?;
    // Directories were made under the caller's umask; the package says 0755 whatever it is.
    for dir in [stage.to_path_buf(), stage.join("DEBIAN")]
        .into_iter()
        .chain(
            walk(stage)?
                .into_iter()
                .filter(|(_, m)| m.is_dir())
                .map(|(r, _)| stage.join(r)),
        )
    {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: passthrough
Source: https://example.invalid/passthrough

Files: *
Copyright: the passthrough developers
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
";

/// `Depends` for what the binary links: `dpkg-shlibdeps` reads the libraries' shlibs/symbols
/// files (it insists on a `debian/control`, so it runs in a scratch directory holding one).
fn shlib_depends(binary: &Path) -> Result<String> {
    let scratch = release::dist_dir().join("shlibdeps");
    fs::create_dir_all(scratch.join("debian"))?;
    fs::write(
        scratch.join("debian/control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )?;
    let out = Command::new("dpkg-shlibdeps")
        .arg("-O")
        .arg(format!("-e{}", binary.display()))
        .current_dir(&scratch)
        .output()
        .context("running dpkg-shlibdeps (Debian package dpkg-dev, installed by setup)")?;
    fs::remove_dir_all(&scratch)?;
    if !out.status.success() {
        bail!(
            "dpkg-shlibdeps on {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(|d| d.trim().to_string())
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {text}"))
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn write(stage: &Path, rel: &str, text: &str, mode: u32) -> Result<()> {
    let dest = stage.join(rel);
    mkdir(dest.parent().unwrap_or(stage))?;
    fs::write(&dest, text).with_context(|| dest.display().to_string())?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn copy(from: &Path, stage: &Path, rel: &str, mode: u32) -> Result<()> {
    let dest = stage.join(rel);
    mkdir(dest.parent().unwrap_or(stage))?;
    fs::copy(from, &dest)
        .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Every staged path outside `DEBIAN/`, relative, sorted; directories too.
fn walk(stage: &Path) -> Result<Vec<(PathBuf, fs::Metadata)>> {
    let mut out = Vec::new();
    let mut todo = vec![stage.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let rel = path.strip_prefix(stage)?.to_path_buf();
            if rel.starts_with("DEBIAN") {
                continue;
            }
            let meta = fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                todo.push(path);
            }
            out.push((rel, meta));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// What dpkg-gencontrol would say: KiB per file, rounded up, and one per directory.
fn installed_size_kib(stage: &Path) -> Result<u64> {
    Ok(walk(stage)?
        .iter()
        .map(|(_, meta)| {
            if meta.is_dir() {
                1
            } else {
                meta.len().div_ceil(1024)
            }
        })
        .sum())
}

/// `DEBIAN/md5sums` (what debsums checks): every file but the conffile, which dpkg tracks
/// itself.
fn md5sums(stage: &Path) -> Result<String> {
    let files: Vec<PathBuf> = walk(stage)?
        .into_iter()
        .filter(|(rel, meta)| meta.is_file() && rel != Path::new(CONFFILE))
        .map(|(rel, _)| rel)
        .collect();
    let out = Command::new("md5sum")
        .args(&files)
        .current_dir(stage)
        .output()
        .context("running md5sum")?;
    if !out.status.success() {
        bail!("md5sum failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
