//! The agent under test and the oracle, shared by the kernel tests and the demo.

use std::{
    fs,
    io::Write as _,
    net::SocketAddr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use passthrough::{
    agent::loader,
    cli::agent::admin_get,
    policy::{
        compile::{CompiledPolicy, compile},
        decide::{Action, Exemptions, Peeked, Verdict, decide},
        merge::{MergedEntry, SelectOptions, merged_for},
        set::PolicySet,
        workload::Workload,
    },
};

use crate::{BpffsDir, ProbeResult, TestCgroup, Topology, agent_bin, run_in_netns};

pub const ADMIN: &str = "127.0.0.1:9902";

pub fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// What the oracle says a connect must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Allow,
    Deny,
}

impl Expect {
    pub fn assert(self, got: &ProbeResult, what: &str) {
        match self {
            Expect::Allow => assert!(
                got.received().starts_with("hello from "),
                "{what}: expected the test host's greeting, got {got:?}"
            ),
            Expect::Deny => assert!(got.is_eperm(), "{what}: expected EPERM, got {got:?}"),
        }
    }
}

/// How long [`AgentRun::wait_ready`] waits, in seconds: 30 for the tests; a benchmark that
/// loads millions of entries raises it with [`set_ready_patience`].
static READY_PATIENCE_SECS: AtomicU64 = AtomicU64::new(30);

/// Sets how long every later [`AgentRun::wait_ready`] of this process waits.
pub fn set_ready_patience(patience: Duration) {
    READY_PATIENCE_SECS.store(patience.as_secs().max(1), Ordering::Relaxed);
}

/// A workload's tags.
type WorkloadTags<'a> = &'a [(&'a str, &'a str)];

/// A workload of the config: its cgroup, its tags, and lines of its own config.
type WorkloadLines<'a> = (&'a Path, &'a [(&'a str, &'a str)], &'a str);

/// A `passthrough run` process inside the topology's client namespace.
pub struct AgentRun {
    dir: tempfile::TempDir,
    config: PathBuf,
    client_netns: PathBuf,
    bpffs: BpffsDir,
    mesh_cidrs: Vec<ipnet::IpNet>,
    /// A test cgroup the agent process is placed in (else it stays in the test's cgroup).
    agent_cgroup: Option<PathBuf>,
    child: Option<Child>,
}

impl AgentRun {
    /// Writes the config and the policies, starts the agent and waits until it is ready.
    pub fn start(
        topo: &Topology,
        workloads: &[(&TestCgroup, &[(&str, &str)])],
        policies: &[(&str, &str)],
        extra_config: &str,
    ) -> Self {
        Self::start_in(None, topo, workloads, policies, extra_config)
    }

    /// As [`AgentRun::start`], with the agent process placed in `agent_cgroup` first.
    pub fn start_in(
        agent_cgroup: Option<&TestCgroup>,
        topo: &Topology,
        workloads: &[(&TestCgroup, &[(&str, &str)])],
        policies: &[(&str, &str)],
        extra_config: &str,
    ) -> Self {
        let workloads: Vec<(&Path, &[(&str, &str)])> =
            workloads.iter().map(|(c, t)| (c.path(), *t)).collect();
        let mut run = Self::launch(agent_cgroup, topo, &workloads, policies, extra_config);
        run.wait_ready();
        run
    }

    /// As [`AgentRun::start`] with no config-file workloads, the agent in the network
    /// namespace at `netns` (a node's, apart from its pods') instead of the client one.
    pub fn start_in_netns(
        netns: &Path,
        topo: &Topology,
        policies: &[(&str, &str)],
        extra_config: &str,
    ) -> Self {
        let mut run = Self::prepare(None, topo, &[], policies, extra_config);
        run.client_netns = netns.to_path_buf();
        run.spawn();
        run.wait_ready();
        run
    }

    /// Writes the config and the policies and starts the agent, without waiting for it to be
    /// ready. Workload cgroups are given as paths, which need not exist yet.
    pub fn launch(
        agent_cgroup: Option<&TestCgroup>,
        topo: &Topology,
        workloads: &[(&Path, &[(&str, &str)])],
        policies: &[(&str, &str)],
        extra_config: &str,
    ) -> Self {
        let workloads: Vec<WorkloadLines<'_>> =
            workloads.iter().map(|(p, t)| (*p, *t, "")).collect();
        let mut run = Self::prepare(agent_cgroup, topo, &workloads, policies, extra_config);
        run.spawn();
        run
    }

    /// As [`AgentRun::start`], each workload with lines of its own config (`udp: ...`,
    /// `rawSockets: ...`, at the workload's indentation).
    pub fn start_workloads(
        topo: &Topology,
        workloads: &[(&TestCgroup, WorkloadTags<'_>, &str)],
        policies: &[(&str, &str)],
        extra_config: &str,
    ) -> Self {
        let workloads: Vec<WorkloadLines<'_>> = workloads
            .iter()
            .map(|(c, t, e)| (c.path(), *t, *e))
            .collect();
        let mut run = Self::prepare(None, topo, &workloads, policies, extra_config);
        run.spawn();
        run.wait_ready();
        run
    }

    /// Writes the config and the policies without starting an agent: for one started some
    /// other way (from the image, `container::LoadedImage::run_agent`), with [`AgentRun::dir`]
    /// as its `/etc/passthrough`.
    pub fn configure(
        topo: &Topology,
        workloads: &[(&TestCgroup, &[(&str, &str)])],
        policies: &[(&str, &str)],
        extra_config: &str,
    ) -> Self {
        let workloads: Vec<WorkloadLines<'_>> =
            workloads.iter().map(|(c, t)| (c.path(), *t, "")).collect();
        Self::prepare(None, topo, &workloads, policies, extra_config)
    }

    /// The directory holding the config (`agent.yaml`) and its `policies` directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the config and the policies; the agent is not started.
    fn prepare(
        agent_cgroup: Option<&TestCgroup>,
        topo: &Topology,
        workloads: &[WorkloadLines<'_>],
        policies: &[(&str, &str)],
        extra_config: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("policies")).expect("policies dir");
        for (name, text) in policies {
            fs::write(dir.path().join("policies").join(name), text).expect("write policy");
        }
        let bpffs = BpffsDir::new();
        let mut cfg = String::from("policies: [policies]\n");
        cfg.push_str(if workloads.is_empty() {
            "workloads: []\n"
        } else {
            "workloads:\n"
        });
        for (cg, tags, extra) in workloads {
            cfg.push_str(&format!("  - cgroup: {}\n    tags: {{", cg.display()));
            let t: Vec<String> = tags
                .iter()
                .map(|(k, v)| format!("\"{k}\": \"{v}\""))
                .collect();
            cfg.push_str(&t.join(", "));
            cfg.push_str("}\n");
            for line in extra.lines() {
                cfg.push_str(&format!("    {}\n", line.trim()));
            }
        }
        cfg.push_str(&format!(
            "admin: {{listen: \"{ADMIN}\"}}\nbpffs: {}\n{extra_config}",
            bpffs.path().display()
        ));
        let config = dir.path().join("agent.yaml");
        fs::write(&config, &cfg).expect("write config");
        let parsed = passthrough::config::AgentConfig::parse(&config).expect("config");
        Self {
            dir,
            config,
            client_netns: topo.client_netns_path(),
            bpffs,
            mesh_cidrs: parsed.mesh_cidrs,
            agent_cgroup: agent_cgroup.map(|c| c.path().to_path_buf()),
            child: None,
        }
    }

    pub fn bpffs(&self) -> &Path {
        self.bpffs.path()
    }

    pub fn policies_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Starts the agent process, in the client network namespace only.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let netns = fs::File::open(&self.client_netns).expect("open netns");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log");
        let fd = netns.as_raw_fd();
        let mut cmd = Command::new(agent_bin());
        cmd.args(["run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log);
        let procs = self.agent_cgroup.as_ref().map(|c| {
            std::ffi::CString::new(c.join("cgroup.procs").as_os_str().as_encoded_bytes())
                .expect("path without NUL")
        });
        // SAFETY: open, write, close and setns are async-signal-safe; the fd and the path
        // stay alive until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                // Into the cgroup first, then into the network namespace.
                if let Some(procs) = &procs {
                    let f = libc::open(procs.as_ptr(), libc::O_WRONLY);
                    if f < 0 || libc::write(f, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(f);
                }
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawn agent"));
    }

    fn admin(&self, path: &'static str) -> Option<(u16, String)> {
        let addr = sa(ADMIN);
        run_in_netns(&self.client_netns, move || admin_get(addr, path).ok())
    }

    pub fn is_ready(&self) -> bool {
        self.admin("/ready").is_some_and(|(code, _)| code == 200)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn wait_ready(&mut self) {
        let patience = Duration::from_secs(READY_PATIENCE_SECS.load(Ordering::Relaxed));
        let deadline = Instant::now() + patience;
        while !self.is_ready() {
            assert!(self.is_running(), "agent exited:\n{}", self.log());
            assert!(
                Instant::now() < deadline,
                "agent not ready in {patience:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `/status`, or `None` while the admin endpoint is not up.
    pub fn try_status(&self) -> Option<serde_json::Value> {
        let (code, body) = self.admin("/status")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// Kernel memory of the agent's maps: the pinned ones (fdinfo `memlock`) and the
    /// installed policies' inner maps (which the agent reports in `/status`).
    pub fn kernel_maps_bytes(&self) -> u64 {
        let mut total = 0;
        for e in fs::read_dir(loader::maps_dir(self.bpffs()))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(md) = aya::maps::MapData::from_pin(e.path()) else {
                continue;
            };
            total += passthrough::agent::maps::memlock(&md);
        }
        total + self.status()["policyMemoryBytes"].as_u64().unwrap_or(0)
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.admin("/status").expect("admin answers");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status json")
    }

    pub fn metrics(&self) -> String {
        self.admin("/metrics").expect("admin answers").1
    }

    /// The agent's recent events (`GET /events`).
    pub fn events(&self) -> Vec<serde_json::Value> {
        let (code, body) = self.admin("/events").expect("admin answers");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("events json")
    }

    /// The agent's flow record (`/flows`). Asked again if an answer takes longer than the
    /// client's 10 s (once seen with 100 000 evictions and another test on 2 CPUs).
    pub fn flows(&self) -> serde_json::Value {
        let (code, body) = (0..3)
            .find_map(|_| self.admin("/flows"))
            .expect("admin answers");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("flows json")
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// Replaces a policy file atomically, as a config management tool would.
    pub fn write_policy(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        let mut f = fs::File::create(&tmp).expect("tmp");
        f.write_all(text.as_bytes()).expect("write");
        f.sync_all().expect("sync");
        fs::rename(&tmp, self.policies_dir().join(name)).expect("rename");
    }

    pub fn remove_policy(&self, name: &str) {
        fs::remove_file(self.policies_dir().join(name)).expect("remove policy");
    }

    /// Polls `cond` until it holds; returns how long that took.
    pub fn wait_until(&self, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < timeout,
                "condition not met in {timeout:?}; agent log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        start.elapsed()
    }

    /// Appends top-level keys to the config file (for a SIGHUP reload).
    pub fn append_config(&self, text: &str) {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&self.config)
            .expect("config");
        f.write_all(text.as_bytes()).expect("append");
    }

    /// Sends a signal to the running agent.
    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("agent running").id();
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid as i32, sig) };
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: the agent stops and leaves its pins.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let status = c.wait().expect("wait");
            assert!(status.success(), "agent exit {status}:\n{}", self.log());
        }
    }

    /// Runs the `passthrough` CLI in the client namespace, where the admin endpoint is.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let args: Vec<String> = args.iter().map(ToString::to_string).collect();
        run_in_netns(&self.client_netns, move || {
            Command::new(agent_bin())
                .args(&args)
                .output()
                .expect("running the passthrough CLI")
        })
    }

    pub fn uninstall(&self) {
        let out = Command::new(agent_bin())
            .args(["uninstall", "--config"])
            .arg(&self.config)
            .output()
            .expect("uninstall");
        assert!(
            out.status.success(),
            "uninstall: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The oracle: the policy engine's verdict for a workload with `tags` (no peek proxy),
    /// and the appendMatch entry that decided it.
    pub fn oracle(
        &self,
        tags: &[(&str, &str)],
        dest: SocketAddr,
    ) -> (Verdict, Option<MergedEntry>) {
        let (v, c) = self.judge(tags, dest, None);
        let v = v.without_proxy();
        (v, rule_of(&c, &v))
    }

    /// The oracle with the peek proxy: the verdict for a connection whose client sent
    /// `peeked` (the kernel's hand-off, then the proxy's decision).
    pub fn oracle_peeked(
        &self,
        tags: &[(&str, &str)],
        dest: SocketAddr,
        peeked: &Peeked,
    ) -> (Verdict, Option<MergedEntry>) {
        let (v, c) = self.judge(tags, dest, Some(peeked));
        (v, rule_of(&c, &v))
    }

    fn judge(
        &self,
        tags: &[(&str, &str)],
        dest: SocketAddr,
        peeked: Option<&Peeked>,
    ) -> (Verdict, CompiledPolicy) {
        let set = PolicySet::load(&[self.policies_dir()], &SelectOptions::default());
        assert!(!set.has_errors(), "test policies must be valid");
        let w = Workload {
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Workload::default()
        };
        let merged = merged_for(&set.policies, &w, &SelectOptions::default()).expect("merge");
        let compiled = compile(&merged).expect("compile");
        let ex = Exemptions {
            mesh_cidrs: self.mesh_cidrs.clone(),
        };
        (decide(&compiled, &ex, dest, peeked), compiled)
    }

    /// What the oracle says the kernel must do.
    pub fn expect(&self, tags: &[(&str, &str)], dest: SocketAddr) -> Expect {
        match self.oracle(tags, dest).0.action {
            Action::Allow => Expect::Allow,
            Action::Deny => Expect::Deny,
            Action::Proxy => unreachable!("without_proxy never hands off"),
        }
    }
}

fn rule_of(c: &CompiledPolicy, v: &Verdict) -> Option<MergedEntry> {
    v.rule.and_then(|r| c.rules.get(r as usize))
}

impl Drop for AgentRun {
    fn drop(&mut self) {
        self.kill();
        // Detach from the test cgroups before they are removed.
        let _ = loader::uninstall(self.bpffs.path());
        if std::thread::panicking() {
            eprintln!("agent log:\n{}", self.log());
        }
    }
}
