//! Notices changed policy files and workload cgroups by their identity (mtime, size,
//! inode), on its own thread: stat calls never run on the async runtime, and a change is
//! seen whatever way it was made (an editor's rename, a ConfigMap's symlink swap, a cgroup
//! that appears).

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    thread,
    time::Duration,
};

use tokio::sync::watch;

use super::{
    core::{Input, Inputs},
    snapshot::{Snapshot, Watched},
};
use crate::policy::load::policy_files_in;

/// How often files and cgroups are checked. Policy changes apply within this plus the time
/// to compile and write them.
pub const POLL: Duration = Duration::from_millis(200);

/// Identity of a watched path: (mtime ns, size, inode), or absent.
pub type Fingerprint = BTreeMap<PathBuf, Option<(i64, u64, u64)>>;

fn stamp(p: &Path) -> Option<(i64, u64, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        m.size(),
        m.ino(),
    ))
}

/// Every policy file (directories expanded) and every workload cgroup.
pub fn fingerprint(w: &Watched) -> Fingerprint {
    let mut fp = Fingerprint::new();
    for p in &w.policies {
        fp.insert(p.clone(), stamp(p));
        if p.is_dir() {
            for f in policy_files_in(p).unwrap_or_default() {
                let s = stamp(&f);
                fp.insert(f, s);
            }
        }
    }
    for c in &w.cgroups {
        fp.insert(c.clone(), stamp(c));
    }
    fp
}

/// Watches what the latest snapshot names, starting from `baseline` (taken before the core
/// first read the files, so no change between is missed); ends when the core has stopped.
pub fn spawn(
    baseline: Fingerprint,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    inputs: Inputs,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("passthrough-watch".into())
        .spawn(move || {
            // A poll stats every policy file: milliseconds of CPU that must not delay the
            // proxy, which a waking thread of the default class could otherwise wait for.
            super::core::lower_priority();
            let mut last = baseline;
            loop {
                thread::sleep(POLL);
                if snapshots.has_changed().is_err() {
                    return;
                }
                let watched = snapshots.borrow().watched.clone();
                let now = fingerprint(&watched);
                if now != last && !inputs.send(Input::Changed) {
                    return;
                }
                last = now;
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_policy_file_changes_the_fingerprint_and_an_untouched_one_does_not() {
        let dir = tempfile::tempdir().expect("test setup");
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, "a: 1\n").expect("test setup");
        let w = Watched {
            policies: vec![dir.path().to_path_buf()],
            cgroups: vec![dir.path().join("no-such-cgroup")],
        };
        let before = fingerprint(&w);
        assert_eq!(before, fingerprint(&w));
        std::fs::write(&file, "a: 22\n").expect("test setup");
        assert_ne!(before, fingerprint(&w));
        let before = fingerprint(&w);
        std::fs::create_dir(dir.path().join("no-such-cgroup")).expect("test setup");
        assert_ne!(before, fingerprint(&w), "a cgroup that appears is a change");
    }
}
