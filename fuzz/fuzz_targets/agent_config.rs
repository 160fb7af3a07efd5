//! The agent config loader: nesting pre-scan, serde_yaml, the typed config, and every check
//! that needs no machine (the environment is a fixed, fictitious one; paths are only looked
//! up, never opened for writing).
#![no_main]

use std::path::{Path, PathBuf};

use passthrough::config::{AgentConfig, Environment};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = AgentConfig::parse_text("fuzz.yaml", text, Path::new("/nonexistent")) else {
        return;
    };
    let env = Environment {
        cgroup_root: Ok(PathBuf::from("/nonexistent/cgroup")),
        node_name: Some("node".into()),
    };
    let _ = config.check("fuzz.yaml", &env);
    let _ = config.select_options();
});
