//! virsh's shell: how one command-line argument holds several commands
//! (`kvnet 'net-start a; net-start b'`), and the interactive mode that reads commands
//! from standard input when no command is given.
//!
//! The tokenizer follows virsh's `vshCommandStringGetArg`: blanks separate words; `;`
//! and newlines end a command; a word starting with `#` comments out the rest of the
//! line; `'...'` quotes literally; `"..."` quotes with `\` still escaping; a
//! backslash-newline is elided.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use rustyline::Editor;
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;

/// A command string virsh would refuse to parse, with virsh's message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// A `\` ends the string.
    #[error("dangling \\")]
    DanglingBackslash,
    /// A `"` is never closed.
    #[error("missing \"")]
    MissingQuote,
}

/// One command of a command string: its words, verb first.
pub type Words = Vec<String>;

/// Splits a command string into its commands. Empty commands (`;;`, blank lines,
/// comments) are dropped.
pub fn split_commands(text: &str) -> Result<Vec<Words>, SyntaxError> {
    let mut commands = Vec::new();
    let mut words: Words = Vec::new();
    let mut rest = text;
    loop {
        // Blanks and backslash-newlines between words.
        rest = rest.trim_start_matches([' ', '\t']);
        while let Some(after) = rest.strip_prefix("\\\n") {
            rest = after.trim_start_matches([' ', '\t']);
        }
        let end_of_command = match rest.chars().next() {
            None => {
                end_command(&mut commands, &mut words);
                return Ok(commands);
            }
            Some(';' | '\n') => {
                rest = &rest[1..];
                true
            }
            Some('#') => {
                rest = rest.split_once('\n').map_or("", |(_, after)| after);
                true
            }
            Some(_) => false,
        };
        if end_of_command {
            end_command(&mut commands, &mut words);
            continue;
        }
        let (word, after) = next_word(rest)?;
        words.push(word);
        rest = after;
    }
}

/// Reads one word, up to an unquoted blank, `;` or newline; returns it and the text
/// after it.
fn next_word(text: &str) -> Result<(String, &str), SyntaxError> {
    let mut word = String::new();
    let (mut single, mut double) = (false, false);
    let mut chars = text.chars();
    loop {
        let rest = chars.as_str();
        let Some(c) = chars.next() else {
            break;
        };
        match c {
            ' ' | '\t' | ';' | '\n' if !single && !double => {
                chars = rest.chars();
                break;
            }
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            // As in a shell, `\` escapes outside quotes and inside "", not inside ''.
            '\\' if !single => match chars.next() {
                None => return Err(SyntaxError::DanglingBackslash),
                Some('\n') => {}
                Some(escaped) => word.push(escaped),
            },
            _ => word.push(c),
        }
    }
    // virsh lets an unclosed single quote run to the end of the string.
    if double {
        return Err(SyntaxError::MissingQuote);
    }
    Ok((word, chars.as_str()))
}

/// Ends the command being read. virsh skips a command whose verb starts with `#`
/// (a quoted `'#'`) as a comment, like one that is empty.
fn end_command(commands: &mut Vec<Words>, words: &mut Words) {
    let words = std::mem::take(words);
    if words.first().is_some_and(|verb| !verb.starts_with('#')) {
        commands.push(words);
    }
}

/// `quit` or `exit`.
pub fn is_quit_verb(verb: &str) -> bool {
    matches!(verb, "quit" | "exit")
}

/// A `quit` or `exit` command, read as virsh reads it: it takes only `--help` and an
/// end of options (`--`).
#[derive(Debug, PartialEq, Eq)]
pub enum QuitCommand {
    /// End the shell, or the command string.
    Quit,
    /// `--help`: the command's help, and nothing ends.
    Help,
    /// Anything else: virsh's error line; nothing of the command string runs, and an
    /// interactive shell goes on.
    Refused(String),
}

/// `words` as a [`QuitCommand`]; `None` for any other command.
pub fn quit_command(words: &[String]) -> Option<QuitCommand> {
    let (verb, rest) = words.split_first()?;
    if !is_quit_verb(verb) {
        return None;
    }
    let mut help = false;
    let mut options_ended = false;
    for word in rest {
        if !options_ended && word == "--" {
            options_ended = true;
        } else if !options_ended && word == "--help" {
            help = true;
        } else if !options_ended && crate::cli::is_option_word(word) {
            let option = word.split('=').next().unwrap_or_default();
            return Some(QuitCommand::Refused(format!(
                "command '{verb}' doesn't support option {option}"
            )));
        } else {
            return Some(QuitCommand::Refused(format!("unexpected data '{word}'")));
        }
    }
    Some(if help {
        QuitCommand::Help
    } else {
        QuitCommand::Quit
    })
}

/// The interactive terminal's input: lines from standard input, each read after a
/// prompt on standard output.
pub struct Terminal {
    prompt: String,
    input: Input,
}

/// Where the terminal's lines come from.
enum Input {
    /// A terminal: a line editor with history and completion, as virsh's readline.
    Editor {
        editor: Box<Editor<Completion, FileHistory>>,
        /// Where the history is kept between sessions, if there is a home for it.
        history: Option<PathBuf>,
    },
    /// Anything else, read line by line. Off a terminal, virsh's readline echoes what
    /// it reads after the prompt, so a transcript shows each command; a terminal
    /// (when the editor cannot run on it) echoes by itself.
    Lines { echo: bool },
}

/// Lines of history kept, as virsh keeps (`VIRSH_HISTSIZE`'s default).
const HISTORY_LINES: usize = 500;

impl Terminal {
    /// Standard input as a terminal whose prompt names `program`. On a terminal, the
    /// words of `completion` complete with Tab, and the history of earlier sessions is
    /// read from `$XDG_CACHE_HOME/<program>/history` (virsh keeps its own in
    /// `~/.cache/virsh/history`).
    pub fn new(program: &str, read_only: bool, completion: Completion) -> Terminal {
        // virsh's prompts: `#` for a connection that may change things, `>` read-only.
        let prompt = format!("{program} {} ", if read_only { '>' } else { '#' });
        let on_terminal = std::io::stdin().is_terminal();
        let lines = Input::Lines { echo: !on_terminal };
        let input = if on_terminal && std::io::stdout().is_terminal() {
            editor(program, completion).unwrap_or(lines)
        } else {
            lines
        };
        Terminal { prompt, input }
    }

    /// virsh's greeting, unless quiet.
    pub fn welcome(program: &str) -> String {
        format!(
            "Welcome to {program}, the virtualization interactive terminal.\n\n\
             Type:  'help' for help with commands\n       'quit' to quit\n\n"
        )
    }

    /// Prompts for and reads the next line, without its line end; `None` at the end of
    /// input (or when it cannot be read). Ctrl-C on a terminal drops the line being
    /// typed and prompts again.
    pub fn read_line(&mut self) -> Option<String> {
        match &mut self.input {
            Input::Editor { editor, .. } => loop {
                match editor.readline(self.prompt.as_str()) {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        return Some(line);
                    }
                    Err(ReadlineError::Interrupted) => continue,
                    Err(_) => return None,
                }
            },
            Input::Lines { echo } => read_line_after_prompt(&self.prompt, *echo),
        }
    }

    /// Keeps the session's history for the next one (best effort, as virsh).
    pub fn save_history(&mut self) {
        if let Input::Editor {
            editor,
            history: Some(path),
        } = &mut self.input
        {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = editor.save_history(path) {
                tracing::debug!(path = %path.display(), error = %e, "history not saved");
            }
        }
    }
}

/// A line editor reading the history of earlier sessions.
fn editor(program: &str, completion: Completion) -> Option<Input> {
    let config = rustyline::Config::builder()
        .max_history_size(HISTORY_LINES)
        .ok()?
        .auto_add_history(false)
        .build();
    let mut editor: Editor<Completion, FileHistory> = Editor::with_config(config).ok()?;
    editor.set_helper(Some(completion));
    let history = history_path(program);
    if let Some(path) = &history {
        // None yet is the usual first session.
        let _ = editor.load_history(path);
    }
    Some(Input::Editor {
        editor: Box::new(editor),
        history,
    })
}

/// `$XDG_CACHE_HOME/<program>/history`, else `$HOME/.cache/<program>/history`.
fn history_path(program: &str) -> Option<PathBuf> {
    let non_empty = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    let cache = non_empty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(cache.join(program).join("history"))
}

/// A prompt, then one line of standard input, echoed after the prompt if `echo`.
fn read_line_after_prompt(prompt: &str, echo: bool) -> Option<String> {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(prompt.as_bytes())
        .and_then(|()| stdout.flush());
    let mut bytes = Vec::new();
    match std::io::stdin().lock().read_until(b'\n', &mut bytes) {
        Ok(0) | Err(_) => return None,
        Ok(_) => {}
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    let line = String::from_utf8_lossy(&bytes).into_owned();
    if echo {
        let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
    }
    Some(line)
}

/// What Tab asks the daemon for (nothing when it cannot be reached).
pub trait DaemonNames {
    /// The networks `verb` can act on.
    fn networks(&self, verb: &str) -> Vec<String>;
    /// The UUIDs of the ports of `network`.
    fn ports(&self, network: &str) -> Vec<String>;
}

/// What Tab needs to know of a verb's command line.
#[derive(Clone, Debug, Default)]
pub struct VerbSyntax {
    /// The verb.
    pub name: String,
    /// Its long options (`--all`...).
    pub options: Vec<String>,
    /// Those of its options that take a value (`--xpath EXPR`): the value is not an
    /// argument.
    pub valued: Vec<String>,
    /// Its first positional argument is a network.
    pub network: bool,
    /// Its second positional argument is one of that network's ports.
    pub port: bool,
}

/// Tab completion of the terminal: the verbs as a command's first word, then that
/// verb's options, and the network and port arguments of the verbs that take them.
pub struct Completion {
    verbs: Vec<VerbSyntax>,
    names: Box<dyn DaemonNames>,
}

impl Completion {
    /// Completes `verbs`, with the networks and ports `names` gives.
    pub fn new(verbs: Vec<VerbSyntax>, names: Box<dyn DaemonNames>) -> Completion {
        Completion { verbs, names }
    }

    /// Where the word under the cursor starts in `line`, and its completions.
    pub(crate) fn candidates(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        let before = line.get(..pos).unwrap_or(line);
        // Only the command the cursor is in: after the last `;`.
        let command_start = before.rfind([';', '\n']).map_or(0, |at| at + 1);
        let command = &before[command_start..];
        let word_start = command.rfind([' ', '\t']).map_or(0, |at| at + 1);
        let word = &command[word_start..];
        let start = command_start + word_start;
        let mut earlier = command[..word_start].split_whitespace();
        let verb = earlier
            .next()
            .map(|name| self.verbs.iter().find(|verb| verb.name == name));
        let earlier: Vec<&str> = earlier.collect();
        let words: Vec<String> = match verb {
            None => self.verbs.iter().map(|verb| verb.name.clone()).collect(),
            // An unknown verb has nothing to offer.
            Some(None) => Vec::new(),
            Some(Some(verb)) => match argument_slot(verb, &earlier) {
                _ if word.starts_with('-') => verb.options.clone(),
                Slot::Network => self.names.networks(&verb.name),
                Slot::Port(network) => self.names.ports(network),
                Slot::OptionValue => Vec::new(),
                Slot::Other if word.is_empty() => verb.options.clone(),
                Slot::Other => Vec::new(),
            },
        };
        let mut matching: Vec<String> = words
            .into_iter()
            .filter(|candidate| candidate.starts_with(word))
            .collect();
        matching.sort();
        (start, matching)
    }
}

/// What the word being typed is.
#[derive(Debug, PartialEq, Eq)]
enum Slot<'a> {
    Network,
    /// A port of this network.
    Port(&'a str),
    /// The value of an option that is not a network or port.
    OptionValue,
    /// Anything else (an option, or an argument Tab cannot complete).
    Other,
}

/// The slot of the next word of `verb` after the `earlier` words: the network (its first
/// positional argument, or after `--network`), then the port (the second, or after
/// `--port`); the values of other options are skipped.
fn argument_slot<'a>(verb: &VerbSyntax, earlier: &[&'a str]) -> Slot<'a> {
    let (mut network, mut port_given, mut bare) = (None, false, Vec::new());
    let mut words = earlier.iter().copied();
    let mut pending = None;
    while let Some(word) = words.next() {
        let (option, inline) = match word.split_once('=') {
            Some((option, value)) if word.starts_with("--") => (option, Some(value)),
            _ => (word, None),
        };
        if !option.starts_with('-') {
            bare.push(word);
            continue;
        }
        let takes_value = verb.valued.iter().any(|valued| valued == option);
        let value = match (takes_value, inline) {
            (false, _) => continue,
            (true, Some(value)) => Some(value),
            (true, None) => words.next(),
        };
        match (option, value) {
            ("--network", Some(value)) => network = Some(value),
            ("--port", Some(_)) => port_given = true,
            (_, None) => pending = Some(option),
            _ => {}
        }
    }
    match pending {
        Some("--network") if verb.network => return Slot::Network,
        Some("--port") if verb.port => {
            return network
                .or(bare.first().copied())
                .map_or(Slot::OptionValue, Slot::Port);
        }
        Some(_) => return Slot::OptionValue,
        None => {}
    }
    if verb.network && network.is_none() && bare.is_empty() {
        return Slot::Network;
    }
    let network_from_bare = network.is_none();
    let Some(network) = network.or(bare.first().copied()) else {
        return Slot::Other;
    };
    let ports_given = bare.len() - usize::from(network_from_bare);
    if verb.port && !port_given && ports_given == 0 {
        Slot::Port(network)
    } else {
        Slot::Other
    }
}

impl rustyline::completion::Completer for Completion {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(self.candidates(line, pos))
    }
}

impl rustyline::hint::Hinter for Completion {
    type Hint = String;
}

impl rustyline::highlight::Highlighter for Completion {}

impl rustyline::validate::Validator for Completion {}

impl rustyline::Helper for Completion {}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<Words> {
        split_commands(text).expect("parses")
    }

    // Each case was run through virsh 9.0 (`virsh -c test:///default '...'`).
    #[test]
    fn commands_split_at_semicolons_and_newlines() {
        assert_eq!(
            split("net-list --all; net-info default"),
            [vec!["net-list", "--all"], vec!["net-info", "default"]]
        );
        assert_eq!(
            split("net-list --name\nnet-uuid default"),
            [vec!["net-list", "--name"], vec!["net-uuid", "default"]]
        );
        assert_eq!(split("net-list;net-list"), [["net-list"], ["net-list"]]);
        assert_eq!(
            split("  ;  ; net-list --name;;"),
            [vec!["net-list", "--name"]]
        );
        assert!(split("").is_empty());
        assert!(split(" \t ").is_empty());
    }

    #[test]
    fn quotes_and_backslashes_work_as_in_a_shell() {
        assert_eq!(split("net-info 'de fault'"), [["net-info", "de fault"]]);
        assert_eq!(split("net-info de\\ fault"), [["net-info", "de fault"]]);
        assert_eq!(split("net-info \"default\""), [["net-info", "default"]]);
        assert_eq!(split("net-info 'def'ault"), [["net-info", "default"]]);
        assert_eq!(split("net-uuid \\default"), [["net-uuid", "default"]]);
        assert_eq!(
            split("net-info 'a;b' \"c;d\""),
            [["net-info", "a;b", "c;d"]]
        );
        // `\` escapes inside "" but not inside ''.
        assert_eq!(split(r#"x "a\"b" 'c\d'"#), [["x", "a\"b", "c\\d"]]);
        // An unclosed single quote runs to the end.
        assert_eq!(split("net-info default' '"), [["net-info", "default "]]);
        // A backslash-newline joins lines, between words and inside one.
        assert_eq!(
            split("net-list \\\n--all; net-in\\\nfo x"),
            [vec!["net-list", "--all"], vec!["net-info", "x"]]
        );
        assert_eq!(split("net-info ''"), [["net-info", ""]]);
    }

    #[test]
    fn a_word_starting_with_hash_comments_out_the_line() {
        assert_eq!(
            split("net-list --name # comment; net-info default"),
            [["net-list", "--name"]]
        );
        assert_eq!(
            split("#x; net-list\nnet-list --name"),
            [["net-list", "--name"]]
        );
        // Inside a word it is an ordinary character.
        assert_eq!(split("net-list --name#x"), [["net-list", "--name#x"]]);
        // A quoted verb starting with # still makes a comment of its command.
        assert_eq!(split("'#x' y; net-list"), [["net-list"]]);
    }

    #[test]
    fn unfinished_quotes_and_escapes_are_refused() {
        assert_eq!(
            split_commands("net-info \"default"),
            Err(SyntaxError::MissingQuote)
        );
        assert_eq!(
            split_commands("net-info default\\"),
            Err(SyntaxError::DanglingBackslash)
        );
        assert_eq!(SyntaxError::DanglingBackslash.to_string(), "dangling \\");
        assert_eq!(SyntaxError::MissingQuote.to_string(), "missing \"");
    }

    fn completion() -> Completion {
        let verb = |name: &str, options: &[&str], network: bool, port: bool| VerbSyntax {
            name: name.to_owned(),
            options: options.iter().map(|option| (*option).to_owned()).collect(),
            valued: options
                .iter()
                .filter(|option| matches!(**option, "--network" | "--port" | "--xpath"))
                .map(|option| (*option).to_owned())
                .collect(),
            network,
            port,
        };
        Completion::new(
            vec![
                verb(
                    "net-list",
                    &["--all", "--autostart", "--name"],
                    false,
                    false,
                ),
                verb("net-start", &["--network"], true, false),
                verb("net-info", &["--network", "--json", "--xpath"], true, false),
                verb("net-port-delete", &["--network", "--port"], true, true),
                verb("quit", &[], false, false),
            ],
            Box::new(FakeDaemon),
        )
    }

    /// What a daemon with three networks, one port on `default`, would answer.
    struct FakeDaemon;

    impl DaemonNames for FakeDaemon {
        fn networks(&self, verb: &str) -> Vec<String> {
            match verb {
                // net-start: the inactive ones.
                "net-start" => vec!["default".into(), "docker-machines".into()],
                _ => vec![
                    "default".into(),
                    "docker-machines".into(),
                    "isolated".into(),
                ],
            }
        }

        fn ports(&self, network: &str) -> Vec<String> {
            match network {
                "default" => vec!["7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54".into()],
                _ => Vec::new(),
            }
        }
    }

    fn complete(line: &str) -> (usize, Vec<String>) {
        completion().candidates(line, line.len())
    }

    #[test]
    fn tab_completes_verbs_then_their_options() {
        assert_eq!(
            complete("net-"),
            (
                0,
                vec![
                    "net-info".into(),
                    "net-list".into(),
                    "net-port-delete".into(),
                    "net-start".into()
                ]
            )
        );
        assert_eq!(complete("net-s"), (0, vec!["net-start".into()]));
        assert_eq!(complete("  q"), (2, vec!["quit".into()]));
        assert_eq!(
            complete("net-list --a"),
            (9, vec!["--all".into(), "--autostart".into()])
        );
        assert_eq!(complete("net-list --all --n"), (15, vec!["--name".into()]));
        // After a `;`, a new command starts.
        assert_eq!(
            complete("net-list --all; net-i"),
            (16, vec!["net-info".into()])
        );
        // An unknown verb has no options.
        assert_eq!(complete("net-nosuch --"), (11, Vec::new()));
        // The cursor, not the line's end, says which word.
        assert_eq!(
            completion().candidates("net-l --all", 5),
            (0, vec!["net-list".into()])
        );
    }

    #[test]
    fn tab_completes_the_network_of_verbs_that_take_one() {
        assert_eq!(complete("net-start def"), (10, vec!["default".into()]));
        assert_eq!(
            complete("net-info "),
            (
                9,
                vec![
                    "default".into(),
                    "docker-machines".into(),
                    "isolated".into()
                ]
            )
        );
        assert_eq!(
            complete("net-info --network i"),
            (19, vec!["isolated".into()])
        );
        assert_eq!(complete("net-info --json i"), (16, vec!["isolated".into()]));
        // Which networks is the verb's business: net-start offers the inactive ones.
        assert_eq!(complete("net-start i"), (10, Vec::new()));
        // Once the network is given, or for a verb without one, nothing.
        assert_eq!(complete("net-info default d"), (17, Vec::new()));
        assert_eq!(complete("net-list d"), (9, Vec::new()));
        // Options still complete after the network.
        assert_eq!(
            complete("net-info default --j"),
            (17, vec!["--json".into()])
        );
    }

    #[test]
    fn the_values_of_options_are_not_arguments() {
        let all = || {
            vec![
                "default".to_owned(),
                "docker-machines".to_owned(),
                "isolated".to_owned(),
            ]
        };
        // `--xpath` takes a value: the network is still to come.
        assert_eq!(complete("net-info --xpath //ip "), (22, all()));
        // Its value itself is not completed.
        assert_eq!(complete("net-info --xpath "), (17, Vec::new()));
        // `--opt=value` carries its value.
        assert_eq!(complete("net-info --xpath=//ip "), (22, all()));
        assert_eq!(
            complete("net-port-delete --network=default "),
            (34, vec!["7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54".to_owned()])
        );
    }

    #[test]
    fn tab_completes_a_port_of_the_network_given() {
        let port = || vec!["7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54".to_owned()];
        assert_eq!(complete("net-port-delete default 7"), (24, port()));
        assert_eq!(complete("net-port-delete --network default "), (34, port()));
        assert_eq!(complete("net-port-delete default --port "), (31, port()));
        // A port before its network has nothing to come from.
        assert_eq!(complete("net-port-delete --port "), (23, Vec::new()));
        assert_eq!(complete("net-port-delete isolated "), (25, Vec::new()));
        // The network comes first; once the port is given, nothing more.
        assert_eq!(
            complete("net-port-delete d"),
            (16, vec!["default".into(), "docker-machines".into()])
        );
        assert_eq!(
            complete("net-port-delete default 7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54 x"),
            (61, Vec::new())
        );
    }

    #[test]
    fn quit_and_exit_take_only_help_and_an_end_of_options() {
        let read = |text: &str| {
            let words: Vec<String> = text.split(' ').map(str::to_owned).collect();
            quit_command(&words)
        };
        let refused = |line: &str| Some(QuitCommand::Refused(line.to_owned()));
        for quit in ["quit", "exit", "exit --"] {
            assert_eq!(read(quit), Some(QuitCommand::Quit), "{quit}");
        }
        for help in ["exit --help", "quit --help --help", "quit --help --"] {
            assert_eq!(read(help), Some(QuitCommand::Help), "{help}");
        }
        assert_eq!(read("exit 3"), refused("unexpected data '3'"));
        assert_eq!(read("exit --help 3"), refused("unexpected data '3'"));
        assert_eq!(
            read("quit --now=1"),
            refused("command 'quit' doesn't support option --now")
        );
        assert_eq!(
            read("exit --help --foo"),
            refused("command 'exit' doesn't support option --foo")
        );
        assert_eq!(read("exit -- --all"), refused("unexpected data '--all'"));
        assert_eq!(read("net-list 3"), None);
        assert_eq!(quit_command(&[]), None);
    }
}
