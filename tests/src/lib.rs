//! Shared helpers of the privileged tests: test cgroups, a two-namespace network topology
//! with test hosts, bpffs directories, and the `probe` binary that makes the connects.
//!
//! Everything created here is named with a fixed prefix, the creating pid and a counter
//! ([`NETNS_PREFIX`], [`NAME_PREFIX`]), is removed by a Drop guard (also on panic), and is
//! swept by [`cleanup_stale`] once its creator has died. Nothing is ever added to the root
//! network namespace or to a cgroup the harness did not create.

pub mod agent;
pub mod apiserver;
pub mod container;

use std::{
    ffi::CString,
    fs,
    io::{self, BufRead as _, BufReader, Read as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::{
        fd::AsRawFd as _,
        unix::{fs::MetadataExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, Once, OnceLock, PoisonError,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

/// Prefix of the network namespaces (`pt-c-<pid>-<n>`, `pt-i-<pid>-<n>`).
pub const NETNS_PREFIX: &str = "pt-";
/// Prefix of the cgroups and bpffs directories (`passthrough-test-<pid>-<n>`).
pub const NAME_PREFIX: &str = "passthrough-test-";

/// The client side of the veth, in the client namespace.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The internet side of the veth: the client's default gateway.
pub const INTERNET_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const INTERNET_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// Test hosts: addresses on the internet namespace's `lo`.
pub const HOST_V4_A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const HOST_V4_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
pub const HOST_V4_C: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const HOST_V4_D: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
pub const HOST_V4_E: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 200);
pub const HOST_V6_A: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
pub const HOST_V6_B: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x11);
pub const HOST_V6_C: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x20);
/// The test topology's resolver ([`Topology::dns`]).
pub const DNS_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);
pub const DNS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x53);
pub const TEST_HOSTS: [IpAddr; 10] = [
    IpAddr::V4(HOST_V4_A),
    IpAddr::V4(HOST_V4_B),
    IpAddr::V4(HOST_V4_C),
    IpAddr::V4(HOST_V4_D),
    IpAddr::V4(HOST_V4_E),
    IpAddr::V6(HOST_V6_A),
    IpAddr::V6(HOST_V6_B),
    IpAddr::V6(HOST_V6_C),
    IpAddr::V4(DNS_V4),
    IpAddr::V6(DNS_V6),
];

/// How long to wait for a spawned probe to report `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `<prefix><pid>-<n>`, unique among this process's objects and across processes.
fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{n}", std::process::id())
}

/// A failed cleanup is a harness bug worth a failing test, but a panic while already
/// unwinding would abort the whole test binary and skip the remaining guards.
fn cleanup_failed(what: String) {
    if std::thread::panicking() {
        eprintln!("passthrough-tests: {what}");
    } else {
        panic!("{what}");
    }
}

// ---------------------------------------------------------------------------------------
// mounts

struct Mount {
    point: PathBuf,
    fstype: String,
}

/// Mount points are octal-escaped in mountinfo (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 3 < b.len())
            .then(|| &b[i + 1..=i + 3])
            .filter(|d| d.iter().all(u8::is_ascii_digit))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        if let Some(byte) = octal {
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounts() -> Vec<Mount> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(Mount {
                point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: (*fields.get(sep + 1)?).to_string(),
            })
        })
        .collect()
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on unified hosts, elsewhere (for example
/// `/sys/fs/cgroup/unified`) on hybrid ones.
pub fn cgroup2_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        mounts()
            .into_iter()
            .find(|m| m.fstype == "cgroup2")
            .map(|m| m.point)
            .expect("no cgroup2 mount in /proc/self/mountinfo: the tests need cgroup v2")
    })
    .clone()
}

const BPFFS: &str = "/sys/fs/bpf";

/// Mounts bpffs at /sys/fs/bpf unless it already is, as systemd would have.
fn ensure_bpffs() {
    if mounts()
        .iter()
        .any(|m| m.fstype == "bpf" && m.point == Path::new(BPFFS))
    {
        return;
    }
    let src = CString::new("bpf").expect("no NUL");
    let target = CString::new(BPFFS).expect("no NUL");
    let data = CString::new("mode=0700").expect("no NUL");
    // SAFETY: valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ptr().cast(),
        )
    };
    assert!(
        rc == 0,
        "mounting bpffs at {BPFFS}: {}",
        io::Error::last_os_error()
    );
}

// ---------------------------------------------------------------------------------------
// stale leftovers

/// The creator's pid of a name ending in `<pid>-<n>`.
fn owner_pid(name: &str) -> Option<u32> {
    let mut it = name.rsplit('-');
    it.next()?.parse::<u32>().ok()?;
    it.next()?.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

fn stale_entries(dir: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix(prefix).and_then(owner_pid)?;
            (!pid_alive(pid)).then(|| (name, e.path()))
        })
        .collect()
}

/// Removes what earlier, crashed runs left behind: network namespaces, cgroups (after
/// killing their processes) and bpffs directories whose creating pid no longer exists.
/// Runs once per process; the guards' constructors call it.
pub fn cleanup_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (name, path) in stale_entries(Path::new("/run/netns"), NETNS_PREFIX) {
            eprintln!("passthrough-tests: removing stale netns {name}");
            kill_netns_processes(&path);
            if let Err(e) = ip(&["netns", "del", &name]) {
                eprintln!("passthrough-tests: {e}");
            }
        }
        for (name, path) in stale_entries(&cgroup2_root(), NAME_PREFIX) {
            eprintln!("passthrough-tests: removing stale cgroup {name}");
            if let Err(e) = remove_cgroup_tree(&path) {
                eprintln!("passthrough-tests: {e}");
            }
        }
        for (name, path) in stale_entries(Path::new(BPFFS), NAME_PREFIX) {
            eprintln!("passthrough-tests: removing stale bpffs dir {name}");
            if let Err(e) = fs::remove_dir_all(&path) {
                eprintln!("passthrough-tests: removing {}: {e}", path.display());
            }
        }
    });
}

// ---------------------------------------------------------------------------------------
// processes

/// The probe binary: `$PASSTHROUGH_PROBE`, else `probe` next to the running executable or
/// one directory up. Cargo puts integration tests in `target/<profile>/deps/` and the
/// package's binaries in `target/<profile>/`, and builds the binaries before running them.
pub fn probe_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| sibling_bin("probe", "PASSTHROUGH_PROBE"))
        .clone()
}

/// The `passthrough` command as this package builds it (`agent`): `$PASSTHROUGH_AGENT`, else
/// found like [`probe_bin`].
pub fn agent_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| sibling_bin("agent", "PASSTHROUGH_AGENT"))
        .clone()
}

fn sibling_bin(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("the executable has a directory");
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no {name} binary near {}: build it (cargo test -p passthrough-tests builds it) \
                 or set {env}",
                exe.display()
            )
        })
}

/// Ties a long-running child to this process: a test binary killed outright must not leave
/// servers or sleepers behind. (The signal follows the spawning thread, so the guards that
/// own these children must not outlive it; they never do in a test.)
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Lines a server printed after `ready`.
type Lines = Arc<Mutex<Vec<String>>>;

/// Spawns `cmd` and waits until it prints `ready`, forwarding its stderr afterwards.
fn spawn_ready(cmd: Command, what: &str) -> Child {
    spawn_ready_lines(cmd, what).0
}

/// [`spawn_ready`], keeping what the child prints on stdout after `ready`.
fn spawn_ready_lines(mut cmd: Command, what: &str) -> (Child, Lines) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let printed = Lines::default();
    let keep = Arc::clone(&printed);
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let ready = matches!(lines.next(), Some(Ok(l)) if l == "ready");
        let _ = tx.send(ready);
        // Keep draining so that the child never blocks on a full pipe.
        for line in lines.map_while(Result::ok) {
            keep.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
        }
    });
    let ready = rx.recv_timeout(READY_TIMEOUT).unwrap_or(false);
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        panic!("{what} did not get ready: {}", err.trim());
    }
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        });
    }
    (child, printed)
}

fn kill_pid(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: plain kill(2); callers pass pids of processes the harness owns.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Pids of the processes whose network namespace is the one bound at `netns`, except this
/// process (whose [`run_in_netns`] threads may be in it).
fn netns_pids(netns: &Path) -> Vec<u32> {
    let Ok(target) = fs::metadata(netns) else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
        })
        .collect()
}

fn kill_netns_processes(netns: &Path) {
    for pid in netns_pids(netns) {
        kill_pid(pid);
    }
}

/// A `probe sleep` process in a test cgroup; killed and reaped on drop.
#[must_use = "dropping the guard kills the process"]
pub struct Sleeper {
    child: Child,
}

impl Sleeper {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// cgroups

/// A cgroup under the cgroup2 root, `passthrough-test-<pid>-<n>`, or a nested one. Dropping
/// it kills every process in it and its descendants and removes the whole subtree.
#[must_use = "dropping the guard removes the cgroup"]
pub struct TestCgroup {
    path: PathBuf,
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCgroup {
    pub fn new() -> Self {
        cleanup_stale();
        let path = cgroup2_root().join(unique_name(NAME_PREFIX));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A nested cgroup, as a container runtime would create below a pod's cgroup. Dropping
    /// the parent first removes it too.
    pub fn child(&self, name: &str) -> TestCgroup {
        assert!(
            !name.is_empty() && !name.contains('/') && !name.starts_with('.'),
            "child cgroup name {name:?} must be one plain path component"
        );
        let path = self.path.join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    /// A cgroup several levels below this one (`a/b/c`), creating the levels between, as a
    /// kubelet lays out pod cgroups. The guard removes the deepest; this cgroup's guard
    /// removes the rest.
    pub fn nested(&self, relative: &str) -> TestCgroup {
        assert!(
            relative
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."),
            "{relative:?} must be a relative path of plain components"
        );
        let path = self.path.join(relative);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    /// The cgroup id the kernel's BPF helpers report: the directory's inode number.
    pub fn id(&self) -> u64 {
        fs::metadata(&self.path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", self.path.display()))
            .ino()
    }

    /// The processes directly in this cgroup.
    pub fn procs(&self) -> Vec<u32> {
        read_procs(&self.path)
    }

    /// A process that lives in this cgroup until the returned guard (or this cgroup) drops.
    pub fn spawn_sleeper(&self) -> Sleeper {
        let mut cmd = Command::new(probe_bin());
        cmd.arg("sleep").arg("--cgroup").arg(&self.path);
        Sleeper {
            child: spawn_ready(cmd, "probe sleep"),
        }
    }

    /// As [`TestCgroup::spawn_sleeper`], the process in the network namespace at `netns`
    /// (a pod's pause container).
    pub fn spawn_sleeper_in(&self, netns: &Path) -> Sleeper {
        let mut cmd = Command::new(probe_bin());
        cmd.arg("sleep")
            .arg("--cgroup")
            .arg(&self.path)
            .arg("--netns")
            .arg(netns);
        Sleeper {
            child: spawn_ready(cmd, "probe sleep"),
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = remove_cgroup_tree(&self.path) {
            cleanup_failed(e);
        }
    }
}

fn read_procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `dir` and its descendant cgroups, deepest first.
fn cgroup_tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(cgroup_tree(&e.path()));
            }
        }
    }
    out.push(dir.to_path_buf());
    out
}

fn populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Kills everything in the subtree, waits for it to empty, then removes it deepest first.
fn remove_cgroup_tree(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let kill_file = dir.join("cgroup.kill");
    while populated(dir) {
        // cgroup.kill (Linux 5.14) also catches processes forking meanwhile; older kernels
        // need the pid-by-pid loop, repeated until nothing is left.
        if kill_file.exists() {
            fs::write(&kill_file, "1")
                .map_err(|e| format!("writing {}: {e}", kill_file.display()))?;
        } else {
            for cg in cgroup_tree(dir) {
                read_procs(&cg).into_iter().for_each(kill_pid);
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} still has processes after 10 s: {:?}",
                dir.display(),
                read_procs(dir)
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for cg in cgroup_tree(dir) {
        loop {
            match fs::remove_dir(&cg) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                // Exiting tasks can keep a cgroup busy for a moment after it reads as empty.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("removing cgroup {}: {e}", cg.display())),
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// bpffs

/// A directory under /sys/fs/bpf for the pins of one agent run; removed recursively on drop.
#[must_use = "dropping the guard removes the directory"]
pub struct BpffsDir {
    path: PathBuf,
}

impl Default for BpffsDir {
    fn default() -> Self {
        Self::new()
    }
}

impl BpffsDir {
    pub fn new() -> Self {
        cleanup_stale();
        ensure_bpffs();
        let path = Path::new(BPFFS).join(unique_name(NAME_PREFIX));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                cleanup_failed(format!("removing {}: {e}", self.path.display()));
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// network

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Runs `f` on a fresh thread inside the network namespace bound at `netns`: for talking to
/// something listening only there, such as an agent's admin port. Panics in `f` propagate.
pub fn run_in_netns<T: Send>(netns: impl AsRef<Path>, f: impl FnOnce() -> T + Send) -> T {
    let netns = netns.as_ref();
    let file = fs::File::open(netns).unwrap_or_else(|e| panic!("opening {}: {e}", netns.display()));
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on an fd we own; CLONE_NEWNET changes only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert!(
                rc == 0,
                "setns {}: {}",
                netns.display(),
                io::Error::last_os_error()
            );
            drop(file);
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// How `probe connect` behaves.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// For the connect, and again for reading the answer.
    pub timeout: Duration,
    /// Read at most this many bytes.
    pub read: usize,
    /// Sent after connecting; the server echoes it back after its greeting.
    pub send: Option<String>,
    /// Bytes sent after connecting (after `send`), for binary protocols.
    pub send_bytes: Option<Vec<u8>>,
    /// How long to keep the write side open after sending, before half-closing.
    pub hold: Duration,
    /// Connect to an IPv4 destination from an AF_INET6 socket, as `::ffff:a.b.c.d`.
    pub v4mapped: bool,
    /// A UDP connect() instead: nothing is sent, only the verdict on connect() counts.
    pub udp: bool,
}

impl ProbeOptions {
    /// An HTTP/1.1 GET naming `host` in its Host header, reading enough of the answer for
    /// the greeting and the echoed request, or a refusal's body.
    pub fn http_get(host: &str) -> Self {
        Self {
            send: Some(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")),
            read: 4096,
            ..Self::default()
        }
    }
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3),
            read: 256,
            send: None,
            send_bytes: None,
            hold: Duration::ZERO,
            v4mapped: false,
            udp: false,
        }
    }
}

/// What one `probe connect` got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// connect() succeeded; `received` is what the server sent (empty for UDP), as text and
    /// as bytes.
    Connected {
        received: String,
        raw: Vec<u8>,
        peer: String,
    },
    /// A syscall failed: `stage` is `socket`, `connect`, `getpeername`, `send` or `recv`.
    Refused { errno: i32, stage: String },
}

impl ProbeResult {
    /// connect() itself failed with EPERM: what a denying cgroup program causes.
    pub fn is_eperm(&self) -> bool {
        matches!(self, Self::Refused { errno, stage } if *errno == libc::EPERM && stage == "connect")
    }

    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected { .. })
    }

    /// What the server sent; empty unless connected.
    pub fn received(&self) -> &str {
        match self {
            Self::Connected { received, .. } => received,
            Self::Refused { .. } => "",
        }
    }

    /// What the server sent, byte for byte; empty unless connected.
    pub fn received_bytes(&self) -> &[u8] {
        match self {
            Self::Connected { raw, .. } => raw,
            Self::Refused { .. } => &[],
        }
    }

    pub fn peer(&self) -> Option<&str> {
        match self {
            Self::Connected { peer, .. } => Some(peer),
            Self::Refused { .. } => None,
        }
    }

    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Connected { .. } => None,
            Self::Refused { errno, .. } => Some(*errno),
        }
    }

    fn parse(line: &str) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("probe output {line:?}: {e}"))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("probe output {line:?} lacks {k}"))
        };
        match v.get("ok").and_then(serde_json::Value::as_bool) {
            Some(true) => {
                let received = field("received")?;
                let raw = match v.get("receivedHex").and_then(serde_json::Value::as_str) {
                    Some(h) => from_hex(h).ok_or_else(|| format!("bad receivedHex in {line:?}"))?,
                    None => received.clone().into_bytes(),
                };
                Ok(Self::Connected {
                    received,
                    raw,
                    peer: field("peer")?,
                })
            }
            Some(false) => Ok(Self::Refused {
                errno: v
                    .get("errno")
                    .and_then(serde_json::Value::as_i64)
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(|| format!("probe output {line:?} lacks errno"))?,
                stage: field("stage")?,
            }),
            None => Err(format!("probe output {line:?} lacks ok")),
        }
    }
}

/// A TLS 1.3-style ClientHello record sequence with an optional SNI and `padding` bytes of
/// padding extension, split into records of at most 1024 bytes (as a client may).
pub fn client_hello(sni: Option<&str>, padding: usize) -> Vec<u8> {
    let mut ext = Vec::new();
    if let Some(name) = sni {
        let n = name.as_bytes();
        let list_len = 3 + n.len();
        ext.extend_from_slice(&[0x00, 0x00]);
        ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(list_len as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
        ext.extend_from_slice(n);
    }
    // supported_versions: TLS 1.3
    ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    if padding > 0 {
        ext.extend_from_slice(&[0x00, 0x15]);
        ext.extend_from_slice(&(padding as u16).to_be_bytes());
        ext.extend(std::iter::repeat_n(0u8, padding));
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x11; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]);
    body.extend_from_slice(&[0x01, 0x00]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut out = Vec::new();
    for chunk in hs.chunks(1024) {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// Lower-case hex of bytes, as `probe` passes binary data.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string, `None` if it is not one.
pub fn from_hex(h: &str) -> Option<Vec<u8>> {
    if !h.len().is_multiple_of(2) {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What [`Topology::capture`] saw arrive on the internet side.
#[must_use = "dropping it stops the capture"]
pub struct Capture {
    _guard: ServerGuard,
    printed: Lines,
}

/// One captured IP packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// 4 or 6.
    pub ip: u8,
    /// The IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dport: Option<u16>,
    /// It carries the probe's side-door payload.
    pub payload: bool,
}

impl Capture {
    /// Every packet so far.
    pub fn packets(&self) -> Vec<Packet> {
        self.printed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                Some(Packet {
                    ip: u8::try_from(v["ip"].as_u64()?).ok()?,
                    proto: u8::try_from(v["proto"].as_u64()?).ok()?,
                    src: v["src"].as_str()?.parse().ok()?,
                    dst: v["dst"].as_str()?.parse().ok()?,
                    dport: v["dport"].as_u64().and_then(|p| u16::try_from(p).ok()),
                    payload: v["sideDoorPayload"].as_bool().unwrap_or(false),
                })
            })
            .collect()
    }

    /// The packets of protocol `proto` to `dst` seen within `wait` (captures trail the
    /// sender by a little; absence is only claimed after the wait).
    pub fn to(&self, proto: u8, dst: IpAddr, wait: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + wait;
        loop {
            let found: Vec<Packet> = self
                .packets()
                .into_iter()
                .filter(|p| p.proto == proto && p.dst == dst)
                .collect();
            if !found.is_empty() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Forgets what was captured so far.
    pub fn clear(&self) {
        self.printed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// An HTTP/2 prior-knowledge (h2c) client preface and a GET whose `:authority` is
/// `authority`, HPACK-coded without Huffman or indexing, as a client sends it first.
pub fn h2c_request(authority: &str) -> Vec<u8> {
    let mut block = vec![
        0x82, // :method GET (static index 2)
        0x86, // :scheme http (6)
        0x84, // :path / (4)
        0x01, // :authority (name index 1), literal value without indexing
    ];
    block.push(u8::try_from(authority.len()).expect("an authority under 128 bytes"));
    block.extend_from_slice(authority.as_bytes());
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // An empty SETTINGS frame.
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    // HEADERS, END_STREAM | END_HEADERS, stream 1.
    out.extend_from_slice(&(block.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[0x1, 0x5, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    out
}

/// A DNS server (dnsmasq) authoritative for `*.example` (a name it has no record for is
/// NXDOMAIN), with a TTL of 1 s, in a test namespace. Stopped on drop.
#[must_use = "dropping it stops the server"]
pub struct DnsServer {
    guard: Option<ServerGuard>,
    listen: IpAddr,
    dir: tempfile::TempDir,
}

/// What a [`DnsServer`] answers.
#[derive(Clone, Debug, Default)]
pub struct DnsRecords {
    /// Exact names and their addresses (A or AAAA by the address).
    pub hosts: Vec<(String, IpAddr)>,
    /// `(domain, address)`: the domain and every name below it.
    pub domains: Vec<(String, IpAddr)>,
    /// Names that exist without an address (a TXT record only).
    pub no_address: Vec<String>,
    /// The answers' TTL in seconds (default 1, so tests see changes quickly).
    pub ttl: Option<u32>,
}

impl DnsRecords {
    /// Exact names only.
    pub fn hosts(list: &[(&str, IpAddr)]) -> Self {
        Self {
            hosts: list.iter().map(|(n, a)| ((*n).to_string(), *a)).collect(),
            ..Self::default()
        }
    }

    /// Every name under `example` at the two test hosts most tests dial, 203.0.113.10 and
    /// 2001:db8:1::10: with it, the default `domainCheck: Pin` keeps those destinations.
    pub fn example_hosts() -> Self {
        Self {
            domains: vec![
                ("example".into(), IpAddr::V4(HOST_V4_C)),
                ("example".into(), IpAddr::V6(HOST_V6_A)),
            ],
            ..Self::default()
        }
    }
}

impl DnsServer {
    /// dnsmasq in the namespace at `netns`, answering on port 53 of `listen` (addresses that
    /// namespace has).
    pub fn start(
        netns: &Path,
        listen: &[IpAddr],
        records: &DnsRecords,
        live: &Arc<Mutex<Vec<u32>>>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        write_hosts(
            dir.path(),
            records.hosts.iter().map(|(n, a)| (n.as_str(), *a)),
        );
        let hosts = dir.path().join("hosts");
        let mut cmd = Command::new(probe_bin());
        cmd.arg("exec")
            .arg("--netns")
            .arg(netns)
            .args(["--", "dnsmasq"])
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--port=53",
                "--local=/example/",
                "--user=root",
                "--pid-file=",
            ])
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--local-ttl={}", records.ttl.unwrap_or(1)))
            .args(listen.iter().map(|a| format!("--listen-address={a}")))
            .args(
                records
                    .domains
                    .iter()
                    .map(|(d, a)| format!("--address=/{d}/{a}")),
            )
            .args(
                records
                    .no_address
                    .iter()
                    .map(|n| format!("--txt-record={n},none")),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning dnsmasq: {e}"));
        live.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(child.id());
        let guard = ServerGuard {
            child: Some(child),
            live: Arc::clone(live),
            printed: Lines::default(),
        };
        let addr = SocketAddr::new(listen[0], 53);
        let deadline = Instant::now() + READY_TIMEOUT;
        let up = run_in_netns(netns, || {
            while Instant::now() < deadline {
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        });
        assert!(up, "dnsmasq did not start answering on {addr}");
        Self {
            guard: Some(guard),
            listen: listen[0],
            dir,
        }
    }

    /// Where the agent's `dns.servers` points.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen, 53)
    }

    /// The agent config section that uses this server.
    pub fn config(&self) -> String {
        format!("dns: {{servers: [\"{}\"], timeout: 1s}}\n", self.addr())
    }

    /// Replaces the exact names' addresses; the server re-reads them at once (SIGHUP).
    pub fn set_hosts(&self, hosts: &[(&str, IpAddr)]) {
        write_hosts(self.dir.path(), hosts.iter().map(|(n, a)| (*n, *a)));
        if let Some(g) = &self.guard
            && let Some(c) = &g.child
            && let Ok(pid) = libc::pid_t::try_from(c.id())
        {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGHUP) };
        }
    }

    /// Stops the server: lookups fail from now on.
    pub fn stop(&mut self) {
        self.guard = None;
    }
}

fn write_hosts<'a>(dir: &Path, hosts: impl Iterator<Item = (&'a str, IpAddr)>) {
    let text: String = hosts.map(|(n, a)| format!("{a} {n}\n")).collect();
    fs::write(dir.join("hosts"), text).expect("write the DNS hosts file");
}

/// Listeners in the internet namespace (`probe serve`); killed on drop.
#[must_use = "dropping the guard stops the servers"]
pub struct ServerGuard {
    child: Option<Child>,
    live: Arc<Mutex<Vec<u32>>>,
    printed: Lines,
}

impl ServerGuard {
    /// The addresses connections arrived on so far (greeting test hosts only), in order:
    /// what reached the far side, whatever the client was told.
    pub fn accepted(&self) -> Vec<SocketAddr> {
        self.printed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|l| l.strip_prefix("accepted ")?.parse().ok())
            .collect()
    }

    /// Forgets what [`ServerGuard::accepted`] reported so far.
    pub fn clear_accepted(&self) {
        self.printed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        // Under the lock, so that the topology never kills a pid reaped (and reusable) here.
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            live.retain(|&p| p != c.id());
        }
    }
}

/// A network namespace with only a loopback: a Kubernetes node's own namespace, apart from
/// its pods' (the client namespace). Removed on drop.
#[must_use = "dropping the guard removes the namespace"]
pub struct NodeNetns {
    name: String,
}

impl Default for NodeNetns {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeNetns {
    pub fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let ns = Self {
            name: format!("{NETNS_PREFIX}n-{}-{n}", std::process::id()),
        };
        ip(&["netns", "add", &ns.name])
            .and_then(|()| ip(&["-n", &ns.name, "link", "set", "lo", "up"]))
            .unwrap_or_else(|e| panic!("creating {}: {e}", ns.name));
        ns
    }

    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }
}

impl NodeNetns {
    /// A resolver on this namespace's own loopback (127.0.0.53), for an agent that runs here.
    pub fn dns(&self, records: &DnsRecords) -> DnsServer {
        DnsServer::start(
            &self.path(),
            &[IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53))],
            records,
            &Arc::default(),
        )
    }
}

impl Drop for NodeNetns {
    fn drop(&mut self) {
        let path = self.path();
        kill_netns_processes(&path);
        if path.exists()
            && let Err(e) = ip(&["netns", "del", &self.name])
        {
            cleanup_failed(e);
        }
    }
}

/// A client network namespace whose only way out is a veth to an "internet" namespace that
/// holds the test hosts ([`TEST_HOSTS`]) on its `lo`.
///
/// ```text
/// client netns pt-c-<pid>-<n>                 internet netns pt-i-<pid>-<n>
///   ptc<n> 198.51.100.1/24 2001:db8::1/64 <-> pti<n> 198.51.100.2/24 2001:db8::2/64
///   default via 198.51.100.2, 2001:db8::2       lo: the test hosts
/// ```
#[must_use = "dropping the guard removes the namespaces"]
pub struct Topology {
    client: String,
    internet: String,
    /// The veth ends: in the client namespace, and in the internet one.
    client_if: String,
    internet_if: String,
    servers: Arc<Mutex<Vec<u32>>>,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Topology {
    pub fn new() -> Self {
        cleanup_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let topo = Self {
            client: format!("{NETNS_PREFIX}c-{pid}-{n}"),
            internet: format!("{NETNS_PREFIX}i-{pid}-{n}"),
            client_if: format!("ptc{n}"),
            internet_if: format!("pti{n}"),
            servers: Arc::default(),
        };
        // The guard exists before the first namespace does: a failure below cleans up.
        topo.setup(n)
            .unwrap_or_else(|e| panic!("building the topology: {e}"));
        topo
    }

    fn setup(&self, _n: u32) -> Result<(), String> {
        let (c, i) = (self.client.as_str(), self.internet.as_str());
        // Interface names live inside the namespaces, so the counter alone keeps them
        // unique and within IFNAMSIZ.
        let (cif, iif) = (self.client_if.clone(), self.internet_if.clone());
        ip(&["netns", "add", c])?;
        ip(&["netns", "add", i])?;
        // Created inside the client namespace with its peer placed directly in the internet
        // one: the root namespace never sees either end.
        ip(&[
            "-n", c, "link", "add", &cif, "type", "veth", "peer", "name", &iif, "netns", i,
        ])?;
        // Links up before any address: IPv6 addresses added to a down device drop what
        // arrives for them (Ip6InNoRoutes) for about a second after the link comes up, which
        // costs the first IPv6 connect a SYN retransmission.
        for (ns, dev) in [(c, "lo"), (i, "lo"), (c, cif.as_str()), (i, iif.as_str())] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        let cv4 = format!("{CLIENT_V4}/24");
        let cv6 = format!("{CLIENT_V6}/64");
        let iv4 = format!("{INTERNET_V4}/24");
        let iv6 = format!("{INTERNET_V6}/64");
        // nodad: a tentative address cannot be used for a second or so.
        ip(&["-n", c, "addr", "add", &cv4, "dev", &cif])?;
        ip(&["-n", c, "addr", "add", &cv6, "dev", &cif, "nodad"])?;
        ip(&["-n", i, "addr", "add", &iv4, "dev", &iif])?;
        ip(&["-n", i, "addr", "add", &iv6, "dev", &iif, "nodad"])?;
        ip(&[
            "-n",
            c,
            "route",
            "add",
            "default",
            "via",
            &INTERNET_V4.to_string(),
        ])?;
        ip(&[
            "-n",
            c,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &INTERNET_V6.to_string(),
        ])?;
        for host in TEST_HOSTS {
            let cidr = match host {
                IpAddr::V4(a) => format!("{a}/32"),
                IpAddr::V6(a) => format!("{a}/128"),
            };
            ip(&["-n", i, "addr", "add", &cidr, "dev", "lo"])?;
            // Hosts inside the on-link /24 would otherwise be ARPed for on the veth, which
            // only works while the internet namespace answers ARP for its lo addresses
            // (arp_ignore 0, inherited from the host).
            if let IpAddr::V4(a) = host
                && a.octets()[..3] == CLIENT_V4.octets()[..3]
            {
                ip(&[
                    "-n",
                    c,
                    "route",
                    "add",
                    &cidr,
                    "via",
                    &INTERNET_V4.to_string(),
                ])?;
            }
        }
        // Ping sockets for every group in the client namespace, as container runtimes set it
        // (the kernel default allows none): the tests can then show what they do.
        run_in_netns(netns_path(c), || {
            fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
        })
        .map_err(|e| format!("net.ipv4.ping_group_range in {c}: {e}"))?;
        Ok(())
    }

    /// The client end of the veth, in the client namespace.
    pub fn client_iface(&self) -> &str {
        &self.client_if
    }

    /// A capture on the internet side of the veth: every IP packet that arrives from the
    /// client namespace. What did (or did not) get out, whatever the client was told.
    pub fn capture(&self) -> Capture {
        let mut cmd = Command::new(probe_bin());
        cmd.arg("capture")
            .arg("--netns")
            .arg(self.internet_netns_path())
            .args(["--iface", &self.internet_if]);
        let (child, printed) = spawn_ready_lines(cmd, "probe capture");
        self.servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(child.id());
        Capture {
            _guard: ServerGuard {
                child: Some(child),
                live: Arc::clone(&self.servers),
                printed: Arc::clone(&printed),
            },
            printed,
        }
    }

    /// `probe udp|raw|dns ARGS` from `cgroup` in the client namespace: its JSON outcome.
    pub fn side_door(&self, cgroup: &TestCgroup, args: &[&str]) -> serde_json::Value {
        let out = Command::new(probe_bin())
            .arg(args[0])
            .arg("--cgroup")
            .arg(cgroup.path())
            .arg("--netns")
            .arg(self.client_netns_path())
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .expect("running probe");
        assert!(
            out.status.success(),
            "probe {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("probe {args:?} prints JSON: {e}"))
    }

    pub fn client_netns(&self) -> &str {
        &self.client
    }

    pub fn internet_netns(&self) -> &str {
        &self.internet
    }

    pub fn client_netns_path(&self) -> PathBuf {
        netns_path(&self.client)
    }

    pub fn internet_netns_path(&self) -> PathBuf {
        netns_path(&self.internet)
    }

    /// Test hosts listening on `addrs` (each must be a [`TEST_HOSTS`] address). Every
    /// connection gets `hello from <addr:port>\n`, then an echo of what the client sent.
    pub fn serve(&self, addrs: &[SocketAddr]) -> ServerGuard {
        self.spawn_server(addrs, None)
    }

    /// Test hosts that accept and close at once, for benchmarks: no greeting, a deep
    /// accept queue, no thread per connection.
    pub fn sink(&self, addrs: &[SocketAddr]) -> ServerGuard {
        self.spawn_server(addrs, Some("--sink"))
    }

    /// Test hosts that echo every byte until the client half-closes, for bulk transfers.
    pub fn echo(&self, addrs: &[SocketAddr]) -> ServerGuard {
        self.spawn_server(addrs, Some("--echo"))
    }

    /// `probe bulk` from `cgroup`: sends `head` then `bytes` bytes to an echo host and reads
    /// the echo. Returns its JSON report.
    pub fn bulk(
        &self,
        cgroup: &TestCgroup,
        dest: SocketAddr,
        head: &str,
        bytes: u64,
    ) -> serde_json::Value {
        self.bulk_bytes(cgroup, dest, head.as_bytes(), bytes)
    }

    /// [`Topology::bulk`] with a binary head (a TLS ClientHello).
    pub fn bulk_bytes(
        &self,
        cgroup: &TestCgroup,
        dest: SocketAddr,
        head: &[u8],
        bytes: u64,
    ) -> serde_json::Value {
        let out = Command::new(probe_bin())
            .arg("bulk")
            .arg("--cgroup")
            .arg(cgroup.path())
            .arg("--netns")
            .arg(self.client_netns_path())
            .args(["--send-hex", &to_hex(head), "--bytes", &bytes.to_string()])
            .arg(dest.to_string())
            .stdin(Stdio::null())
            .output()
            .expect("running probe bulk");
        assert!(
            out.status.success(),
            "probe bulk: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("probe bulk prints JSON")
    }

    fn spawn_server(&self, addrs: &[SocketAddr], mode: Option<&str>) -> ServerGuard {
        let mut cmd = Command::new(probe_bin());
        cmd.arg("serve");
        if let Some(m) = mode {
            cmd.arg(m);
        }
        cmd.arg("--netns")
            .arg(self.internet_netns_path())
            .args(addrs.iter().map(ToString::to_string));
        let (child, printed) = spawn_ready_lines(cmd, "probe serve");
        self.servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(child.id());
        ServerGuard {
            child: Some(child),
            live: Arc::clone(&self.servers),
            printed,
        }
    }

    /// Runs a real client (curl, openssl) to completion from `cgroup`, in the client
    /// namespace, with `stdin` as its input. Returns its exit status and output.
    pub fn run_client(
        &self,
        cgroup: &TestCgroup,
        program: &str,
        args: &[&str],
        stdin: &[u8],
    ) -> std::process::Output {
        let mut cmd = Command::new(probe_bin());
        cmd.arg("exec")
            .arg("--cgroup")
            .arg(cgroup.path())
            .arg("--netns")
            .arg(self.client_netns_path())
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
        let mut input = child.stdin.take().expect("piped stdin");
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = io::Write::write_all(&mut input, &data);
        });
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for {program}: {e}"));
        let _ = writer.join();
        out
    }

    /// A real server (openssl s_server, nghttpd) in the internet namespace, killed with the
    /// guard. Returns once `ready` accepts connections (from inside that namespace).
    pub fn spawn_host(&self, program: &str, args: &[&str], ready: SocketAddr) -> ServerGuard {
        assert!(
            TEST_HOSTS.contains(&ready.ip()),
            "{ready} is not a test host address"
        );
        let mut cmd = Command::new(probe_bin());
        cmd.arg("exec")
            .arg("--netns")
            .arg(self.internet_netns_path())
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
        self.servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(child.id());
        let guard = ServerGuard {
            child: Some(child),
            live: Arc::clone(&self.servers),
            printed: Lines::default(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let up = run_in_netns(self.internet_netns_path(), || {
            while Instant::now() < deadline {
                if std::net::TcpStream::connect_timeout(&ready, Duration::from_millis(200)).is_ok()
                {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        });
        assert!(up, "{program} did not start listening on {ready}");
        guard
    }

    /// A real DNS server (dnsmasq) in the internet namespace at [`DNS_V4`]:53 and
    /// [`DNS_V6`]:53 answering `records`; see [`DnsServer`].
    pub fn dns(&self, records: &DnsRecords) -> DnsServer {
        DnsServer::start(
            &self.internet_netns_path(),
            &[IpAddr::V4(DNS_V4), IpAddr::V6(DNS_V6)],
            records,
            &self.servers,
        )
    }

    /// `probe flood`: `n` connects from `cgroup` as fast as one process can make them.
    pub fn flood(&self, cgroup: &TestCgroup, dest: SocketAddr, n: u64) -> serde_json::Value {
        self.flood_with(cgroup, dest, n, false)
    }

    /// [`Topology::flood`], each connect to a destination of its own (`probe flood --distinct`).
    pub fn flood_distinct(
        &self,
        cgroup: &TestCgroup,
        first: SocketAddr,
        n: u64,
    ) -> serde_json::Value {
        self.flood_with(cgroup, first, n, true)
    }

    fn flood_with(
        &self,
        cgroup: &TestCgroup,
        dest: SocketAddr,
        n: u64,
        distinct: bool,
    ) -> serde_json::Value {
        let out = Command::new(probe_bin())
            .arg("flood")
            .args(distinct.then_some("--distinct"))
            .arg("--cgroup")
            .arg(cgroup.path())
            .arg("--netns")
            .arg(self.client_netns_path())
            .args(["--bytes", &n.to_string()])
            .arg(dest.to_string())
            .stdin(Stdio::null())
            .output()
            .expect("running probe flood");
        assert!(
            out.status.success(),
            "probe flood: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("probe flood prints JSON")
    }

    /// [`Topology::connect`], also returning the probe's process id.
    pub fn connect_pid(
        &self,
        cgroup: Option<&TestCgroup>,
        dest: SocketAddr,
        opts: &ProbeOptions,
    ) -> (ProbeResult, u32) {
        let (line, result) = self.connect_line(cgroup, dest, opts);
        let pid = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["pid"].as_u64())
            .and_then(|p| u32::try_from(p).ok())
            .expect("probe reports its pid");
        (result, pid)
    }

    /// One connect from the client namespace, from `cgroup` if given (else from the test's
    /// own cgroup). The probe joins the cgroup before it enters the namespace.
    pub fn connect(
        &self,
        cgroup: Option<&TestCgroup>,
        dest: SocketAddr,
        opts: &ProbeOptions,
    ) -> ProbeResult {
        self.connect_line(cgroup, dest, opts).1
    }

    /// The probe's JSON line and its parsed result.
    fn connect_line(
        &self,
        cgroup: Option<&TestCgroup>,
        dest: SocketAddr,
        opts: &ProbeOptions,
    ) -> (String, ProbeResult) {
        let mut cmd = Command::new(probe_bin());
        cmd.arg("connect");
        if let Some(cg) = cgroup {
            cmd.arg("--cgroup").arg(cg.path());
        }
        cmd.arg("--netns")
            .arg(self.client_netns_path())
            .arg("--timeout-ms")
            .arg(opts.timeout.as_millis().to_string())
            .arg("--read")
            .arg(opts.read.to_string());
        if let Some(text) = &opts.send {
            cmd.arg("--send").arg(text);
        }
        if let Some(bytes) = &opts.send_bytes {
            cmd.arg("--send-hex").arg(to_hex(bytes));
        }
        if !opts.hold.is_zero() {
            cmd.arg("--hold-ms").arg(opts.hold.as_millis().to_string());
        }
        if opts.v4mapped {
            cmd.arg("--v4mapped");
        }
        if opts.udp {
            cmd.arg("--udp");
        }
        cmd.arg(dest.to_string()).stdin(Stdio::null());
        let out = cmd.output().expect("running probe connect");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "probe connect {dest}: {}: {}",
            out.status,
            stderr.trim()
        );
        let line = stdout.trim().to_string();
        let result = ProbeResult::parse(&line).unwrap_or_else(|e| panic!("{e}; stderr: {stderr}"));
        (line, result)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        {
            let live = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
            live.iter().copied().for_each(kill_pid);
        }
        for name in [&self.client, &self.internet] {
            let path = netns_path(name);
            // A namespace outlives its bind mount while processes (an agent, a server) are
            // in it, and so would its veth and addresses.
            kill_netns_processes(&path);
            if path.exists()
                && let Err(e) = ip(&["netns", "del", name])
            {
                cleanup_failed(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape(r"/odd\9"), r"/odd\9");
        assert_eq!(unescape(r"/big\777"), r"/big\777");
        assert_eq!(unescape(r"/sign\+12"), r"/sign\+12");
    }

    #[test]
    fn owners_are_read_from_names() {
        assert_eq!(owner_pid("c-123-4"), Some(123));
        assert_eq!(owner_pid("123-0"), Some(123));
        assert_eq!(owner_pid("foo"), None);
        assert_eq!(owner_pid("x-y-1"), None);
    }

    #[test]
    fn probe_output_is_parsed() {
        assert_eq!(
            ProbeResult::parse(r#"{"ok":true,"received":"hi\n","peer":"[2001:db8::1]:80"}"#),
            Ok(ProbeResult::Connected {
                received: "hi\n".into(),
                raw: b"hi\n".to_vec(),
                peer: "[2001:db8::1]:80".into()
            })
        );
        let denied = ProbeResult::parse(
            r#"{"ok":false,"errno":1,"error":"Operation not permitted (os error 1)","stage":"connect"}"#,
        )
        .expect("parses");
        assert!(denied.is_eperm() && !denied.is_connected() && denied.received().is_empty());
        assert!(ProbeResult::parse("garbage").is_err());
        assert!(ProbeResult::parse(r#"{"ok":false,"stage":"connect"}"#).is_err());
    }
}
