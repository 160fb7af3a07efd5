//! `bench client ...`: the measuring process. The parent re-executes itself so the client
//! sits in the workload cgroup and the client network namespace.
//!
//! Every connect is timed twice: the `connect()` syscall alone, on a non-blocking socket (it
//! returns once the SYN is queued, so it measures the hooks and not the round trip), and the
//! whole handshake, from `socket()` to the connection being established (or refused), which
//! also includes the `sock_create` hook and the round trip.

use std::{
    fs,
    io::{self, Write as _},
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    process::ExitCode,
    time::Instant,
};

/// Connects timed in one cgroup before the client moves to the other.
pub const BATCH: usize = 20;

/// How one connect ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    Connected,
    /// Refused by a cgroup program.
    Eperm,
    /// Answered with a reset (nftables' `reject with tcp reset`).
    Refused,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Connected => "connected",
            Outcome::Eperm => "EPERM",
            Outcome::Refused => "ECONNREFUSED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Outcome::Connected, Outcome::Eperm, Outcome::Refused]
            .into_iter()
            .find(|o| o.name() == s)
    }
}

/// One timed connect: (syscall ns, handshake ns, outcome).
fn one(dest: &SocketAddr) -> io::Result<(u64, u64, Outcome)> {
    let (family, storage, len) = sockaddr(dest);
    let t0 = Instant::now();
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor socket(2) just returned.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let t1 = Instant::now();
    // SAFETY: `storage` holds a sockaddr of `len` bytes.
    let r = unsafe { libc::connect(fd, (&raw const storage).cast(), len) };
    let syscall = t1.elapsed();
    let mut err = if r == 0 {
        0
    } else {
        io::Error::last_os_error().raw_os_error().unwrap_or(0)
    };
    if err == libc::EINPROGRESS {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 2000) } != 1 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in 2 s"));
        }
        let mut so_error: libc::c_int = 0;
        let mut l = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt with a correctly sized option buffer.
        unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut so_error).cast(),
                &mut l,
            );
        }
        err = so_error;
    }
    let handshake = t0.elapsed();
    let outcome = match err {
        0 => Outcome::Connected,
        libc::EPERM => Outcome::Eperm,
        libc::ECONNREFUSED => Outcome::Refused,
        e => return Err(io::Error::from_raw_os_error(e)),
    };
    // RST instead of FIN: no TIME_WAIT, so ports never run out.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    Ok((
        syscall.as_nanos() as u64,
        handshake.as_nanos() as u64,
        outcome,
    ))
}

fn sockaddr(dest: &SocketAddr) -> (i32, libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match dest {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    let family = if dest.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    (family, storage, len as libc::socklen_t)
}

/// `client CGROUP BASELINE NETNS DEST COUNT`: enters the netns, then times COUNT connects
/// (after COUNT/10 unmeasured ones) in batches of [`BATCH`], alternately from CGROUP and from
/// the BASELINE cgroup (which has no program), so both see the same machine state. Prints
/// one line per measured connect: `w|b BATCH SYSCALL_NS HANDSHAKE_NS OUTCOME`.
pub fn client(args: &[String]) -> ExitCode {
    let [cgroup, baseline, netns, dest, count] = args else {
        eprintln!("usage: bench client CGROUP BASELINE NETNS DEST COUNT");
        return ExitCode::from(2);
    };
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
    if crate::enter_netns(netns).is_err() {
        return ExitCode::from(2);
    }
    // One CPU for the whole run: a migration mid-run would split the sample in two modes.
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
    let mut out = String::with_capacity(count * 2 * 32);
    let total = 2 * count;
    let warmup = total / 10;
    for i in 0..total + warmup {
        let in_baseline = (i / BATCH) % 2 == 1;
        if i % BATCH == 0 && !join(if in_baseline { baseline } else { cgroup }) {
            return ExitCode::from(2);
        }
        let (sys, hs, outcome) = match one(&dest) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("connect {dest}: {e}");
                return ExitCode::from(1);
            }
        };
        if in_baseline && outcome != Outcome::Connected {
            eprintln!(
                "connect {dest} with no program: {} (the baseline must connect)",
                outcome.name()
            );
            return ExitCode::from(1);
        }
        if i >= warmup {
            use std::fmt::Write as _;
            let side = if in_baseline { 'b' } else { 'w' };
            let _ = writeln!(out, "{side} {} {sys} {hs} {}", i / BATCH, outcome.name());
        }
    }
    let _ = io::stdout().write_all(out.as_bytes());
    ExitCode::SUCCESS
}
