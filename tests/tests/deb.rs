//! The Debian package (issue 14), as `cargo xtask deb` writes it: installed into this machine
//! with `dpkg -i`, run from its installed path, purged with `dpkg --purge`, leaving nothing.
//! This machine runs no systemd, so the maintainer scripts must start and stop nothing.

use std::{fs, path::PathBuf, process::Command};

use passthrough_tests::container::{VERSION, check, deb_package, output};

/// `dpkg-query`'s status line for the package, empty when dpkg never heard of it.
fn status() -> String {
    let out = output(Command::new("dpkg-query").args([
        "--show",
        "--showformat=${db:Status-Abbrev}${Version}",
        "passthrough",
    ]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn installed() -> bool {
    status().starts_with("ii")
}

/// Purges the package if a failed test left it installed.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if installed() {
            let _ = Command::new("dpkg")
                .args(["--purge", "passthrough"])
                .output();
        }
    }
}

/// Processes whose executable is the installed binary.
fn installed_agents() -> Vec<u32> {
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe == std::path::Path::new("/usr/bin/passthrough"))
        })
        .collect()
}

#[test]
fn the_package_installs_runs_from_usr_bin_and_purges_without_leftovers() {
    let deb = deb_package();
    assert!(
        !installed(),
        "passthrough is already installed here ({}); this test would remove it: `dpkg --purge \
         passthrough` first",
        status()
    );
    // What the package holds, and which of those paths exist before it is installed.
    let listing = check(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let paths: Vec<PathBuf> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| PathBuf::from(p.trim_start_matches('.')))
        .filter(|p| p != &PathBuf::from("/"))
        .collect();
    let new: Vec<PathBuf> = paths.iter().filter(|p| !p.exists()).cloned().collect();
    for must_be_new in [
        "/usr/bin/passthrough",
        "/etc/passthrough/agent.yaml",
        "/etc/passthrough/policies",
        "/lib/systemd/system/passthrough.service",
    ] {
        assert!(
            new.contains(&PathBuf::from(must_be_new)),
            "{must_be_new} is not in the package or already exists here"
        );
    }

    let _purge = Purge;
    check(
        Command::new("dpkg")
            .arg("--install")
            .arg(&deb)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    assert_eq!(status(), format!("ii {VERSION}"));

    let bin = "/usr/bin/passthrough";
    assert_eq!(
        check(Command::new(bin).arg("--version")).trim(),
        format!("passthrough {VERSION}")
    );
    // The default config and its (empty) policy directory pass the CLI's offline check.
    let out =
        output(Command::new(bin).args(["validate", "--config", "/etc/passthrough/agent.yaml"]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        fs::read_dir("/etc/passthrough/policies")
            .expect("policy dir")
            .count(),
        0
    );
    let examples = "/usr/share/doc/passthrough/examples";
    let count = fs::read_dir(examples).expect("examples").count();
    assert!(count > 0);
    let out = output(Command::new(bin).args(["validate", examples]));
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("{count} valid")),
        "{out:?}"
    );
    // The unit is the repository's, pointing at the installed binary.
    let unit = fs::read_to_string("/lib/systemd/system/passthrough.service").expect("unit");
    assert_eq!(
        unit,
        fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/systemd/passthrough.service")
        )
        .expect("deploy/systemd/passthrough.service")
    );
    assert!(unit.contains(&format!(
        "ExecStart={bin} run --config /etc/passthrough/agent.yaml"
    )));
    // The config is a conffile: an upgrade keeps the operator's edits.
    let conffiles = check(Command::new("dpkg-query").args([
        "--show",
        "--showformat=${Conffiles}",
        "passthrough",
    ]));
    assert!(
        conffiles.contains("/etc/passthrough/agent.yaml"),
        "{conffiles}"
    );
    // Without systemd the postinst started nothing.
    assert!(!std::path::Path::new("/run/systemd/system").exists());
    assert_eq!(installed_agents(), Vec::<u32>::new());

    check(
        Command::new("dpkg")
            .args(["--purge", "passthrough"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    // Forgotten ("") or remembered only as not installed ("un", "pn"): not "rc" (config left).
    let after = status();
    assert!(
        after.is_empty() || after.starts_with("un") || after.starts_with("pn"),
        "dpkg's status after purge: {after:?}"
    );
    let left: Vec<&PathBuf> = new.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "left behind after purge: {left:?}");
    let info: Vec<String> = fs::read_dir("/var/lib/dpkg/info")
        .expect("dpkg info")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("passthrough."))
        .collect();
    assert!(info.is_empty(), "dpkg's records left: {info:?}");
}
