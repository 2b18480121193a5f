//! DHCPv4 server: one small tokio task per network, bound to the network's bridge.
//!
//! The layers, from pure to I/O:
//! - [`leases`]: the lease database (allocation, reservations, expiry, decline) and its
//!   append-only journal on disk;
//! - [`engine`]: one DHCP message in, at most one reply out (RFC 2131 state handling and
//!   the options we hand out). No sockets, no clock: tests and the fuzz target drive it;
//! - `log`: `log-dhcp`, each message and its reply in dnsmasq's words;
//! - [`server`]: the UDP socket on port 67 bound to the bridge, batching, persistence
//!   before replies, and the [`DhcpServer`] handle the manager keeps.
//!
//! Deliberate choices, following what libvirt's dnsmasq config does
//! (`dhcp-authoritative`, `dhcp-no-override`), except for its ping check:
//! - authoritative: a client asking for a free address of our pool that we have no
//!   record of (e.g. after the lease file was lost) gets it; an address held by someone
//!   else or outside the network gets a NAK;
//! - no ICMP probe before offering (dnsmasq's probe made udhcpc wait 3 s; the README
//!   says what that costs);
//! - a `<host mac=>` reservation always wins: a dynamic holder of that address is refused
//!   its next renewal (NAK), which ends its lease, so the reserved guest gets the address
//!   at its next request (dnsmasq keeps the refused lease until it expires);
//! - relayed requests are answered only from a relay agent inside the network's subnet
//!   (replies go back to it, never off the network); others are dropped.

pub mod engine;
pub mod lease_time;
pub mod leases;
mod log;
pub mod server;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

pub use engine::{Engine, Reply};
pub use server::DhcpServer;

/// Lease time when neither the range nor the host sets one (libvirt's default: one hour).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3600);

/// What the DHCP server of one network serves; built by the manager from the network XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpConfig {
    /// Network name, for logs.
    pub network: String,
    /// Bridge the server binds to (`SO_BINDTODEVICE`).
    pub interface: String,
    /// The bridge's address: source of replies and the server identifier (option 54).
    pub server_ip: Ipv4Addr,
    /// The `<ip address= prefix=>` subnet.
    pub subnet: ipnet::Ipv4Net,
    /// `<range start= end=>` with its optional `<lease>`; `Some(Duration::ZERO)` means infinite.
    pub ranges: Vec<(Ipv4Addr, Ipv4Addr, Option<Duration>)>,
    /// `<host mac= ip= name=>` reservations.
    pub hosts: Vec<DhcpHostConfig>,
    /// Router option (3); `None` on isolated networks.
    pub router: Option<Ipv4Addr>,
    /// DNS server option (6); `None` when `<dns enable='no'/>`.
    pub dns_server: Option<Ipv4Addr>,
    /// Domain name option (15), from `<domain name=>`.
    pub domain: Option<String>,
    /// Interface MTU option (26), from `<mtu size=>`.
    pub mtu: Option<u16>,
    /// Lease time for addresses whose range and host set none.
    pub default_lease: Duration,
    /// `<bootp>`: where guests booting from the network find their boot file.
    pub boot: Option<DhcpBoot>,
    /// `dhcp-option=` lines, one per option code. Each replaces what the server would
    /// send for its code (router, DNS server, domain name, MTU, boot file), as dnsmasq's
    /// do.
    pub options: Vec<crate::xml::DhcpOptionRule>,
    /// `<dnsmasq:option value='log-dhcp'>`: each message and its reply are logged.
    pub log_dhcp: bool,
}

/// Network boot (PXE): the DHCP header's `file` and `siaddr` fields, as dnsmasq's
/// `dhcp-boot=FILE,,SERVER` that libvirt writes; option 67 too for clients that ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpBoot {
    /// The boot file name, at most 127 bytes (the field holds 128 with its NUL).
    pub file: String,
    /// The TFTP server.
    pub server: Ipv4Addr,
}

/// One `<host>` reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpHostConfig {
    /// The client's MAC; a host without one is reserved for the client that sends its
    /// `name` (option 12), as dnsmasq's `dhcp-host=NAME,IP`.
    pub mac: Option<[u8; 6]>,
    /// The reserved address.
    pub ip: Ipv4Addr,
    /// Hostname handed to the client (option 12); wins over the client's own.
    pub name: Option<String>,
    /// `<lease>` of the host; `Some(Duration::ZERO)` means infinite.
    pub lease: Option<Duration>,
}

/// A bound lease, as `net-dhcp-leases` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Unix time the lease expires; 0 for an infinite lease (libvirt's convention).
    pub expiry_unix: i64,
    /// The client's hardware address.
    pub mac: [u8; 6],
    /// The leased address.
    pub ip: Ipv4Addr,
    /// Hostname: the reservation's name, else the client's option 12 (sanitised).
    pub hostname: Option<String>,
    /// Client identifier (option 61) when the client sent one.
    pub client_id: Option<Vec<u8>>,
}

/// Errors of the DHCP server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The UDP socket on port 67 could not be set up.
    #[error("network {network}: cannot open the DHCP socket on {interface}: {step}")]
    Socket {
        network: String,
        interface: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Reading, writing or syncing the lease file failed.
    #[error("network {network}: lease file {path}: cannot {action}")]
    LeaseFile {
        network: String,
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// [`DhcpServer::start`] was called outside a tokio runtime.
    #[error("network {network}: the DHCP server must be started inside a tokio runtime")]
    NoRuntime { network: String },
}

/// Appends `record` to `out` as one line of JSON, as the DHCP and DHCPv6 lease files
/// hold them; on an error (which a record of plain strings and numbers never gives),
/// nothing.
pub(crate) fn push_json_line(
    out: &mut Vec<u8>,
    record: &impl serde::Serialize,
) -> serde_json::Result<()> {
    let start = out.len();
    if let Err(e) = serde_json::to_writer(&mut *out, record) {
        out.truncate(start);
        return Err(e);
    }
    out.push(b'\n');
    Ok(())
}

/// Formats a MAC as `52:54:00:aa:bb:cc`.
pub(crate) fn format_mac(mac: &[u8]) -> String {
    let mut out = String::with_capacity(mac.len() * 3);
    for (i, byte) in mac.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Parses `aa:bb:...` hex bytes (any count up to `max`); `None` on anything else.
pub(crate) fn parse_hex_bytes(text: &str, max: usize) -> Option<Vec<u8>> {
    if text.is_empty() {
        return None;
    }
    let bytes: Option<Vec<u8>> = text
        .split(':')
        .map(|part| {
            if part.len() == 2 {
                u8::from_str_radix(part, 16).ok()
            } else {
                None
            }
        })
        .collect();
    bytes.filter(|bytes| bytes.len() <= max)
}

/// The leases of `numbered` (each with the count of bindings when it was last bound or
/// renewed) in that order, oldest first: how the DHCP and DHCPv6 servers hand them to
/// the names DNS answers.
pub(crate) fn in_binding_order<T>(numbered: impl Iterator<Item = (u64, T)>) -> Vec<T> {
    let mut numbered: Vec<(u64, T)> = numbered.collect();
    numbered.sort_by_key(|(seq, _)| *seq);
    numbered.into_iter().map(|(_, lease)| lease).collect()
}

/// The names DNS answers for `leases`, given in the order they were bound or renewed:
/// one address per name, the lease's that expires last (renewed last, or infinite), and
/// of those that expire in the same second the one bound last. A name is normally on
/// one lease (the one that claimed it last took it from the others, as with dnsmasq),
/// but a lease file written before that rule may hold it on several: cloned guests that
/// all call themselves `ubuntu` still resolve to one address, not a list of stale ones.
pub fn dns_names(leases: Vec<LeaseInfo>) -> Vec<(Ipv4Addr, String)> {
    let newest = |lease: &LeaseInfo| match lease.expiry_unix {
        0 => i64::MAX,
        expiry => expiry,
    };
    let mut by_name: HashMap<String, LeaseInfo> = HashMap::new();
    for lease in leases {
        let Some(name) = &lease.hostname else {
            continue;
        };
        match by_name.entry(name.to_ascii_lowercase()) {
            Entry::Occupied(mut held) if newest(held.get()) <= newest(&lease) => {
                held.insert(lease);
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(free) => {
                free.insert(lease);
            }
        }
    }
    by_name
        .into_values()
        .filter_map(|lease| Some((lease.ip, lease.hostname?)))
        .collect()
}

/// Turns a client-sent hostname (option 12, or the first label of option 81) into one
/// DNS label, or `None`.
///
/// Takes the part before the first dot (as dnsmasq does) and accepts what dnsmasq's
/// `legal_hostname` does: 1 to 63 of `[A-Za-z0-9_-]`, starting with a letter or digit.
/// Its case is kept, as dnsmasq keeps it (net-dhcp-leases and PTR answers show the name
/// the guest gave); names are compared without case. The name will end up in DNS and
/// in files, so anything else (NUL, spaces, non-ASCII, overlong) is dropped, not escaped.
/// Debian's dnsmasq 2.90 keeps a name with non-ASCII letters on the lease, so virsh's
/// net-dhcp-leases shows it where kvnet's shows `-`; kvnet keeps one name per lease, the
/// one DNS answers for.
pub fn sanitize_hostname(raw: &str) -> Option<String> {
    let label = raw.split('.').next()?;
    let valid = (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && label
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    valid.then(|| label.to_owned())
}

/// A guest's `name` under `domain` in DNS wire format, as the Client FQDN answers of
/// DHCPv4 (with the E flag) and DHCPv6 carry it: fully qualified (ending in the root
/// label) under a domain, else a partial name. `None` for a label over 63 bytes.
pub(crate) fn fqdn_wire(name: &str, domain: Option<&str>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let labels = name
        .split('.')
        .chain(domain.into_iter().flat_map(|domain| domain.split('.')));
    for label in labels.filter(|label| !label.is_empty()) {
        out.push(u8::try_from(label.len()).ok().filter(|&len| len <= 63)?);
        out.extend_from_slice(label.as_bytes());
    }
    if domain.is_some() {
        out.push(0);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_claimed_by_several_leases_answers_with_the_newest() {
        let lease = |ip: u8, name: Option<&str>, expiry_unix| LeaseInfo {
            expiry_unix,
            mac: [2, 0, 0, 0, 0, ip],
            ip: Ipv4Addr::new(192, 168, 1, ip),
            hostname: name.map(str::to_owned),
            client_id: None,
        };
        let mut names = dns_names(vec![
            lease(10, Some("ubuntu"), 2000),
            lease(11, Some("ubuntu"), 3000),
            lease(12, Some("ubuntu"), 1000),
            lease(13, Some("db"), 1000),
            lease(14, None, 5000),
            lease(15, Some("Pinned"), 0),
            lease(16, Some("pinned"), 9000),
        ]);
        names.sort();
        assert_eq!(
            names,
            [
                (Ipv4Addr::new(192, 168, 1, 11), "ubuntu".to_owned()),
                (Ipv4Addr::new(192, 168, 1, 13), "db".to_owned()),
                (Ipv4Addr::new(192, 168, 1, 15), "Pinned".to_owned()),
            ]
        );
    }

    #[test]
    fn hostnames_become_one_safe_label() {
        assert_eq!(sanitize_hostname("Web1").as_deref(), Some("Web1"));
        assert_eq!(sanitize_hostname("db.example.org").as_deref(), Some("db"));
        assert_eq!(sanitize_hostname("a-b-9").as_deref(), Some("a-b-9"));
        // dnsmasq's legal_hostname: `_` and a final `-` after the first character.
        assert_eq!(sanitize_hostname("Build_01").as_deref(), Some("Build_01"));
        assert_eq!(sanitize_hostname("a-").as_deref(), Some("a-"));
        for bad in [
            "",
            ".x",
            "-a",
            "_a",
            "sp ace",
            "nul\0x",
            "é",
            &"x".repeat(64),
        ] {
            assert_eq!(sanitize_hostname(bad), None, "{bad:?}");
        }
        assert_eq!(
            sanitize_hostname(&"x".repeat(63)).map(|s| s.len()),
            Some(63)
        );
    }

    #[test]
    fn hex_bytes_round_trip_and_reject_junk() {
        let mac = [0x52, 0x54, 0x00, 0xab, 0x0c, 0xff];
        assert_eq!(format_mac(&mac), "52:54:00:ab:0c:ff");
        assert_eq!(parse_hex_bytes(&format_mac(&mac), 6), Some(mac.to_vec()));
        assert_eq!(parse_hex_bytes("52:54", 1), None);
        assert_eq!(parse_hex_bytes("5:54", 6), None);
        assert_eq!(parse_hex_bytes("zz", 6), None);
        assert_eq!(parse_hex_bytes("", 6), None);
    }
}
