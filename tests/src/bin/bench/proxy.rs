//! `bench proxy`: what the peek proxy costs a connection whose name a Domain entry allows,
//! against the same connection made directly (no program) and through HAProxy doing the same
//! allow-list in TCP mode (`req.ssl_sni` / `req.hdr(host)`), in the same run:
//!
//! - setup latency: `connect()`, send the first request bytes (an HTTP/1 head or a TLS
//!   ClientHello), until the first byte of the answer (the test host echoes);
//! - throughput: a bulk transfer echoed back, both directions at once.
//!
//! Writes `bench/results/proxy.json` and `proxy.md`.

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use passthrough_tests::{
    DnsRecords, ServerGuard, TestCgroup, Topology, agent::AgentRun, client_hello, run_in_netns,
    to_hex,
};

const HTTP_HOST: &str = "203.0.113.10:80";
const TLS_HOST: &str = "203.0.113.10:443";
const HAPROXY_HTTP: &str = "127.0.0.1:15080";
const HAPROXY_TLS: &str = "127.0.0.1:15443";

const POLICY: &str = r#"
type: MeshPassthrough
name: bench-domains
spec:
  default:
    passthroughMode: Matched
    appendMatch:
      - {type: Domain, value: allowed.example, port: 80, protocol: http}
      - {type: Domain, value: tls.example, port: 443, protocol: tls}
"#;

/// The proxy, with the name to address binding under test (`domainCheck`).
fn proxy_config(check: &str, dns: &str) -> String {
    format!("proxy: {{listen: [127.0.0.1:15001, \"[::1]:15001\"], domainCheck: {check}}}\n{dns}")
}

/// The same allow-list for HAProxy, listening in the client namespace.
const HAPROXY_CONFIG: &str = "global
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend http_in
  bind 127.0.0.1:15080
  tcp-request inspect-delay 5s
  tcp-request content accept if { req.hdr(host),field(1,:) -i allowed.example }
  tcp-request content reject
  default_backend http_out
backend http_out
  server host 203.0.113.10:80
frontend tls_in
  bind 127.0.0.1:15443
  tcp-request inspect-delay 5s
  tcp-request content accept if { req.ssl_sni -i tls.example }
  tcp-request content reject
  default_backend tls_out
backend tls_out
  server host 203.0.113.10:443
";

fn http_head() -> Vec<u8> {
    b"GET / HTTP/1.1\r\nHost: allowed.example\r\nUser-Agent: bench\r\n\r\n".to_vec()
}

fn tls_hello() -> Vec<u8> {
    client_hello(Some("tls.example"), 200)
}

/// `proxy-client CGROUP NETNS DEST PAYLOAD_HEX COUNT`: COUNT times connect, send PAYLOAD,
/// read the first byte of the answer; prints the nanoseconds, one per line.
pub fn client(args: &[String]) -> ExitCode {
    let [cgroup, netns, dest, payload, count] = args else {
        eprintln!("usage: bench proxy-client CGROUP NETNS DEST PAYLOAD_HEX COUNT");
        return ExitCode::from(2);
    };
    let (Ok(dest), Some(payload), Ok(count)) = (
        dest.parse::<SocketAddr>(),
        passthrough_tests::from_hex(payload),
        count.parse::<usize>(),
    ) else {
        eprintln!("bench proxy-client: bad arguments");
        return ExitCode::from(2);
    };
    if crate::enter(cgroup, netns).is_err() {
        return ExitCode::from(2);
    }
    let mut out = String::new();
    let mut first = [0u8; 1];
    for i in 0..count + count / 10 {
        let t0 = Instant::now();
        let result = TcpStream::connect_timeout(&dest, Duration::from_secs(5)).and_then(|mut s| {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(&payload)?;
            s.read_exact(&mut first)?;
            Ok(s)
        });
        let ns = t0.elapsed().as_nanos();
        match result {
            Ok(s) => {
                if first[0] != payload[0] {
                    eprintln!("{dest}: the answer is not the echo of the request");
                    return ExitCode::from(1);
                }
                drop(s);
            }
            Err(e) => {
                eprintln!("{dest}: {e}");
                return ExitCode::from(1);
            }
        }
        if i >= count / 10 {
            let _ = writeln!(out, "{ns}");
        }
    }
    print!("{out}");
    ExitCode::SUCCESS
}

#[derive(serde::Serialize)]
struct Latency {
    path: &'static str,
    protocol: &'static str,
    median_us: f64,
    p99_us: f64,
    samples: usize,
}

#[derive(serde::Serialize)]
struct Throughput {
    path: &'static str,
    protocol: &'static str,
    bytes_each_way: u64,
    seconds: f64,
    /// Echoed bytes per second (each direction carries as much).
    mib_per_s_each_way: f64,
    intact: bool,
}

fn latency(
    topo: &Topology,
    cg: &TestCgroup,
    path: &'static str,
    protocol: &'static str,
    dest: &str,
    payload: &[u8],
    count: usize,
) -> Option<Latency> {
    let out = Command::new(std::env::current_exe().expect("exe"))
        .arg("proxy-client")
        .arg(cg.path())
        .arg(topo.client_netns_path())
        .args([dest, &to_hex(payload), &count.to_string()])
        .output()
        .expect("proxy-client");
    if !out.status.success() {
        eprintln!(
            "{path} {protocol}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let mut ns: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    ns.sort_unstable();
    let median = *ns.get(ns.len() / 2)?;
    let p99 = ns[(ns.len() * 99 / 100).min(ns.len() - 1)];
    let row = Latency {
        path,
        protocol,
        median_us: median as f64 / 1000.0,
        p99_us: p99 as f64 / 1000.0,
        samples: ns.len(),
    };
    eprintln!(
        "setup  {path:<12} {protocol:<5} median {:>8.1} µs  p99 {:>8.1} µs",
        row.median_us, row.p99_us
    );
    Some(row)
}

#[allow(clippy::too_many_arguments, reason = "one row of the results table")]
fn throughput(
    topo: &Topology,
    cg: &TestCgroup,
    path: &'static str,
    protocol: &'static str,
    dest: &str,
    head: &[u8],
    bytes: u64,
) -> Throughput {
    let report = topo.bulk_bytes(cg, dest.parse().expect("addr"), head, bytes);
    let seconds = report["seconds"].as_f64().unwrap_or(f64::NAN);
    let received = report["received"].as_u64().unwrap_or(0);
    let row = Throughput {
        path,
        protocol,
        bytes_each_way: received,
        seconds,
        mib_per_s_each_way: received as f64 / seconds / (1024.0 * 1024.0),
        intact: report["received"] == report["sent"]
            && report["receivedChecksum"] == report["sentChecksum"],
    };
    eprintln!(
        "bulk   {path:<12} {protocol:<5} {:>8.0} MiB/s each way{}",
        row.mib_per_s_each_way,
        if row.intact { "" } else { "  (DATA DIFFERS)" }
    );
    row
}

/// HAProxy in the client namespace (outside any workload cgroup), killed on drop.
struct Haproxy {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_haproxy(topo: &Topology) -> Result<Haproxy, String> {
    let which = Command::new("sh")
        .args(["-c", "command -v haproxy"])
        .output()
        .map_err(|e| e.to_string())?;
    if !which.status.success() {
        return Err("haproxy is not installed (apt-get install haproxy)".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cfg = dir.path().join("haproxy.cfg");
    fs::write(&cfg, HAPROXY_CONFIG).map_err(|e| e.to_string())?;
    let child = Command::new("nsenter")
        .arg(format!("--net={}", topo.client_netns_path().display()))
        .args(["haproxy", "-db", "-f"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("haproxy: {e}"))?;
    let proxy = Haproxy { child, _dir: dir };
    let addr: SocketAddr = HAPROXY_HTTP.parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(10);
    let up = run_in_netns(topo.client_netns_path(), || {
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    if up {
        Ok(proxy)
    } else {
        Err("haproxy did not start listening".into())
    }
}

pub fn run(quick: bool, out_dir: &Path) -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the benchmark loads eBPF programs and creates namespaces: run it as root");
        return ExitCode::from(2);
    }
    let count = if quick { 300 } else { 3000 };
    let bytes: u64 = if quick { 256 << 20 } else { 2 << 30 };
    let topo = Topology::new();
    let hosts: Vec<SocketAddr> = [HTTP_HOST, TLS_HOST]
        .iter()
        .map(|s| s.parse().expect("addr"))
        .collect();
    let _hosts: ServerGuard = topo.echo(&hosts);
    let direct = TestCgroup::new();
    let workload = TestCgroup::new();
    // The allowed names at the host, with a TTL that outlasts the run: the Pin rows measure
    // the check with a warm cache (the first connection fills it and is not counted).
    let dns = topo.dns(&DnsRecords {
        ttl: Some(3600),
        ..DnsRecords::hosts(&[
            ("allowed.example", "203.0.113.10".parse().expect("ip")),
            ("tls.example", "203.0.113.10".parse().expect("ip")),
        ])
    });
    let start = |check: &str| {
        AgentRun::start(
            &topo,
            &[(&workload, &[][..])],
            &[("bench.yaml", POLICY)],
            &proxy_config(check, &dns.config()),
        )
    };
    // Pin first, setup latency only (the binding happens before the first byte is relayed,
    // so it cannot change throughput); then Trust for the rest of the run.
    let mut lat = Vec::new();
    let pin = start("Pin");
    for (protocol, host, payload) in [
        ("http", HTTP_HOST, http_head()),
        ("tls", TLS_HOST, tls_hello()),
    ] {
        lat.extend(latency(
            &topo,
            &workload,
            "passthrough (Pin)",
            protocol,
            host,
            &payload,
            count,
        ));
    }
    drop(pin);
    let _agent = start("Trust");
    let haproxy = match start_haproxy(&topo) {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("HAProxy rows skipped: {e}");
            None
        }
    };
    let cases: [(&'static str, &'static str, Vec<u8>); 2] = [
        ("http", HTTP_HOST, http_head()),
        ("tls", TLS_HOST, tls_hello()),
    ];
    let mut bulk = Vec::new();
    for (protocol, host, payload) in &cases {
        let via_haproxy = if *protocol == "http" {
            HAPROXY_HTTP
        } else {
            HAPROXY_TLS
        };
        // The same connection three ways: direct, through passthrough, through HAProxy.
        let mut paths = vec![
            ("direct", &direct, *host),
            ("passthrough (Trust)", &workload, *host),
        ];
        if haproxy.is_some() {
            paths.push(("haproxy", &direct, via_haproxy));
        }
        for &(path, cgroup, dest) in &paths {
            lat.extend(latency(&topo, cgroup, path, protocol, dest, payload, count));
        }
        for &(path, cgroup, dest) in &paths {
            bulk.push(throughput(
                &topo, cgroup, path, protocol, dest, payload, bytes,
            ));
        }
    }
    drop(haproxy);
    match write_results(out_dir, &lat, &bulk, quick, count) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("writing results: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_results(
    dir: &Path,
    lat: &[Latency],
    bulk: &[Throughput],
    quick: bool,
    count: usize,
) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let json = serde_json::json!({
        "kernel": kernel.trim(),
        "cpus": cpus,
        "quick": quick,
        "setup": lat,
        "throughput": bulk,
    });
    fs::write(
        dir.join("proxy.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )?;
    let direct = |protocol: &str, f: &dyn Fn(&Latency) -> f64| {
        lat.iter()
            .find(|l| l.path == "direct" && l.protocol == protocol)
            .map(f)
    };
    let mut md = format!(
        "# Peek proxy\n\nKernel {}, {cpus} CPUs. Setup: {count} times connect(), send the first request bytes (an HTTP/1 head, or a TLS ClientHello with SNI), read the first byte the host echoes. `direct`: from a cgroup with no program; `passthrough`: from a workload whose Domain entry allows the name, through the peek proxy, with `domainCheck: Trust` (no name check) and `Pin` (the name resolved and the destination bound to its addresses; warm cache: the answers' TTL outlasts the run); `haproxy`: to HAProxy in TCP mode with the same allow-list (`req.hdr(host)`, `req.ssl_sni`).\n\n| path | protocol | median µs | p99 µs | added to direct (median) |\n|---|---|---:|---:|---:|\n",
        kernel.trim()
    );
    for l in lat {
        let added = direct(l.protocol, &|d| l.median_us - d.median_us)
            .map_or_else(String::new, |a| format!("{a:+.1} µs"));
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | {added} |",
            l.path, l.protocol, l.median_us, l.p99_us
        );
    }
    md.push_str(
        "\n# Throughput\n\nThe host echoes every byte; both directions run at once.\n\n| path | protocol | bytes each way | seconds | MiB/s each way | vs direct | intact |\n|---|---|---:|---:|---:|---:|---|\n",
    );
    for b in bulk {
        let vs = bulk
            .iter()
            .find(|d| d.path == "direct" && d.protocol == b.protocol)
            .map_or_else(String::new, |d| {
                format!(
                    "{:.0} %",
                    b.mib_per_s_each_way / d.mib_per_s_each_way * 100.0
                )
            });
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {:.0} | {vs} | {} |",
            b.path,
            b.protocol,
            b.bytes_each_way,
            b.seconds,
            b.mib_per_s_each_way,
            if b.intact { "yes" } else { "NO" }
        );
    }
    let mut f = fs::File::create(dir.join("proxy.md"))?;
    f.write_all(md.as_bytes())?;
    eprintln!("wrote {}", dir.join("proxy.md").display());
    Ok(())
}
