use std::process::ExitCode;

use clap::Parser as _;
use passthrough::cli::{Cli, argument_error, run, wants_json};

fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(cli) => run(cli),
        Err(e) => argument_error(&e, wants_json(std::env::args_os())),
    }
}
