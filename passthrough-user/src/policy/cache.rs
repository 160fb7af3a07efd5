//! What the agent remembers of the policy files it has read, so that a change to one file
//! of a hundred reads, parses and validates that one file: every other file's policies are
//! taken as they were (sharing their `appendMatch` lists, which are never copied).
//!
//! A file is taken unread when its identity, size and times are those recorded and it had
//! not been modified for [`SETTLED`] when it was read (a file written twice within the
//! file system's timestamp granularity can keep its times; such a "racily clean" file is
//! read again and compared by content, as git does with its index). A file read again whose
//! content hash is unchanged is not parsed again either.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{Hash as _, Hasher as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{
    Violation,
    kuma::{Admission, KumaVersion},
    load::{self, Document, Listed, LoadError},
    model::{Policy, Source},
};

/// How long a file must have been left alone, when read, for its times to vouch for it.
pub const SETTLED: Duration = Duration::from_secs(1);

/// One file's documents, validated.
#[derive(Debug, Default)]
pub struct FileRead {
    pub documents: usize,
    /// The policies kept (valid, or with warnings only), as applied.
    pub policies: Vec<Policy>,
    /// Each document's findings: (where, policy name, violations).
    pub findings: Vec<(Source, String, Vec<Violation>)>,
}

/// What one file came to.
pub enum Outcome {
    Read(Arc<FileRead>),
    Failed(LoadError),
}

/// A file's identity and times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether neither time is within `window` of `read_at`.
    fn settled_at(&self, read_at: SystemTime, window: Duration) -> bool {
        let Ok(at) = read_at.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        let newest = self.mtime.max(self.ctime);
        let (Ok(secs), Ok(nanos)) = (u64::try_from(newest.0), u32::try_from(newest.1)) else {
            return false;
        };
        Duration::new(secs, nanos) + window <= at
    }
}

struct Entry {
    stamp: Stamp,
    /// The stamp can vouch for the content (see the module doc).
    settled: bool,
    hash: u64,
    read: Arc<FileRead>,
}

/// The files read, by path. Validation depends on the Kuma version and admission, and a
/// file's acceptance on the size limit: a change of either forgets everything.
pub struct FileCache {
    /// [`SETTLED`], shorter in tests.
    settled: Duration,
    settings: Option<(KumaVersion, Admission, u64)>,
    files: HashMap<PathBuf, Entry>,
    /// Files parsed by the last [`FileCache::load`] (for the log and the tests).
    pub parsed_last: usize,
}

impl Default for FileCache {
    fn default() -> Self {
        Self {
            settled: SETTLED,
            settings: None,
            files: HashMap::new(),
            parsed_last: 0,
        }
    }
}

/// What a file needs: nothing (its entry holds), or reading.
enum Need {
    Kept(Arc<FileRead>),
    Read(PathBuf),
}

/// A file read in a worker.
enum Fresh {
    /// Same content as the entry: only the stamp is new.
    Same(Stamp, bool),
    Parsed(Stamp, bool, u64, Arc<FileRead>),
    Failed(LoadError),
}

fn hash_of(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl FileCache {
    /// Every file `paths` name, in order, read where it changed; `validate` turns a fresh
    /// file's documents into what is kept of them (it runs on the reading threads). Also
    /// returns the files the directories left out for their name.
    pub fn load(
        &mut self,
        paths: &[PathBuf],
        settings: (KumaVersion, Admission, u64),
        validate: impl Fn(Vec<Document>) -> FileRead + Sync,
    ) -> (Vec<(String, Outcome)>, Vec<PathBuf>) {
        if self.settings != Some(settings) {
            self.files.clear();
            self.settings = Some(settings);
        }
        let max_bytes = settings.2;
        let (listed, skipped) = load::list_paths(paths);
        let mut needs = Vec::new();
        let mut out: Vec<(String, Option<Outcome>)> = Vec::new();
        for item in listed {
            match item {
                Listed::Unwalkable(r) => {
                    out.push((r.path, r.outcome.err().map(Outcome::Failed)));
                }
                Listed::File(path) => {
                    let kept = self.files.get(&path).filter(|e| {
                        e.settled
                            && std::fs::metadata(&path).is_ok_and(|m| Stamp::of(&m) == e.stamp)
                    });
                    out.push((path.display().to_string(), None));
                    needs.push(match kept {
                        Some(e) => Need::Kept(e.read.clone()),
                        None => Need::Read(path),
                    });
                }
            }
        }
        let cached: BTreeMap<&Path, u64> = needs
            .iter()
            .filter_map(|n| match n {
                Need::Read(p) => self.files.get(p).map(|e| (p.as_path(), e.hash)),
                Need::Kept(_) => None,
            })
            .collect();
        let fresh = load::in_parallel(&needs, |n| match n {
            Need::Kept(_) => None,
            Need::Read(path) => Some(read(
                path,
                max_bytes,
                self.settled,
                cached.get(path.as_path()),
                &validate,
            )),
        });
        drop(cached);
        let mut files = out.iter_mut().filter(|(_, o)| o.is_none());
        self.parsed_last = 0;
        for (need, fresh) in needs.into_iter().zip(fresh) {
            let Some((_, slot)) = files.next() else { break };
            let outcome = match (need, fresh) {
                (Need::Kept(read), _) => Outcome::Read(read),
                (Need::Read(path), Some(Fresh::Same(stamp, settled))) => {
                    let read = match self.files.get_mut(&path) {
                        Some(e) => {
                            e.stamp = stamp;
                            e.settled = settled;
                            e.read.clone()
                        }
                        None => Arc::default(),
                    };
                    Outcome::Read(read)
                }
                (Need::Read(path), Some(Fresh::Parsed(stamp, settled, hash, read))) => {
                    self.parsed_last += 1;
                    self.files.insert(
                        path.clone(),
                        Entry {
                            stamp,
                            settled,
                            hash,
                            read: read.clone(),
                        },
                    );
                    Outcome::Read(read)
                }
                (Need::Read(path), Some(Fresh::Failed(e))) => {
                    self.files.remove(&path);
                    Outcome::Failed(e)
                }
                (Need::Read(_), None) => continue,
            };
            *slot = Some(outcome);
        }
        // Files no longer named are forgotten (their policies are not kept alive).
        let named: std::collections::HashSet<&str> = out.iter().map(|(p, _)| p.as_str()).collect();
        self.files
            .retain(|p, _| named.contains(p.display().to_string().as_str()));
        let out = out
            .into_iter()
            .filter_map(|(p, o)| o.map(|o| (p, o)))
            .collect();
        (out, skipped)
    }
}

fn read(
    path: &Path,
    max_bytes: u64,
    window: Duration,
    cached_hash: Option<&u64>,
    validate: &(impl Fn(Vec<Document>) -> FileRead + Sync),
) -> Fresh {
    let name = path.display().to_string();
    let read_at = SystemTime::now();
    // The stamp is taken before reading: a write after it makes the next load read again.
    let stamp = match std::fs::metadata(path) {
        Ok(m) => Stamp::of(&m),
        Err(source) => return Fresh::Failed(LoadError::Io { path: name, source }),
    };
    let settled = stamp.settled_at(read_at, window);
    let text = match load::read_text(path, &name, max_bytes) {
        Ok(t) => t,
        Err(e) => return Fresh::Failed(e),
    };
    let hash = hash_of(&text);
    if cached_hash == Some(&hash) {
        return Fresh::Same(stamp, settled);
    }
    match load::parse_documents(&name, &text) {
        Ok(docs) => {
            drop(text);
            Fresh::Parsed(stamp, settled, hash, Arc::new(validate(docs)))
        }
        Err(e) => Fresh::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{
        merge::SelectOptions,
        set::{Finding, PolicySet},
    };

    fn policy(name: &str, ip: &str) -> String {
        format!(
            "type: MeshPassthrough\nname: {name}\nspec:\n  default:\n    passthroughMode: Matched\n    appendMatch:\n      - {{type: IP, value: \"{ip}\", port: 443}}\n"
        )
    }

    /// What a set comes to, as the agent and the CLI see it.
    fn outcome(set: &PolicySet) -> (Vec<Policy>, Vec<String>, usize, usize) {
        let lines = set.findings().iter().map(Finding::line).collect();
        (set.policies.clone(), lines, set.files, set.documents)
    }

    #[test]
    fn only_changed_files_are_parsed_again_and_the_set_is_as_if_all_were_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write");
        };
        write("a.yaml", &policy("a", "198.51.100.1"));
        write("b.yaml", &policy("b", "198.51.100.2"));
        // Refused by validation: its finding is remembered with it.
        write("c.yaml", &policy("c", "not-an-ip"));
        let paths = [dir.path().to_path_buf()];
        let opts = SelectOptions::default();
        let mut cache = FileCache {
            settled: Duration::ZERO,
            ..FileCache::default()
        };
        let full = |cache: &mut FileCache| {
            let cached = PolicySet::load_cached(&paths, Vec::new(), &opts, cache);
            let fresh = PolicySet::load_with(&paths, Vec::new(), &opts);
            assert_eq!(outcome(&cached), outcome(&fresh));
            cached
        };
        let first = full(&mut cache);
        assert_eq!(cache.parsed_last, 3);
        assert_eq!(first.policies.len(), 2);
        assert!(first.has_errors(), "c.yaml is refused");

        full(&mut cache);
        assert_eq!(cache.parsed_last, 0, "nothing changed");

        write("b.yaml", &policy("b", "198.51.100.222"));
        let changed = full(&mut cache);
        assert_eq!(cache.parsed_last, 1, "only b.yaml");
        assert_eq!(
            changed.policies[1].spec.default.matches()[0].value,
            "198.51.100.222"
        );
        // The unchanged file's entries are the very list read before, not a copy.
        let (Some(before), Some(now)) = (
            &first.policies[0].spec.default.append_match,
            &changed.policies[0].spec.default.append_match,
        ) else {
            panic!("a.yaml has entries");
        };
        assert!(Arc::ptr_eq(before, now));

        std::fs::remove_file(dir.path().join("c.yaml")).expect("remove");
        let removed = full(&mut cache);
        assert_eq!(cache.parsed_last, 0);
        assert!(!removed.has_errors());
        assert_eq!(cache.files.len(), 2, "the removed file is forgotten");
    }

    #[test]
    fn a_file_written_just_now_is_read_again_and_compared_by_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.yaml");
        std::fs::write(&path, policy("a", "198.51.100.1")).expect("write");
        let paths = [path.clone()];
        let opts = SelectOptions::default();
        // The real window: a file written within it is never taken on its times alone.
        let mut cache = FileCache::default();
        PolicySet::load_cached(&paths, Vec::new(), &opts, &mut cache);
        assert_eq!(cache.parsed_last, 1);
        // Same size, same modification time: only the content tells.
        let mtime = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        std::fs::write(&path, policy("a", "198.51.100.9")).expect("write");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(mtime))
            .expect("set mtime");
        let set = PolicySet::load_cached(&paths, Vec::new(), &opts, &mut cache);
        assert_eq!(cache.parsed_last, 1);
        assert_eq!(
            set.policies[0].spec.default.matches()[0].value,
            "198.51.100.9"
        );
        // Read again, same content: not parsed again.
        PolicySet::load_cached(&paths, Vec::new(), &opts, &mut cache);
        assert_eq!(cache.parsed_last, 0);
    }
}
