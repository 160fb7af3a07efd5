//! The policy loader on YAML: nesting pre-scan, serde_yaml, the MeshPassthrough model,
//! validation for Kuma 2 and 3, merge and compile. Invariant: no panic, and work bounded by
//! the input (libFuzzer's -timeout and -rss_limit_mb catch the rest).
#![no_main]

#[path = "policy_common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        common::policy_pipeline(text);
    }
});
