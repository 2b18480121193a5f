//! virsh's own commands that talk to no daemon: `echo`, `cd`, `pwd`, `help`.

use std::path::{Path, PathBuf};

use super::{Failure, system_message};
use crate::cli::EchoArgs;
use crate::output::finish;

/// virsh's `help`: every command, a group's or a command's help, or virsh's failure for
/// a topic that names none.
pub fn help(topic: Option<&str>, quiet: bool) -> Result<String, Failure> {
    crate::help::topic(topic)
        .map(|text| finish(text, quiet))
        .map_err(Failure::msg)
}

/// virsh's `echo`: the words joined by spaces, quoted as asked; with `--err`, as an
/// error line on stderr instead (the command still succeeds).
pub fn echo(args: &EchoArgs, quiet: bool) -> String {
    let words: Vec<String> = args
        .words()
        .map(|word| {
            if args.shell {
                shell_quoted(word)
            } else if args.xml {
                xml_escaped(word)
            } else if args.split {
                split_lines(word)
            } else {
                word.to_owned()
            }
        })
        .collect();
    let text = words.join(" ");
    if args.err {
        if !text.is_empty() {
            crate::usage::print_errors(&[text.strip_suffix('\n').unwrap_or(&text).to_owned()]);
        }
        return finish(String::new(), quiet);
    }
    finish(text, quiet)
}

/// `word` as a POSIX shell reads it back: as it is when it holds nothing the shell
/// treats specially, else in single quotes (a quote inside as `'\''`), as libvirt's
/// `virBufferEscapeShell` quotes.
fn shell_quoted(word: &str) -> String {
    const SPECIAL: &str = "\r\t\n !\"#$&'()*;<>?[\\]^`{|}~";
    if !word.is_empty() && !word.contains(|c| SPECIAL.contains(c)) {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// `word` with XML's five special characters escaped.
fn xml_escaped(word: &str) -> String {
    let mut escaped = String::with_capacity(word.len());
    for c in word.chars() {
        match c {
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

/// `word`'s pieces between commas (`,,` being a comma), each ended by a newline.
fn split_lines(word: &str) -> String {
    let mut lines = String::with_capacity(word.len() + 1);
    if word.is_empty() {
        return lines;
    }
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                lines.push(',');
            }
            ',' => lines.push('\n'),
            _ => lines.push(c),
        }
    }
    lines.push('\n');
    lines
}

/// virsh's `cd`, which it runs only in its interactive terminal: to `dir`, else to the
/// home directory, else to `/`.
pub fn cd(dir: Option<&PathBuf>, interactive: bool, quiet: bool) -> Result<String, Failure> {
    if !interactive {
        return Err(Failure::msg("cd: command valid only in interactive mode"));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let dir = dir
        .or(home.as_ref())
        .map_or(Path::new("/"), PathBuf::as_path);
    std::env::set_current_dir(dir)
        .map_err(|e| Failure::msg(format!("cd: {}: {}", system_message(&e), dir.display())))?;
    Ok(finish(String::new(), quiet))
}

/// virsh's `pwd`.
pub fn pwd(quiet: bool) -> Result<String, Failure> {
    let dir = std::env::current_dir().map_err(|e| {
        Failure::msg(format!(
            "pwd: cannot get the current directory: {}",
            system_message(&e)
        ))
    })?;
    Ok(finish(format!("{}\n", dir.display()), quiet))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_as_virsh_quotes_them() {
        assert_eq!(shell_quoted("plain"), "plain");
        assert_eq!(shell_quoted("a=b:c,d%@"), "a=b:c,d%@");
        assert_eq!(shell_quoted(""), "''");
        assert_eq!(shell_quoted("it's"), "'it'\\''s'");
        assert_eq!(shell_quoted("a b"), "'a b'");
        assert_eq!(shell_quoted("$x"), "'$x'");
        assert_eq!(shell_quoted("~"), "'~'");
        assert_eq!(xml_escaped("\"q'<>&\tx"), "&quot;q&apos;&lt;&gt;&amp;\tx");
        assert_eq!(split_lines("a,b"), "a\nb\n");
        assert_eq!(split_lines("c,,d"), "c,d\n");
        assert_eq!(split_lines("a,"), "a\n\n");
        assert_eq!(split_lines(",,,"), ",\n\n");
        assert_eq!(split_lines(""), "");
    }
}
