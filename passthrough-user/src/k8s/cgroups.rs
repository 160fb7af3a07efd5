//! A pod's cgroup v2 directory, for both kubelet cgroup drivers.
//!
//! The kubelet puts every pod in a cgroup of its own, below one parent for all pods, and
//! names both after its cgroup driver (`<qos>` is `burstable` or `besteffort`; Guaranteed
//! pods sit directly below the parent):
//!
//! - systemd: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<u>.slice` and
//!   `kubepods.slice/kubepods-pod<u>.slice`, where `<u>` is the UID with `-` replaced by
//!   `_` (systemd reads `-` in a slice name as nesting);
//! - cgroupfs: `kubepods/<qos>/pod<uid>` and `kubepods/pod<uid>`.
//!
//! Where the kubelet runs with another cgroup root (`--cgroup-root=/kubelet` gives
//! `kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-<qos>.slice/
//! kubelet-kubepods-<qos>-pod<u>.slice`) or the node is itself a container seen from outside
//! (kind, k3d: below `system.slice/docker-<id>.scope/`), these sit deeper. So the known
//! layouts are tried first, then a bounded breadth-first walk looks for a directory whose
//! name has the right form: at most [`MAX_DEPTH`] levels below the root, symlinks never
//! followed, unreadable directories skipped, pod directories never entered (pods do not
//! nest, and their children are containers). Every path returned is a descendant of the
//! root, never the root itself.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Component, Path, PathBuf},
};

/// How many levels below the cgroup2 root the walk looks. Six reaches a pod of a kind node
/// seen from the host: `system.slice/docker-<id>.scope/kubelet.slice/kubelet-kubepods.slice/
/// kubelet-kubepods-<qos>.slice/<pod>`.
pub const MAX_DEPTH: usize = 6;

/// The kubelet's two non-Guaranteed QoS classes, as they appear in cgroup names.
const QOS_CLASSES: [&str; 2] = ["burstable", "besteffort"];

/// The cgroup directory of the pod with this UID, below `root` (the cgroup2 mount, usually
/// `/sys/fs/cgroup`). `None` if there is none (yet), or if `uid` is not a pod UID (an
/// apiserver UUID, or the 32 hex digits the kubelet gives static pods), which also keeps
/// any `/` or `..` out of the paths built from it.
pub fn pod_cgroup(root: &Path, uid: &str) -> Option<PathBuf> {
    if !is_uid(uid) {
        return None;
    }
    let systemd = uid.replace('-', "_");
    let mut layouts = vec![
        format!("kubepods.slice/kubepods-pod{systemd}.slice"),
        format!("kubepods/pod{uid}"),
    ];
    for qos in QOS_CLASSES {
        layouts.push(format!(
            "kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{systemd}.slice"
        ));
        layouts.push(format!("kubepods/{qos}/pod{uid}"));
    }
    if let Some(found) = layouts.iter().find_map(|rel| real_dir(root, rel)) {
        return Some(found);
    }
    shallowest(root, |name| pod_uid_of_dir(name).as_deref() == Some(uid))
        .into_iter()
        .next()
}

/// The directory below which the kubelet puts every pod cgroup (`kubepods.slice`,
/// `kubepods`, or a nested `<prefix>-kubepods.slice`): a program attached there applies to
/// every pod of the node, present and future.
///
/// `kubepods.slice` then `kubepods` directly below `root` are taken first. Otherwise the
/// walk's shallowest match is returned only if it is the only one at its depth: two (as
/// when several kind nodes are seen from their host) mean no single directory covers this
/// node's pods, and `None` is safer than attaching to another node's.
pub fn kubepods_root(root: &Path) -> Option<PathBuf> {
    if let Some(found) = ["kubepods.slice", "kubepods"]
        .iter()
        .find_map(|rel| real_dir(root, rel))
    {
        return Some(found);
    }
    let mut found = shallowest(root, |name| {
        name == "kubepods" || name == "kubepods.slice" || name.ends_with("-kubepods.slice")
    });
    if found.len() == 1 { found.pop() } else { None }
}

/// The pod UID a cgroup directory name stands for, with dashes, for either driver:
/// `kubepods-burstable-pod1b4e28ba_2fa1_….slice` (also with a cgroup-root prefix such as
/// `kubelet-kubepods-…`) or `pod1b4e28ba-2fa1-…`. `None` for any other name, such as the
/// QoS and kubepods directories or a container's (`cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `docker-<id>.scope`, or a bare 64-digit id).
pub fn pod_uid_of_dir(name: &str) -> Option<String> {
    let uid = match name.strip_suffix(".slice") {
        Some(stem) => {
            let (parent, uid) = stem.rsplit_once("-pod")?;
            let parent = QOS_CLASSES
                .iter()
                .find_map(|qos| parent.strip_suffix(qos).and_then(|p| p.strip_suffix('-')))
                .unwrap_or(parent);
            if !(parent == "kubepods" || parent.ends_with("-kubepods")) || uid.contains('-') {
                return None;
            }
            uid.replace('_', "-")
        }
        None => name.strip_prefix("pod")?.to_owned(),
    };
    is_uid(&uid).then_some(uid)
}

/// A UID the kubelet names cgroups after: an RFC 4122 UUID as the apiserver assigns, or 32
/// hex digits (the hash the kubelet uses as the UID of a static pod).
fn is_uid(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        32 => b.iter().all(u8::is_ascii_hexdigit),
        36 => b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        }),
        _ => false,
    }
}

/// Pod UID -> its cgroup directory, as last found below one root: a pod's cgroup keeps its
/// path for the pod's life (the kubelet names it after the UID and the QoS class, which never
/// change), so a pod seen before costs one `lstat` to confirm its directory is still there
/// instead of the several of [`pod_cgroup`]'s search. A directory that went is searched for
/// again (and forgotten if it is not found).
#[derive(Debug)]
pub struct PodCgroups {
    root: PathBuf,
    known: HashMap<String, PathBuf>,
}

impl PodCgroups {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            known: HashMap::new(),
        }
    }

    /// The pod's cgroup directory, as [`pod_cgroup`] finds it.
    pub fn get(&mut self, uid: &str) -> Option<PathBuf> {
        if let Some(path) = self.known.get(uid) {
            if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                return Some(path.clone());
            }
            self.known.remove(uid);
        }
        let found = pod_cgroup(&self.root, uid)?;
        self.known.insert(uid.to_owned(), found.clone());
        Some(found)
    }

    /// Forgets the pods not in `uids` (those that left the API server's list).
    pub fn keep_only(&mut self, uids: &HashSet<&str>) {
        self.known.retain(|uid, _| uids.contains(uid.as_str()));
    }
}

/// `root/rel` if every component of `rel` is a real directory, not a symlink.
fn real_dir(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    for component in Path::new(rel).components() {
        let Component::Normal(name) = component else {
            return None;
        };
        path.push(name);
        if !fs::symlink_metadata(&path).ok()?.is_dir() {
            return None;
        }
    }
    Some(path)
}

/// The directories below `root`, at most [`MAX_DEPTH`] deep, whose name satisfies `wanted`,
/// from the shallowest depth that has any, sorted. Symlinks are not followed, unreadable
/// directories are skipped, and neither matches nor pod directories are entered.
fn shallowest(root: &Path, wanted: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut level = vec![root.to_path_buf()];
    for _ in 0..MAX_DEPTH {
        let mut found = Vec::new();
        let mut next = Vec::new();
        for dir in &level {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                // `DirEntry::file_type` does not follow symlinks: a link is never a directory here.
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    continue;
                };
                if wanted(name) {
                    found.push(entry.path());
                } else if pod_uid_of_dir(name).is_none() {
                    next.push(entry.path());
                }
            }
        }
        if !found.is_empty() {
            found.sort();
            return found;
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;

    const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    const SYSTEMD_UID: &str = "1b4e28ba_2fa1_11d2_883f_0016d3cca427";
    const CONTAINER: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

    /// A cgroup2 root with these directories (and their parents).
    fn tree(dirs: &[&str]) -> TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        for dir in dirs {
            fs::create_dir_all(root.path().join(dir)).expect("mkdir");
        }
        root
    }

    fn found(root: &TempDir, uid: &str) -> Option<String> {
        pod_cgroup(root.path(), uid).map(|p| rel(root, &p))
    }

    fn rel(root: &TempDir, path: &Path) -> String {
        path.strip_prefix(root.path())
            .expect("below the root")
            .to_string_lossy()
            .into_owned()
    }

    fn finds_its_own_layout(pod_dir: &str) {
        // Another pod and the pod's containers beside it, as on a real node.
        let other = "kubepods.slice/kubepods-besteffort.slice/\
                     kubepods-besteffort-pod00000000_0000_0000_0000_000000000000.slice";
        let root = tree(&[
            &format!("{pod_dir}/cri-containerd-{CONTAINER}.scope"),
            &format!("{pod_dir}/{CONTAINER}"),
            other,
            "kubepods/besteffort/pod00000000-0000-0000-0000-000000000000",
        ]);
        assert_eq!(found(&root, UID).as_deref(), Some(pod_dir));
    }

    #[test]
    fn a_known_pods_cgroup_is_found_again_and_a_removed_one_is_forgotten() {
        let pod = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SYSTEMD_UID}.slice"
        );
        let root = tree(&[&pod]);
        let mut cache = PodCgroups::new(root.path().to_path_buf());
        assert_eq!(cache.get(UID), Some(root.path().join(&pod)));
        assert_eq!(
            cache.get(UID),
            Some(root.path().join(&pod)),
            "from the cache"
        );
        // The kubelet removed it and the pod came back as Guaranteed: searched again.
        fs::remove_dir(root.path().join(&pod)).expect("rmdir");
        assert_eq!(cache.get(UID), None);
        assert!(cache.known.is_empty(), "a cgroup that went is forgotten");
        let guaranteed = format!("kubepods.slice/kubepods-pod{SYSTEMD_UID}.slice");
        fs::create_dir_all(root.path().join(&guaranteed)).expect("mkdir");
        assert_eq!(cache.get(UID), Some(root.path().join(&guaranteed)));
        cache.keep_only(&HashSet::new());
        assert!(cache.known.is_empty(), "pods that left are forgotten");
    }

    #[test]
    fn systemd_burstable_pod_is_found() {
        finds_its_own_layout(&format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SYSTEMD_UID}.slice"
        ));
    }

    #[test]
    fn systemd_besteffort_pod_is_found() {
        finds_its_own_layout(&format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SYSTEMD_UID}.slice"
        ));
    }

    #[test]
    fn systemd_guaranteed_pod_is_found() {
        finds_its_own_layout(&format!("kubepods.slice/kubepods-pod{SYSTEMD_UID}.slice"));
    }

    #[test]
    fn cgroupfs_burstable_pod_is_found() {
        finds_its_own_layout(&format!("kubepods/burstable/pod{UID}"));
    }

    #[test]
    fn cgroupfs_besteffort_pod_is_found() {
        finds_its_own_layout(&format!("kubepods/besteffort/pod{UID}"));
    }

    #[test]
    fn cgroupfs_guaranteed_pod_is_found() {
        finds_its_own_layout(&format!("kubepods/pod{UID}"));
    }

    #[test]
    fn pod_below_a_nested_kubelet_root_is_found_by_the_walk() {
        let kind = "system.slice/docker-abc.scope/kubelet.slice/kubelet-kubepods.slice";
        let pod = format!(
            "{kind}/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{SYSTEMD_UID}.slice"
        );
        let root = tree(&[
            &format!("{pod}/cri-containerd-{CONTAINER}.scope"),
            "system.slice/sshd.service",
            "user.slice",
        ]);
        assert_eq!(found(&root, UID), Some(pod));
        assert_eq!(
            kubepods_root(root.path())
                .map(|p| rel(&root, &p))
                .as_deref(),
            Some(kind)
        );

        let k3s = tree(&[&format!("k3s/kubepods/burstable/pod{UID}")]);
        assert_eq!(
            found(&k3s, UID).as_deref(),
            Some(format!("k3s/kubepods/burstable/pod{UID}").as_str())
        );
    }

    #[test]
    fn walk_stops_at_its_depth_bound() {
        let deep = format!("a/b/c/d/e/kubepods/pod{UID}");
        assert_eq!(found(&tree(&[&deep]), UID), None);
        let within = format!("a/b/c/d/kubepods/pod{UID}");
        assert_eq!(found(&tree(&[&within]), UID), Some(within));
    }

    #[test]
    fn missing_pod_is_none() {
        let root = tree(&[
            "kubepods.slice/kubepods-burstable.slice",
            "kubepods/besteffort",
        ]);
        assert_eq!(found(&root, UID), None);
        assert_eq!(found(&tree(&[]), UID), None);
    }

    #[test]
    fn container_directories_are_not_pods() {
        let pod = format!("kubepods/burstable/pod{UID}");
        let root = tree(&[
            &format!("{pod}/{CONTAINER}"),
            &format!("{pod}/cri-containerd-{CONTAINER}.scope"),
        ]);
        assert_eq!(found(&root, CONTAINER), None);
        for name in [
            CONTAINER.to_owned(),
            format!("cri-containerd-{CONTAINER}.scope"),
            format!("crio-{CONTAINER}.scope"),
        ] {
            assert_eq!(pod_uid_of_dir(&name), None, "{name}");
        }
    }

    #[test]
    fn symlinks_are_not_followed() {
        let elsewhere = tree(&[&format!("kubepods/pod{UID}")]);
        let root = tree(&[]);
        std::os::unix::fs::symlink(
            elsewhere.path().join("kubepods"),
            root.path().join("kubepods"),
        )
        .expect("symlink");
        assert_eq!(found(&root, UID), None);
        assert_eq!(kubepods_root(root.path()), None);
    }

    #[test]
    fn a_uid_that_is_not_one_never_builds_a_path() {
        let root = tree(&["kubepods/pod..", "etc"]);
        for uid in [
            "",
            "..",
            "../etc",
            "x/../../etc",
            "1b4e28ba-2fa1-11d2-883f-0016d3cca42/",
        ] {
            assert_eq!(found(&root, uid), None, "{uid:?}");
        }
    }

    #[test]
    fn kubepods_root_is_found_for_both_drivers() {
        let systemd = tree(&[&format!("kubepods.slice/kubepods-pod{SYSTEMD_UID}.slice")]);
        assert_eq!(
            kubepods_root(systemd.path())
                .map(|p| rel(&systemd, &p))
                .as_deref(),
            Some("kubepods.slice")
        );
        let cgroupfs = tree(&["kubepods/burstable"]);
        assert_eq!(
            kubepods_root(cgroupfs.path())
                .map(|p| rel(&cgroupfs, &p))
                .as_deref(),
            Some("kubepods")
        );
        assert_eq!(
            kubepods_root(tree(&["system.slice", "user.slice"]).path()),
            None
        );
    }

    #[test]
    fn two_kubepods_roots_at_the_same_depth_give_none() {
        let root = tree(&[
            "system.slice/docker-a.scope/kubelet.slice/kubelet-kubepods.slice",
            "system.slice/docker-b.scope/kubelet.slice/kubelet-kubepods.slice",
        ]);
        assert_eq!(kubepods_root(root.path()), None);
    }

    #[test]
    fn directory_names_give_back_the_uid_for_both_drivers() {
        for name in [
            format!("kubepods-burstable-pod{SYSTEMD_UID}.slice"),
            format!("kubepods-besteffort-pod{SYSTEMD_UID}.slice"),
            format!("kubepods-pod{SYSTEMD_UID}.slice"),
            format!("kubelet-kubepods-burstable-pod{SYSTEMD_UID}.slice"),
            format!("pod{UID}"),
        ] {
            assert_eq!(pod_uid_of_dir(&name).as_deref(), Some(UID), "{name}");
        }
        let static_pod = "3c0b8e0e1f8b2c7fa1d2e3f4a5b6c7d8";
        assert_eq!(
            pod_uid_of_dir(&format!("kubepods-burstable-pod{static_pod}.slice")).as_deref(),
            Some(static_pod)
        );
        assert_eq!(
            pod_uid_of_dir(&format!("pod{static_pod}")).as_deref(),
            Some(static_pod)
        );
    }

    #[test]
    fn other_directory_names_give_no_uid() {
        for name in [
            "kubepods.slice".to_owned(),
            "kubepods-burstable.slice".to_owned(),
            "kubepods".to_owned(),
            "burstable".to_owned(),
            "pod".to_owned(),
            "podcast".to_owned(),
            format!("user-pod{SYSTEMD_UID}.slice"),
            format!("kubepods-pod{UID}.slice"),
            format!("pod{SYSTEMD_UID}"),
            format!("pod{UID}.slice"),
        ] {
            assert_eq!(pod_uid_of_dir(&name), None, "{name}");
        }
    }
}
