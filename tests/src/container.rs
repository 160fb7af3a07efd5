//! The shipped artifacts under test: the agent's OCI image in a real container runtime
//! (podman; nothing is pulled) and the Debian package. `cargo xtask test` builds both and
//! names them in `$PASSTHROUGH_IMAGE` and `$PASSTHROUGH_DEB`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{agent::AgentRun, cgroup2_root};

/// The crate version: the image's tag and the package's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no Debian/OCI architecture name for {other}"),
    }
}

/// `$var`, else `target/dist/<name>` as `cargo xtask <task>` writes it.
fn artifact(var: &str, name: &str, task: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/dist")
            .join(name)
    });
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask {task}` (or `cargo xtask test`, which builds it), or \
         set {var}",
        path.display()
    );
    path
}

/// The OCI archive `cargo xtask image` wrote.
pub fn image_archive() -> PathBuf {
    artifact(
        "PASSTHROUGH_IMAGE",
        &format!("passthrough_{VERSION}_{}.oci.tar", arch()),
        "image",
    )
}

/// The package `cargo xtask deb` wrote.
pub fn deb_package() -> PathBuf {
    artifact(
        "PASSTHROUGH_DEB",
        &format!("passthrough_{VERSION}_{}.deb", arch()),
        "deb",
    )
}

/// Runs a command to completion, panicking with its output if it cannot start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn check(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// podman with runc: crun (podman's default on Debian 12) refuses hybrid cgroup hosts such
/// as this one ("cgroups in hybrid mode not supported"); runc runs on both kinds.
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc"]);
    cmd
}

/// `--ulimit` options no higher than this process's own limits. podman's defaults for root
/// raise them (nofile 1048576), which fails where root lacks CAP_SYS_RESOURCE, as in this VM.
/// The agent needs a few hundred descriptors and few processes.
pub fn ulimits() -> Vec<String> {
    let limit = |resource, cap: u64| {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        assert_eq!(unsafe { libc::getrlimit(resource, &mut l) }, 0, "getrlimit");
        l.rlim_cur.min(cap)
    };
    vec![
        format!("--ulimit=nofile={0}:{0}", limit(libc::RLIMIT_NOFILE, 65536)),
        format!("--ulimit=nproc={0}:{0}", limit(libc::RLIMIT_NPROC, 4096)),
    ]
}

/// A file of an archive, read with tar(1).
pub fn archive_member(archive: &Path, member: &str) -> Vec<u8> {
    let out = output(Command::new("tar").arg("-xOf").arg(archive).arg(member));
    assert!(out.status.success(), "no {member} in {}", archive.display());
    out.stdout
}

/// The image, loaded into podman's store from its archive; removed from it on drop.
#[must_use = "dropping the guard removes the image"]
pub struct LoadedImage {
    /// The name the archive's index gives it (`org.opencontainers.image.ref.name`).
    pub reference: String,
    /// The manifest digest the archive's index gives it.
    pub digest: String,
    _cgroups: PodmanCgroups,
}

/// The `libpod_parent` cgroups podman creates for containers (one per cgroup hierarchy with
/// the cgroupfs manager) that were not there when the guard was made: removed on drop.
pub struct PodmanCgroups(Vec<PathBuf>);

impl PodmanCgroups {
    pub fn new() -> Self {
        Self(
            podman_parent_cgroups()
                .into_iter()
                .filter(|p| !p.exists())
                .collect(),
        )
    }
}

impl Default for PodmanCgroups {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PodmanCgroups {
    fn drop(&mut self) {
        // Empty once the containers are gone (podman leaves a `conmon` child in each, and a
        // container's conmon exits shortly after it); one that still holds a process after
        // that is left alone.
        for _ in 0..20 {
            for parent in &self.0 {
                remove_empty_cgroups(parent);
            }
            if self.0.iter().all(|p| !p.exists()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Removes `dir` and the cgroups below it, deepest first; `rmdir` refuses any that still
/// holds a process.
fn remove_empty_cgroups(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_cgroups(&entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The `libpod_parent` directory of every cgroup (v1 and v2) mount, from mountinfo.
fn podman_parent_cgroups() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (fields, fs) = line.split_once(" - ")?;
            let fs_type = fs.split(' ').next()?;
            let mount_point = fields.split(' ').nth(4)?;
            (fs_type == "cgroup" || fs_type == "cgroup2")
                .then(|| PathBuf::from(mount_point).join("libpod_parent"))
        })
        .collect()
}

impl LoadedImage {
    pub fn load() -> Self {
        remove_stale_containers();
        let archive = image_archive();
        let index: serde_json::Value =
            serde_json::from_slice(&archive_member(&archive, "index.json")).expect("index.json");
        let manifest = &index["manifests"][0];
        let reference = manifest["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .expect("the index names the image")
            .to_string();
        let digest = manifest["digest"].as_str().expect("digest").to_string();
        let cgroups = PodmanCgroups::new();
        check(podman().arg("load").arg("--input").arg(&archive));
        Self {
            reference,
            digest,
            _cgroups: cgroups,
        }
    }

    /// `podman image inspect --format`.
    pub fn inspect(&self, format: &str) -> String {
        check(
            podman()
                .args(["image", "inspect", "--format", format])
                .arg(&self.reference),
        )
        .trim()
        .to_string()
    }

    /// `passthrough <args>` in a throwaway container without network.
    pub fn run(&self, podman_args: &[&str], args: &[&str]) -> Output {
        output(
            podman()
                .args(["run", "--rm", "--network", "none"])
                .args(ulimits())
                .args(podman_args)
                .arg(&self.reference)
                .args(args),
        )
    }

    /// The agent from the image as the DaemonSet runs it (`deploy/kubernetes/passthrough.yaml`):
    /// `run --config /etc/passthrough/agent.yaml`, with [`LoadedImage::daemonset_options`].
    pub fn run_agent(&self, agent: &AgentRun, netns: &Path) -> Container {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{CONTAINER_PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        check(
            podman()
                .args(["run", "--detach", "--name", &name])
                .args(Self::daemonset_options(agent, netns))
                .arg(&self.reference)
                .args(["run", "--config", "/etc/passthrough/agent.yaml"]),
        );
        Container { name }
    }

    /// `passthrough <args>` from the image once, with the DaemonSet's options.
    pub fn run_like_daemonset(&self, agent: &AgentRun, netns: &Path, args: &[&str]) -> Output {
        output(
            podman()
                .args(["run", "--rm"])
                .args(Self::daemonset_options(agent, netns))
                .arg(&self.reference)
                .args(args),
        )
    }

    /// The DaemonSet's container settings as podman options: `agent`'s config directory
    /// read-only at `/etc/passthrough`, bpffs and the cgroup tree from the host, host PID,
    /// only CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_PERFMON, no privilege escalation, a
    /// read-only root filesystem. One difference: the network is `netns` (a test namespace),
    /// not the host's.
    fn daemonset_options(agent: &AgentRun, netns: &Path) -> Vec<String> {
        let mut opts: Vec<String> = [
            format!("--network=ns:{}", netns.display()),
            "--pid=host".into(),
            "--cap-drop=all".into(),
            "--cap-add=CAP_BPF,CAP_NET_ADMIN,CAP_SYS_ADMIN,CAP_PERFMON".into(),
            "--security-opt=no-new-privileges".into(),
            "--read-only".into(),
            // Kubernetes adds no tmpfs to a read-only root; podman would.
            "--read-only-tmpfs=false".into(),
            format!("--volume={}:/etc/passthrough:ro", agent.dir().display()),
            "--volume=/sys/fs/bpf:/sys/fs/bpf:rw".into(),
            // The DaemonSet's hostPath /sys/fs/cgroup; bind mounts are recursive, so a
            // hybrid host's cgroup2 mount below it (/sys/fs/cgroup/unified) comes along.
            "--volume=/sys/fs/cgroup:/sys/fs/cgroup:rw,rbind".into(),
        ]
        .into();
        opts.extend(ulimits());
        let cg2 = cgroup2_root();
        if !cg2.starts_with("/sys/fs/cgroup") {
            opts.push(format!("--volume={0}:{0}:rw", cg2.display()));
        }
        opts
    }
}

impl Drop for LoadedImage {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rmi", "--force"])
            .arg(&self.reference)
            .output();
    }
}

const CONTAINER_PREFIX: &str = "pt-img-";

/// Removes the containers of earlier runs whose test process died (names carry its pid).
fn remove_stale_containers() {
    let names = output(podman().args(["ps", "--all", "--format", "{{.Names}}"]));
    for name in String::from_utf8_lossy(&names.stdout).lines() {
        let Some(pid) = name
            .strip_prefix(CONTAINER_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            eprintln!("passthrough-tests: removing stale container {name}");
            let _ = podman().args(["rm", "--force", name]).output();
        }
    }
}

/// A detached container; removed (killed first) on drop.
#[must_use = "dropping the guard removes the container"]
pub struct Container {
    name: String,
}

impl Container {
    pub fn is_running(&self) -> bool {
        output(podman().args(["inspect", "--format", "{{.State.Running}}", &self.name]))
            .stdout
            .starts_with(b"true")
    }

    /// The container's main process, as the host sees it.
    pub fn pid(&self) -> u32 {
        check(podman().args(["inspect", "--format", "{{.State.Pid}}", &self.name]))
            .trim()
            .parse()
            .expect("a pid")
    }

    pub fn logs(&self) -> String {
        let out = output(podman().args(["logs", &self.name]));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Waits until `agent`'s admin endpoint (inside the container) says ready.
    pub fn wait_ready(&self, agent: &AgentRun) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !agent.is_ready() {
            assert!(
                self.is_running(),
                "the agent's container exited:\n{}",
                self.logs()
            );
            assert!(
                Instant::now() < deadline,
                "the agent in its container is not ready in 30 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the agent as the kubelet would: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&self, grace: Duration) {
        check(podman().args(["stop", "--time", &grace.as_secs().to_string(), &self.name]));
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("container {} log:\n{}", self.name, self.logs());
        }
        let _ = podman()
            .args(["rm", "--force", "--time", "2", &self.name])
            .output();
    }
}
