//! `bench connect`: connect() latency from a workload cgroup to a test host, each row paired
//! against an unfiltered sibling cgroup in interleaved batches, for:
//!
//! - no program (the sibling against another sibling: the noise floor of the pairing),
//! - an empty program on `connect4`/`connect6` (the floor: what any cgroup program costs),
//! - passthrough and the same entries as nftables (`socket cgroupv2`), 10 / 10 000 /
//!   1 000 000 IP and CIDR entries per family, IPv4 and IPv6, allowed and denied,
//! - the Kubernetes layout: the workload cgroup 5 levels deep, the process in a child
//!   cgroup, once found through `CGROUPS` and once through the ancestor walk.
//!
//! Two metrics per row (see `client.rs`): the `connect()` syscall alone and the full
//! handshake. Also the time to compile and apply the entries and the kernel memory the maps
//! take. Writes `connect.json` and `connect.md`; with `--profile`, the kernel's run-time
//! statistics of the programs instead (`profile.json`, `profile.md`), which cost the
//! programs time themselves and so are never collected in a timing run.
//!
//! A new row variant (a setting of the agent, a layout of cgroups) is a [`Variant`] and a
//! few lines in [`run`].

mod client;
mod kernel;
mod nft;
mod stats;

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

pub use client::client;
use client::{BATCH, Outcome};
use kernel::{EmptyProgram, Hook};
use passthrough_tests::{TestCgroup, Topology, agent::AgentRun};
use stats::{Metric, Sample};

const ALLOWED_V4: &str = "198.51.100.10:80";
const DENIED_V4: &str = "203.0.113.10:80";
const ALLOWED_V6: &str = "[2001:db8:1::10]:80";
const DENIED_V6: &str = "[2001:db8:2::20]:80";
/// Entries per policy file, to stay under the 4 MiB policy file limit.
const PER_FILE: usize = 40_000;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ip,
    Cidr,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ip => "IP",
            Kind::Cidr => "CIDR",
        }
    }
}

/// What decides the workload's connects in a row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    NoProgram,
    EmptyProgram,
    Passthrough,
    Nftables,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::NoProgram => "no program",
            Backend::EmptyProgram => "empty program",
            Backend::Passthrough => "passthrough",
            Backend::Nftables => "nftables",
        }
    }
}

/// How a row differs from the plain case of its backend.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// The workload is a cgroup one level below the root; the client is in it.
    Plain,
    /// The workload cgroup 5 levels deep (a kubelet's layout), the client in a child cgroup
    /// of it that existed when the agent started: the agent wrote its `CGROUPS` entry.
    DeepKnown,
    /// As `DeepKnown`, the child created after the agent started: the programs walk the
    /// ancestors, unless the agent has learnt of it by then (the row says which).
    DeepNew,
    /// The allowed path with the flow table off (`flows.enabled: false`): against the plain
    /// rows (the table on, the default), each paired with the same no-program baseline, the
    /// difference is the table's cost.
    FlowsOff,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Plain => "",
            Variant::DeepKnown => "depth 5, child cgroup known",
            Variant::DeepNew => "depth 5, child cgroup new",
            Variant::FlowsOff => "flow table off",
        }
    }
}

/// The i-th filler entry of a kind and family; none covers a test host.
fn filler(kind: Kind, v6: bool, i: usize) -> String {
    let i = i as u32;
    match (kind, v6) {
        (Kind::Ip, false) => Ipv4Addr::from((10 << 24) | i).to_string(),
        (Kind::Cidr, false) => format!("{}/28", Ipv4Addr::from((10 << 24) | (i << 4))),
        (Kind::Ip, true) => {
            Ipv6Addr::new(0x2001, 0xdb8, 0xf000, 0, 0, 0, (i >> 16) as u16, i as u16).to_string()
        }
        (Kind::Cidr, true) => format!(
            "{}/64",
            Ipv6Addr::new(
                0x2001,
                0xdb8,
                0xf000 | (i >> 16) as u16,
                i as u16,
                0,
                0,
                0,
                0
            )
        ),
    }
}

/// The entry that covers the allowed test hosts.
fn covering(kind: Kind, v6: bool) -> &'static str {
    match (kind, v6) {
        (Kind::Ip, false) => "198.51.100.10",
        (Kind::Cidr, false) => "198.51.100.8/30",
        (Kind::Ip, true) => "2001:db8:1::10",
        (Kind::Cidr, true) => "2001:db8:1::/64",
    }
}

/// `n` entries of each family: n-1 fillers and the covering one.
fn entries(kind: Kind, n: usize) -> Vec<(bool, String)> {
    let mut v = Vec::with_capacity(2 * n);
    for v6 in [false, true] {
        v.extend((0..n - 1).map(|i| (v6, filler(kind, v6, i))));
        v.push((v6, covering(kind, v6).to_string()));
    }
    v
}

/// The entries as MeshPassthrough policy files.
fn policy_files(kind: Kind, entries: &[(bool, String)]) -> Vec<(String, String)> {
    entries
        .chunks(PER_FILE)
        .enumerate()
        .map(|(f, chunk)| {
            let mut s = format!(
                "type: MeshPassthrough\nname: bench-{f}\nspec:\n  default:\n    passthroughMode: Matched\n    appendMatch:\n"
            );
            for (_, e) in chunk {
                let _ = writeln!(
                    s,
                    "      - {{type: {}, value: \"{e}\", port: 80}}",
                    kind.name()
                );
            }
            (format!("bench-{f}.yaml"), s)
        })
        .collect()
}

#[derive(serde::Serialize)]
struct Row {
    backend: &'static str,
    variant: &'static str,
    kind: &'static str,
    entries: usize,
    family: &'static str,
    path: &'static str,
    outcome: String,
    /// Connects from the workload cgroup (as many again from the baseline).
    samples: usize,
    /// The `connect()` syscall alone, non-blocking.
    syscall: Metric,
    /// `socket()` to established (or refused).
    handshake: Metric,
    /// Whether the client's cgroup has a `CGROUPS` entry, else a `CALLERS` miss walks the
    /// ancestors (Kubernetes rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    workload_lookup: Option<&'static str>,
    /// `--profile` only: the kernel's run time of the family's connect program, ns per run.
    #[serde(skip_serializing_if = "Option::is_none")]
    program_ns_per_run: Option<f64>,
}

/// Where a row's connects come from and what they go through.
struct Site<'a> {
    /// The client's cgroup.
    client: &'a Path,
    /// Its unfiltered sibling, for the interleaved baseline.
    baseline: &'a Path,
    /// The cgroup the programs are attached to (for `--profile`).
    attached: &'a Path,
}

/// One row to measure.
struct Case {
    backend: Backend,
    variant: Variant,
    kind: Option<Kind>,
    entries: usize,
    v6: bool,
    allowed: bool,
}

struct Ctx {
    topo: Topology,
    count: usize,
    profile: bool,
    rows: Vec<Row>,
}

impl Ctx {
    /// Runs the client for one row, returns the row (also printed as it comes).
    fn row(&mut self, case: Case, site: &Site<'_>) -> &mut Row {
        let dest = match (case.v6, case.allowed) {
            (false, true) => ALLOWED_V4,
            (false, false) => DENIED_V4,
            (true, true) => ALLOWED_V6,
            (true, false) => DENIED_V6,
        };
        let hook = if case.v6 {
            Hook::Connect6
        } else {
            Hook::Connect4
        };
        let stats_before = self
            .profile
            .then(|| kernel::total_stats(site.attached, hook).ok())
            .flatten();
        let out = Command::new(std::env::current_exe().expect("exe"))
            .arg("client")
            .arg(site.client)
            .arg(site.baseline)
            .arg(self.topo.client_netns_path())
            .args([dest, &self.count.to_string()])
            .output()
            .expect("client");
        let program_ns_per_run = stats_before.and_then(|before| {
            kernel::total_stats(site.attached, hook)
                .ok()?
                .ns_per_run_since(before)
        });
        let text = String::from_utf8_lossy(&out.stdout);
        let (mut sys, mut hs) = (Vec::new(), Vec::new());
        let mut outcomes: Vec<Outcome> = Vec::new();
        for l in text.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            let [side, batch, s, h, o] = f[..] else {
                continue;
            };
            let (Ok(batch), Ok(s), Ok(h), Some(o)) =
                (batch.parse(), s.parse(), h.parse(), Outcome::parse(o))
            else {
                continue;
            };
            let baseline = side == "b";
            sys.push(Sample {
                baseline,
                batch,
                ns: s,
            });
            hs.push(Sample {
                baseline,
                batch,
                ns: h,
            });
            if !baseline && !outcomes.contains(&o) {
                outcomes.push(o);
            }
        }
        let outcome = if !out.status.success() || sys.is_empty() {
            format!("error: {}", String::from_utf8_lossy(&out.stderr).trim())
        } else {
            outcomes
                .iter()
                .map(|o| o.name())
                .collect::<Vec<_>>()
                .join(" + ")
        };
        let row = Row {
            backend: case.backend.name(),
            variant: case.variant.name(),
            kind: case.kind.map_or("-", Kind::name),
            entries: case.entries,
            family: if case.v6 { "IPv6" } else { "IPv4" },
            path: if case.allowed { "allowed" } else { "denied" },
            outcome,
            samples: self.count,
            syscall: Metric::of(&sys),
            handshake: Metric::of(&hs),
            workload_lookup: None,
            program_ns_per_run,
        };
        eprintln!(
            "{:<13} {:<27} {:<4} {:>7} {:<4} {:<7} {:<12} syscall {:>6.2} µs {:>+6.1} % ±{:.1}  handshake {:>6.1} µs {:>+6.1} % ±{:.1}{}",
            row.backend,
            row.variant,
            row.kind,
            row.entries,
            row.family,
            row.path,
            row.outcome,
            row.syscall.median_ns as f64 / 1000.0,
            row.syscall.overhead_pct,
            row.syscall.noise_pct,
            row.handshake.median_ns as f64 / 1000.0,
            row.handshake.overhead_pct,
            row.handshake.noise_pct,
            row.program_ns_per_run
                .map_or_else(String::new, |n| format!("  program {n:.0} ns/run")),
        );
        self.rows.push(row);
        self.rows.last_mut().expect("just pushed")
    }

    /// The four rows of a backend's entries: both families, allowed and denied.
    fn four(&mut self, backend: Backend, kind: Kind, n: usize, site: &Site<'_>) {
        for v6 in [false, true] {
            for allowed in [true, false] {
                let case = Case {
                    backend,
                    variant: Variant::Plain,
                    kind: Some(kind),
                    entries: n,
                    v6,
                    allowed,
                };
                self.row(case, site);
            }
        }
    }
}

#[derive(serde::Serialize)]
struct Apply {
    kind: &'static str,
    entries_per_family: usize,
    passthrough_apply_ms: u128,
    passthrough_map_memlock_bytes: u64,
    nft_load_ms: Option<u128>,
}

/// Whether the agent's `CGROUPS` map has an entry for `cgroup`: the programs' one-lookup
/// path, else the ancestor walk.
fn in_cgroups_map(bpffs: &Path, cgroup: &TestCgroup) -> bool {
    let path =
        passthrough::agent::loader::maps_dir(bpffs).join(passthrough_common::map_names::CGROUPS);
    let Ok(data) = aya::maps::MapData::from_pin(&path) else {
        return false;
    };
    let Ok(map) = aya::maps::HashMap::<_, u64, u64>::try_from(aya::maps::Map::HashMap(data)) else {
        return false;
    };
    map.get(&cgroup.id(), 0).is_ok()
}

/// The Kubernetes rows: the workload cgroup 5 levels deep, the client in a child of it, the
/// baseline in a sibling pod's child at the same depth.
fn deep_rows(ctx: &mut Ctx) {
    let top = TestCgroup::new();
    let pod = top.nested("kubepods/burstable/node/pod-a");
    let known = pod.child("ctr-known");
    let sibling = top.nested("kubepods/burstable/node/pod-b/ctr");
    let list = entries(Kind::Ip, 10);
    let files = policy_files(Kind::Ip, &list);
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let agent = AgentRun::start(&ctx.topo, &[(&pod, &[][..])], &refs, "");
    let fresh = pod.child("ctr-new");
    for (variant, child) in [(Variant::DeepKnown, &known), (Variant::DeepNew, &fresh)] {
        for v6 in [false, true] {
            let before = in_cgroups_map(agent.bpffs(), child);
            let site = Site {
                client: child.path(),
                baseline: sibling.path(),
                attached: pod.path(),
            };
            let case = Case {
                backend: Backend::Passthrough,
                variant,
                kind: Some(Kind::Ip),
                entries: 10,
                v6,
                allowed: true,
            };
            let row = ctx.row(case, &site);
            let after = in_cgroups_map(agent.bpffs(), child);
            // With no `CGROUPS` entry, a `CALLERS` miss walks the ancestors.
            row.workload_lookup = Some(match (before, after) {
                (true, true) => "CGROUPS entry",
                (false, false) => "no CGROUPS entry: walk on a cache miss",
                _ => "CGROUPS entry written during the row",
            });
        }
    }
    drop(agent);
}

pub fn run(quick: bool, profile: bool, out_dir: &Path) -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the benchmark loads eBPF programs and creates namespaces: run it as root");
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let sizes: &[usize] = if quick {
        &[10, 10_000]
    } else {
        &[10, 10_000, 1_000_000]
    };
    let count = if quick { 4000 } else { 20_000 };
    // Held for the whole run: the kernel counts run time only while a holder exists.
    let _stats = if profile {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(e) => {
                eprintln!("BPF_ENABLE_STATS: {e} (needs Linux 5.8 and CAP_SYS_ADMIN)");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let topo = Topology::new();
    let hosts: Vec<SocketAddr> = [ALLOWED_V4, ALLOWED_V6, DENIED_V4, DENIED_V6]
        .iter()
        .map(|s| s.parse().expect("addr"))
        .collect();
    let _servers = topo.sink(&hosts);
    let mut ctx = Ctx {
        topo,
        count,
        profile,
        rows: Vec::new(),
    };
    let mut applies = Vec::new();
    // The unfiltered sibling every row is paired against.
    let plain = TestCgroup::new();

    // The noise floor of the pairing (no program on either side), then the floor of any
    // cgroup program (one that only returns "allow"): both allowed families, no entries.
    let other = TestCgroup::new();
    let site = Site {
        client: other.path(),
        baseline: plain.path(),
        attached: other.path(),
    };
    let floor = |ctx: &mut Ctx, backend: Backend| {
        for v6 in [false, true] {
            let case = Case {
                backend,
                variant: Variant::Plain,
                kind: None,
                entries: 0,
                v6,
                allowed: true,
            };
            ctx.row(case, &site);
        }
    };
    floor(&mut ctx, Backend::NoProgram);
    match EmptyProgram::attach(other.path()) {
        Ok(empty) => {
            floor(&mut ctx, Backend::EmptyProgram);
            drop(empty);
        }
        Err(e) => eprintln!("the empty program did not load: {e}"),
    }
    drop(other);

    deep_rows(&mut ctx);

    for &kind in &[Kind::Ip, Kind::Cidr] {
        for &n in sizes {
            let list = entries(kind, n);
            // passthrough
            let cg = TestCgroup::new();
            let files = policy_files(kind, &list);
            let refs: Vec<(&str, &str)> = files
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            let t0 = Instant::now();
            let agent = AgentRun::start(&ctx.topo, &[(&cg, &[][..])], &refs, "");
            let apply = t0.elapsed();
            let memlock = agent.kernel_maps_bytes();
            let site = Site {
                client: cg.path(),
                baseline: plain.path(),
                attached: cg.path(),
            };
            ctx.four(Backend::Passthrough, kind, n, &site);
            // Stopped before the next agent starts: both would serve the same admin port,
            // and the next one's readiness would be this one's.
            drop(agent);
            drop(cg);
            if n == sizes[0] {
                flows_off_rows(&mut ctx, kind, n, &refs, plain.path());
            }
            // nftables (its cost is not what --profile looks at)
            let mut nft_load_ms = None;
            if !profile {
                let cg = TestCgroup::new();
                let ruleset = nft::ruleset(kind, &list, cg.path());
                let t0 = Instant::now();
                match nft::nft(&ctx.topo, &[], Some(&ruleset)) {
                    Ok(()) => {
                        nft_load_ms = Some(t0.elapsed().as_millis());
                        let site = Site {
                            client: cg.path(),
                            baseline: plain.path(),
                            attached: cg.path(),
                        };
                        ctx.four(Backend::Nftables, kind, n, &site);
                    }
                    Err(e) => eprintln!(
                        "nftables with {n} {} entries did not load: {e}",
                        kind.name()
                    ),
                }
                nft::flush(&ctx.topo);
            }
            eprintln!(
                "{} x{n}: passthrough applied in {} ms ({} KiB of maps), nftables loaded in {} ms; {} s so far",
                kind.name(),
                apply.as_millis(),
                memlock / 1024,
                nft_load_ms.map_or_else(|| "-".into(), |m| m.to_string()),
                started.elapsed().as_secs()
            );
            applies.push(Apply {
                kind: kind.name(),
                entries_per_family: n,
                passthrough_apply_ms: apply.as_millis(),
                passthrough_map_memlock_bytes: memlock,
                nft_load_ms,
            });
        }
    }

    let name = if profile { "profile" } else { "connect" };
    if let Err(e) = write_results(
        out_dir,
        name,
        &ctx.rows,
        &applies,
        quick,
        started.elapsed().as_secs(),
    ) {
        eprintln!("writing results: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn pct(m: &Metric) -> String {
    if m.overhead_pct.is_nan() {
        String::new()
    } else {
        format!("{:+.1} % ±{:.1}", m.overhead_pct, m.noise_pct)
    }
}

fn write_results(
    dir: &Path,
    name: &str,
    rows: &[Row],
    applies: &[Apply],
    quick: bool,
    seconds: u64,
) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let json = serde_json::json!({
        "kernel": kernel.trim(),
        "cpus": cpus,
        "quick": quick,
        "batch": BATCH,
        "seconds": seconds,
        "connect": rows,
        "apply": applies,
    });
    let json_path: PathBuf = dir.join(format!("{name}.json"));
    fs::write(
        &json_path,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# connect() latency{}\n\nKernel {}, {cpus} CPUs, {seconds} s{}. Each row: {} connect() calls from a process in the workload cgroup to a test host over a veth, and as many from an unfiltered sibling cgroup, interleaved in batches of {BATCH}. Two metrics: **syscall**, the non-blocking `connect()` call alone (it returns once the SYN is queued, so it is what the hooks cost), and **handshake**, `socket()` until the connection is established or refused. Overhead: the median over adjacent batch pairs of (batch median / sibling batch median - 1); ± is the half-width of its ~95 % interval (1.58 IQR / sqrt(pairs)), the run's noise. Denied rows are paired with allowed connects from the sibling, so a negative figure means refusing is cheaper than connecting.\n",
        if name == "profile" {
            " (profile: kernel.bpf_stats_enabled on)"
        } else {
            ""
        },
        kernel.trim(),
        if quick { ", --quick" } else { "" },
        rows.first().map_or(0, |r| r.samples)
    );
    md.push_str("| backend | variant | kind | entries/family | family | path | outcome | syscall median µs | syscall overhead | handshake median µs | handshake overhead |");
    let profiled = rows.iter().any(|r| r.program_ns_per_run.is_some());
    md.push_str(if profiled {
        " program ns/run |\n|---|---|---|---:|---|---|---|---:|---:|---:|---:|---:|\n"
    } else {
        "\n|---|---|---|---:|---|---|---|---:|---:|---:|---:|\n"
    });
    for r in rows {
        let variant = match r.workload_lookup {
            Some(l) => format!("{} ({l})", r.variant),
            None => r.variant.to_string(),
        };
        let _ = write!(
            md,
            "| {} | {variant} | {} | {} | {} | {} | {} | {:.2} | {} | {:.1} | {} |",
            r.backend,
            r.kind,
            r.entries,
            r.family,
            r.path,
            r.outcome,
            r.syscall.median_ns as f64 / 1000.0,
            pct(&r.syscall),
            r.handshake.median_ns as f64 / 1000.0,
            pct(&r.handshake),
        );
        if profiled {
            let _ = write!(
                md,
                " {} |",
                r.program_ns_per_run
                    .map_or_else(String::new, |n| format!("{n:.0}"))
            );
        }
        md.push('\n');
    }
    md.push_str("\n# Applying the entries\n\n| kind | entries/family | passthrough: files to enforced (ms) | BPF map memory (KiB) | nftables load, one `nft -f` (ms) |\n|---|---:|---:|---:|---:|\n");
    for a in applies {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            a.kind,
            a.entries_per_family,
            a.passthrough_apply_ms,
            a.passthrough_map_memlock_bytes / 1024,
            a.nft_load_ms
                .map_or_else(|| "not run".to_string(), |m| m.to_string())
        );
    }
    let md_path = dir.join(format!("{name}.md"));
    let mut f = fs::File::create(&md_path)?;
    f.write_all(md.as_bytes())?;
    eprintln!("wrote {} and {}", md_path.display(), json_path.display());
    Ok(())
}

/// The allowed rows of `kind` at `n` entries again, from an agent with the flow table off.
fn flows_off_rows(
    ctx: &mut Ctx,
    kind: Kind,
    n: usize,
    policies: &[(&str, &str)],
    baseline: &std::path::Path,
) {
    let cg = TestCgroup::new();
    let agent = AgentRun::start(
        &ctx.topo,
        &[(&cg, &[][..])],
        policies,
        "flows: {enabled: false}\n",
    );
    let site = Site {
        client: cg.path(),
        baseline,
        attached: cg.path(),
    };
    for v6 in [false, true] {
        let case = Case {
            backend: Backend::Passthrough,
            variant: Variant::FlowsOff,
            kind: Some(kind),
            entries: n,
            v6,
            allowed: true,
        };
        ctx.row(case, &site);
    }
    drop(agent);
}
