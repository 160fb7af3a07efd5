//! Builds the eBPF programs of `passthrough-ebpf` with aya-build (nightly toolchain, bpf-linker)
//! and leaves the object in OUT_DIR, where `agent::loader` embeds it.

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("passthrough-user has no parent directory"))?
        .join("passthrough-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    // The programs include the shared types: rebuild them when those change too.
    println!("cargo:rerun-if-changed={manifest_dir}/../passthrough-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "passthrough-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed: run `cargo xtask setup` (nightly rust-src, bpf-linker)",
    )
}
