//! `passthrough validate`.

use std::{path::PathBuf, process::ExitCode};

use clap::Args as ClapArgs;

use super::{Output, print_json};
use crate::policy::set::{PolicySet, Problem};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Policy files or directories (directories are read recursively for *.yaml, *.yml, *.json).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

pub fn run(args: &Args, output: Output) -> ExitCode {
    let set = PolicySet::load(&args.paths);
    let code = if set.has_unreadable() {
        2
    } else if set.problems.is_empty() {
        0
    } else {
        1
    };
    match output {
        Output::Text => {
            for line in set.problems.iter().flat_map(Problem::lines) {
                println!("{line}");
            }
            let invalid = set
                .problems
                .iter()
                .filter(|p| matches!(p, Problem::Invalid { .. }))
                .count();
            let unreadable = set.problems.len() - invalid;
            eprintln!(
                "{} valid, {invalid} invalid {}, {unreadable} unreadable {} ({} {} read)",
                set.policies.len(),
                plural(invalid, "document", "documents"),
                plural(unreadable, "file", "files"),
                set.files,
                plural(set.files, "file", "files"),
            );
        }
        Output::Json => {
            let problems: Vec<_> = set.problems.iter().flat_map(Problem::records).collect();
            let names: Vec<String> = set.policies.iter().map(|p| p.qualified_name()).collect();
            print_json(&serde_json::json!({
                "valid": code == 0,
                "files": set.files,
                "policies": names,
                "problems": problems,
            }));
        }
    }
    ExitCode::from(code)
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}
