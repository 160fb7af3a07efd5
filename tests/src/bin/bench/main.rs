//! `cargo xtask bench <which>`: kernel-level benchmarks of passthrough, each against what an
//! operator would use instead, in the test topology. Results go to `bench/results/`.
//!
//! - `bench connect [--quick] [--profile] [--out DIR]`: `connect()` latency and policy apply
//!   time; with `--profile`, the programs' run time per call instead (see `connect.rs`).
//! - `bench proxy [--quick] [--out DIR]`: the peek proxy's setup latency and throughput
//!   (see `proxy.rs`).
//! - `bench reload [--quick] [--out DIR]`: the agent's core with a million entries per
//!   family: start, one change under proxied load, SIGTERM (see `reload.rs`).
//! - `bench kubernetes [--quick] [--out DIR]`: 250 pods against the API server stand-in:
//!   start to ready, policy change to every pod's kernel verdict, a new pod's first connect
//!   (see `kubernetes.rs`).
//!
//! The measuring clients are this binary re-executed (`client`, `proxy-client`,
//! `reload-client`, `reload-waiter`, `kube-client`, `kube-first`), so that they sit in a
//! workload cgroup and the client network namespace ([`enter`]).

mod connect;
mod kubernetes;
mod proxy;
mod reload;

use std::{path::PathBuf, process::ExitCode};

/// Moves the calling thread into the network namespace at `netns` (the measuring clients
/// are single-threaded), saying why on stderr when it cannot.
fn enter_netns(netns: &str) -> Result<(), ()> {
    let ns = std::fs::File::open(netns).map_err(|e| eprintln!("{netns}: {e}"))?;
    // SAFETY: plain setns(2) on an open namespace fd.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
        eprintln!("setns {netns}: {}", std::io::Error::last_os_error());
        return Err(());
    }
    Ok(())
}

/// Moves the calling process into the workload cgroup at `cgroup` and its thread into the
/// network namespace at `netns`: where every measuring client runs.
fn enter(cgroup: &str, netns: &str) -> Result<(), ()> {
    if !join(cgroup) {
        return Err(());
    }
    enter_netns(netns)
}

/// Moves the calling process into the cgroup at `cgroup`, saying why on stderr when it
/// cannot.
fn join(cgroup: &str) -> bool {
    std::fs::write(std::path::Path::new(cgroup).join("cgroup.procs"), b"0")
        .map_err(|e| eprintln!("joining {cgroup}: {e}"))
        .is_ok()
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for the bench and the clients it starts.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // A million entries per family take longer to load than a test's policy.
    passthrough_tests::agent::set_ready_patience(std::time::Duration::from_secs(300));
    let quick = args.iter().any(|a| a == "--quick");
    let profile = args.iter().any(|a| a == "--profile");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| PathBuf::from("bench/results"), PathBuf::from);
    match args.get(1).map(String::as_str) {
        Some("client") => connect::client(&args[2..]),
        Some("proxy-client") => proxy::client(&args[2..]),
        Some("connect") => connect::run(quick, profile, &out),
        Some("proxy") => proxy::run(quick, &out),
        Some("reload-client") => reload::client(&args[2..]),
        Some("reload-waiter") => reload::waiter(&args[2..]),
        Some("reload") => reload::run(quick, &out),
        Some("kube-client") => kubernetes::client(&args[2..]),
        Some("kube-first") => kubernetes::first(&args[2..]),
        Some("kubernetes") => kubernetes::run(quick, &out),
        _ => {
            eprintln!(
                "usage: bench connect|proxy|reload|kubernetes [--quick] [--profile] [--out DIR]"
            );
            ExitCode::from(2)
        }
    }
}
