//! The few bpf(2) commands the connect benchmark needs beyond what the agent does: an empty
//! `cgroup/connect4` / `connect6` program (the floor: what attaching any program costs), and
//! the kernel's per-program run statistics (`run_cnt`, `run_time_ns` of
//! `BPF_OBJ_GET_INFO_BY_FD`, counted while `BPF_ENABLE_STATS` is held), read for the programs
//! attached to a cgroup. aya 0.14 neither loads a program from raw instructions nor exposes
//! the run statistics, so these are raw syscalls on zeroed `bpf_attr` buffers, the field
//! offsets those of `include/uapi/linux/bpf.h`.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_ATTACH: i64 = 8;
const BPF_PROG_DETACH: i64 = 9;
const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_PROG_QUERY: i64 = 16;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;

/// The hooks the benchmark looks at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Hook {
    Connect4,
    Connect6,
}

impl Hook {
    /// `enum bpf_attach_type`.
    fn attach_type(self) -> u32 {
        match self {
            Hook::Connect4 => 10,
            Hook::Connect6 => 11,
        }
    }
}

/// A zeroed `union bpf_attr` (large enough for every command used here).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn u32(mut self, off: usize, v: u32) -> Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(mut self, off: usize, v: u64) -> Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: i64, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: bpf(2) reads (and for some commands writes) at most size_of::<Attr>() bytes of
    // `attr`, and any buffers it points at, which the callers keep alive across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            size_of::<Attr>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: a descriptor bpf(2) just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// `r0 = 1; exit`: lets every connect through, and does nothing else.
const ALLOW_ALL: [u64; 2] = [0xb7 | (1 << 32), 0x95];

/// The empty program attached to a cgroup for both families, detached on drop.
pub struct EmptyProgram {
    cgroup: File,
    progs: Vec<(Hook, OwnedFd)>,
}

impl EmptyProgram {
    pub fn attach(cgroup: &Path) -> io::Result<Self> {
        let cg = File::open(cgroup)?;
        let license = c"GPL";
        let mut progs = Vec::new();
        for hook in [Hook::Connect4, Hook::Connect6] {
            let mut name = [0u8; 16];
            name[..9].copy_from_slice(b"ptb_empty");
            let mut attr = Attr::new()
                .u32(0, BPF_PROG_TYPE_CGROUP_SOCK_ADDR)
                .u32(4, ALLOW_ALL.len() as u32)
                .u64(8, ALLOW_ALL.as_ptr() as u64)
                .u64(16, license.as_ptr() as u64)
                .u32(68, hook.attach_type());
            attr.0[48..64].copy_from_slice(&name);
            let fd = owned(bpf(BPF_PROG_LOAD, &mut attr)?);
            let mut attach = Attr::new()
                .u32(0, cg.as_raw_fd() as u32)
                .u32(4, fd.as_raw_fd() as u32)
                .u32(8, hook.attach_type());
            bpf(BPF_PROG_ATTACH, &mut attach)?;
            progs.push((hook, fd));
        }
        Ok(Self { cgroup: cg, progs })
    }
}

impl Drop for EmptyProgram {
    fn drop(&mut self) {
        for (hook, fd) in &self.progs {
            let mut attr = Attr::new()
                .u32(0, self.cgroup.as_raw_fd() as u32)
                .u32(4, fd.as_raw_fd() as u32)
                .u32(8, hook.attach_type());
            let _ = bpf(BPF_PROG_DETACH, &mut attr);
        }
    }
}

/// Run statistics of one program: how often it ran and for how long in all.
#[derive(Clone, Copy, Default, Debug)]
pub struct RunStats {
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

impl RunStats {
    /// Nanoseconds per run between two readings.
    pub fn ns_per_run_since(self, before: RunStats) -> Option<f64> {
        let runs = self.run_cnt.checked_sub(before.run_cnt)?;
        let ns = self.run_time_ns.checked_sub(before.run_time_ns)?;
        (runs > 0).then(|| ns as f64 / runs as f64)
    }
}

/// The programs attached directly to `cgroup` at `hook`, with their run statistics.
pub fn attached_stats(cgroup: &Path, hook: Hook) -> io::Result<Vec<RunStats>> {
    let cg = File::open(cgroup)?;
    let mut ids = [0u32; 16];
    let mut attr = Attr::new()
        .u32(0, cg.as_raw_fd() as u32)
        .u32(4, hook.attach_type())
        .u64(16, ids.as_mut_ptr() as u64)
        .u32(24, ids.len() as u32);
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let count = u32::from_ne_bytes([attr.0[24], attr.0[25], attr.0[26], attr.0[27]]) as usize;
    let mut out = Vec::new();
    for &id in &ids[..count.min(ids.len())] {
        let fd = owned(bpf(BPF_PROG_GET_FD_BY_ID, &mut Attr::new().u32(0, id))?);
        let mut info = [0u64; 32];
        let mut attr = Attr::new()
            .u32(0, fd.as_raw_fd() as u32)
            .u32(4, size_of_val(&info) as u32)
            .u64(8, info.as_mut_ptr() as u64);
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        // `struct bpf_prog_info`: run_time_ns at byte 192, run_cnt at 200.
        out.push(RunStats {
            run_time_ns: info[24],
            run_cnt: info[25],
        });
    }
    Ok(out)
}

/// Sums the statistics of every program attached at `hook`.
pub fn total_stats(cgroup: &Path, hook: Hook) -> io::Result<RunStats> {
    Ok(attached_stats(cgroup, hook)?
        .into_iter()
        .fold(RunStats::default(), |a, s| RunStats {
            run_cnt: a.run_cnt + s.run_cnt,
            run_time_ns: a.run_time_ns + s.run_time_ns,
        }))
}
