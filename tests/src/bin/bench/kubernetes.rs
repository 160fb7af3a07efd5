//! `bench kubernetes`: the Kubernetes mode at a full node, against the API server stand-in:
//! 250 pods (kubelet's usual maximum) of the systemd cgroup driver and one Mesh-wide policy.
//!
//! - start to ready: the agent started until `/ready`, every pod enforced;
//! - a policy change (Mesh-wide `Matched` allowing the test host -> `None`) until each pod's
//!   first denied connect, from the moment the API server accepted the change: p50, p99 and
//!   max over the pods. A client keeps one process in each pod's cgroup and pokes them all
//!   at once, each doing one non-blocking `connect()` (the verdict is known when `connect`
//!   returns), so the resolution is one cycle through every pod (a few ms), reported beside;
//! - a new pod: reported, its entry in `PENDING_PODS`, then its cgroup created and its first
//!   process connecting at once: the verdict of that first connect.
//!
//! `bench kube-client ...` and `bench kube-first ...` are the measuring processes.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use passthrough_tests::{
    TestCgroup, Topology,
    agent::AgentRun,
    apiserver::{ApiServer, Resource},
};

const DEST: &str = "203.0.113.10:80";
const NODE: &str = "node-a";

/// One non-blocking connect: `Some(true)` allowed (in progress or done), `Some(false)`
/// refused with EPERM, `None` anything else.
fn verdict(dest: &SocketAddr) -> Option<bool> {
    let SocketAddr::V4(v4) = dest else {
        return None;
    };
    // SAFETY: plain socket calls on a socket this function owns and closes.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return None;
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let errno = std::io::Error::last_os_error().raw_os_error();
        // RST on close: no TIME_WAIT, so ports never run out.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
        libc::close(fd);
        match (rc, errno) {
            (0, _) | (_, Some(libc::EINPROGRESS)) => Some(true),
            (_, Some(libc::EPERM)) => Some(false),
            _ => None,
        }
    }
}

/// One pre-forked process per pod cgroup: it joined the cgroup once, and does one
/// non-blocking connect each time it is poked, so a cycle through every pod costs a wake-up
/// and a `connect` per pod, not a cgroup move.
struct Probe {
    /// Poke: one byte; closing it ends the process.
    poke: fs::File,
    /// Answer: the verdict byte (1 allowed, 0 refused, 2 anything else) and the
    /// CLOCK_MONOTONIC ns of the connect.
    answer: fs::File,
    pid: libc::pid_t,
}

fn pipe() -> Option<(fs::File, fs::File)> {
    use std::os::fd::FromRawFd as _;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: both fds were just created and are owned by nothing else.
    Some(unsafe { (fs::File::from_raw_fd(fds[0]), fs::File::from_raw_fd(fds[1])) })
}

/// Forks the probe of `cgroup`. The caller is single-threaded (the client process); the
/// child closes its inherited ends of the `earlier` probes' pipes, or closing a poke pipe
/// would never end its probe.
fn spawn_probe(cgroup: &str, dest: &SocketAddr, earlier: &[Probe]) -> Option<Probe> {
    use std::{io::Read as _, os::fd::AsRawFd as _};
    let (poke_r, poke_w) = pipe()?;
    let (answer_r, answer_w) = pipe()?;
    // SAFETY: the client is single-threaded; the child only uses the fds it inherited and
    // plain system calls, then exits without unwinding.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return None;
    }
    if pid == 0 {
        for p in earlier {
            // SAFETY: these fds are the parent's; the child never uses them.
            unsafe {
                libc::close(p.poke.as_raw_fd());
                libc::close(p.answer.as_raw_fd());
            }
        }
        drop(poke_w);
        drop(answer_r);
        let (mut poke, mut answer) = (poke_r, answer_w);
        let ok = crate::join(cgroup);
        let mut byte = [0u8; 1];
        while ok && poke.read_exact(&mut byte).is_ok() {
            let v = match verdict(dest) {
                Some(true) => 1u8,
                Some(false) => 0,
                None => 2,
            };
            let mut msg = [0u8; 9];
            msg[0] = v;
            msg[1..].copy_from_slice(&crate::mono_ns().to_ne_bytes());
            if answer.write_all(&msg).is_err() {
                break;
            }
        }
        // SAFETY: _exit ends the forked child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    Some(Probe {
        poke: poke_w,
        answer: answer_r,
        pid,
    })
}

/// `kube-client NETNS DEST LIST SECONDS`: one probe process in each cgroup listed in the
/// file LIST; cycles, poking every probe at once and reading each verdict; prints `ready`
/// after a first cycle in which every connect was allowed, then, once each cgroup saw a
/// refused connect (or SECONDS passed), one JSON line: the CLOCK_MONOTONIC ns of each
/// cgroup's first refusal and of its last allowed connect before it (the change reached the
/// cgroup between the two), the cycles and their mean length.
pub fn client(args: &[String]) -> ExitCode {
    let [netns, dest, list, seconds] = args else {
        eprintln!("usage: bench kube-client NETNS DEST LIST SECONDS");
        return ExitCode::from(2);
    };
    let Ok(dest) = dest.parse::<SocketAddr>() else {
        eprintln!("{dest}: not an address");
        return ExitCode::from(2);
    };
    let seconds: u64 = seconds.parse().unwrap_or(10);
    let cgroups: Vec<String> = fs::read_to_string(list)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    if cgroups.is_empty() || crate::enter_netns(netns).is_err() {
        return ExitCode::from(2);
    }
    let mut probes = Vec::new();
    for cg in &cgroups {
        match spawn_probe(cg, &dest, &probes) {
            Some(p) => probes.push(p),
            None => {
                eprintln!(
                    "forking the probe of {cg}: {}",
                    std::io::Error::last_os_error()
                );
                return ExitCode::from(2);
            }
        }
    }
    let code = cycle(&mut probes, &cgroups, &dest, seconds);
    for p in probes {
        drop(p.poke);
        // SAFETY: waits for a child this process forked.
        unsafe { libc::waitpid(p.pid, std::ptr::null_mut(), 0) };
    }
    code
}

/// The client's rest between cycles.
const PAUSE: Duration = Duration::from_millis(4);

fn cycle(probes: &mut [Probe], cgroups: &[String], dest: &SocketAddr, seconds: u64) -> ExitCode {
    use std::io::Read as _;
    let mut first_deny: Vec<Option<u64>> = vec![None; probes.len()];
    let mut last_allowed: Vec<u64> = vec![0; probes.len()];
    let mut cycles = 0u64;
    let started = Instant::now();
    let mut cycling_since = None;
    loop {
        for p in probes.iter_mut() {
            if p.poke.write_all(&[1]).is_err() {
                eprintln!("a probe went away");
                return ExitCode::from(2);
            }
        }
        for (i, p) in probes.iter_mut().enumerate() {
            let mut msg = [0u8; 9];
            if p.answer.read_exact(&mut msg).is_err() {
                eprintln!(
                    "the probe of {} did not answer (could it join?)",
                    cgroups[i]
                );
                return ExitCode::from(2);
            }
            let at = u64::from_ne_bytes(msg[1..].try_into().unwrap_or_default());
            match msg[0] {
                1 => {
                    if first_deny[i].is_none() {
                        last_allowed[i] = at;
                    }
                }
                0 => {
                    if first_deny[i].is_none() {
                        first_deny[i] = Some(at);
                    }
                }
                _ => {
                    eprintln!("connect {dest} from {}: unexpected error", cgroups[i]);
                    return ExitCode::from(1);
                }
            }
        }
        cycles += 1;
        if cycling_since.is_none() {
            if first_deny.iter().any(Option::is_some) {
                eprintln!("a connect was refused before the policy change");
                return ExitCode::from(1);
            }
            println!("ready");
            let _ = std::io::stdout().flush();
            cycling_since = Some((Instant::now(), cycles));
        }
        if first_deny.iter().all(Option::is_some) || started.elapsed().as_secs() >= seconds {
            break;
        }
        // Back to back, the probes would keep one of the two CPUs busy, slowing the agent
        // being measured; the pause costs a few ms of resolution.
        std::thread::sleep(PAUSE);
    }
    let (since, at) = cycling_since.unwrap_or((started, 0));
    let measured = (cycles - at).max(1);
    let line = serde_json::json!({
        "first_deny": first_deny,
        "last_allowed": last_allowed,
        "cycles": measured,
        "cycle_ns": since.elapsed().as_nanos() as u64 / measured,
    });
    println!("{line}");
    ExitCode::SUCCESS
}

/// `kube-first NETNS DEST CGROUP`: creates CGROUP, moves into it and connects at once, as a
/// container's first process would; prints `EPERM` or `allowed` and the ns from `mkdir` to
/// the verdict.
pub fn first(args: &[String]) -> ExitCode {
    let [netns, dest, cgroup] = args else {
        eprintln!("usage: bench kube-first NETNS DEST CGROUP");
        return ExitCode::from(2);
    };
    let Ok(dest) = dest.parse::<SocketAddr>() else {
        return ExitCode::from(2);
    };
    if crate::enter_netns(netns).is_err() {
        return ExitCode::from(2);
    }
    let t0 = Instant::now();
    if let Err(e) = fs::create_dir(cgroup) {
        eprintln!("mkdir {cgroup}: {e}");
        return ExitCode::from(2);
    }
    if !crate::join(cgroup) {
        return ExitCode::from(2);
    }
    let v = verdict(&dest);
    let ns = t0.elapsed().as_nanos();
    // Leave the cgroup, so the parent can remove it.
    if let Some(parent) = Path::new(cgroup).parent().and_then(Path::parent) {
        let _ = fs::write(parent.join("cgroup.procs"), b"0");
    }
    match v {
        Some(false) => println!("EPERM {ns}"),
        Some(true) => println!("allowed {ns}"),
        None => return ExitCode::from(1),
    }
    ExitCode::SUCCESS
}

fn pod(name: &str, uid: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "labels": {"app": "web"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running"},
    })
}

fn mesh_policy(mode: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kuma.io/v1alpha1", "kind": "MeshPassthrough",
        "metadata": {"name": "mesh-wide", "namespace": "kuma-system", "labels": {"kuma.io/mesh": "default"}},
        "spec": {"targetRef": {"kind": "Mesh"}, "default": {"passthroughMode": mode, "appendMatch":
            if mode == "Matched" {
                serde_json::json!([{"type": "IP", "value": "203.0.113.10", "port": 80, "protocol": "tcp"}])
            } else {
                serde_json::json!([])
            }}},
    })
}

fn uid(set: u32, i: usize) -> String {
    format!("0b7d2c1e-{set:04x}-4a2b-9c3d-{i:012x}")
}

fn pod_dir(uid: &str) -> String {
    format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        uid.replace('-', "_")
    )
}

/// p50, p99, max of `v` (sorted here).
fn percentiles(mut v: Vec<u64>) -> Option<(u64, u64, u64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |q: usize| v[(v.len() * q / 100).min(v.len() - 1)];
    Some((at(50), at(99), v[v.len() - 1]))
}

fn bench_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("bench"))
}

/// Seconds since midnight UTC, as the agent's log lines are stamped.
fn wall_of_day() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_nanos()) / 1e9
}

/// The seconds since midnight of a log line's `2026-12-02T03:02:52.182030Z` stamp.
fn stamp_of_day(line: &str) -> Option<f64> {
    let t = line
        .split_whitespace()
        .next()?
        .split_once('T')?
        .1
        .trim_end_matches('Z');
    let mut it = t.split(':');
    let (h, m, s): (f64, f64, f64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

/// A `key=value` field of a log line, as a number.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))?
        .parse()
        .ok()
}

/// Where the change's time went, in ms from the API server accepting it, from the agent's
/// debug lines: the source's `Kubernetes state computed` and the core's `reconciled` of
/// the first reconcile after the change (`before` of which came earlier).
fn stages_of(log: &str, accepted: f64, before: usize) -> Vec<(&'static str, f64)> {
    // The first reconcile that started after the change (one already running when it
    // arrived cannot have applied it).
    let Some((start, compute, write, after, rec_line)) = log
        .lines()
        .filter(|l| l.contains(" reconciled "))
        .skip(before)
        .filter_map(|rec| {
            let (end, compute, write, after) = (
                stamp_of_day(rec)?,
                field(rec, "compute_us")?,
                field(rec, "write_us")?,
                field(rec, "after_us")?,
            );
            Some((
                end - (compute + write + after) / 1e6,
                compute,
                write,
                after,
                Some(rec),
            ))
        })
        .find(|(start, ..)| *start >= accepted)
    else {
        return Vec::new();
    };
    let source = log
        .lines()
        .filter(|l| l.contains("Kubernetes state computed"))
        .filter_map(|l| Some((stamp_of_day(l)?, field(l, "took_us")?)))
        .rfind(|(t, _)| *t >= accepted && *t <= start + 1e-3);
    let ms = |s: f64| (s * 1e3 * 10.0).round() / 10.0;
    let mut out = Vec::new();
    if let Some((t, took)) = source {
        let computed_from = t - took / 1e6;
        out.push(("watch delivery and gathering", ms(computed_from - accepted)));
        out.push(("source: pods to workloads", ms(took / 1e6)));
        out.push(("hand-off to the agent's core", ms(start - t)));
    } else {
        out.push((
            "watch delivery, gathering, source, hand-off",
            ms(start - accepted),
        ));
    }
    out.push(("agent: compile and plan", ms(compute / 1e6)));
    // Its parts, where the agent's line has them.
    for (key, stage) in [
        ("load_us", "- the policy set"),
        ("merge_us", "- each workload's cgroup, merge and compile"),
        ("desired_us", "- desired state (links, pending pods)"),
        ("plan_us", "- plan"),
    ] {
        if let Some(us) = rec_line.and_then(|l| field(l, key)) {
            out.push((stage, ms(us / 1e6)));
        }
    }
    out.push((
        "agent: map writes (every WORKLOADS update)",
        ms(write / 1e6),
    ));
    out.push((
        "API server accepted -> last WORKLOADS update",
        ms(start + (compute + write) / 1e6 - accepted),
    ));
    out.push(("after the writes (status, proxy view)", ms(after / 1e6)));
    out
}

struct Results {
    pods: usize,
    start_to_ready_ms: u128,
    change: Option<(u64, u64, u64)>,
    lower: Option<(u64, u64, u64)>,
    stages: Vec<(&'static str, f64)>,
    undenied: usize,
    cycle_ns: u64,
    new_pods: Vec<(String, u64, u64)>,
}

pub fn run(quick: bool, out_dir: &Path) -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the benchmark loads eBPF programs and creates namespaces: run it as root");
        return ExitCode::from(2);
    }
    let pods = if quick { 50 } else { 250 };
    let new_pods = if quick { 5 } else { 20 };
    let dest: SocketAddr = DEST.parse().expect("addr");
    // The agent's own account of where a change's time goes (its debug lines).
    // SAFETY: no other thread runs yet.
    unsafe {
        std::env::set_var(
            "RUST_LOG",
            "info,passthrough::agent::state=debug,passthrough::k8s::source=debug",
        );
    }
    let topo = Topology::new();
    let _sink = topo.sink(&[dest]);
    let api = ApiServer::start(&topo.client_netns_path());
    api.without(Resource::Dataplanes);
    api.apply(
        Resource::Namespaces,
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"kuma.io/sidecar-injection": "enabled"}}}),
    );
    api.apply(Resource::MeshPassthroughs, mesh_policy("Matched"));
    let root = TestCgroup::new();
    let _qos = root.nested("kubepods.slice/kubepods-burstable.slice");
    let mut cgroups = Vec::new();
    for i in 0..pods {
        let u = uid(1, i);
        cgroups.push(root.nested(&pod_dir(&u)));
        api.apply(Resource::Pods, pod(&format!("p-{i}"), &u));
    }
    let dir = tempfile::tempdir().expect("tmp");
    let config = format!(
        "kubernetes: {{nodeName: {NODE}, cgroupRoot: \"{}\", kubeconfig: \"{}\"}}\n",
        root.path().display(),
        api.kubeconfig(dir.path()).display()
    );
    let t0 = Instant::now();
    let agent = AgentRun::start(&topo, &[], &[], &config);
    agent.wait_until(Duration::from_secs(60), || {
        let s = agent.status();
        s["kubernetes"]["pods"] == pods && s["ready"] == true
    });
    let start_to_ready_ms = t0.elapsed().as_millis();
    eprintln!("{pods} pods: start to ready in {start_to_ready_ms} ms");

    // The change, timed per pod by the cycling client.
    let list = dir.path().join("cgroups");
    let text: String = cgroups
        .iter()
        .map(|c| format!("{}\n", c.path().display()))
        .collect();
    fs::write(&list, text).expect("cgroup list");
    let mut child = Command::new(bench_exe())
        .arg("kube-client")
        .arg(topo.client_netns_path())
        .arg(DEST)
        .arg(&list)
        .arg("20")
        .stdout(Stdio::piped())
        .spawn()
        .expect("bench kube-client");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = lines.next().and_then(Result::ok);
    if ready.as_deref() != Some("ready") {
        eprintln!("the client did not start cycling: {ready:?}");
        let _ = child.kill();
        let _ = child.wait();
        return ExitCode::FAILURE;
    }
    // The agent has seen the probes' processes (the proxy opens its pod listeners then):
    // that work is done before the change.
    std::thread::sleep(Duration::from_millis(500));
    let reconciles_before = agent.log().matches(" reconciled ").count();
    api.apply(Resource::MeshPassthroughs, mesh_policy("None"));
    let accepted = crate::mono_ns();
    let accepted_wall = wall_of_day();
    let report: serde_json::Value = lines
        .next()
        .and_then(Result::ok)
        .and_then(|l| serde_json::from_str(&l).ok())
        .unwrap_or_default();
    let _ = child.wait();
    let firsts: Vec<Option<u64>> = report["first_deny"]
        .as_array()
        .map(|a| a.iter().map(serde_json::Value::as_u64).collect())
        .unwrap_or_default();
    let lasts: Vec<u64> = report["last_allowed"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
        .unwrap_or_default();
    let undenied = firsts.iter().filter(|f| f.is_none()).count();
    let latencies: Vec<u64> = firsts
        .iter()
        .flatten()
        .map(|t| t.saturating_sub(accepted))
        .collect();
    let change = percentiles(latencies);
    let lower = percentiles(
        firsts
            .iter()
            .zip(&lasts)
            .filter(|(f, _)| f.is_some())
            .map(|(_, l)| l.saturating_sub(accepted))
            .collect(),
    );
    // The reconcile's line is written once it is done, after the writes.
    let mut stages = Vec::new();
    agent.wait_until(Duration::from_secs(5), || {
        stages = stages_of(&agent.log(), accepted_wall, reconciles_before);
        !stages.is_empty()
    });
    let cycle_ns = report["cycle_ns"].as_u64().unwrap_or(0);
    eprintln!(
        "change -> first denied connect: {change:?} ns (p50, p99, max), {undenied} never denied, cycle {cycle_ns} ns"
    );

    // New pods: reported, then created with their first process connecting at once.
    let mut firsts_new = Vec::new();
    for i in 0..new_pods {
        let u = uid(2, i);
        // The previous new pod is a workload by now: `pending` counts this one only.
        agent.wait_until(Duration::from_secs(5), || {
            let s = agent.status();
            s["kubernetes"]["pending"] == 0 && s["kubernetes"]["pods"] == pods + i
        });
        let reported = Instant::now();
        api.apply(Resource::Pods, pod(&format!("new-{i}"), &u));
        agent.wait_until(Duration::from_secs(5), || {
            agent.status()["kubernetes"]["pending"] == 1
        });
        let to_pending = reported.elapsed().as_micros() as u64;
        let cg = root.path().join(pod_dir(&u));
        let out = Command::new(bench_exe())
            .arg("kube-first")
            .arg(topo.client_netns_path())
            .arg(DEST)
            .arg(&cg)
            .output()
            .expect("bench kube-first");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut it = text.split_whitespace();
        let outcome = it.next().unwrap_or("failed").to_string();
        let ns: u64 = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        firsts_new.push((outcome, to_pending, ns));
    }
    for (o, p, ns) in &firsts_new {
        eprintln!("new pod: reported -> pending entry {p} µs; first connect {o} after {ns} ns");
    }
    // The new pods' cgroups (made by the client) go with the root's guard.
    let results = Results {
        pods,
        start_to_ready_ms,
        change,
        lower,
        stages,
        undenied,
        cycle_ns,
        new_pods: firsts_new,
    };
    drop(agent);
    if let Err(e) = write_results(out_dir, &results, quick) {
        eprintln!("writing results: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn write_results(dir: &Path, r: &Results, quick: bool) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let ms = |ns: u64| ns as f64 / 1e6;
    let denied = r.new_pods.iter().filter(|(o, _, _)| o == "EPERM").count();
    let to_pending = percentiles(r.new_pods.iter().map(|(_, p, _)| *p).collect());
    let json = serde_json::json!({
        "kernel": kernel.trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "quick": quick,
        "pods": r.pods,
        "start_to_ready_ms": r.start_to_ready_ms,
        "change_to_first_deny_ns": r.change.map(|(p50, p99, max)| serde_json::json!({"p50": p50, "p99": p99, "max": max})),
        "change_to_last_allowed_ns": r.lower.map(|(p50, p99, max)| serde_json::json!({"p50": p50, "p99": p99, "max": max})),
        "stages_ms": r.stages.iter().map(|(k, v)| serde_json::json!({"stage": k, "ms": v})).collect::<Vec<_>>(),
        "never_denied": r.undenied,
        "client_cycle_ns": r.cycle_ns,
        "new_pods": r.new_pods.iter().map(|(o, p, ns)| serde_json::json!({"first_connect": o, "reported_to_pending_us": p, "mkdir_to_verdict_ns": ns})).collect::<Vec<_>>(),
    });
    fs::write(
        dir.join("kubernetes.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Kubernetes mode at a full node\n\nKernel {}, {} CPUs; {} pods (systemd driver, Burstable), one Mesh-wide MeshPassthrough, the API server stand-in in the same machine (`cargo xtask bench kubernetes`).\n",
        kernel.trim(),
        json["cpus"],
        r.pods
    );
    md.push_str("| measure | value |\n|---|---|\n");
    let _ = writeln!(
        md,
        "| start to ready ({} pods enforced) | {} ms |",
        r.pods, r.start_to_ready_ms
    );
    match r.change {
        Some((p50, p99, max)) => {
            let _ = writeln!(
                md,
                "| Mesh-wide `Matched` -> `None`, API server accepted -> each pod's first refused connect | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
                ms(p50),
                ms(p99),
                ms(max)
            );
        }
        None => md.push_str("| policy change -> first refused connect | not measured |\n"),
    }
    if let Some((p50, p99, max)) = r.lower {
        let _ = writeln!(
            md,
            "| the same, to each pod's last allowed connect (the change reached the pod between the two) | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
    let _ = writeln!(
        md,
        "| pods never refused within 20 s | {} |\n| measuring client: one cycle through every pod's cgroup (the resolution) | {:.2} ms |",
        r.undenied,
        ms(r.cycle_ns)
    );
    if let Some((p50, p99, max)) = to_pending {
        let _ = writeln!(
            md,
            "| new pod: API server accepted -> its `PENDING_PODS` entry | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
            p50 as f64 / 1e3,
            p99 as f64 / 1e3,
            max as f64 / 1e3
        );
    }
    let _ = writeln!(
        md,
        "| new pod: cgroup created and first process connecting at once (under `None`) | {denied} of {} refused on the very first connect |",
        r.new_pods.len()
    );
    if !r.stages.is_empty() {
        md.push_str("\n## Where the change's time goes\n\nFrom the agent's debug log of the same run (ms; the reconcile that applied the change):\n\n| stage | ms |\n|---|---:|\n");
        for (k, v) in &r.stages {
            let _ = writeln!(md, "| {k} | {v:.1} |");
        }
    }
    let mut f = fs::File::create(dir.join("kubernetes.md"))?;
    f.write_all(md.as_bytes())?;
    eprintln!("wrote {}", dir.join("kubernetes.md").display());
    Ok(())
}
