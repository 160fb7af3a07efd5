//! The comparison point: the same entries as an nftables ruleset in the client namespace,
//! matched on the workload's cgroup (`socket cgroupv2`), loaded with one `nft -f` file (one
//! transaction).

use std::{fmt::Write as _, fs, path::Path, process::Command};

use passthrough_tests::{Topology, cgroup2_root};

use super::Kind;

/// The ruleset. IP entries go to a hash set (what an operator would use for addresses, and
/// fast to load); CIDR entries need an interval set, which nftables loads much more slowly.
pub fn ruleset(kind: Kind, entries: &[(bool, String)], cgroup: &Path) -> String {
    let root = Path::new("/sys/fs/cgroup");
    // nft resolves cgroupv2 paths below /sys/fs/cgroup (also on hybrid hosts) and needs the
    // cgroup's level in the v2 hierarchy.
    let rel = cgroup.strip_prefix(root).unwrap_or(cgroup);
    let level = cgroup
        .strip_prefix(cgroup2_root())
        .map(|p| p.components().count())
        .unwrap_or(1);
    let flags = match kind {
        Kind::Ip => "",
        Kind::Cidr => " flags interval;",
    };
    let mut s = format!(
        "table inet ptbench {{\n  set allow4 {{ type ipv4_addr . inet_service;{flags} }}\n  set allow6 {{ type ipv6_addr . inet_service;{flags} }}\n"
    );
    let _ = write!(
        s,
        "  chain out {{\n    type filter hook output priority 0; policy accept;\n    socket cgroupv2 level {level} \"{}\" jump workload\n  }}\n  chain workload {{\n    ip daddr . tcp dport @allow4 accept\n    ip6 daddr . tcp dport @allow6 accept\n    meta l4proto tcp reject with tcp reset\n  }}\n}}\n",
        rel.display()
    );
    for v6 in [false, true] {
        let set = if v6 { "allow6" } else { "allow4" };
        let list: Vec<&String> = entries.iter().filter(|e| e.0 == v6).map(|e| &e.1).collect();
        for chunk in list.chunks(10_000) {
            let items: Vec<String> = chunk.iter().map(|e| format!("{e} . 80")).collect();
            let _ = writeln!(
                s,
                "add element inet ptbench {set} {{ {} }}",
                items.join(", ")
            );
        }
    }
    s
}

/// Runs `nft ARGS` in the client namespace, with `file` as `-f` when given.
pub fn nft(topo: &Topology, args: &[&str], file: Option<&str>) -> Result<(), String> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", topo.client_netns_path().display()))
        .arg("nft")
        .args(args);
    let path = std::env::temp_dir().join(format!("ptbench-{}.nft", std::process::id()));
    if let Some(text) = file {
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        cmd.arg("-f").arg(&path);
    }
    let out = cmd.output().map_err(|e| format!("nft: {e}"));
    if file.is_some() {
        let _ = fs::remove_file(&path);
    }
    let out = out?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Removes the ruleset.
pub fn flush(topo: &Topology) {
    let _ = nft(topo, &["delete", "table", "inet", "ptbench"], None);
}
