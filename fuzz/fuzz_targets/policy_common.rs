//! The policy loader pipeline the policy targets share.

use passthrough::policy::{
    compile::compile,
    kuma::{Admission, KumaVersion},
    load::{Document, parse_documents},
    merge::{SelectOptions, merged_for},
    model::Policy,
    validate::validate_for,
    workload::Workload,
};

/// Runs a policy text through the loader, the validation of both Kuma versions, and the
/// merge and compile of what is valid, for a workload every Mesh policy selects.
pub fn policy_pipeline(text: &str) {
    let Ok(docs) = parse_documents("fuzz.yaml", text) else {
        return;
    };
    let mut valid: Vec<Policy> = Vec::new();
    for doc in docs {
        let Document::Policy(p) = doc else { continue };
        for kuma in [KumaVersion::V2, KumaVersion::V3] {
            for admission in [Admission::Apply, Admission::Stored] {
                let _ = validate_for(&p, kuma, admission);
            }
        }
        if !validate_for(&p, KumaVersion::V2, Admission::Apply)
            .iter()
            .any(|v| v.is_error())
        {
            valid.push(*p);
        }
    }
    let workload = Workload::default();
    if let Ok(merged) = merged_for(&valid, &workload, &SelectOptions::default()) {
        let _ = compile(&merged);
    }
}
