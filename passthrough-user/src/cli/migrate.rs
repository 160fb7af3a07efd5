//! `passthrough migrate`: rewrites Kuma 2.x policies for Kuma 3 and says, for every change,
//! what it did and why, and for every case it cannot decide, what to choose.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Args as ClapArgs;

use super::{Output, fail, print_json};
use crate::policy::{
    compile::normalize_name,
    kuma::KumaVersion,
    load::scan_dir,
    migrate::{Input, Options, migrate},
    model::DEFAULT_SYSTEM_NAMESPACE,
};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Policy files or directories (directories are read recursively for *.yaml, *.yml, *.json).
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,

    /// The Kuma to migrate to. Only 3.
    #[arg(long, value_name = "VERSION", default_value = "3", value_parser = to_version)]
    pub to: KumaVersion,

    /// The port of an exact Domain entry written without one, which Kuma 3 needs (repeatable;
    /// repeat a name for several ports). Without it, the ports of the policy's other entries
    /// of the same protocol are used, and with none the entry is left for you to decide.
    ///
    /// Example: --port-for api.example.com=443 --port-for api.example.com=8443
    #[arg(long = "port-for", value_name = "NAME=PORT", value_parser = port_for)]
    pub port_for: Vec<(String, u16)>,

    /// Rewrite the files in place (those with a policy that changed); the report goes to
    /// stdout. Without --write or --out, the migrated YAML goes to stdout and the report to
    /// stderr.
    #[arg(long, conflicts_with = "out")]
    pub write: bool,

    /// Write every migrated file into DIR (created if missing), under its name relative to
    /// the PATH it was found in; the report goes to stdout.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Kuma's system namespace (for the priority of namespaced policies).
    #[arg(long, default_value = DEFAULT_SYSTEM_NAMESPACE)]
    pub system_namespace: String,
}

fn to_version(s: &str) -> Result<KumaVersion, String> {
    match s.parse::<KumaVersion>()? {
        KumaVersion::V3 => Ok(KumaVersion::V3),
        KumaVersion::V2 => Err(format!(
            "{s:?}: migrate rewrites Kuma 2.x policies for Kuma 3: write --to 3"
        )),
    }
}

fn port_for(s: &str) -> Result<(String, u16), String> {
    let (name, port) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?}: write NAME=PORT, e.g. api.example.com=443"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?}: the port {port:?} must be a number from 1 to 65535"))?;
    if name.is_empty() || name.starts_with('*') {
        return Err(format!(
            "{s:?}: give an exact name (wildcard entries need no port for tls, and keep theirs otherwise)"
        ));
    }
    Ok((normalize_name(name), port))
}

/// The files to read, each with the name it gets under --out.
fn inputs(paths: &[PathBuf]) -> Result<Vec<(PathBuf, PathBuf)>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let scan = scan_dir(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))?;
            for f in scan.files {
                let rel = f.strip_prefix(p).unwrap_or(&f).to_path_buf();
                out.push((f, rel));
            }
        } else {
            let rel = p.file_name().map_or_else(|| p.clone(), PathBuf::from);
            out.push((p.clone(), rel));
        }
    }
    Ok(out)
}

pub fn run(args: &Args, output: Output) -> ExitCode {
    let files = match inputs(&args.paths) {
        Ok(f) => f,
        Err(e) => return fail(output, &e),
    };
    let mut texts = Vec::new();
    for (path, _) in &files {
        match std::fs::read_to_string(path) {
            Ok(text) => texts.push(Input {
                path: path.display().to_string(),
                text,
            }),
            Err(e) => return fail(output, &format!("{}: cannot read: {e}", path.display())),
        }
    }
    let mut port_for: BTreeMap<String, _> = BTreeMap::new();
    for (name, port) in &args.port_for {
        port_for
            .entry(name.clone())
            .or_insert_with(std::collections::BTreeSet::new)
            .insert(*port);
    }
    let migration = migrate(
        &texts,
        &Options {
            port_for,
            system_namespace: args.system_namespace.clone(),
        },
    );
    let writing = args.write || args.out.is_some();
    for (f, (path, rel)) in migration.files.iter().zip(&files) {
        let Some(text) = &f.text else { continue };
        let target = match &args.out {
            Some(dir) => dir.join(rel),
            None if args.write && f.changed => path.clone(),
            None => continue,
        };
        if let Err(e) = write(&target, text) {
            return fail(output, &format!("{}: cannot write: {e}", target.display()));
        }
    }
    let report = migration.report_lines();
    match output {
        Output::Json => print_json(&migration),
        Output::Text if writing => {
            for l in &report {
                println!("{l}");
            }
        }
        Output::Text => {
            let texts: Vec<&str> = migration
                .files
                .iter()
                .filter_map(|f| f.text.as_deref())
                .collect();
            print!("{}", texts.join("---\n"));
            for l in &report {
                eprintln!("{l}");
            }
        }
    }
    ExitCode::from(if migration.unreadable() {
        2
    } else if migration.complete() {
        0
    } else {
        1
    })
}

fn write(target: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = target.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(target, text)
}
