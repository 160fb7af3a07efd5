//! The policy loader on JSON (policy files may be `.json`; the loader reads them as the
//! YAML they also are). Only inputs serde_json accepts are run, so the fuzzer explores JSON
//! structure; the same pipeline as `policy_yaml` follows.
#![no_main]

#[path = "policy_common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if serde_json::from_str::<serde_json::Value>(text).is_err() {
        return;
    }
    common::policy_pipeline(text);
});
