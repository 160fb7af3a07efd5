//! What the `cgroup_mkdir` program may act for (`POD_WATCH`): the kubepods cgroup's path as
//! the kernel writes cgroup paths (from the root of the cgroup v2 hierarchy, which is not
//! always where this process sees it mounted), and its level.

use std::path::Path;

use passthrough_common::{POD_WATCH_PREFIX, PodWatch};

/// Hierarchy id of cgroup v2: the kernel gives the default hierarchy id 0 (cgroup v1
/// hierarchies are numbered from 1, as `/proc/cgroups` shows).
const CGROUP2_HIERARCHY: u32 = 0;

/// The `POD_WATCH` entry for the kubepods cgroup `kubepods`, below the cgroup v2 mount
/// `mount` whose root (mountinfo's fourth field) is `mount_root`.
pub fn pod_watch(mount: &Path, mount_root: &str, kubepods: &Path) -> Result<PodWatch, String> {
    let rel = kubepods.strip_prefix(mount).map_err(|_| {
        format!(
            "{} is not below the cgroup v2 mount {}",
            kubepods.display(),
            mount.display()
        )
    })?;
    if mount_root.starts_with("/..") || !mount_root.starts_with('/') {
        return Err(format!(
            "the cgroup v2 mount {} shows the hierarchy from {mount_root:?}, outside this process's cgroup namespace: the kernel's paths cannot be matched; run the agent in the host's cgroup namespace",
            mount.display()
        ));
    }
    let mut path = mount_root.trim_end_matches('/').to_string();
    let mut level = path.split('/').filter(|c| !c.is_empty()).count();
    for c in rel.components() {
        let c = c
            .as_os_str()
            .to_str()
            .ok_or_else(|| format!("{}: the path is not UTF-8", kubepods.display()))?;
        path.push('/');
        path.push_str(c);
        level += 1;
    }
    if level == 0 {
        return Err(
            "the kubepods cgroup is the root cgroup: refusing to watch every cgroup".into(),
        );
    }
    let bytes = path.as_bytes();
    if bytes.len() >= POD_WATCH_PREFIX {
        return Err(format!(
            "the kubepods cgroup's path {path} is longer than the {} bytes the kernel program compares",
            POD_WATCH_PREFIX - 1
        ));
    }
    let mut prefix = [0u8; POD_WATCH_PREFIX];
    prefix[..bytes.len()].copy_from_slice(bytes);
    Ok(PodWatch {
        enabled: 1,
        _pad: [0; 3],
        hierarchy: CGROUP2_HIERARCHY,
        level: u32::try_from(level).map_err(|_| "too deep".to_string())?,
        prefix_len: u32::try_from(bytes.len()).map_err(|_| "too long".to_string())?,
        prefix,
    })
}

/// The root field of the cgroup v2 mount at `mount` in mountinfo text.
pub fn mount_root(mountinfo: &str, mount: &Path) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = left.split_whitespace();
        let root = fields.nth(3)?;
        let point = fields.next()?;
        (Path::new(point) == mount).then(|| root.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(w: &PodWatch) -> &str {
        std::str::from_utf8(&w.prefix[..w.prefix_len as usize]).expect("utf-8")
    }

    #[test]
    fn the_kernel_path_starts_at_the_hierarchy_root() {
        let w = pod_watch(
            Path::new("/sys/fs/cgroup"),
            "/",
            Path::new("/sys/fs/cgroup/kubepods.slice"),
        )
        .expect("watch");
        assert_eq!(prefix(&w), "/kubepods.slice");
        assert_eq!((w.level, w.enabled, w.hierarchy), (1, 1, 0));

        let nested = pod_watch(
            Path::new("/sys/fs/cgroup/unified"),
            "/",
            Path::new("/sys/fs/cgroup/unified/test-1/kubepods"),
        )
        .expect("watch");
        assert_eq!(prefix(&nested), "/test-1/kubepods");
        assert_eq!(nested.level, 2);
    }

    #[test]
    fn a_mount_of_a_subtree_is_prefixed_with_its_root() {
        let w = pod_watch(
            Path::new("/host/cgroup"),
            "/system.slice/node.scope",
            Path::new("/host/cgroup/kubepods"),
        )
        .expect("watch");
        assert_eq!(prefix(&w), "/system.slice/node.scope/kubepods");
        assert_eq!(w.level, 3);
    }

    #[test]
    fn paths_the_kernel_cannot_be_matched_against_are_refused() {
        let mount = Path::new("/sys/fs/cgroup");
        assert!(pod_watch(mount, "/../..", Path::new("/sys/fs/cgroup/kubepods")).is_err());
        assert!(pod_watch(mount, "/", mount).is_err(), "the root cgroup");
        assert!(pod_watch(mount, "/", Path::new("/elsewhere/kubepods")).is_err());
        let long = format!("/sys/fs/cgroup/{}", "a".repeat(POD_WATCH_PREFIX));
        assert!(pod_watch(mount, "/", Path::new(&long)).is_err());
    }

    #[test]
    fn the_mount_root_is_read_from_mountinfo() {
        let text = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                    42 31 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                    50 31 0:38 /k8s /host rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            mount_root(text, Path::new("/sys/fs/cgroup/unified")).as_deref(),
            Some("/")
        );
        assert_eq!(
            mount_root(text, Path::new("/host")).as_deref(),
            Some("/k8s")
        );
        assert_eq!(mount_root(text, Path::new("/sys/fs/cgroup/cpu")), None);
    }
}
