//! The `net-*` verbs.

use std::path::Path;
use std::process::Command as Process;

use netd::api::ErrorKind;
use netd::api::client::{self, Client};
use netd::api::types::{NetworkSummary, UpdateRequest};
use netd::xml::{UpdateCommand, UpdateSection};

use super::{Failure, system_message};
use crate::cli::{ListArgs, UpdateArgs};
use crate::output;

fn read_file(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| {
        Failure::msg(format!(
            "Failed to open file '{}': {}",
            path.display(),
            system_message(&e)
        ))
    })
}

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
        return Ok(output::json(&networks));
    }
    if args.name || args.uuid {
        return Ok(output::network_names(&networks, args.uuid, quiet));
    }
    Ok(output::network_table(&networks, args.title, quiet))
}

pub fn info(client: &Client, network: &str, json: bool, quiet: bool) -> Result<String, Failure> {
    let net = client.get(network).map_err(|e| {
        Failure::call(
            format!("failed to get network '{network}'"),
            Some(network),
            e,
        )
    })?;
    Ok(if json {
        output::json(&net)
    } else {
        output::network_info(&net, quiet)
    })
}

pub fn dumpxml(
    client: &Client,
    network: &str,
    inactive: bool,
    json: bool,
    quiet: bool,
) -> Result<String, Failure> {
    let xml = client.xml(network, inactive).map_err(|e| {
        Failure::call(
            format!("failed to get network '{network}'"),
            Some(network),
            e,
        )
    })?;
    Ok(if json {
        output::json(&serde_json::json!({ "xml": xml }))
    } else {
        output::finish(xml, quiet)
    })
}

pub fn uuid(client: &Client, network: &str, json: bool, quiet: bool) -> Result<String, Failure> {
    let failed = |e| {
        Failure::call(
            format!("failed to get network '{network}'"),
            Some(network),
            e,
        )
    };
    let net = client.get(network).map_err(failed)?;
    // virsh looks networks up here by name only.
    if net.name != network {
        return Err(not_found(network, "name"));
    }
    Ok(if json {
        output::json(&serde_json::json!({ "uuid": net.uuid }))
    } else {
        output::finish(format!("{}\n", net.uuid), quiet)
    })
}

pub fn name(client: &Client, uuid: &str, json: bool, quiet: bool) -> Result<String, Failure> {
    // virsh looks networks up here by UUID only; anything else is not found, one line.
    let Ok(parsed) = uuid.parse::<uuid::Uuid>() else {
        return Err(Failure::msg(format!("failed to get network '{uuid}'")));
    };
    let net = match client.get(uuid) {
        Err(client::Error::Api(api)) if api.kind == ErrorKind::NotFound => {
            return Err(not_found(uuid, "uuid"));
        }
        other => other
            .map_err(|e| Failure::call(format!("failed to get network '{uuid}'"), Some(uuid), e))?,
    };
    if net.uuid != parsed {
        return Err(not_found(uuid, "uuid"));
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
        format!("failed to get network '{key}'"),
        format!("Network not found: no network with matching {field} '{key}'"),
    )
}

/// `net-edit`: dumpxml --inactive, edit, and define; an unchanged file or an invalid
/// edit changes nothing (virsh then offers to re-edit; non-interactively, we stop).
pub fn edit(client: &Client, network: &str, quiet: bool) -> Result<String, Failure> {
    let original = client.xml(network, true).map_err(|e| {
        Failure::call(
            format!("failed to get network '{network}'"),
            Some(network),
            e,
        )
    })?;
    let dir = tempfile::Builder::new()
        .prefix("kvnet-edit")
        .tempdir()
        .map_err(|e| Failure::msg(format!("cannot create a temporary directory: {e}")))?;
    let path = dir
        .path()
        .join(format!("{}.xml", sanitize_file_name(network)));
    std::fs::write(&path, &original)
        .map_err(|e| Failure::msg(format!("cannot write {}: {e}", path.display())))?;

    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "vi".to_owned());
    // Like virsh, the editor variable may carry arguments: run it through the shell.
    let status = Process::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("kvnet-edit")
        .arg(&path)
        .status()
        .map_err(|e| Failure::msg(format!("cannot run editor '{editor}': {e}")))?;
    if !status.success() {
        return Err(Failure::msg(format!(
            "editor '{editor}' exited with {status}; nothing changed"
        )));
    }
    let edited = read_file(&path)?;
    if edited == original {
        // virsh names the network here, whatever identified it.
        let name = netd::xml::NetworkDef::from_xml(&original)
            .map(|def| def.name)
            .unwrap_or_else(|_| network.to_owned());
        return Ok(output::message(
            &format!("Network {name} XML configuration not changed."),
            quiet,
        ));
    }
    let net = client.define(&edited).map_err(|e| {
        Failure::call(
            format!("Failed to define network from {}", path.display()),
            None,
            e,
        )
    })?;
    Ok(output::message(
        &format!("Network {} XML configuration edited.", net.name),
        quiet,
    ))
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
    if let Some(mac) = mac
        && mac.parse::<netd::xml::MacAddr>().is_err()
    {
        return Err(Failure::two(
            format!("Failed to get leases info for {network}"),
            format!("invalid MAC address: {mac}"),
        ));
    }
    let mut leases = client.leases(network).map_err(|e| {
        Failure::call(
            format!("Failed to get leases info for {network}"),
            Some(network),
            e,
        )
    })?;
    if let Some(mac) = mac {
        leases.retain(|lease| lease.mac.eq_ignore_ascii_case(mac));
    }
    Ok(if json {
        output::json(&leases)
    } else {
        output::lease_table(&leases, quiet)
    })
}

/// `net-update`. Like virsh, the command and section names are checked before the XML
/// argument is read (as a file unless it starts with '<'), and the success line has no
/// blank line after it: virsh prints it without a newline of its own.
pub fn update(client: &Client, args: &UpdateArgs, quiet: bool) -> Result<String, Failure> {
    let command: UpdateCommand = args
        .command
        .parse()
        .map_err(|e: netd::xml::Error| Failure::msg(e.to_string()))?;
    let section: UpdateSection = args
        .section
        .parse()
        .map_err(|e: netd::xml::Error| Failure::msg(e.to_string()))?;
    let xml = if args.xml.starts_with('<') {
        args.xml.clone()
    } else {
        read_file(Path::new(&args.xml))?
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
    let network = args.network.as_str();
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
