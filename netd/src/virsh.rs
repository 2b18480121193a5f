//! Byte-exact reproductions of virsh 9.x output for the network commands,
//! as pure functions over plain data so the CLI (and tests) can use them
//! without a daemon.
//!
//! virsh prints one extra `"\n"` after every command unless `-q` is given
//! (`vshPrintExtra(ctl, "\n")` in tools/vsh.c). None of these functions add
//! it: the caller prints it once per command.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::net::IpAddr;

use uuid::Uuid;

use crate::api::types::LifecycleKind;

/// An I/O error as virsh prints it: the C library's text (`No such file or
/// directory`), without Rust's `(os error 2)`.
pub fn system_message(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.rsplit_once(" (os error ") {
        Some((message, _)) if error.raw_os_error().is_some() => message.to_owned(),
        _ => text,
    }
}

/// Renders a table exactly like libvirt's `vshTablePrint`
/// (tools/vsh-table.c): every cell is printed as `" " + cell`; every column
/// but the last is padded with `maxwidth - width + 2` spaces; the header is
/// followed by a line of `sum(maxwidth + 3)` dashes. With `quiet` (virsh
/// `-q`) the header and dash line are omitted *and* the header no longer
/// counts towards the column widths, as in libvirt.
///
/// Cell widths are display widths after escaping non-printable characters
/// as `\xNN` (see [`display_width`]). Rows shorter than the header are
/// padded with empty cells; extra cells are ignored.
pub fn table<'a>(headers: &[&'a str], rows: &'a [Vec<String>], quiet: bool) -> String {
    let columns = headers.len();
    let encode_row = |cells: &mut dyn Iterator<Item = &'a str>| -> Vec<(Cow<'a, str>, usize)> {
        cells.take(columns).map(safe_encode).collect()
    };
    let header = encode_row(&mut headers.iter().copied());
    let body: Vec<Vec<(Cow<'a, str>, usize)>> = rows
        .iter()
        .map(|row| {
            let mut cells = encode_row(&mut row.iter().map(String::as_str));
            cells.resize(columns, (Cow::Borrowed(""), 0));
            cells
        })
        .collect();

    let mut max_widths = vec![0usize; columns];
    let counted = (!quiet).then_some(&header);
    for row in counted.into_iter().chain(body.iter()) {
        for (max, (_, width)) in max_widths.iter_mut().zip(row) {
            *max = (*max).max(*width);
        }
    }

    let mut out = String::new();
    if !quiet {
        print_row(&mut out, &header, &max_widths);
        let dashes: usize = max_widths.iter().map(|w| w + 3).sum();
        out.push_str(&"-".repeat(dashes));
        out.push('\n');
    }
    for row in &body {
        print_row(&mut out, row, &max_widths);
    }
    out
}

fn print_row(out: &mut String, row: &[(Cow<'_, str>, usize)], max_widths: &[usize]) {
    for (i, (cell, width)) in row.iter().enumerate() {
        out.push(' ');
        out.push_str(cell);
        if i + 1 < row.len() {
            let pad = max_widths[i].saturating_sub(*width) + 2;
            out.extend(std::iter::repeat_n(' ', pad));
        }
    }
    out.push('\n');
}

/// Escapes what libvirt's `vshTableSafeEncode` escapes (non-printable
/// characters become `\xNN` per byte, and so does the backslash of a literal `\x`, so
/// that an escape in the output is always one) and returns the display width.
fn safe_encode(cell: &str) -> (Cow<'_, str>, usize) {
    // Names are almost always plain ASCII: no copy (net-list prints a thousand rows).
    if cell
        .bytes()
        .all(|byte| byte == b' ' || byte.is_ascii_graphic())
        && !cell.contains("\\x")
    {
        return (Cow::Borrowed(cell), cell.len());
    }
    let mut out = String::with_capacity(cell.len());
    let mut width = 0;
    let mut chars = cell.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&'x') {
            out.push_str("\\x5c");
            width += 4;
            continue;
        }
        let printable = if c.is_ascii() {
            c == ' ' || c.is_ascii_graphic()
        } else {
            !c.is_control()
        };
        if printable {
            out.push(c);
            width += char_width(c);
        } else {
            let mut bytes = [0u8; 4];
            for byte in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("\\x{byte:02x}"));
                width += 4;
            }
        }
    }
    (Cow::Owned(out), width)
}

/// Display width of a table cell as virsh computes it.
pub fn display_width(cell: &str) -> usize {
    safe_encode(cell).1
}

/// Terminal width of a printable character: 0 for combining marks and
/// zero-width characters, 2 for East Asian wide/fullwidth ranges and
/// emoji, 1 otherwise (a compact approximation of `g_unichar_iswide`).
fn char_width(c: char) -> usize {
    let cp = u32::from(c);
    let zero = matches!(cp, 0x0300..=0x036F | 0x200B..=0x200F | 0xFE00..=0xFE0F);
    let wide = matches!(
        cp,
        0x1100..=0x115F
            | 0x2E80..=0x303E
            | 0x3041..=0x33FF
            | 0x3400..=0x4DBF
            | 0x4E00..=0x9FFF
            | 0xA000..=0xA4CF
            | 0xAC00..=0xD7A3
            | 0xF900..=0xFAFF
            | 0xFE30..=0xFE4F
            | 0xFF00..=0xFF60
            | 0xFFE0..=0xFFE6
            | 0x1F300..=0x1F64F
            | 0x1F900..=0x1F9FF
            | 0x20000..=0x3FFFD
    );
    if zero {
        0
    } else if wide {
        2
    } else {
        1
    }
}

/// `strcasecmp` on ASCII letters, as virsh's sorters use.
pub fn ascii_casecmp(a: &str, b: &str) -> Ordering {
    a.bytes()
        .map(|b| b.to_ascii_lowercase())
        .cmp(b.bytes().map(|b| b.to_ascii_lowercase()))
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// One network as `net-list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetListEntry {
    /// Network name.
    pub name: String,
    /// Network uuid (for `--uuid`).
    pub uuid: Uuid,
    /// Running.
    pub active: bool,
    /// Starts with the daemon.
    pub autostart: bool,
    /// Has a persistent definition.
    pub persistent: bool,
    /// `<title>` (for `--title`; empty when absent, as virsh prints it).
    pub title: Option<String>,
}

fn sorted_by_name(entries: &[NetListEntry]) -> Vec<&NetListEntry> {
    let mut sorted: Vec<&NetListEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| ascii_casecmp(&a.name, &b.name));
    sorted
}

/// `virsh net-list [--title]` table: columns `Name State Autostart
/// Persistent [Title]`, rows sorted case-insensitively by name. Filtering
/// (`--all`, `--inactive`, ...) is the caller's job.
pub fn net_list(entries: &[NetListEntry], with_title: bool, quiet: bool) -> String {
    let mut headers = vec!["Name", "State", "Autostart", "Persistent"];
    if with_title {
        headers.push("Title");
    }
    let rows: Vec<Vec<String>> = sorted_by_name(entries)
        .into_iter()
        .map(|entry| {
            let mut row = vec![
                entry.name.clone(),
                if entry.active { "active" } else { "inactive" }.to_string(),
                yes_no(entry.autostart).to_string(),
                yes_no(entry.persistent).to_string(),
            ];
            if with_title {
                row.push(entry.title.clone().unwrap_or_default());
            }
            row
        })
        .collect();
    table(&headers, &rows, quiet)
}

/// `virsh net-list --name` (or `--uuid` when `uuids`): one value per line,
/// sorted by name, no header.
pub fn net_list_plain(entries: &[NetListEntry], uuids: bool) -> String {
    sorted_by_name(entries)
        .into_iter()
        .map(|entry| {
            if uuids {
                format!("{}\n", entry.uuid)
            } else {
                format!("{}\n", entry.name)
            }
        })
        .collect()
}

/// `virsh net-info NAME`: `%-15s %s` lines; the `Bridge:` line only when
/// the network has a bridge name.
pub fn net_info(
    name: &str,
    uuid: &Uuid,
    active: bool,
    persistent: bool,
    autostart: bool,
    bridge: Option<&str>,
) -> String {
    let mut lines = vec![
        ("Name:", name.to_string()),
        ("UUID:", uuid.to_string()),
        ("Active:", yes_no(active).to_string()),
        ("Persistent:", yes_no(persistent).to_string()),
        ("Autostart:", yes_no(autostart).to_string()),
    ];
    if let Some(bridge) = bridge {
        lines.push(("Bridge:", bridge.to_string()));
    }
    lines
        .into_iter()
        .map(|(label, value)| format!("{label:<15} {value}\n"))
        .collect()
}

/// One DHCP lease as `net-dhcp-leases` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpLeaseRow {
    /// Expiry in the local time zone (virsh formats `%Y-%m-%d %H:%M:%S`).
    pub expiry: chrono::NaiveDateTime,
    /// Client MAC address, as the daemon reports it (lower-case).
    pub mac: String,
    /// Leased address (IPv4 shows as `ipv4`, IPv6 as `ipv6`).
    pub ip: IpAddr,
    /// Prefix of the network's first `<ip>` of that family.
    pub prefix: u8,
    /// Host name the client sent, if any.
    pub hostname: Option<String>,
    /// DHCP client id (IPv4) or DUID (IPv6), if any.
    pub client_id: Option<String>,
}

/// Local wall-clock time of a Unix timestamp, as virsh shows lease expiry
/// (`g_date_time_new_from_unix_local`); `None` if out of range.
pub fn local_time(unix_seconds: i64) -> Option<chrono::NaiveDateTime> {
    chrono::DateTime::from_timestamp(unix_seconds, 0)
        .map(|utc| utc.with_timezone(&chrono::Local).naive_local())
}

/// `virsh net-dhcp-leases NAME` table, rows sorted case-insensitively by
/// MAC address; missing hostname/client id print as `-`.
pub fn net_dhcp_leases(leases: &[DhcpLeaseRow], quiet: bool) -> String {
    let mut sorted: Vec<(String, &DhcpLeaseRow)> =
        leases.iter().map(|l| (l.mac.clone(), l)).collect();
    sorted.sort_by(|a, b| ascii_casecmp(&a.0, &b.0));
    let rows: Vec<Vec<String>> = sorted
        .into_iter()
        .map(|(mac, lease)| {
            vec![
                lease.expiry.format("%Y-%m-%d %H:%M:%S").to_string(),
                mac,
                if lease.ip.is_ipv4() { "ipv4" } else { "ipv6" }.to_string(),
                format!("{}/{}", lease.ip, lease.prefix),
                lease.hostname.clone().unwrap_or_else(|| "-".to_string()),
                lease.client_id.clone().unwrap_or_else(|| "-".to_string()),
            ]
        })
        .collect();
    table(
        &[
            "Expiry Time",
            "MAC address",
            "Protocol",
            "IP address",
            "Hostname",
            "Client ID or DUID",
        ],
        &rows,
        quiet,
    )
}

/// `virsh net-port-list` table: one column, `UUID`, rows sorted by the UUIDs' bytes
/// (virsh's `memcmp`, which is [`Uuid`]'s order).
pub fn net_port_list(ports: &[Uuid], quiet: bool) -> String {
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    let rows: Vec<Vec<String>> = sorted.iter().map(|uuid| vec![uuid.to_string()]).collect();
    table(&["UUID"], &rows, quiet)
}

/// `virsh net-port-list --uuid`: one UUID per line, sorted as the table, no header.
pub fn net_port_list_plain(ports: &[Uuid]) -> String {
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    sorted.iter().map(|uuid| format!("{uuid}\n")).collect()
}

/// `virsh net-event --list`: the event types of virsh 9.0 (`metadata-change` came in 9.8).
pub const NET_EVENT_TYPES: [&str; 1] = ["lifecycle"];

/// One `virsh net-event` line for a lifecycle event: the network's name unquoted, the
/// event capitalised (`unknown` for one this virsh does not know), and with
/// `--timestamp` the time first, in UTC with milliseconds (libvirt's
/// `virTimeStringNowRaw`).
pub fn net_event_lifecycle(
    network: &str,
    event: LifecycleKind,
    timestamp: Option<chrono::DateTime<chrono::Utc>>,
) -> String {
    let event = match event {
        LifecycleKind::Defined => "Defined",
        LifecycleKind::Undefined => "Undefined",
        LifecycleKind::Started => "Started",
        LifecycleKind::Stopped => "Stopped",
        LifecycleKind::Unknown => "unknown",
    };
    let line = format!("event 'lifecycle' for network {network}: {event}\n");
    match timestamp {
        Some(time) => format!("{}: {line}", time.format("%Y-%m-%d %H:%M:%S%.3f+0000")),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, active: bool, autostart: bool, persistent: bool) -> NetListEntry {
        NetListEntry {
            name: name.to_string(),
            uuid: Uuid::nil(),
            active,
            autostart,
            persistent,
            title: None,
        }
    }

    /// Output of `virsh net-list` from libvirt-network.md §1.3 (without the
    /// trailing blank line virsh adds after every command).
    #[test]
    fn net_list_matches_virsh() {
        let expected = " Name      State    Autostart   Persistent
--------------------------------------------
 default   active   yes         yes
";
        assert_eq!(
            net_list(&[entry("default", true, true, true)], false, false),
            expected
        );
    }

    #[test]
    fn net_list_all_matches_virsh_and_sorts_case_insensitively() {
        let expected = " Name              State      Autostart   Persistent
------------------------------------------------------
 default           active     yes         yes
 docker-machines   active     yes         yes
 isolated          inactive   no          yes
 mk-minikube       active     yes         yes
";
        let entries = [
            entry("mk-minikube", true, true, true),
            entry("isolated", false, false, true),
            entry("default", true, true, true),
            entry("docker-machines", true, true, true),
        ];
        assert_eq!(net_list(&entries, false, false), expected);
        let mut upper = entries.clone();
        upper[1].name = "Isolated".to_string();
        let listed = net_list(&upper, false, false);
        assert!(listed.contains("yes\n Isolated "), "{listed}");
    }

    #[test]
    fn quiet_omits_header_and_ignores_its_width() {
        let entries = [entry("a", true, false, false)];
        assert_eq!(net_list(&entries, false, true), " a   active   no   no\n");
        assert_eq!(table(&["Name"], &[], true), "");
        assert_eq!(table(&["UUID"], &[], false), " UUID\n-------\n");
    }

    #[test]
    fn title_column_is_empty_without_title() {
        let mut titled = entry("lab", true, true, true);
        titled.title = Some("Lab net".to_string());
        let out = net_list(&[titled, entry("default", true, true, true)], true, false);
        assert_eq!(
            out,
            " Name      State    Autostart   Persistent   Title
------------------------------------------------------
 default   active   yes         yes          
 lab       active   yes         yes          Lab net
"
        );
    }

    #[test]
    fn plain_lists_print_names_or_uuids() {
        let mut b = entry("b", true, true, true);
        b.uuid = "3e3fce45-4f53-4fa7-bb32-11f34168b82b".parse().unwrap();
        let a = entry("A", true, true, true);
        assert_eq!(net_list_plain(&[b.clone(), a.clone()], false), "A\nb\n");
        assert_eq!(
            net_list_plain(&[b, a], true),
            "00000000-0000-0000-0000-000000000000\n3e3fce45-4f53-4fa7-bb32-11f34168b82b\n"
        );
    }

    /// libvirt-network.md §1.4.
    #[test]
    fn net_info_matches_virsh() {
        let uuid: Uuid = "3e3fce45-4f53-4fa7-bb32-11f34168b82b".parse().unwrap();
        let expected = "Name:           default
UUID:           3e3fce45-4f53-4fa7-bb32-11f34168b82b
Active:         yes
Persistent:     yes
Autostart:      yes
Bridge:         virbr0
";
        assert_eq!(
            net_info("default", &uuid, true, true, true, Some("virbr0")),
            expected
        );
        let without_bridge = net_info("host", &uuid, false, true, false, None);
        assert!(
            without_bridge.ends_with("Autostart:      no\n"),
            "{without_bridge}"
        );
        assert!(without_bridge.contains("Active:         no\n"));
    }

    fn lease(
        expiry: &str,
        mac: &str,
        ip: &str,
        hostname: Option<&str>,
        client_id: &str,
    ) -> DhcpLeaseRow {
        DhcpLeaseRow {
            expiry: chrono::NaiveDateTime::parse_from_str(expiry, "%Y-%m-%d %H:%M:%S").unwrap(),
            mac: mac.parse().unwrap(),
            ip: ip.parse().unwrap(),
            prefix: 24,
            hostname: hostname.map(str::to_string),
            client_id: Some(client_id.to_string()),
        }
    }

    /// libvirt-network.md §1.5: the dash line is 144 characters because the
    /// 56-character DUID widens the last column.
    #[test]
    fn net_dhcp_leases_matches_virsh() {
        let expected = " Expiry Time           MAC address         Protocol   IP address           Hostname   Client ID or DUID
------------------------------------------------------------------------------------------------------------------------------------------------
 2024-03-28 23:02:16   52:54:00:86:8e:e2   ipv4       192.168.122.46/24    -          01:52:54:00:86:8e:e2
 2024-03-28 23:05:40   52:54:00:b5:0b:d4   ipv4       192.168.122.211/24   web1       ff:08:24:45:0e:00:02:00:00:ab:11:63:3c:26:5b:b7:fe:b3:13
";
        let leases = [
            lease(
                "2024-03-28 23:05:40",
                "52:54:00:b5:0b:d4",
                "192.168.122.211",
                Some("web1"),
                "ff:08:24:45:0e:00:02:00:00:ab:11:63:3c:26:5b:b7:fe:b3:13",
            ),
            lease(
                "2024-03-28 23:02:16",
                "52:54:00:86:8e:e2",
                "192.168.122.46",
                None,
                "01:52:54:00:86:8e:e2",
            ),
        ];
        let out = net_dhcp_leases(&leases, false);
        assert_eq!(out.lines().nth(1).unwrap().len(), 144);
        assert_eq!(out, expected);
    }

    #[test]
    fn local_time_converts_through_the_local_zone() {
        use chrono::TimeZone;
        // The lease from the vagrant-libvirt status file example (§1.5).
        let shown = local_time(1_424_258_362).unwrap();
        let back = chrono::Local
            .from_local_datetime(&shown)
            .earliest()
            .unwrap();
        assert_eq!(back.timestamp(), 1_424_258_362);
        assert_eq!(local_time(i64::MAX), None);
    }

    #[test]
    fn empty_lease_table_matches_virsh() {
        let expected =
            " Expiry Time   MAC address   Protocol   IP address   Hostname   Client ID or DUID
-----------------------------------------------------------------------------------
";
        assert_eq!(net_dhcp_leases(&[], false), expected);
        assert_eq!(net_dhcp_leases(&[], true), "");
    }

    #[test]
    fn non_printable_cells_are_escaped_and_counted_escaped() {
        assert_eq!(safe_encode("a\tb"), (Cow::Borrowed("a\\x09b"), 6));
        assert_eq!(safe_encode("\u{85}"), (Cow::Borrowed("\\xc2\\x85"), 8));
        assert_eq!(safe_encode("plain name"), (Cow::Borrowed("plain name"), 10));
        assert_eq!(safe_encode("a\\xb"), (Cow::Borrowed("a\\x5cxb"), 7));
        assert_eq!(safe_encode("a\\b"), (Cow::Borrowed("a\\b"), 3));
        assert_eq!(display_width("日本"), 2 * 2);
        assert_eq!(display_width("e\u{301}"), 1);
        let out = table(
            &["A", "B"],
            &[vec!["x\ny".to_string(), "z".to_string()]],
            false,
        );
        assert_eq!(out, " A        B\n-------------\n x\\x0ay   z\n");
    }

    #[test]
    fn port_list_is_sorted_by_uuid_bytes_in_virshs_table() {
        let low: Uuid = "0ae63b5f-fe96-4af0-a7c3-da04ba1b3f54".parse().unwrap();
        let high: Uuid = "7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54".parse().unwrap();
        let expected = " UUID
---------------------------------------
 0ae63b5f-fe96-4af0-a7c3-da04ba1b3f54
 7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54
";
        assert_eq!(net_port_list(&[high, low], false), expected);
        assert_eq!(
            net_port_list(&[high, low], true),
            " 0ae63b5f-fe96-4af0-a7c3-da04ba1b3f54\n 7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54\n"
        );
        assert_eq!(
            net_port_list_plain(&[high, low]),
            "0ae63b5f-fe96-4af0-a7c3-da04ba1b3f54\n7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54\n"
        );
        // No ports: the header alone, its dashes as wide as `UUID` (virsh prints it so).
        assert_eq!(net_port_list(&[], false), " UUID\n-------\n");
        assert_eq!(net_port_list(&[], true), "");
    }

    #[test]
    fn net_event_lines_as_virsh_9_0_prints_them() {
        assert_eq!(
            net_event_lifecycle("default", LifecycleKind::Started, None),
            "event 'lifecycle' for network default: Started\n"
        );
        assert_eq!(
            net_event_lifecycle("my net", LifecycleKind::Unknown, None),
            "event 'lifecycle' for network my net: unknown\n"
        );
        let time = chrono::DateTime::parse_from_rfc3339("2026-11-27T07:24:07.2119+01:00")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            net_event_lifecycle("evnet", LifecycleKind::Undefined, Some(time)),
            "2026-11-27 06:24:07.211+0000: event 'lifecycle' for network evnet: Undefined\n"
        );
    }
}
