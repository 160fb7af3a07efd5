//! `cargo xtask image`: the agent's OCI image, written here without a container engine and
//! without pulling a base image.
//!
//! The root filesystem is the release binary at `/usr/local/bin/passthrough`, exactly the
//! shared libraries `ldd` says it loads (with their Debian copyright files), and a few `/etc`
//! files. It becomes one layer, and the layer, its config, the manifest and the index become
//! an OCI image layout in a tar archive:
//!
//! - `podman load -i` and `docker load -i` (Docker 25 and later) read it as an OCI archive
//!   (`index.json`); `ctr image import` too, naming it by `io.containerd.image.name`;
//! - older `docker load` reads the `manifest.json` beside it (the docker-archive format),
//!   which points at the same blobs.
//!
//! Reproducible: every tar entry is sorted, owned by 0:0 and stamped with the commit time
//! (`release::source_date_epoch`), gzip carries no time or name, JSON keys are sorted. The
//! same commit and the same binary give the same digest; `build` assembles twice and checks.

use std::{collections::BTreeMap, fs, io::Write as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::release::{self, VERSION};

/// The image's full name: its repository (change it here to publish elsewhere) tagged with
/// the agent's version. The DaemonSet (`xtask/src/manifests.rs`) runs this name.
pub const REFERENCE: &str = concat!(
    "ghcr.io/passthrough/passthrough:",
    env!("CARGO_PKG_VERSION")
);

const BINARY_PATH: &str = "usr/local/bin/passthrough";

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What `cargo xtask image` wrote.
pub struct Built {
    pub archive: std::path::PathBuf,
    /// `sha256:...` of the manifest: the digest a registry and `podman image inspect` show.
    pub manifest_digest: String,
}

/// Builds the release binary and the image from it; assembles the image twice and fails if
/// the two differ by a byte.
pub fn build() -> Result<Built> {
    let binary = release::binary()?;
    let inputs = Inputs {
        binary: &binary,
        epoch: release::source_date_epoch()?,
        commit: release::commit()?,
        arch: release::arch()?,
    };
    let first = assemble(&inputs)?;
    let second = assemble(&inputs)?;
    if first.archive != second.archive {
        bail!(
            "two assemblies of the image differ ({} and {}): something in image.rs is not \
             deterministic",
            first.manifest_digest,
            second.manifest_digest
        );
    }
    let dir = release::dist_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let archive = dir.join(format!("passthrough_{VERSION}_{}.oci.tar", inputs.arch));
    fs::write(&archive, &first.archive).with_context(|| archive.display().to_string())?;
    eprintln!(
        "xtask: wrote {} ({} MiB): {REFERENCE} {} (image ID {}), reproduced",
        archive.display(),
        first.archive.len() >> 20,
        first.manifest_digest,
        first.config_digest,
    );
    Ok(Built {
        archive,
        manifest_digest: first.manifest_digest,
    })
}

struct Inputs<'a> {
    binary: &'a Path,
    epoch: i64,
    commit: String,
    arch: &'static str,
}

struct Assembled {
    archive: Vec<u8>,
    manifest_digest: String,
    config_digest: String,
}

fn assemble(inputs: &Inputs<'_>) -> Result<Assembled> {
    let rootfs = rootfs(inputs.binary)?;
    let layer_tar = tar_bytes(&rootfs, inputs.epoch)?;
    let diff_id = digest(&layer_tar);
    let layer = gzip(&layer_tar)?;
    let created = jiff::Timestamp::from_second(inputs.epoch)
        .with_context(|| format!("SOURCE_DATE_EPOCH {} is out of range", inputs.epoch))?
        .to_string();
    let labels = json!({
        "org.opencontainers.image.title": "passthrough",
        "org.opencontainers.image.description":
            "MeshPassthrough egress enforcement in the kernel (eBPF node agent)",
        "org.opencontainers.image.version": VERSION,
        "org.opencontainers.image.revision": inputs.commit,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.created": created,
    });
    let config = serde_json::to_vec(&json!({
        "architecture": inputs.arch,
        "os": "linux",
        "created": created,
        "config": {
            "Entrypoint": [format!("/{BINARY_PATH}")],
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "cargo xtask image"}],
    }))?;
    let config_digest = digest(&config);
    let layer_digest = digest(&layer);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer.len()}],
        "annotations": labels,
    }))?;
    let manifest_digest = digest(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                "org.opencontainers.image.ref.name": REFERENCE,
                "io.containerd.image.name": REFERENCE,
            },
        }],
    }))?;
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    // The docker-archive index, for `docker load` before Docker 25.
    let docker_manifest = serde_json::to_vec(&json!([{
        "Config": blob(&config_digest),
        "RepoTags": [REFERENCE],
        "Layers": [blob(&layer_digest)],
    }]))?;
    let mut layout = Tree::default();
    layout.dir("blobs/sha256", 0o755);
    layout.file(&blob(&config_digest), config, 0o644);
    layout.file(&blob(&layer_digest), layer, 0o644);
    layout.file(&blob(&manifest_digest), manifest, 0o644);
    layout.file("index.json", index, 0o644);
    layout.file("manifest.json", docker_manifest, 0o644);
    layout.file(
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        0o644,
    );
    Ok(Assembled {
        archive: tar_bytes(&layout, inputs.epoch)?,
        manifest_digest,
        config_digest,
    })
}

/// The image's root filesystem.
fn rootfs(binary: &Path) -> Result<Tree> {
    let mut t = Tree::default();
    t.file(BINARY_PATH, read(binary)?, 0o755);
    let mut packages = Vec::new();
    for lib in release::shared_libraries(binary)? {
        let rel = lib.to_string_lossy().trim_start_matches('/').to_string();
        t.file(&rel, read(&lib)?, 0o755);
        packages.push(owning_package(&lib)?);
    }
    packages.sort();
    packages.dedup();
    // The libraries' licences travel with them.
    for p in &packages {
        let copyright = format!("usr/share/doc/{p}/copyright");
        t.file(&copyright, read(&Path::new("/").join(&copyright))?, 0o644);
    }
    t.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n".to_vec(),
        0o644,
    );
    t.file(
        "etc/group",
        b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
        0o644,
    );
    // glibc's own resolver reads this (the CLI's admin client resolves host names); files
    // first, so /etc/hosts of the pod or node answers `localhost`.
    t.file("etc/nsswitch.conf", b"hosts: files dns\n".to_vec(), 0o644);
    // Mount points: the config (a ConfigMap), bpffs and cgroup2 come from the DaemonSet.
    for dir in ["etc/passthrough", "proc", "sys", "dev", "root"] {
        t.dir(dir, 0o755);
    }
    t.dir("tmp", 0o1777);
    Ok(t)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {} for the image", path.display()))
}

/// The Debian package a library comes from (`dpkg -S`), whose copyright file the image ships.
fn owning_package(lib: &Path) -> Result<String> {
    let canonical = fs::canonicalize(lib).unwrap_or_else(|_| lib.to_path_buf());
    for candidate in [lib, canonical.as_path()] {
        let out = Command::new("dpkg").arg("-S").arg(candidate).output();
        if let Ok(out) = out
            && out.status.success()
            && let Some((pkg, _)) = String::from_utf8_lossy(&out.stdout).split_once(':')
        {
            return Ok(pkg.trim().to_string());
        }
    }
    bail!(
        "`dpkg -S {}`: no Debian package owns it; the image ships each library's copyright \
         file, so the binary must link only against Debian's libraries",
        lib.display()
    )
}

#[derive(Debug)]
enum Node {
    Dir(u32),
    File(Vec<u8>, u32),
}

/// Paths (relative, no leading `/`) and what they are; sorted, parents before children.
#[derive(Default)]
struct Tree(BTreeMap<String, Node>);

impl Tree {
    fn dir(&mut self, path: &str, mode: u32) {
        self.parents(path);
        self.0.insert(path.to_string(), Node::Dir(mode));
    }

    fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        self.parents(path);
        self.0.insert(path.to_string(), Node::File(data, mode));
    }

    fn parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            at += i;
            self.0
                .entry(path[..at].to_string())
                .or_insert(Node::Dir(0o755));
            at += 1;
        }
    }
}

/// A tar of `tree`: entries in path order, 0:0 without names, every time `epoch`.
fn tar_bytes(tree: &Tree, epoch: i64) -> Result<Vec<u8>> {
    let mtime = u64::try_from(epoch).context("SOURCE_DATE_EPOCH before 1970")?;
    let mut b = tar::Builder::new(Vec::new());
    for (path, node) in &tree.0 {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        match node {
            Node::Dir(mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), std::io::empty())?;
            }
            Node::File(data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_slice())?;
            }
        }
    }
    Ok(b.into_inner()?)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    // No file name and time 0 in the gzip header: only the bytes decide the output.
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(data)?;
    Ok(gz.finish()?)
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn sample(order: &[&str]) -> Tree {
        let mut t = Tree::default();
        for p in order {
            t.file(p, p.as_bytes().to_vec(), 0o644);
        }
        t.dir("tmp", 0o1777);
        t
    }

    #[test]
    fn the_layer_does_not_depend_on_the_order_files_are_added() {
        let a = tar_bytes(&sample(&["etc/passwd", "usr/local/bin/x", "etc/group"]), 1).unwrap();
        let b = tar_bytes(&sample(&["usr/local/bin/x", "etc/group", "etc/passwd"]), 1).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(
            digest(&a),
            digest(&tar_bytes(&sample(&["etc/passwd"]), 1).unwrap())
        );
    }

    #[test]
    fn every_entry_is_sorted_owned_by_root_and_stamped_with_the_epoch() {
        let bytes = tar_bytes(&sample(&["usr/local/bin/x", "etc/passwd"]), 1_700_000_000).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut e = entry.unwrap();
            let h = e.header();
            assert_eq!(h.mtime().unwrap(), 1_700_000_000);
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            let name = e.path().unwrap().to_string_lossy().into_owned();
            if h.entry_type().is_file() {
                let mut body = String::new();
                e.read_to_string(&mut body).unwrap();
                assert_eq!(body, name, "file content");
            }
            names.push(name);
        }
        assert_eq!(
            names,
            [
                "etc/",
                "etc/passwd",
                "tmp/",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/x"
            ]
        );
    }

    #[test]
    fn gzip_output_depends_only_on_its_input() {
        let data = vec![7u8; 100_000];
        assert_eq!(gzip(&data).unwrap(), gzip(&data).unwrap());
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(gzip(&data).unwrap().as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn the_reference_is_tagged_with_the_version() {
        assert!(REFERENCE.ends_with(&format!(":{VERSION}")), "{REFERENCE}");
    }
}
