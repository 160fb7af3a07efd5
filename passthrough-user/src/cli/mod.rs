//! The `passthrough` command: one module per verb. `main.rs` only parses and dispatches.

pub mod agent;
pub mod compile;
pub mod events;
pub mod explain;
pub mod recommend;
pub mod selector;
pub mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Validate MeshPassthrough policies exactly as Kuma does.
    ///
    /// Exit code 0: every policy is valid; 1: at least one violation; 2: a file could not be
    /// read as YAML. One line per violation: `FILE#DOC NAME: FIELD: MESSAGE`.
    ///
    /// Example: passthrough validate policies/ extra.yaml
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
    /// Exit code 1 when there is nothing to recommend.
    ///
    /// Example: passthrough recommend --since 60m > allow.yaml
    Recommend(recommend::Args),
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

/// Prints a serialisable value as pretty JSON.
pub fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot encode output: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
