//! `kvnet`: virsh's network verbs against kvnetd.
//!
//! As with virsh, the command line holds one command (`kvnet net-start default`), a
//! command string of several (`kvnet 'net-start a; net-start b'`), or none, for the
//! interactive terminal that reads commands from standard input.

mod cli;
mod commands;
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

fn main() -> ExitCode {
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
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let succeeded = match read_leading_options(&args) {
        // clap's usage; the other options do not matter then.
        Leading::Help => run_argv(&[OsString::from("--help")], false),
        Leading::Done(succeeded) => succeeded,
        Leading::Run {
            globals,
            timing,
            words,
        } => match words.as_slice() {
            [] => interactive(&globals, timing),
            [text] => run_command_string(&globals, timing, &text.to_string_lossy()).succeeded,
            _ => run_argv(&[globals, words].concat(), timing),
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
    /// Run `words` with `globals` (`-q`, `-r`, `-c SOCKET` in clap's spellings, which
    /// every command of a string gets) and, with `-t`, each command's time after it.
    Run {
        globals: Vec<OsString>,
        timing: bool,
        words: Vec<OsString>,
    },
}

/// Reads virsh's global options: `-c`/`--connect` (an empty one means the default, as
/// libvirt takes an empty URI), `-q`, `-r`, `-t`, `-h`, and the versions (`-v`,
/// `--version[=short]`: the bare version; `-V`, `--version=long`: a few lines), short
/// ones bundled as getopt takes them (`-qr`, `-qcSOCKET`). Anything else is refused in
/// virsh's words.
fn read_leading_options(args: &[OsString]) -> Leading {
    let mut globals: Vec<OsString> = Vec::new();
    let mut timing = false;
    // The last -c wins, an empty one meaning the default connection again.
    let mut connection: Option<OsString> = None;
    let connect = |connection: &mut Option<OsString>, uri: &OsString| {
        *connection = (!uri.is_empty()).then(|| uri.clone());
    };
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
            break;
        }
        if let Some(long) = text.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (long, None),
            };
            match (name, value) {
                ("quiet", None) => globals.push("-q".into()),
                ("readonly", None) => globals.push("-r".into()),
                ("timing", None) => timing = true,
                ("help", None) => return Leading::Help,
                ("version", Some("long")) => return print_version(true),
                ("version", _) => return print_version(false),
                ("connect", Some(uri)) => connect(&mut connection, &OsString::from(uri)),
                ("connect", None) => match args.get(at) {
                    Some(uri) => {
                        connect(&mut connection, uri);
                        at += 1;
                    }
                    None => return refuse(missing_argument('c', "connect")),
                },
                _ => return refuse(format!("unsupported option '{text}'. See --help.")),
            }
            continue;
        }
        for (index, letter) in text.char_indices().skip(1) {
            match letter {
                'q' => globals.push("-q".into()),
                'r' => globals.push("-r".into()),
                't' => timing = true,
                'h' => return Leading::Help,
                'v' => return print_version(false),
                'V' => return print_version(true),
                'c' => {
                    // The rest of the word is the URI, else the next word is.
                    let attached = &text[index + 1..];
                    if !attached.is_empty() {
                        connect(&mut connection, &OsString::from(attached));
                    } else if let Some(uri) = args.get(at) {
                        connect(&mut connection, uri);
                        at += 1;
                    } else {
                        return refuse(missing_argument('c', "connect"));
                    }
                    break;
                }
                other => return refuse(format!("unsupported option '-{other}'. See --help.")),
            }
        }
    }
    if let Some(uri) = connection {
        globals.extend([OsString::from("-c"), uri]);
    }
    Leading::Run {
        globals,
        timing,
        words: args[at..].to_vec(),
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

/// Runs one command and prints its result; with `timing`, how long it took, as
/// `virsh -t` prints it in place of the blank line that ends a command (even quiet),
/// but never after JSON, which a script parses whole.
fn execute(cli: &cli::Cli, timing: bool) -> Outcome {
    let started = Instant::now();
    let result = commands::run(cli);
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
            let mut stdout = std::io::stdout().lock();
            // A closed stdout (`kvnet net-list | head -0`) is not an error worth reporting.
            let _ = stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush());
            Outcome {
                succeeded: true,
                connected: true,
                quit: false,
            }
        }
        Err(failure) => {
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
fn run_command_string(globals: &[OsString], timing: bool, text: &str) -> Outcome {
    let refused = Outcome {
        succeeded: false,
        connected: true,
        quit: false,
    };
    // virsh refuses an empty command string without a word.
    if text.is_empty() {
        return refused;
    }
    let commands = match shell::split_commands(text) {
        Ok(commands) => commands,
        Err(error) => {
            usage::print_errors(&[error.to_string()]);
            return refused;
        }
    };
    let mut steps = Vec::with_capacity(commands.len());
    for words in commands {
        if shell::is_quit(&words) {
            steps.push(Step::Quit);
            continue;
        }
        let mut args = globals.to_vec();
        args.extend(words.into_iter().map(OsString::from));
        let argv = std::iter::once(OsString::from(PROGRAM)).chain(args.iter().cloned());
        match cli::Cli::parse_virsh(argv) {
            Ok(cli) => steps.push(Step::Run(Box::new(cli))),
            Err(error) => {
                let refusal = Refusal::new(error, &lossy(&args));
                if !refusal.comes_at_run_time() {
                    refusal.report();
                    return refused;
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
        if !line.is_empty() && run_command_string(globals, timing, &line).quit {
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
