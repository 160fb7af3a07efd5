//! New pod cgroups, as the kubelet creates them: an inotify watch on the kubepods cgroup and
//! its QoS children, so a pod's entry is written as soon as its cgroup appears, before its
//! containers start, instead of at the next look.

use std::{io, path::PathBuf};

use inotify::{Inotify, WatchMask};
use tokio::sync::mpsc;

const NEW_DIRECTORY: WatchMask = WatchMask::CREATE.union(WatchMask::ONLYDIR);

/// Watches `kubepods` and the directories directly below it (the QoS classes, and the pod
/// cgroups of Guaranteed pods) for new directories, and sends a wake-up for each burst of
/// them. Runs on a thread of its own until the receiver goes away.
pub fn watch(kubepods: PathBuf, tx: mpsc::Sender<()>) -> io::Result<()> {
    let mut inotify = Inotify::init()?;
    let mut watches = inotify.watches();
    watches.add(&kubepods, NEW_DIRECTORY)?;
    for e in std::fs::read_dir(&kubepods)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = watches.add(e.path(), NEW_DIRECTORY);
        }
    }
    std::thread::Builder::new()
        .name("pod-cgroups".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let Ok(events) = inotify.read_events_blocking(&mut buf) else {
                    return;
                };
                for ev in events {
                    // A new QoS class directory: watch it too (its pods are created inside).
                    let Some(name) = ev.name.and_then(|n| n.to_str()) else {
                        continue;
                    };
                    if (name.contains("burstable") || name.contains("besteffort"))
                        && super::cgroups::pod_uid_of_dir(name).is_none()
                    {
                        let _ = watches.add(kubepods.join(name), NEW_DIRECTORY);
                    }
                }
                if tx.blocking_send(()).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}
