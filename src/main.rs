//! `kvnet`: virsh's network verbs against kvnetd.

mod cli;
mod commands;
mod output;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use clap::error::{ContextKind, ContextValue, ErrorKind};

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
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
            // virsh ends every command it ran with a blank line on stdout, failed or not.
            if !cli.quiet && !cli.command.prints_json() {
                let _ = std::io::stdout().write_all(b"\n");
            }
            ExitCode::FAILURE
        }
    }
}

/// Reports a command line clap refused the way virsh does (`error: command 'net-start'
/// requires <network> option`, exit status 1), so scripts written for virsh see the
/// same lines; help and version requests print as clap has them.
fn usage_error(error: &clap::Error) -> ExitCode {
    let context = |kind| match error.get(kind) {
        Some(ContextValue::String(value)) => Some(value.clone()),
        Some(ContextValue::Strings(values)) => values.first().cloned(),
        _ => None,
    };
    // The verb is the first argument that names one (an option's value may look like one
    // only after it).
    let verbs = <cli::Cli as clap::CommandFactory>::command();
    let verb = std::env::args()
        .skip(1)
        .find(|arg| verbs.find_subcommand(arg).is_some())
        .unwrap_or_default();
    let line = match (error.kind(), context(ContextKind::InvalidArg)) {
        (ErrorKind::DisplayHelp | ErrorKind::DisplayVersion, _) => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        (ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand, _) => {
            let _ = error.print();
            return ExitCode::FAILURE;
        }
        (ErrorKind::ArgumentConflict, Some(argument)) => {
            // clap names an option with its value placeholder (`--network <NETWORK>`).
            let option = |text: &str| text.split([' ', '=']).next().unwrap_or_default().to_owned();
            let prior = option(&context(ContextKind::PriorArg).unwrap_or_default());
            let argument = option(&argument);
            if prior == argument {
                format!("option {prior} already seen")
            } else {
                // virsh names the pair in its own order (net-update's `--current` first),
                // not in the order typed.
                let (first, second) = if prior == "--current" {
                    (prior, argument)
                } else {
                    (argument, prior)
                };
                format!("Options {first} and {second} are mutually exclusive")
            }
        }
        (ErrorKind::InvalidValue, Some(argument))
            if context(ContextKind::InvalidValue).is_some_and(|value| value.is_empty()) =>
        {
            format!(
                "Failed to get option '{}': Option argument is empty",
                option_name(&argument)
            )
        }
        (ErrorKind::InvalidSubcommand, _) => format!(
            "unknown command: '{}'",
            context(ContextKind::InvalidSubcommand).unwrap_or_default()
        ),
        (ErrorKind::MissingRequiredArgument, Some(argument)) => format!(
            "command '{verb}' requires {} option",
            argument.to_lowercase()
        ),
        (ErrorKind::UnknownArgument, Some(argument)) if argument.starts_with('-') => {
            let option = argument.split('=').next().unwrap_or_default();
            format!("command '{verb}' doesn't support option {option}")
        }
        (ErrorKind::UnknownArgument, Some(argument)) => format!("unexpected data '{argument}'"),
        _ => {
            // Any other refusal: clap's own first line, in virsh's `error: ` shape.
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            first.strip_prefix("error: ").unwrap_or(first).to_owned()
        }
    };
    eprintln!("error: {line}");
    ExitCode::FAILURE
}

/// virsh's name of an option clap shows as `--network <NETWORK>` or `<NETWORK>`.
fn option_name(argument: &str) -> String {
    argument
        .split(' ')
        .next()
        .unwrap_or_default()
        .trim_start_matches('-')
        .trim_matches(['<', '>', '[', ']'])
        .to_lowercase()
}
