//! The command line: virsh's network verbs, their arguments and spellings.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use clap::builder::NonEmptyStringValueParser;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, Parser, Subcommand};

/// The daemon socket used when neither `--connect` nor `KVNET_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = netd::api::DEFAULT_SOCKET;

/// kvnet: manage kvnetd's virtual networks with virsh's verbs and formats.
#[derive(Debug, Parser)]
#[command(
    name = "kvnet",
    disable_help_subcommand = true,
    override_usage = "kvnet [OPTIONS] <COMMAND> [ARGS]...\n       \
                      kvnet [OPTIONS] '<COMMAND> [ARGS]...; <COMMAND> [ARGS]...'\n       \
                      kvnet [OPTIONS]    (an interactive terminal reading commands from stdin)"
)]
pub struct Cli {
    /// The daemon's socket [default: $KVNET_SOCKET, else /run/kvnet/kvnetd.sock]; virsh's
    /// URIs for the local system daemon (qemu:///system, network:///system) mean
    /// /run/kvnet/kvnetd.sock, whatever $KVNET_SOCKET says. As with virsh, the last one
    /// given wins.
    #[arg(
        short = 'c',
        long = "connect",
        value_name = "SOCKET",
        overrides_with = "socket"
    )]
    socket: Option<PathBuf>,

    /// Quiet mode: no headers, no success messages, no trailing blank line (as virsh -q).
    #[arg(short, long)]
    pub quiet: bool,

    /// Read-only: every command that would change something is refused, as on virsh's
    /// read-only connection (monitoring scripts use `virsh -r`).
    #[arg(short = 'r', long = "readonly")]
    pub read_only: bool,

    // The options below are read before clap runs (`read_leading_options` in main.rs),
    // as virsh's getopt reads them before the command; here for --help, and to refuse
    // them in a command string's later commands.
    /// Print how long each command took (as virsh -t)
    #[arg(short = 't', long = "timing")]
    timing: bool,

    /// Print the version; --version=long as -V
    #[arg(short = 'v', long = "version", value_name = "short|long", num_args = 0..=1, require_equals = true)]
    version: Option<Option<String>>,

    /// Print the version, with a few lines about the program
    #[arg(short = 'V')]
    long_version: bool,

    /// The CLI's log level: 0 (debug) to 4 (errors only)
    #[arg(short = 'd', long = "debug", value_name = "NUM")]
    debug: Option<String>,

    /// Append the CLI's log to FILE (errors only, without -d)
    #[arg(short = 'l', long = "log", value_name = "FILE")]
    log: Option<String>,

    /// Checked as virsh's; keepalives mean nothing on kvnetd's local socket
    #[arg(short = 'k', long = "keepalive-interval", value_name = "NUM")]
    keepalive_interval: Option<String>,

    /// Checked as virsh's; keepalives mean nothing on kvnetd's local socket
    #[arg(short = 'K', long = "keepalive-count", value_name = "NUM")]
    keepalive_count: Option<String>,

    /// Checked as virsh's; kvnet has no console to escape from
    #[arg(short = 'e', long = "escape", value_name = "CHAR")]
    escape: Option<String>,

    /// The verb.
    #[command(subcommand)]
    pub command: Command,

    /// Whether the command came from the interactive terminal (virsh runs `cd` only
    /// there).
    #[arg(skip)]
    pub interactive: bool,
}

impl Cli {
    /// Parses a command line (the program's name first) as virsh would: clap, then what
    /// clap cannot express (net-update's arguments given by name).
    pub fn parse_virsh<I, T>(argv: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        let mut cli = Cli::try_parse_from(data_kept_from_clap(help_flag_asked(help_topic_only(
            argv.clone(),
        ))))?;
        let leading_only = [
            &cli.debug,
            &cli.log,
            &cli.keepalive_interval,
            &cli.keepalive_count,
            &cli.escape,
        ];
        if cli.timing
            || cli.version.is_some()
            || cli.long_version
            || leading_only.iter().any(|option| option.is_some())
        {
            // Only before the first command (see the fields), as virsh takes them.
            return Err(Cli::command().error(
                ErrorKind::UnknownArgument,
                "-t, -v, -V, -d, -l, -k, -K and -e are taken only before the first command",
            ));
        }
        if let Command::NetUpdate(args) = &mut cli.command {
            UpdateArgs::check_order(argv.get(verb_at(&argv) + 1..).unwrap_or_default())?;
            args.place_named()?;
        }
        Ok(cli)
    }

    /// Where the daemon is: `--connect`, else a non-empty `KVNET_SOCKET`, else the
    /// default socket. A libvirt URI in `--connect` is refused unless it means the local
    /// system daemon, which kvnetd stands in for.
    ///
    /// With `-r`, the daemon's read-only socket beside it is used where there is one,
    /// as `virsh -r` uses libvirtd's `libvirt-sock-ro`: every local user may connect
    /// to it.
    pub fn connection(&self) -> Result<Connection, String> {
        let mut connection = self.read_write_connection()?;
        if self.read_only {
            let read_only = netd::api::read_only_socket(&connection.socket);
            if std::fs::symlink_metadata(&read_only).is_ok_and(|m| m.file_type().is_socket()) {
                connection.socket = read_only;
            }
        }
        Ok(connection)
    }

    fn read_write_connection(&self) -> Result<Connection, String> {
        let Some(connect) = &self.socket else {
            return Ok(Connection::to_socket(netd::api::default_client_socket()));
        };
        let Some(uri) = connect.to_str().filter(|text| text.contains("://")) else {
            return Ok(Connection::to_socket(connect.clone()));
        };
        match local_system_socket(uri) {
            Some(socket) => Ok(Connection {
                socket,
                uri: uri.to_owned(),
            }),
            None => Err(format!(
                "unsupported connection URI '{uri}': kvnet connects to the local system \
                 daemon (qemu:///system) or to a socket path"
            )),
        }
    }
}

/// `--connect=SOCKET` as one word, for clap: a socket named like an option (`-sock`)
/// or like a verb is then read as the value it is.
pub fn connect_option(socket: &std::ffi::OsStr) -> OsString {
    let mut word = OsString::from("--connect=");
    word.push(socket);
    word
}

/// Where the verb is in `argv`: after the program's name and the leading options as
/// main.rs hands them to clap (`-q`, `-r`, `--connect=SOCKET`), which is all that comes
/// before it.
fn verb_at(argv: &[OsString]) -> usize {
    let is_leading_option = |word: &OsString| {
        word == "-q" || word == "-r" || word.as_encoded_bytes().starts_with(b"--connect=")
    };
    1 + argv
        .iter()
        .skip(1)
        .take_while(|word| is_leading_option(word))
        .count()
}

/// `argv` with a command's `--help` (in an option's place, anywhere after the verb) as
/// `help VERB`, which prints virsh's help for it, as virsh reads `--help`.
fn help_flag_asked(argv: Vec<OsString>) -> Vec<OsString> {
    let at = verb_at(&argv);
    let after_verb = argv.get(at + 1..).unwrap_or_default();
    if !after_verb.iter().any(|word| word == "--help") {
        return argv;
    }
    let verbs = Cli::command();
    let Some(verb) = argv
        .get(at)
        .and_then(|word| word.to_str())
        .and_then(|name| verbs.find_subcommand(name))
    else {
        return argv;
    };
    let option = |word: &str| {
        let name = word.strip_prefix("--")?;
        let name = name.split_once('=').map_or(name, |(name, _)| name);
        verb.get_arguments()
            .find(|arg| arg.get_long() == Some(name))
    };
    // The command line without its `--help` flags, for clap when there is no help to
    // give after all.
    let mut without: Vec<OsString> = argv[..=at].to_vec();
    let (mut asked, mut unknown) = (false, false);
    let mut words = after_verb.iter();
    while let Some(word) = words.next() {
        match word.to_str() {
            // After `--`, every word is data.
            Some("--") | None => {
                without.push(word.clone());
                without.extend(words.by_ref().cloned());
            }
            Some("--help") => asked = true,
            // An option's value, whatever it looks like, `--help` too (joined to its
            // option, so that clap takes it as virsh does).
            Some(text)
                if !text.contains('=')
                    && option(text).is_some_and(|arg| arg.get_action().takes_values()) =>
            {
                match words.next() {
                    Some(value) if value == "--help" => {
                        without.push(format!("{text}=--help").into());
                    }
                    value => without.extend([Some(word), value].into_iter().flatten().cloned()),
                }
            }
            Some(text) => {
                // virsh refuses an option the command does not have before it shows
                // help: clap is left to.
                unknown |= is_option_word(text) && option(text).is_none();
                without.push(word.clone());
            }
        }
    }
    if !asked || unknown {
        return without;
    }
    let mut help = argv[..at].to_vec();
    help.extend([OsString::from("help"), OsString::from(verb.get_name())]);
    help
}

/// `argv` cut after `help`'s topic, as virsh reads it: no word after the topic, and no
/// option help does not have (virsh ignores those).
fn help_topic_only(argv: Vec<OsString>) -> Vec<OsString> {
    let at = verb_at(&argv);
    if argv.get(at).is_none_or(|verb| verb != "help") {
        return argv;
    }
    let mut kept = argv[..=at].to_vec();
    let mut words = argv.into_iter().skip(at + 1);
    while let Some(word) = words.next() {
        let bytes = word.as_encoded_bytes();
        let looks_like_option =
            bytes.len() > 2 && bytes.starts_with(b"--") && bytes[2].is_ascii_alphanumeric();
        match word.to_str() {
            // Its value is the topic; after an end of options, the next word is.
            Some("--command" | "--") => {
                kept.push(word);
                kept.extend(words.next());
                break;
            }
            Some(text) if text.starts_with("--command=") => {
                kept.push(word);
                break;
            }
            Some("--help") => kept.push(word),
            _ if looks_like_option => {}
            // The topic (a word that is not UTF-8 too, which clap then refuses).
            _ => {
                kept.push(word);
                break;
            }
        }
    }
    kept
}

/// `text` read as virsh reads an `int` option (`virStrToLong_i`, which is `strtol`): a
/// decimal integer after optional blanks and sign, all of it, within `i32`.
pub fn virsh_int(text: &str) -> Option<i32> {
    let number = text.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let digits = number.strip_prefix(['+', '-']).unwrap_or(number);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    number.strip_prefix('+').unwrap_or(number).parse().ok()
}

/// Whether virsh reads `word`, after the verb, as an option: `--` and a letter or digit
/// (`--all`, `--xpath=EXPR`). Any other word (`-dash`, `-1`, `---x`, `-`) is data: a
/// value, or a positional argument.
pub fn is_option_word(word: &str) -> bool {
    word.strip_prefix("--")
        .and_then(|name| name.chars().next())
        .is_some_and(|c| c.is_ascii_alphanumeric())
}

/// `argv` (the program name, clap's spellings of the global options, the verb and its
/// arguments) with the data words clap would read as short options (`-dash`) handed
/// to it so that it cannot: joined to their option (`--xpath=-x`), or, with the other
/// positional words (echo's `--string` ones among them), in order, after a `--`.
fn data_kept_from_clap(argv: Vec<OsString>) -> Vec<OsString> {
    let verb_at = verb_at(&argv);
    let Some(verb_name) = argv.get(verb_at).and_then(|word| word.to_str()) else {
        return argv;
    };
    let looks_like_flags = |word: &OsString| {
        word.to_str()
            .is_none_or(|text| text.starts_with('-') && text.len() > 1 && !is_option_word(text))
    };
    // echo's words given by name go in their place among the others, as virsh reads
    // them: clap would gather them apart.
    let echo_word = |word: &str| {
        let name = word.split_once('=').map_or(word, |(name, _)| name);
        verb_name == "echo" && ["--string", "--str"].contains(&name)
    };
    let (head, rest) = argv.split_at(verb_at + 1);
    // Most command lines have none: clap's command is built only for those that do
    // (building it again would add to every CLI call).
    if !rest
        .iter()
        .any(|word| looks_like_flags(word) || word.to_str().is_some_and(echo_word))
    {
        return argv;
    }
    let verbs = Cli::command();
    let Some(verb) = verbs.find_subcommand(verb_name) else {
        return argv;
    };
    let takes_value = |name: &str| {
        verb.get_arguments()
            .any(|arg| arg.get_long() == Some(name) && arg.get_action().takes_values())
    };
    let mut options: Vec<OsString> = Vec::new();
    let mut positionals: Vec<OsString> = Vec::new();
    let mut words = rest.iter();
    while let Some(word) = words.next() {
        let Some(text) = word.to_str().filter(|text| is_option_word(text)) else {
            if word == "--" {
                positionals.extend(words.by_ref().cloned());
            } else {
                positionals.push(word.clone());
            }
            continue;
        };
        if echo_word(text) {
            match (text.split_once('='), words.clone().next()) {
                (Some((_, value)), _) => positionals.push(value.into()),
                (None, Some(value)) => {
                    positionals.push(value.clone());
                    words.next();
                }
                // For clap to say it wants its value.
                (None, None) => options.push(word.clone()),
            }
            continue;
        }
        match words.clone().next() {
            Some(value) if !text.contains('=') && takes_value(&text[2..]) => {
                let mut joined = OsString::from(format!("{text}="));
                joined.push(value);
                options.push(joined);
                words.next();
            }
            _ => options.push(word.clone()),
        }
    }
    [
        head.to_vec(),
        options,
        vec![OsString::from("--")],
        positionals,
    ]
    .concat()
}

/// The daemon to talk to.
#[derive(Debug, PartialEq, Eq)]
pub struct Connection {
    /// Its socket.
    pub socket: PathBuf,
    /// The libvirt URI naming it, as `uri` prints it.
    pub uri: String,
}

impl Connection {
    /// The daemon on `socket`, named as libvirt names a system daemon on another
    /// socket (`network+unix:///system?socket=PATH`), which `--connect` accepts back.
    fn to_socket(socket: PathBuf) -> Connection {
        let uri = if socket == Path::new(DEFAULT_SOCKET) {
            "network:///system".to_owned()
        } else {
            format!(
                "network+unix:///system?socket={}",
                netd::api::percent_encode(socket.as_os_str().as_bytes(), b"/")
            )
        };
        Connection { socket, uri }
    }
}

/// The socket of a libvirt URI for the local system daemon: `DRIVER:///system` with no
/// host and no transport but the local `+unix`, and at most a `socket=PATH` parameter.
fn local_system_socket(uri: &str) -> Option<PathBuf> {
    let (scheme, rest) = uri.split_once("://")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (driver, transport) = scheme.split_once('+').unwrap_or((scheme, "unix"));
    let local = path == "/system"
        && !driver.is_empty()
        && driver.bytes().all(|b| b.is_ascii_lowercase())
        && transport == "unix";
    if !local {
        return None;
    }
    if query.is_empty() {
        return Some(PathBuf::from(DEFAULT_SOCKET));
    }
    let socket = percent_decode(query.strip_prefix("socket=")?)?;
    (!socket.is_empty()).then(|| PathBuf::from(OsString::from_vec(socket)))
}

/// The bytes of a URI parameter; `None` for a malformed `%` escape or a second
/// parameter (`&`).
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, after)) = rest.split_first() {
        rest = after;
        match byte {
            b'&' => return None,
            b'%' => {
                let hex = std::str::from_utf8(rest.get(..2)?).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                rest = &rest[2..];
            }
            _ => bytes.push(byte),
        }
    }
    Some(bytes)
}

/// A network named on the command line, positionally or as `--network` (virsh accepts both).
#[derive(Debug, Args)]
pub struct NetworkArg {
    /// Network name or UUID.
    #[arg(value_name = "NETWORK", required_unless_present = "network_option", value_parser = NonEmptyStringValueParser::new())]
    network: Option<String>,
    /// Network name or UUID.
    #[arg(long = "network", value_name = "NETWORK", conflicts_with = "network", value_parser = NonEmptyStringValueParser::new())]
    network_option: Option<String>,
}

impl NetworkArg {
    /// The name or UUID given.
    pub fn get(&self) -> &str {
        self.network
            .as_deref()
            .or(self.network_option.as_deref())
            .unwrap_or_default()
    }
}

/// An XML file named on the command line, positionally or as `--file`.
#[derive(Debug, Args)]
pub struct FileArg {
    /// File containing a network XML description.
    #[arg(value_name = "FILE", required_unless_present = "file_option")]
    file: Option<PathBuf>,
    /// File containing a network XML description.
    #[arg(long = "file", value_name = "FILE", conflicts_with = "file")]
    file_option: Option<PathBuf>,
    /// Accepted as in virsh; kvnetd checks every definition, not against libvirt's
    /// schema.
    #[arg(long)]
    pub validate: bool,
}

impl FileArg {
    /// The path given.
    pub fn get(&self) -> PathBuf {
        self.file
            .clone()
            .or_else(|| self.file_option.clone())
            .unwrap_or_default()
    }
}

/// A network port named on the command line by its UUID, positionally or as `--port`
/// (virsh accepts both).
#[derive(Debug, Args)]
pub struct PortArg {
    /// Port UUID.
    #[arg(value_name = "PORT", required_unless_present = "port_option", value_parser = NonEmptyStringValueParser::new())]
    port: Option<String>,
    /// Port UUID.
    #[arg(long = "port", value_name = "PORT", conflicts_with = "port", value_parser = NonEmptyStringValueParser::new())]
    port_option: Option<String>,
}

impl PortArg {
    /// The UUID given, as typed.
    pub fn get(&self) -> &str {
        self.port
            .as_deref()
            .or(self.port_option.as_deref())
            .unwrap_or_default()
    }
}

/// How `net-dumpxml` and `net-port-dumpxml` print their XML.
#[derive(Debug, Args)]
pub struct XmlOutput {
    /// Print only the nodes this XPath 1.0 expression selects, one per line.
    #[arg(long, value_name = "EXPR", conflicts_with = "json")]
    pub xpath: Option<String>,
    /// With --xpath: print the nodes inside one <nodes> element.
    #[arg(long)]
    pub wrap: bool,
    /// Print JSON (`{"xml": ...}`) instead.
    #[arg(long)]
    pub json: bool,
}

/// The verbs.
// The variants mirror virsh's `net-*` verb names one to one.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Define a persistent network from an XML file (or redefine an existing one).
    #[command(name = "net-define")]
    NetDefine(FileArg),
    /// Create and start a transient network from an XML file.
    #[command(name = "net-create")]
    NetCreate(FileArg),
    /// Remove a network's persistent definition (an active network keeps running, transient).
    #[command(name = "net-undefine")]
    NetUndefine(NetworkArg),
    /// Start a defined, inactive network.
    #[command(name = "net-start")]
    NetStart(NetworkArg),
    /// Stop a network (a transient network disappears).
    #[command(name = "net-destroy")]
    NetDestroy(NetworkArg),
    /// Mark a network to start when the daemon starts at boot.
    #[command(name = "net-autostart")]
    NetAutostart {
        #[command(flatten)]
        network: NetworkArg,
        /// Unmark it instead.
        #[arg(long)]
        disable: bool,
    },
    /// List networks.
    #[command(name = "net-list")]
    NetList(ListArgs),
    /// Show a network's basic information.
    #[command(name = "net-info")]
    NetInfo {
        #[command(flatten)]
        network: NetworkArg,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Print a network's XML.
    #[command(name = "net-dumpxml")]
    NetDumpxml {
        #[command(flatten)]
        network: NetworkArg,
        /// The persistent definition rather than the running one.
        #[arg(long)]
        inactive: bool,
        #[command(flatten)]
        output: XmlOutput,
    },
    /// Print a network's UUID.
    #[command(name = "net-uuid")]
    NetUuid {
        #[command(flatten)]
        network: NetworkArg,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Print the name of the network with this UUID.
    #[command(name = "net-name")]
    NetName {
        #[command(flatten)]
        network: NetworkArg,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Edit a network's persistent XML in $VISUAL or $EDITOR, then redefine it.
    #[command(name = "net-edit")]
    NetEdit(NetworkArg),
    /// Update part of a network's definition: live, in its persistent config, or both.
    #[command(name = "net-update")]
    NetUpdate(UpdateArgs),
    /// List a network's DHCP leases.
    #[command(name = "net-dhcp-leases")]
    NetDhcpLeases {
        #[command(flatten)]
        network: NetworkArg,
        /// Only the lease of this MAC address.
        #[arg(long, value_parser = NonEmptyStringValueParser::new())]
        mac: Option<String>,
        /// The MAC address without `--mac`, as virsh fills its next option with a bare word.
        #[arg(value_name = "MAC", conflicts_with = "mac", hide = true, value_parser = NonEmptyStringValueParser::new())]
        mac_word: Option<String>,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// List a running network's ports (guest NICs' taps on its bridge).
    #[command(name = "net-port-list")]
    NetPortList {
        #[command(flatten)]
        network: NetworkArg,
        /// The table (default).
        #[arg(long)]
        table: bool,
        /// UUIDs only, one per line.
        #[arg(long)]
        uuid: bool,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Create a port from an XML file: a persistent tap on the network's bridge.
    #[command(
        name = "net-port-create",
        mut_arg("file", |arg| arg.help("File containing a network port XML description")),
        mut_arg("file_option", |arg| arg.help("File containing a network port XML description"))
    )]
    NetPortCreate {
        #[command(flatten)]
        network: NetworkArg,
        #[command(flatten)]
        file: FileArg,
    },
    /// Print a network port's XML.
    #[command(name = "net-port-dumpxml")]
    NetPortDumpxml {
        #[command(flatten)]
        network: NetworkArg,
        #[command(flatten)]
        port: PortArg,
        #[command(flatten)]
        output: XmlOutput,
    },
    /// Delete a network port and its tap.
    #[command(name = "net-port-delete")]
    NetPortDelete {
        #[command(flatten)]
        network: NetworkArg,
        #[command(flatten)]
        port: PortArg,
    },
    /// Print the words given, joined by spaces (virsh's `echo`, which scripts use in
    /// command strings).
    #[command(name = "echo")]
    Echo(EchoArgs),
    /// Change the current directory (interactive mode only): to DIR, else to $HOME, else
    /// to /.
    #[command(name = "cd")]
    Cd {
        /// The directory.
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The directory, as <DIR>.
        #[arg(long = "dir", value_name = "DIR", conflicts_with = "dir")]
        dir_option: Option<PathBuf>,
    },
    /// Print the current directory.
    #[command(name = "pwd")]
    Pwd,
    /// Print virsh's help: every command, a group's (`help network`), or one command's.
    #[command(name = "help")]
    Help {
        /// The command or group.
        #[arg(value_name = "COMMAND")]
        topic: Option<String>,
        /// The command or group, as <COMMAND>.
        #[arg(long = "command", value_name = "COMMAND", conflicts_with = "topic")]
        topic_option: Option<String>,
    },
    /// Print the URI of the daemon connected to (after checking that it answers).
    #[command(name = "uri")]
    Uri {
        /// Print JSON (with the daemon's version) instead.
        #[arg(long)]
        json: bool,
    },
    /// List event types, or wait for network events to occur.
    #[command(name = "net-event")]
    NetEvent(EventArgs),
}

/// `net-event`'s arguments, as virsh 9.0 has them. `--timeout` is read as text and
/// checked when the verb runs, as virsh does (`--list` ignores it).
#[derive(Debug, Args)]
pub struct EventArgs {
    /// Only the events of this network (name or UUID).
    #[arg(value_name = "NETWORK", value_parser = NonEmptyStringValueParser::new())]
    network: Option<String>,
    /// Only the events of this network (name or UUID).
    #[arg(long = "network", value_name = "NETWORK", conflicts_with = "network", value_parser = NonEmptyStringValueParser::new())]
    network_option: Option<String>,
    /// Which event type to wait for (see --list); virsh takes it after the network too.
    #[arg(value_name = "EVENT", requires = "network", value_parser = NonEmptyStringValueParser::new())]
    event: Option<String>,
    /// Which event type to wait for (see --list).
    #[arg(long = "event", value_name = "EVENT", conflicts_with = "event", value_parser = NonEmptyStringValueParser::new())]
    event_option: Option<String>,
    /// Loop until timeout or interrupt, rather than one-shot.
    #[arg(long = "loop")]
    pub looping: bool,
    /// Timeout seconds; virsh takes it after the event type too.
    #[arg(value_name = "TIMEOUT", requires = "event", allow_hyphen_values = true)]
    timeout: Option<String>,
    /// Timeout seconds.
    #[arg(
        long = "timeout",
        value_name = "SECONDS",
        conflicts_with = "timeout",
        allow_hyphen_values = true
    )]
    timeout_option: Option<String>,
    /// List valid event types.
    #[arg(long)]
    pub list: bool,
    /// Show a timestamp for each printed event.
    #[arg(long)]
    pub timestamp: bool,
    /// Print one JSON object per event instead.
    #[arg(long)]
    pub json: bool,
}

impl EventArgs {
    /// The network given, if any.
    pub fn network(&self) -> Option<&str> {
        self.network.as_deref().or(self.network_option.as_deref())
    }

    /// The event type given, if any.
    pub fn event(&self) -> Option<&str> {
        self.event.as_deref().or(self.event_option.as_deref())
    }

    /// The timeout given, as typed (checked when the verb runs, as virsh does).
    pub fn timeout(&self) -> Option<&str> {
        self.timeout.as_deref().or(self.timeout_option.as_deref())
    }
}

/// `net-update`'s arguments, in virsh's order. As in virsh, any of the four may be given
/// by name instead (`--network default --command add ...`); the words fill the others in
/// order. clap cannot express that, so [`Cli::parse_virsh`] moves them into place.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Network name or UUID.
    #[arg(value_name = "NETWORK", value_parser = NonEmptyStringValueParser::new())]
    network: Option<String>,
    /// Type of update: add-first, add-last (add), delete or modify.
    #[arg(value_name = "COMMAND")]
    command: Option<String>,
    /// Which section to update: ip-dhcp-host, ip-dhcp-range, dns-host, dns-srv, dns-txt,
    /// portgroup or forward-interface.
    #[arg(value_name = "SECTION")]
    section: Option<String>,
    /// The XML element itself (if it starts with '<') or a file containing it.
    #[arg(value_name = "XML", value_parser = NonEmptyStringValueParser::new())]
    xml: Option<String>,
    /// As --parent-index.
    #[arg(value_name = "PARENT_INDEX")]
    parent_index_word: Option<String>,
    /// Network name or UUID.
    #[arg(long = "network", value_name = "NETWORK", value_parser = NonEmptyStringValueParser::new())]
    network_option: Option<String>,
    /// Type of update, as <COMMAND>.
    #[arg(long = "command", value_name = "COMMAND")]
    command_option: Option<String>,
    /// Which section to update, as <SECTION>.
    #[arg(long = "section", value_name = "SECTION")]
    section_option: Option<String>,
    /// The XML element or its file, as <XML>.
    #[arg(long = "xml", value_name = "XML", value_parser = NonEmptyStringValueParser::new())]
    xml_option: Option<String>,
    /// Which <ip> element (0-based) an ip-dhcp-* update changes; negative: the default.
    #[arg(long = "parent-index", value_name = "N", allow_hyphen_values = true)]
    parent_index_option: Option<String>,
    /// The parent index given, read as virsh reads an int (set by [`UpdateArgs::place_named`]).
    #[arg(skip)]
    pub parent_index: Option<i32>,
    /// Affect the persistent definition (next network start).
    #[arg(long)]
    pub config: bool,
    /// Affect the running network.
    #[arg(long)]
    pub live: bool,
    /// Affect the running network if active, else the persistent definition (default).
    #[arg(long, conflicts_with_all = ["config", "live"])]
    pub current: bool,
}

impl UpdateArgs {
    /// The arguments net-update takes by name or by place, in virsh's order.
    const BY_NAME_OR_PLACE: [&str; 5] = ["network", "command", "section", "xml", "parent-index"];

    /// Refuses, as virsh does, an argument given by name after a word took its place
    /// (`net-update default add ip-dhcp-host XML --network default`): virsh puts each
    /// word in the first place not yet taken as it reads it. `args` are those after the
    /// verb, as typed.
    fn check_order(args: &[OsString]) -> Result<(), clap::Error> {
        let mut taken = [false; Self::BY_NAME_OR_PLACE.len()];
        let mut words = args.iter().map(|arg| arg.to_str().unwrap_or_default());
        while let Some(word) = words.next() {
            if word == "--" {
                break;
            }
            let Some(option) = word.strip_prefix("--").filter(|_| is_option_word(word)) else {
                if let Some(place) = taken.iter_mut().find(|taken| !**taken) {
                    *place = true;
                }
                continue;
            };
            let (name, inline_value) = match option.split_once('=') {
                Some((name, _)) => (name, true),
                None => (option, false),
            };
            let Some(at) = Self::BY_NAME_OR_PLACE.iter().position(|n| *n == name) else {
                continue;
            };
            if taken[at] {
                let option = format!("--{name}");
                let mut error =
                    clap::Error::new(ErrorKind::ArgumentConflict).with_cmd(&Cli::command());
                error.insert(
                    ContextKind::InvalidArg,
                    ContextValue::String(option.clone()),
                );
                error.insert(ContextKind::PriorArg, ContextValue::String(option));
                return Err(error);
            }
            taken[at] = true;
            if !inline_value {
                words.next();
            }
        }
        Ok(())
    }

    /// Puts the arguments given by name in their place and the words in the others, in
    /// order; refused as virsh refuses a missing one or a word too many.
    fn place_named(&mut self) -> Result<(), clap::Error> {
        let mut words = [
            self.network.take(),
            self.command.take(),
            self.section.take(),
            self.xml.take(),
            self.parent_index_word.take(),
        ]
        .into_iter()
        .flatten();
        let named = [
            (&mut self.network, self.network_option.take(), "<NETWORK>"),
            (&mut self.command, self.command_option.take(), "<COMMAND>"),
            (&mut self.section, self.section_option.take(), "<SECTION>"),
            (&mut self.xml, self.xml_option.take(), "<XML>"),
        ];
        let mut missing = Vec::new();
        for (slot, by_name, placeholder) in named {
            *slot = by_name.or_else(|| words.next());
            if slot.is_none() {
                missing.push(placeholder.to_owned());
            }
        }
        let refusal = |kind, context: ContextValue| {
            let mut error = clap::Error::new(kind).with_cmd(&Cli::command());
            error.insert(ContextKind::InvalidArg, context);
            error
        };
        // A fifth word is the parent index, unless given by name.
        let index_word = match self.parent_index_option.take() {
            None => words.next(),
            given => given,
        };
        if let Some(extra) = words.next() {
            return Err(refusal(
                ErrorKind::UnknownArgument,
                ContextValue::String(extra),
            ));
        }
        if !missing.is_empty() {
            return Err(refusal(
                ErrorKind::MissingRequiredArgument,
                ContextValue::Strings(missing),
            ));
        }
        if let Some(word) = index_word {
            let Some(index) = virsh_int(&word) else {
                let mut error = refusal(
                    ErrorKind::ValueValidation,
                    ContextValue::String("--parent-index <N>".to_owned()),
                );
                error.insert(ContextKind::InvalidValue, ContextValue::String(word));
                return Err(error);
            };
            self.parent_index = Some(index);
        }
        Ok(())
    }

    /// The network's name or UUID.
    pub fn network(&self) -> &str {
        self.network.as_deref().unwrap_or_default()
    }

    /// The type of update, as typed.
    pub fn command(&self) -> &str {
        self.command.as_deref().unwrap_or_default()
    }

    /// The section to update, as typed.
    pub fn section(&self) -> &str {
        self.section.as_deref().unwrap_or_default()
    }

    /// The XML element, or the file that holds it.
    pub fn xml(&self) -> &str {
        self.xml.as_deref().unwrap_or_default()
    }
}

/// `net-list`'s filters and formats. As in virsh, both flags of a pair mean no filter
/// (and `--all` wins over `--inactive`).
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Inactive networks only.
    #[arg(long)]
    pub inactive: bool,
    /// Active and inactive networks.
    #[arg(long)]
    pub all: bool,
    /// Only networks marked autostart.
    #[arg(long)]
    pub autostart: bool,
    /// Only networks not marked autostart.
    #[arg(long)]
    pub no_autostart: bool,
    /// Only persistent networks.
    #[arg(long)]
    pub persistent: bool,
    /// Only transient networks.
    #[arg(long)]
    pub transient: bool,
    /// The table (default).
    #[arg(long)]
    pub table: bool,
    /// Names only, one per line.
    #[arg(long)]
    pub name: bool,
    /// UUIDs only, one per line.
    #[arg(long)]
    pub uuid: bool,
    /// Add a Title column.
    #[arg(long)]
    pub title: bool,
    /// Print JSON instead.
    #[arg(long)]
    pub json: bool,
}

/// `echo`'s words and how they are quoted.
#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Quote each word for a POSIX shell where it needs it.
    #[arg(long, conflicts_with_all = ["xml", "split"])]
    pub shell: bool,
    /// Escape each word for XML.
    #[arg(long, conflicts_with = "split")]
    pub xml: bool,
    /// Split each word at ',' (',,' stands for a comma), one line per piece.
    #[arg(long)]
    pub split: bool,
    /// Print to stderr, as an error line.
    #[arg(long)]
    pub err: bool,
    /// The words.
    #[arg(value_name = "STRING")]
    words: Vec<String>,
    /// A word, as <STRING>.
    #[arg(long = "string", alias = "str", value_name = "STRING")]
    word_options: Vec<String>,
}

impl EchoArgs {
    /// The words given, positionally, then by name.
    pub fn words(&self) -> impl Iterator<Item = &str> {
        self.words
            .iter()
            .chain(&self.word_options)
            .map(String::as_str)
    }
}

impl Command {
    /// Whether the verb was asked for JSON (its output is then JSON only).
    pub fn prints_json(&self) -> bool {
        match self {
            Command::NetList(args) => args.json,
            Command::NetDumpxml { output, .. } | Command::NetPortDumpxml { output, .. } => {
                output.json
            }
            Command::NetInfo { json, .. }
            | Command::NetPortList { json, .. }
            | Command::NetUuid { json, .. }
            | Command::NetName { json, .. }
            | Command::NetDhcpLeases { json, .. }
            | Command::Uri { json } => *json,
            Command::NetEvent(args) => args.json,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_uris_of_the_local_system_daemon_are_kvnetd() {
        for uri in ["qemu:///system", "network:///system", "qemu+unix:///system"] {
            assert_eq!(
                local_system_socket(uri),
                Some(PathBuf::from(DEFAULT_SOCKET)),
                "{uri}"
            );
        }
        for uri in [
            "qemu:///session",
            "qemu+ssh://host/system",
            "qemu://host/system",
            "qemu:///system?mode=legacy",
            "qemu:///system?socket=",
            "qemu:///system?socket=/x&mode=legacy",
            "qemu:///system?socket=/x%2",
            ":///system",
            "qemu+tcp:///system",
        ] {
            assert_eq!(local_system_socket(uri), None, "{uri}");
        }
    }

    #[test]
    fn another_socket_is_named_by_a_uri_that_connects_back_to_it() {
        let default = Connection::to_socket(PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(default.uri, "network:///system");
        let socket = PathBuf::from("/tmp/my dir/kvnetd%.sock");
        let other = Connection::to_socket(socket.clone());
        assert_eq!(
            other.uri,
            "network+unix:///system?socket=/tmp/my%20dir/kvnetd%25.sock"
        );
        assert_eq!(local_system_socket(&other.uri), Some(socket));
    }

    #[test]
    fn help_reads_its_topic_after_an_end_of_options() {
        let words = |text: &str| text.split(' ').map(OsString::from).collect::<Vec<_>>();
        for (given, read) in [
            ("kvnet help -- net-list extra", "kvnet help -- net-list"),
            ("kvnet -q help net-list extra", "kvnet -q help net-list"),
            // Options help does not have are left out, as virsh ignores them.
            ("kvnet help --abc net-list", "kvnet help net-list"),
            ("kvnet help --abc", "kvnet help"),
            (
                "kvnet help --command net-list x",
                "kvnet help --command net-list",
            ),
        ] {
            assert_eq!(help_topic_only(words(given)), words(read), "{given}");
        }
    }

    #[test]
    fn ints_are_read_as_strtol_reads_them() {
        for (text, value) in [
            ("0", 0),
            (" 0", 0),
            ("\t1", 1),
            ("+5", 5),
            ("-1", -1),
            ("007", 7),
            ("2147483647", i32::MAX),
            ("-2147483648", i32::MIN),
        ] {
            assert_eq!(virsh_int(text), Some(value), "{text:?}");
        }
        for text in [
            "",
            " ",
            "1 ",
            "0x1",
            "--1",
            "+-1",
            "- 1",
            "2147483648",
            "1e3",
        ] {
            assert_eq!(virsh_int(text), None, "{text:?}");
        }
    }

    /// virsh puts each word in the first place not yet taken as it reads it, so a name
    /// given after a word took its place is "already seen"; before, the words go around it.
    #[test]
    fn net_update_takes_arguments_by_name_or_place_in_virshs_order() {
        let parse = |args: &[&str]| {
            Cli::parse_virsh(
                ["kvnet", "--connect=/x.sock", "net-update"]
                    .iter()
                    .chain(args),
            )
        };
        let Ok(Cli {
            command: Command::NetUpdate(args),
            ..
        }) = parse(&["--network", "n", "add", "dns-host", "<host/>", " 1"])
        else {
            panic!("refused");
        };
        assert_eq!(
            (args.network(), args.command(), args.parent_index),
            ("n", "add", Some(1))
        );
        for late in [
            &["n", "add", "dns-host", "<host/>", "--network", "n"][..],
            &["n", "add", "dns-host", "<host/>", "--xml=<host/>"],
            &[
                "n",
                "add",
                "dns-host",
                "<host/>",
                "0",
                "--parent-index",
                "0",
            ],
        ] {
            let error = parse(late).expect_err("accepted");
            assert_eq!(error.kind(), ErrorKind::ArgumentConflict, "{late:?}");
        }
    }
}
