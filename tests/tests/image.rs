//! The agent's OCI image (issue 14), as `cargo xtask image` writes it, in a real container
//! runtime: podman loads the archive (nothing is pulled), the binary in it answers, validates
//! the shipped examples, and runs as the DaemonSet runs it, enforcing on a test workload.

use std::{fs, path::Path, time::Duration};

use passthrough_tests::{
    ProbeOptions, TestCgroup, Topology,
    agent::{AgentRun, Expect, sa},
    container::{
        LoadedImage, PodmanCgroups, VERSION, archive_member, check, image_archive, podman,
    },
};

#[test]
fn podman_loads_the_archive_under_its_name_and_digest() {
    let image = LoadedImage::load();
    assert_eq!(
        image.reference,
        format!("ghcr.io/passthrough/passthrough:{VERSION}")
    );
    // The store holds exactly the manifest the archive carries, and, as the image ID, the
    // config that manifest names.
    assert_eq!(image.inspect("{{.Digest}}"), image.digest);
    let manifest_blob = archive_member(
        &image_archive(),
        &format!(
            "blobs/sha256/{}",
            image.digest.trim_start_matches("sha256:")
        ),
    );
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_blob).expect("manifest");
    assert_eq!(
        format!("sha256:{}", image.inspect("{{.Id}}")),
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest")
    );
    if let Ok(expected) = std::env::var("PASSTHROUGH_IMAGE_DIGEST") {
        assert_eq!(
            image.digest, expected,
            "the digest `cargo xtask image` printed"
        );
    }
    assert_eq!(
        image.inspect("{{index .Labels \"org.opencontainers.image.version\"}}"),
        VERSION
    );
}

#[test]
fn the_archive_also_loads_as_a_docker_archive_with_the_same_image_id() {
    let _cgroups = PodmanCgroups::new();
    // Docker before 25 reads manifest.json, not index.json: it names the same config and
    // layer blobs, so the image is the same one.
    let archive = image_archive();
    let index: serde_json::Value =
        serde_json::from_slice(&archive_member(&archive, "manifest.json")).expect("manifest.json");
    assert_eq!(
        index[0]["RepoTags"][0].as_str(),
        Some(format!("ghcr.io/passthrough/passthrough:{VERSION}").as_str())
    );
    let pulled = check(
        podman()
            .args(["pull", "--quiet"])
            .arg(format!("docker-archive:{}", archive.display())),
    );
    let id = pulled.trim().to_string();
    let ran = podman()
        .args(["run", "--rm", "--network", "none"])
        .args(passthrough_tests::container::ulimits())
        .args([&id, "--version"])
        .output()
        .expect("podman run");
    let _ = podman().args(["rmi", "--force", &id]).output();
    assert!(ran.status.success(), "{ran:?}");
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout).trim(),
        format!("passthrough {VERSION}")
    );
    let config = index[0]["Config"].as_str().expect("Config");
    assert_eq!(
        config.trim_start_matches("blobs/sha256/"),
        id,
        "the docker-archive image ID is the OCI config digest"
    );
}

#[test]
fn the_binary_in_the_image_runs_and_validates_the_shipped_examples() {
    let image = LoadedImage::load();
    let version = image.run(&[], &["--version"]);
    assert!(version.status.success(), "{version:?}");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("passthrough {VERSION}")
    );

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let count = fs::read_dir(&examples)
        .expect("examples")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        })
        .count();
    let mount = format!("--volume={}:/examples:ro", examples.display());
    let valid = image.run(&[&mount], &["validate", "/examples"]);
    let err = String::from_utf8_lossy(&valid.stderr);
    assert!(valid.status.success(), "{valid:?}");
    assert!(err.contains(&format!("{count} valid")), "{err}");

    // And it can refuse: a policy with a port out of range, inside the image too.
    let dir = tempfile::tempdir().expect("tmp");
    fs::write(
        dir.path().join("bad.yaml"),
        "type: MeshPassthrough\nname: bad\nspec:\n  default:\n    appendMatch:\n      - {type: IP, value: 198.51.100.10, port: 0}\n",
    )
    .expect("write");
    let mount = format!("--volume={}:/policies:ro", dir.path().display());
    let refused = image.run(&[&mount], &["validate", "/policies"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("/policies/bad.yaml"),
        "{refused:?}"
    );
}

const WEB_TAG: (&str, &str) = ("kuma.io/service", "web");

const POLICY: &str = r#"
type: MeshPassthrough
name: web-egress
spec:
  targetRef:
    kind: MeshSubset
    tags: {kuma.io/service: web}
  default:
    passthroughMode: Matched
    appendMatch:
      - {type: IP, value: 198.51.100.10, port: 80, protocol: tcp}
"#;

#[test]
fn the_agent_from_the_image_with_the_daemonset_mounts_enforces_a_test_workload() {
    let image = LoadedImage::load();
    let topo = Topology::new();
    let web = TestCgroup::new();
    let allowed = sa("198.51.100.10:80");
    let denied = sa("198.51.100.11:80");
    let servers = topo.serve(&[allowed, denied]);
    let agent = AgentRun::configure(&topo, &[(&web, &[WEB_TAG])], &[("web.yaml", POLICY)], "");
    let container = image.run_agent(&agent, &topo.client_netns_path());
    container.wait_ready(&agent);

    // The process enforcing is the image's binary, in its own mount namespace.
    let pid = container.pid();
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/exe")).expect("exe"),
        Path::new("/usr/local/bin/passthrough")
    );
    assert_ne!(
        fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("mnt ns"),
        fs::read_link("/proc/self/ns/mnt").expect("own mnt ns")
    );

    let opts = ProbeOptions::default();
    Expect::Allow.assert(
        &topo.connect(Some(&web), allowed, &opts),
        "allowed destination",
    );
    Expect::Deny.assert(
        &topo.connect(Some(&web), denied, &opts),
        "denied destination",
    );
    // Proven on the far side: only the allowed connection arrived.
    assert_eq!(servers.accepted(), [allowed]);

    // The kubelet's SIGTERM stops it within the grace period; the pins keep enforcing.
    container.stop(Duration::from_secs(10));
    assert!(!container.is_running());
    Expect::Deny.assert(
        &topo.connect(Some(&web), denied, &opts),
        "denied destination, agent stopped",
    );
    assert_eq!(servers.accepted(), [allowed]);

    // Uninstalled from the image too, as on a node after the DaemonSet is deleted: the
    // programs are detached and the pins gone, so the workload is unfiltered again.
    let out = image.run_like_daemonset(
        &agent,
        &topo.client_netns_path(),
        &["uninstall", "--config", "/etc/passthrough/agent.yaml"],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(!agent.bpffs().exists(), "{} left", agent.bpffs().display());
    let got = topo.connect(Some(&web), denied, &opts);
    assert!(
        got.received().starts_with("hello from "),
        "after uninstall: {got:?}"
    );
    assert_eq!(servers.accepted(), [allowed, denied]);
}
