//! What the verbs print: virsh's text, byte for byte, or JSON for scripts.

use netd::api::types::{Lease, NetworkSummary};
use netd::virsh;
use serde::Serialize;

/// Ends a command's output the way virsh does: one extra blank line unless quiet.
pub fn finish(mut text: String, quiet: bool) -> String {
    if !quiet {
        text.push('\n');
    }
    text
}

/// A success message (`Network default started`), suppressed by `-q` like virsh's `vshPrintExtra`.
pub fn message(line: &str, quiet: bool) -> String {
    if quiet { String::new() } else { finish(format!("{line}\n"), quiet) }
}

/// Pretty JSON with a final newline.
pub fn json(value: &impl Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// `net-list`'s table.
pub fn network_table(networks: &[NetworkSummary], with_title: bool, quiet: bool) -> String {
    let mut headers = vec!["Name", "State", "Autostart", "Persistent"];
    if with_title {
        headers.push("Title");
    }
    let rows: Vec<Vec<String>> = networks
        .iter()
        .map(|net| {
            let mut row = vec![
                net.name.clone(),
                if net.active { "active" } else { "inactive" }.to_owned(),
                yes_no(net.autostart).to_owned(),
                yes_no(net.persistent).to_owned(),
            ];
            if with_title {
                row.push(net.title.clone().unwrap_or_default());
            }
            row
        })
        .collect();
    finish(virsh::table(&headers, &rows, quiet), quiet)
}

/// `net-info`'s key/value lines.
pub fn network_info(net: &NetworkSummary, quiet: bool) -> String {
    let text = virsh::net_info(&net.name, &net.uuid, net.active, net.persistent, net.autostart, net.bridge.as_deref());
    finish(text, quiet)
}

/// `net-dhcp-leases`' table; expiry in local time as virsh prints it.
pub fn lease_table(leases: &[Lease], quiet: bool) -> String {
    let headers = ["Expiry Time", "MAC address", "Protocol", "IP address", "Hostname", "Client ID or DUID"];
    let dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    let rows: Vec<Vec<String>> = leases
        .iter()
        .map(|lease| {
            vec![
                format_expiry(lease.expiry_time),
                lease.mac.clone(),
                lease.protocol.clone(),
                format!("{}/{}", lease.ip_address, lease.prefix),
                dash(&lease.hostname),
                dash(&lease.client_id),
            ]
        })
        .collect();
    finish(virsh::table(&headers, &rows, quiet), quiet)
}

fn format_expiry(epoch_seconds: i64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_opt(epoch_seconds, 0).single() {
        Some(time) => time.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => "-".to_owned(),
    }
}
