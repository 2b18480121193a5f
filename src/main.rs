//! `kvnet`: virsh's network verbs against kvnetd.
//!
//! As with virsh, the command line holds one command (`kvnet net-start default`), a
//! command string of several (`kvnet 'net-start a; net-start b'`), or none, for the
//! interactive terminal that reads commands from standard input.

mod cli;
mod commands;
mod help;
mod output;
mod shell;
mod usage;
mod xpath;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use netd::api::client::Client;

use crate::usage::Refusal;

/// The name the shell greets with and prompts with.
const PROGRAM: &str = "kvnet";

/// The log target of a failed command's lines.
const FAILURE_LOG: &str = "kvnet::failure";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let succeeded = match read_leading_options(&args) {
        // clap's usage; the other options do not matter then.
        Leading::Help => run_argv(&[OsString::from("--help")], false),
        Leading::Done(succeeded) => succeeded,
        Leading::Run {
            globals,
            timing,
            log,
            words,
        } => match start_logging(&log) {
            Err(message) => {
                usage::print_errors(&[message]);
                false
            }
            Ok(()) => match words.as_slice() {
                [] => interactive(&globals, timing),
                [text] => {
                    run_command_string(&globals, timing, &text.to_string_lossy(), false).succeeded
                }
                // Not verbs clap knows: read as the same words in a command string.
                [verb, ..] if verb.to_str().is_some_and(shell::is_quit_verb) => {
                    let words = words.iter().map(|word| word.to_string_lossy().into_owned());
                    run_commands(&globals, timing, vec![words.collect()], false).succeeded
                }
                _ => run_argv(&[globals, words].concat(), timing),
            },
        },
    };
    if succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What the options before the verb come to. As virsh's getopt (`+` in its option
/// string), options end at the first word that is not one.
enum Leading {
    /// `-h`/`--help`: clap prints the usage.
    Help,
    /// A version printed, or an option refused: nothing else runs.
    Done(bool),
    /// Run `words` with `globals` (`-q`, `-r`, `--connect=SOCKET` as clap is given them, which
    /// every command of a string gets) and, with `-t`, each command's time after it.
    Run {
        globals: Vec<OsString>,
        timing: bool,
        log: LogSettings,
        words: Vec<OsString>,
    },
}

/// virsh's global options, by long name and letter (`-V` is `--version=long`).
const GLOBAL_OPTIONS: [(&str, char); 11] = [
    ("connect", 'c'),
    ("debug", 'd'),
    ("escape", 'e'),
    ("help", 'h'),
    ("keepalive-interval", 'k'),
    ("keepalive-count", 'K'),
    ("log", 'l'),
    ("quiet", 'q'),
    ("readonly", 'r'),
    ("timing", 't'),
    ("version", 'v'),
];

/// The letters of the global options that take an argument.
const WITH_ARGUMENT: &str = "cdekKl";

/// The option `name` stands for, as getopt_long reads it: itself, else the one long
/// option it begins (`--qui`, `--conn`); `None` for none or several (`--k`).
fn long_option(name: &str) -> Option<(&'static str, char)> {
    if let Some(exact) = GLOBAL_OPTIONS.iter().find(|(option, _)| *option == name) {
        return Some(*exact);
    }
    let mut begun = GLOBAL_OPTIONS
        .iter()
        .filter(|(option, _)| option.starts_with(name));
    match (begun.next(), begun.next()) {
        (Some(only), None) if !name.is_empty() => Some(*only),
        _ => None,
    }
}

/// Reads virsh's global options: `-c`/`--connect` (an empty one means the default, as
/// libvirt takes an empty URI), `-q`, `-r`, `-t`, `-h`, the versions (`-v`,
/// `--version[=short]`: the bare version; `-V`, `--version=long`: a few lines), `-d`
/// and `-l` (the CLI's own log: its level, 0 to 4 as virsh's, and its file), and `-k`,
/// `-K`, `-e`, checked as virsh checks them (keepalives and the console's escape key
/// mean nothing on kvnetd's local socket). Short ones are bundled as getopt takes them
/// (`-qr`, `-qcSOCKET`), long ones may be shortened to a unique prefix (`--qui`).
/// Anything else is refused in virsh's words.
fn read_leading_options(args: &[OsString]) -> Leading {
    let mut quiet = false;
    let mut read_only = false;
    let mut timing = false;
    let mut log = LogSettings::default();
    // The last -c wins, an empty one meaning the default connection again.
    let mut connection: Option<OsString> = None;
    let refuse = |message: String| {
        usage::print_errors(&[message]);
        Leading::Done(false)
    };
    let mut at = 0;
    while let Some(arg) = args.get(at) {
        let Some(text) = arg
            .to_str()
            .filter(|text| text.starts_with('-') && *text != "-")
        else {
            break;
        };
        at += 1;
        if text == "--" {
            // What follows is the command, even a word like an option (which clap
            // would take for one).
            if let Some(word) = args.get(at).and_then(|word| word.to_str())
                && word.starts_with('-')
            {
                return refuse(format!("unknown command: '{word}'"));
            }
            break;
        }
        // Each option as its letter, with the argument written into the same word.
        let mut options: Vec<(char, Option<&str>)> = Vec::new();
        if let Some(long) = text.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (long, None),
            };
            let letter = match long_option(name) {
                Some((_, 'v')) if value == Some("long") => 'V',
                Some((_, letter)) => letter,
                None => return refuse(format!("unsupported option '{text}'. See --help.")),
            };
            if value.is_some() && !WITH_ARGUMENT.contains(letter) && !"vV".contains(letter) {
                return refuse(format!("unsupported option '-{letter}'. See --help."));
            }
            options.push((letter, value));
        } else {
            for (index, letter) in text.char_indices().skip(1) {
                if WITH_ARGUMENT.contains(letter) {
                    // The rest of the word is the argument, else the next word is.
                    let attached = &text[index + letter.len_utf8()..];
                    options.push((letter, (!attached.is_empty()).then_some(attached)));
                    break;
                }
                options.push((letter, None));
            }
        }
        for (letter, attached) in options {
            let mut argument = || -> Option<OsString> {
                if let Some(value) = attached {
                    return Some(OsString::from(value));
                }
                let next = args.get(at).cloned();
                at += usize::from(next.is_some());
                next
            };
            match letter {
                'q' => quiet = true,
                'r' => read_only = true,
                't' => timing = true,
                'h' => return Leading::Help,
                'v' => return print_version(false),
                'V' => return print_version(true),
                'c' | 'd' | 'e' | 'k' | 'K' | 'l' => {
                    let Some(value) = argument() else {
                        let name = GLOBAL_OPTIONS
                            .iter()
                            .find(|(_, option)| *option == letter)
                            .map_or("", |(name, _)| name);
                        return refuse(missing_argument(letter, name));
                    };
                    let checked = match letter {
                        'c' => {
                            connection = (!value.is_empty()).then_some(value);
                            Ok(())
                        }
                        'd' => debug_level(&value).map(|level| log.level = level),
                        'l' => {
                            log.file = Some(value);
                            Ok(())
                        }
                        'e' => escape_key(&value),
                        _ => keepalive(letter, &value),
                    };
                    if let Err(message) = checked {
                        return refuse(message);
                    }
                }
                other => return refuse(format!("unsupported option '-{other}'. See --help.")),
            }
        }
    }
    let mut globals: Vec<OsString> = Vec::new();
    if quiet {
        globals.push("-q".into());
    }
    if read_only {
        globals.push("-r".into());
    }
    if let Some(uri) = connection {
        globals.push(cli::connect_option(&uri));
    }
    Leading::Run {
        globals,
        timing,
        log,
        words: args[at..].to_vec(),
    }
}

/// Where and how much the CLI logs (`-d`, `-l`); by default nothing, unless `RUST_LOG`
/// asks for the library's logs on stderr.
#[derive(Default)]
struct LogSettings {
    /// virsh's debug level: 0 debug, 1 info, 2 notice, 3 warning, 4 error.
    level: Option<u8>,
    /// The file the log is appended to, instead of stderr.
    file: Option<OsString>,
}

/// Starts the CLI's log: each command, its outcome (a failure's lines as errors) and
/// the client library's requests. It goes to stderr when `RUST_LOG` or `-d` asks for
/// it, else to `-l`'s file (appended to) at `-d`'s level, errors only without `-d`, as
/// virsh's. A subscriber, and its filter parsing, is worth its start-up cost only then.
fn start_logging(settings: &LogSettings) -> Result<(), String> {
    let level = settings.level.map(|level| match level {
        0 => "debug",
        1 => "info",
        2 | 3 => "warn",
        _ => "error",
    });
    let filter = match (level, &settings.file, std::env::var("RUST_LOG")) {
        (Some(level), _, _) => tracing_subscriber::EnvFilter::new(level),
        (None, Some(_), _) => tracing_subscriber::EnvFilter::new("error"),
        (None, None, Ok(_)) => {
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into())
        }
        (None, None, Err(_)) => return Ok(()),
    };
    // On stderr, a failure is there already, as its `error:` lines.
    let filter = match &settings.file {
        Some(_) => filter,
        None => filter.add_directive(
            format!("{FAILURE_LOG}=off")
                .parse()
                .map_err(|e| format!("log filter: {e}"))?,
        ),
    };
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match &settings.file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    format!(
                        "failed to open the log file '{}': {e}",
                        path.to_string_lossy()
                    )
                })?;
            logs.with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => logs
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    Ok(())
}

/// `-d`'s level. A number out of virsh's range is ignored with virsh's error line, and
/// the command runs; anything else stops it.
fn debug_level(value: &OsString) -> Result<Option<u8>, String> {
    // A C int, as virsh reads it (strtol: leading blanks skipped).
    let number: i32 = value
        .to_str()
        .and_then(|text| text.trim_start().parse().ok())
        .ok_or_else(|| "option -d takes a numeric argument".to_owned())?;
    match u8::try_from(number) {
        Ok(level) if level <= 4 => Ok(Some(level)),
        _ => {
            usage::print_errors(&[format!("ignoring debug level {number} out of range [0-4]")]);
            Ok(None)
        }
    }
}

/// Checks `-e`'s console escape key as virsh does: one ASCII character, or `^` and a
/// control character's letter (`^]`, `^A`).
fn escape_key(value: &OsString) -> Result<(), String> {
    let text = value.to_string_lossy();
    let valid = match text.as_bytes() {
        [single] => single.is_ascii() && *single != b'^',
        [b'^', letter] => (b'@'..=b'_').contains(&letter.to_ascii_uppercase()),
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(format!("Invalid string '{text}' for escape sequence"))
    }
}

/// Checks `-k`/`-K`'s count as virsh does: a number, not negative.
fn keepalive(letter: char, value: &OsString) -> Result<(), String> {
    // A C int, as virsh reads it (strtol: leading blanks skipped).
    match value
        .to_str()
        .and_then(|text| text.trim_start().parse::<i32>().ok())
    {
        Some(number) if number < 0 => Err(format!(
            "option -{letter} requires a positive integer argument"
        )),
        Some(_) => Ok(()),
        None => Err(format!("Invalid value for option -{letter}")),
    }
}

/// virsh's words for an option given without its argument.
fn missing_argument(letter: char, name: &str) -> String {
    format!("option '-{letter}'/'--{name}' requires an argument")
}

/// Prints the version, bare (`-v`, as virsh prints libvirt's) or with a few lines about
/// the program (`-V`).
fn print_version(long: bool) -> Leading {
    let version = env!("CARGO_PKG_VERSION");
    let text = if long {
        format!(
            "kvnet command line tool {version}\n\
             virsh's network commands for kvnetd (network:///system)\n\n"
        )
    } else {
        format!("{version}\n")
    };
    let written = std::io::stdout().write_all(text.as_bytes()).is_ok();
    Leading::Done(written)
}

/// Runs the command line as one command, clap reading every argument.
fn run_argv(args: &[OsString], timing: bool) -> bool {
    let argv = std::iter::once(OsString::from(PROGRAM)).chain(args.iter().cloned());
    match cli::Cli::parse_virsh(argv) {
        Ok(cli) => execute(&cli, timing).succeeded,
        Err(error) => Refusal::new(error, &lossy(args)).report(),
    }
}

/// What running a command (or several) came to.
struct Outcome {
    /// Whether the last command succeeded: the exit status.
    succeeded: bool,
    /// Whether the daemon was reachable; virsh runs no command without a connection.
    connected: bool,
    /// Whether a `quit` or `exit` ended the commands.
    quit: bool,
}

impl Outcome {
    /// A command line refused before anything ran.
    const REFUSED: Outcome = Outcome {
        succeeded: false,
        connected: true,
        quit: false,
    };
}

/// Runs one command and prints its result; with `timing`, how long it took, as
/// `virsh -t` prints it in place of the blank line that ends a command (even quiet),
/// but never after JSON, which a script parses whole.
fn execute(cli: &cli::Cli, timing: bool) -> Outcome {
    let started = Instant::now();
    tracing::info!(command = ?cli.command, "running");
    let result = commands::run(cli);
    tracing::info!(
        succeeded = result.is_ok(),
        ms = format_args!("{:.3}", started.elapsed().as_secs_f64() * 1000.0),
        "done"
    );
    let json = cli.command.prints_json();
    let timing = timing && !json;
    let ends_with_blank_line = !cli.quiet && !json;
    let time = || {
        format!(
            "\n(Time: {:.3} ms)\n\n",
            started.elapsed().as_secs_f64() * 1000.0
        )
    };
    match result {
        Ok(mut text) => {
            if timing {
                if ends_with_blank_line && text.ends_with('\n') {
                    text.pop();
                }
                text.push_str(&time());
            }
            // Scripts read `--json > file`: output lost to a full disk is a failure.
            let written = output::to_stdout(&text);
            if let Err(e) = &written {
                usage::print_errors(&[format!("cannot write the output: {e}")]);
            }
            Outcome {
                succeeded: written.is_ok(),
                connected: true,
                quit: false,
            }
        }
        Err(failure) => {
            tracing::error!(target: FAILURE_LOG, "{}", failure.lines().join(": "));
            usage::print_errors(failure.lines());
            // virsh ends every command it ran with a blank line on stdout, failed or not.
            if failure.ran() && timing {
                let _ = std::io::stdout().write_all(time().as_bytes());
            } else if failure.ran() && ends_with_blank_line {
                let _ = std::io::stdout().write_all(b"\n");
            }
            Outcome {
                succeeded: false,
                connected: failure.ran(),
                quit: false,
            }
        }
    }
}

/// One command of a command string, parsed.
enum Step {
    Run(Box<cli::Cli>),
    /// A refusal or help text virsh would print only when reaching this command.
    Refused(Refusal),
    Quit,
}

/// Runs a command string, as virsh does: every command is parsed before any runs, so
/// a typo anywhere runs nothing; then they run in order, and the last one's result is
/// the exit status.
fn run_command_string(
    globals: &[OsString],
    timing: bool,
    text: &str,
    interactive: bool,
) -> Outcome {
    // virsh refuses an empty command string without a word.
    if text.is_empty() {
        return Outcome::REFUSED;
    }
    let commands = match shell::split_commands(text) {
        Ok(commands) => commands,
        Err(error) => {
            usage::print_errors(&[error.to_string()]);
            return Outcome::REFUSED;
        }
    };
    run_commands(globals, timing, commands, interactive)
}

/// Runs the commands of a command string, split into words: all parsed first, then run
/// in order (see [`run_command_string`]).
fn run_commands(
    globals: &[OsString],
    timing: bool,
    commands: Vec<Vec<String>>,
    interactive: bool,
) -> Outcome {
    let mut steps = Vec::with_capacity(commands.len());
    for words in commands {
        let words = match shell::quit_command(&words) {
            None => words,
            Some(shell::QuitCommand::Quit) => {
                steps.push(Step::Quit);
                continue;
            }
            // Not a verb clap knows, so its help is asked for by name.
            Some(shell::QuitCommand::Help) => vec!["help".to_owned(), words[0].clone()],
            Some(shell::QuitCommand::Refused(line)) => {
                usage::print_errors(&[line]);
                return Outcome::REFUSED;
            }
        };
        // kvnet's own options go before the first command only: in a command's place,
        // an option is no command (virsh's words), not a change of connection.
        if let Some(option) = words.first().filter(|word| word.starts_with('-')) {
            usage::print_errors(&[format!("unknown command: '{option}'")]);
            return Outcome::REFUSED;
        }
        let mut args = globals.to_vec();
        args.extend(words.into_iter().map(OsString::from));
        let argv = std::iter::once(OsString::from(PROGRAM)).chain(args.iter().cloned());
        match cli::Cli::parse_virsh(argv) {
            Ok(mut cli) => {
                cli.interactive = interactive;
                steps.push(Step::Run(Box::new(cli)));
            }
            Err(error) => {
                let refusal = Refusal::new(error, &lossy(&args));
                if !refusal.comes_at_run_time() {
                    refusal.report();
                    return Outcome::REFUSED;
                }
                steps.push(Step::Refused(refusal));
            }
        }
    }
    let mut outcome = Outcome {
        succeeded: true,
        connected: true,
        quit: false,
    };
    for step in steps {
        outcome = match step {
            Step::Run(cli) => execute(&cli, timing),
            Step::Refused(refusal) => Outcome {
                succeeded: refusal.report(),
                ..outcome
            },
            Step::Quit => Outcome {
                succeeded: true,
                connected: true,
                quit: true,
            },
        };
        if outcome.quit || !outcome.connected {
            break;
        }
    }
    outcome
}

/// virsh's interactive terminal: a greeting (unless quiet), then a prompt for each
/// line of commands until `quit`, `exit` or the end of input. Its exit status is
/// success whatever the commands did, as virsh's is.
fn interactive(globals: &[OsString], timing: bool) -> bool {
    let quiet = globals.iter().any(|arg| arg == "-q");
    let read_only = globals.iter().any(|arg| arg == "-r");
    if !quiet {
        let _ = std::io::stdout().write_all(shell::Terminal::welcome(PROGRAM).as_bytes());
    }
    let mut terminal = shell::Terminal::new(PROGRAM, read_only, completion(daemon_of(globals)));
    while let Some(line) = terminal.read_line() {
        if !line.is_empty() && run_command_string(globals, timing, &line, true).quit {
            break;
        }
    }
    terminal.save_history();
    // virsh ends the session's last line (the prompt left at the end of input).
    let _ = std::io::stdout().write_all(b"\n");
    true
}

/// The daemon the terminal's commands go to (as its global options name it), for Tab
/// to ask for network and port names.
fn daemon_of(globals: &[OsString]) -> Option<Client> {
    let argv = std::iter::once(OsString::from(PROGRAM))
        .chain(globals.iter().cloned())
        .chain([OsString::from("uri")]);
    let cli = cli::Cli::parse_virsh(argv).ok()?;
    let socket = cli.connection().ok()?.socket;
    // Tab must not hang on a daemon that does not answer.
    Some(Client::new(socket).with_answer_timeout(Duration::from_secs(2)))
}

/// The daemon as Tab sees it: the names it offers.
struct Daemon(Option<Client>);

impl shell::DaemonNames for Daemon {
    /// The networks `verb` can act on: net-start the inactive ones, net-destroy and the
    /// port verbs the active ones, the verbs of definitions the persistent ones, the
    /// others all (net-update and net-dhcp-leases work on inactive networks too).
    fn networks(&self, verb: &str) -> Vec<String> {
        let Some(daemon) = &self.0 else {
            return Vec::new();
        };
        let networks = daemon.list().unwrap_or_default();
        networks
            .into_iter()
            .filter(|network| match verb {
                "net-start" => !network.active,
                "net-destroy" => network.active,
                "net-undefine" | "net-autostart" | "net-edit" => network.persistent,
                verb if verb.starts_with("net-port-") => network.active,
                _ => true,
            })
            .map(|network| network.name)
            .collect()
    }

    fn ports(&self, network: &str) -> Vec<String> {
        let Some(daemon) = &self.0 else {
            return Vec::new();
        };
        let ports = daemon.ports(network).unwrap_or_default();
        ports
            .into_iter()
            .map(|port| port.uuid.to_string())
            .collect()
    }
}

/// What Tab completes in the terminal: the verbs (and `quit`, `exit`), each with its
/// long options, read from the command line's own definition; and the network and port
/// of the verbs that take them, asked of `daemon`.
fn completion(daemon: Option<Client>) -> shell::Completion {
    let cli = <cli::Cli as clap::CommandFactory>::command();
    let mut verbs: Vec<shell::VerbSyntax> = cli
        .get_subcommands()
        .filter(|verb| !verb.is_hide_set())
        .map(|verb| {
            let named = |argument: &str| {
                verb.get_arguments()
                    .any(|arg| arg.is_positional() && arg.get_id() == argument)
            };
            let options: Vec<&clap::Arg> = verb
                .get_arguments()
                .filter(|arg| {
                    !matches!(
                        arg.get_long(),
                        Some("connect" | "quiet" | "readonly" | "help")
                    )
                })
                .collect();
            let long = |arg: &clap::Arg| arg.get_long().map(|long| format!("--{long}"));
            shell::VerbSyntax {
                name: verb.get_name().to_owned(),
                options: options.iter().copied().filter_map(long).collect(),
                valued: options
                    .iter()
                    .copied()
                    .filter(|arg| arg.get_action().takes_values())
                    .filter_map(long)
                    .collect(),
                network: named("network"),
                port: named("port"),
            }
        })
        .collect();
    verbs.extend(["quit", "exit"].map(|verb| shell::VerbSyntax {
        name: verb.to_owned(),
        ..Default::default()
    }));
    shell::Completion::new(verbs, Box::new(Daemon(daemon)))
}

fn lossy(args: &[OsString]) -> Vec<String> {
    args.iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(line: &str) -> Vec<String> {
        completion(None).candidates(line, line.len()).1
    }

    #[test]
    fn tab_completes_every_verb_from_the_command_line_definition() {
        assert_eq!(
            complete("net-port-"),
            [
                "net-port-create",
                "net-port-delete",
                "net-port-dumpxml",
                "net-port-list"
            ]
        );
        assert_eq!(
            complete("net-port-dumpxml default --"),
            ["--json", "--network", "--port", "--wrap", "--xpath"]
        );
        assert_eq!(
            complete("net-port-list x --"),
            ["--json", "--network", "--table", "--uuid"]
        );
        assert_eq!(
            complete("net-port-create x --"),
            ["--file", "--network", "--validate"]
        );
    }
}
