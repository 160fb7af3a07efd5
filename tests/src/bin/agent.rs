//! The `passthrough` command, built inside this package so the tests can find it through
//! `CARGO_BIN_EXE_agent` (cargo only exposes the binaries of the package under test).

use std::process::ExitCode;

use clap::Parser as _;
use passthrough::cli::{Cli, run};

fn main() -> ExitCode {
    run(Cli::parse())
}
