//! `bench reload`: the agent's core under a large policy. One workload, IP entries for both
//! families in files of 20 000 (as a generated allow-list is split), a Domain entry served
//! by the peek proxy, and a TLS client connecting through the proxy every 20 ms:
//!
//! - from start to ready and enforced, the agent's memory, the kernel memory of the maps
//!   (also with a 10-entry policy);
//! - one entry changed, several times in a row (the entry of one change replaced by the
//!   next one's): the time until the kernel enforces each, the proxied connection setup
//!   latency meanwhile against idle (over as many samples as the idle window has), and how
//!   long `/ready` takes to answer meanwhile;
//! - SIGTERM in the middle of a reconcile: the time until the agent has exited.
//!
//! Writes `bench/results/reload.json` and `reload.md`.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use passthrough_tests::{
    ProbeOptions, ServerGuard, TestCgroup, Topology,
    agent::{ADMIN, AgentRun, sa},
    client_hello, run_in_netns, to_hex,
};

const PER_FILE: usize = 20_000;
/// Reached through the proxy, by name.
const TLS_HOST: &str = "203.0.113.10:443";
/// Listed at start, as the last entry of the last IPv4 file (the IP entries are on a port
/// without a Domain entry, so that what is not listed is refused in the kernel).
const LISTED: &str = "198.51.100.11:8443";
/// Added by change `k`, on port `ADDED_PORT + k`; change `k` removes the entry of `k - 1`.
const ADDED_IP: &str = "203.0.113.20";
const ADDED_PORT: u16 = 8443;

fn added(k: usize) -> SocketAddr {
    SocketAddr::new(sa(&format!("{ADDED_IP}:0")).ip(), ADDED_PORT + k as u16)
}

const DOMAIN_POLICY: &str = "type: MeshPassthrough
name: bench-domain
spec:
  default:
    passthroughMode: Matched
    appendMatch:
      - {type: Domain, value: tls.example, port: 443, protocol: tls}
";

const CONFIG: &str = "proxy: {listen: [127.0.0.1:15001, \"[::1]:15001\"], domainCheck: Trust}\n";

/// The IP entries of file `file` of a family, `first` replacing its first entry and `last`
/// its last one.
fn policy_file(
    v6: bool,
    file: usize,
    first: Option<SocketAddr>,
    last: Option<&str>,
    entries: usize,
) -> String {
    let family = if v6 { "v6" } else { "v4" };
    let mut s = format!(
        "type: MeshPassthrough\nname: bench-{family}-{file:03}\nspec:\n  default:\n    passthroughMode: Matched\n    appendMatch:\n"
    );
    for i in 0..entries {
        let n = (file * PER_FILE + i) as u128;
        let mut port = 8443;
        let value = match (i, first, last) {
            (0, Some(dest), _) => {
                port = dest.port();
                dest.ip().to_string()
            }
            (i, _, Some(ip)) if i == entries - 1 => ip.to_string(),
            _ if v6 => {
                std::net::Ipv6Addr::from((0x2001_0db8_u128 << 96) | (7 << 80) | n).to_string()
            }
            _ => std::net::Ipv4Addr::from(0x0a00_0000_u32 + n as u32).to_string(),
        };
        let _ = writeln!(s, "      - {{type: IP, value: \"{value}\", port: {port}}}");
    }
    s
}

fn big_policy(per_family: usize) -> Vec<(String, String)> {
    let files = per_family / PER_FILE;
    let mut out = vec![("bench-domain.yaml".to_string(), DOMAIN_POLICY.to_string())];
    for v6 in [false, true] {
        for f in 0..files {
            let last = (!v6 && f == files - 1).then(|| LISTED.split(':').next().unwrap_or(""));
            let family = if v6 { "v6" } else { "v4" };
            out.push((
                format!("bench-{family}-{f:03}.yaml"),
                policy_file(v6, f, None, last, PER_FILE),
            ));
        }
    }
    out
}

/// `reload-client CGROUP NETNS DEST PAYLOAD_HEX MILLIS INTERVAL_MS`: for MILLIS, every
/// INTERVAL_MS: connect, send PAYLOAD, read the first byte of the answer. Prints one line per
/// attempt: the start offset and the setup time in nanoseconds, or the offset and `error`.
pub fn client(args: &[String]) -> ExitCode {
    let [cgroup, netns, dest, payload, millis, interval] = args else {
        eprintln!("usage: bench reload-client CGROUP NETNS DEST PAYLOAD_HEX MILLIS INTERVAL_MS");
        return ExitCode::from(2);
    };
    let (Ok(dest), Some(payload), Ok(millis), Ok(interval)) = (
        dest.parse::<SocketAddr>(),
        passthrough_tests::from_hex(payload),
        millis.parse::<u64>(),
        interval.parse::<u64>(),
    ) else {
        eprintln!("bench reload-client: bad arguments");
        return ExitCode::from(2);
    };
    if crate::enter(cgroup, netns).is_err() {
        return ExitCode::from(2);
    }
    let start = Instant::now();
    let mut out = String::new();
    let mut first = [0u8; 1];
    while start.elapsed() < Duration::from_millis(millis) {
        let at = start.elapsed().as_nanos();
        let t0 = Instant::now();
        let result =
            TcpStream::connect_timeout(&dest, Duration::from_secs(15)).and_then(|mut s| {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(15)))?;
                s.write_all(&payload)?;
                s.read_exact(&mut first)
            });
        match result {
            Ok(()) => {
                let _ = writeln!(out, "{at} {}", t0.elapsed().as_nanos());
            }
            Err(_) => {
                let _ = writeln!(out, "{at} error");
            }
        }
        std::thread::sleep(Duration::from_millis(interval));
    }
    print!("{out}");
    ExitCode::SUCCESS
}

/// `reload-waiter CGROUP NETNS DEST...`: from inside the workload, tells when each `DEST`
/// becomes allowed. Says `ready` once in place; then, for each `DEST` in turn, waits for a
/// line on stdin (its change was written), tries it every 5 ms and prints the
/// CLOCK_MONOTONIC nanoseconds of the first connection that succeeds (or `timeout` after
/// 60 s). One process for the whole run: a probe started per attempt would load the machine
/// the changes are measured on.
pub fn waiter(args: &[String]) -> ExitCode {
    let [cgroup, netns, dests @ ..] = args else {
        eprintln!("usage: bench reload-waiter CGROUP NETNS DEST...");
        return ExitCode::from(2);
    };
    let Ok(dests) = dests
        .iter()
        .map(|d| d.parse::<SocketAddr>())
        .collect::<Result<Vec<_>, _>>()
    else {
        eprintln!("bench reload-waiter: bad addresses {dests:?}");
        return ExitCode::from(2);
    };
    if crate::enter(cgroup, netns).is_err() {
        return ExitCode::from(2);
    }
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "ready");
    let _ = stdout.flush();
    'dests: for dest in dests {
        let mut go = String::new();
        if std::io::stdin().read_line(&mut go).map_or(true, |n| n == 0) {
            return ExitCode::from(2);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if TcpStream::connect_timeout(&dest, Duration::from_secs(1)).is_ok() {
                let _ = writeln!(stdout, "{}", crate::mono_ns());
                let _ = stdout.flush();
                continue 'dests;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = writeln!(stdout, "timeout");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Percentile `p` (0..=100) of sorted nanoseconds, in milliseconds.
fn percentile_ms(sorted: &[u64], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted[i.min(sorted.len() - 1)] as f64 / 1e6
}

#[derive(serde::Serialize, Default)]
struct Window {
    samples: usize,
    errors: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// The samples that started inside any of `ranges` (nanoseconds from the client's start,
/// end excluded).
fn window(samples: &[(u64, Option<u64>)], ranges: &[(u64, u64)]) -> Window {
    let inside: Vec<Option<u64>> = samples
        .iter()
        .filter(|(at, _)| ranges.iter().any(|&(from, to)| *at >= from && *at < to))
        .map(|(_, l)| *l)
        .collect();
    let mut ok: Vec<u64> = inside.iter().flatten().copied().collect();
    ok.sort_unstable();
    Window {
        samples: inside.len(),
        errors: inside.iter().filter(|l| l.is_none()).count(),
        p50_ms: percentile_ms(&ok, 50),
        p99_ms: percentile_ms(&ok, 99),
        max_ms: ok.last().map_or(f64::NAN, |n| *n as f64 / 1e6),
    }
}

#[derive(serde::Serialize, Default)]
struct Results {
    entries_per_family: usize,
    files: usize,
    start_to_ready_ms: u128,
    start_to_enforced_ms: u128,
    agent_rss_mib: f64,
    agent_peak_rss_mib: f64,
    kernel_maps_mib: f64,
    kernel_maps_mib_at_10_entries: f64,
    changes: usize,
    /// The median over the changes.
    change_enforced_ms: u128,
    change_enforced_ms_max: u128,
    change_enforced_ms_each: Vec<u128>,
    proxy_idle: Window,
    proxy_during_change: Window,
    ready_max_ms_during_change: f64,
    ready_answers_during_change: usize,
    sigterm_exit_ms: u128,
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if cond() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn run(quick: bool, out_dir: &Path) -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the benchmark loads eBPF programs and creates namespaces: run it as root");
        return ExitCode::from(2);
    }
    let per_family = if quick { 100_000 } else { 1_000_000 };
    let topo = Topology::new();
    let changes = if quick { 3 } else { 8 };
    let hosts: Vec<SocketAddr> = [sa(TLS_HOST), sa(LISTED)]
        .into_iter()
        .chain((0..changes).map(added))
        .collect();
    let _hosts: ServerGuard = topo.echo(&hosts);
    let workload = TestCgroup::new();
    let mut r = Results {
        entries_per_family: per_family,
        changes,
        files: 2 * per_family / PER_FILE,
        ..Results::default()
    };
    let probe = |dest: &str| topo.connect(Some(&workload), sa(dest), &ProbeOptions::default());

    // The floor: the same agent with a 10-entry policy.
    {
        let small = [
            ("bench-domain.yaml".to_string(), DOMAIN_POLICY.to_string()),
            (
                "small.yaml".to_string(),
                policy_file(false, 0, None, None, 9),
            ),
        ];
        let refs: Vec<(&str, &str)> = small
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        let agent = AgentRun::start(&topo, &[(&workload, &[][..])], &refs, CONFIG);
        r.kernel_maps_mib_at_10_entries = mib(agent.kernel_maps_bytes());
    }

    eprintln!("bench reload: writing {} files", r.files);
    let files = big_policy(per_family);
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let t0 = Instant::now();
    let mut agent = AgentRun::launch(None, &topo, &[(workload.path(), &[][..])], &refs, CONFIG);
    let ready = wait_for(Duration::from_secs(300), || agent.is_ready());
    r.start_to_ready_ms = t0.elapsed().as_millis();
    if ready.is_none() {
        eprintln!("bench reload: not ready in 300 s:\n{}", agent.log());
        return ExitCode::FAILURE;
    }
    if !probe(LISTED).is_connected() {
        eprintln!(
            "bench reload: {LISTED} is listed but not allowed:\n{}",
            agent.log()
        );
        return ExitCode::FAILURE;
    }
    r.start_to_enforced_ms = t0.elapsed().as_millis();
    let pid = agent.pid();
    r.agent_rss_mib = proc_status_kib(pid, "VmRSS:") as f64 / 1024.0;
    r.agent_peak_rss_mib = proc_status_kib(pid, "VmHWM:") as f64 / 1024.0;
    r.kernel_maps_mib = mib(agent.kernel_maps_bytes());
    if !probe(&added(0).to_string()).is_eperm() {
        eprintln!("bench reload: {} is allowed before the change", added(0));
        return ExitCode::FAILURE;
    }

    // The change, under load: the proxy client and a `/ready` poller run throughout.
    let idle = Duration::from_secs(3);
    let total = Duration::from_secs(if quick { 10 } else { 20 });
    let mut waiter = Command::new(std::env::current_exe().expect("own path"))
        .arg("reload-waiter")
        .arg(workload.path())
        .arg(topo.client_netns_path())
        .args((0..changes).map(|k| added(k).to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the waiter");
    let mut waiter_out = std::io::BufReader::new(waiter.stdout.take().expect("piped"));
    let mut line = String::new();
    if waiter_out.read_line(&mut line).is_err() || line.trim() != "ready" {
        eprintln!("bench reload: the waiter did not start: {line:?}");
        let _ = waiter.kill();
        let _ = waiter.wait();
        return ExitCode::FAILURE;
    }
    let client = Command::new(std::env::current_exe().expect("own path"))
        .arg("reload-client")
        .arg(workload.path())
        .arg(topo.client_netns_path())
        .arg(TLS_HOST)
        .arg(to_hex(&client_hello(Some("tls.example"), 200)))
        .arg(total.as_millis().to_string())
        .arg("20")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the proxy client");
    let client_start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let netns = topo.client_netns_path();
    let poller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            run_in_netns(&netns, move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let ok = passthrough::cli::agent::admin_get(sa(ADMIN), "/ready").is_ok();
                    answers.push((t, t.elapsed(), ok));
                    std::thread::sleep(Duration::from_millis(10));
                }
                answers
            })
        })
    };
    std::thread::sleep(idle);
    // Each change: the file rewritten with the next entry in place of the last one, then
    // the waiter told to wait for it. `(written at, enforced after)` per change.
    let mut enforced: Vec<(Instant, Duration)> = Vec::new();
    let mut stdin = waiter.stdin.take();
    for k in 0..changes {
        if k > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        let at = Instant::now();
        let at_mono = crate::mono_ns();
        agent.write_policy(
            "bench-v4-000.yaml",
            &policy_file(false, 0, Some(added(k)), None, PER_FILE),
        );
        let told = stdin.as_mut().is_some_and(|w| writeln!(w, "go").is_ok());
        line.clear();
        let read = told && waiter_out.read_line(&mut line).is_ok();
        match line.trim().parse::<u64>() {
            Ok(ns) if read => enforced.push((at, Duration::from_nanos(ns.saturating_sub(at_mono)))),
            _ => break,
        }
    }
    drop(stdin);
    let _ = waiter.wait();
    let out = client.wait_with_output().expect("proxy client");
    stop.store(true, Ordering::Relaxed);
    let answers = poller.join().expect("poller");
    let last = added(changes - 1);
    let first_removed = changes == 1 || probe(&added(0).to_string()).is_eperm();
    if enforced.len() < changes || !probe(&last.to_string()).is_connected() || !first_removed {
        eprintln!(
            "bench reload: {} of {changes} changes enforced in 60 s each (the last allowed, the first removed: {}):\n{}",
            enforced.len(),
            first_removed,
            agent.log()
        );
        return ExitCode::FAILURE;
    }
    let mut times: Vec<u128> = enforced.iter().map(|(_, d)| d.as_millis()).collect();
    r.change_enforced_ms_each = times.clone();
    times.sort_unstable();
    r.change_enforced_ms = times[times.len() / 2];
    r.change_enforced_ms_max = times[times.len() - 1];
    let samples: Vec<(u64, Option<u64>)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (at, lat) = l.split_once(' ')?;
            Some((at.parse().ok()?, lat.parse().ok()))
        })
        .collect();
    let ns = |i: Instant| i.saturating_duration_since(client_start).as_nanos() as u64;
    let during: Vec<(u64, u64)> = enforced
        .iter()
        .map(|&(at, d)| (ns(at), ns(at + d).max(ns(at) + 1)))
        .collect();
    r.proxy_idle = window(&samples, &[(0, during[0].0)]);
    r.proxy_during_change = window(&samples, &during);
    let inside = |t: Instant| enforced.iter().any(|&(at, d)| t >= at && t <= at + d);
    let during: Vec<&(Instant, Duration, bool)> =
        answers.iter().filter(|(t, _, _)| inside(*t)).collect();
    r.ready_answers_during_change = during.iter().filter(|(_, _, ok)| *ok).count();
    r.ready_max_ms_during_change = during
        .iter()
        .map(|(_, d, _)| d.as_secs_f64() * 1e3)
        .fold(0.0, f64::max);

    // SIGTERM while a reconcile runs: change a file, wait until the agent is reading it.
    agent.write_policy(
        "bench-v6-000.yaml",
        &policy_file(true, 0, Some(sa("[2001:db8:9::1]:8443")), None, PER_FILE),
    );
    std::thread::sleep(Duration::from_millis(400));
    let t = Instant::now();
    agent.signal(libc::SIGTERM);
    let exited = wait_for(Duration::from_secs(60), || !agent.is_running());
    r.sigterm_exit_ms = exited.map_or(u128::MAX, |_| t.elapsed().as_millis());
    // Where each reconcile's time went (logged at debug level: RUST_LOG=passthrough=debug).
    for line in agent.log().lines().filter(|l| l.contains("reconciled")) {
        eprintln!("bench reload: {line}");
    }
    drop(agent);

    match write_results(out_dir, &r, quick) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("writing results: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_results(dir: &Path, r: &Results, quick: bool) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let name = if quick { "reload-quick" } else { "reload" };
    fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(r).map_err(std::io::Error::other)? + "\n",
    )?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# bench reload\n\n`cargo xtask bench reload{}`: one workload, {} IP entries per family in {} files of {PER_FILE}, a Domain entry through the peek proxy, a TLS client through the proxy every 20 ms; {} one-entry changes in a row, each timed by a client in the workload until the kernel allows its entry. {} vCPUs.\n",
        if quick { " --quick" } else { "" },
        r.entries_per_family,
        r.files,
        r.changes,
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    );
    let w = |w: &Window| {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} connections, {} failed)",
            w.p50_ms, w.p99_ms, w.max_ms, w.samples, w.errors
        )
    };
    let rows = [
        ("start to ready", format!("{} ms", r.start_to_ready_ms)),
        (
            "start to enforced (a listed address connects)",
            format!("{} ms", r.start_to_enforced_ms),
        ),
        (
            "agent memory (RSS now / peak)",
            format!("{:.0} / {:.0} MiB", r.agent_rss_mib, r.agent_peak_rss_mib),
        ),
        (
            "kernel memory of the maps",
            format!("{:.1} MiB", r.kernel_maps_mib),
        ),
        (
            "kernel memory of the maps, 10-entry policy",
            format!("{:.1} MiB", r.kernel_maps_mib_at_10_entries),
        ),
        (
            "one entry changed: enforced after",
            format!(
                "median {} ms, max {} ms ({} changes)",
                r.change_enforced_ms, r.change_enforced_ms_max, r.changes
            ),
        ),
        ("proxied connection setup, idle", w(&r.proxy_idle)),
        (
            "proxied connection setup, during the changes",
            w(&r.proxy_during_change),
        ),
        (
            "`/ready` during the changes",
            format!(
                "{} answers, slowest {:.1} ms",
                r.ready_answers_during_change, r.ready_max_ms_during_change
            ),
        ),
        (
            "SIGTERM during a reconcile to exit",
            format!("{} ms", r.sigterm_exit_ms),
        ),
    ];
    let _ = writeln!(md, "| measure | result |\n|---|---|");
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    fs::write(dir.join(format!("{name}.md")), md)
}
