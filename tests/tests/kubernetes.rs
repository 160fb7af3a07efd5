//! Kubernetes (issue 6): the API server stand-in, driven by the real kube-rs client.

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    runtime::{WatchStreamExt as _, watcher},
};
use passthrough_tests::{
    Topology,
    apiserver::{ApiServer, Resource},
    run_in_netns,
};

fn namespace(name: &str) -> Namespace {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kuma.io/sidecar-injection": "enabled"}},
    }))
    .expect("namespace")
}

/// Names in the watcher's view after each event, until `until` holds or time runs out.
#[test]
fn the_stand_in_serves_kube_rs_lists_watches_relists_and_deletions() {
    let topo = Topology::new();
    let api = ApiServer::start(&topo.client_netns_path());
    api.apply(Resource::Namespaces, namespace("a"));
    let url = api.url();
    run_in_netns(topo.client_netns_path(), || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let config = Config::new(url.parse().expect("url"));
            let client = Client::try_from(config).expect("client");
            let nss: Api<Namespace> = Api::all(client);
            let (reader, writer) = kube::runtime::reflector::store();
            let stream = kube::runtime::reflector(
                writer,
                watcher(nss, watcher::Config::default()).default_backoff(),
            )
            .applied_objects();
            let mut stream = Box::pin(stream);
            let names = |r: &kube::runtime::reflector::Store<Namespace>| {
                let mut n: Vec<String> = r
                    .state()
                    .iter()
                    .filter_map(|o| o.metadata.name.clone())
                    .collect();
                n.sort();
                n
            };
            let step = |want: Vec<&'static str>| {
                let reader = reader.clone();
                let names = &names;
                async move {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                    loop {
                        if names(&reader) == want {
                            return;
                        }
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "store {:?}, expected {want:?}",
                            names(&reader)
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            let driver = tokio::spawn(async move { while stream.next().await.is_some() {} });
            // The initial list.
            step(vec!["a"]).await;
            // A watch event.
            api.apply(Resource::Namespaces, namespace("b"));
            step(vec!["a", "b"]).await;
            // 410 Gone: the watcher relists and sees what changed meanwhile.
            api.expire_watches();
            api.apply(Resource::Namespaces, namespace("c"));
            step(vec!["a", "b", "c"]).await;
            // A dropped watch, then a deletion.
            api.drop_watches();
            api.delete(Resource::Namespaces, "", "b");
            step(vec!["a", "c"]).await;
            driver.abort();
        });
    });
    let n = api.requests();
    assert!(n >= 3, "lists and watches were made: {n} requests");
}

const NODE: &str = "node-a";

fn pod(name: &str, uid: &str, labels: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "labels": labels},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running"},
    })
}

fn policy(name: &str, namespace: &str, spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kuma.io/v1alpha1",
        "kind": "MeshPassthrough",
        "metadata": {"name": name, "namespace": namespace, "labels": {"kuma.io/mesh": "default"}},
        "spec": spec,
    })
}

/// A namespace whose pods Kuma injects.
fn injected_namespace(api: &ApiServer, name: &str) {
    api.apply(
        Resource::Namespaces,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kuma.io/sidecar-injection": "enabled"}},
        }),
    );
}

/// The agent config for this node: pods under `root`, the stand-in as API server, and
/// `k8s_extra` (more `kubernetes` keys, each with a leading `, `) and `extra` (more
/// top-level keys).
fn agent_config(
    api: &ApiServer,
    root: &passthrough_tests::TestCgroup,
    dir: &std::path::Path,
    k8s_extra: &str,
    extra: &str,
) -> String {
    let kubeconfig = api.kubeconfig(dir);
    format!(
        "kubernetes: {{nodeName: {NODE}, cgroupRoot: \"{}\", kubeconfig: \"{}\"{k8s_extra}}}\n{extra}",
        root.path().display(),
        kubeconfig.display()
    )
}

/// The directory the systemd cgroup driver gives a Burstable pod, below `root`.
fn systemd_pod_cgroup(
    root: &passthrough_tests::TestCgroup,
    uid: &str,
) -> passthrough_tests::TestCgroup {
    root.nested(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        uid.replace('-', "_")
    ))
}

#[test]
fn meshpassthrough_objects_and_pods_from_the_api_server_are_enforced() {
    use passthrough_tests::{
        ProbeOptions, TestCgroup,
        agent::{AgentRun, sa},
    };
    let topo = Topology::new();
    let allowed = sa("203.0.113.10:80");
    let other = sa("203.0.113.20:80");
    let _servers = topo.serve(&[allowed, other]);
    let api = ApiServer::start(&topo.client_netns_path());
    // No Kuma in this cluster: the Dataplane API answers 404, membership comes from the
    // injection labels, and the agent is ready all the same.
    api.without(Resource::Dataplanes);
    injected_namespace(&api, "shop");
    api.apply(
        Resource::Services,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        }),
    );
    let root = TestCgroup::new();
    let uid = "0b7d2c1e-1111-4a2b-9c3d-000000000001";
    let web = systemd_pod_cgroup(&root, uid);
    api.apply(
        Resource::Pods,
        pod("web-1", uid, serde_json::json!({"app": "web"})),
    );
    let dir = tempfile::tempdir().expect("tmp");
    let agent = AgentRun::start(
        &topo,
        &[],
        &[],
        &agent_config(&api, &root, dir.path(), "", ""),
    );
    let connect = |cg: &TestCgroup, dest| topo.connect(Some(cg), dest, &ProbeOptions::default());
    assert!(
        connect(&web, allowed).is_connected(),
        "no policy: unfiltered"
    );
    // A policy created: enforced within a second.
    api.apply(
        Resource::MeshPassthroughs,
        policy(
            "only-one",
            "kuma-system",
            serde_json::json!({
                "targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/service": "web_shop_svc_80"}},
                "default": {"passthroughMode": "Matched", "appendMatch": [
                    {"type": "IP", "value": "203.0.113.10", "port": 80, "protocol": "tcp"}]},
            }),
        ),
    );
    let took = agent.wait_until(Duration::from_secs(3), || connect(&web, other).is_eperm());
    eprintln!("policy created -> enforced in {took:?}");
    assert!(connect(&web, allowed).is_connected());
    // Changed.
    api.apply(
        Resource::MeshPassthroughs,
        policy(
            "only-one",
            "kuma-system",
            serde_json::json!({
                "targetRef": {"kind": "Mesh"},
                "default": {"passthroughMode": "None"},
            }),
        ),
    );
    agent.wait_until(Duration::from_secs(3), || connect(&web, allowed).is_eperm());
    // A workload-owner policy in another namespace does not touch this pod.
    api.apply(
        Resource::MeshPassthroughs,
        policy(
            "elsewhere",
            "other",
            serde_json::json!({
                "targetRef": {"kind": "Mesh"},
                "default": {"passthroughMode": "All"},
            }),
        ),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        connect(&web, allowed).is_eperm(),
        "a policy of namespace other applies only there"
    );
    // An invalid object never reaches the kernel: the last good state stays, and an Event
    // on the object says why.
    api.apply(
        Resource::MeshPassthroughs,
        policy(
            "broken",
            "kuma-system",
            serde_json::json!({
                "targetRef": {"kind": "Mesh"},
                "default": {"passthroughMode": "Matched", "appendMatch": [
                    {"type": "IP", "value": "not-an-ip", "port": 80, "protocol": "tcp"}]},
            }),
        ),
    );
    let mut events = Vec::new();
    agent.wait_until(Duration::from_secs(3), || {
        events = api.posted_events();
        !events.is_empty()
    });
    let e = &events[0];
    assert_eq!(e["involvedObject"]["kind"], "MeshPassthrough");
    assert_eq!(e["involvedObject"]["name"], "broken");
    assert_eq!(e["type"], "Warning");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("appendMatch[0].value")),
        "{e}"
    );
    assert!(
        connect(&web, allowed).is_eperm(),
        "the last good state stays"
    );
    api.delete(Resource::MeshPassthroughs, "kuma-system", "broken");
    // A pod created later, its cgroup appearing after it was reported: enforced from its
    // first connect.
    let uid2 = "0b7d2c1e-2222-4a2b-9c3d-000000000002";
    api.apply(
        Resource::Pods,
        pod("web-2", uid2, serde_json::json!({"app": "web"})),
    );
    std::thread::sleep(Duration::from_millis(300));
    let web2 = systemd_pod_cgroup(&root, uid2);
    agent.wait_until(Duration::from_secs(3), || {
        agent.status()["kubernetes"]["pods"] == 2 && agent.is_ready()
    });
    assert!(
        connect(&web2, allowed).is_eperm(),
        "the new pod is enforced"
    );
    // Deleted: the pod is unfiltered again.
    api.delete(Resource::MeshPassthroughs, "kuma-system", "only-one");
    agent.wait_until(Duration::from_secs(3), || {
        connect(&web, allowed).is_connected()
    });
    // The API server going away changes no verdict.
    api.apply(
        Resource::MeshPassthroughs,
        policy(
            "none",
            "kuma-system",
            serde_json::json!({
                "targetRef": {"kind": "Mesh"},
                "default": {"passthroughMode": "None"},
            }),
        ),
    );
    agent.wait_until(Duration::from_secs(3), || connect(&web, allowed).is_eperm());
    drop(api);
    agent.wait_until(Duration::from_secs(10), || !agent.is_ready());
    let status = agent.status();
    assert_eq!(status["kubernetes"]["connected"], false, "{status}");
    assert!(
        connect(&web, allowed).is_eperm(),
        "enforcement stays while the API server is gone"
    );
    assert!(connect(&web2, allowed).is_eperm());
    drop(web2);
    drop(web);
}

#[test]
fn a_domain_entry_works_through_the_proxy_listener_in_the_pods_namespace() {
    use passthrough_tests::{
        NodeNetns, ProbeOptions, TestCgroup,
        agent::{AgentRun, sa},
    };
    // The agent runs in the node's namespace, which has no route anywhere; the pod's
    // namespace is the client one. A Domain entry can only work if the proxy listens in the
    // pod's namespace and connects upstream from there.
    let topo = Topology::new();
    let node = NodeNetns::new();
    let dest = sa("203.0.113.10:80");
    let _servers = topo.serve(&[dest]);
    let api = ApiServer::start(&node.path());
    injected_namespace(&api, "shop");
    let root = TestCgroup::new();
    let uid = "0b7d2c1e-3333-4a2b-9c3d-000000000003";
    let web = systemd_pod_cgroup(&root, uid);
    let _pause = web.spawn_sleeper_in(&topo.client_netns_path());
    api.apply(
        Resource::Pods,
        pod("web-1", uid, serde_json::json!({"app": "web"})),
    );
    api.apply(Resource::MeshPassthroughs, policy("named", "kuma-system", serde_json::json!({
        "targetRef": {"kind": "Mesh"},
        "default": {"passthroughMode": "Matched", "appendMatch": [
            {"type": "Domain", "value": "allowed.example", "port": 80, "protocol": "http"}]},
    })));
    let dir = tempfile::tempdir().expect("tmp");
    // The agent resolves allowed names from the node's namespace (domainCheck: Pin), which
    // has only its loopback: its resolver is there too.
    let dns = node.dns(&passthrough_tests::DnsRecords::example_hosts());
    let agent = AgentRun::start_in_netns(
        &node.path(),
        &topo,
        &[],
        &agent_config(
            &api,
            &root,
            dir.path(),
            "",
            &format!(
                "proxy: {{listen: [127.0.0.1:15001, \"[::1]:15001\"]}}\n{}",
                dns.config()
            ),
        ),
    );
    let get = ProbeOptions::http_get;
    let mut r = topo.connect(Some(&web), dest, &get("allowed.example"));
    agent.wait_until(Duration::from_secs(3), || {
        r = topo.connect(Some(&web), dest, &get("allowed.example"));
        r.received().starts_with("hello from")
    });
    assert!(
        r.received().starts_with("hello from 203.0.113.10:80"),
        "{r:?}"
    );
    assert_eq!(
        r.peer(),
        Some("203.0.113.10:80"),
        "getpeername shows the original"
    );
    let r = topo.connect(Some(&web), dest, &get("evil.example"));
    assert!(r.received().starts_with("HTTP/1.1 403"), "{r:?}");
    // The pod goes away: its listener closes with it.
    api.delete(Resource::Pods, "shop", "web-1");
    agent.wait_until(Duration::from_secs(3), || {
        agent.status()["kubernetes"]["pods"] == 0
    });
}

#[test]
fn a_thousand_pods_created_and_deleted_leave_nothing_behind() {
    use passthrough_tests::{TestCgroup, agent::AgentRun};
    const ROUNDS: usize = 20;
    const PODS: usize = 50;
    let topo = Topology::new();
    let api = ApiServer::start(&topo.client_netns_path());
    injected_namespace(&api, "shop");
    api.apply(
        Resource::MeshPassthroughs,
        policy(
            "one",
            "kuma-system",
            serde_json::json!({
                "targetRef": {"kind": "Mesh"},
                "default": {"passthroughMode": "Matched", "appendMatch": [
                    {"type": "IP", "value": "203.0.113.10", "port": 80, "protocol": "tcp"}]},
            }),
        ),
    );
    let root = TestCgroup::new();
    let dir = tempfile::tempdir().expect("tmp");
    let agent = AgentRun::start(
        &topo,
        &[],
        &[],
        &agent_config(&api, &root, dir.path(), "", ""),
    );
    let links = agent.bpffs().join("links");
    let count = |p: &std::path::Path| std::fs::read_dir(p).map_or(0, Iterator::count);
    let fds = |pid: u32| count(std::path::Path::new(&format!("/proc/{pid}/fd")));
    let mut fds_after_first = 0;
    let started = std::time::Instant::now();
    for round in 0..ROUNDS {
        let uids: Vec<String> = (0..PODS)
            .map(|i| format!("0b7d2c1e-{round:04x}-4a2b-9c3d-{i:012x}"))
            .collect();
        let cgroups: Vec<TestCgroup> = uids.iter().map(|u| systemd_pod_cgroup(&root, u)).collect();
        for (i, uid) in uids.iter().enumerate() {
            api.apply(
                Resource::Pods,
                pod(
                    &format!("p-{round}-{i}"),
                    uid,
                    serde_json::json!({"app": "web"}),
                ),
            );
        }
        agent.wait_until(Duration::from_secs(20), || {
            let s = agent.status();
            s["kubernetes"]["pods"] == PODS && s["ready"] == true
        });
        // One attachment, at the kubepods cgroup, covers every pod.
        assert_eq!(count(&links), 1, "programs attached once, at kubepods");
        for i in 0..PODS {
            api.delete(Resource::Pods, "shop", &format!("p-{round}-{i}"));
        }
        agent.wait_until(Duration::from_secs(20), || {
            agent.status()["kubernetes"]["pods"] == 0
        });
        drop(cgroups);
        if round == 0 {
            fds_after_first = fds(agent.pid());
        }
    }
    eprintln!(
        "{} pods created and deleted in {:?}",
        ROUNDS * PODS,
        started.elapsed()
    );
    let status = agent.status();
    assert_eq!(count(&links), 1, "only the kubepods attachment is left");
    assert_eq!(status["slots"], 0, "no policy slot left: {status}");
    let workloads = status["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["map"] == "WORKLOADS"))
        .map(|m| m["entries"].clone());
    assert_eq!(workloads, Some(serde_json::json!(0)), "{status}");
    // The kernel's own table: no workload entry left.
    let map = aya::maps::MapData::from_pin(
        passthrough::agent::loader::maps_dir(agent.bpffs()).join("WORKLOADS"),
    )
    .expect("pinned WORKLOADS");
    let map: aya::maps::HashMap<_, u64, passthrough_common::Workload> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(map)).expect("hash map");
    assert_eq!(
        map.keys().count(),
        0,
        "WORKLOADS entries left in the kernel"
    );
    let fds_now = fds(agent.pid());
    assert!(
        fds_now <= fds_after_first + 5,
        "file descriptors grew from {fds_after_first} to {fds_now}"
    );
}

#[test]
fn where_kuma_writes_dataplanes_they_decide_membership_and_tags() {
    use passthrough_tests::{
        ProbeOptions, TestCgroup,
        agent::{AgentRun, sa},
    };
    let topo = Topology::new();
    let dest = sa("203.0.113.10:80");
    let _servers = topo.serve(&[dest]);
    let api = ApiServer::start(&topo.client_netns_path());
    injected_namespace(&api, "shop");
    let root = TestCgroup::new();
    let (uid1, uid2) = (
        "0b7d2c1e-4444-4a2b-9c3d-000000000001",
        "0b7d2c1e-4444-4a2b-9c3d-000000000002",
    );
    let with_dp = systemd_pod_cgroup(&root, uid1);
    let without_dp = systemd_pod_cgroup(&root, uid2);
    api.apply(
        Resource::Pods,
        pod("web-1", uid1, serde_json::json!({"app": "web"})),
    );
    api.apply(
        Resource::Pods,
        pod("web-2", uid2, serde_json::json!({"app": "web"})),
    );
    // Kuma's control plane wrote a Dataplane for web-1 only, with its own inbound tags.
    api.apply(
        Resource::Dataplanes,
        serde_json::json!({
            "apiVersion": "kuma.io/v1alpha1", "kind": "Dataplane",
            "metadata": {"name": "web-1", "namespace": "shop"},
            "mesh": "default",
            "spec": {"networking": {"address": "10.0.0.1", "inbound": [
                {"port": 8080, "tags": {"kuma.io/service": "from-dataplane", "team": "a"}}]}},
        }),
    );
    api.apply(
        Resource::MeshPassthroughs,
        policy(
            "subset",
            "kuma-system",
            serde_json::json!({
                "targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/service": "from-dataplane"}},
                "default": {"passthroughMode": "None"},
            }),
        ),
    );
    let dir = tempfile::tempdir().expect("tmp");
    let agent = AgentRun::start(
        &topo,
        &[],
        &[],
        &agent_config(&api, &root, dir.path(), "", ""),
    );
    agent.wait_until(Duration::from_secs(3), || {
        agent.status()["kubernetes"]["pods"] == 1
    });
    let r = topo.connect(Some(&with_dp), dest, &ProbeOptions::default());
    assert!(r.is_eperm(), "selected by the Dataplane's tags: {r:?}");
    let r = topo.connect(Some(&without_dp), dest, &ProbeOptions::default());
    assert!(r.is_connected(), "no Dataplane, not in the mesh: {r:?}");
}

#[test]
fn unknown_pods_deny_holds_back_only_pods_the_agent_has_not_been_told_about() {
    use passthrough_tests::{
        ProbeOptions, TestCgroup,
        agent::{AgentRun, sa},
    };
    let topo = Topology::new();
    let dest = sa("203.0.113.10:80");
    let _servers = topo.serve(&[dest]);
    let api = ApiServer::start(&topo.client_netns_path());
    api.without(Resource::Dataplanes);
    injected_namespace(&api, "shop");
    api.apply(
        Resource::Namespaces,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"},
        }),
    );
    let root = TestCgroup::new();
    let uid = |n: u32| format!("0b7d2c1e-5555-4a2b-9c3d-{n:012x}");
    let meshed = systemd_pod_cgroup(&root, &uid(1));
    let plain = systemd_pod_cgroup(&root, &uid(2));
    let unknown = systemd_pod_cgroup(&root, &uid(3));
    api.apply(
        Resource::Pods,
        pod("web-1", &uid(1), serde_json::json!({"app": "web"})),
    );
    let mut outside = pod("plain-1", &uid(2), serde_json::json!({"app": "plain"}));
    outside["metadata"]["namespace"] = serde_json::json!("plain");
    api.apply(Resource::Pods, outside);
    let dir = tempfile::tempdir().expect("tmp");
    let agent = AgentRun::start(
        &topo,
        &[],
        &[],
        &agent_config(&api, &root, dir.path(), ", unknownPods: Deny", ""),
    );
    let connect = |cg: &TestCgroup| topo.connect(Some(cg), dest, &ProbeOptions::default());
    assert!(
        connect(&meshed).is_connected(),
        "a mesh pod no policy selects is unfiltered"
    );
    assert!(
        connect(&plain).is_connected(),
        "a known pod outside the mesh is left alone"
    );
    assert!(
        connect(&unknown).is_eperm(),
        "a pod nobody reported is denied"
    );
    // Once reported (outside the mesh), it is left alone too.
    let mut late = pod("late-1", &uid(3), serde_json::json!({"app": "late"}));
    late["metadata"]["namespace"] = serde_json::json!("plain");
    api.apply(Resource::Pods, late);
    agent.wait_until(Duration::from_secs(3), || connect(&unknown).is_connected());
}

/// A kubelet cgroup driver, and where it puts a pod of each layout below the test's root.
#[derive(Clone, Copy, Debug)]
enum Driver {
    Systemd,
    Cgroupfs,
}

/// The layouts a pod's cgroup can have.
#[derive(Clone, Copy, Debug)]
enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Driver {
    /// The kubepods cgroup and its QoS children, as the kubelet creates them at its start.
    fn prepare(self, root: &passthrough_tests::TestCgroup) -> Vec<passthrough_tests::TestCgroup> {
        let dirs: &[&str] = match self {
            Driver::Systemd => &[
                "kubepods.slice/kubepods-burstable.slice",
                "kubepods.slice/kubepods-besteffort.slice",
            ],
            Driver::Cgroupfs => &["kubepods/burstable", "kubepods/besteffort"],
        };
        dirs.iter().map(|d| root.nested(d)).collect()
    }

    /// The pod's cgroup path relative to the root (not created).
    fn pod_dir(self, qos: Qos, uid: &str) -> String {
        let u = uid.replace('-', "_");
        match (self, qos) {
            (Driver::Systemd, Qos::Guaranteed) => format!("kubepods.slice/kubepods-pod{u}.slice"),
            (Driver::Systemd, Qos::Burstable) => {
                format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice")
            }
            (Driver::Systemd, Qos::BestEffort) => {
                format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice")
            }
            (Driver::Cgroupfs, Qos::Guaranteed) => format!("kubepods/pod{uid}"),
            (Driver::Cgroupfs, Qos::Burstable) => format!("kubepods/burstable/pod{uid}"),
            (Driver::Cgroupfs, Qos::BestEffort) => format!("kubepods/besteffort/pod{uid}"),
        }
    }
}

fn mesh_wide_none(api: &ApiServer) {
    api.apply(
        Resource::MeshPassthroughs,
        policy(
            "none",
            "kuma-system",
            serde_json::json!({"targetRef": {"kind": "Mesh"}, "default": {"passthroughMode": "None"}}),
        ),
    );
}

/// The `/status` entry of the workload at `cgroup`.
fn workload_status(status: &serde_json::Value, cgroup: &std::path::Path) -> serde_json::Value {
    status["workloads"]
        .as_array()
        .and_then(|ws| {
            ws.iter()
                .find(|w| w["cgroup"].as_str() == cgroup.to_str())
                .cloned()
        })
        .unwrap_or(serde_json::Value::Null)
}

/// Pods reported before their cgroup exists, whose cgroup and first process then appear
/// together and connect at once: the kernel gave the cgroup its entry in `mkdir`, so the
/// very first connect is judged by the Mesh-wide `None` and refused, and nothing arrives on
/// the far side. A pod nobody reported is left to `unknownPods` (unfiltered here).
fn reported_pods_are_denied_on_their_very_first_connect(driver: Driver) {
    use passthrough_tests::{
        ProbeOptions, TestCgroup,
        agent::{AgentRun, sa},
    };
    let topo = Topology::new();
    let dest = sa("203.0.113.10:80");
    let servers = topo.serve(&[dest]);
    let api = ApiServer::start(&topo.client_netns_path());
    api.without(Resource::Dataplanes);
    injected_namespace(&api, "shop");
    mesh_wide_none(&api);
    let root = TestCgroup::new();
    let _kubelet = driver.prepare(&root);
    let dir = tempfile::tempdir().expect("tmp");
    let agent = AgentRun::start(
        &topo,
        &[],
        &[],
        &agent_config(&api, &root, dir.path(), "", ""),
    );
    assert_eq!(
        agent.status()["kubernetes"]["podWatch"],
        "active",
        "{}",
        agent.log()
    );
    let layouts = [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort];
    let uids: Vec<String> = (0..layouts.len())
        .map(|i| format!("0b7d2c1e-6666-4a2b-9c3d-{i:012x}"))
        .collect();
    for (i, uid) in uids.iter().enumerate() {
        api.apply(
            Resource::Pods,
            pod(&format!("web-{i}"), uid, serde_json::json!({"app": "web"})),
        );
    }
    agent.wait_until(Duration::from_secs(5), || {
        agent.status()["kubernetes"]["pending"] == layouts.len()
    });
    let mut cgroups = Vec::new();
    for (qos, uid) in layouts.iter().zip(&uids) {
        // The cgroup, then at once its first process, which connects.
        let cg = root.nested(&driver.pod_dir(*qos, uid));
        let r = topo.connect(Some(&cg), dest, &ProbeOptions::default());
        assert!(r.is_eperm(), "{driver:?} {qos:?}: first connect {r:?}");
        cgroups.push(cg);
    }
    assert_eq!(
        servers.accepted(),
        Vec::<std::net::SocketAddr>::new(),
        "nothing reached the far side"
    );
    // The agent takes the cgroups in: they stay denied, shown as covered by the kernel.
    agent.wait_until(Duration::from_secs(5), || {
        let s = agent.status();
        s["kubernetes"]["pending"] == 0
            && cgroups
                .iter()
                .all(|cg| workload_status(&s, cg.path())["coveredBy"] == "kernel")
    });
    for cg in &cgroups {
        let r = topo.connect(Some(cg), dest, &ProbeOptions::default());
        assert!(r.is_eperm(), "{driver:?}: later connect {r:?}");
    }
    // Not reported: not the kernel path's to cover.
    let unknown =
        root.nested(&driver.pod_dir(Qos::Burstable, "0b7d2c1e-6666-4a2b-9c3d-0000000000ff"));
    let r = topo.connect(Some(&unknown), dest, &ProbeOptions::default());
    assert!(r.is_connected(), "an unreported pod is unfiltered: {r:?}");
}

#[test]
fn systemd_driver_pods_reported_first_are_denied_on_their_very_first_connect() {
    reported_pods_are_denied_on_their_very_first_connect(Driver::Systemd);
}

#[test]
fn cgroupfs_driver_pods_reported_first_are_denied_on_their_very_first_connect() {
    reported_pods_are_denied_on_their_very_first_connect(Driver::Cgroupfs);
}

/// 250 pods (kubelet's usual maximum) reported at once, then created one after another,
/// each connecting at once: every first connect is refused, and the agent shows each as
/// covered by the kernel. A policy change then reaches every one of them.
#[test]
fn two_hundred_fifty_reported_pods_are_each_denied_on_their_first_connect() {
    use passthrough_tests::{
        ProbeOptions, TestCgroup,
        agent::{AgentRun, sa},
    };
    const PODS: usize = 250;
    let topo = Topology::new();
    let dest = sa("203.0.113.10:80");
    let servers = topo.serve(&[dest]);
    let api = ApiServer::start(&topo.client_netns_path());
    api.without(Resource::Dataplanes);
    injected_namespace(&api, "shop");
    mesh_wide_none(&api);
    let root = TestCgroup::new();
    let _kubelet = Driver::Systemd.prepare(&root);
    let dir = tempfile::tempdir().expect("tmp");
    let agent = AgentRun::start(
        &topo,
        &[],
        &[],
        &agent_config(&api, &root, dir.path(), "", ""),
    );
    let uids: Vec<String> = (0..PODS)
        .map(|i| format!("0b7d2c1e-7777-4a2b-9c3d-{i:012x}"))
        .collect();
    for (i, uid) in uids.iter().enumerate() {
        api.apply(
            Resource::Pods,
            pod(&format!("p-{i}"), uid, serde_json::json!({"app": "web"})),
        );
    }
    agent.wait_until(Duration::from_secs(20), || {
        agent.status()["kubernetes"]["pending"] == PODS
    });
    let mut cgroups = Vec::new();
    let mut allowed = Vec::new();
    for uid in &uids {
        let cg = root.nested(&Driver::Systemd.pod_dir(Qos::Burstable, uid));
        if !topo
            .connect(Some(&cg), dest, &ProbeOptions::default())
            .is_eperm()
        {
            allowed.push(uid.clone());
        }
        cgroups.push(cg);
    }
    assert_eq!(allowed, Vec::<String>::new(), "first connects not refused");
    assert!(
        servers.accepted().is_empty(),
        "nothing reached the far side"
    );
    agent.wait_until(Duration::from_secs(20), || {
        let s = agent.status();
        s["kubernetes"]["pods"] == PODS
            && s["kubernetes"]["pending"] == 0
            && s["workloads"]
                .as_array()
                .is_some_and(|ws| ws.iter().filter(|w| w["coveredBy"] == "kernel").count() == PODS)
    });
    // The agent is the reconciler of record: a change reaches the cgroups the kernel covered.
    api.apply(
        Resource::MeshPassthroughs,
        policy(
            "none",
            "kuma-system",
            serde_json::json!({"targetRef": {"kind": "Mesh"}, "default": {"passthroughMode": "All"}}),
        ),
    );
    agent.wait_until(Duration::from_secs(10), || {
        cgroups.iter().step_by(25).all(|cg| {
            topo.connect(Some(cg), dest, &ProbeOptions::default())
                .is_connected()
        })
    });
}
