//! Project tasks: `cargo xtask <task>`.
//!
//! - `setup`: installs what building and testing need, only what is missing (idempotent).
//! - `test`: setup, then every test: unit tests, then the privileged kernel tests.
//! - `lint`: rustfmt and clippy, as CI runs them.
//! - `demo`: the README's main job on the embedded demo.
//! - `manifests`: the Kubernetes deployment, generated (`--check`: unchanged).
//! - `image`, `deb`: the agent's OCI image and Debian package, in target/dist/.
//! - `fuzz`: the cargo-fuzz targets, each for a bounded time.

mod deb;
mod demo;
mod fuzz;
mod image;
mod manifests;
mod release;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "passthrough project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the build and test prerequisites that are missing (Debian packages, nightly
    /// rust-src, bpf-linker built against LLVM 22). A second run takes seconds.
    Setup,
    /// Run setup, then every test: unit tests and the privileged kernel tests (needs root).
    Test {
        /// Run only the tests that need no root (unit and CLI tests).
        #[arg(long)]
        unprivileged: bool,
    },
    /// rustfmt --check and clippy -D warnings over the workspace.
    Lint,
    /// Build and run the demo (needs root).
    Demo,
    /// Write deploy/kubernetes/ from xtask/src/manifests.rs (`--check`: fail if it differs).
    Manifests {
        #[arg(long)]
        check: bool,
    },
    /// Build the agent's OCI image (target/dist/passthrough_VERSION_ARCH.oci.tar, for
    /// `podman load`, `docker load`, `ctr image import`) without a container engine; checks
    /// that a second assembly gives the same digest.
    Image,
    /// Build the Debian package (target/dist/passthrough_VERSION_ARCH.deb); checks that a
    /// second build gives the same bytes.
    Deb,
    /// Run a benchmark (needs root); results go to bench/results/.
    Bench {
        /// Which benchmark: connect (connect() latency, apply time), proxy (the peek
        /// proxy's setup latency and throughput, against HAProxy) or kubernetes (250 pods:
        /// start to ready, policy change to every pod's verdict, a new pod's first connect).
        #[arg(value_parser = ["connect", "proxy", "kubernetes"])]
        which: String,
        /// Smaller sizes and fewer samples, for a quick look.
        #[arg(long)]
        quick: bool,
        /// connect only: the kernel's run time of each program per call
        /// (`BPF_ENABLE_STATS`), written to bench/results/profile.md instead of the timings.
        #[arg(long)]
        profile: bool,
    },
    /// Run the fuzz targets of fuzz/ (cargo fuzz, nightly) on their committed corpora, each
    /// for --time seconds; a crash fails the run and is left in fuzz/artifacts/.
    ///
    /// Example: cargo xtask fuzz --time 300 peek_tls hpack
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Merge the new inputs that add coverage into fuzz/corpus/ afterwards.
        #[arg(long)]
        merge: bool,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::ensure(),
        Task::Test { unprivileged } => test(unprivileged),
        Task::Lint => lint(),
        Task::Demo => demo::run_demo(),
        Task::Manifests { check } => manifests::run(&root(), check),
        Task::Image => image::build().map(drop),
        Task::Deb => deb::build().map(drop),
        Task::Bench {
            which,
            quick,
            profile,
        } => bench(&which, quick, profile),
        Task::Fuzz {
            time,
            merge,
            targets,
        } => fuzz::run_targets(time, &targets, merge, fuzz::Build::Release),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs a command in the workspace root, failing with the command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root());
    }
    let shown = format!("{cmd:?}");
    eprintln!("xtask: {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // `cargo run` gave xtask its own CARGO_MANIFEST_DIR; build scripts that watch it (ring's)
    // would otherwise rebuild everything above them whenever xtask and a shell take turns.
    cmd.env_remove("CARGO_MANIFEST_DIR");
    cmd
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
    #[link_name = "flock"]
    fn libc_flock(fd: i32, operation: i32) -> i32;
}

/// Where privileged runs (kernel tests, demo, benchmarks) take turns on this machine.
const PRIVILEGED_LOCK: &str = "/run/lock/passthrough-privileged.lock";

/// Held while a privileged run uses the machine: agents bind the admin port 127.0.0.1:9902
/// and share bpffs, so two runs at once (two checkouts, a benchmark beside the tests) would
/// disturb each other. A second run waits for the first instead.
pub struct PrivilegedLock(
    #[expect(dead_code, reason = "held for its file descriptor")] std::fs::File,
);

pub fn privileged_lock() -> Result<PrivilegedLock> {
    use std::os::fd::AsRawFd as _;
    const LOCK_EX: i32 = 2;
    const LOCK_NB: i32 = 4;
    let dir = Path::new(PRIVILEGED_LOCK)
        .parent()
        .unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PRIVILEGED_LOCK)
        .with_context(|| format!("opening {PRIVILEGED_LOCK}"))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc_flock(file.as_raw_fd(), LOCK_EX | LOCK_NB) } != 0 {
        eprintln!("xtask: another privileged run holds {PRIVILEGED_LOCK}; waiting for it");
        // SAFETY: as above.
        if unsafe { libc_flock(file.as_raw_fd(), LOCK_EX) } != 0 {
            bail!(
                "locking {PRIVILEGED_LOCK}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(PrivilegedLock(file))
}

fn test(unprivileged: bool) -> Result<()> {
    setup::ensure()?;
    run(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "passthrough-tests",
        "--exclude",
        "passthrough-ebpf",
    ]))?;
    // A short pass over every fuzz target: each corpus replayed, then a little exploring.
    fuzz::run_targets(fuzz::CI_SECONDS, &[], false, fuzz::Build::Dev)?;
    if unprivileged {
        eprintln!("xtask: --unprivileged: the kernel tests were not run");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "the kernel tests load eBPF programs and create cgroups and network namespaces: run `cargo xtask test` as root, or `cargo xtask test --unprivileged` for the rest"
        );
    }
    // What tests/tests/{image,deb}.rs install and run: built before the lock is taken.
    let image = image::build()?;
    let deb = deb::build()?;
    // One at a time: they share the host's bpffs and cgroup tree, under unique names.
    let _lock = privileged_lock()?;
    run(cargo()
        .args([
            "test",
            "--package",
            "passthrough-tests",
            "--",
            "--test-threads=1",
        ])
        .env("PASSTHROUGH_IMAGE", &image.archive)
        .env("PASSTHROUGH_IMAGE_DIGEST", &image.manifest_digest)
        .env("PASSTHROUGH_DEB", &deb))
}

fn bench(which: &str, quick: bool, profile: bool) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks load eBPF programs and create namespaces: run them as root");
    }
    setup::ensure()?;
    if which == "proxy" {
        // The comparison point; only this benchmark needs it.
        setup::ensure_packages(&["haproxy"])?;
    }
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "passthrough-tests",
        "--bins",
    ]))?;
    let _lock = privileged_lock()?;
    let mut cmd = Command::new(root().join("target/release/bench"));
    cmd.arg(which).args(["--out", "bench/results"]);
    if quick {
        cmd.arg("--quick");
    }
    if profile {
        cmd.arg("--profile");
    }
    run(&mut cmd)
}

fn lint() -> Result<()> {
    // rustfmt.toml uses options only nightly rustfmt has; the rustup proxy picks it.
    run(Command::new("cargo").args(["+nightly", "fmt", "--all", "--", "--check"]))?;
    // The BPF crate only builds for the BPF target, so it is linted on its own below.
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "passthrough-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(Command::new("cargo")
        .args([
            "+nightly",
            "clippy",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(root().join("passthrough-ebpf")))
}
