//! Command lines clap refused, reported the way virsh reports them (`error: command
//! 'net-start' requires <network> option`, exit status 1), so scripts written for
//! virsh see the same lines.

use std::io::Write;

use clap::error::{ContextKind, ContextValue, ErrorKind};

use crate::cli::is_option_word;

/// A refused command line, or a request for help or the version.
pub enum Refusal {
    /// Help or version text, as clap renders it.
    Text(clap::Error),
    /// Refused while parsing: virsh prints only the error lines.
    AtParse(Vec<String>),
    /// Refused once running: virsh checks some options only when the command runs,
    /// so the error lines are followed by the command's blank line (unless quiet).
    AtRun { lines: Vec<String>, quiet: bool },
}

impl Refusal {
    /// Reads clap's `error` for the command line `args` (without the program name).
    pub fn new(error: clap::Error, args: &[String]) -> Refusal {
        let contexts = |kind| match error.get(kind) {
            Some(ContextValue::String(value)) => vec![value.clone()],
            Some(ContextValue::Strings(values)) => values.clone(),
            _ => Vec::new(),
        };
        let context = |kind| contexts(kind).into_iter().next();
        // The verb is the first argument that names one (an option's value may look
        // like one only after it).
        let verbs = <crate::cli::Cli as clap::CommandFactory>::command();
        let verb = args
            .iter()
            .find(|arg| verbs.find_subcommand(arg).is_some())
            .cloned()
            .unwrap_or_default();
        // clap names an option with its value placeholder (`--network <NETWORK>`).
        let option = |text: &str| text.split([' ', '=']).next().unwrap_or_default().to_owned();
        let at_run = |line: String| Refusal::AtRun {
            lines: vec![line],
            quiet: args.iter().any(|arg| arg == "-q" || arg == "--quiet"),
        };
        let after_verb = args
            .iter()
            .position(|arg| *arg == verb)
            .map_or(&args[..0], |at| &args[at + 1..]);
        let option_of_verb = |name: &str, taking_a_value: bool| {
            verbs.find_subcommand(&verb).is_some_and(|command| {
                command.get_arguments().any(|arg| {
                    arg.get_long() == Some(name)
                        && (!taking_a_value || arg.get_action().takes_values())
                })
            })
        };
        let takes_value = |name: &str| option_of_verb(name, true);
        let is_known = |name: &str| option_of_verb(name, false);
        let lines = match (error.kind(), context(ContextKind::InvalidArg)) {
            (
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand,
                _,
            ) => return Refusal::Text(error),
            (ErrorKind::ArgumentConflict, Some(argument)) => {
                let prior = option(&context(ContextKind::PriorArg).unwrap_or_default());
                let argument = option(&argument);
                let line = conflict_line(&prior, &argument, after_verb, &takes_value);
                if line.starts_with("Options ") {
                    return at_run(line);
                }
                vec![line]
            }
            (ErrorKind::InvalidValue, Some(argument))
                if context(ContextKind::InvalidValue).is_some_and(|value| value.is_empty()) =>
            {
                let name = option_name(&argument);
                let numeric = NUMERIC_OPTIONS.contains(&name.as_str());
                // An empty value given (`--mac ''`, `--mac=`), rather than none at all.
                let given_empty = args
                    .iter()
                    .any(|arg| arg.is_empty() || *arg == format!("--{name}="));
                match (given_empty, numeric) {
                    (true, true) => {
                        return at_run(format!(
                            "Numeric value '' for <{name}> option is malformed or out of range"
                        ));
                    }
                    (true, false) => {
                        return at_run(format!(
                            "Failed to get option '{name}': Option argument is empty"
                        ));
                    }
                    (false, true) => vec![format!("expected syntax: --{name} <number>")],
                    (false, false) => vec![format!("expected syntax: --{name} <string>")],
                }
            }
            (ErrorKind::InvalidValue | ErrorKind::ValueValidation, Some(argument))
                if NUMERIC_OPTIONS.contains(&option_name(&argument).as_str()) =>
            {
                return at_run(format!(
                    "Numeric value '{}' for <{}> option is malformed or out of range",
                    context(ContextKind::InvalidValue).unwrap_or_default(),
                    option_name(&argument)
                ));
            }
            (ErrorKind::InvalidSubcommand, _) => vec![format!(
                "unknown command: '{}'",
                context(ContextKind::InvalidSubcommand).unwrap_or_default()
            )],
            // clap names every positional it counts as required and did not get, also
            // one given as its option (`--network NAME`): virsh names only the missing.
            (ErrorKind::MissingRequiredArgument, Some(_)) => {
                let missing = contexts(ContextKind::InvalidArg);
                let given_as_option = |argument: &String| {
                    let option = format!("--{}", option_name(argument));
                    args.iter().any(|arg| {
                        *arg == option
                            || arg
                                .strip_prefix(option.as_str())
                                .is_some_and(|rest| rest.starts_with('='))
                    })
                };
                let absent: Vec<&String> = missing.iter().filter(|a| !given_as_option(a)).collect();
                let named = if absent.is_empty() {
                    missing.iter().collect()
                } else {
                    absent
                };
                named
                    .into_iter()
                    .map(|argument| {
                        format!(
                            "command '{verb}' requires {} option",
                            argument.to_lowercase()
                        )
                    })
                    .collect()
            }
            // After `--` it is data, however it looks.
            (ErrorKind::UnknownArgument, Some(argument))
                if argument.starts_with("--")
                    && !is_after_end_of_options(after_verb, &argument, &takes_value, &is_known) =>
            {
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
        Refusal::AtParse(lines)
    }

    /// Whether virsh would have run the commands before this one: it refuses these only
    /// when the command runs, and it shows help when the command runs.
    pub fn comes_at_run_time(&self) -> bool {
        !matches!(self, Refusal::AtParse(_))
    }

    /// Prints the refusal; returns whether it counts as success (help and version do).
    pub fn report(&self) -> bool {
        match self {
            Refusal::Text(text) => {
                let _ = text.print();
                !matches!(
                    text.kind(),
                    ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                )
            }
            Refusal::AtParse(lines) => {
                print_errors(lines);
                false
            }
            Refusal::AtRun { lines, quiet } => {
                print_errors(lines);
                if !quiet {
                    let _ = std::io::stdout().write_all(b"\n");
                }
                false
            }
        }
    }
}

/// Whether `argument`, which clap found unknown, comes after the `--` that ends the
/// options in `args` (those after the verb; `takes_value`: whether the verb's `--NAME`
/// takes a value, which may be a `--` itself; `is_known`: whether it has `--NAME`).
fn is_after_end_of_options(
    args: &[String],
    argument: &str,
    takes_value: &dyn Fn(&str) -> bool,
    is_known: &dyn Fn(&str) -> bool,
) -> bool {
    let mut at = 0;
    while let Some(arg) = args.get(at) {
        if arg == "--" {
            return args[at + 1..].iter().any(|arg| arg == argument);
        }
        // clap names the first unknown one: this one, if the verb has no such option.
        if arg == argument
            && !arg
                .strip_prefix("--")
                .is_some_and(|name| is_known(name.split('=').next().unwrap_or_default()))
        {
            return false;
        }
        match arg.strip_prefix("--") {
            Some(name) if is_option_word(arg) && !name.contains('=') && takes_value(name) => {
                at += 2;
            }
            _ => at += 1,
        }
    }
    false
}

/// virsh's error lines on stderr, after whatever stdout holds so far (virsh flushes
/// stdout first, so `2>&1` keeps the order).
pub fn print_errors(lines: &[String]) {
    let _ = std::io::stdout().flush();
    for line in lines {
        crate::output::to_stderr(&format!("error: {line}\n"));
    }
}

/// Options whose values virsh reads as numbers.
const NUMERIC_OPTIONS: [&str; 2] = ["parent-index", "timeout"];

/// The options virsh refuses together, each pair in the order its error line names them.
const EXCLUSIVE_OPTIONS: [(&str, &str); 5] = [
    ("--current", "--live"),
    ("--current", "--config"),
    ("--shell", "--xml"),
    ("--shell", "--split"),
    ("--xml", "--split"),
];

/// virsh's line for two options clap found in conflict (`args`: those after the verb;
/// `takes_value`: whether the verb's `--NAME` takes a value). The network may be given
/// as the positional argument or as `--network`, which virsh treats as one option: a
/// positional after `--network NAME` is unexpected data, `--network` after a positional
/// is "already seen". The same holds for a network port, the second positional.
fn conflict_line(
    prior: &str,
    argument: &str,
    args: &[String],
    takes_value: &dyn Fn(&str) -> bool,
) -> String {
    if prior == argument {
        return format!("option {argument} already seen");
    }
    let positional = |text: &str| text.starts_with(['[', '<']);
    if [prior, argument].contains(&"--port") && (positional(prior) || positional(argument)) {
        let option_at = args
            .iter()
            .position(|arg| arg == "--port" || arg.starts_with("--port="));
        let value_at = bare_words(args, takes_value).get(1).copied();
        return match (option_at, value_at) {
            (Some(option), Some(value)) if option < value => {
                format!("unexpected data '{}'", args[value])
            }
            _ => "option --port already seen".to_owned(),
        };
    }
    if [prior, argument].contains(&"--network") && (positional(prior) || positional(argument)) {
        let option_at = args.iter().position(|arg| arg == "--network");
        // The positional value: a later argument that is neither an option nor the
        // value after `--network`.
        let value_at = args.iter().enumerate().position(|(at, arg)| {
            !is_option_word(arg) && arg != "--" && Some(at) != option_at.map(|o| o + 1)
        });
        return match (option_at, value_at) {
            (Some(option), Some(value)) if option < value => {
                format!("unexpected data '{}'", args[value])
            }
            _ => "option --network already seen".to_owned(),
        };
    }
    // Another option that virsh also takes positionally (net-event's `--event`,
    // `--timeout`), given both ways.
    let twin = |positional_arg: &str, option: &str| {
        positional(positional_arg)
            && option.strip_prefix("--").is_some_and(|name| {
                positional_arg
                    .trim_matches(['[', ']', '<', '>'])
                    .eq_ignore_ascii_case(name)
            })
    };
    if twin(prior, argument) || twin(argument, prior) {
        let option = if positional(prior) { argument } else { prior };
        return format!("option {option} already seen");
    }
    // virsh names the pair in its own order, not in the order typed.
    let (first, second) = EXCLUSIVE_OPTIONS
        .into_iter()
        .find(|pair| *pair == (prior, argument) || *pair == (argument, prior))
        .unwrap_or((argument, prior));
    format!("Options {first} and {second} are mutually exclusive")
}

/// Where the words that virsh reads as positional data are in `args`: neither an option
/// nor the value of one (`--xpath EXPR`).
fn bare_words(args: &[String], takes_value: &dyn Fn(&str) -> bool) -> Vec<usize> {
    let mut words = Vec::new();
    let mut at = 0;
    while let Some(arg) = args.get(at) {
        match arg.strip_prefix("--") {
            Some(name) if is_option_word(arg) && !name.contains('=') && takes_value(name) => {
                at += 1;
            }
            _ if is_option_word(arg) || arg == "--" => {}
            _ => words.push(at),
        }
        at += 1;
    }
    words
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
