//! The harness itself: namespaces, test hosts, cgroups, the probe, and that the guards leave
//! nothing behind. Needs root, like the kernel tests that build on it.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::Command,
    time::Duration,
};

use passthrough_tests::{
    BpffsDir, HOST_V4_A, ProbeOptions, ProbeResult, TEST_HOSTS, TestCgroup, Topology, cgroup2_root,
    probe_bin, run_in_netns,
};

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cgroup v2 path of `pid`, as /proc shows it (relative to the cgroup2 root).
fn cgroup_of(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .expect("read /proc/pid/cgroup")
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .expect("a cgroup v2 line")
}

fn relative(cg: &TestCgroup) -> String {
    format!(
        "/{}",
        cg.path()
            .strip_prefix(cgroup2_root())
            .expect("under the root")
            .display()
    )
}

#[test]
fn the_lib_finds_the_probe_cargo_built() {
    let ours = fs::canonicalize(env!("CARGO_BIN_EXE_probe")).expect("probe exists");
    assert_eq!(fs::canonicalize(probe_bin()).expect("found"), ours);
}

#[test]
fn probe_reaches_test_host_v4_and_v6_from_a_test_cgroup() {
    let topo = Topology::new();
    let _servers = topo.serve(&[sa("198.51.100.10:80"), sa("[2001:db8:1::10]:80")]);
    let cg = TestCgroup::new();
    let opts = ProbeOptions::default();

    let got = topo.connect(Some(&cg), sa("198.51.100.10:80"), &opts);
    assert!(
        got.received().starts_with("hello from 198.51.100.10:80"),
        "{got:?}"
    );
    assert_eq!(got.peer(), Some("198.51.100.10:80"));

    let got = topo.connect(Some(&cg), sa("[2001:db8:1::10]:80"), &opts);
    assert!(
        got.received().starts_with("hello from [2001:db8:1::10]:80"),
        "{got:?}"
    );

    // An AF_INET6 socket reaching the IPv4 host through its mapped address.
    let mapped = ProbeOptions {
        v4mapped: true,
        ..ProbeOptions::default()
    };
    let got = topo.connect(Some(&cg), sa("198.51.100.10:80"), &mapped);
    assert!(
        got.received().starts_with("hello from 198.51.100.10:80"),
        "{got:?}"
    );
    assert_eq!(got.peer(), Some("[::ffff:198.51.100.10]:80"));

    let echo = ProbeOptions {
        send: Some("ping".into()),
        ..ProbeOptions::default()
    };
    let got = topo.connect(None, sa("198.51.100.10:80"), &echo);
    assert_eq!(got.received(), "hello from 198.51.100.10:80\nping\n");

    // Nothing listens there: a refusal by the peer, which must not look like a policy denial.
    let got = topo.connect(Some(&cg), sa("198.51.100.10:81"), &opts);
    assert_eq!(
        got,
        ProbeResult::Refused {
            errno: libc::ECONNREFUSED,
            stage: "connect".into()
        }
    );
    assert!(!got.is_eperm());
}

#[test]
fn every_test_host_answers() {
    let topo = Topology::new();
    let addrs: Vec<SocketAddr> = TEST_HOSTS
        .iter()
        .map(|ip| SocketAddr::new(*ip, 8080))
        .collect();
    let _servers = topo.serve(&addrs);
    for addr in addrs {
        let got = topo.connect(None, addr, &ProbeOptions::default());
        assert_eq!(got.received(), format!("hello from {addr}\n"), "{got:?}");
    }
}

#[test]
fn udp_connect_succeeds() {
    let topo = Topology::new();
    let cg = TestCgroup::new();
    let udp = ProbeOptions {
        udp: true,
        ..ProbeOptions::default()
    };
    for dest in [sa("198.51.100.10:53"), sa("[2001:db8:1::10]:53")] {
        let got = topo.connect(Some(&cg), dest, &udp);
        assert_eq!(
            got,
            ProbeResult::Connected {
                received: String::new(),
                raw: Vec::new(),
                peer: dest.to_string()
            }
        );
    }
}

#[test]
fn run_in_netns_runs_inside_the_client_namespace() {
    let topo = Topology::new();
    let _servers = topo.serve(&[SocketAddr::new(IpAddr::V4(HOST_V4_A), 80)]);
    // The test hosts exist only behind the client namespace's veth.
    let greeting = run_in_netns(topo.client_netns_path(), || {
        let mut s = TcpStream::connect_timeout(&sa("198.51.100.10:80"), Duration::from_secs(3))
            .expect("connect from the client namespace");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read");
        text
    });
    assert_eq!(greeting, "hello from 198.51.100.10:80\n");
    // The calling thread stayed where it was.
    let here = fs::metadata("/proc/thread-self/ns/net").expect("own netns");
    let client = fs::metadata(topo.client_netns_path()).expect("client netns");
    assert_ne!(here.ino(), client.ino());
    // And a panic inside comes out here.
    let r = std::panic::catch_unwind(|| run_in_netns(topo.client_netns_path(), || panic!("boom")));
    assert!(r.is_err());
}

#[test]
fn nested_cgroup_has_distinct_id_and_is_removed_on_drop() {
    let parent = TestCgroup::new();
    let child = parent.child("container");
    assert_eq!(child.path(), parent.path().join("container"));
    assert_ne!(parent.id(), child.id());
    assert_ne!(parent.id(), 0);

    let in_parent = parent.spawn_sleeper();
    let in_child = child.spawn_sleeper();
    assert_eq!(cgroup_of(in_parent.pid()), relative(&parent));
    assert_eq!(cgroup_of(in_child.pid()), relative(&child));
    assert_eq!(child.procs(), vec![in_child.pid()]);

    // The parent goes first, with a process still in its child: both are killed, both
    // directories removed, and the child's own drop afterwards finds nothing to do.
    let (parent_path, child_path) = (parent.path().to_path_buf(), child.path().to_path_buf());
    let pids = [in_parent.pid(), in_child.pid()];
    drop(parent);
    assert!(!parent_path.exists() && !child_path.exists());
    for pid in pids {
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Killed: gone, or a zombie until its Sleeper guard reaps it.
        assert!(
            state.is_empty() || state.contains(") Z "),
            "{pid} still runs: {state}"
        );
    }
    drop(child);
    drop((in_parent, in_child));
}

#[test]
fn guards_remove_netns_and_cgroups_after_a_panic() {
    let mut names = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let topo = Topology::new();
        let _servers = topo.serve(&[sa("198.51.100.10:80")]);
        let cg = TestCgroup::new();
        let nested = cg.child("c");
        let _sleeper = nested.spawn_sleeper();
        let bpffs = BpffsDir::new();
        fs::create_dir(bpffs.path().join("sub")).expect("mkdir in bpffs");
        names = Some((
            topo.client_netns().to_string(),
            topo.internet_netns().to_string(),
            cg.path().to_path_buf(),
            bpffs.path().to_path_buf(),
        ));
        assert!(netns_list().contains(topo.client_netns()));
        panic!("the test fails half way");
    }));
    assert!(r.is_err());
    let (client, internet, cgroup, bpffs) = names.expect("the closure ran");
    let list = netns_list();
    assert!(
        !list.contains(&client) && !list.contains(&internet),
        "{list}"
    );
    assert!(!Path::new("/run/netns").join(&client).exists());
    assert!(!cgroup.exists(), "{} remains", cgroup.display());
    assert!(!bpffs.exists(), "{} remains", bpffs.display());
}

#[test]
fn probe_refuses_to_join_a_cgroup_the_harness_did_not_create() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::File::create(dir.path().join("cgroup.procs"))
        .and_then(|mut f| f.write_all(b""))
        .expect("fake cgroup.procs");
    let out = Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(["connect", "--cgroup"])
        .arg(dir.path())
        .arg("198.51.100.10:80")
        .output()
        .expect("run probe");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a test cgroup"));
    assert_eq!(
        fs::read_to_string(dir.path().join("cgroup.procs")).expect("read"),
        ""
    );
}
