//! Sockets in another network namespace: one agent serves every pod of its node by opening
//! a proxy listener inside each pod's namespace, and makes each pod's upstream connections
//! from that namespace too, so destinations, NetworkPolicies and egress NAT see the pod's
//! address, never the node's.
//!
//! A socket belongs to the namespace of the thread that created it, for its whole life. So
//! each socket is created on a short-lived thread that first enters the namespace; the
//! agent's own threads never change namespace.

use std::{
    fs::File,
    io,
    net::SocketAddr,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::Path,
};

/// A network namespace, held open.
#[derive(Debug)]
pub struct Netns {
    file: File,
    /// The namespace's inode: equal inodes are the same namespace.
    pub inode: u64,
}

impl Netns {
    /// The namespace of a process (`/proc/<pid>/ns/net`).
    pub fn of_pid(pid: u32) -> io::Result<Self> {
        Self::open(Path::new(&format!("/proc/{pid}/ns/net")))
    }

    /// The agent's own namespace.
    pub fn own() -> io::Result<Self> {
        Self::open(Path::new("/proc/self/ns/net"))
    }

    fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let inode = file.metadata()?.ino();
        Ok(Self { file, inode })
    }

    /// Runs `f` on a thread inside this namespace.
    pub(crate) fn within<T: Send>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send,
    ) -> io::Result<T> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a namespace fd that outlives this thread; only this
                // thread changes namespace, and it ends right after.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
        })
    }

    /// A listening socket bound to `addr` in this namespace.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        let l = self.within(|| std::net::TcpListener::bind(addr))?;
        l.set_nonblocking(true)?;
        Ok(l)
    }

    /// An unconnected, non-blocking TCP socket of `addr`'s family in this namespace.
    pub fn socket_for(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpSocket> {
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let fd = self.within(|| {
            // SAFETY: plain socket(2); the descriptor is owned below.
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
            // SAFETY: a fresh descriptor nobody else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })?;
        Ok(tokio::net::TcpSocket::from_std_stream(
            std::net::TcpStream::from(fd),
        ))
    }
}

/// A process in a cgroup or any cgroup below it: the pod's pause container, or any of its
/// containers (they share the pod's network namespace).
pub fn pid_in_cgroup(dir: &Path) -> Option<u32> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    if let Some(pid) = procs.lines().find_map(|l| l.trim().parse().ok()) {
        return Some(pid);
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| pid_in_cgroup(&e.path()))
}
