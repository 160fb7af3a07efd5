//! `cargo xtask setup`: everything a fresh Debian machine lacks to build and test passthrough.
//! Each step checks first and does nothing when its tool is already there.

use std::process::{Command, Stdio};

use anyhow::{Result, bail};

use crate::{is_root, run};

/// Debian packages: LLVM 22 for bpf-linker, iproute2 for the test namespaces, and the clients
/// and servers the kernel tests and benchmarks drive.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "nftables",
    "curl",
    "openssl",
    // nghttpd: the HTTP/2 prior-knowledge (h2c) test server.
    "nghttp2-server",
    // dnsmasq: the test topology's resolver. The -base package is the binary alone, without
    // the system service that would answer on this machine's port 53.
    "dnsmasq-base",
    // podman: runs the agent's image in tests/tests/image.rs (nothing is pulled).
    "podman",
    // runc: podman's runtime in the tests; Debian 12's crun refuses hybrid cgroup hosts.
    "runc",
    // dpkg-dev: dpkg-shlibdeps, for the Debian package's Depends.
    "dpkg-dev",
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The bpf-linker release known to work with LLVM 22 and aya-ebpf 0.2.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn ensure() -> Result<()> {
    packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> String {
    cmd.stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .contains("install ok installed")
}

fn packages() -> Result<()> {
    ensure_packages(PACKAGES)
}

/// Installs the Debian packages of `list` that are missing.
pub fn ensure_packages(list: &[&str]) -> Result<()> {
    let missing: Vec<&str> = list.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("xtask: Debian packages present");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `cargo xtask setup` as root, or `apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]));
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
            "--component",
            "rustfmt",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    for component in ["rust-src", "rustfmt"] {
        if components.lines().any(|l| l.starts_with(component)) {
            continue;
        }
        run(Command::new("rustup").args([
            "component",
            "add",
            component,
            "--toolchain",
            "nightly",
        ]))?;
    }
    eprintln!("xtask: nightly toolchain with rust-src present");
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version"));
    if version.contains(BPF_LINKER_VERSION) {
        eprintln!("xtask: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    if !version.is_empty() {
        eprintln!("xtask: replacing {}", version.trim());
    }
    // bpf-linker finds LLVM through LLVM_PREFIX; llvm-sys through LLVM_SYS_221_PREFIX.
    run(crate::cargo()
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX))?;
    if !quiet(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but does not run: is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

/// The cargo-fuzz release the fuzz targets are run with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// cargo-fuzz, for `cargo xtask fuzz` and the short fuzz pass of `cargo xtask test`.
pub fn cargo_fuzz() -> Result<()> {
    let version = output(Command::new("cargo").args(["fuzz", "--version"]));
    if version.contains(CARGO_FUZZ_VERSION) {
        eprintln!("xtask: cargo-fuzz {CARGO_FUZZ_VERSION} present");
        return Ok(());
    }
    run(crate::cargo().args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--force",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}
