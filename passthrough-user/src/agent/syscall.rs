//! The two map operations aya 0.14 has no API for: `BPF_MAP_UPDATE_BATCH` (a million entries
//! in a few thousand syscalls instead of a million) and `BPF_MAP_DELETE_ELEM` on a map of maps.
//! Each is one `bpf(2)` call with the attribute layout of `include/uapi/linux/bpf.h`.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use super::store::Cancel;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// `ENOTSUPP` (kernel-internal, 524): a map type without batch operations.
const ENOTSUPP: i32 = 524;

/// Entries per batch: bounded so that a cancelled change stops within a few milliseconds.
pub const BATCH: usize = 32_768;

/// `union bpf_attr` for the element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for the batch commands.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: `attr` is a valid, initialised attribute of the size passed, for a command that
    // reads (and, for batches, updates `count` in) exactly that struct.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Deletes `key` from a map; an absent key is not an error.
pub fn delete<K>(fd: BorrowedFd<'_>, key: &K) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: 0,
        flags: 0,
    };
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// The value at `key`, `None` when absent.
pub fn lookup<K, V: Default>(fd: BorrowedFd<'_>, key: &K) -> io::Result<Option<V>> {
    let mut value = V::default();
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_mut(&mut value) as u64,
        flags: 0,
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(()) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes one entry.
pub fn update_one<K, V>(fd: BorrowedFd<'_>, key: &K, value: &V) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_ref(value) as u64,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
}

/// Writes every `(keys[i], values[i])`, in batches where the map type has them and one by one
/// where it has not. `ENOMEM` and `EAGAIN` are retried once after a pause; any other error
/// stops with the errno.
pub fn update_all<K: Copy, V: Copy>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
    cancel: &Cancel,
) -> Result<(), UpdateError> {
    debug_assert_eq!(keys.len(), values.len());
    let mut batched = true;
    let mut done = 0;
    while done < keys.len() {
        if cancel.is_cancelled() {
            return Err(UpdateError::Cancelled);
        }
        let end = (done + BATCH).min(keys.len());
        let (k, v) = (&keys[done..end], &values[done..end]);
        let result = if batched {
            match batch(fd, k, v) {
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP)
                    ) =>
                {
                    batched = false;
                    continue;
                }
                r => r,
            }
        } else {
            k.iter()
                .zip(v)
                .try_for_each(|(key, value)| update_one(fd, key, value))
        };
        match result {
            Ok(()) => done = end,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOMEM | libc::EAGAIN)) => {
                std::thread::sleep(std::time::Duration::from_millis(50));
                let retry = if batched {
                    batch(fd, k, v)
                } else {
                    k.iter()
                        .zip(v)
                        .try_for_each(|(key, value)| update_one(fd, key, value))
                };
                retry.map_err(UpdateError::Kernel)?;
                done = end;
            }
            Err(e) => return Err(UpdateError::Kernel(e)),
        }
    }
    Ok(())
}

fn batch<K, V>(fd: BorrowedFd<'_>, keys: &[K], values: &[V]) -> io::Result<()> {
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    if attr.count as usize != keys.len() {
        return Err(io::Error::other(format!(
            "the kernel wrote {} of {} entries",
            attr.count,
            keys.len()
        )));
    }
    Ok(())
}

/// Why [`update_all`] stopped.
#[derive(Debug)]
pub enum UpdateError {
    Kernel(io::Error),
    Cancelled,
}
