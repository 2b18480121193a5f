//! virsh's shell: how one command-line argument holds several commands
//! (`kvnet 'net-start a; net-start b'`), and the interactive mode that reads commands
//! from standard input when no command is given.
//!
//! The tokenizer follows virsh's `vshCommandStringGetArg`: blanks separate words; `;`
//! and newlines end a command; a word starting with `#` comments out the rest of the
//! line; `'...'` quotes literally; `"..."` quotes with `\` still escaping; a
//! backslash-newline is elided.

use std::io::{BufRead, IsTerminal, Write};

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

/// Whether a command ends the shell (virsh's `quit` and `exit`).
pub fn is_quit(words: &[String]) -> bool {
    matches!(words.first().map(String::as_str), Some("quit" | "exit"))
}

/// The interactive terminal's input: lines from standard input, each read after a
/// prompt on standard output.
pub struct Terminal {
    prompt: String,
    /// When standard input is not a terminal, virsh's readline echoes what it reads
    /// after the prompt, so a transcript shows each command; a terminal echoes by itself.
    echo: bool,
}

impl Terminal {
    /// Standard input as a terminal whose prompt names `program`.
    pub fn new(program: &str) -> Terminal {
        Terminal {
            prompt: format!("{program} # "),
            echo: !std::io::stdin().is_terminal(),
        }
    }

    /// virsh's greeting, unless quiet.
    pub fn welcome(program: &str) -> String {
        format!(
            "Welcome to {program}, the virtualization interactive terminal.\n\n\
             Type:  'help' for help with commands\n       'quit' to quit\n\n"
        )
    }

    /// Prompts for and reads the next line, without its line end; `None` at the end of
    /// input (or when it cannot be read).
    pub fn read_line(&self) -> Option<String> {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all(self.prompt.as_bytes())
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
        if self.echo {
            let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
        }
        Some(line)
    }
}

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

    #[test]
    fn quit_and_exit_end_the_shell() {
        assert!(is_quit(&["quit".to_owned()]));
        assert!(is_quit(&["exit".to_owned(), "x".to_owned()]));
        assert!(!is_quit(&["net-list".to_owned()]));
        assert!(!is_quit(&[]));
    }
}
