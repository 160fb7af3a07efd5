//! `bench connect`: connect() latency from a workload cgroup to a test host, with
//! no program, with passthrough, and with the same entries as an nftables ruleset matched on
//! the workload's cgroup, for 10, 10 000 and 1 000 000 IP and CIDR entries, allowed and
//! denied, IPv4 and IPv6. Also the time to compile and apply the entries and the kernel memory
//! the maps take. Writes `bench/results/connect.json` and `connect.md`.
//!
//! `bench client ...` is the measuring process: the parent re-executes itself so the client
//! sits in the workload cgroup and the client network namespace.

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use passthrough_tests::{TestCgroup, Topology, agent::AgentRun, cgroup2_root};

const ALLOWED_V4: &str = "198.51.100.10:80";
const DENIED_V4: &str = "203.0.113.10:80";
const ALLOWED_V6: &str = "[2001:db8:1::10]:80";
const DENIED_V6: &str = "[2001:db8:2::20]:80";
/// Entries per policy file, to stay under the 4 MiB policy file limit.
const PER_FILE: usize = 40_000;

// ---------------------------------------------------------------------------------------
// the measuring client

/// Connects timed in one cgroup before the client moves to the other.
const BATCH: usize = 20;

/// `client CGROUP BASELINE NETNS DEST COUNT`: enters the netns, then times COUNT connect()
/// calls (after COUNT/10 unmeasured ones) in batches of [`BATCH`], alternately from CGROUP
/// and, unless BASELINE is `-`, from the BASELINE cgroup (which has no program), so both see
/// the same machine state. Prints the outcome in CGROUP, then `w BATCH NS` and `b BATCH NS`
/// lines.
pub fn client(args: &[String]) -> ExitCode {
    let [cgroup, baseline, netns, dest, count] = args else {
        eprintln!("usage: bench client CGROUP BASELINE NETNS DEST COUNT");
        return ExitCode::from(2);
    };
    let baseline = (baseline != "-").then_some(baseline);
    let count: usize = count.parse().unwrap_or(1000);
    let dest: SocketAddr = match dest.parse() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{dest}: {e}");
            return ExitCode::from(2);
        }
    };
    let join = |cg: &str| {
        fs::write(Path::new(cg).join("cgroup.procs"), b"0")
            .map_err(|e| eprintln!("joining {cg}: {e}"))
            .is_ok()
    };
    if !join(cgroup) || crate::enter_netns(netns).is_err() {
        return ExitCode::from(2);
    }
    // One CPU for the whole run: a migration mid-run would split the sample in two modes.
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
    let mut out = String::new();
    let mut outcome = "connected";
    let mut in_baseline = false;
    let total = if baseline.is_some() { 2 * count } else { count };
    for i in 0..total + total / 10 {
        if let Some(b) = baseline
            && i % BATCH == 0
        {
            in_baseline = !in_baseline;
            if !join(if in_baseline { b } else { cgroup }) {
                return ExitCode::from(2);
            }
        }
        let t0 = Instant::now();
        let r = TcpStream::connect_timeout(&dest, Duration::from_secs(2));
        let ns = t0.elapsed().as_nanos();
        match r {
            Ok(s) => {
                // RST instead of FIN: no TIME_WAIT, so ports never run out.
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: setsockopt with a valid fd and a correctly sized option value.
                unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&raw const linger).cast(),
                        size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
            }
            Err(e) if in_baseline => {
                eprintln!("connect {dest} with no program: {e}");
                return ExitCode::from(1);
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => outcome = "EPERM",
            // nftables' `reject with tcp reset` answers the SYN with a reset.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => outcome = "ECONNREFUSED",
            Err(e) => {
                eprintln!("connect {dest}: {e}");
                return ExitCode::from(1);
            }
        }
        if i >= total / 10 {
            let side = if in_baseline { 'b' } else { 'w' };
            let _ = writeln!(out, "{side} {} {ns}", i / BATCH);
        }
    }
    println!("{outcome}");
    print!("{out}");
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------
// the benchmark

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
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

/// The same entries as an nftables ruleset on the workload's cgroup.
fn nft_ruleset(entries: &[(bool, String)], cgroup: &Path) -> String {
    let root = Path::new("/sys/fs/cgroup");
    // nft resolves cgroupv2 paths below /sys/fs/cgroup (also on hybrid hosts) and needs the
    // cgroup's level in the v2 hierarchy.
    let rel = cgroup.strip_prefix(root).unwrap_or(cgroup);
    let level = cgroup
        .strip_prefix(cgroup2_root())
        .map(|p| p.components().count())
        .unwrap_or(1);
    let mut s = String::from(
        "table inet ptbench {\n  set allow4 { type ipv4_addr . inet_service; flags interval; }\n  set allow6 { type ipv6_addr . inet_service; flags interval; }\n",
    );
    let _ = write!(
        s,
        "  chain out {{\n    type filter hook output priority 0; policy accept;\n    socket cgroupv2 level {level} \"{}\" jump workload\n  }}\n  chain workload {{\n    ip daddr . tcp dport @allow4 accept\n    ip6 daddr . tcp dport @allow6 accept\n    meta l4proto tcp reject with tcp reset\n  }}\n}}\n",
        rel.display()
    );
    for (v6, chunk) in [false, true].iter().flat_map(|v6| {
        let list: Vec<&String> = entries
            .iter()
            .filter(|e| e.0 == *v6)
            .map(|e| &e.1)
            .collect();
        list.chunks(10_000)
            .map(|c| (*v6, c.to_vec()))
            .collect::<Vec<_>>()
    }) {
        let set = if v6 { "allow6" } else { "allow4" };
        let items: Vec<String> = chunk.iter().map(|e| format!("{e} . 80")).collect();
        let _ = writeln!(
            s,
            "add element inet ptbench {set} {{ {} }}",
            items.join(", ")
        );
    }
    s
}

#[derive(serde::Serialize, Clone)]
struct Row {
    backend: &'static str,
    kind: &'static str,
    entries: usize,
    family: &'static str,
    path: &'static str,
    outcome: String,
    median_ns: u64,
    p99_ns: u64,
    samples: usize,
    /// Median of the connects interleaved with these from a cgroup with no program.
    baseline_median_ns: Option<u64>,
    /// Median over adjacent batch pairs of (batch median / baseline batch median - 1):
    /// robust to the machine changing speed during the run.
    overhead_pct: Option<f64>,
}

/// Median and 99th percentile of a sample.
fn stats(mut ns: Vec<u64>) -> Option<(u64, u64)> {
    if ns.is_empty() {
        return None;
    }
    ns.sort_unstable();
    Some((
        ns[ns.len() / 2],
        ns[(ns.len() * 99 / 100).min(ns.len() - 1)],
    ))
}

struct Ctx {
    topo: Topology,
    count: usize,
    rows: Vec<Row>,
    /// A cgroup with no program, for the interleaved baseline.
    plain: TestCgroup,
}

struct Measured {
    outcome: String,
    median_ns: u64,
    p99_ns: u64,
    baseline_median_ns: Option<u64>,
    overhead_pct: Option<f64>,
}

/// The paired overhead estimate of [`Row::overhead_pct`], from `(side, batch, ns)` samples.
fn paired_overhead(samples: &[(bool, usize, u64)]) -> Option<f64> {
    let mut batches: std::collections::BTreeMap<usize, (bool, Vec<u64>)> = Default::default();
    for &(baseline, batch, ns) in samples {
        batches
            .entry(batch)
            .or_insert((baseline, Vec::new()))
            .1
            .push(ns);
    }
    let medians: Vec<(bool, u64)> = batches
        .into_values()
        .filter_map(|(b, ns)| stats(ns).map(|(m, _)| (b, m)))
        .collect();
    let mut ratios: Vec<f64> = medians
        .windows(2)
        .filter(|w| w[0].0 != w[1].0)
        .map(|w| {
            let (prog, base) = if w[0].0 {
                (w[1].1, w[0].1)
            } else {
                (w[0].1, w[1].1)
            };
            prog as f64 / base as f64 - 1.0
        })
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    Some(ratios[ratios.len() / 2] * 100.0)
}

impl Ctx {
    fn measure(&mut self, cg: &TestCgroup, dest: &str, paired: bool) -> Measured {
        let out = Command::new(std::env::current_exe().expect("exe"))
            .args(["client"])
            .arg(cg.path())
            .arg(if paired {
                self.plain.path().as_os_str()
            } else {
                "-".as_ref()
            })
            .arg(self.topo.client_netns_path())
            .args([dest, &self.count.to_string()])
            .output()
            .expect("client");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let outcome = lines.next().unwrap_or("error").to_string();
        let (mut w, mut b, mut all) = (Vec::new(), Vec::new(), Vec::new());
        for l in lines {
            let mut f = l.split(' ');
            let (Some(side), Some(Ok(batch)), Some(Ok(ns))) = (
                f.next(),
                f.next().map(str::parse::<usize>),
                f.next().map(str::parse::<u64>),
            ) else {
                continue;
            };
            if side == "b" { &mut b } else { &mut w }.push(ns);
            all.push((side == "b", batch, ns));
        }
        match stats(w) {
            Some((median_ns, p99_ns)) if out.status.success() => Measured {
                outcome,
                median_ns,
                p99_ns,
                baseline_median_ns: stats(b).map(|(m, _)| m),
                overhead_pct: paired_overhead(&all),
            },
            _ => Measured {
                outcome: format!("error: {}", String::from_utf8_lossy(&out.stderr).trim()),
                median_ns: 0,
                p99_ns: 0,
                baseline_median_ns: None,
                overhead_pct: None,
            },
        }
    }

    #[allow(clippy::too_many_arguments, reason = "one row of the results table")]
    fn row(
        &mut self,
        cg: &TestCgroup,
        backend: &'static str,
        kind: &'static str,
        entries: usize,
        v6: bool,
        allowed: bool,
    ) {
        let dest = match (v6, allowed) {
            (false, true) => ALLOWED_V4,
            (false, false) => DENIED_V4,
            (true, true) => ALLOWED_V6,
            (true, false) => DENIED_V6,
        };
        // An allowed connect is compared with the same connect from a cgroup with no
        // program, interleaved in one run; a denied one never reaches the network.
        let m = self.measure(cg, dest, allowed && backend != "no program");
        let row = Row {
            backend,
            kind,
            entries,
            family: if v6 { "IPv6" } else { "IPv4" },
            path: if allowed { "allowed" } else { "denied" },
            outcome: m.outcome,
            median_ns: m.median_ns,
            p99_ns: m.p99_ns,
            samples: self.count,
            baseline_median_ns: m.baseline_median_ns,
            overhead_pct: m.overhead_pct,
        };
        eprintln!(
            "{:<12} {:<5} {:>9} {:<5} {:<8} {:<13} median {:>7.1} µs  p99 {:>7.1} µs  {}",
            row.backend,
            row.kind,
            row.entries,
            row.family,
            row.path,
            row.outcome,
            row.median_ns as f64 / 1000.0,
            row.p99_ns as f64 / 1000.0,
            row.vs_baseline()
        );
        self.rows.push(row);
    }
}

impl Row {
    /// The interleaved baseline's median and the paired overhead, when the row has them.
    fn vs_baseline(&self) -> String {
        match (self.baseline_median_ns, self.overhead_pct) {
            (Some(b), Some(o)) => format!("{:.1} µs, {o:+.1} %", b as f64 / 1000.0),
            _ => String::new(),
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

/// Kernel memory charged to the pinned maps (fdinfo `memlock`).
fn maps_memlock(bpffs: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(passthrough::agent::loader::maps_dir(bpffs))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(md) = aya::maps::MapData::from_pin(e.path()) else {
            continue;
        };
        let fd = md.fd().as_fd().as_raw_fd();
        let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

fn nft(topo: &Topology, args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", topo.client_netns_path().display()))
        .arg("nft")
        .args(args);
    if let Some(text) = stdin {
        let file = std::env::temp_dir().join(format!("ptbench-{}.nft", std::process::id()));
        fs::write(&file, text).map_err(|e| e.to_string())?;
        cmd.args(["-f"]).arg(&file);
        let out = cmd.output().map_err(|e| e.to_string());
        let _ = fs::remove_file(&file);
        let out = out?;
        return if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        };
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn run(quick: bool, out_dir: &Path) -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the benchmark loads eBPF programs and creates namespaces: run it as root");
        return ExitCode::from(2);
    }
    let sizes: &[usize] = if quick {
        &[10, 10_000]
    } else {
        &[10, 10_000, 1_000_000]
    };
    let count = if quick { 5000 } else { 20_000 };
    let topo = Topology::new();
    let hosts: Vec<SocketAddr> = [ALLOWED_V4, ALLOWED_V6]
        .iter()
        .map(|s| s.parse().expect("addr"))
        .collect();
    let _servers = topo.sink(&hosts);
    let mut ctx = Ctx {
        topo,
        count,
        rows: Vec::new(),
        plain: TestCgroup::new(),
    };
    let mut applies = Vec::new();

    // Baseline: no program on the cgroup.
    let plain = TestCgroup::new();
    for v6 in [false, true] {
        ctx.row(&plain, "no program", "-", 0, v6, true);
    }

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
            let memlock = maps_memlock(agent.bpffs());
            for v6 in [false, true] {
                for allowed in [true, false] {
                    ctx.row(&cg, "passthrough", kind.name(), n, v6, allowed);
                }
            }
            drop(agent);
            drop(cg);
            if n == sizes[0] {
                flows_off_rows(&mut ctx, kind, n, &refs);
            }
            // nftables
            let cg = TestCgroup::new();
            let ruleset = nft_ruleset(&list, cg.path());
            let t0 = Instant::now();
            let loaded = nft(&ctx.topo, &[], Some(&ruleset));
            let nft_ms = t0.elapsed();
            let nft_load_ms = match loaded {
                Ok(()) => {
                    for v6 in [false, true] {
                        for allowed in [true, false] {
                            ctx.row(&cg, "nftables", kind.name(), n, v6, allowed);
                        }
                    }
                    Some(nft_ms.as_millis())
                }
                Err(e) => {
                    eprintln!(
                        "nftables with {n} {} entries did not load: {e}",
                        kind.name()
                    );
                    None
                }
            };
            let _ = nft(&ctx.topo, &["delete", "table", "inet", "ptbench"], None);
            eprintln!(
                "{} x{n}: passthrough applied in {} ms ({} KiB of maps), nftables loaded in {} ms",
                kind.name(),
                apply.as_millis(),
                memlock / 1024,
                nft_ms.as_millis()
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

    if let Err(e) = write_results(out_dir, &ctx.rows, &applies, quick) {
        eprintln!("writing results: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The allowed path again with the flow table off (`flows.enabled: false`): beside the
/// `passthrough` rows (the table on, the default), each paired with the same no-program
/// baseline in its own run, the difference of the two overheads is the table's cost.
fn flows_off_rows(ctx: &mut Ctx, kind: Kind, n: usize, policies: &[(&str, &str)]) {
    let cg = TestCgroup::new();
    let agent = AgentRun::start(
        &ctx.topo,
        &[(&cg, &[][..])],
        policies,
        "flows: {enabled: false}\n",
    );
    for v6 in [false, true] {
        ctx.row(&cg, "passthrough, flows off", kind.name(), n, v6, true);
    }
    drop(agent);
}

fn write_results(dir: &Path, rows: &[Row], applies: &[Apply], quick: bool) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let json = serde_json::json!({
        "kernel": kernel.trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "quick": quick,
        "connect": rows,
        "apply": applies,
    });
    fs::write(
        dir.join("connect.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# connect() latency\n\nKernel {}, {} CPUs. Each row: {} connect() calls from a process in the workload cgroup to a test host over a veth (allowed) or refused (denied); median and p99 in µs. For an allowed row the same process also makes as many connects from a cgroup with no program, interleaved in batches of {BATCH}, so the overhead column compares like with like. `passthrough` rows record every connect in the flow table (the default); `passthrough, flows off` rows are the same policy with `flows.enabled: false`: the difference of their overheads is the flow table's cost on the allowed path.\n",
        kernel.trim(),
        json["cpus"],
        rows.first().map_or(0, |r| r.samples)
    );
    md.push_str("| backend | kind | entries/family | family | path | outcome | median µs | p99 µs | no program, same run: median µs, overhead |\n|---|---|---:|---|---|---|---:|---:|---|\n");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} |",
            r.backend,
            r.kind,
            r.entries,
            r.family,
            r.path,
            r.outcome,
            r.median_ns as f64 / 1000.0,
            r.p99_ns as f64 / 1000.0,
            r.vs_baseline()
        );
    }
    md.push_str("\n# Applying the entries\n\n| kind | entries/family | passthrough: files to enforced (ms) | BPF map memory (KiB) | nftables load (ms) |\n|---|---:|---:|---:|---:|\n");
    for a in applies {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            a.kind,
            a.entries_per_family,
            a.passthrough_apply_ms,
            a.passthrough_map_memlock_bytes / 1024,
            a.nft_load_ms
                .map_or_else(|| "did not load".to_string(), |m| m.to_string())
        );
    }
    let mut f = fs::File::create(dir.join("connect.md"))?;
    f.write_all(md.as_bytes())?;
    eprintln!("wrote {}", dir.join("connect.md").display());
    Ok(())
}
