//! `passthrough compile`: the merged configuration of a workload and the kernel table entries.

use std::process::ExitCode;

use clap::Args as ClapArgs;
use passthrough_common::PORT_ANY;
use serde::Serialize;

use super::{Output, fail, print_json, selector::WorkloadArgs};
use crate::policy::{
    compile::{CompiledPolicy, compile},
    merge::{Merged, merged_for},
    set::Finding,
    workload::Workload,
};

#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

/// One kernel map entry, as it would be written.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableEntry {
    pub map: &'static str,
    /// The key, readable.
    pub key: String,
    /// LPM tries only: the key's prefix length in bits (the port takes the first 16).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<u32>,
    /// The key's bytes as the kernel sees them, hex.
    pub key_bytes: String,
    /// Index of the deciding entry in the merged appendMatch list.
    pub rule: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Compiled<'a> {
    pub workload: Workload,
    pub merged: &'a Merged,
    pub compiled: &'a CompiledPolicy,
    pub tables: Vec<TableEntry>,
    /// Policies read, selected or not.
    pub policies_read: usize,
    /// What was reported about the policies without refusing them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Finding>,
}

pub fn run(args: &Args, output: Output) -> ExitCode {
    let loaded = match args.workload.load(output) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let workload = args.workload.workload();
    let merged = match merged_for(&loaded.policies, &workload, &args.workload.select_options()) {
        Ok(m) => m,
        Err(conflicts) => {
            let text: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
            return fail(output, &text.join("; "));
        }
    };
    let compiled = match compile(&merged) {
        Ok(c) => c,
        Err(e) => return fail(output, &e.to_string()),
    };
    let tables = tables(&compiled);
    let out = Compiled {
        workload,
        merged: &merged,
        compiled: &compiled,
        tables,
        policies_read: loaded.policies.len(),
        warnings: loaded.warnings,
    };
    match output {
        Output::Json => print_json(&out),
        Output::Text => print_text(&out),
    }
    ExitCode::SUCCESS
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn port(p: u16) -> String {
    if p == PORT_ANY {
        "any".into()
    } else {
        p.to_string()
    }
}

/// Views a map key as the bytes the kernel compares.
fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: the key types are `#[repr(C)]` integers and byte arrays with explicit padding
    // fields, so every byte is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// The entries of the policy's inner maps (the agent puts them at the policy's id in each
/// outer map).
fn tables(c: &CompiledPolicy) -> Vec<TableEntry> {
    use passthrough_common::map_names as m;
    let t = &c.tables;
    let mut out = Vec::new();
    for (k, v) in t.exact_v4_entries() {
        out.push(TableEntry {
            map: m::EXACT_V4,
            key: format!("{}:{}", std::net::Ipv4Addr::from(k.addr), port(k.port)),
            prefix_len: None,
            key_bytes: hex(&bytes_of(&k)),
            rule: v.rule,
        });
    }
    for (k, v) in t.exact_v6_entries() {
        out.push(TableEntry {
            map: m::EXACT_V6,
            key: format!("[{}]:{}", std::net::Ipv6Addr::from(k.addr), port(k.port)),
            prefix_len: None,
            key_bytes: hex(&bytes_of(&k)),
            rule: v.rule,
        });
    }
    for (((p, net), _), (prefix_len, data, v)) in t.cidr_v4.iter().zip(t.cidr_v4_entries()) {
        out.push(TableEntry {
            map: m::CIDR_V4,
            key: format!("port {} {net}", port(*p)),
            prefix_len: Some(prefix_len),
            key_bytes: hex(&bytes_of(&data)),
            rule: v.rule,
        });
    }
    for (((p, net), _), (prefix_len, data, v)) in t.cidr_v6.iter().zip(t.cidr_v6_entries()) {
        out.push(TableEntry {
            map: m::CIDR_V6,
            key: format!("port {} {net}", port(*p)),
            prefix_len: Some(prefix_len),
            key_bytes: hex(&bytes_of(&data)),
            rule: v.rule,
        });
    }
    for (k, v) in t.domain_port_entries() {
        out.push(TableEntry {
            map: m::DOMAIN_PORTS,
            key: format!("port {}", port(k.port)),
            prefix_len: None,
            key_bytes: hex(&bytes_of(&k)),
            rule: v.rule,
        });
    }
    out
}

fn print_text(out: &Compiled<'_>) {
    println!("workload  {}", out.workload);
    let names: Vec<&str> = out
        .merged
        .policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    println!(
        "policies  {} (weakest first; {} read)",
        if names.is_empty() {
            "(none)".to_string()
        } else {
            names.join(", ")
        },
        out.policies_read
    );
    println!("mode      {}", out.compiled.mode);
    if out.compiled.audit {
        println!("audit     on");
    }
    println!("merged appendMatch:");
    if out.compiled.rules.is_empty() {
        println!("  (empty)");
    }
    for (i, r) in out.compiled.rules.iter().enumerate() {
        println!("  [{i}] {r}");
    }
    println!("kernel tables (the policy's inner maps):");
    if out.tables.is_empty() {
        println!("  (no entries)");
    }
    for t in &out.tables {
        let prefix = t.prefix_len.map_or(String::new(), |p| format!(" /{p}"));
        println!(
            "  {:<12} {:<40} -> rule {}  key {}{prefix}",
            t.map, t.key, t.rule, t.key_bytes
        );
    }
    if !out.compiled.domains.is_empty() {
        println!("peek proxy rules:");
        for (p, rules) in &out.compiled.domains {
            for r in rules {
                println!(
                    "  port {:<6} {:<6} {:<30} -> rule {}",
                    port(*p),
                    format!("{:?}", r.protocol).to_lowercase(),
                    r.pattern.to_string(),
                    r.rule
                );
            }
        }
    }
}
