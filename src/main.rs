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
            if failure.ran() && !cli.quiet && !cli.command.prints_json() {
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
    let contexts = |kind| match error.get(kind) {
        Some(ContextValue::String(value)) => vec![value.clone()],
        Some(ContextValue::Strings(values)) => values.clone(),
        _ => Vec::new(),
    };
    let context = |kind| contexts(kind).into_iter().next();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The verb is the first argument that names one (an option's value may look like one
    // only after it).
    let verbs = <cli::Cli as clap::CommandFactory>::command();
    let verb = args
        .iter()
        .find(|arg| verbs.find_subcommand(arg).is_some())
        .cloned()
        .unwrap_or_default();
    // clap names an option with its value placeholder (`--network <NETWORK>`).
    let option = |text: &str| text.split([' ', '=']).next().unwrap_or_default().to_owned();
    let quiet = args.iter().any(|arg| arg == "-q" || arg == "--quiet");
    // virsh checks some options only once the command runs, so it ends those refusals
    // with the command's blank line.
    let refused_while_running = |line: String| {
        eprintln!("error: {line}");
        if !quiet {
            let _ = std::io::stdout().write_all(b"\n");
        }
        ExitCode::FAILURE
    };
    let lines = match (error.kind(), context(ContextKind::InvalidArg)) {
        (ErrorKind::DisplayHelp | ErrorKind::DisplayVersion, _) => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        (ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand, _) => {
            let _ = error.print();
            return ExitCode::FAILURE;
        }
        (ErrorKind::ArgumentConflict, Some(argument)) => {
            let prior = option(&context(ContextKind::PriorArg).unwrap_or_default());
            let argument = option(&argument);
            let after_verb = args
                .iter()
                .position(|arg| *arg == verb)
                .map_or(&args[..0], |at| &args[at + 1..]);
            let line = conflict_line(&prior, &argument, after_verb);
            if line.starts_with("Options ") {
                return refused_while_running(line);
            }
            vec![line]
        }
        (ErrorKind::InvalidValue, Some(argument))
            if context(ContextKind::InvalidValue).is_some_and(|value| value.is_empty()) =>
        {
            if args.iter().any(String::is_empty) {
                return refused_while_running(format!(
                    "Failed to get option '{}': Option argument is empty",
                    option_name(&argument)
                ));
            }
            vec![format!(
                "expected syntax: --{} <string>",
                option_name(&argument)
            )]
        }
        (ErrorKind::InvalidValue | ErrorKind::ValueValidation, Some(argument))
            if NUMERIC_OPTIONS.contains(&option_name(&argument).as_str()) =>
        {
            return refused_while_running(format!(
                "Numeric value '{}' for <{}> option is malformed or out of range",
                context(ContextKind::InvalidValue).unwrap_or_default(),
                option_name(&argument)
            ));
        }
        (ErrorKind::InvalidSubcommand, _) => vec![format!(
            "unknown command: '{}'",
            context(ContextKind::InvalidSubcommand).unwrap_or_default()
        )],
        (ErrorKind::MissingRequiredArgument, Some(_)) => contexts(ContextKind::InvalidArg)
            .iter()
            .map(|argument| {
                format!(
                    "command '{verb}' requires {} option",
                    argument.to_lowercase()
                )
            })
            .collect(),
        (ErrorKind::UnknownArgument, Some(argument)) if argument.starts_with("--") => {
            let option = argument.split('=').next().unwrap_or_default();
            vec![format!("command '{verb}' doesn't support option {option}")]
        }
        (ErrorKind::UnknownArgument, Some(argument)) => {
            vec![format!("unexpected data '{argument}'")]
        }
        // `--name=foo` for a flag.
        (ErrorKind::TooManyValues, Some(argument)) => {
            vec![format!("invalid '=' after option {}", option(&argument))]
        }
        _ => {
            // Any other refusal: clap's own first line, in virsh's `error: ` shape.
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            vec![first.strip_prefix("error: ").unwrap_or(first).to_owned()]
        }
    };
    for line in lines {
        eprintln!("error: {line}");
    }
    ExitCode::FAILURE
}

/// Options whose values virsh reads as numbers.
const NUMERIC_OPTIONS: [&str; 1] = ["parent-index"];

/// virsh's line for two options clap found in conflict (`args`: those after the verb).
/// The network may be given as the positional argument or as `--network`, which virsh
/// treats as one option: a positional after `--network NAME` is unexpected data,
/// `--network` after a positional is "already seen".
fn conflict_line(prior: &str, argument: &str, args: &[String]) -> String {
    if prior == argument {
        return format!("option {argument} already seen");
    }
    let positional = |text: &str| text.starts_with(['[', '<']);
    if [prior, argument].contains(&"--network") && (positional(prior) || positional(argument)) {
        let option_at = args.iter().position(|arg| arg == "--network");
        // The positional value: a later argument that is neither an option nor the
        // value after `--network`.
        let value_at = args
            .iter()
            .enumerate()
            .position(|(at, arg)| !arg.starts_with('-') && Some(at) != option_at.map(|o| o + 1));
        return match (option_at, value_at) {
            (Some(option), Some(value)) if option < value => {
                format!("unexpected data '{}'", args[value])
            }
            _ => "option --network already seen".to_owned(),
        };
    }
    // virsh names the pair in its own order (net-update's `--current` first), not in
    // the order typed.
    let (first, second) = if prior == "--current" {
        (prior, argument)
    } else {
        (argument, prior)
    };
    format!("Options {first} and {second} are mutually exclusive")
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
