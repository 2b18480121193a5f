//! The `net-port-*` verbs: the ports of a running network, each a guest NIC's tap on
//! its bridge. Errors come in virsh 9.0's order and words (`cmdNetworkPort*` in
//! tools/virsh-network.c): the network is looked up first (`failed to get network
//! 'x'`), then the port (`failed to get network port 'UUID'`), then the verb runs.

use std::path::Path;

use netd::api::ErrorKind;
use netd::api::client::{self, Client};

use super::net::{Select, print_xml, read_file};
use super::{Failure, NETWORK_NOT_FOUND, PORT_NOT_FOUND, reason};
use crate::output;

/// `net-port-list`: the table (default), or with `--uuid` the UUIDs one per line, both
/// sorted by UUID; `--json` prints the ports' summaries in the daemon's order, which is
/// that one.
pub fn list(
    client: &Client,
    network: &str,
    table: bool,
    uuid: bool,
    json: bool,
    quiet: bool,
) -> Result<String, Failure> {
    if table && uuid {
        return Err(Failure::msg(
            "Only one argument from --table and --uuid may be specified.",
        ));
    }
    // The daemon lists the ports of a running network only, as libvirt does; virsh
    // prints that refusal alone.
    let ports = client.ports(network).map_err(|e| match e {
        client::Error::Api(api) if api.kind == ErrorKind::NotFound => {
            Failure::lookup(network, client::Error::Api(api))
        }
        other => Failure::reason_only(other, NETWORK_NOT_FOUND),
    })?;
    Ok(if json && uuid {
        // Only the UUIDs, as a list, as `net-list --uuid --json` lists them.
        let uuids: Vec<String> = ports.iter().map(|port| port.uuid.to_string()).collect();
        output::json(&uuids)
    } else if json {
        output::json(&ports)
    } else {
        output::port_table(&ports, uuid, quiet)
    })
}

/// `net-port-create`: a port with a persistent tap, from a `<networkport>` file.
pub fn create(client: &Client, network: &str, file: &Path, quiet: bool) -> Result<String, Failure> {
    let xml = match read_file(file) {
        Ok(xml) => xml,
        Err(unreadable) => {
            // virsh looks the network up before it reads the file.
            client
                .get(network)
                .map_err(|e| Failure::lookup(network, e))?;
            return Err(unreadable);
        }
    };
    // virsh's words, though it is a port that was not created.
    let context = format!("Failed to create network from {}", file.display());
    let port = client
        .create_port(network, &xml)
        .map_err(|e| Failure::call(context, Some(network), e))?;
    let line = format!("Network port {} created from {}", port.uuid, file.display());
    Ok(output::message(&line, quiet))
}

/// `net-port-dumpxml`, with `--xpath`/`--wrap` as `net-dumpxml` has them.
pub fn dumpxml(
    client: &Client,
    network: &str,
    port: &str,
    select: Select,
    json: bool,
    quiet: bool,
) -> Result<String, Failure> {
    let xml = client.port_xml(network, port).map_err(|e| match e {
        client::Error::Api(api) if is_lookup(&api) => lookup_failure(client, network, port, &api),
        // virsh has no line of its own when the XML cannot be had.
        other => Failure::reason_only(other, PORT_NOT_FOUND),
    })?;
    print_xml(xml, select, json, quiet)
}

/// `net-port-delete`: the port and its tap go (a VMM using the tap loses its link).
pub fn delete(client: &Client, network: &str, port: &str, quiet: bool) -> Result<String, Failure> {
    let deleted = client.delete_port(network, port).map_err(|e| match e {
        client::Error::Api(api) if is_lookup(&api) => lookup_failure(client, network, port, &api),
        other => {
            // virsh names the port by its UUID as libvirt formats it.
            let uuid = port
                .parse::<uuid::Uuid>()
                .map_or_else(|_| port.to_owned(), |uuid| uuid.to_string());
            Failure::call(format!("Failed to delete network port {uuid}"), None, other)
        }
    })?;
    let line = format!("Network port {} deleted", deleted.uuid);
    Ok(output::message(&line, quiet))
}

/// Whether the daemon's error is a failed lookup of the network or the port: either is
/// missing, or the port's UUID is malformed.
fn is_lookup(api: &netd::api::ApiError) -> bool {
    matches!(api.kind, ErrorKind::NotFound | ErrorKind::InvalidArgument)
}

/// A failed lookup, told apart as virsh tells it: the daemon says `not_found` for a
/// missing network and a missing port alike, so the network is looked up again (only
/// on this path); if it is there, it is the port that is not.
fn lookup_failure(
    client: &Client,
    network: &str,
    port: &str,
    api: &netd::api::ApiError,
) -> Failure {
    if api.kind == ErrorKind::NotFound
        && let Err(e) = client.get(network)
    {
        return Failure::lookup(network, e);
    }
    Failure::two(
        format!("failed to get network port '{port}'"),
        reason(api, PORT_NOT_FOUND),
    )
}
