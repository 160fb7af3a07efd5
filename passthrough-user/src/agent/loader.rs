//! Loads the eBPF object, attaches its programs to workload cgroups, and pins everything
//! under the configured bpffs directory so enforcement outlives the agent process.
//!
//! Layout under `bpffs` (default `/sys/fs/bpf/passthrough`):
//! - `maps_v<LAYOUT>/<MAP>` (bpffs names cannot hold a dot): every map, pinned by name; a restarted agent of the same map
//!   layout reuses them as they are. Maps of the first layout (`maps/`) are removed
//!   once the new ones enforce ([`remove_old_layouts`]).
//! - `links/<cgroup id>/<program>-<instance>`: one link per program and workload cgroup.
//!   `instance` identifies the agent run that attached it. A new run attaches its own links
//!   first and only then unpins the old ones, so a workload is never without a program.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, LsmCgroup, TracePoint,
        links::{FdLink, PinnedLink},
    },
};
use passthrough_common::{SOCKET_CREATE_HOOK, program_names};

use crate::api::PacketSockets;

/// Directory names under the bpffs directory.
/// The pin directory of this map layout.
pub fn maps_dir(bpffs: &Path) -> PathBuf {
    bpffs.join(format!("maps_v{}", passthrough_common::LAYOUT))
}

/// Pin directories of earlier map layouts.
const OLD_MAPS_DIRS: [&str; 1] = ["maps"];

/// The maps declared with BTF (maps of maps), which aya pins only where told.
const BTF_MAPS: [&str; 5] = [
    passthrough_common::map_names::EXACT_V4,
    passthrough_common::map_names::EXACT_V6,
    passthrough_common::map_names::CIDR_V4,
    passthrough_common::map_names::CIDR_V6,
    passthrough_common::map_names::DOMAIN_PORTS,
];
pub const LINKS_DIR: &str = "links";

/// The compiled eBPF object, built by aya-build from `passthrough-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/passthrough"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {message}")]
    Fs { path: String, message: String },
    #[error(
        "loading the eBPF object failed: {0} (needs root or CAP_BPF+CAP_NET_ADMIN, and a kernel with cgroup BPF)"
    )]
    Object(#[source] aya::EbpfError),
    #[error("program {program}: {message}")]
    Program {
        program: &'static str,
        message: String,
    },
}

fn fs_err(path: &Path, e: impl std::fmt::Display) -> LoadError {
    LoadError::Fs {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The programs of this agent run.
pub struct Loader {
    ebpf: Ebpf,
    bpffs: PathBuf,
    instance: String,
    /// Why packet sockets cannot be refused on this kernel, if they cannot (no BPF LSM).
    packet_sockets: PacketSockets,
}

/// How a program is attached to a workload cgroup.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    SockAddr,
    Sock,
    Lsm,
}

/// Every program attached to a workload cgroup, and how.
const PROGRAMS: [(&str, Kind); 8] = [
    (program_names::CONNECT4, Kind::SockAddr),
    (program_names::CONNECT6, Kind::SockAddr),
    (program_names::GETPEERNAME4, Kind::SockAddr),
    (program_names::GETPEERNAME6, Kind::SockAddr),
    (program_names::SENDMSG4, Kind::SockAddr),
    (program_names::SENDMSG6, Kind::SockAddr),
    (program_names::SOCK_CREATE, Kind::Sock),
    (program_names::SOCKET_CREATE_LSM, Kind::Lsm),
];

impl Loader {
    /// Loads the object, reusing the maps pinned under `bpffs` if an earlier run of this
    /// layout left them. `redirects` sizes `REDIRECTS` (connections handed to the proxy at
    /// once; at least its built-in capacity), `flows` sizes `FLOWS` (`flows.capacity`).
    pub fn load(bpffs: &Path, redirects: u32, flows: u32) -> Result<Self, LoadError> {
        ensure_bpffs(bpffs)?;
        let maps = maps_dir(bpffs);
        fs::create_dir_all(&maps).map_err(|e| fs_err(&maps, e))?;
        fs::create_dir_all(bpffs.join(LINKS_DIR)).map_err(|e| fs_err(bpffs, e))?;
        let pins: Vec<(&str, PathBuf)> = BTF_MAPS.iter().map(|m| (*m, maps.join(m))).collect();
        let mut loader = EbpfLoader::new();
        loader
            .default_map_pin_directory(&maps)
            .map_max_entries(
                passthrough_common::map_names::REDIRECTS,
                redirects.max(passthrough_common::capacity::REDIRECTS),
            )
            .map_max_entries(passthrough_common::map_names::FLOWS, flows.max(1));
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(LoadError::Object)?;
        let mut packet_sockets = PacketSockets::Refused;
        for (name, kind) in PROGRAMS {
            let loaded = match kind {
                Kind::SockAddr => program::<CgroupSockAddr>(&mut ebpf, name)?.load(),
                Kind::Sock => program::<CgroupSock>(&mut ebpf, name)?.load(),
                Kind::Lsm => {
                    if let Err(why) = bpf_lsm_active() {
                        packet_sockets = PacketSockets::Open(why);
                        continue;
                    }
                    let btf = match Btf::from_sys_fs() {
                        Ok(b) => b,
                        Err(e) => {
                            packet_sockets = PacketSockets::Open(format!(
                                "no kernel BTF at /sys/kernel/btf/vmlinux ({e}): the LSM hook cannot be loaded"
                            ));
                            continue;
                        }
                    };
                    let p = program::<LsmCgroup>(&mut ebpf, name)?;
                    if let Err(e) = p.load(SOCKET_CREATE_HOOK, &btf) {
                        packet_sockets = PacketSockets::Open(format!(
                            "the kernel refused the BPF LSM program lsm_cgroup/{SOCKET_CREATE_HOOK} ({}); BPF LSM programs need Linux 6.0 with the BPF LSM active and BPF trampolines (`bpftool feature probe kernel | grep lsm` shows whether this kernel loads them)",
                            error_chain(&e).trim()
                        ));
                    }
                    continue;
                }
            };
            loaded.map_err(|e| prog_err(name, verifier_message(&e)))?;
        }
        if let PacketSockets::Open(why) = &packet_sockets {
            tracing::warn!(
                "packet sockets (AF_PACKET, AF_XDP) cannot be refused on this kernel: {why}"
            );
        }
        let instance = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos().to_string())
            .unwrap_or_else(|_| std::process::id().to_string());
        Ok(Self {
            ebpf,
            bpffs: bpffs.to_path_buf(),
            instance,
            packet_sockets,
        })
    }

    /// Whether packet sockets are refused (under `rawSockets: Deny`) on this kernel.
    pub fn packet_sockets(&self) -> &PacketSockets {
        &self.packet_sockets
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Attaches every program to a workload cgroup (unless this run already did), pins the
    /// links, then removes links of earlier runs on that cgroup.
    pub fn attach(&mut self, cgroup: &Path, cgroup_id: u64) -> Result<(), LoadError> {
        let dir = links_dir(&self.bpffs, cgroup_id);
        fs::create_dir_all(&dir).map_err(|e| fs_err(&dir, e))?;
        for (name, kind) in PROGRAMS {
            if kind == Kind::Lsm && self.packet_sockets != PacketSockets::Refused {
                continue;
            }
            let pin = dir.join(format!("{name}-{}", self.instance));
            if pin.exists() {
                continue;
            }
            let file = fs::File::open(cgroup).map_err(|e| fs_err(cgroup, e))?;
            let attach_err = |e: aya::programs::ProgramError| {
                prog_err(
                    name,
                    format!("attach to {}: {}", cgroup.display(), error_chain(&e)),
                )
            };
            // A bpf_link takes no attach flags: links on a cgroup always coexist with each
            // other (and with programs attached in multi mode), which is what lets a new run
            // attach before the old one detaches.
            let link = match kind {
                Kind::SockAddr => {
                    let p: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
                    let id = p
                        .attach(&file, CgroupAttachMode::Single)
                        .map_err(attach_err)?;
                    let link = p.take_link(id).map_err(|e| prog_err(name, e))?;
                    FdLink::try_from(link).map_err(|e| prog_err(name, e))?
                }
                Kind::Sock => {
                    let p: &mut CgroupSock = program(&mut self.ebpf, name)?;
                    let id = p
                        .attach(&file, CgroupAttachMode::Single)
                        .map_err(attach_err)?;
                    let link = p.take_link(id).map_err(|e| prog_err(name, e))?;
                    FdLink::try_from(link).map_err(|e| prog_err(name, e))?
                }
                Kind::Lsm => {
                    // Per cgroup (BPF_LSM_CGROUP): it runs only for this cgroup's tasks.
                    let p: &mut LsmCgroup = program(&mut self.ebpf, name)?;
                    let id = p.attach(&file).map_err(attach_err)?;
                    let link = p.take_link(id).map_err(|e| prog_err(name, e))?;
                    FdLink::from(link)
                }
            };
            link.pin(&pin)
                .map_err(|e| prog_err(name, format!("pin {}: {e}", pin.display())))?;
        }
        // Our links are in place: the older ones can go without a gap.
        for entry in fs::read_dir(&dir).map_err(|e| fs_err(&dir, e))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(&format!("-{}", self.instance)) {
                unpin_link(&entry.path());
            }
        }
        Ok(())
    }
}

impl Loader {
    /// Loads the `cgroup_mkdir` program and attaches it to its tracepoint, once: it writes
    /// the entries of new pod cgroups (what it may act for is in `POD_WATCH`). The
    /// attachment lives as long as the agent: while no agent runs, new pods get what the
    /// kubepods cgroup gives them (`unknownPods`) until the next agent sees them.
    pub fn attach_pod_watch(&mut self) -> Result<(), LoadError> {
        let name = program_names::CGROUP_MKDIR;
        let (category, event) = passthrough_common::CGROUP_MKDIR_TRACEPOINT;
        ensure_tracefs().map_err(|e| prog_err(name, e))?;
        let p: &mut TracePoint = program(&mut self.ebpf, name)?;
        if p.fd().is_err() {
            p.load().map_err(|e| prog_err(name, verifier_message(&e)))?;
        }
        p.attach(category, event).map_err(|e| {
            prog_err(
                name,
                format!(
                    "attach to tracepoint {category}:{event}: {}",
                    error_chain(&e)
                ),
            )
        })?;
        Ok(())
    }
}

/// Where tracefs is expected, as systemd mounts it.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Tracepoints are attached by the id tracefs gives them: mounts tracefs where systemd
/// would, unless it is mounted there (or under debugfs) already.
fn ensure_tracefs() -> Result<(), String> {
    let events = |dir: &str| Path::new(dir).join("events").is_dir();
    if events(TRACEFS) || events("/sys/kernel/debug/tracing") {
        return Ok(());
    }
    let src = c"tracefs";
    let target = c"/sys/kernel/tracing";
    // SAFETY: NUL-terminated constants; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed ({}); mount it (`mount -t tracefs tracefs {TRACEFS}`), or in a container mount the host's {TRACEFS}",
            std::io::Error::last_os_error()
        ));
    }
    tracing::info!("mounted tracefs at {TRACEFS}, for the cgroup_mkdir tracepoint");
    Ok(())
}

/// A program of the object as its type.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| prog_err(name, "missing from the object"))?
        .try_into()
        .map_err(|e| prog_err(name, e))
}

/// The cgroup ids that have pinned links under `bpffs`.
pub fn attached_cgroups(bpffs: &Path) -> Vec<u64> {
    let Ok(entries) = fs::read_dir(bpffs.join(LINKS_DIR)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Detaches every program from a cgroup by removing its pinned links.
pub fn detach(bpffs: &Path, cgroup_id: u64) {
    let dir = links_dir(bpffs, cgroup_id);
    if let Ok(entries) = fs::read_dir(&dir) {
        for e in entries.flatten() {
            unpin_link(&e.path());
        }
    }
    let _ = fs::remove_dir(&dir);
}

/// Removes everything under `bpffs` that an agent created: links first (which detaches the
/// programs), then the maps.
pub fn uninstall(bpffs: &Path) -> Result<usize, LoadError> {
    let mut removed = 0;
    for id in attached_cgroups(bpffs) {
        detach(bpffs, id);
        removed += 1;
    }
    let _ = fs::remove_dir(bpffs.join(LINKS_DIR));
    let mut dirs: Vec<PathBuf> = OLD_MAPS_DIRS.iter().map(|d| bpffs.join(d)).collect();
    dirs.push(maps_dir(bpffs));
    for maps in dirs {
        if let Ok(entries) = fs::read_dir(&maps) {
            for e in entries.flatten() {
                fs::remove_file(e.path()).map_err(|err| fs_err(&e.path(), err))?;
            }
        }
        let _ = fs::remove_dir(&maps);
    }
    if bpffs.exists() {
        fs::remove_dir(bpffs).map_err(|e| fs_err(bpffs, e))?;
    }
    Ok(removed)
}

/// Unpins the maps of earlier layouts (an upgraded agent's predecessor): once the new
/// programs enforce on every workload, the old ones are detached (their links replaced) and
/// nothing reads those maps. Returns how many pins were removed.
pub fn remove_old_layouts(bpffs: &Path) -> usize {
    let mut n = 0;
    for d in OLD_MAPS_DIRS {
        let dir = bpffs.join(d);
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                n += usize::from(fs::remove_file(e.path()).is_ok());
            }
        }
        let _ = fs::remove_dir(&dir);
    }
    n
}

fn links_dir(bpffs: &Path, cgroup_id: u64) -> PathBuf {
    bpffs.join(LINKS_DIR).join(cgroup_id.to_string())
}

fn unpin_link(path: &Path) {
    match PinnedLink::from_pin(path) {
        // Unpinning and dropping the last reference detaches the program.
        Ok(link) => drop(link.unpin()),
        Err(_) => {
            let _ = fs::remove_file(path);
        }
    }
}

/// An error with its sources, which aya keeps the errno in.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn prog_err(program: &'static str, e: impl std::fmt::Display) -> LoadError {
    LoadError::Program {
        program,
        message: e.to_string(),
    }
}

fn verifier_message(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            format!("the kernel refused the program: {io_error}\n{verifier_log}")
        }
        other => other.to_string(),
    }
}

/// Where securityfs shows the active LSMs.
const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// `Ok` when the BPF LSM is active (its hooks run); otherwise why not, and what to do.
/// Mounts securityfs to find out when nothing has.
fn bpf_lsm_active() -> Result<(), String> {
    let read = || fs::read_to_string(LSM_LIST);
    let list = match read() {
        Ok(l) => l,
        Err(_) => {
            let target = c"/sys/kernel/security";
            let kind = c"securityfs";
            // SAFETY: valid NUL-terminated strings for the call's duration.
            unsafe {
                libc::mount(
                    kind.as_ptr(),
                    target.as_ptr(),
                    kind.as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            read().map_err(|e| {
                format!(
                    "cannot read {LSM_LIST} ({e}): mount securityfs there to let the agent see whether the BPF LSM is active"
                )
            })?
        }
    };
    lsm_list_has_bpf(&list)
}

/// Whether an LSM list (`lockdown,capability,bpf`) includes the BPF LSM.
fn lsm_list_has_bpf(list: &str) -> Result<(), String> {
    if list.trim().split(',').any(|l| l == "bpf") {
        Ok(())
    } else {
        Err(format!(
            "the BPF LSM is not active (active: {}): add bpf to the kernel's lsm= boot parameter",
            list.trim()
        ))
    }
}

/// Where bpffs is conventionally mounted; the agent mounts it there when nothing is.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

fn on_bpffs(bpffs: &Path) -> Result<bool, LoadError> {
    let info = "/proc/self/mountinfo";
    let mountinfo = fs::read_to_string(info).map_err(|e| fs_err(Path::new(info), e))?;
    Ok(mountinfo.lines().any(|line| {
        let Some((left, right)) = line.split_once(" - ") else {
            return false;
        };
        right.split_whitespace().next() == Some("bpf")
            && left
                .split_whitespace()
                .nth(4)
                .is_some_and(|m| bpffs.starts_with(m))
    }))
}

/// The directory must be on a bpf filesystem, or pins would not survive the agent. Like
/// other eBPF agents, mount one at /sys/fs/bpf when the host has none.
fn ensure_bpffs(bpffs: &Path) -> Result<(), LoadError> {
    if on_bpffs(bpffs)? {
        return Ok(());
    }
    if bpffs.starts_with(BPFFS_MOUNT) {
        let target = std::ffi::CString::new(BPFFS_MOUNT).map_err(|e| fs_err(bpffs, e))?;
        let kind = c"bpf";
        // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
        let rc = unsafe {
            libc::mount(
                kind.as_ptr(),
                target.as_ptr(),
                kind.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            tracing::info!("mounted a bpf filesystem at {BPFFS_MOUNT}");
        }
        if on_bpffs(bpffs)? {
            return Ok(());
        }
    }
    Err(fs_err(
        bpffs,
        "not on a bpf filesystem: mount one (mount -t bpf bpf /sys/fs/bpf) or set `bpffs` to a directory under one",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bpf_lsm_is_found_in_the_active_list_only() {
        assert!(lsm_list_has_bpf("lockdown,capability,landlock,bpf\n").is_ok());
        let e = lsm_list_has_bpf("lockdown,capability,apparmor").expect_err("absent");
        assert!(e.contains("lsm= boot parameter"), "{e}");
        assert!(lsm_list_has_bpf("bpfx,capability").is_err());
    }
}
