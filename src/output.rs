//! What the verbs print: virsh's text, byte for byte, or JSON for scripts.

use netd::api::types::{Lease, NetworkSummary, PortSummary};
use netd::virsh;
use serde::Serialize;
use std::io::Write;

/// Writes `text` to stdout and flushes it. A reader that went away
/// (`kvnet net-list | head -0`) is no failure; any other error (a full disk under
/// `> file`) is returned, for the command to fail with.
pub fn to_stdout(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}

/// Writes `text` to stderr. Unlike `eprint!`, a stderr that cannot be written
/// (`2>/dev/full`) is no panic: there is nowhere left to say so.
pub fn to_stderr(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Ends a command's output the way virsh does: one extra blank line unless quiet.
pub fn finish(mut text: String, quiet: bool) -> String {
    if !quiet {
        text.push('\n');
    }
    text
}

/// A success message (`Network default started`), suppressed by `-q` like virsh's `vshPrintExtra`.
pub fn message(line: &str, quiet: bool) -> String {
    if quiet {
        String::new()
    } else {
        finish(format!("{line}\n"), quiet)
    }
}

/// Pretty JSON with a final newline.
pub fn json(value: &impl Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
    text.push('\n');
    text
}

fn list_entry(net: &NetworkSummary) -> virsh::NetListEntry {
    virsh::NetListEntry {
        name: net.name.clone(),
        uuid: net.uuid,
        active: net.active,
        autostart: net.autostart,
        persistent: net.persistent,
        title: net.title.clone(),
    }
}

/// `net-list`'s table.
pub fn network_table(networks: &[NetworkSummary], with_title: bool, quiet: bool) -> String {
    let entries: Vec<_> = networks.iter().map(list_entry).collect();
    finish(virsh::net_list(&entries, with_title, quiet), quiet)
}

/// `net-list --name` / `--uuid`.
pub fn network_names(networks: &[NetworkSummary], uuids: bool, quiet: bool) -> String {
    let entries: Vec<_> = networks.iter().map(list_entry).collect();
    finish(virsh::net_list_plain(&entries, uuids), quiet)
}

/// `net-info`'s key/value lines.
pub fn network_info(net: &NetworkSummary, quiet: bool) -> String {
    let text = virsh::net_info(
        &net.name,
        &net.uuid,
        net.active,
        net.persistent,
        net.autostart,
        net.bridge.as_deref(),
    );
    finish(text, quiet)
}

/// `net-dhcp-leases --json`: the leases with the table's Protocol column.
pub fn lease_json(leases: &[Lease]) -> String {
    #[derive(Serialize)]
    struct WithProtocol<'a> {
        #[serde(flatten)]
        lease: &'a Lease,
        /// `ipv4` or `ipv6`, as virsh's Protocol column.
        protocol: &'static str,
    }
    let rows: Vec<WithProtocol<'_>> = leases
        .iter()
        .map(|lease| WithProtocol {
            lease,
            protocol: if lease.ip_address.is_ipv4() {
                "ipv4"
            } else {
                "ipv6"
            },
        })
        .collect();
    json(&rows)
}

/// `net-dhcp-leases`' table; expiry in local time as virsh prints it.
pub fn lease_table(leases: &[Lease], quiet: bool) -> String {
    let rows: Vec<_> = leases
        .iter()
        .map(|lease| virsh::DhcpLeaseRow {
            expiry: virsh::local_time(lease.expiry_time).unwrap_or_default(),
            mac: lease.mac.clone(),
            ip: lease.ip_address,
            prefix: lease.prefix,
            hostname: lease.hostname.clone(),
            client_id: lease.client_id.clone(),
        })
        .collect();
    finish(virsh::net_dhcp_leases(&rows, quiet), quiet)
}

/// `net-port-list`'s table, or with `uuids` its UUIDs one per line.
pub fn port_table(ports: &[PortSummary], uuids: bool, quiet: bool) -> String {
    let ids: Vec<_> = ports.iter().map(|port| port.uuid).collect();
    let text = if uuids {
        virsh::net_port_list_plain(&ids)
    } else {
        virsh::net_port_list(&ids, quiet)
    };
    finish(text, quiet)
}
