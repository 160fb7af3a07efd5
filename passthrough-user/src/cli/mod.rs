//! The `passthrough` command: one module per verb. `main.rs` only parses and dispatches.

pub mod agent;
pub mod compile;
pub mod events;
pub mod explain;
pub mod flows;
pub mod migrate;
pub mod recommend;
pub mod selector;
pub mod simulate;
pub mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::policy::set::Finding;

/// passthrough: Kuma MeshPassthrough egress policy, enforced in the Linux kernel with eBPF.
#[derive(Debug, Parser)]
#[command(name = "passthrough", version, about, long_about = None)]
pub struct Cli {
    /// Output format. With json, errors are json too.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,

    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate MeshPassthrough policies exactly as Kuma does and the agent applies them, or
    /// an agent config (--config) offline.
    ///
    /// The agent refuses exactly what this refuses: Kuma's rules, names defined twice, and
    /// two of http/http2/grpc on one port for a workload two policies both select. One line
    /// per finding, `FILE#DOC NAME: FIELD: MESSAGE` (Kuma's message), then an indented
    /// `hint:` with the value and the fix; warnings start with `warning: `. Exit code 0:
    /// valid (warnings allowed, unless --strict); 1: refused; 2: a file could not be read.
    ///
    /// Example: passthrough validate --strict policies/ extra.yaml
    Validate(validate::Args),

    /// Explain the verdict for one destination of one workload.
    ///
    /// Prints the selected policies, the merged mode, the verdict and the appendMatch entry
    /// that decided it. Exit code 0: allow; 1: deny; 2: error; 3: the peek proxy decides from
    /// the name the client sends (give --sni, --host or --authority to decide it).
    ///
    /// Example: passthrough explain --policy examples/ --tag kuma.io/service=web 198.51.100.10:443
    Explain(explain::Args),

    /// Show a workload's merged configuration and the exact kernel table entries it compiles to.
    ///
    /// Example: passthrough compile --policy examples/allow-some.yaml -o json
    Compile(compile::Args),

    /// Run the agent: enforce the policies on the configured workloads until stopped.
    ///
    /// Policy changes and SIGHUP apply within a second. SIGTERM stops the agent and leaves
    /// the programs attached: the kernel keeps enforcing the last state.
    ///
    /// Example: passthrough run --config /etc/passthrough/agent.yaml
    Run(agent::RunArgs),

    /// Show a running agent's workloads, modes, entry counts, generation and counters.
    Status(agent::StatusArgs),

    /// Detach every program and remove every pin the agent created (stop the agent first).
    Uninstall(agent::UninstallArgs),

    /// Show the events a running agent observed: denied connects, connects let through by
    /// audit mode (`would-deny`), and the peek proxy's decisions.
    ///
    /// Repeated identical events are shown once with a count. With --follow, new events are
    /// printed as they happen; with -o json, one JSON object per line.
    ///
    /// Example: passthrough events --follow --workload /sys/fs/cgroup/system.slice/app.service
    Events(events::Args),

    /// Write a MeshPassthrough policy (Kubernetes YAML) that allows exactly the connections
    /// a running agent observed: in audit mode, or denied.
    ///
    /// Domain entries for names the peek proxy saw, IP entries for the rest, one policy per
    /// workload selected by its tags, each entry commented with the connections it covers.
    /// From the flow record, the entries of the policies each workload has now that no
    /// connection used in the window are listed as comments, for the operator to remove.
    /// Exit code 1 when there is nothing to recommend.
    ///
    /// Example: passthrough recommend --since 60m > allow.yaml
    Recommend(recommend::Args),

    /// Show what each workload connected to in the agent's window (`flows.window`): every
    /// connect the kernel decided, allowed or denied, and the names the peek proxy read, with
    /// counts, verdicts and the deciding entries.
    ///
    /// The last line says how complete the record is: entries the kernel table evicted
    /// before the agent read them lose their latest connects. With -o json, the record with
    /// the policies it was decided by, which `simulate --flows` reads.
    ///
    /// Example: passthrough flows --since 2h -o json > flows.json
    Flows(flows::Args),

    /// Replay the recorded flows against candidate policies and list every flow whose
    /// verdict would change, both ways, grouped by workload.
    ///
    /// The candidates replace the agent's policies of the same mesh and name; the agent's
    /// others stay, merged as the agent merges them, with the same engine. A cut names the
    /// entry that stops matching, an opening the one that starts to. Audit mode does not
    /// hide anything: the verdicts compared are the policy's. Exit code 0: nothing would be
    /// cut; 1: something would; 2: error.
    ///
    /// Example: passthrough simulate --policy new/ --flows flows.json
    Simulate(simulate::Args),

    /// Rewrite Kuma 2.x policies for Kuma 3, saying what changed and why.
    ///
    /// MeshSubset tags become Dataplane labels, proxyTypes go, exact Domain entries get the
    /// port Kuma 3 needs (from --port-for, else the policy's other entries of that protocol),
    /// CIDRs lose their host bits, and of two matches that would build one listener filter
    /// chain the later goes, as Kuma 3 drops it. Every change is reported with whether Kuma 3
    /// itself changes what the policy means; what cannot be decided (a Domain with no port
    /// anywhere, a gateway selector, a Dataplane by name) is left in its 2.x form with what to
    /// choose. Exit code 0: everything migrated and valid under Kuma 3; 1: something needs a
    /// choice or is invalid under Kuma 2; 2: a file could not be read.
    ///
    /// Example: passthrough migrate --to 3 --port-for api.example.com=443 --out kuma3/ policies/
    Migrate(migrate::Args),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Validate(args) => validate::run(&args, cli.output),
        Command::Explain(args) => explain::run(&args, cli.output),
        Command::Compile(args) => compile::run(&args, cli.output),
        Command::Run(args) => agent::run(&args, cli.output),
        Command::Status(args) => agent::status(&args, cli.output),
        Command::Uninstall(args) => agent::uninstall(&args, cli.output),
        Command::Events(args) => events::run(&args, cli.output),
        Command::Recommend(args) => recommend::run(&args, cli.output),
        Command::Migrate(args) => migrate::run(&args, cli.output),
        Command::Flows(args) => flows::run(&args, cli.output),
        Command::Simulate(args) => simulate::run(&args, cli.output),
    }
}

/// Prints an error in the chosen format and returns exit code 2.
pub fn fail(output: Output, message: &str) -> ExitCode {
    match output {
        Output::Text => eprintln!("error: {message}"),
        Output::Json => println!("{}", serde_json::json!({ "error": message })),
    }
    ExitCode::from(2)
}

/// Prints the lines (with their hints) of findings on stderr, for people.
pub fn print_findings_text(findings: &[Finding]) {
    for f in findings {
        eprintln!("{}", f.line());
        if let Some(h) = f.hint_line() {
            eprintln!("{h}");
        }
    }
}

/// The command line asks for JSON output (`-o json`, `--output json`, `-ojson`,
/// `--output=json`), read from the raw arguments: clap has not parsed them when its own
/// errors are printed.
pub fn wants_json<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> bool {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .take_while(|a| a != "--")
        .collect();
    args.iter().enumerate().any(|(i, a)| {
        matches!(a.as_str(), "-ojson" | "-o=json" | "--output=json")
            || (matches!(a.as_str(), "-o" | "--output")
                && args.get(i + 1).is_some_and(|v| v == "json"))
    })
}

/// Reports a command line clap refused: as clap prints it, or, when `-o json` is among the
/// arguments, as a JSON object (`error`, `kind`, and where clap knows them `argument`,
/// `value`, `tip`, `usage`) on stdout. Help and version are printed as they are.
pub fn argument_error(e: &clap::Error, json: bool) -> ExitCode {
    use clap::error::{ContextKind, ContextValue};
    let code = u8::try_from(e.exit_code()).unwrap_or(2);
    if code == 0 || !json {
        let _ = e.print();
        return ExitCode::from(code);
    }
    let text = e.render().to_string();
    let mut message = String::new();
    let mut tips = Vec::new();
    let mut usage = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("error: ") {
            message = rest.to_string();
        } else if let Some(rest) = t.strip_prefix("tip: ") {
            tips.push(rest.to_string());
        } else if let Some(rest) = t.strip_prefix("Usage: ") {
            usage = Some(rest.to_string());
        } else if !t.is_empty() && !t.starts_with("For more information") && message.is_empty() {
            message = t.to_string();
        }
    }
    let context = |kind: ContextKind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => Some(v.join(", ")),
        _ => None,
    };
    let mut out = serde_json::json!({
        "error": message,
        "kind": snake_case(&format!("{:?}", e.kind())),
    });
    for (key, kind) in [
        ("argument", ContextKind::InvalidArg),
        ("value", ContextKind::InvalidValue),
    ] {
        if let Some(v) = context(kind) {
            out[key] = v.into();
        }
    }
    if !tips.is_empty() {
        out["tip"] = tips.join("; ").into();
    }
    if let Some(u) = usage {
        out["usage"] = u.into();
    }
    println!("{out}");
    ExitCode::from(code)
}

/// `InvalidValue` -> `invalid_value`.
fn snake_case(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Prints a serialisable value as pretty JSON.
pub fn print_json(value: &impl serde::Serialize) {
    use std::io::Write as _;
    match serde_json::to_string_pretty(value) {
        // A reader that went away (`| head`) is not an error of ours.
        Ok(s) => {
            let _ = writeln!(std::io::stdout(), "{s}");
        }
        Err(e) => eprintln!("error: cannot encode output: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn json_output_is_recognised_in_every_spelling() {
        let args = |s: &str| {
            s.split(' ')
                .map(std::ffi::OsString::from)
                .collect::<Vec<_>>()
        };
        for yes in [
            "passthrough -o json explain",
            "passthrough explain --output json x",
            "passthrough -ojson validate",
            "passthrough --output=json status",
        ] {
            assert!(wants_json(args(yes)), "{yes}");
        }
        for no in [
            "passthrough explain json",
            "passthrough -o text explain",
            "passthrough explain -- -o json",
        ] {
            assert!(!wants_json(args(no)), "{no}");
        }
    }

    #[test]
    fn clap_kinds_become_snake_case_values() {
        assert_eq!(snake_case("InvalidValue"), "invalid_value");
        assert_eq!(
            snake_case("MissingRequiredArgument"),
            "missing_required_argument"
        );
    }
}
