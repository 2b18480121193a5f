//! `kvnet`: virsh's network verbs against kvnetd.

mod cli;
mod commands;
mod output;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // The CLI itself logs nothing; a subscriber (and its filter parsing) is only worth
    // its startup cost when someone asks for library logs.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .init();
    }
    match commands::run(&cli) {
        Ok(text) => {
            let mut stdout = std::io::stdout().lock();
            // A closed stdout (`kvnet net-list | head -0`) is not an error worth reporting.
            let _ = stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush());
            ExitCode::SUCCESS
        }
        Err(failure) => {
            for line in failure.lines() {
                eprintln!("error: {line}");
            }
            ExitCode::FAILURE
        }
    }
}
