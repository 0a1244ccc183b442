//! `p1gw`: the smart-meter P1 gateway binary. See README.md and
//! ARCHITECTURE.md; the CLI contract is design.md §3.

mod exit;
mod parse;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::exit::Exit;

/// Smart-meter P1 gateway.
#[derive(Debug, Parser)]
#[command(name = "p1gw", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode recorded telegrams: one result per telegram, in input order.
    Parse(parse::ParseArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() {
                Exit::USAGE
            } else {
                Exit::OK
            };
            // Nothing more to do if even stderr is gone.
            e.print().unwrap_or(());
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Parse(args) => parse::run(&args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("p1gw: {error:#}");
            ExitCode::from(exit::code_of(&error))
        }
    }
}
