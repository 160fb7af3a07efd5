//! New pod cgroups, as the kubelet creates them: an inotify watch on the kubepods cgroup and
//! its QoS children, so a pod's entry is written as soon as its cgroup appears, before its
//! containers start, instead of at the next look.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use tokio::sync::mpsc;

/// Adds a watch for new directories in `dir`.
fn add(fd: RawFd, dir: &Path) -> io::Result<()> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated path for the duration of the call.
    let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_CREATE | libc::IN_ONLYDIR) };
    if wd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Watches `kubepods` and the directories directly below it (the QoS classes, and the pod
/// cgroups of Guaranteed pods) for new directories, and sends a wake-up for each. Runs on a
/// thread of its own until the receiver goes away.
pub fn watch(kubepods: PathBuf, tx: mpsc::Sender<()>) -> io::Result<()> {
    // SAFETY: plain inotify_init1; the descriptor is owned below.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    add(fd.as_raw_fd(), &kubepods)?;
    for e in std::fs::read_dir(&kubepods)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = add(fd.as_raw_fd(), &e.path());
        }
    }
    std::thread::Builder::new()
        .name("pod-cgroups".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                // SAFETY: read into a buffer we own, within its length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    return;
                }
                // A new QoS class directory: watch it too (its pods are created inside).
                let mut off = 0usize;
                let n = n as usize;
                while off + size_of::<libc::inotify_event>() <= n {
                    // SAFETY: the kernel wrote a whole event header at `off`.
                    let ev: libc::inotify_event =
                        unsafe { std::ptr::read_unaligned(buf.as_ptr().add(off).cast()) };
                    let name_start = off + size_of::<libc::inotify_event>();
                    let name_end = (name_start + ev.len as usize).min(n);
                    let name = buf[name_start..name_end]
                        .split(|&b| b == 0)
                        .next()
                        .unwrap_or(&[]);
                    let name = String::from_utf8_lossy(name);
                    if (name.contains("burstable") || name.contains("besteffort"))
                        && super::cgroups::pod_uid_of_dir(&name).is_none()
                    {
                        let _ = add(fd.as_raw_fd(), &kubepods.join(name.as_ref()));
                    }
                    off = name_end;
                }
                if tx.blocking_send(()).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}
