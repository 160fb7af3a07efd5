//! cgroup v2: where it is mounted, and the ids the kernel programs see.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// The cgroup v2 mount point, read from `/proc/self/mountinfo` (`/sys/fs/cgroup` on a
/// unified host, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_root() -> io::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    mount_of_type(&text, "cgroup2").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup2 filesystem is mounted (see /proc/self/mountinfo): passthrough needs cgroup v2",
        )
    })
}

/// The first mount point of a filesystem type in mountinfo text.
pub fn mount_of_type(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
        let (left, right) = line.split_once(" - ")?;
        let kind = right.split_whitespace().next()?;
        (kind == fstype).then(|| left.split_whitespace().nth(4).map(unescape))?
    })
}

/// mountinfo escapes blanks and backslashes as octal.
fn unescape(s: &str) -> PathBuf {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(n) = u8::from_str_radix(&code, 8) {
                out.push(char::from(n));
                continue;
            }
            out.push(c);
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    PathBuf::from(out)
}

/// The kernel's id of a cgroup v2 directory (what `bpf_get_current_cgroup_id` returns): the
/// inode number of the directory.
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

/// The cgroup of this process, as a path below `root`.
pub fn own_cgroup(root: &Path) -> io::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| io::Error::other("no cgroup v2 entry in /proc/self/cgroup"))?;
    Ok(root.join(rel.trim_start_matches('/')))
}

/// Why a configured workload cgroup cannot be used.
pub fn check_workload_cgroup(root: &Path, cgroup: &Path) -> Result<(), String> {
    let rel = cgroup.strip_prefix(root).map_err(|_| {
        format!(
            "{} is not below the cgroup v2 mount {}: give a directory under it",
            cgroup.display(),
            root.display()
        )
    })?;
    if rel.as_os_str().is_empty() {
        return Err(format!(
            "{} is the root cgroup: filtering it would filter the whole machine; give the workload's own cgroup",
            cgroup.display()
        ));
    }
    Ok(())
}

/// Most cgroups below one workload that get a `CGROUPS` entry; the rest use the ancestor walk.
pub const MAX_DESCENDANTS: usize = 4_096;

/// The ids of the cgroups below `dir` (not `dir` itself), depth first, at most
/// [`MAX_DESCENDANTS`]. Cgroups that disappear while being read are skipped.
///
/// Type and id come from the directory entries themselves (cgroupfs fills in `d_type`, and
/// `d_ino` is the cgroup id, as `stat` would give): a pod cgroup holds some sixty interface
/// files, and a `stat` of each made this walk most of a reconcile's time.
pub fn descendants(dir: &Path) -> Vec<(PathBuf, u64)> {
    use std::os::unix::fs::DirEntryExt as _;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if out.len() >= MAX_DESCENDANTS {
                return out;
            }
            // `file_type` does not follow symlinks (cgroupfs has none).
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push((e.path(), e.ino()));
                stack.push(e.path());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
40 25 0:35 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:16 - bpf bpf rw,mode=700
";

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        assert_eq!(
            mount_of_type(HYBRID, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            mount_of_type(unified, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            mount_of_type(HYBRID, "bpf"),
            Some(PathBuf::from("/sys/fs/bpf"))
        );
        assert_eq!(mount_of_type("", "cgroup2"), None);
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        let line = "30 25 0:26 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            mount_of_type(line, "cgroup2"),
            Some(PathBuf::from("/mnt/with space"))
        );
    }

    #[test]
    fn root_and_outside_cgroups_are_refused() {
        let root = Path::new("/sys/fs/cgroup");
        assert!(check_workload_cgroup(root, Path::new("/sys/fs/cgroup")).is_err());
        assert!(check_workload_cgroup(root, Path::new("/tmp/x")).is_err());
        assert!(
            check_workload_cgroup(root, Path::new("/sys/fs/cgroup/system.slice/a.service")).is_ok()
        );
    }
}
