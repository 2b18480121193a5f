//! The `net-*` verbs.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use netd::api::ErrorKind;
use netd::api::client::{self, Client, Next};
use netd::api::types::{EventRecord, NetworkSummary, UpdateRequest};
use netd::virsh;
use netd::xml::{UpdateCommand, UpdateSection};

use super::interrupt::Interrupt;
use super::{Failure, failed_to_get, system_message};
use crate::cli::{EventArgs, ListArgs, UpdateArgs};
use crate::output;

pub(super) fn read_file(path: &Path) -> Result<String, Failure> {
    use std::io::Read;
    let failed = |action: &str, e: &std::io::Error| {
        Failure::msg(format!(
            "Failed to {action} file '{}': {}",
            path.display(),
            system_message(e)
        ))
    };
    let file = std::fs::File::open(path).map_err(|e| failed("open", &e))?;
    let mut bytes = Vec::new();
    file.take(MAX_XML_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| failed("read", &e))?;
    if bytes.len() as u64 > MAX_XML_FILE {
        // virsh's limit (VSH_MAX_XML_FILE), with the error it gives (EFBIG).
        let too_large = std::io::Error::from(nix::errno::Errno::EFBIG);
        return Err(failed("read", &too_large));
    }
    String::from_utf8(bytes).map_err(|_| {
        // libxml2 would convert another declared encoding; kvnet reads UTF-8.
        Failure::msg(format!(
            "Failed to read file '{}': it is not UTF-8 (save it as UTF-8)",
            path.display()
        ))
    })
}

/// The largest XML file virsh reads: 10 MiB.
const MAX_XML_FILE: u64 = 10 << 20;

/// `net-define` (`transient` false) and `net-create` (`transient` true).
pub fn from_file(
    client: &Client,
    file: &Path,
    transient: bool,
    quiet: bool,
) -> Result<String, Failure> {
    let xml = read_file(file)?;
    let (verb, done) = if transient {
        ("create", "created")
    } else {
        ("define", "defined")
    };
    let result = if transient {
        client.create(&xml)
    } else {
        client.define(&xml)
    };
    let context = format!("Failed to {verb} network from {}", file.display());
    let net = result.map_err(|e| Failure::call(context, None, e))?;
    let line = format!("Network {} {done} from {}", net.name, file.display());
    Ok(output::message(&line, quiet))
}

/// A verb that changes one network, in virsh's shape: `context` heads the error lines,
/// and the success line is `Network NETWORK <done>`, with the name or UUID as given.
fn change(
    network: &str,
    context: String,
    result: Result<NetworkSummary, client::Error>,
    done: &str,
    quiet: bool,
) -> Result<String, Failure> {
    result.map_err(|e| Failure::call(context, Some(network), e))?;
    Ok(output::message(&format!("Network {network} {done}"), quiet))
}

pub fn undefine(client: &Client, network: &str, quiet: bool) -> Result<String, Failure> {
    let context = format!("Failed to undefine network {network}");
    change(
        network,
        context,
        client.undefine(network),
        "has been undefined",
        quiet,
    )
}

pub fn start(client: &Client, network: &str, quiet: bool) -> Result<String, Failure> {
    let context = format!("Failed to start network {network}");
    change(network, context, client.start(network), "started", quiet)
}

pub fn destroy(client: &Client, network: &str, quiet: bool) -> Result<String, Failure> {
    let context = format!("Failed to destroy network {network}");
    change(network, context, client.stop(network), "destroyed", quiet)
}

pub fn autostart(
    client: &Client,
    network: &str,
    enable: bool,
    quiet: bool,
) -> Result<String, Failure> {
    let (verb, done) = if enable {
        ("mark", "marked as autostarted")
    } else {
        ("unmark", "unmarked as autostarted")
    };
    let context = format!("failed to {verb} network {network} as autostarted");
    change(
        network,
        context,
        client.set_autostart(network, enable),
        done,
        quiet,
    )
}

/// Whether a network passes `net-list`'s filters (default: active only). As in virsh,
/// `--all` wins over `--inactive`, and neither or both flags of the other pairs mean
/// no filter.
fn listed(net: &NetworkSummary, args: &ListArgs) -> bool {
    let state = args.all || net.active != args.inactive;
    let autostart = args.autostart == args.no_autostart || net.autostart == args.autostart;
    let persistence = args.persistent == args.transient || net.persistent == args.persistent;
    state && autostart && persistence
}

pub fn list(client: &Client, args: &ListArgs, quiet: bool) -> Result<String, Failure> {
    if [args.table, args.name, args.uuid]
        .iter()
        .filter(|set| **set)
        .count()
        > 1
    {
        return Err(Failure::msg(
            "Only one argument from --table, --name and --uuid may be specified.",
        ));
    }
    let mut networks = client
        .list()
        .map_err(|e| Failure::call("failed to list networks", None, e))?;
    networks.retain(|net| listed(net, args));
    // virsh sorts by name with strcasecmp (the table and name lists sort again; on sorted
    // input that pass is linear).
    networks.sort_by(|a, b| netd::virsh::ascii_casecmp(&a.name, &b.name));
    if args.json {
        // --name and --uuid: only those, as a list.
        let listed: Vec<String> = match (args.name, args.uuid) {
            (true, _) => networks.iter().map(|net| net.name.clone()).collect(),
            (_, true) => networks.iter().map(|net| net.uuid.to_string()).collect(),
            _ => return Ok(output::json(&networks)),
        };
        return Ok(output::json(&listed));
    }
    if args.name || args.uuid {
        return Ok(output::network_names(&networks, args.uuid, quiet));
    }
    Ok(output::network_table(&networks, args.title, quiet))
}

pub fn info(client: &Client, network: &str, json: bool, quiet: bool) -> Result<String, Failure> {
    let net = client
        .get(network)
        .map_err(|e| Failure::lookup(network, e))?;
    Ok(if json {
        output::json(&net)
    } else {
        output::network_info(&net, quiet)
    })
}

/// `net-dumpxml`'s `--xpath EXPR` and `--wrap`.
#[derive(Debug, Clone, Copy)]
pub struct Select<'a> {
    pub xpath: Option<&'a str>,
    pub wrap: bool,
}

impl Select<'_> {
    /// The selection the command line asked for.
    pub fn of(output: &crate::cli::XmlOutput) -> Select<'_> {
        Select {
            xpath: output.xpath.as_deref(),
            wrap: output.wrap,
        }
    }
}

/// `net-dumpxml`. With `--xpath`, only the nodes EXPR selects, as virsh 9.0 prints
/// them (`crate::xpath`); `--wrap` means nothing without it.
pub fn dumpxml(
    client: &Client,
    network: &str,
    inactive: bool,
    select: Select,
    json: bool,
    quiet: bool,
) -> Result<String, Failure> {
    let xml = client
        .xml(network, inactive)
        .map_err(|e| Failure::lookup(network, e))?;
    print_xml(xml, select, json, quiet)
}

/// An XML document as `*-dumpxml` prints it: whole, or with `--xpath` only the nodes
/// EXPR selects, as virsh 9.0 prints them (`crate::xpath`); `--wrap` means nothing
/// without it. With `--json`, the whole document as a string.
pub(super) fn print_xml(
    xml: String,
    select: Select,
    json: bool,
    quiet: bool,
) -> Result<String, Failure> {
    if select.xpath == Some("") {
        // virsh refuses an empty expression without a word, once the lookups are done.
        return Err(Failure::silent());
    }
    if json {
        return Ok(output::json(&serde_json::json!({ "xml": xml })));
    }
    let Some(expr) = select.xpath else {
        return Ok(output::finish(xml, quiet));
    };
    let dump =
        crate::xpath::dump(&xml, expr, select.wrap).map_err(|e| Failure::msg(e.to_string()))?;
    // What libxml2 itself writes to stderr about an expression it cannot evaluate;
    // virsh then prints no results and succeeds.
    output::to_stderr(&dump.stderr);
    Ok(output::finish(dump.stdout, quiet))
}

pub fn uuid(client: &Client, network: &str, json: bool, quiet: bool) -> Result<String, Failure> {
    let failed = |e| Failure::lookup(network, e);
    let found = client.get(network).map_err(failed)?;
    // virsh looks networks up here by name only; the daemon tries a UUID-like argument
    // as a UUID first, and may have found another network by it.
    let net = if found.name == network {
        found
    } else {
        let all = client.list().map_err(failed)?;
        all.into_iter()
            .find(|net| net.name == network)
            .ok_or_else(|| not_found(network, "name"))?
    };
    Ok(if json {
        output::json(&serde_json::json!({ "uuid": net.uuid }))
    } else {
        output::finish(format!("{}\n", net.uuid), quiet)
    })
}

pub fn name(client: &Client, uuid: &str, json: bool, quiet: bool) -> Result<String, Failure> {
    // virsh looks networks up here by UUID only, and only for a string of a UUID's 36
    // characters; anything else is not found, one line.
    let parsed = uuid
        .parse::<uuid::Uuid>()
        .ok()
        .filter(|_| uuid.len() == uuid::fmt::Hyphenated::LENGTH);
    let Some(parsed) = parsed else {
        return Err(Failure::msg(failed_to_get(uuid)));
    };
    // libvirt names the UUID as it formats one: lower case.
    let missing = || {
        Failure::two(
            failed_to_get(uuid),
            format!("Network not found: no network with matching uuid '{parsed}'"),
        )
    };
    let net = match client.get(uuid) {
        Err(client::Error::Api(api)) if api.kind == ErrorKind::NotFound => {
            return Err(missing());
        }
        other => other.map_err(|e| Failure::lookup(uuid, e))?,
    };
    if net.uuid != parsed {
        return Err(missing());
    }
    Ok(if json {
        output::json(&serde_json::json!({ "name": net.name }))
    } else {
        output::finish(format!("{}\n", net.name), quiet)
    })
}

/// virsh's failed lookup of `key` by `field` (`name` or `uuid`).
fn not_found(key: &str, field: &str) -> Failure {
    Failure::two(
        failed_to_get(key),
        format!("Network not found: no network with matching {field} '{key}'"),
    )
}

/// `net-edit`: dumpxml --inactive, edit, and define, as virsh's `virsh-edit.c` does: an
/// unchanged file changes nothing; a definition changed (or removed) by someone else
/// while the editor ran is not overwritten; and an edit that cannot be defined changes
/// nothing. On a terminal, virsh's `Try again? [y,n,f,?]` then offers to edit again or
/// to define anyway; otherwise the command fails.
pub fn edit(client: &Client, network: &str, quiet: bool) -> Result<String, Failure> {
    let get_failed = |e| Failure::lookup(network, e);
    let mut current = client.xml(network, true).map_err(get_failed)?;
    // The network is looked at again by its UUID: a rename in the edit keeps it.
    let original_def = netd::xml::NetworkDef::from_stored_xml(&current).ok();
    let name = original_def
        .as_ref()
        .map_or_else(|| network.to_owned(), |def| def.name.clone());
    let key = original_def
        .and_then(|def| def.uuid)
        .map_or_else(|| network.to_owned(), |uuid| uuid.to_string());
    // Only the user may read the definition being edited, as virsh's 0600 file.
    let dir = tempfile::Builder::new()
        .prefix("kvnet-edit")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(|e| Failure::msg(format!("cannot create a temporary directory: {e}")))?;
    let path = dir
        .path()
        .join(format!("{}.xml", sanitize_file_name(network)));
    std::fs::write(&path, &current)
        .map_err(|e| Failure::msg(format!("cannot write {}: {e}", path.display())))?;
    'edit: loop {
        run_editor(&path)?;
        // A file that cannot be read back (saved in another encoding, too large,
        // deleted) is a failed edit too, the file kept for another go.
        let edited = loop {
            match read_file(&path) {
                Ok(edited) => break edited,
                Err(failure) => {
                    if edit_again(failure, "Failed.")? {
                        continue 'edit;
                    }
                }
            }
        };
        if edited == current {
            // virsh names the network here, whatever identified it.
            return Ok(output::message(
                &format!("Network {name} XML configuration not changed."),
                quiet,
            ));
        }
        loop {
            let reread = client.xml(&key, true).map_err(get_failed)?;
            let changed = "The XML configuration was changed by another user.";
            let (failure, question) = if reread != current {
                current = reread;
                (Failure::msg(changed), changed)
            } else {
                match client.define(&edited) {
                    Ok(net) => {
                        return Ok(output::message(
                            &format!("Network {} XML configuration edited.", net.name),
                            quiet,
                        ));
                    }
                    Err(e) => (
                        Failure::call(
                            format!("Failed to define network from {}", path.display()),
                            None,
                            e,
                        ),
                        "Failed.",
                    ),
                }
            };
            if edit_again(failure, question)? {
                continue 'edit;
            }
        }
    }
}

/// After a failed `net-edit` step: `Ok(true)` to edit again, `Ok(false)` to try the
/// step again as it is (virsh's "force"), or the error that ends the edit.
fn edit_again(failure: Failure, question: &str) -> Result<bool, Failure> {
    match ask_reedit(&failure, question)? {
        Reedit::Edit => Ok(true),
        Reedit::Define => Ok(false),
        Reedit::Stop => Err(failure),
        // Shown already: virsh shows it once.
        Reedit::GaveUp => Err(Failure::silent()),
    }
}

/// What to do after a failed `net-edit` step.
enum Reedit {
    /// Edit the file again.
    Edit,
    /// Define it anyway (virsh's "force").
    Define,
    /// Not on a terminal: fail, reporting the failure.
    Stop,
    /// The user said no, with the failure shown already.
    GaveUp,
}

/// virsh's `vshAskReedit`: on a terminal, shows `failure` and asks `question` what to
/// do, taking a key as it is typed (Ctrl-C is a key there too, as in virsh: it does not
/// end kvnet's interactive terminal); elsewhere the edit stops.
fn ask_reedit(failure: &Failure, question: &str) -> Result<Reedit, Failure> {
    use std::io::{IsTerminal, Write};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Ok(Reedit::Stop);
    }
    if question != failure.lines().join(" ") {
        crate::usage::print_errors(failure.lines());
    }
    let failed = |e: std::io::Error| Failure::msg(format!("cannot ask whether to edit again: {e}"));
    let mut stdout = std::io::stdout();
    let keys = Keys::raw(&stdin).map_err(failed)?;
    let answer = loop {
        // `\r`: after a key that is no answer, the question is written over itself.
        write!(stdout, "\r{question} Try again? [y,n,f,?]: ")
            .and_then(|()| stdout.flush())
            .map_err(failed)?;
        let Some(key) = keys.read().map_err(failed)? else {
            break Reedit::GaveUp;
        };
        match key.to_ascii_lowercase() {
            b'y' => break Reedit::Edit,
            b'n' => break Reedit::GaveUp,
            b'f' => break Reedit::Define,
            b'?' => writeln!(
                stdout,
                "\ny - yes, start editor again\n\
                 n - no, throw away my changes\n\
                 f - force, try to redefine again\n\
                 ? - print this help"
            )
            .map_err(failed)?,
            _ => {}
        }
    };
    drop(keys);
    writeln!(stdout).map_err(failed)?;
    Ok(answer)
}

/// The terminal on stdin taking keys as they are typed, unechoed, Ctrl-C a key too
/// (virsh's `vshTTYMakeRaw`), until dropped. Output is still processed (`\n` is a new
/// line), and keys typed ahead are kept.
struct Keys<'a> {
    stdin: &'a std::io::Stdin,
    as_it_was: nix::sys::termios::Termios,
}

impl<'a> Keys<'a> {
    fn raw(stdin: &'a std::io::Stdin) -> std::io::Result<Self> {
        use nix::sys::termios::{OutputFlags, SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let as_it_was = tcgetattr(stdin)?;
        let mut raw = as_it_was.clone();
        cfmakeraw(&mut raw);
        raw.output_flags |= OutputFlags::OPOST;
        tcsetattr(stdin, SetArg::TCSANOW, &raw)?;
        Ok(Keys { stdin, as_it_was })
    }

    /// The next key; `None` at the end of input. Read from the descriptor itself:
    /// stdin's buffer would keep keys typed ahead from the interactive terminal.
    fn read(&self) -> std::io::Result<Option<u8>> {
        let mut key = [0u8];
        loop {
            match nix::unistd::read(self.stdin, &mut key) {
                Err(nix::errno::Errno::EINTR) => continue,
                read => return Ok((read? == 1).then_some(key[0])),
            }
        }
    }
}

impl Drop for Keys<'_> {
    fn drop(&mut self) {
        let restored = nix::sys::termios::tcsetattr(
            self.stdin,
            nix::sys::termios::SetArg::TCSANOW,
            &self.as_it_was,
        );
        if let Err(e) = restored {
            tracing::warn!("cannot set the terminal back as it was: {e}");
        }
    }
}

/// Runs `$VISUAL`, `$EDITOR` or `vi` on `path`.
fn run_editor(path: &std::path::Path) -> Result<(), Failure> {
    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "vi".to_owned());
    // Like virsh, the editor variable may carry arguments: run it through the shell.
    let status = Process::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("kvnet-edit")
        .arg(path)
        .status()
        .map_err(|e| Failure::msg(format!("cannot run editor '{editor}': {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure::msg(format!(
            "editor '{editor}' exited with {status}; nothing changed"
        )))
    }
}

fn sanitize_file_name(network: &str) -> String {
    network
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub fn dhcp_leases(
    client: &Client,
    network: &str,
    mac: Option<&str>,
    json: bool,
    quiet: bool,
) -> Result<String, Failure> {
    // As virsh: the network is looked up first, then the MAC checked, and compared as an
    // address (`52:54:0:7b:35:93` is `52:54:00:7b:35:93`, as virMacAddrCompare has it).
    let mut leases = client.leases(network).map_err(|e| {
        Failure::call(
            format!("Failed to get leases info for {network}"),
            Some(network),
            e,
        )
    })?;
    if let Some(mac) = mac {
        let Ok(wanted) = mac.parse::<netd::xml::MacAddr>() else {
            return Err(Failure::two(
                format!("Failed to get leases info for {network}"),
                format!("invalid MAC address: {mac}"),
            ));
        };
        leases.retain(|lease| lease.mac.parse::<netd::xml::MacAddr>().ok() == Some(wanted));
    }
    Ok(if json {
        // In the table's order (by MAC, as virsh sorts it), whatever the daemon's.
        leases.sort_by(|a, b| netd::virsh::ascii_casecmp(&a.mac, &b.mac));
        output::lease_json(&leases)
    } else {
        output::lease_table(&leases, quiet)
    })
}

/// `net-update`. Like virsh, the command and section names are checked before the XML
/// argument is read (as a file unless it starts with '<'), and the success line has no
/// blank line after it: virsh prints it without a newline of its own.
pub fn update(client: &Client, args: &UpdateArgs, quiet: bool) -> Result<String, Failure> {
    let network = args.network();
    // virsh looks the network up before it reads the command, section or file.
    client
        .get(network)
        .map_err(|e| Failure::lookup(network, e))?;
    let command: UpdateCommand = args
        .command()
        .parse()
        .map_err(|e: netd::xml::Error| Failure::msg(e.to_string()))?;
    let section: UpdateSection = args
        .section()
        .parse()
        .map_err(|e: netd::xml::Error| Failure::msg(e.to_string()))?;
    let xml = if args.xml().starts_with('<') {
        args.xml().to_owned()
    } else {
        read_file(Path::new(args.xml()))?
    };
    let request = UpdateRequest {
        command: command.as_str().to_owned(),
        section: section.as_str().to_owned(),
        xml,
        parent_index: args
            .parent_index
            .and_then(|index| usize::try_from(index).ok()),
        live: args.live,
        config: args.config,
    };
    let updated = client.update(network, &request).map_err(|e| {
        Failure::call(
            format!("Failed to update network {network}"),
            Some(network),
            e,
        )
    })?;
    let affected = match (updated.config, updated.live) {
        (true, true) => "persistent config and live state",
        (true, false) => "persistent config",
        (false, _) => "live state",
    };
    // vshPrintExtra (nothing with -q) without "\n", then virsh's end-of-command "\n".
    Ok(if quiet {
        String::new()
    } else {
        output::finish(
            format!("Updated network {} {affected}", updated.name),
            quiet,
        )
    })
}

/// `net-event`: with `--list` the event types; else subscribes (to one network's events
/// with `--network`), then prints each event as it comes, until the first one, or with
/// `--loop` until `--timeout` seconds have passed or Ctrl-C. Like virsh it ends with
/// `events received: N` (after `event loop timed out` or `event loop interrupted`) and
/// fails when none came. With `--json`, each event is one line of JSON and nothing else
/// is printed. `uri` names the daemon when it goes away.
pub fn event(client: &Client, uri: &str, args: &EventArgs, quiet: bool) -> Result<String, Failure> {
    if args.list {
        return Ok(if args.json {
            output::json(&virsh::NET_EVENT_TYPES)
        } else {
            let types: String = virsh::NET_EVENT_TYPES
                .iter()
                .map(|name| format!("{name}\n"))
                .collect();
            output::finish(types, quiet)
        });
    }
    let Some(event) = args.event() else {
        return Err(Failure::msg("either --list or --event <type> is required"));
    };
    if !virsh::NET_EVENT_TYPES.contains(&event) {
        return Err(Failure::msg(format!("unknown event type {event}")));
    }
    let timeout = args.timeout().map(event_timeout).transpose()?;
    // As virsh: the timeout runs from here, and Ctrl-C is caught before subscribing.
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    let interrupt = Interrupt::catch()
        .map_err(|e| Failure::msg(format!("cannot catch SIGINT: {}", e.desc())))?;
    let network = args.network();
    let mut events = client
        .events(network)
        .map_err(|e| Failure::call("failed to register for network events", network, e))?;
    let mut stdout = std::io::stdout();
    let mut received = 0u64;
    let end = loop {
        let next = events
            .next(deadline, Some(interrupt.as_fd()))
            .map_err(|e| Failure::call("failed to receive network events", network, e))?;
        let text = match next {
            Next::Record(EventRecord::Lifecycle(event)) => {
                received += 1;
                if args.json {
                    json_line(&EventRecord::Lifecycle(event))
                } else {
                    let time = args.timestamp.then(|| {
                        chrono::DateTime::parse_from_rfc3339(&event.time)
                            .map_or_else(|_| chrono::Utc::now(), |time| time.to_utc())
                    });
                    virsh::net_event_lifecycle(&event.network, event.event, time)
                }
            }
            Next::Record(EventRecord::Missed { count }) if args.json => {
                json_line(&EventRecord::Missed { count })
            }
            Next::Record(EventRecord::Missed { count }) => {
                output::to_stderr(&format!(
                    "warning: kvnetd dropped {count} network events that this client did not read in time\n"
                ));
                continue;
            }
            Next::Record(EventRecord::Unknown) => continue,
            Next::TimedOut => break "event loop timed out\n",
            Next::Interrupted => break "event loop interrupted\n",
            Next::Ended => {
                // virsh's lines when the daemon goes away: the count, then the error.
                if !args.json {
                    print_now(&mut stdout, &format!("events received: {received}\n"));
                }
                return Err(Failure::msg(format!(
                    "Disconnected from {uri} due to end of file"
                )));
            }
        };
        // A reader that went away (`| head -1`) ends the wait: no one would see more.
        if !print_now(&mut stdout, &text) {
            return Err(Failure::silent());
        }
        if !args.looping {
            break "";
        }
    };
    if args.json {
        return if received > 0 {
            Ok(String::new())
        } else {
            Err(Failure::silent())
        };
    }
    let summary = format!("{end}events received: {received}\n");
    if received > 0 {
        Ok(output::finish(summary, quiet))
    } else {
        print_now(&mut stdout, &summary);
        Err(Failure::silent())
    }
}

/// Writes and flushes `text` (events are printed as they come, also into a pipe);
/// false if stdout is gone.
fn print_now(stdout: &mut std::io::Stdout, text: &str) -> bool {
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .is_ok()
}

/// One record as a line of JSON.
fn json_line(record: &EventRecord) -> String {
    let mut line = serde_json::to_string(record).unwrap_or_default();
    line.push('\n');
    line
}

/// `--timeout` as virsh reads it (`vshCommandOptTimeoutToMs`): a decimal integer (after
/// optional blanks and sign, `strtol`'s way) of seconds from 1 to `INT_MAX / 1000`.
fn event_timeout(text: &str) -> Result<Duration, Failure> {
    crate::cli::virsh_int(text)
        .filter(|seconds| (1..=i32::MAX / 1000).contains(seconds))
        .and_then(|seconds| u64::try_from(seconds).ok())
        .map(Duration::from_secs)
        .ok_or_else(|| {
            Failure::msg(format!(
                "Numeric value '{text}' for <timeout> option is malformed or out of range"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_timeouts_are_read_as_virsh_reads_them() {
        for (text, seconds) in [
            ("1", 1),
            ("+5", 5),
            (" 7", 7),
            ("010", 10),
            ("2147483", 2147483),
        ] {
            assert_eq!(
                event_timeout(text).ok(),
                Some(Duration::from_secs(seconds)),
                "{text:?}"
            );
        }
        for text in [
            "0",
            "-1",
            "-0",
            "abc",
            "",
            "0x1",
            "1 ",
            "1.5",
            "2147484",
            "99999999999",
            "+-1",
            "--1",
        ] {
            let failure = event_timeout(text).expect_err(text);
            assert_eq!(
                failure.lines(),
                [format!(
                    "Numeric value '{text}' for <timeout> option is malformed or out of range"
                )]
            );
        }
    }
}
