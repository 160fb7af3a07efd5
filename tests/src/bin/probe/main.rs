//! `probe`: the processes of the kernel tests, driven by the harness in `passthrough_tests`.
//!
//! - `probe connect [--cgroup DIR] [--netns PATH] [--timeout-ms N] [--read N] [--send TEXT]
//!   [--send-hex HEX] [--hold-ms N] [--v4mapped] [--udp] ADDR:PORT` prints one JSON line with
//!   the outcome of one connect().
//! - `probe serve [--netns PATH] [--sink|--echo] ADDR:PORT...` greets every connection (or,
//!   with `--sink`, closes it at once; with `--echo`, echoes everything), prints `ready`.
//! - `probe sleep [--cgroup DIR] [--netns PATH]` stands in for a long-running workload.
//! - `probe bulk [--cgroup DIR] [--netns PATH] [--send HEAD] [--send-hex HEX] --bytes N
//!   ADDR:PORT` sends HEAD then N pseudo-random bytes to an echo host while reading the echo,
//!   and prints one JSON line with the byte counts and checksums of both directions.
//! - `probe exec [--cgroup DIR] [--netns PATH] -- PROGRAM ARGS...` runs a real client (curl,
//!   openssl) or server from the cgroup, in the namespace.
//!
//! - `probe udp|dns|raw|capture ...`: what does not go through `connect()`; see
//!   [`sidedoor`].
//!
//! Exit status 2 means a usage or setup error; a refused connect is a result, not an error.

mod sidedoor;

use std::{
    io::{self, Read as _, Write as _},
    mem,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use serde_json::json;

/// The probe refuses to join any cgroup outside the harness's own, so that a mistaken path
/// cannot move it (and what it does) into a real workload's cgroup.
const CGROUP_MARK: &str = "passthrough-test-";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("connect") => connect_cmd(&args[1..]),
        Some("serve") => serve_cmd(&args[1..]),
        Some("sleep") => sleep_cmd(&args[1..]),
        Some("exec") => exec_cmd(&args[1..]),
        Some("bulk") => bulk_cmd(&args[1..]),
        Some("flood") => flood_cmd(&args[1..]),
        Some("udp") => sidedoor::udp_cmd(&args[1..]),
        Some("dns") => sidedoor::dns_cmd(&args[1..]),
        Some("raw") => sidedoor::raw_cmd(&args[1..]),
        Some("capture") => sidedoor::capture_cmd(&args[1..]),
        _ => Err(usage()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("probe: {e}");
            ExitCode::from(2)
        }
    }
}

fn usage() -> String {
    "usage: probe connect [--cgroup DIR] [--netns PATH] [--timeout-ms N] [--read N] \
     [--send TEXT] [--send-hex HEX] [--hold-ms N] [--v4mapped] [--udp] ADDR:PORT | probe serve [--netns PATH] [--sink|--echo] ADDR:PORT... | \
     probe sleep [--cgroup DIR] [--netns PATH] | probe exec [--cgroup DIR] [--netns PATH] -- PROGRAM ARGS..."
        .to_string()
}

#[derive(Default)]
struct Opts {
    cgroup: Option<String>,
    netns: Option<String>,
    timeout_ms: Option<u64>,
    read: Option<usize>,
    send: Option<String>,
    send_hex: Option<Vec<u8>>,
    hold_ms: Option<u64>,
    v4mapped: bool,
    udp: bool,
    connected: bool,
    sink: bool,
    echo: bool,
    /// `flood`: each connect to a destination of its own.
    distinct: bool,
    bytes: Option<u64>,
    positional: Vec<String>,
}

fn parse(args: &[String], allowed: &[&str]) -> Result<Opts, String> {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a.starts_with("--") && !allowed.contains(&a.as_str()) {
            return Err(format!("unknown option {a}; {}", usage()));
        }
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--cgroup" => o.cgroup = Some(value()?),
            "--netns" => o.netns = Some(value()?),
            "--timeout-ms" => {
                o.timeout_ms = Some(value()?.parse().map_err(|e| format!("--timeout-ms: {e}"))?)
            }
            "--read" => o.read = Some(value()?.parse().map_err(|e| format!("--read: {e}"))?),
            "--send" => o.send = Some(value()?),
            "--hold-ms" => {
                o.hold_ms = Some(value()?.parse().map_err(|e| format!("--hold-ms: {e}"))?)
            }
            "--send-hex" => {
                let bytes = passthrough_tests::from_hex(&value()?);
                o.send_hex = Some(bytes.ok_or("--send-hex: not hex")?);
            }
            "--v4mapped" => o.v4mapped = true,
            "--udp" => o.udp = true,
            "--connected" => o.connected = true,
            "--sink" => o.sink = true,
            "--echo" => o.echo = true,
            "--distinct" => o.distinct = true,
            "--bytes" => o.bytes = Some(value()?.parse().map_err(|e| format!("--bytes: {e}"))?),
            _ => o.positional.push(a.clone()),
        }
    }
    Ok(o)
}

/// Joins the cgroup; must run before `enter_netns` so that the process is never seen in the
/// test namespace from its parent's cgroup.
fn enter_cgroup(dir: &str) -> Result<(), String> {
    let dir = Path::new(dir);
    if !dir
        .components()
        .any(|c| c.as_os_str().to_string_lossy().starts_with(CGROUP_MARK))
    {
        return Err(format!(
            "refusing to join {}: not a test cgroup ({CGROUP_MARK}*)",
            dir.display()
        ));
    }
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .map_err(|e| format!("joining {}: {e}", procs.display()))
}

fn enter_netns(path: &str) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("opening {path}: {e}"))?;
    // SAFETY: plain syscall on an fd we own; the probe is still single-threaded here.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns {path}: {}", io::Error::last_os_error()));
    }
    Ok(())
}

fn enter(o: &Opts) -> Result<(), String> {
    if let Some(cg) = &o.cgroup {
        enter_cgroup(cg)?;
    }
    if let Some(ns) = &o.netns {
        enter_netns(ns)?;
    }
    Ok(())
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("{s}: {e}"))
}

// ---------------------------------------------------------------------------------------
// connect

fn connect_cmd(args: &[String]) -> Result<(), String> {
    let o = parse(
        args,
        &[
            "--cgroup",
            "--netns",
            "--timeout-ms",
            "--read",
            "--send",
            "--send-hex",
            "--hold-ms",
            "--v4mapped",
            "--udp",
        ],
    )?;
    let [dest] = o.positional.as_slice() else {
        return Err(usage());
    };
    let mut dest = parse_addr(dest)?;
    if o.v4mapped {
        let SocketAddr::V4(v4) = dest else {
            return Err("--v4mapped needs an IPv4 destination".into());
        };
        dest = SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0));
    }
    enter(&o)?;
    let timeout = Duration::from_millis(o.timeout_ms.unwrap_or(3000));
    let mut send = o.send.unwrap_or_default().into_bytes();
    send.extend(o.send_hex.unwrap_or_default());
    let hold = Duration::from_millis(o.hold_ms.unwrap_or(0));
    let outcome = attempt(dest, o.udp, timeout, &send, hold, o.read.unwrap_or(256));
    let line = match outcome {
        Ok((received, peer)) => json!({
            "pid": std::process::id(),
            "ok": true,
            "received": String::from_utf8_lossy(&received),
            "receivedHex": passthrough_tests::to_hex(&received),
            "peer": peer.to_string(),
        }),
        Err((stage, e)) => json!({
            "pid": std::process::id(),
            "ok": false,
            "errno": e.raw_os_error().unwrap_or(0),
            "error": e.to_string(),
            "stage": stage,
        }),
    };
    println!("{line}");
    Ok(())
}

type Failure = (&'static str, io::Error);

fn at(stage: &'static str) -> impl FnOnce(io::Error) -> Failure {
    move |e| (stage, e)
}

fn attempt(
    dest: SocketAddr,
    udp: bool,
    timeout: Duration,
    send: &[u8],
    hold: Duration,
    read: usize,
) -> Result<(Vec<u8>, SocketAddr), Failure> {
    let family = if dest.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let ty = if udp {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    let fd = socket(family, ty).map_err(at("socket"))?;
    if udp {
        // A UDP connect() only sets the default peer: it is what the cgroup hooks see.
        connect_blocking(&fd, dest).map_err(at("connect"))?;
        let peer = peer_of(&fd).map_err(at("getpeername"))?;
        return Ok((Vec::new(), peer));
    }
    connect_with_timeout(&fd, dest, timeout).map_err(at("connect"))?;
    let peer = peer_of(&fd).map_err(at("getpeername"))?;
    set_blocking(&fd).map_err(at("connect"))?;
    let mut stream = TcpStream::from(fd);
    if !send.is_empty() {
        stream.write_all(send).map_err(at("send"))?;
    }
    // Keeping the write side open a while stands for a client that is slow to speak.
    std::thread::sleep(hold);
    // Half-closing tells the server that nothing more is coming, so it answers at once.
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(at("send"))?;
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while received.len() < read {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left)).map_err(at("recv"))?;
        let want = buf.len().min(read - received.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(("recv", e)),
        }
    }
    Ok((received, peer))
}

fn socket(family: i32, ty: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned by the OwnedFd on success.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut ss).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut ss).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read(std::ptr::from_ref(ss).cast()) };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(sin.sin_addr.s_addr).into(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read(std::ptr::from_ref(ss).cast()) };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        f => Err(io::Error::other(format!("unexpected address family {f}"))),
    }
}

fn connect_blocking(fd: &OwnedFd, dest: SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(dest);
    // SAFETY: ss/len describe a valid sockaddr for the call's duration.
    if unsafe { libc::connect(fd.as_raw_fd(), std::ptr::from_ref(&ss).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_nonblocking(fd: &OwnedFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a valid fd.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_blocking(fd: &OwnedFd) -> io::Result<()> {
    set_nonblocking(fd, false)
}

/// connect() with a deadline: non-blocking connect, then poll for writability. A verdict of
/// the cgroup programs comes back from connect() itself, before any packet is sent.
fn connect_with_timeout(fd: &OwnedFd, dest: SocketAddr, timeout: Duration) -> io::Result<()> {
    set_nonblocking(fd, true)?;
    match connect_blocking(fd, dest) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            continue;
        }
        let mut err: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: err/len are valid out-pointers of the right size.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                std::ptr::from_mut(&mut err).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        return if err == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(err))
        };
    }
}

fn peer_of(fd: &OwnedFd) -> io::Result<SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: ss/len are valid out-pointers.
    let rc =
        unsafe { libc::getpeername(fd.as_raw_fd(), std::ptr::from_mut(&mut ss).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    from_sockaddr(&ss)
}

// ---------------------------------------------------------------------------------------
// serve

fn serve_cmd(args: &[String]) -> Result<(), String> {
    let o = parse(args, &["--netns", "--sink", "--echo"])?;
    if o.positional.is_empty() {
        return Err(usage());
    }
    let sink = o.sink;
    let mode = if sink {
        Mode::Sink
    } else if o.echo {
        Mode::Echo
    } else {
        Mode::Greet
    };
    if sink {
        // Off the benchmark client's CPU (it pins itself to CPU 0), so accepting never
        // preempts the connects being timed.
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
        unsafe {
            let mut set: libc::cpu_set_t = mem::zeroed();
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            for cpu in 1..cpus.max(2) {
                libc::CPU_SET(cpu, &mut set);
            }
            libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    let addrs = o
        .positional
        .iter()
        .map(|s| parse_addr(s))
        .collect::<Result<Vec<_>, _>>()?;
    enter(&o)?;
    let mut listeners = Vec::new();
    for addr in addrs {
        listeners.push(listen(addr, sink).map_err(|e| format!("listening on {addr}: {e}"))?);
    }
    let handles: Vec<_> = listeners
        .into_iter()
        .map(|l| std::thread::spawn(move || accept_loop(&l, mode)))
        .collect();
    println!("ready");
    io::stdout().flush().map_err(|e| format!("stdout: {e}"))?;
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// A sink's accept queue: a benchmark client connects far faster than one thread accepts,
/// and a full queue drops SYNs, which costs the client a one-second retransmission.
const SINK_BACKLOG: libc::c_int = 4096;

fn listen(addr: SocketAddr, sink: bool) -> io::Result<TcpListener> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = socket(family, libc::SOCK_STREAM)?;
    let one: libc::c_int = 1;
    let setopt = |level, name| {
        // SAFETY: `one` is a valid c_int for the call's duration.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                std::ptr::from_ref(&one).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    setopt(libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    if addr.is_ipv6() {
        setopt(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?;
    }
    let (ss, len) = sockaddr(addr);
    // SAFETY: ss/len describe a valid sockaddr.
    if unsafe { libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&ss).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen on a bound socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), if sink { SINK_BACKLOG } else { 128 }) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(fd))
}

/// What a test host does with a connection.
#[derive(Clone, Copy)]
enum Mode {
    /// Greets, then echoes up to 64 KiB.
    Greet,
    /// Closes at once (benchmarks).
    Sink,
    /// Echoes everything until the client half-closes (bulk transfers).
    Echo,
}

/// Serves each connection on its own thread, or as a sink closes it at once.
fn accept_loop(l: &TcpListener, mode: Mode) {
    loop {
        match l.accept() {
            Ok(_) if matches!(mode, Mode::Sink) => {}
            Ok((s, _)) => {
                std::thread::spawn(move || {
                    let _ = match mode {
                        Mode::Echo => echo(s),
                        _ => greet(s),
                    };
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("probe serve: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Sends back every byte, then half-closes after the client did.
fn echo(mut s: TcpStream) -> io::Result<()> {
    // Large reads: the host should not be what limits a throughput benchmark.
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => s.write_all(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    s.shutdown(std::net::Shutdown::Write)
}

/// Greets, then echoes what the client sent before half-closing. Reading to EOF before
/// closing avoids a reset that could discard the greeting on the client's side.
fn greet(mut s: TcpStream) -> io::Result<()> {
    let local = s.local_addr()?;
    // The far side's own record of what reached it, for the harness (`ServerGuard::accepted`).
    println!("accepted {local}");
    s.write_all(format!("hello from {local}\n").as_bytes())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut got = Vec::new();
    (&mut s).take(64 * 1024).read_to_end(&mut got)?;
    if !got.is_empty() {
        if got.last() != Some(&b'\n') {
            got.push(b'\n');
        }
        s.write_all(&got)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// bulk

/// Order-sensitive checksum of a byte stream (a Fletcher-style sum over little-endian
/// 64-bit words), independent of how the stream is cut into reads, and cheap enough that the
/// client is not what limits a throughput benchmark.
#[derive(Default)]
struct Checksum {
    a: u64,
    b: u64,
    len: u64,
    /// Bytes of a word not complete yet.
    pending: [u8; 8],
    npending: usize,
}

impl Checksum {
    fn word(&mut self, w: [u8; 8]) {
        self.a = self.a.wrapping_add(u64::from_le_bytes(w));
        self.b = self.b.wrapping_add(self.a);
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.npending > 0 {
            let take = (8 - self.npending).min(data.len());
            self.pending[self.npending..self.npending + take].copy_from_slice(&data[..take]);
            self.npending += take;
            data = &data[take..];
            if self.npending < 8 {
                return;
            }
            self.word(self.pending);
            self.npending = 0;
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.word(w.try_into().expect("8 bytes"));
        }
        let rest = words.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npending = rest.len();
    }

    fn value(&self) -> String {
        // The partial last word counts, zero-padded.
        let mut last = [0u8; 8];
        last[..self.npending].copy_from_slice(&self.pending[..self.npending]);
        let a = self.a.wrapping_add(u64::from_le_bytes(last));
        let b = self.b.wrapping_add(a);
        format!("{a:016x}{b:016x}")
    }
}

fn bulk_cmd(args: &[String]) -> Result<(), String> {
    let o = parse(
        args,
        &["--cgroup", "--netns", "--send", "--send-hex", "--bytes"],
    )?;
    let [dest] = o.positional.as_slice() else {
        return Err(usage());
    };
    let dest = parse_addr(dest)?;
    let total = o.bytes.ok_or("--bytes is required")?;
    enter(&o)?;
    let stream = TcpStream::connect_timeout(&dest, Duration::from_secs(5))
        .map_err(|e| format!("connect {dest}: {e}"))?;
    let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
    let mut head = o.send.unwrap_or_default().into_bytes();
    head.extend(o.send_hex.unwrap_or_default());
    let sender = std::thread::spawn(move || -> io::Result<Checksum> {
        let mut w = stream;
        let mut sum = Checksum::default();
        w.write_all(&head)?;
        sum.update(&head);
        let mut block = vec![0u8; 1 << 20];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut left = total;
        while left > 0 {
            for chunk in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let bytes = x.to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
            let n = left.min(block.len() as u64) as usize;
            w.write_all(&block[..n])?;
            sum.update(&block[..n]);
            left -= n as u64;
        }
        w.shutdown(std::net::Shutdown::Write)?;
        Ok(sum)
    });
    let mut got = Checksum::default();
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let sent = sender
        .join()
        .map_err(|_| "sender panicked".to_string())?
        .map_err(|e| format!("send: {e}"))?;
    println!(
        "{}",
        json!({
            "sent": sent.len,
            "sentChecksum": sent.value(),
            "received": got.len,
            "receivedChecksum": got.value(),
            "seconds": secs,
        })
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// flood

/// `flood [--cgroup DIR] [--netns PATH] [--distinct] --bytes N ADDR:PORT`: N connects as fast
/// as possible; prints how many ended in EPERM, connected, or otherwise, and how long they
/// took. With `--distinct`, connect `i` goes to a destination of its own: port
/// `1 + i % 50000` of the IPv4 address `i / 50000` after ADDR.
fn flood_cmd(args: &[String]) -> Result<(), String> {
    let o = parse(args, &["--cgroup", "--netns", "--bytes", "--distinct"])?;
    let [dest] = o.positional.as_slice() else {
        return Err(usage());
    };
    let dest = parse_addr(dest)?;
    let n = o
        .bytes
        .ok_or("--bytes N (the number of connects) is required")?;
    enter(&o)?;
    let (mut eperm, mut connected, mut other) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    for i in 0..n {
        let dest = match (o.distinct, dest) {
            (true, SocketAddr::V4(v4)) => SocketAddr::from((
                Ipv4Addr::from(u32::from(*v4.ip()).wrapping_add((i / 50_000) as u32)),
                (1 + i % 50_000) as u16,
            )),
            (true, _) => return Err("--distinct needs an IPv4 destination".into()),
            (false, d) => d,
        };
        match TcpStream::connect_timeout(&dest, Duration::from_secs(2)) {
            Ok(_) => connected += 1,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => eperm += 1,
            Err(_) => other += 1,
        }
    }
    println!(
        "{}",
        json!({
            "pid": std::process::id(),
            "eperm": eperm,
            "connected": connected,
            "other": other,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// exec

fn exec_cmd(args: &[String]) -> Result<(), String> {
    let split = args.iter().position(|a| a == "--").ok_or_else(usage)?;
    let o = parse(&args[..split], &["--cgroup", "--netns"])?;
    let [program, rest @ ..] = &args[split + 1..] else {
        return Err(usage());
    };
    // The cgroup first, then the namespace: the process is never in the test namespace
    // outside its cgroup.
    enter(&o)?;
    let e =
        std::os::unix::process::CommandExt::exec(std::process::Command::new(program).args(rest));
    Err(format!("exec {program}: {e}"))
}

// ---------------------------------------------------------------------------------------
// sleep

fn sleep_cmd(args: &[String]) -> Result<(), String> {
    let o = parse(args, &["--cgroup", "--netns"])?;
    if !o.positional.is_empty() {
        return Err(usage());
    }
    enter(&o)?;
    // The harness waits for this line to know the process is in its cgroup.
    println!("ready");
    io::stdout().flush().map_err(|e| format!("stdout: {e}"))?;
    loop {
        std::thread::park();
    }
}
