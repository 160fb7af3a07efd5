use std::process::ExitCode;

use clap::Parser as _;
use passthrough::cli::{Cli, run};

fn main() -> ExitCode {
    run(Cli::parse())
}
