//! Zero-copy forwarding for an allowed connection: each direction moves bytes socket -> pipe
//! -> socket with `splice(2)`, so the payload never enters the agent's memory. Each side's
//! end of stream is passed on as a half-close, and forwarding ends when both directions
//! have ended (or either fails).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use tokio::{io::Interest, net::TcpStream};

/// Bytes one `splice` call may move, and the pipe size asked for.
const CHUNK: usize = 1 << 20;

/// Forwards both directions until both have ended. Returns the bytes moved (client to
/// upstream, upstream to client).
pub async fn splice_both(client: &TcpStream, upstream: &TcpStream) -> io::Result<(u64, u64)> {
    let up = Pipe::new()?;
    let down = Pipe::new()?;
    tokio::try_join!(
        one_way(client, upstream, &up),
        one_way(upstream, client, &down)
    )
}

/// A non-blocking pipe: the kernel buffer the bytes pass through.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds: [RawFd; 2] = [-1; 2];
        // SAFETY: pipe2 writes two descriptors into the array we own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe means fewer system calls per byte; the default (64 KiB) still works
        // if the limit for unprivileged pipes refuses it.
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        Ok(Self { read, write })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain splice(2) between descriptors that stay open for the call.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

async fn one_way(from: &TcpStream, to: &TcpStream, pipe: &Pipe) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket has nothing to read.
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // End of stream: pass the half-close on; the other direction goes on.
            // SAFETY: shutdown(2) on a socket we hold.
            unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) };
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
}
