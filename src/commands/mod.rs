//! One function per verb; each returns the text to print or a [`Failure`].

mod builtin;
mod interrupt;
mod net;
mod port;

use netd::api::client::{self, Client};
use netd::api::{ApiError, ErrorKind};

use crate::cli::{Cli, Command};

/// A failed verb: the lines virsh would print after `error: `.
#[derive(Debug)]
pub struct Failure {
    lines: Vec<String>,
    /// Whether the verb ran: virsh ends a command it ran with a blank line, failed or
    /// not, and one it could not connect for with none.
    ran: bool,
}

/// virsh's first line when `network` (a name or UUID, as given) was not found.
pub fn failed_to_get(network: &str) -> String {
    format!("failed to get network '{network}'")
}

impl Failure {
    /// A failure described by one line.
    pub fn msg(line: impl Into<String>) -> Failure {
        Failure {
            lines: vec![line.into()],
            ran: true,
        }
    }

    /// A failure described by `context`, then `reason`.
    pub fn two(context: impl Into<String>, reason: impl Into<String>) -> Failure {
        Failure {
            lines: vec![context.into(), reason.into()],
            ran: true,
        }
    }

    /// A failed daemon call, in virsh's two-line shape: what the verb was doing, then
    /// why, with libvirt's prefix for the error's kind. A missing network reads as
    /// virsh's lookup failure; an unreachable daemon is one line naming the socket.
    pub fn call(
        context: impl Into<String>,
        network: Option<&str>,
        error: client::Error,
    ) -> Failure {
        let api = match answered(error) {
            Ok(api) => api,
            Err(failure) => return failure,
        };
        let context = match (api.kind, network) {
            (ErrorKind::NotFound, Some(network)) => failed_to_get(network),
            _ => context.into(),
        };
        Failure::two(context, reason(&api, NETWORK_NOT_FOUND))
    }

    /// virsh's failed lookup of `network`, by the name or UUID given
    /// (`virshCommandOptNetwork`).
    pub fn lookup(network: &str, error: client::Error) -> Failure {
        Failure::call(failed_to_get(network), Some(network), error)
    }

    /// A failed daemon call after which virsh prints no line of its own: only the
    /// reason, with libvirt's prefix for its kind (`not_found`: the words for a missing
    /// thing, [`NETWORK_NOT_FOUND`] or [`PORT_NOT_FOUND`]).
    pub fn reason_only(error: client::Error, not_found: &str) -> Failure {
        match answered(error) {
            Ok(api) => Failure::msg(reason(&api, not_found)),
            Err(failure) => failure,
        }
    }

    /// A failure with no `error:` line (virsh has none, or the verb printed its own
    /// output): exit status 1 and the command's blank line.
    pub fn silent() -> Failure {
        Failure {
            lines: Vec::new(),
            ran: true,
        }
    }

    /// The lines to print.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Whether the verb ran (see [`Failure`]).
    pub fn ran(&self) -> bool {
        self.ran
    }
}

/// libvirt's words for a missing network (`VIR_ERR_NO_NETWORK`) and a missing network
/// port (`VIR_ERR_NO_NETWORK_PORT`), which head the daemon's `not_found` message.
pub const NETWORK_NOT_FOUND: &str = "Network not found: ";
pub const PORT_NOT_FOUND: &str = "network port not found: ";

/// The daemon's own error, or the failure to reach it (one line naming the socket: the
/// verb did not run) or to understand it.
fn answered(error: client::Error) -> Result<ApiError, Failure> {
    match error {
        client::Error::Api(api) => Ok(api),
        client::Error::Connect {
            socket,
            source,
            read_only,
        } => Err(Failure {
            ran: false,
            ..Failure::msg(format!(
                "cannot connect to kvnetd at {}: {}{}",
                socket.display(),
                system_message(&source),
                client::connect_hint(&source, read_only)
            ))
        }),
        other => Err(Failure::msg(other.to_string())),
    }
}

/// The daemon's message with libvirt's prefix for its kind, as virsh's second error line
/// shows it; `not_found` is the prefix of a missing thing.
fn reason(api: &ApiError, not_found: &str) -> String {
    let prefix = match api.kind {
        ErrorKind::NotFound => not_found,
        ErrorKind::OperationInvalid => "Requested operation is not valid: ",
        ErrorKind::InvalidArgument => "invalid argument: ",
        ErrorKind::XmlError => "XML error: ",
        ErrorKind::XmlDetail => "",
        ErrorKind::ConfigUnsupported => "unsupported configuration: ",
        // libvirt raises it without a message.
        ErrorKind::NoName => return "missing name information".to_owned(),
        ErrorKind::Unsupported => "Operation not supported: ",
        ErrorKind::AlreadyExists => "operation failed: ",
        // libvirt's words wrap the message: "network port %s exists already".
        ErrorKind::PortExists => return format!("network port {} exists already", api.message),
        ErrorKind::PermissionDenied => "access denied: ",
        ErrorKind::OperationForbidden => "operation forbidden: ",
        ErrorKind::Internal => "internal error: ",
        ErrorKind::System => "",
        // The message starts with libvirt's "Hook script execution failed: ".
        ErrorKind::HookFailed => "",
    };
    format!("{prefix}{}", api.message)
}

/// Runs the verb named on the command line.
pub fn run(cli: &Cli) -> Result<String, Failure> {
    let connection = cli.connection().map_err(|reason| Failure {
        ran: false,
        ..Failure::two("failed to connect to the hypervisor", reason)
    })?;
    let client = Client::new(connection.socket);
    let client = if cli.read_only {
        client.read_only()
    } else {
        client
    };
    let quiet = cli.quiet;
    match &cli.command {
        Command::NetDefine(file) => net::from_file(&client, &file.get(), false, quiet),
        Command::NetCreate(file) => net::from_file(&client, &file.get(), true, quiet),
        Command::NetUndefine(network) => net::undefine(&client, network.get(), quiet),
        Command::NetStart(network) => net::start(&client, network.get(), quiet),
        Command::NetDestroy(network) => net::destroy(&client, network.get(), quiet),
        Command::NetAutostart { network, disable } => {
            net::autostart(&client, network.get(), !disable, quiet)
        }
        Command::NetList(args) => net::list(&client, args, quiet),
        Command::NetInfo { network, json } => net::info(&client, network.get(), *json, quiet),
        Command::NetDumpxml {
            network,
            inactive,
            output,
        } => net::dumpxml(
            &client,
            network.get(),
            *inactive,
            net::Select::of(output),
            output.json,
            quiet,
        ),
        Command::NetUuid { network, json } => net::uuid(&client, network.get(), *json, quiet),
        Command::NetName { network, json } => net::name(&client, network.get(), *json, quiet),
        Command::NetEdit(network) => net::edit(&client, network.get(), quiet),
        Command::NetUpdate(args) => net::update(&client, args, quiet),
        Command::NetDhcpLeases {
            network,
            mac,
            mac_word,
            json,
        } => net::dhcp_leases(
            &client,
            network.get(),
            mac.as_deref().or(mac_word.as_deref()),
            *json,
            quiet,
        ),
        Command::NetPortList {
            network,
            table,
            uuid,
            json,
        } => port::list(&client, network.get(), *table, *uuid, *json, quiet),
        Command::NetPortCreate { network, file } => {
            port::create(&client, network.get(), &file.get(), quiet)
        }
        Command::NetPortDumpxml {
            network,
            port,
            output,
        } => port::dumpxml(
            &client,
            network.get(),
            port.get(),
            net::Select::of(output),
            output.json,
            quiet,
        ),
        Command::NetPortDelete { network, port } => {
            port::delete(&client, network.get(), port.get(), quiet)
        }
        Command::Echo(args) => Ok(builtin::echo(args, quiet)),
        Command::Cd { dir, dir_option } => {
            builtin::cd(dir.as_ref().or(dir_option.as_ref()), cli.interactive, quiet)
        }
        Command::Pwd => builtin::pwd(quiet),
        Command::Help {
            topic,
            topic_option,
        } => builtin::help(topic.as_deref().or(topic_option.as_deref()), quiet),
        Command::Uri { json } => uri(&client, &connection.uri, *json, quiet),
        Command::NetEvent(args) => net::event(&client, &connection.uri, args, quiet),
    }
}

/// virsh's `uri`: the connection's URI, once the daemon has answered.
fn uri(client: &Client, uri: &str, json: bool, quiet: bool) -> Result<String, Failure> {
    let daemon = client
        .version()
        .map_err(|e| Failure::call("failed to get the daemon's version", None, e))?;
    Ok(if json {
        crate::output::json(&serde_json::json!({
            "uri": uri,
            "daemon": daemon.daemon,
            "version": daemon.version,
        }))
    } else {
        crate::output::finish(format!("{uri}\n"), quiet)
    })
}

pub use netd::virsh::system_message;
